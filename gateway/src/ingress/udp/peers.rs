//! The recent peers of a UDP ingress socket: who may be answered, and how
//! much.
//!
//! Bounded two ways: an entry is forgotten `ttl` after its peer last sent,
//! and when the table is full the least recently seen peer is forgotten to
//! make room (so a flood of spoofed sources costs the oldest entries, never
//! the ability to hear a new forwarder). Every operation is O(log n): the
//! table never scans its entries.
//!
//! Anti-reflection: the answers a peer's own datagrams trigger may total at
//! most [`REPLY_FACTOR`] times the bytes that peer sent (the limit QUIC puts
//! on unvalidated addresses, RFC 9000 section 8.1). A spoofed source then
//! gets no more than a small multiple of what the attacker sent in its
//! name.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Answers triggered by a peer may total at most this many bytes per byte
/// received from it.
pub const REPLY_FACTOR: u64 = 3;

#[derive(Debug)]
struct Peer {
    seen: Instant,
    /// Its key in `by_age`.
    age: u64,
    /// Payload bytes received from it while it has been in the table.
    received: u64,
    /// Payload bytes of answers its datagrams triggered.
    answered: u64,
}

/// Recent peers, least recently seen first.
#[derive(Debug)]
pub(crate) struct PeerTable {
    capacity: usize,
    ttl: Duration,
    by_addr: HashMap<SocketAddr, Peer>,
    by_age: BTreeMap<u64, SocketAddr>,
    clock: u64,
}

/// What remembering a peer cost.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Remembered {
    /// Peers forgotten before their time to make room.
    pub evicted: u64,
}

impl PeerTable {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            by_addr: HashMap::new(),
            by_age: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Notes that `peer` sent `bytes` now.
    pub(crate) fn saw(&mut self, peer: SocketAddr, bytes: u64, now: Instant) -> Remembered {
        self.expire(now);
        self.clock += 1;
        let age = self.clock;
        if let Some(p) = self.by_addr.get_mut(&peer) {
            self.by_age.remove(&p.age);
            p.age = age;
            p.seen = now;
            p.received = p.received.saturating_add(bytes);
            self.by_age.insert(age, peer);
            return Remembered::default();
        }
        let mut evicted = 0;
        while self.by_addr.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_addr.remove(&oldest);
            evicted += 1;
        }
        self.by_addr.insert(
            peer,
            Peer {
                seen: now,
                age,
                received: bytes,
                answered: 0,
            },
        );
        self.by_age.insert(age, peer);
        Remembered { evicted }
    }

    /// Forgets the peers that have not sent for `ttl`, oldest first; stops
    /// at the first recent one.
    fn expire(&mut self, now: Instant) {
        while let Some((&age, &addr)) = self.by_age.first_key_value() {
            let seen = self.by_addr.get(&addr).map(|p| p.seen);
            if seen.is_some_and(|s| now.duration_since(s) < self.ttl) {
                break;
            }
            self.by_age.remove(&age);
            self.by_addr.remove(&addr);
        }
    }

    /// Whether `peer` sent within `ttl`.
    pub(crate) fn may_answer(&self, peer: &SocketAddr, now: Instant) -> bool {
        self.by_addr
            .get(peer)
            .is_some_and(|p| now.duration_since(p.seen) < self.ttl)
    }

    /// Takes `bytes` from the answer budget of `peer`; false (and nothing
    /// taken) when they do not fit or the peer is not in the table.
    pub(crate) fn spend(&mut self, peer: &SocketAddr, bytes: u64) -> bool {
        let Some(p) = self.by_addr.get_mut(peer) else {
            return false;
        };
        let budget = p.received.saturating_mul(REPLY_FACTOR);
        if p.answered.saturating_add(bytes) > budget {
            return false;
        }
        p.answered += bytes;
        true
    }

    /// Gives back `bytes` taken by [`Self::spend`] for answers that were
    /// never sent (their call's run did not commit).
    pub(crate) fn refund(&mut self, peer: &SocketAddr, bytes: u64) {
        if let Some(p) = self.by_addr.get_mut(peer) {
            p.answered = p.answered.saturating_sub(bytes);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_full_table_forgets_the_least_recently_seen_instead_of_refusing() {
        let now = Instant::now();
        let mut t = PeerTable::new(3, Duration::from_secs(600));
        for port in 1..=3 {
            t.saw(addr(port), 10, now);
        }
        // Port 1 sends again: port 2 is now the least recently seen.
        t.saw(addr(1), 10, now);
        assert_eq!(t.saw(addr(4), 10, now), Remembered { evicted: 1 });
        assert!(t.may_answer(&addr(4), now));
        assert!(t.may_answer(&addr(1), now));
        assert!(!t.may_answer(&addr(2), now));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn peers_expire_after_their_ttl_without_a_full_scan() {
        let start = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut t = PeerTable::new(100, ttl);
        t.saw(addr(1), 1, start);
        t.saw(addr(2), 1, start + Duration::from_secs(5));
        assert!(!t.may_answer(&addr(1), start + ttl));
        t.saw(addr(3), 1, start + ttl);
        assert_eq!(t.len(), 2, "the expired entry was dropped on the way");
        assert!(t.may_answer(&addr(2), start + ttl));
    }

    #[test]
    fn answers_a_peer_triggered_are_bounded_by_what_it_sent() {
        let now = Instant::now();
        let mut t = PeerTable::new(10, Duration::from_secs(600));
        t.saw(addr(1), 12, now);
        assert!(t.spend(&addr(1), 30));
        assert!(!t.spend(&addr(1), 7), "36 bytes is the budget");
        assert!(t.spend(&addr(1), 6));
        t.saw(addr(1), 1, now);
        assert!(t.spend(&addr(1), 3));
        assert!(!t.spend(&addr(9), 1), "an unknown peer has no budget");
        // Answers of a run that did not commit are given back.
        t.refund(&addr(1), 6);
        assert!(t.spend(&addr(1), 6), "refunded");
        assert!(!t.spend(&addr(1), 1));
    }
}
