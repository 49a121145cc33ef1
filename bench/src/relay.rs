//! Phase 6: the hotspot relay. Packet forwarders send PUSH_DATA (one LoRa
//! packet each, all distinct) in a closed loop, one packet in flight per
//! forwarder; a packet counts when its PUSH_ACK is back. Both relays ack
//! and forward every packet to the same upstream sink.
//!
//! - gateway: the hotspot-relay component (fresh sandboxed instance per
//!   datagram, kv reads and writes for dedupe and proofs, three usage
//!   records, four host records, durable commit before the ack leaves);
//! - native: one tokio task doing the same parsing with the plugin's own
//!   code compiled natively (GWMP header, JSON, every rxpk checked,
//!   base64, airtime, sha256), then ack and forward. No sandbox, no ledger.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use depin_e2e::{Home, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use hotspot_relay_plugin::gwmp::{self, Kind};
use hotspot_relay_plugin::relay::parse_push_data;
use tokio::net::UdpSocket;

const FORWARDERS: u8 = 64;

struct Load {
    packets: u64,
    pps: f64,
    p50: Duration,
    p99: Duration,
    lost: u64,
}

/// Upstream sink: counts what the relay forwards.
async fn sink() -> (SocketAddr, Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while socket.recv_from(&mut buf).await.is_ok() {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, count)
}

fn push_data(eui: u8, seq: u64) -> Vec<u8> {
    let mut phy = vec![0x40, eui, 0, 0, 0, 0x80];
    phy.extend_from_slice(&seq.to_be_bytes());
    phy.extend_from_slice(b"sensor-reading");
    let body = serde_json::json!({ "rxpk": [{
        "chan": 2, "codr": "4/5", "datr": "SF7BW125", "freq": 868.5, "lsnr": 7.5,
        "modu": "LORA", "rfch": 1, "rssi": -57, "size": phy.len(), "stat": 1,
        "tmst": 3_512_348_611u32, "time": "2026-11-25T21:00:00.000000Z",
        "data": base64::engine::general_purpose::STANDARD.encode(&phy),
    }]});
    let mut d = vec![
        2,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0xaa,
        0x55,
        0,
        0,
        0,
        0,
        0,
        eui,
    ];
    d.extend_from_slice(&serde_json::to_vec(&body).unwrap());
    d
}

async fn load(relay: SocketAddr, duration: Duration) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for eui in 0..FORWARDERS {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut buf = vec![0u8; 1024];
            let (mut lat, mut lost) = (Vec::with_capacity(100_000), 0u64);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let d = push_data(eui, seq);
                let t = Instant::now();
                socket.send_to(&d, relay).await.unwrap();
                match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
                {
                    Ok(Ok((n, _))) if n == 4 && buf[3] == 1 => lat.push(t.elapsed()),
                    _ => lost += 1,
                }
            }
            (lat, lost)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut lost) = (Vec::new(), 0);
    for t in tasks {
        let (l, n) = t.await.unwrap();
        all.extend(l);
        lost += n;
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Load {
        packets: all.len() as u64,
        pps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        lost,
    }
}

/// The native baseline relay.
async fn native_relay(upstream: SocketAddr) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let out = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
            let d = &buf[..n];
            let Ok(p) = gwmp::parse(d) else { continue };
            if p.kind != Kind::PushData {
                continue;
            }
            let Ok(serde_json::Value::Object(body)) = serde_json::from_slice(p.body) else {
                continue;
            };
            let Ok(uplinks) = parse_push_data(&body) else {
                continue;
            };
            std::hint::black_box(&uplinks);
            let _ = socket
                .send_to(&gwmp::ack(p.token, Kind::PushAck), peer)
                .await;
            let _ = out.send_to(d, upstream).await;
        }
    });
    addr
}

pub async fn relay_vs_native(duration: Duration) {
    println!(
        "5. hotspot relay: PUSH_DATA -> PUSH_ACK + forward upstream, {FORWARDERS} forwarders, \
         one packet in flight each, {} s per row",
        duration.as_secs()
    );
    let (upstream, forwarded) = sink().await;
    let native_addr = native_relay(upstream).await;
    let native = load(native_addr, duration).await;
    let native_forwarded = forwarded.swap(0, Ordering::Relaxed);

    let table = format!(
        "tick_interval_ms = 1000\n[plugin.udp]\nlisten = \"127.0.0.1:0\"\n\
         [plugin.outbound]\nudp = [\"{upstream}\"]\n"
    );
    let config = format!("upstream = \"{upstream}\"\n");
    let home = Home::new(
        &[
            PluginSpec::new("relay", plugin("hotspot_relay_plugin"), "/relay")
                .table(Box::leak(table.into_boxed_str()))
                .config(Box::leak(config.into_boxed_str())),
        ],
        "[runtime]\nmax_instances = 1000\n",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let through = load(gw.udp_addr("relay").unwrap(), duration).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gw_forwarded = forwarded.swap(0, Ordering::Relaxed);
    gw.shutdown().await;

    let show = |name: &str, l: &Load, fwd: u64| {
        println!(
            "   {name:<28} {:>9.0} packets/s  p50 {:>6.3} ms  p99 {:>6.3} ms  ({} acked, {} lost, {} forwarded)",
            l.pps,
            l.p50.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() * 1e3,
            l.packets,
            l.lost,
            fwd
        );
    };
    show("native relay", &native, native_forwarded);
    show("gateway (durable ledger)", &through, gw_forwarded);
    println!(
        "   ratio gateway/native: throughput {:.2}x  added latency p50 {:+.3} ms, p99 {:+.3} ms\n",
        through.pps / native.pps,
        (through.p50.as_secs_f64() - native.p50.as_secs_f64()) * 1e3,
        (through.p99.as_secs_f64() - native.p99.as_secs_f64()) * 1e3,
    );
}
