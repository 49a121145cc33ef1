//! `epochs.redb`: closed epochs, the delivery outbox, the close cursor,
//! the challenges received and the collector's figure per epoch.
//!
//! Guarantees: an epoch's report, its outbox entry and the advanced cursor
//! are written in one durable transaction, so a report exists in the outbox
//! before any attempt to send it, and a crash never closes an epoch twice or
//! skips one. The outbox is keyed by close order, so reports leave in the
//! order they were closed even when the epoch length (and with it the
//! numbering) changed. An outbox entry is removed only by `acknowledge`.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use depin_protocol::report::{ProofOutcome, ReportError, SignedReport};
use depin_protocol::{GENESIS_HASH, Hash};

/// epoch -> signed report bytes
const EPOCHS: TableDefinition<u64, &[u8]> = TableDefinition::new("epochs");
/// close order -> signed report bytes, until the collector acknowledges it
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox-by-order");
/// epoch -> acknowledgement time, Unix ms
const ACKED: TableDefinition<u64, u64> = TableDefinition::new("acked");
/// epoch -> JSON [`CollectorFigure`]: what the collector decided
const FIGURES: TableDefinition<u64, &[u8]> = TableDefinition::new("collector-figures");
/// challenge id -> 1 passed / 0 failed (u8) || deadline, Unix ms (u64),
/// from its receipt (failed until a verdict says otherwise) until counted
/// in a closed epoch
const CHALLENGES: TableDefinition<&str, &[u8]> = TableDefinition::new("challenge-results");
/// "cursor" -> Cursor encoding; "order" -> next close order (u64)
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
    /// The collector's figure, once its acknowledgement carried one.
    pub collector: Option<CollectorFigure>,
}

/// What the collector decided for an epoch (see [`depin_protocol::ack`]).
pub use depin_protocol::ack::CollectorFigure;

