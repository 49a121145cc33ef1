//! `depin-bench-ops`: the cost of the operations features, as ratios
//! measured in one run on the same machine.
//!
//! 1. Requests/s through the gateway over TLS (HTTP/1.1 and HTTP/2 by ALPN)
//!    vs plain HTTP, same plugin, same closed-loop load.
//! 2. Requests/s of a gateway process exporting one OTLP span per call to a
//!    loopback OTLP/HTTP receiver vs the same process without
//!    `OTEL_EXPORTER_OTLP_ENDPOINT`.
//!
//! Run with `make bench-ops` (release build).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use depin_e2e::ops::{TestCa, TlsConnection};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin, workspace};
use depin_gateway::RunningGateway;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PATH: &str = "/t/hello?name=world";

fn home(extra: &str) -> Home {
    Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")
            .config("greeting = \"hello\"")],
        &format!("{extra}\n[runtime]\nmax_instances = 1000\n"),
    )
}

/// Closed loop: `connections` tasks, each with its own client made by
/// `connect`, sending the next request when the previous answer arrives.
/// Returns requests per second.
async fn load<C, F, Fut>(connections: usize, duration: Duration, connect: C) -> f64
where
    C: Fn() -> F,
    F: Future<Output = Box<dyn FnMut() -> Fut + Send>> + Send + 'static,
    Fut: Future<Output = u16> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stop = stop.clone();
        let done = done.clone();
        let client = connect();
        tasks.push(tokio::spawn(async move {
            let mut request = client.await;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(request().await, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn plain_load(addr: SocketAddr, connections: usize, duration: Duration) -> f64 {
    load(connections, duration, move || async move {
        let http = HttpClient::new(addr);
        Box::new(move || {
            let http = http.clone();
            async move { http.get(PATH).await.status }
        }) as Box<dyn FnMut() -> _ + Send>
    })
    .await
}

async fn tls_load(
    addr: SocketAddr,
    ca: &TestCa,
    alpn: &'static [u8],
    connections: usize,
    duration: Duration,
) -> f64 {
    let config = ca.client_config(&[alpn]);
    load(connections, duration, move || {
        let config = config.clone();
        async move {
            let conn = Arc::new(tokio::sync::Mutex::new(
                TlsConnection::connect(addr, config).await.expect("connect"),
            ));
            Box::new(move || {
                let conn = conn.clone();
                async move { conn.lock().await.get(PATH).await.expect("GET").status }
            }) as Box<dyn FnMut() -> _ + Send>
        }
    })
    .await
}

async fn tls_vs_plain(connections: usize, duration: Duration) {
    println!(
        "1. TLS vs plain HTTP, {connections} keep-alive connections, {} s per row",
        duration.as_secs()
    );
    let plain_home = home("");
    let plain = RunningGateway::start(&plain_home.config())
        .await
        .expect("start");
    let ca = TestCa::new();
    let tls_home = home("[http.tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n");
    let dir = tls_home.dir.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    ca.leaf().write(&dir.join("cert.pem"), &dir.join("key.pem"));
    let tls = RunningGateway::start(&tls_home.config())
        .await
        .expect("start");

    let p = plain_load(plain.http_addr, connections, duration).await;
    let h1 = tls_load(tls.http_addr, &ca, b"http/1.1", connections, duration).await;
    let h2 = tls_load(tls.http_addr, &ca, b"h2", connections, duration).await;
    println!("   plain HTTP/1.1                 {p:>9.0} req/s");
    println!(
        "   TLS 1.3, HTTP/1.1              {h1:>9.0} req/s   ratio TLS/plain {:.2}x",
        h1 / p
    );
    println!(
        "   TLS 1.3, HTTP/2                {h2:>9.0} req/s   ratio TLS/plain {:.2}x",
        h2 / p
    );
    println!();
    plain.shutdown().await;
    tls.shutdown().await;
}

/// A loopback OTLP/HTTP receiver that accepts every export; counts them.
async fn otlp_sink() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exports = Arc::new(AtomicU64::new(0));
    let count = exports.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, exports)
}

fn gateway_binary() -> PathBuf {
    std::env::var_os("DEPIN_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/depin-gateway"))
}

async fn tracing_on_vs_off(connections: usize, duration: Duration) {
    println!(
        "2. OTLP tracing on vs off (gateway processes), {connections} connections, {} s per row",
        duration.as_secs()
    );
    let bin = gateway_binary();
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p depin-gateway",
        bin.display()
    );
    let bin = bin.to_str().unwrap().to_string();
    let h = home("");
    let (sink, exports) = otlp_sink().await;

    // SAFETY: no other thread reads these variables; the gateway processes
    // inherit them at spawn.
    unsafe {
        std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
        std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    }
    let mut off = GatewayProcess::start(&bin, &h.config_path);
    let r_off = plain_load(off.addr, connections, duration).await;
    assert!(off.terminate());

    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink}")) };
    let mut on = GatewayProcess::start(&bin, &h.config_path);
    let r_on = plain_load(on.addr, connections, duration).await;
    assert!(on.terminate());
    unsafe { std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT") };

    println!("   tracing off                    {r_off:>9.0} req/s");
    println!(
        "   tracing on (OTLP export)       {r_on:>9.0} req/s   ratio on/off {:.2}x   ({} OTLP exports received)",
        r_on / r_off,
        exports.load(Ordering::Relaxed)
    );
    println!();
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(secs);
    println!("depin-bench-ops: {secs} s per row (BENCH_SECONDS to change)\n");
    tls_vs_plain(64, duration).await;
    tracing_on_vs_off(64, duration).await;
}
