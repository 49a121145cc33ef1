//! `depin-bench-hostile`: the gateway under hostile network load, each
//! attack against a gateway process on loopback, with a baseline measured
//! in the same run. Bounded in count and time; prints figures.
//!
//! 1. Slowloris: `HOSTILE_SLOW_CONNS` connections (default 2000) from 4
//!    loopback source addresses send a partial request head and trickle a
//!    byte a second; a normal client (another address) runs a closed loop
//!    meanwhile. Prints connections held and refused, and the normal
//!    client's requests/s with and without the attack.
//! 2. Spoofed UDP: `HOSTILE_SPOOFED` PULL_DATA (default 20000) with random
//!    forwarder EUIs to the hotspot relay while a real forwarder pulls every
//!    100 ms. Prints what share of the real forwarder's PULL_DATA reached
//!    the network server, with and without the attack, and the sessions
//!    closed to make room.
//! 3. MQTT flood: `HOSTILE_MQTT_MESSAGES` QoS 0 messages of 256 KiB
//!    (default 2000, 500 MiB) on one topic. Prints the gateway's peak RSS
//!    before and during the flood, and the backpressure counters.
//!
//! `HOSTILE_SECONDS` (default 10) is the length of each load phase;
//! `HOSTILE_ONLY=2` runs one attack. The gateway binary is
//! `DEPIN_GATEWAY_BIN`, by default `target/release/depin-gateway`.
//! Run with `make bench-hostile` (release build).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use depin_e2e::sensors::Mosquitto;
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin, workspace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gateway_binary() -> String {
    let bin = std::env::var_os("DEPIN_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/depin-gateway"));
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p depin-gateway",
        bin.display()
    );
    bin.to_str().unwrap().to_string()
}

/// A free loopback TCP port (for the admin listener, whose bound address
/// the gateway does not report).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/metrics` of the admin listener on `port`.
async fn metrics(port: u16) -> String {
    let http = HttpClient::new(SocketAddr::from(([127, 0, 0, 1], port)));
    http.get("/metrics").await.text()
}

