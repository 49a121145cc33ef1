//! `depin-gateway epochs`: inspect closed epochs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{LedgerLocation, data_dir, exit};

#[derive(Debug, Subcommand)]
pub(super) enum EpochsCommand {
    /// One line per closed epoch: records, estimate, collector figure,
    /// delivery state, root.
    List {
        #[command(flatten)]
        at: LedgerLocation,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Totals, Merkle root, delivery state and reward of epoch N: the
    /// gateway's estimate next to the collector's figure and reasons.
    Show {
        /// The epoch number.
        epoch: u64,
        #[command(flatten)]
        at: LedgerLocation,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also write the signed report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

impl EpochsCommand {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            EpochsCommand::List { at, json } => {
                crate::epochs::inspect::list(&data_dir(&at)?, json)?;
                Ok(ExitCode::SUCCESS)
            }
            EpochsCommand::Show {
                epoch,
                at,
                json,
                out,
            } => Ok(exit(crate::epochs::inspect::show(
                &data_dir(&at)?,
                epoch,
                json,
                out.as_deref(),
            )?)),
        }
    }
}
