//! The usage ledger: hash-chained usage records and the plugins' key-value
//! data, in one redb database in the data directory, with a write-ahead log
//! in front of it.
//!
//! Guarantees:
//! - `commit` returns only after the call's records and key-value writes are
//!   durable (fsynced) — all of them or none of them.
//! - Concurrent commits are grouped: one writer thread takes every pending
//!   commit into one group, made durable with one contiguous write and one
//!   fdatasync of the log (`wal.rs`). Logged groups are visible to readers
//!   at once and are moved into redb in bulk (a checkpoint) every
//!   `CHECKPOINT_AFTER` or `CHECKPOINT_BYTES`, by a checkpoint thread while
//!   the writer goes on logging in the log's other region; opening the
//!   ledger replays whatever the log holds beyond the last checkpoint.
//! - Records are numbered from 1 without gaps and chained
//!   (`hash = sha256(prev_hash || encoding)`); a crash at any moment leaves
//!   every acknowledged group intact, so the chain never breaks.
//!
//! Where each job lives:
//! - this file: the public API ([`Ledger`], [`CallEffects`], [`Head`]) and
//!   the redb tables;
//! - `encoding.rs`: records as stored, encoded by the caller
//!   ([`EncodedRecords`]) and numbered and chained by the writer;
//! - `overlay.rs`: groups that are logged but not yet in redb, as readers
//!   see them;
//! - `writer.rs`: the writer thread, which groups and logs commits;
//! - `checkpoint.rs`: the checkpoint thread, which moves logged groups
//!   into redb;
//! - `recovery.rs`: opening redb and replaying the log;
//! - `reader.rs`: read-only access for the CLI (`ledger verify`,
//!   `ledger summary`); `scan.rs`: reading records while the gateway runs;
//! - `wal.rs`: the write-ahead log; a record's encoding is `depin_protocol::record`.

mod checkpoint;
mod encoding;
mod health;
mod overlay;
mod reader;
use depin_protocol::record;
mod recovery;
mod scan;
mod serial;
#[cfg(test)]
mod tests;
mod wal;
mod writer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, TableDefinition};

use checkpoint::Checkpointer;
use health::HealthCell;
use overlay::Overlay;
use recovery::{naming, open_db, read_head, recover};
#[cfg(test)]
use writer::TestHook;
use writer::{CommitRequest, Writer, WriterMsg};

pub use encoding::EncodedRecords;
pub use health::LedgerHealth;
pub use reader::{BrokenLink, LedgerReader, UnitTotal, VerifyReport};
pub use record::{
    DecodeError, FORMAT_VERSION, GENESIS_HASH, Hash, MAX_EVIDENCE_BYTES, MAX_SUBJECT_BYTES,
    NewRecord, Source, UsageRecord,
};
pub use serial::{AddRefused, AddTicket, KvEffects, ReadSet, Snapshot, counter_value};
pub use wal::WAL_FILE;
pub(crate) use wal::fuzz_replay;

/// Records are stored in blocks, one block per commit group:
/// seq of the block's first record -> entry*, where
/// entry = u16 length of the encoding (big-endian) || hash (32) || encoding.
/// One insert per group keeps the writer cheap under concurrency.
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("usage_blocks");
/// "head" -> last seq (8, big-endian) || last hash (32);
/// "wal" -> the log generation whose entries are not yet in redb (8).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// (plugin, key) -> value
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("plugin_kv");

/// File name of the ledger inside the data directory.
pub const LEDGER_FILE: &str = "ledger.redb";

/// A ledger failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: the ledger is in use by another process (a running gateway?); stop it first")]
    InUse { path: PathBuf },
    #[error("{path}: cannot open the ledger: {message}")]
    Open { path: PathBuf, message: String },
    #[error("ledger storage failed: {0}")]
    Storage(String),
    #[error("the ledger is closed")]
    Closed,
    /// The call read something a call committed after its snapshot: it
    /// had no effect and is run again (see `serial.rs`).
    #[error("the call conflicted with a concurrent call")]
    Conflict,
    /// The call conflicted every time it was run.
    #[error(
        "the call conflicted with concurrent calls {0} times in a row and had no effect; try again"
    )]
    Contended(u32),
    /// The call conflicted after an effect that cannot be repeated.
    #[error(
        "the call conflicted with a concurrent call after it made {0}, which cannot be repeated; the call had no effect"
    )]
    Unrepeatable(String),
}

impl<E: Into<redb::Error>> From<E> for LedgerError {
    fn from(e: E) -> Self {
        LedgerError::Storage(e.into().to_string())
    }
}

/// One key-value write of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    Set(Vec<u8>),
    Delete,
}

