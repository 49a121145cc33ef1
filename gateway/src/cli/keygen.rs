//! `depin-gateway keygen`: create the device key (and, on request, its TLS
//! client certificate), in a file or on a PKCS#11 token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::GatewayConfig;
use crate::identity::token::Generated;
use crate::identity::{
    DeviceKey, DeviceSigner, KeySource, Pkcs11Uri, TokenKey, TokenLocation, device_certificate,
};

/// Where `keygen` was asked to put the key.
pub(super) struct KeygenTarget {
    pub config: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub pkcs11: Option<String>,
    pub module: Option<PathBuf>,
    pub pin_env: Option<String>,
}

pub(super) fn run(
    target: KeygenTarget,
    force: bool,
    cert: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let source = match (&target.config, &target.out, &target.pkcs11) {
        (Some(c), _, _) => GatewayConfig::load(c)?.key_source(),
        (None, _, Some(uri)) => {
            let uri = Pkcs11Uri::parse(uri)?;
            uri.require_key()?;
            let module = match (&uri.module_path, &target.module) {
                (Some(a), Some(b)) if a != b => anyhow::bail!(
                    "the URI's module-path {} and --module {} differ; give one",
                    a.display(),
                    b.display()
                ),
                (Some(m), _) | (None, Some(m)) => m.clone(),
                (None, None) => anyhow::bail!("a token key needs --module <PKCS#11 module path>"),
            };
            KeySource::Token(Box::new(TokenLocation {
                uri,
                module,
                pin_env: target.pin_env.clone(),
            }))
        }
        (None, Some(o), None) => KeySource::File(o.clone()),
        (None, None, None) => KeySource::File(PathBuf::from("data/device.key")),
    };
    let key: Box<dyn DeviceSigner> = match &source {
        KeySource::File(path) => {
            if cert.is_some() && path.exists() && !force {
                let key = DeviceKey::load(path)?;
                eprintln!("kept the existing device key {}", path.display());
                Box::new(key)
            } else {
                let key = DeviceKey::generate();
                key.write(path, force)?;
                eprintln!("wrote device key {}", path.display());
                Box::new(key)
            }
        }
        KeySource::Token(location) => {
            if force {
                anyhow::bail!(
                    "--force does not replace a key on a token: delete the old key with the token's own tools first"
                );
            }
            match TokenKey::generate(location)?.1 {
                Generated::Created => eprintln!(
                    "created the device key on the token: {} (Ed25519, sensitive, not extractable)",
                    location.uri
                ),
                Generated::Kept => {
                    eprintln!(
                        "kept the existing device key on the token: {}",
                        location.uri
                    )
                }
            }
            Box::new(TokenKey::open(location)?)
        }
    };
    if let Some(cert_path) = cert {
        let c = device_certificate(key.as_ref())
            .map_err(|e| anyhow::anyhow!("cannot make the TLS certificate: {e}"))?;
        if cert_path == Path::new("-") {
            print!("{}", c.pem);
        } else {
            std::fs::write(cert_path, &c.pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
            eprintln!(
                "wrote TLS client certificate {} (sha256 {})",
                cert_path.display(),
                c.sha256()
            );
        }
    }
    println!("{}", key.gateway_id());
    Ok(ExitCode::SUCCESS)
}
