//! 9. The Python plugin (componentize-py) against the Rust template: the
//!    same request (`GET /hello`) through the same per-call path (fresh
//!    store, pooled instantiate, one export call), and what each costs to
//!    load (compile with a cold cache, `describe`, `init`).
//!
//! `BENCH_CALLS` sets the calls per side (default 2000).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use depin_e2e::{Home, PluginSpec, plugin, workspace};
use depin_gateway::RunningGateway;
use depin_gateway::runtime::LoadedPlugin;
use depin_gateway::runtime::contract::HttpRequest;

fn calls() -> u32 {
    std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

/// Sequential `GET /hello` calls of `p`; the mean time per call.
async fn per_call(p: &LoadedPlugin, n: u32) -> Duration {
    let id: Arc<str> = "bench".into();
    let req = || HttpRequest {
        method: "GET".into(),
        path: "/hello".into(),
        query: "name=world".into(),
        headers: vec![],
        body: vec![],
    };
    for _ in 0..(n / 10).max(1) {
        let _ = p.handle_http(&id, std::sync::Arc::new(req())).await;
    }
    let started = Instant::now();
    for _ in 0..n {
        let o = p.handle_http(&id, std::sync::Arc::new(req())).await;
        assert!(o.result.is_ok(), "{:?}", o.result.err());
    }
    started.elapsed() / n
}

/// Starts a gateway with only `component` (cold compile cache); the time
/// to ready and the gateway.
async fn start(name: &'static str, component: &Path) -> (Duration, Home, RunningGateway) {
    let home = Home::new(
        &[PluginSpec::new(name, component.to_path_buf(), "/p").config("greeting = \"hello\"")],
        "[runtime]\nmax_instances = 1000\n",
    );
    let started = Instant::now();
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    (started.elapsed(), home, gw)
}

pub async fn python_vs_rust() {
    println!("9. instantiate + call: Python plugin (componentize-py) vs Rust template, GET /hello");
    let python = workspace().join("target/wasm32-wasip2/plugin/python_counter.wasm");
    if !python.exists() {
        println!(
            "   skipped: {} is not built (make plugins builds it when componentize-py is installed)\n",
            python.display()
        );
        return;
    }
    let rust = plugin("template_plugin");
    let n = calls();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let (rust_load, _rust_home, rust_gw) = start("rust", &rust).await;
    let rust_call = per_call(&rust_gw.plugins[0], n).await;
    rust_gw.shutdown().await;
    let (py_load, _py_home, py_gw) = start("python", &python).await;
    let py_call = per_call(&py_gw.plugins[0], n).await;
    py_gw.shutdown().await;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("   {n} sequential calls per side, no ledger commit");
    println!(
        "   Rust   {:>9.1} µs per call   component {:>6} KiB   start with cold compile {:>8.1} ms",
        us(rust_call),
        size(&rust) >> 10,
        ms(rust_load)
    );
    println!(
        "   Python {:>9.1} µs per call   component {:>6} KiB   start with cold compile {:>8.1} ms",
        us(py_call),
        size(&python) >> 10,
        ms(py_load)
    );
    println!(
        "   ratio Python / Rust: {:.1}x per call, {:.1}x component size, {:.1}x start\n",
        us(py_call) / us(rust_call).max(f64::MIN_POSITIVE),
        size(&python) as f64 / size(&rust).max(1) as f64,
        ms(py_load) / ms(rust_load).max(f64::MIN_POSITIVE)
    );
}
