//! The network ingresses under hostile load: slow clients, floods, spoofed
//! sources. Each test runs an attack on loopback while a normal client
//! keeps being served, and checks the bound that holds.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use depin_e2e::ops::TestCa;
use depin_e2e::{Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use depin_gateway::ingress::pressure;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn template(name: &'static str, route: &'static str) -> PluginSpec {
    PluginSpec::new(name, plugin("template_plugin"), route).config("greeting = \"hi\"")
}

/// How one slow connection ended.
#[derive(Debug)]
struct SlowEnd {
    /// When the server closed it, from the first byte sent; `None` if it
    /// was still open when the attacker gave up.
    closed_after: Option<Duration>,
    /// What the server sent before closing.
    received: Vec<u8>,
}

/// Sends `head` at once, then one byte of `trickle` (cycled) every 100 ms
/// until the server closes the connection or `give_up` has passed.
async fn trickle(mut stream: TcpStream, head: &'static [u8], trickle: &'static [u8]) -> SlowEnd {
    let started = Instant::now();
    let give_up = Duration::from_secs(6);
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = |received, started: Instant| SlowEnd {
        closed_after: Some(started.elapsed()),
        received,
    };
    if stream.write_all(head).await.is_err() {
        return closed(received, started);
    }
    for i in 0.. {
        if started.elapsed() > give_up {
            return SlowEnd {
                closed_after: None,
                received,
            };
        }
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return closed(received, started),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let byte = trickle[i % trickle.len()];
                if stream.write_all(&[byte]).await.is_err() {
                    return closed(received, started);
                }
            }
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_and_bodies_are_cut_off_while_another_peer_is_served() {
    let home = Home::new(
        &[template("slowloris-t", "/t")],
        "[http]\nheader_read_timeout_ms = 1000\nbody_read_timeout_ms = 1000\n\
         max_connections = 64\nmax_connections_per_peer = 8\n",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let addr = gw.http_addr;
    let refused_before = pressure::value(pressure::HTTP_CONNECTIONS_REFUSED, &[("reason", "peer")]);
    let timeouts_before = pressure::value(pressure::HTTP_BODY_TIMEOUTS, &[]);

    // The attacker, on 127.0.0.1: 24 connections, half trickling a request
    // head, half a declared 1000-byte body.
    let mut attack = tokio::task::JoinSet::new();
    for i in 0..24 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 {
            attack.spawn(trickle(
                stream,
                b"GET /t/hello HTTP/1.1\r\nhost: gw\r\n",
                b"x-slow: 1\r\n",
            ));
        } else {
            attack.spawn(trickle(
                stream,
                b"POST /t/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000\r\n\r\n",
                b"z",
            ));
        }
    }

    // Another peer, on 127.0.0.2, is served all along.
    let normal = HttpClient::new_from(addr, IpAddr::from([127, 0, 0, 2]));
    let mut served = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let r = normal
            .send("GET", "/t/hello?name=n", "")
            .await
            .expect("normal client");
        assert_eq!((r.status, r.text().as_str()), (200, "hi, n"));
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 10, "{served}");

    let ends: Vec<SlowEnd> = attack.join_all().await;
    let still_open: Vec<_> = ends.iter().filter(|e| e.closed_after.is_none()).collect();
    assert!(still_open.is_empty(), "connections held: {still_open:?}");
    // 16 over the per-peer cap were closed at once, without an answer.
    let refused = ends
        .iter()
        .filter(|e| e.closed_after.unwrap() < Duration::from_millis(500) && e.received.is_empty())
        .count();
    assert_eq!(refused, 16, "{ends:?}");
    // The 8 admitted ones were cut off at their read timeout; trickled
    // bodies got 408.
    let timed_out: Vec<_> = ends
        .iter()
        .filter(|e| e.closed_after.unwrap() >= Duration::from_millis(800))
        .collect();
    assert_eq!(timed_out.len(), 8, "{ends:?}");
    assert!(
        timed_out
            .iter()
            .any(|e| e.received.starts_with(b"HTTP/1.1 408")),
        "{ends:?}"
    );
    assert!(
        pressure::value(pressure::HTTP_CONNECTIONS_REFUSED, &[("reason", "peer")])
            >= refused_before + 16
    );
    assert!(pressure::value(pressure::HTTP_BODY_TIMEOUTS, &[]) > timeouts_before);
    gw.shutdown().await;
}

/// One HTTP/2 frame as read off the wire.
struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        payload,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_caps_streams_pings_idle_clients_and_drops_silent_ones() {
    let ca = TestCa::new();
    let home = Home::new(
        &[template("h2-limits-t", "/t")],
        "[http]\nh2_keep_alive_interval_ms = 300\nh2_keep_alive_timeout_ms = 300\n\
         h2_max_concurrent_streams = 7\n\
         [http.tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n",
    );
    let dir = home.dir.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    ca.leaf().write(&dir.join("cert.pem"), &dir.join("key.pem"));
    let gw = RunningGateway::start(&home.config()).await.expect("start");

    let tcp = TcpStream::connect(gw.http_addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(ca.client_config(&[b"h2"]))
        .connect(name, tcp)
        .await
        .expect("handshake");
    // The client preface and an empty SETTINGS frame; then never another
    // byte, not even the ack of the server's SETTINGS or PING.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = Instant::now();
    let mut max_streams = None;
    let mut pinged = false;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), read_frame(&mut tls)).await {
            Err(_) => break false,
            Ok(Err(_)) => break true,
            Ok(Ok(f)) => match f.kind {
                // SETTINGS (not an ack): 6-byte entries of id and value.
                4 if f.flags & 1 == 0 => {
                    for e in f.payload.chunks_exact(6) {
                        if u16::from_be_bytes([e[0], e[1]]) == 3 {
                            max_streams = Some(u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
                        }
                    }
                }
                6 if f.flags & 1 == 0 => pinged = true,
                // GOAWAY: the server gives up on the silent client.
                7 => break true,
                _ => {}
            },
        }
    };
    assert_eq!(max_streams, Some(7));
    assert!(pinged, "the server never pinged the idle connection");
    assert!(closed, "a client that answers no ping was kept");
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.shutdown().await;
}

