//! `gateway.toml`: one file that configures the gateway and its plugins.
//!
//! Every error names the file, the key and the problem; unknown keys are
//! errors, so a typo never silently falls back to a default.

mod epochs;
mod load;
mod mqtt;
mod ops;
mod pkcs11;
mod plugin;
mod policy;
mod registry;
mod self_check;
mod upstream;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use epochs::EpochsConfig;
pub use load::{ConfigError, load_toml, parse_toml, read_config, resolve_path};
pub use mqtt::{MqttConfig, MqttTls};
pub use ops::{AdminConfig, ReloadConfig, TlsConfig};
pub use pkcs11::Pkcs11Config;
pub use plugin::{
    BlobsConfig, JobsConfig, OutboundConfig, PluginConfig, PluginLimits, UdpConfig,
    parse_http_origin, validate_host_port, validate_name,
};
pub use policy::{load_policy, parse_policy};
pub use registry::RegistryConfig;
pub use self_check::{SelfCheckConfig, SelfCheckTemplate};
pub use upstream::{CollectorUrl, CollectorUrls, UpstreamConfig};

#[cfg(test)]
pub(crate) use mqtt::tests as mqtt_tests;

/// The whole gateway configuration, as loaded and validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address of the public HTTP ingress, e.g. `0.0.0.0:8080`. Port 0 picks
    /// a free port (the bound address is logged in the `gateway ready` event).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the ledger, the key-value store and the compile cache live.
    /// Relative paths are relative to the configuration file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The device key written by `depin-gateway keygen`. Relative to the
    /// configuration file; defaults to `<data_dir>/device.key`.
    pub key_path: Option<PathBuf>,
    /// The device key on a PKCS#11 token instead of a file: an RFC 7512
    /// URI, `pkcs11:token=<label>;object=<key label>?pin-source=<file>`.
    /// The module comes from `[pkcs11] module` (or the URI's
    /// `module-path`). Not together with `key_path`.
    pub key: Option<crate::identity::Pkcs11Uri>,
    /// The PKCS#11 module of `key`.
    #[serde(default)]
    pub pkcs11: Pkcs11Config,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Limits of the HTTP ingress.
    #[serde(default)]
    pub http: HttpConfig,
    /// Limits of the WebAssembly runtime as a whole.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The resource plugins, one table each.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Epoch length and the reward policy.
    #[serde(default)]
    pub epochs: EpochsConfig,
    /// The collector that receives epoch reports; reports stay local
    /// without it.
    pub upstream: Option<UpstreamConfig>,
    /// The admin listener; off when absent.
    pub admin: Option<AdminConfig>,
    /// Hot reload of the plugins.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// The gateway's own challenges to its plugins; off without templates.
    #[serde(default)]
    pub self_check: SelfCheckConfig,
    /// OCI registries that `oci://` components are pulled from: plain
    /// HTTP, credentials, CA. A registry without a table is reached over
    /// HTTPS, anonymously.
    #[serde(default, rename = "registry")]
    pub registries: Vec<RegistryConfig>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Limits of the HTTP ingress.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
    /// Most headers accepted in one request; more gets 431.
    pub max_headers: usize,
    /// Wall-clock budget of one plugin call, in milliseconds; past it the
    /// caller gets 504.
    pub call_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace_ms: u64,
    /// Serve over TLS; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// How long a client may take to send a request head (request line and
    /// headers), from the moment the gateway waits for it; idle keep-alive
    /// connections are closed after it too.
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a whole request body; past it the
    /// request gets 408 and the connection is closed
    /// (`depin_http_body_timeouts_total`).
    pub body_read_timeout_ms: u64,
    /// Open connections of the public ingress at once; more are closed at
    /// accept (`depin_http_connections_refused_total{reason="total"}`).
    pub max_connections: usize,
    /// Open connections from one peer address at once (IPv6: one /64);
    /// more are closed at accept
    /// (`depin_http_connections_refused_total{reason="peer"}`).
    pub max_connections_per_peer: usize,
    /// HTTP/2: how often an idle connection is pinged.
    pub h2_keep_alive_interval_ms: u64,
    /// HTTP/2: how long a ping may go unanswered before the connection is
    /// closed.
    pub h2_keep_alive_timeout_ms: u64,
    /// HTTP/2: requests (streams) one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            call_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            tls: None,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 60_000,
            max_connections: 4096,
            max_connections_per_peer: 256,
            h2_keep_alive_interval_ms: 20_000,
            h2_keep_alive_timeout_ms: 10_000,
            h2_max_concurrent_streams: 32,
        }
    }
}

