//! Serializable calls: the versions of recently written keys, the
//! snapshots running calls read from, counter reservations (`kv.add`), and
//! the check the writer makes before a call's effects are logged.
//!
//! Guarantees:
//! - Every committed kv change of a plugin gets a version: the commit
//!   number of the call that made it. A call reads from the snapshot of the
//!   last commit before its first kv operation; a read of a key written
//!   after that snapshot stops the call at once (it would fail its check).
//! - At commit, a call whose read keys or scanned prefixes were written
//!   after its snapshot — by a group logged earlier or by a call earlier in
//!   the same group — is refused with [`LedgerError::Conflict`] and none of
//!   its effects are kept. Calls that pass behave as if they ran one at a
//!   time, in commit order.
//! - `kv.add` reserves its increment: the value it returns counts every
//!   increment reserved before it. The increment commits only if the key's
//!   committed value is then exactly the one it was reserved against, so
//!   the value the call saw is the value in commit order; otherwise the
//!   call conflicts. A reservation whose call never commits is released,
//!   and the reservations made after it are refused at commit.
//! - Versions are kept only while a running call's snapshot may need them
//!   (see [`Serial::prune`]): memory is bounded by the keys written while
//!   the oldest running call runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::overlay::Overlay;
use super::{KvWrite, LedgerError};

/// The snapshot a call reads from. Registered while it lives, so the
/// versions it needs are kept.
pub struct Snapshot {
    pub(super) version: u64,
    overlay: Arc<Mutex<Overlay>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Snapshot").field(&self.version).finish()
    }
}

impl Snapshot {
    pub(super) fn new(version: u64, overlay: Arc<Mutex<Overlay>>) -> Self {
        Self { version, overlay }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Ok(mut overlay) = self.overlay.lock() {
            overlay.serial.release(self.version);
        }
    }
}

/// What a call read from the committed store: checked at its commit.
/// Empty (and allocation-free) for a call that read nothing.
#[derive(Debug, Default)]
pub struct ReadSet {
    pub(super) snapshot: Option<Snapshot>,
    /// Keys read (their committed value or absence).
    pub(super) keys: Vec<String>,
    /// Prefixes scanned by `list-keys`.
    pub(super) prefixes: Vec<String>,
}

impl ReadSet {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.prefixes.is_empty()
    }

    /// The snapshot version, if the call took one.
    pub fn snapshot(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.version)
    }

    /// The snapshot the call reads from, taken from `ledger` at its first
    /// read.
    pub(crate) fn snapshot_of(&mut self, ledger: &super::Ledger) -> &Snapshot {
        self.snapshot.get_or_insert_with(|| ledger.snapshot())
    }

    pub(crate) fn note_key(&mut self, key: &str) {
        self.keys.push(key.to_string());
    }

    pub(crate) fn note_prefix(&mut self, prefix: &str) {
        self.prefixes.push(prefix.to_string());
    }
}

/// One `kv.add` reservation of a call: `base` is the value it was reserved
/// against, `base + delta` the value the call was given. Released when
/// dropped without being committed.
pub struct AddTicket {
    pub(super) id: u64,
    pub(super) plugin: Arc<str>,
    pub(super) key: String,
    pub(super) base: i64,
    pub(super) delta: i64,
    pub(super) settled: bool,
    overlay: Arc<Mutex<Overlay>>,
}

impl std::fmt::Debug for AddTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddTicket")
            .field("key", &self.key)
            .field("base", &self.base)
            .field("delta", &self.delta)
            .finish()
    }
}

impl AddTicket {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value the call was given: the key's value once this increment
    /// commits.
    pub fn value(&self) -> i64 {
        self.base + self.delta
    }
}

impl Drop for AddTicket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(mut overlay) = self.overlay.lock() {
            overlay
                .serial
                .release_ticket(&self.plugin, &self.key, self.id);
        }
    }
}

/// The kv part of a call's effects: its writes, what it read and the
/// increments it reserved, committed together or not at all.
#[derive(Debug, Default)]
pub struct KvEffects {
    /// Key-value writes (last write per key wins).
    pub writes: BTreeMap<String, KvWrite>,
    /// What the call read, checked at commit.
    pub reads: ReadSet,
    /// Its `kv.add` reservations, in order.
    pub adds: Vec<AddTicket>,
    /// The call was stopped by a conflict while it ran: committing it
    /// fails with [`LedgerError::Conflict`].
    pub conflicted: bool,
}

impl From<BTreeMap<String, KvWrite>> for KvEffects {
    fn from(writes: BTreeMap<String, KvWrite>) -> Self {
        Self {
            writes,
            ..Self::default()
        }
    }
}

