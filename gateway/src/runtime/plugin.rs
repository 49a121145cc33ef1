//! A loaded plugin: compiled, checked against the contract, linked, and
//! described. Its calls go through [`crate::call`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Component;

use super::contract::{CONTRACT, ComponentShape, PluginInfo, ResourcePluginPre};
use super::host::outbound_http::{BLOB_DEADLINE, FETCH_DEADLINE, HttpOutbound};
use super::state::CallState;
use super::{CacheOutcome, Runtime};
use crate::blobstore::BlobStore;
use crate::call::{self, HostMeasurements};
use crate::config::{PluginConfig, PluginLimits};
use crate::ledger::{CallEffects, Ledger};

/// What every call of a plugin shares: identity, configuration, limits.
#[derive(Debug, Clone)]
pub struct PluginShared {
    /// The configured name; namespaces kv and ledger records.
    pub name: Arc<str>,
    pub config: BTreeMap<String, String>,
    pub limits: PluginLimits,
    pub(crate) memory_cap_bytes: usize,
    /// Units declared by `describe`.
    pub units: BTreeSet<String>,
    /// The plugin's blob store, when `[plugin.blobs]` is configured.
    pub blobs: Option<Arc<BlobStore>>,
    /// The plugin's outbound HTTP allow-list and connection pool.
    pub(crate) outbound_http: Arc<HttpOutbound>,
    /// The `jobs` capability, when the plugin has a `[plugin.jobs]` table.
    pub(crate) jobs: Option<PluginJobs>,
    /// `host:port` targets the plugin may send datagrams to.
    pub outbound_udp: BTreeSet<String>,
}

/// One plugin's access to the job engine, with its caps.
#[derive(Debug, Clone)]
pub(crate) struct PluginJobs {
    pub(crate) engine: Arc<crate::jobs::JobEngine>,
    pub(crate) limits: crate::config::JobsConfig,
}

