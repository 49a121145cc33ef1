//! Assembles a running gateway from its configuration: device key, ledger,
//! runtime, plugins, ingress — and takes it down again in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::identity::DeviceKey;
use crate::ingress::http::{HttpIngress, units};
use crate::ledger::{Ledger, NewRecord};
use crate::runtime::{LoadedPlugin, Runtime};

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
    /// The loaded plugins, in configuration order.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    ledger: Arc<Ledger>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    tickers: Vec<JoinHandle<()>>,
    _runtime: Arc<Runtime>,
}

impl RunningGateway {
    /// Starts everything in `config`. Fails before serving anything if the
    /// key, the ledger or any plugin is not right.
    pub async fn start(config: &GatewayConfig) -> Result<Self, StartError> {
        let key = DeviceKey::load(&config.key_path())?;
        let ledger = Ledger::open(&config.data_dir)?;
        let runtime = Arc::new(Runtime::new(
            &config.runtime,
            Some(&config.data_dir.join("compiled")),
        )?);
        let mut plugins = Vec::new();
        let mut routed = Vec::new();
        for p in &config.plugins {
            let loaded = LoadedPlugin::load(&runtime, p, ledger.clone()).await?;
            tracing::info!(
                plugin = %p.name,
                digest = %loaded.digest,
                version = %loaded.info.version,
                kind = crate::runtime::contract::kind_name(loaded.info.kind),
                route = p.route.as_deref().unwrap_or("-"),
                compiled = ?loaded.cache,
                "plugin loaded"
            );
            routed.push((p.normalized_route(), loaded.clone()));
            plugins.push(loaded);
        }
        let mut tickers = Vec::new();
        for (p, loaded) in config.plugins.iter().zip(&plugins) {
            if let Some(ms) = p.tick_interval_ms {
                let ticker = ticks(loaded.clone(), ledger.clone(), Duration::from_millis(ms));
                tickers.push(tokio::spawn(ticker));
            }
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
            &routed,
            ledger.clone(),
            config.http.clone(),
        ));
        let (stop, stop_rx) = watch::channel(false);
        // MQTT subscribers stop with the tickers (abort) and on `stop`.
        let subscriptions: Vec<_> = config
            .plugins
            .iter()
            .zip(&plugins)
            .filter_map(|(p, loaded)| Some((p.mqtt.clone()?, loaded.clone())))
            .collect();
        tickers.extend(crate::ingress::mqtt::start(
            &subscriptions,
            &ledger,
            &stop_rx,
        )?);
        let server = tokio::spawn(ingress.serve(listener, stop_rx));
        let gateway_id = key.gateway_id();
        tracing::info!(http_addr = %http_addr, gateway_id = %gateway_id, plugins = plugins.len(), "gateway ready");
        Ok(Self {
            http_addr,
            gateway_id,
            plugins,
            ledger,
            stop,
            server: Some(server),
            tickers,
            _runtime: runtime,
        })
    }

    /// Stops accepting, lets in-flight requests finish (within the grace
    /// period), then flushes and closes the ledger.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tickers.drain(..) {
            t.abort();
            let _ = t.await;
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.ledger.close();
        tracing::info!("gateway stopped");
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
async fn ticks(plugin: Arc<LoadedPlugin>, ledger: Arc<Ledger>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let id: Arc<str> = "tick".into();
    loop {
        interval.tick().await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let outcome = plugin.tick(&id, now_ms).await;
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
