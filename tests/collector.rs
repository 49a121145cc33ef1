//! The collector against a dishonest gateway: validly signed reports (a
//! real device key, a real client certificate over mutual TLS) that cheat
//! in each way the collector must catch, each with its documented outcome;
//! and the honest control — a real gateway with real plugins answering real
//! challenges — that gets its full reward with every line `rated`.

use std::path::Path;
use std::time::{Duration, Instant};

use depin_e2e::forger::Forger;
use depin_e2e::upstream::{
    CollectorProcess, Pki, approve, collector_config, file_digest, free_port, schedule_toml,
    wait_for_verdicts,
};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, job_module, plugin, run_cli};
use depin_protocol::proofs::ChallengeSpec;
use depin_protocol::report::{ProofOutcome, REPORT_VERSION_LEGACY};
use depin_protocol::time::now_ms;
use depin_protocol::{GENESIS_HASH, Hash};
use serde_json::Value;

use crate::upstream::{gateway_epochs, gateway_id, get_json, wait_for_reports};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-under-test");

/// Epochs of the collector under test, ms, and how long after its end an
/// epoch's report is accepted.
const LENGTH_MS: u64 = 1000;
const GRACE_MS: u64 = 100;

/// Rates for every unit the template plugin and the storage cache record,
/// no caps, and a proof floor of one half.
const POLICY: &str = r#"
[proof]
floor_ppm = 500000

[[rate]]
kind = "other"
unit = "requests"
micro = 7

[[rate]]
kind = "other"
unit = "bytes-echoed"
micro = 1

[[rate]]
kind = "storage-cache"
unit = "bytes-out"
micro = 5

[[rate]]
kind = "*"
unit = "bytes-in"
source = "host"
micro = 3
per = 10

[[rate]]
kind = "*"
unit = "bytes-out"
source = "host"
micro = 1
per = 10

[[rate]]
kind = "*"
unit = "wall-time-us"
source = "host"
micro = 1
per = 1000

[[rate]]
kind = "*"
unit = "fuel"
source = "host"
micro = 1
per = 100000
"#;

