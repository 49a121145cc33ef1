//! `depin:plugin/outbound-udp`: datagrams to allow-listed upstreams, and
//! replies from the plugin's UDP ingress socket to its recent peers. The
//! allow-list and the recent-peer rule are checked here, at the boundary;
//! the datagrams are only queued. Whoever made the call (the UDP ingress,
//! the challenge responder) sends them after the call's effects are
//! committed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use wasmtime::component::HasData;

use super::Blame;
use crate::runtime::contract::Datagram;
use crate::runtime::contract::depin::plugin::outbound_udp::{Host, SendError};
use crate::runtime::state::CallState;

/// Largest payload a plugin may send, in bytes (the largest UDP payload
/// over IPv4).
pub const MAX_PAYLOAD_BYTES: usize = 65_507;
/// Most datagrams one call may queue.
pub const MAX_SENDS_PER_CALL: usize = 64;
/// Longest session name, in bytes.
pub const MAX_SESSION_BYTES: usize = 64;

/// A datagram a call queued for an allow-listed upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDatagram {
    /// The target exactly as allow-listed (`host:port`).
    pub target: String,
    /// Which of the plugin's upstream sockets sends it.
    pub session: Arc<str>,
    pub payload: Vec<u8>,
}

/// A plugin's UDP ingress socket as a call sees it: whom it may answer.
pub trait RecentPeers: Send + Sync {
    /// Whether `peer` sent to the ingress socket recently enough to be
    /// answered.
    fn may_answer(&self, peer: &SocketAddr) -> bool;
}

/// The outbound-UDP part of a call's state: what the call may do, and the
/// datagrams it queued (at most [`MAX_SENDS_PER_CALL`] in all).
#[derive(Default)]
pub struct UdpState {
    /// Only `handle-datagram` calls may `send`.
    pub(crate) enabled: bool,
    /// The plugin's ingress socket, for calls that may `reply` (none: the
    /// export may not, or the plugin has no `[plugin.udp]`).
    pub(crate) ingress: Option<Arc<dyn RecentPeers>>,
    /// The session whose socket received the datagram being handled.
    pub(crate) arrived_on: Option<Arc<str>>,
    /// Datagrams queued by the call for upstreams, in order.
    pub(crate) queued: Vec<QueuedDatagram>,
    /// Datagrams queued by the call for ingress peers, in order.
    pub(crate) replies: Vec<Datagram>,
}

impl std::fmt::Debug for UdpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpState")
            .field("enabled", &self.enabled)
            .field("ingress", &self.ingress.is_some())
            .field("arrived_on", &self.arrived_on)
            .field("queued", &self.queued)
            .field("replies", &self.replies.len())
            .finish()
    }
}

impl UdpState {
    fn full(&self) -> bool {
        self.queued.len() + self.replies.len() >= MAX_SENDS_PER_CALL
    }
}

/// What `outbound-udp` functions reach during one call: its queued
/// datagrams and the plugin's allow-list.
pub(crate) struct OutboundUdpView<'a> {
    state: &'a mut UdpState,
    allowed: &'a BTreeSet<String>,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> OutboundUdpView<'_> {
    OutboundUdpView {
        state: &mut call.outbound_udp,
        allowed: &call.plugin.outbound_udp,
    }
}

/// The `outbound-udp` capability, for the linker.
pub(crate) struct OutboundUdp;

impl HasData for OutboundUdp {
    type Data<'a> = OutboundUdpView<'a>;
}

