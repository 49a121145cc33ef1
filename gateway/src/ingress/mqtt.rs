//! MQTT ingress: the gateway subscribes to a broker for a plugin and hands
//! each message to the plugin's `handle-message` export.
//!
//! Guarantees:
//! - A QoS 1 message is acknowledged to the broker only after the plugin's
//!   call returned `ok` and its usage records and kv writes are durable in
//!   the ledger. A gateway that dies before that leaves the message
//!   unacknowledged; the broker keeps it in the persistent session
//!   (`clean_session = false`, stable client id) and redelivers it when the
//!   gateway reconnects. A plugin that must count a message once keeps its
//!   own idempotency state in kv (committed with the call's records).
//! - Messages of one topic are handled one at a time, in the order
//!   received, each call committed before the next of that topic starts.
//!   Different topics are handled concurrently (up to 8 at once per
//!   subscription), so their commits share fsyncs.
//! - A broker that is down or unreachable never stops the gateway: the
//!   subscriber logs and reconnects with exponential backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depin_protocol::units;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::ingress::http::RequestIds;
use crate::ledger::{Ledger, NewRecord};
use crate::plugin_table::PluginTable;
use crate::runtime::CallError;

/// Backoff after a failed connection attempt: doubles from the first value
/// up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));

/// Messages of different topics handled at once, per subscription.
const LANES: usize = 8;

