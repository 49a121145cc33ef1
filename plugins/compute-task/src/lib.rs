//! The compute-task plugin: deterministic WebAssembly jobs submitted over
//! HTTP, queued durably in kv, run by the host's nested sandbox on `tick`,
//! and verifiable by re-execution.
//!
//! Routes (below the plugin's route prefix):
//!
//! | request | answer |
//! |---|---|
//! | `PUT /modules` (body: a wasm32-wasip1 module; `authorization: Bearer <upload_token>`) | 201 `{"digest"}`; 400 with the reason when invalid; 401 without the token; 403 when uploads are off; 413 when too large for the module or the plugin's module store |
//! | `GET /modules/<digest>` | 200 when stored, else 404 |
//! | `POST /jobs?module=<digest>&fuel=<n>&priority=<0-255>&memory_mb=<n>` (body: the input) | 202 `{"id", "state"}`; 429 when the queue is full |
//! | `GET /jobs/<id>` | the job: state, fuel used, exit code, output (`output` if UTF-8, always `output_hex`) |
//! | `GET /jobs/<id>/output` | the raw output of a finished job |
//! | `GET /jobs?state=queued\|done\|failed` | `{"jobs": [ids]}`, oldest first |
//!
//! The submitter is the `x-submitter` header (or `submitter` query
//! parameter; `anonymous` when absent). The host records the fuel of every
//! job it runs (`job-fuel`, subject = submitter); the plugin claims
//! `jobs-completed` with the job's evidence hash.
//!
//! Config (`[plugin.config]`): `jobs_per_tick` (default 4), `default_fuel`
//! (default: the smaller of 1e9 and the host's `max_fuel`),
//! `default_memory_mb` (default: the smaller of 32 and `max_memory_mb`),
//! `upload_token` (at least 16 characters; without it `PUT /modules`
//! answers 403, so nobody can fill the module store).
//!
//! The host keeps at most `jobs.max_modules` modules and
//! `jobs.max_stored_bytes` bytes (with compiled code) per plugin; storing
//! one more evicts the least recently used, and a queued job whose module
//! was evicted fails with "unknown module".

pub mod proofs;
pub mod queue;

use depin_plugin_sdk::jobs::{self, JobError, JobFailure, ModuleError};
use depin_plugin_sdk::{
    Challenge, HttpRequest, HttpResponse, Plugin, PluginInfo, Proof, ResourceKind, Usage, config,
    export_plugin, log, meter_usage,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use queue::{EnqueueError, Outcome, State, Submission};

/// The compute-task plugin.
pub struct ComputeTask;

const CONFIG_KEYS: [&str; 4] = [
    "jobs_per_tick",
    "default_fuel",
    "default_memory_mb",
    "upload_token",
];

impl Plugin for ComputeTask {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "compute-task",
            env!("CARGO_PKG_VERSION"),
            ResourceKind::ComputeTask,
        )
        .unit(
            "jobs-completed",
            "one job run to its end; evidence = sha256(module, input hash, output hash)",
        )
    }

    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if jobs::limits().is_none() {
            return Err(
                "the compute-task plugin needs the jobs capability: add a [plugin.jobs] table"
                    .into(),
            );
        }
        for (key, _) in &config {
            if !CONFIG_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown config key `{key}` (known: {})",
                    CONFIG_KEYS.join(", ")
                ));
            }
        }
        let settings = Settings::load()?;
        if settings.jobs_per_tick == 0 || settings.jobs_per_tick > 1000 {
            return Err("config `jobs_per_tick` must be 1 to 1000".into());
        }
        log::info(&format!(
            "compute-task ready: {} jobs per tick, default fuel {}",
            settings.jobs_per_tick, settings.default_fuel
        ));
        Ok(())
    }

    fn handle_http(req: HttpRequest) -> HttpResponse {
        let Some(limits) = jobs::limits() else {
            return error(503, "the jobs capability is not enabled for this plugin");
        };
        let settings = match Settings::load() {
            Ok(s) => s,
            Err(e) => return error(500, &e),
        };
        let path = req.path.trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("PUT", ["modules"]) => match &settings.upload_token {
                None => error(
                    403,
                    "module uploads are off: set config `upload_token` to allow them",
                ),
                Some(token) if !req.has_bearer(token) => {
                    error(401, "missing or wrong bearer token")
                        .with_header("www-authenticate", "Bearer")
                }
                Some(_) => put_module(&req),
            },
            ("GET", ["modules", digest]) => {
                if jobs::has_module(digest) {
                    HttpResponse::json(200, &json!({ "digest": digest }))
                } else {
                    error(404, &format!("no module {digest}"))
                }
            }
            ("POST", ["jobs"]) => submit(&req, &limits, &settings),
            ("GET", ["jobs"]) => list(&req),
            ("GET", ["jobs", id]) => show(id),
            ("GET", ["jobs", id, "output"]) => match queue::output(id) {
                Ok(Some(out)) => HttpResponse::bytes(200, "application/octet-stream", out),
                Ok(None) => error(404, &format!("job `{id}` has no output")),
                Err(e) => error(500, &e),
            },
            (_, ["modules"] | ["modules", _] | ["jobs"] | ["jobs", ..]) => error(
                405,
                &format!("{} is not allowed on {}", req.method, req.path),
            ),
            _ => error(404, &format!("no route for {} {}", req.method, req.path)),
        }
    }

    fn tick(_now_ms: u64) {
        let settings = match Settings::load() {
            Ok(s) => s,
            Err(e) => return log::error(&e),
        };
        let batch = match queue::next(settings.jobs_per_tick) {
            Ok(b) => b,
            Err(e) => return log::error(&format!("cannot read the queue: {e}")),
        };
        for job in batch {
            if let Err(e) = run(job) {
                log::warn(&e);
                // A host fault: leave the rest queued for the next tick.
                return;
            }
        }
    }

    fn prove(c: Challenge) -> Result<Proof, String> {
        proofs::prove(&c)
    }

    fn verify(c: Challenge, p: Proof) -> bool {
        proofs::verify(&c, &p)
    }
}

