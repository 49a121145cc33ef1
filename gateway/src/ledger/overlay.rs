//! What readers see of commit groups that are durable in the log but not
//! yet checkpointed into redb.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Head;
use super::serial::Serial;

/// Commit groups that are durable in the log but not yet in redb.
#[derive(Debug, Default)]
pub(super) struct Layer {
    /// The chain head after the last group; `None` when there is none.
    pub(super) head: Option<Head>,
    /// (sequence number of the first record, the records block), in order.
    pub(super) blocks: Vec<(u64, Arc<[u8]>)>,
    /// plugin -> key -> value (`None` = deleted), last write wins.
    pub(super) kv: HashMap<Arc<str>, BTreeMap<String, Option<Vec<u8>>>>,
}

impl Layer {
    pub(super) fn add_block(&mut self, first: u64, block: &[u8], after: Head) {
        if !block.is_empty() {
            self.blocks.push((first, Arc::from(block)));
        }
        self.head = Some(after);
    }

    pub(super) fn add_kv(&mut self, plugin: &Arc<str>, key: String, value: Option<Vec<u8>>) {
        match self.kv.get_mut(plugin) {
            Some(writes) => {
                writes.insert(key, value);
            }
            None => {
                self.kv
                    .insert(plugin.clone(), BTreeMap::from([(key, value)]));
            }
        }
    }

    /// Adds the groups of `newer`, logged after this layer's.
    pub(super) fn absorb(&mut self, newer: Layer) {
        self.blocks.extend(newer.blocks);
        self.head = newer.head.or(self.head);
        for (plugin, writes) in newer.kv {
            self.kv.entry(plugin).or_default().extend(writes);
        }
    }
}

/// What readers see besides redb: the groups logged in the current log
/// generation (`current`) and those of the previous generation, frozen for
/// a checkpoint that has not committed yet (`applying`). A checkpoint
/// clears `applying` only after its redb transaction is committed, so a
/// reader that finds nothing here finds it in redb.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    pub(super) current: Layer,
    pub(super) applying: Option<Arc<Layer>>,
    /// Versions, snapshots and reservations (see `serial.rs`).
    pub(super) serial: Serial,
}

impl Overlay {
    /// Newest first.
    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.current).chain(self.applying.as_deref())
    }

    /// `Some(value)` when a logged write decides the key.
    pub(super) fn kv_get(&self, plugin: &str, key: &str) -> Option<Option<Vec<u8>>> {
        self.layers()
            .find_map(|l| l.kv.get(plugin).and_then(|w| w.get(key)))
            .cloned()
    }

    /// Logged writes to keys of `plugin` starting with `prefix`:
    /// key -> whether it now exists.
    pub(super) fn kv_changes(&self, plugin: &str, prefix: &str) -> BTreeMap<String, bool> {
        let mut changes = BTreeMap::new();
        for layer in self.applying.as_deref().into_iter().chain([&self.current]) {
            if let Some(writes) = layer.kv.get(plugin) {
                for (k, v) in writes.range(prefix.to_string()..) {
                    if !k.starts_with(prefix) {
                        break;
                    }
                    changes.insert(k.clone(), v.is_some());
                }
            }
        }
        changes
    }

    pub(super) fn head(&self) -> Option<Head> {
        self.layers().find_map(|l| l.head)
    }

    /// Logged record blocks, oldest first.
    pub(super) fn blocks(&self) -> Vec<(u64, Arc<[u8]>)> {
        let mut out: Vec<_> = self
            .applying
            .as_deref()
            .map(|l| l.blocks.clone())
            .unwrap_or_default();
        out.extend(self.current.blocks.iter().cloned());
        out
    }
}
