//! Epochs, signed reports and the reference collector, end to end: real
//! gateway and collector processes, real mutual TLS with a throwaway CA.

use std::time::{Duration, Instant};

use depin_e2e::upstream::{
    CollectorProcess, Pki, approve, collector_config, file_digest, free_port, schedule_toml,
    wait_for_verdicts,
};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin, run_cli};
use depin_gateway::identity::DeviceKey;
use depin_gateway::upstream::sender::CollectorClient;
use depin_protocol::report::{
    ComponentDigest, EpochReport, EpochTotal, ProofOutcome, REPORT_VERSION,
};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-under-test");

/// The policy both ends use: the template plugin's requests and bytes.
pub(crate) const POLICY: &str = r#"
[proof]
floor_ppm = 500000

[[rate]]
kind = "other"
unit = "requests"
source = "plugin"
micro = 7

[[rate]]
kind = "*"
unit = "bytes-in"
source = "host"
micro = 3
per = 10
"#;

/// A gateway home with the template plugin, 1-second epochs and a
/// collector on `port`.
fn gateway_home(pki: &Pki, port: u16, client: &depin_e2e::upstream::ClientCert) -> Home {
    let extra = format!(
        "[epochs]\nlength_ms = 1000\nclose_delay_ms = 150\npolicy = \"rewards.toml\"\n{}",
        pki.upstream_toml(port, client)
    );
    let home = Home::new(
        &[
            PluginSpec::new("template", plugin("template_plugin"), "/t"),
            PluginSpec::new("hostile", plugin("hostile_plugin"), "/h"),
        ],
        &extra,
    );
    std::fs::write(home.dir.path().join("rewards.toml"), POLICY).unwrap();
    home
}

pub(crate) fn gateway_id(home: &Home) -> String {
    DeviceKey::load(&home.key_path()).unwrap().gateway_id()
}