impl KvEffects {
    /// Nothing to write and nothing to check.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty() && self.adds.is_empty() && !self.conflicted
    }
}

/// The value of a counter as `kv.add` stores it: a decimal integer (what a
/// JSON number is), absent meaning 0. `None`: the key holds something
/// else.
pub fn counter_value(value: Option<&[u8]>) -> Option<i64> {
    match value {
        None => Some(0),
        Some(bytes) => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
    }
}

/// A counter's reservations: its committed value and the increments
/// reserved on it, oldest first.
#[derive(Debug)]
struct AddChain {
    /// `None`: the committed value is not a decimal integer.
    committed: Option<i64>,
    tickets: VecDeque<Reserved>,
}

#[derive(Debug)]
struct Reserved {
    id: u64,
    delta: i64,
    /// An earlier reservation was released, so this one's base is wrong:
    /// it will be refused at commit and no longer counts for new ones.
    doomed: bool,
}

impl AddChain {
    /// The value the next reservation is made against.
    fn reserved(&self) -> Option<i64> {
        self.tickets
            .iter()
            .filter(|t| !t.doomed)
            .try_fold(self.committed?, |v, t| v.checked_add(t.delta))
    }

    fn doom_all(&mut self) {
        for t in &mut self.tickets {
            t.doomed = true;
        }
    }
}

/// Versions, snapshots and reservations; kept under the overlay's lock so
/// a value and its version change together.
#[derive(Debug, Default)]
pub(super) struct Serial {
    /// The version of the last committed call that changed kv.
    committed: u64,
    /// Every key not in `recent` was last written at this version or before.
    floor: u64,
    /// plugin -> key -> version of its last write, for writes after `floor`.
    recent: HashMap<Arc<str>, BTreeMap<String, u64>>,
    /// The writes in `recent`, oldest first, for pruning.
    order: VecDeque<(u64, Arc<str>, String)>,
    /// Snapshot versions of running calls -> how many calls hold each.
    active: BTreeMap<u64, usize>,
    /// plugin -> key -> reservations on it.
    chains: HashMap<Arc<str>, HashMap<String, AddChain>>,
    next_ticket: u64,
}

impl Serial {
    /// Registers a snapshot of everything committed so far.
    pub(super) fn begin(&mut self) -> u64 {
        *self.active.entry(self.committed).or_default() += 1;
        self.committed
    }

    fn release(&mut self, version: u64) {
        if let Some(n) = self.active.get_mut(&version) {
            *n -= 1;
            if *n == 0 {
                self.active.remove(&version);
            }
        }
    }

    /// Whether `key` of `plugin` was written after `snapshot`.
    pub(super) fn key_changed(&self, plugin: &str, key: &str, snapshot: u64) -> bool {
        self.recent
            .get(plugin)
            .and_then(|keys| keys.get(key))
            .is_some_and(|v| *v > snapshot)
            || self.floor > snapshot
    }

    /// Whether a key of `plugin` starting with `prefix` was written (set,
    /// deleted, inserted) after `snapshot`.
    pub(super) fn prefix_changed(&self, plugin: &str, prefix: &str, snapshot: u64) -> bool {
        self.floor > snapshot
            || self.recent.get(plugin).is_some_and(|keys| {
                keys.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .any(|(_, v)| *v > snapshot)
            })
    }

    /// Reserves `delta` on `key`, whose committed value is `committed`
    /// when no reservation is open on it. Returns the ticket's id and base.
    pub(super) fn reserve(
        &mut self,
        plugin: &Arc<str>,
        key: &str,
        delta: i64,
        committed: impl FnOnce() -> Result<Option<i64>, LedgerError>,
    ) -> Result<Result<(u64, i64), AddRefused>, LedgerError> {
        let chains = self.chains.entry(plugin.clone()).or_default();
        if !chains.contains_key(key) {
            let committed = committed()?;
            chains.insert(
                key.to_string(),
                AddChain {
                    committed,
                    tickets: VecDeque::new(),
                },
            );
        }
        let chain = chains.get_mut(key).expect("inserted above");
        let base = match (chain.committed, chain.reserved()) {
            (None, _) => {
                Self::drop_if_idle(chains, key);
                return Ok(Err(AddRefused::NotACounter));
            }
            (Some(_), None) => return Ok(Err(AddRefused::Overflow)),
            (Some(_), Some(base)) => base,
        };
        if base.checked_add(delta).is_none() {
            Self::drop_if_idle(chains, key);
            return Ok(Err(AddRefused::Overflow));
        }
        self.next_ticket += 1;
        let id = self.next_ticket;
        chain.tickets.push_back(Reserved {
            id,
            delta,
            doomed: false,
        });
        Ok(Ok((id, base)))
    }

