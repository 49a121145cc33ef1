//! `depin-bench`: the gateway against native baselines, in one run.
//!
//! Run with `make bench` (release build). Absolute numbers drift on shared
//! machines; the ratios printed next to them are what to compare, because
//! both sides ran in the same process, on the same machine, minutes apart.
//!
//! 1. Pooled instantiate + call of the template plugin (µs per call).
//! 2. HTTP requests/s and p99 latency: gateway (plugin call + durable usage
//!    commit) vs a plain hyper server returning the same body.
//! 3. Durable usage records/s: 64 concurrent writers with group commit vs
//!    one fsync per record.
//! 4. Start-to-ready with the compile cache cold vs warm.
//! 5. Compute jobs vs native Rust, fuel on vs off (see `compute.rs`).
//! 6. Hotspot relay packets/s and added latency: gateway vs a native relay
//!    doing the same parsing (`relay.rs`).
//! 7. Sensor readings accepted/s by HTTP and MQTT vs native (`sensors.rs`).
//! 8. Serializable calls: `kv.add` vs get+set on a hot key, uncontended
//!    get+set, against GET /hello in the same run (`serial.rs`).
//! 9. Instantiate + call of the Python plugin vs the Rust template
//!    (`python.rs`).

mod compute;
mod python;
mod relay;
mod sensors;
mod serial;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use depin_e2e::{Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use depin_gateway::ledger::{CallEffects, Ledger, NewRecord, Source};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

// The same allocator as the gateway binary, for both sides of every ratio.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = "hello, world";

fn arg_secs() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs = arg_secs();
    println!("depin-bench: {secs} s per load phase (BENCH_SECONDS to change)\n");
    // BENCH_ONLY=1,3 runs a subset (for profiling one phase).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |n: &str| only.is_empty() || only.split(',').any(|x| x == n);
    if run("1") {
        instantiate_and_call().await;
    }
    if run("2") {
        http_vs_plain_hyper(Duration::from_secs(secs)).await;
    }
    if run("3") {
        durable_records(Duration::from_secs(secs)).await;
    }
    if run("4") {
        start_to_ready().await;
    }
    if run("5") {
        compute::jobs_vs_native(Duration::from_secs(secs * 2)).await;
    }
    if run("6") {
        relay::relay_vs_native(Duration::from_secs(secs)).await;
    }
    if run("7") {
        sensors::run(Duration::from_secs(secs)).await;
    }
    if run("8") {
        serial::run(Duration::from_secs(secs)).await;
    }
    if run("9") {
        python::python_vs_rust().await;
    }
}

fn template_home() -> Home {
    Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")
            .config("greeting = \"hello\"")],
        // The production default pool size (the test default is smaller).
        "[runtime]\nmax_instances = 1000\n",
    )
}

/// 1. The per-call path alone: Store::new + pooled instantiate + one export call.
async fn instantiate_and_call() {
    let home = template_home();
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let p = gw.plugins[0].clone();
    let id: Arc<str> = "bench".into();
    let req = || depin_gateway::runtime::contract::HttpRequest {
        method: "GET".into(),
        path: "/hello".into(),
        query: "name=world".into(),
        headers: vec![],
        body: vec![],
    };
    for _ in 0..2_000 {
        let _ = p.handle_http(&id, Arc::new(req())).await;
    }
    let n = 50_000u32;
    let started = Instant::now();
    for _ in 0..n {
        let o = p.handle_http(&id, Arc::new(req())).await;
        assert!(o.result.is_ok());
    }
    let per_call = started.elapsed() / n;
    println!("1. instantiate + call (template plugin, GET /hello, sequential, no ledger commit)");
    println!(
        "   {:.2} µs per call  (target: < 10 µs)\n",
        per_call.as_secs_f64() * 1e6
    );
    gw.shutdown().await;
}

