//! The shipped Prometheus rules and Grafana dashboard: `promtool` accepts
//! the rules, and every metric they query is exported by a running
//! gateway's `/metrics`.

use std::collections::BTreeSet;
use std::process::Command;

use depin_e2e::ops::AdminClient;
use depin_e2e::{Home, HttpClient, PluginSpec, plugin, workspace};
use depin_gateway::RunningGateway;

const TOKEN: &str = "monitoring-token";

/// Every `depin_…` metric name in `text`.
fn queried_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("depin_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let before = rest[..i].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every metric name `/metrics` exports, histogram series included.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = workspace().join("deploy/monitoring/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("run promtool (Debian package prometheus; .ci/run installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_rules_query_is_exported() {
    let plugins =
        [PluginSpec::new("mon-t", plugin("template_plugin"), "/t").config("greeting = \"hi\"")];
    let home = Home::new(
        &plugins,
        "[self_check]\ninterval_ms = 60000\n\
         [[self_check.possession]]\nplugin = \"mon-t\"\nkind = \"echo-hash\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
    );
    std::fs::write(home.dir.path().join("admin.token"), TOKEN).unwrap();
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    for _ in 0..5 {
        assert_eq!(http.get("/t/hello?name=m").await.status, 200);
    }
    let metrics = AdminClient::new(gw.admin_addr.unwrap())
        .send("GET", "/metrics", Some(TOKEN))
        .await;
    assert_eq!(metrics.status, 200);
    let exported = exported_names(&metrics.text());
    gw.shutdown().await;

    let dir = workspace().join("deploy/monitoring");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(dir.join("grafana/depin-gateway.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let exprs: Vec<String> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
        .chain(
            json["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["definition"].as_str().map(str::to_string)),
        )
        .collect();
    let queried: BTreeSet<String> = queried_names(&rules)
        .into_iter()
        .chain(exprs.iter().flat_map(|e| queried_names(e)))
        .collect();
    assert!(queried.len() >= 15, "{queried:?}");
    for required in [
        "depin_self_check_failures_total",
        "depin_ready",
        "depin_reports_undelivered",
        "depin_proof_score_ratio",
        "depin_disk_free_bytes",
    ] {
        assert!(queried.contains(required), "{required} is not queried");
    }
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{}",
        metrics.text()
    );
}
