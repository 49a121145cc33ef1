//! `[pkcs11]` in `gateway.toml`: the PKCS#11 module that holds the device
//! key named by `key = "pkcs11:…"`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resolve_path;

/// The token module of a hardware-held device key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`. The key URI's `module-path`
    /// may name it instead.
    pub module: Option<PathBuf>,
    /// The environment variable holding the user PIN, read when the key
    /// URI has no `pin-source` (or `pin-value`).
    pub pin_env: Option<String>,
}

impl Pkcs11Config {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.module = self.module.as_deref().map(|p| resolve_path(base, p));
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if let Some(var) = &self.pin_env
            && (var.is_empty() || var.contains('=') || var.contains('\0'))
        {
            return Err((
                "pkcs11.pin_env".into(),
                format!("`{var}` is not an environment variable name"),
            ));
        }
        Ok(())
    }
}
