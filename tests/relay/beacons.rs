//! Proof of coverage through the relay: beacons scheduled on a forwarder,
//! acknowledged, proven and verified, refused or never acknowledged, and
//! asked for by the collector through the challenge responder.

use super::*;

/// The payload a beacon challenge with `nonce` demands of the forwarder
/// `eui`, as the plugin documents it:
/// sha256("hotspot-relay/beacon/1" || len(nonce) u32 BE || nonce || eui).
fn beacon_payload(nonce: &[u8], eui: &[u8]) -> Vec<u8> {
    let mut input = b"hotspot-relay/beacon/1".to_vec();
    input.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
    input.extend_from_slice(nonce);
    input.extend_from_slice(eui);
    sha256(&input)
}

/// A beacon challenge for the relay's forwarder `eui` (default radio
/// settings), as the collector issues it.
fn beacon(id: &str, nonce: &[u8], eui: &[u8]) -> ChallengeSpec {
    ChallengeSpec {
        id: id.into(),
        family: "possession".into(),
        epoch: 0,
        index: 0,
        plugin: "relay".into(),
        kind: "beacon".into(),
        nonce: hex(nonce),
        params: hex(eui),
        deadline_ms: 0,
    }
}

impl Forwarder {
    /// Receives the beacon for `nonce` and checks it is the one the nonce
    /// demands: a PULL_RESP sent at once, carrying the payload, with the
    /// payload's first two bytes as token.
    /// Returns the datagram's length and the PULL_RESP.
    async fn beacon(&self, nonce: &[u8]) -> (usize, semtech_udp::pull_resp::Packet) {
        let raw = self.recv_raw().await;
        let expected = beacon_payload(nonce, self.mac.as_bytes());
        assert_eq!((raw[0], raw[3]), (2, 3), "a PULL_RESP: {raw:?}");
        assert_eq!(
            raw[1..3],
            expected[..2],
            "the token follows from the payload"
        );
        let Down::PullResp(resp) = Packet::parse_downlink(&raw).expect("valid") else {
            panic!("expected PULL_RESP");
        };
        assert!(resp.data.txpk.time.is_immediate());
        assert_eq!(resp.data.txpk.data.data(), expected.as_slice());
        let txpk: Value = serde_json::from_slice(&raw[4..]).unwrap();
        assert_eq!(txpk["txpk"]["size"], expected.len());
        (raw.len(), *resp)
    }
}

