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
//! - Memory is bounded under a flood: at most [`MAX_QUEUED`] received
//!   messages wait for their call, per subscription. When the queues are
//!   full the subscriber stops reading the broker connection (TCP flow
//!   control then pushes back on the broker, which queues or drops by its
//!   own limits) until a lane frees a slot. Each wait is counted in
//!   `depin_mqtt_backpressure_total`; `depin_mqtt_queued_messages` (and its
//!   `_peak`) show the queue. A wait longer than 1.5 keep-alive intervals
//!   lets the broker drop the connection; QoS 1 messages not yet
//!   acknowledged are then redelivered.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::call::{self, CallError, HostMeasurements, RequestIds};
use crate::config::{MqttConfig, MqttTls};
use crate::ingress::pressure;
use crate::ledger::Ledger;
use crate::plugin_table::PluginTable;
use crate::service::Service;

/// Backoff after a failed connection attempt: doubles from the first value
/// up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));

/// Messages of different topics handled at once, per subscription.
const LANES: usize = 8;
/// Messages received from the broker and waiting to be spread over the
/// lanes.
const HAND_OFF_QUEUE: usize = 32;
/// Messages waiting in one lane.
const LANE_QUEUE: usize = 4;
/// Most messages one subscription holds at once: queued at the hand-off,
/// queued in lanes, being handled by lanes, and one held by the spreader
/// while it waits for a full lane. Memory is bounded by this times
/// `max_message_bytes`.
pub const MAX_QUEUED: usize = HAND_OFF_QUEUE + LANES * (LANE_QUEUE + 1) + 1;

/// The lane of `topic` (stable within a process).
fn lane_of(topic: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

/// The subscription QoS of `cfg`.
fn qos(cfg: &MqttConfig) -> QoS {
    if cfg.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Why a subscription could not be set up. Reported at start; the gateway
/// does not start with a broken MQTT table.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: mqtt: {problem}")]
pub struct MqttSetupError {
    pub plugin: String,
    pub problem: String,
}

/// One subscription per `(table, plugin name)`, ready to start as a
/// [`Service`]. Fails (naming the plugin) when a table cannot be turned
/// into connection options, e.g. an unreadable CA file.
pub fn subscriptions(
    tables: &[(MqttConfig, Arc<str>)],
    table: &Arc<PluginTable>,
    ledger: &Arc<Ledger>,
) -> Result<Vec<Subscription>, MqttSetupError> {
    tables
        .iter()
        .map(|(cfg, name)| {
            let options = options(cfg, name).map_err(|problem| MqttSetupError {
                plugin: name.to_string(),
                problem,
            })?;
            let subscriber = Subscriber {
                cfg: cfg.clone(),
                name: name.clone(),
                table: table.clone(),
                ledger: ledger.clone(),
                queued: QueueGauge::new(name.clone()),
            };
            Ok(Subscription {
                subscriber,
                options,
            })
        })
        .collect()
}

/// One plugin's subscription to its broker, as a [`Service`]: connects,
/// subscribes and delivers until shutdown, reconnecting with backoff.
pub struct Subscription {
    subscriber: Subscriber,
    options: MqttOptions,
}

impl Service for Subscription {
    fn name(&self) -> &'static str {
        "mqtt-subscriber"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.subscriber.run(self.options, shutdown))
    }
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
    /// Messages received and not yet handled.
    queued: QueueGauge,
}

/// Counts the messages a subscription holds, for `/metrics`.
struct QueueGauge {
    plugin: Arc<str>,
    now: std::sync::atomic::AtomicU64,
}

impl QueueGauge {
    fn new(plugin: Arc<str>) -> Self {
        Self {
            plugin,
            now: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn received(&self) {
        let n = self.now.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let labels = [("plugin", &*self.plugin)];
        pressure::set(pressure::MQTT_QUEUED, &labels, n);
        pressure::raise(pressure::MQTT_QUEUED_PEAK, &labels, n);
    }

    fn handled(&self) {
        let n = self.now.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) - 1;
        pressure::set(pressure::MQTT_QUEUED, &[("plugin", &*self.plugin)], n);
    }
}

impl Subscriber {
    /// The network half polls the broker connection and forwards messages;
    /// the delivery half calls the plugin, commits, then acknowledges.
    /// They are separate tasks so that a slow plugin call never stops the
    /// connection's keep-alive.
    async fn run(self, options: MqttOptions, mut stop: watch::Receiver<bool>) {
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let (tx, rx) = mpsc::channel(HAND_OFF_QUEUE);
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
        tx: mpsc::Sender<Publish>,
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
                        if let Err(e) = client.try_subscribe(topic.clone(), qos(&self.cfg)) {
                            tracing::error!(%plugin, %topic, error = %e, "mqtt subscribe request failed");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    tracing::debug!(%plugin, codes = ?ack.return_codes, "mqtt subscribed");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.queued.received();
                    let p = match tx.try_send(p) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                        Err(mpsc::error::TrySendError::Full(p)) => p,
                    };
                    // Backpressure: the broker connection is not read
                    // until the queue has room.
                    pressure::count(pressure::MQTT_BACKPRESSURE, &[("plugin", plugin)], 1);
                    if tx.send(p).await.is_err() {
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
    async fn deliver(self: Arc<Self>, client: AsyncClient, mut rx: mpsc::Receiver<Publish>) {
        let ids = Arc::new(RequestIds::default());
        // Dropping the set (when this task is aborted) aborts the lanes.
        let mut lanes = tokio::task::JoinSet::new();
        let senders: Vec<_> = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                lanes.spawn(self.clone().lane(client.clone(), rx, ids.clone()));
                tx
            })
            .collect();
        while let Some(publish) = rx.recv().await {
            let lane = lane_of(&publish.topic);
            if senders[lane].send(publish).await.is_err() {
                return;
            }
        }
    }

    async fn lane(
        self: Arc<Self>,
        client: AsyncClient,
        mut rx: mpsc::Receiver<Publish>,
        ids: Arc<RequestIds>,
    ) {
        while let Some(publish) = rx.recv().await {
            let id = ids.next();
            let verdict = self.handle(&id, &publish).await;
            self.queued.handled();
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
        // Run again from the start on a conflict (see `call::serialized`).
        let committed = call::serialized(&plugin, || async {
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
                Err(CallError::Conflict) => Delivery::Keep("conflicted".into()),
                // A trap or an exceeded limit happens again on every
                // redelivery: the message is dropped (and logged) rather
                // than retried forever.
                Err(e) => {
                    tracing::error!(plugin = %self.name, request_id = %id, topic = %publish.topic, error = %e, "message dropped: the plugin call failed");
                    Delivery::Ack
                }
            };
            let measured =
                HostMeasurements::of_call(outcome.wall, outcome.fuel).bytes_in(bytes_in);
            let result = call::commit(&self.ledger, &self.name, id, measured, outcome.effects).await;
            call::Committed {
                value: verdict,
                result,
            }
        })
        .await;
        let verdict = committed.value;
        if let Err(e) = committed.result {
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
    use crate::config::mqtt_tests::cfg;

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
