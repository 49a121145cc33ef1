//! `depin-gateway collector`: the reference collector, run from the
//! gateway's binary.

use std::path::Path;
use std::process::ExitCode;

/// Runs the collector with the configuration at `config` until it stops.
pub(super) fn run(config: &Path) -> anyhow::Result<ExitCode> {
    crate::upstream::collector::main(config)
}
