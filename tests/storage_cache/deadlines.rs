//! Streamed blobs against an origin that trickles: never silent long
//! enough for the idle timeout, never done. `fetch-into` and the answer of
//! a `pass-through` are cut at the plugin's blob deadline.

use std::time::{Duration, Instant};

use depin_e2e::registry::sha256_digest;
use depin_gateway::RunningGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{cache_home_with, call, call_partial};

/// A loopback origin that answers every request with `content-length:
/// length` at once, then one body byte every 50 ms.
async fn trickling_origin(length: u64) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {length}\r\n\r\n"
                );
                if tcp.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..length {
                    if tcp.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    (url, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_fetch_into_is_cut_at_the_blob_deadline() {
    // 1000 bytes at 20 per second: 50 s; the deadline is 1.5 s.
    let (url, server) = trickling_origin(1000).await;
    let home = cache_home_with(
        std::slice::from_ref(&url),
        "blob_deadline_ms = 1500",
        1 << 20,
        format!("origin = \"{url}/b\"\n"),
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let digest = sha256_digest(b"never arrives");
    let started = Instant::now();
    let (status, _, body) = call(gw.http_addr, "GET", &format!("/blobs/{digest}"), &[]).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("within 1500 ms"), "{text}");
    eprintln!("fetch-into cut after {:?}", started.elapsed());
    gw.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_pass_through_is_cut_at_the_blob_deadline() {
    // Larger than the 64 KiB store: passed through, and at 20 bytes per
    // second it would stream for an hour.
    let (url, server) = trickling_origin(128 << 10).await;
    let home = cache_home_with(
        std::slice::from_ref(&url),
        "blob_deadline_ms = 1500",
        64 << 10,
        format!("origin = \"{url}/b\"\n"),
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let digest = sha256_digest(b"passed through, never whole");
    let started = Instant::now();
    let (status, headers, got, complete) = tokio::time::timeout(
        Duration::from_secs(30),
        call_partial(gw.http_addr, &format!("/blobs/{digest}")),
    )
    .await
    .expect("the response ends: the stream is cut at its deadline");
    assert_eq!(status, 200, "the head went out before the deadline");
    assert_eq!(
        headers["content-length"],
        (128u64 << 10).to_string().as_str()
    );
    assert!(!complete, "cut short");
    assert!(got.len() < 128 << 10, "{} bytes", got.len());
    eprintln!(
        "pass-through cut after {:?} with {} of {} bytes",
        started.elapsed(),
        got.len(),
        128 << 10
    );
    gw.shutdown().await;
    server.abort();
}
