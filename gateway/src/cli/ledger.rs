//! `depin-gateway ledger`: verify the usage ledger's chain, or total it.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::progress::Progress;
use super::{LedgerLocation, data_dir};
use crate::ledger::LedgerReader;

#[derive(Debug, Subcommand)]
pub(super) enum LedgerCommand {
    /// Walk the hash chain; print "ok, N records" or the first broken link.
    /// Exits with 1 when the chain is broken.
    Verify {
        #[command(flatten)]
        at: LedgerLocation,
    },
    /// Totals per plugin, source (host/plugin) and unit.
    Summary {
        #[command(flatten)]
        at: LedgerLocation,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl LedgerCommand {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            LedgerCommand::Verify { at } => verify(&at),
            LedgerCommand::Summary { at, json } => summary(&at, json),
        }
    }
}

/// Runs `walk` over `reader` while a progress line (on a terminal)
/// follows the records it has visited.
fn with_progress<T>(
    reader: &LedgerReader,
    label: &'static str,
    walk: impl FnOnce(&LedgerReader) -> T,
) -> T {
    let total = reader.head().ok().map(|h| h.seq);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut progress = Progress::new(label, "records", total);
            let mut seen = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let now = reader.visited();
                progress.advance(now - seen);
                seen = now;
                std::thread::sleep(super::progress::REDRAW);
            }
        });
        let result = walk(reader);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    })
}

fn verify(at: &LedgerLocation) -> anyhow::Result<ExitCode> {
    let reader = LedgerReader::open(&data_dir(at)?)?;
    let report = with_progress(&reader, "ledger verify", LedgerReader::verify)?;
    match report.broken {
        None => {
            println!("ok, {} records", report.records);
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!(
                "broken at record {}: {} ({} records before it are intact)",
                b.seq, b.problem, report.records
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn summary(at: &LedgerLocation, json: bool) -> anyhow::Result<ExitCode> {
    let reader = LedgerReader::open(&data_dir(at)?)?;
    let totals = with_progress(&reader, "ledger summary", LedgerReader::summary)?;
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<_> = totals
            .iter()
            .map(|t| {
                serde_json::json!({
                    "plugin": t.plugin, "source": t.source, "unit": t.unit,
                    "records": t.records, "quantity": t.quantity.to_string(),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let widths = [
        totals
            .iter()
            .map(|t| t.plugin.len())
            .max()
            .unwrap_or(0)
            .max(6),
        6,
        totals
            .iter()
            .map(|t| t.unit.len())
            .max()
            .unwrap_or(0)
            .max(4),
    ];
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  {:>9}  {:>20}",
        "PLUGIN",
        "SOURCE",
        "UNIT",
        "RECORDS",
        "QUANTITY",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2]
    )?;
    for t in &totals {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>9}  {:>20}",
            t.plugin,
            t.source.as_str(),
            t.unit,
            t.records,
            t.quantity,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )?;
    }
    if totals.is_empty() {
        writeln!(out, "(no usage recorded yet)")?;
    }
    Ok(ExitCode::SUCCESS)
}
