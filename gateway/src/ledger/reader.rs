//! Read-only access to a stopped gateway's ledger: walking and verifying
//! the chain, and totals.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::encoding::block_entries;
use super::recovery::{naming, open_db, read_head, recover};
use super::{
    BLOCKS, DecodeError, GENESIS_HASH, Hash, Head, LEDGER_FILE, LedgerError, Source, UsageRecord,
};

/// Where `ledger verify` found the chain broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The first record that does not check out.
    pub seq: u64,
    pub problem: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked (all of them when the chain is intact).
    pub records: u64,
    pub head: Head,
    pub broken: Option<BrokenLink>,
}

/// Totals of one (plugin, source, unit).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitTotal {
    pub plugin: String,
    pub source: Source,
    pub unit: String,
    pub records: u64,
    pub quantity: u128,
}

/// Read-only access for the CLI (`ledger verify`, `ledger summary`).
/// Fails with `InUse` while a gateway has the ledger open.
pub struct LedgerReader {
    db: Database,
    /// Records visited by walks so far, for progress output.
    visited: std::sync::atomic::AtomicU64,
}

impl LedgerReader {
    /// Opens an existing ledger in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, LedgerError> {
        let path = data_dir.join(LEDGER_FILE);
        if !path.exists() {
            return Err(LedgerError::Open {
                path,
                message: "no ledger here (has the gateway run with this data_dir?)".into(),
            });
        }
        let db = open_db(&path, false)?;
        // What a gateway logged but did not checkpoint (it crashed or was
        // killed) is replayed, as the gateway itself would on start.
        recover(&db, data_dir).map_err(|e| naming(&path, e))?;
        Ok(Self {
            db,
            visited: Default::default(),
        })
    }

    /// Records visited by walks (`for_each`, `verify`, `summary`) so far;
    /// another thread may read it while a walk runs.
    pub fn visited(&self) -> u64 {
        self.visited.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The stored chain head (its `seq` is the number of records).
    pub fn head(&self) -> Result<Head, LedgerError> {
        read_head(&self.db)
    }

    /// Calls `f` with every record in sequence order: its position in the
    /// ledger, and the stored hash of the record before it, its own stored
    /// hash and its contents. Stops when `f` returns false.
    pub fn for_each(
        &self,
        mut f: impl FnMut(u64, Result<(Hash, Hash, UsageRecord), DecodeError>) -> bool,
    ) -> Result<(), LedgerError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(BLOCKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut prev = GENESIS_HASH;
        for entry in table.iter()? {
            let (k, v) = entry?;
            for (seq, e) in (k.value()..).zip(block_entries(v.value())) {
                self.visited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let parsed =
                    e.and_then(|(hash, enc)| UsageRecord::decode(enc).map(|r| (prev, hash, r)));
                if let Ok((_, hash, _)) = &parsed {
                    prev = *hash;
                }
                let failed = parsed.is_err();
                if !f(seq, parsed) || failed {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Walks the whole chain: numbering, links and hashes, then the head.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let head = read_head(&self.db)?;
        let mut expected = Head::GENESIS;
        let mut broken = None;
        self.for_each(|key, parsed| {
            let seq = expected.seq + 1;
            let problem = match parsed {
                Err(e) => Some(e.to_string()),
                Ok(_) if key != seq => {
                    Some(format!("expected record {seq}, found record {key} (gap)"))
                }
                Ok((prev, hash, record)) => {
                    let encoding = record.encode();
                    if record.seq != key {
                        Some(format!(
                            "record stored under {key} says it is record {}",
                            record.seq
                        ))
                    } else if prev != expected.hash {
                        Some(
                            "its previous hash does not match the hash of the record before it"
                                .into(),
                        )
                    } else if UsageRecord::chain_hash(&prev, &encoding) != hash {
                        Some("its contents do not match its hash (altered)".into())
                    } else {
                        expected = Head { seq, hash };
                        None
                    }
                }
            };
            match problem {
                Some(problem) => {
                    broken = Some(BrokenLink { seq, problem });
                    false
                }
                None => true,
            }
        })?;
        if broken.is_none() && expected != head {
            broken = Some(BrokenLink {
                seq: expected.seq + 1,
                problem: format!(
                    "the chain head says {} records but {} are present (records lost)",
                    head.seq, expected.seq
                ),
            });
        }
        Ok(VerifyReport {
            records: expected.seq,
            head,
            broken,
        })
    }

    /// Totals per plugin, source and unit.
    pub fn summary(&self) -> Result<Vec<UnitTotal>, LedgerError> {
        let mut totals: BTreeMap<(String, Source, String), (u64, u128)> = BTreeMap::new();
        let mut bad = None;
        self.for_each(|seq, parsed| match parsed {
            Ok((_, _, r)) => {
                let t = totals.entry((r.plugin, r.source, r.unit)).or_default();
                t.0 += 1;
                t.1 += u128::from(r.quantity);
                true
            }
            Err(e) => {
                bad = Some(format!("record {seq}: {e}"));
                false
            }
        })?;
        if let Some(b) = bad {
            return Err(LedgerError::Storage(b));
        }
        Ok(totals
            .into_iter()
            .map(|((plugin, source, unit), (records, quantity))| UnitTotal {
                plugin,
                source,
                unit,
                records,
                quantity,
            })
            .collect())
    }

    /// Test support: change the stored encoding of record `seq` (its
    /// stored hash stays as it was).
    #[doc(hidden)]
    pub fn tamper(&self, seq: u64, f: impl FnOnce(&mut Vec<u8>)) -> Result<(), LedgerError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(BLOCKS)?;
            let (first, block) = {
                let found = table.range(..=seq)?.next_back();
                let (k, v) =
                    found.ok_or_else(|| LedgerError::Storage(format!("no record {seq}")))??;
                (k.value(), v.value().to_vec())
            };
            let mut rebuilt = Vec::with_capacity(block.len());
            let mut f = Some(f);
            for (i, e) in block_entries(&block).enumerate() {
                let (hash, enc) = e.map_err(|e| LedgerError::Storage(e.to_string()))?;
                let mut enc = enc.to_vec();
                if first + i as u64 == seq
                    && let Some(f) = f.take()
                {
                    f(&mut enc);
                }
                rebuilt.extend_from_slice(&(enc.len() as u16).to_be_bytes());
                rebuilt.extend_from_slice(&hash);
                rebuilt.extend_from_slice(&enc);
            }
            table.insert(first, rebuilt.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}
