//! Phase 8, serializable calls: what the conflict check and `kv.add` cost,
//! in one run, through the gateway at 64 connections (closed loop):
//!
//! - `GET /hello` (no kv): the baseline of every ratio below;
//! - `POST /counter`, one hot key, with `kv.add` (no read: increments do
//!   not conflict);
//! - the same counter by `get` then `set` (every concurrent pair
//!   conflicts; retries per call show what that costs);
//! - `get` then `set` on a key of its own per connection (uncontended: the
//!   cost of the read set and its check alone).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use depin_e2e::{Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;

const CONNECTIONS: usize = 64;
/// The plugin's name: its conflict counters are read from the process-wide
/// metrics.
const PLUGIN: &str = "serial-bench";

struct Row {
    calls: u64,
    per_second: f64,
    p99: Duration,
    /// Answers other than 200 (503 after too many conflicts).
    failed: u64,
    /// Runs after a conflict, per answered call.
    retries_per_call: f64,
}

/// Closed loop: each connection sends `method path(i)` again as soon as the
/// previous answer arrives, for `duration`.
async fn drive(
    http_addr: std::net::SocketAddr,
    method: &'static str,
    path: impl Fn(usize) -> String,
    duration: Duration,
) -> Row {
    let metrics = depin_gateway::metrics::global();
    let retries_before = metrics.conflicts(PLUGIN).retries;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let http = HttpClient::new(http_addr);
        let stop = stop.clone();
        let path = path(i);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(50_000);
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = http
                    .send(method, &path, Bytes::new())
                    .await
                    .expect("request");
                if r.status != 200 {
                    failed += 1;
                }
                latencies.push(t.elapsed());
            }
            (latencies, failed)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    all.sort();
    let retries = metrics.conflicts(PLUGIN).retries - retries_before;
    Row {
        calls: all.len() as u64,
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p99: all[((all.len() as f64 * 0.99) as usize).min(all.len() - 1)],
        failed,
        retries_per_call: retries as f64 / all.len().max(1) as f64,
    }
}

fn show(name: &str, r: &Row, baseline: &Row) {
    println!(
        "   {name:<40} {:>8.0} calls/s  p99 {:>7.2} ms  retries/call {:>5.2}  failed {:>5}  ({} calls)  ratio to hello {:.2}x",
        r.per_second,
        r.p99.as_secs_f64() * 1e3,
        r.retries_per_call,
        r.failed,
        r.calls,
        r.per_second / baseline.per_second
    );
}

pub async fn run(duration: Duration) {
    println!(
        "8. serializable calls: template plugin through HTTP, {CONNECTIONS} connections, closed loop, {} s per row",
        duration.as_secs()
    );
    let home = Home::new(
        &[PluginSpec::new(PLUGIN, plugin("template_plugin"), "/t")],
        "[runtime]\nmax_instances = 1000\n",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let addr = gw.http_addr;
    let hello = drive(addr, "GET", |_| "/t/hello?name=world".into(), duration).await;
    let add = drive(addr, "POST", |_| "/t/counter".into(), duration).await;
    let hot = drive(
        addr,
        "POST",
        |_| "/t/counter?key=hot&via=get-set".into(),
        duration,
    )
    .await;
    let distinct = drive(
        addr,
        "POST",
        |i| format!("/t/counter?key=c{i}&via=get-set"),
        duration,
    )
    .await;
    show("GET /hello (no kv)", &hello, &hello);
    show("counter, one key, kv.add", &add, &hello);
    show("counter, one key, get+set", &hot, &hello);
    show("counter, a key per connection, get+set", &distinct, &hello);
    println!(
        "   ratio kv.add/get+set on one key: throughput {:.2}x\n",
        add.per_second / hot.per_second
    );
    gw.shutdown().await;
}
