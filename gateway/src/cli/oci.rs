//! `plugin push`, `plugin pull`, `plugin sign`, and pulling for `plugin
//! inspect`: the command line's side of components in OCI registries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Args;

use super::async_runtime;
use crate::config::{GatewayConfig, RegistryConfig, RuntimeConfig};
use crate::oci::{
    ComponentRef, Fetched, LocalCopies, PublisherKey, Registries, SignaturePolicy, TrustedKey,
};
use crate::runtime::{ComponentShape, Runtime};

/// Environment variables the commands read registry credentials from when
/// no configuration names them.
const USERNAME_ENV: &str = "DEPIN_REGISTRY_USERNAME";
const PASSWORD_ENV: &str = "DEPIN_REGISTRY_PASSWORD";
const TOKEN_ENV: &str = "DEPIN_REGISTRY_TOKEN";

/// How a command reaches the registry of its reference.
#[derive(Debug, Args)]
pub(super) struct RegistryArgs {
    /// Take the `[[registry]]` tables (credentials, plain HTTP, CA) and
    /// `data_dir` from this gateway configuration.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Speak plain HTTP (no TLS) to the reference's registry.
    #[arg(long)]
    insecure: bool,
}

impl RegistryArgs {
    fn config(&self) -> anyhow::Result<Option<GatewayConfig>> {
        self.config
            .as_deref()
            .map(GatewayConfig::load)
            .transpose()
            .map_err(Into::into)
    }

    /// The registry client for `r`, keeping pulled artifacts in `local`.
    /// Credentials: the configuration's table for the registry, else
    /// `DEPIN_REGISTRY_USERNAME` and `DEPIN_REGISTRY_PASSWORD`, or
    /// `DEPIN_REGISTRY_TOKEN`.
    fn registries(&self, r: &ComponentRef, local: LocalCopies) -> anyhow::Result<Registries> {
        let mut entries = self.config()?.map(|c| c.registries).unwrap_or_default();
        if let Some(e) = entries.iter_mut().find(|e| e.host == r.registry) {
            e.insecure |= self.insecure;
        } else {
            let set = |var: &str| std::env::var_os(var).is_some();
            entries.push(RegistryConfig {
                host: r.registry.clone(),
                insecure: self.insecure,
                username: std::env::var(USERNAME_ENV).ok(),
                password_env: set(PASSWORD_ENV).then(|| PASSWORD_ENV.to_string()),
                token_env: set(TOKEN_ENV).then(|| TOKEN_ENV.to_string()),
                ..RegistryConfig::default()
            });
        }
        Registries::new(&entries, local).map_err(|e| anyhow!(e))
    }
}

/// Whether `text` reads as a registry reference rather than a file name.
pub(super) fn looks_like_reference(text: &str) -> bool {
    ComponentRef::is_oci(text) || ComponentRef::parse_lenient(text).is_ok()
}

fn reference(text: &str) -> anyhow::Result<ComponentRef> {
    ComponentRef::parse_lenient(text).map_err(|e| anyhow!(e))
}

/// Pulls `text` into `local_root` and checks it (and its signature, when
/// `trusted` names keys).
pub(super) fn pull_into(
    text: &str,
    registry: &RegistryArgs,
    local_root: &Path,
    trusted: Option<Vec<TrustedKey>>,
) -> anyhow::Result<Fetched> {
    let r = reference(text)?;
    let registries = registry.registries(&r, LocalCopies::new(local_root.to_path_buf()))?;
    let policy = match trusted {
        Some(keys) => SignaturePolicy::TrustedKeys(keys),
        None => SignaturePolicy::NotRequired,
    };
    async_runtime()?
        .block_on(registries.fetch(&r, &policy))
        .map_err(|e| anyhow!("{r}: {e}"))
}

#[derive(Debug, Args)]
pub(super) struct Push {
    /// The component file (`.wasm`).
    file: PathBuf,
    /// Where to push it: `[oci://]HOST[:PORT]/REPO:TAG`.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl Push {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let r = reference(&self.reference)?;
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let shape = component_shape(&self.file)?;
        let artifact = crate::oci::artifact::WasmArtifact::build(
            &bytes,
            &shape.imports,
            &shape.exports,
            depin_protocol::time::now_ms() / 1000,
        );
        let scratch = super::plugin::tempdir()?;
        let registries = self
            .registry
            .registries(&r, LocalCopies::new(scratch.clone()))?;
        let pushed = async_runtime()?.block_on(registries.push(&r, &bytes, &artifact));
        let _ = std::fs::remove_dir_all(&scratch);
        let pushed = pushed.map_err(|e| anyhow!("{r}: {e}"))?;
        println!("{}", pushed.manifest_digest);
        eprintln!(
            "pushed {} (component {})",
            pushed.pinned, pushed.component_digest
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Compiles the component (refusing what is not one) for its imports and
/// exports.
fn component_shape(file: &Path) -> anyhow::Result<ComponentShape> {
    let runtime = Runtime::new(
        &RuntimeConfig {
            max_instances: 1,
            ..RuntimeConfig::default()
        },
        None,
    )?;
    let (component, _, _) = runtime
        .compile(file)
        .map_err(|p| anyhow!("{}: {p}", file.display()))?;
    Ok(ComponentShape::of(runtime.engine(), &component))
}

#[derive(Debug, Args)]
pub(super) struct Pull {
    /// `[oci://]HOST[:PORT]/REPO@sha256:…` or `…:TAG`.
    reference: String,
    /// Keep the copy under this data directory [default: the
    /// configuration's `data_dir`, else `data`].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also verify a cosign signature by one of these PEM public keys;
    /// fails without one.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl Pull {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let data_dir = match (&self.data_dir, self.registry.config()?) {
            (Some(d), _) => d.clone(),
            (None, Some(c)) => c.data_dir,
            (None, None) => PathBuf::from("data"),
        };
        let trusted = if self.trusted_keys.is_empty() {
            None
        } else {
            Some(
                self.trusted_keys
                    .iter()
                    .map(|k| TrustedKey::load(k))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow!(e))?,
            )
        };
        let f = pull_into(
            &self.reference,
            &self.registry,
            &data_dir.join("oci"),
            trusted,
        )?;
        println!("reference:  {}", f.pinned);
        println!("manifest:   {}", f.manifest_digest);
        println!("component:  {}", f.component_digest);
        println!("file:       {}", f.component_path.display());
        if let Some(k) = &f.signer {
            println!(
                "signed by:  {} ({})",
                k.fingerprint_string(),
                k.source.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, Args)]
pub(super) struct Sign {
    /// The pushed component: `[oci://]HOST[:PORT]/REPO@sha256:…` or `…:TAG`.
    reference: String,
    /// The publisher's unencrypted ECDSA P-256 private key (PEM, PKCS#8 or
    /// SEC1). Cosign's encrypted keys: sign with `cosign sign --key`.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl Sign {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let r = reference(&self.reference)?;
        let key = PublisherKey::load(&self.key).map_err(|e| anyhow!(e))?;
        let scratch = super::plugin::tempdir()?;
        let registries = Arc::new(
            self.registry
                .registries(&r, LocalCopies::new(scratch.clone()))?,
        );
        let signed = async_runtime()?.block_on(registries.sign(&r, &key));
        let _ = std::fs::remove_dir_all(&scratch);
        let signed = signed.map_err(|e| anyhow!("{r}: {e}"))?;
        println!("signed:     {}", signed.pinned);
        println!("signatures: {}", signed.signatures);
        println!("key:        {}", signed.signer);
        Ok(ExitCode::SUCCESS)
    }
}