    fn drop_if_idle(chains: &mut HashMap<String, AddChain>, key: &str) {
        if chains.get(key).is_some_and(|c| c.tickets.is_empty()) {
            chains.remove(key);
        }
    }

    /// A reservation whose call did not commit: the ones after it are
    /// refused at commit, and new ones no longer count it.
    fn release_ticket(&mut self, plugin: &str, key: &str, id: u64) {
        let Some(chains) = self.chains.get_mut(plugin) else {
            return;
        };
        let Some(chain) = chains.get_mut(key) else {
            return;
        };
        if let Some(at) = chain.tickets.iter().position(|t| t.id == id) {
            let released = chain.tickets.remove(at).expect("found above");
            if !released.doomed {
                for later in chain.tickets.iter_mut().skip(at) {
                    later.doomed = true;
                }
            }
        }
        Self::drop_if_idle(chains, key);
    }

    /// The committed value of a counter with open reservations, if any.
    fn chain_value(&self, plugin: &str, key: &str) -> Option<Option<i64>> {
        self.chains
            .get(plugin)
            .and_then(|c| c.get(key))
            .map(|c| c.committed)
    }

    /// Checks the calls of a group, as the writer will log them: in
    /// order, except that a call whose increment was reserved after one
    /// not yet committed waits for it (a call after it in the group, or a
    /// later group). Returns each call's verdict and the order in which the
    /// passing calls are to be logged. For those, their increments are
    /// turned into writes of the counters' new values.
    pub(super) fn check_group(
        &self,
        calls: &mut [(&Arc<str>, &mut KvEffects)],
    ) -> (Vec<Verdict>, Vec<usize>) {
        let mut group = GroupChanges::default();
        let mut verdicts = vec![Verdict::Wait; calls.len()];
        let mut order = Vec::with_capacity(calls.len());
        let mut undecided: Vec<usize> = (0..calls.len()).collect();
        loop {
            let mut progress = false;
            undecided.retain(|&i| {
                let (plugin, kv) = &mut calls[i];
                let verdict = self.check_call(plugin, kv, &group);
                if verdict == Verdict::Pass {
                    group.add(plugin, kv);
                    order.push(i);
                    progress = true;
                }
                verdicts[i] = verdict;
                verdict == Verdict::Wait
            });
            if !progress || undecided.is_empty() {
                return (verdicts, order);
            }
        }
    }

    /// One call, after the calls of its group that passed before it.
    fn check_call(&self, plugin: &Arc<str>, kv: &mut KvEffects, group: &GroupChanges) -> Verdict {
        if kv.conflicted || !self.reads_hold(plugin, &kv.reads, &group.written) {
            return Verdict::Conflict;
        }
        // Each increment must be reserved against the value the counter has
        // when it commits.
        let mut values: Vec<(String, i64)> = Vec::new();
        for t in &kv.adds {
            let current = match values.iter().find(|(k, _)| *k == t.key) {
                Some((_, v)) => Some(*v),
                None => group
                    .counters
                    .get(&(plugin.clone(), t.key.clone()))
                    .copied()
                    .or_else(|| self.chain_value(plugin, &t.key))
                    .flatten(),
            };
            if current != Some(t.base) {
                // Reserved after an increment that may still commit: wait
                // for it. Refused once an earlier one was released.
                let open = self
                    .chains
                    .get(&**plugin)
                    .and_then(|c| c.get(&t.key))
                    .and_then(|c| c.tickets.iter().find(|r| r.id == t.id))
                    .is_some_and(|r| !r.doomed);
                return if open && current.is_some() {
                    Verdict::Wait
                } else {
                    Verdict::Conflict
                };
            }
            let after = t.base + t.delta;
            match values.iter_mut().find(|(k, _)| *k == t.key) {
                Some(v) => v.1 = after,
                None => values.push((t.key.clone(), after)),
            }
        }
        for (key, value) in values {
            kv.writes
                .insert(key, KvWrite::Set(value.to_string().into_bytes()));
        }
        Verdict::Pass
    }