/// The lane of `topic` (stable within a process).
fn lane_of(topic: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

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
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
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

    fn qos(&self) -> QoS {
        if self.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
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

/// Why a subscription could not be set up. Reported at start; the gateway
/// does not start with a broken MQTT table.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: mqtt: {problem}")]
pub struct MqttSetupError {
    pub plugin: String,
    pub problem: String,
}

/// Starts one subscriber per plugin that has an `[plugin.mqtt]` table.
/// Each runs until `stop` turns true (or its handle is aborted).
pub fn start(
    subscriptions: &[(MqttConfig, Arc<str>)],
    table: &Arc<PluginTable>,
    ledger: &Arc<Ledger>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, MqttSetupError> {
    let mut handles = Vec::new();
    for (cfg, name) in subscriptions {
        let options = options(cfg, name).map_err(|problem| MqttSetupError {
            plugin: name.to_string(),
            problem,
        })?;
        let subscriber = Subscriber {
            cfg: cfg.clone(),
            name: name.clone(),
            table: table.clone(),
            ledger: ledger.clone(),
        };
        handles.push(tokio::spawn(subscriber.run(options, stop.clone())));
    }
    Ok(handles)
}

fn options(cfg: &MqttConfig, plugin: &str) -> Result<MqttOptions, String> {
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("depin-gateway-{plugin}"));
    let port = cfg
        .port
        .unwrap_or(if cfg.tls.is_some() { 8883 } else { 1883 });
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_max_packet_size(cfg.max_message_bytes + 1024, 64 << 10)
        .set_request_channel_capacity(1024);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &cfg.tls {
        o.set_transport(Transport::tls_with_config(tls_config(tls)?.into()));
    }
    Ok(o)
}

fn tls_config(tls: &MqttTls) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file_err = |p: &Path, e: &dyn std::fmt::Display| format!("tls: {}: {e}", p.display());
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca_file)
        .map_err(|e| file_err(&tls.ca_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&tls.ca_file, &e))?;
    if cas.is_empty() {
        return Err(file_err(&tls.ca_file, &"no PEM certificate in the file"));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| file_err(&tls.ca_file, &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("tls: client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// One plugin's subscription.
struct Subscriber {
    cfg: MqttConfig,
    /// The plugin's name, looked up in `table` per message so that MQTT
    /// delivery follows reloads.
    name: Arc<str>,
    table: Arc<PluginTable>,
    ledger: Arc<Ledger>,
}

impl Subscriber {
    /// The network half polls the broker connection and forwards messages;
    /// the delivery half calls the plugin, commits, then acknowledges.
    /// They are separate tasks so that a slow plugin call never stops the
    /// connection's keep-alive.
    async fn run(self, options: MqttOptions, mut stop: watch::Receiver<bool>) {
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::new(self);
        let delivery = tokio::spawn(this.clone().deliver(client.clone(), rx));
        tokio::select! {
            _ = this.poll(&client, eventloop, tx) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        delivery.abort();
        let _ = delivery.await;
        let _ = client.try_disconnect();
    }

    async fn poll(
        &self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        tx: mpsc::UnboundedSender<Publish>,
    ) {
        let plugin = &self.name;
        let (host, port) = (&self.cfg.host, self.cfg.port);
        let mut backoff = BACKOFF.0;
        let mut connected = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    backoff = BACKOFF.0;
                    tracing::info!(%plugin, %host, ?port, session_present = ack.session_present, "mqtt connected");
                    // Subscribing again on a resumed session is harmless and
                    // covers a broker that lost the session.
                    for topic in &self.cfg.topics {
                        if let Err(e) = client.try_subscribe(topic.clone(), self.cfg.qos()) {
                            tracing::error!(%plugin, %topic, error = %e, "mqtt subscribe request failed");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    tracing::debug!(%plugin, codes = ?ack.return_codes, "mqtt subscribed");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        tracing::warn!(%plugin, %host, ?port, error = %e, "mqtt connection lost; reconnecting");
                    } else {
                        tracing::warn!(%plugin, %host, ?port, error = %e, retry_ms = backoff.as_millis() as u64, "mqtt broker unreachable; retrying");
                    }
                    connected = false;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// Spreads messages over `LANES` lanes by topic: one topic always goes
    /// to the same lane, so its messages are handled in order, one at a
    /// time; different topics proceed concurrently and share commits.
    async fn deliver(
        self: Arc<Self>,
        client: AsyncClient,
        mut rx: mpsc::UnboundedReceiver<Publish>,
    ) {
        let ids = Arc::new(RequestIds::default());
        // Dropping the set (when this task is aborted) aborts the lanes.
        let mut lanes = tokio::task::JoinSet::new();
        let senders: Vec<_> = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                lanes.spawn(self.clone().lane(client.clone(), rx, ids.clone()));
                tx
            })
            .collect();
        while let Some(publish) = rx.recv().await {
            let lane = lane_of(&publish.topic);
            if senders[lane].send(publish).is_err() {
                return;
            }
        }
    }

    async fn lane(
        self: Arc<Self>,
        client: AsyncClient,
        mut rx: mpsc::UnboundedReceiver<Publish>,
        ids: Arc<RequestIds>,
    ) {
        while let Some(publish) = rx.recv().await {
            let id = ids.next();
            let verdict = self.handle(&id, &publish).await;
            match verdict {
                Delivery::Ack => {
                    if publish.qos != QoS::AtMostOnce
                        && let Err(e) = client.ack(&publish).await
                    {
                        tracing::warn!(plugin = %self.name, request_id = %id, error = %e, "mqtt ack not sent; the broker will redeliver");
                    }
                }
                Delivery::Keep(reason) => {
                    tracing::warn!(plugin = %self.name, request_id = %id, topic = %publish.topic, %reason, "message not acknowledged; the broker redelivers it on the next session");
                }
            }
        }
    }

    /// Phases: call the plugin → commit its effects with the host's
    /// measurements → decide whether the message may be acknowledged.
    async fn handle(&self, id: &Arc<str>, publish: &Publish) -> Delivery {
        let started = Instant::now();
        let bytes_in = (publish.topic.len() + publish.payload.len()) as u64;
        let Some(plugin) = self.table.get(&self.name) else {
            return Delivery::Keep("the plugin is no longer loaded".into());
        };
        let outcome = plugin
            .handle_message(id, publish.topic.clone(), publish.payload.to_vec())
            .await;
        let verdict = match &outcome.result {
            Ok(Ok(())) => Delivery::Ack,
            Ok(Err(message)) => {
                Delivery::Keep(format!("the plugin asked for redelivery: {message}"))
            }
            Err(CallError::Busy) => Delivery::Keep("too many plugin calls at once".into()),
            Err(CallError::Host(e)) => Delivery::Keep(format!("host failure: {e}")),
            // A trap or an exceeded limit happens again on every redelivery:
            // the message is dropped (and logged) rather than retried forever.
            Err(e) => {
                tracing::error!(plugin = %self.name, request_id = %id, topic = %publish.topic, error = %e, "message dropped: the plugin call failed");
                Delivery::Ack
            }
        };
        let mut effects = outcome.effects;
        let host = |unit: &str, quantity: u64| NewRecord::host(unit, quantity, id);
        effects.records.splice(
            0..0,
            [
                host(units::BYTES_IN, bytes_in),
                host(units::WALL_TIME_US, outcome.wall.as_micros() as u64),
                host(units::FUEL, outcome.fuel),
            ],
        );
        if let Err(e) = self.ledger.commit(Arc::clone(&self.name), effects).await {
            return Delivery::Keep(format!("cannot commit usage: {e}"));
        }
        tracing::debug!(plugin = %self.name, request_id = %id, topic = %publish.topic, duration_us = started.elapsed().as_micros() as u64, "message handled");
        verdict
    }
}

enum Delivery {
    Ack,
    Keep(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(topics: &[&str]) -> MqttConfig {
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

    #[test]
    fn the_example_configuration_subscribes_the_sensor_plugin() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.toml");
        let config = crate::config::GatewayConfig::load(&path).unwrap();
        let sensors = config.plugins.iter().find(|p| p.name == "sensors").unwrap();
        let mqtt = sensors.mqtt.as_ref().unwrap();
        assert_eq!((mqtt.qos, mqtt.topics.len()), (1, 1));
        assert!(options(mqtt, &sensors.name).is_ok());
    }

    #[test]
    fn missing_ca_file_is_named() {
        let mut c = cfg(&["a"]);
        c.tls = Some(MqttTls {
            ca_file: "/nonexistent/ca.pem".into(),
            client_cert_file: None,
            client_key_file: None,
        });
        let e = options(&c, "p").map(|_| ()).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
