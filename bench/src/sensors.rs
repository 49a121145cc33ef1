//! 5. Sensor readings accepted per second: through the gateway by HTTP and
//!    by MQTT (sensor-aggregator plugin: parse, verify the ed25519
//!    signature, check, aggregate, durable commit) vs a native program doing
//!    the same parsing, signature check and aggregation with the plugin's
//!    own code, in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use depin_e2e::sensors::{Mosquitto, Sensor, mqtt_table};
use depin_e2e::{Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use sensor_aggregator_plugin::envelope::SignedPack;
use sensor_aggregator_plugin::ingest::Aggregate;
use sensor_aggregator_plugin::senml;

const TOKEN: &str = "bench-admin-token-0123456789";
/// Readings per pack.
const READINGS: usize = 10;
/// Concurrent HTTP devices (one keep-alive connection each).
const DEVICES: usize = 32;

fn pack(seq: u64) -> String {
    let records: Vec<String> = (0..READINGS)
        .map(|i| {
            format!(
                r#"{{"n":"temp","u":"Cel","t":-{i},"v":{}}}"#,
                (seq as usize * 7 + i) % 50
            )
        })
        .collect();
    format!("[{}]", records.join(","))
}

fn home(mqtt: &'static str) -> Home {
    let table = format!("tick_interval_ms = 1000\n{mqtt}");
    Home::new(
        &[
            PluginSpec::new("sensors", plugin("sensor_aggregator_plugin"), "/s")
                .table(Box::leak(table.into_boxed_str()))
                .config("admin_token = \"bench-admin-token-0123456789\""),
        ],
        "[runtime]\nmax_instances = 1000\n",
    )
}

async fn provision(http: &HttpClient, sensor: &Sensor) {
    let body = serde_json::json!({
        "id": sensor.id,
        "public_key": sensor.public_key_hex(),
        "names": { "temp": { "min": -40.0, "max": 85.0 } },
    });
    let auth = [("authorization".to_string(), format!("Bearer {TOKEN}"))];
    let r = http
        .send_with_headers("POST", "/s/devices", &auth, body.to_string())
        .await
        .expect("provision");
    assert_eq!(r.status, 201, "{}", r.text());
}

async fn accepted(http: &HttpClient) -> u64 {
    let s: serde_json::Value = serde_json::from_slice(&http.get("/s/stats").await.body).unwrap();
    s["accepted"].as_u64().unwrap_or(0)
}

pub async fn run(duration: Duration) {
    println!(
        "5. sensor readings accepted/s ({READINGS} signed SenML readings per pack, {} s per row)",
        duration.as_secs()
    );
    let native = native_baseline(duration);
    let http = through_http(duration).await;
    let mqtt = through_mqtt(duration).await;
    println!(
        "   native (parse + ed25519 verify + aggregate, 2 threads, in memory) {native:>9.0} readings/s"
    );
    println!(
        "   gateway HTTP, {DEVICES} devices/conns (durable)                  {http:>9.0} readings/s"
    );
    println!(
        "   gateway MQTT, QoS 1, 8 devices/topics (durable, ack after commit) {mqtt:>9.0} readings/s"
    );
    println!(
        "   ratio gateway/native: HTTP {:.3}x  MQTT {:.3}x\n",
        http / native,
        mqtt / native
    );
}

/// The same work natively: envelope parse, signature check, SenML
/// resolution, aggregation per (device, name, window). Two threads, one per
/// core, each with its own devices.
fn native_baseline(duration: Duration) -> f64 {
    let threads: Vec<_> = (0..2u8)
        .map(|t| {
            std::thread::spawn(move || {
                let sensor = Sensor::new(&format!("native-{t}"), 100 + t);
                let key = sensor.key.verifying_key();
                let payloads: Vec<Vec<u8>> = (1..=2000u64)
                    .map(|seq| sensor.mqtt_payload(seq, pack(seq).as_bytes()))
                    .collect();
                let mut aggregates: HashMap<(String, String, u64), Aggregate> = HashMap::new();
                let mut last_seq = 0u64;
                let mut readings = 0u64;
                let started = Instant::now();
                'outer: loop {
                    for payload in &payloads {
                        let p = SignedPack::from_mqtt(payload).expect("envelope");
                        assert!(p.verify(&key));
                        last_seq = last_seq.max(p.seq);
                        let now = 1_700_000_000_000;
                        for r in senml::resolve(&p.pack, now).expect("pack") {
                            let w = (r.time_ms / 60_000) as u64;
                            aggregates
                                .entry((p.device.clone(), r.name.clone(), w))
                                .or_default()
                                .add(&r);
                            readings += 1;
                        }
                        if started.elapsed() >= duration {
                            break 'outer;
                        }
                    }
                }
                assert!(!aggregates.is_empty() && last_seq > 0);
                readings as f64 / started.elapsed().as_secs_f64()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

async fn through_http(duration: Duration) -> f64 {
    let home = home("");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let admin = HttpClient::new(gw.http_addr);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let sensor = Sensor::new(&format!("http-{d}"), d as u8 + 1);
        provision(&admin, &sensor).await;
        let http = HttpClient::new(gw.http_addr);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let mut readings = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let body = pack(seq);
                let headers = sensor.http_headers(seq, body.as_bytes());
                let r = http
                    .send_with_headers("POST", "/s/packs", &headers, body)
                    .await
                    .expect("POST pack");
                assert_eq!(r.status, 200, "{}", r.text());
                readings += READINGS as u64;
            }
            readings
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        accepted(&admin).await,
        sent,
        "every reading sent was accepted once"
    );
    gw.shutdown().await;
    rate
}

/// Publishes packs at QoS 1 from a Rust client (several devices, so the
/// plugin sees the interleaving a real broker delivers) and measures from
/// the first publish until the gateway has accepted all of them.
async fn through_mqtt(duration: Duration) -> f64 {
    let broker = Mosquitto::start();
    let home = home(mqtt_table(broker.port, "bench-gateway", "sensors/+/packs"));
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let sensors: Vec<Sensor> = (0..8)
        .map(|d| Sensor::new(&format!("mqtt-{d}"), 200 + d as u8))
        .collect();
    for s in &sensors {
        provision(&http, s).await;
    }
    // Wait for the subscription with one pack.
    broker.mosquitto_pub(
        "sensors/mqtt-0/packs",
        &sensors[0].mqtt_payload(1, pack(1).as_bytes()),
    );
    while accepted(&http).await < READINGS as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Size the run from a short probe so it lasts about `duration`.
    let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(10)).set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let per_device = 1 + (duration.as_secs_f64() * 100.0) as u64;
    let payloads: Vec<(String, Vec<u8>)> = (2..=per_device + 1)
        .flat_map(|seq| {
            sensors.iter().map(move |s| {
                (
                    format!("sensors/{}/packs", s.id),
                    s.mqtt_payload(seq, pack(seq).as_bytes()),
                )
            })
        })
        .collect();
    let target = READINGS as u64 * (1 + payloads.len() as u64);
    let started = Instant::now();
    for (topic, payload) in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    let deadline = started + Duration::from_secs(120);
    while accepted(&http).await < target {
        assert!(
            Instant::now() < deadline,
            "not every reading was accepted: {}",
            http.get("/s/stats").await.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = (target - READINGS as u64) as f64 / started.elapsed().as_secs_f64();
    poller.abort();
    gw.shutdown().await;
    drop(broker);
    rate
}
