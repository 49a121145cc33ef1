//! Operations settings: TLS on the public ingress, the admin listener and
//! hot reload. Each table validates itself; errors name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resolve_path;

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
    /// Host names the admin listener answers to besides its own address
    /// (and `localhost` on a loopback listener), e.g. the name Prometheus
    /// or a reverse proxy uses. `name` allows any port, `name:port` only
    /// that one. Requests with any other `Host` are refused (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
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

impl TlsConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.cert = resolve_path(base, &self.cert);
        self.key = resolve_path(base, &self.key);
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
        self.token_file = self.token_file.as_deref().map(|p| resolve_path(base, p));
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

#[cfg(test)]
mod tests {
    use crate::config::parse_test_config as parse;
    use std::path::Path;

    #[test]
    fn operations_tables_are_off_by_default() {
        let c = parse("").unwrap();
        assert!(c.http.tls.is_none());
        assert!(c.admin.is_none());
        assert!(!c.reload.watch);
    }

    #[test]
    fn tls_and_token_paths_resolve_against_the_file() {
        let c = parse(
            "[http.tls]\ncert = \"tls/c.pem\"\nkey = \"/abs/k.pem\"\n[admin]\ntoken_file = \"t\"\n",
        )
        .unwrap();
        let tls = c.http.tls.unwrap();
        assert_eq!(tls.cert, Path::new("/etc/depin/tls/c.pem"));
        assert_eq!(tls.key, Path::new("/abs/k.pem"));
        assert_eq!(tls.poll_ms, 2_000);
        let admin = c.admin.unwrap();
        assert_eq!(admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(admin.token_file.unwrap(), Path::new("/etc/depin/t"));
    }

    #[test]
    fn a_public_admin_listener_needs_a_token() {
        let e = parse("[admin]\nlisten = \"0.0.0.0:9090\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("admin.token_file"));
        assert!(e.problem.contains("0.0.0.0:9090"), "{e}");
        assert!(parse("[admin]\nlisten = \"127.0.0.1:9090\"\n").is_ok());
    }

    #[test]
    fn mistakes_name_their_key() {
        let e = parse("[http.tls]\ncert = \"c\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("http.tls"));
        assert!(e.problem.contains("missing field `key`"), "{e}");
        let e = parse("[admin]\ntoken = \"x\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("admin.token"));
        let e = parse("[reload]\npoll_ms = 0\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("reload.poll_ms"));
        let e = parse("[http.tls]\ncert = \"c\"\nkey = \"k\"\npoll_ms = 0\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("http.tls.poll_ms"));
    }
}
