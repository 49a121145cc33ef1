//! `depin-bench-fleet`: a fleet of simulated gateways against collector
//! processes. Each gateway has a real Ed25519 device key, builds real
//! records, Merkle roots and signed epoch reports (`depin-protocol`), and
//! speaks real mutual TLS with its device-key certificate. Honest gateways
//! answer inclusion challenges with real proofs; cheating ones (the cases
//! of the collector's adversarial tests: an overlapping report with more
//! work, a replayed report, a component nobody approved, failed
//! challenges) are caught.
//!
//! Phases, per collector setup:
//! 1. delivery: every gateway posts E past epochs, each report twice (a
//!    retry of the same bytes), concurrently; prints reports accepted/s;
//! 2. challenges: every gateway long-polls and answers its challenges;
//!    prints the round time (issued to judged, for challenges issued while
//!    the gateways poll) median and p99.
//!
//! Checks: every report counted exactly once (the retry is a `duplicate`,
//! the collector lists E reports per gateway); every cheat refused by name;
//! honest challenges pass, cheaters' fail; and every reward equals the one
//! a fresh redb collector decides for the same report bytes (challenges
//! are due after the reported epochs, so they do not change them).
//!
//! `--store redb` (default) measures the embedded store. `--store postgres
//! --replicas 1|2` starts a PostgreSQL cluster (Debian's `postgresql`) and
//! collectors with `[store] url`, gateways spread over the replicas with
//! the others as failover URLs, and measures redb in the same run as the
//! baseline. Options: `--gateways N` (default 40), `--epochs E` (default
//! 10), `--cheaters C` (default N/4). The collector binary is
//! `DEPIN_COLLECTOR_BIN`, by default `target/release/depin-collector`.
//! Run with `make bench-fleet`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depin_e2e::forger::{self, Forger};
use depin_e2e::postgres::Postgres;
use depin_e2e::upstream::{CollectorProcess, Pki, free_port};
use depin_e2e::workspace;
use depin_gateway::identity::DeviceKey;
use depin_gateway::upstream::sender::CollectorClient;
use depin_protocol::time::now_ms;
use depin_protocol::{GENESIS_HASH, Hash};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records per epoch of every simulated gateway.
const RECORDS: u64 = 16;
/// Challenges each gateway answers in the challenge phase.
const CHALLENGES_EACH: usize = 2;
const ANSWER_TIMEOUT_MS: u64 = 20_000;
/// The component digest every gateway reports for its plugin (approved).
const APPROVED: [u8; 32] = [5; 32];

const POLICY: &str = r#"
[proof]
floor_ppm = 500000

[[rate]]
kind = "other"
unit = "requests"
micro = 7
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Redb,
    Postgres,
}

struct Args {
    gateways: usize,
    epochs: u64,
    cheaters: usize,
    store: Store,
    replicas: usize,
}

const USAGE: &str = "usage: depin-bench-fleet [--gateways N] [--epochs E] [--cheaters C] \
                     [--store redb|postgres] [--replicas 1|2]";

/// Prints `problem` and the usage, and exits with status 2.
fn usage_error(problem: &str) -> ! {
    eprintln!("depin-bench-fleet: {problem}\n{USAGE}");
    std::process::exit(2)
}

/// `value` of `flag` as a number, or a usage error.
fn number<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| usage_error(&format!("{flag}: not a number: {value}")))
}

fn args() -> Args {
    let mut a = Args {
        gateways: 40,
        epochs: 10,
        cheaters: usize::MAX,
        store: Store::Redb,
        replicas: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}\n\nSee the comment at the top of bench/src/bin/fleet.rs.");
            std::process::exit(0);
        }
        let value = it
            .next()
            .unwrap_or_else(|| usage_error(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--gateways" => a.gateways = number(&flag, &value),
            "--epochs" => a.epochs = number(&flag, &value),
            "--cheaters" => a.cheaters = number(&flag, &value),
            "--replicas" => a.replicas = number(&flag, &value),
            "--store" => {
                a.store = match value.as_str() {
                    "redb" => Store::Redb,
                    "postgres" => Store::Postgres,
                    other => usage_error(&format!("--store redb|postgres, not {other}")),
                }
            }
            other => usage_error(&format!("unknown argument {other}")),
        }
    }
    if a.cheaters == usize::MAX {
        a.cheaters = a.gateways / 4;
    }
    if a.cheaters > a.gateways {
        usage_error("--cheaters is more than --gateways");
    }
    if a.epochs < 2 {
        usage_error("--epochs must be at least 2");
    }
    if !(1..=2).contains(&a.replicas) {
        usage_error("--replicas is 1 or 2");
    }
    a
}

