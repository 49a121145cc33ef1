//! `collector.toml`: the reference collector's configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use depin_gateway::config::{ConfigError, LogFormat, parse_toml, read_config, resolve_path};

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
    /// CA bundle (PEM) that CA-issued gateway client certificates must
    /// chain to. Needed only by `[[gateway]]` entries with `cert_sha256`;
    /// device-key certificates need no CA.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// The reward policy (the same file the gateways use). Without one
    /// every reward is 0.
    pub policy: Option<PathBuf>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Challenge issuance, possession templates and retention.
    #[serde(default)]
    pub challenges: super::challenges::ChallengesConfig,
    /// The epoch schedule the collector fixes for every gateway.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Approved components, one `[[component]]` each: a digest, the kind
    /// its records are rated as, and the verifier of its proofs.
    #[serde(default, rename = "component")]
    pub components: Vec<ApprovedComponent>,
    /// Bounds of the HTTPS server.
    #[serde(default)]
    pub server: ServerConfig,
    /// The gateways allowed to report, one `[[gateway]]` table each;
    /// registered in the store at start (see `depin-collector gateways`).
    #[serde(default, rename = "gateway")]
    pub gateways: Vec<GatewayEntry>,
    /// The store: PostgreSQL when given, else `collector.redb` in
    /// `data_dir`.
    pub store: Option<crate::store::StoreConfig>,
    /// How gateways not yet registered are treated.
    #[serde(default)]
    pub enrollment: EnrollmentConfig,
    /// The registry's HTTP API on a listener of its own; none when unset.
    pub admin: Option<crate::admin::AdminConfig>,
}

/// `[enrollment]`: admitting gateways the registry does not know.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    /// A gateway whose certificate proves its device key but that is not
    /// registered is added as active on its first request (logged). For
    /// trial fleets; a revoked gateway stays revoked.
    pub approve_on_first_contact: bool,
}

/// `[schedule]`: epochs as the collector counts them. Epoch `n` covers
/// `[n * length_ms, (n + 1) * length_ms)` Unix ms, for every gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Epoch length, ms; a report of another length is refused
    /// (`wrong-length`). Gateways set the same `[epochs] length_ms`.
    pub length_ms: u64,
    /// A report is accepted only once its epoch ended this long ago
    /// (`not-ended` before). Every challenge due in the epoch is decided
    /// by then; gateways set `[epochs] close_delay_ms` at least this.
    pub grace_ms: u64,
    /// Admit version-1 reports (no component digests). Their records are
    /// rated by the kind the gateway claims, which the gateway can fake:
    /// only for a migration window. Refused (`legacy-report`) otherwise.
    pub admit_v1: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        // The gateways' defaults: one hour, closed one second after.
        Self {
            length_ms: 3_600_000,
            grace_ms: 1_000,
            admit_v1: false,
        }
    }
}

/// One `[[component]]`: a plugin component the network approves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovedComponent {
    /// `sha256:<hex>` of the component file (`depin-gateway plugin
    /// inspect FILE` prints it).
    pub digest: String,
    /// The resource kind its records are rated as (`storage-cache`,
    /// `hotspot-relay`, `compute-task`, `sensor-aggregator`, `other`).
    pub kind: String,
    /// The component file whose `verify` checks its possession proofs
    /// (its digest must be `digest`); without one, no possession
    /// challenge can name this digest.
    pub verifier: Option<PathBuf>,
    /// Job modules (wasm32-wasip1) the verifier's job engine holds, for
    /// proofs that re-execute a job (compute-task canaries).
    #[serde(default)]
    pub job_modules: Vec<PathBuf>,
}

