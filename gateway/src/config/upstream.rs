//! `[upstream]` in `gateway.toml`: where and how reports are delivered.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resolve_path;

/// The collector a gateway reports to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the collector, `https://host:port`.
    pub url: String,
    /// CA bundle (PEM) that the collector's certificate must chain to.
    pub ca_file: PathBuf,
    /// This gateway's client certificate (PEM).
    pub cert_file: PathBuf,
    /// The client certificate's private key (PEM).
    pub key_file: PathBuf,
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
        self.cert_file = resolve_path(base, &self.cert_file);
        self.key_file = resolve_path(base, &self.key_file);
    }

    /// Checks values; returns (key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        CollectorUrl::parse(&self.url).map_err(|p| ("upstream.url".to_string(), p))?;
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
