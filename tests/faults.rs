//! Storage faults: a full disk under load is reported by readiness and
//! health, ends the process with a non-zero status, loses nothing that was
//! acknowledged, and a restart with space freed resumes on an intact chain.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depin_e2e::{
    GatewayProcess, Home, HttpClient, PluginSpec, plugin, request_ids_in_ledger, verify_ledger,
};
use depin_gateway::ledger::LedgerReader;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

/// A size-limited tmpfs mounted over a directory, unmounted when dropped.
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "24m") at `at`; `Err` with the reason
    /// where mounting is not allowed (not root, no CAP_SYS_ADMIN).
    pub fn mount(at: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Self {
            at: at.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

/// Mounts a tmpfs of `size` as the home's data directory, keeping the
/// device key; `None` (after saying why) where mounting is not allowed.
pub fn data_dir_on_tmpfs(home: &Home, size: &str) -> Option<Tmpfs> {
    let key = std::fs::read(home.key_path()).expect("device key");
    let mount = match Tmpfs::mount(&home.data_dir(), size) {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "SKIPPED: this test needs to mount a size-limited tmpfs as data_dir \
                 (run it as root); mount said: {why}"
            );
            return None;
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(home.key_path())
        .expect("key on the tmpfs");
    f.write_all(&key).unwrap();
    Some(mount)
}

/// Writes `path` until the file system is full; returns the bytes written.
pub fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_readiness_exits_non_zero_and_loses_no_acknowledged_request() {
    let home = Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")],
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let Some(_mount) = data_dir_on_tmpfs(&home, "32m") else {
        return;
    };
    let data_dir = home.data_dir();
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let admin = HttpClient::new(gw.admin_addr.expect("admin listener"));
    assert_eq!(admin.get("/readyz").await.status, 200);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (http, acked, refused) = (http.clone(), acked.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            loop {
                match http.send("POST", "/t/echo", "some payload bytes").await {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().push(r.request_id()),
                    Ok(r) if r.status == 503 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(r) => panic!("unexpected status {} {}", r.status, r.text()),
                    Err(_) => break, // the gateway is gone
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Fill the disk while the clients go on writing.
    let filler = data_dir.join("filler");
    let filled = tokio::task::spawn_blocking({
        let filler = filler.clone();
        move || fill(&filler)
    })
    .await
    .unwrap();
    assert!(filled > 0);

    // Readiness and health turn 503 once the ledger cannot store.
    let deadline = Instant::now() + Duration::from_secs(60);
    let readiness = loop {
        let r = admin.send("GET", "/readyz", "").await;
        match r {
            Ok(r) if r.status == 503 => break r,
            Ok(_) => {}
            Err(e) => panic!("the gateway went away before /readyz said 503: {e}"),
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        readiness.text().contains("storage failed"),
        "{}",
        readiness.text()
    );
    let health = admin.get("/healthz").await;
    assert_eq!(health.status, 503, "{}", health.text());

    // The process ends by itself, with the status a supervisor restarts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(75), "exit status");
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "clients were answered 503 while the disk was full"
    );
    let logs = gw.stderr_lines.lock().unwrap().join("\n");
    assert!(logs.contains("ledger storage failed"), "{logs}");

    // Space freed: the restarted gateway replays its log and serves again.
    std::fs::remove_file(&filler).unwrap();
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let admin = HttpClient::new(gw.admin_addr.expect("admin listener"));
    assert_eq!(admin.get("/readyz").await.status, 200);
    let after = HttpClient::new(gw.addr)
        .send("POST", "/t/echo", "after")
        .await
        .unwrap();
    assert_eq!(after.status, 200);
    unsafe { libc::kill(gw.child.id() as i32, libc::SIGTERM) };
    let status = gw.child.wait().unwrap();
    // Let the log reader take the last lines.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        status.success(),
        "clean exit on SIGTERM, not {status:?}: {}",
        gw.stderr_lines.lock().unwrap().join("\n")
    );

    verify_ledger(BIN, &data_dir, "the disk filled up");
    let in_ledger = request_ids_in_ledger(&data_dir);
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<_> = acked.iter().filter(|id| !in_ledger.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged requests lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    assert!(in_ledger.contains(&after.request_id()));
    eprintln!(
        "disk full: {} acknowledged, {} refused with 503, 0 lost",
        acked.len(),
        refused.load(Ordering::Relaxed)
    );
}

/// The compiled file of the component at `component` in `data_dir`.
fn compiled_file_of(data_dir: &Path, component: &Path) -> PathBuf {
    let digest = depin_gateway::jobs::digest(&std::fs::read(component).unwrap());
    let hex = digest.trim_start_matches("sha256:");
    std::fs::read_dir(data_dir.join("compiled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{hex}-"))
        })
        .expect("the component was cached")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_or_altered_compiled_component_is_compiled_again_with_a_warning() {
    let home = Home::new(
        &[
            PluginSpec::new("template", plugin("template_plugin"), "/t"),
            PluginSpec::new("hostile", plugin("hostile_plugin"), "/h"),
        ],
        "",
    );
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let before = HttpClient::new(gw.addr).get("/t/hello?name=ada").await;
    assert_eq!(before.status, 200);
    assert!(gw.terminate());
    let template = compiled_file_of(&home.data_dir(), &plugin("template_plugin"));
    let hostile = compiled_file_of(&home.data_dir(), &plugin("hostile_plugin"));
    // Another component's compiled code, valid in itself, under the
    // template's name; and a bit flipped in the hostile plugin's code.
    std::fs::copy(&hostile, &template).unwrap();
    let mut bytes = std::fs::read(&hostile).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&hostile, &bytes).unwrap();

    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let after = http.get("/t/hello?name=ada").await;
    assert_eq!((after.status, after.text()), (200, before.text()));
    assert_eq!(http.get("/h/ok").await.status, 200);
    assert!(gw.terminate());
    let logs = gw.stderr_lines.lock().unwrap().join("\n");
    let warnings = logs
        .lines()
        .filter(|l| l.contains("discarding compiled component from the cache"))
        .count();
    assert_eq!(warnings, 2, "{logs}");
    assert!(logs.contains("MAC does not check out"), "{logs}");
    // Both were compiled again and cached afresh.
    assert_ne!(
        std::fs::read(&template).unwrap(),
        std::fs::read(&hostile).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_compiled_job_module_is_compiled_again_and_the_job_runs() {
    use depin_gateway::jobs::{JobEngine, RunLimits};
    use depin_gateway::runtime::CodeSeal;
    let dir = tempfile::tempdir().unwrap();
    let seal = CodeSeal::ephemeral();
    let open = || {
        Arc::new(
            JobEngine::open(dir.path(), 1)
                .unwrap()
                .with_code_seal(seal.clone()),
        )
    };
    let limits = RunLimits {
        fuel: 1 << 30,
        memory_bytes: 32 << 20,
        max_output: 1 << 20,
    };
    let wasm = depin_e2e::job_module("sha256");
    let engine = open();
    let digest = engine
        .put_module("compute", wasm, &Default::default())
        .await
        .unwrap();
    let expected = engine
        .run("compute", &digest, b"abc".to_vec(), limits)
        .await
        .unwrap();
    drop(engine);
    let compiled = std::fs::read_dir(dir.path().join("compiled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("compiled code cached");
    let mut bytes = std::fs::read(&compiled).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&compiled, &bytes).unwrap();
    assert!(seal.read(&compiled).is_err());

    let engine = open();
    let got = engine
        .run("compute", &digest, b"abc".to_vec(), limits)
        .await
        .unwrap();
    assert_eq!(got, expected);
    assert!(seal.read(&compiled).is_ok(), "cached again, sealed");
}

/// Sums `depin_plugin_log_dropped_total` of `plugin` in a metrics page.
fn log_dropped(metrics: &str, plugin: &str) -> u64 {
    let prefix = format!("depin_plugin_log_dropped_total{{plugin=\"{plugin}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_cut_per_call_and_per_plugin_counted_and_noticed_once() {
    let home = Home::new(
        &[PluginSpec::new("flooder", plugin("hostile_plugin"), "/h").limits("cpu_ms = 500")],
        "[admin]\nlisten = \"127.0.0.1:0\"\nopen_metrics = true\n",
    );
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let http = HttpClient::new(gw.addr);
    let admin = HttpClient::new(gw.admin_addr.expect("admin listener"));
    // Four calls, each logging 4 KiB lines in a loop for 500 ms.
    for _ in 0..4 {
        let r = http.get("/h/log-flood").await;
        assert_eq!(r.status, 500, "ends at its deadline: {}", r.text());
    }
    assert_eq!(http.get("/h/ok").await.status, 200);
    let metrics = admin.get("/metrics").await.text();
    let dropped = log_dropped(&metrics, "flooder");
    assert!(
        dropped > 1000,
        "dropped lines are counted: {dropped}\n{metrics}"
    );
    assert!(gw.terminate());
    let logs = gw.stderr_lines.lock().unwrap().clone();
    let kept = logs
        .iter()
        .filter(|l| l.contains("\"target\":\"plugin\"") && l.contains("xxxx"))
        .count();
    // At most 256 lines per call, and far fewer bytes than one unbounded
    // call wrote (tens of MB).
    assert!(kept > 0 && kept <= 4 * 256, "{kept} plugin lines kept");
    let log_bytes: usize = logs.iter().map(|l| l.len()).sum();
    assert!(
        log_bytes < 4 << 20,
        "the log stayed small: {log_bytes} bytes"
    );
    let notices = logs
        .iter()
        .filter(|l| l.contains("plugin log lines dropped"))
        .count();
    assert_eq!(notices, 1, "said once (within the notice interval)");
    eprintln!(
        "log flood: 4 calls x 500 ms of 4 KiB lines: {kept} lines kept \
         ({log_bytes} log bytes), {dropped} dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lets_the_tick_in_flight_finish_so_its_job_runs_once() {
    use depin_gateway::RunningGateway;
    let home = Home::new(
        &[
            PluginSpec::new("compute", plugin("compute_task_plugin"), "/c")
                .table(
                    "tick_interval_ms = 50\n[plugin.jobs]\nqueue_limit = 10\n\
                 max_fuel = 20000000000\nmax_memory_mb = 64\n",
                )
                .config(depin_e2e::COMPUTE_TASK_CONFIG),
        ],
        "",
    );
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    let http = HttpClient::new(gw.http_addr);
    let r = depin_e2e::put_job_module(&http, "/c", depin_e2e::job_module("spin"))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let spin: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let spin = spin["digest"].as_str().unwrap().to_string();
    // A job that runs for a while (until its fuel is gone).
    let fuel = 20_000_000_000u64;
    let r = http
        .send("POST", &format!("/c/jobs?module={spin}&fuel={fuel}"), "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let id = id["id"].as_str().unwrap().to_string();
    // A tick has taken it; reload while it runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.reload("test").await.expect("reload");
    // The tick in flight ran to its end and committed: the job is done,
    // not back in the queue to run again.
    let job: serde_json::Value =
        serde_json::from_slice(&http.get(&format!("/c/jobs/{id}")).await.body).unwrap();
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["result"]["fuel_used"], fuel, "{job}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.shutdown().await;
    let reader = LedgerReader::open(&home.data_dir()).unwrap();
    let mut runs = 0;
    reader
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            if r.unit == "job-fuel" {
                runs += 1;
            }
            true
        })
        .unwrap();
    assert_eq!(runs, 1, "the job ran once");
}
