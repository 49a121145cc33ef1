//! `[plugin.mqtt]`: the broker a plugin's messages come from.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resolve_path;

/// The `[plugin.mqtt]` table: which broker to subscribe to, and to what.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port; 1883, or 8883 with TLS, by default.
    pub port: Option<u16>,
    /// Client id; stable across restarts so the broker keeps the session.
    /// Default: `depin-gateway-<plugin name>`.
    pub client_id: Option<String>,
    /// Topic filters (MQTT wildcards `+` and `#` allowed).
    pub topics: Vec<String>,
    /// Subscription QoS: 0 (at most once) or 1 (at least once, acknowledged
    /// after commit). Default 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Credentials, if the broker wants them.
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT keep-alive, in seconds. Default 30.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Largest message accepted, in bytes; larger ones end the connection.
    /// Default 256 KiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// TLS to the broker; plain TCP when absent.
    pub tls: Option<MqttTls>,
}

/// The `[plugin.mqtt.tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// PEM file of the CA certificate(s) that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain and key, for brokers that require mTLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

fn default_qos() -> u8 {
    1
}

fn default_keep_alive() -> u64 {
    30
}

fn default_max_message_bytes() -> usize {
    256 << 10
}

impl MqttConfig {
    /// Checks the table; errors are (key below `mqtt.`, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.host.trim().is_empty() {
            return Err(("host".into(), "must not be empty".into()));
        }
        if self.port == Some(0) {
            return Err(("port".into(), "must be greater than 0".into()));
        }
        if self.topics.is_empty() {
            return Err(("topics".into(), "name at least one topic filter".into()));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(problem) = validate_topic_filter(t) {
                return Err((format!("topics[{i}]"), problem));
            }
        }
        if self.qos > 1 {
            return Err((
                "qos".into(),
                format!("{} is not supported; use 0 or 1", self.qos),
            ));
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 65535)
        {
            return Err(("client_id".into(), "must be 1 to 65535 bytes".into()));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err((
                "password".into(),
                "a password needs a username (MQTT 3.1.1)".into(),
            ));
        }
        if self.keep_alive_s == 0 || self.keep_alive_s > 65535 {
            return Err(("keep_alive_s".into(), "must be 1 to 65535".into()));
        }
        if self.max_message_bytes < 1024 {
            return Err(("max_message_bytes".into(), "must be at least 1024".into()));
        }
        if let Some(tls) = &self.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            return Err((
                "tls".into(),
                "client_cert_file and client_key_file go together".into(),
            ));
        }
        Ok(())
    }

    /// Resolves the TLS file paths against the configuration file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| *p = resolve_path(base, p);
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.ca_file);
            if let Some(p) = &mut tls.client_cert_file {
                resolve(p);
            }
            if let Some(p) = &mut tls.client_key_file {
                resolve(p);
            }
        }
    }
}

fn validate_topic_filter(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > 65535 {
        return Err("a topic filter must be 1 to 65535 bytes".into());
    }
    let levels: Vec<&str> = t.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!("`{t}`: `#` must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{t}`: `+` must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid table subscribing to `topics`.
    pub(crate) fn cfg(topics: &[&str]) -> MqttConfig {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: None,
            client_id: None,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            qos: 1,
            username: None,
            password: None,
            keep_alive_s: 30,
            max_message_bytes: 1 << 16,
            tls: None,
        }
    }

    #[test]
    fn wildcards_must_be_whole_levels() {
        assert!(
            cfg(&["sensors/+/packs", "sensors/#", "#"])
                .validate()
                .is_ok()
        );
        let (key, problem) = cfg(&["a/b#"]).validate().unwrap_err();
        assert_eq!(key, "topics[0]");
        assert!(problem.contains("`#`"), "{problem}");
        let (key, _) = cfg(&["ok", "a/#/b"]).validate().unwrap_err();
        assert_eq!(key, "topics[1]");
        let (_, problem) = cfg(&["a/x+"]).validate().unwrap_err();
        assert!(problem.contains("`+`"), "{problem}");
    }

    #[test]
    fn qos_2_and_empty_topics_are_refused() {
        let mut c = cfg(&["a"]);
        c.qos = 2;
        assert_eq!(c.validate().unwrap_err().0, "qos");
        assert_eq!(cfg(&[]).validate().unwrap_err().0, "topics");
    }

    #[test]
    fn bad_mqtt_keys_are_named_with_the_file() {
        let text = "[[plugin]]\nname = \"s\"\ncomponent = \"s.wasm\"\n\
                    [plugin.mqtt]\nhost = \"127.0.0.1\"\ntopics = [\"a/#\"]\nqos = 2\n";
        let e = crate::config::GatewayConfig::parse(Path::new("/etc/gw.toml"), text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugin[0].mqtt.qos"), "{e}");
        assert!(e.to_string().starts_with("/etc/gw.toml"), "{e}");
        let typo = text.replace("qos = 2", "qso = 1");
        let e = crate::config::GatewayConfig::parse(Path::new("/etc/gw.toml"), &typo).unwrap_err();
        assert!(e.problem.contains("unknown field `qso`"), "{e}");
    }
}
