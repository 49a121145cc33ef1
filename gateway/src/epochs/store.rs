//! `epochs.redb`: closed epochs, the delivery outbox and the close cursor.
//!
//! Guarantees: an epoch's report, its outbox entry and the advanced cursor
//! are written in one durable transaction, so a report exists in the outbox
//! before any attempt to send it, and a crash never closes an epoch twice or
//! skips one. An outbox entry is removed only by `acknowledge`.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use depin_protocol::report::{ProofOutcome, ReportError, SignedReport};
use depin_protocol::{GENESIS_HASH, Hash};

/// epoch -> signed report bytes
const EPOCHS: TableDefinition<u64, &[u8]> = TableDefinition::new("epochs");
/// epoch -> signed report bytes, until the collector acknowledges it
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// epoch -> acknowledgement time, Unix ms
const ACKED: TableDefinition<u64, u64> = TableDefinition::new("acked");
/// challenge id -> 1 passed / 0 failed, until counted in a closed epoch
const PROOFS: TableDefinition<&str, u8> = TableDefinition::new("proofs");
/// "cursor" -> Cursor encoding
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// File name of the epoch store inside the data directory.
pub const EPOCHS_FILE: &str = "epochs.redb";

/// An epoch store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EpochStoreError {
    #[error(
        "{path}: the epoch store is in use by another process (a running gateway?); stop it first"
    )]
    InUse { path: PathBuf },
    #[error("epoch storage failed: {0}")]
    Storage(String),
    #[error("epoch {epoch}: stored report is unreadable: {source}")]
    Corrupt { epoch: u64, source: ReportError },
}

impl<E: Into<redb::Error>> From<E> for EpochStoreError {
    fn from(e: E) -> Self {
        EpochStoreError::Storage(e.into().to_string())
    }
}

/// Where the next epoch close starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The next epoch to close.
    pub next_epoch: u64,
    /// Epoch length the cursor was written with, ms.
    pub length_ms: u64,
    /// The first ledger record not yet in a closed epoch.
    pub next_seq: u64,
    /// Hash of the last report (zeros before the first).
    pub prev_hash: Hash,
}

impl Cursor {
    /// The cursor of a gateway that has closed no epoch yet.
    pub fn first(epoch: u64, length_ms: u64) -> Self {
        Cursor {
            next_epoch: epoch,
            length_ms,
            next_seq: 1,
            prev_hash: GENESIS_HASH,
        }
    }

    fn encode(&self) -> [u8; 56] {
        let mut out = [0; 56];
        out[..8].copy_from_slice(&self.next_epoch.to_be_bytes());
        out[8..16].copy_from_slice(&self.length_ms.to_be_bytes());
        out[16..24].copy_from_slice(&self.next_seq.to_be_bytes());
        out[24..].copy_from_slice(&self.prev_hash);
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == 56).then(|| Cursor {
            next_epoch: u64::from_be_bytes(b[..8].try_into().expect("8")),
            length_ms: u64::from_be_bytes(b[8..16].try_into().expect("8")),
            next_seq: u64::from_be_bytes(b[16..24].try_into().expect("8")),
            prev_hash: b[24..].try_into().expect("32"),
        })
    }
}

/// A closed epoch and its delivery state.
#[derive(Debug, Clone)]
pub struct ClosedEpoch {
    pub report: SignedReport,
    /// When the collector acknowledged it; `None` while in the outbox or
    /// when no collector is configured.
    pub acknowledged_ms: Option<u64>,
    /// Still waiting in the outbox.
    pub pending: bool,
}

/// The open epoch store.
pub struct EpochStore {
    db: Database,
}

