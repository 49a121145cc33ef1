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

mod scan;
mod wal;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use depin_protocol::record;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use record::{
    DecodeError, FORMAT_VERSION, GENESIS_HASH, Hash, MAX_EVIDENCE_BYTES, MAX_SUBJECT_BYTES,
    NewRecord, Source, UsageRecord,
};
pub use wal::WAL_FILE;

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

/// Most commits taken into one group.
const MAX_GROUP: usize = 1024;
/// A checkpoint moves logged groups into redb this long after the first
/// of them was logged...
const CHECKPOINT_AFTER: Duration = Duration::from_millis(100);
/// ...or once this much is logged, whichever comes first.
const CHECKPOINT_BYTES: u64 = 1 << 20;
/// Consecutive record blocks are stored as one redb value up to this size.
const MERGED_BLOCK_BYTES: usize = 256 << 10;

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
    /// Key-value writes (last write per key wins).
    pub kv: BTreeMap<String, KvWrite>,
}

impl CallEffects {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.kv.is_empty()
    }
}

/// A call's usage records, encoded on the caller's thread as they will be
/// stored (see `BLOCKS`), with the sequence number, the hash and, for
/// records timestamped at commit, the time still zero: the writer only
/// fills those in. Building them without `NewRecord`s spares the hot paths
/// an allocation per field, and the writer thread freeing them.
#[derive(Debug, Default, Clone)]
pub struct EncodedRecords {
    bytes: Vec<u8>,
    count: usize,
}

impl EncodedRecords {
    /// Room for about `records` records.
    pub fn with_capacity(records: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(records * 160),
            count: 0,
        }
    }

    /// `records`, in order.
    pub fn of(plugin: &str, records: &[NewRecord]) -> Result<Self, LedgerError> {
        let mut out = Self::with_capacity(records.len());
        for r in records {
            out.push(plugin, r)?;
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `r`, recorded by `plugin`.
    pub fn push(&mut self, plugin: &str, r: &NewRecord) -> Result<(), LedgerError> {
        self.push_parts(
            plugin,
            r.time_ms,
            &r.unit,
            r.quantity,
            r.source,
            r.subject.as_deref(),
            r.evidence.as_deref(),
        )
    }

    /// Appends a host-attested record, timestamped at commit (what
    /// [`NewRecord::host`] makes, without building one).
    pub fn push_host(
        &mut self,
        plugin: &str,
        unit: &str,
        quantity: u64,
        subject: &str,
    ) -> Result<(), LedgerError> {
        self.push_parts(plugin, 0, unit, quantity, Source::Host, Some(subject), None)
    }

    /// The records as they stand (sequence number 0; time 0 when it is
    /// set at commit), for tests.
    #[cfg(test)]
    pub fn decode(&self) -> Vec<UsageRecord> {
        block_entries(&self.bytes)
            .map(|e| UsageRecord::decode(e.expect("entry").1).expect("record"))
            .collect()
    }

    /// Appends the records of `other`.
    pub fn extend(&mut self, other: &EncodedRecords) {
        self.bytes.extend_from_slice(&other.bytes);
        self.count += other.count;
    }

    #[allow(clippy::too_many_arguments)]
    fn push_parts(
        &mut self,
        plugin: &str,
        time_ms: u64,
        unit: &str,
        quantity: u64,
        source: Source,
        subject: Option<&str>,
        evidence: Option<&[u8]>,
    ) -> Result<(), LedgerError> {
        let entry = self.bytes.len();
        self.bytes.extend_from_slice(&[0; ENTRY_HEAD]);
        record::encode_into(
            &mut self.bytes,
            0,
            time_ms,
            plugin,
            unit,
            quantity,
            source,
            subject,
            evidence,
        );
        let Ok(len) = u16::try_from(self.bytes.len() - entry - ENTRY_HEAD) else {
            self.bytes.truncate(entry);
            return Err(LedgerError::Storage(
                "a record is larger than 64 KiB".into(),
            ));
        };
        self.bytes[entry..entry + 2].copy_from_slice(&len.to_be_bytes());
        self.count += 1;
        Ok(())
    }
}

/// A stored record entry: u16 length of the encoding, then its hash.
const ENTRY_HEAD: usize = 2 + 32;
/// Where the sequence number and the time are in an encoding.
const SEQ_AT: std::ops::Range<usize> = 1..9;
const TIME_AT: std::ops::Range<usize> = 9..17;

/// Where a committed call's records landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReceipt {
    /// Sequence numbers of the call's records, `first..=last`; `None` when
    /// the call produced no records.
    pub seqs: Option<(u64, u64)>,
    /// How many calls shared the transaction (for metrics).
    pub group_size: usize,
}

struct CommitRequest {
    records: EncodedRecords,
    kv: BTreeMap<String, KvWrite>,
    plugin: Arc<str>,
    reply: tokio::sync::oneshot::Sender<Result<CommitReceipt, LedgerError>>,
}

enum WriterMsg {
    Commit(CommitRequest),
    Stop,
    /// Test support: stop without a last checkpoint, as a crash would.
    #[cfg(test)]
    Abandon,
    /// Test support: changes how the writer behaves from now on.
    #[cfg(test)]
    Hook(TestHook),
}

#[cfg(test)]
enum TestHook {
    /// Freeze generations for checkpoints but never store them, as if
    /// every checkpoint were cut short by a crash.
    HoldCheckpoints,
    /// The next this many I/O steps of the log fail.
    FailLogWrites(u32),
}

