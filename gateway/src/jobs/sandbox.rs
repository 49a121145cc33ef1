//! The nested, deterministic sandbox one job runs in: its own `Engine`
//! (separate from the plugins'), a fresh `Store` per job, fuel, a memory
//! cap, and the preview-1 surface of [`super::wasi`].

use wasmtime::{Config, Engine, InstancePre, Linker, ResourceLimiter, Store, Trap, WasmFeatures};

use super::wasi::{self, JobExit, OutputOverflow};
use super::{JobError, JobFailure, JobOutput};

/// Builds the job engine. Everything that could make two runs of the same
/// job differ is off: NaNs are canonicalized, relaxed SIMD (whose results
/// may depend on the CPU) is off, there are no threads or shared memories.
/// With `metered`, fuel is on: it is both the job's budget and its
/// attested cost. (Unmetered engines exist only to measure what metering
/// costs.)
pub fn engine(metered: bool) -> wasmtime::Result<Engine> {
    let mut c = Config::new();
    c.consume_fuel(metered);
    c.cranelift_nan_canonicalization(true);
    c.wasm_relaxed_simd(false);
    c.relaxed_simd_deterministic(true);
    // The gateway's wasmtime is built without the `threads` feature; say so
    // here too, so this engine stays single-threaded if that ever changes.
    c.wasm_features(WasmFeatures::THREADS, false);
    c.shared_memory(false);
    c.wasm_component_model(false);
    c.wasm_memory64(false);
    c.wasm_multi_memory(false);
    c.wasm_backtrace_max_frames(None);
    Engine::new(&c)
}

/// The linker every job is instantiated with: preview 1 as far as
/// [`wasi::ALLOWED_IMPORTS`] goes, nothing more.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<JobState>> {
    let mut linker = Linker::new(engine);
    wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// What one running job can touch: its input, its output buffer, its
/// memory cap.
pub struct JobState {
    pub(super) input: Vec<u8>,
    pub(super) input_pos: usize,
    pub(super) output: Vec<u8>,
    pub(super) max_output: usize,
    pub(super) output_overflow: bool,
    pub(super) stderr: Vec<u8>,
    limiter: JobLimiter,
}

struct JobLimiter {
    memory_cap: usize,
    memory_cap_hit: bool,
}

/// Most table elements a job may have.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_cap_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// Fuel budget; ignored (and 0 reported) by an unmetered engine.
    pub fuel: u64,
    pub memory_bytes: usize,
    pub max_output: usize,
}

/// Runs `_start` of a linked module to the end, a trap or a limit. Blocks
/// the calling thread for as long as the job runs (bounded by its fuel).
pub fn run(
    engine: &Engine,
    metered: bool,
    pre: &InstancePre<JobState>,
    input: Vec<u8>,
    limits: RunLimits,
) -> Result<JobOutput, JobFailure> {
    let state = JobState {
        input,
        input_pos: 0,
        output: Vec::new(),
        max_output: limits.max_output,
        output_overflow: false,
        stderr: Vec::new(),
        limiter: JobLimiter {
            memory_cap: limits.memory_bytes,
            memory_cap_hit: false,
        },
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    if metered {
        store
            .set_fuel(limits.fuel)
            .map_err(|e| failure(JobError::Host(format!("{e:#}")), 0))?;
    }
    let result = pre.instantiate(&mut store).and_then(|instance| {
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())
    });
    let fuel = match store.get_fuel() {
        Ok(left) => limits.fuel - left,
        Err(_) => 0,
    };
    let state = store.into_data();
    let exit_code = match result {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<JobExit>() {
            Some(JobExit(code)) => *code,
            None => return Err(failure(classify(&state, &e, limits), fuel)),
        },
    };
    Ok(JobOutput {
        output: state.output,
        fuel,
        exit_code,
    })
}

fn failure(error: JobError, fuel: u64) -> JobFailure {
    JobFailure { error, fuel }
}

fn classify(state: &JobState, e: &wasmtime::Error, limits: RunLimits) -> JobError {
    if state.output_overflow || e.downcast_ref::<OutputOverflow>().is_some() {
        return JobError::OutputTooLarge(limits.max_output as u64);
    }
    if state.limiter.memory_cap_hit {
        return JobError::MemoryLimit(limits.memory_bytes as u64);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => JobError::FuelExhausted(limits.fuel),
        Some(trap) => {
            let stderr = String::from_utf8_lossy(&state.stderr);
            let stderr = stderr.trim_end();
            if stderr.is_empty() {
                JobError::Trap(trap.to_string())
            } else {
                JobError::Trap(format!("{trap} ({stderr})"))
            }
        }
        None => JobError::Trap(format!("{e:#}")),
    }
}