/// The sum of the samples of `name` whose labels contain `labels`.
fn sample(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Lifts the soft open-file limit to the hard one (the attacks hold many
/// sockets; the gateway process inherits the limit).
fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    r.rlim_cur
}

/// Closed-loop requests/s of `connections` clients leaving from `from`.
async fn normal_load(addr: SocketAddr, from: IpAddr, connections: usize, seconds: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, done) = (stop.clone(), done.clone());
        let http = HttpClient::new_from(addr, from);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http.send("GET", "/t/hello?name=n", "").await;
                if r.is_ok_and(|r| r.status == 200) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn slowloris(seconds: u64) {
    let conns = env_or("HOSTILE_SLOW_CONNS", 2000) as usize;
    let sources = 4u8;
    println!(
        "1. slowloris: {conns} connections from {sources} addresses, trickling heads, {seconds} s"
    );
    let admin = free_port();
    let home =
        Home::new(
            &[PluginSpec::new("template", plugin("template_plugin"), "/t")
                .config("greeting = \"hi\"")],
            &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n[runtime]\nmax_instances = 200\n"),
        );
    let gw = GatewayProcess::start(&gateway_binary(), &home.config_path);
    let normal_from = IpAddr::from([127, 0, 0, 200]);
    let baseline = normal_load(gw.addr, normal_from, 4, seconds).await;

    let open = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut attack = Vec::with_capacity(conns);
    for i in 0..conns {
        let src = Ipv4Addr::new(127, 0, 1, 1 + (i % sources as usize) as u8);
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(src.into(), 0)).unwrap();
        let Ok(mut stream) = socket.connect(gw.addr).await else {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (open, refused, stop) = (open.clone(), refused.clone(), stop.clone());
        attack.push(tokio::spawn(async move {
            if stream
                .write_all(b"GET /t/hello HTTP/1.1\r\nhost: gw\r\n")
                .await
                .is_err()
            {
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut counted = false;
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                tokio::select! {
                    r = stream.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) {
                        break;
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
                            break;
                        }
                        if !counted {
                            counted = true;
                            open.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            if counted {
                open.fetch_sub(1, Ordering::Relaxed);
            } else {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let under_attack = normal_load(gw.addr, normal_from, 4, seconds).await;
    let held = open.load(Ordering::Relaxed);
    let m = metrics(admin).await;
    stop.store(true, Ordering::Relaxed);
    for t in attack {
        let _ = t.await;
    }
    println!("   connections held by the gateway at the end   {held:>9}");
    println!(
        "   closed at accept (connection caps)           {:>9}",
        sample(&m, "depin_http_connections_refused_total", "")
    );
    println!("   normal client without attack                 {baseline:>9.0} req/s");
    println!(
        "   normal client under attack                   {under_attack:>9.0} req/s   ratio {:.2}x",
        under_attack / baseline
    );
    drop(gw);
}

/// A GWMP PULL_DATA of `eui`.
fn pull_data(token: u16, eui: [u8; 8]) -> Vec<u8> {
    let mut d = vec![2];
    d.extend_from_slice(&token.to_be_bytes());
    d.push(0x02);
    d.extend_from_slice(&eui);
    d
}

/// The real forwarder: a PULL_DATA every 100 ms for `seconds`; returns how
/// many it sent and how many PULL_ACKs came back.
async fn real_forwarder(relay: SocketAddr, eui: [u8; 8], seconds: u64) -> (u64, u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (mut sent, mut acked) = (0, 0);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        socket
            .send_to(&pull_data(sent as u16, eui), relay)
            .await
            .unwrap();
        sent += 1;
        let next = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(next, socket.recv_from(&mut buf)).await {
            if n == 4 && buf[3] == 0x04 {
                acked += 1;
            }
        }
    }
    (sent, acked)
}

async fn spoofed_udp(seconds: u64) {
    let spoofed = env_or("HOSTILE_SPOOFED", 20_000);
    println!(
        "2. spoofed UDP: {spoofed} PULL_DATA with random EUIs, real forwarder every 100 ms, {seconds} s"
    );
    let ns = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let ns_addr = ns.local_addr().unwrap();
    let admin = free_port();
    let table = format!(
        "[plugin.udp]\nlisten = \"127.0.0.1:0\"\n[plugin.outbound]\nudp = [\"{ns_addr}\"]\n"
    );
    let config = format!("upstream = \"{ns_addr}\"\n");
    let home = Home::new(
        &[
            PluginSpec::new("relay", plugin("hotspot_relay_plugin"), "/relay")
                .table(Box::leak(table.into_boxed_str()))
                .config(Box::leak(config.into_boxed_str())),
        ],
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n[runtime]\nmax_instances = 200\n"),
    );
    // The relay's UDP port: from its `udp ingress ready` log line.
    let gw = GatewayProcess::start(&gateway_binary(), &home.config_path);
    let relay: SocketAddr = gw
        .stderr_lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["udp_addr"].as_str()?.parse().ok()
        })
        .expect("udp ingress address in the log");
    // The network server counts the real forwarder's PULL_DATA by EUI.
    let real_eui = [0xaa, 0x55, 0, 0, 0, 0, 0, 0x01];
    let real_upstream = Arc::new(AtomicU64::new(0));
    let counter = real_upstream.clone();
    let ns_task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = ns.recv_from(&mut buf).await {
            if n >= 12 && buf[4..12] == real_eui {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let (sent0, acked0) = real_forwarder(relay, real_eui, seconds).await;
    let up0 = real_upstream.swap(0, Ordering::Relaxed);

    let per_s = (spoofed / seconds).max(1);
    let attack = tokio::spawn(async move {
        let sockets: Vec<UdpSocket> = {
            let mut v = Vec::new();
            for _ in 0..64 {
                v.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            }
            v
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let started = Instant::now();
        for i in 0..spoofed {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let _ = sockets[(i % 64) as usize]
                .send_to(&pull_data(i as u16, state.to_be_bytes()), relay)
                .await;
            // Paced to spread the attack over the phase.
            let due = Duration::from_secs_f64(i as f64 / per_s as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    });
    let (sent1, acked1) = real_forwarder(relay, real_eui, seconds).await;
    attack.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let up1 = real_upstream.load(Ordering::Relaxed);
    let m = metrics(admin).await;
    ns_task.abort();
    println!("   real forwarder without attack   acks {acked0}/{sent0}   upstream {up0}/{sent0}");
    println!(
        "   real forwarder under attack     acks {acked1}/{sent1}   upstream {up1}/{sent1}   ratio {:.2}x",
        (up1 as f64 / sent1 as f64) / (up0 as f64 / sent0 as f64)
    );
    println!(
        "   upstream sessions closed: lru {}  idle {}   datagrams dropped {}",
        sample(&m, "depin_udp_sessions_closed_total", "reason=\"lru\""),
        sample(&m, "depin_udp_sessions_closed_total", "reason=\"idle\""),
        sample(&m, "depin_udp_dropped_total", "")
    );
    drop(gw);
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn mqtt_flood(seconds: u64) {
    let messages = env_or("HOSTILE_MQTT_MESSAGES", 2000);
    let size = 256usize << 10;
    println!(
        "3. MQTT flood: {messages} QoS 0 messages of 256 KiB ({} MiB) on one topic",
        (messages as usize * size) >> 20
    );
    let broker = Mosquitto::start();
    let admin = free_port();
    let table = format!(
        "[plugin.mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"gw-flood\"\n\
         topics = [\"flood/#\"]\nqos = 0\nkeep_alive_s = 30\n",
        broker.port
    );
    let home = Home::new(
        &[
            PluginSpec::new("sensors", plugin("sensor_aggregator_plugin"), "/s")
                .table(Box::leak(table.into_boxed_str()))
                .config("admin_token = \"flood-bench-admin-token\"\n"),
        ],
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n[runtime]\nmax_instances = 200\n"),
    );
    let gw = GatewayProcess::start(&gateway_binary(), &home.config_path);
    let pid = gw.child.id();
    let mut o = rumqttc::MqttOptions::new("flooder", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // Until the subscription receives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&metrics(admin).await, "depin_mqtt_queued_messages_peak", "") == 0 {
        assert!(Instant::now() < deadline, "the subscription never received");
        client
            .publish(
                "flood/probe",
                rumqttc::QoS::AtMostOnce,
                false,
                b"x".to_vec(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (peak, watching) = (peak.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    for i in 0..messages {
        let mut payload = vec![b'f'; size];
        payload[..8].copy_from_slice(&i.to_be_bytes());
        client
            .publish("flood/one", rumqttc::QoS::AtMostOnce, false, payload)
            .await
            .unwrap();
    }
    let published = started.elapsed();
    // Let the gateway work through what reached it, up to one phase.
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end
        && sample(&metrics(admin).await, "depin_mqtt_queued_messages{", "") > 0
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let m = metrics(admin).await;
    println!(
        "   published in {:.1} s; gateway RSS before {} MiB, peak during {} MiB",
        published.as_secs_f64(),
        before >> 10,
        peak.load(Ordering::Relaxed) >> 10
    );
    println!(
        "   queue peak {} messages (bound {}), backpressure waits {}",
        sample(&m, "depin_mqtt_queued_messages_peak", ""),
        depin_gateway::ingress::mqtt::MAX_QUEUED,
        sample(&m, "depin_mqtt_backpressure_total", "")
    );
    drop(gw);
}

#[tokio::main]
async fn main() {
    let seconds = env_or("HOSTILE_SECONDS", 10).max(1);
    let only = env_or("HOSTILE_ONLY", 0);
    let fds = raise_fd_limit();
    println!("depin-bench-hostile: {seconds} s per phase, open-file limit {fds}");
    if only == 0 || only == 1 {
        slowloris(seconds).await;
    }
    if only == 0 || only == 2 {
        spoofed_udp(seconds).await;
    }
    if only == 0 || only == 3 {
        mqtt_flood(seconds).await;
    }
}
