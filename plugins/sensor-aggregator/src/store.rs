//! The plugin's kv layout. `|` separates key parts: it appears neither in
//! device ids nor in SenML names. Windows are zero-padded so keys sort in
//! time order.
//!
//! ```text
//! device|<id>                  provisioning (JSON)
//! seq|<id>                     used sequence numbers: the highest and a 1024-wide window below it (JSON)
//! pack|<id>|<seq>              signature (64 bytes) || pack bytes, kept for proofs
//! agg|<id>|<name>|<window>     aggregate (JSON)
//! win|<window>|<id>            the window's leaves of this device: (seq u64 BE, index u32 BE, leaf 32)*
//! open|<window>                a window with leaves and no root yet
//! root|<window>                the window's Merkle root (JSON), set when the window closes
//! total|<counter>              a counter's folded total (counters: `accepted`, each rejection reason)
//! delta|<counter>|<call>       one call's addition to a counter, folded into the total by `tick`
//! ```

use std::collections::BTreeMap;

use depin_plugin_sdk::{KvError, kv};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// The counter of accepted readings; the others are named by rejection reason.
pub const ACCEPTED: &str = "accepted";

/// A provisioned device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The names this device may report, each with its allowed range.
    pub names: BTreeMap<String, Range>,
}

/// Inclusive bounds on numeric values; absent bounds are open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

impl Device {
    pub fn verifying_key(&self) -> Result<VerifyingKey, String> {
        crate::ingest::parse_key(&self.public_key)
    }
}

/// The window's Merkle root, committed at window close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRoot {
    pub window: u64,
    /// Hex.
    pub root: String,
    pub leaves: u64,
}

/// One leaf of a window, as stored under `win|`.
pub struct WindowEntry {
    pub seq: u64,
    pub index: u32,
    pub leaf: [u8; 32],
}

impl WindowEntry {
    pub const LEN: usize = 44;

    pub fn encode(seq: u64, index: u32, leaf: &[u8; 32]) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&seq.to_be_bytes());
        out[8..12].copy_from_slice(&index.to_be_bytes());
        out[12..].copy_from_slice(leaf);
        out
    }

    pub fn decode_all(bytes: &[u8]) -> Vec<WindowEntry> {
        bytes
            .chunks_exact(Self::LEN)
            .map(|c| WindowEntry {
                seq: u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
                index: u32::from_be_bytes(c[8..12].try_into().expect("4 bytes")),
                leaf: c[12..].try_into().expect("32 bytes"),
            })
            .collect()
    }
}

pub fn device_key(id: &str) -> String {
    format!("device|{id}")
}

pub fn seq_key(id: &str) -> String {
    format!("seq|{id}")
}

pub fn pack_key(id: &str, seq: u64) -> String {
    format!("pack|{id}|{seq:020}")
}

pub fn aggregate_prefix(id: &str) -> String {
    format!("agg|{id}|")
}

pub fn aggregate_key(id: &str, name: &str, window: u64) -> String {
    format!("agg|{id}|{name}|{window:020}")
}

pub fn window_prefix(window: u64) -> String {
    format!("win|{window:020}|")
}

pub fn window_key(window: u64, id: &str) -> String {
    format!("win|{window:020}|{id}")
}

pub fn open_key(window: u64) -> String {
    format!("open|{window:020}")
}

pub fn root_key(window: u64) -> String {
    format!("root|{window:020}")
}

pub fn total_key(counter: &str) -> String {
    format!("total|{counter}")
}

pub fn delta_prefix(counter: &str) -> String {
    format!("delta|{counter}|")
}

pub fn delta_key(counter: &str, call: &str) -> String {
    format!("delta|{counter}|{call}")
}

/// Most delta keys read or folded at once.
const DELTA_BATCH: u32 = 10_000;

/// A counter's value: its total plus the deltas not yet folded. Retries
/// when a fold commits while it reads, so it never double counts or misses.
pub fn counter(name: &str) -> Result<u64, KvError> {
    loop {
        let before: u64 = kv::get_json(&total_key(name))?.unwrap_or(0);
        let mut pending = 0;
        for key in kv::list_keys(&delta_prefix(name), DELTA_BATCH)? {
            pending += kv::get_json::<u64>(&key)?.unwrap_or(0);
        }
        let after: u64 = kv::get_json(&total_key(name))?.unwrap_or(0);
        if before == after {
            return Ok(before + pending);
        }
    }
}

/// Folds up to one batch of a counter's deltas into its total. Only `tick`
/// calls this (ticks of a plugin never overlap), so the total has one writer.
pub fn fold_counter(name: &str) -> Result<(), KvError> {
    let mut total: u64 = kv::get_json(&total_key(name))?.unwrap_or(0);
    let keys = kv::list_keys(&delta_prefix(name), DELTA_BATCH)?;
    if keys.is_empty() {
        return Ok(());
    }
    for key in keys {
        total += kv::get_json::<u64>(&key)?.unwrap_or(0);
        kv::delete(&key)?;
    }
    kv::set_json(&total_key(name), &total)
}

/// The device's provisioning, if any.
pub fn device(id: &str) -> Result<Option<Device>, KvError> {
    match kv::get(&device_key(id))? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| KvError::Store(format!("device `{id}` is stored corrupt: {e}"))),
    }
}

/// Sequence numbers a device has used: the highest, and which of the
/// `SEQ_WINDOW - 1` below it were seen too. MQTT brokers may deliver QoS 1
/// messages out of order, so a late lower number is accepted once (the
/// anti-replay window of IPsec, RFC 4303 3.4.3, only wider).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqWindow {
    pub last: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`) set: `last - i` was accepted.
    pub seen: [u64; SEQ_WORDS],
}

const SEQ_WORDS: usize = 16;

/// How far below the highest sequence number a late pack is still accepted.
pub const SEQ_WINDOW: u64 = 64 * SEQ_WORDS as u64;

impl SeqWindow {
    /// Marks `seq` used; `false` when it was used before or is too old.
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq > self.last {
            self.age(seq - self.last);
            self.last = seq;
            self.seen[0] |= 1;
            return true;
        }
        let age = self.last - seq;
        if age >= SEQ_WINDOW {
            return false;
        }
        let (word, bit) = ((age / 64) as usize, age % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return false;
        }
        self.seen[word] |= 1 << bit;
        true
    }

    /// Moves every mark `by` places older.
    fn age(&mut self, by: u64) {
        if by >= SEQ_WINDOW {
            self.seen = [0; SEQ_WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..SEQ_WORDS).rev() {
            let mut v = 0;
            if i >= words {
                v = self.seen[i - words] << bits;
                if bits > 0 && i > words {
                    v |= self.seen[i - words - 1] >> (64 - bits);
                }
            }
            self.seen[i] = v;
        }
    }
}

/// The device's used sequence numbers.
pub fn seq_window(id: &str) -> Result<SeqWindow, KvError> {
    Ok(kv::get_json(&seq_key(id))?.unwrap_or_default())
}

/// Every leaf of `window` with its device, in key order (the tree's order).
pub fn window_leaves(window: u64) -> Result<Vec<(String, WindowEntry)>, KvError> {
    let prefix = window_prefix(window);
    let mut out = Vec::new();
    for key in kv::list_keys(&prefix, 10_000)? {
        let device = key[prefix.len()..].to_string();
        let bytes = kv::get(&key)?.unwrap_or_default();
        out.extend(
            WindowEntry::decode_all(&bytes)
                .into_iter()
                .map(|e| (device.clone(), e)),
        );
    }
    Ok(out)
}