impl PluginShared {
    pub(crate) fn declared_units(&self) -> String {
        if self.units.is_empty() {
            "none".into()
        } else {
            self.units.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// A plugin ready to take calls.
pub struct LoadedPlugin {
    pub shared: Arc<PluginShared>,
    /// What the plugin said about itself at load.
    pub info: PluginInfo,
    /// `sha256:<hex>` of the component file.
    pub digest: String,
    /// The component file (for an `oci://` component, its local copy).
    pub path: PathBuf,
    /// For an `oci://` component: the reference pinned to the manifest
    /// digest that was loaded.
    pub pinned: Option<String>,
    /// The fingerprint (sha256 of the DER public key) of the trusted
    /// publisher whose signature was verified, when one was required.
    pub signer: Option<[u8; 32]>,
    pub shape: ComponentShape,
    pub cache: CacheOutcome,
    /// Answers the plugin marked reusable (see [`super::reuse`]); empty
    /// after every load, so a reload never serves the old plugin's answers.
    pub reuse: super::reuse::ReuseTable,
    pub(crate) pre: ResourcePluginPre<CallState>,
    /// Calls take turns here: a first run shares it with other calls; a
    /// run after repeated conflicts has it alone (see `call::serialized`).
    pub(crate) turns: tokio::sync::RwLock<()>,
    pub(crate) engine: wasmtime::Engine,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) max_ticks: u64,
}

/// Why a plugin was not loaded. The message names the plugin, the file and
/// the problem.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{name}` ({}): {problem}", path.display())]
pub struct LoadError {
    pub name: String,
    pub path: PathBuf,
    pub problem: String,
}

impl LoadedPlugin {
    /// Compiles (or loads from cache) and links the component, checks it
    /// against the contract, calls `describe` and `init`, and commits what
    /// `init` wrote.
    pub async fn load(
        runtime: &Runtime,
        cfg: &PluginConfig,
        ledger: Arc<Ledger>,
    ) -> Result<Arc<Self>, LoadError> {
        let fail = |problem: String| LoadError {
            name: cfg.name.clone(),
            path: cfg.component.clone(),
            problem,
        };
        let source = ComponentSource::of(runtime, cfg).await.map_err(fail)?;
        let compiled = runtime.compile(&source.path).map_err(fail)?;
        let mut plugin = Self::prepare(runtime, cfg, ledger.clone(), compiled)
            .await
            .map_err(fail)?;
        plugin.path = source.path;
        plugin.pinned = source.pinned;
        plugin.signer = source.signer;
        let config = cfg.config_strings();
        let (plugin_ref, ledger_ref, config_ref) = (&plugin, &ledger, &config);
        let committed = call::serialized(&plugin, || async move {
            let (plugin, ledger) = (plugin_ref, ledger_ref);
            let config = config_ref.clone();
            let outcome = plugin
                .call("load".into(), move |p, s| {
                    Box::pin(async move { p.call_init(s, &config).await })
                })
                .await;
            let init = match outcome.result {
                Err(e) => Err(format!("`init` failed: {e}")),
                Ok(Err(message)) => Err(format!("`init` refused its configuration: {message}")),
                Ok(Ok(())) => Ok(()),
            };
            // A refused `init` is not committed, but a conflict is still
            // reported as one, so it is run again.
            let effects = match &init {
                Ok(()) => outcome.effects,
                Err(_) if outcome.effects.kv.conflicted => outcome.effects,
                Err(_) => CallEffects::default(),
            };
            let result = call::commit(
                ledger,
                &plugin.shared.name,
                "load",
                HostMeasurements::default(),
                effects,
            )
            .await;
            call::Committed {
                value: init,
                result,
            }
        })
        .await;
        committed.value.map_err(fail)?;
        committed
            .result
            .map_err(|e| fail(format!("cannot commit what `init` wrote: {e}")))?;
        Ok(Arc::new(plugin))
    }

    /// Everything of `load` but `init`: compile, check the contract, link,
    /// call `describe`. Used by `plugin inspect`.
    pub async fn prepare(
        runtime: &Runtime,
        cfg: &PluginConfig,
        ledger: Arc<Ledger>,
        (component, digest, cache): (Component, String, CacheOutcome),
    ) -> Result<Self, String> {
        let shape = ComponentShape::of(runtime.engine(), &component);
        let misfit = |p: String| format!("does not fit the contract {CONTRACT}: {p}");
        shape.check().map_err(misfit)?;
        let explained = |e: wasmtime::Error| misfit(shape.explain_link_error(&format!("{e:#}")));
        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(explained)?;
        let pre = ResourcePluginPre::new(instance_pre).map_err(explained)?;
        let shared = PluginShared {
            name: cfg.name.as_str().into(),
            config: cfg.config_strings().into_iter().collect(),
            limits: cfg.limits.clone(),
            memory_cap_bytes: (cfg.limits.memory_mb << 20) as usize,
            units: BTreeSet::new(),
            blobs: open_blob_store(runtime, cfg)?,
            outbound_http: Arc::new(
                HttpOutbound::new(&cfg.outbound.http, cfg.outbound.http_ca_file.as_deref())?
                    .with_deadlines(
                        cfg.outbound
                            .fetch_deadline_ms
                            .map_or(FETCH_DEADLINE, Duration::from_millis),
                        cfg.outbound
                            .blob_deadline_ms
                            .map_or(BLOB_DEADLINE, Duration::from_millis),
                    ),
            ),
            jobs: cfg.jobs.clone().and_then(|limits| {
                Some(PluginJobs {
                    engine: runtime.jobs()?.clone(),
                    limits,
                })
            }),
            outbound_udp: cfg.outbound.udp.iter().cloned().collect(),
        };
        let mut plugin = LoadedPlugin {
            shared: Arc::new(shared),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                kind: super::contract::ResourceKind::Other,
                units: Vec::new(),
            },
            digest,
            path: cfg.component.clone(),
            pinned: None,
            signer: None,
            shape,
            cache,
            reuse: Default::default(),
            pre,
            turns: Default::default(),
            engine: runtime.engine().clone(),
            ledger,
            max_ticks: runtime.ticks_for(Duration::from_millis(cfg.limits.cpu_ms)),
        };
        let described = plugin
            .call("load".into(), |p, s| Box::pin(p.call_describe(s)))
            .await
            .result
            .map_err(|e| format!("`describe` failed: {e}"))?;
        let mut units = BTreeSet::new();
        for u in &described.units {
            validate_unit_name(&u.name)
                .map_err(|p| format!("`describe` declares an invalid unit: {p}"))?;
            if !units.insert(u.name.clone()) {
                return Err(format!("`describe` declares unit `{}` twice", u.name));
            }
        }
        let mut shared = (*plugin.shared).clone();
        shared.units = units;
        plugin.shared = Arc::new(shared);
        plugin.info = described;
        Ok(plugin)
    }

    /// The configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }
}

/// Where a plugin's component file is, after pulling it if it lives in
/// a registry.
struct ComponentSource {
    path: PathBuf,
    pinned: Option<String>,
    signer: Option<[u8; 32]>,
}

impl ComponentSource {
    async fn of(runtime: &Runtime, cfg: &PluginConfig) -> Result<Self, String> {
        let Some(reference) = cfg.oci_reference() else {
            return Ok(Self {
                path: cfg.component.clone(),
                pinned: None,
                signer: None,
            });
        };
        let reference = reference?;
        let registries = runtime
            .registries()
            .ok_or("this runtime pulls no `oci://` components")?;
        let policy = if cfg.require_signature {
            let keys = cfg
                .trusted_keys
                .iter()
                .map(|k| crate::oci::TrustedKey::load(k))
                .collect::<Result<Vec<_>, _>>()?;
            crate::oci::SignaturePolicy::TrustedKeys(keys)
        } else {
            crate::oci::SignaturePolicy::NotRequired
        };
        let fetched = registries.fetch(&reference, &policy).await?;
        tracing::info!(
            plugin = %cfg.name,
            reference = %reference,
            pinned = %fetched.pinned,
            component = %fetched.component_digest,
            signer = fetched.signer.as_ref().map(|k| k.fingerprint_string()),
            offline = fetched.offline,
            "component pulled"
        );
        Ok(Self {
            path: fetched.component_path,
            pinned: Some(fetched.pinned.to_string()),
            signer: fetched.signer.map(|k| k.fingerprint),
        })
    }
}

/// Opens `<blob root>/<plugin name>` when the plugin has `[plugin.blobs]`
/// and the runtime has a blob root.
fn open_blob_store(
    runtime: &Runtime,
    cfg: &PluginConfig,
) -> Result<Option<Arc<BlobStore>>, String> {
    let (Some(blobs), Some(root)) = (&cfg.blobs, runtime.blob_root()) else {
        return Ok(None);
    };
    let dir = root.join(&cfg.name);
    BlobStore::open(&dir, blobs.quota_bytes)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| format!("cannot open the blob store {}: {e}", dir.display()))
}

fn validate_unit_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1 to 64 bytes of a-z, 0-9, `.`, `_`, `-`"
        ))
    }
}