struct Load {
    requests: u64,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// Closed-loop load: `connections` keep-alive clients, each sending the next
/// request when the previous answer arrives.
async fn load(
    addr: SocketAddr,
    path: &'static str,
    connections: usize,
    duration: Duration,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let http = HttpClient::new(addr);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = http.get(path).await;
                assert_eq!(r.status, 200);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Load {
        requests: all.len() as u64,
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

async fn plain_hyper() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut r =
                        hyper::Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                    r.headers_mut()
                        .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Phase 2: through the gateway vs plain hyper, same client, same body, at
/// two concurrency levels (the gateway's durable commit is latency-bound at
/// low concurrency and amortized by group commit at high concurrency).
async fn http_vs_plain_hyper(duration: Duration) {
    println!(
        "2. HTTP GET /hello, keep-alive connections, closed loop, {} s per row",
        duration.as_secs()
    );
    let baseline = plain_hyper().await;
    let home = template_home();
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let check = HttpClient::new(gw.http_addr)
        .get("/t/hello?name=world")
        .await;
    assert_eq!(check.text(), BODY);
    let show = |name: &str, l: &Load| {
        println!(
            "   {name:<36} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests)",
            l.rps,
            l.p50.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() * 1e3,
            l.requests
        );
    };
    for connections in [64, 256] {
        let plain = load(baseline, "/hello", connections, duration).await;
        let through = load(gw.http_addr, "/t/hello?name=world", connections, duration).await;
        show(&format!("plain hyper, {connections} conns"), &plain);
        show(
            &format!("gateway (durable ledger), {connections} conns"),
            &through,
        );
        println!(
            "   ratio gateway/plain at {connections}: throughput {:.2}x  p99 latency {:.2}x  (target: throughput >= 0.5x)",
            through.rps / plain.rps,
            through.p99.as_secs_f64() / plain.p99.as_secs_f64()
        );
    }
    println!();
    gw.shutdown().await;
}

fn record(i: u64) -> NewRecord {
    NewRecord {
        time_ms: 0,
        unit: "bytes-out".into(),
        quantity: i,
        source: Source::Host,
        subject: Some(format!("req-{i:016x}")),
        evidence: None,
    }
}

/// 3. Group commit vs one fsync per record.
async fn durable_records(duration: Duration) {
    println!("3. durable usage records ({} s each)", duration.as_secs());
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    // Baseline: one writer, one record per transaction (one fsync each).
    let started = Instant::now();
    let mut single = 0u64;
    while started.elapsed() < duration {
        let e = CallEffects {
            records: vec![record(single)],
            ..Default::default()
        };
        ledger.commit("bench".into(), e).await.unwrap();
        single += 1;
    }
    let single_rate = single as f64 / started.elapsed().as_secs_f64();
    // 64 concurrent writers, one record per commit: the writer groups them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let ledger = ledger.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let e = CallEffects {
                    records: vec![record(w << 32 | n)],
                    ..Default::default()
                };
                ledger.commit("bench".into(), e).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut grouped = 0;
    for t in tasks {
        grouped += t.await.unwrap();
    }
    let grouped_rate = grouped as f64 / started.elapsed().as_secs_f64();
    println!("   one fsync per record         {single_rate:>9.0} records/s");
    println!("   64 writers, group commit     {grouped_rate:>9.0} records/s");
    println!(
        "   ratio group/single: {:.1}x\n",
        grouped_rate / single_rate
    );
    ledger.close();
}

/// 4. Time from `start` to serving, compile cache cold and warm.
async fn start_to_ready() {
    println!("4. start-to-ready (key, ledger, runtime, template plugin, listener)");
    let home = template_home();
    let t = Instant::now();
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("cold start");
    let cold = t.elapsed();
    gw.shutdown().await;
    let t = Instant::now();
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("warm start");
    let warm = t.elapsed();
    gw.shutdown().await;
    println!("   cold cache {:>8.1} ms", cold.as_secs_f64() * 1e3);
    println!("   warm cache {:>8.1} ms", warm.as_secs_f64() * 1e3);
    println!(
        "   ratio cold/warm: {:.1}x",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
}
