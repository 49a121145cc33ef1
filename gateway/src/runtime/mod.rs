//! The WebAssembly runtime: one `Engine` with the pooling allocator, one
//! `Linker`, an epoch ticker for CPU deadlines, and an on-disk cache of
//! compiled components.

mod cache;
pub mod contract;
mod host;
mod plugin;
pub mod reuse;
mod seal;
pub(crate) mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use cache::CacheOutcome;
pub use cache::digest as component_digest;
pub use contract::{CONTRACT, ComponentShape};
pub use host::blobs::PassThrough;
pub use host::outbound_http::BODY_IDLE_TIMEOUT;
pub use host::outbound_udp::MAX_SENDS_PER_CALL;
pub use host::outbound_udp::{QueuedDatagram, RecentPeers};
pub use plugin::{LoadError, LoadedPlugin, PluginShared};
pub use seal::CodeSeal;

use crate::config::RuntimeConfig;
use state::CallState;

/// The engine, linker and compile cache shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    cache_dir: Option<PathBuf>,
    /// Authenticates the compiled code in `cache_dir`.
    seal: CodeSeal,
    tick: Duration,
    ticker_stop: Arc<AtomicBool>,
    blob_root: Option<PathBuf>,
    jobs: Option<Arc<crate::jobs::JobEngine>>,
    /// Where `oci://` components are pulled from; none without it.
    registries: Option<Arc<crate::oci::Registries>>,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the WebAssembly runtime: {0}")]
pub struct RuntimeError(String);

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    /// `cache_dir`: where compiled components are kept (`None`: no cache).
    pub fn new(cfg: &RuntimeConfig, cache_dir: Option<&Path>) -> Result<Self, RuntimeError> {
        let engine =
            Engine::new(&engine_config(cfg)).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        host::add_to_linker(&mut linker).map_err(|e| RuntimeError(format!("{e:#}")))?;
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                RuntimeError(format!(
                    "{}: cannot create the compile cache: {e}",
                    dir.display()
                ))
            })?;
        }
        let tick = Duration::from_millis(cfg.tick_ms);
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), tick, ticker_stop.clone())?;
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.map(Path::to_path_buf),
            seal: CodeSeal::ephemeral(),
            tick,
            ticker_stop,
            blob_root: None,
            jobs: None,
            registries: None,
        })
    }

    /// Compiled code in the cache is trusted only under `seal` (by
    /// default a key of this process alone, so nothing cached by another
    /// process is loaded).
    pub fn with_code_seal(mut self, seal: CodeSeal) -> Self {
        self.seal = seal;
        self
    }

    /// Plugins with `[plugin.blobs]` keep their blob stores under `dir`
    /// (one subdirectory per plugin name). Without it they get none.
    pub fn with_blob_root(mut self, dir: PathBuf) -> Self {
        self.blob_root = Some(dir);
        self
    }

    /// Where blob stores live, if anywhere.
    pub fn blob_root(&self) -> Option<&Path> {
        self.blob_root.as_deref()
    }

    /// The engine (for tools that inspect components).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles the component at `path`, or loads it from the compile cache.
    pub fn compile(&self, path: &Path) -> Result<(Component, String, CacheOutcome), String> {
        cache::compile(&self.engine, self.cache_dir.as_deref(), &self.seal, path)
    }

    /// Offers the `jobs` capability, backed by `jobs`, to plugins that have
    /// a `[plugin.jobs]` table.
    pub fn with_jobs(mut self, jobs: Arc<crate::jobs::JobEngine>) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// Pulls `oci://` components through `registries`.
    pub fn with_registries(mut self, registries: Arc<crate::oci::Registries>) -> Self {
        self.registries = Some(registries);
        self
    }

    /// Where `oci://` components come from, if anywhere.
    pub fn registries(&self) -> Option<&Arc<crate::oci::Registries>> {
        self.registries.as_ref()
    }

    pub(crate) fn jobs(&self) -> Option<&Arc<crate::jobs::JobEngine>> {
        self.jobs.as_ref()
    }

    pub(crate) fn linker(&self) -> &Linker<CallState> {
        &self.linker
    }

    pub(crate) fn ticks_for(&self, budget: Duration) -> u64 {
        let tick = self.tick.as_micros().max(1);
        (budget.as_micros().div_ceil(tick) as u64).max(1)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine_config(cfg: &RuntimeConfig) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Fuel is always counted so the ledger can attest it; a plugin without a
    // fuel limit simply gets an unreachable budget.
    config.consume_fuel(true);
    let mut pool = PoolingAllocationConfig::default();
    let n = cfg.max_instances;
    pool.total_component_instances(n);
    pool.total_core_instances(n.saturating_mul(4));
    pool.total_memories(n);
    pool.total_tables(n.saturating_mul(4));
    pool.total_stacks(n);
    pool.max_memory_size((cfg.max_memory_mb << 20) as usize);
    // The per-call fast path: a fresh instance per call means a slot is
    // reset after every call. Resetting the low pages of memories, tables and
    // stacks with memset (and only the pages that were touched, where the
    // kernel can tell) avoids a page fault per page on the next call, and
    // batching the rest of the decommits avoids a TLB shootdown per call.
    // With the kernel's PAGEMAP_SCAN (Linux 6.7+) only touched pages are
    // reset, so a large resident window is cheap; without it the whole
    // window is memset on every call, so keep it small.
    let keep = if pagemap_scan_available() {
        2 << 20
    } else {
        64 << 10
    };
    pool.linear_memory_keep_resident(keep);
    pool.table_keep_resident(64 << 10);
    pool.async_stack_keep_resident(128 << 10);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    pool.decommit_batch_size(64);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Whether the running kernel has the PAGEMAP_SCAN ioctl (Linux 6.7+).
fn pagemap_scan_available() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}

fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError(format!("cannot start the epoch ticker: {e}")))
}
