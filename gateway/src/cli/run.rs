//! `depin-gateway run`: serve until SIGTERM or SIGINT, reloading the
//! plugins on SIGHUP.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::async_runtime;
use crate::config::{GatewayConfig, LogFormat};

pub(super) fn run(config_path: &Path, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
    let config = GatewayConfig::load(config_path)?;
    crate::telemetry::init(log_format.unwrap_or(config.log_format));
    let key_path = config.key_path();
    if config.key.is_none() && !key_path.exists() {
        bail!(
            "no device key at {}; create one with `depin-gateway keygen --config {}`",
            key_path.display(),
            config_path.display()
        );
    }
    async_runtime()?.block_on(async {
        // Installed before the gateway reports ready: an early SIGHUP
        // reloads and an early SIGTERM shuts down cleanly, instead of the
        // default action ending the process.
        let signals = Signals::install()?;
        let gateway = crate::RunningGateway::start_with_source(&config, Some(config_path)).await?;
        let exit = tokio::select! {
            _ = signals.wait_reloading_on_hangup(&gateway) => ExitCode::SUCCESS,
            why = gateway.ledger_storage_failed() => {
                tracing::error!(
                    error = %why,
                    exit_status = EXIT_LEDGER_FAILED,
                    "the ledger cannot store commits any more; exiting so that the \
                     supervisor restarts the gateway, which replays the ledger log"
                );
                tokio::time::sleep(LEDGER_FAILURE_NOTICE).await;
                ExitCode::from(EXIT_LEDGER_FAILED)
            }
        };
        tracing::info!("shutting down");
        gateway.shutdown().await;
        Ok(exit)
    })
}

/// How long a gateway whose ledger storage failed stays up, answering 503
/// to calls and to `/readyz` and `/healthz`, before it stops: time for
/// probes and load balancers to take it out of rotation, so that clients
/// see 503 rather than refused connections.
const LEDGER_FAILURE_NOTICE: std::time::Duration = std::time::Duration::from_secs(3);

/// Exit status after the ledger's storage failed (`EX_TEMPFAIL`): the
/// supervisor's restart reopens the ledger, which is the only way redb
/// accepts writes again after an I/O error.
const EXIT_LEDGER_FAILED: u8 = 75;

/// The signals `run` handles, registered with the runtime.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; on each SIGHUP, reloads the plugins (a
    /// refused reload is logged and reported by the gateway).
    async fn wait_reloading_on_hangup(mut self, gateway: &crate::RunningGateway) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                Some(()) = self.hup.recv() => {
                    let _ = gateway.reload("sighup").await;
                }
            }
        }
    }
}