impl Host for OutboundUdpView<'_> {
    fn send(
        &mut self,
        target: String,
        payload: Vec<u8>,
        session: String,
    ) -> Result<(), Blame<SendError>> {
        if !self.state.enabled {
            return Err(SendError::Unavailable.into());
        }
        if !self.allowed.contains(&target) {
            return Err(SendError::NotAllowed(target).into());
        }
        if session.is_empty() || session.len() > MAX_SESSION_BYTES {
            return Err(SendError::Invalid(format!(
                "session name must be 1 to {MAX_SESSION_BYTES} bytes, not {}",
                session.len()
            ))
            .into());
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::TooLarge(MAX_PAYLOAD_BYTES as u32).into());
        }
        if self.state.full() {
            return Err(SendError::TooMany(MAX_SENDS_PER_CALL as u32).into());
        }
        self.state.queued.push(QueuedDatagram {
            target,
            session: session.into(),
            payload,
        });
        Ok(())
    }

    fn arrived_on(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.state.arrived_on.as_deref().map(str::to_string))
    }

    fn reply(&mut self, peer: String, payload: Vec<u8>) -> Result<(), Blame<SendError>> {
        let Some(ingress) = &self.state.ingress else {
            return Err(SendError::Unavailable.into());
        };
        let Ok(addr) = peer.parse::<SocketAddr>() else {
            return Err(SendError::Invalid(format!("peer `{peer}` is not ip:port")).into());
        };
        if !ingress.may_answer(&addr) {
            return Err(SendError::NotAllowed(peer).into());
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::TooLarge(MAX_PAYLOAD_BYTES as u32).into());
        }
        if self.state.full() {
            return Err(SendError::TooMany(MAX_SENDS_PER_CALL as u32).into());
        }
        self.state.replies.push(Datagram { peer, payload });
        Ok(())
    }

    fn convert_send_error(&mut self, e: Blame<SendError>) -> wasmtime::Result<SendError> {
        e.into_wit()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::PluginLimits;
    use crate::ledger::Ledger;
    use crate::runtime::PluginShared;
    use crate::runtime::host::to_wit;

    fn call(dir: &std::path::Path, allowed: &[&str]) -> CallState {
        let shared = PluginShared {
            name: "relay".into(),
            config: BTreeMap::new(),
            limits: PluginLimits::default(),
            memory_cap_bytes: 1 << 20,
            units: BTreeSet::new(),
            outbound_udp: allowed.iter().map(|s| s.to_string()).collect(),
            blobs: None,
            outbound_http: Arc::new(
                super::super::outbound_http::HttpOutbound::new(&[], None).expect("no origins"),
            ),
            jobs: None,
        };
        let ledger = Ledger::open(dir).expect("ledger");
        CallState::new(Arc::new(shared), ledger, "t".into(), 10)
    }

    #[test]
    fn sends_are_checked_against_the_allow_list_and_queued_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = call(dir.path(), &["127.0.0.1:1680", "lns.example:1700"]);
        // The generated error type has no PartialEq; compare its Debug form.
        let send = |s: &mut CallState, target: &str, session: &str, len: usize| {
            let r = view(s).send(target.into(), vec![7; len], session.into());
            format!("{:?}", to_wit(r).expect("no trap"))
        };
        assert_eq!(
            send(&mut s, "127.0.0.1:1680", "a", 3),
            "Err(SendError::Unavailable)",
            "only handle-datagram calls may send"
        );
        s.outbound_udp.enabled = true;
        assert_eq!(send(&mut s, "127.0.0.1:1680", "a", 3), "Ok(())");
        assert_eq!(send(&mut s, "lns.example:1700", "b", 1), "Ok(())");
        assert_eq!(
            send(&mut s, "127.0.0.1:1681", "a", 3),
            "Err(SendError::NotAllowed(\"127.0.0.1:1681\"))"
        );
        assert!(send(&mut s, "127.0.0.1:1680", "", 3).starts_with("Err(SendError::Invalid("));
        assert_eq!(
            send(&mut s, "127.0.0.1:1680", "a", MAX_PAYLOAD_BYTES + 1),
            format!("Err(SendError::TooLarge({MAX_PAYLOAD_BYTES}))")
        );
        let queued: Vec<_> = s
            .outbound_udp
            .queued
            .iter()
            .map(|q| (q.target.as_str(), &*q.session, q.payload.len()))
            .collect();
        assert_eq!(
            queued,
            [("127.0.0.1:1680", "a", 3), ("lns.example:1700", "b", 1)]
        );
        for _ in queued.len()..MAX_SENDS_PER_CALL {
            assert_eq!(send(&mut s, "127.0.0.1:1680", "a", 1), "Ok(())");
        }
        assert_eq!(
            send(&mut s, "127.0.0.1:1680", "a", 1),
            format!("Err(SendError::TooMany({MAX_SENDS_PER_CALL}))")
        );
        assert_eq!(view(&mut s).arrived_on().unwrap(), None);
        s.outbound_udp.arrived_on = Some("a".into());
        assert_eq!(view(&mut s).arrived_on().unwrap().as_deref(), Some("a"));
    }

    struct Peers(Vec<SocketAddr>);

    impl RecentPeers for Peers {
        fn may_answer(&self, peer: &SocketAddr) -> bool {
            self.0.contains(peer)
        }
    }

    #[test]
    fn replies_go_only_to_recent_ingress_peers_and_share_the_per_call_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = call(dir.path(), &["127.0.0.1:1680"]);
        let reply = |s: &mut CallState, peer: &str, len: usize| {
            let r = view(s).reply(peer.into(), vec![1; len]);
            format!("{:?}", to_wit(r).expect("no trap"))
        };
        assert_eq!(
            reply(&mut s, "127.0.0.1:40000", 3),
            "Err(SendError::Unavailable)",
            "no ingress socket for this call"
        );
        s.outbound_udp.ingress = Some(Arc::new(Peers(vec!["127.0.0.1:40000".parse().unwrap()])));
        assert_eq!(reply(&mut s, "127.0.0.1:40000", 3), "Ok(())");
        assert_eq!(
            reply(&mut s, "127.0.0.1:40001", 3),
            "Err(SendError::NotAllowed(\"127.0.0.1:40001\"))",
            "never sent to the ingress"
        );
        assert!(reply(&mut s, "lns.example:1700", 3).starts_with("Err(SendError::Invalid("));
        assert_eq!(
            reply(&mut s, "127.0.0.1:40000", MAX_PAYLOAD_BYTES + 1),
            format!("Err(SendError::TooLarge({MAX_PAYLOAD_BYTES}))")
        );
        s.outbound_udp.enabled = true;
        for _ in 1..MAX_SENDS_PER_CALL {
            assert_eq!(
                format!(
                    "{:?}",
                    to_wit(view(&mut s).send("127.0.0.1:1680".into(), vec![1], "a".into()))
                        .unwrap()
                ),
                "Ok(())"
            );
        }
        assert_eq!(
            reply(&mut s, "127.0.0.1:40000", 1),
            format!("Err(SendError::TooMany({MAX_SENDS_PER_CALL}))")
        );
        assert_eq!(s.outbound_udp.replies.len(), 1);
        assert_eq!(s.outbound_udp.replies[0].peer, "127.0.0.1:40000");
    }
}
