//! `[[plugin]]` tables: one resource plugin, its sandbox limits and the
//! capabilities it is given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::validate::positive;

/// One `[[plugin]]` table. `Default` gives a plugin with no route, no
/// capabilities and default limits, for code that loads a component by hand.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name; namespaces the plugin's key-value store and its ledger
    /// records. `[a-z0-9_-]`, at most 64 bytes.
    pub name: String,
    /// Path of the component (`.wasm`), relative to the configuration
    /// file, or `oci://HOST[:PORT]/REPO@sha256:<digest>`: a Wasm artifact
    /// pulled from a registry into the data directory (see `[[registry]]`).
    pub component: PathBuf,
    /// An `oci://` component may name a tag instead of a digest; the tag
    /// is resolved to a digest at every load (and logged).
    #[serde(default)]
    pub allow_tag: bool,
    /// Refuse an `oci://` component without a cosign signature by one of
    /// `trusted_keys`.
    #[serde(default)]
    pub require_signature: bool,
    /// PEM public keys (ECDSA P-256, as `cosign.pub`) of the publishers
    /// whose signatures are trusted; relative to the configuration file.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// HTTP route prefix, e.g. `/cache`; `/` takes every path no other
    /// plugin claims.
    pub route: Option<String>,
    /// Sandbox limits.
    #[serde(default)]
    pub limits: PluginLimits,
    /// Call the plugin's `tick` export this often, in milliseconds; never
    /// when absent.
    pub tick_interval_ms: Option<u64>,
    /// Free-form settings passed to the plugin (`init` and the `config`
    /// import). Values may be strings, numbers or booleans.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// The plugin's blob store (`blobs` import); none when absent.
    pub blobs: Option<BlobsConfig>,
    /// Where the plugin may send traffic (`outbound-*` imports); nowhere by
    /// default.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Caps of the `jobs` capability; the plugin gets the capability only
    /// when this table is present.
    pub jobs: Option<JobsConfig>,
    /// UDP ingress: datagrams to `listen` go to the plugin's
    /// `handle-datagram`. No UDP ingress when absent.
    pub udp: Option<UdpConfig>,
    /// Subscribe to an MQTT broker and deliver its messages to the
    /// plugin's `handle-message` export.
    pub mqtt: Option<super::MqttConfig>,
}

/// A plugin's UDP ingress socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpConfig {
    /// Address to bind, e.g. `0.0.0.0:1700`; port 0 picks a free port.
    pub listen: SocketAddr,
}

/// `[plugin.blobs]`: a content-addressed blob store under
/// `<data_dir>/blobs/<plugin name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsConfig {
    /// Most bytes the store may hold; a write past it is refused.
    pub quota_bytes: u64,
}

/// `[plugin.outbound]`: the allow-lists of the outbound imports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Origins the plugin may fetch from over HTTP(S), e.g.
    /// `https://registry-1.docker.io` or `http://127.0.0.1:5000`: scheme,
    /// host and optional port, no path.
    #[serde(default)]
    pub http: Vec<String>,
    /// PEM certificates trusted for `https://` origins in addition to the
    /// system's roots (relative to the configuration file).
    #[serde(default)]
    pub http_ca_file: Option<PathBuf>,
    /// `host:port` addresses the plugin may send UDP datagrams to (the
    /// `outbound-udp` import), written exactly as the plugin names them.
    #[serde(default)]
    pub udp: Vec<String>,
    /// Longest a `fetch` may take in all (response head and whole body),
    /// in milliseconds; 60 000 when absent.
    #[serde(default)]
    pub fetch_deadline_ms: Option<u64>,
    /// Longest a streamed blob (`fetch-into`, or the answer of a
    /// `pass-through`) may take in all, head and whole body, in
    /// milliseconds; 600 000 when absent. The same deadline as `fetch`'s,
    /// longer by default because blobs may be far larger than a fetched
    /// body.
    #[serde(default)]
    pub blob_deadline_ms: Option<u64>,
}

/// Parses an allow-listed HTTP origin into `(scheme, host, port)`, with the
/// scheme's default port when none is given. Host names are lower-cased.
pub fn parse_http_origin(origin: &str) -> Result<(String, String, u16), String> {
    let uri: hyper::Uri = origin
        .parse()
        .map_err(|e| format!("`{origin}` is not a URL: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s.to_string(),
        _ => return Err(format!("`{origin}` must start with http:// or https://")),
    };
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(format!("`{origin}` has no host"));
    };
    let path_is_empty = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !path_is_empty || origin.contains('@') {
        return Err(format!(
            "`{origin}` must be an origin only (scheme, host, port), without path, query or user"
        ));
    }
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok((scheme, host.to_ascii_lowercase(), port))
}

/// `[plugin.jobs]`: the caps of one plugin's deterministic jobs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Most fuel one job may be given.
    pub max_fuel: u64,
    /// Most linear memory one job may be given, in MiB.
    pub max_memory_mb: u64,
    /// Largest output one job may write, in bytes.
    pub max_output_bytes: u64,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: u64,
    /// Most jobs the plugin keeps queued (passed to the plugin; its queue
    /// answers 429 past it).
    pub queue_limit: u64,
    /// Most job modules the plugin keeps stored; storing another evicts
    /// the least recently used (stored or run) first.
    pub max_modules: u64,
    /// Most bytes of job modules and their compiled code the plugin keeps
    /// on disk; the least recently used go first to make room, and a
    /// module that alone needs more is refused.
    pub max_stored_bytes: u64,
}

