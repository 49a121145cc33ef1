//! Taking in one signed pack: quality checks, aggregates, window leaves,
//! metering — everything a pack changes, written at the end of the call so
//! that the host commits it together (or, if the call fails, not at all).

use std::collections::BTreeMap;

use depin_plugin_sdk::{KvError, Usage, kv, meter_usage};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::SignedPack;
use crate::proof;
use crate::senml::{self, Reading, Value};
use crate::settings::Settings;
use crate::store::{self, Device};

/// Why a pack or a reading was refused. Each is counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The device id was never provisioned.
    UnknownDevice,
    /// The signature does not match the device's key.
    BadSignature,
    /// The sequence number was used before, or is too far below the highest.
    Replayed,
    /// The reading's time is too far in the future or the past.
    BadTimestamp,
    /// The reading's name is not provisioned for the device, or its value is
    /// outside the provisioned range.
    OutOfRange,
    /// The envelope or the SenML pack cannot be parsed.
    Malformed,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::UnknownDevice,
        Reason::BadSignature,
        Reason::Replayed,
        Reason::BadTimestamp,
        Reason::OutOfRange,
        Reason::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::UnknownDevice => "unknown-device",
            Reason::BadSignature => "bad-signature",
            Reason::Replayed => "replayed",
            Reason::BadTimestamp => "bad-timestamp",
            Reason::OutOfRange => "out-of-range",
            Reason::Malformed => "malformed",
        }
    }
}

/// What became of one pack.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// Readings accepted (and metered).
    pub accepted: u32,
    /// Readings refused, by reason.
    pub rejected_readings: BTreeMap<&'static str, u32>,
    /// Set when the whole pack was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_pack: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A window's aggregate of one device's one name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Readings of every value kind.
    pub count: u64,
    /// Over numeric readings (`v`, and `vb` as 0 or 1) only.
    pub numeric: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sum: f64,
    /// The reading with the latest time (the later arrival on a tie).
    pub last: Option<Value>,
    pub last_time_ms: i64,
}

impl Aggregate {
    /// Adds one accepted reading.
    pub fn add(&mut self, r: &Reading) {
        self.count += 1;
        if let Some(x) = r.value.number() {
            self.numeric += 1;
            self.sum += x;
            self.min = Some(self.min.map_or(x, |m| m.min(x)));
            self.max = Some(self.max.map_or(x, |m| m.max(x)));
        }
        if self.last.is_none() || r.time_ms >= self.last_time_ms {
            self.last = Some(r.value.clone());
            self.last_time_ms = r.time_ms;
        }
    }

    /// The mean of the numeric readings.
    pub fn mean(&self) -> Option<f64> {
        (self.numeric > 0).then(|| self.sum / self.numeric as f64)
    }
}

/// Checks and takes in `pack` (or the reason it could not be read),
/// received at `now_ms`. Errors are failures of the store on read, before
/// anything was written: the caller should ask for a retry.
pub fn ingest(
    pack: Result<SignedPack, String>,
    now_ms: i64,
    settings: &Settings,
) -> Result<Outcome, KvError> {
    let mut writes = Writes::default();
    let call = call_id(&pack);
    let outcome = check_and_apply(pack, now_ms, settings, &mut writes)?;
    for (reason, n) in &outcome.rejected_readings {
        writes.count(reason, &call, u64::from(*n));
    }
    if let Some(reason) = outcome.rejected_pack {
        writes.count(reason, &call, 1);
    }
    if outcome.accepted > 0 {
        writes.count(store::ACCEPTED, &call, u64::from(outcome.accepted));
    }
    writes.flush();
    Ok(outcome)
}

/// A key suffix unique to this call: the clock in nanoseconds and a hash
/// of what arrived.
fn call_id(pack: &Result<SignedPack, String>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    match pack {
        Ok(p) => {
            h.update(p.device.as_bytes());
            h.update(p.seq.to_be_bytes());
            h.update(&p.pack);
        }
        Err(e) => h.update(e.as_bytes()),
    }
    format!("{nanos:024}-{}", hex::encode(&h.finalize()[..8]))
}

