//! The hotspot-relay plugin end to end, over real UDP on loopback: the
//! packet forwarders and the network server are the `semtech-udp` crate (an
//! independent implementation of the Semtech UDP protocol), the gateway is
//! the real one with the real component.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use depin_e2e::upstream::{
    CollectorProcess, Pki, collector_config, file_digest, free_port, wait_for_verdicts,
};
use depin_e2e::{Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use depin_gateway::identity::DeviceKey;
use depin_gateway::ledger::{LedgerReader, Source, UsageRecord};
use depin_gateway::proofs::ToWit;
use depin_gateway::proofs::responder::Attempt;
use depin_gateway::runtime::LoadedPlugin;
use depin_gateway::runtime::contract::{Challenge, Proof};
use depin_protocol::proofs::ChallengeSpec;
use semtech_udp::server_runtime::{Event, UdpRuntime};
use semtech_udp::{Down, MacAddress, Packet, SerializablePacket, pull_data, push_data};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

mod beacons;

const WAIT: Duration = Duration::from_secs(5);
/// How long to wait before concluding that nothing is coming.
const QUIET: Duration = Duration::from_millis(300);

/// A gateway running the relay, with `upstream` allow-listed.
async fn relay_gateway(upstream: SocketAddr) -> (Home, RunningGateway) {
    relay_gateway_with(upstream, "").await
}

/// Like [`relay_gateway`], with `extra` top-level configuration.
async fn relay_gateway_with(upstream: SocketAddr, extra: &str) -> (Home, RunningGateway) {
    let table = format!(
        "tick_interval_ms = 100\n[plugin.udp]\nlisten = \"127.0.0.1:0\"\n\
         [plugin.outbound]\nudp = [\"{upstream}\"]\n"
    );
    let config = format!("upstream = \"{upstream}\"\ndedupe_window_ms = 60000\n");
    let spec = PluginSpec::new("relay", plugin("hotspot_relay_plugin"), "/relay")
        .table(Box::leak(table.into_boxed_str()))
        .config(Box::leak(config.into_boxed_str()));
    let home = Home::new(&[spec], extra);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    (home, gw)
}

/// A free loopback UDP port for the network server (whose runtime binds
/// by itself and does not report its address).
fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

/// A network server: the `semtech-udp` server runtime. The free port can be
/// taken by a parallel test between the probe and the bind; then try another.
async fn network_server() -> (SocketAddr, UdpRuntime) {
    let mut last = None;
    for _ in 0..20 {
        let addr = free_udp_port();
        match UdpRuntime::new(addr).await {
            Ok(ns) => return (addr, ns),
            Err(e) => last = Some(e),
        }
    }
    panic!("network server: {last:?}");
}

/// A packet forwarder's socket, speaking through `semtech-udp`'s encoder.
struct Forwarder {
    socket: UdpSocket,
    mac: MacAddress,
    relay: SocketAddr,
}

impl Forwarder {
    async fn new(eui: u8, relay: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            mac: MacAddress::new(0xaa, 0x55, 0, 0, 0, 0, 0, eui),
            relay,
        }
    }

    fn eui_hex(&self) -> String {
        hex(self.mac.as_bytes())
    }

    async fn send(&self, packet: impl Into<Packet>) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = packet.into().serialize(&mut buf).expect("serialize") as usize;
        buf.truncate(n);
        self.send_raw(&buf).await;
        buf
    }

    async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.relay).await.expect("send");
    }

    async fn recv(&self) -> Down {
        Packet::parse_downlink(&self.recv_raw().await).expect("a valid downlink packet")
    }

    async fn recv_raw(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let (n, from) = tokio::time::timeout(WAIT, self.socket.recv_from(&mut buf))
            .await
            .expect("a datagram from the relay")
            .expect("recv");
        assert_eq!(from, self.relay);
        buf.truncate(n);
        buf
    }

    async fn nothing_arrives(&self) {
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(QUIET, self.socket.recv_from(&mut buf)).await;
        assert!(
            got.is_err(),
            "unexpected datagram: {:?}",
            got.map(|r| buf[..r.unwrap().0].to_vec())
        );
    }

    async fn pull(&self, token: u16) {
        self.send(pull_data::Packet {
            random_token: token,
            gateway_mac: self.mac,
        })
        .await;
        match self.recv().await {
            Down::PullAck(ack) => assert_eq!(ack.random_token, token),
            other => panic!("expected PULL_ACK, got {other:?}"),
        }
    }

    /// Sends a PUSH_DATA with one rxpk and checks its PUSH_ACK.
    async fn push(&self, token: u16, rxpk: &Value) -> Vec<u8> {
        let rxpk: push_data::RxPk = serde_json::from_str(&rxpk.to_string()).expect("rxpk");
        let mut packet = push_data::Packet::from_rxpk(self.mac, rxpk);
        packet.random_token = token;
        let bytes = self.send(packet).await;
        match self.recv().await {
            Down::PushAck(ack) => assert_eq!(ack.random_token, token),
            other => panic!("expected PUSH_ACK, got {other:?}"),
        }
        bytes
    }
}