pub(crate) async fn get_json(client: &CollectorClient, path: &str) -> serde_json::Value {
    let (status, body) = client.request("GET", path, Vec::new()).await.expect("GET");
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

pub(crate) async fn reports_at_collector(client: &CollectorClient, id: &str) -> u64 {
    let gws = get_json(client, "/v1/gateways").await;
    gws.as_array()
        .unwrap()
        .iter()
        .find(|g| g["gateway_id"] == id)
        .map_or(0, |g| g["reports"].as_u64().unwrap())
}

pub(crate) async fn wait_for_reports(client: &CollectorClient, id: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reports_at_collector(client, id).await < n {
        assert!(Instant::now() < deadline, "collector never got {n} reports");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's closed epochs (gateway stopped), as `epochs list --json`.
pub(crate) fn gateway_epochs(home: &Home) -> Vec<serde_json::Value> {
    let config = home.config_path.to_str().unwrap();
    let (code, out, err) = run_cli(BIN, &["epochs", "list", "--config", config, "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Every delivered epoch is at the collector once with the reward its
/// acknowledgement carried (the gateway keeps it next to its estimate), the
/// delivered ones are a prefix of the chain, and the collector holds
/// nothing else.
pub(crate) async fn assert_delivered_exactly_once(home: &Home, client: &CollectorClient) -> usize {
    let id = gateway_id(home);
    let epochs = gateway_epochs(home);
    let delivered: Vec<_> = epochs
        .iter()
        .filter(|e| e["delivery"] == "delivered")
        .collect();
    let first_pending = epochs.iter().position(|e| e["delivery"] == "pending");
    if let Some(p) = first_pending {
        assert!(
            epochs[p..].iter().all(|e| e["delivery"] == "pending"),
            "delivery skipped an epoch: {epochs:?}"
        );
    }
    for e in &delivered {
        let n = e["epoch"].as_u64().unwrap();
        let rewards = get_json(client, &format!("/v1/rewards?epoch={n}")).await;
        let mine: Vec<_> = rewards["rewards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["gateway_id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "epoch {n}: {rewards}");
        assert_eq!(
            mine[0]["reward_micro"], e["collector"]["reward_micro"],
            "epoch {n}: {e}"
        );
    }
    assert_eq!(
        reports_at_collector(client, &id).await,
        delivered.len() as u64,
        "the collector counts each delivered report once"
    );
    delivered.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_arrive_once_each_with_the_estimated_reward_and_challenges_count() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let client_cert = pki.client("gw1");
    let port = free_port();
    let home = gateway_home(&pki, port, &client_cert);
    let id = gateway_id(&home);
    // inclusion challenges, a possession challenge the template proves
    // (echo-hash, checked by its own `verify`), one it cannot answer, and
    // two whose `prove` runs past its CPU deadline or traps
    let component = plugin("template_plugin");
    let digest = file_digest(&component);
    let hostile = plugin("hostile_plugin");
    let hostile_digest = file_digest(&hostile);
    let challenges = format!(
        "{schedule}{a}{b}[challenges]\ninterval_ms = 400\ninclusion = true\nmax_open = 6\nanswer_timeout_ms = 3000\n\
         [[challenges.possession]]\nkind = \"echo-hash\"\nparams = \"0102\"\ndigest = \"{digest}\"\n\
         [[challenges.possession]]\nkind = \"no-such-kind\"\ndigest = \"{digest}\"\n\
         [[challenges.possession]]\nkind = \"loop\"\ndigest = \"{hostile_digest}\"\n\
         [[challenges.possession]]\nkind = \"panic\"\ndigest = \"{hostile_digest}\"\n",
        schedule = schedule_toml(1000, 100),
        a = approve(&digest, "other", Some(&component), &[]),
        b = approve(&hostile_digest, "other", Some(&hostile), &[]),
    );
    let config = collector_config(
        tmp.path(),
        &pki,
        port,
        &[(id.clone(), client_cert.sha256.clone())],
        POLICY,
        &challenges,
    );
    let _collector = CollectorProcess::start(COLLECTOR_BIN, &config);
    let https = pki.https(port, &client_cert);
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    // traffic across several epochs, for both plugins
    let until = Instant::now() + Duration::from_millis(3200);
    while Instant::now() < until {
        let r = http.post("/t/echo", b"0123456789").await;
        assert_eq!(r.status, 200);
        assert_eq!(http.get("/h/ok").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_reports(&https, &id, 3).await;
    // challenges are answered and judged; their results go into the next
    // reports
    wait_for_verdicts(&https, Duration::from_secs(60), |passed, failed| {
        passed >= 2 && failed >= 3
    })
    .await;
    // the hostile plugin's `prove` ran past its deadline and trapped...
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logged = |needle: &str| {
            gw.stderr_lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("cannot answer a challenge") && l.contains(needle))
        };
        if logged("CPU deadline") && logged("trapped") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hostile challenges were not tried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and that failed only those calls
    assert_eq!(http.post("/t/echo", b"after").await.status, 200);
    assert_eq!(http.get("/h/ok").await.status, 200);
    let now = reports_at_collector(&https, &id).await;
    wait_for_reports(&https, &id, now + 2).await;
    assert!(gw.terminate());
    let delivered = assert_delivered_exactly_once(&home, &https).await;
    assert!(delivered >= 3);
    let outcomes: Vec<serde_json::Value> = gateway_epochs(&home)
        .iter()
        .filter(|e| e["delivery"] == "delivered")
        .flat_map(|e| e["proofs"].as_array().unwrap().clone())
        .collect();
    assert!(
        outcomes.iter().any(|p| p["passed"] == true)
            && outcomes.iter().any(|p| p["passed"] == false),
        "delivered reports count passed and failed challenges: {outcomes:?}"
    );
    let epochs = gateway_epochs(&home);
    assert!(
        epochs
            .iter()
            .any(|e| e["reward_micro"].as_str().unwrap() != "0"),
        "traffic earned a reward: {epochs:?}"
    );
    // an epoch's report verifies offline
    let n = epochs[1]["epoch"].as_u64().unwrap().to_string();
    let file = tmp.path().join("report.bin");
    let cfg = home.config_path.to_str().unwrap();
    let (code, _, err) = run_cli(
        BIN,
        &[
            "epochs",
            "show",
            &n,
            "--config",
            cfg,
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run_cli(BIN, &["report", "verify", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: signature and encoding are valid"),
        "{out}"
    );
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let (code, out, _) = run_cli(BIN, &["report", "verify", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid"), "{out}");
    let metrics = https.request("GET", "/metrics", Vec::new()).await.unwrap();
    let text = String::from_utf8_lossy(&metrics.1).into_owned();
    assert!(
        text.contains(&format!(
            "depin_collector_reports_accepted_total {delivered}"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_then_up_and_kill_9_deliver_every_report_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let client_cert = pki.client("gw1");
    let port = free_port();
    let home = gateway_home(&pki, port, &client_cert);
    let id = gateway_id(&home);
    let config = collector_config(
        tmp.path(),
        &pki,
        port,
        &[(id.clone(), client_cert.sha256.clone())],
        POLICY,
        &schedule_toml(1000, 100),
    );
    // The collector is down for several epochs.
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    for _ in 0..5 {
        assert_eq!(http.post("/t/echo", b"abc").await.status, 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let collector = CollectorProcess::start(COLLECTOR_BIN, &config);
    let https = pki.https(port, &client_cert);
    wait_for_reports(&https, &id, 3).await;
    // kill -9 while deliveries are going on, then restart
    gw.kill_9();
    drop(gw);
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // and the collector restarts too: its store keeps the chain
    drop(collector);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _collector = CollectorProcess::start(COLLECTOR_BIN, &config);
    let before = reports_at_collector(&https, &id).await;
    wait_for_reports(&https, &id, before + 1).await;
    assert!(gw.terminate());
    let delivered = assert_delivered_exactly_once(&home, &https).await;
    assert!(delivered >= 6, "{delivered}");
}

/// The component digest the hand-made reports give for `template`.
const TEMPLATE_DIGEST: [u8; 32] = [5; 32];

/// A report for `key`, chained to `prev`, with the policy's reward.
fn report(key: &DeviceKey, epoch: u64, prev: [u8; 32], requests: u128) -> EpochReport {
    EpochReport {
        version: REPORT_VERSION,
        gateway_key: key.verifying_key().to_bytes(),
        epoch,
        length_ms: 1000,
        prev_hash: prev,
        first_seq: 1,
        records: 1,
        merkle_root: [9; 32],
        components: vec![ComponentDigest {
            plugin: "template".into(),
            digest: TEMPLATE_DIGEST,
            signer: None,
        }],
        totals: vec![EpochTotal {
            plugin: "template".into(),
            kind: "other".into(),
            source: "plugin".into(),
            unit: "requests".into(),
            records: 1,
            quantity: requests,
            subjects: 1,
        }],
        subject_totals: Vec::new(),
        proofs: Vec::new(),
        reward_micro: requests * 7,
    }
}

async fn post(client: &CollectorClient, bytes: &[u8]) -> (u16, String) {
    let (status, body) = client
        .request("POST", "/v1/reports", bytes.to_vec())
        .await
        .expect("request");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_rejects_bad_reports_and_counts_duplicates_once() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let a_cert = pki.client("a");
    let b_cert = pki.client("b");
    let unmapped = pki.client("stranger");
    let a = DeviceKey::generate();
    let b = DeviceKey::generate();
    let port = free_port();
    let config = collector_config(
        tmp.path(),
        &pki,
        port,
        &[
            (a.gateway_id(), a_cert.sha256.clone()),
            (b.gateway_id(), b_cert.sha256.clone()),
        ],
        POLICY,
        &format!(
            "{}{}",
            schedule_toml(1000, 100),
            approve(
                &format!("sha256:{}", hex::encode(TEMPLATE_DIGEST)),
                "other",
                None,
                &[]
            )
        ),
    );
    let _collector = CollectorProcess::start(COLLECTOR_BIN, &config);
    let https = pki.https(port, &a_cert);

    let r1 = report(&a, 100, [0; 32], 3).sign(a.signing_key());
    assert_eq!(post(&https, &r1.bytes).await.0, 200);
    let r2 = report(&a, 101, r1.hash(), 4).sign(a.signing_key());
    let (status, body) = post(&https, &r2.bytes).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"accepted\""), "{body}");

    // a tampered report: one byte changed
    let mut tampered = report(&a, 102, r2.hash(), 5).sign(a.signing_key()).bytes;
    let last = tampered.len() - 80;
    tampered[last] ^= 0x01;
    let (status, body) = post(&https, &tampered).await;
    assert!(status == 400 || status == 401, "{status} {body}");

    // signed by another key than the one it names
    let forged = report(&a, 102, r2.hash(), 5).sign(b.signing_key());
    let (status, body) = post(&https, &forged.bytes).await;
    assert_eq!(status, 401, "{body}");

    // b's valid report sent over a's certificate
    let other = report(&b, 100, [0; 32], 1).sign(b.signing_key());
    let (status, body) = post(&https, &other.bytes).await;
    assert_eq!(status, 403, "{body}");

    // the last report again (a lost acknowledgement): the same
    // acknowledgement, counted once
    let (status, body) = post(&https, &r2.bytes).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicate\""), "{body}");
    assert!(body.contains(&hex::encode(r2.hash())), "{body}");
    // a replayed older report is refused by name
    let (status, body) = post(&https, &r1.bytes).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"replayed\""), "{body}");
    // an old epoch with different contents is refused
    let rewritten = report(&a, 100, [0; 32], 30).sign(a.signing_key());
    let (status, body) = post(&https, &rewritten.bytes).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"overlapping\""), "{body}");

    // a gap: epoch 103 chained to a 102 the collector never saw
    let unseen = report(&a, 102, r2.hash(), 5).sign(a.signing_key());
    let gap = report(&a, 103, unseen.hash(), 5).sign(a.signing_key());
    let (status, body) = post(&https, &gap.bytes).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("gap"), "{body}");

    // a proof summary naming a challenge the collector never issued
    let mut boastful = report(&a, 102, r2.hash(), 5);
    boastful.proofs.push(ProofOutcome {
        challenge_id: "never-issued".into(),
        passed: true,
    });
    let (status, body) = post(&https, &boastful.sign(a.signing_key()).bytes).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("never issued"), "{body}");
    assert!(body.contains("\"unknown-challenge\""), "{body}");

    // a certificate from the right CA that maps to no gateway
    let stranger = pki.https(port, &unmapped);
    let (status, _) = post(&stranger, &unseen.bytes).await;
    assert_eq!(status, 403);

    // a client without a certificate does not get through the handshake:
    // no HTTP response at all, not even a 403
    match handshake_without_certificate(&pki, port).await {
        Err(_) => {}
        Ok(response) => assert!(
            !response.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&response)
        ),
    }

    // after all that, a's chain is exactly r1, r2 and the valid 102
    assert_eq!(post(&https, &unseen.bytes).await.0, 200);
    assert_eq!(reports_at_collector(&https, &a.gateway_id()).await, 3);
    let rewards = get_json(&https, "/v1/rewards?epoch=100").await;
    assert_eq!(rewards["rewards"][0]["reward_micro"], "21", "{rewards}");
    let metrics = https.request("GET", "/metrics", Vec::new()).await.unwrap();
    let text = String::from_utf8_lossy(&metrics.1).into_owned();
    assert!(
        text.contains("depin_collector_reports_accepted_total 3"),
        "{text}"
    );
    assert!(
        text.contains("depin_collector_reports_duplicate_total 1"),
        "{text}"
    );
    assert!(text.contains("reason=\"replayed\"} 1"), "{text}");
}

/// Opens a TLS connection without a client certificate, sends a request and
/// returns whatever comes back.
async fn handshake_without_certificate(pki: &Pki, port: u16) -> std::io::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&pki.ca_file).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /v1/gateways HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await?;
    Ok(buf)
}
