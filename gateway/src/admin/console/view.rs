//! What the console shows, gathered in one place: the page and the
//! scrape-time gauges of `/metrics` read the same [`Snapshot`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use depin_protocol::rewards::{ProofResults, proof_score_ppm};
use depin_protocol::time::now_ms;

use crate::epochs::{ClosedEpoch, EpochStore};
use crate::ledger::{LEDGER_FILE, WAL_FILE};
use crate::plugin_table::PluginTable;
use crate::proofs::self_check::{SelfCheckBoard, SelfCheckResult};

/// Closed epochs the console and the gauges look back over.
pub const RECENT_EPOCHS: u64 = 24;
/// Epochs in the usage chart.
pub const CHART_EPOCHS: usize = 12;
/// Error kinds that mean a plugin hit one of its limits.
pub const LIMIT_KINDS: [&str; 5] = ["deadline", "memory", "fuel", "busy", "timeout"];

/// Where the console reads from. Everything is shared with the running
/// gateway; nothing here writes.
pub struct ConsoleSources {
    pub data_dir: PathBuf,
    /// The epoch store the closer writes (one handle per process).
    pub epochs: Arc<EpochStore>,
    pub self_checks: Arc<SelfCheckBoard>,
    /// The collector's URL when `[upstream]` is configured.
    pub upstream: Option<String>,
}

/// One plugin's row.
#[derive(Debug, Clone)]
pub struct PluginRow {
    pub name: String,
    pub digest: String,
    pub kind: &'static str,
    pub version: String,
    pub route: Option<String>,
    pub udp: Option<String>,
    pub mqtt: Option<String>,
    pub calls: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub limits_hit: u64,
}

/// Usage of one (plugin, source, unit) over the recent epochs, oldest
/// first.
#[derive(Debug, Clone)]
pub struct UsageSeries {
    pub plugin: String,
    pub source: String,
    pub unit: String,
    pub points: Vec<(u64, u128)>,
}

/// What the collector said about an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectorView {
    /// No collector is configured and the epoch was never delivered.
    NoCollector,
    /// Delivered or waiting, and the collector's figure is not known here.
    NotYetReported,
    /// The collector's figure (from its acknowledgement) and the distinct
    /// reasons of its reward lines, each with how many lines carry it.
    Reported {
        figure_micro: u128,
        reasons: Vec<String>,
    },
}

/// One closed epoch's row.
#[derive(Debug, Clone)]
pub struct EpochRow {
    pub epoch: u64,
    pub start_ms: u64,
    pub length_ms: u64,
    pub records: u64,
    pub reward_micro: u128,
    pub proofs: ProofResults,
    /// `pending`, `delivered` or `local`.
    pub delivery: &'static str,
    pub acknowledged_ms: Option<u64>,
    pub collector: CollectorView,
}

/// A challenge result as the collector judged it.
#[derive(Debug, Clone)]
pub struct ChallengeRow {
    pub id: String,
    pub passed: bool,
    /// The epoch it was counted in; `None` while it waits for the next.
    pub epoch: Option<u64>,
}

/// Disk use of the data directory.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    pub ledger_bytes: u64,
    pub wal_bytes: u64,
    pub epochs_bytes: u64,
    /// (plugin, bytes stored, quota) per plugin with a blob store.
    pub blobs: Vec<(String, u64, u64)>,
    /// Free bytes for an unprivileged writer, and the file system's size.
    pub disk: Option<(u64, u64)>,
}

/// The outbox and the collector connection.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    pub upstream: Option<String>,
    pub depth: u64,
    pub oldest_pending: Option<u64>,
    pub last_acknowledged_ms: Option<u64>,
    pub deliveries: crate::metrics::DeliveryState,
}

/// Everything on the page.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now_ms: u64,
    pub plugins: Vec<PluginRow>,
    pub usage: Vec<UsageSeries>,
    pub epochs: Vec<EpochRow>,
    pub challenges: Vec<ChallengeRow>,
    /// Passed and issued over `challenges`.
    pub score: ProofResults,
    pub self_checks: Vec<SelfCheckResult>,
    pub outbox: Outbox,
    pub storage: Storage,
    /// Problems met while gathering (shown, never hidden).
    pub problems: Vec<String>,
}