/// Limits of the WebAssembly runtime as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Instances that may exist at once across all plugins (the size of the
    /// pooling allocator). Calls beyond it get 503.
    pub max_instances: u32,
    /// Upper bound on any plugin's `limits.memory_mb`.
    pub max_memory_mb: u64,
    /// Granularity of CPU deadlines, in milliseconds.
    pub tick_ms: u64,
    /// Job module compiles (`PUT` of a job module) that run at once, apart
    /// from the job workers: a flood of uploads waits here and never holds
    /// up jobs.
    pub job_compile_slots: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_mb: 256,
            tick_ms: 5,
            job_compile_slots: 1,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

impl GatewayConfig {
    /// Reads, parses and validates `path`. Relative paths inside are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &read_config(path)?)
    }

    /// Parses and validates configuration text that came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: GatewayConfig = parse_toml(path, text)?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate().map_err(|(key, problem)| ConfigError {
            file: path.to_path_buf(),
            key: Some(key),
            problem,
        })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &Path| resolve_path(base, p);
        self.data_dir = resolve(&self.data_dir);
        self.key_path = self.key_path.as_deref().map(resolve);
        self.pkcs11.resolve_paths(base);
        for plugin in &mut self.plugins {
            if !plugin.is_oci() {
                plugin.component = resolve(&plugin.component);
            }
            plugin.trusted_keys = plugin.trusted_keys.iter().map(|k| resolve(k)).collect();
            plugin.outbound.http_ca_file = plugin.outbound.http_ca_file.as_deref().map(resolve);
            if let Some(mqtt) = &mut plugin.mqtt {
                mqtt.resolve_paths(base);
            }
        }
        self.epochs.policy = self.epochs.policy.as_deref().map(resolve);
        if let Some(u) = &mut self.upstream {
            u.resolve_paths(base);
        }
        for r in &mut self.registries {
            r.resolve_paths(base);
        }
        if let Some(tls) = &mut self.http.tls {
            tls.resolve_paths(base);
        }
        if let Some(admin) = &mut self.admin {
            admin.resolve_paths(base);
        }
    }

    /// The device key file: `key_path`, or `<data_dir>/device.key`.
    pub fn key_path(&self) -> PathBuf {
        self.key_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("device.key"))
    }

    /// Where the device key is: on the token `key` names, else in the
    /// file [`GatewayConfig::key_path`].
    pub fn key_source(&self) -> crate::identity::KeySource {
        use crate::identity::{KeySource, TokenLocation};
        match &self.key {
            Some(uri) => KeySource::Token(Box::new(TokenLocation {
                uri: uri.clone(),
                module: uri
                    .module_path
                    .clone()
                    .or_else(|| self.pkcs11.module.clone())
                    .unwrap_or_default(),
                pin_env: self.pkcs11.pin_env.clone(),
            })),
            None => KeySource::File(self.key_path()),
        }
    }
}

