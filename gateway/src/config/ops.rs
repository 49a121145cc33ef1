//! Operations settings: TLS on the public ingress, the admin listener and
//! hot reload. Each table validates itself; errors name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[http.tls]`: serve the public ingress over TLS (HTTP/1.1 and HTTP/2,
/// chosen by ALPN). The files are re-read when they change, so a rotated
/// certificate takes effect without a restart and without dropping
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Relative to the configuration file.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Relative to the
    /// configuration file.
    pub key: PathBuf,
    /// How often the files are checked for changes, in milliseconds.
    #[serde(default = "default_tls_poll_ms")]
    pub poll_ms: u64,
}

fn default_tls_poll_ms() -> u64 {
    2_000
}

/// `[admin]`: health, readiness, metrics, status and reload on a listener of
/// their own. Off when the table is absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// A file holding the bearer token (surrounding whitespace ignored).
    /// Every endpoint but `/healthz` and `/readyz` requires
    /// `Authorization: Bearer <token>`. Required unless `listen` is a
    /// loopback address.
    pub token_file: Option<PathBuf>,
    /// Serve `/metrics` without the token (for scrapers that cannot send
    /// one, e.g. annotation-based Prometheus discovery).
    #[serde(default)]
    pub open_metrics: bool,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// `[reload]`: hot reload of the plugins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Reload when the configuration file or a plugin's component changes
    /// (checked every `poll_ms`). SIGHUP and the admin call always work.
    pub watch: bool,
    /// How often watched files are checked, in milliseconds.
    pub poll_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: false,
            poll_ms: 2_000,
        }
    }
}

pub(super) fn resolve(p: &Path, base: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl TlsConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.cert = resolve(&self.cert, base);
        self.key = resolve(&self.key, base);
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.poll_ms == 0 {
            return Err(("http.tls.poll_ms".into(), "must be greater than 0".into()));
        }
        Ok(())
    }
}

impl AdminConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.token_file = self.token_file.as_deref().map(|p| resolve(p, base));
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.token_file.is_none() && !self.listen.ip().is_loopback() {
            return Err((
                "admin.token_file".into(),
                format!(
                    "required when admin.listen ({}) is not a loopback address",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

impl ReloadConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.poll_ms == 0 {
            return Err(("reload.poll_ms".into(), "must be greater than 0".into()));
        }
        Ok(())
    }
}
