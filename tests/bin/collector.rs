//! The real `depin-collector` command line, for tests that need a process.

fn main() -> std::process::ExitCode {
    depin_collector::main()
}