fn check_and_apply(
    pack: Result<SignedPack, String>,
    now_ms: i64,
    settings: &Settings,
    writes: &mut Writes,
) -> Result<Outcome, KvError> {
    let refuse = |reason: Reason, detail: String| Outcome {
        rejected_pack: Some(reason.name()),
        detail: Some(detail),
        ..Outcome::default()
    };
    let pack = match pack {
        Ok(p) => p,
        Err(e) => return Ok(refuse(Reason::Malformed, e)),
    };
    let Some(device) = store::device(&pack.device)? else {
        return Ok(refuse(
            Reason::UnknownDevice,
            format!("device `{}` is not provisioned", pack.device),
        ));
    };
    let key = device
        .verifying_key()
        .map_err(|e| KvError::Store(format!("device `{}`: {e}", pack.device)))?;
    if !pack.verify(&key) {
        return Ok(refuse(
            Reason::BadSignature,
            format!(
                "the signature does not match device `{}`'s key",
                pack.device
            ),
        ));
    }
    let mut used = store::seq_window(&pack.device)?;
    if !used.accept(pack.seq) {
        return Ok(refuse(
            Reason::Replayed,
            format!(
                "sequence {} was used before or is more than {} below the highest, {}",
                pack.seq,
                store::SEQ_WINDOW - 1,
                used.last
            ),
        ));
    }
    // The pack is authentic and fresh: its sequence number is spent whatever
    // its content turns out to be.
    writes.set(
        store::seq_key(&pack.device),
        serde_json::to_vec(&used).expect("window serializes"),
    );
    let readings = match senml::resolve(&pack.pack, now_ms) {
        Ok(r) => r,
        Err(e) => return Ok(refuse(Reason::Malformed, e)),
    };
    let mut outcome = Outcome::default();
    let mut accepted = Vec::new();
    for r in readings {
        match check_reading(&r, &device, now_ms, settings) {
            Ok(()) => accepted.push(r),
            Err(reason) => *outcome.rejected_readings.entry(reason.name()).or_default() += 1,
        }
    }
    if accepted.is_empty() {
        return Ok(outcome);
    }
    apply(&pack, &accepted, now_ms, settings, writes)?;
    outcome.accepted = accepted.len() as u32;
    Ok(outcome)
}

fn check_reading(r: &Reading, device: &Device, now_ms: i64, s: &Settings) -> Result<(), Reason> {
    if r.time_ms > now_ms.saturating_add(s.max_future_ms)
        || r.time_ms < now_ms.saturating_sub(s.max_age_ms)
        || r.time_ms < 0
    {
        return Err(Reason::BadTimestamp);
    }
    let range = device.names.get(&r.name).ok_or(Reason::OutOfRange)?;
    if let Some(x) = r.value.number()
        && (range.min.is_some_and(|m| x < m) || range.max.is_some_and(|m| x > m))
    {
        return Err(Reason::OutOfRange);
    }
    Ok(())
}

/// Aggregates, window leaves, the pack itself for proofs, and one usage
/// record per reading.
fn apply(
    pack: &SignedPack,
    accepted: &[Reading],
    now_ms: i64,
    s: &Settings,
    writes: &mut Writes,
) -> Result<(), KvError> {
    let mut aggregates: BTreeMap<String, Aggregate> = BTreeMap::new();
    for r in accepted {
        let key = store::aggregate_key(&pack.device, &r.name, s.window_of(r.time_ms));
        let agg = match aggregates.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let existing = kv::get_json(e.key())?.unwrap_or_default();
                e.insert(existing)
            }
        };
        agg.add(r);
    }
    for (key, agg) in aggregates {
        writes.set(key, serde_json::to_vec(&agg).expect("aggregate serializes"));
    }
    let window = s.window_of(now_ms);
    let win_key = store::window_key(window, &pack.device);
    let mut entries = kv::get(&win_key)?.unwrap_or_default();
    let mut leaves = Vec::with_capacity(accepted.len());
    for r in accepted {
        let leaf = proof::reading_leaf(&pack.device, pack.seq, r.index, &pack.pack);
        entries.extend_from_slice(&store::WindowEntry::encode(pack.seq, r.index, &leaf));
        leaves.push(leaf);
    }
    writes.set(win_key, entries);
    writes.set(store::open_key(window), Vec::new());
    let mut stored = pack.signature.to_vec();
    stored.extend_from_slice(&pack.pack);
    writes.set(store::pack_key(&pack.device, pack.seq), stored);
    for leaf in leaves {
        writes.usages.push(
            Usage::new(crate::UNIT_READINGS, 1)
                .subject(pack.device.clone())
                .evidence(leaf.to_vec()),
        );
    }
    Ok(())
}

/// Writes and usage records gathered during the checks and made at the
/// end: a failed read never leaves half a pack behind.
#[derive(Default)]
struct Writes {
    kv: BTreeMap<String, Vec<u8>>,
    usages: Vec<Usage>,
}

impl Writes {
    fn set(&mut self, key: String, value: Vec<u8>) {
        self.kv.insert(key, value);
    }

    /// Counters are never read and written back by a pack: each call adds
    /// its own delta key, which `tick` folds into the total, so packs of
    /// different devices do not conflict over a shared total.
    fn count(&mut self, counter: &str, call: &str, n: u64) {
        self.kv
            .insert(store::delta_key(counter, call), n.to_string().into_bytes());
    }

    /// A write the host refuses (a limit) fails the whole call, so that
    /// nothing of it is committed.
    fn flush(self) {
        for (k, v) in self.kv {
            if let Err(e) = kv::set(&k, &v) {
                panic!("cannot write `{k}`: {e:?}");
            }
        }
        for u in self.usages {
            if let Err(e) = meter_usage(u) {
                panic!("cannot record usage: {e}");
            }
        }
    }
}

/// Parses a device's verifying key from hex.
pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes)
        .map_err(|_| "public_key must be 64 hex digits".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "public_key is not a valid ed25519 key".into())
}
