//! 5. Compute jobs: the same algorithms as job modules in the gateway's
//!    nested sandbox (wasm32-wasip1, fuel metered) vs natively compiled
//!    Rust, and the cost of fuel metering (metered vs unmetered engine).
//!
//! Each job run is the whole host path a plugin's `jobs.run` takes: wait
//! for a worker, hand the job to a blocking thread, a fresh store and
//! instance, copy the input in and the output out.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use depin_e2e::job_module;
use depin_gateway::jobs::{JobEngine, ModuleQuota, RunLimits};

const PLUGIN: &str = "bench";

struct Algorithm {
    name: &'static str,
    module: &'static str,
    input: Vec<u8>,
    native: fn(&[u8]) -> Vec<u8>,
}

fn algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm {
            name: "sha256 of 1 MiB",
            module: "sha256",
            input: (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect(),
            native: |i| test_jobs::sha256_hex(i).into_bytes(),
        },
        Algorithm {
            name: "prime sieve to 2,000,000",
            module: "primes",
            input: b"2000000".to_vec(),
            native: |i| {
                let n = test_jobs::parse_limit(i).expect("a number");
                test_jobs::prime_count(n).to_string().into_bytes()
            },
        },
        Algorithm {
            name: "grayscale + 3x3 blur, 256x256 RGB",
            module: "image",
            input: test_jobs::sample_image(256, 256),
            native: |i| test_jobs::gray_blur(i).expect("an image"),
        },
    ]
}

/// Runs the variants in interleaved rounds (one run of each per round,
/// so load drifts on a shared machine hit all of them alike) for at least
/// `budget` and 5 rounds; returns runs per second of each.
async fn rates<'a>(budget: Duration, variants: &mut [&mut dyn FnMut() -> Run<'a>]) -> Vec<f64> {
    for v in variants.iter_mut() {
        v().await; // warm up
    }
    let mut spent = vec![Duration::ZERO; variants.len()];
    let started = Instant::now();
    let mut rounds = 0u32;
    while rounds < 5 || started.elapsed() < budget {
        for (v, t) in variants.iter_mut().zip(&mut spent) {
            let s = Instant::now();
            v().await;
            *t += s.elapsed();
        }
        rounds += 1;
    }
    spent
        .iter()
        .map(|t| f64::from(rounds) / t.as_secs_f64())
        .collect()
}

type Run<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

fn boxed<'a>(f: impl std::future::Future<Output = ()> + 'a) -> Run<'a> {
    Box::pin(f)
}

fn open(dir: &Path, metered: bool) -> Arc<JobEngine> {
    let engine = if metered {
        JobEngine::open(dir, 1)
    } else {
        JobEngine::open_unmetered(dir, 1)
    };
    Arc::new(engine.expect("open the job engine"))
}

pub async fn jobs_vs_native(budget: Duration) {
    println!(
        "5. compute jobs: job module in the sandbox vs native Rust, fuel on vs off (one worker)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let metered = open(&dir.path().join("metered"), true);
    let unmetered = open(&dir.path().join("unmetered"), false);
    let limits = RunLimits {
        fuel: u64::MAX / 2,
        memory_bytes: 64 << 20,
        max_output: 1 << 20,
    };
    println!(
        "   {:<36} {:>10} {:>10} {:>10} {:>9} {:>9} {:>14}",
        "algorithm", "native/s", "job/s", "no-fuel/s", "native÷job", "fuel cost", "fuel per job"
    );
    for a in algorithms() {
        let wasm = job_module(a.module);
        let digest = metered
            .put_module(PLUGIN, wasm.clone(), &ModuleQuota::default())
            .await
            .expect("a valid module");
        unmetered
            .put_module(PLUGIN, wasm, &ModuleQuota::default())
            .await
            .expect("a valid module");
        let expected = (a.native)(&a.input);
        let first = metered
            .run(PLUGIN, &digest, a.input.clone(), limits)
            .await
            .expect("the job finishes");
        assert_eq!(first.output, expected, "{}: job and native agree", a.name);

        let input = &a.input;
        let native_fn = a.native;
        let (m, u, d) = (&metered, &unmetered, &digest);
        let expected_fuel = first.fuel;
        let mut native = move || {
            boxed(async move {
                std::hint::black_box(native_fn(std::hint::black_box(input)));
            })
        };
        let mut job = move || {
            boxed(async move {
                let out = m
                    .run(PLUGIN, d, input.clone(), limits)
                    .await
                    .expect("the job finishes");
                assert_eq!(out.fuel, expected_fuel, "deterministic fuel");
            })
        };
        let mut free = move || {
            boxed(async move {
                u.run(PLUGIN, d, input.clone(), limits)
                    .await
                    .expect("the job finishes");
            })
        };
        let r = rates(budget, &mut [&mut native, &mut job, &mut free]).await;
        let (native, job, free) = (r[0], r[1], r[2]);
        println!(
            "   {:<36} {:>10.1} {:>10.1} {:>10.1} {:>9.2}x {:>8.1}% {:>14}",
            a.name,
            native,
            job,
            free,
            native / job,
            (free / job - 1.0) * 100.0,
            first.fuel
        );
    }
    let tiny = metered
        .put_module(PLUGIN, job_module("exit7"), &ModuleQuota::default())
        .await
        .expect("a valid module");
    let m = &metered;
    let t = &tiny;
    let mut empty = move || {
        boxed(async move {
            let out = m
                .run(PLUGIN, t, Vec::new(), limits)
                .await
                .expect("the job finishes");
            assert_eq!(out.exit_code, 7);
        })
    };
    let per_job = 1e6 / rates(budget / 4, &mut [&mut empty]).await[0];
    println!(
        "   fixed cost of one job (worker hand-off, fresh store, instantiate; a module that prints a line): {per_job:.0} µs"
    );
    println!(
        "   native÷job: how many times faster native Rust is; fuel cost: extra time of a metered run over an unmetered one\n"
    );
}
