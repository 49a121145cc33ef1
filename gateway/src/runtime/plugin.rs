//! A loaded plugin and the per-call path: `Store::new` → instantiate (pooled)
//! → call the export → collect effects. Nothing else happens per call.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::contract::{
    CONTRACT, Challenge, ComponentShape, Datagram, HttpRequest, HttpResponse, PluginInfo, Proof,
    ResourcePlugin, ResourcePluginPre,
};
use super::host::blobs::PassThrough;
use super::host::outbound_http::HttpOutbound;
use super::host::outbound_udp::RecentPeers;
use super::state::CallState;
use super::{CacheOutcome, Runtime};
use crate::blobstore::BlobStore;
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
    pub path: PathBuf,
    pub shape: ComponentShape,
    pub cache: CacheOutcome,
    /// Answers the plugin marked reusable (see [`super::reuse`]); empty
    /// after every load, so a reload never serves the old plugin's answers.
    pub reuse: super::reuse::ReuseTable,
    pre: ResourcePluginPre<CallState>,
    engine: wasmtime::Engine,
    ledger: Arc<Ledger>,
    max_ticks: u64,
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

/// Why one call failed. Only that call is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin exceeded its CPU deadline of {0} ms")]
    Deadline(u64),
    #[error("the plugin exceeded its memory limit of {0} MiB")]
    Memory(u64),
    #[error("the plugin ran out of fuel (budget {0})")]
    Fuel(u64),
    #[error("too many plugin calls at once; try again")]
    Busy,
    #[error("host failure: {0}")]
    Host(String),
}

impl CallError {
    /// A short machine-readable kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Trap(_) => "trap",
            CallError::Deadline(_) => "deadline",
            CallError::Memory(_) => "memory",
            CallError::Fuel(_) => "fuel",
            CallError::Busy => "busy",
            CallError::Host(_) => "host",
        }
    }
}

/// The result of one call and what the host measured about it.
#[derive(Debug)]
pub struct CallOutcome<R> {
    pub result: Result<R, CallError>,
    /// The call's buffered records and kv writes; empty when it failed.
    pub effects: CallEffects,
    /// Fuel the call consumed (host-attested).
    pub fuel: u64,
    /// Wall time from `Store::new` to the export's return.
    pub wall: Duration,
}

