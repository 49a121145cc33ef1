//! `depin-gateway report`: check signed epoch reports.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::exit;

#[derive(Debug, Subcommand)]
pub(super) enum ReportCommand {
    /// Check a signed report file's encoding and signature offline.
    /// Exits with 1 when it is not valid.
    Verify {
        /// The report file (as written by `epochs show N --out FILE`).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl ReportCommand {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            ReportCommand::Verify { file, json } => {
                Ok(exit(crate::epochs::inspect::verify_file(&file, json)?))
            }
        }
    }
}
