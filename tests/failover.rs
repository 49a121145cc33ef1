//! Gateways that know several collectors, and the device-key identity:
//! real gateway and collector processes, real mutual TLS, gateways with no
//! client certificate file.

use std::path::Path;
use std::time::Duration;

use depin_e2e::upstream::{CollectorProcess, Pki, free_port, schedule_toml};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin};
use depin_gateway::identity::DeviceKey;
use depin_gateway::upstream::sender::CollectorClient;
use rustls_pki_types::pem::PemObject;

use crate::upstream::{
    POLICY, assert_delivered_exactly_once, gateway_id, reports_at_collector, wait_for_reports,
};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-under-test");

/// A gateway home with the template plugin, 1-second epochs, reporting to
/// the collectors on `ports` (in order) with its device-key certificate.
fn gateway_home(pki: &Pki, ports: &[u16]) -> Home {
    let extra = format!(
        "[epochs]\nlength_ms = 1000\nclose_delay_ms = 150\npolicy = \"rewards.toml\"\n{}",
        pki.upstream_toml_device_key(ports)
    );
    let home = Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")],
        &extra,
    );
    std::fs::write(home.dir.path().join("rewards.toml"), POLICY).unwrap();
    home
}

/// A collector in `dir` on `port` that knows `id` by its device key only
/// and has no client CA at all.
fn device_key_collector(dir: &Path, pki: &Pki, port: u16, id: &str) -> CollectorProcess {
    depin_e2e::upstream::device_key_collector(
        COLLECTOR_BIN,
        dir,
        pki,
        port,
        &[id.to_string()],
        POLICY,
        &schedule_toml(1000, 100),
    )
}

/// A client of the collector on `port` with the gateway's own device key.
fn https(pki: &Pki, port: u16, home: &Home) -> CollectorClient {
    pki.https_device_key(&[port], &DeviceKey::load(&home.key_path()).unwrap())
}

async fn traffic(gw: &GatewayProcess, epochs: usize) {
    let http = HttpClient::new(gw.addr);
    for _ in 0..epochs {
        assert_eq!(http.post("/t/echo", b"abc").await.status, 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_collector_down_reports_arrive_once_through_the_second() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    // Nothing listens on the first URL.
    let (down, up) = (free_port(), free_port());
    let home = gateway_home(&pki, &[down, up]);
    let id = gateway_id(&home);
    let _second = device_key_collector(&tmp.path().join("b"), &pki, up, &id);
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    traffic(&gw, 4).await;
    let second = https(&pki, up, &home);
    wait_for_reports(&second, &id, 3).await;
    assert!(gw.terminate());
    let delivered = assert_delivered_exactly_once(&home, &second).await;
    assert!(delivered >= 3, "{delivered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_collectors_up_each_report_is_delivered_once_to_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, b) = (free_port(), free_port());
    let home = gateway_home(&pki, &[a, b]);
    let id = gateway_id(&home);
    let _first = device_key_collector(&tmp.path().join("a"), &pki, a, &id);
    let _second = device_key_collector(&tmp.path().join("b"), &pki, b, &id);
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    traffic(&gw, 4).await;
    let first = https(&pki, a, &home);
    wait_for_reports(&first, &id, 3).await;
    assert!(gw.terminate());
    let delivered = assert_delivered_exactly_once(&home, &first).await;
    assert!(delivered >= 3, "{delivered}");
    assert_eq!(reports_at_collector(&https(&pki, b, &home), &id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_key_certificate_of_an_unlisted_gateway_is_not_admitted() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let home = gateway_home(&pki, &[port]);
    let listed = DeviceKey::generate().gateway_id();
    let _collector = device_key_collector(tmp.path(), &pki, port, &listed);
    let (status, body) = https(&pki, port, &home)
        .request("GET", "/v1/gateways", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn keygen_writes_the_certificate_the_collector_reads_the_id_from() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    let cert = dir.path().join("gateway.pem");
    let (k, c) = (key.to_str().unwrap(), cert.to_str().unwrap());
    let (code, out, err) = depin_e2e::run_cli(BIN, &["keygen", "--out", k, "--cert", c]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let pem = std::fs::read_to_string(&cert).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(depin_collector::peer::device_key_id(&der), Some(id.clone()));
    assert!(err.contains("sha256"), "{err}");
    // Again with the key in place: the key is kept, the certificate is the
    // same bytes.
    let (code, out, err) = depin_e2e::run_cli(BIN, &["keygen", "--out", k, "--cert", c]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), id);
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
    // Without --cert an existing key is still refused.
    let (code, _, err) = depin_e2e::run_cli(BIN, &["keygen", "--out", k]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
}
