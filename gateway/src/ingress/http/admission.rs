//! Which connections the public ingress keeps: at most
//! `http.max_connections` open at once, and at most
//! `http.max_connections_per_peer` from one peer. A connection over either
//! cap is closed at accept, before any byte of it is read, and counted in
//! `depin_http_connections_refused_total`; so a client that opens
//! connections and sends nothing (or trickles) holds a bounded share, and
//! other peers keep being served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::ingress::pressure;

/// The address a per-peer cap counts by: an IPv4 address, or the /64 of
/// an IPv6 address (one subscriber usually holds a whole /64, so counting
/// single IPv6 addresses would be no cap at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    V4(u32),
    V6Prefix(u64),
}

impl PeerKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `http.max_connections` connections are open.
    Total,
    /// `http.max_connections_per_peer` connections of this peer are open.
    Peer,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::Peer => "peer",
        }
    }
}

/// The connection caps and the connections they count.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_peer: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Open connections by peer; peers with none are removed, so the map
    /// holds at most `max_total` entries.
    by_peer: HashMap<PeerKey, usize>,
}

/// An admitted connection: counted until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    peer: PeerKey,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_peer,
            open: Mutex::new(Open::default()),
        })
    }

    /// Counts a new connection from `ip`, or says which cap refuses it
    /// (and counts the refusal on `/metrics`).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let peer = PeerKey::of(ip);
        let mut open = self.open.lock().expect("admission");
        let refusal = if open.total >= self.max_total {
            Some(Refusal::Total)
        } else if open.by_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            Some(Refusal::Peer)
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(open);
            pressure::count(
                pressure::HTTP_CONNECTIONS_REFUSED,
                &[("reason", r.label())],
                1,
            );
            return Err(r);
        }
        open.total += 1;
        *open.by_peer.entry(peer).or_default() += 1;
        let total = open.total as u64;
        drop(open);
        pressure::set(pressure::HTTP_CONNECTIONS_OPEN, &[], total);
        Ok(Admitted {
            admission: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().expect("admission").total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().expect("admission");
        open.total -= 1;
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
        let total = open.total as u64;
        drop(open);
        pressure::set(pressure::HTTP_CONNECTIONS_OPEN, &[], total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_over_its_cap_is_refused_while_others_are_admitted() {
        let a = Admission::new(10, 2);
        let first = a.admit(ip("10.0.0.1")).unwrap();
        let _second = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Peer);
        let _other = a.admit(ip("10.0.0.2")).unwrap();
        drop(first);
        let _again = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn the_total_cap_holds_across_peers_and_frees_on_close() {
        let a = Admission::new(2, 5);
        let x = a.admit(ip("10.0.0.1")).unwrap();
        let _y = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Total);
        drop(x);
        assert!(a.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_v4_as_v4() {
        let a = Admission::new(10, 1);
        let _x = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refusal::Peer
        );
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
        let _v4 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.admit(ip("::ffff:192.0.2.1")).unwrap_err(), Refusal::Peer);
    }
}
