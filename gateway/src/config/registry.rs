//! `[[registry]]` tables: how to reach one OCI registry that components
//! are pulled from (plain HTTP only when allowed, credentials, CA).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One `[[registry]]` table. Credentials are read from a file or the
/// environment when a component is pulled, and never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `host[:port]`, exactly as component references name the registry.
    pub host: String,
    /// Speak plain HTTP to this registry (no TLS). Off by default.
    #[serde(default)]
    pub insecure: bool,
    /// User name for basic credentials (sent to the registry, or to its
    /// token service in the bearer-token flow).
    pub username: Option<String>,
    /// File whose first line is the password (relative to the
    /// configuration file).
    pub password_file: Option<PathBuf>,
    /// Environment variable that holds the password.
    pub password_env: Option<String>,
    /// File whose first line is a bearer token presented as is.
    pub token_file: Option<PathBuf>,
    /// Environment variable that holds a bearer token.
    pub token_env: Option<String>,
    /// PEM certificates trusted for this gateway's registries in addition
    /// to the system's roots (relative to the configuration file).
    pub ca_file: Option<PathBuf>,
}

impl RegistryConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &Option<PathBuf>| p.as_deref().map(|p| super::resolve_path(base, p));
        self.password_file = resolve(&self.password_file);
        self.token_file = resolve(&self.token_file);
        self.ca_file = resolve(&self.ca_file);
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let host = format!("oci://{}/x:y", self.host);
        if self.host.is_empty() || self.host.contains('/') {
            return Err((
                "host".into(),
                format!("`{}` must be `host[:port]`", self.host),
            ));
        }
        crate::oci::ComponentRef::parse(&host).map_err(|_| {
            (
                "host".into(),
                format!("`{}` is not a registry `host[:port]`", self.host),
            )
        })?;
        let password = self.password_file.is_some() as u8 + self.password_env.is_some() as u8;
        let token = self.token_file.is_some() as u8 + self.token_env.is_some() as u8;
        if password > 1 || token > 1 {
            return Err((
                "password_file".into(),
                "give the password (or token) either from a file or from the environment, not both"
                    .into(),
            ));
        }
        if password == 1 && self.username.is_none() {
            return Err(("username".into(), "a password needs a username".into()));
        }
        if token == 1 && (self.username.is_some() || password == 1) {
            return Err((
                "token_file".into(),
                "a bearer token replaces username and password; give one or the other".into(),
            ));
        }
        Ok(())
    }
}
