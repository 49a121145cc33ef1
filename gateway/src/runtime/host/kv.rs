//! `depin:plugin/kv`: a plugin-private key-value store on the ledger's
//! database. Writes are buffered for the call and committed with its usage
//! records; reads see the call's own writes first.

use wasmtime::Result;

use crate::ledger::KvWrite;
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

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        Err(KvError::InvalidKey(MAX_KEY_BYTES as u32))
    } else {
        Ok(())
    }
}

impl CallState {
    fn store_error(&self, op: &str, e: impl std::fmt::Display) -> KvError {
        tracing::warn!(plugin = %self.plugin.name, request_id = %self.request_id, error = %e, "kv {op} failed");
        KvError::Store(e.to_string())
    }
}

impl Host for CallState {
    fn get(&mut self, key: String) -> Result<Result<Option<Vec<u8>>, KvError>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        if let Some(w) = self.kv_writes.get(&key) {
            return Ok(Ok(match w {
                KvWrite::Set(v) => Some(v.clone()),
                KvWrite::Delete => None,
            }));
        }
        Ok(self
            .ledger
            .kv_get(&self.plugin.name, &key)
            .map_err(|e| self.store_error("get", e)))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<Result<(), KvError>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Ok(Err(KvError::ValueTooLarge(MAX_VALUE_BYTES as u32)));
        }
        if self.kv_write_bytes + value.len() > MAX_WRITE_BYTES_PER_CALL {
            return Ok(Err(KvError::Store(format!(
                "this call already wrote {} bytes; the limit per call is {MAX_WRITE_BYTES_PER_CALL}",
                self.kv_write_bytes
            ))));
        }
        self.kv_write_bytes += value.len();
        self.kv_writes.insert(key, KvWrite::Set(value));
        Ok(Ok(()))
    }

    fn delete(&mut self, key: String) -> Result<Result<(), KvError>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        self.kv_writes.insert(key, KvWrite::Delete);
        Ok(Ok(()))
    }

    fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Result<Vec<String>, KvError>> {
        let limit = limit.min(MAX_LIST) as usize;
        // Committed keys, merged with this call's pending writes.
        let extra = self.kv_writes.len();
        let committed = match self
            .ledger
            .kv_list(&self.plugin.name, &prefix, limit + extra)
        {
            Ok(k) => k,
            Err(e) => return Ok(Err(self.store_error("list", e))),
        };
        let mut keys: std::collections::BTreeSet<String> = committed.into_iter().collect();
        for (k, w) in self.kv_writes.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            match w {
                KvWrite::Set(_) => keys.insert(k.clone()),
                KvWrite::Delete => keys.remove(k),
            };
        }
        Ok(Ok(keys.into_iter().take(limit).collect()))
    }
}
