//! Collector replicas sharing one PostgreSQL database: reports counted
//! once whichever replica (or both) receives them, through a `kill -9`;
//! challenges handed out and decided once; the schema guard; the gateway
//! registry, its revocations and its CLI.

use std::time::{Duration, Instant};

use depin_e2e::plugin;
use depin_e2e::run_cli;
use depin_e2e::upstream::{Pki, approve, file_digest, free_port};
use depin_gateway::upstream::sender::CollectorClient;
use depin_protocol::report::SignedReport;

use super::*;

/// Starts replicas from `configs` at the same time (their migrations
/// race for the database).
fn start_together(configs: &[&Path]) -> Vec<CollectorProcess> {
    std::thread::scope(|s| {
        let started: Vec<_> = configs
            .iter()
            .map(|c| s.spawn(move || CollectorProcess::start(COLLECTOR_BIN, c)))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `n` chained reports of `f` for consecutive ended epochs from `first`,
/// each with 10 template requests (70 micro).
fn chain(f: &mut Forger, first: u64, n: u64, template: &str) -> Vec<SignedReport> {
    let tpl = [("template", digest_bytes(template))];
    let work = [("template", "other", "requests", 10)];
    let mut out = Vec::new();
    for epoch in first..first + n {
        let signed = f.report(epoch, &tpl, &work).sign(f.key.signing_key());
        f.prev = signed.hash();
        out.push(signed);
    }
    out
}

/// Posts `bytes` to `clients[first]`, and to the next one whenever a
/// replica cannot answer (down, or a storage error): a gateway's
/// failover. Returns the acknowledgement's status field.
async fn deliver(clients: &[CollectorClient], first: usize, bytes: &[u8]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = first;
    loop {
        assert!(Instant::now() < deadline, "no replica took the report");
        let c = &clients[i % clients.len()];
        if let Ok((status, body)) = c.request("POST", "/v1/reports", bytes.to_vec()).await {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            assert!(status == 200 || status >= 500, "{status}: {v}");
            if status == 200 {
                return v["status"].as_str().unwrap().to_string();
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_count_every_report_once_through_a_kill_9() {
    let pg = Postgres::start();
    let url = pg.create_database("replicas");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let template = file_digest(&plugin("template_plugin"));
    let ports = [free_port(), free_port()];
    let mut forgers = Vec::new();
    let mut certs = Vec::new();
    for n in 0..3 {
        let (f, cert) = Forger::new(&pki, ports[0], &format!("gw{n}"));
        certs.push((f.id(), cert.sha256.clone()));
        forgers.push((f, cert));
    }
    let extra = format!(
        "[store]\nurl = \"{url}\"\npool_size = 4\n{}[challenges]\ninterval_ms = 0\n",
        approve(&template, "other", None, &[])
    );
    let a = replica_config(tmp.path(), "a", &pki, ports[0], &certs, &extra);
    let b = replica_config(tmp.path(), "b", &pki, ports[1], &certs, &extra);
    let mut replicas = start_together(&[&a, &b]);

    const EPOCHS: u64 = 8;
    let first = current_epoch() - EPOCHS - 2;
    let mut work = Vec::new();
    for (f, cert) in &mut forgers {
        let reports = chain(f, first, EPOCHS, &template);
        let clients = vec![pki.https(ports[0], cert), pki.https(ports[1], cert)];
        work.push((f.id(), reports, clients));
    }
    // Each gateway delivers to the replicas alternately; replica a is
    // killed while they are at it.
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (_, reports, clients) in &work {
        let (reports, clients) = (reports.clone(), clients.clone());
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            for (i, r) in reports.iter().enumerate() {
                let status = deliver(&clients, i, &r.bytes).await;
                assert!(status == "accepted" || status == "duplicate", "{status}");
                delivered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    while delivered.load(std::sync::atomic::Ordering::SeqCst) < 7 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replicas[0].kill();
    for t in tasks {
        t.await.unwrap();
    }
    let survivor = &work[0].2[1];
    let gws = get_json(survivor, "/v1/gateways").await;
    assert_eq!(gws.as_array().unwrap().len(), 3, "{gws}");
    for g in gws.as_array().unwrap() {
        assert_eq!(g["reports"], EPOCHS, "counted exactly once: {gws}");
        assert_eq!(g["reward_micro"], (70 * EPOCHS).to_string(), "{gws}");
    }
    let rows = pg
        .psql(
            "replicas",
            "SELECT count(*), count(DISTINCT (gateway, epoch)) FROM reports",
        )
        .unwrap();
    assert_eq!(rows.trim(), format!("{n}|{n}", n = 3 * EPOCHS), "{rows}");

    // The same reports through one collector on redb: the same decisions.
    let single_port = free_port();
    let single = replica_config(
        tmp.path(),
        "single",
        &pki,
        single_port,
        &certs,
        &format!(
            "{}[challenges]\ninterval_ms = 0\n",
            approve(&template, "other", None, &[])
        ),
    );
    let _single = CollectorProcess::start(COLLECTOR_BIN, &single);
    for ((id, reports, _), (_, cert)) in work.iter().zip(&forgers) {
        let one = [pki.https(single_port, cert)];
        for r in reports {
            assert_eq!(deliver(&one, 0, &r.bytes).await, "accepted");
        }
        for epoch in first..first + EPOCHS {
            let path = format!("/v1/gateways/{id}/epochs/{epoch}");
            let replicated = get_json(survivor, &path).await;
            assert_eq!(get_json(&one[0], &path).await, replicated, "{path}");
        }
    }
    for epoch in first..first + EPOCHS {
        let path = format!("/v1/rewards?epoch={epoch}");
        let single_rewards = get_json(&pki.https(single_port, &forgers[0].1), &path).await;
        assert_eq!(get_json(survivor, &path).await, single_rewards, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_report_through_both_replicas_at_once_is_counted_once() {
    let pg = Postgres::start();
    let url = pg.create_database("twice");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let template = file_digest(&plugin("template_plugin"));
    let ports = [free_port(), free_port()];
    let (mut f, cert) = Forger::new(&pki, ports[0], "twice");
    let gateways = [(f.id(), cert.sha256.clone())];
    let extra = format!(
        "[store]\nurl = \"{url}\"\n{}[challenges]\ninterval_ms = 0\n",
        approve(&template, "other", None, &[])
    );
    let a = replica_config(tmp.path(), "a", &pki, ports[0], &gateways, &extra);
    let b = replica_config(tmp.path(), "b", &pki, ports[1], &gateways, &extra);
    let _replicas = start_together(&[&a, &b]);
    let (ca, cb) = (pki.https(ports[0], &cert), pki.https(ports[1], &cert));
    let first = current_epoch() - 8;
    let reports = chain(&mut f, first, 6, &template);
    for r in &reports {
        let (x, y) = tokio::join!(
            ca.request("POST", "/v1/reports", r.bytes.clone()),
            cb.request("POST", "/v1/reports", r.bytes.clone())
        );
        let mut statuses: Vec<String> = [x.unwrap(), y.unwrap()]
            .iter()
            .map(|(status, body)| {
                let v: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(*status, 200, "{v}");
                v["status"].as_str().unwrap().to_string()
            })
            .collect();
        statuses.sort();
        assert_eq!(statuses, ["accepted", "duplicate"]);
    }
    // A different report for an accepted epoch is a conflict on either.
    f.prev = reports[4].hash();
    let tpl = [("template", digest_bytes(&template))];
    let other = f
        .report(first + 5, &tpl, &[("template", "other", "requests", 99)])
        .sign(f.key.signing_key());
    for c in [&ca, &cb] {
        let (status, body) = c
            .request("POST", "/v1/reports", other.bytes.clone())
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, v["refused"].as_str()), (409, Some("overlapping")));
    }
    let gws = get_json(&cb, "/v1/gateways").await;
    assert_eq!(gws[0]["reports"], 6, "{gws}");
    assert_eq!(gws[0]["reward_micro"], "420", "{gws}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_handed_out_and_decided_once_across_replicas() {
    let pg = Postgres::start();
    let url = pg.create_database("challenges");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let template = file_digest(&plugin("template_plugin"));
    let ports = [free_port(), free_port()];
    let (mut f, cert) = Forger::new(&pki, ports[0], "challenged");
    let gateways = [(f.id(), cert.sha256.clone())];
    let extra = format!(
        "[store]\nurl = \"{url}\"\n{}[challenges]\ninterval_ms = 150\ninclusion = true\n\
         max_open = 2\nanswer_timeout_ms = 60000\n",
        approve(&template, "other", None, &[])
    );
    let a = replica_config(tmp.path(), "a", &pki, ports[0], &gateways, &extra);
    let b = replica_config(tmp.path(), "b", &pki, ports[1], &gateways, &extra);
    let _replicas = start_together(&[&a, &b]);
    let clients = [pki.https(ports[0], &cert), pki.https(ports[1], &cert)];
    let report = chain(&mut f, current_epoch() - 3, 1, &template).remove(0);
    assert_eq!(deliver(&clients, 0, &report.bytes).await, "accepted");
    // Both replicas issue; the gateway long-polls both at once and
    // answers each challenge through both at once.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 6 {
        assert!(Instant::now() < deadline, "challenges stopped: {seen:?}");
        let poll = |c: &CollectorClient| {
            let c = c.with_extra_timeout(Duration::from_secs(5));
            async move {
                let (status, body) = c
                    .request("GET", "/v1/challenges?wait_ms=2000", Vec::new())
                    .await
                    .unwrap();
                assert_eq!(status, 200);
                serde_json::from_slice::<Vec<ChallengeSpec>>(&body).unwrap()
            }
        };
        let (x, y) = tokio::join!(poll(&clients[0]), poll(&clients[1]));
        for spec in x.into_iter().chain(y) {
            assert!(seen.insert(spec.id.clone()), "{} handed out twice", spec.id);
            let answer = Answer {
                gateway_key: f.key.verifying_key().to_bytes(),
                challenge_id: spec.id.clone(),
                answered: true,
                payload: b"not a proof".to_vec(),
            }
            .sign(f.key.signing_key());
            let (p, q) = tokio::join!(
                clients[0].request("POST", "/v1/challenges/answer", answer.clone()),
                clients[1].request("POST", "/v1/challenges/answer", answer.clone())
            );
            let verdicts: Vec<(u16, String)> = [p.unwrap(), q.unwrap()]
                .into_iter()
                .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
                .collect();
            // One judges it; the other finds it judged (409) or, racing,
            // the same verdict.
            for (status, body) in &verdicts {
                assert!(
                    (*status == 200 && body.contains("\"failed\"")) || *status == 409,
                    "{verdicts:?}"
                );
            }
            assert!(verdicts.iter().any(|(s, _)| *s == 200), "{verdicts:?}");
        }
    }
    let counts = pg
        .psql(
            "challenges",
            "SELECT status, count(*) FROM challenges GROUP BY status ORDER BY status",
        )
        .unwrap();
    let failed: usize = counts
        .lines()
        .find_map(|l| l.strip_prefix("failed|"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(failed >= seen.len(), "{counts}");
    assert!(!counts.contains("passed"), "{counts}");
    // At most max_open open at once, though two replicas issue.
    let open = pg
        .psql(
            "challenges",
            "SELECT count(*) FROM challenges WHERE status IN ('pending', 'sent')",
        )
        .unwrap();
    assert!(open.trim().parse::<usize>().unwrap() <= 2, "{open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_newer_schema_is_refused_by_name() {
    let pg = Postgres::start();
    let url = pg.create_database("newer");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let extra = format!("[store]\nurl = \"{url}\"\n[challenges]\ninterval_ms = 0\n");
    let config = replica_config(tmp.path(), "a", &pki, port, &[], &extra);
    let mut first = CollectorProcess::start(COLLECTOR_BIN, &config);
    first.kill();
    let version = pg
        .psql("newer", "SELECT max(version) FROM collector_schema")
        .unwrap();
    assert_eq!(version.trim(), "1");
    pg.psql(
        "newer",
        "INSERT INTO collector_schema (version, applied_ms) VALUES (7, 0)",
    )
    .unwrap();
    let (code, _, err) = run_cli(COLLECTOR_BIN, &["--config", config.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("schema is version 7, newer than this collector's version 1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_on_the_next_request_on_every_replica() {
    let pg = Postgres::start();
    let url = pg.create_database("registry");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let ports = [free_port(), free_port()];
    let (f, cert) = Forger::new(&pki, ports[1], "listed");
    let (newcomer, new_cert) = Forger::new(&pki, ports[1], "newcomer");
    let extra = format!("[store]\nurl = \"{url}\"\n[challenges]\ninterval_ms = 0\n");
    let gateways = [(f.id(), cert.sha256.clone())];
    let a = replica_config(tmp.path(), "a", &pki, ports[0], &gateways, &extra);
    let b = replica_config(tmp.path(), "b", &pki, ports[1], &gateways, &extra);
    let _replicas = start_together(&[&a, &b]);
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", a.to_str().unwrap(), "gateways"];
        all.extend_from_slice(args);
        run_cli(COLLECTOR_BIN, &all)
    };
    let status = |c: &CollectorClient| {
        let c = c.clone();
        async move { c.request("GET", "/v1/gateways", Vec::new()).await.unwrap() }
    };
    assert_eq!(status(&f.https).await.0, 200);
    // Revoked through replica a's configuration: b refuses the next request.
    let (code, out, err) = cli(&["revoke", "--id", &f.id()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, body) = status(&f.https).await;
    assert_eq!(code, 403);
    assert!(String::from_utf8_lossy(&body).contains("revoked"));
    let (_, out, _) = cli(&["list", "--json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["id"], f.id().as_str(), "{listed}");
    assert_eq!(listed[0]["status"], "revoked", "{listed}");
    let (code, out, err) = cli(&["approve", "--id", &f.id()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(status(&f.https).await.0, 200);
    // A gateway the file does not list: refused until added.
    assert_eq!(status(&newcomer.https).await.0, 403);
    let (code, out, err) = cli(&[
        "add",
        "--id",
        &newcomer.id(),
        "--cert-sha256",
        &new_cert.sha256,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(status(&newcomer.https).await.0, 200);
    let (code, _, err) = cli(&["add", "--id", &newcomer.id()]);
    assert_eq!(code, 1, "added twice: {err}");
    let (code, out, _) = cli(&["list"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains("active")).count(),
        2,
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_while_its_database_answers() {
    let pg = Postgres::start();
    let url = pg.create_database("ready");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let health = free_port();
    let extra = format!(
        "[store]\nurl = \"{url}\"\n[server]\nhealth_listen = \"127.0.0.1:{health}\"\n\
         [challenges]\ninterval_ms = 0\n"
    );
    let config = replica_config(tmp.path(), "a", &pki, free_port(), &[], &extra);
    let _replica = CollectorProcess::start(COLLECTOR_BIN, &config);
    let probe = depin_e2e::HttpClient::new(([127, 0, 0, 1], health).into());
    assert_eq!(probe.get("/healthz").await.status, 200);
    assert_eq!(probe.get("/readyz").await.status, 200);
    // The database goes away: alive, but not ready.
    drop(pg);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = probe.get("/readyz").await;
        if ready.status == 503 {
            assert!(ready.text().contains("postgres"), "{}", ready.text());
            break;
        }
        assert!(Instant::now() < deadline, "still ready without a database");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probe.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_cli_works_on_redb_with_the_collector_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let (f, cert) = Forger::new(&pki, port, "embedded");
    let config = replica_config(
        tmp.path(),
        "a",
        &pki,
        port,
        &[],
        "[challenges]\ninterval_ms = 0\n",
    );
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", config.to_str().unwrap(), "gateways"];
        all.extend_from_slice(args);
        run_cli(COLLECTOR_BIN, &all)
    };
    let (code, out, err) = cli(&["add", "--id", &f.id(), "--cert-sha256", &cert.sha256]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = cli(&["list", "--json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["status"], "active", "{listed}");
    assert_eq!(listed[0]["cert_sha256"], cert.sha256.as_str(), "{listed}");
    // By its device-key certificate: the id is read from it.
    let device = depin_gateway::identity::DeviceKey::generate();
    let pem_file = tmp.path().join("device.pem");
    std::fs::write(&pem_file, device.certificate().unwrap().pem).unwrap();
    let (code, out, err) = cli(&["add", "--device-cert", pem_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&device.gateway_id()), "{out}");
    let (code, _, err) = cli(&["add", "--id", &f.id(), "--cert-sha256", "abc"]);
    assert_eq!(code, 1);
    assert!(err.contains("64 hex digits"), "{err}");
    let mut collector = CollectorProcess::start(COLLECTOR_BIN, &config);
    let (status, _) = f
        .https
        .request("GET", "/v1/gateways", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The running collector holds collector.redb: the CLI says so.
    let (code, _, err) = cli(&["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by a running collector"), "{err}");
    collector.kill();
    let (code, out, err) = cli(&["revoke", "--id", &f.id()]);
    assert_eq!(code, 0, "{out}{err}");
    let _collector = CollectorProcess::start(COLLECTOR_BIN, &config);
    let (status, body) = f
        .https
        .request("GET", "/v1/gateways", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
}