/// A report waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its place in close order.
    pub order: u64,
    pub epoch: u64,
    pub bytes: Vec<u8>,
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
        txn.open_table(CHALLENGES)?;
        txn.open_table(FIGURES)?;
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
                let order = next_order(&txn)?;
                txn.open_table(OUTBOX)?
                    .insert(order, report.bytes.as_slice())?;
            }
            txn.open_table(STATE)?
                .insert("cursor", next.encode().as_slice())?;
            let mut challenges = txn.open_table(CHALLENGES)?;
            for p in &report.report.proofs {
                challenges.remove(p.challenge_id.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Durably notes a challenge on receipt: it counts as failed in the
    /// epoch its deadline falls in unless a verdict says it passed. A
    /// challenge noted twice keeps its first entry.
    pub fn note_challenge(
        &self,
        challenge_id: &str,
        deadline_ms: u64,
    ) -> Result<(), EpochStoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(CHALLENGES)?;
            if t.get(challenge_id)?.is_none() {
                t.insert(challenge_id, challenge_entry(false, deadline_ms).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Durably records the collector's verdict on a challenge.
    pub fn record_proof(
        &self,
        challenge_id: &str,
        passed: bool,
        deadline_ms: u64,
    ) -> Result<(), EpochStoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(CHALLENGES)?.insert(
            challenge_id,
            challenge_entry(passed, deadline_ms).as_slice(),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Results of challenges due before `end_ms` (or without a deadline)
    /// and not yet counted in a closed epoch, by id.
    pub fn proofs_due_before(&self, end_ms: u64) -> Result<Vec<ProofOutcome>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHALLENGES)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            let v = v.value();
            let deadline = v
                .get(1..9)
                .map_or(0, |d| u64::from_be_bytes(d.try_into().expect("8")));
            if deadline < end_ms {
                out.push(ProofOutcome {
                    challenge_id: k.value().to_string(),
                    passed: v.first() == Some(&1),
                });
            }
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
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut entries = Vec::new();
            let mut queued = std::collections::HashSet::new();
            while let Some((k, v)) = outbox.pop_first()? {
                let _ = k;
                queued.insert(v.value().to_vec());
                entries.push(v.value().to_vec());
            }
            let epochs = txn.open_table(EPOCHS)?;
            let acked = txn.open_table(ACKED)?;
            for entry in epochs.iter()? {
                let (k, v) = entry?;
                let epoch = k.value();
                if acked.get(epoch)?.is_none() && !queued.contains(v.value()) {
                    entries.push(v.value().to_vec());
                    added += 1;
                }
            }
            // Chain order: a chain's start times only grow, whatever the
            // epoch length was when each report was closed.
            let mut keyed = Vec::with_capacity(entries.len());
            for bytes in entries {
                let report =
                    SignedReport::decode(&bytes).map_err(|source| EpochStoreError::Corrupt {
                        epoch: u64::MAX,
                        source,
                    })?;
                keyed.push((report.report.start_ms(), bytes));
            }
            keyed.sort();
            for (_, bytes) in &keyed {
                let order = next_order(&txn)?;
                outbox.insert(order, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(added)
    }

    /// The report closed first of those not yet acknowledged.
    pub fn outbox_first(&self) -> Result<Option<OutboxEntry>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OUTBOX)?;
        let Some((k, v)) = t.first()? else {
            return Ok(None);
        };
        let order = k.value();
        let bytes = v.value().to_vec();
        // The epoch number sits at a fixed offset in every version.
        let epoch = bytes
            .get(37..45)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8")));
        Ok(Some(OutboxEntry {
            order,
            epoch,
            bytes,
        }))
    }

    /// How many reports wait in the outbox.
    pub fn outbox_len(&self) -> Result<u64, EpochStoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    /// Removes `entry` from the outbox: the collector has it; keeps the
    /// collector's figure when its acknowledgement carried one.
    pub fn acknowledge(
        &self,
        entry: &OutboxEntry,
        now_ms: u64,
        figure: Option<&CollectorFigure>,
    ) -> Result<(), EpochStoreError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(OUTBOX)?.remove(entry.order)?;
            txn.open_table(ACKED)?.insert(entry.epoch, now_ms)?;
            if let Some(f) = figure {
                let json =
                    serde_json::to_vec(f).map_err(|e| EpochStoreError::Storage(e.to_string()))?;
                txn.open_table(FIGURES)?
                    .insert(entry.epoch, json.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The collector's figure and reasons for `epoch`, once its
    /// acknowledgement carried them (`None` before, or from a collector
    /// that sends none).
    pub fn collector_figure(&self, epoch: u64) -> Result<Option<CollectorFigure>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(FIGURES)?;
        figure_of(&t, epoch)
    }

    /// Every closed epoch, oldest first.
    pub fn list(&self) -> Result<Vec<ClosedEpoch>, EpochStoreError> {
        let txn = self.db.begin_read()?;
        let epochs = txn.open_table(EPOCHS)?;
        let queued = queued_hashes(&txn)?;
        let acked = txn.open_table(ACKED)?;
        let figures = txn.open_table(FIGURES)?;
        let mut out = Vec::new();
        for entry in epochs.iter()? {
            let (k, v) = entry?;
            let epoch = k.value();
            let report = SignedReport::decode(v.value())
                .map_err(|source| EpochStoreError::Corrupt { epoch, source })?;
            out.push(ClosedEpoch {
                pending: queued.contains(&report.hash()),
                report,
                acknowledged_ms: acked.get(epoch)?.map(|v| v.value()),
                collector: figure_of(&figures, epoch)?,
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
            pending: queued_hashes(&txn)?.contains(&report.hash()),
            report,
            acknowledged_ms: txn.open_table(ACKED)?.get(epoch)?.map(|v| v.value()),
            collector: figure_of(&txn.open_table(FIGURES)?, epoch)?,
        }))
    }
}

/// Takes the next close order from the state table.
fn next_order(txn: &redb::WriteTransaction) -> Result<u64, EpochStoreError> {
    let mut state = txn.open_table(STATE)?;
    let order = state
        .get("order")?
        .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    state.insert("order", (order + 1).to_be_bytes().as_slice())?;
    Ok(order)
}

/// Hashes of the reports waiting in the outbox.
fn queued_hashes(
    txn: &redb::ReadTransaction,
) -> Result<std::collections::HashSet<Hash>, EpochStoreError> {
    let mut out = std::collections::HashSet::new();
    for entry in txn.open_table(OUTBOX)?.iter()? {
        out.insert(depin_protocol::hash::sha256(entry?.1.value()));
    }
    Ok(out)
}

fn figure_of(
    t: &impl ReadableTable<u64, &'static [u8]>,
    epoch: u64,
) -> Result<Option<CollectorFigure>, EpochStoreError> {
    match t.get(epoch)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| EpochStoreError::Storage(format!("epoch {epoch}: collector figure: {e}"))),
    }
}

/// passed (u8) || deadline (u64).
fn challenge_entry(passed: bool, deadline_ms: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = u8::from(passed);
    out[1..].copy_from_slice(&deadline_ms.to_be_bytes());
    out
}
