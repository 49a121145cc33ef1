//! Gauges read at scrape time from the same [`Snapshot`] as the page:
//! readiness, disk, ledger and blob sizes, undelivered reports, the running
//! proof score and failing self-checks. Appended to `/metrics`.

use std::fmt::Write as _;

use super::view::Snapshot;

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gauges in Prometheus text format.
pub fn render(s: &Snapshot, ready: bool) -> String {
    let mut out = String::with_capacity(2048);
    header(
        &mut out,
        "depin_ready",
        "1 when /readyz answers 200, else 0.",
    );
    let _ = writeln!(out, "depin_ready {}", u8::from(ready));
    if let Some((free, total)) = s.storage.disk {
        header(
            &mut out,
            "depin_disk_free_bytes",
            "Bytes free for the gateway on the file system of its data directory.",
        );
        let _ = writeln!(out, "depin_disk_free_bytes {free}");
        header(
            &mut out,
            "depin_disk_size_bytes",
            "Size of the file system of the data directory.",
        );
        let _ = writeln!(out, "depin_disk_size_bytes {total}");
    }
    header(
        &mut out,
        "depin_ledger_bytes",
        "Size of the ledger's files: the ledger, its write-ahead log, the epoch store.",
    );
    for (file, n) in [
        ("ledger", s.storage.ledger_bytes),
        ("wal", s.storage.wal_bytes),
        ("epochs", s.storage.epochs_bytes),
    ] {
        let _ = writeln!(out, "depin_ledger_bytes{{file=\"{file}\"}} {n}");
    }
    header(
        &mut out,
        "depin_blob_store_bytes",
        "Bytes in a plugin's blob store.",
    );
    for (plugin, used, _) in &s.storage.blobs {
        let _ = writeln!(
            out,
            "depin_blob_store_bytes{{plugin=\"{}\"}} {used}",
            label(plugin)
        );
    }
    header(
        &mut out,
        "depin_blob_store_quota_bytes",
        "A plugin's blob store quota.",
    );
    for (plugin, _, quota) in &s.storage.blobs {
        let _ = writeln!(
            out,
            "depin_blob_store_quota_bytes{{plugin=\"{}\"}} {quota}",
            label(plugin)
        );
    }
    header(
        &mut out,
        "depin_reports_undelivered",
        "Closed epochs whose report the collector has not acknowledged yet.",
    );
    let _ = writeln!(out, "depin_reports_undelivered {}", s.outbox.depth);
    header(
        &mut out,
        "depin_epoch_last_closed_end_seconds",
        "End of the last closed epoch, Unix seconds (0 before the first).",
    );
    let last_end = s
        .epochs
        .first()
        .map_or(0, |e| (e.start_ms + e.length_ms) / 1000);
    let _ = writeln!(out, "depin_epoch_last_closed_end_seconds {last_end}");
    header(
        &mut out,
        "depin_proof_score_ratio",
        "Share of challenges passed over the recent epochs and those waiting (1 when none).",
    );
    let _ = writeln!(out, "depin_proof_score_ratio {}", s.score_ratio());
    header(
        &mut out,
        "depin_challenges_recent",
        "Challenge results over the recent epochs and those waiting, by result.",
    );
    let _ = writeln!(
        out,
        "depin_challenges_recent{{result=\"passed\"}} {}",
        s.score.passed
    );
    let _ = writeln!(
        out,
        "depin_challenges_recent{{result=\"failed\"}} {}",
        s.score.issued - s.score.passed
    );
    header(
        &mut out,
        "depin_self_check_failing",
        "1 while the latest self-check of a plugin and kind failed.",
    );
    for c in &s.self_checks {
        let _ = writeln!(
            out,
            "depin_self_check_failing{{plugin=\"{}\",kind=\"{}\"}} {}",
            label(&c.plugin),
            label(&c.kind),
            u8::from(!c.last_passed)
        );
    }
    out
}
