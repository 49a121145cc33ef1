//! `depin-bench-epochs`: epoch close and report verification, each next to a
//! native baseline doing the same work in the same run.
//!
//! 1. Epoch close over `EPOCH_RECORDS` (default 1 000 000) ledger records:
//!    read from redb, totals, Merkle root, reward, sign, durable store —
//!    against computing the same totals and Merkle root over the same
//!    records already in memory.
//! 2. Report verification at the collector (reports/s): decode, canonical
//!    check, ed25519 signature, sender check, reward recomputation — and with
//!    the durable chain insert — against a bare ed25519 verification of the
//!    same bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use depin_collector::{CollectorStore, check_report};
use depin_gateway::epochs::{EpochCloser, EpochStore};
use depin_gateway::identity::DeviceKey;
use depin_gateway::ledger::{Ledger, Source, UsageRecord};
use depin_protocol::Hash;
use depin_protocol::merkle;
use depin_protocol::report::{EpochReport, EpochTotal, SignedReport};
use depin_protocol::rewards::RewardPolicy;
use ed25519_dalek::{Signature, Verifier};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "ledger_fill.rs"]
mod ledger_fill;
use ledger_fill::LENGTH_MS;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn policy() -> RewardPolicy {
    depin_gateway::config::parse_policy(
        std::path::Path::new("bench-rewards.toml"),
        "[[rate]]\nkind = \"*\"\nunit = \"requests\"\nmicro = 10\n\
         [[rate]]\nkind = \"*\"\nunit = \"bytes-out\"\nsource = \"host\"\nmicro = 1\nper = 1000\n",
    )
    .expect("policy")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env("EPOCH_RECORDS", 1_000_000);
    let reports = env("BENCH_REPORTS", 20_000);
    println!("depin-bench-epochs: {n} records, {reports} reports\n");
    epoch_close(n).await;
    report_verification(reports);
}

async fn epoch_close(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::open(dir.path()).expect("ledger");
    let seconds = ledger_fill::fill(&ledger, n).await;
    println!("filled the ledger with {n} records in {seconds:.1} s");
    let store = Arc::new(EpochStore::open(dir.path()).expect("epoch store"));
    let closer = EpochCloser {
        ledger: ledger.clone(),
        store,
        key: Arc::new(DeviceKey::generate()),
        policy: policy(),
        identities: depin_gateway::epochs::PluginIdentities::from_kinds(BTreeMap::from([(
            "bench".to_string(),
            "other".to_string(),
        )])),
        length_ms: LENGTH_MS,
        close_delay_ms: 0,
        deliver: true,
    };
    // start the cursor at epoch 1, then close it
    assert!(closer.close_due(LENGTH_MS + 1).expect("init").is_empty());
    let started = Instant::now();
    let made = closer.close_due(2 * LENGTH_MS).expect("close");
    let gateway_s = started.elapsed().as_secs_f64();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].report.records, n);

    // Baseline: the same records already decoded in memory; totals and the
    // Merkle root only.
    let mut in_memory: Vec<(Hash, UsageRecord)> = Vec::with_capacity(n as usize);
    ledger
        .scan_from(1, |h, r| {
            in_memory.push((h, r));
            true
        })
        .expect("scan");
    let started = Instant::now();
    let mut totals: BTreeMap<(&str, Source, &str), (u64, u128)> = BTreeMap::new();
    let mut hashes = Vec::with_capacity(in_memory.len());
    for (h, r) in &in_memory {
        let t = totals
            .entry((r.plugin.as_str(), r.source, r.unit.as_str()))
            .or_default();
        t.0 += 1;
        t.1 += u128::from(r.quantity);
        hashes.push(merkle::leaf(h));
    }
    let root = merkle::root(hashes);
    let baseline_s = started.elapsed().as_secs_f64();
    assert_eq!(root, made[0].report.merkle_root);
    println!("1. epoch close over {n} records");
    println!("   gateway (redb read + totals + Merkle + reward + sign + store): {gateway_s:.2} s");
    println!("   baseline (totals + Merkle over records in memory):            {baseline_s:.2} s");
    println!(
        "   ratio gateway/baseline: {:.2}x the time\n",
        gateway_s / baseline_s
    );
    ledger.close();
}