fn collector_binary() -> String {
    let bin = std::env::var_os("DEPIN_COLLECTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/depin-collector"));
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p depin-collector",
        bin.display()
    );
    bin.to_str().unwrap().to_string()
}

/// One collector setup to measure.
struct Setup {
    name: String,
    /// `[store] url` for PostgreSQL; `None`: redb.
    store_url: Option<String>,
    replicas: usize,
    /// Challenge issuance on (the measured runs) or off (the reference).
    challenges: bool,
}

/// The collector processes of one setup, and their ports.
struct Collectors {
    _processes: Vec<CollectorProcess>,
    ports: Vec<u16>,
}

fn start_collectors(dir: &Path, pki: &Pki, ids: &[String], setup: &Setup) -> Collectors {
    let bin = collector_binary();
    let mut processes = Vec::new();
    let mut ports = Vec::new();
    let policy = dir.join("rewards.toml");
    std::fs::write(&policy, POLICY).unwrap();
    for r in 0..setup.replicas {
        let port = free_port();
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data-{r}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\npolicy = \"{}\"\nlog_format = \"json\"\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            policy.display(),
        );
        text.push_str(&forger::schedule_toml());
        if let Some(url) = &setup.store_url {
            text.push_str(&format!("[store]\nurl = \"{url}\"\n"));
        }
        let interval = if setup.challenges { 500 } else { 0 };
        text.push_str(&format!(
            "[challenges]\ninterval_ms = {interval}\ninclusion = true\nmax_open = 4\nanswer_timeout_ms = {ANSWER_TIMEOUT_MS}\n"
        ));
        text.push_str(&format!(
            "[[component]]\ndigest = \"sha256:{}\"\nkind = \"other\"\n",
            hex::encode(APPROVED)
        ));
        for id in ids {
            text.push_str(&format!("[[gateway]]\nid = \"{id}\"\n"));
        }
        let config = dir.join(format!("collector-{r}.toml"));
        std::fs::write(&config, text).unwrap();
        processes.push(CollectorProcess::start(&bin, &config));
        ports.push(port);
    }
    Collectors {
        _processes: processes,
        ports,
    }
}

/// A client with `key`'s device-key certificate, first trying
/// `ports[first]`, then the others.
fn client(pki: &Pki, ports: &[u16], first: usize, key: &DeviceKey) -> CollectorClient {
    let order: Vec<u16> = (0..ports.len())
        .map(|i| ports[(first + i) % ports.len()])
        .collect();
    pki.https_device_key(&order, key)
}

/// What one simulated gateway delivered and how it was judged.
struct Delivered {
    id: String,
    honest: bool,
    /// (epoch, report hash, report bytes, reward the acknowledgement gave).
    reports: Vec<(u64, Hash, Vec<u8>, String)>,
    duplicates: u64,
    cheats_refused: u64,
}

/// Phase 1 for one gateway: its epochs in order, each twice; a cheater
/// also claims an unapproved component, and tries an overlapping report
/// and a replay.
async fn deliver(
    mut g: Forger,
    honest: bool,
    first_epoch: u64,
    epochs: u64,
) -> (Forger, Delivered) {
    let id = g.id();
    let mut out = Delivered {
        id,
        honest,
        reports: Vec::new(),
        duplicates: 0,
        cheats_refused: 0,
    };
    for epoch in first_epoch..first_epoch + epochs {
        let before = g.prev;
        let mut r = g.honest_report(epoch, ("app", APPROVED), "other", "requests", RECORDS);
        if !honest {
            // A second plugin whose component nobody approved.
            r.components.push(depin_protocol::report::ComponentDigest {
                plugin: "mystery".into(),
                digest: [0xab; 32],
                signer: None,
            });
            let mut line = r.totals[0].clone();
            line.plugin = "mystery".into();
            line.quantity = 1_000_000;
            r.totals.push(line);
        }
        let first_seq = r.first_seq;
        let signed = r.sign(g.key.signing_key());
        let (status, body) = g.post_bytes(&signed.bytes, signed.hash()).await;
        assert_eq!(status, 200, "{}: epoch {epoch}: {body}", out.id);
        assert_eq!(body["status"], "accepted", "{body}");
        let reward = body["decision"]["reward_micro"]
            .as_str()
            .unwrap()
            .to_string();
        // The retry of the same bytes (a lost acknowledgement).
        let (status, again) = g.post_bytes(&signed.bytes, signed.hash()).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["status"], "duplicate", "{again}");
        out.duplicates += 1;
        if !honest {
            // The same epoch again with more work in it.
            let accepted = g.prev;
            g.prev = before;
            let mut more = g.report(
                epoch,
                &[("app", APPROVED)],
                &[("app", "other", "requests", 1 << 20)],
            );
            more.first_seq = first_seq;
            let (status, body) = g.post(more).await;
            assert_eq!(
                (status, body["refused"].as_str()),
                (409, Some("overlapping")),
                "{body}"
            );
            // Its first report replayed as if new.
            if epoch > first_epoch {
                g.prev = GENESIS_HASH;
                let replay = g.report(
                    first_epoch,
                    &[("app", APPROVED)],
                    &[("app", "other", "requests", 1)],
                );
                let (status, body) = g.post(replay).await;
                assert_eq!(status, 409, "{body}");
                out.cheats_refused += 1;
            }
            g.prev = accepted;
            out.cheats_refused += 1;
        }
        out.reports
            .push((epoch, signed.hash(), signed.bytes.clone(), reward));
    }
    (g, out)
}

