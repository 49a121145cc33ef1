//! Deterministic WebAssembly jobs: a module store keyed by digest with a
//! quota per plugin ([`quota`]), a compile cache, upload-time validation,
//! a bounded pool of workers that run jobs in the nested sandbox
//! ([`sandbox`]) off the async executor, and separate compile slots, so
//! uploads never take a job's worker.
//!
//! A job is a WASI preview-1 command module: it reads its input on stdin,
//! writes its output on stdout and may exit with a status. The same module
//! and input always give the same output, exit status and fuel.

mod quota;
mod sandbox;
mod validate;
pub mod wasi;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::{Engine, InstancePre, Linker, Module};

pub use quota::ModuleQuota;
use quota::{Admission, PluginModules};
use sandbox::JobState;
pub use sandbox::RunLimits;

/// What a finished job produced. A non-zero exit status is still a
/// finished job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    pub output: Vec<u8>,
    /// Fuel the job consumed, measured by the host.
    pub fuel: u64,
    pub exit_code: u32,
}

/// Why a job did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("no module {0} was uploaded")]
    UnknownModule(String),
    #[error("the job ran out of fuel (limit {0})")]
    FuelExhausted(u64),
    #[error("the job exceeded its memory limit of {0} bytes")]
    MemoryLimit(u64),
    #[error("the job's output exceeded its limit of {0} bytes")]
    OutputTooLarge(u64),
    #[error("the job trapped: {0}")]
    Trap(String),
    #[error("host failure: {0}")]
    Host(String),
}

/// A job that did not finish, and the fuel it burned before it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub error: JobError,
    pub fuel: u64,
}

/// Why a module was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("the module is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The module and its compiled code alone are larger than the
    /// plugin's whole module store (`max_stored_bytes`).
    #[error(
        "the module and its compiled code take {size} bytes; the plugin's module store holds {limit}"
    )]
    OverQuota { size: u64, limit: u64 },
    #[error("invalid job module: {0}")]
    Invalid(String),
    #[error("cannot store the module: {0}")]
    Store(String),
}

/// The job engine could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the job engine ({}): {problem}", root.display())]
pub struct JobsError {
    pub root: PathBuf,
    pub problem: String,
}

/// Linked modules kept in memory.
const MEMORY_CACHE_ENTRIES: usize = 64;

/// Compiles that run at once when [`JobEngine::with_compile_slots`] does
/// not say otherwise.
pub const DEFAULT_COMPILE_SLOTS: usize = 1;

/// The job engine shared by every plugin with a `[plugin.jobs]` table.
/// Modules live under `<root>/modules/<plugin>/`, so plugins never see each
/// other's modules; compiled code lives under `<root>/compiled/`.
pub struct JobEngine {
    engine: Engine,
    linker: Linker<JobState>,
    root: PathBuf,
    linked: Mutex<HashMap<String, InstancePre<JobState>>>,
    /// Jobs running at once.
    workers: Arc<Semaphore>,
    /// Module compiles (uploads) running at once; never a job's worker.
    compiles: Arc<Semaphore>,
    /// Each plugin's stored modules, for its quota; built on first use.
    stored: Mutex<HashMap<String, PluginModules>>,
    metered: bool,
    /// Authenticates the compiled code under `<root>/compiled/`.
    seal: crate::runtime::CodeSeal,
}

