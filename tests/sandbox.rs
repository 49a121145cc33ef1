//! Hostile plugins: each misbehaviour fails only its own call.

use std::time::{Duration, Instant};

use depin_e2e::{Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use depin_gateway::ledger::LedgerReader;

fn hostile(name: &'static str, route: &'static str, limits: &'static str) -> PluginSpec {
    PluginSpec::new(name, plugin("hostile_plugin"), route).limits(limits)
}

async fn start(extra: &str) -> (Home, RunningGateway, HttpClient) {
    let home = Home::new(
        &[
            hostile("hostile", "/h", "memory_mb = 16\ncpu_ms = 200"),
            hostile("hostile-fuel", "/hf", "cpu_ms = 5000\nfuel = 5000000"),
            hostile("hostile-slow", "/hs", "cpu_ms = 5000"),
            PluginSpec::new("template", plugin("template_plugin"), "/t"),
        ],
        extra,
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    (home, gw, http)
}

async fn assert_both_healthy(http: &HttpClient, prefix: &str) {
    let same = http.get(&format!("{prefix}/ok")).await;
    assert_eq!(
        (same.status, same.text().as_str()),
        (200, "ok"),
        "the same plugin still serves"
    );
    let other = http.get("/t/hello").await;
    assert_eq!(other.status, 200, "another plugin still serves");
}

/// Calls `path` on a fresh gateway, expects a 500 of `kind`, then checks
/// that the same plugin (`prefix`) and another plugin still serve.
async fn only_that_call_fails(path: &str, kind: &str, prefix: &str) {
    let (_home, gw, http) = start("").await;
    let r = http.get(path).await;
    assert_500_with_request_id(&r, kind);
    assert_both_healthy(&http, prefix).await;
    gw.shutdown().await;
}

/// Starts a gateway with `plugins` and returns the reason it refused to start.
async fn refusal(plugins: &[PluginSpec]) -> String {
    let home = Home::new(plugins, "");
    RunningGateway::start(&home.config())
        .await
        .err()
        .expect("refused")
        .to_string()
}

fn assert_500_with_request_id(r: &depin_e2e::Reply, kind: &str) {
    assert_eq!(r.status, 500, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["request_id"], r.request_id());
    assert!(body["error"].as_str().unwrap().contains(kind), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_cut_at_its_cpu_deadline() {
    let (_home, gw, http) = start("").await;
    let started = Instant::now();
    let r = http.get("/h/loop").await;
    let took = started.elapsed();
    assert_500_with_request_id(&r, "deadline");
    assert!(
        took < Duration::from_secs(5),
        "cut near its 200 ms deadline, took {took:?}"
    );
    assert_both_healthy(&http, "/h").await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_its_cap() {
    only_that_call_fails("/h/bomb", "memory", "/h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_returns_500_and_the_next_call_succeeds() {
    only_that_call_fails("/h/panic", "trap", "/h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_budget_ends_a_runaway_call() {
    only_that_call_fails("/hf/loop", "fuel", "/hf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_timeout_gives_504() {
    let (_home, gw, http) = start("[http]\ncall_timeout_ms = 100\n").await;
    let r = http.get("/hs/loop").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains(&r.request_id()));
    assert_both_healthy(&http, "/h").await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapped_call_keeps_neither_its_usage_nor_its_writes() {
    let (home, gw, http) = start("").await;
    assert_eq!(http.get("/h/meter-then-panic").await.status, 500);
    assert_eq!(http.get("/h/poison").await.text(), "absent");
    gw.shutdown().await;
    let totals = LedgerReader::open(&home.data_dir())
        .unwrap()
        .summary()
        .unwrap();
    let claimed: u128 = totals
        .iter()
        .filter(|t| t.plugin == "hostile" && t.unit == "calls")
        .map(|t| t.quantity)
        .sum();
    assert_eq!(
        claimed, 0,
        "the trapped call's 1000 calls were not kept: {totals:?}"
    );
    let measured = totals
        .iter()
        .find(|t| t.plugin == "hostile" && t.unit == "wall-time-us")
        .unwrap();
    assert_eq!(measured.records, 2, "the host still measured both calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hostile_calls_do_not_disturb_healthy_ones() {
    let (_home, gw, http) = start("").await;
    let mut bad = Vec::new();
    for path in ["/h/loop", "/h/bomb", "/h/panic", "/hf/loop"] {
        let http = http.clone();
        bad.push(tokio::spawn(async move { http.get(path).await.status }));
    }
    for _ in 0..20 {
        assert_eq!(http.get("/t/hello").await.status, 200);
    }
    for b in bad {
        assert_eq!(b.await.unwrap(), 500);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_another_world_is_refused_with_what_is_missing() {
    let e = refusal(&[PluginSpec::new(
        "greeter",
        plugin("other_world_plugin"),
        "/g",
    )])
    .await;
    assert!(e.contains("plugin `greeter`"), "{e}");
    assert!(e.contains("other_world_plugin.wasm"), "{e}");
    assert!(e.contains("depin:plugin@0.1.4"), "{e}");
    assert!(
        e.contains("missing exports: init, handle-http, handle-datagram"),
        "{e}"
    );
    assert!(e.contains("acme:greeter/clock@1.0.0"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_module_is_refused_with_how_to_build_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = refusal(&[PluginSpec::new("core", core, "/c")]).await;
    assert!(
        e.contains("core WebAssembly module, not a component"),
        "{e}"
    );
    assert!(e.contains("wasm32-wasip2"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refusing_its_config_stops_the_load_with_its_reason() {
    let e =
        refusal(
            &[PluginSpec::new("template", plugin("template_plugin"), "/t")
                .config("greting = \"typo\"")],
        )
        .await;
    assert!(e.contains("plugin `template`"), "{e}");
    assert!(e.contains("unknown config key `greting`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_answers_503_and_recovers() {
    let home = Home::new(
        &[hostile("hostile", "/h", "cpu_ms = 2000")],
        "[runtime]\nmax_instances = 2\n",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    // Six long calls at once on a pool of two: two run until their deadline,
    // the others find the pool full.
    let mut calls = Vec::new();
    for _ in 0..6 {
        let http = http.clone();
        calls.push(tokio::spawn(async move { http.get("/h/loop").await }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        let r = c.await.unwrap();
        if r.status == 503 {
            assert!(r.text().contains(&r.request_id()), "{}", r.text());
        }
        statuses.push(r.status);
    }
    statuses.sort();
    assert!(
        statuses.contains(&503),
        "some calls found the pool full: {statuses:?}"
    );
    assert!(
        statuses.contains(&500),
        "the running calls hit their deadline: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 500 || *s == 503),
        "{statuses:?}"
    );
    assert_eq!(http.get("/h/ok").await.status, 200, "capacity is back");
    gw.shutdown().await;
}
