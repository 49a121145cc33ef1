//! `depin-gateway keygen`: create the device key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::GatewayConfig;
use crate::identity::DeviceKey;

pub(super) fn run(
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