/// `[server]`: bounds of the HTTPS server; each protects the collector
/// from clients that connect and stall.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// A TLS handshake not done in this long is dropped, ms.
    pub handshake_timeout_ms: u64,
    /// A request whose headers do not arrive in this long is dropped, ms.
    pub header_timeout_ms: u64,
    /// Most connections open at once; more wait in the listen backlog
    /// (`depin_collector_connections` shows the count).
    pub max_connections: usize,
    /// Plain-HTTP address for `GET /healthz` (the process runs) and `GET
    /// /readyz` (the store answers), for probes that hold no client
    /// certificate; none when unset.
    pub health_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            max_connections: 1024,
            health_listen: None,
        }
    }
}

/// One `[[gateway]]`: a gateway allowed to report. It authenticates with
/// its device-key certificate (self-signed over the key of `id`), or with
/// the CA-issued certificate whose sha256 is `cert_sha256`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEntry {
    /// `dpg1...` as printed by `depin-gateway keygen`.
    pub id: String,
    /// sha256 of the gateway's CA-issued client certificate (DER), hex.
    #[serde(default)]
    pub cert_sha256: Option<String>,
}

impl CollectorConfig {
    /// Reads and validates `path`; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &read_config(path)?)
    }

    /// Parses and validates configuration `text` that came from `path`;
    /// relative paths inside resolve against its directory, and a
    /// `store.url_file` is read.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |key: Option<String>, problem: String| ConfigError {
            file: path.to_path_buf(),
            key,
            problem,
        };
        let mut c: CollectorConfig = parse_toml(path, text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| resolve_path(base, p);
        c.data_dir = resolve(&c.data_dir);
        c.cert_file = resolve(&c.cert_file);
        c.key_file = resolve(&c.key_file);
        c.client_ca_file = c.client_ca_file.as_deref().map(resolve);
        c.policy = c.policy.as_deref().map(resolve);
        if let Some(admin) = &mut c.admin {
            admin.token_file = resolve(&admin.token_file);
        }
        let digest_ok = |d: &str| {
            d.strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && hex::decode(h).is_ok())
        };
        if c.schedule.length_ms == 0 {
            return Err(err(
                Some("schedule.length_ms".into()),
                "must be greater than 0".into(),
            ));
        }
        for (key, value) in [
            ("server.max_connections", c.server.max_connections as u64),
            ("server.handshake_timeout_ms", c.server.handshake_timeout_ms),
            ("server.header_timeout_ms", c.server.header_timeout_ms),
        ] {
            if value == 0 {
                return Err(err(Some(key.into()), "must be greater than 0".into()));
            }
        }
        if let Some(store) = &mut c.store {
            match (&store.url_file, store.url.is_empty()) {
                (Some(file), true) => {
                    let file = resolve(file);
                    store.url = std::fs::read_to_string(&file)
                        .map_err(|e| {
                            err(
                                Some("store.url_file".into()),
                                format!("{}: {e}", file.display()),
                            )
                        })?
                        .trim()
                        .to_string();
                }
                (Some(_), false) => {
                    return Err(err(
                        Some("store.url_file".into()),
                        "give store.url or store.url_file, not both".into(),
                    ));
                }
                (None, true) => {
                    return Err(err(Some("store.url".into()), "is missing".into()));
                }
                (None, false) => {}
            }
            for (key, value) in [
                ("store.pool_size", store.pool_size as u64),
                ("store.statement_timeout_ms", store.statement_timeout_ms),
            ] {
                if value == 0 {
                    return Err(err(Some(key.into()), "must be greater than 0".into()));
                }
            }
            if store.url.parse::<tokio_postgres::Config>().is_err() {
                return Err(err(
                    Some("store.url".into()),
                    "is not a PostgreSQL URL (postgres://user@host:port/database)".into(),
                ));
            }
        }
        let mut approved = BTreeMap::new();
        for (i, a) in c.components.iter_mut().enumerate() {
            if !digest_ok(&a.digest) {
                return Err(err(
                    Some(format!("component[{i}].digest")),
                    "must be `sha256:<64 hex>` (see `depin-gateway plugin inspect`)".into(),
                ));
            }
            if a.kind.is_empty() {
                return Err(err(Some(format!("component[{i}].kind")), "is empty".into()));
            }
            if let Some(first) = approved.insert(a.digest.clone(), (i, a.verifier.is_some())) {
                return Err(err(
                    Some(format!("component[{i}].digest")),
                    format!("already approved by component[{}]", first.0),
                ));
            }
            a.verifier = a.verifier.as_deref().map(resolve);
            for m in &mut a.job_modules {
                *m = resolve(m);
            }
        }
        for (i, t) in c.challenges.possession.iter_mut().enumerate() {
            match approved.get(&t.digest) {
                Some((_, true)) => {}
                Some((_, false)) => {
                    return Err(err(
                        Some(format!("challenges.possession[{i}].digest")),
                        "its [[component]] names no verifier".into(),
                    ));
                }
                None => {
                    return Err(err(
                        Some(format!("challenges.possession[{i}].digest")),
                        "is not an approved [[component]] digest".into(),
                    ));
                }
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
            let Some(sha) = &g.cert_sha256 else {
                continue;
            };
            if sha.len() != 64 || hex::decode(sha).is_err() {
                return Err(err(
                    Some(format!("gateway[{i}].cert_sha256")),
                    "must be 64 hex digits (sha256 of the DER certificate)".into(),
                ));
            }
            if c.client_ca_file.is_none() {
                return Err(err(
                    Some("client_ca_file".into()),
                    format!(
                        "gateway[{i}] names a CA-issued certificate (cert_sha256), so the CA bundle that issued it is needed; or drop cert_sha256 and let the gateway use its device-key certificate"
                    ),
                ));
            }
            if let Some(first) = seen.insert(sha.to_lowercase(), i) {
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
            .filter_map(|g| Some((g.cert_sha256.as_ref()?.to_lowercase(), g.id.clone())))
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
            "{BASE}[[challenges.possession]]\nkind = \"k\"\ndigest = \"sha256:{}\"\n",
            "ab".repeat(32)
        ))
        .unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("challenges.possession[0].digest"),
            "{e}"
        );
        let e = load(&format!(
            "{BASE}[[component]]\ndigest = \"abc\"\nkind = \"other\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("component[0].digest"), "{e}");
        let no_ca = BASE.replace("client_ca_file = \"ca.pem\"\n", "");
        let c = load(&format!("{no_ca}[[gateway]]\nid = \"{id}\"\n")).unwrap();
        assert!(c.client_ca_file.is_none() && c.cert_map().is_empty());
        assert_eq!(c.gateways[0].id, id);
        let e = load(&format!(
            "{no_ca}[[gateway]]\nid = \"{id}\"\ncert_sha256 = \"{}\"\n",
            "ab".repeat(32)
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("client_ca_file"), "{e}");
        let e = load(&format!("{BASE}[schedule]\nlength_ms = 0\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("schedule.length_ms"), "{e}");
        let e = load(&format!("{BASE}[server]\nmax_connections = 0\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.max_connections"), "{e}");
        let e = load(&format!(
            "{BASE}[store]\nurl = \"postgres://h/d\"\npool_size = 0\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.pool_size"), "{e}");
        let pg = load(&format!("{BASE}[store]\nurl = \"postgres://u@h:5/d\"\n")).unwrap();
        assert_eq!(pg.store.unwrap().pool_size, 16);
        let admin = load(&format!(
            "{BASE}[admin]\nlisten = \"127.0.0.1:9444\"\ntoken_file = \"admin.token\"\n"
        ))
        .unwrap()
        .admin
        .unwrap();
        assert!(admin.token_file.is_absolute() && admin.token_file.ends_with("admin.token"));
        let e = load(&format!("{BASE}[admin]\nlisten = \"127.0.0.1:9444\"\n")).unwrap_err();
        assert!(e.to_string().contains("token_file"), "{e}");
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