/// Frozen groups for the checkpoint thread to store, with the log
/// generation redb replays from once they are stored.
struct CheckpointJob {
    layer: Arc<Layer>,
    generation: u64,
}

/// Commit groups that are durable in the log but not yet in redb.
#[derive(Debug, Default)]
struct Layer {
    /// The chain head after the last group; `None` when there is none.
    head: Option<Head>,
    /// (sequence number of the first record, the records block), in order.
    blocks: Vec<(u64, Arc<[u8]>)>,
    /// plugin -> key -> value (`None` = deleted), last write wins.
    kv: HashMap<Arc<str>, BTreeMap<String, Option<Vec<u8>>>>,
}

impl Layer {
    fn add_block(&mut self, first: u64, block: &[u8], after: Head) {
        if !block.is_empty() {
            self.blocks.push((first, Arc::from(block)));
        }
        self.head = Some(after);
    }

    fn add_kv(&mut self, plugin: &Arc<str>, key: String, value: Option<Vec<u8>>) {
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
    fn absorb(&mut self, newer: Layer) {
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
struct Overlay {
    current: Layer,
    applying: Option<Arc<Layer>>,
}

impl Overlay {
    /// Newest first.
    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.current).chain(self.applying.as_deref())
    }

    /// `Some(value)` when a logged write decides the key.
    fn kv_get(&self, plugin: &str, key: &str) -> Option<Option<Vec<u8>>> {
        self.layers()
            .find_map(|l| l.kv.get(plugin).and_then(|w| w.get(key)))
            .cloned()
    }

    /// Logged writes to keys of `plugin` starting with `prefix`:
    /// key -> whether it now exists.
    fn kv_changes(&self, plugin: &str, prefix: &str) -> BTreeMap<String, bool> {
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

    fn head(&self) -> Option<Head> {
        self.layers().find_map(|l| l.head)
    }

    /// Logged record blocks, oldest first.
    fn blocks(&self) -> Vec<(u64, Arc<[u8]>)> {
        let mut out: Vec<_> = self
            .applying
            .as_deref()
            .map(|l| l.blocks.clone())
            .unwrap_or_default();
        out.extend(self.current.blocks.iter().cloned());
        out
    }
}

/// The open ledger. Cheap to share (`Arc`).
pub struct Ledger {
    db: Arc<Database>,
    path: PathBuf,
    overlay: Arc<Mutex<Overlay>>,
    tx: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
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
        let checkpointer = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn({
                let db = db.clone();
                let overlay = overlay.clone();
                move || run_checkpoints(&db, &overlay, &job_rx, &done_tx)
            })
            .map_err(spawn_failed)?;
        let writer = Writer {
            db: db.clone(),
            head,
            wal,
            overlay: overlay.clone(),
            block: Vec::new(),
            entry: Vec::new(),
            pending_since: None,
            jobs: Some(jobs),
            done,
            checkpointer: Some(checkpointer),
            checkpointing: false,
            #[cfg(test)]
            hold_checkpoints: false,
        };
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(spawn_failed)?;
        Ok(Arc::new(Self {
            db,
            path,
            overlay,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        }))
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
        kv: BTreeMap<String, KvWrite>,
    ) -> Result<CommitReceipt, LedgerError> {
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

fn open_db(path: &Path, create: bool) -> Result<Database, LedgerError> {
    if create && let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| LedgerError::Open {
            path: path.to_path_buf(),
            message: format!("cannot create the data directory: {e}"),
        })?;
    }
    let result = if create {
        Database::create(path)
    } else {
        Database::open(path)
    };
    result.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => LedgerError::InUse {
            path: path.to_path_buf(),
        },
        other => LedgerError::Open {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// A storage failure while opening, with the ledger's path.
fn naming(path: &Path, e: LedgerError) -> LedgerError {
    match e {
        LedgerError::Storage(message) => LedgerError::Open {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    }
}

fn log_failed(e: std::io::Error) -> LedgerError {
    LedgerError::Storage(format!("cannot write the ledger log: {e}"))
}

/// Moves what the log holds beyond the last checkpoint into redb and
/// starts a new log generation. Returns the chain head and the generation
/// new log entries belong to.
fn recover(db: &Database, data_dir: &Path) -> Result<(Head, u64), LedgerError> {
    let head = read_head(db)?;
    let generation = read_generation(db)?;
    let path = data_dir.join(WAL_FILE);
    let mut layer = Layer::default();
    let mut cursor = head;
    let mut groups = 0usize;
    match std::fs::read(&path) {
        Ok(bytes) => {
            // The generation redb has not got, and the one logged while its
            // checkpoint ran (see wal.rs).
            let entries = wal::read_entries(&bytes, generation)
                .into_iter()
                .chain(wal::read_entries(&bytes, generation + 1));
            for logged in entries {
                let records = block_entries(&logged.block).count() as u64;
                if logged.before != cursor || logged.after.seq != cursor.seq + records {
                    tracing::warn!(
                        log = %path.display(),
                        at_record = cursor.seq,
                        "a ledger log entry does not continue the chain; replay stops there"
                    );
                    break;
                }
                layer.add_block(cursor.seq + 1, &logged.block, logged.after);
                for (plugin, writes) in logged.kv {
                    let plugin: Arc<str> = plugin.into();
                    for (key, value) in writes {
                        layer.add_kv(&plugin, key, value);
                    }
                }
                cursor = logged.after;
                groups += 1;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(LedgerError::Open {
                path,
                message: format!("cannot read the ledger log: {e}"),
            });
        }
    }
    // Past both generations that were replayable.
    let generation = generation + 2;
    store(db, &layer, generation)?;
    if groups > 0 {
        tracing::info!(
            groups,
            records = cursor.seq - head.seq,
            "ledger: replayed commit groups from the log"
        );
    }
    Ok((cursor, generation))
}

/// Stores `layer` in one durable redb transaction, with `generation` as the
/// log generation still to replay.
fn store(db: &Database, layer: &Layer, generation: u64) -> Result<(), LedgerError> {
    let txn = db.begin_write()?;
    {
        let mut blocks = txn.open_table(BLOCKS)?;
        let mut merged = Vec::new();
        let mut first = 0;
        for (seq, block) in &layer.blocks {
            if !merged.is_empty() && merged.len() + block.len() > MERGED_BLOCK_BYTES {
                blocks.insert(first, merged.as_slice())?;
                merged.clear();
            }
            if merged.is_empty() {
                first = *seq;
            }
            merged.extend_from_slice(block);
        }
        if !merged.is_empty() {
            blocks.insert(first, merged.as_slice())?;
        }
        let mut kv = txn.open_table(KV)?;
        for (plugin, writes) in &layer.kv {
            for (key, value) in writes {
                match value {
                    Some(v) => {
                        kv.insert((&**plugin, key.as_str()), v.as_slice())?;
                    }
                    None => {
                        kv.remove((&**plugin, key.as_str()))?;
                    }
                }
            }
        }
        let mut meta = txn.open_table(META)?;
        if let Some(head) = layer.head {
            meta.insert("head", head.encode().as_slice())?;
        }
        meta.insert("wal", generation.to_be_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn read_generation(db: &Database) -> Result<u64, LedgerError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    match meta.get("wal")? {
        None => Ok(0),
        Some(v) => {
            v.value().try_into().map(u64::from_be_bytes).map_err(|_| {
                LedgerError::Storage("the ledger log generation entry is corrupt".into())
            })
        }
    }
}

fn read_head(db: &Database) -> Result<Head, LedgerError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Head::GENESIS),
        Err(e) => return Err(e.into()),
    };
    match meta.get("head")? {
        None => Ok(Head::GENESIS),
        Some(v) => Head::decode(v.value())
            .ok_or_else(|| LedgerError::Storage("the chain head entry is corrupt".into())),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    /// The chain head including everything logged.
    head: Head,
    wal: wal::Wal,
    overlay: Arc<Mutex<Overlay>>,
    /// The encoded records of a group and the log entry, reused from group
    /// to group: fresh buffers per group cost page faults under load.
    block: Vec<u8>,
    entry: Vec<u8>,
    /// Since when a checkpoint is wanted: when the first group of the
    /// current generation was logged, or when a checkpoint failed.
    pending_since: Option<Instant>,
    /// To the checkpoint thread; `None` once it is told to stop.
    jobs: Option<mpsc::Sender<CheckpointJob>>,
    /// Its results, one per job.
    done: mpsc::Receiver<Result<(), LedgerError>>,
    checkpointer: Option<JoinHandle<()>>,
    /// A job is with the checkpoint thread.
    checkpointing: bool,
    #[cfg(test)]
    hold_checkpoints: bool,
}

/// How often a writer that is due for a checkpoint looks again while the
/// previous one is still running.
const CHECKPOINT_POLL: Duration = Duration::from_millis(5);

impl Writer {
    /// Takes every queued commit into one group, until stopped; then
    /// checkpoints what is logged.
    fn run(mut self, rx: &mpsc::Receiver<WriterMsg>) {
        let mut stop = false;
        // Only a test's abandon skips the last checkpoint.
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut last_checkpoint = true;
        while !stop {
            let msg = match self.checkpoint_due_in() {
                Some(due) => match rx.recv_timeout(due) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.maybe_checkpoint();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            let first = match msg {
                WriterMsg::Commit(c) => c,
                WriterMsg::Stop => break,
                #[cfg(test)]
                WriterMsg::Abandon => {
                    last_checkpoint = false;
                    break;
                }
                #[cfg(test)]
                WriterMsg::Hook(hook) => {
                    self.hook(hook);
                    continue;
                }
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(WriterMsg::Commit(c)) => group.push(c),
                    Ok(WriterMsg::Stop) => {
                        stop = true;
                        break;
                    }
                    #[cfg(test)]
                    Ok(WriterMsg::Abandon) => {
                        stop = true;
                        last_checkpoint = false;
                        break;
                    }
                    #[cfg(test)]
                    Ok(WriterMsg::Hook(hook)) => self.hook(hook),
                    Err(_) => break,
                }
            }
            self.commit(group);
            // Also checked here: a steady stream of commits never lets the
            // receive above time out.
            self.maybe_checkpoint();
        }
        if last_checkpoint && let Err(e) = self.checkpoint_now() {
            tracing::error!(error = %e, "last ledger checkpoint failed; the log keeps the groups");
        }
        // The checkpoint thread finishes its job, if any, and ends.
        self.jobs = None;
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
        // Drain anything that raced with Stop.
        while let Ok(WriterMsg::Commit(c)) = rx.try_recv() {
            let _ = c.reply.send(Err(LedgerError::Closed));
        }
    }

    #[cfg(test)]
    fn hook(&mut self, hook: TestHook) {
        match hook {
            TestHook::HoldCheckpoints => self.hold_checkpoints = true,
            TestHook::FailLogWrites(n) => self.wal.failures = n,
        }
    }

    fn commit(&mut self, mut group: Vec<CommitRequest>) {
        let started = Instant::now();
        let n = group.len();
        match self.log_group(&mut group) {
            Ok(receipts) => {
                crate::metrics::global().record_ledger_commit(n, started.elapsed());
                tracing::trace!(
                    group_size = n,
                    head = self.head.seq,
                    micros = started.elapsed().as_micros() as u64,
                    "ledger commit"
                );
                for (c, receipt) in group.into_iter().zip(receipts) {
                    let _ = c.reply.send(Ok(receipt));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, group_size = n, "ledger commit failed");
                for c in group {
                    let _ = c.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Makes a group durable in the log (or, when it is larger than a log
    /// region, straight in redb) and visible to readers.
    fn log_group(
        &mut self,
        group: &mut [CommitRequest],
    ) -> Result<Vec<CommitReceipt>, LedgerError> {
        let before = self.head;
        let (after, receipts) = encode_group(before, group, &mut self.block);
        wal::begin_entry(&mut self.entry, &before, &after, &self.block);
        let writes = group.iter().map(|c| c.kv.len()).sum();
        wal::put_kv(
            &mut self.entry,
            writes,
            group
                .iter()
                .flat_map(|c| c.kv.iter().map(|(k, w)| (&*c.plugin, k.as_str(), w))),
        );
        let mut layer = Layer::default();
        layer.add_block(before.seq + 1, &self.block, after);
        for c in group.iter_mut() {
            for (key, write) in std::mem::take(&mut c.kv) {
                let value = match write {
                    KvWrite::Set(v) => Some(v),
                    KvWrite::Delete => None,
                };
                layer.add_kv(&c.plugin, key, value);
            }
        }
        if wal::Wal::ever_fits(self.entry.len()) {
            if !self.wal.fits(self.entry.len()) {
                // The other region is free once the previous checkpoint
                // is stored; this one is stored while logging goes on.
                self.settle()?;
                self.rotate()?;
            }
            // On failure the log erases the entry (see `Wal::append`).
            self.wal.append(&mut self.entry).map_err(log_failed)?;
            let mut overlay = self.overlay.lock().expect("ledger overlay lock");
            overlay.current.absorb(layer);
            self.pending_since.get_or_insert(Instant::now());
        } else {
            // Larger than a whole region (huge key-value writes): stored
            // straight in redb, after everything logged before it.
            self.checkpoint_now()?;
            let generation = self.wal.generation + 1;
            store(&self.db, &layer, generation)?;
            self.wal.restart(generation).map_err(log_failed)?;
        }
        self.head = after;
        Ok(receipts)
    }

    /// How long until a checkpoint is due; `None` when none is wanted.
    fn checkpoint_due_in(&mut self) -> Option<Duration> {
        self.collect_done();
        let since = self.pending_since?;
        let due = (since + CHECKPOINT_AFTER).saturating_duration_since(Instant::now());
        Some(if self.checkpointing {
            due.max(CHECKPOINT_POLL)
        } else {
            due
        })
    }

    /// Takes the results of finished checkpoint jobs, without waiting.
    fn collect_done(&mut self) {
        while let Ok(result) = self.done.try_recv() {
            self.checkpoint_finished(result);
        }
    }

    fn checkpoint_finished(&mut self, result: Result<(), LedgerError>) {
        self.checkpointing = false;
        if let Err(e) = result {
            tracing::error!(error = %e, "ledger checkpoint failed; the log keeps the groups");
            // Retried later, not in a tight loop.
            self.pending_since = Some(Instant::now());
        }
    }

    /// Starts a checkpoint when one is due and none is running: of the
    /// current generation, or again of a frozen one whose checkpoint
    /// failed.
    fn maybe_checkpoint(&mut self) {
        self.collect_done();
        let due = self
            .pending_since
            .is_some_and(|since| since.elapsed() >= CHECKPOINT_AFTER)
            || self.wal.used() >= CHECKPOINT_BYTES;
        if !due || self.checkpointing {
            return;
        }
        let failed = self
            .overlay
            .lock()
            .expect("ledger overlay lock")
            .applying
            .clone();
        // A frozen generation is stored with the current one as redb's
        // generation to replay from: the writer rotates again only once
        // it is stored.
        match failed {
            Some(layer) => {
                self.pending_since = Some(Instant::now());
                self.send_job(layer, self.wal.generation);
            }
            None if self.wal.used() > 0 => {
                if let Err(e) = self.rotate() {
                    tracing::error!(error = %e, "ledger checkpoint not started");
                    self.pending_since = Some(Instant::now());
                }
            }
            None => self.pending_since = None,
        }
    }

    /// Freezes the current generation for a checkpoint and starts logging
    /// the next one in the other region. Only when no frozen generation is
    /// left to store (after [`Self::settle`], or when `applying` is empty
    /// and no job runs): the other region still holds the previous one
    /// until it is stored.
    fn rotate(&mut self) -> Result<(), LedgerError> {
        let generation = self.wal.generation + 1;
        self.wal.restart(generation).map_err(log_failed)?;
        let frozen = {
            let mut overlay = self.overlay.lock().expect("ledger overlay lock");
            debug_assert!(overlay.applying.is_none() && !self.checkpointing);
            let frozen = Arc::new(std::mem::take(&mut overlay.current));
            overlay.applying = Some(frozen.clone());
            frozen
        };
        self.pending_since = None;
        self.send_job(frozen, generation);
        Ok(())
    }

    fn send_job(&mut self, layer: Arc<Layer>, generation: u64) {
        self.checkpointing = true;
        #[cfg(test)]
        if self.hold_checkpoints {
            return;
        }
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(CheckpointJob { layer, generation }).is_ok());
        if !sent {
            // No checkpoint thread: `settle` stores the layer itself.
            self.checkpointing = false;
        }
    }

    /// Waits for a running checkpoint, then stores a frozen generation
    /// that is still not in redb (its checkpoint failed) on this thread.
    /// Afterwards both log regions but the current one are free.
    fn settle(&mut self) -> Result<(), LedgerError> {
        if self.checkpointing {
            #[cfg(test)]
            if self.hold_checkpoints {
                return Err(LedgerError::Storage("checkpoints are held".into()));
            }
            let result = self
                .done
                .recv()
                .unwrap_or_else(|_| Err(LedgerError::Storage("checkpoint thread ended".into())));
            self.checkpoint_finished(result);
        }
        let failed = self
            .overlay
            .lock()
            .expect("ledger overlay lock")
            .applying
            .clone();
        if let Some(layer) = failed {
            store_checkpoint(&self.db, &self.overlay, &layer, self.wal.generation)?;
        }
        Ok(())
    }

    /// Moves everything logged into redb before returning.
    fn checkpoint_now(&mut self) -> Result<(), LedgerError> {
        self.settle()?;
        self.rotate()?;
        self.settle()
    }
}

/// The checkpoint thread: stores each job's layer, reporting each result,
/// until the writer stops sending.
fn run_checkpoints(
    db: &Database,
    overlay: &Mutex<Overlay>,
    jobs: &mpsc::Receiver<CheckpointJob>,
    done: &mpsc::Sender<Result<(), LedgerError>>,
) {
    while let Ok(job) = jobs.recv() {
        let result = store_checkpoint(db, overlay, &job.layer, job.generation);
        if done.send(result).is_err() {
            break;
        }
    }
}

/// Stores a frozen generation in one durable redb transaction with
/// `generation` as the one to replay from, then stops showing it from the
/// overlay (redb has it now).
fn store_checkpoint(
    db: &Database,
    overlay: &Mutex<Overlay>,
    layer: &Arc<Layer>,
    generation: u64,
) -> Result<(), LedgerError> {
    let started = Instant::now();
    store(db, layer, generation)?;
    let mut overlay = overlay.lock().expect("ledger overlay lock");
    if overlay
        .applying
        .as_ref()
        .is_some_and(|a| Arc::ptr_eq(a, layer))
    {
        overlay.applying = None;
    }
    tracing::trace!(
        blocks = layer.blocks.len(),
        micros = started.elapsed().as_micros() as u64,
        "ledger checkpoint"
    );
    Ok(())
}

/// Numbers and chains the records of a group into `block` (entries as
/// stored in redb). Returns the chain head after them and each call's
/// receipt.
fn encode_group(
    head: Head,
    group: &[CommitRequest],
    block: &mut Vec<u8>,
) -> (Head, Vec<CommitReceipt>) {
    let mut cursor = head;
    let mut receipts = Vec::with_capacity(group.len());
    block.clear();
    // Keep at most 4 MiB between groups.
    if block.capacity() > 4 << 20 {
        block.shrink_to(4 << 20);
    }
    let now = now_ms().to_be_bytes();
    for c in group {
        let first = cursor.seq + 1;
        // The caller encoded the entries; fill in sequence numbers, times
        // still unset, and the chain.
        let mut entry = block.len();
        block.extend_from_slice(&c.records.bytes);
        while entry < block.len() {
            let len = usize::from(u16::from_be_bytes([block[entry], block[entry + 1]]));
            let encoding = entry + ENTRY_HEAD..entry + ENTRY_HEAD + len;
            let seq = cursor.seq + 1;
            let e = &mut block[encoding.clone()];
            e[SEQ_AT].copy_from_slice(&seq.to_be_bytes());
            if e[TIME_AT] == [0; 8] {
                e[TIME_AT].copy_from_slice(&now);
            }
            let hash = UsageRecord::chain_hash(&cursor.hash, &block[encoding.clone()]);
            block[entry + 2..entry + ENTRY_HEAD].copy_from_slice(&hash);
            cursor = Head { seq, hash };
            entry = encoding.end;
        }
        let seqs = (cursor.seq >= first).then_some((first, cursor.seq));
        receipts.push(CommitReceipt {
            seqs,
            group_size: group.len(),
        });
    }
    (cursor, receipts)
}

/// Splits a block into (hash, encoding) entries.
fn block_entries(block: &[u8]) -> impl Iterator<Item = Result<(Hash, &[u8]), DecodeError>> {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 34 {
            rest = &[];
            return Some(Err(DecodeError("truncated block entry")));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < 34 + len {
            rest = &[];
            return Some(Err(DecodeError("truncated block entry")));
        }
        let hash: Hash = rest[2..34].try_into().expect("32 bytes");
        let encoding = &rest[34..34 + len];
        rest = &rest[34 + len..];
        Some(Ok((hash, encoding)))
    })
}

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
        Ok(Self { db })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(unit: &str, q: u64) -> NewRecord {
        NewRecord {
            time_ms: 1,
            unit: unit.into(),
            quantity: q,
            source: Source::Plugin,
            subject: None,
            evidence: None,
        }
    }

    /// Verifies the ledger in `dir` (no broken link) and counts its records.
    fn verified_records(dir: &Path) -> u64 {
        let report = LedgerReader::open(dir).unwrap().verify().unwrap();
        assert_eq!(report.broken, None);
        report.records
    }

    fn effects(records: Vec<NewRecord>) -> CallEffects {
        CallEffects {
            records,
            kv: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn concurrent_commits_are_numbered_without_gaps_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let l = ledger.clone();
            tasks.push(tokio::spawn(async move {
                l.commit("p".into(), effects(vec![rec("u", i), rec("v", 1)]))
                    .await
                    .unwrap()
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            let (a, b) = t.await.unwrap().seqs.unwrap();
            assert_eq!(b, a + 1, "a call's records are contiguous");
            seen.push(a);
        }
        seen.sort();
        assert_eq!(seen, (0..64).map(|i| 1 + 2 * i).collect::<Vec<_>>());
        ledger.close();
        drop(ledger);
        let reader = LedgerReader::open(dir.path()).unwrap();
        let report = reader.verify().unwrap();
        assert_eq!(report.records, 128);
        assert_eq!(report.broken, None);
        let summary = reader.summary().unwrap();
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0].quantity, (0..64).sum::<u64>() as u128);
        assert_eq!(summary[1].records, 64);
    }

    #[tokio::test]
    async fn records_encoded_by_the_caller_are_numbered_stamped_and_chained_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut records = EncodedRecords::with_capacity(2);
        records.push_host("p", "bytes-in", 10, "req-1").unwrap();
        records.push("p", &rec("u", 5)).unwrap();
        assert!(
            records.decode().iter().all(|r| r.seq == 0),
            "numbered at commit"
        );
        let receipt = ledger
            .commit_encoded("p".into(), records, BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(receipt.seqs, Some((1, 2)));
        let mut got = Vec::new();
        ledger
            .scan_from(1, |_, r| {
                got.push(r);
                true
            })
            .unwrap();
        assert_eq!(got[0].unit, "bytes-in");
        assert_eq!(got[0].subject.as_deref(), Some("req-1"));
        assert!(got[0].time_ms > 1_700_000_000_000, "stamped at commit");
        assert_eq!((got[1].seq, got[1].time_ms), (2, 1), "a given time is kept");
        // An oversized record fails its own call, before it reaches the
        // writer; other calls go on.
        let mut huge = rec("u", 1);
        huge.subject = Some("s".repeat(u16::MAX as usize));
        huge.evidence = Some(vec![0; u16::MAX as usize]);
        let e = ledger
            .commit("p".into(), effects(vec![huge]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger than 64 KiB"), "{e}");
        ledger
            .commit("p".into(), effects(vec![rec("u", 6)]))
            .await
            .unwrap();
        ledger.close();
        drop(ledger);
        assert_eq!(verified_records(dir.path()), 3);
    }

    #[tokio::test]
    async fn kv_writes_commit_with_records_and_are_namespaced() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut e = effects(vec![]);
        e.kv.insert("a/1".into(), KvWrite::Set(b"x".to_vec()));
        e.kv.insert("a/2".into(), KvWrite::Set(b"y".to_vec()));
        e.kv.insert("b".into(), KvWrite::Set(b"z".to_vec()));
        ledger.commit("one".into(), e).await.unwrap();
        assert_eq!(ledger.kv_get("one", "a/1").unwrap(), Some(b"x".to_vec()));
        assert_eq!(ledger.kv_get("two", "a/1").unwrap(), None);
        assert_eq!(ledger.kv_list("one", "a/", 10).unwrap(), vec!["a/1", "a/2"]);
        assert_eq!(ledger.kv_list("one", "", 2).unwrap(), vec!["a/1", "a/2"]);
        assert!(ledger.kv_list("two", "", 10).unwrap().is_empty());
        let mut e = effects(vec![]);
        e.kv.insert("a/1".into(), KvWrite::Delete);
        ledger.commit("one".into(), e).await.unwrap();
        assert_eq!(ledger.kv_get("one", "a/1").unwrap(), None);
    }

    #[tokio::test]
    async fn reopening_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            let ledger = Ledger::open(dir.path()).unwrap();
            ledger
                .commit("p".into(), effects(vec![rec("u", 1)]))
                .await
                .unwrap();
            ledger.close();
        }
        assert_eq!(verified_records(dir.path()), 3);
    }

    #[tokio::test]
    async fn verify_names_the_first_altered_record() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for q in 0..5 {
            ledger
                .commit("p".into(), effects(vec![rec("u", q)]))
                .await
                .unwrap();
        }
        ledger.close();
        drop(ledger);
        let reader = LedgerReader::open(dir.path()).unwrap();
        // Change the quantity of record 3 (last 8 bytes before source + 2 flags).
        reader
            .tamper(3, |v| {
                let n = v.len();
                v[n - 4] ^= 1;
            })
            .unwrap();
        let report = reader.verify().unwrap();
        let broken = report.broken.unwrap();
        assert_eq!(broken.seq, 3);
        assert!(broken.problem.contains("altered"), "{}", broken.problem);
    }

    fn records_of(ledger: &Ledger, from: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        ledger
            .scan_from(from, |_, r| {
                seqs.push(r.seq);
                true
            })
            .unwrap();
        seqs
    }

    #[tokio::test]
    async fn logged_groups_are_visible_before_and_after_their_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut e = effects(vec![rec("u", 1), rec("u", 2)]);
        e.kv.insert("k/1".into(), KvWrite::Set(b"a".to_vec()));
        e.kv.insert("k/2".into(), KvWrite::Set(b"b".to_vec()));
        ledger.commit("p".into(), e).await.unwrap();
        // Logged, not yet checkpointed: readers see it.
        assert!(ledger.overlay().head().is_some(), "still in the log");
        assert_eq!(ledger.head().unwrap().seq, 2);
        assert_eq!(ledger.kv_get("p", "k/1").unwrap(), Some(b"a".to_vec()));
        assert_eq!(records_of(&ledger, 1), vec![1, 2]);
        // Checkpointed: the same from redb.
        // (Polled: a loaded machine may run the checkpoint late.)
        let deadline = Instant::now() + Duration::from_secs(10);
        while ledger.overlay().head().is_some() && Instant::now() < deadline {
            tokio::time::sleep(CHECKPOINT_AFTER).await;
        }
        assert!(ledger.overlay().head().is_none(), "checkpointed");
        assert_eq!(ledger.head().unwrap().seq, 2);
        assert_eq!(ledger.kv_list("p", "k/", 10).unwrap(), vec!["k/1", "k/2"]);
        // A logged delete hides a stored key; a logged set adds one.
        let mut e = effects(vec![rec("u", 3)]);
        e.kv.insert("k/1".into(), KvWrite::Delete);
        e.kv.insert("k/0".into(), KvWrite::Set(b"z".to_vec()));
        ledger.commit("p".into(), e).await.unwrap();
        assert_eq!(ledger.kv_get("p", "k/1").unwrap(), None);
        assert_eq!(ledger.kv_list("p", "k/", 10).unwrap(), vec!["k/0", "k/2"]);
        assert_eq!(ledger.kv_list("p", "k/", 1).unwrap(), vec!["k/0"]);
        assert_eq!(ledger.kv_list("q", "k/", 10).unwrap(), Vec::<String>::new());
        // A scan spans redb and the log, without repeats.
        assert_eq!(records_of(&ledger, 1), vec![1, 2, 3]);
        assert_eq!(records_of(&ledger, 3), vec![3]);
    }

    #[tokio::test]
    async fn a_crash_loses_no_acknowledged_commit() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for i in 0..10u64 {
            let mut e = effects(vec![rec("u", i)]);
            e.kv.insert(format!("k/{i}"), KvWrite::Set(vec![i as u8]));
            ledger.commit("p".into(), e).await.unwrap();
        }
        ledger.abandon();
        drop(ledger);
        // The reader replays the log, as a restarted gateway would.
        assert_eq!(verified_records(dir.path()), 10);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.kv_get("p", "k/9").unwrap(), Some(vec![9]));
        assert_eq!(ledger.kv_list("p", "k/", 100).unwrap().len(), 10);
        // The chain goes on from there, across another crash.
        ledger
            .commit("p".into(), effects(vec![rec("u", 10)]))
            .await
            .unwrap();
        ledger.abandon();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.head().unwrap().seq, 11);
        ledger.close();
        drop(ledger);
        assert_eq!(verified_records(dir.path()), 11);
    }

    /// Commits record `i` with key `k/<i>` set to `value`.
    async fn commit_numbered(
        ledger: &Ledger,
        i: u64,
        value: Vec<u8>,
    ) -> Result<CommitReceipt, LedgerError> {
        let mut e = effects(vec![rec("u", i)]);
        e.kv.insert(format!("k/{i}"), KvWrite::Set(value));
        ledger.commit("p".into(), e).await
    }

    /// Waits until the writer has frozen a generation for a checkpoint.
    async fn until_frozen(ledger: &Ledger) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ledger.overlay().applying.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            ledger.overlay().applying.is_some(),
            "a generation is frozen"
        );
    }

