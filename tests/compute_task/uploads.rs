//! Module uploads of the compute-task plugin under an attacker: a token is
//! required, each plugin's module store has a quota with least-recently-used
//! eviction, and compiles run in their own slots so a flood of uploads does
//! not hold up jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use depin_e2e::{Home, HttpClient, PluginSpec, job_module, plugin, put_job_module};
use depin_gateway::RunningGateway;

use super::{finished, json, submit};

/// The compute plugin at `/c` with `jobs` lines added to `[plugin.jobs]`,
/// `config` as its `[plugin.config]` and `extra` top-level TOML.
fn home_with(jobs: &str, config: &'static str, extra: &str) -> Home {
    let table: &'static str = Box::leak(
        format!(
            "tick_interval_ms = 50\n[plugin.jobs]\nmax_fuel = 20000000000\nmax_memory_mb = 64\n{jobs}\n"
        )
        .into_boxed_str(),
    );
    Home::new(
        &[
            PluginSpec::new("compute", plugin("compute_task_plugin"), "/c")
                .table(table)
                .limits("wall_ms = 120000")
                .config(config),
        ],
        extra,
    )
}

async fn upload(http: &HttpClient, wasm: Vec<u8>) -> (u16, String) {
    let r = put_job_module(http, "/c", wasm).await.unwrap();
    let text = r.text();
    (r.status, text)
}

