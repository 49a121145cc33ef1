//! Operations end to end: TLS with a generated CA and certificate rotation,
//! the admin API and its token, Prometheus metrics, hot reload under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use depin_e2e::ops::{AdminClient, TestCa, TlsConnection, parse_prometheus};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const TOKEN: &str = "s3cret-admin-token";

fn template(greeting: &'static str) -> PluginSpec {
    let config = match greeting {
        "hello" => "greeting = \"hello\"",
        "howdy" => "greeting = \"howdy\"",
        _ => unreachable!("add the greeting here"),
    };
    PluginSpec::new("t", plugin("template_plugin"), "/t").config(config)
}

/// A home with an admin listener on a free loopback port and a token file.
fn home_with_admin(plugins: &[PluginSpec], extra: &str) -> Home {
    let text =
        format!("{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n");
    let home = Home::new(plugins, &text);
    std::fs::write(home.dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    home
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_requests_without_the_token_and_metrics_count_the_calls() {
    // Metrics are process-wide: a plugin name no other test uses keeps the
    // counts exact.
    let metered =
        PluginSpec::new("metered", plugin("template_plugin"), "/t").config("greeting = \"hello\"");
    let home = home_with_admin(&[metered], "");
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    let admin = AdminClient::new(gw.admin_addr.expect("admin listener"));

    // Probes need no token; everything else does.
    assert_eq!(admin.send("GET", "/healthz", None).await.status, 200);
    let ready = admin.send("GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/v1/status"),
        ("POST", "/v1/plugins/reload"),
    ] {
        let r = admin.send(method, path, None).await;
        assert_eq!(r.status, 401, "{method} {path} without a token");
        let r = admin.send(method, path, Some("wrong")).await;
        assert_eq!(r.status, 401, "{method} {path} with a wrong token");
    }

    let http = HttpClient::new(gw.http_addr);
    for _ in 0..7 {
        assert_eq!(http.get("/t/hello?name=ada").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(http.get("/t/no-such-page").await.status, 404);
    }

    let metrics = admin.send("GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let samples = parse_prometheus(&metrics.text());
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", metrics.text()))
    };
    assert_eq!(
        value("depin_calls_total{plugin=\"metered\",status=\"200\"}"),
        7.0
    );
    assert_eq!(
        value("depin_calls_total{plugin=\"metered\",status=\"404\"}"),
        3.0
    );
    assert_eq!(
        value("depin_call_duration_seconds_count{plugin=\"metered\"}"),
        10.0
    );
    assert_eq!(
        value("depin_call_duration_seconds_bucket{plugin=\"metered\",le=\"+Inf\"}"),
        10.0
    );
    assert!(value("depin_call_fuel_total{plugin=\"metered\"}") > 0.0);
    assert!(value("depin_ledger_commit_group_size_count") >= 1.0);

    let status = admin.send("GET", "/v1/status", Some(TOKEN)).await;
    assert_eq!(status.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["gateway_id"], gw.gateway_id.as_str());
    assert_eq!(status["plugins"][0]["name"], "metered");
    assert_eq!(status["plugins"][0]["calls"], 10);
    let epoch = &status["current_epoch"];
    let (start, end) = (
        epoch["start_ms"].as_u64().unwrap(),
        epoch["end_ms"].as_u64().unwrap(),
    );
    assert!(start < end, "{epoch}");
    assert_eq!(
        epoch["number"].as_u64().unwrap(),
        start / (end - start),
        "{epoch}"
    );
    assert!(
        status["plugins"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    gw.shutdown().await;
}

/// Runs `clients` loops of `GET /t/hello` until `stop`; returns every
/// (status, body) seen.
fn spawn_load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(u16, String)>>> {
    (0..clients)
        .map(|_| {
            let http = HttpClient::new(addr);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http.send("GET", "/t/hello?name=x", "").await {
                        Ok(r) => seen.push((r.status, r.text())),
                        Err(e) => seen.push((0, e)),
                    }
                }
                seen
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_no_request_and_an_invalid_plugin_keeps_the_old_one() {
    let home = home_with_admin(&[template("hello")], "");
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    let admin = AdminClient::new(gw.admin_addr.expect("admin listener"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(gw.http_addr, 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A valid change: new greeting. Swapped in while the load runs.
    let original = std::fs::read_to_string(&home.config_path).unwrap();
    std::fs::write(
        &home.config_path,
        original.replace("greeting = \"hello\"", "greeting = \"howdy\""),
    )
    .unwrap();
    let r = admin.send("POST", "/v1/plugins/reload", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(report["generation"], 2);
    assert_eq!(report["reloaded"][0], "t");
    let http = HttpClient::new(gw.http_addr);
    assert_eq!(http.get("/t/hello?name=x").await.text(), "howdy, x");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Invalid changes: a component that does not fit the contract, and a
    // configuration `init` refuses. Both are refused; "howdy" keeps serving.
    let current = std::fs::read_to_string(&home.config_path).unwrap();
    let wrong_component = current.replace(
        &plugin("template_plugin").display().to_string(),
        &plugin("other_world_plugin").display().to_string(),
    );
    let refused_by_init = current.replace("greeting = \"howdy\"", "greeting = \"\"");
    for bad in [wrong_component, refused_by_init] {
        std::fs::write(&home.config_path, bad).unwrap();
        let r = admin.send("POST", "/v1/plugins/reload", Some(TOKEN)).await;
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.text().contains("plugin `t`"), "{}", r.text());
        assert_eq!(http.get("/t/hello?name=x").await.text(), "howdy, x");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = admin.send("GET", "/v1/status", Some(TOKEN)).await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["generation"], 2);
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(
        status["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("init")
    );

    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for l in load {
        all.extend(l.await.unwrap());
    }
    let failed: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "failed during reloads: {failed:?}");
    assert!(all.iter().any(|(_, b)| b == "hello, x"));
    assert!(all.iter().any(|(_, b)| b == "howdy, x"));
    assert!(all.iter().all(|(_, b)| b == "hello, x" || b == "howdy, x"));
    gw.shutdown().await;
}

#[test]
fn sighup_reloads_the_configuration_of_a_running_process() {
    let home = Home::new(&[template("hello")], "");
    let gw = GatewayProcess::start(BIN, &home.config_path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = HttpClient::new(gw.addr);
    rt.block_on(async {
        assert_eq!(http.get("/t/hello?name=x").await.text(), "hello, x");
    });
    let original = std::fs::read_to_string(&home.config_path).unwrap();
    std::fs::write(
        &home.config_path,
        original.replace("greeting = \"hello\"", "greeting = \"howdy\""),
    )
    .unwrap();
    unsafe { libc::kill(gw.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        loop {
            let r = http.get("/t/hello?name=x").await;
            assert_eq!(r.status, 200);
            if r.text() == "howdy, x" {
                break;
            }
            assert!(Instant::now() < deadline, "SIGHUP did not reload");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let lines = gw.stderr_lines.lock().unwrap().join("\n");
    assert!(lines.contains("plugins reloaded"), "{lines}");
}

/// A home serving TLS with a fresh leaf of `ca`.
fn tls_home(ca: &TestCa) -> Home {
    let home = Home::new(
        &[template("hello")],
        "[http.tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\npoll_ms = 50\n",
    );
    let dir = home.dir.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    ca.leaf().write(&dir.join("cert.pem"), &dir.join("key.pem"));
    home
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_generated_ca_serves_http1_and_http2() {
    let ca = TestCa::new();
    let home = tls_home(&ca);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    for (alpn, expected) in [
        (&[b"h2".as_slice()][..], Some(b"h2".to_vec())),
        (&[b"http/1.1".as_slice()][..], Some(b"http/1.1".to_vec())),
    ] {
        let mut conn = TlsConnection::connect(gw.http_addr, ca.client_config(alpn))
            .await
            .expect("connect");
        assert_eq!(conn.alpn, expected);
        let r = conn.get("/t/hello?name=tls").await.expect("GET");
        assert_eq!((r.status, r.text().as_str()), (200, "hello, tls"));
    }
    // A client that does not trust the CA gets no connection.
    let stranger = TestCa::new();
    assert!(
        TlsConnection::connect(gw.http_addr, stranger.client_config(&[b"h2"]))
            .await
            .is_err()
    );
    // Plain HTTP on the TLS port is not served.
    assert!(
        HttpClient::new(gw.http_addr)
            .send("GET", "/t/hello", "")
            .await
            .is_err()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_while_a_client_keeps_requesting_loses_nothing() {
    let ca = TestCa::new();
    let home = tls_home(&ca);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let first = gw.tls.as_ref().unwrap().cert.current().cert[0].clone();
    let addr = gw.http_addr;
    let config = ca.client_config(&[b"h2", b"http/1.1"]);

    // One long-lived HTTP/2 connection and a stream of new connections,
    // both requesting throughout the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let long_lived = {
        let stop = stop.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let mut conn = TlsConnection::connect(addr, config).await.expect("connect");
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = conn
                    .get("/t/hello?name=a")
                    .await
                    .expect("request on the old connection");
                assert_eq!(r.status, 200);
                ok += 1;
            }
            (ok, conn.server_cert)
        })
    };
    let fresh = {
        let stop = stop.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let mut certs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut conn = TlsConnection::connect(addr, config.clone())
                    .await
                    .expect("new connection during rotation");
                let r = conn.get("/t/hello?name=b").await.expect("request");
                assert_eq!(r.status, 200);
                certs.push(conn.server_cert);
            }
            certs
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rotated = ca.leaf();
    let dir = home.dir.path().join("tls");
    rotated.write(&dir.join("cert.pem"), &dir.join("key.pem"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.tls.as_ref().unwrap().cert.current().cert[0] != rotated.der {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let (ok, old_cert) = long_lived.await.expect("long-lived client");
    assert!(ok > 0);
    assert_eq!(old_cert, first, "the old connection kept its certificate");
    let certs = fresh.await.expect("fresh clients");
    assert!(certs.contains(&first), "no connection before the rotation");
    assert_eq!(
        certs.last(),
        Some(&rotated.der),
        "new connections get the new certificate"
    );
    gw.shutdown().await;
}

#[test]
fn shipped_deployment_configurations_are_valid() {
    let root = depin_e2e::workspace();
    for file in [
        "deploy/gateway.toml",
        "deploy/systemd/gateway.toml",
        "deploy/docker/gateway.toml",
        "deploy/kubernetes/base/gateway.toml",
    ] {
        if let Err(e) = depin_gateway::config::GatewayConfig::load(&root.join(file)) {
            panic!("{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_configuration_changes_are_reloaded_without_a_signal() {
    let home = Home::new(
        &[template("hello")],
        "[reload]\nwatch = true\npoll_ms = 50\n",
    );
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    let http = HttpClient::new(gw.http_addr);
    assert_eq!(http.get("/t/hello?name=x").await.text(), "hello, x");
    // Let the first modification time settle into the watcher's view.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let original = std::fs::read_to_string(&home.config_path).unwrap();
    std::fs::write(
        &home.config_path,
        original.replace("greeting = \"hello\"", "greeting = \"howdy\""),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get("/t/hello?name=x").await;
        assert_eq!(r.status, 200);
        if r.text() == "howdy, x" {
            break;
        }
        assert!(Instant::now() < deadline, "the change was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.table().snapshot().generation, 2);
    gw.shutdown().await;
}
