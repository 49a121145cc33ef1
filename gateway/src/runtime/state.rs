//! Per-call state: what a plugin's instance can reach while one call runs.
//! A fresh `CallState` is built for every call and dropped after it.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::host::blobs::BlobsState;
use super::host::jobs::JobsState;
use super::host::kv::KvState;
use super::host::metering::MeteringState;
use super::host::outbound_udp::UdpState;
use super::plugin::PluginShared;
use crate::ledger::Ledger;

/// Bytes of a plugin's stderr kept for the log when a call fails.
const STDERR_CAPTURE: usize = 4096;

/// Everything a call can touch, and everything it produced. Each host
/// capability keeps its part of the call's state in its own field and sees
/// only that, through its view (see the `host` module).
pub struct CallState {
    pub(crate) plugin: Arc<PluginShared>,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) request_id: Arc<str>,
    pub(crate) limiter: CallLimiter,
    /// Epoch ticks this call has run for, and its CPU deadline in ticks.
    pub(crate) ticks: u64,
    pub(crate) max_ticks: u64,
    pub(crate) deadline_hit: bool,
    /// Plugin-claimed records buffered until the call succeeds.
    pub(crate) metering: MeteringState,
    /// Key-value writes buffered until the call succeeds.
    pub(crate) kv: KvState,
    /// Origin responses held open by `blobs` (a parked `fetch-into`, the
    /// call's pass-through).
    pub(crate) blobs: BlobsState,
    /// Host-attested records of jobs the call ran (job fuel); kept even
    /// when the call fails.
    pub(crate) jobs: JobsState,
    /// Datagrams queued through `outbound-udp`, and where this one came from.
    pub(crate) outbound_udp: UdpState,
    /// The first `outbound-http` request of the call that cannot be
    /// repeated (not a GET or HEAD), if any.
    pub(crate) unrepeatable: Option<String>,
    /// What the call has logged, against the per-call log limits.
    pub(crate) log: super::host::log::CallLog,
    /// Built on the first WASI call only.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    stderr: Option<MemoryOutputPipe>,
}

impl CallState {
    pub(crate) fn new(
        plugin: Arc<PluginShared>,
        ledger: Arc<Ledger>,
        request_id: Arc<str>,
        max_ticks: u64,
    ) -> Self {
        let memory_cap = plugin.memory_cap_bytes;
        Self {
            plugin,
            ledger,
            request_id,
            limiter: CallLimiter {
                memory_cap,
                memory_cap_hit: false,
            },
            ticks: 0,
            max_ticks,
            deadline_hit: false,
            metering: MeteringState::default(),
            kv: KvState::default(),
            blobs: BlobsState::default(),
            jobs: JobsState::default(),
            outbound_udp: UdpState::default(),
            unrepeatable: None,
            log: Default::default(),
            wasi: None,
            table: ResourceTable::new(),
            stderr: None,
        }
    }

    /// What the plugin wrote to stderr during this call (panic messages).
    pub(crate) fn stderr_text(&self) -> Option<String> {
        let bytes = self.stderr.as_ref()?.contents();
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).trim_end().to_string())
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        if self.wasi.is_none() {
            // No environment, arguments, files or network: plugins reach the
            // outside world only through the contract's imports.
            let pipe = MemoryOutputPipe::new(STDERR_CAPTURE);
            self.stderr = Some(pipe.clone());
            self.wasi = Some(WasiCtxBuilder::new().stderr(pipe).build());
        }
        WasiCtxView {
            ctx: self.wasi.as_mut().expect("built above"),
            table: &mut self.table,
        }
    }
}

/// Enforces the plugin's memory cap and notes when it was hit, so the call's
/// failure can be reported as "memory limit" rather than a bare trap.
pub struct CallLimiter {
    memory_cap: usize,
    pub(crate) memory_cap_hit: bool,
}

/// Upper bound on table elements per table (function references).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        if desired > self.memory_cap {
            self.memory_cap_hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit: the plugin asked for {desired} bytes of linear memory, its cap is {}",
                self.memory_cap
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