impl EpochStore {
    /// Opens (creating if needed) `epochs.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, EpochStoreError> {
        let path = data_dir.join(EPOCHS_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                EpochStoreError::InUse { path: path.clone() }
            }
            other => EpochStoreError::Storage(format!("{}: {other}", path.display())),
        })?;
        let txn = db.begin_write()?;
        txn.open_table(EPOCHS)?;
        txn.open_table(OUTBOX)?;
        txn.open_table(ACKED)?;
        txn.open_table(STATE)?;
        txn.open_table(PROOFS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// The close cursor, `None` before the first close.
    pub fn cursor(&self) -> Result<Option<Cursor>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(STATE)?;
        match t.get("cursor")? {
            None => Ok(None),
            Some(v) => Cursor::decode(v.value())
                .map(Some)
                .ok_or_else(|| EpochStoreError::Storage("the cursor entry is corrupt".into())),
        }
    }

    /// Stores the first cursor unless one exists; returns the cursor in
    /// force.
    pub fn init_cursor(&self, first: Cursor) -> Result<Cursor, EpochStoreError> {
        let txn = self.db.begin_write()?;
        let cursor = {
            let mut t = txn.open_table(STATE)?;
            let existing = t.get("cursor")?.map(|v| Cursor::decode(v.value()));
            match existing {
                Some(Some(c)) => c,
                Some(None) => {
                    return Err(EpochStoreError::Storage(
                        "the cursor entry is corrupt".into(),
                    ));
                }
                None => {
                    t.insert("cursor", first.encode().as_slice())?;
                    first
                }
            }
        };
        txn.commit()?;
        Ok(cursor)
    }

    /// Durably records a closed epoch: its report, its outbox entry (when
    /// `deliver`) and the next cursor, in one transaction.
    pub fn record_close(
        &self,
        report: &SignedReport,
        next: Cursor,
        deliver: bool,
    ) -> Result<(), EpochStoreError> {
        let epoch = report.report.epoch;
        let txn = self.db.begin_write()?;
        {
            txn.open_table(EPOCHS)?
                .insert(epoch, report.bytes.as_slice())?;
            if deliver {
                txn.open_table(OUTBOX)?
                    .insert(epoch, report.bytes.as_slice())?;
            }
            txn.open_table(STATE)?
                .insert("cursor", next.encode().as_slice())?;
            let mut proofs = txn.open_table(PROOFS)?;
            for p in &report.report.proofs {
                proofs.remove(p.challenge_id.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Durably notes a challenge result for the next epoch to close.
    pub fn record_proof(&self, challenge_id: &str, passed: bool) -> Result<(), EpochStoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(PROOFS)?
            .insert(challenge_id, u8::from(passed))?;
        txn.commit()?;
        Ok(())
    }

    /// Challenge results not yet counted in a closed epoch, by id.
    pub fn pending_proofs(&self) -> Result<Vec<ProofOutcome>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PROOFS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push(ProofOutcome {
                challenge_id: k.value().to_string(),
                passed: v.value() == 1,
            });
        }
        Ok(out)
    }

    /// Puts every closed epoch that was never acknowledged back in the
    /// outbox (a gateway that ran without `[upstream]` delivers its whole
    /// chain from the first report once a collector is configured).
    /// Returns how many were added.
    pub fn enqueue_unacknowledged(&self) -> Result<u64, EpochStoreError> {
        let txn = self.db.begin_write()?;
        let mut added = 0;
        {
            let epochs = txn.open_table(EPOCHS)?;
            let acked = txn.open_table(ACKED)?;
            let mut outbox = txn.open_table(OUTBOX)?;
            for entry in epochs.iter()? {
                let (k, v) = entry?;
                let epoch = k.value();
                if acked.get(epoch)?.is_none() && outbox.get(epoch)?.is_none() {
                    outbox.insert(epoch, v.value())?;
                    added += 1;
                }
            }
        }
        txn.commit()?;
        Ok(added)
    }

    /// The oldest report not yet acknowledged.
    pub fn outbox_first(&self) -> Result<Option<(u64, Vec<u8>)>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OUTBOX)?;
        Ok(t.first()?.map(|(k, v)| (k.value(), v.value().to_vec())))
    }

    /// How many reports wait in the outbox.
    pub fn outbox_len(&self) -> Result<u64, EpochStoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    /// Removes `epoch` from the outbox: the collector has it.
    pub fn acknowledge(&self, epoch: u64, now_ms: u64) -> Result<(), EpochStoreError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(OUTBOX)?.remove(epoch)?;
            txn.open_table(ACKED)?.insert(epoch, now_ms)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every closed epoch, oldest first.
    pub fn list(&self) -> Result<Vec<ClosedEpoch>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let epochs = txn.open_table(EPOCHS)?;
        let outbox = txn.open_table(OUTBOX)?;
        let acked = txn.open_table(ACKED)?;
        let mut out = Vec::new();
        for entry in epochs.iter()? {
            let (k, v) = entry?;
            let epoch = k.value();
            let report = SignedReport::decode(v.value())
                .map_err(|source| EpochStoreError::Corrupt { epoch, source })?;
            out.push(ClosedEpoch {
                report,
                acknowledged_ms: acked.get(epoch)?.map(|v| v.value()),
                pending: outbox.get(epoch)?.is_some(),
            });
        }
        Ok(out)
    }

    /// One closed epoch.
    pub fn get(&self, epoch: u64) -> Result<Option<ClosedEpoch>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let Some(bytes) = txn.open_table(EPOCHS)?.get(epoch)? else {
            return Ok(None);
        };
        let report = SignedReport::decode(bytes.value())
            .map_err(|source| EpochStoreError::Corrupt { epoch, source })?;
        Ok(Some(ClosedEpoch {
            report,
            acknowledged_ms: txn.open_table(ACKED)?.get(epoch)?.map(|v| v.value()),
            pending: txn.open_table(OUTBOX)?.get(epoch)?.is_some(),
        }))
    }
}
