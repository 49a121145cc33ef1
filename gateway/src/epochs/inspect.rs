//! `depin-gateway epochs list|show` and `report verify`.

use std::io::Write;
use std::path::Path;

use depin_protocol::report::SignedReport;

use super::store::EPOCHS_FILE;
use super::{ClosedEpoch, EpochStore};

fn state(e: &ClosedEpoch) -> &'static str {
    match (e.pending, e.acknowledged_ms) {
        (true, _) => "pending",
        (false, Some(_)) => "delivered",
        (false, None) => "local",
    }
}

/// A report as JSON (what `epochs show --json` and `report verify --json`
/// print).
pub fn report_json(r: &SignedReport) -> serde_json::Value {
    let p = &r.report;
    serde_json::json!({
        "gateway_id": p.gateway_id(),
        "epoch": p.epoch,
        "start_ms": p.start_ms(),
        "length_ms": p.length_ms,
        "hash": hex::encode(r.hash()),
        "prev_hash": hex::encode(p.prev_hash),
        "first_seq": p.first_seq,
        "records": p.records,
        "merkle_root": hex::encode(p.merkle_root),
        "version": p.version,
        "components": p.components.iter().map(|c| serde_json::json!({
            "plugin": c.plugin, "digest": c.digest_string(), "signer": c.signer_string(),
        })).collect::<Vec<_>>(),
        "totals": p.totals,
        "subject_totals": p.subject_totals,
        "proofs": p.proofs,
        "reward_micro": p.reward_micro.to_string(),
    })
}

fn open(data_dir: &Path) -> anyhow::Result<EpochStore> {
    let path = data_dir.join(EPOCHS_FILE);
    if !path.exists() {
        anyhow::bail!(
            "{}: no epoch store here (has the gateway run with this data_dir?)",
            path.display()
        );
    }
    Ok(EpochStore::open(data_dir)?)
}

/// Prints every closed epoch, one line each.
pub fn list(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let epochs = open(data_dir)?.list()?;
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<_> = epochs
            .iter()
            .map(|e| {
                let mut v = report_json(&e.report);
                v["delivery"] = state(e).into();
                if let Some(f) = &e.collector {
                    v["collector"] = serde_json::json!(f);
                }
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>14}  {:>9}  {:>16}  {:>16}  {:<9}  ROOT",
        "EPOCH", "RECORDS", "ESTIMATE_MICRO", "COLLECTOR_MICRO", "DELIVERY"
    )?;
    for e in &epochs {
        let r = &e.report.report;
        writeln!(
            out,
            "{:>14}  {:>9}  {:>16}  {:>16}  {:<9}  {}",
            r.epoch,
            r.records,
            r.reward_micro,
            e.collector
                .as_ref()
                .map_or("-".to_string(), |f| f.reward_micro.to_string()),
            state(e),
            hex::encode(r.merkle_root)
        )?;
    }
    if epochs.is_empty() {
        writeln!(out, "(no epoch closed yet)")?;
    }
    Ok(())
}

/// Prints one epoch; writes its signed report to `out_file` when given.
/// Returns false when there is no such epoch.
pub fn show(
    data_dir: &Path,
    epoch: u64,
    json: bool,
    out_file: Option<&Path>,
) -> anyhow::Result<bool> {
    let Some(e) = open(data_dir)?.get(epoch)? else {
        eprintln!("no closed epoch {epoch}");
        return Ok(false);
    };
    if let Some(f) = out_file {
        std::fs::write(f, &e.report.bytes)
            .map_err(|err| anyhow::anyhow!("{}: {err}", f.display()))?;
    }
    let mut v = report_json(&e.report);
    v["delivery"] = state(&e).into();
    if let Some(ms) = e.acknowledged_ms {
        v["acknowledged_ms"] = ms.into();
    }
    if let Some(f) = &e.collector {
        v["collector"] = serde_json::json!(f);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&e.report);
        println!("delivery:     {}", state(&e));
        print_side_by_side(&e);
    }
    Ok(true)
}

/// The gateway's estimate next to the collector's figure, line by line
/// with the collector's reason, once the collector has answered.
fn print_side_by_side(e: &ClosedEpoch) {
    let p = &e.report.report;
    let Some(f) = &e.collector else {
        println!(
            "collector:    no figure yet (estimate {} micro)",
            p.reward_micro
        );
        return;
    };
    println!(
        "reward:       estimate {} micro, collector {} micro (proof score {:.3})",
        p.reward_micro,
        f.reward_micro,
        f.proof_score_ppm as f64 / 1e6
    );
    println!(
        "  {:<16} {:<14} {:<6} {:<16} {:>20} {:>12} {:>14}  REASON",
        "PLUGIN", "DIGEST", "SOURCE", "UNIT", "QUANTITY", "RATE", "AMOUNT_MICRO"
    );
    for l in &f.lines {
        let rate = match (l.rate_micro, l.rate_per) {
            (Some(m), Some(per)) => format!("{m}/{per}"),
            _ => "-".into(),
        };
        let digest = l.digest.strip_prefix("sha256:").unwrap_or(&l.digest);
        println!(
            "  {:<16} {:<14} {:<6} {:<16} {:>20} {:>12} {:>14}  {}",
            l.plugin,
            &digest[..digest.len().min(12)],
            l.source,
            l.unit,
            l.quantity,
            rate,
            l.amount_micro,
            l.reason.as_str()
        );
    }
}

fn print_report(r: &SignedReport) {
    let p = &r.report;
    println!("gateway:      {}", p.gateway_id());
    println!(
        "epoch:        {} (start {} ms, {} ms long)",
        p.epoch,
        p.start_ms(),
        p.length_ms
    );
    println!("records:      {} (from {})", p.records, p.first_seq);
    println!("encoding:     v{}", p.version);
    for c in &p.components {
        match c.signer_string() {
            Some(signer) => println!(
                "component:    {:<16} {} signed by {signer}",
                c.plugin,
                c.digest_string()
            ),
            None => println!("component:    {:<16} {}", c.plugin, c.digest_string()),
        }
    }
    println!("merkle root:  {}", hex::encode(p.merkle_root));
    println!("report hash:  {}", hex::encode(r.hash()));
    println!("previous:     {}", hex::encode(p.prev_hash));
    let pr = p.proof_results();
    println!("proofs:       {} of {} passed", pr.passed, pr.issued);
    println!("estimate:     {} micro (the gateway's own)", p.reward_micro);
    println!("totals:");
    for t in &p.totals {
        println!(
            "  {:<16} {:<18} {:<6} {:<16} {:>8} records {:>20} ({} subjects)",
            t.plugin, t.kind, t.source, t.unit, t.records, t.quantity, t.subjects
        );
    }
    if !p.subject_totals.is_empty() {
        println!("per subject (plugin-claimed):");
        for t in &p.subject_totals {
            println!(
                "  {:<16} {:<16} {:<24} {:>8} records {:>20}",
                t.plugin, t.unit, t.subject, t.records, t.quantity
            );
        }
    }
}

/// Checks a signed report file offline: encoding and signature. Prints the
/// report when valid; returns whether it is.
pub fn verify_file(file: &Path, json: bool) -> anyhow::Result<bool> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    match SignedReport::decode(&bytes) {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report_json(&r))?);
            } else {
                println!("ok: signature and encoding are valid");
                print_report(&r);
            }
            Ok(true)
        }
        Err(e) => {
            println!("invalid: {e}");
            Ok(false)
        }
    }
}