export_plugin!(ComputeTask);

/// Settings from `[plugin.config]`, with defaults derived from the host's
/// caps.
struct Settings {
    jobs_per_tick: u32,
    default_fuel: u64,
    default_memory_mb: u32,
    /// Bearer token of `PUT /modules`; uploads answer 403 without one.
    upload_token: Option<String>,
}

impl Settings {
    fn load() -> Result<Self, String> {
        let caps = jobs::limits().ok_or("the jobs capability is not enabled")?;
        let upload_token = config::get("upload_token");
        if upload_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err("config `upload_token`: must be at least 16 characters".into());
        }
        Ok(Self {
            upload_token,
            jobs_per_tick: config::parse("jobs_per_tick")?.unwrap_or(4),
            default_fuel: config::parse("default_fuel")?
                .unwrap_or(1_000_000_000)
                .min(caps.max_fuel),
            default_memory_mb: config::parse("default_memory_mb")?
                .unwrap_or(32)
                .min(caps.max_memory_mb),
        })
    }
}

fn error(status: u16, message: &str) -> HttpResponse {
    HttpResponse::json(status, &json!({ "error": message }))
}

fn put_module(req: &HttpRequest) -> HttpResponse {
    match jobs::put_module(&req.body) {
        Ok(digest) => HttpResponse::json(201, &json!({ "digest": digest })),
        Err(ModuleError::Invalid(reason)) => error(400, &reason),
        Err(ModuleError::TooLarge(limit)) => error(
            413,
            &format!("the module is larger than the limit of {limit} bytes"),
        ),
        Err(ModuleError::NotEnabled) => error(503, "the jobs capability is not enabled"),
        Err(ModuleError::Store(e)) => error(503, &format!("cannot store the module: {e}")),
    }
}

/// A numeric query parameter: `Ok(None)` when absent, an error naming it
/// when malformed.
fn number<T: std::str::FromStr>(req: &HttpRequest, name: &str) -> Result<Option<T>, String> {
    req.query_param(name)
        .map(|v| {
            v.parse()
                .map_err(|_| format!("query parameter `{name}` is not a valid number: `{v}`"))
        })
        .transpose()
}