impl Snapshot {
    /// Reads everything; blocking (file system and epoch store).
    pub fn gather(sources: &ConsoleSources, table: &PluginTable) -> Self {
        let mut problems = Vec::new();
        let set = table.snapshot();
        let metrics = crate::metrics::global();
        let plugins = set
            .plugins
            .iter()
            .map(|(cfg, p)| {
                let counters = metrics.plugin(&cfg.name);
                let errors = counters
                    .as_ref()
                    .map(|c| c.errors_by_kind.clone())
                    .unwrap_or_default();
                let limits_hit = errors
                    .iter()
                    .filter(|(k, _)| LIMIT_KINDS.contains(k))
                    .map(|(_, n)| n)
                    .sum();
                PluginRow {
                    name: cfg.name.clone(),
                    digest: p.digest.clone(),
                    kind: crate::runtime::contract::kind_name(p.info.kind),
                    version: p.info.version.clone(),
                    route: cfg.route.clone(),
                    udp: cfg.udp.as_ref().map(|u| u.listen.to_string()),
                    mqtt: cfg
                        .mqtt
                        .as_ref()
                        .map(|m| format!("{} ({})", m.host, m.topics.join(", "))),
                    calls: counters.as_ref().map_or(0, |c| c.calls()),
                    errors,
                    limits_hit,
                }
            })
            .collect();
        let recent = match recent_epochs(&sources.epochs, RECENT_EPOCHS) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("epoch store: {e}"));
                Vec::new()
            }
        };
        let upstream = sources.upstream.is_some();
        let epochs: Vec<EpochRow> = recent
            .iter()
            .rev()
            .map(|e| {
                let r = &e.report.report;
                EpochRow {
                    epoch: r.epoch,
                    start_ms: r.start_ms(),
                    length_ms: r.length_ms,
                    records: r.records,
                    reward_micro: r.reward_micro,
                    proofs: r.proof_results(),
                    delivery: delivery(e),
                    acknowledged_ms: e.acknowledged_ms,
                    collector: collector_view(e, upstream),
                }
            })
            .collect();
        let usage = usage_series(&recent);
        let mut challenges: Vec<ChallengeRow> = match sources.epochs.proofs_due_before(u64::MAX) {
            Ok(p) => p
                .into_iter()
                .map(|p| ChallengeRow {
                    id: p.challenge_id,
                    passed: p.passed,
                    epoch: None,
                })
                .collect(),
            Err(e) => {
                problems.push(format!("pending challenge results: {e}"));
                Vec::new()
            }
        };
        for e in recent.iter().rev() {
            let r = &e.report.report;
            challenges.extend(r.proofs.iter().map(|p| ChallengeRow {
                id: p.challenge_id.clone(),
                passed: p.passed,
                epoch: Some(r.epoch),
            }));
        }
        let score = ProofResults {
            issued: challenges.len() as u32,
            passed: challenges.iter().filter(|c| c.passed).count() as u32,
        };
        let outbox = Outbox {
            upstream: sources.upstream.clone(),
            depth: sources.epochs.outbox_len().unwrap_or_else(|e| {
                problems.push(format!("outbox: {e}"));
                0
            }),
            oldest_pending: sources
                .epochs
                .outbox_first()
                .ok()
                .flatten()
                .map(|e| e.epoch),
            last_acknowledged_ms: recent.iter().filter_map(|e| e.acknowledged_ms).max(),
            deliveries: metrics.deliveries(),
        };
        let storage = Storage {
            ledger_bytes: file_size(&sources.data_dir.join(LEDGER_FILE)),
            wal_bytes: file_size(&sources.data_dir.join(WAL_FILE)),
            epochs_bytes: file_size(&sources.data_dir.join(crate::epochs::store::EPOCHS_FILE)),
            blobs: set
                .plugins
                .iter()
                .filter_map(|(cfg, p)| {
                    let u = p.shared.blobs.as_ref()?.usage();
                    Some((cfg.name.clone(), u.bytes, u.quota))
                })
                .collect(),
            disk: disk_space(&sources.data_dir),
        };
        Snapshot {
            now_ms: now_ms(),
            plugins,
            usage,
            epochs,
            challenges,
            score,
            self_checks: sources.self_checks.results(),
            outbox,
            storage,
            problems,
        }
    }

    /// The running proof score over the recent challenges, 0..=1.
    pub fn score_ratio(&self) -> f64 {
        proof_score_ppm(self.score) as f64 / 1_000_000.0
    }
}

/// The last `n` closed epochs, oldest first.
pub fn recent_epochs(
    store: &EpochStore,
    n: u64,
) -> Result<Vec<ClosedEpoch>, crate::epochs::EpochStoreError> {
    let Some(cursor) = store.cursor()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for epoch in cursor.next_epoch.saturating_sub(n)..cursor.next_epoch {
        if let Some(e) = store.get(epoch)? {
            out.push(e);
        }
    }
    Ok(out)
}

fn delivery(e: &ClosedEpoch) -> &'static str {
    match (e.pending, e.acknowledged_ms) {
        (true, _) => "pending",
        (false, Some(_)) => "delivered",
        (false, None) => "local",
    }
}

fn collector_view(e: &ClosedEpoch, upstream: bool) -> CollectorView {
    if let Some(figure) = &e.collector {
        let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
        for line in &figure.lines {
            *reasons.entry(line.reason.as_str()).or_default() += 1;
        }
        CollectorView::Reported {
            figure_micro: figure.reward_micro,
            reasons: reasons
                .into_iter()
                .map(|(reason, n)| format!("{reason} ×{n}"))
                .collect(),
        }
    } else if !upstream && e.acknowledged_ms.is_none() {
        CollectorView::NoCollector
    } else {
        CollectorView::NotYetReported
    }
}

/// Quantity per (plugin, source, unit) and epoch, over `epochs` (oldest
/// first); the last [`CHART_EPOCHS`] epochs, zero where a unit had none.
fn usage_series(epochs: &[ClosedEpoch]) -> Vec<UsageSeries> {
    let shown = &epochs[epochs.len().saturating_sub(CHART_EPOCHS)..];
    let mut series: BTreeMap<(String, String, String), Vec<(u64, u128)>> = BTreeMap::new();
    for t in shown.iter().flat_map(|e| &e.report.report.totals) {
        series
            .entry((t.plugin.clone(), t.source.clone(), t.unit.clone()))
            .or_insert_with(|| shown.iter().map(|e| (e.report.report.epoch, 0)).collect());
    }
    for (i, e) in shown.iter().enumerate() {
        for t in &e.report.report.totals {
            if let Some(points) =
                series.get_mut(&(t.plugin.clone(), t.source.clone(), t.unit.clone()))
            {
                points[i].1 += t.quantity;
            }
        }
    }
    series
        .into_iter()
        .map(|((plugin, source, unit), points)| UsageSeries {
            plugin,
            source,
            unit,
            points,
        })
        .collect()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// (free, total) bytes of the file system holding `path`.
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid C string and `s` a properly sized out value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let unit = s.f_frsize as u64;
    Some((s.f_bavail as u64 * unit, s.f_blocks as u64 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_of_an_existing_directory_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = disk_space(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
        assert!(disk_space(&dir.path().join("missing")).is_none());
    }
}
