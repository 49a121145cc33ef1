//! A plugin's UDP ingress socket as the rest of the gateway sees it: where
//! answers may go (recent peers only, within their reply budget), and the
//! table of every plugin's port for `prove` calls that `reply`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::UdpIngress;
use super::peers::PeerTable;
use crate::ingress::pressure;
use crate::runtime::RecentPeers;
use crate::runtime::contract::Datagram;

/// A plugin's UDP ingress socket and the addresses that sent to it
/// recently: the only addresses the plugin may answer from it.
pub struct IngressPort {
    pub(super) plugin: Arc<str>,
    pub(super) socket: Arc<UdpSocket>,
    /// Addresses that sent to the socket: when last, and how much.
    pub(super) peers: Mutex<PeerTable>,
}

impl IngressPort {
    pub(super) fn remember(&self, peer: SocketAddr, bytes: usize) {
        let r = self
            .peers
            .lock()
            .expect("peers")
            .saw(peer, bytes as u64, Instant::now());
        if r.evicted > 0 {
            pressure::count(
                pressure::UDP_PEERS_EVICTED,
                &[("plugin", &self.plugin)],
                r.evicted,
            );
        }
    }

    /// Keeps the datagrams that may leave this socket (to a recent peer,
    /// `ip:port`); the others are logged with `request_id` and dropped.
    pub fn clear(&self, request_id: &str, datagrams: Vec<Datagram>) -> Vec<(SocketAddr, Vec<u8>)> {
        self.clear_triggered(request_id, None, datagrams)
    }

    /// Like [`Self::clear`], for the answers of a call that `trigger`'s
    /// datagram caused: those to `trigger` itself must also fit its answer
    /// budget (bytes it sent, times [`super::peers::REPLY_FACTOR`]).
    pub(super) fn clear_triggered(
        &self,
        request_id: &str,
        trigger: Option<SocketAddr>,
        datagrams: Vec<Datagram>,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        datagrams
            .into_iter()
            .filter_map(|d| {
                let refuse = |why: &str| {
                    tracing::warn!(plugin = %self.plugin, %request_id, peer = %d.peer, "answer dropped: {why}");
                };
                let Ok(peer) = d.peer.parse::<SocketAddr>() else {
                    refuse("peer is not ip:port");
                    return None;
                };
                if !self.may_answer(&peer) {
                    refuse("peer has not sent to this plugin's UDP socket recently");
                    return None;
                }
                if trigger == Some(peer)
                    && !self
                        .peers
                        .lock()
                        .expect("peers")
                        .spend(&peer, d.payload.len() as u64)
                {
                    pressure::count(
                        pressure::UDP_DROPPED,
                        &[("plugin", &self.plugin), ("reason", "reply_budget")],
                        1,
                    );
                    refuse("answers to this peer would exceed what it sent (anti-reflection)");
                    return None;
                }
                Some((peer, d.payload))
            })
            .collect()
    }

    /// Gives back to `peer`'s answer budget the `bytes` of cleared answers
    /// that are not sent after all (their run did not commit).
    pub(super) fn refund(&self, peer: SocketAddr, bytes: u64) {
        self.peers.lock().expect("peers").refund(&peer, bytes);
    }

    /// Sends cleared datagrams, in order. Failures are logged, not retried
    /// (UDP).
    pub async fn send(&self, request_id: &str, datagrams: Vec<(SocketAddr, Vec<u8>)>) {
        for (to, payload) in datagrams {
            if let Err(e) = self.socket.send_to(&payload, to).await {
                tracing::debug!(plugin = %self.plugin, %request_id, %to, error = %e, "udp send failed");
            }
        }
    }
}

impl RecentPeers for IngressPort {
    fn may_answer(&self, peer: &SocketAddr) -> bool {
        self.peers
            .lock()
            .expect("peers")
            .may_answer(peer, Instant::now())
    }
}

/// The ingress ports of the plugins that have one, by plugin name. Fixed
/// while the gateway runs (`[plugin.udp]` changes need a restart).
#[derive(Clone, Default)]
pub struct IngressPorts(Arc<BTreeMap<String, Arc<IngressPort>>>);

impl IngressPorts {
    /// The ports of `ingresses`.
    pub fn of(ingresses: &[UdpIngress]) -> Self {
        Self(Arc::new(
            ingresses
                .iter()
                .filter_map(|u| Some((u.plugin.to_string(), u.relay.ingress.clone()?)))
                .collect(),
        ))
    }

    /// The ingress port of `plugin`, if it has one.
    pub fn get(&self, plugin: &str) -> Option<Arc<IngressPort>> {
        self.0.get(plugin).cloned()
    }
}
