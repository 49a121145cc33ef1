//! A plugin's upstream sessions (one socket each, named by the plugin, e.g.
//! after a forwarder's EUI taken from its datagrams).
//!
//! Session names come from outside, so the table is bounded as a cache: a
//! session unused (nothing sent or received) for the idle period is closed
//! when room is next needed, and when the table is full the least recently
//! used session is closed to make room. Spoofed datagrams with made-up names
//! therefore cost the stalest sessions, never the ability to open a session
//! for a new forwarder; a closed session is simply reopened (on a new
//! socket) the next time it is used. Every operation is O(log n).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

struct Entry<S> {
    socket: S,
    /// The session's receive loop, aborted when it is closed.
    task: Option<JoinHandle<()>>,
    used: Instant,
    /// Its key in `by_age`.
    age: u64,
}

/// Open sessions, least recently used first.
pub(crate) struct SessionTable<K, S> {
    capacity: usize,
    idle: Duration,
    by_key: HashMap<K, Entry<S>>,
    by_age: BTreeMap<u64, K>,
    clock: u64,
}

/// Sessions closed to make room, by why.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Closed {
    /// Unused for the idle period.
    pub idle: u64,
    /// The least recently used, closed because the table was full.
    pub lru: u64,
}

impl<K: Clone + Eq + Hash, S: Clone> SessionTable<K, S> {
    pub(crate) fn new(capacity: usize, idle: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            idle,
            by_key: HashMap::new(),
            by_age: BTreeMap::new(),
            clock: 0,
        }
    }

    fn next_age(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The socket of `key`, marked used now.
    pub(crate) fn get(&mut self, key: &K, now: Instant) -> Option<S> {
        let age = self.next_age();
        let e = self.by_key.get_mut(key)?;
        self.by_age.remove(&e.age);
        e.age = age;
        e.used = now;
        self.by_age.insert(age, key.clone());
        Some(e.socket.clone())
    }

    /// Marks `key` used now (its socket received a datagram).
    pub(crate) fn touch(&mut self, key: &K, now: Instant) {
        let _ = self.get(key, now);
    }

    /// Closes idle sessions, then the least recently used ones until one
    /// more fits.
    pub(crate) fn make_room(&mut self, now: Instant) -> Closed {
        let mut closed = Closed::default();
        while let Some((_, key)) = self.by_age.first_key_value() {
            let idle = self
                .by_key
                .get(key)
                .is_none_or(|e| now.duration_since(e.used) >= self.idle);
            if !idle {
                break;
            }
            self.close_oldest();
            closed.idle += 1;
        }
        while self.by_key.len() >= self.capacity && self.close_oldest() {
            closed.lru += 1;
        }
        closed
    }

    fn close_oldest(&mut self) -> bool {
        let Some((_, key)) = self.by_age.pop_first() else {
            return false;
        };
        if let Some(e) = self.by_key.remove(&key)
            && let Some(task) = e.task
        {
            task.abort();
        }
        true
    }

    /// Adds a session (after [`Self::make_room`]).
    pub(crate) fn insert(&mut self, key: K, socket: S, task: JoinHandle<()>, now: Instant) {
        let age = self.next_age();
        let old = self.by_key.insert(
            key.clone(),
            Entry {
                socket,
                task: Some(task),
                used: now,
                age,
            },
        );
        if let Some(old) = old {
            self.by_age.remove(&old.age);
            if let Some(t) = old.task {
                t.abort();
            }
        }
        self.by_age.insert(age, key);
    }

    /// Closes every session; gives back their receive loops (aborted) to
    /// be awaited.
    pub(crate) fn close_all(&mut self) -> Vec<JoinHandle<()>> {
        self.by_age.clear();
        self.by_key
            .drain()
            .filter_map(|(_, e)| e.task)
            .inspect(JoinHandle::abort)
            .collect()
    }

    /// Open sessions.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_task() -> JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test]
    async fn a_full_table_closes_the_least_recently_used_session() {
        let now = Instant::now();
        let mut t = SessionTable::new(2, Duration::from_secs(300));
        let first = idle_task();
        t.insert("a", 1, first, now);
        t.insert("b", 2, idle_task(), now);
        assert_eq!(t.get(&"a", now), Some(1));
        assert_eq!(t.make_room(now), Closed { idle: 0, lru: 1 });
        t.insert("c", 3, idle_task(), now);
        assert_eq!(t.get(&"b", now), None, "b was the least recently used");
        assert_eq!((t.get(&"a", now), t.get(&"c", now)), (Some(1), Some(3)));
        assert_eq!(t.close_all().len(), 2);
    }

    #[tokio::test]
    async fn idle_sessions_are_closed_and_their_receive_loops_stopped() {
        let start = Instant::now();
        let idle = Duration::from_secs(60);
        let mut t = SessionTable::new(10, idle);
        let task = idle_task();
        let abort = task.abort_handle();
        t.insert("old", 1, task, start);
        t.insert("busy", 2, idle_task(), start);
        t.touch(&"busy", start + Duration::from_secs(30));
        assert_eq!(t.make_room(start + idle), Closed { idle: 1, lru: 0 });
        assert_eq!(t.len(), 1);
        tokio::task::yield_now().await;
        assert!(abort.is_finished(), "the receive loop was aborted");
    }
}
