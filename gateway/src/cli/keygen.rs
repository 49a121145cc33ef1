//! `depin-gateway keygen`: create the device key (and, on request, its TLS
//! client certificate).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::GatewayConfig;
use crate::identity::DeviceKey;

pub(super) fn run(
    config: Option<&Path>,
    out: Option<PathBuf>,
    force: bool,
    cert: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let path = match (config, out) {
        (Some(c), _) => GatewayConfig::load(c)?.key_path(),
        (None, Some(o)) => o,
        (None, None) => PathBuf::from("data/device.key"),
    };
    let key = if cert.is_some() && path.exists() && !force {
        let key = DeviceKey::load(&path)?;
        eprintln!("kept the existing device key {}", path.display());
        key
    } else {
        let key = DeviceKey::generate();
        key.write(&path, force)?;
        eprintln!("wrote device key {}", path.display());
        key
    };
    if let Some(cert_path) = cert {
        let c = key
            .certificate()
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