fn submit(req: &HttpRequest, caps: &jobs::JobLimits, settings: &Settings) -> HttpResponse {
    let parsed = (|| -> Result<Submission, String> {
        let module = req
            .query_param("module")
            .ok_or("query parameter `module` (a module digest) is required")?;
        if !jobs::has_module(module) {
            return Err(format!("no module {module}; upload it with PUT /modules"));
        }
        let fuel = number(req, "fuel")?.unwrap_or(settings.default_fuel);
        if fuel == 0 || fuel > caps.max_fuel {
            return Err(format!("fuel must be 1 to {}, not {fuel}", caps.max_fuel));
        }
        let memory_mb = number(req, "memory_mb")?.unwrap_or(settings.default_memory_mb);
        if memory_mb == 0 || memory_mb > caps.max_memory_mb {
            return Err(format!(
                "memory_mb must be 1 to {}, not {memory_mb}",
                caps.max_memory_mb
            ));
        }
        let priority = number::<u8>(req, "priority")
            .map_err(|_| "priority must be 0 to 255".to_string())?
            .unwrap_or(0);
        let submitter = req
            .header("x-submitter")
            .or(req.query_param("submitter"))
            .unwrap_or("anonymous");
        if submitter.is_empty() || submitter.len() > 200 {
            return Err("the submitter must be 1 to 200 bytes".into());
        }
        Ok(Submission {
            module: module.to_string(),
            input: req.body.clone(),
            fuel,
            memory_mb,
            priority,
            submitter: submitter.to_string(),
        })
    })();
    let submission = match parsed {
        Ok(s) => s,
        Err(e) => return error(400, &e),
    };
    match queue::enqueue(submission, caps.queue_limit) {
        Ok(job) => HttpResponse::json(202, &json!({ "id": job.id, "state": "queued" }))
            .with_header("location", &format!("jobs/{}", job.id)),
        Err(EnqueueError::Full(limit)) => error(
            429,
            &format!("the job queue is full ({limit} jobs wait); try again later"),
        )
        .with_header("retry-after", "1"),
        Err(EnqueueError::Store(e)) => error(503, &e),
    }
}

fn list(req: &HttpRequest) -> HttpResponse {
    let states = match req.query_param("state") {
        None | Some("") => vec![State::Queued, State::Done, State::Failed],
        Some(s) => match State::parse(s) {
            Some(state) => vec![state],
            None => return error(400, "state must be queued, done or failed"),
        },
    };
    let mut ids = Vec::new();
    for state in states {
        match queue::ids(state, 1000) {
            Ok(mut more) => ids.append(&mut more),
            Err(e) => return error(500, &e),
        }
    }
    HttpResponse::json(200, &json!({ "jobs": ids }))
}

fn show(id: &str) -> HttpResponse {
    let job = match queue::get(id) {
        Ok(Some(job)) => job,
        Ok(None) => return error(404, &format!("no job `{id}`")),
        Err(e) => return error(500, &e),
    };
    let mut body = serde_json::to_value(&job).unwrap_or_default();
    if let Ok(Some(out)) = queue::output(id) {
        if let Ok(text) = std::str::from_utf8(&out) {
            body["output"] = json!(text);
        }
        body["output_hex"] = json!(hex::encode(&out));
    }
    HttpResponse::json(200, &body)
}

/// A failure in words, for job records and proofs.
pub fn describe_failure(f: &JobFailure) -> String {
    match &f.error {
        JobError::NotEnabled => "the jobs capability is not enabled".into(),
        JobError::InvalidRequest(m) => format!("invalid request: {m}"),
        JobError::UnknownModule(d) => format!("unknown module {d}"),
        JobError::FuelExhausted => "fuel exhausted".into(),
        JobError::MemoryLimit => "memory limit".into(),
        JobError::OutputTooLarge => "output too large".into(),
        JobError::Trap(m) => format!("trap: {m}"),
        JobError::Host(m) => format!("host failure: {m}"),
    }
}

/// Runs one queued job and records its outcome. `Err` only for host
/// faults, which leave the job queued.
fn run(job: queue::Job) -> Result<(), String> {
    let input = queue::input(&job.id)?;
    let result = jobs::run(
        &job.module,
        &input,
        job.fuel_limit,
        job.memory_mb,
        Some(&job.submitter),
    );
    match result {
        Ok(out) => {
            let output_sha256 = hex::encode(Sha256::digest(&out.output));
            let evidence = proofs::evidence_hex(&job.module, &job.input_sha256, &output_sha256)
                .and_then(|e| hex::decode(e).ok())
                .unwrap_or_default();
            let usage = Usage::new("jobs-completed", 1)
                .subject(job.submitter.clone())
                .evidence(evidence);
            if let Err(e) = meter_usage(usage) {
                log::error(&format!("cannot meter job {}: {e}", job.id));
            }
            let outcome = Outcome {
                fuel_used: out.fuel_consumed,
                exit_code: Some(out.exit_code),
                output_sha256: Some(output_sha256),
                output_bytes: Some(out.output.len() as u64),
                error: None,
            };
            queue::finish(job, State::Done, outcome, Some(&out.output))?;
        }
        Err(f) if matches!(f.error, JobError::Host(_)) => {
            return Err(format!("job {} not run: {}", job.id, describe_failure(&f)));
        }
        Err(f) => {
            let outcome = Outcome {
                fuel_used: f.fuel_consumed,
                exit_code: None,
                output_sha256: None,
                output_bytes: None,
                error: Some(describe_failure(&f)),
            };
            queue::finish(job, State::Failed, outcome, None)?;
        }
    }
    Ok(())
}
