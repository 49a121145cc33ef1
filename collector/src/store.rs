//! `collector.redb`: accepted reports, each gateway's chain head and the
//! rewards per epoch.
//!
//! Guarantees: a report is accepted at most once (the same bytes again are
//! a duplicate with the same acknowledgement); a gateway's accepted reports
//! form an unbroken chain from its first report (previous hash = zeros),
//! in epoch order.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use depin_protocol::report::SignedReport;
use depin_protocol::{GENESIS_HASH, Hash};

/// (gateway id, epoch) -> signed report bytes
const REPORTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("reports");
/// gateway id -> last epoch (8) || last report hash (32) || its start ms (8)
const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("heads");
/// challenge id -> JSON `ChallengeRecord`
const CHALLENGES: TableDefinition<&str, &[u8]> = TableDefinition::new("challenges");
/// (epoch, gateway id) -> reward, micro-tokens
const REWARDS: TableDefinition<(u64, &str), u128> = TableDefinition::new("rewards");

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// New, stored and counted.
    New,
    /// Already stored byte for byte; not counted again.
    Duplicate,
}

/// Why a report does not fit the gateway's chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a different report for epoch {0} was already accepted")]
    Conflict(u64),
    #[error("epoch {epoch} is not after the last accepted epoch {last} (replay or reordering)")]
    Old { epoch: u64, last: u64 },
    #[error(
        "the previous-report hash does not match the last accepted report (epoch {last}): a report is missing (gap) or the chain forks"
    )]
    Gap { last: u64 },
    #[error("the first report of a gateway must start its chain (previous hash all zeros)")]
    NotGenesis,
    #[error("the report's challenge results do not match the collector's: {0}")]
    ProofMismatch(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

/// A challenge the collector issued, and what became of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChallengeRecord {
    pub spec: depin_protocol::proofs::ChallengeSpec,
    pub gateway: String,
    pub issued_ms: u64,
    /// `pending` (not yet fetched), `sent`, `passed`, `failed`, or
    /// `expired` (not answered in time; never counted).
    pub status: String,
    /// The epoch whose report counted the result.
    pub counted_in: Option<u64>,
}

impl<E: Into<redb::Error>> From<E> for ChainError {
    fn from(e: E) -> Self {
        ChainError::Storage(e.into().to_string())
    }
}

/// A gateway as the collector knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewaySummary {
    pub gateway_id: String,
    pub reports: u64,
    pub last_epoch: u64,
    pub last_hash: String,
    pub reward_micro: String,
}

/// The open collector store.
pub struct CollectorStore {
    db: Database,
}

