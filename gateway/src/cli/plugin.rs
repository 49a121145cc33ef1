//! `depin-gateway plugin`: inspect a plugin component, create a new plugin
//! crate, run a component in a gateway with a script.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::async_runtime;
use crate::config::{PluginConfig, RuntimeConfig};
use crate::ledger::Ledger;
use crate::runtime::{CONTRACT, LoadedPlugin, Runtime};

#[derive(Debug, Subcommand)]
pub(super) enum PluginCommand {
    /// Show a component's `describe` output, imports and exports, and
    /// whether it fits this gateway's contract. Exits with 1 if it does not.
    Inspect {
        /// The component file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a new plugin crate: a metered echo with a proof of what it
    /// echoed, native tests, an end-to-end script, and a README.
    New(super::scaffold::NewPlugin),
    /// Run a component in a real gateway (in-process, fresh data directory)
    /// and drive it with a script of HTTP requests, datagrams, MQTT messages
    /// and challenges; print responses, usage records and proof results.
    /// Exits with 1 if a step does not meet its expectations.
    Test(super::harness::TestPlugin),
}

impl PluginCommand {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            PluginCommand::Inspect { file, json } => inspect(&file, json),
            PluginCommand::New(new) => new.run(),
            PluginCommand::Test(test) => test.run(),
        }
    }
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let scratch = tempdir()?;
    let result = async_runtime()?.block_on(async {
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
            "built_against": shape.built_against(),
            "describe": info, "imports": shape.imports, "exports": shape.exports,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("file:     {}", file.display());
        println!("digest:   {digest}");
        match &problem {
            None => println!("contract: fits {CONTRACT}"),
            Some(p) => match p.split_once(": ") {
                // One line per problem, each with what to change.
                Some((head, problems)) => {
                    println!("contract: {head}:");
                    for p in problems.split("; ") {
                        println!("  - {p}");
                    }
                }
                None => println!("contract: {p}"),
            },
        }
        println!("built:    against {}", shape.built_against());
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
