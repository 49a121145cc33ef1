//! Challenge rounds and long polls on PostgreSQL: round times survive a
//! `kill -9` of the replica that issues them, and a poll waiting on one
//! replica is woken when another issues (LISTEN/NOTIFY).

use std::time::{Duration, Instant};

use depin_e2e::plugin;
use depin_e2e::upstream::{Pki, approve, file_digest, free_port};
use depin_gateway::upstream::sender::CollectorClient;

use super::*;

/// Mean time between two rounds of the tests' collectors: each round
/// comes between half and one and a half of it after the one before.
const INTERVAL_MS: u64 = 2000;
/// How late a round may be issued after its stored time (or after the
/// replica is back, when that time passed while it was down): the
/// issuer ticks every `INTERVAL_MS / 8` = 250 ms, plus a loaded machine.
const ROUND_TOLERANCE_MS: u64 = 1000;

/// `[challenges]`: inclusion only (one challenge per round), room for
/// every round of the test, no expiry during it.
fn challenges_toml(interval_ms: u64) -> String {
    format!(
        "[challenges]\ninterval_ms = {interval_ms}\ninclusion = true\nmax_open = 100\n\
         answer_timeout_ms = 60000\n"
    )
}

/// Has `f` deliver one report (of the template), so that the collector
/// challenges it.
async fn report_once(f: &mut Forger, template: &str) {
    let tpl = [("template", digest_bytes(template))];
    let work = [("template", "other", "requests", 1)];
    let (status, body) = f.post(f.report(current_epoch() - 2, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
}

/// The issue times of every challenge in the database, in order.
fn issue_times(pg: &Postgres, db: &str) -> Vec<u64> {
    pg.psql(db, "SELECT issued_ms FROM challenges ORDER BY issued_ms")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Waits until the database holds at least `n` challenges.
async fn until_issued(pg: &Postgres, db: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while issue_times(pg, db).len() < n {
        assert!(
            Instant::now() < deadline,
            "rounds stopped: {:?}",
            issue_times(pg, db)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_times_survive_a_kill_9_of_the_issuing_replica() {
    let pg = Postgres::start();
    let url = pg.create_database("rounds");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let template = file_digest(&plugin("template_plugin"));
    let port = free_port();
    let (mut f, cert) = Forger::new(&pki, port, "scheduled");
    let extra = format!(
        "[store]\nurl = \"{url}\"\n{}{}",
        approve(&template, "other", None, &[]),
        challenges_toml(INTERVAL_MS)
    );
    let config = replica_config(
        tmp.path(),
        "a",
        &pki,
        port,
        &[(f.id(), cert.sha256.clone())],
        &extra,
    );
    let mut replica = CollectorProcess::start(COLLECTOR_BIN, &config);
    report_once(&mut f, &template).await;
    until_issued(&pg, "rounds", 3).await;

    replica.child.kill().unwrap(); // SIGKILL
    replica.child.wait().unwrap();
    let killed_ms = now_ms();
    let before = issue_times(&pg, "rounds");
    let next_ms: u64 = pg
        .psql("rounds", "SELECT next_ms FROM rounds")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        next_ms > *before.last().unwrap(),
        "the next round is stored"
    );
    // Down until the stored round is overdue.
    let back_at = next_ms.max(killed_ms) + 500;
    tokio::time::sleep(Duration::from_millis(back_at - now_ms())).await;
    let restarted_ms = now_ms();
    let _replica = CollectorProcess::start(COLLECTOR_BIN, &config);
    let ready_ms = now_ms();
    until_issued(&pg, "rounds", before.len() + 3).await;

    let times = issue_times(&pg, "rounds");
    assert_eq!(
        &times[..before.len()],
        &before[..],
        "nothing issued while down"
    );
    let first_after = times[before.len()];
    // The overdue round is issued once the replica is back, at its
    // stored time's turn, not at a fresh random time.
    assert!(
        first_after >= restarted_ms && first_after <= ready_ms + ROUND_TOLERANCE_MS,
        "stored round {next_ms}, back at {restarted_ms}..{ready_ms}, issued at {first_after}"
    );
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // No round twice: rounds are at least half an interval apart.
        assert!(
            gap >= INTERVAL_MS / 2,
            "rounds {pair:?} are {gap} ms apart: {times:?}"
        );
        // None skipped past its time, but across the restart.
        if pair[1] != first_after {
            assert!(
                gap <= INTERVAL_MS * 3 / 2 + ROUND_TOLERANCE_MS,
                "rounds {pair:?} are {gap} ms apart: {times:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_waiting_on_one_replica_wakes_when_another_issues() {
    let pg = Postgres::start();
    let url = pg.create_database("notify");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let template = file_digest(&plugin("template_plugin"));
    let ports = [free_port(), free_port()];
    let (mut f, cert) = Forger::new(&pki, ports[0], "polling");
    let gateways = [(f.id(), cert.sha256.clone())];
    let store = format!(
        "[store]\nurl = \"{url}\"\n{}",
        approve(&template, "other", None, &[])
    );
    // Replica a issues; b issues nothing and serves the polls.
    let a = replica_config(
        tmp.path(),
        "a",
        &pki,
        ports[0],
        &gateways,
        &format!("{store}{}", challenges_toml(INTERVAL_MS)),
    );
    let b = replica_config(
        tmp.path(),
        "b",
        &pki,
        ports[1],
        &gateways,
        &format!("{store}{}", challenges_toml(0)),
    );
    let _a = CollectorProcess::start(COLLECTOR_BIN, &a);
    let _b = CollectorProcess::start(COLLECTOR_BIN, &b);
    report_once(&mut f, &template).await;
    let at_b = pki
        .https(ports[1], &cert)
        .with_extra_timeout(Duration::from_secs(5));
    // Each poll starts right after the last answer, so the next round is
    // 1-3 s away. Woken by a's notification, the poll is answered within
    // moments of the issue (well under 1 s); by b's own re-check of the
    // database only NOTIFIED_RECHECK (5 s) after it started, more than
    // 1 s after the issue.
    let latencies = woken_poll_latencies(&at_b, 4).await;
    assert!(
        latencies.iter().all(|l| *l < 1000),
        "polls on b answered {latencies:?} ms after a issued"
    );
    assert_eq!(notifications(&at_b).await, 1);

    // The listening connections die: the replicas listen again (after
    // polling the database meanwhile), and wake-ups resume.
    let listeners = || -> Vec<String> {
        let pids = pg
            .psql(
                "notify",
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' ORDER BY pid",
            )
            .unwrap();
        pids.lines().map(str::to_string).collect()
    };
    let before = listeners();
    assert_eq!(before.len(), 2, "one listening connection per replica");
    let killed = pg
        .psql(
            "notify",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN%'",
        )
        .unwrap();
    assert_eq!(killed, "2");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = listeners();
        let fresh = now.len() == 2 && now.iter().all(|p| !before.contains(p));
        if fresh && notifications(&at_b).await == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not listening again: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let latencies = woken_poll_latencies(&at_b, 2).await;
    assert!(
        latencies.iter().all(|l| *l < 1000),
        "after reconnecting, polls on b answered {latencies:?} ms after a issued"
    );
}

/// Polls `at` again and again until `n` polls were answered by a
/// challenge issued after they started; returns how long after the issue
/// each was answered, ms.
async fn woken_poll_latencies(at: &CollectorClient, n: usize) -> Vec<u64> {
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.len() < n {
        assert!(
            Instant::now() < deadline,
            "too few woken polls: {latencies:?}"
        );
        let started = now_ms();
        let (status, body) = at
            .request("GET", "/v1/challenges?wait_ms=20000", Vec::new())
            .await
            .unwrap();
        let answered = now_ms();
        assert_eq!(status, 200);
        let specs: Vec<ChallengeSpec> = serde_json::from_slice(&body).unwrap();
        assert!(!specs.is_empty(), "a 20 s poll ends with a challenge");
        let issued = specs.iter().map(|c| c.deadline_ms - 60_000).max().unwrap();
        if issued > started {
            latencies.push(answered - issued);
        }
    }
    latencies
}

/// `depin_collector_challenge_notifications` of the replica `at` reaches.
async fn notifications(at: &CollectorClient) -> u64 {
    let (_, m) = at.request("GET", "/metrics", Vec::new()).await.unwrap();
    String::from_utf8_lossy(&m)
        .lines()
        .find_map(|l| l.strip_prefix("depin_collector_challenge_notifications "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge")
}