impl JobsConfig {
    /// The caps of the plugin's module store.
    pub fn module_quota(&self) -> crate::jobs::ModuleQuota {
        crate::jobs::ModuleQuota {
            max_module_bytes: self.max_module_bytes as usize,
            max_modules: self.max_modules as usize,
            max_stored_bytes: self.max_stored_bytes,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_fuel: 10_000_000_000,
            max_memory_mb: 64,
            max_output_bytes: 1 << 20,
            max_module_bytes: 4 << 20,
            queue_limit: 1000,
            max_modules: 128,
            max_stored_bytes: 256 << 20,
        }
    }
}

/// Sandbox limits of one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory cap per call, in MiB.
    pub memory_mb: u64,
    /// CPU deadline per call, in milliseconds.
    pub cpu_ms: u64,
    /// Fuel budget per call; unlimited when absent. Fuel used is always
    /// measured and recorded.
    pub fuel: Option<u64>,
    /// Bytes of kv keys and values one call may write (`set`, `delete`,
    /// `add`), keys counted too.
    pub kv_write_bytes: u64,
    /// kv operations (`get`, `set`, `delete`, `list-keys`, `add`) one call
    /// may make.
    pub kv_ops: u32,
    /// Wall-clock deadline per call of any kind (tick, datagram, message,
    /// prove, verify; HTTP calls are also bounded by `http.call_timeout_ms`),
    /// in milliseconds: covers time spent waiting in host calls, which the
    /// CPU deadline does not.
    pub wall_ms: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_mb: 64,
            cpu_ms: 1_000,
            fuel: None,
            kv_write_bytes: 8 << 20,
            kv_ops: 10_000,
            wall_ms: 30_000,
        }
    }
}

impl PluginConfig {
    /// The plugin's settings as the strings it receives.
    pub fn config_strings(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), config_value_string(v)?)))
            .collect()
    }

    /// Whether the component comes from an OCI registry (`oci://`).
    pub fn is_oci(&self) -> bool {
        self.component
            .to_str()
            .is_some_and(crate::oci::ComponentRef::is_oci)
    }

    /// The component's registry reference, when it has one.
    pub fn oci_reference(&self) -> Option<Result<crate::oci::ComponentRef, String>> {
        self.is_oci()
            .then(|| crate::oci::ComponentRef::parse(self.component.to_str().unwrap_or_default()))
    }

    pub(super) fn validate_source(&self) -> Result<(), (String, String)> {
        match self.oci_reference() {
            Some(Err(problem)) => return Err(("component".into(), problem)),
            Some(Ok(r)) if r.digest().is_none() && !self.allow_tag => {
                return Err((
                    "component".into(),
                    format!(
                        "`{r}` names a tag; pin a digest (`@sha256:…`) or set `allow_tag = true`"
                    ),
                ));
            }
            Some(Ok(_)) => {}
            None => {
                for (key, set) in [
                    ("allow_tag", self.allow_tag),
                    ("require_signature", self.require_signature),
                ] {
                    if set {
                        return Err((key.into(), "applies only to an `oci://` component".into()));
                    }
                }
            }
        }
        if self.require_signature && self.trusted_keys.is_empty() {
            return Err((
                "trusted_keys".into(),
                "`require_signature = true` needs at least one trusted publisher key".into(),
            ));
        }
        Ok(())
    }

    /// The route prefix without a trailing slash (`/` stays `/`).
    pub fn normalized_route(&self) -> Option<String> {
        self.route.as_deref().map(normalize_route)
    }
}

pub(super) fn config_value_string(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn validate_jobs(j: &JobsConfig) -> Result<(), (String, String)> {
    positive("max_fuel", j.max_fuel)?;
    positive("max_memory_mb", j.max_memory_mb)?;
    positive("max_output_bytes", j.max_output_bytes)?;
    positive("max_module_bytes", j.max_module_bytes)?;
    positive("queue_limit", j.queue_limit)?;
    positive("max_modules", j.max_modules)?;
    positive("max_stored_bytes", j.max_stored_bytes)?;
    for (key, value, most) in [
        ("max_memory_mb", j.max_memory_mb, 4096),
        ("max_output_bytes", j.max_output_bytes, 64 << 20),
        ("max_module_bytes", j.max_module_bytes, 64 << 20),
        ("queue_limit", j.queue_limit, 1_000_000),
        ("max_modules", j.max_modules, 100_000),
        ("max_stored_bytes", j.max_stored_bytes, 1 << 40),
    ] {
        if value > most {
            return Err((
                key.into(),
                format!("{value} is above the maximum of {most}"),
            ));
        }
    }
    Ok(())
}

/// Checks a plugin name: `[a-z0-9_-]`, 1 to 64 bytes.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{name}` must be 1 to 64 bytes long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!("`{name}` may only contain a-z, 0-9, `-` and `_`"));
    }
    Ok(())
}

/// Checks a `host:port` target: a host name or IP (IPv6 in brackets) and a
/// port from 1 to 65535.
pub fn validate_host_port(target: &str) -> Result<(), String> {
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err(format!("`{target}` must be `host:port`"));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("`{target}`: port must be 1 to 65535")),
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if plain || host.parse::<std::net::Ipv6Addr>().is_ok() {
        Ok(())
    } else {
        Err(format!(
            "`{target}`: `{host}` is not a host name or IP address"
        ))
    }
}

pub(super) fn validate_route(route: &str) -> Result<(), String> {
    if !route.starts_with('/') {
        return Err(format!("`{route}` must start with `/`"));
    }
    if route.contains(['?', '#', ' ']) || route.contains("//") {
        return Err(format!(
            "`{route}` must be a plain path prefix (no `?`, `#`, spaces or `//`)"
        ));
    }
    Ok(())
}

pub(super) fn normalize_route(route: &str) -> String {
    let trimmed = route.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}
