//! UDP ingress: one socket per plugin (`[plugin.udp] listen`), and the
//! plugin's upstream sockets (`outbound-udp`), one per session.
//!
//! The path of one datagram reads top to bottom: receive → pick a lane →
//! call `handle-datagram` → check where the answers may go → commit usage
//! (host-attested bytes in and out, wall time, fuel, and what the plugin
//! recorded) → send. Nothing is sent before the call's effects are durable;
//! if the commit fails nothing is sent.
//!
//! Ordering: datagrams from one source (one forwarder address, or one
//! upstream session) are handled one at a time, in arrival order (a call
//! sees the committed kv writes of the previous one); datagrams from
//! different sources run concurrently, on up to [`LANES`] calls at once per
//! plugin.
//!
//! Where answers may go: the datagrams a call returns leave the ingress
//! socket, and only to addresses that sent to that socket within
//! [`PEER_TTL`] (so a plugin cannot use the gateway to reach arbitrary
//! hosts); queued `outbound-udp` datagrams leave the session's socket, to
//! the allow-listed target. Datagrams arriving on a session socket from any
//! address that is not allow-listed are dropped before the plugin sees them.
//!
//! The ingress socket and its recent peers are also reachable outside a
//! datagram's call, as an [`IngressPort`]: a `prove` call may `reply` to a
//! recent peer (a beacon to a packet forwarder), under the same rule.
//!
//! Bounds against a flood or spoofed sources (each counted on `/metrics`,
//! see [`crate::ingress::pressure`]): at most [`QUEUE_BYTES`] of datagrams
//! wait per plugin, [`LANE_QUEUE`] per lane; the recent-peer table holds
//! [`MAX_PEERS`] and forgets the least recently seen when full; upstream
//! sessions are closed after [`SESSION_IDLE`] unused and the least recently
//! used is closed when [`MAX_SESSIONS`] are open; a call sends at most
//! [`MAX_SENDS_PER_CALL`] datagrams, the ones it returns included; and the
//! answers a peer's datagram triggers are bounded by the bytes that peer
//! sent ([`peers::REPLY_FACTOR`]), so the gateway is no amplifier for
//! spoofed sources.

mod peers;
mod port;
mod sessions;

pub use port::{IngressPort, IngressPorts};

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::call::{self, HostMeasurements};
use crate::config::PluginConfig;
use crate::gateway::StartError;
use crate::ingress::pressure;
use crate::ledger::Ledger;
use crate::plugin_table::PluginTable;
use crate::runtime::contract::Datagram;
use crate::runtime::{MAX_SENDS_PER_CALL, QueuedDatagram, RecentPeers};
use crate::service::{Service, stopped};
use peers::PeerTable;
use sessions::SessionTable;

/// Lanes per plugin: calls of one plugin that may run (or wait for their
/// commit) at once. Each lane waits for its commit before its next call, so
/// lanes, not CPU, bound throughput when fsync is slow: many lanes let group
/// commit share one fsync among many datagrams.
pub const LANES: usize = 128;
/// Datagrams waiting per lane; more are dropped, as a full socket would.
pub const LANE_QUEUE: usize = 128;
/// How long an address that sent to the ingress socket may be answered.
pub const PEER_TTL: Duration = Duration::from_secs(600);
/// Most upstream sessions (sockets) one plugin has open; when full, the
/// least recently used is closed to make room
/// (`depin_udp_sessions_closed_total{reason="lru"}`).
pub const MAX_SESSIONS: usize = 1024;
/// An upstream session unused (nothing sent or received) this long is
/// closed when room is next needed
/// (`depin_udp_sessions_closed_total{reason="idle"}`); a packet forwarder
/// pulls every few seconds, so its session stays open.
pub const SESSION_IDLE: Duration = Duration::from_secs(180);
/// Payload bytes of datagrams waiting for their call, per plugin, across
/// all lanes; more are dropped (`depin_udp_dropped_total{reason="queue_bytes"}`).
pub const QUEUE_BYTES: usize = 16 << 20;
/// Largest datagram received.
const MAX_DATAGRAM: usize = 65_535;
/// Most remembered peers; when full, the least recently seen is forgotten
/// (`depin_udp_peers_evicted_total`).
pub const MAX_PEERS: usize = 65_536;

