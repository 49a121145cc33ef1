//! The `depin-gateway` command line.
//!
//! This file holds the top-level command definition and its dispatch, and
//! what several subcommands share; each subcommand lives in its own file.

mod epochs;
mod harness;
mod keygen;
mod ledger;
mod oci;
mod plugin;
mod progress;
mod report;
mod rewards;
mod run;
mod scaffold;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{GatewayConfig, LogFormat};
use epochs::EpochsCommand;
use ledger::LedgerCommand;
use plugin::PluginCommand;
use report::ReportCommand;
use rewards::RewardsCommand;

/// depin-gateway: run sandboxed WebAssembly resource plugins (hotspot relay,
/// storage cache, compute, sensors) and meter the service they provide into
/// a durable, hash-chained usage ledger.
///
/// First time: `depin-gateway keygen --config gateway.toml`, then
/// `depin-gateway run --config gateway.toml`.
#[derive(Debug, Parser)]
#[command(
    name = "depin-gateway",
    version,
    about,
    long_about,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: load the plugins in the configuration and serve.
    ///
    /// Stops gracefully on SIGTERM or SIGINT: stops accepting, lets
    /// in-flight requests finish, flushes the ledger.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Override the configured log format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Create the device key (ed25519, mode 0600) and print the gateway id.
    Keygen {
        /// Write the key where this configuration expects it (`key_path`,
        /// or on the token its `key` names).
        #[arg(long, short, conflicts_with_all = ["out", "pkcs11"])]
        config: Option<PathBuf>,
        /// Write the key to this file [default: data/device.key].
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace an existing key. The old gateway id is lost for good.
        #[arg(long)]
        force: bool,
        /// Also write the key's TLS client certificate (self-signed X.509
        /// v3 over the device key; `-` prints it). With an existing key
        /// and no --force, the key is kept and only the certificate is
        /// written. The gateway makes the same certificate at start when
        /// `[upstream]` names no cert_file.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// Create the key on a PKCS#11 token instead, as the object this
        /// RFC 7512 URI names (`pkcs11:token=…;object=…?pin-source=…`).
        /// An existing key with that label or id is kept.
        #[arg(long, value_name = "URI", conflicts_with = "out")]
        pkcs11: Option<String>,
        /// The PKCS#11 module (shared library) of the token.
        #[arg(long, value_name = "PATH", requires = "pkcs11")]
        module: Option<PathBuf>,
        /// The environment variable holding the token's user PIN (when the
        /// URI has no pin-source).
        #[arg(long, value_name = "VAR", requires = "pkcs11")]
        pin_env: Option<String>,
    },
    /// Inspect the usage ledger (the gateway must be stopped).
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Inspect plugin components, create a plugin crate, test a component.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Inspect closed epochs (the gateway must be stopped).
    Epochs {
        #[command(subcommand)]
        command: EpochsCommand,
    },
    /// Check signed epoch reports.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// What past epochs would earn under another policy (the gateway must
    /// be stopped).
    Rewards {
        #[command(subcommand)]
        command: RewardsCommand,
    },
}

#[derive(Debug, Args)]
struct LedgerLocation {
    /// Find the ledger through this configuration's `data_dir`.
    #[arg(long, short, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory that holds `ledger.redb` and `ledger.wal`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Runs the command line; the exit code says whether it worked (see
/// `docs/operators/cli.md` for each command's codes).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A command that prints stops quietly when its reader goes away
        // (`… | head`), as other Unix tools do, instead of failing a write
        // and panicking. The server keeps ignoring SIGPIPE: its sockets
        // report closed peers as errors.
        // SAFETY: no other thread exists yet; SIG_DFL is a valid handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` is a write to a reader that went away.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, log_format } => run::run(&config, log_format),
        Command::Keygen {
            config,
            out,
            force,
            cert,
            pkcs11,
            module,
            pin_env,
        } => keygen::run(
            keygen::KeygenTarget {
                config,
                out,
                pkcs11,
                module,
                pin_env,
            },
            force,
            cert.as_deref(),
        ),
        Command::Ledger { command } => command.run(),
        Command::Plugin { command } => command.run(),
        Command::Epochs { command } => command.run(),
        Command::Report { command } => command.run(),
        Command::Rewards { command } => command.run(),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn data_dir(at: &LedgerLocation) -> anyhow::Result<PathBuf> {
    match (&at.config, &at.data_dir) {
        (_, Some(d)) => Ok(d.clone()),
        (Some(c), None) => Ok(GatewayConfig::load(c)?.data_dir),
        (None, None) => {
            let default = Path::new("gateway.toml");
            if default.exists() {
                Ok(GatewayConfig::load(default)?.data_dir)
            } else {
                bail!("say where the ledger is: --config gateway.toml or --data-dir DIR")
            }
        }
    }
}
