//! `depin:plugin/kv`: a plugin-private key-value store on the ledger's
//! database. Writes are buffered for the call and committed with its usage
//! records; reads see the call's own writes first, then one snapshot of
//! what was committed (taken at the call's first kv operation). What the
//! call read is checked at commit (see the ledger's `serial.rs`): calls of
//! one plugin behave as if they ran one at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::HasData;

use super::Blame;
use crate::config::PluginLimits;
use crate::ledger::{
    AddRefused, AddTicket, KvEffects, KvWrite, Ledger, LedgerError, ReadSet, counter_value,
};
use crate::runtime::contract::depin::plugin::kv::{Host, KvError};
use crate::runtime::state::CallState;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys one `list-keys` returns.
pub const MAX_LIST: u32 = 10_000;

/// The kv part of a call's state: its writes and `add` reservations,
/// buffered until the call succeeds (then committed with its usage
/// records) and dropped if it fails, and what it read.
#[derive(Debug, Default)]
pub(crate) struct KvState {
    /// The last write of each key, in key order.
    pub(crate) writes: BTreeMap<String, KvWrite>,
    /// What the call read from the committed store.
    pub(crate) reads: ReadSet,
    /// Its `add` reservations, in order.
    pub(crate) adds: Vec<AddTicket>,
    /// Bytes of keys and values written so far (at most the plugin's
    /// `kv_write_bytes`).
    write_bytes: u64,
    /// Operations so far (at most the plugin's `kv_ops`).
    ops: u32,
}

impl KvState {
    /// The call's kv effects, for its commit.
    pub(crate) fn into_effects(self) -> KvEffects {
        KvEffects {
            writes: self.writes,
            reads: self.reads,
            adds: self.adds,
            conflicted: false,
        }
    }
}

/// What `kv` functions reach during one call: its pending writes and the
/// plugin's committed keys.
pub(crate) struct KvView<'a> {
    state: &'a mut KvState,
    ledger: &'a Ledger,
    plugin: &'a Arc<str>,
    limits: &'a PluginLimits,
    request_id: &'a str,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> KvView<'_> {
    KvView {
        state: &mut call.kv,
        ledger: &call.ledger,
        plugin: &call.plugin.name,
        limits: &call.plugin.limits,
        request_id: &call.request_id,
    }
}

impl KvView<'_> {
    /// A store failure for the plugin; a conflict stops the call (it is
    /// run again from the start).
    fn store_error(&self, op: &str, e: LedgerError) -> Blame<KvError> {
        if matches!(e, LedgerError::Conflict) {
            return Blame::Host(wasmtime::Error::new(e));
        }
        tracing::warn!(plugin = %self.plugin, request_id = %self.request_id, error = %e, "kv {op} failed");
        KvError::Store(e.to_string()).into()
    }

    /// Counts one operation against the call's limit.
    fn op(&mut self) -> Result<(), Blame<KvError>> {
        if self.state.ops >= self.limits.kv_ops {
            return Err(KvError::Store(format!(
                "this call already made {} kv operations; the limit per call is {} (limits.kv_ops)",
                self.state.ops, self.limits.kv_ops
            ))
            .into());
        }
        self.state.ops += 1;
        Ok(())
    }

    /// Counts `bytes` written (key and value) against the call's limit.
    fn written(&mut self, bytes: usize) -> Result<(), Blame<KvError>> {
        let total = self.state.write_bytes.saturating_add(bytes as u64);
        if total > self.limits.kv_write_bytes {
            return Err(KvError::Store(format!(
                "this call already wrote {} bytes of kv keys and values; the limit per call is {} (limits.kv_write_bytes)",
                self.state.write_bytes, self.limits.kv_write_bytes
            ))
            .into());
        }
        self.state.write_bytes = total;
        Ok(())
    }

    /// The snapshot the call reads from, taken at its first read.
    fn snapshot(&mut self) -> &crate::ledger::Snapshot {
        self.state.reads.snapshot_of(self.ledger)
    }

    /// The value this call gave `key` through `add`, if it did.
    fn added(&self, key: &str) -> Option<i64> {
        self.state
            .adds
            .iter()
            .rev()
            .find(|t| t.key() == key)
            .map(AddTicket::value)
    }

    /// A write replaces the call's reservations on the key.
    fn forget_adds(&mut self, key: &str) {
        self.state.adds.retain(|t| t.key() != key);
    }
}

