//! The `depin-collector` command line: serving (`run`), `explain` and
//! `gateways`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::{Collector, CollectorConfig, admin, challenges, explain, gateways, health, peer};

/// depin-collector: the reference collector. Accepts gateways' epoch
/// reports over mutual TLS, checks them, issues and judges challenges, and
/// decides rewards line by line. Runs until SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(name = "depin-collector", version, about, long_about)]
pub struct Cli {
    /// The collector's configuration file.
    #[arg(long, short, default_value = "collector.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the collector's decision on one gateway's epoch: the reward
    /// lines (plugin, digest, unit, quantity, rate, amount, reason), the
    /// proof score from the collector's own records, or why the report was
    /// refused. Reads the store (the collector must be stopped; a running
    /// one answers GET /v1/gateways/{id}/epochs/{n}).
    Explain {
        /// The gateway id, `dpg1...`.
        #[arg(long)]
        gateway: String,
        /// The epoch number.
        #[arg(long)]
        epoch: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage the registry of gateways allowed to report, in the store
    /// the configuration names.
    Gateways {
        #[command(subcommand)]
        command: gateways::GatewaysCommand,
    },
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&cli.config),
        Some(Command::Explain {
            gateway,
            epoch,
            json,
        }) => explain::run(&cli.config, &gateway, epoch, json),
        Some(Command::Gateways { command }) => gateways::run(&cli.config, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` on a small runtime (the commands that only read or edit
/// the store).
pub fn block_on<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(work)
}

/// Runs the collector configured by `config_path` until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = CollectorConfig::load(config_path)?;
    depin_gateway::telemetry::init(config.log_format);
    let tls = peer::server_config(
        config.client_ca_file.as_deref(),
        &config.cert_file,
        &config.key_file,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let collector = Arc::new(Collector::open(&config).await?);
        let issuer = tokio::spawn(challenges::issue_forever(
            collector.clone(),
            config.challenges.clone(),
        ));
        let listening = {
            let collector = collector.clone();
            tokio::spawn(async move {
                let store = collector.store.clone();
                store
                    .listen_for_challenges(|e| collector.waiting.on_event(e))
                    .await
            })
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let health = match config.server.health_listen {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
                let health_addr = l.local_addr()?;
                tracing::info!(addr = %health_addr, "health probes served");
                Some(tokio::spawn(health::serve(collector.clone(), l)))
            }
            None => None,
        };
        let admin = match &config.admin {
            Some(a) => {
                let (api, l) = admin::RegistryApi::bind(a, collector.store.clone()).await?;
                tracing::info!(addr = %l.local_addr()?, "registry API served");
                Some(tokio::spawn(Arc::new(api).serve(l)))
            }
            None => None,
        };
        // Installed before "ready", so that a SIGTERM right after it stops
        // the collector cleanly rather than by the default action.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tracing::info!(addr = %addr, gateways = config.gateways.len(), "collector ready");
        let server = tokio::spawn(collector.serve(listener, tls));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        server.abort();
        issuer.abort();
        listening.abort();
        for task in [health, admin].into_iter().flatten() {
            task.abort();
        }
        tracing::info!("collector stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
