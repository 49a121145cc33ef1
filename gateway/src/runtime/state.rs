//! Per-call state: what a plugin's instance can reach while one call runs.
//! A fresh `CallState` is built for every call and dropped after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::plugin::PluginShared;
use crate::ledger::{KvWrite, Ledger, NewRecord};

/// Bytes of a plugin's stderr kept for the log when a call fails.
const STDERR_CAPTURE: usize = 4096;

/// Everything a call can touch, and everything it produced.
pub struct CallState {
    pub(crate) plugin: Arc<PluginShared>,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) request_id: Arc<str>,
    pub(crate) limiter: CallLimiter,
    /// Plugin-claimed records buffered until the call succeeds.
    pub(crate) usage: Vec<NewRecord>,
    /// Host-attested records of work done for the call (job fuel); kept
    /// even when the call fails.
    pub(crate) host_records: Vec<NewRecord>,
    /// Key-value writes buffered until the call succeeds.
    pub(crate) kv_writes: BTreeMap<String, KvWrite>,
    pub(crate) kv_write_bytes: usize,
    /// Epoch ticks this call has run for, and its CPU deadline in ticks.
    pub(crate) ticks: u64,
    pub(crate) max_ticks: u64,
    pub(crate) deadline_hit: bool,
    /// Datagrams queued through `outbound-udp`, and where this one came from.
    pub(crate) outbound_udp: super::host::outbound_udp::UdpCallState,
    /// An origin response `fetch-into` could not store yet (see
    /// [`super::host::blobs::ParkedFetch`]).
    pub(crate) parked_fetch: Option<super::host::blobs::ParkedFetch>,
    /// The origin response a `blob` answer of this call is served from
    /// (`blobs.pass-through`).
    pub(crate) pass_through: Option<super::host::blobs::PassThrough>,
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
            usage: Vec::new(),
            host_records: Vec::new(),
            kv_writes: BTreeMap::new(),
            kv_write_bytes: 0,
            ticks: 0,
            max_ticks,
            deadline_hit: false,
            outbound_udp: Default::default(),
            parked_fetch: None,
            pass_through: None,
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
