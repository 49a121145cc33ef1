//! `depin-bench-faults`: kill -9 trials under load. Each trial starts a
//! gateway process on a fresh data directory, drives it with concurrent
//! clients on loopback, kills it with SIGKILL after a random moment, and
//! checks that the chain verifies and every acknowledged request is in
//! the ledger. Prints one line per trial and the totals.
//!
//! `cargo run -p depin-bench --bin depin-bench-faults -- [trials] [gateway binary]`
//! (defaults: 20 trials; `target/release/depin-gateway` if built, else
//! `target/debug/depin-gateway`). Bounded: at most 100 trials, 32 clients,
//! about 2 s of load per trial.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin, workspace};
use depin_gateway::ledger::{LedgerReader, Source};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 32;
const MAX_TRIALS: usize = 100;

fn gateway_binary(arg: Option<String>) -> PathBuf {
    if let Some(a) = arg {
        return PathBuf::from(a);
    }
    let release = workspace().join("target/release/depin-gateway");
    if release.exists() {
        return release;
    }
    workspace().join("target/debug/depin-gateway")
}

struct Trial {
    acked: usize,
    in_ledger: usize,
    lost: usize,
    verified: bool,
}

async fn trial(bin: &str, kill_after: Duration) -> Trial {
    let home = Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")],
        "",
    );
    let mut gw = GatewayProcess::start(bin, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, acked) = (http.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            while let Ok(r) = http.send("POST", "/t/echo", "payload").await {
                if r.status == 200 {
                    acked.lock().unwrap().push(r.request_id());
                }
            }
        }));
    }
    tokio::time::sleep(kill_after).await;
    gw.kill_9();
    for c in clients {
        let _ = c.await;
    }
    let acked = acked.lock().unwrap().clone();
    let reader = LedgerReader::open(&home.data_dir()).expect("open the ledger after kill -9");
    let verified = reader.verify().is_ok_and(|r| r.broken.is_none());
    let mut ids = HashSet::new();
    reader
        .for_each(|_, r| {
            if let Ok((_, _, r)) = r
                && r.source == Source::Host
                && let Some(id) = r.subject
            {
                ids.insert(id);
            }
            true
        })
        .expect("walk the ledger");
    let lost = acked.iter().filter(|id| !ids.contains(*id)).count();
    Trial {
        acked: acked.len(),
        in_ledger: ids.len(),
        lost,
        verified,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let trials: usize = args
        .next()
        .map_or(20, |t| t.parse().expect("trials: a number"))
        .min(MAX_TRIALS);
    let bin = gateway_binary(args.next());
    let bin = bin.to_str().expect("a UTF-8 path").to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("kill -9 under load: {trials} trials, {CLIENTS} clients, binary {bin}");
    let started = Instant::now();
    let (mut acked, mut lost, mut broken) = (0usize, 0usize, 0usize);
    for i in 0..trials {
        // 0.5 to 2 s of load before the kill.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        let kill_after = Duration::from_millis(500 + jitter % 1500);
        let t = rt.block_on(trial(&bin, kill_after));
        println!(
            "trial {:>3}: killed after {:>4} ms, {:>6} acknowledged, {:>6} in ledger, {} lost, chain {}",
            i + 1,
            kill_after.as_millis(),
            t.acked,
            t.in_ledger,
            t.lost,
            if t.verified { "ok" } else { "BROKEN" }
        );
        acked += t.acked;
        lost += t.lost;
        broken += usize::from(!t.verified);
    }
    println!(
        "total: {trials} trials, {acked} acknowledged, {lost} lost, {broken} broken chains ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    if lost > 0 || broken > 0 {
        std::process::exit(1);
    }
}
