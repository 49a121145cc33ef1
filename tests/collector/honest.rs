//! The honest control: real gateways, real plugins, real challenges; and
//! the collector's server bounds.

use std::time::{Duration, Instant};

use depin_e2e::upstream::{approve, file_digest, wait_for_verdicts};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, job_module, plugin, run_cli};
use serde_json::Value;

use super::*;
use crate::upstream::{gateway_epochs, gateway_id, wait_for_reports};

/// The `[epochs]` table of the tests' gateways: the collector's epochs,
/// each closed just after its grace.
fn gateway_epochs_toml() -> String {
    format!("[epochs]\nlength_ms = {LENGTH_MS}\nclose_delay_ms = 150\n")
}

on_both_stores!(an_honest_gateway_gets_every_line_rated_from_the_collectors_own_records);
async fn an_honest_gateway_gets_every_line_rated_from_the_collectors_own_records(backend: Backend) {
    let fx = Fixture::new(backend);
    let (pki, port) = (&fx.pki, fx.port);
    let cert = pki.client("honest");
    let extra = format!(
        "{}policy = \"rewards.toml\"\n{}",
        gateway_epochs_toml(),
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
    let config = fx.config(
        &[(id.clone(), cert.sha256.clone())],
        &format!(
            "{}[challenges]\ninterval_ms = 300\ninclusion = true\nmax_open = 4\nanswer_timeout_ms = 700\n\
             [[challenges.possession]]\nkind = \"echo-hash\"\nparams = \"0102\"\ndigest = \"{digest}\"\n",
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

on_both_stores!(the_collector_re_executes_canaries_honest_ones_pass_and_forged_ones_fail);
async fn the_collector_re_executes_canaries_honest_ones_pass_and_forged_ones_fail(
    backend: Backend,
) {
    let fx = Fixture::new(backend);
    let (pki, port) = (&fx.pki, fx.port);
    let cert = pki.client("compute");
    let extra = format!(
        "{}{}",
        gateway_epochs_toml(),
        pki.upstream_toml(port, &cert)
    );
    let home = Home::new(
        &[
            PluginSpec::new("compute", plugin("compute_task_plugin"), "/c")
                .table("[plugin.jobs]\nmax_fuel = 20000000000\nmax_memory_mb = 64\n")
                .config(depin_e2e::COMPUTE_TASK_CONFIG),
        ],
        &extra,
    );
    let id = gateway_id(&home);
    let (mut forger, forger_cert) = fx.forger("forger");
    let component = plugin("compute_task_plugin");
    let digest = file_digest(&component);
    let primes = fx.dir().join("primes.wasm");
    std::fs::write(&primes, job_module("primes")).unwrap();
    let module = file_digest(&primes);
    let canary = serde_json::json!({
        "module": module, "input_hex": hex::encode("20000"), "fuel": 5_000_000_000u64, "memory_mb": 16
    });
    let _collector = fx.collector(
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
    let r = depin_e2e::put_job_module(&http, "/c", job_module("primes"))
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
        &gateway_epochs_toml(),
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
    assert_eq!(last["version"], depin_protocol::report::REPORT_VERSION);
}

on_both_stores!(stalled_clients_are_dropped_and_the_collector_keeps_serving);
async fn stalled_clients_are_dropped_and_the_collector_keeps_serving(backend: Backend) {
    use tokio::io::AsyncReadExt;
    let fx = Fixture::new(backend);
    let (pki, port) = (&fx.pki, fx.port);
    let (f, cert) = fx.forger("client");
    let _collector = fx.collector(
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