/// Parses `text` as if it were `/etc/depin/gateway.toml` (unit tests).
#[cfg(test)]
pub(crate) fn parse_test_config(text: &str) -> Result<GatewayConfig, ConfigError> {
    GatewayConfig::parse(Path::new("/etc/depin/gateway.toml"), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parse_test_config as parse;

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.data_dir, Path::new("/etc/depin/data"));
        assert_eq!(c.key_path(), Path::new("/etc/depin/data/device.key"));
        assert!(c.plugins.is_empty());
    }

    #[test]
    fn token_key_takes_the_module_from_the_pkcs11_table() {
        let c = parse(
            "key = \"pkcs11:token=depin;object=device?pin-source=/etc/depin/pin\"\n\
             [pkcs11]\nmodule = \"lib/softhsm2.so\"\npin_env = \"DEPIN_PIN\"\n",
        )
        .unwrap();
        match c.key_source() {
            crate::identity::KeySource::Token(t) => {
                assert_eq!(t.module, Path::new("/etc/depin/lib/softhsm2.so"));
                assert_eq!(t.uri.object.as_deref(), Some("device"));
                assert_eq!(t.pin_env.as_deref(), Some("DEPIN_PIN"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("").unwrap().key_source(),
            crate::identity::KeySource::File(_)
        ));
    }

    #[test]
    fn token_key_errors_name_the_key() {
        for (text, needle) in [
            ("key = \"pkcs11:object=k\"\n", "[pkcs11] module"),
            (
                "key = \"pkcs11:object=k\"\nkey_path = \"k\"\n[pkcs11]\nmodule = \"/m.so\"\n",
                "give the device key once",
            ),
            (
                "key = \"pkcs11:token=t\"\n[pkcs11]\nmodule = \"/m.so\"\n",
                "object=<label>",
            ),
            (
                "key = \"pkcs11:object=k?module-path=/a.so\"\n[pkcs11]\nmodule = \"/b.so\"\n",
                "give one",
            ),
            ("key = \"/etc/depin/device.key\"\n", "pkcs11:"),
            (
                "key = \"pkcs11:object=k;colour=red\"\n",
                "unknown path attribute `colour`",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("key"), "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let e = parse("listen = \"127.0.0.1:1\"\nlisten_adress = 1\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listen_adress"), "{e}");
        assert!(
            e.to_string().contains("unknown field `listen_adress`"),
            "{e}"
        );
        assert!(e.to_string().starts_with("/etc/depin/gateway.toml"), "{e}");
    }

    #[test]
    fn unknown_nested_key_names_the_plugin_index() {
        let text =
            "[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n[plugin.limits]\nmemory = 3\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].limits.memory"), "{e}");
        assert!(e.problem.contains("unknown field `memory`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let e = parse("[http]\nmax_body_bytes = \"big\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("http.max_body_bytes"), "{e}");
        assert!(e.problem.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_toml_syntax_gives_the_position() {
        let e = parse("listen = \n").unwrap_err();
        assert!(e.problem.contains("line 1"), "{e}");
    }

    #[test]
    fn duplicate_plugin_names_and_routes_are_refused() {
        let two = |n2: &str, r2: &str| {
            format!(
                "[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\nroute = \"/a\"\n\
                 [[plugin]]\nname = \"{n2}\"\ncomponent = \"b.wasm\"\nroute = \"{r2}\"\n"
            )
        };
        let e = parse(&two("a", "/b")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[1].name"), "{e}");
        let e = parse(&two("b", "/a/")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[1].route"), "{e}");
        assert!(e.problem.contains("plugin[0]"), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        let e = parse(
            "[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n[plugin.limits]\nmemory_mb = 9000\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].limits.memory_mb"), "{e}");
        let e = parse("[runtime]\ntick_ms = 0\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("runtime.tick_ms"), "{e}");
        let e = parse("[http]\nmax_header_bytes = 100\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("http.max_header_bytes"), "{e}");
        assert!(e.problem.contains("8192"), "{e}");
    }

    #[test]
    fn jobs_table_is_optional_and_checked() {
        let base = "[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n";
        assert!(parse(base).unwrap().plugins[0].jobs.is_none());
        let c = parse(&format!("{base}[plugin.jobs]\nmax_fuel = 5\n")).unwrap();
        let j = c.plugins[0].jobs.as_ref().unwrap();
        assert_eq!((j.max_fuel, j.max_memory_mb), (5, 64));
        let e = parse(&format!("{base}[plugin.jobs]\nmax_memory_mb = 5000\n")).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("plugin[0].jobs.max_memory_mb"),
            "{e}"
        );
        let e = parse(&format!("{base}[plugin.jobs]\nqueue_limit = 0\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].jobs.queue_limit"), "{e}");
        let e = parse(&format!("{base}[plugin.jobs]\nfuel = 1\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].jobs.fuel"), "{e}");
    }

    #[test]
    fn plugin_config_values_become_strings() {
        let c = parse(
            "[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n[plugin.config]\nx = 1\ny = \"s\"\nz = true\n",
        )
        .unwrap();
        assert_eq!(
            c.plugins[0].config_strings(),
            vec![
                ("x".into(), "1".into()),
                ("y".into(), "s".into()),
                ("z".into(), "true".into())
            ]
        );
        let e =
            parse("[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n[plugin.config]\nx = [1]\n")
                .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].config.x"), "{e}");
    }

    #[test]
    fn blob_and_outbound_tables_are_checked() {
        let plugin = "[[plugin]]\nname = \"c\"\ncomponent = \"c.wasm\"\n";
        let c = parse(&format!(
            "{plugin}[plugin.blobs]\nquota_bytes = 1000\n\
             [plugin.outbound]\nhttp = [\"http://127.0.0.1:5000\"]\nhttp_ca_file = \"ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(c.plugins[0].blobs.as_ref().unwrap().quota_bytes, 1000);
        assert_eq!(c.plugins[0].outbound.http, ["http://127.0.0.1:5000"]);
        assert_eq!(
            c.plugins[0].outbound.http_ca_file.as_deref(),
            Some(Path::new("/etc/depin/ca.pem"))
        );
        let e = parse(&format!(
            "{plugin}[plugin.outbound]\nhttp = [\"http://a\", \"ftp://b\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].outbound.http[1]"));
        assert!(e.problem.contains("http:// or https://"), "{e}");
        let e = parse(&format!(
            "{plugin}[plugin.outbound]\nhttp = [\"http://a/path\"]\n"
        ))
        .unwrap_err();
        assert!(e.problem.contains("origin only"), "{e}");
        let e = parse(&format!("{plugin}[plugin.blobs]\nquota_bytes = 0\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].blobs.quota_bytes"));
        let e = parse(&format!("{plugin}[plugin.blobs]\nquota = 5\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `quota`"), "{e}");
    }

    #[test]
    fn udp_ingress_and_outbound_allow_list_are_parsed_and_checked() {
        let base = "[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n";
        let c = parse(&format!(
            "{base}[plugin.udp]\nlisten = \"127.0.0.1:1700\"\n\
             [plugin.outbound]\nudp = [\"lns.example:1700\", \"[::1]:1680\"]\n"
        ))
        .unwrap();
        let p = &c.plugins[0];
        assert_eq!(p.udp.as_ref().unwrap().listen.port(), 1700);
        assert_eq!(p.outbound.udp, ["lns.example:1700", "[::1]:1680"]);
        let e = parse(&format!("{base}[plugin.outbound]\nudp = [\"nohost\"]\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].outbound.udp[0]"), "{e}");
        let e = parse(&format!("{base}[plugin.outbound]\nudp = [\"a b:1\"]\n")).unwrap_err();
        assert!(e.problem.contains("not a host name"), "{e}");
        let e = parse(&format!("{base}[plugin.outbound]\nudpp = []\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].outbound.udpp"), "{e}");
        let e = parse(&format!("{base}[plugin.udp]\nlisten = \"nowhere\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].udp.listen"), "{e}");
    }

    #[test]
    fn oci_components_registries_and_signature_settings_are_checked() {
        let d = format!("sha256:{}", "0".repeat(64));
        let plugin = |component: &str, extra: &str| {
            format!("[[plugin]]\nname = \"a\"\ncomponent = \"{component}\"\n{extra}\n")
        };
        let oci = format!("oci://reg.example:5000/a@{d}");
        let c = parse(&format!(
            "{}[[registry]]\nhost = \"reg.example:5000\"\ninsecure = true\nusername = \"u\"\n\
             password_env = \"P\"\n",
            plugin(&oci, "require_signature = true\ntrusted_keys = [\"k.pub\"]")
        ))
        .unwrap();
        let p = &c.plugins[0];
        assert_eq!(p.component, Path::new(&oci));
        assert_eq!(p.trusted_keys, [Path::new("/etc/depin/k.pub")]);
        assert_eq!(
            p.oci_reference().unwrap().unwrap().digest(),
            Some(d.as_str())
        );
        assert!(c.registries[0].insecure);

        let tag = "oci://reg.example/a:v1";
        let e = parse(&plugin(tag, "")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].component"), "{e}");
        assert!(e.problem.contains("allow_tag"), "{e}");
        assert!(parse(&plugin(tag, "allow_tag = true")).is_ok());
        let e = parse(&plugin(&oci, "require_signature = true")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].trusted_keys"), "{e}");
        let e = parse(&plugin(
            "a.wasm",
            "require_signature = true\ntrusted_keys = [\"k\"]",
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].require_signature"), "{e}");
        let e = parse(&plugin("oci://reg.example/a", "")).unwrap_err();
        assert!(e.problem.contains("not pinned"), "{e}");
        let e = parse("[[registry]]\nhost = \"r.example\"\npassword_file = \"p\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("registry[0].username"), "{e}");
        let e = parse("[[registry]]\nhost = \"r.example\"\n[[registry]]\nhost = \"r.example\"\n")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("registry[1].host"), "{e}");
        let e = parse("[[registry]]\nhost = \"https://r.example\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("registry[0].host"), "{e}");
    }
}
