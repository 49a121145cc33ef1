//! `depin:plugin/outbound-udp`: datagrams to allow-listed upstreams only.
//! The allow-list is checked here, at the boundary; the datagrams are only
//! queued. The UDP ingress sends them after the call's effects are committed.

use std::sync::Arc;

use wasmtime::Result;

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

/// The outbound-UDP part of a call's state.
#[derive(Debug, Default)]
pub struct UdpCallState {
    /// Only `handle-datagram` calls may send.
    pub(crate) enabled: bool,
    /// The session whose socket received the datagram being handled.
    pub(crate) arrived_on: Option<Arc<str>>,
    /// Datagrams queued by the call, in order.
    pub(crate) queued: Vec<QueuedDatagram>,
}

impl Host for CallState {
    fn send(
        &mut self,
        target: String,
        payload: Vec<u8>,
        session: String,
    ) -> Result<Result<(), SendError>> {
        if !self.outbound_udp.enabled {
            return Ok(Err(SendError::Unavailable));
        }
        if !self.plugin.outbound_udp.contains(&target) {
            return Ok(Err(SendError::NotAllowed(target)));
        }
        if session.is_empty() || session.len() > MAX_SESSION_BYTES {
            return Ok(Err(SendError::Invalid(format!(
                "session name must be 1 to {MAX_SESSION_BYTES} bytes, not {}",
                session.len()
            ))));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Ok(Err(SendError::TooLarge(MAX_PAYLOAD_BYTES as u32)));
        }
        if self.outbound_udp.queued.len() >= MAX_SENDS_PER_CALL {
            return Ok(Err(SendError::TooMany(MAX_SENDS_PER_CALL as u32)));
        }
        self.outbound_udp.queued.push(QueuedDatagram {
            target,
            session: session.into(),
            payload,
        });
        Ok(Ok(()))
    }

    fn arrived_on(&mut self) -> Result<Option<String>> {
        Ok(self.outbound_udp.arrived_on.as_deref().map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::PluginLimits;
    use crate::ledger::Ledger;
    use crate::runtime::PluginShared;

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
            let r = s.send(target.into(), vec![7; len], session.into());
            format!("{:?}", r.expect("no trap"))
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
        assert_eq!(s.arrived_on().unwrap(), None);
        s.outbound_udp.arrived_on = Some("a".into());
        assert_eq!(s.arrived_on().unwrap().as_deref(), Some("a"));
    }
}