type ExportCall<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

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
        let compiled = runtime.compile(&cfg.component).map_err(fail)?;
        let plugin = Self::prepare(runtime, cfg, ledger.clone(), compiled)
            .await
            .map_err(fail)?;
        let config = cfg.config_strings();
        let outcome = plugin
            .call("load".into(), move |p, s| {
                Box::pin(async move { p.call_init(s, &config).await })
            })
            .await;
        match outcome.result {
            Err(e) => return Err(fail(format!("`init` failed: {e}"))),
            Ok(Err(message)) => {
                return Err(fail(format!("`init` refused its configuration: {message}")));
            }
            Ok(Ok(())) => {}
        }
        ledger
            .commit(plugin.shared.name.clone(), outcome.effects)
            .await
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
        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| misfit(format!("{e:#}")))?;
        let pre = ResourcePluginPre::new(instance_pre).map_err(|e| misfit(format!("{e:#}")))?;
        let shared = PluginShared {
            name: cfg.name.as_str().into(),
            config: cfg.config_strings().into_iter().collect(),
            limits: cfg.limits.clone(),
            memory_cap_bytes: (cfg.limits.memory_mb << 20) as usize,
            units: BTreeSet::new(),
            blobs: open_blob_store(runtime, cfg)?,
            outbound_http: Arc::new(HttpOutbound::new(
                &cfg.outbound.http,
                cfg.outbound.http_ca_file.as_deref(),
            )?),
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
            shape,
            cache,
            reuse: Default::default(),
            pre,
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

    /// Calls `handle-http`. Also returns the origin response the call
    /// opened with `blobs.pass-through`, if any.
    pub async fn handle_http(
        &self,
        request_id: &Arc<str>,
        req: HttpRequest,
    ) -> CallOutcome<(HttpResponse, Option<PassThrough>)> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move {
                let r = p.call_handle_http(&mut *s, &req).await?;
                Ok((r, s.data_mut().blobs.pass_through.take()))
            })
        })
        .await
    }

    /// Calls `handle-datagram`.
    pub async fn handle_datagram(
        &self,
        request_id: &Arc<str>,
        d: Datagram,
    ) -> CallOutcome<Vec<Datagram>> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_handle_datagram(s, &d).await })
        })
        .await
    }

    /// Calls `handle-datagram` for a datagram that arrived on the ingress
    /// socket (`arrived_on` none) or on an upstream session's socket.
    /// `ingress` is the plugin's ingress socket, if it has one. The call may
    /// queue datagrams through `outbound-udp`; they are returned with its
    /// answer, to be sent after its effects are committed: first the
    /// answers for ingress peers (`reply`, then the returned ones), then
    /// the upstream ones.
    pub async fn handle_datagram_on(
        &self,
        request_id: &Arc<str>,
        d: Datagram,
        arrived_on: Option<Arc<str>>,
        ingress: Option<Arc<dyn RecentPeers>>,
    ) -> CallOutcome<(Vec<Datagram>, Vec<super::QueuedDatagram>)> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move {
                let udp = &mut s.data_mut().outbound_udp;
                udp.enabled = true;
                udp.arrived_on = arrived_on;
                udp.ingress = ingress;
                let returned = p.call_handle_datagram(&mut *s, &d).await?;
                let udp = &mut s.data_mut().outbound_udp;
                let mut replies = std::mem::take(&mut udp.replies);
                replies.extend(returned);
                Ok((replies, std::mem::take(&mut udp.queued)))
            })
        })
        .await
    }

    /// Calls `handle-message`.
    pub async fn handle_message(
        &self,
        request_id: &Arc<str>,
        topic: String,
        payload: Vec<u8>,
    ) -> CallOutcome<Result<(), String>> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_handle_message(s, &topic, &payload).await })
        })
        .await
    }

    /// Calls `tick`.
    pub async fn tick(&self, request_id: &Arc<str>, now_ms: u64) -> CallOutcome<()> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(p.call_tick(s, now_ms))
        })
        .await
    }

    /// Calls `prove` without an ingress socket (`reply` answers
    /// `unavailable`). The caller commits the outcome's effects; the
    /// challenge responder uses [`LoadedPlugin::prove_with_replies`].
    pub async fn prove(
        &self,
        request_id: &Arc<str>,
        c: Challenge,
    ) -> CallOutcome<Result<Proof, String>> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_prove(s, &c).await })
        })
        .await
    }

    /// Calls `prove` with the plugin's ingress socket (if it has one), so
    /// the call may `reply` to the ingress's recent peers. Returns the
    /// proof and the datagrams the call queued, to be sent after its
    /// effects are committed.
    pub async fn prove_with_replies(
        &self,
        request_id: &Arc<str>,
        c: Challenge,
        ingress: Option<Arc<dyn RecentPeers>>,
    ) -> CallOutcome<(Result<Proof, String>, Vec<Datagram>)> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move {
                s.data_mut().outbound_udp.ingress = ingress;
                let proof = p.call_prove(&mut *s, &c).await?;
                Ok((
                    proof,
                    std::mem::take(&mut s.data_mut().outbound_udp.replies),
                ))
            })
        })
        .await
    }

    /// Calls `verify`.
    pub async fn verify(
        &self,
        request_id: &Arc<str>,
        c: Challenge,
        proof: Proof,
    ) -> CallOutcome<bool> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_verify(s, &c, &proof).await })
        })
        .await
    }

    /// The per-call path. Keep it short: a reader should be able to audit
    /// every allocation here.
    async fn call<R>(
        &self,
        request_id: Arc<str>,
        f: impl for<'a> FnOnce(&'a ResourcePlugin, &'a mut Store<CallState>) -> ExportCall<'a, R>,
    ) -> CallOutcome<R> {
        let started = Instant::now();
        let state = CallState::new(
            self.shared.clone(),
            self.ledger.clone(),
            request_id,
            self.max_ticks,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let budget = self.shared.limits.fuel.unwrap_or(u64::MAX);
        let _ = store.set_fuel(budget);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let s = cx.data_mut();
            s.ticks += 1;
            if s.ticks >= s.max_ticks {
                s.deadline_hit = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let result = match self.pre.instantiate_async(&mut store).await {
            Ok(bindings) => f(&bindings, &mut store).await,
            Err(e) => Err(e),
        };
        let fuel = budget.saturating_sub(store.get_fuel().unwrap_or(0));
        let wall = started.elapsed();
        let mut state = store.into_data();
        let mut records = std::mem::take(&mut state.jobs.host_records);
        match result {
            Ok(value) => CallOutcome {
                result: Ok(value),
                effects: CallEffects {
                    records: {
                        records.append(&mut state.metering.usage);
                        records
                    },
                    kv: state.kv.writes,
                },
                fuel,
                wall,
            },
            Err(e) => {
                let error = self.classify(&state, &e);
                tracing::warn!(
                    plugin = %self.shared.name,
                    request_id = %state.request_id,
                    kind = error.kind(),
                    error = %format!("{e:?}"),
                    stderr = state.stderr_text().unwrap_or_default(),
                    "plugin call failed"
                );
                CallOutcome {
                    result: Err(error),
                    effects: CallEffects {
                        records,
                        ..CallEffects::default()
                    },
                    fuel,
                    wall,
                }
            }
        }
    }

    fn classify(&self, state: &CallState, e: &wasmtime::Error) -> CallError {
        if state.deadline_hit {
            return CallError::Deadline(self.shared.limits.cpu_ms);
        }
        if state.limiter.memory_cap_hit {
            return CallError::Memory(self.shared.limits.memory_mb);
        }
        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return CallError::Busy;
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => CallError::Fuel(self.shared.limits.fuel.unwrap_or(u64::MAX)),
            Some(trap) => {
                let detail = state
                    .stderr_text()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                CallError::Trap(format!("{trap}{detail}"))
            }
            None => CallError::Host(format!("{e:#}")),
        }
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
