//! `depin-bench-epoch-close`: peak memory and time of closing one epoch of
//! N ledger records, the gateway's streaming close against the former
//! all-in-memory close (every record hash in a vector, every subject hash
//! in a set per total), kept here only as the baseline.
//!
//! For each size in `EPOCH_CLOSE_RECORDS` (default `1000000,10000000`) the
//! bench fills a ledger, then closes its epoch in a fresh child process per
//! method, so each peak RSS (`getrusage`, `ru_maxrss`) is that close's
//! alone: opening the ledger, reading every record, totals, Merkle root
//! (and for the gateway: reward, signature, durable store). Both methods
//! must give the same Merkle root.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use depin_gateway::epochs::{EpochCloser, EpochStore, PluginIdentities};
use depin_gateway::identity::DeviceKey;
use depin_gateway::ledger::{Ledger, Source};
use depin_protocol::merkle;

#[path = "../ledger_fill.rs"]
mod ledger_fill;
use ledger_fill::LENGTH_MS;

fn peak_rss_kib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss
}

/// The close as the gateway does it.
fn streaming(dir: &Path) -> (u64, [u8; 32]) {
    let ledger = Ledger::open(dir).expect("ledger");
    let closes = dir.join("closes");
    std::fs::create_dir_all(&closes).unwrap();
    let closer = EpochCloser {
        ledger: ledger.clone(),
        store: Arc::new(EpochStore::open(&closes).expect("epoch store")),
        key: Arc::new(DeviceKey::generate()),
        policy: depin_protocol::rewards::RewardPolicy::default(),
        identities: PluginIdentities::from_kinds(BTreeMap::from([(
            "bench".to_string(),
            "other".to_string(),
        )])),
        length_ms: LENGTH_MS,
        close_delay_ms: 0,
        deliver: true,
    };
    assert!(closer.close_due(LENGTH_MS + 1).expect("init").is_empty());
    let made = closer.close_due(2 * LENGTH_MS).expect("close");
    let r = &made[0].report;
    ledger.close();
    (r.records, r.merkle_root)
}

/// The former close: all hashes and all subject hashes in memory.
fn in_memory(dir: &Path) -> (u64, [u8; 32]) {
    let ledger = Ledger::open(dir).expect("ledger");
    let mut hashes = Vec::new();
    type Total = (u64, u128, HashSet<u64>);
    let mut sums: HashMap<(String, Source, String), Total> = HashMap::new();
    ledger
        .scan_from(1, |h, r| {
            hashes.push(h);
            let e = sums.entry((r.plugin, r.source, r.unit)).or_default();
            e.0 += 1;
            e.1 += u128::from(r.quantity);
            if let Some(s) = &r.subject {
                let mut hasher = DefaultHasher::new();
                s.hash(&mut hasher);
                e.2.insert(hasher.finish());
            }
            true
        })
        .expect("scan");
    let subjects: usize = sums.values().map(|s| s.2.len()).sum();
    assert!(subjects > 0);
    let n = hashes.len() as u64;
    let root = merkle::root(hashes.into_iter().map(|h| merkle::leaf(&h)).collect());
    ledger.close();
    (n, root)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--close" {
        let started = Instant::now();
        let (records, root) = match args[2].as_str() {
            "streaming" => streaming(Path::new(&args[3])),
            _ => in_memory(Path::new(&args[3])),
        };
        println!(
            "{records} {:.3} {} {}",
            started.elapsed().as_secs_f64(),
            peak_rss_kib(),
            root.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        return;
    }
    let sizes = std::env::var("EPOCH_CLOSE_RECORDS").unwrap_or("1000000,10000000".into());
    println!(
        "depin-bench-epoch-close: one epoch closed per size, each method in its own process\n"
    );
    println!(
        "{:>10}  {:<34} {:>8} {:>14} {:>10}",
        "records", "method", "time s", "peak RSS MiB", "RSS ratio"
    );
    for n in sizes
        .split(',')
        .map(|s| s.trim().parse::<u64>().expect("a number"))
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(dir.path()).expect("ledger");
        let seconds = ledger_fill::fill(&ledger, n).await;
        ledger.close();
        drop(ledger);
        eprintln!("filled {n} records in {seconds:.1} s");
        let mut results = Vec::new();
        for method in ["in-memory", "streaming"] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--close", method, dir.path().to_str().unwrap()])
                .output()
                .expect("run the close");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8(out.stdout).unwrap();
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f[0].parse::<u64>().unwrap(), n, "{line}");
            let secs: f64 = f[1].parse().unwrap();
            let rss_mib = f[2].parse::<f64>().unwrap() / 1024.0;
            results.push((method, secs, rss_mib, f[3].to_string()));
        }
        assert_eq!(results[0].3, results[1].3, "the same Merkle root");
        let base = results[0].2;
        for (method, secs, rss, _) in &results {
            let label = if *method == "streaming" {
                "gateway (streaming, + sign + store)"
            } else {
                "baseline (all hashes in memory)"
            };
            println!(
                "{n:>10}  {label:<34} {secs:>8.2} {rss:>14.1} {:>9.2}x",
                rss / base
            );
        }
    }
}