impl CollectorStore {
    /// Opens (creating) `collector.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, ChainError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| ChainError::Storage(format!("{}: {e}", data_dir.display())))?;
        let db = Database::create(data_dir.join("collector.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(REPORTS)?;
        txn.open_table(HEADS)?;
        txn.open_table(REWARDS)?;
        txn.open_table(CHALLENGES)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Accepts `report` (already verified) for `gateway` if it extends the
    /// chain; `reward` is the collector's own computation.
    pub fn accept(&self, report: &SignedReport, reward: u128) -> Result<Accepted, ChainError> {
        let gateway = report.report.gateway_id();
        let epoch = report.report.epoch;
        let txn = self.db.begin_write()?;
        {
            let mut reports = txn.open_table(REPORTS)?;
            if let Some(existing) = reports.get((gateway.as_str(), epoch))? {
                return if existing.value() == report.bytes.as_slice() {
                    Ok(Accepted::Duplicate)
                } else {
                    Err(ChainError::Conflict(epoch))
                };
            }
            let mut heads = txn.open_table(HEADS)?;
            let head = heads.get(gateway.as_str())?.map(|v| decode_head(v.value()));
            match head {
                None if report.report.prev_hash != GENESIS_HASH => {
                    return Err(ChainError::NotGenesis);
                }
                // By start time, so a gateway may change its epoch length.
                Some((last, _, last_start)) if report.report.start_ms() <= last_start => {
                    return Err(ChainError::Old { epoch, last });
                }
                Some((last, hash, _)) if report.report.prev_hash != hash => {
                    return Err(ChainError::Gap { last });
                }
                _ => {}
            }
            let mut challenges = txn.open_table(CHALLENGES)?;
            for p in &report.report.proofs {
                let mut c = match challenges.get(p.challenge_id.as_str())? {
                    Some(v) => serde_json::from_slice::<ChallengeRecord>(v.value())
                        .map_err(|e| ChainError::Storage(e.to_string()))?,
                    None => {
                        return Err(ChainError::ProofMismatch(format!(
                            "challenge {} was never issued",
                            p.challenge_id
                        )));
                    }
                };
                let result = if p.passed { "passed" } else { "failed" };
                if c.gateway != gateway || c.status != result || c.counted_in.is_some() {
                    return Err(ChainError::ProofMismatch(format!(
                        "challenge {}: the report says {result}, the collector has {} for {}{}",
                        p.challenge_id,
                        c.status,
                        c.gateway,
                        c.counted_in
                            .map_or(String::new(), |e| format!(", counted in epoch {e}"))
                    )));
                }
                c.counted_in = Some(epoch);
                let json =
                    serde_json::to_vec(&c).map_err(|e| ChainError::Storage(e.to_string()))?;
                challenges.insert(p.challenge_id.as_str(), json.as_slice())?;
            }
            reports.insert((gateway.as_str(), epoch), report.bytes.as_slice())?;
            let mut head = [0u8; 48];
            head[..8].copy_from_slice(&epoch.to_be_bytes());
            head[8..40].copy_from_slice(&report.hash());
            head[40..].copy_from_slice(&report.report.start_ms().to_be_bytes());
            heads.insert(gateway.as_str(), head.as_slice())?;
            txn.open_table(REWARDS)?
                .insert((epoch, gateway.as_str()), reward)?;
        }
        txn.commit()?;
        Ok(Accepted::New)
    }

    /// Every gateway that has reported, with its totals.
    pub fn gateways(&self) -> Result<Vec<GatewaySummary>, ChainError> {
        let txn = self.db.begin_read()?;
        let heads = txn.open_table(HEADS)?;
        let reports = txn.open_table(REPORTS)?;
        let rewards = txn.open_table(REWARDS)?;
        let mut out = Vec::new();
        for entry in heads.iter()? {
            let (k, v) = entry?;
            let id = k.value().to_string();
            let (last_epoch, last_hash, _) = decode_head(v.value());
            let mut count = 0;
            let mut total = 0u128;
            for r in reports.range((id.as_str(), 0)..=(id.as_str(), u64::MAX))? {
                let (key, _) = r?;
                count += 1;
                if let Some(w) = rewards.get((key.value().1, id.as_str()))? {
                    total = total.saturating_add(w.value());
                }
            }
            out.push(GatewaySummary {
                gateway_id: id,
                reports: count,
                last_epoch,
                last_hash: hex::encode(last_hash),
                reward_micro: total.to_string(),
            });
        }
        Ok(out)
    }

    /// Rewards of `epoch`: (gateway id, micro-tokens).
    pub fn rewards(&self, epoch: u64) -> Result<Vec<(String, u128)>, ChainError> {
        let txn = self.db.begin_read()?;
        let rewards = txn.open_table(REWARDS)?;
        let mut out = Vec::new();
        for entry in rewards.range((epoch, "")..(epoch + 1, ""))? {
            let (k, v) = entry?;
            out.push((k.value().1.to_string(), v.value()));
        }
        Ok(out)
    }

    /// An accepted report.
    pub fn report(&self, gateway: &str, epoch: u64) -> Result<Option<Vec<u8>>, ChainError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(REPORTS)?
            .get((gateway, epoch))?
            .map(|v| v.value().to_vec()))
    }
}