    fn reads_hold(
        &self,
        plugin: &str,
        reads: &ReadSet,
        written: &HashMap<Arc<str>, BTreeMap<String, ()>>,
    ) -> bool {
        if reads.is_empty() {
            return true;
        }
        let Some(snapshot) = reads.snapshot() else {
            return true;
        };
        let mine = written.get(plugin);
        reads.keys.iter().all(|k| {
            !self.key_changed(plugin, k, snapshot) && !mine.is_some_and(|w| w.contains_key(k))
        }) && reads.prefixes.iter().all(|p| {
            !self.prefix_changed(plugin, p, snapshot)
                && !mine.is_some_and(|w| {
                    w.range::<str, _>((Bound::Included(p.as_str()), Bound::Unbounded))
                        .next()
                        .is_some_and(|(k, _)| k.starts_with(p.as_str()))
                })
        })
    }

    /// Publishes a logged call's kv changes: a new version for each key it
    /// wrote, its increments committed, other reservations on keys it set
    /// or deleted refused from now on.
    pub(super) fn publish(&mut self, plugin: &Arc<str>, kv: &mut KvEffects) {
        if kv.writes.is_empty() {
            return;
        }
        self.committed += 1;
        let version = self.committed;
        let recent = self.recent.entry(plugin.clone()).or_default();
        for key in kv.writes.keys() {
            recent.insert(key.clone(), version);
            self.order.push_back((version, plugin.clone(), key.clone()));
        }
        let chains = self.chains.get_mut(plugin);
        let Some(chains) = chains else {
            for t in &mut kv.adds {
                t.settled = true;
            }
            return;
        };
        for t in &mut kv.adds {
            if let Some(chain) = chains.get_mut(&t.key) {
                chain.committed = Some(t.base + t.delta);
                chain.tickets.retain(|r| r.id != t.id);
            }
            t.settled = true;
        }
        for (key, write) in &kv.writes {
            if kv.adds.iter().any(|t| t.key == *key) {
                continue;
            }
            if let Some(chain) = chains.get_mut(key) {
                chain.committed = match write {
                    KvWrite::Set(v) => counter_value(Some(v)),
                    KvWrite::Delete => Some(0),
                };
                chain.doom_all();
            }
        }
        for t in &kv.adds {
            Self::drop_if_idle(chains, &t.key);
        }
    }

    /// Forgets versions no running call's snapshot needs: those at or
    /// below the oldest snapshot in use (or the last commit, when no call
    /// holds one).
    pub(super) fn prune(&mut self) {
        let keep_after = self.active.keys().next().copied().unwrap_or(self.committed);
        while let Some((version, _, _)) = self.order.front() {
            if *version > keep_after {
                break;
            }
            let (version, plugin, key) = self.order.pop_front().expect("front exists");
            if let Some(keys) = self.recent.get_mut(&plugin) {
                if keys.get(&key) == Some(&version) {
                    keys.remove(&key);
                }
                if keys.is_empty() {
                    self.recent.remove(&plugin);
                }
            }
            self.floor = self.floor.max(version);
        }
    }

    /// How many key versions are kept.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.order.len()
    }
}

/// What the writer does with a call of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Logged.
    Pass,
    /// Refused: it read what changed since its snapshot, or an increment
    /// it reserved can no longer commit.
    Conflict,
    /// Kept back: an increment reserved before one of its own has not
    /// committed yet.
    Wait,
}

/// The changes of the calls of a group that passed so far.
#[derive(Debug, Default)]
struct GroupChanges {
    /// plugin -> keys written.
    written: HashMap<Arc<str>, BTreeMap<String, ()>>,
    /// Counters' values after them (`None`: not a counter).
    counters: HashMap<(Arc<str>, String), Option<i64>>,
}

impl GroupChanges {
    fn add(&mut self, plugin: &Arc<str>, kv: &KvEffects) {
        if kv.writes.is_empty() {
            return;
        }
        let mine = self.written.entry(plugin.clone()).or_default();
        for (key, write) in &kv.writes {
            mine.insert(key.clone(), ());
            let value = match write {
                KvWrite::Set(v) => counter_value(Some(v)),
                KvWrite::Delete => Some(0),
            };
            self.counters.insert((plugin.clone(), key.clone()), value);
        }
    }
}

/// Why `kv.add` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddRefused {
    /// The key holds a value that is not a decimal integer.
    NotACounter,
    /// The new value would not fit in a signed 64-bit integer.
    Overflow,
}

impl AddTicket {
    pub(super) fn new(
        id: u64,
        plugin: Arc<str>,
        key: String,
        base: i64,
        delta: i64,
        overlay: Arc<Mutex<Overlay>>,
    ) -> Self {
        Self {
            id,
            plugin,
            key,
            base,
            delta,
            settled: false,
            overlay,
        }
    }
}

#[cfg(test)]
#[path = "serial_tests.rs"]
mod tests;