fn digest_bytes(digest: &str) -> Hash {
    hex::decode(digest.strip_prefix("sha256:").unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

/// The epoch running now, as the collector counts them.
fn current_epoch() -> u64 {
    now_ms() / LENGTH_MS
}

/// Waits until `epoch`'s report may be accepted (ended + grace).
async fn until_acceptable(epoch: u64) {
    let from = (epoch + 1) * LENGTH_MS + GRACE_MS + 20;
    let now = now_ms();
    if now < from {
        tokio::time::sleep(Duration::from_millis(from - now)).await;
    }
}

fn reasons(decision: &Value) -> Vec<String> {
    decision["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect()
}

fn start_collector(
    dir: &Path,
    pki: &Pki,
    port: u16,
    gateways: &[(String, String)],
    extra: &str,
) -> CollectorProcess {
    let extra = format!("{}{extra}", schedule_toml(LENGTH_MS, GRACE_MS));
    let config = collector_config(dir, pki, port, gateways, POLICY, &extra);
    CollectorProcess::start(COLLECTOR_BIN, &config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_cheats_are_refused_by_name_and_count_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let (mut f, cert) = Forger::new(&pki, port, "forger");
    let template = file_digest(&plugin("template_plugin"));
    let _collector = start_collector(
        tmp.path(),
        &pki,
        port,
        &[(f.id(), cert.sha256.clone())],
        &format!(
            "{}[challenges]\ninterval_ms = 0\n",
            approve(&template, "other", None, &[])
        ),
    );
    let tpl = [("template", digest_bytes(&template))];
    let work = [("template", "other", "requests", 10)];
    let e0 = current_epoch() - 3;
    let (status, body) = f.post(f.report(e0, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"]["reward_micro"], "70", "{body}");
    let first = f.prev;

    let refused = |want: u16, name: &'static str| {
        move |(status, body): (u16, Value)| {
            assert_eq!(status, want, "{name}: {body}");
            assert_eq!(body["refused"], name, "{body}");
        }
    };
    // 100 ms epochs: 36 000 times the caps per hour
    let mut short = f.report(e0 * 10 + 10, &tpl, &work);
    short.length_ms = 100;
    refused(422, "wrong-length")(f.post(short).await);
    // the epoch running now, and one an hour ahead
    let now = current_epoch();
    refused(425, "not-ended")(f.post(f.report(now, &tpl, &work)).await);
    refused(425, "future")(f.post(f.report(now + 3600, &tpl, &work)).await);
    // a gap: epoch e0 + 2 without e0 + 1
    refused(409, "gap")(f.post(f.report(e0 + 2, &tpl, &work)).await);
    let gap = f.explain(e0 + 2).await;
    assert_eq!(gap["status"], "refused", "{gap}");
    assert_eq!(gap["refusal"], "gap", "{gap}");
    assert_eq!(gap["reason"], "refused-report", "{gap}");
    assert_eq!(gap["reward_micro"], "0", "{gap}");
    // an epoch before the first accepted one
    f.prev = first;
    refused(409, "preceding")(f.post(f.report(e0 - 1, &tpl, &work)).await);
    // the next epoch, honest
    let (status, body) = f.post(f.report(e0 + 1, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
    // an overlapping report for epoch e0 + 1 with more work in it
    let accepted = f.prev;
    f.prev = first;
    let more = [("template", "other", "requests", 10_000)];
    refused(409, "overlapping")(f.post(f.report(e0 + 1, &tpl, &more)).await);
    // the first report replayed
    f.prev = GENESIS_HASH;
    refused(409, "replayed")(f.post(f.report(e0, &tpl, &work)).await);
    f.prev = accepted;
    // a version-1 report: no digests, refused unless the policy admits it
    let mut v1 = f.report(e0 + 2, &[], &work);
    v1.version = REPORT_VERSION_LEGACY;
    refused(422, "legacy-report")(f.post(v1).await);

    // Nothing of it counted: two reports of 70 each.
    let gws = get_json(&f.https, "/v1/gateways").await;
    assert_eq!(gws[0]["reports"], 2, "{gws}");
    assert_eq!(gws[0]["reward_micro"], "140", "{gws}");
    let (_, m) = f
        .https
        .request("GET", "/metrics", Vec::new())
        .await
        .unwrap();
    let m = String::from_utf8_lossy(&m);
    for name in [
        "wrong-length",
        "not-ended",
        "future",
        "gap",
        "preceding",
        "overlapping",
        "replayed",
        "legacy-report",
    ] {
        assert!(m.contains(&format!("reason=\"{name}\"}} 1")), "{name}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_components_earn_nothing_whatever_kind_they_claim() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let (mut f, cert) = Forger::new(&pki, port, "forger");
    let template = file_digest(&plugin("template_plugin"));
    let cache = file_digest(&plugin("storage_cache_plugin"));
    // Only the real storage cache is approved, as storage-cache; the
    // template is approved as `other`.
    let _collector = start_collector(
        tmp.path(),
        &pki,
        port,
        &[(f.id(), cert.sha256.clone())],
        &format!(
            "{}{}[challenges]\ninterval_ms = 0\n",
            approve(&cache, "storage-cache", None, &[]),
            approve(&template, "other", None, &[])
        ),
    );
    let e0 = current_epoch() - 2;
    let report = f.report(
        e0,
        &[
            ("cache", digest_bytes(&cache)),
            ("fake-cache", digest_bytes(&template)),
            ("mystery", [0xab; 32]),
        ],
        &[
            ("cache", "storage-cache", "bytes-out", 1000),
            // the template claims to be a storage cache: rated as what
            // its digest is approved as, `other`, which has no such rate
            ("fake-cache", "storage-cache", "bytes-out", 1000),
            // a component nobody approved, claiming a rated kind
            ("mystery", "storage-cache", "bytes-out", 1000),
            // a plugin the report gives no digest for
            ("unlisted", "other", "requests", 1000),
        ],
    );
    let (status, body) = f.post(report).await;
    assert_eq!(status, 200, "{body}");
    let d = f.explain(e0).await;
    assert_eq!(
        d, body["decision"],
        "the acknowledgement carries the decision"
    );
    assert_eq!(
        reasons(&d),
        [
            "rated",
            "no-rate",
            "unapproved-component",
            "unapproved-component"
        ],
        "{d}"
    );
    let lines = d["lines"].as_array().unwrap();
    assert_eq!(lines[0]["amount_micro"], "5000", "{d}");
    assert_eq!(lines[0]["kind"], "storage-cache", "{d}");
    assert_eq!(
        lines[1]["kind"], "other",
        "the digest decides the kind: {d}"
    );
    assert_eq!(lines[2]["digest"], format!("sha256:{}", "ab".repeat(32)));
    assert_eq!(lines[2]["amount_micro"], "0");
    assert_eq!(lines[3]["digest"], "");
    assert_eq!(d["reward_micro"], "5000", "{d}");
    assert_eq!(d["estimate_micro"], (1u128 << 60).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_and_unanswered_challenges_count_as_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let (mut f, cert) = Forger::new(&pki, port, "forger");
    let template = file_digest(&plugin("template_plugin"));
    let _collector = start_collector(
        tmp.path(),
        &pki,
        port,
        &[(f.id(), cert.sha256.clone())],
        &format!(
            "{}[challenges]\ninterval_ms = 200\ninclusion = true\nmax_open = 4\nanswer_timeout_ms = 600\n",
            approve(&template, "other", None, &[])
        ),
    );
    let tpl = [("template", digest_bytes(&template))];
    let work = [("template", "other", "requests", 100)];
    let mut next = current_epoch() - 1;
    until_acceptable(next).await;
    let (status, body) = f.post(f.report(next, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
    next += 1;
    // Challenges come; the forger fails the first and ignores the rest.
    let mut received: Vec<ChallengeSpec> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < 2 {
        assert!(Instant::now() < deadline, "no challenges came");
        let fresh = f.poll().await;
        if received.is_empty()
            && let Some(first) = fresh.first()
        {
            let verdict = f.answer(&first.id, false, b"cannot".to_vec()).await;
            assert_eq!(verdict["status"], "failed", "{verdict}");
        }
        received.extend(fresh);
    }
    let failed = &received[0];
    // Its reports claim the failed one passed and leave out the others.
    let last_due = received.iter().map(|c| c.deadline_ms).max().unwrap() / LENGTH_MS;
    let mut decisions = Vec::new();
    while next <= last_due {
        until_acceptable(next).await;
        let mut r = f.report(next, &tpl, &work);
        if failed.deadline_ms / LENGTH_MS == next {
            r.proofs.push(ProofOutcome {
                challenge_id: failed.id.clone(),
                passed: true,
            });
        }
        let (status, body) = f.post(r).await;
        assert_eq!(status, 200, "{body}");
        decisions.push(body["decision"].clone());
        next += 1;
    }
    let mut statuses = std::collections::BTreeMap::new();
    for d in &decisions {
        for c in d["proofs"]["challenges"].as_array().unwrap() {
            statuses.insert(c["id"].as_str().unwrap().to_string(), c["status"].clone());
        }
        let due = d["proofs"]["due"].as_u64().unwrap();
        let passed = d["proofs"]["passed"].as_u64().unwrap();
        if due > passed {
            // the score is the collector's: every paying line is cut
            assert!(reasons(d).iter().all(|r| r == "proof-score"), "{d}");
            assert_ne!(d["proof_score_ppm"], "1000000", "{d}");
            assert_eq!(d["reward_micro"], "350", "floor of one half: {d}");
        }
    }
    assert_eq!(statuses[&failed.id], "failed", "{statuses:?}");
    for c in &received[1..] {
        assert_eq!(statuses[&c.id], "expired", "{statuses:?}");
    }
    let with_failed = decisions
        .iter()
        .find(|d| d["epoch"].as_u64() == Some(failed.deadline_ms / LENGTH_MS))
        .unwrap();
    let problems: Vec<&Value> = with_failed["proofs"]["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] == failed.id.as_str())
        .collect();
    assert_eq!(problems[0]["problem"], "contradicted", "{with_failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_gateway_gets_every_line_rated_from_the_collectors_own_records() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let cert = pki.client("honest");
    let port = free_port();
    let extra = format!(
        "[epochs]\nlength_ms = {LENGTH_MS}\nclose_delay_ms = 150\npolicy = \"rewards.toml\"\n{}",
        pki.upstream_toml(port, &cert)
    );
    let home = Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")],
        &extra,
    );
    std::fs::write(home.dir.path().join("rewards.toml"), POLICY).unwrap();
    let id = gateway_id(&home);
    let component = plugin("template_plugin");
    let digest = file_digest(&component);
    let config = collector_config(
        tmp.path(),
        &pki,
        port,
        &[(id.clone(), cert.sha256.clone())],
        POLICY,
        &format!(
            "{}{}[challenges]\ninterval_ms = 300\ninclusion = true\nmax_open = 4\nanswer_timeout_ms = 700\n\
             [[challenges.possession]]\nkind = \"echo-hash\"\nparams = \"0102\"\ndigest = \"{digest}\"\n",
            schedule_toml(LENGTH_MS, GRACE_MS),
            approve(&digest, "other", Some(&component), &[])
        ),
    );
    let mut collector = CollectorProcess::start(COLLECTOR_BIN, &config);
    let https = pki.https(port, &cert);
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let until = Instant::now() + Duration::from_millis(3000);
    while Instant::now() < until {
        assert_eq!(http.post("/t/echo", b"0123456789").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_verdicts(&https, Duration::from_secs(60), |passed, _| passed >= 4).await;
    let at_collector = crate::upstream::reports_at_collector(&https, &id).await;
    wait_for_reports(&https, &id, at_collector + 2).await;
    assert!(gw.terminate());
    let delivered: Vec<Value> = gateway_epochs(&home)
        .into_iter()
        .filter(|e| e["delivery"] == "delivered")
        .collect();
    assert!(delivered.len() >= 3, "{delivered:?}");
    let mut proven = 0;
    for e in &delivered {
        let n = e["epoch"].as_u64().unwrap();
        let d = get_json(&https, &format!("/v1/gateways/{id}/epochs/{n}")).await;
        assert!(reasons(&d).iter().all(|r| r == "rated"), "epoch {n}: {d}");
        assert_eq!(d["proof_score_ppm"], "1000000", "epoch {n}: {d}");
        let p = &d["proofs"];
        assert_eq!(p["failed"], 0, "{d}");
        assert_eq!(p["expired"], 0, "{d}");
        proven += p["passed"].as_u64().unwrap();
        // the gateway keeps the collector's figure next to its estimate
        assert_eq!(e["collector"]["reward_micro"], d["reward_micro"], "{e}");
        assert_eq!(e["collector"]["lines"], d["lines"], "{e}");
        if p["discrepancies"].as_array().unwrap().is_empty() {
            assert_eq!(
                e["reward_micro"], d["reward_micro"],
                "estimate = figure: {d}"
            );
        }
    }
    assert!(proven >= 2, "challenges were due in the delivered epochs");
    let busy = delivered
        .iter()
        .find(|e| e["records"].as_u64().unwrap() > 0)
        .expect("an epoch with traffic");
    let n = busy["epoch"].as_u64().unwrap();
    assert_ne!(busy["collector"]["reward_micro"], "0");
    // `epochs show` prints both figures and the collector's reasons
    let cfg = home.config_path.to_str().unwrap();
    let (code, out, err) = run_cli(BIN, &["epochs", "show", &n.to_string(), "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    let figure = busy["collector"]["reward_micro"].as_str().unwrap();
    assert!(
        out.contains(&format!(
            "estimate {} micro, collector {figure} micro",
            busy["reward_micro"].as_str().unwrap()
        )),
        "{out}"
    );
    assert!(out.contains("rated"), "{out}");
    // and `depin-collector explain` prints the same decision
    let served = get_json(&https, &format!("/v1/gateways/{id}/epochs/{n}")).await;
    collector.kill();
    let (code, out, err) = run_cli(
        COLLECTOR_BIN,
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--gateway",
            &id,
            "--epoch",
            &n.to_string(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed, served);
    let (code, out, _) = run_cli(
        COLLECTOR_BIN,
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--gateway",
            &id,
            "--epoch",
            &n.to_string(),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains(&format!("reward:    {figure} micro")), "{out}");
    assert!(out.contains("rated"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_re_executes_canaries_honest_ones_pass_and_forged_ones_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let cert = pki.client("compute");
    let port = free_port();
    let extra = format!(
        "[epochs]\nlength_ms = {LENGTH_MS}\nclose_delay_ms = 150\n{}",
        pki.upstream_toml(port, &cert)
    );
    let home = Home::new(
        &[
            PluginSpec::new("compute", plugin("compute_task_plugin"), "/c")
                .table("[plugin.jobs]\nmax_fuel = 20000000000\nmax_memory_mb = 64\n")
                .config("default_memory_mb = 32"),
        ],
        &extra,
    );
    let id = gateway_id(&home);
    let (mut forger, forger_cert) = Forger::new(&pki, port, "forger");
    let component = plugin("compute_task_plugin");
    let digest = file_digest(&component);
    let primes = tmp.path().join("primes.wasm");
    std::fs::write(&primes, job_module("primes")).unwrap();
    let module = file_digest(&primes);
    let canary = serde_json::json!({
        "module": module, "input_hex": hex::encode("20000"), "fuel": 5_000_000_000u64, "memory_mb": 16
    });
    let _collector = start_collector(
        tmp.path(),
        &pki,
        port,
        &[
            (id.clone(), cert.sha256.clone()),
            (forger.id(), forger_cert.sha256.clone()),
        ],
        &format!(
            "{}[challenges]\ninterval_ms = 300\ninclusion = false\nmax_open = 2\nanswer_timeout_ms = 20000\n\
             [[challenges.possession]]\nkind = \"canary\"\nparams = \"{}\"\ndigest = \"{digest}\"\n",
            approve(&digest, "compute-task", Some(&component), &[&primes]),
            hex::encode(serde_json::to_vec(&canary).unwrap()),
        ),
    );
    let https = pki.https(port, &cert);
    // The honest gateway holds the module and answers by running it.
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let r = http
        .send(
            "PUT",
            "/c/modules",
            bytes::Bytes::from(job_module("primes")),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let (_, failed) =
        wait_for_verdicts(&https, Duration::from_secs(90), |passed, _| passed >= 1).await;
    assert_eq!(failed, 0, "honest canaries pass");
    assert!(gw.terminate());

    // The forger reports the same component and answers with a made-up
    // result: the collector runs the job itself and fails it.
    let e0 = current_epoch() - 1;
    until_acceptable(e0).await;
    let (status, body) = forger
        .post(forger.report(e0, &[("compute", digest_bytes(&digest))], &[]))
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let challenge = loop {
        assert!(Instant::now() < deadline, "no canary for the forger");
        if let Some(c) = forger.poll().await.into_iter().find(|c| c.kind == "canary") {
            break c;
        }
    };
    assert_eq!(challenge.plugin, "compute");
    let forged = serde_json::json!({
        "output_hex": hex::encode("9999"), "fuel": 1000, "exit_code": 0, "binding": "00".repeat(32)
    });
    let verdict = forger
        .answer(&challenge.id, true, serde_json::to_vec(&forged).unwrap())
        .await;
    assert_eq!(verdict["status"], "failed", "{verdict}");
    assert_eq!(verdict["passed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_added_by_a_hot_reload_is_reported_with_its_digest() {
    let home = Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")],
        &format!("[epochs]\nlength_ms = {LENGTH_MS}\nclose_delay_ms = 150\n"),
    );
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    assert_eq!(http.post("/t/echo", b"before").await.status, 200);
    let hostile = plugin("hostile_plugin");
    let mut config = std::fs::read_to_string(&home.config_path).unwrap();
    config.push_str(&format!(
        "[[plugin]]\nname = \"added\"\ncomponent = \"{}\"\nroute = \"/a\"\n",
        hostile.display()
    ));
    std::fs::write(&home.config_path, config).unwrap();
    let reloaded_at = now_ms();
    unsafe { libc::kill(gw.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get("/a/ok").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the reload did not add the plugin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // two more epochs close after the reload
    tokio::time::sleep(Duration::from_millis(2 * LENGTH_MS + 400)).await;
    assert!(gw.terminate());
    let epochs = gateway_epochs(&home);
    let added = digest_bytes(&file_digest(&hostile));
    let template = digest_bytes(&file_digest(&plugin("template_plugin")));
    let digest_of = |e: &Value, name: &str| {
        e["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["plugin"] == name)
            .map(|c| c["digest"].as_str().unwrap().to_string())
    };
    let last = epochs.last().unwrap();
    assert!(
        last["start_ms"].as_u64().unwrap() > reloaded_at,
        "{epochs:?}"
    );
    assert_eq!(
        digest_of(last, "added"),
        Some(format!("sha256:{}", hex::encode(added))),
        "{last}"
    );
    assert_eq!(
        digest_of(last, "template"),
        Some(format!("sha256:{}", hex::encode(template)))
    );
    let first = epochs.first().unwrap();
    if first["start_ms"].as_u64().unwrap() + LENGTH_MS < reloaded_at {
        assert_eq!(digest_of(first, "added"), None, "{first}");
    }
    assert_eq!(last["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_dropped_and_the_collector_keeps_serving() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let (f, cert) = Forger::new(&pki, port, "client");
    let _collector = start_collector(
        tmp.path(),
        &pki,
        port,
        &[(f.id(), cert.sha256.clone())],
        "[server]\nhandshake_timeout_ms = 300\nheader_timeout_ms = 300\nmax_connections = 4\n\
         [challenges]\ninterval_ms = 0\n",
    );
    // More idle TCP connections than the cap: none of them sends a byte.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    // A client that completes the handshake and then says nothing.
    let tls =
        depin_gateway::upstream::tls::client_config(&pki.ca_file, &cert.cert_file, &cert.key_file)
            .unwrap();
    let started = Instant::now();
    // A real request still gets through: the stalled ones are dropped.
    let gws = get_json(&f.https, "/v1/gateways").await;
    assert_eq!(gws, serde_json::json!([]));
    assert!(started.elapsed() < Duration::from_secs(5));
    for mut s in idle {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the stalled connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let connector = tokio_rustls::TlsConnector::from(tls);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut silent = connector.connect(name, tcp).await.expect("handshake");
    let mut buf = [0u8; 256];
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("a client that sends no request is dropped")
        .unwrap_or(0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // hyper may answer 408 before closing; it never waits for ever
    assert!(
        n == 0 || buf.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        &buf[..n]
    );
    let (_, m) = f
        .https
        .request("GET", "/metrics", Vec::new())
        .await
        .unwrap();
    let m = String::from_utf8_lossy(&m);
    let timeouts: u64 = m
        .lines()
        .find(|l| l.starts_with("depin_collector_tls_handshake_timeouts_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(timeouts >= 6, "{m}");
}