fn report_verification(count: u64) {
    let key = DeviceKey::generate();
    let policy = policy();
    let mut prev = [0u8; 32];
    let mut signed: Vec<SignedReport> = Vec::with_capacity(count as usize);
    for epoch in 0..count {
        let totals: Vec<EpochTotal> = ["bytes-out", "fuel", "requests", "wall-time-us"]
            .iter()
            .enumerate()
            .map(|(i, unit)| EpochTotal {
                plugin: "bench".into(),
                kind: "other".into(),
                source: if *unit == "requests" {
                    "plugin"
                } else {
                    "host"
                }
                .into(),
                unit: (*unit).into(),
                records: 1000 + i as u64,
                quantity: 123_456 + u128::from(epoch),
                subjects: 250,
            })
            .collect();
        let mut r = EpochReport {
            version: depin_protocol::report::REPORT_VERSION,
            gateway_key: key.verifying_key().to_bytes(),
            epoch,
            length_ms: LENGTH_MS,
            prev_hash: prev,
            first_seq: epoch * 4000 + 1,
            records: 4000,
            merkle_root: [7; 32],
            components: vec![depin_protocol::report::ComponentDigest {
                plugin: "bench".into(),
                digest: [3; 32],
                signer: None,
            }],
            totals,
            subject_totals: Vec::new(),
            proofs: Vec::new(),
            reward_micro: 0,
        };
        r.reward_micro = r.reward_under(&policy);
        let s = r.sign(key.signing_key());
        prev = s.hash();
        signed.push(s);
    }
    let id = key.gateway_id();
    let schedule = depin_collector::config::ScheduleConfig {
        length_ms: LENGTH_MS,
        grace_ms: 0,
        admit_v1: false,
    };
    let now = (count + 1) * LENGTH_MS;
    let approved = BTreeMap::from([(format!("sha256:{}", "03".repeat(32)), "other".to_string())]);
    let decider = depin_collector::intake::Decider {
        policy: &policy,
        approved: &approved,
    };

    let started = Instant::now();
    for s in &signed {
        check_report(&s.bytes, &id, &schedule, now).expect("valid report");
    }
    let check_rate = count as f64 / started.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().expect("tempdir");
    let store = CollectorStore::open(dir.path()).expect("collector store");
    let stored = count.min(2000);
    let started = Instant::now();
    for s in signed.iter().take(stored as usize) {
        let (r, end_ms) = check_report(&s.bytes, &id, &schedule, now).expect("valid report");
        store.accept(&r, end_ms, now, &decider).expect("accepted");
    }
    let store_rate = stored as f64 / started.elapsed().as_secs_f64();

    // Baseline: ed25519 verification of the same bytes, nothing else.
    let vk = key.verifying_key();
    let started = Instant::now();
    for s in &signed {
        let (body, sig) = s.bytes.split_at(s.bytes.len() - 64);
        let sig = Signature::from_bytes(sig.try_into().expect("64"));
        vk.verify(body, &sig).expect("signature");
    }
    let baseline_rate = count as f64 / started.elapsed().as_secs_f64();
    println!("2. report verification at the collector");
    println!(
        "   check (decode, canonical, signature, sender, schedule): {check_rate:>7.0} reports/s"
    );
    println!(
        "   check + decision + durable chain insert ({stored}):   {store_rate:>9.0} reports/s"
    );
    println!(
        "   baseline (bare ed25519 verify):                       {baseline_rate:>9.0} reports/s"
    );
    println!(
        "   ratio check/baseline: {:.2}x the rate",
        check_rate / baseline_rate
    );
}