fn digest_of(text: &str) -> String {
    json(text.as_bytes())["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no digest in {text}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_need_the_configured_token_and_are_off_without_one() {
    let home = home_with("", depin_e2e::COMPUTE_TASK_CONFIG, "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let wasm = Bytes::from(job_module("sha256"));
    let r = http.send("PUT", "/c/modules", wasm.clone()).await.unwrap();
    assert_eq!(r.status, 401, "no token: {}", r.text());
    assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    let wrong = [(
        "authorization".to_string(),
        "Bearer test-upload-token-0124".to_string(),
    )];
    let r = http
        .send_with_headers("PUT", "/c/modules", &wrong, wasm.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 401, "wrong token: {}", r.text());
    let digest = depin_gateway::jobs::digest(&wasm);
    assert_eq!(
        http.get(&format!("/c/modules/{digest}")).await.status,
        404,
        "nothing was stored"
    );
    let (status, text) = upload(&http, wasm.to_vec()).await;
    assert_eq!(status, 201, "{text}");
    gw.shutdown().await;

    // Without a configured token nobody may upload.
    let home = home_with("", "default_memory_mb = 32", "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let (status, text) = upload(&http, wasm.to_vec()).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("upload_token"), "{text}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_module_quota_the_least_recently_used_module_is_evicted() {
    let home = home_with("max_modules = 2", depin_e2e::COMPUTE_TASK_CONFIG, "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let (_, sha) = upload(&http, job_module("sha256")).await;
    let sha = digest_of(&sha);
    let (_, exit7) = upload(&http, job_module("exit7")).await;
    let exit7 = digest_of(&exit7);
    // Running a job uses `sha`: `exit7` is now the least recently used.
    let job = submit(&http, &format!("module={sha}"), "used").await;
    assert_eq!(finished(&http, &job).await["state"], "done");
    let metrics = depin_gateway::metrics::global();
    let evicted_before = metrics.modules_evicted("compute");
    let (status, primes) = upload(&http, job_module("primes")).await;
    assert_eq!(status, 201, "{primes}");
    // Counted (the registry is shared by every gateway in this process,
    // so other tests may add to it, never take away).
    assert!(metrics.modules_evicted("compute") > evicted_before);
    assert!(
        metrics
            .render_prometheus()
            .contains("depin_job_modules_evicted_total{plugin=\"compute\"}")
    );
    let primes = digest_of(&primes);
    let stored = |d: String| {
        let http = &http;
        async move { http.get(&format!("/c/modules/{d}")).await.status }
    };
    assert_eq!(stored(exit7.clone()).await, 404, "evicted");
    assert_eq!(stored(sha.clone()).await, 200, "recently used, kept");
    assert_eq!(stored(primes.clone()).await, 200);
    let modules = home.data_dir().join("jobs/modules/compute");
    assert_eq!(std::fs::read_dir(&modules).unwrap().count(), 2, "on disk");
    gw.shutdown().await;

    // The order of use survives a restart: `sha` is now the oldest.
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("restart");
    let http = HttpClient::new(gw.http_addr);
    let (status, text) = upload(&http, job_module("exit7")).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(
        http.get(&format!("/c/modules/{sha}")).await.status,
        404,
        "the least recently used before the restart goes first"
    );
    assert_eq!(http.get(&format!("/c/modules/{primes}")).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_larger_than_the_whole_store_is_refused_with_413() {
    let wasm = job_module("sha256");
    let home = home_with(
        // Room for the module, not for its compiled code as well.
        &format!("max_stored_bytes = {}", wasm.len() + 1024),
        depin_e2e::COMPUTE_TASK_CONFIG,
        "",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let (status, text) = upload(&http, wasm.clone()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(&(wasm.len() + 1024).to_string()), "{text}");
    let digest = depin_gateway::jobs::digest(&wasm);
    assert_eq!(
        http.get(&format!("/c/modules/{digest}")).await.status,
        404,
        "a refused module is not kept"
    );
    let modules = home.data_dir().join("jobs/modules/compute");
    assert_eq!(std::fs::read_dir(&modules).unwrap().count(), 0);
    gw.shutdown().await;
}

/// A valid job module of about `kib` KiB of straight-line arithmetic: slow
/// to compile, and unique per `nonce`.
fn slow_to_compile(nonce: u32, kib: usize) -> Vec<u8> {
    fn leb(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    const OPS_PER_FUNCTION: usize = 2000;
    // local.get 0, then (i32.const c, i32.add, i32.const c, i32.mul,
    // i32.const c, i32.xor) repeated, then end.
    let mut heavy = vec![0x00, 0x20, 0x00];
    for i in 0..OPS_PER_FUNCTION {
        let c = 1 + (i % 60) as u8;
        heavy.extend_from_slice(&[0x41, c, 0x6a, 0x41, c ^ 0x15, 0x6c, 0x41, c, 0x73]);
    }
    heavy.push(0x0b);
    let functions = (kib << 10) / heavy.len() + 1;

    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[2, 0x60, 0, 0, 0x60, 1, 0x7f, 1, 0x7f], &mut m);
    let mut funcs = Vec::new();
    leb(functions as u64 + 1, &mut funcs);
    funcs.push(0);
    funcs.extend(std::iter::repeat_n(1, functions));
    section(3, &funcs, &mut m);
    section(5, &[1, 0, 1], &mut m);
    let mut exports = vec![2, 6];
    exports.extend_from_slice(b"_start");
    exports.extend_from_slice(&[0, 0, 6]);
    exports.extend_from_slice(b"memory");
    exports.extend_from_slice(&[2, 0]);
    section(7, &exports, &mut m);
    let mut code = Vec::new();
    leb(functions as u64 + 1, &mut code);
    code.extend_from_slice(&[2, 0x00, 0x0b]);
    for _ in 0..functions {
        leb(heavy.len() as u64, &mut code);
        code.extend_from_slice(&heavy);
    }
    section(10, &code, &mut m);
    let mut custom = vec![5];
    custom.extend_from_slice(b"nonce");
    custom.extend_from_slice(&nonce.to_le_bytes());
    section(0, &custom, &mut m);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_uploads_does_not_stop_jobs_from_running() {
    const UPLOADS: usize = 6;
    let home = home_with(
        "max_module_bytes = 8388608",
        depin_e2e::COMPUTE_TASK_CONFIG,
        "[http]\nmax_body_bytes = 8388608\ncall_timeout_ms = 120000\n",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let (_, sha) = upload(&http, job_module("sha256")).await;
    let sha = digest_of(&sha);

    let done = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for nonce in 0..UPLOADS as u32 {
        let (http, done) = (http.clone(), done.clone());
        flood.push(tokio::spawn(async move {
            let (status, text) = upload(&http, slow_to_compile(nonce, 6 << 10)).await;
            done.fetch_add(1, Ordering::SeqCst);
            (status, text)
        }));
    }
    // Let every upload reach its compile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = submit(&http, &format!("module={sha}"), "during the flood").await;
    let job = finished(&http, &job).await;
    let uploads_done = done.load(Ordering::SeqCst);
    eprintln!("the job finished with {uploads_done} of {UPLOADS} compiles done");
    assert_eq!(job["state"], "done", "{job}");
    assert!(
        uploads_done <= UPLOADS / 2,
        "the job waited for {uploads_done} of {UPLOADS} compiles"
    );
    for upload in flood {
        let (status, text) = upload.await.unwrap();
        assert_eq!(status, 201, "{text}");
    }
    gw.shutdown().await;
}
