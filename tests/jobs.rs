//! The job engine on its own: real job modules built from Rust for
//! wasm32-wasip1, run in the nested deterministic sandbox.

use std::sync::Arc;

use depin_e2e::job_module;
use depin_gateway::jobs::{JobEngine, JobError, ModuleError, ModuleQuota, RunLimits};

const PLUGIN: &str = "compute";

fn limits(fuel: u64) -> RunLimits {
    RunLimits {
        fuel,
        memory_bytes: 32 << 20,
        max_output: 1 << 20,
    }
}

fn open(dir: &std::path::Path) -> Arc<JobEngine> {
    Arc::new(JobEngine::open(dir, 2).expect("open the job engine"))
}

async fn put(engine: &Arc<JobEngine>, name: &str) -> String {
    engine
        .put_module(PLUGIN, job_module(name), &ModuleQuota::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_jobs_give_right_answers_and_identical_fuel_on_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let sha = put(&engine, "sha256").await;
    let primes = put(&engine, "primes").await;
    let image = put(&engine, "image").await;

    let a = engine
        .run(PLUGIN, &sha, b"abc".to_vec(), limits(1 << 30))
        .await
        .unwrap();
    assert_eq!(a.output, test_jobs::sha256_hex(b"abc").as_bytes());
    assert_eq!(a.exit_code, 0);
    assert!(a.fuel > 0);
    let b = engine
        .run(PLUGIN, &sha, b"abc".to_vec(), limits(1 << 30))
        .await
        .unwrap();
    assert_eq!(a, b, "same job, same output and fuel");

    let p = engine
        .run(PLUGIN, &primes, b"100000".to_vec(), limits(1 << 32))
        .await
        .unwrap();
    assert_eq!(p.output, b"9592");

    let picture = test_jobs::sample_image(40, 30);
    let img = engine
        .run(PLUGIN, &image, picture.clone(), limits(1 << 32))
        .await
        .unwrap();
    assert_eq!(img.output, test_jobs::gray_blur(&picture).unwrap());

    // Exactly the fuel of the first run is enough; half of it is not.
    let exact = engine
        .run(PLUGIN, &sha, b"abc".to_vec(), limits(a.fuel))
        .await
        .unwrap();
    assert_eq!(exact, a);
    let short = engine
        .run(PLUGIN, &sha, b"abc".to_vec(), limits(a.fuel / 2))
        .await
        .unwrap_err();
    assert_eq!(short.error, JobError::FuelExhausted(a.fuel / 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_and_bad_input_are_results_not_failures() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let exit7 = put(&engine, "exit7").await;
    let out = engine
        .run(PLUGIN, &exit7, Vec::new(), limits(1 << 30))
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.output.as_slice()),
        (7, &b"leaving with 7\n"[..])
    );
    let primes = put(&engine, "primes").await;
    let out = engine
        .run(PLUGIN, &primes, b"not a number".to_vec(), limits(1 << 30))
        .await
        .unwrap();
    assert_eq!((out.exit_code, out.output.len()), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_hit_their_limits_and_others_run_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let spin = put(&engine, "spin").await;
    let bomb = put(&engine, "membomb").await;
    let sha = put(&engine, "sha256").await;

    let f = engine
        .run(PLUGIN, &spin, Vec::new(), limits(50_000_000))
        .await
        .unwrap_err();
    assert_eq!(f.error, JobError::FuelExhausted(50_000_000));
    assert_eq!(f.fuel, 50_000_000, "all the fuel was burned");

    let f = engine
        .run(PLUGIN, &bomb, Vec::new(), limits(1 << 36))
        .await
        .unwrap_err();
    assert_eq!(f.error, JobError::MemoryLimit(32 << 20));

    let f = engine
        .run(
            PLUGIN,
            &sha,
            b"abc".to_vec(),
            RunLimits {
                max_output: 10,
                ..limits(1 << 30)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(f.error, JobError::OutputTooLarge(10));

    let missing = format!("sha256:{}", "0".repeat(64));
    let f = engine
        .run(PLUGIN, &missing, Vec::new(), limits(1 << 30))
        .await
        .unwrap_err();
    assert_eq!(f.error, JobError::UnknownModule(missing));
    let f = engine
        .run(PLUGIN, "../../etc/passwd", Vec::new(), limits(1 << 30))
        .await
        .unwrap_err();
    assert!(matches!(f.error, JobError::UnknownModule(_)), "{f:?}");

    let ok = engine
        .run(PLUGIN, &sha, b"still fine".to_vec(), limits(1 << 30))
        .await
        .unwrap();
    assert_eq!(ok.output, test_jobs::sha256_hex(b"still fine").as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_with_forbidden_imports_or_no_wasm_are_refused_at_upload() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let e = engine
        .put_module(PLUGIN, job_module("forbidden"), &ModuleQuota::default())
        .await
        .unwrap_err();
    let ModuleError::Invalid(reason) = &e else {
        panic!("{e:?}")
    };
    assert!(
        reason.contains("wasi_snapshot_preview1::path_open"),
        "{reason}"
    );
    assert!(reason.contains("clock_time_get"), "{reason}");
    let e = engine
        .put_module(PLUGIN, b"hello".to_vec(), &ModuleQuota::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a WebAssembly module"), "{e}");
    let e = engine
        .put_module(
            PLUGIN,
            job_module("sha256"),
            &ModuleQuota {
                max_module_bytes: 100,
                ..ModuleQuota::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ModuleError::TooLarge { limit: 100, .. }),
        "{e:?}"
    );
    // A refused module is not stored.
    let digest = depin_gateway::jobs::digest(&job_module("forbidden"));
    assert!(!engine.has_module(PLUGIN, &digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_survive_a_restart_and_stay_private_to_their_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let (sha, before) = {
        let engine = open(dir.path());
        let sha = put(&engine, "sha256").await;
        let out = engine
            .run(PLUGIN, &sha, b"abc".to_vec(), limits(1 << 30))
            .await
            .unwrap();
        (sha, out)
    };
    // A new engine loads the compiled code from the on-disk cache.
    let engine = open(dir.path());
    assert!(engine.has_module(PLUGIN, &sha));
    assert!(!engine.has_module("other", &sha));
    let out = engine
        .run(PLUGIN, &sha, b"abc".to_vec(), limits(1 << 30))
        .await
        .unwrap();
    assert_eq!(out, before, "same output and fuel after a restart");
    let f = engine
        .run("other", &sha, b"abc".to_vec(), limits(1 << 30))
        .await
        .unwrap_err();
    assert!(matches!(f.error, JobError::UnknownModule(_)), "{f:?}");
}
