//! The `depin-gateway` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{GatewayConfig, LogFormat, PluginConfig, RuntimeConfig};
use crate::identity::DeviceKey;
use crate::ledger::{Ledger, LedgerReader};
use crate::runtime::{CONTRACT, LoadedPlugin, Runtime};

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
        /// Write the key where this configuration expects it (`key_path`).
        #[arg(long, short, conflicts_with = "out")]
        config: Option<PathBuf>,
        /// Write the key to this file [default: data/device.key].
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace an existing key. The old gateway id is lost for good.
        #[arg(long)]
        force: bool,
    },
    /// Inspect the usage ledger (the gateway must be stopped).
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Inspect plugin components.
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
}

#[derive(Debug, Subcommand)]
enum EpochsCommand {
    /// One line per closed epoch: records, reward, delivery state, root.
    List {
        #[command(flatten)]
        at: LedgerLocation,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Totals, Merkle root, reward and delivery state of epoch N.
    Show {
        /// The epoch number.
        epoch: u64,
        #[command(flatten)]
        at: LedgerLocation,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also write the signed report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Check a signed report file's encoding and signature offline.
    /// Exits with 1 when it is not valid.
    Verify {
        /// The report file (as written by `epochs show N --out FILE`).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Walk the hash chain; print "ok, N records" or the first broken link.
    /// Exits with 1 when the chain is broken.
    Verify {
        #[command(flatten)]
        at: LedgerLocation,
    },
    /// Totals per plugin, source (host/plugin) and unit.
    Summary {
        #[command(flatten)]
        at: LedgerLocation,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Show a component's `describe` output, imports and exports, and
    /// whether it fits this gateway's contract. Exits with 1 if it does not.
    Inspect {
        /// The component file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, log_format } => cmd_run(&config, log_format),
        Command::Keygen { config, out, force } => cmd_keygen(config.as_deref(), out, force),
        Command::Ledger {
            command: LedgerCommand::Verify { at },
        } => cmd_verify(&at),
        Command::Ledger {
            command: LedgerCommand::Summary { at, json },
        } => cmd_summary(&at, json),
        Command::Plugin {
            command: PluginCommand::Inspect { file, json },
        } => cmd_inspect(&file, json),
        Command::Epochs {
            command: EpochsCommand::List { at, json },
        } => {
            crate::epochs::inspect::list(&data_dir(&at)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Epochs {
            command:
                EpochsCommand::Show {
                    epoch,
                    at,
                    json,
                    out,
                },
        } => Ok(exit(crate::epochs::inspect::show(
            &data_dir(&at)?,
            epoch,
            json,
            out.as_deref(),
        )?)),
        Command::Report {
            command: ReportCommand::Verify { file, json },
        } => Ok(exit(crate::epochs::inspect::verify_file(&file, json)?)),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn cmd_run(config_path: &Path, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
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
    runtime()?.block_on(async {
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

fn cmd_keygen(
    config: Option<&Path>,
    out: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let path = match (config, out) {
        (Some(c), _) => GatewayConfig::load(c)?.key_path(),
        (None, Some(o)) => o,
        (None, None) => PathBuf::from("data/device.key"),
    };
    let key = DeviceKey::generate();
    key.write(&path, force)?;
    eprintln!("wrote device key {}", path.display());
    println!("{}", key.gateway_id());
    Ok(ExitCode::SUCCESS)
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

fn cmd_verify(at: &LedgerLocation) -> anyhow::Result<ExitCode> {
    let reader = LedgerReader::open(&data_dir(at)?)?;
    let report = reader.verify()?;
    match report.broken {
        None => {
            println!("ok, {} records", report.records);
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!(
                "broken at record {}: {} ({} records before it are intact)",
                b.seq, b.problem, report.records
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn cmd_summary(at: &LedgerLocation, json: bool) -> anyhow::Result<ExitCode> {
    let reader = LedgerReader::open(&data_dir(at)?)?;
    let totals = reader.summary()?;
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<_> = totals
            .iter()
            .map(|t| {
                serde_json::json!({
                    "plugin": t.plugin, "source": t.source, "unit": t.unit,
                    "records": t.records, "quantity": t.quantity.to_string(),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let widths = [
        totals
            .iter()
            .map(|t| t.plugin.len())
            .max()
            .unwrap_or(0)
            .max(6),
        6,
        totals
            .iter()
            .map(|t| t.unit.len())
            .max()
            .unwrap_or(0)
            .max(4),
    ];
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  {:>9}  {:>20}",
        "PLUGIN",
        "SOURCE",
        "UNIT",
        "RECORDS",
        "QUANTITY",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2]
    )?;
    for t in &totals {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>9}  {:>20}",
            t.plugin,
            t.source.as_str(),
            t.unit,
            t.records,
            t.quantity,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )?;
    }
    if totals.is_empty() {
        writeln!(out, "(no usage recorded yet)")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_inspect(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let scratch = tempdir()?;
    let result = runtime()?.block_on(async {
        let runtime = Runtime::new(
            &RuntimeConfig {
                max_instances: 8,
                ..RuntimeConfig::default()
            },
            None,
        )?;
        let ledger = Ledger::open(&scratch)?;
        let cfg = PluginConfig {
            name: "inspect".into(),
            component: file.to_path_buf(),
            ..PluginConfig::default()
        };
        let compiled = runtime
            .compile(file)
            .map_err(|p| anyhow::anyhow!("{}: {p}", file.display()))?;
        let digest = compiled.1.clone();
        let shape = crate::runtime::ComponentShape::of(runtime.engine(), &compiled.0);
        let prepared = LoadedPlugin::prepare(&runtime, &cfg, ledger.clone(), compiled).await;
        ledger.close();
        anyhow::Ok((digest, shape, prepared))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let (digest, shape, prepared) = result?;
    let (fits, problem, info) = match &prepared {
        Ok(p) => (true, None, Some(&p.info)),
        Err(e) => (false, Some(e.clone()), None),
    };
    if json {
        let info = info.map(|i| {
            serde_json::json!({
                "name": i.name, "version": i.version, "kind": crate::runtime::contract::kind_name(i.kind),
                "units": i.units.iter().map(|u| serde_json::json!({"name": u.name, "description": u.description})).collect::<Vec<_>>(),
            })
        });
        let v = serde_json::json!({
            "file": file, "digest": digest, "contract": CONTRACT, "fits": fits, "problem": problem,
            "describe": info, "imports": shape.imports, "exports": shape.exports,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("file:     {}", file.display());
        println!("digest:   {digest}");
        match &problem {
            None => println!("contract: fits {CONTRACT}"),
            Some(p) => println!("contract: {p}"),
        }
        if let Some(i) = info {
            println!(
                "plugin:   {} {} ({})",
                i.name,
                i.version,
                crate::runtime::contract::kind_name(i.kind)
            );
            println!("units:");
            for u in &i.units {
                println!("  {:<20} {}", u.name, u.description);
            }
        }
        println!("imports:");
        for i in &shape.imports {
            println!("  {i}");
        }
        println!("exports:");
        for e in &shape.exports {
            println!("  {e}");
        }
    }
    Ok(if fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "depin-inspect-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