/// The UDP side of one plugin while the gateway runs. Dropping it stops its
/// sockets and lanes.
pub struct UdpIngress {
    plugin: Arc<str>,
    listen_addr: Option<SocketAddr>,
    relay: Arc<Relay>,
    /// The lanes' receiving ends until the ingress is spawned.
    receivers: Vec<mpsc::Receiver<Inbound>>,
    tasks: Vec<JoinHandle<()>>,
}

/// An upstream socket is per session name and address family (IPv6?).
type SessionKey = (Arc<str>, bool);

/// A datagram cleared to leave: from which socket, to whom, what.
type Outgoing = (Arc<UdpSocket>, SocketAddr, Vec<u8>);

/// One datagram waiting for its call (its payload counted in the plugin's
/// queued bytes until the call is done).
struct Inbound {
    peer: SocketAddr,
    payload: Vec<u8>,
    /// The upstream session whose socket received it; none for ingress.
    session: Option<Arc<str>>,
}

/// What the lanes of one plugin share.
struct Relay {
    /// The plugin's name, looked up in `table` per datagram so that UDP
    /// follows reloads.
    name: Arc<str>,
    table: Arc<PluginTable>,
    ledger: Arc<Ledger>,
    ingress: Option<Arc<IngressPort>>,
    lanes: Vec<mpsc::Sender<Inbound>>,
    /// Allow-listed targets as configured, with their resolved addresses.
    targets: Mutex<HashMap<String, Vec<SocketAddr>>>,
    /// Every resolved allow-listed address: the only sources accepted on
    /// session sockets.
    sources: Mutex<HashSet<SocketAddr>>,
    /// Upstream sockets (and their receive loops) by (session, IPv6?).
    sessions: Mutex<SessionTable<SessionKey, Arc<UdpSocket>>>,
    /// Payload bytes waiting in the lanes, at most [`QUEUE_BYTES`].
    queued_bytes: AtomicUsize,
    calls: AtomicU64,
}

impl UdpIngress {
    /// Binds the plugin's ingress socket (if configured) and resolves its
    /// allow-list; its lanes start when it is spawned as a [`Service`].
    /// `None` when the plugin has neither
    /// UDP ingress nor outbound UDP targets. An allow-listed host that does
    /// not resolve now is logged and tried again on each send to it.
    pub async fn bind(
        table: Arc<PluginTable>,
        cfg: &PluginConfig,
        ledger: Arc<Ledger>,
    ) -> Result<Option<Self>, StartError> {
        if cfg.udp.is_none() && cfg.outbound.udp.is_empty() {
            return Ok(None);
        }
        let (ingress, listen_addr) = match &cfg.udp {
            Some(u) => {
                let listen_err = |source| StartError::Listen {
                    addr: u.listen,
                    source,
                };
                let socket = UdpSocket::bind(u.listen).await.map_err(listen_err)?;
                let addr = socket.local_addr().map_err(listen_err)?;
                let port = IngressPort {
                    plugin: cfg.name.as_str().into(),
                    socket: Arc::new(socket),
                    peers: Mutex::new(PeerTable::new(MAX_PEERS, PEER_TTL)),
                };
                (Some(Arc::new(port)), Some(addr))
            }
            None => (None, None),
        };
        let mut lanes = Vec::with_capacity(LANES);
        let mut receivers = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            lanes.push(tx);
            receivers.push(rx);
        }
        let relay = Arc::new(Relay {
            name: cfg.name.as_str().into(),
            table,
            ledger,
            ingress,
            lanes,
            targets: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashSet::new()),
            sessions: Mutex::new(SessionTable::new(MAX_SESSIONS, SESSION_IDLE)),
            queued_bytes: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
        });
        for target in &cfg.outbound.udp {
            relay.resolve(target).await;
        }
        tracing::info!(
            plugin = %cfg.name,
            udp_addr = %listen_addr.map_or("-".to_string(), |a| a.to_string()),
            upstreams = cfg.outbound.udp.len(),
            "udp ingress ready"
        );
        Ok(Some(Self {
            plugin: cfg.name.as_str().into(),
            listen_addr,
            relay,
            receivers,
            tasks: Vec::new(),
        }))
    }

    /// Stops receiving and waits until no call of this plugin's UDP side
    /// is running (calls in progress are cancelled).
    async fn stop(mut self) {
        let mut tasks = std::mem::take(&mut self.tasks);
        tasks.append(&mut self.relay.sessions.lock().expect("sessions").close_all());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The plugin's configured name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The bound ingress address (useful with port 0), if the plugin has one.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }
}