impl CollectorStore {
    /// Stores a newly issued challenge.
    pub fn issue(&self, c: &ChallengeRecord) -> Result<(), ChainError> {
        let json = serde_json::to_vec(c).map_err(|e| ChainError::Storage(e.to_string()))?;
        let txn = self.db.begin_write()?;
        txn.open_table(CHALLENGES)?
            .insert(c.spec.id.as_str(), json.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Every challenge of `gateway` (all statuses).
    pub fn challenges_of(&self, gateway: &str) -> Result<Vec<ChallengeRecord>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHALLENGES)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (_, v) = entry?;
            let c: ChallengeRecord = serde_json::from_slice(v.value())
                .map_err(|e| ChainError::Storage(e.to_string()))?;
            if c.gateway == gateway {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Hands out `gateway`'s pending challenges, marking them sent.
    pub fn take_pending(&self, gateway: &str) -> Result<Vec<ChallengeRecord>, ChainError> {
        let txn = self.db.begin_write()?;
        let mut taken = Vec::new();
        {
            let mut t = txn.open_table(CHALLENGES)?;
            let mut pending = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                let c: ChallengeRecord = serde_json::from_slice(v.value())
                    .map_err(|e| ChainError::Storage(e.to_string()))?;
                if c.gateway == gateway && c.status == "pending" {
                    pending.push((k.value().to_string(), c));
                }
            }
            for (id, mut c) in pending {
                c.status = "sent".into();
                let json =
                    serde_json::to_vec(&c).map_err(|e| ChainError::Storage(e.to_string()))?;
                t.insert(id.as_str(), json.as_slice())?;
                taken.push(c);
            }
        }
        txn.commit()?;
        Ok(taken)
    }

    /// Records the verdict on challenge `id`, once.
    pub fn resolve(&self, id: &str, passed: bool) -> Result<(), ChainError> {
        self.set_status(id, if passed { "passed" } else { "failed" })
    }

    /// Sets a challenge's status (`expired` when it went unanswered).
    pub fn set_status(&self, id: &str, status: &str) -> Result<(), ChainError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(CHALLENGES)?;
            let mut c: ChallengeRecord = match t.get(id)? {
                Some(v) => serde_json::from_slice(v.value())
                    .map_err(|e| ChainError::Storage(e.to_string()))?,
                None => return Err(ChainError::Storage(format!("no challenge {id}"))),
            };
            c.status = status.into();
            let json = serde_json::to_vec(&c).map_err(|e| ChainError::Storage(e.to_string()))?;
            t.insert(id, json.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// One challenge.
    pub fn challenge(&self, id: &str) -> Result<Option<ChallengeRecord>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHALLENGES)?;
        match t.get(id)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| ChainError::Storage(e.to_string())),
        }
    }

    /// The gateway's accepted reports, newest first, at most `n`.
    pub fn latest_reports(&self, gateway: &str, n: usize) -> Result<Vec<SignedReport>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REPORTS)?;
        let mut out = Vec::new();
        for entry in t.range((gateway, 0)..=(gateway, u64::MAX))?.rev().take(n) {
            let (_, v) = entry?;
            out.push(
                SignedReport::decode(v.value()).map_err(|e| ChainError::Storage(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// The ids of every gateway that has reported.
    pub fn gateway_ids(&self) -> Result<Vec<String>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HEADS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(entry?.0.value().to_string());
        }
        Ok(out)
    }
}

/// epoch (8) || report hash (32) || epoch start ms (8)
fn decode_head(b: &[u8]) -> (u64, Hash, u64) {
    let mut epoch = [0u8; 8];
    let mut hash = [0u8; 32];
    let mut start = [0u8; 8];
    if b.len() == 48 {
        epoch.copy_from_slice(&b[..8]);
        hash.copy_from_slice(&b[8..40]);
        start.copy_from_slice(&b[40..]);
    }
    (u64::from_be_bytes(epoch), hash, u64::from_be_bytes(start))
}

#[cfg(test)]
mod tests {
    use depin_gateway::identity::DeviceKey;
    use depin_protocol::report::EpochReport;

    use super::*;

    fn report(key: &DeviceKey, epoch: u64, length_ms: u64, prev: Hash) -> SignedReport {
        EpochReport {
            gateway_key: key.verifying_key().to_bytes(),
            epoch,
            length_ms,
            prev_hash: prev,
            first_seq: 0,
            records: 0,
            merkle_root: [0; 32],
            totals: vec![],
            subject_totals: vec![],
            proofs: vec![],
            reward_micro: 0,
        }
        .sign(key.signing_key())
    }

    #[test]
    fn chain_survives_an_epoch_length_change_and_refuses_going_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = CollectorStore::open(dir.path()).unwrap();
        let key = DeviceKey::generate();
        let a = report(&key, 10, 1000, GENESIS_HASH);
        assert_eq!(store.accept(&a, 0).unwrap(), Accepted::New);
        assert_eq!(store.accept(&a, 0).unwrap(), Accepted::Duplicate);
        let b = report(&key, 11, 1000, a.hash());
        assert_eq!(store.accept(&b, 0).unwrap(), Accepted::New);
        // epoch 6 of 2000 ms starts at 12 000, after epoch 11 of 1000 ms
        let c = report(&key, 6, 2000, b.hash());
        assert_eq!(store.accept(&c, 0).unwrap(), Accepted::New);
        let back = report(&key, 5, 2000, c.hash());
        assert!(matches!(
            store.accept(&back, 0),
            Err(ChainError::Old { .. })
        ));
        let gap = report(&key, 8, 2000, [7; 32]);
        assert!(matches!(store.accept(&gap, 0), Err(ChainError::Gap { .. })));
        let stranger = report(&DeviceKey::generate(), 3, 1000, [1; 32]);
        assert_eq!(store.accept(&stranger, 0), Err(ChainError::NotGenesis));
        assert_eq!(store.gateways().unwrap().len(), 1);
    }
}
