//! The compute-task plugin end to end: modules uploaded and jobs submitted
//! over HTTP, run on tick in the nested sandbox, metered, proven and
//! verified by re-execution, surviving restarts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, job_module, plugin, put_job_module};
use depin_gateway::RunningGateway;
use depin_gateway::ledger::{LedgerReader, Source, UsageRecord};
use depin_gateway::runtime::contract::{Challenge, Proof};
use serde_json::Value;

mod uploads;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

/// The compute plugin at `/c`, draining its queue every 50 ms when `ticks`.
fn home(ticks: bool, queue_limit: u32) -> Home {
    let table: &'static str = Box::leak(
        format!(
            "{}\n[plugin.jobs]\nqueue_limit = {queue_limit}\nmax_fuel = 20000000000\nmax_memory_mb = 64\n",
            if ticks { "tick_interval_ms = 50" } else { "" }
        )
        .into_boxed_str(),
    );
    Home::new(
        &[
            PluginSpec::new("compute", plugin("compute_task_plugin"), "/c")
                .table(table)
                .config(depin_e2e::COMPUTE_TASK_CONFIG),
            PluginSpec::new("template", plugin("template_plugin"), "/t"),
        ],
        "",
    )
}

async fn upload(http: &HttpClient, name: &str) -> String {
    let r = put_job_module(http, "/c", job_module(name)).await.unwrap();
    assert_eq!(r.status, 201, "{name}: {}", r.text());
    json(&r.body)["digest"].as_str().unwrap().to_string()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

async fn submit(http: &HttpClient, query: &str, input: impl Into<Bytes>) -> String {
    let r = http
        .send("POST", &format!("/c/jobs?{query}"), input.into())
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    json(&r.body)["id"].as_str().unwrap().to_string()
}

/// Polls the job until it leaves the queue.
async fn finished(http: &HttpClient, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http.get(&format!("/c/jobs/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let job = json(&r.body);
        if job["state"] != "queued" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} still queued: {job}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn records(home: &Home) -> Vec<UsageRecord> {
    let reader = LedgerReader::open(&home.data_dir()).expect("open the ledger");
    let mut all = Vec::new();
    reader
        .for_each(|_, r| {
            all.push(r.expect("decodable record").2);
            true
        })
        .unwrap();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_with_right_outputs_identical_fuel_and_attested_metering() {
    let home = home(true, 100);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let sha = upload(&http, "sha256").await;
    let primes = upload(&http, "primes").await;
    let image = upload(&http, "image").await;
    assert_eq!(
        upload(&http, "sha256").await,
        sha,
        "uploading twice is fine"
    );
    assert_eq!(http.get(&format!("/c/modules/{sha}")).await.status, 200);

    let picture = test_jobs::sample_image(32, 24);
    let a = submit(
        &http,
        &format!("module={sha}&submitter=alice"),
        "hello jobs",
    )
    .await;
    let b = submit(&http, &format!("module={sha}&submitter=bob"), "hello jobs").await;
    let p = submit(&http, &format!("module={primes}&priority=9"), "200000").await;
    let i = submit(&http, &format!("module={image}"), picture.clone()).await;

    let (a, b) = (finished(&http, &a).await, finished(&http, &b).await);
    assert_eq!(a["state"], "done", "{a}");
    assert_eq!(a["output"], test_jobs::sha256_hex(b"hello jobs"));
    assert_eq!(a["result"]["exit_code"], 0);
    assert_eq!(a["output"], b["output"], "same job, same output");
    assert_eq!(
        a["result"]["fuel_used"], b["result"]["fuel_used"],
        "same job, same fuel"
    );
    let p = finished(&http, &p).await;
    assert_eq!(p["output"], test_jobs::prime_count(200_000).to_string());
    let i_id = i.clone();
    let i = finished(&http, &i).await;
    assert_eq!(i["state"], "done", "{i}");
    let raw = http.get(&format!("/c/jobs/{i_id}/output")).await;
    assert_eq!(raw.body.as_ref(), test_jobs::gray_blur(&picture).unwrap());

    let done = json(&http.get("/c/jobs?state=done").await.body);
    assert_eq!(done["jobs"].as_array().unwrap().len(), 4, "{done}");
    gw.shutdown().await;

    // The host attested each job's fuel, per submitter; the plugin claimed
    // each completion with the same evidence hash.
    let all = records(&home);
    let fuel_of = |who: &str| -> Vec<&UsageRecord> {
        all.iter()
            .filter(|r| r.unit == "job-fuel" && r.subject.as_deref() == Some(who))
            .collect()
    };
    let alice = fuel_of("alice");
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].source, Source::Host);
    assert_eq!(Value::from(alice[0].quantity), a["result"]["fuel_used"]);
    let claim = all
        .iter()
        .find(|r| r.unit == "jobs-completed" && r.subject.as_deref() == Some("alice"))
        .expect("a completion claim for alice");
    assert_eq!(claim.source, Source::Plugin);
    assert_eq!(claim.evidence, alice[0].evidence);
    assert_eq!(fuel_of("bob")[0].quantity, alice[0].quantity);
    assert_eq!(fuel_of("anonymous").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_fail_with_their_limit_and_the_gateway_goes_on() {
    let home = home(true, 100);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);

    let r = put_job_module(&http, "/c", job_module("forbidden"))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("path_open"), "{}", r.text());
    let r = put_job_module(&http, "/c", "not wasm").await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    let spin = upload(&http, "spin").await;
    let bomb = upload(&http, "membomb").await;
    let sha = upload(&http, "sha256").await;
    let s = submit(&http, &format!("module={spin}&fuel=30000000"), "").await;
    let m = submit(&http, &format!("module={bomb}&memory_mb=8"), "").await;
    let ok = submit(&http, &format!("module={sha}"), "fine").await;

    let s = finished(&http, &s).await;
    assert_eq!(
        (s["state"].as_str(), s["result"]["error"].as_str()),
        (Some("failed"), Some("fuel exhausted")),
        "{s}"
    );
    assert_eq!(s["result"]["fuel_used"], 30_000_000);
    let m = finished(&http, &m).await;
    assert_eq!(
        (m["state"].as_str(), m["result"]["error"].as_str()),
        (Some("failed"), Some("memory limit")),
        "{m}"
    );
    let ok = finished(&http, &ok).await;
    assert_eq!(ok["output"], test_jobs::sha256_hex(b"fine"));
    assert_eq!(
        http.get("/t/hello").await.status,
        200,
        "another plugin serves"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_with_the_reason() {
    let home = home(false, 100);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let sha = upload(&http, "sha256").await;
    let zero = format!("sha256:{}", "0".repeat(64));
    for (method, path, status, says) in [
        ("POST", "/c/jobs".to_string(), 400, "`module`"),
        (
            "POST",
            format!("/c/jobs?module={zero}"),
            400,
            "PUT /modules",
        ),
        (
            "POST",
            format!("/c/jobs?module={sha}&fuel=99999999999999"),
            400,
            "fuel must be",
        ),
        (
            "POST",
            format!("/c/jobs?module={sha}&fuel=lots"),
            400,
            "`fuel`",
        ),
        (
            "POST",
            format!("/c/jobs?module={sha}&priority=300"),
            400,
            "priority",
        ),
        (
            "GET",
            "/c/jobs?state=bogus".to_string(),
            400,
            "state must be",
        ),
        (
            "GET",
            "/c/jobs/000000000001-nothere".to_string(),
            404,
            "no job",
        ),
        ("GET", format!("/c/modules/{zero}"), 404, "no module"),
        ("DELETE", "/c/jobs".to_string(), 405, "not allowed"),
    ] {
        let r = http.send(method, &path, Bytes::new()).await.unwrap();
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(r.text().contains(says), "{method} {path}: {}", r.text());
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_restarts_lose_no_job() {
    // No ticks: jobs stay queued.
    let home = home(false, 2);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let sha = upload(&http, "sha256").await;
    let first = submit(&http, &format!("module={sha}"), "one").await;
    let second = submit(&http, &format!("module={sha}"), "two").await;
    let r = http
        .send("POST", &format!("/c/jobs?module={sha}"), "three")
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    gw.shutdown().await;

    // Restart with ticks on: the queued jobs run.
    let mut config = home.config();
    config.plugins[0].tick_interval_ms = Some(50);
    let gw = RunningGateway::start(&config).await.expect("restart");
    let http = HttpClient::new(gw.http_addr);
    for (id, input) in [(&first, "one"), (&second, "two")] {
        let job = finished(&http, id).await;
        assert_eq!(
            job["output"],
            test_jobs::sha256_hex(input.as_bytes()),
            "{job}"
        );
    }
    gw.shutdown().await;

    // And a second restart still has them, finished.
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("restart");
    let http = HttpClient::new(gw.http_addr);
    let done = json(&http.get("/c/jobs?state=done").await.body);
    assert_eq!(done["jobs"], serde_json::json!([first, second]));
    assert_eq!(
        json(&http.get("/c/jobs?state=queued").await.body)["jobs"],
        serde_json::json!([])
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_proofs_verify_by_re_execution_and_forgeries_do_not() {
    let home = home(true, 100);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let primes = upload(&http, "primes").await;
    let plugin = gw.plugins[0].clone();
    let id: std::sync::Arc<str> = "challenge-test".into();

    let canary = Challenge {
        id: "c1".into(),
        kind: "canary".into(),
        nonce: b"fresh nonce".to_vec(),
        params: serde_json::to_vec(&serde_json::json!({
            "module": primes, "input_hex": hex::encode("50000"), "fuel": 5_000_000_000u64, "memory_mb": 16
        }))
        .unwrap(),
    };
    let proof = plugin
        .prove(&id, canary.clone())
        .await
        .result
        .unwrap()
        .expect("a canary proof");
    let payload = json(&proof.payload);
    assert_eq!(
        hex::decode(payload["output_hex"].as_str().unwrap()).unwrap(),
        test_jobs::prime_count(50_000).to_string().as_bytes()
    );
    assert!(
        plugin
            .verify(&id, canary.clone(), proof.clone())
            .await
            .result
            .unwrap()
    );

    // A proof with different fuel, output or nonce does not verify.
    for field in ["fuel", "output_hex", "binding"] {
        let mut forged = payload.clone();
        forged[field] = match field {
            "fuel" => Value::from(payload["fuel"].as_u64().unwrap() - 1),
            "output_hex" => Value::from(hex::encode("5134")),
            _ => Value::from("00".repeat(32)),
        };
        let forged = Proof {
            challenge_id: proof.challenge_id.clone(),
            payload: serde_json::to_vec(&forged).unwrap(),
        };
        assert!(
            !plugin
                .verify(&id, canary.clone(), forged)
                .await
                .result
                .unwrap(),
            "{field}"
        );
    }
    let other_nonce = Challenge {
        nonce: b"another nonce".to_vec(),
        ..canary.clone()
    };
    assert!(!plugin.verify(&id, other_nonce, proof).await.result.unwrap());

    // Inclusion of a finished job, checked against the ledger's evidence.
    let job = submit(&http, &format!("module={primes}&submitter=carol"), "1000").await;
    finished(&http, &job).await;
    let ask = |evidence: Option<String>| Challenge {
        id: "c2".into(),
        kind: "job-inclusion".into(),
        nonce: Vec::new(),
        params: serde_json::to_vec(&serde_json::json!({ "job": job, "evidence": evidence }))
            .unwrap(),
    };
    let proof = plugin
        .prove(&id, ask(None))
        .await
        .result
        .unwrap()
        .expect("inclusion proof");
    drop(plugin);
    gw.shutdown().await;
    let ledger_evidence = records(&home)
        .into_iter()
        .find(|r| r.unit == "job-fuel" && r.subject.as_deref() == Some("carol"))
        .and_then(|r| r.evidence)
        .map(hex::encode)
        .expect("the host's record of carol's job");
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("restart");
    let plugin = gw.plugins[0].clone();
    assert!(
        plugin
            .verify(&id, ask(Some(ledger_evidence)), proof.clone())
            .await
            .result
            .unwrap()
    );
    assert!(
        !plugin
            .verify(&id, ask(Some("00".repeat(32))), proof)
            .await
            .result
            .unwrap()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_finished_jobs_survive_kill_9() {
    let home = home(false, 100);
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let sha = upload(&http, "sha256").await;
    let a = submit(&http, &format!("module={sha}"), "before the crash").await;
    let b = submit(&http, &format!("module={sha}&priority=7"), "also before").await;
    gw.kill_9();

    // Back up with ticks on: both queued jobs run.
    let text = std::fs::read_to_string(&home.config_path).unwrap();
    let ticking = text.replacen("[plugin.jobs]", "tick_interval_ms = 50\n[plugin.jobs]", 1);
    std::fs::write(&home.config_path, ticking).unwrap();
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    for (id, input) in [(&a, "before the crash"), (&b, "also before")] {
        let job = finished(&http, id).await;
        assert_eq!(
            job["output"],
            test_jobs::sha256_hex(input.as_bytes()),
            "{job}"
        );
    }
    gw.kill_9();

    // And once more: the finished jobs and their outputs are still there.
    let gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let done = json(&http.get("/c/jobs?state=done").await.body);
    assert_eq!(done["jobs"], serde_json::json!([a, b]));
    let raw = http.get(&format!("/c/jobs/{b}/output")).await;
    assert_eq!(
        raw.body.as_ref(),
        test_jobs::sha256_hex(b"also before").as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_jobs_table_the_plugin_refuses_to_load_and_says_why() {
    let home = Home::new(
        &[PluginSpec::new(
            "compute",
            plugin("compute_task_plugin"),
            "/c",
        )],
        "",
    );
    let e = RunningGateway::start(&home.config())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("plugin `compute`"), "{e}");
    assert!(e.contains("add a [plugin.jobs] table"), "{e}");
}