/// A plugin's UDP side as a [`Service`]: its lanes and receive loops run
/// until shutdown; then receiving stops and calls in progress are
/// cancelled (their effects are not committed, their answers not sent).
impl Service for UdpIngress {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn spawn(mut self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let relay = &self.relay;
        self.tasks = std::mem::take(&mut self.receivers)
            .into_iter()
            .map(|rx| tokio::spawn(relay.clone().serve_lane(rx)))
            .collect();
        if let Some(port) = relay.ingress.clone() {
            self.tasks
                .push(tokio::spawn(relay.clone().receive_ingress(port)));
        }
        tokio::spawn(async move {
            stopped(&mut shutdown).await;
            self.stop().await;
        })
    }
}

impl Drop for UdpIngress {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.relay.sessions.lock().expect("sessions").close_all();
    }
}

impl Relay {
    /// Receive phase, ingress socket: remember the peer, hand the datagram
    /// to its lane.
    async fn receive_ingress(self: Arc<Self>, port: Arc<IngressPort>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, peer) = match port.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some
                    // systems; the socket itself is still good.
                    tracing::debug!(plugin = %self.name, error = %e, "udp receive failed");
                    continue;
                }
            };
            port.remember(peer, n);
            self.enqueue(Inbound {
                peer,
                payload: buf[..n].to_vec(),
                session: None,
            });
        }
    }

    /// Receive phase, session socket: only allow-listed sources get in.
    async fn receive_session(self: Arc<Self>, socket: Arc<UdpSocket>, session: Arc<str>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let key: SessionKey = (
            session.clone(),
            socket.local_addr().is_ok_and(|a| a.is_ipv6()),
        );
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(plugin = %self.name, session = %session, error = %e, "udp receive failed");
                    continue;
                }
            };
            if !self.sources.lock().expect("sources").contains(&peer) {
                tracing::debug!(plugin = %self.name, session = %session, %peer, "dropped a datagram from an address that is not allow-listed");
                continue;
            }
            self.sessions
                .lock()
                .expect("sessions")
                .touch(&key, Instant::now());
            self.enqueue(Inbound {
                peer,
                payload: buf[..n].to_vec(),
                session: Some(session.clone()),
            });
        }
    }

    /// Route phase: same source, same lane, so one source is handled in order.
    fn enqueue(&self, inbound: Inbound) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match &inbound.session {
            Some(s) => s.hash(&mut h),
            None => inbound.peer.hash(&mut h),
        }
        let lane = (h.finish() % self.lanes.len() as u64) as usize;
        let bytes = inbound.payload.len();
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if queued + bytes > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped("queue_bytes");
            tracing::debug!(plugin = %self.name, lane, "udp queue over its byte budget; datagram dropped");
            return;
        }
        if self.lanes[lane].try_send(inbound).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped("lane_full");
            tracing::debug!(plugin = %self.name, lane, "udp lane full; datagram dropped");
        }
    }

    fn dropped(&self, reason: &str) {
        pressure::count(
            pressure::UDP_DROPPED,
            &[("plugin", &self.name), ("reason", reason)],
            1,
        );
    }

    async fn serve_lane(self: Arc<Self>, mut rx: mpsc::Receiver<Inbound>) {
        while let Some(inbound) = rx.recv().await {
            let bytes = inbound.payload.len();
            self.handle(inbound).await;
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Call, check, commit, send: one datagram.
    async fn handle(self: &Arc<Self>, inbound: Inbound) {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = format!("udp-{n}").into();
        let bytes_in = inbound.payload.len() as u64;
        // Answers to the sender of an ingress datagram count against its
        // budget; a session datagram came from an allow-listed upstream.
        let trigger = inbound.session.is_none().then_some(inbound.peer);
        let datagram = Datagram {
            peer: inbound.peer.to_string(),
            payload: inbound.payload,
        };
        let Some(plugin) = self.table.get(&self.name) else {
            tracing::warn!(plugin = %self.name, "datagram dropped: the plugin is no longer loaded");
            return;
        };
        let ingress = self
            .ingress
            .clone()
            .map(|port| port as Arc<dyn RecentPeers>);
        // Run again from the start on a conflict; only the last run's
        // datagrams are sent, after its commit.
        let (datagram, ingress, id, session) = (&datagram, &ingress, &id, &inbound.session);
        let plugin = &*plugin;
        let committed = call::serialized(plugin, || async move {
            let outcome = plugin
                .handle_datagram_on(id, datagram.clone(), session.clone(), ingress.clone())
                .await;
            // A failed call was logged by the runtime; it sends nothing.
            let (mut replies, queued) = match &outcome.result {
                Ok(_) => outcome.result.unwrap_or_default(),
                Err(_) => Default::default(),
            };
            // The send cap covers the datagrams the call returns too: those
            // (last in `replies`) past it are dropped.
            let room = MAX_SENDS_PER_CALL.saturating_sub(queued.len());
            if replies.len() > room {
                let over = replies.len() - room;
                replies.truncate(room);
                pressure::count(
                    pressure::UDP_DROPPED,
                    &[("plugin", &self.name), ("reason", "send_cap")],
                    over as u64,
                );
                tracing::warn!(plugin = %self.name, request_id = %id, dropped = over, "answers dropped: a call sends at most {MAX_SENDS_PER_CALL} datagrams");
            }
            let mut sends = Vec::with_capacity(replies.len() + queued.len());
            // Bytes of answers to the trigger, taken from its budget.
            let mut spent = 0;
            match &self.ingress {
                Some(port) => {
                    let cleared = port.clear_triggered(id, trigger, replies);
                    spent = cleared
                        .iter()
                        .filter(|(to, _)| Some(*to) == trigger)
                        .map(|(_, payload)| payload.len() as u64)
                        .sum();
                    sends.extend(
                        cleared
                            .into_iter()
                            .map(|(to, payload)| (port.socket.clone(), to, payload)),
                    );
                }
                None if !replies.is_empty() => {
                    tracing::warn!(plugin = %self.name, request_id = %id, "answers dropped: the plugin has no UDP ingress socket ([plugin.udp] listen)");
                }
                None => {}
            }
            for q in queued {
                if let Some(send) = self.check_upstream(id, q).await {
                    sends.push(send);
                }
            }
            let bytes_out: u64 = sends.iter().map(|s| s.2.len() as u64).sum();
            let measured = HostMeasurements::of_call(outcome.wall, outcome.fuel)
                .bytes_in(bytes_in)
                .bytes_out(bytes_out);
            let result = call::commit(&self.ledger, &self.name, id, measured, outcome.effects).await;
            // This run's answers are not sent unless it committed: what they
            // took from the trigger's answer budget goes back, so that a run
            // again after a conflict does not pay twice.
            if result.is_err()
                && let (Some(port), Some(trigger)) = (&self.ingress, trigger)
            {
                port.refund(trigger, spent);
            }
            call::Committed {
                value: sends,
                result,
            }
        })
        .await;
        let sends = committed.value;
        if let Err(e) = committed.result {
            tracing::error!(plugin = %self.name, request_id = %id, error = %e, "cannot commit a datagram's usage; its answers are not sent");
            return;
        }
        for (socket, to, payload) in sends {
            if let Err(e) = socket.send_to(&payload, to).await {
                tracing::debug!(plugin = %self.name, request_id = %id, %to, error = %e, "udp send failed");
            }
        }
    }

    /// A queued upstream datagram leaves its session's socket.
    async fn check_upstream(self: &Arc<Self>, id: &str, q: QueuedDatagram) -> Option<Outgoing> {
        let Some(to) = self.resolve(&q.target).await else {
            tracing::warn!(plugin = %self.name, request_id = %id, target = %q.target, "upstream datagram dropped: the target does not resolve");
            return None;
        };
        match self.session_socket(&q.session, to) {
            Ok(socket) => Some((socket, to, q.payload)),
            Err(problem) => {
                tracing::warn!(plugin = %self.name, request_id = %id, session = %q.session, "upstream datagram dropped: {problem}");
                None
            }
        }
    }

    /// The first address of an allow-listed target, resolving it (again)
    /// if it did not resolve before.
    async fn resolve(&self, target: &str) -> Option<SocketAddr> {
        if let Some(addr) = self
            .targets
            .lock()
            .expect("targets")
            .get(target)
            .and_then(|a| a.first().copied())
        {
            return Some(addr);
        }
        let lookup = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(target));
        let addrs: Vec<SocketAddr> = match lookup.await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                tracing::warn!(plugin = %self.name, %target, error = %e, "cannot resolve an allow-listed UDP target");
                return None;
            }
            Err(_) => {
                tracing::warn!(plugin = %self.name, %target, "resolving an allow-listed UDP target timed out");
                return None;
            }
        };
        let first = addrs.first().copied()?;
        self.sources
            .lock()
            .expect("sources")
            .extend(addrs.iter().copied());
        self.targets
            .lock()
            .expect("targets")
            .insert(target.to_string(), addrs);
        Some(first)
    }

    /// The session's socket for `to`'s address family, opened on first use:
    /// on loopback when `to` is loopback, on all interfaces otherwise.
    fn session_socket(
        self: &Arc<Self>,
        session: &Arc<str>,
        to: SocketAddr,
    ) -> Result<Arc<UdpSocket>, String> {
        let key = (session.clone(), to.is_ipv6());
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions");
        if let Some(s) = sessions.get(&key, now) {
            return Ok(s);
        }
        let closed = sessions.make_room(now);
        for (reason, n) in [("idle", closed.idle), ("lru", closed.lru)] {
            if n > 0 {
                pressure::count(
                    pressure::UDP_SESSIONS_CLOSED,
                    &[("plugin", &self.name), ("reason", reason)],
                    n,
                );
            }
        }
        let ip: IpAddr = match (to.ip().is_loopback(), to.is_ipv6()) {
            (true, false) => Ipv4Addr::LOCALHOST.into(),
            (true, true) => Ipv6Addr::LOCALHOST.into(),
            (false, false) => Ipv4Addr::UNSPECIFIED.into(),
            (false, true) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| format!("cannot open an upstream socket: {e}"))?;
        let socket = Arc::new(
            UdpSocket::from_std(std_socket)
                .map_err(|e| format!("cannot open an upstream socket: {e}"))?,
        );
        let receive = tokio::spawn(
            self.clone()
                .receive_session(socket.clone(), session.clone()),
        );
        sessions.insert(key, socket.clone(), receive, now);
        let open = sessions.len();
        drop(sessions);
        tracing::debug!(plugin = %self.name, %session, open, "upstream session opened");
        Ok(socket)
    }
}