/// Phase 2 for one gateway: answers challenges, honestly or not, until
/// `CHALLENGES_EACH` issued after `since_ms` were judged (those issued
/// before waited for the poll to start and are judged but not timed);
/// returns (round times in ms: issue to verdict, verdicts).
async fn answer_challenges(g: Forger, honest: bool, since_ms: u64) -> (Vec<u64>, Vec<String>) {
    let mut rounds = Vec::new();
    let mut verdicts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while rounds.len() < CHALLENGES_EACH {
        assert!(Instant::now() < deadline, "{}: no challenges came", g.id());
        for c in g.poll().await {
            let issued = c.deadline_ms.saturating_sub(ANSWER_TIMEOUT_MS);
            let verdict = if honest {
                let proof = g.prove(&c).expect("a challenge on a reported record");
                g.answer(&c.id, true, proof).await
            } else {
                g.answer(&c.id, false, b"lost it".to_vec()).await
            };
            if issued >= since_ms {
                rounds.push(now_ms().saturating_sub(issued));
            }
            verdicts.push(verdict["status"].as_str().unwrap_or("?").to_string());
        }
    }
    (rounds, verdicts)
}

/// The figures and checks of one setup.
struct Run {
    name: String,
    reports_per_s: f64,
    round_p50_ms: u64,
    round_p99_ms: u64,
    delivered: Vec<Delivered>,
}

