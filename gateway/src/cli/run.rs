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
        wait_for_signal_reloading_on_hangup(&gateway, hup).await;
        tracing::info!("shutting down");
        gateway.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

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
