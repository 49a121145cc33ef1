//! The UDP ingress and `outbound-udp` with a plugin that misbehaves on
//! request (the hostile test plugin): a trap affects only its datagram,
//! answers go only to recent senders, sends outside the allow-list are
//! refused and the plugin sees why, host-attested bytes are recorded,
//! `reply` reaches recent senders only.

use std::net::SocketAddr;
use std::time::Duration;

use depin_e2e::{Home, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use depin_gateway::ledger::{LedgerReader, Source};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

async fn gateway(upstream: SocketAddr) -> (Home, RunningGateway) {
    let table = format!(
        "[plugin.udp]\nlisten = \"127.0.0.1:0\"\n[plugin.outbound]\nudp = [\"{upstream}\"]\n"
    );
    let spec = PluginSpec::new("hostile", plugin("hostile_plugin"), "/h")
        .table(Box::leak(table.into_boxed_str()));
    let home = Home::new(&[spec], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    (home, gw)
}

async fn exchange(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(payload, to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(QUIET.max(WAIT / 5), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            assert_eq!(from, to);
            Some(buf[..n].to_vec())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_drops_only_its_datagram_and_answers_go_only_to_recent_senders() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (home, gw) = gateway(upstream.local_addr().unwrap()).await;
    let addr = gw.udp_addr("hostile").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    assert_eq!(
        exchange(&client, addr, b"one").await.as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(exchange(&client, addr, b"panic").await, None);
    assert_eq!(
        exchange(&client, addr, b"two").await.as_deref(),
        Some(&b"two"[..])
    );

    // An address that never sent to the plugin cannot be made a target.
    let bystander = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = format!("to {}", bystander.local_addr().unwrap());
    client.send_to(to.as_bytes(), addr).await.unwrap();
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(QUIET, bystander.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "the gateway sent to an address that never spoke to it"
    );
    // Once it has sent something, it can be answered.
    assert!(exchange(&bystander, addr, b"hi").await.is_some());
    client.send_to(to.as_bytes(), addr).await.unwrap();
    let (n, _) = tokio::time::timeout(WAIT, bystander.recv_from(&mut buf))
        .await
        .expect("answer to a recent sender")
        .unwrap();
    assert_eq!(&buf[..n], b"hello");

    gw.shutdown().await;
    let reader = LedgerReader::open(&home.data_dir()).unwrap();
    let (mut plugin_calls, mut bytes_in, mut calls) = (0, 0, 0);
    reader
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            match (r.source, r.unit.as_str()) {
                (Source::Plugin, "calls") => plugin_calls += r.quantity,
                (Source::Host, "bytes-in") => {
                    bytes_in += r.quantity;
                    calls += 1;
                }
                _ => {}
            }
            true
        })
        .unwrap();
    assert_eq!(plugin_calls, 3, "the trapped call's record is not kept");
    assert_eq!(
        calls, 6,
        "every datagram, the trapped one too, has host records"
    );
    let sent = [
        &b"one"[..],
        b"panic",
        b"two",
        to.as_bytes(),
        b"hi",
        to.as_bytes(),
    ];
    let expected: usize = sent.iter().map(|d| d.len()).sum();
    assert_eq!(bytes_in, expected as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_sends_reach_allowed_upstreams_only_and_refusals_are_visible() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let (_home, gw) = gateway(up).await;
    let addr = gw.udp_addr("hostile").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let ok = exchange(&client, addr, format!("send {up}").as_bytes()).await;
    assert_eq!(ok.as_deref(), Some(&b"Ok(())"[..]));
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, upstream.recv_from(&mut buf))
        .await
        .expect("the upstream datagram")
        .unwrap();
    assert_eq!(&buf[..n], b"upstream");
    assert_ne!(
        from, addr,
        "upstream datagrams leave the session's own socket"
    );

    // The upstream answers on the session socket: the plugin gets it, with
    // the upstream as peer, and its echo goes nowhere (the upstream never
    // sent to the ingress socket).
    upstream.send_to(b"from upstream", from).await.unwrap();
    let echoed = tokio::time::timeout(QUIET, upstream.recv_from(&mut buf)).await;
    assert!(
        echoed.is_err(),
        "an answer went to an address that never sent to the ingress"
    );

    let refused = exchange(&client, addr, b"send 127.0.0.1:9").await.unwrap();
    let refused = String::from_utf8(refused).unwrap();
    assert!(
        refused.contains("NotAllowed") && refused.contains("127.0.0.1:9"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reach_recent_senders_before_the_answers_and_others_are_refused() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_home, gw) = gateway(upstream.local_addr().unwrap()).await;
    let addr = gw.udp_addr("hostile").unwrap();
    let asker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let mut buf = [0u8; 64];

    // `other` never sent to the plugin: the plugin is told so, and nothing
    // reaches it.
    let refused = exchange(&asker, addr, format!("reply {other_addr}").as_bytes())
        .await
        .unwrap();
    let refused = String::from_utf8(refused).unwrap();
    assert!(
        refused.contains("NotAllowed") && refused.contains(&other_addr.to_string()),
        "{refused}"
    );
    assert!(
        tokio::time::timeout(QUIET, other.recv_from(&mut buf))
            .await
            .is_err()
    );

    // Once it has sent, it can be replied to.
    assert_eq!(
        exchange(&other, addr, b"hi").await.as_deref(),
        Some(&b"hi"[..])
    );
    let ok = exchange(&asker, addr, format!("reply {other_addr}").as_bytes()).await;
    assert_eq!(ok.as_deref(), Some(&b"Ok(())"[..]));
    let (n, from) = tokio::time::timeout(WAIT, other.recv_from(&mut buf))
        .await
        .expect("the reply")
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"replied"[..], addr));

    // A reply leaves before the datagrams the call returns.
    let me = asker.local_addr().unwrap();
    assert_eq!(
        exchange(&asker, addr, format!("reply {me}").as_bytes())
            .await
            .as_deref(),
        Some(&b"replied"[..])
    );
    let (n, _) = tokio::time::timeout(WAIT, asker.recv_from(&mut buf))
        .await
        .expect("the answer")
        .unwrap();
    assert_eq!(&buf[..n], b"Ok(())");
}