/// A Rust MQTT client whose event loop runs in a task of its own.
async fn mqtt_publisher(port: u16, id: &str) -> rumqttc::AsyncClient {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_mqtt_flood_waits_in_a_bounded_queue_while_http_is_served() {
    use depin_e2e::sensors::Mosquitto;
    use depin_gateway::ingress::mqtt::MAX_QUEUED;
    let plugin_name = "mqtt-flood-s";
    let labels = [("plugin", plugin_name)];
    let broker = Mosquitto::start();
    let table = format!(
        "[plugin.mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"gw-flood\"\n\
         topics = [\"flood/#\"]\nqos = 0\nkeep_alive_s = 30\n",
        broker.port
    );
    let home = Home::new(
        &[
            PluginSpec::new(plugin_name, plugin("sensor_aggregator_plugin"), "/s")
                .table(Box::leak(table.into_boxed_str()))
                .config("admin_token = \"flood-test-admin-token\"\n"),
        ],
        "",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let publisher = mqtt_publisher(broker.port, "flooder").await;
    // Wait until the gateway's subscription receives messages.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pressure::value(pressure::MQTT_QUEUED_PEAK, &labels) == 0 {
        assert!(Instant::now() < deadline, "the subscription never received");
        publisher
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

    // 1500 messages of 32 KiB (48 MiB) on one topic, as fast as the broker
    // takes them; HTTP is asked meanwhile.
    let flood = tokio::spawn(async move {
        for i in 0..1500u32 {
            let mut payload = vec![b'f'; 32 << 10];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            publisher
                .publish("flood/one", rumqttc::QoS::AtMostOnce, false, payload)
                .await
                .unwrap();
        }
        publisher
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while pressure::value(pressure::MQTT_BACKPRESSURE, &labels) == 0 {
        assert!(
            Instant::now() < deadline,
            "the flood never filled the queue"
        );
        let r = http.send("GET", "/s/stats", "").await.expect("stats");
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _publisher = flood.await.unwrap();
    let r = http.send("GET", "/s/stats", "").await.expect("stats");
    assert_eq!(r.status, 200, "{}", r.text());
    let peak = pressure::value(pressure::MQTT_QUEUED_PEAK, &labels);
    assert!(
        (LANE_FLOOR..=MAX_QUEUED as u64).contains(&peak),
        "peak queue {peak}, bound {MAX_QUEUED}"
    );
    gw.shutdown().await;
}

/// A full hand-off queue holds at least this many messages: backpressure
/// was reached with the queues full, not before.
const LANE_FLOOR: u64 = 32;

/// Every datagram that arrives at `socket` within `quiet` of the previous
/// one (the first may take up to 5 s).
async fn receive_all(socket: &tokio::net::UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut wait = Duration::from_secs(5);
    while let Ok(Ok((n, _))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
        wait = quiet;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_datagrams_obey_the_send_cap_and_a_spoofed_source_gets_no_amplification() {
    use tokio::net::UdpSocket;
    let name = "udp-bounds-hostile";
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let table = format!(
        "[plugin.udp]\nlisten = \"127.0.0.1:0\"\n[plugin.outbound]\nudp = [\"{}\"]\n",
        upstream.local_addr().unwrap()
    );
    let spec = PluginSpec::new(name, plugin("hostile_plugin"), "/h")
        .table(Box::leak(table.into_boxed_str()));
    let home = Home::new(&[spec], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let addr = gw.udp_addr(name).unwrap();

    // 100 one-byte answers to a 512-byte request: within the reply budget,
    // over the send cap of 64.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut ask = b"flood 100 1 ".to_vec();
    ask.resize(512, b' ');
    client.send_to(&ask, addr).await.unwrap();
    let got = receive_all(&client, Duration::from_millis(500)).await;
    assert_eq!(got.len(), depin_gateway::runtime::MAX_SENDS_PER_CALL);

    // Ten 10-byte answers to an 11-byte request: only what fits three
    // times the request goes out.
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    victim.send_to(b"flood 10 10", addr).await.unwrap();
    let got = receive_all(&victim, Duration::from_millis(500)).await;
    let bytes: usize = got.iter().map(Vec::len).sum();
    assert_eq!((got.len(), bytes), (3, 30));

    let dropped = |reason| {
        pressure::value(
            pressure::UDP_DROPPED,
            &[("plugin", name), ("reason", reason)],
        )
    };
    assert_eq!(dropped("send_cap"), 36);
    assert_eq!(dropped("reply_budget"), 7);
    gw.shutdown().await;
}

/// A GWMP PULL_DATA of the forwarder `eui`.
fn pull_data(token: u16, eui: [u8; 8]) -> Vec<u8> {
    let mut d = vec![2];
    d.extend_from_slice(&token.to_be_bytes());
    d.push(0x02);
    d.extend_from_slice(&eui);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarder_euis_cannot_keep_a_new_forwarder_from_its_session() {
    use depin_gateway::ingress::udp::MAX_SESSIONS;
    use tokio::net::UdpSocket;
    let name = "udp-spoof-relay";
    let ns = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let ns_addr = ns.local_addr().unwrap();
    let table = format!(
        "[plugin.udp]\nlisten = \"127.0.0.1:0\"\n[plugin.outbound]\nudp = [\"{ns_addr}\"]\n"
    );
    let config = format!("upstream = \"{ns_addr}\"\n");
    let spec = PluginSpec::new(name, plugin("hotspot_relay_plugin"), "/relay")
        .table(Box::leak(table.into_boxed_str()))
        .config(Box::leak(config.into_boxed_str()));
    let home = Home::new(&[spec], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let relay = gw.udp_addr(name).unwrap();

    // 1155 PULL_DATA with made-up EUIs, from 33 sockets (so no one lane
    // queue overflows), each opening an upstream session.
    let spoofed = MAX_SESSIONS + 131;
    // The network server reads while the forwarders send, so its socket's
    // receive buffer never decides how many arrive.
    let upstream = tokio::spawn({
        let ns = ns.clone();
        async move { receive_all(&ns, Duration::from_secs(2)).await }
    });
    let mut senders = Vec::new();
    for s in 0..33u32 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..35u32 {
            let n = s * 35 + i;
            let mut eui = [0x5e; 8];
            eui[4..].copy_from_slice(&n.to_be_bytes());
            socket.send_to(&pull_data(1, eui), relay).await.unwrap();
        }
        senders.push(socket);
        // Paced by socket, so that the receive buffer of the gateway's
        // socket (a few hundred datagrams) does not overflow while a loaded
        // machine schedules its reader late: the test is about sessions,
        // not about loss.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let upstream = upstream.await.expect("the network server's reader");
    assert!(
        upstream.len() >= spoofed - 50,
        "{} went upstream",
        upstream.len()
    );

    // A real forwarder that was never seen: acknowledged, and its PULL_DATA
    // goes upstream on a session of its own.
    let eui = [0xaa, 0x55, 0, 0, 0, 0, 0, 0x01];
    let forwarder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    forwarder
        .send_to(&pull_data(0x4242, eui), relay)
        .await
        .unwrap();
    let acks = receive_all(&forwarder, Duration::from_millis(300)).await;
    assert_eq!(acks, [vec![2, 0x42, 0x42, 0x04]]);
    let upstream = receive_all(&ns, Duration::from_millis(500)).await;
    assert!(
        upstream.iter().any(|d| d.len() >= 12 && d[4..12] == eui),
        "the new forwarder's PULL_DATA did not go upstream"
    );
    let closed = pressure::value(
        pressure::UDP_SESSIONS_CLOSED,
        &[("plugin", name), ("reason", "lru")],
    );
    assert!(closed >= 100, "{closed} sessions closed to make room");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_a_silent_origin_ends_at_its_wall_clock_deadline() {
    use depin_gateway::call::CallError;
    use depin_gateway::runtime::contract::Challenge;
    // An origin that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            kept.push(tcp);
        }
    });
    let table = format!("[plugin.outbound]\nhttp = [\"{origin}\"]\n");
    let spec = PluginSpec::new("wall-deadline-hostile", plugin("hostile_plugin"), "/h")
        .table(Box::leak(table.into_boxed_str()))
        .limits("wall_ms = 500\n");
    let home = Home::new(&[spec], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let started = Instant::now();
    let outcome = gw.plugins[0]
        .prove(
            &Arc::from("prove-1"),
            Challenge {
                id: "c-1".into(),
                kind: "fetch".into(),
                nonce: b"n".to_vec(),
                params: format!("{origin}/never").into_bytes(),
            },
        )
        .await;
    assert_eq!(outcome.result.unwrap_err(), CallError::Timeout(500));
    assert!(started.elapsed() < Duration::from_secs(5));
    held.abort();
    gw.shutdown().await;
}
