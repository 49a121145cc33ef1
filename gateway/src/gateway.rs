//! Assembles a running gateway from its configuration: device key, ledger,
//! runtime, plugins, ingress — and takes it down again in order.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::identity::DeviceKey;
use crate::ingress::http::HttpIngress;
use crate::ledger::Ledger;
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
            _runtime: runtime,
        })
    }

    /// Stops accepting, lets in-flight requests finish (within the grace
    /// period), then flushes and closes the ledger.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
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
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
