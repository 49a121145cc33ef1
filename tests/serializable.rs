//! Concurrent calls of one plugin behave as if they ran one at a time: no
//! lost counter increments, a signed pack accepted and metered once however
//! often and however it arrives (HTTP, MQTT), every distinct pack counted,
//! a datagram of a call that conflicted sent once, and all of it exact
//! after a `kill -9`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depin_e2e::sensors::{Mosquitto, Sensor, mqtt_table, rumqtt_publisher};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin, verify_ledger};
use depin_gateway::RunningGateway;
use depin_gateway::ledger::{LedgerReader, Source};
use rumqttc::QoS;
use serde_json::Value;
use tokio::net::UdpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

/// `n` concurrent clients, each POSTing `path` `m` times; the counts they
/// were answered, with the request ids.
async fn count_concurrently(
    http: &HttpClient,
    path: &'static str,
    n: usize,
    m: usize,
) -> Vec<(u64, String)> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let http = http.clone();
        clients.push(tokio::spawn(async move {
            let mut counts = Vec::new();
            for _ in 0..m {
                let r = http.send("POST", path, "").await.expect("POST");
                assert_eq!(r.status, 200, "{}", r.text());
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                counts.push((v["count"].as_u64().unwrap(), r.request_id()));
            }
            counts
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all
}

fn assert_exactly_one_to_n(counts: &[(u64, String)], what: &str) {
    let distinct: BTreeSet<u64> = counts.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        distinct.len(),
        counts.len(),
        "{what}: a count was answered twice"
    );
    let expected: BTreeSet<u64> = (1..=counts.len() as u64).collect();
    assert_eq!(distinct, expected, "{what}: counts are not exactly 1..=N");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_counter_increments_are_exact_and_every_answer_is_distinct() {
    let home = Home::new(
        &[PluginSpec::new(
            "serial-counter",
            plugin("template_plugin"),
            "/c",
        )],
        "",
    );
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);

    // kv.add: no read, so no conflicts between the increments.
    let added = count_concurrently(&http, "/c/counter", 16, 25).await;
    assert_exactly_one_to_n(&added, "kv.add");
    // A read and a write: concurrent calls conflict and are run again.
    let read_written = count_concurrently(&http, "/c/counter?key=gs&via=get-set", 8, 15).await;
    assert_exactly_one_to_n(&read_written, "get+set");
    let conflicts = depin_gateway::metrics::global().conflicts("serial-counter");
    assert_eq!(conflicts.failed, 0, "{conflicts:?}");
    gw.shutdown().await;
}

fn sensors_home(extra_table: &str) -> Home {
    Home::new(
        &[PluginSpec::new("sensors", plugin("sensor_aggregator_plugin"), "/s")
            .table(Box::leak(
                format!("tick_interval_ms = 100\n{extra_table}").into_boxed_str(),
            ))
            .config(
                "admin_token = \"serial-test-admin-token\"\nwindow_ms = 1000\nclose_grace_ms = 200\n",
            )],
        "",
    )
}

async fn provision(http: &HttpClient, sensor: &Sensor) {
    let body = serde_json::json!({
        "id": sensor.id,
        "public_key": sensor.public_key_hex(),
        "names": { "temp": { "min": -40.0, "max": 85.0 } },
    });
    let auth = [(
        "authorization".to_string(),
        "Bearer serial-test-admin-token".to_string(),
    )];
    let r = http
        .send_with_headers("POST", "/s/devices", &auth, body.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
}

fn temp_pack(values: &[f64]) -> String {
    let records: Vec<Value> = values
        .iter()
        .map(|v| serde_json::json!({ "n": "temp", "u": "Cel", "v": v }))
        .collect();
    serde_json::to_string(&records).unwrap()
}

/// Sends `pack` as `seq` over HTTP `n` times at once; the readings each
/// answer accepted.
async fn post_concurrently(
    http: &HttpClient,
    sensor: &Sensor,
    seq: u64,
    pack: &str,
    n: usize,
) -> Vec<u64> {
    let mut sends = Vec::new();
    for _ in 0..n {
        let http = http.clone();
        let headers = sensor.http_headers(seq, pack.as_bytes());
        let pack = pack.to_string();
        sends.push(tokio::spawn(async move {
            let r = http
                .send_with_headers("POST", "/s/packs", &headers, pack)
                .await
                .unwrap();
            assert!(r.status < 500, "{} {}", r.status, r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            v["accepted"].as_u64().unwrap_or(0)
        }));
    }
    let mut accepted = Vec::new();
    for s in sends {
        accepted.push(s.await.unwrap());
    }
    accepted
}

async fn accepted_readings(http: &HttpClient) -> u64 {
    let s: Value = serde_json::from_slice(&http.get("/s/stats").await.body).unwrap();
    s["accepted"].as_u64().unwrap_or(0)
}

/// Waits until the stats count `n` accepted readings, then a little more
/// to see that no more come.
async fn settle_at(http: &HttpClient, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted_readings(http).await < n {
        assert!(
            Instant::now() < deadline,
            "waited for {n} accepted readings"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted_readings(http).await, n);
}

/// `readings` records in the ledger, and how many readings they count.
fn readings_in_ledger(home: &Home) -> (u64, u64) {
    let reader = LedgerReader::open(&home.data_dir()).unwrap();
    let (mut records, mut quantity) = (0, 0);
    reader
        .for_each(|_, r| {
            let (_, _, r) = r.expect("decodable record");
            if r.unit == "readings" {
                records += 1;
                quantity += r.quantity;
            }
            true
        })
        .unwrap();
    (records, quantity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signed_pack_sent_40_times_at_once_is_accepted_and_metered_once() {
    let broker = Mosquitto::start();
    let home = sensors_home(mqtt_table(
        broker.port,
        "gw-serial-replay",
        "sensors/+/packs",
    ));
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let sensor = Sensor::new("dev-replay", 7);
    provision(&http, &sensor).await;

    // Over HTTP only.
    let pack = temp_pack(&[20.5, 21.0, 21.5]);
    let accepted = post_concurrently(&http, &sensor, 1, &pack, 40).await;
    assert_eq!(
        accepted.iter().filter(|a| **a > 0).count(),
        1,
        "{accepted:?}"
    );
    assert_eq!(accepted.iter().sum::<u64>(), 3, "{accepted:?}");
    settle_at(&http, 3).await;

    // Over HTTP and MQTT together: 20 by each.
    let mqtt = rumqtt_publisher(broker.port, "serial-replay-publisher").await;
    // The subscription is live once a first message gets through.
    let first = temp_pack(&[10.0]);
    mqtt.publish(
        "sensors/dev-replay/packs",
        QoS::AtLeastOnce,
        false,
        sensor.mqtt_payload(2, first.as_bytes()),
    )
    .await
    .unwrap();
    settle_at(&http, 4).await;
    let pack = temp_pack(&[30.0, 31.0]);
    let payload = sensor.mqtt_payload(3, pack.as_bytes());
    let publishing = {
        let mqtt = mqtt.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                mqtt.publish(
                    "sensors/dev-replay/packs",
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .unwrap();
            }
        })
    };
    let by_http = post_concurrently(&http, &sensor, 3, &pack, 20).await;
    publishing.await.unwrap();
    assert!(
        by_http.iter().filter(|a| **a > 0).count() <= 1,
        "{by_http:?}"
    );
    settle_at(&http, 6).await;

    gw.shutdown().await;
    assert_eq!(
        readings_in_ledger(&home),
        (6, 6),
        "one `readings` record per accepted reading"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_distinct_packs_of_one_device_at_once_are_all_accepted_and_counted() {
    let home = sensors_home("");
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let sensor = Arc::new(Sensor::new("dev-many", 9));
    provision(&http, &sensor).await;

    let mut sends = Vec::new();
    for seq in 1..=40u64 {
        let http = http.clone();
        let sensor = sensor.clone();
        sends.push(tokio::spawn(async move {
            let pack = temp_pack(&[seq as f64]);
            let headers = sensor.http_headers(seq, pack.as_bytes());
            let r = http
                .send_with_headers("POST", "/s/packs", &headers, pack)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["accepted"], 1, "pack {seq}: {v}");
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    settle_at(&http, 40).await;
    // The device's aggregates count every reading.
    let aggs: Value = serde_json::from_slice(
        &http
            .get("/s/aggregates?device=dev-many&name=temp")
            .await
            .body,
    )
    .unwrap();
    let counted: u64 = aggs
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, 40, "{aggs}");
    gw.shutdown().await;
    assert_eq!(readings_in_ledger(&home), (40, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_conflicted_after_queueing_a_datagram_sends_it_once() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = upstream.local_addr().unwrap();
    let table = format!(
        "[plugin.udp]\nlisten = \"127.0.0.1:0\"\n[plugin.outbound]\nudp = [\"{target}\"]\n"
    );
    let spec = PluginSpec::new("serial-udp", plugin("hostile_plugin"), "/h")
        .table(Box::leak(table.into_boxed_str()));
    let home = Home::new(&[spec], "");
    let gw = RunningGateway::start(&home.config()).await.unwrap();
    let http = HttpClient::new(gw.http_addr);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // The datagram's call reads `count`, then takes 300 ms; meanwhile an
    // HTTP call changes `count`, so the first run conflicts at commit.
    client
        .send_to(
            format!("slow-count {target}").as_bytes(),
            gw.udp_addr("serial-udp").unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = http.post("/h/count", b"").await;
    assert_eq!((r.status, r.text()), (200, "1".to_string()));

    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), upstream.recv_from(&mut buf))
        .await
        .expect("the datagram arrives")
        .unwrap();
    assert_eq!(&buf[..n], b"count-2", "sent by the run that committed");
    let again =
        tokio::time::timeout(Duration::from_millis(700), upstream.recv_from(&mut buf)).await;
    assert!(again.is_err(), "a second datagram arrived: {:?}", again);
    let conflicts = depin_gateway::metrics::global().conflicts("serial-udp");
    assert!(conflicts.retries >= 1, "{conflicts:?}");
    assert_eq!(http.post("/h/count", b"").await.text(), "3");
    gw.shutdown().await;
}

/// An acknowledged count: the plugin, the count answered, the request id.
type AckedCount = (&'static str, u64, String);

/// Request ids of each plugin's calls in the ledger.
fn calls_in_ledger(home: &Home) -> HashMap<String, HashSet<String>> {
    let reader = LedgerReader::open(&home.data_dir()).unwrap();
    let mut calls: HashMap<String, HashSet<String>> = HashMap::new();
    reader
        .for_each(|_, r| {
            let (_, _, r) = r.expect("decodable record");
            if r.source == Source::Host {
                calls
                    .entry(r.plugin.clone())
                    .or_default()
                    .insert(r.subject.expect("host records carry the request id"));
            }
            true
        })
        .unwrap();
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_conflicting_load_loses_nothing_acknowledged_and_counts_stay_exact() {
    let home = Home::new(
        &[
            PluginSpec::new("added", plugin("template_plugin"), "/a"),
            PluginSpec::new("readwrite", plugin("template_plugin"), "/g"),
        ],
        "",
    );
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let acked: Arc<Mutex<Vec<AckedCount>>> = Arc::default();
    let mut workers = Vec::new();
    for (plugin, path) in [
        ("added", "/a/counter"),
        ("readwrite", "/g/counter?via=get-set"),
    ]
    .into_iter()
    .cycle()
    .take(24)
    {
        let http = http.clone();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            loop {
                match http.send("POST", path, "").await {
                    Ok(r) if r.status == 200 => {
                        let v: Value = serde_json::from_slice(&r.body).unwrap();
                        let count = v["count"].as_u64().unwrap();
                        acked.lock().unwrap().push((plugin, count, r.request_id()));
                    }
                    Ok(r) => panic!("unexpected status {} {}", r.status, r.text()),
                    Err(_) => break, // the gateway is gone
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.kill_9();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let data_dir = home.data_dir();
    verify_ledger(BIN, &data_dir, "kill -9");
    let calls = calls_in_ledger(&home);
    let committed = |p: &str| calls.get(p).map_or(0, HashSet::len) as u64;
    for (plugin, count, id) in &acked {
        assert!(
            calls.get(*plugin).is_some_and(|ids| ids.contains(id)),
            "acknowledged call {id} of {plugin} (count {count}) is not in the ledger"
        );
        assert!(*count <= committed(plugin));
    }
    for p in ["added", "readwrite"] {
        let counts: Vec<u64> = acked.iter().filter(|a| a.0 == p).map(|a| a.1).collect();
        let distinct: HashSet<u64> = counts.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            counts.len(),
            "{p}: a count was answered twice"
        );
    }

    // After a restart each counter equals its committed calls, exactly.
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    for (p, path) in [
        ("added", "/a/counter"),
        ("readwrite", "/g/counter?via=get-set"),
    ] {
        let r = http.send("POST", path, "").await.unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["count"].as_u64().unwrap(), committed(p) + 1, "{p}");
    }
    assert!(gw.terminate(), "clean exit on SIGTERM");
    verify_ledger(BIN, &data_dir, "the restart");
}
