//! The `depin-collector` binary; see `depin-collector --help`.

// The allocator the collector had when it ran inside the gateway binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    depin_collector::main()
}