async fn run_setup(
    dir: &Path,
    pki: &Pki,
    keys: &[DeviceKey],
    cheaters: usize,
    epochs: u64,
    setup: &Setup,
) -> Run {
    std::fs::create_dir_all(dir).unwrap();
    let ids: Vec<String> = keys.iter().map(DeviceKey::gateway_id).collect();
    let collectors = start_collectors(dir, pki, &ids, setup);
    // Past epochs only: every one has ended, so each is accepted at once.
    let first_epoch = forger::current_epoch() - epochs - 1;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let key = DeviceKey::from_signing_key(key.signing_key().clone());
        let https = client(pki, &collectors.ports, i, &key);
        let g = Forger::with_client(key, https);
        let honest = i >= cheaters;
        tasks.push(tokio::spawn(deliver(g, honest, first_epoch, epochs)));
    }
    let mut gateways = Vec::new();
    let mut delivered = Vec::new();
    for t in tasks {
        let (g, d) = t.await.expect("delivery task");
        gateways.push((g, d.honest));
        delivered.push(d);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reports = (keys.len() as u64 * epochs) as f64;
    // Exactly once: the collector lists each gateway with E reports.
    let any = &gateways[0].0.https;
    let (_, body) = any
        .request("GET", "/v1/gateways", Vec::new())
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for d in &delivered {
        let row = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["gateway_id"] == d.id.as_str())
            .unwrap_or_else(|| panic!("{} not listed", d.id));
        assert_eq!(row["reports"].as_u64(), Some(epochs), "{row}");
        assert_eq!(d.duplicates, epochs);
    }
    let mut rounds = Vec::new();
    if setup.challenges {
        let mut tasks = Vec::new();
        let since = now_ms();
        for (g, honest) in gateways {
            tasks.push(tokio::spawn(answer_challenges(g, honest, since)));
        }
        for (t, d) in tasks.into_iter().zip(&delivered) {
            let (r, verdicts) = t.await.expect("challenge task");
            let want = if d.honest { "passed" } else { "failed" };
            assert!(verdicts.iter().all(|v| v == want), "{}: {verdicts:?}", d.id);
            rounds.extend(r);
        }
    }
    rounds.sort_unstable();
    let pick = |q: f64| {
        rounds
            .get(((rounds.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    drop(collectors);
    Run {
        name: setup.name.clone(),
        reports_per_s: reports / elapsed,
        round_p50_ms: pick(0.5),
        round_p99_ms: pick(0.99),
        delivered,
    }
}

/// Feeds every accepted report of `run` to a fresh redb collector without
/// challenges, in chain order, and checks each reward is the one the run's
/// acknowledgement carried.
async fn check_rewards_against_redb(dir: &Path, pki: &Pki, keys: &[DeviceKey], run: &Run) {
    std::fs::create_dir_all(dir).unwrap();
    let ids: Vec<String> = keys.iter().map(DeviceKey::gateway_id).collect();
    let setup = Setup {
        name: "reference".into(),
        store_url: None,
        replicas: 1,
        challenges: false,
    };
    let collectors = start_collectors(dir, pki, &ids, &setup);
    for d in &run.delivered {
        let key = keys
            .iter()
            .find(|k| k.gateway_id() == d.id)
            .expect("a key of the fleet");
        let https = client(pki, &collectors.ports, 0, key);
        for (epoch, hash, bytes, reward) in &d.reports {
            let (status, body) = https
                .request("POST", "/v1/reports", bytes.clone())
                .await
                .expect("post");
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let ack: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(ack["hash"], hex::encode(hash));
            assert_eq!(
                ack["decision"]["reward_micro"].as_str(),
                Some(reward.as_str()),
                "{}: {} epoch {epoch}: the reward differs from redb's",
                run.name,
                d.id
            );
        }
    }
}

fn table(runs: &[Run], gateways: usize, epochs: u64, cheaters: usize) {
    println!(
        "fleet: {gateways} gateways ({cheaters} cheating), {epochs} epochs each, {RECORDS} records per report, {CHALLENGES_EACH} challenges each"
    );
    println!(
        "{:<22} {:>12} {:>10} {:>14} {:>14}",
        "collector", "reports/s", "ratio", "round p50 ms", "round p99 ms"
    );
    let base = runs[0].reports_per_s;
    for r in runs {
        println!(
            "{:<22} {:>12.1} {:>10.2} {:>14} {:>14}",
            r.name,
            r.reports_per_s,
            r.reports_per_s / base,
            r.round_p50_ms,
            r.round_p99_ms
        );
    }
    if runs.len() == 3 {
        println!(
            "2 replicas vs 1: {:.2}x reports/s",
            runs[2].reports_per_s / runs[1].reports_per_s
        );
    }
    println!("ratio: against {} in the same run", runs[0].name);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&tmp.path().join("pki"));
    let mut runs = Vec::new();
    let postgres = (a.store == Store::Postgres).then(Postgres::start);
    let mut setups = vec![Setup {
        name: "redb".into(),
        store_url: None,
        replicas: 1,
        challenges: true,
    }];
    if let Some(pg) = &postgres {
        for replicas in 1..=a.replicas {
            setups.push(Setup {
                name: format!("postgres x{replicas}"),
                store_url: Some(pg.create_database(&format!("fleet{replicas}"))),
                replicas,
                challenges: true,
            });
        }
    }
    let all_keys: Vec<Vec<DeviceKey>> = setups
        .iter()
        .map(|_| (0..a.gateways).map(|_| DeviceKey::generate()).collect())
        .collect();
    for (i, setup) in setups.iter().enumerate() {
        let run = run_setup(
            &tmp.path().join(format!("run-{i}")),
            &pki,
            &all_keys[i],
            a.cheaters,
            a.epochs,
            setup,
        )
        .await;
        runs.push(run);
    }
    for (i, run) in runs.iter().enumerate() {
        check_rewards_against_redb(
            &tmp.path().join(format!("reference-{i}")),
            &pki,
            &all_keys[i],
            run,
        )
        .await;
    }
    table(&runs, a.gateways, a.epochs, a.cheaters);
    println!(
        "checks: every report counted once (retries were duplicates), every cheat refused, honest challenges passed and cheaters' failed, every reward equal to a fresh redb collector's"
    );
}
