//! `depin-collector explain --gateway ID --epoch N`: the collector's
//! decision on one epoch, as `GET /v1/gateways/{id}/epochs/{n}` serves it.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::config::CollectorConfig;
use crate::store::Store;

/// Prints the decision; exit code 1 when there is none.
pub fn run(config_path: &Path, gateway: &str, epoch: u64, json: bool) -> anyhow::Result<ExitCode> {
    let config = CollectorConfig::load(config_path)?;
    let found = crate::block_on(async {
        let store = Store::open(config.store.as_ref(), &config.data_dir).await?;
        Ok(store.explain(gateway, epoch).await?)
    })?;
    let Some(decision) = found else {
        eprintln!("no report of {gateway} for epoch {epoch} was received");
        return Ok(ExitCode::FAILURE);
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&decision)?)?;
    } else {
        write!(out, "{}", render(&decision))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The decision as text: a header, the proof score and one line per
/// total with its reason.
pub fn render(d: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!("gateway:   {}\n", s(&d["gateway_id"])));
    out.push_str(&format!("epoch:     {}\n", s(&d["epoch"])));
    if d["status"] == "refused" {
        out.push_str(&format!(
            "status:    refused ({}): {}\nreward:    0 micro, every line refused-report\n",
            s(&d["refusal"]),
            s(&d["message"])
        ));
        return out;
    }
    let p = &d["proofs"];
    out.push_str(&format!(
        "status:    accepted (report v{}, {})\n",
        s(&d["version"]),
        s(&d["report_hash"])
    ));
    out.push_str(&format!(
        "proofs:    {} due: {} passed, {} failed, {} expired (score {} ppm, multiplier {} ppm)\n",
        s(&p["due"]),
        s(&p["passed"]),
        s(&p["failed"]),
        s(&p["expired"]),
        s(&d["proof_score_ppm"]),
        s(&d["multiplier_ppm"])
    ));
    if let Some(list) = p["discrepancies"].as_array()
        && !list.is_empty()
    {
        out.push_str(&format!(
            "           the report's own list differs in {} place(s); not counted\n",
            list.len()
        ));
    }
    out.push_str(&format!(
        "reward:    {} micro (the gateway estimated {})\n",
        s(&d["reward_micro"]),
        s(&d["estimate_micro"])
    ));
    out.push_str(&format!(
        "  {:<16} {:<14} {:<6} {:<16} {:>20} {:>12} {:>14}  REASON\n",
        "PLUGIN", "DIGEST", "SOURCE", "UNIT", "QUANTITY", "RATE", "AMOUNT_MICRO"
    ));
    for l in d["lines"].as_array().into_iter().flatten() {
        let digest = s(&l["digest"]);
        let digest = digest.strip_prefix("sha256:").unwrap_or(&digest);
        let rate = match (l["rate_micro"].as_str(), l["rate_per"].as_str()) {
            (Some(m), Some(per)) => format!("{m}/{per}"),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "  {:<16} {:<14} {:<6} {:<16} {:>20} {:>12} {:>14}  {}\n",
            s(&l["plugin"]),
            &digest[..digest.len().min(12)],
            s(&l["source"]),
            s(&l["unit"]),
            s(&l["quantity"]),
            rate,
            s(&l["amount_micro"]),
            s(&l["reason"])
        ));
    }
    out
}
