//! Hot reload of the plugins, on SIGHUP, the admin call, or (opt-in) when
//! the configuration or a component file changes.
//!
//! A reload first builds and validates the whole new generation: it parses
//! the configuration, then loads every plugin whose table or component
//! changed (compile, contract check, `describe`, `init`). Only if all of it
//! succeeds does it swap the [`PluginTable`] in one step; calls in flight
//! finish on the old version and no call fails. Otherwise the old
//! generation keeps serving and the error is logged, counted, kept for
//! `/v1/status` and returned to the caller.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use depin_protocol::time::now_ms;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{GatewayConfig, PluginConfig};
use crate::ingress::tick::Ticker;
use crate::ledger::Ledger;
use crate::plugin_table::{PluginSet, PluginTable};
use crate::runtime::{LoadError, LoadedPlugin, Runtime};
use crate::service::{Service, stopped};

/// The outcome of the latest reload, as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Unix time of the attempt, in milliseconds.
    pub at_ms: u64,
    /// Whether the new generation was swapped in.
    pub ok: bool,
    /// The generation serving after the attempt.
    pub generation: u64,
    /// Plugins that were (re)loaded; unchanged plugins are kept as they are.
    pub reloaded: Vec<String>,
    /// Plugins that are gone.
    pub removed: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<String>,
    /// Why the reload was refused, when it was.
    pub error: Option<String>,
}

/// Why a reload was refused. The old generation keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Plugin(#[from] LoadError),
}

struct Current {
    config: GatewayConfig,
    tickers: Tickers,
}

/// The tickers of one plugin generation.
struct Tickers {
    /// Turns true to stop them between ticks.
    retire: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Tickers {
    /// Stops them between ticks: a tick in flight finishes and is
    /// committed first (bounded by its CPU deadline and the ledger).
    async fn retire(&mut self) {
        let _ = self.retire.send(true);
        for t in self.handles.drain(..) {
            let _ = t.await;
        }
    }
}

/// Owns the plugin generations: builds them, swaps them in, runs their
/// tickers.
pub struct Reloader {
    runtime: Arc<Runtime>,
    ledger: Arc<Ledger>,
    table: Arc<PluginTable>,
    /// The configuration file re-read on reload; without one, a reload
    /// re-reads the components of the configuration the gateway started with.
    source: Option<PathBuf>,
    /// Serializes reloads.
    current: tokio::sync::Mutex<Current>,
    last: Mutex<Option<ReloadReport>>,
    /// The gateway's shutdown signal, handed to every ticker.
    shutdown: watch::Receiver<bool>,
}

impl Reloader {
    /// Loads the first generation of `config`'s plugins and starts their
    /// tickers, which stop on `shutdown`.
    pub async fn start(
        runtime: Arc<Runtime>,
        ledger: Arc<Ledger>,
        config: &GatewayConfig,
        source: Option<&Path>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, LoadError> {
        let mut plugins = Vec::new();
        for p in &config.plugins {
            let loaded = LoadedPlugin::load(&runtime, p, ledger.clone()).await?;
            log_loaded(p, &loaded);
            plugins.push((p.clone(), loaded));
        }
        let set = PluginSet::new(1, plugins);
        let tickers = spawn_tickers(&set, &ledger, &shutdown);
        Ok(Arc::new(Self {
            runtime,
            ledger,
            table: Arc::new(PluginTable::new(set)),
            source: source.map(Path::to_path_buf),
            current: tokio::sync::Mutex::new(Current {
                config: config.clone(),
                tickers,
            }),
            last: Mutex::new(None),
            shutdown,
        }))
    }

    /// The table the ingresses read.
    pub fn table(&self) -> &Arc<PluginTable> {
        &self.table
    }

    /// The latest reload's outcome, if there was one.
    pub fn last_report(&self) -> Option<ReloadReport> {
        self.last.lock().expect("reload report lock").clone()
    }

    /// Validates and swaps in a new generation (see the module docs).
    /// `trigger` names the cause in the log (`sighup`, `admin`, `watch`).
    pub async fn reload(&self, trigger: &str) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().await;
        let attempt = self.build(&current.config).await;
        let old = self.table.snapshot();
        let report = match attempt {
            Ok((config, set, reloaded, needs_restart)) => {
                let removed: Vec<String> = old
                    .plugins
                    .iter()
                    .map(|(c, _)| c.name.clone())
                    .filter(|n| !config.plugins.iter().any(|p| &p.name == n))
                    .collect();
                // The old generation's ticks in flight finish before the
                // new generation's tickers start: a tick cut short would
                // leave its work (a job run) uncommitted, to be done again.
                current.tickers.retire().await;
                current.tickers = spawn_tickers(&set, &self.ledger, &self.shutdown);
                let generation = set.generation;
                self.table.swap(set);
                current.config = config;
                tracing::info!(
                    trigger,
                    generation,
                    reloaded = ?reloaded,
                    removed = ?removed,
                    "plugins reloaded"
                );
                if !needs_restart.is_empty() {
                    tracing::warn!(settings = ?needs_restart, "changed settings take effect after a restart");
                }
                Ok(ReloadReport {
                    at_ms: now_ms(),
                    ok: true,
                    generation,
                    reloaded,
                    removed,
                    needs_restart,
                    error: None,
                })
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "reload refused; the previous plugins keep serving");
                Err(e)
            }
        };
        crate::metrics::global().record_reload(report.is_ok());
        let shown = match &report {
            Ok(r) => r.clone(),
            Err(e) => ReloadReport {
                at_ms: now_ms(),
                ok: false,
                generation: old.generation,
                reloaded: Vec::new(),
                removed: Vec::new(),
                needs_restart: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        *self.last.lock().expect("reload report lock") = Some(shown);
        report
    }

    /// Builds the next generation without touching the current one.
    async fn build(
        &self,
        running: &GatewayConfig,
    ) -> Result<(GatewayConfig, PluginSet, Vec<String>, Vec<String>), ReloadError> {
        let config = match &self.source {
            Some(path) => GatewayConfig::load(path)?,
            None => running.clone(),
        };
        let needs_restart = restart_only_changes(running, &config);
        let old = self.table.snapshot();
        let mut plugins = Vec::new();
        let mut reloaded = Vec::new();
        for p in &config.plugins {
            // A digest-pinned `oci://` component is unchanged while its
            // table is; a tag is resolved again (it may have moved).
            let same_component = |loaded: &LoadedPlugin| match p.oci_reference() {
                Some(r) => r.is_ok_and(|r| r.digest().is_some()),
                None => file_digest(&p.component).as_deref() == Some(loaded.digest.as_str()),
            };
            let unchanged = old
                .plugins
                .iter()
                .find(|(c, loaded)| c == p && same_component(loaded));
            let loaded = match unchanged {
                Some((_, loaded)) => loaded.clone(),
                None => {
                    let loaded = LoadedPlugin::load(&self.runtime, p, self.ledger.clone()).await?;
                    log_loaded(p, &loaded);
                    reloaded.push(p.name.clone());
                    loaded
                }
            };
            plugins.push((p.clone(), loaded));
        }
        let set = PluginSet::new(old.generation + 1, plugins);
        Ok((config, set, reloaded, needs_restart))
    }

    /// Reloads whenever the configuration file or a plugin's component
    /// changes (checked every `every`), until `stop` turns true.
    pub async fn watch_files(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut seen = self.stamps().await;
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            let now = self.stamps().await;
            if now != seen {
                // Errors are logged and reported by `reload`; the next
                // change of the files triggers another attempt.
                let _ = self.reload("watch").await;
                seen = self.stamps().await;
            }
        }
    }