    #[tokio::test]
    async fn a_crash_while_a_checkpoint_runs_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.hook(TestHook::HoldCheckpoints);
        commit_numbered(&ledger, 0, vec![0]).await.unwrap();
        // The first generation is frozen for a checkpoint that never
        // commits, while the next groups go to the log's other region.
        until_frozen(&ledger).await;
        for i in 1..4u64 {
            commit_numbered(&ledger, i, vec![i as u8]).await.unwrap();
        }
        assert!(ledger.overlay().current.head.is_some());
        assert_eq!(ledger.kv_list("p", "k/", 10).unwrap().len(), 4);
        assert_eq!(ledger.kv_get("p", "k/0").unwrap(), Some(vec![0]));
        assert_eq!(records_of(&ledger, 1), vec![1, 2, 3, 4]);
        ledger.abandon();
        drop(ledger);
        // Both generations are replayed, in order.
        assert_eq!(verified_records(dir.path()), 4);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.kv_get("p", "k/0").unwrap(), Some(vec![0]));
        assert_eq!(ledger.kv_get("p", "k/3").unwrap(), Some(vec![3]));
        commit_numbered(&ledger, 4, vec![4]).await.unwrap();
        ledger.close();
        drop(ledger);
        assert_eq!(verified_records(dir.path()), 5);
    }

    #[tokio::test]
    async fn a_full_log_region_never_overwrites_a_generation_not_yet_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.hook(TestHook::HoldCheckpoints);
        commit_numbered(&ledger, 0, vec![0]).await.unwrap();
        until_frozen(&ledger).await;
        // 1 MiB values fill the other region within a few commits; the
        // frozen generation is still in the first one, so the commit that
        // does not fit fails instead of overwriting it.
        let value = |i: u64| vec![i as u8; 1 << 20];
        let mut acknowledged = vec![0];
        let mut refused = None;
        for i in 1..8u64 {
            match commit_numbered(&ledger, i, value(i)).await {
                Ok(_) => acknowledged.push(i),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.expect("the region fills up");
        assert!(refused.to_string().contains("held"), "{refused}");
        assert!(acknowledged.len() >= 3, "{acknowledged:?}");
        ledger.abandon();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.head().unwrap().seq, acknowledged.len() as u64);
        for i in acknowledged.into_iter().skip(1) {
            assert_eq!(
                ledger.kv_get("p", &format!("k/{i}")).unwrap(),
                Some(value(i))
            );
        }
        // With checkpoints running again, regions fill and are freed in
        // turn (a commit waits for the checkpoint when it must).
        for i in 100..112u64 {
            commit_numbered(&ledger, i, value(i)).await.unwrap();
        }
        let head = ledger.head().unwrap().seq;
        ledger.close();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.head().unwrap().seq, head);
        assert_eq!(ledger.kv_get("p", "k/111").unwrap(), Some(value(111)));
        ledger.close();
        drop(ledger);
        assert_eq!(verified_records(dir.path()), head);
    }

    #[tokio::test]
    async fn a_torn_last_log_entry_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for i in 0..3u64 {
            ledger
                .commit("p".into(), effects(vec![rec("u", i)]))
                .await
                .unwrap();
        }
        ledger.abandon();
        drop(ledger);
        // Damage the last byte of the third entry (the log is otherwise
        // zeros after it).
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let end = bytes.iter().rposition(|b| *b != 0).unwrap();
        bytes[end] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.head().unwrap().seq, 2, "the torn group is gone");
        // Its place is taken by the next commit; the old bytes never return.
        ledger
            .commit("p".into(), effects(vec![rec("v", 7)]))
            .await
            .unwrap();
        ledger.abandon();
        drop(ledger);
        let reader = LedgerReader::open(dir.path()).unwrap();
        let report = reader.verify().unwrap();
        assert_eq!((report.records, report.broken), (3, None));
        let summary = reader.summary().unwrap();
        assert_eq!(summary.iter().map(|t| t.records).sum::<u64>(), 3);
        assert!(summary.iter().any(|t| t.unit == "v" && t.quantity == 7));
    }

    #[tokio::test]
    async fn a_group_whose_log_write_failed_is_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        commit_numbered(&ledger, 0, vec![0]).await.unwrap();
        // Checkpoints never commit, and the next group's entry reaches the
        // file whole but its sync fails, and so does the first erasure.
        ledger.hook(TestHook::HoldCheckpoints);
        ledger.hook(TestHook::FailLogWrites(2));
        let failed = commit_numbered(&ledger, 1, vec![1]).await.unwrap_err();
        assert!(failed.to_string().contains("injected"), "{failed}");
        // The next group is logged in its place (erasing it first).
        commit_numbered(&ledger, 2, vec![2]).await.unwrap();
        ledger.abandon();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.head().unwrap().seq, 2);
        assert_eq!(ledger.kv_get("p", "k/1").unwrap(), None);
        assert_eq!(ledger.kv_get("p", "k/2").unwrap(), Some(vec![2]));
        assert_eq!(records_of(&ledger, 1), vec![1, 2]);
        ledger.close();
        drop(ledger);
        assert_eq!(verified_records(dir.path()), 2);
    }

    #[tokio::test]
    async fn a_failed_log_entry_is_erased_before_the_log_changes_region() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        commit_numbered(&ledger, 0, vec![0]).await.unwrap();
        // A group fails and its entry cannot be erased yet; the next group
        // does not fit the region (only in an empty one) and moves the log
        // to the other one, leaving the failed entry behind in the first.
        ledger.hook(TestHook::HoldCheckpoints);
        ledger.hook(TestHook::FailLogWrites(2));
        commit_numbered(&ledger, 1, vec![1]).await.unwrap_err();
        let big = vec![9u8; wal::REGION_BYTES as usize - 300];
        commit_numbered(&ledger, 2, big.clone()).await.unwrap();
        assert!(
            ledger.overlay().applying.is_some(),
            "the first region was frozen for a checkpoint (held)"
        );
        ledger.abandon();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.head().unwrap().seq, 2);
        assert_eq!(ledger.kv_get("p", "k/1").unwrap(), None);
        assert_eq!(ledger.kv_get("p", "k/2").unwrap(), Some(big));
        ledger.close();
        drop(ledger);
        assert_eq!(verified_records(dir.path()), 2);
    }

    #[tokio::test]
    async fn a_group_larger_than_the_log_goes_straight_to_redb() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .commit("p".into(), effects(vec![rec("u", 1)]))
            .await
            .unwrap();
        let mut e = effects(vec![rec("u", 2)]);
        let big = vec![7u8; wal::REGION_BYTES as usize + 1];
        e.kv.insert("big".into(), KvWrite::Set(big.clone()));
        let receipt = ledger.commit("p".into(), e).await.unwrap();
        assert_eq!(receipt.seqs, Some((2, 2)));
        assert_eq!(ledger.kv_get("p", "big").unwrap(), Some(big));
        ledger
            .commit("p".into(), effects(vec![rec("u", 3)]))
            .await
            .unwrap();
        ledger.abandon();
        drop(ledger);
        assert_eq!(verified_records(dir.path()), 3);
    }

    #[tokio::test]
    async fn a_second_open_is_refused_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _ledger = Ledger::open(dir.path()).unwrap();
        let e = LedgerReader::open(dir.path()).err().unwrap();
        assert!(matches!(e, LedgerError::InUse { .. }), "{e}");
    }
}