/// The `kv` capability, for the linker.
pub(crate) struct Kv;

impl HasData for Kv {
    type Data<'a> = KvView<'a>;
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        Err(KvError::InvalidKey(MAX_KEY_BYTES as u32))
    } else {
        Ok(())
    }
}

impl Host for KvView<'_> {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Blame<KvError>> {
        check_key(&key)?;
        self.op()?;
        if let Some(w) = self.state.writes.get(&key) {
            return Ok(match w {
                KvWrite::Set(v) => Some(v.clone()),
                KvWrite::Delete => None,
            });
        }
        if let Some(value) = self.added(&key) {
            return Ok(Some(value.to_string().into_bytes()));
        }
        let ledger = self.ledger;
        let plugin = self.plugin;
        let read = ledger.kv_get_at(self.snapshot(), plugin, &key);
        let value = read.map_err(|e| self.store_error("get", e))?;
        self.state.reads.note_key(&key);
        Ok(value)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), Blame<KvError>> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLarge(MAX_VALUE_BYTES as u32).into());
        }
        self.op()?;
        self.written(key.len() + value.len())?;
        self.forget_adds(&key);
        self.state.writes.insert(key, KvWrite::Set(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<(), Blame<KvError>> {
        check_key(&key)?;
        self.op()?;
        self.written(key.len())?;
        self.forget_adds(&key);
        self.state.writes.insert(key, KvWrite::Delete);
        Ok(())
    }

    fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, Blame<KvError>> {
        self.op()?;
        let limit = limit.min(MAX_LIST) as usize;
        // Committed keys, merged with this call's pending writes.
        let extra = self.state.writes.len() + self.state.adds.len();
        let ledger = self.ledger;
        let plugin = self.plugin;
        let listed = ledger.kv_list_at(self.snapshot(), plugin, &prefix, limit + extra);
        let committed = listed.map_err(|e| self.store_error("list", e))?;
        self.state.reads.note_prefix(&prefix);
        let mut keys: std::collections::BTreeSet<String> = committed.into_iter().collect();
        for t in &self.state.adds {
            if t.key().starts_with(&prefix) {
                keys.insert(t.key().to_string());
            }
        }
        for (k, w) in self.state.writes.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            match w {
                KvWrite::Set(_) => keys.insert(k.clone()),
                KvWrite::Delete => keys.remove(k),
            };
        }
        Ok(keys.into_iter().take(limit).collect())
    }

    fn add(&mut self, key: String, delta: i64) -> Result<i64, Blame<KvError>> {
        check_key(&key)?;
        self.op()?;
        let not_a_counter = || {
            KvError::Store(format!(
                "`{key}` holds a value that is not a decimal integer; `add` needs a counter"
            ))
        };
        let overflow = || KvError::Store(format!("adding {delta} to `{key}` overflows an s64"));
        // The call's own write decides the value: update it in place.
        if let Some(w) = self.state.writes.get(&key) {
            let current = match w {
                KvWrite::Set(v) => counter_value(Some(v)).ok_or_else(not_a_counter)?,
                KvWrite::Delete => 0,
            };
            let value = current.checked_add(delta).ok_or_else(overflow)?;
            let bytes = value.to_string().into_bytes();
            self.written(bytes.len())?;
            self.state.writes.insert(key, KvWrite::Set(bytes));
            return Ok(value);
        }
        if delta == 0 {
            // Nothing to add: the current value, read like `get`.
            if let Some(value) = self.added(&key) {
                return Ok(value);
            }
            let ledger = self.ledger;
            let plugin = self.plugin;
            let read = ledger.kv_get_at(self.snapshot(), plugin, &key);
            let value = read.map_err(|e| self.store_error("add", e))?;
            self.state.reads.note_key(&key);
            return counter_value(value.as_deref()).ok_or_else(|| not_a_counter().into());
        }
        self.written(key.len() + 8)?;
        let ticket = self
            .ledger
            .kv_add(self.plugin, &key, delta)
            .map_err(|e| self.store_error("add", e))?;
        match ticket {
            Ok(ticket) => {
                let value = ticket.value();
                self.state.adds.push(ticket);
                Ok(value)
            }
            Err(AddRefused::NotACounter) => Err(not_a_counter().into()),
            Err(AddRefused::Overflow) => Err(overflow().into()),
        }
    }

    fn convert_kv_error(&mut self, e: Blame<KvError>) -> wasmtime::Result<KvError> {
        e.into_wit()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use super::*;
    use crate::config::PluginLimits;
    use crate::ledger::CallEffects;
    use crate::runtime::PluginShared;
    use crate::runtime::host::outbound_http::HttpOutbound;

    fn call(ledger: &Arc<Ledger>, limits: PluginLimits) -> CallState {
        let shared = PluginShared {
            name: "kv-test".into(),
            config: BTreeMap::new(),
            limits,
            memory_cap_bytes: 1 << 20,
            units: BTreeSet::new(),
            outbound_udp: BTreeSet::new(),
            blobs: None,
            outbound_http: Arc::new(HttpOutbound::new(&[], None).expect("no origins")),
            jobs: None,
        };
        CallState::new(Arc::new(shared), ledger.clone(), "t".into(), 10)
    }

    fn guest_error<T: std::fmt::Debug>(r: Result<T, Blame<KvError>>) -> String {
        match r {
            Err(Blame::Guest(e)) => format!("{e:?}"),
            other => panic!("expected an error for the plugin, got {other:?}"),
        }
    }

    #[test]
    fn the_per_call_limit_counts_key_bytes_and_operations() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let limits = PluginLimits {
            kv_write_bytes: 100,
            kv_ops: 5,
            ..PluginLimits::default()
        };
        let mut s = call(&ledger, limits);
        // Deletes write no value, but their keys count.
        let key = "k".repeat(40);
        view(&mut s).delete(format!("{key}1")).unwrap();
        view(&mut s).delete(format!("{key}2")).unwrap();
        let e = guest_error(view(&mut s).delete(format!("{key}3")));
        assert!(e.contains("limits.kv_write_bytes"), "{e}");
        // Reads count as operations.
        view(&mut s).get("a".into()).unwrap();
        view(&mut s).get("b".into()).unwrap();
        let e = guest_error(view(&mut s).get("c".into()));
        assert!(e.contains("limits.kv_ops"), "{e}");
    }

    #[tokio::test]
    async fn add_reserves_in_order_and_updates_the_calls_own_write_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut a = call(&ledger, PluginLimits::default());
        let mut b = call(&ledger, PluginLimits::default());
        assert_eq!(view(&mut a).add("n".into(), 2).unwrap(), 2);
        assert_eq!(view(&mut b).add("n".into(), 3).unwrap(), 5, "counts a's");
        // A call reads its own increment without reading the store.
        assert_eq!(view(&mut a).get("n".into()).unwrap(), Some(b"2".to_vec()));
        assert!(a.kv.reads.is_empty());
        // On its own write, add changes the write.
        view(&mut a).set("m".into(), b"40".to_vec()).unwrap();
        assert_eq!(view(&mut a).add("m".into(), 2).unwrap(), 42);
        assert!(
            guest_error(
                view(&mut a)
                    .set("t".into(), b"x".to_vec())
                    .and_then(|()| view(&mut a).add("t".into(), 1))
            )
            .contains("not a decimal integer")
        );
        for s in [a, b] {
            let effects = CallEffects {
                kv: s.kv.into_effects(),
                ..CallEffects::default()
            };
            ledger.commit("kv-test".into(), effects).await.unwrap();
        }
        assert_eq!(ledger.kv_get("kv-test", "n").unwrap(), Some(b"5".to_vec()));
        assert_eq!(ledger.kv_get("kv-test", "m").unwrap(), Some(b"42".to_vec()));
    }

    #[tokio::test]
    async fn a_read_of_a_key_written_since_the_snapshot_stops_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut s = call(&ledger, PluginLimits::default());
        assert_eq!(view(&mut s).get("x".into()).unwrap(), None);
        let mut other = CallEffects::default();
        other
            .kv
            .writes
            .insert("y".into(), KvWrite::Set(b"1".to_vec()));
        ledger.commit("kv-test".into(), other).await.unwrap();
        match view(&mut s).get("y".into()) {
            Err(Blame::Host(e)) => {
                assert!(matches!(
                    e.downcast_ref::<LedgerError>(),
                    Some(LedgerError::Conflict)
                ))
            }
            other => panic!("expected a conflict trap, got {other:?}"),
        }
    }
}
