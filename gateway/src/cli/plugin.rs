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
        /// The component file, or a registry reference
        /// (`[oci://]HOST[:PORT]/REPO@sha256:…` or `…:TAG`), pulled into a
        /// scratch directory first.
        file: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: super::oci::RegistryArgs,
    },
    /// Push a component to an OCI registry as a Wasm artifact (config
    /// `application/vnd.wasm.config.v0+json`, one `application/wasm`
    /// layer) and print its manifest digest.
    Push(super::oci::Push),
    /// Pull a component into the data directory's local copy (where the
    /// gateway finds it offline), check it, and print its digests.
    Pull(super::oci::Pull),
    /// Sign a pushed component the way cosign does (a simple-signing
    /// payload under the `sha256-<hex>.sig` tag) with an ECDSA P-256 key.
    Sign(super::oci::Sign),
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
            PluginCommand::Inspect {
                file,
                json,
                registry,
            } => inspect_target(&file, json, &registry),
            PluginCommand::Push(push) => push.run(),
            PluginCommand::Pull(pull) => pull.run(),
            PluginCommand::Sign(sign) => sign.run(),
            PluginCommand::New(new) => new.run(),
            PluginCommand::Test(test) => test.run(),
        }
    }
}

/// Inspects a file, or a reference pulled into a scratch directory.
fn inspect_target(
    target: &str,
    json: bool,
    registry: &super::oci::RegistryArgs,
) -> anyhow::Result<ExitCode> {
    let path = Path::new(target);
    if path.exists() || !super::oci::looks_like_reference(target) {
        return inspect(path, json, None);
    }
    let scratch = tempdir()?;
    let pulled = super::oci::pull_into(target, registry, &scratch.join("oci"), None);
    let result = pulled.and_then(|fetched| {
        inspect(
            &fetched.component_path,
            json,
            Some(fetched.pinned.to_string()),
        )
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn inspect(file: &Path, json: bool, reference: Option<String>) -> anyhow::Result<ExitCode> {
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
            "file": file, "reference": reference, "digest": digest, "contract": CONTRACT, "fits": fits, "problem": problem,
            "built_against": shape.built_against(),
            "describe": info, "imports": shape.imports, "exports": shape.exports,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match &reference {
            Some(r) => println!("ref:      {r}"),
            None => println!("file:     {}", file.display()),
        }
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

pub(super) fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "depin-inspect-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
