//! `depin:plugin/jobs`: deterministic jobs in the nested sandbox. Access is
//! checked first (a `[plugin.jobs]` table), then the caps, then the job
//! runs on a worker thread. The fuel it consumed is recorded as a host
//! record that survives whatever the plugin does next.

use sha2::{Digest, Sha256};
use wasmtime::component::HasData;

use super::Blame;
use crate::jobs::{JobError as EngineError, ModuleError as EngineModuleError, RunLimits};
use crate::ledger::{MAX_SUBJECT_BYTES, NewRecord, Source};
use crate::runtime::PluginShared;
use crate::runtime::contract::depin::plugin::jobs::{
    Host, JobError, JobFailure, JobLimits, JobOutput, ModuleError,
};
use crate::runtime::state::CallState;

/// The host unit of job fuel.
pub const JOB_FUEL: &str = "job-fuel";

/// The jobs part of a call's state: the host-attested record of every job
/// the call ran (its fuel). Kept even when the call fails.
#[derive(Debug, Default)]
pub(crate) struct JobsState {
    pub(crate) host_records: Vec<NewRecord>,
}

/// What `jobs` functions reach during one call: its job records and the
/// plugin's access to the job engine.
pub(crate) struct JobsView<'a> {
    state: &'a mut JobsState,
    plugin: &'a PluginShared,
    request_id: &'a str,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> JobsView<'_> {
    JobsView {
        state: &mut call.jobs,
        plugin: &call.plugin,
        request_id: &call.request_id,
    }
}

/// The `jobs` capability, for the linker.
pub(crate) struct Jobs;

impl HasData for Jobs {
    type Data<'a> = JobsView<'a>;
}

/// A `run` refused before the job started.
fn refused(error: JobError) -> Blame<JobFailure> {
    Blame::Guest(JobFailure {
        error,
        fuel_consumed: 0,
    })
}

impl Host for JobsView<'_> {
    fn limits(&mut self) -> wasmtime::Result<Option<JobLimits>> {
        Ok(self.plugin.jobs.as_ref().map(|j| JobLimits {
            max_fuel: j.limits.max_fuel,
            max_memory_mb: j.limits.max_memory_mb as u32,
            max_output_bytes: j.limits.max_output_bytes as u32,
            max_module_bytes: j.limits.max_module_bytes as u32,
            queue_limit: j.limits.queue_limit as u32,
        }))
    }

    async fn put_module(&mut self, wasm: Vec<u8>) -> Result<String, Blame<ModuleError>> {
        let Some(jobs) = &self.plugin.jobs else {
            return Err(ModuleError::NotEnabled.into());
        };
        let quota = jobs.limits.module_quota();
        match jobs
            .engine
            .put_module(&self.plugin.name, wasm, &quota)
            .await
        {
            Ok(digest) => Ok(digest),
            Err(EngineModuleError::TooLarge { limit, .. }) => {
                Err(ModuleError::TooLarge(limit as u32).into())
            }
            Err(e @ EngineModuleError::OverQuota { limit, .. }) => {
                tracing::info!(plugin = %self.plugin.name, request_id = %self.request_id, error = %e, "job module refused");
                Err(ModuleError::TooLarge(u32::try_from(limit).unwrap_or(u32::MAX)).into())
            }
            Err(EngineModuleError::Invalid(m)) => Err(ModuleError::Invalid(m).into()),
            Err(EngineModuleError::Store(m)) => {
                tracing::warn!(plugin = %self.plugin.name, request_id = %self.request_id, error = %m, "cannot store a job module");
                Err(ModuleError::Store(m).into())
            }
        }
    }

    fn has_module(&mut self, digest: String) -> wasmtime::Result<bool> {
        Ok(self
            .plugin
            .jobs
            .as_ref()
            .is_some_and(|j| j.engine.has_module(&self.plugin.name, &digest)))
    }

    async fn run(
        &mut self,
        module: String,
        input: Vec<u8>,
        fuel: u64,
        memory_mb: u32,
        subject: Option<String>,
    ) -> Result<JobOutput, Blame<JobFailure>> {
        let Some(jobs) = &self.plugin.jobs else {
            return Err(refused(JobError::NotEnabled));
        };
        let caps = &jobs.limits;
        let invalid = |m: String| Err(refused(JobError::InvalidRequest(m)));
        if fuel == 0 || fuel > caps.max_fuel {
            return invalid(format!("fuel must be 1 to {}, not {fuel}", caps.max_fuel));
        }
        if memory_mb == 0 || u64::from(memory_mb) > caps.max_memory_mb {
            return invalid(format!(
                "memory-mb must be 1 to {}, not {memory_mb}",
                caps.max_memory_mb
            ));
        }
        if let Some(s) = &subject
            && s.len() > MAX_SUBJECT_BYTES
        {
            return invalid(format!(
                "subject is {} bytes, the limit is {MAX_SUBJECT_BYTES}",
                s.len()
            ));
        }
        let limits = RunLimits {
            fuel,
            memory_bytes: (memory_mb as usize) << 20,
            max_output: caps.max_output_bytes as usize,
        };
        let input_sha256: [u8; 32] = Sha256::digest(&input).into();
        let result = jobs
            .engine
            .run(&self.plugin.name, &module, input, limits)
            .await;
        let (consumed, evidence) = match &result {
            Ok(out) => (
                out.fuel,
                Some(crate::jobs::evidence(&module, &input_sha256, &out.output).to_vec()),
            ),
            Err(f) => (f.fuel, None),
        };
        self.state.host_records.push(NewRecord {
            time_ms: 0,
            unit: JOB_FUEL.to_string(),
            quantity: consumed,
            source: Source::Host,
            subject: Some(subject.unwrap_or_else(|| self.request_id.to_string())),
            evidence,
        });
        match result {
            Ok(out) => Ok(JobOutput {
                output: out.output,
                fuel_consumed: out.fuel,
                exit_code: out.exit_code,
            }),
            Err(f) => {
                let error = match f.error {
                    EngineError::UnknownModule(d) => JobError::UnknownModule(d),
                    EngineError::FuelExhausted(_) => JobError::FuelExhausted,
                    EngineError::MemoryLimit(_) => JobError::MemoryLimit,
                    EngineError::OutputTooLarge(_) => JobError::OutputTooLarge,
                    EngineError::Trap(m) => JobError::Trap(m),
                    EngineError::Host(m) => {
                        tracing::warn!(plugin = %self.plugin.name, request_id = %self.request_id, error = %m, "job host failure");
                        JobError::Host(m)
                    }
                };
                Err(JobFailure {
                    error,
                    fuel_consumed: f.fuel,
                }
                .into())
            }
        }
    }

    fn convert_module_error(&mut self, e: Blame<ModuleError>) -> wasmtime::Result<ModuleError> {
        e.into_wit()
    }

    fn convert_job_failure(&mut self, e: Blame<JobFailure>) -> wasmtime::Result<JobFailure> {
        e.into_wit()
    }
}
