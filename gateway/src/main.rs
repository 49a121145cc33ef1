//! The `depin-gateway` binary; see `depin-gateway --help`.

// Every call allocates its request, response and records; mimalloc's
// thread-local free lists make that cheaper than glibc's malloc under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    depin_gateway::cli::main()
}