    async fn stamps(&self) -> Vec<Option<SystemTime>> {
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let current = self.current.lock().await;
        let mut files: Vec<Option<SystemTime>> = current
            .config
            .plugins
            .iter()
            .map(|p| stamp(&p.component))
            .collect();
        if let Some(source) = &self.source {
            files.push(stamp(source));
        }
        files
    }

    /// Stops the tickers (at shutdown), letting a tick in flight finish.
    pub async fn stop_tickers(&self) {
        let mut current = self.current.lock().await;
        current.tickers.retire().await;
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        if let Ok(current) = self.current.try_lock() {
            for t in &current.tickers.handles {
                t.abort();
            }
        }
    }
}

fn log_loaded(p: &PluginConfig, loaded: &LoadedPlugin) {
    tracing::info!(
        plugin = %p.name,
        digest = %loaded.digest,
        pinned = loaded.pinned.as_deref(),
        signer = loaded.signer.map(hex::encode),
        version = %loaded.info.version,
        kind = crate::runtime::contract::kind_name(loaded.info.kind),
        route = p.route.as_deref().unwrap_or("-"),
        compiled = ?loaded.cache,
        "plugin loaded"
    );
}

fn spawn_tickers(
    set: &PluginSet,
    ledger: &Arc<Ledger>,
    shutdown: &watch::Receiver<bool>,
) -> Tickers {
    let (retire, retired) = watch::channel(false);
    let handles = set
        .plugins
        .iter()
        .filter_map(|(cfg, loaded)| {
            let ticker = Ticker {
                plugin: loaded.clone(),
                ledger: ledger.clone(),
                every: Duration::from_millis(cfg.tick_interval_ms?),
                retired: retired.clone(),
            };
            Some(ticker.spawn(shutdown.clone()))
        })
        .collect();
    Tickers { retire, handles }
}

/// `sha256:<hex>` of a file, as `LoadedPlugin::digest` spells it.
fn file_digest(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).ok()?;
    Some(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
}

/// Settings a reload cannot apply to a running gateway.
fn restart_only_changes(old: &GatewayConfig, new: &GatewayConfig) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            changed.push(key.to_string());
        }
    };
    check("listen", old.listen == new.listen);
    check("data_dir", old.data_dir == new.data_dir);
    check("key_path", old.key_path == new.key_path);
    check("key", old.key == new.key && old.pkcs11 == new.pkcs11);
    check("log_format", old.log_format == new.log_format);
    check("http", old.http == new.http);
    check("runtime", old.runtime == new.runtime);
    check("admin", old.admin == new.admin);
    check("reload", old.reload == new.reload);
    check("registry", old.registries == new.registries);
    // The UDP and MQTT ingresses bind their sockets and sessions at start.
    for p in &new.plugins {
        let before = old.plugins.iter().find(|o| o.name == p.name);
        let udp = before.map(|o| (&o.udp, &o.outbound.udp));
        if udp.is_some_and(|u| u != (&p.udp, &p.outbound.udp))
            || (before.is_none() && (p.udp.is_some() || !p.outbound.udp.is_empty()))
        {
            changed.push(format!("plugin {}: udp", p.name));
        }
        let mqtt = before.map(|o| &o.mqtt);
        if mqtt.is_some_and(|m| m != &p.mqtt) || (before.is_none() && p.mqtt.is_some()) {
            changed.push(format!("plugin {}: mqtt", p.name));
        }
    }
    changed
}

/// Reloads when the configuration file or a component changes, as a
/// [`Service`] (`[reload] watch`).
pub struct ConfigWatcher {
    pub reloader: Arc<Reloader>,
    /// How often the files are checked.
    pub every: Duration,
}

impl Service for ConfigWatcher {
    fn name(&self) -> &'static str {
        "config-watcher"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.reloader.watch_files(self.every, shutdown))
    }
}
