//! `collector.toml`: the reference collector's configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use depin_gateway::config::{ConfigError, LogFormat, load_toml, resolve_path};

/// The collector's configuration, loaded and validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// HTTPS address, e.g. `0.0.0.0:9443`.
    pub listen: SocketAddr,
    /// Where `collector.redb` lives (relative to this file).
    pub data_dir: PathBuf,
    /// The collector's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA bundle (PEM) that gateway client certificates must chain to.
    pub client_ca_file: PathBuf,
    /// The reward policy (the same file the gateways use). Without one
    /// every reward is 0.
    pub policy: Option<PathBuf>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Challenge issuance and the components that verify possession proofs.
    #[serde(default)]
    pub challenges: super::challenges::ChallengesConfig,
    /// The gateways allowed to report, one `[[gateway]]` table each.
    #[serde(default, rename = "gateway")]
    pub gateways: Vec<GatewayEntry>,
}

/// One `[[gateway]]`: a gateway id and the client certificate it uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEntry {
    /// `dpg1...` as printed by `depin-gateway keygen`.
    pub id: String,
    /// sha256 of the gateway's client certificate (DER), hex.
    pub cert_sha256: String,
}

impl CollectorConfig {
    /// Reads and validates `path`; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |key: Option<String>, problem: String| ConfigError {
            file: path.to_path_buf(),
            key,
            problem,
        };
        let mut c: CollectorConfig = load_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| resolve_path(base, p);
        c.data_dir = resolve(&c.data_dir);
        c.cert_file = resolve(&c.cert_file);
        c.key_file = resolve(&c.key_file);
        c.client_ca_file = resolve(&c.client_ca_file);
        c.policy = c.policy.as_deref().map(resolve);
        for (i, t) in c.challenges.possession.iter_mut().enumerate() {
            t.component = resolve(&t.component);
            if !t.digest.starts_with("sha256:") {
                return Err(err(
                    Some(format!("challenges.possession[{i}].digest")),
                    "must be `sha256:<hex>` (see `depin-gateway plugin inspect`)".into(),
                ));
            }
            if hex::decode(&t.params).is_err() {
                return Err(err(
                    Some(format!("challenges.possession[{i}].params")),
                    "must be hex".into(),
                ));
            }
        }
        let mut seen = BTreeMap::new();
        for (i, g) in c.gateways.iter().enumerate() {
            let id_ok =
                g.id.len() == 68 && g.id.starts_with("dpg1") && hex::decode(&g.id[4..]).is_ok();
            if !id_ok {
                return Err(err(
                    Some(format!("gateway[{i}].id")),
                    format!("`{}` is not a gateway id (dpg1 + 64 hex digits)", g.id),
                ));
            }
            if g.cert_sha256.len() != 64 || hex::decode(&g.cert_sha256).is_err() {
                return Err(err(
                    Some(format!("gateway[{i}].cert_sha256")),
                    "must be 64 hex digits (sha256 of the DER certificate)".into(),
                ));
            }
            if let Some(first) = seen.insert(g.cert_sha256.to_lowercase(), i) {
                return Err(err(
                    Some(format!("gateway[{i}].cert_sha256")),
                    format!("the same certificate is already mapped by gateway[{first}]"),
                ));
            }
        }
        Ok(c)
    }

    /// Client certificate fingerprint -> gateway id.
    pub fn cert_map(&self) -> BTreeMap<String, String> {
        self.gateways
            .iter()
            .map(|g| (g.cert_sha256.to_lowercase(), g.id.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<CollectorConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, text).unwrap();
        CollectorConfig::load(&path)
    }

    const BASE: &str = "listen = \"127.0.0.1:9443\"\ndata_dir = \"d\"\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\nclient_ca_file = \"ca.pem\"\n";

    #[test]
    fn collector_config_errors_name_the_file_and_key() {
        assert!(load(BASE).unwrap().gateways.is_empty());
        let e = load(&format!(
            "{BASE}[[gateway]]\nid = \"x\"\ncert_sha256 = \"00\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("gateway[0].id"), "{e}");
        assert!(e.to_string().contains("collector.toml"), "{e}");
        let id = format!("dpg1{}", "ab".repeat(32));
        let e = load(&format!(
            "{BASE}[[gateway]]\nid = \"{id}\"\ncert_sha256 = \"00\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("gateway[0].cert_sha256"), "{e}");
        let e = load(&format!(
            "{BASE}[[challenges.possession]]\nplugin = \"p\"\nkind = \"k\"\ncomponent = \"p.wasm\"\ndigest = \"abc\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("challenges.possession[0].digest"),
            "{e}"
        );
        let e = load(&format!("{BASE}[challenges]\nevery = 1\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("challenges.every"), "{e}");
    }

    #[test]
    fn example_configuration_in_deploy_is_valid() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let c = CollectorConfig::load(&deploy.join("collector.toml")).unwrap();
        let policy = c.policy.expect("the example names a policy");
        depin_gateway::config::load_policy(&policy).unwrap();
    }
}
