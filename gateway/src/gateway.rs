//! Assembles a running gateway from its configuration: device key, ledger,
//! runtime, plugins, ingress — and takes it down again in order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::GatewayConfig;
use crate::ledger::Ledger;
use crate::runtime::{LoadedPlugin, Runtime};

use crate::admin::console::ConsoleSources;
use crate::admin::{AdminApi, AdminServer};
use crate::ingress::http::{HttpIngress, HttpServer};
use crate::ingress::mqtt;
use crate::ingress::tls::{CertWatcher, TlsIngress};
use crate::ingress::udp::{IngressPorts, UdpIngress};
use crate::plugin_table::PluginTable;
use crate::proofs::self_check::{SelfCheckBoard, SelfChecks};
use crate::reload::{ConfigWatcher, ReloadError, ReloadReport, Reloader};
use crate::service::Services;

/// Why the gateway did not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Plugin(#[from] crate::runtime::LoadError),
    #[error(transparent)]
    Policy(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Epochs(#[from] crate::epochs::EpochStoreError),
    #[error(transparent)]
    UpstreamTls(#[from] crate::upstream::tls::TlsError),
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobsError),
    #[error(transparent)]
    Tls(#[from] crate::ingress::tls::TlsError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error(transparent)]
    Mqtt(#[from] crate::ingress::mqtt::MqttSetupError),
    #[error("registries: {0}")]
    Registries(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A gateway that is serving. Dropping it without `shutdown` aborts it.
pub struct RunningGateway {
    /// The bound HTTP address (useful with port 0).
    pub http_addr: SocketAddr,
    /// The device's gateway id.
    pub gateway_id: String,
    /// The plugins loaded at start, in configuration order (reloads
    /// change [`RunningGateway::table`], not this).
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// The bound admin address, when `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
    /// The TLS side of the ingress, when `[http.tls]` is configured.
    pub tls: Option<Arc<TlsIngress>>,
    ledger: Arc<Ledger>,
    /// Every background service, in start order; stopped by `shutdown`.
    services: Services,
    /// The bound UDP ingress address of each plugin that has one.
    udp_addrs: Vec<(String, SocketAddr)>,
    /// The UDP ingress sockets, for `prove` calls that reply.
    ingress_ports: crate::ingress::udp::IngressPorts,
    reloader: Arc<Reloader>,
    _runtime: Arc<Runtime>,
}

impl RunningGateway {
    /// Starts everything in `config`. Fails before serving anything if the
    /// key, the ledger or any plugin is not right.
    pub async fn start(config: &GatewayConfig) -> Result<Self, StartError> {
        Self::start_with_source(config, None).await
    }

    /// Like [`RunningGateway::start`]; `source` is the file `config` came
    /// from, re-read by reloads (without it, a reload re-reads the
    /// components of `config`).
    pub async fn start_with_source(
        config: &GatewayConfig,
        source: Option<&Path>,
    ) -> Result<Self, StartError> {
        let key = config.key_source().open()?;
        crate::otel::init_from_env();
        let mut services = Services::default();
        let ledger = Ledger::open(&config.data_dir)?;
        let seal = match crate::runtime::CodeSeal::from_device_key(key.as_ref()) {
            Ok(seal) => seal,
            Err(e) => {
                tracing::warn!(error = %e, "compiled code is cached for this process only");
                crate::runtime::CodeSeal::ephemeral()
            }
        };
        let mut runtime = Runtime::new(&config.runtime, Some(&config.data_dir.join("compiled")))?
            .with_blob_root(config.data_dir.join("blobs"))
            .with_code_seal(seal.clone())
            .with_registries(Arc::new(
                crate::oci::Registries::new(
                    &config.registries,
                    crate::oci::LocalCopies::new(config.data_dir.join("oci")),
                )
                .map_err(StartError::Registries)?,
            ));
        if config.plugins.iter().any(|p| p.jobs.is_some()) {
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let jobs = crate::jobs::JobEngine::open(&config.data_dir.join("jobs"), workers)?
                .with_compile_slots(config.runtime.job_compile_slots as usize)
                .with_code_seal(seal);
            runtime = runtime.with_jobs(Arc::new(jobs));
        }
        let runtime = Arc::new(runtime);
        let reloader = Reloader::start(
            runtime.clone(),
            ledger.clone(),
            config,
            source,
            services.signal(),
        )
        .await?;
        let plugins: Vec<Arc<LoadedPlugin>> = reloader
            .table()
            .snapshot()
            .plugins
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        let tls = match &config.http.tls {
            Some(t) => Some(Arc::new(TlsIngress::new(t)?)),
            None => None,
        };
        let gateway_id = key.gateway_id();
        let epoch_store = Arc::new(crate::epochs::EpochStore::open(&config.data_dir)?);
        let self_checks = Arc::new(SelfCheckBoard::default());
        let admin = match &config.admin {
            Some(a) => {
                let epoch_length_ms = config.epochs.length_ms;
                let sources = ConsoleSources {
                    data_dir: config.data_dir.clone(),
                    epochs: epoch_store.clone(),
                    self_checks: self_checks.clone(),
                    upstream: config.upstream.as_ref().map(|u| u.url.to_string()),
                };
                Some(
                    AdminApi::bind(
                        a,
                        gateway_id.clone(),
                        ledger.clone(),
                        reloader.clone(),
                        epoch_length_ms,
                        sources,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let mut udp = Vec::new();
        for p in &config.plugins {
            let table = reloader.table().clone();
            let bound = UdpIngress::bind(table, p, ledger.clone()).await?;
            udp.extend(bound);
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let ingress = Arc::new(HttpIngress::new(
            reloader.table().clone(),
            ledger.clone(),
            config.http.clone(),
        ));
        if let Some(t) = &tls {
            services.start(CertWatcher(t.clone()));
        }
        services.start(HttpServer {
            ingress,
            listener,
            tls: tls.clone(),
        });
        let mut admin_addr = None;
        if let Some((api, listener)) = admin {
            admin_addr = listener.local_addr().ok();
            services.start(AdminServer { api, listener });
        }
        if config.reload.watch {
            services.start(ConfigWatcher {
                reloader: reloader.clone(),
                every: Duration::from_millis(config.reload.poll_ms),
            });
        }
        let subscriptions: Vec<_> = config
            .plugins
            .iter()
            .filter_map(|p| Some((p.mqtt.clone()?, Arc::<str>::from(p.name.as_str()))))
            .collect();
        for subscription in mqtt::subscriptions(&subscriptions, reloader.table(), &ledger)? {
            services.start(subscription);
        }
        let ingress_ports = IngressPorts::of(&udp);
        let udp_addrs = udp
            .iter()
            .filter_map(|u| Some((u.plugin().to_string(), u.listen_addr()?)))
            .collect();
        for u in udp {
            services.start(u);
        }
        crate::epochs::start(
            config,
            &key,
            &ledger,
            epoch_store,
            reloader.table(),
            &ingress_ports,
            &mut services,
        )?;
        if !config.self_check.possession.is_empty() {
            services.start(SelfChecks {
                config: config.self_check.clone(),
                prover: crate::proofs::responder::Prover::new(
                    reloader.table().clone(),
                    ledger.clone(),
                    ingress_ports.clone(),
                ),
                board: self_checks,
            });
        }
        tracing::info!(
            http_addr = %http_addr,
            admin_addr = admin_addr.map(|a| a.to_string()),
            tls = tls.is_some(),
            gateway_id = %gateway_id,
            device_key = %key.location(),
            plugins = plugins.len(),
            "gateway ready"
        );
        Ok(Self {
            http_addr,
            gateway_id,
            plugins,
            admin_addr,
            tls,
            ledger,
            services,
            udp_addrs,
            ingress_ports,
            reloader,
            _runtime: runtime,
        })
    }

    /// Resolves, with the reason, once the ledger's storage has failed for
    /// good (see [`crate::ledger::LedgerHealth`]); never otherwise.
    pub async fn ledger_storage_failed(&self) -> String {
        let mut health = self.ledger.watch_health();
        loop {
            if let Some(why) = health.borrow_and_update().storage_failed.clone() {
                return why;
            }
            if health.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The plugin table every ingress reads per call.
    pub fn table(&self) -> &Arc<PluginTable> {
        self.reloader.table()
    }

    /// Validates and swaps in the plugins of the (re-read) configuration; on
    /// error the current plugins keep serving. See [`crate::reload`].
    pub async fn reload(&self, trigger: &str) -> Result<ReloadReport, ReloadError> {
        self.reloader.reload(trigger).await
    }

    /// Stops accepting, lets in-flight requests finish (within the grace
    /// period), then flushes and closes the ledger.
    pub async fn shutdown(mut self) {
        // Every service watches the shutdown signal; each gets its drain
        // time to finish what it holds (in-flight requests, an epoch close,
        // a commit) before it is aborted, so the ledger is really closed
        // when this returns.
        self.services.stop().await;
        self.reloader.stop_tickers().await;
        self.ledger.close();
        crate::otel::flush();
        tracing::info!("gateway stopped");
    }
}

impl RunningGateway {
    /// Answers possession challenges as the challenge responder does:
    /// `prove` with the current plugins, each call committed before the
    /// datagrams it queued are sent, pending answers asked again.
    pub fn prover(&self) -> crate::proofs::responder::Prover {
        crate::proofs::responder::Prover::new(
            self.reloader.table().clone(),
            self.ledger.clone(),
            self.ingress_ports.clone(),
        )
    }

    /// The bound UDP ingress address of `plugin`, if it has one.
    pub fn udp_addr(&self, plugin: &str) -> Option<SocketAddr> {
        self.udp_addrs
            .iter()
            .find(|(name, _)| name == plugin)
            .map(|(_, addr)| *addr)
    }
}
