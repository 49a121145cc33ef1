//! Crashes and shutdowns: what was acknowledged is in the ledger, and the
//! chain is never broken.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use depin_e2e::{
    GatewayProcess, Home, HttpClient, PluginSpec, plugin, request_ids_in_ledger, verify_ledger,
};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

fn home() -> Home {
    Home::new(
        &[
            PluginSpec::new("template", plugin("template_plugin"), "/t"),
            PluginSpec::new("hostile", plugin("hostile_plugin"), "/h").limits("cpu_ms = 1500"),
        ],
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_concurrent_load_loses_no_acknowledged_request() {
    let home = home();
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let http = http.clone();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            loop {
                match http.send("POST", "/t/echo", "some payload bytes").await {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().push(r.request_id()),
                    Ok(r) => panic!("unexpected status {} {}", r.status, r.text()),
                    Err(_) => break, // the gateway is gone
                }
            }
        }));
    }
    // Let load build up, then kill without warning.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.kill_9();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    verify_ledger(BIN, &home.data_dir(), "kill -9");
    let in_ledger = request_ids_in_ledger(&home.data_dir());
    let lost: Vec<_> = acked.iter().filter(|id| !in_ledger.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged requests lost: {lost:?}",
        lost.len(),
        acked.len()
    );

    // The gateway restarts on the same ledger and the chain goes on.
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    assert_eq!(HttpClient::new(gw.addr).get("/t/hello").await.status, 200);
    assert!(gw.terminate(), "clean exit on SIGTERM");
    verify_ledger(BIN, &home.data_dir(), "the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_and_flushes_the_ledger() {
    let home = home();
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    // Open the connection first, so the slow call is surely in flight when
    // the signal arrives.
    assert_eq!(http.get("/h/ok").await.status, 200);
    // A call that takes about 1.5 s (it loops until its CPU deadline).
    let slow = tokio::spawn({
        let http = http.clone();
        async move { http.get("/h/loop").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = gw.child.id();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let reply = slow.await.unwrap();
    assert_eq!(
        reply.status,
        500,
        "the in-flight call got its answer: {}",
        reply.text()
    );
    assert!(reply.text().contains("deadline"), "{}", reply.text());
    assert!(gw.terminate(), "exits 0 after draining");
    let logs = gw.stderr_lines.lock().unwrap().join("\n");
    assert!(logs.contains("draining in-flight requests"), "{logs}");
    assert!(request_ids_in_ledger(&home.data_dir()).contains(&reply.request_id()));
}
