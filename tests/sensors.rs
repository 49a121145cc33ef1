//! The sensor-aggregator plugin behind the gateway: signed SenML packs by
//! MQTT (a real mosquitto broker, published with `mosquitto_pub` and with a
//! Rust MQTT client) and by HTTP, quality checks, aggregates, proofs, and
//! QoS 1 redelivery after a `kill -9`.

use std::time::{Duration, Instant};

use depin_e2e::sensors::{Mosquitto, Sensor, free_port, mqtt_table, rumqtt_publisher};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const TOKEN: &str = "sensor-test-admin-token";
const CONFIG: &str =
    "admin_token = \"sensor-test-admin-token\"\nwindow_ms = 1000\nclose_grace_ms = 200\n";

fn home(mqtt: &'static str) -> Home {
    Home::new(
        &[
            PluginSpec::new("sensors", plugin("sensor_aggregator_plugin"), "/s")
                .table(Box::leak(
                    format!("tick_interval_ms = 100\n{mqtt}").into_boxed_str(),
                ))
                .config(CONFIG),
        ],
        "",
    )
}

async fn provision(http: &HttpClient, sensor: &Sensor) {
    let body = serde_json::json!({
        "id": sensor.id,
        "public_key": sensor.public_key_hex(),
        "names": { "temp": { "min": -40.0, "max": 85.0 }, "door": {} },
    });
    let auth = [("authorization".to_string(), format!("Bearer {TOKEN}"))];
    let r = http
        .send_with_headers("POST", "/s/devices", &auth, body.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
}

async fn post_pack(http: &HttpClient, sensor: &Sensor, seq: u64, pack: &str) -> (u16, Value) {
    let headers = sensor.http_headers(seq, pack.as_bytes());
    let r = http
        .send_with_headers("POST", "/s/packs", &headers, pack.to_string())
        .await
        .unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

async fn stats(http: &HttpClient) -> Value {
    serde_json::from_slice(&http.get("/s/stats").await.body).unwrap()
}

/// Polls `/s/stats` until `accepted` reaches `n` (or fails after 30 s).
async fn wait_accepted(http: &HttpClient, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = stats(http).await;
        if s["accepted"].as_u64() >= Some(n) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {n} accepted readings; stats: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rust_publisher(port: u16, id: &str) -> AsyncClient {
    rumqtt_publisher(port, id).await
}

/// Publishes a pack of `sensor` on `topic` with sequence numbers from
/// `seq` on, one every 300 ms, until the gateway has accepted `accepted`
/// packs in all (its subscription may still be on its way); 30 s at most.
async fn publish_until_accepted(
    broker: &Mosquitto,
    http: &HttpClient,
    sensor: &Sensor,
    topic: &str,
    mut seq: u64,
    accepted: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        broker.mosquitto_pub(
            topic,
            &sensor.mqtt_payload(seq, temp_pack(&[2.0]).as_bytes()),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        if stats(http).await["accepted"].as_u64() >= Some(accepted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no pack published on {topic} was accepted in 30 s"
        );
        seq += 1;
    }
}

fn temp_pack(values: &[f64]) -> String {
    let records: Vec<Value> = values
        .iter()
        .map(|v| serde_json::json!({ "n": "temp", "u": "Cel", "v": v }))
        .collect();
    serde_json::to_string(&records).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_by_mosquitto_pub_rust_client_and_http_are_aggregated() {
    let broker = Mosquitto::start();
    let home = home(mqtt_table(broker.port, "gw-aggregate", "sensors/+/packs"));
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let sensor = Sensor::new("dev-a", 1);
    provision(&http, &sensor).await;

    // The subscription is live once a first message gets through.
    let first = temp_pack(&[10.0]);
    broker.mosquitto_pub(
        "sensors/dev-a/packs",
        &sensor.mqtt_payload(1, first.as_bytes()),
    );
    wait_accepted(&http, 1).await;

    let rust = rust_publisher(broker.port, "test-publisher-a").await;
    let second = temp_pack(&[20.0, 30.0]);
    rust.publish(
        "sensors/dev-a/packs",
        QoS::AtLeastOnce,
        false,
        sensor.mqtt_payload(2, second.as_bytes()),
    )
    .await
    .unwrap();
    wait_accepted(&http, 3).await;

    let (status, outcome) = post_pack(&http, &sensor, 3, &temp_pack(&[-5.0])).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["accepted"], 1);

    let s = wait_accepted(&http, 4).await;
    assert_eq!(s["accepted"], 4);
    let aggs: Value =
        serde_json::from_slice(&http.get("/s/aggregates?device=dev-a&name=temp").await.body)
            .unwrap();
    let windows = aggs.as_array().unwrap();
    let count: u64 = windows.iter().map(|w| w["count"].as_u64().unwrap()).sum();
    let min = windows
        .iter()
        .map(|w| w["min"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    let max = windows
        .iter()
        .map(|w| w["max"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!((count, min, max), (4, -5.0, 30.0), "{aggs}");
    if windows.len() == 1 {
        assert_eq!(windows[0]["mean"], 13.75);
        assert_eq!(windows[0]["last"], serde_json::json!({ "v": -5.0 }));
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_is_counted_over_mqtt_and_http() {
    let broker = Mosquitto::start();
    let home = home(mqtt_table(broker.port, "gw-reject", "sensors/#"));
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let sensor = Sensor::new("dev-r", 2);
    let stranger = Sensor::new("dev-x", 3);
    provision(&http, &sensor).await;
    let ok = temp_pack(&[1.0]);
    broker.mosquitto_pub("sensors/r", &sensor.mqtt_payload(1, ok.as_bytes()));
    wait_accepted(&http, 1).await;

    // Over MQTT: unknown device, bad signature (signed by another key), replay, malformed envelope.
    broker.mosquitto_pub("sensors/r", &stranger.mqtt_payload(1, ok.as_bytes()));
    let mut forged = sensor.mqtt_payload(2, ok.as_bytes());
    let n = forged.len();
    forged[n - 3] = b'9'; // the pack changes after signing
    broker.mosquitto_pub("sensors/r", &forged);
    broker.mosquitto_pub("sensors/r", &sensor.mqtt_payload(1, ok.as_bytes()));
    broker.mosquitto_pub("sensors/r", b"no header line");
    // Over HTTP: malformed SenML, a time far in the future, out of range, a name not provisioned.
    assert_eq!(
        post_pack(&http, &sensor, 3, "[{\"n\":\"temp\"").await.0,
        400
    );
    let (_, o) = post_pack(&http, &sensor, 4, r#"[{"n":"temp","v":1,"t":4102444800}]"#).await;
    assert_eq!(o["rejected_readings"]["bad-timestamp"], 1, "{o}");
    let (_, o) = post_pack(
        &http,
        &sensor,
        5,
        r#"[{"n":"temp","v":120},{"n":"humidity","v":3}]"#,
    )
    .await;
    assert_eq!(o["rejected_readings"]["out-of-range"], 2, "{o}");
    assert_eq!(post_pack(&http, &sensor, 5, &ok).await.0, 409);

    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = [
        ("unknown-device", 1),
        ("bad-signature", 1),
        ("replayed", 2),
        ("malformed", 2),
        ("bad-timestamp", 1),
        ("out-of-range", 2),
    ];
    loop {
        let s = stats(&http).await;
        if expected.iter().all(|(k, n)| s["rejected"][k] == *n) {
            assert_eq!(
                s["accepted"], 1,
                "rejected readings are never accepted: {s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "rejection counts: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Rejected readings are never rewarded: one `readings` record in all.
    gw.shutdown().await;
    let reader = depin_gateway::ledger::LedgerReader::open(&home.data_dir()).unwrap();
    let totals = reader.summary().unwrap();
    let readings: u128 = totals
        .iter()
        .filter(|t| t.unit == "readings")
        .map(|t| t.quantity)
        .sum();
    assert_eq!(readings, 1, "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_is_retried_and_the_gateway_serves_meanwhile() {
    let port = free_port();
    let home = home(mqtt_table(port, "gw-late-broker", "sensors/+/packs"));
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let sensor = Sensor::new("dev-l", 4);
    provision(&http, &sensor).await;
    assert_eq!(
        post_pack(&http, &sensor, 1, &temp_pack(&[1.0])).await.0,
        200
    );

    let broker = Mosquitto::start_on(port);
    // Publish until the gateway has subscribed (it retries with backoff).
    publish_until_accepted(&broker, &http, &sensor, "sensors/dev-l/packs", 2, 2).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_readings_arrive_loses_nothing_acknowledged_and_counts_once() {
    const PACKS: u64 = 300;
    let broker = Mosquitto::start();
    let home = home(mqtt_table(broker.port, "gw-crash", "sensors/+/packs"));
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let sensor = Sensor::new("dev-k", 5);
    provision(&http, &sensor).await;
    broker.mosquitto_pub(
        "sensors/dev-k/packs",
        &sensor.mqtt_payload(1, temp_pack(&[0.0]).as_bytes()),
    );
    wait_accepted(&http, 1).await;

    // Every pack is acknowledged by the broker to the publisher (QoS 1);
    // from then on the gateway's persistent session owns it.
    let publisher = rust_publisher(broker.port, "test-publisher-k").await;
    let mut expected_sum = 0.0;
    for seq in 2..=PACKS {
        let v = seq as f64 / 10.0;
        expected_sum += v;
        publisher
            .publish(
                "sensors/dev-k/packs",
                QoS::AtLeastOnce,
                false,
                sensor.mqtt_payload(seq, temp_pack(&[v]).as_bytes()),
            )
            .await
            .unwrap();
    }
    // Kill the gateway in the middle of the stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = stats(&http).await["accepted"].as_u64().unwrap_or(0);
        if n >= 40 {
            assert!(
                n < PACKS,
                "all packs arrived before the kill; the test proves nothing"
            );
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill_9();

    let gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let s = wait_accepted(&http, PACKS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s2 = stats(&http).await;
    assert_eq!(
        s2["accepted"], PACKS,
        "every pack counted exactly once: {s} then {s2}"
    );
    let aggs: Value =
        serde_json::from_slice(&http.get("/s/aggregates?device=dev-k&name=temp").await.body)
            .unwrap();
    let count: u64 = aggs
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["count"].as_u64().unwrap())
        .sum();
    let sum: f64 = aggs
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["mean"].as_f64().unwrap() * w["count"].as_f64().unwrap())
        .sum();
    assert_eq!(count, PACKS);
    assert!(
        (sum - expected_sum).abs() < 1e-6,
        "sum {sum} != {expected_sum}"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_of_inclusion_round_trips_and_forgeries_fail() {
    let home = home("");
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let sensor = Sensor::new("dev-p", 6);
    provision(&http, &sensor).await;
    for seq in 1..=4 {
        let (status, o) = post_pack(
            &http,
            &sensor,
            seq,
            &temp_pack(&[seq as f64, 50.0 + seq as f64]),
        )
        .await;
        assert_eq!(status, 200, "{o}");
    }
    // The window closes within a second or two (window_ms 1000, ticks every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (window, leaves) = loop {
        let w: Value = serde_json::from_slice(&http.get("/s/windows").await.body).unwrap();
        let total: u64 = w
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["leaves"].as_u64().unwrap())
            .sum();
        if total == 8 {
            let last = w.as_array().unwrap().last().unwrap().clone();
            break (
                last["window"].as_u64().unwrap(),
                last["leaves"].as_u64().unwrap(),
            );
        }
        assert!(Instant::now() < deadline, "windows: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let plugin = gw.plugins[0].clone();
    let id: std::sync::Arc<str> = "challenge".into();
    let challenge = depin_gateway::runtime::contract::Challenge {
        id: "c-1".into(),
        kind: "reading-inclusion".into(),
        nonce: b"fresh nonce".to_vec(),
        params: serde_json::to_vec(&serde_json::json!({ "window": window, "index": leaves - 1 }))
            .unwrap(),
    };
    let proof = plugin
        .prove(&id, challenge.clone())
        .await
        .result
        .unwrap()
        .unwrap();
    assert!(
        plugin
            .verify(&id, challenge.clone(), proof.clone())
            .await
            .result
            .unwrap()
    );

    let mut payload: Value = serde_json::from_slice(&proof.payload).unwrap();
    let original = payload.clone();
    payload["reading"]["value"] = serde_json::json!({ "v": 99.0 });
    let forged = depin_gateway::runtime::contract::Proof {
        challenge_id: "c-1".into(),
        payload: serde_json::to_vec(&payload).unwrap(),
    };
    assert!(
        !plugin
            .verify(&id, challenge.clone(), forged)
            .await
            .result
            .unwrap(),
        "a forged reading fails"
    );

    let mut payload = original.clone();
    let sig = payload["signature"].as_str().unwrap().to_string();
    payload["signature"] = Value::String(format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    ));
    let forged = depin_gateway::runtime::contract::Proof {
        challenge_id: "c-1".into(),
        payload: serde_json::to_vec(&payload).unwrap(),
    };
    assert!(
        !plugin
            .verify(&id, challenge.clone(), forged)
            .await
            .result
            .unwrap(),
        "a forged signature fails"
    );

    let mut payload = original;
    if let Some(step) = payload["path"].as_array_mut().and_then(|p| p.first_mut()) {
        step["sibling"] = Value::String("00".repeat(32));
    }
    let wrong = depin_gateway::runtime::contract::Proof {
        challenge_id: "c-1".into(),
        payload: serde_json::to_vec(&payload).unwrap(),
    };
    assert!(
        !plugin.verify(&id, challenge, wrong).await.result.unwrap(),
        "a wrong path fails"
    );

    // The root is committed in the ledger as the window's evidence.
    let root = serde_json::from_slice::<Value>(&proof.payload).unwrap()["root"]
        .as_str()
        .unwrap()
        .to_string();
    drop(plugin);
    gw.shutdown().await;
    let reader = depin_gateway::ledger::LedgerReader::open(&home.data_dir()).unwrap();
    let mut found = false;
    reader
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            if r.unit == "window-roots"
                && r.evidence.as_deref().map(hex::encode) == Some(root.clone())
            {
                found = true;
            }
            true
        })
        .unwrap();
    assert!(found, "the window's root is in the ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_can_be_reached_over_tls() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    // A CA and a server certificate for 127.0.0.1, made for this test.
    let certs = tempfile::tempdir().unwrap();
    // The broker may drop root privileges before it reads them.
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = certs.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let cert_file = write("server.pem", server.pem());
    let key_file = write("server.key", server_key.serialize_pem());

    // A plain listener for the test's publisher, a TLS one for the gateway.
    let tls_port = free_port();
    let broker = Mosquitto::start_with(
        free_port(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca_file.display(),
            cert_file.display(),
            key_file.display()
        ),
    );
    let table = format!(
        "[plugin.mqtt]\nhost = \"127.0.0.1\"\nport = {tls_port}\nclient_id = \"gw-tls\"\n\
         topics = [\"sensors/+/packs\"]\n[plugin.mqtt.tls]\nca_file = \"{}\"\n",
        ca_file.display()
    );
    let home = home(Box::leak(table.into_boxed_str()));
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let sensor = Sensor::new("dev-t", 7);
    provision(&http, &sensor).await;
    publish_until_accepted(&broker, &http, &sensor, "sensors/dev-t/packs", 1, 1).await;
    gw.shutdown().await;
}
