//! `collector.redb`: accepted reports, each gateway's chain head and the
//! rewards per epoch.
//!
//! Guarantees: a report is accepted at most once (the same bytes again are
//! a duplicate with the same acknowledgement); a gateway's accepted reports
//! form an unbroken chain from its first report (previous hash = zeros),
//! in epoch order.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::ledger::{GENESIS_HASH, Hash};
use crate::upstream::report::SignedReport;

/// (gateway id, epoch) -> signed report bytes
const REPORTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("reports");
/// gateway id -> last epoch (8) || last report hash (32)
const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("heads");
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
    #[error("storage failed: {0}")]
    Storage(String),
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
                Some((last, _)) if epoch <= last => {
                    return Err(ChainError::Old { epoch, last });
                }
                Some((last, hash)) if report.report.prev_hash != hash => {
                    return Err(ChainError::Gap { last });
                }
                _ => {}
            }
            reports.insert((gateway.as_str(), epoch), report.bytes.as_slice())?;
            let mut head = [0u8; 40];
            head[..8].copy_from_slice(&epoch.to_be_bytes());
            head[8..].copy_from_slice(&report.hash());
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
            let (last_epoch, last_hash) = decode_head(v.value());
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

fn decode_head(b: &[u8]) -> (u64, Hash) {
    let mut epoch = [0u8; 8];
    let mut hash = [0u8; 32];
    if b.len() == 40 {
        epoch.copy_from_slice(&b[..8]);
        hash.copy_from_slice(&b[8..]);
    }
    (u64::from_be_bytes(epoch), hash)
}