impl std::fmt::Debug for JobEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEngine")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl JobEngine {
    /// Opens (creating if needed) the job store at `root`. At most
    /// `workers` jobs run at once; more wait their turn.
    pub fn open(root: &Path, workers: usize) -> Result<Self, JobsError> {
        Self::open_with(root, workers, true)
    }

    /// Like [`open`](Self::open) but without fuel metering: jobs have no
    /// fuel limit and report 0 fuel. Only for measuring what metering
    /// costs; the gateway never uses it.
    pub fn open_unmetered(root: &Path, workers: usize) -> Result<Self, JobsError> {
        Self::open_with(root, workers, false)
    }

    fn open_with(root: &Path, workers: usize, metered: bool) -> Result<Self, JobsError> {
        let fail = |problem: String| JobsError {
            root: root.to_path_buf(),
            problem,
        };
        let engine = sandbox::engine(metered).map_err(|e| fail(format!("{e:#}")))?;
        let linker = sandbox::linker(&engine).map_err(|e| fail(format!("{e:#}")))?;
        for dir in ["modules", "compiled"] {
            std::fs::create_dir_all(root.join(dir)).map_err(|e| fail(e.to_string()))?;
        }
        Ok(Self {
            engine,
            linker,
            root: root.to_path_buf(),
            linked: Mutex::new(HashMap::new()),
            workers: Arc::new(Semaphore::new(workers.max(1))),
            compiles: Arc::new(Semaphore::new(DEFAULT_COMPILE_SLOTS)),
            stored: Mutex::new(HashMap::new()),
            metered,
            seal: crate::runtime::CodeSeal::ephemeral(),
        })
    }

    /// At most `slots` module compiles run at once (default
    /// [`DEFAULT_COMPILE_SLOTS`]); they never wait for, or hold, a job
    /// worker.
    pub fn with_compile_slots(mut self, slots: usize) -> Self {
        self.compiles = Arc::new(Semaphore::new(slots.max(1)));
        self
    }

    /// Validates, compiles and durably stores a module for `plugin` under
    /// its `quota`, evicting the plugin's least recently used modules to
    /// make room; returns its digest, `sha256:<hex>`. Storing a module twice
    /// is not an error.
    pub async fn put_module(
        self: &Arc<Self>,
        plugin: &str,
        wasm: Vec<u8>,
        quota: &ModuleQuota,
    ) -> Result<String, ModuleError> {
        if wasm.len() > quota.max_module_bytes {
            return Err(ModuleError::TooLarge {
                size: wasm.len(),
                limit: quota.max_module_bytes,
            });
        }
        if wasm.len() as u64 > quota.max_stored_bytes {
            return Err(ModuleError::OverQuota {
                size: wasm.len() as u64,
                limit: quota.max_stored_bytes,
            });
        }
        let this = self.clone();
        let plugin = plugin.to_string();
        let quota = *quota;
        // The permit moves into the compile: a caller that gives up waiting
        // does not free the slot before the work is done.
        let permit = self
            .compiles
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.put_module_blocking(&plugin, &wasm, &quota)
        })
        .await
        .map_err(|e| ModuleError::Store(format!("the compile task failed: {e}")))?
    }

    fn put_module_blocking(
        &self,
        plugin: &str,
        wasm: &[u8],
        quota: &ModuleQuota,
    ) -> Result<String, ModuleError> {
        validate::header(wasm)?;
        let digest = digest(wasm);
        let module = Module::from_binary(&self.engine, wasm)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        validate::shape(&module)?;
        self.save_compiled(&digest, &module);
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        let path = self.module_path(plugin, &digest);
        if !path.exists() {
            write_durably(&path, wasm).map_err(ModuleError::Store)?;
        }
        self.admit(plugin, &digest, wasm.len() as u64, quota)?;
        self.remember(plugin, &digest, pre);
        Ok(digest)
    }

    /// Counts the stored module `digest` of `plugin` against its quota,
    /// evicting the least recently used others until it fits; removes it
    /// again when it alone is larger than the store.
    fn admit(
        &self,
        plugin: &str,
        digest: &str,
        wasm_bytes: u64,
        quota: &ModuleQuota,
    ) -> Result<(), ModuleError> {
        let bytes = wasm_bytes + self.compiled_bytes(digest);
        let mut stored = self.stored.lock().expect("not poisoned");
        let index = self.index(&mut stored, plugin);
        match index.admit(digest, bytes, quota) {
            Admission::TooLarge => {
                index.forget(digest);
                drop(stored);
                self.remove_module(plugin, digest);
                Err(ModuleError::OverQuota {
                    size: bytes,
                    limit: quota.max_stored_bytes,
                })
            }
            Admission::Fits { evict } => {
                for old in &evict {
                    index.forget(old);
                }
                index.touch(digest, bytes);
                let (count, total) = index.usage();
                drop(stored);
                for old in &evict {
                    tracing::info!(plugin, module = %old, modules = count, bytes = total, "evicting the least recently used job module to stay under the module quota");
                    self.remove_module(plugin, old);
                }
                if !evict.is_empty() {
                    crate::metrics::global().record_modules_evicted(plugin, evict.len() as u64);
                }
                quota::mark_used(&self.module_path(plugin, digest));
                Ok(())
            }
        }
    }

    /// The quota index of `plugin`, scanned from disk on first use.
    fn index<'a>(
        &self,
        stored: &'a mut HashMap<String, PluginModules>,
        plugin: &str,
    ) -> &'a mut PluginModules {
        stored.entry(plugin.to_string()).or_insert_with(|| {
            let dir = self.root.join("modules").join(plugin);
            PluginModules::scan(&dir, |digest, len| len + self.compiled_bytes(digest))
        })
    }

    /// Records that `plugin` used its module `digest`.
    fn mark_used(&self, plugin: &str, digest: &str) {
        let mut stored = self.stored.lock().expect("not poisoned");
        self.index(&mut stored, plugin).used(digest);
        drop(stored);
        quota::mark_used(&self.module_path(plugin, digest));
    }

    /// Removes `plugin`'s module `digest` from disk and memory, and its
    /// compiled code unless another plugin stores the same module.
    fn remove_module(&self, plugin: &str, digest: &str) {
        self.linked
            .lock()
            .expect("not poisoned")
            .remove(&format!("{plugin}/{digest}"));
        let path = self.module_path(plugin, digest);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an evicted job module");
        }
        let shared = std::fs::read_dir(self.root.join("modules"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|dir| dir.path().join(format!("{}.wasm", hex_of(digest))).exists());
        if !shared {
            let _ = std::fs::remove_file(self.compiled_path(digest));
        }
    }

    /// Bytes of `digest`'s compiled code in the cache (0 when absent).
    fn compiled_bytes(&self, digest: &str) -> u64 {
        std::fs::metadata(self.compiled_path(digest)).map_or(0, |m| m.len())
    }

    /// Whether `plugin` has stored the module `digest`.
    pub fn has_module(&self, plugin: &str, digest: &str) -> bool {
        valid_digest(digest) && self.module_path(plugin, digest).exists()
    }

    /// Runs one job of `plugin` on a worker thread and waits for it.
    pub async fn run(
        self: &Arc<Self>,
        plugin: &str,
        module: &str,
        input: Vec<u8>,
        limits: RunLimits,
    ) -> Result<JobOutput, JobFailure> {
        let no_fuel = |error| JobFailure { error, fuel: 0 };
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let this = self.clone();
        let plugin = plugin.to_string();
        let module = module.to_string();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pre = this.linked_module(&plugin, &module).map_err(no_fuel)?;
            this.mark_used(&plugin, &module);
            sandbox::run(&this.engine, this.metered, &pre, input, limits)
        })
        .await
        .map_err(|e| no_fuel(JobError::Host(format!("the job task failed: {e}"))))?
    }

    /// The linked module, from memory, the compile cache or the store.
    fn linked_module(&self, plugin: &str, digest: &str) -> Result<InstancePre<JobState>, JobError> {
        let key = format!("{plugin}/{digest}");
        if let Some(pre) = self.linked.lock().expect("not poisoned").get(&key) {
            return Ok(pre.clone());
        }
        if !self.has_module(plugin, digest) {
            return Err(JobError::UnknownModule(digest.to_string()));
        }
        let wasm = std::fs::read(self.module_path(plugin, digest))
            .map_err(|e| JobError::Host(format!("cannot read module {digest}: {e}")))?;
        let module = self
            .compiled(digest, &wasm)
            .map_err(|e| JobError::Host(e.to_string()))?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| JobError::Host(format!("{e:#}")))?;
        self.remember(plugin, digest, pre.clone());
        Ok(pre)
    }

    fn remember(&self, plugin: &str, digest: &str, pre: InstancePre<JobState>) {
        let mut linked = self.linked.lock().expect("not poisoned");
        if linked.len() >= MEMORY_CACHE_ENTRIES
            && let Some(evict) = linked.keys().next().cloned()
        {
            linked.remove(&evict);
        }
        linked.insert(format!("{plugin}/{digest}"), pre);
    }

    /// Compiles `wasm`, or loads its compiled code from the on-disk cache
    /// (keyed by digest and the engine's compatibility hash, sealed).
    fn compiled(&self, digest: &str, wasm: &[u8]) -> Result<Module, ModuleError> {
        let cached = self.compiled_path(digest);
        if cached.exists() {
            let loaded = self
                .seal
                .read(&cached)
                .map_err(|e| e.to_string())
                .and_then(|code| {
                    // SAFETY: the code checked out under the gateway's
                    // seal, so it was written by `Module::serialize` of
                    // this gateway under a name bound to the source digest
                    // and the engine's compatibility hash.
                    unsafe { Module::deserialize(&self.engine, &code) }
                        .map_err(|e| format!("{e:#}"))
                });
            match loaded {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::warn!(path = %cached.display(), error = %e, "discarding compiled job module from the cache; compiling it again");
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        let module = Module::from_binary(&self.engine, wasm)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        self.save_compiled(digest, &module);
        Ok(module)
    }

    fn save_compiled(&self, digest: &str, module: &Module) {
        let path = self.compiled_path(digest);
        if path.exists() {
            return;
        }
        match module.serialize() {
            Ok(bytes) => {
                if let Some(dir) = path.parent()
                    && let Err(e) =
                        std::fs::create_dir_all(dir).and_then(|()| self.seal.write(&path, &bytes))
                {
                    tracing::warn!(error = %e, "cannot write the job compile cache");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize a compiled job module"),
        }
    }

    /// Compiled code in the cache is trusted only under `seal` (by default
    /// a key of this process alone).
    pub fn with_code_seal(mut self, seal: crate::runtime::CodeSeal) -> Self {
        self.seal = seal;
        self
    }

    fn compiled_path(&self, digest: &str) -> PathBuf {
        self.root.join("compiled").join(format!(
            "{}-{}.cwasm",
            hex_of(digest),
            engine_key(&self.engine)
        ))
    }

    fn module_path(&self, plugin: &str, digest: &str) -> PathBuf {
        self.root
            .join("modules")
            .join(plugin)
            .join(format!("{}.wasm", hex_of(digest)))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `digest` is `sha256:` and 64 lower-case hex digits.
pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn hex_of(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Writes `bytes` to a temporary file, syncs it and renames it into place,
/// so `path` is either absent or complete.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = path.parent().expect("a file inside a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// The evidence hash of a finished job: `sha256(module digest || 0x00 ||
/// sha256(input) || sha256(output))`, from the input's sha256. The host
/// attaches it to its `job-fuel` record; a plugin can attach the same hash
/// to its own claim.
pub fn evidence(module: &str, input_sha256: &[u8; 32], output: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(module.as_bytes());
    h.update([0]);
    h.update(input_sha256);
    h.update(Sha256::digest(output));
    h.finalize().into()
}
