//! `depin-gateway rewards preview`: what past epochs would have earned
//! under a proposed policy. Each closed epoch's totals are recomputed from
//! the local ledger (and checked against its signed report), then priced
//! with the shared reward function under the configured policy and the
//! proposed one, side by side.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use depin_protocol::rewards::{ProofResults, RewardInput, RewardPolicy};

use super::progress::Progress;
use super::{LedgerLocation, data_dir};
use crate::config::{GatewayConfig, load_policy};
use crate::epochs::{ClosedEpoch, EpochStore};
use crate::ledger::LedgerReader;

#[derive(Debug, Subcommand)]
pub(super) enum RewardsCommand {
    /// Recompute past epochs from the local ledger under a proposed policy,
    /// beside the reported figures and the configured policy's. Exits with
    /// 1 when the ledger does not match an epoch's signed report.
    Preview {
        #[command(flatten)]
        at: LedgerLocation,
        /// The proposed policy file (the format of `[epochs] policy`).
        #[arg(long)]
        policy: PathBuf,
        /// Only these epochs: `A..B` (both included), `A..` or `..B`.
        #[arg(long, value_parser = parse_range)]
        epochs: Option<(u64, u64)>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}` is not A..B"))?;
    let num = |x: &str, default: u64| {
        if x.is_empty() {
            Ok(default)
        } else {
            x.parse::<u64>()
                .map_err(|_| format!("`{x}` is not an epoch number"))
        }
    };
    let (a, b) = (num(a, 0)?, num(b, u64::MAX)?);
    if a > b {
        return Err(format!("{a} is after {b}"));
    }
    Ok((a, b))
}

impl RewardsCommand {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            RewardsCommand::Preview {
                at,
                policy,
                epochs,
                json,
            } => preview(&at, &policy, epochs, json),
        }
    }
}

/// One (plugin, source, unit) of an epoch, priced both ways.
#[derive(Debug, Clone, serde::Serialize)]
struct Line {
    plugin: String,
    kind: String,
    source: String,
    unit: String,
    records: u64,
    #[serde(serialize_with = "as_string")]
    quantity: u128,
    #[serde(serialize_with = "as_string_opt")]
    current_micro: Option<u128>,
    #[serde(serialize_with = "as_string")]
    proposed_micro: u128,
}

/// One epoch, priced both ways.
#[derive(Debug, Clone, serde::Serialize)]
struct EpochPreview {
    epoch: u64,
    records: u64,
    proofs_issued: u32,
    proofs_passed: u32,
    /// The figure in the signed report (what `epochs list` shows).
    #[serde(serialize_with = "as_string")]
    reported_micro: u128,
    #[serde(serialize_with = "as_string_opt")]
    current_micro: Option<u128>,
    #[serde(serialize_with = "as_string")]
    proposed_micro: u128,
    /// Whether the ledger's records add up to the report's totals.
    ledger_matches_report: bool,
    lines: Vec<Line>,
}

fn as_string<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn as_string_opt<S: serde::Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&v.to_string()),
        None => s.serialize_none(),
    }
}

/// The configured policy, when the configuration is known: its
/// `[epochs] policy` file, or no rates at all without one.
fn current_policy(at: &LedgerLocation) -> anyhow::Result<Option<RewardPolicy>> {
    let config = match (&at.config, &at.data_dir) {
        (Some(c), _) => GatewayConfig::load(c)?,
        (None, None) if Path::new("gateway.toml").exists() => {
            GatewayConfig::load(Path::new("gateway.toml"))?
        }
        _ => return Ok(None),
    };
    Ok(Some(match &config.epochs.policy {
        Some(p) => load_policy(p)?,
        None => RewardPolicy::default(),
    }))
}

/// A line's amount under `policy`: the shared reward function on that
/// line alone, with no proof scaling and no epoch cap (those apply to the
/// epoch as a whole).
fn line_amount(policy: &RewardPolicy, input: RewardInput<'_>) -> u128 {
    let uncapped = RewardPolicy {
        epoch_cap_micro: None,
        ..policy.clone()
    };
    uncapped.reward([input], ProofResults::default())
}

/// Totals per (plugin, source, unit): (records, quantity).
type Totals = BTreeMap<(String, String, String), (u64, u128)>;

fn preview(
    at: &LedgerLocation,
    proposed_file: &Path,
    range: Option<(u64, u64)>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let proposed = load_policy(proposed_file)?;
    let current = current_policy(at)?;
    let dir = data_dir(at)?;
    let store_path = dir.join(crate::epochs::store::EPOCHS_FILE);
    if !store_path.exists() {
        anyhow::bail!(
            "{}: no epoch store here (has the gateway run with this data_dir?)",
            store_path.display()
        );
    }
    let (from, to) = range.unwrap_or((0, u64::MAX));
    let epochs: Vec<ClosedEpoch> = EpochStore::open(&dir)?
        .list()?
        .into_iter()
        .filter(|e| (from..=to).contains(&e.report.report.epoch))
        .collect();
    let totals = ledger_totals(&dir, &epochs)?;
    let previews: Vec<EpochPreview> = epochs
        .iter()
        .zip(totals)
        .map(|(e, t)| price(e, t, current.as_ref(), &proposed))
        .collect();
    print(&previews, json)?;
    Ok(if previews.iter().all(|p| p.ledger_matches_report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads each epoch's records from the ledger (one pass, in sequence
/// order) and totals them.
fn ledger_totals(dir: &Path, epochs: &[ClosedEpoch]) -> anyhow::Result<Vec<Totals>> {
    let mut totals = vec![Totals::new(); epochs.len()];
    // first_seq -> epoch index, for the epochs that have records.
    let ranges: BTreeMap<u64, usize> = epochs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.report.report.records > 0)
        .map(|(i, e)| (e.report.report.first_seq, i))
        .collect();
    let Some(last) = epochs
        .iter()
        .map(|e| e.report.report.first_seq + e.report.report.records)
        .max()
    else {
        return Ok(totals);
    };
    let reader = LedgerReader::open(dir)?;
    let mut progress = Progress::new("rewards preview", "records", Some(last.saturating_sub(1)));
    let mut bad = None;
    reader.for_each(|seq, parsed| {
        progress.advance(1);
        if seq >= last {
            return false;
        }
        let record = match parsed {
            Ok((_, _, r)) => r,
            Err(e) => {
                bad = Some(format!("record {seq}: {e}"));
                return false;
            }
        };
        if let Some((first, &i)) = ranges.range(..=seq).next_back()
            && seq < first + epochs[i].report.report.records
        {
            let t = totals[i]
                .entry((
                    record.plugin,
                    record.source.as_str().to_string(),
                    record.unit,
                ))
                .or_default();
            t.0 += 1;
            t.1 += u128::from(record.quantity);
        }
        true
    })?;
    if let Some(b) = bad {
        anyhow::bail!("the ledger cannot be read: {b}");
    }
    Ok(totals)
}

fn price(
    e: &ClosedEpoch,
    totals: Totals,
    current: Option<&RewardPolicy>,
    proposed: &RewardPolicy,
) -> EpochPreview {
    let r = &e.report.report;
    let reported: Totals = r
        .totals
        .iter()
        .map(|t| {
            (
                (t.plugin.clone(), t.source.clone(), t.unit.clone()),
                (t.records, t.quantity),
            )
        })
        .collect();
    let kinds: BTreeMap<&str, &str> = r
        .totals
        .iter()
        .map(|t| (t.plugin.as_str(), t.kind.as_str()))
        .collect();
    let matches = reported == totals;
    let lines: Vec<Line> = totals
        .into_iter()
        .map(|((plugin, source, unit), (records, quantity))| {
            let kind = kinds.get(plugin.as_str()).copied().unwrap_or("other");
            let input = RewardInput {
                kind,
                source: &source,
                unit: &unit,
                quantity,
            };
            Line {
                current_micro: current.map(|p| line_amount(p, input.clone())),
                proposed_micro: line_amount(proposed, input.clone()),
                kind: kind.to_string(),
                plugin,
                source,
                unit,
                records,
                quantity,
            }
        })
        .collect();
    let proofs = r.proof_results();
    let epoch_reward = |policy: &RewardPolicy| {
        policy.reward(
            lines.iter().map(|l| RewardInput {
                kind: &l.kind,
                source: &l.source,
                unit: &l.unit,
                quantity: l.quantity,
            }),
            proofs,
        )
    };
    EpochPreview {
        epoch: r.epoch,
        records: r.records,
        proofs_issued: proofs.issued,
        proofs_passed: proofs.passed,
        reported_micro: r.reward_micro,
        current_micro: current.map(epoch_reward),
        proposed_micro: epoch_reward(proposed),
        ledger_matches_report: matches,
        lines,
    }
}

fn print(previews: &[EpochPreview], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(previews)?)?;
        return Ok(());
    }
    let opt = |v: Option<u128>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    writeln!(
        out,
        "{:>14}  {:>9}  {:>7}  {:>16}  {:>16}  {:>16}  {:>17}",
        "EPOCH", "RECORDS", "PROOFS", "REPORTED", "CURRENT", "PROPOSED", "CHANGE"
    )?;
    for p in previews {
        let base = p.current_micro.unwrap_or(p.reported_micro);
        let change = p.proposed_micro as i128 - base as i128;
        writeln!(
            out,
            "{:>14}  {:>9}  {:>7}  {:>16}  {:>16}  {:>16}  {:>+17}{}",
            p.epoch,
            p.records,
            format!("{}/{}", p.proofs_passed, p.proofs_issued),
            p.reported_micro,
            opt(p.current_micro),
            p.proposed_micro,
            change,
            if p.ledger_matches_report {
                ""
            } else {
                "  LEDGER DIFFERS FROM REPORT"
            }
        )?;
    }
    if previews.is_empty() {
        writeln!(out, "(no closed epoch in range)")?;
        return Ok(());
    }
    writeln!(
        out,
        "\nlines (before the proof score and the epoch cap):\n{:>14}  {:<16}  {:<17}  {:<6}  {:<16}  {:>20}  {:>14}  {:>14}",
        "EPOCH", "PLUGIN", "KIND", "SOURCE", "UNIT", "QUANTITY", "CURRENT", "PROPOSED"
    )?;
    for p in previews {
        for l in &p.lines {
            writeln!(
                out,
                "{:>14}  {:<16}  {:<17}  {:<6}  {:<16}  {:>20}  {:>14}  {:>14}",
                p.epoch,
                l.plugin,
                l.kind,
                l.source,
                l.unit,
                l.quantity,
                opt(l.current_micro),
                l.proposed_micro
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ranges_parse_with_open_ends() {
        assert_eq!(parse_range("3..7"), Ok((3, 7)));
        assert_eq!(parse_range("3.."), Ok((3, u64::MAX)));
        assert_eq!(parse_range("..7"), Ok((0, 7)));
        assert!(parse_range("7..3").is_err());
        assert!(parse_range("7").is_err());
        assert!(parse_range("a..3").is_err());
    }

    #[test]
    fn a_line_is_priced_without_the_epoch_cap() {
        let p: RewardPolicy = toml::from_str(
            "epoch_cap_micro = 5\n[[rate]]\nkind = \"*\"\nunit = \"u\"\nmicro = 3\n",
        )
        .unwrap();
        let input = RewardInput {
            kind: "other",
            source: "plugin",
            unit: "u",
            quantity: 10,
        };
        assert_eq!(line_amount(&p, input.clone()), 30);
        assert_eq!(p.reward([input], ProofResults::default()), 5);
    }
}
