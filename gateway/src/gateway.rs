//! Assembles a running gateway from its configuration: device key, ledger,
//! runtime, plugins, ingress — and takes it down again in order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use depin_protocol::time::now_ms;
use depin_protocol::units;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::identity::DeviceKey;
use crate::ingress::http::HttpIngress;
use crate::ledger::{Ledger, NewRecord};
use crate::runtime::{LoadedPlugin, Runtime};

use crate::admin::AdminApi;
use crate::ingress::tls::TlsIngress;
use crate::plugin_table::PluginTable;
use crate::reload::{ReloadError, ReloadReport, Reloader};

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
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    tickers: Vec<JoinHandle<()>>,
    /// UDP sockets and lanes of the plugins that have them.
    udp: Vec<crate::ingress::udp::UdpIngress>,
    /// Their ingress sockets, for `prove` calls that reply.
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
        let key = DeviceKey::load(&config.key_path())?;
        crate::otel::init_from_env();
        let ledger = Ledger::open(&config.data_dir)?;
        let mut runtime = Runtime::new(&config.runtime, Some(&config.data_dir.join("compiled")))?
            .with_blob_root(config.data_dir.join("blobs"));
        if config.plugins.iter().any(|p| p.jobs.is_some()) {
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let jobs = crate::jobs::JobEngine::open(&config.data_dir.join("jobs"), workers)?;
            runtime = runtime.with_jobs(Arc::new(jobs));
        }
        let runtime = Arc::new(runtime);
        let reloader = Reloader::start(runtime.clone(), ledger.clone(), config, source).await?;
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
        let admin = match &config.admin {
            Some(a) => {
                let epoch_length_ms = config.epochs.length_ms;
                Some(
                    AdminApi::bind(
                        a,
                        gateway_id.clone(),
                        ledger.clone(),
                        reloader.clone(),
                        epoch_length_ms,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let mut tickers = Vec::new();
        let mut udp = Vec::new();
        for p in &config.plugins {
            let started =
                crate::ingress::udp::UdpIngress::start(reloader.table().clone(), p, ledger.clone())
                    .await?;
            udp.extend(started);
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
        let (stop, stop_rx) = watch::channel(false);
        let server = match &tls {
            Some(t) => {
                tickers.push(tokio::spawn(t.clone().watch_files(stop_rx.clone())));
                tokio::spawn(ingress.serve_tls(listener, t.clone(), stop_rx.clone()))
            }
            None => tokio::spawn(ingress.serve(listener, stop_rx.clone())),
        };
        let mut admin_addr = None;
        if let Some((api, listener)) = admin {
            admin_addr = listener.local_addr().ok();
            tickers.push(tokio::spawn(api.serve(listener, stop_rx.clone())));
        }
        if config.reload.watch {
            let every = Duration::from_millis(config.reload.poll_ms);
            tickers.push(tokio::spawn(
                reloader.clone().watch_files(every, stop_rx.clone()),
            ));
        }
        // MQTT subscribers stop with the tickers (abort) and on `stop`.
        let subscriptions: Vec<_> = config
            .plugins
            .iter()
            .filter_map(|p| Some((p.mqtt.clone()?, Arc::<str>::from(p.name.as_str()))))
            .collect();
        tickers.extend(crate::ingress::mqtt::start(
            &subscriptions,
            reloader.table(),
            &ledger,
            &stop_rx,
        )?);
        let ingress_ports = crate::ingress::udp::IngressPorts::of(&udp);
        tickers.extend(crate::epochs::start(
            config,
            &key,
            &ledger,
            reloader.table(),
            &ingress_ports,
            &stop_rx,
        )?);
        tracing::info!(
            http_addr = %http_addr,
            admin_addr = admin_addr.map(|a| a.to_string()),
            tls = tls.is_some(),
            gateway_id = %gateway_id,
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
            stop,
            server: Some(server),
            tickers,
            udp,
            ingress_ports,
            reloader,
            _runtime: runtime,
        })
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
        let _ = self.stop.send(true);
        // The ingresses and workers all watch `stop`; give them a moment to
        // finish what they hold (an epoch close, a commit) before aborting
        // the stragglers, so the ledger is really closed when this returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for mut t in self.tickers.drain(..) {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        self.reloader.stop_tickers().await;
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        for u in self.udp.drain(..) {
            u.stop().await;
        }
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
        self.udp
            .iter()
            .find(|u| u.plugin() == plugin)
            .and_then(|u| u.listen_addr())
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tickers {
            t.abort();
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Calls a plugin's `tick` export every `every`, committing what it
/// records and writes, with the host's measurements (subject `tick`).
pub(crate) async fn ticks(plugin: Arc<LoadedPlugin>, ledger: Arc<Ledger>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let id: Arc<str> = "tick".into();
    loop {
        interval.tick().await;
        let outcome = plugin.tick(&id, now_ms()).await;
        let mut effects = outcome.effects;
        let host = |unit: &str, quantity: u64| NewRecord::host(unit, quantity, &id);
        effects.records.splice(
            0..0,
            [
                host(units::WALL_TIME_US, outcome.wall.as_micros() as u64),
                host(units::FUEL, outcome.fuel),
            ],
        );
        if let Err(e) = ledger.commit(plugin.name().clone(), effects).await {
            tracing::error!(plugin = %plugin.name(), error = %e, "cannot commit a tick's usage");
        }
    }
}
