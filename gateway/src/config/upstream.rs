//! `[upstream]` in `gateway.toml`: where and how reports are delivered.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resolve_path;

/// The collector a gateway reports to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the collector, `https://host:port`, or several (replicas
    /// or standbys), tried in order.
    pub url: CollectorUrls,
    /// CA bundle (PEM) that the collector's certificate must chain to.
    pub ca_file: PathBuf,
    /// This gateway's client certificate (PEM). Without it (and
    /// `key_file`), the gateway presents a self-signed certificate over its
    /// device key, which a collector recognises by the gateway id.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// First retry delay after a failed delivery, ms (default 200).
    #[serde(default = "default_retry_min")]
    pub retry_min_ms: u64,
    /// Longest retry delay, ms (default 30000).
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// Budget of one request, ms (default 10000).
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
}

fn default_retry_min() -> u64 {
    200
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_timeout() -> u64 {
    10_000
}

/// `[upstream] url`: one collector URL or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CollectorUrls {
    One(String),
    Several(Vec<String>),
}

impl CollectorUrls {
    /// The URLs in the order they are tried.
    pub fn list(&self) -> Vec<&str> {
        match self {
            CollectorUrls::One(u) => vec![u.as_str()],
            CollectorUrls::Several(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// Every URL parsed; the problem names the first bad one.
    pub fn parse(&self) -> Result<Vec<CollectorUrl>, String> {
        let list = self.list();
        if list.is_empty() {
            return Err("lists no collector URL".into());
        }
        list.into_iter().map(CollectorUrl::parse).collect()
    }
}

impl From<String> for CollectorUrls {
    fn from(url: String) -> Self {
        CollectorUrls::One(url)
    }
}

impl std::fmt::Display for CollectorUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.list().join(", "))
    }
}

/// A parsed `https://host:port` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorUrl {
    pub host: String,
    pub port: u16,
}

impl CollectorUrl {
    /// Parses `https://host[:port]` (no path); IPv6 hosts in brackets.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("`{url}` must start with https://"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("`{url}` must be https://host:port without a path"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: unclosed `[`"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => 443,
            Some(p) => p
                .parse()
                .map_err(|_| format!("`{url}`: `{p}` is not a port"))?,
        };
        Ok(CollectorUrl { host, port })
    }
}

impl UpstreamConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.ca_file = resolve_path(base, &self.ca_file);
        self.cert_file = self.cert_file.as_deref().map(|p| resolve_path(base, p));
        self.key_file = self.key_file.as_deref().map(|p| resolve_path(base, p));
    }

    /// Checks values; returns (key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.url
            .parse()
            .map_err(|p| ("upstream.url".to_string(), p))?;
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err((
                "upstream.cert_file".into(),
                "cert_file and key_file go together (omit both to use the device-key certificate)"
                    .into(),
            ));
        }
        if self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            return Err((
                "upstream.retry_max_ms".into(),
                "need 0 < retry_min_ms <= retry_max_ms".into(),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err((
                "upstream.request_timeout_ms".into(),
                "must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;
    use crate::config::parse_test_config as parse;

    #[test]
    fn epochs_and_upstream_errors_name_the_key() {
        let c = parse("").unwrap();
        assert!(c.upstream.is_none());
        assert_eq!(c.epochs.length_ms, 3_600_000);
        let e = parse("[epochs]\nlength_ms = 10\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("epochs.length_ms"), "{e}");
        let e = parse("[epochs]\nlength_ms = 1000\nclose_delay_ms = 1000\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("epochs.close_delay_ms"), "{e}");
        let up = "[upstream]\nurl = \"http://c:1\"\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n";
        let e = parse(up).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("upstream.url"), "{e}");
        assert!(e.problem.contains("https://"), "{e}");
        let e = parse("[upstream]\nurl = \"https://c:1\"\n").unwrap_err();
        assert!(e.problem.contains("ca_file"), "{e}");
        let c = parse(&up.replace("http://", "https://")).unwrap();
        assert_eq!(c.upstream.unwrap().ca_file, Path::new("/etc/depin/ca.pem"));
        let e = parse(
            "[upstream]\nurl = \"https://c:1\"\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("upstream.cert_file"), "{e}");
    }

    #[test]
    fn upstream_takes_one_url_or_several_and_no_client_certificate() {
        let c =
            parse("[upstream]\nurl = [\"https://a:1\", \"https://b:2\"]\nca_file = \"ca.pem\"\n")
                .unwrap();
        let up = c.upstream.unwrap();
        assert!(up.cert_file.is_none() && up.key_file.is_none());
        let urls = up.url.parse().unwrap();
        assert_eq!((urls[0].host.as_str(), urls[1].port), ("a", 2));
        let one = parse("[upstream]\nurl = \"https://a:1\"\nca_file = \"ca.pem\"\n").unwrap();
        assert_eq!(one.upstream.unwrap().url.parse().unwrap().len(), 1);
        let e =
            parse("[upstream]\nurl = [\"https://a:1\", \"http://b:2\"]\nca_file = \"ca.pem\"\n")
                .unwrap_err();
        assert!(e.problem.contains("http://b:2"), "{e}");
        let e = parse("[upstream]\nurl = []\nca_file = \"ca.pem\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("upstream.url"), "{e}");
    }

    #[test]
    fn example_configurations_in_deploy_are_valid() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let gw = GatewayConfig::load(&deploy.join("gateway.toml")).unwrap();
        let policy = gw.epochs.policy.expect("the example names a policy");
        crate::config::load_policy(&policy).unwrap();
    }

    #[test]
    fn collector_urls_parse_and_bad_ones_say_why() {
        assert_eq!(
            CollectorUrl::parse("https://127.0.0.1:9443").unwrap(),
            CollectorUrl {
                host: "127.0.0.1".into(),
                port: 9443
            }
        );
        assert_eq!(CollectorUrl::parse("https://[::1]:5/").unwrap().host, "::1");
        assert_eq!(CollectorUrl::parse("https://c.example").unwrap().port, 443);
        assert!(
            CollectorUrl::parse("http://x:1")
                .unwrap_err()
                .contains("https")
        );
        assert!(CollectorUrl::parse("https://x:1/v1").is_err());
    }
}
