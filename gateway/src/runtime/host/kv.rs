//! `depin:plugin/kv`: a plugin-private key-value store on the ledger's
//! database. Writes are buffered for the call and committed with its usage
//! records; reads see the call's own writes first.

use std::collections::BTreeMap;

use wasmtime::component::HasData;

use super::Blame;
use crate::ledger::{KvWrite, Ledger};
use crate::runtime::contract::depin::plugin::kv::{Host, KvError};
use crate::runtime::state::CallState;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most bytes of values one call may write.
pub const MAX_WRITE_BYTES_PER_CALL: usize = 8 << 20;
/// Most keys one `list-keys` returns.
pub const MAX_LIST: u32 = 10_000;

/// The kv part of a call's state: its writes, buffered until the call
/// succeeds (then committed with its usage records) and dropped if it
/// fails.
#[derive(Debug, Default)]
pub(crate) struct KvState {
    /// The last write of each key, in key order.
    pub(crate) writes: BTreeMap<String, KvWrite>,
    /// Bytes of values written so far (at most
    /// [`MAX_WRITE_BYTES_PER_CALL`]).
    write_bytes: usize,
}

/// What `kv` functions reach during one call: its pending writes and the
/// plugin's committed keys.
pub(crate) struct KvView<'a> {
    state: &'a mut KvState,
    ledger: &'a Ledger,
    plugin: &'a str,
    request_id: &'a str,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> KvView<'_> {
    KvView {
        state: &mut call.kv,
        ledger: &call.ledger,
        plugin: &call.plugin.name,
        request_id: &call.request_id,
    }
}

impl KvView<'_> {
    fn store_error(&self, op: &str, e: impl std::fmt::Display) -> KvError {
        tracing::warn!(plugin = %self.plugin, request_id = %self.request_id, error = %e, "kv {op} failed");
        KvError::Store(e.to_string())
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
        if let Some(w) = self.state.writes.get(&key) {
            return Ok(match w {
                KvWrite::Set(v) => Some(v.clone()),
                KvWrite::Delete => None,
            });
        }
        Ok(self
            .ledger
            .kv_get(self.plugin, &key)
            .map_err(|e| self.store_error("get", e))?)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), Blame<KvError>> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLarge(MAX_VALUE_BYTES as u32).into());
        }
        if self.state.write_bytes + value.len() > MAX_WRITE_BYTES_PER_CALL {
            return Err(KvError::Store(format!(
                "this call already wrote {} bytes; the limit per call is {MAX_WRITE_BYTES_PER_CALL}",
                self.state.write_bytes
            ))
            .into());
        }
        self.state.write_bytes += value.len();
        self.state.writes.insert(key, KvWrite::Set(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<(), Blame<KvError>> {
        check_key(&key)?;
        self.state.writes.insert(key, KvWrite::Delete);
        Ok(())
    }

    fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, Blame<KvError>> {
        let limit = limit.min(MAX_LIST) as usize;
        // Committed keys, merged with this call's pending writes.
        let extra = self.state.writes.len();
        let committed = self
            .ledger
            .kv_list(self.plugin, &prefix, limit + extra)
            .map_err(|e| self.store_error("list", e))?;
        let mut keys: std::collections::BTreeSet<String> = committed.into_iter().collect();
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

    fn convert_kv_error(&mut self, e: Blame<KvError>) -> wasmtime::Result<KvError> {
        e.into_wit()
    }
}