async fn verifies(plugin: &LoadedPlugin, c: Challenge, p: Proof) -> bool {
    let id: Arc<str> = "verify".into();
    plugin.verify(&id, c, p).await.result.expect("call")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An rxpk as a packet forwarder reports it.
fn rxpk(phy: &[u8], datr: &str, rssi: i32) -> Value {
    json!({
        "chan": 2, "codr": "4/5", "data": b64(phy), "datr": datr, "freq": 868.5,
        "lsnr": 7.5, "modu": "LORA", "rfch": 1, "rssi": rssi, "size": phy.len(),
        "stat": 1, "tmst": 3_512_348_611u32, "time": "2026-11-25T21:00:00.000000Z",
    })
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

async fn next_event(ns: &mut UdpRuntime) -> Event {
    tokio::time::timeout(WAIT, ns.recv())
        .await
        .expect("an event at the network server")
}

/// The next uplink packet the network server receives, skipping the other
/// events (new clients, stats).
async fn next_uplink(ns: &mut UdpRuntime) -> (push_data::RxPk, MacAddress) {
    loop {
        if let Event::PacketReceived(rxpk, mac) = next_event(ns).await {
            return (rxpk, mac);
        }
    }
}

/// Plugin-claimed records of the ledger, after the gateway stopped.
fn plugin_records(home: &Home) -> Vec<UsageRecord> {
    let reader = LedgerReader::open(&home.data_dir()).expect("ledger");
    let mut out = Vec::new();
    reader
        .for_each(|_, r| {
            let (_, _, record) = r.expect("record");
            if record.source == Source::Plugin {
                out.push(record);
            }
            true
        })
        .expect("read");
    out
}

fn total(records: &[UsageRecord], unit: &str) -> u64 {
    records
        .iter()
        .filter(|r| r.unit == unit)
        .map(|r| r.quantity)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_downlinks_and_acks_flow_through_the_relay_and_are_metered() {
    let (ns_addr, mut ns) = network_server().await;
    let (home, gw) = relay_gateway(ns_addr).await;
    let fwd = Forwarder::new(1, gw.udp_addr("relay").expect("udp ingress")).await;

    // PULL_DATA: acked by the relay, and the network server learns the
    // gateway (at the relay's session address for it).
    fwd.pull(0x1111).await;
    match next_event(&mut ns).await {
        Event::NewClient((mac, _)) => assert_eq!(mac, fwd.mac),
        other => panic!("expected a new client, got {other:?}"),
    }

    // Uplink: acked at once, and it arrives upstream unchanged.
    let phy = b"\x40\x01\x02\x03\x04\x80\x05\x00\x01\xa1\xb2\xc3\xd4";
    let sent = rxpk(phy, "SF7BW125", -57);
    fwd.push(0x2222, &sent).await;
    let (received, mac) = next_uplink(&mut ns).await;
    assert_eq!(mac, fwd.mac);
    assert_eq!(serde_json::to_value(&received).unwrap(), {
        let r: push_data::RxPk = serde_json::from_str(&sent.to_string()).unwrap();
        serde_json::to_value(r).unwrap()
    });

    // Downlink: the network server's PULL_RESP reaches the forwarder, whose
    // TX_ACK reaches the network server.
    let txpk: semtech_udp::pull_resp::TxPk = serde_json::from_str(
        &json!({
            "imme": true, "freq": 869.525, "rfch": 0, "powe": 14, "modu": "LORA",
            "datr": "SF9BW125", "codr": "4/5", "ipol": true, "prea": 8,
            "size": 5, "data": b64(b"\x60\x01\x02\x03\x04"),
        })
        .to_string(),
    )
    .expect("txpk");
    let downlink = ns.prepare_downlink(txpk, fwd.mac);
    let dispatched = tokio::spawn(downlink.dispatch(Some(WAIT)));
    let pull_resp = match fwd.recv().await {
        Down::PullResp(p) => p,
        other => panic!("expected PULL_RESP, got {other:?}"),
    };
    assert_eq!(pull_resp.data.txpk.data.data(), b"\x60\x01\x02\x03\x04");
    fwd.send(pull_resp.into_ack_for_gateway(fwd.mac)).await;
    dispatched
        .await
        .unwrap()
        .expect("the network server got a TX_ACK without error");

    // Proofs: the relayed packet can be proven, bound to the nonce.
    let relay = &gw.plugins[0];
    let id: Arc<str> = "challenge".into();
    let challenge = |nonce: &[u8], packet: &[u8]| Challenge {
        id: "c-1".into(),
        kind: "relayed-packet".into(),
        nonce: nonce.to_vec(),
        params: packet.to_vec(),
    };
    let c = challenge(b"fresh nonce", &sha256(phy));
    let proof = relay
        .prove(&id, c.clone())
        .await
        .result
        .expect("call")
        .expect("a proof");
    let revealed: Value = serde_json::from_slice(&proof.payload).unwrap();
    assert_eq!(revealed["meta"]["freq"], 868.5);
    assert_eq!(revealed["meta"]["datr"], "SF7BW125");
    assert_eq!(revealed["meta"]["rssi"], -57);
    assert_eq!(revealed["eui"], fwd.eui_hex());
    let verify = |c: Challenge, p: Proof| verifies(relay, c, p);
    assert!(verify(c.clone(), proof.clone()).await);
    assert!(
        !verify(challenge(b"another nonce", &sha256(phy)), proof.clone()).await,
        "a proof is bound to its nonce"
    );
    let mut forged = revealed.clone();
    forged["meta"]["rssi"] = json!(-20);
    let forged = Proof {
        challenge_id: proof.challenge_id.clone(),
        payload: serde_json::to_vec(&forged).unwrap(),
    };
    assert!(!verify(c.clone(), forged).await, "altered metadata fails");
    let unknown = relay
        .prove(&id, challenge(b"n", &sha256(b"never relayed")))
        .await
        .result
        .expect("call");
    assert!(unknown.unwrap_err().contains("was not relayed here"));

    gw.shutdown().await;
    let records = plugin_records(&home);
    assert_eq!(total(&records, "uplink-packets"), 1);
    assert_eq!(total(&records, "payload-bytes"), phy.len() as u64);
    // SF7, 125 kHz, CR 4/5, 13 bytes: 46.336 ms on air.
    assert_eq!(total(&records, "airtime-us"), 46_336);
    assert_eq!(total(&records, "downlinks"), 1);
    for r in &records {
        assert_eq!(r.subject.as_deref(), Some(fwd.eui_hex().as_str()), "{r:?}");
    }
    let uplink = records.iter().find(|r| r.unit == "uplink-packets").unwrap();
    assert_eq!(uplink.evidence.as_deref(), Some(sha256(phy).as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_packet_heard_by_two_forwarders_is_relayed_twice_and_metered_once() {
    let (ns_addr, mut ns) = network_server().await;
    let (home, gw) = relay_gateway(ns_addr).await;
    let relay_addr = gw.udp_addr("relay").unwrap();
    let (a, b) = (
        Forwarder::new(0xa, relay_addr).await,
        Forwarder::new(0xb, relay_addr).await,
    );
    let phy = b"\x40\x11\x22\x33\x44\x00\x07\x00\x01\x02\x03\x04\x05\x06\x07\x08";
    a.push(1, &rxpk(phy, "SF9BW125", -80)).await;
    b.push(2, &rxpk(phy, "SF9BW125", -101)).await;
    let other = b"\x40\x11\x22\x33\x44\x00\x08\x00\x01";
    b.push(3, &rxpk(other, "SF9BW125", -99)).await;

    // The network server sees every copy: it does its own deduplication
    // and wants every gateway's reception.
    let mut macs = Vec::new();
    for _ in 0..3 {
        macs.push(next_uplink(&mut ns).await.1);
    }
    assert_eq!(macs, [a.mac, b.mac, b.mac]);

    gw.shutdown().await;
    let records = plugin_records(&home);
    let packets: Vec<_> = records
        .iter()
        .filter(|r| r.unit == "uplink-packets")
        .map(|r| (r.subject.clone().unwrap(), r.evidence.clone().unwrap()))
        .collect();
    assert_eq!(
        packets,
        [(a.eui_hex(), sha256(phy)), (b.eui_hex(), sha256(other))],
        "the first forwarder to report a packet gets it"
    );
    assert_eq!(
        total(&records, "payload-bytes"),
        (phy.len() + other.len()) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_that_changes_address_gets_its_downlinks_at_the_new_one() {
    let (ns_addr, mut ns) = network_server().await;
    let (_home, gw) = relay_gateway(ns_addr).await;
    let relay_addr = gw.udp_addr("relay").unwrap();
    let before = Forwarder::new(7, relay_addr).await;
    before.pull(1).await;
    // Same gateway EUI, new source port (a NAT rebinding, a restart).
    let after = Forwarder::new(7, relay_addr).await;
    after.pull(2).await;
    let status = HttpClient::new(gw.http_addr).get("/relay/status").await;
    let status: Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(
        status["forwarders"][after.eui_hex()],
        after.socket.local_addr().unwrap().to_string()
    );
    while !matches!(next_event(&mut ns).await, Event::NewClient(_)) {}

    let txpk: semtech_udp::pull_resp::TxPk = serde_json::from_str(
        &json!({
            "imme": true, "freq": 869.525, "rfch": 0, "powe": 14, "modu": "LORA",
            "datr": "SF12BW125", "codr": "4/5", "ipol": true, "prea": 8,
            "size": 3, "data": b64(b"\x60\x0a\x0b"),
        })
        .to_string(),
    )
    .unwrap();
    let dispatched = tokio::spawn(ns.prepare_downlink(txpk, after.mac).dispatch(Some(WAIT)));
    match after.recv().await {
        Down::PullResp(p) => {
            after.send(p.into_ack_for_gateway(after.mac)).await;
        }
        other => panic!("expected PULL_RESP, got {other:?}"),
    }
    before.nothing_arrives().await;
    dispatched.await.unwrap().expect("TX_ACK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_dropped_counted_by_reason_and_never_relayed_or_metered() {
    // A plain socket as the network server, to see every byte that arrives.
    let ns = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (home, gw) = relay_gateway(ns.local_addr().unwrap()).await;
    let fwd = Forwarder::new(3, gw.udp_addr("relay").unwrap()).await;
    let eui = fwd.mac.as_bytes().to_vec();
    let with_eui = |version: u8, kind: u8, body: &[u8]| {
        let mut d = vec![version, 0x12, 0x34, kind];
        d.extend_from_slice(&eui);
        d.extend_from_slice(body);
        d
    };
    let valid_body =
        serde_json::to_vec(&json!({ "rxpk": [rxpk(b"\x40\x01", "SF7BW125", -60)] })).unwrap();
    let bad_rxpk = |field: &str, value: Value| {
        let mut r = rxpk(b"\x40\x01", "SF7BW125", -60);
        r[field] = value;
        with_eui(2, 0, &serde_json::to_vec(&json!({ "rxpk": [r] })).unwrap())
    };
    let classes: [(&str, Vec<Vec<u8>>); 6] = [
        (
            "short",
            vec![vec![2, 0x12], with_eui(2, 0, b"")[..9].to_vec()],
        ),
        (
            "version",
            vec![with_eui(1, 0, &valid_body), with_eui(3, 2, b"")],
        ),
        ("unknown-type", vec![vec![2, 0x12, 0x34, 0x09]]),
        (
            "json",
            vec![
                with_eui(2, 0, b"{\"rxpk\": ["),
                with_eui(2, 0, b"[1, 2]"),
                with_eui(2, 5, b"not json"),
            ],
        ),
        (
            "rxpk",
            vec![
                bad_rxpk("data", json!("%%% not base64")),
                bad_rxpk("size", json!(99)),
                bad_rxpk("datr", json!("SF99BW125")),
                bad_rxpk("codr", json!("5/4")),
                with_eui(2, 0, br#"{"rxpk": {"not": "a list"}}"#),
            ],
        ),
        (
            "unexpected-type",
            vec![
                vec![2, 0x12, 0x34, 0x01],
                vec![2, 0x12, 0x34, 0x03, b'{', b'}'],
            ],
        ),
    ];
    for (_, datagrams) in &classes {
        for d in datagrams {
            fwd.send_raw(d).await;
        }
    }
    fwd.nothing_arrives().await;
    let mut buf = [0u8; 2048];
    let upstream = tokio::time::timeout(QUIET, ns.recv_from(&mut buf)).await;
    assert!(upstream.is_err(), "a malformed datagram was relayed");

    let status = HttpClient::new(gw.http_addr).get("/relay/status").await;
    let status: Value = serde_json::from_slice(&status.body).unwrap();
    for (reason, datagrams) in &classes {
        assert_eq!(
            status["dropped"][reason],
            datagrams.len(),
            "{reason}: {status}"
        );
    }

    // The relay goes on: a valid uplink after all that is acked and relayed
    // byte for byte.
    let sent = with_eui(2, 0, &valid_body);
    fwd.send_raw(&sent).await;
    assert!(matches!(fwd.recv().await, Down::PushAck(_)));
    let (n, _) = tokio::time::timeout(WAIT, ns.recv_from(&mut buf))
        .await
        .expect("relayed")
        .unwrap();
    assert_eq!(&buf[..n], sent.as_slice());

    gw.shutdown().await;
    let records = plugin_records(&home);
    assert_eq!(total(&records, "uplink-packets"), 1, "only the valid one");
}
