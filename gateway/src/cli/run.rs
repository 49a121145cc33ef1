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
    if !key_path.exists() {
        bail!(
            "no device key at {}; create one with `depin-gateway keygen --config {}`",
            key_path.display(),
            config_path.display()
        );
    }
    async_runtime()?.block_on(async {
        // Installed before the gateway reports ready, so an early SIGHUP
        // reloads instead of ending the process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        let gateway = crate::RunningGateway::start_with_source(&config, Some(config_path)).await?;
        let exit = tokio::select! {
            _ = wait_for_signal_reloading_on_hangup(&gateway, hup) => ExitCode::SUCCESS,
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

/// Waits for SIGTERM or SIGINT; on each SIGHUP, reloads the plugins (a
/// refused reload is logged and reported by the gateway).
async fn wait_for_signal_reloading_on_hangup(
    gateway: &crate::RunningGateway,
    mut hup: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = async {
            while hup.recv().await.is_some() {
                let _ = gateway.reload("sighup").await;
            }
        } => {}
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