/// A plain socket as the network server, to see every byte the relay sends
/// upstream.
async fn raw_network_server() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// The datagrams the network server receives until it is quiet.
async fn drain(ns: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok((n, _))) = tokio::time::timeout(QUIET, ns.recv_from(&mut buf)).await {
        out.push(buf[..n].to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_is_scheduled_acknowledged_proven_and_verified_and_its_tx_ack_stays_here() {
    let ns = raw_network_server().await;
    let (home, gw) = relay_gateway(ns.local_addr().unwrap()).await;
    let fwd = Forwarder::new(0x21, gw.udp_addr("relay").unwrap()).await;
    fwd.pull(0x0101).await;
    assert_eq!(drain(&ns).await.len(), 1, "the PULL_DATA went upstream");
    let prover = gw.prover();
    let c = beacon("b-1", b"a fresh nonce", fwd.mac.as_bytes());

    // Phase one: the beacon is scheduled; the answer is "pending".
    match prover.prove_once(&c).await {
        Attempt::Pending(m) => assert!(m.contains(&fwd.eui_hex()), "{m}"),
        other => panic!("expected pending, got {other:?}"),
    }
    let (resp_len, resp) = fwd.beacon(b"a fresh nonce").await;
    // Asking again sends nothing new.
    assert!(matches!(prover.prove_once(&c).await, Attempt::Pending(_)));
    fwd.nothing_arrives().await;

    // Phase two: the forwarder's TX_ACK (semtech-udp's own) makes the proof.
    fwd.send(resp.into_ack_for_gateway(fwd.mac)).await;
    let payload = prover.answer(&c).await.expect("a proof");
    let relay = &gw.plugins[0];
    let proof = |payload: Vec<u8>| Proof {
        challenge_id: c.id.clone(),
        payload,
    };
    assert!(verifies(relay, c.to_wit(), proof(payload.clone())).await);
    let other_nonce = beacon("b-1", b"another nonce", fwd.mac.as_bytes());
    assert!(
        !verifies(relay, other_nonce.to_wit(), proof(payload.clone())).await,
        "a proof is bound to its nonce"
    );
    let other_eui = beacon("b-1", b"a fresh nonce", &[0xaa, 0x55, 0, 0, 0, 0, 0, 0x99]);
    assert!(
        !verifies(relay, other_eui.to_wit(), proof(payload.clone())).await,
        "and to its forwarder"
    );
    // The same PULL_RESP with another 32-byte payload.
    let mut forged: Value = serde_json::from_slice(&payload).unwrap();
    let mut resp_bytes = ::hex::decode(forged["pull_resp"].as_str().unwrap()).unwrap();
    let mut body: Value = serde_json::from_slice(&resp_bytes[4..]).unwrap();
    body["txpk"]["data"] = json!(b64(&[0x5a; 32]));
    resp_bytes.truncate(4);
    resp_bytes.extend_from_slice(body.to_string().as_bytes());
    forged["pull_resp"] = json!(hex(&resp_bytes));
    assert!(
        !verifies(
            relay,
            c.to_wit(),
            proof(serde_json::to_vec(&forged).unwrap())
        )
        .await,
        "a forged payload fails"
    );

    // The TX_ACK answered the relay's own PULL_RESP: the network server
    // never sees it.
    assert!(
        drain(&ns).await.is_empty(),
        "a beacon's TX_ACK went upstream"
    );

    drop(prover);
    gw.shutdown().await;
    // What the beacon cost was committed before it was sent: the host's
    // bytes-out record of the `prove` call.
    let reader = LedgerReader::open(&home.data_dir()).expect("ledger");
    let mut sent = Vec::new();
    reader
        .for_each(|_, r| {
            let (_, _, record) = r.expect("record");
            if record.unit == "bytes-out" && record.subject.as_deref() == Some("challenge-b-1") {
                sent.push(record.quantity);
            }
            true
        })
        .unwrap();
    assert_eq!(sent, [resp_len as u64], "one beacon, metered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_refused_or_never_acknowledged_fails_and_an_unknown_forwarder_is_named() {
    let ns = raw_network_server().await;
    let (_home, gw) = relay_gateway(ns.local_addr().unwrap()).await;
    let fwd = Forwarder::new(0x22, gw.udp_addr("relay").unwrap()).await;
    let relay = gw.plugins[0].clone();
    let mut prover = gw.prover();
    prover.pending_deadline = Duration::from_millis(1500);

    // Nobody by that EUI ever sent PULL_DATA here.
    let err = prover
        .answer(&beacon("b-2", b"n2", fwd.mac.as_bytes()))
        .await
        .unwrap_err();
    assert!(
        err.contains(&format!("forwarder {} is unknown here", fwd.eui_hex())),
        "{err}"
    );
    fwd.pull(7).await;

    // The concentrator refuses the transmission (TOO_LATE): the proof says
    // so and does not verify.
    let refused = beacon("b-3", b"n3", fwd.mac.as_bytes());
    let answering = tokio::spawn({
        let (prover, refused) = (prover.clone(), refused.clone());
        async move { prover.answer(&refused).await }
    });
    let (_, resp) = fwd.beacon(b"n3").await;
    fwd.send(resp.into_nack_with_error_for_gateway(semtech_udp::tx_ack::Error::TooLate, fwd.mac))
        .await;
    let payload = answering.await.unwrap().expect("the refusal is returned");
    let tx_ack: Value = serde_json::from_slice(&payload).unwrap();
    assert!(tx_ack["tx_ack"].as_str().is_some());
    let proof = Proof {
        challenge_id: refused.id.clone(),
        payload,
    };
    assert!(!verifies(&relay, refused.to_wit(), proof).await);

    // A forwarder that never acknowledges: not answered, after the deadline.
    let silent = beacon("b-4", b"n4", fwd.mac.as_bytes());
    let started = std::time::Instant::now();
    let err = prover.answer(&silent).await.unwrap_err();
    assert!(err.starts_with("still pending after 1500 ms"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(1300));
    fwd.beacon(b"n4").await;
    // Neither acknowledgement nor refusal went upstream.
    let upstream = drain(&ns).await;
    assert!(upstream.iter().all(|d| d[3] != 5), "{upstream:?}");
    drop(prover);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_challenge_from_the_collector_is_answered_through_the_responder_and_passes() {
    const BIN: &str = env!("CARGO_BIN_EXE_collector-under-test");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let client_cert = pki.client("relay-gw");
    let port = free_port();
    let fwd_mac = MacAddress::new(0xaa, 0x55, 0, 0, 0, 0, 0, 0x23);
    let ns = raw_network_server().await;
    let extra = format!(
        "[epochs]\nlength_ms = 1000\nclose_delay_ms = 150\n{}",
        pki.upstream_toml(port, &client_cert)
    );
    let (home, gw) = relay_gateway_with(ns.local_addr().unwrap(), &extra).await;
    let id = DeviceKey::load(&home.key_path()).unwrap().gateway_id();
    let component = plugin("hotspot_relay_plugin");
    let challenges = format!(
        "{}{}[challenges]\ninterval_ms = 300\ninclusion = false\nmax_open = 2\n\
         [[challenges.possession]]\nkind = \"beacon\"\nparams = \"{}\"\ndigest = \"{}\"\n",
        depin_e2e::upstream::schedule_toml(1000, 100),
        depin_e2e::upstream::approve(
            &file_digest(&component),
            "hotspot-relay",
            Some(&component),
            &[]
        ),
        hex(fwd_mac.as_bytes()),
        file_digest(&component)
    );
    // Both ends use the default (empty) reward policy.
    let config = collector_config(
        tmp.path(),
        &pki,
        port,
        &[(id, client_cert.sha256.clone())],
        "",
        &challenges,
    );
    let _collector = CollectorProcess::start(BIN, &config);
    let https = pki.https(port, &client_cert);

    // A packet forwarder that keeps its link up and acknowledges every
    // downlink, until the collector has judged a beacon.
    let fwd = Arc::new(Forwarder {
        socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        mac: fwd_mac,
        relay: gw.udp_addr("relay").unwrap(),
    });
    let running = tokio::spawn({
        let fwd = fwd.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            for token in 0u16.. {
                fwd.send(pull_data::Packet {
                    random_token: token,
                    gateway_mac: fwd.mac,
                })
                .await;
                let until = tokio::time::Instant::now() + Duration::from_millis(500);
                while let Ok(Ok((n, _))) =
                    tokio::time::timeout_at(until, fwd.socket.recv_from(&mut buf)).await
                {
                    if let Ok(Down::PullResp(resp)) = Packet::parse_downlink(&buf[..n]) {
                        fwd.send(resp.into_ack_for_gateway(fwd.mac)).await;
                    }
                }
            }
        }
    });

    let verdicts =
        wait_for_verdicts(&https, Duration::from_secs(90), |passed, _| passed >= 1).await;
    assert_eq!(verdicts.1, 0, "no beacon failed: {verdicts:?}");
    running.abort();
    let _ = running.await;
    assert!(
        drain(&ns).await.iter().all(|d| d[3] != 5),
        "no TX_ACK went upstream"
    );
    gw.shutdown().await;
}
