//! The `depin-gateway` binary; see `depin-gateway --help`.

fn main() -> std::process::ExitCode {
    depin_gateway::cli::main()
}