/// Everything one call changes, committed atomically.
#[derive(Debug, Default)]
pub struct CallEffects {
    /// Usage records, in the order they were produced.
    pub records: Vec<NewRecord>,
    /// Key-value writes, reads and increments.
    pub kv: KvEffects,
    /// An effect of the call that cannot be repeated (a non-GET request
    /// through `outbound-http`), if any: on a conflict the call fails
    /// instead of being run again.
    pub unrepeatable: Option<String>,
}

impl CallEffects {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.kv.is_empty()
    }
}

/// Where a committed call's records landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReceipt {
    /// Sequence numbers of the call's records, `first..=last`; `None` when
    /// the call produced no records.
    pub seqs: Option<(u64, u64)>,
    /// How many calls shared the transaction (for metrics).
    pub group_size: usize,
}

/// The open ledger. Cheap to share (`Arc`).
pub struct Ledger {
    db: Arc<Database>,
    path: PathBuf,
    overlay: Arc<Mutex<Overlay>>,
    tx: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    health: Arc<HealthCell>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

/// The chain head: the last committed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

impl Head {
    const GENESIS: Head = Head {
        seq: 0,
        hash: GENESIS_HASH,
    };

    pub(super) fn encode(&self) -> [u8; 40] {
        let mut out = [0; 40];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    pub(super) fn decode(b: &[u8]) -> Option<Head> {
        if b.len() != 40 {
            return None;
        }
        Some(Head {
            seq: u64::from_be_bytes(b[..8].try_into().ok()?),
            hash: b[8..].try_into().ok()?,
        })
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger in `data_dir` and starts its
    /// writer thread.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, LedgerError> {
        let path = data_dir.join(LEDGER_FILE);
        let db = open_db(&path, true)?;
        let (head, generation) = recover(&db, data_dir).map_err(|e| naming(&path, e))?;
        let wal = wal::Wal::open(data_dir, generation)?;
        let db = Arc::new(db);
        let overlay = Arc::new(Mutex::new(Overlay::default()));
        let (tx, rx) = mpsc::channel();
        let spawn_failed = |e: std::io::Error| LedgerError::Open {
            path: path.clone(),
            message: format!("cannot start a ledger thread: {e}"),
        };
        let (jobs, job_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let health = Arc::new(HealthCell::new());
        let checkpointer = Checkpointer::new(db.clone(), overlay.clone(), done_tx)
            .spawn(job_rx)
            .map_err(spawn_failed)?;
        let writer = Writer::new(
            db.clone(),
            head,
            wal,
            overlay.clone(),
            jobs,
            done,
            checkpointer,
        )
        .with_health(health.clone())
        .spawn(rx)
        .map_err(spawn_failed)?;
        Ok(Arc::new(Self {
            db,
            path,
            overlay,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            health,
        }))
    }

    /// Whether commits are expected to succeed (see [`LedgerHealth`]).
    pub fn health(&self) -> LedgerHealth {
        self.health.get()
    }

    /// Changes of [`Self::health`], e.g. to stop the process once the
    /// storage failed for good.
    pub fn watch_health(&self) -> tokio::sync::watch::Receiver<LedgerHealth> {
        self.health.subscribe()
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `effects` durable. Returns once they are committed to disk.
    pub async fn commit(
        &self,
        plugin: Arc<str>,
        effects: CallEffects,
    ) -> Result<CommitReceipt, LedgerError> {
        let records = EncodedRecords::of(&plugin, &effects.records)?;
        drop(effects.records);
        self.commit_encoded(plugin, records, effects.kv).await
    }

    /// [`Self::commit`] for records already encoded (by `plugin`).
    pub async fn commit_encoded(
        &self,
        plugin: Arc<str>,
        records: EncodedRecords,
        kv: KvEffects,
    ) -> Result<CommitReceipt, LedgerError> {
        if kv.conflicted {
            return Err(LedgerError::Conflict);
        }
        if records.is_empty() && kv.is_empty() {
            return Ok(CommitReceipt {
                seqs: None,
                group_size: 0,
            });
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        {
            let tx = self.tx.lock().expect("ledger sender lock");
            let tx = tx.as_ref().ok_or(LedgerError::Closed)?;
            tx.send(WriterMsg::Commit(CommitRequest {
                records,
                kv,
                plugin,
                reply,
            }))
            .map_err(|_| LedgerError::Closed)?;
        }
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// The committed value of a plugin's key.
    pub fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        if let Some(logged) = self.overlay().kv_get(plugin, key) {
            return Ok(logged);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        Ok(table.get((plugin, key))?.map(|v| v.value().to_vec()))
    }

    /// A snapshot of everything committed so far, for a call's reads.
    pub fn snapshot(&self) -> Snapshot {
        let version = self.overlay().serial.begin();
        Snapshot::new(version, self.overlay.clone())
    }

    /// The value of a plugin's key as of `snapshot`. `Conflict` when the
    /// key was written after it.
    pub fn kv_get_at(
        &self,
        snapshot: &Snapshot,
        plugin: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        {
            let overlay = self.overlay();
            if overlay.serial.key_changed(plugin, key, snapshot.version) {
                return Err(LedgerError::Conflict);
            }
            if let Some(logged) = overlay.kv_get(plugin, key) {
                return Ok(logged);
            }
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        let value = table.get((plugin, key))?.map(|v| v.value().to_vec());
        // Written (and even checkpointed) while redb was read: not the
        // snapshot's value.
        if self
            .overlay()
            .serial
            .key_changed(plugin, key, snapshot.version)
        {
            return Err(LedgerError::Conflict);
        }
        Ok(value)
    }

    /// [`Self::kv_list`] as of `snapshot`. `Conflict` when a key with the
    /// prefix was written after it.
    pub fn kv_list_at(
        &self,
        snapshot: &Snapshot,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, LedgerError> {
        let changed = |ledger: &Self| {
            ledger
                .overlay()
                .serial
                .prefix_changed(plugin, prefix, snapshot.version)
        };
        if changed(self) {
            return Err(LedgerError::Conflict);
        }
        let keys = self.kv_list(plugin, prefix, limit)?;
        if changed(self) {
            return Err(LedgerError::Conflict);
        }
        Ok(keys)
    }

    /// Reserves `delta` on the counter `key` of `plugin` (see `serial.rs`):
    /// the ticket carries the value the call is given.
    pub fn kv_add(
        &self,
        plugin: &Arc<str>,
        key: &str,
        delta: i64,
    ) -> Result<Result<AddTicket, AddRefused>, LedgerError> {
        let mut overlay = self.overlay();
        let logged = overlay.kv_get(plugin, key);
        let db = &self.db;
        let reserved = overlay.serial.reserve(plugin, key, delta, || {
            // No reservation is open on the key: its committed value, read
            // under the lock so no commit slips in between.
            let value = match logged {
                Some(v) => v,
                None => {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(KV)?;
                    table.get((&**plugin, key))?.map(|v| v.value().to_vec())
                }
            };
            Ok(counter_value(value.as_deref()))
        })?;
        drop(overlay);
        Ok(reserved.map(|(id, base)| {
            AddTicket::new(
                id,
                plugin.clone(),
                key.to_string(),
                base,
                delta,
                self.overlay.clone(),
            )
        }))
    }

    /// Committed keys of a plugin that start with `prefix`, in order.
    pub fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, LedgerError> {
        let changes = self.overlay().kv_changes(plugin, prefix);
        // Each logged delete may hide one stored key.
        let deleted = changes.values().filter(|exists| !**exists).count();
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        let mut keys = BTreeSet::new();
        for entry in table.range((plugin, prefix)..)? {
            let (k, _) = entry?;
            let (p, key) = k.value();
            if p != plugin || !key.starts_with(prefix) || keys.len() >= limit + deleted {
                break;
            }
            keys.insert(key.to_string());
        }
        for (key, exists) in changes {
            if exists {
                keys.insert(key);
            } else {
                keys.remove(&key);
            }
        }
        Ok(keys.into_iter().take(limit).collect())
    }

    /// The chain head as committed.
    pub fn head(&self) -> Result<Head, LedgerError> {
        if let Some(head) = self.overlay().head() {
            return Ok(head);
        }
        read_head(&self.db)
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().expect("ledger overlay lock")
    }

    /// Test support: stops the writer without its last checkpoint, leaving
    /// the log as a crash would.
    #[cfg(test)]
    fn abandon(&self) {
        if let Some(tx) = self.tx.lock().expect("ledger sender lock").take() {
            let _ = tx.send(WriterMsg::Abandon);
        }
        if let Some(handle) = self.writer.lock().expect("ledger writer lock").take() {
            let _ = handle.join();
        }
    }

    /// Test support: see [`TestHook`].
    #[cfg(test)]
    fn hook(&self, hook: TestHook) {
        if let Some(tx) = self.tx.lock().expect("ledger sender lock").as_ref() {
            let _ = tx.send(WriterMsg::Hook(hook));
        }
    }

    /// Stops the writer after it has committed everything already queued.
    /// Further commits fail with `Closed`.
    pub fn close(&self) {
        if let Some(tx) = self.tx.lock().expect("ledger sender lock").take() {
            let _ = tx.send(WriterMsg::Stop);
        }
        if let Some(handle) = self.writer.lock().expect("ledger writer lock").take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}
