//! The real `depin-gateway` command line, for tests that need a process.

fn main() -> std::process::ExitCode {
    depin_gateway::cli::main()
}
