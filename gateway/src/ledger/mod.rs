//! The usage ledger: hash-chained usage records and the plugins' key-value
//! data, in one redb database in the data directory.
//!
//! Guarantees:
//! - `commit` returns only after the call's records and key-value writes are
//!   durable (fsynced) — all of them or none of them.
//! - Concurrent commits are grouped: one writer thread takes every pending
//!   commit into one transaction, so N concurrent calls cost one fsync.
//! - Records are numbered from 1 without gaps and chained
//!   (`hash = sha256(prev_hash || encoding)`); a crash at any moment leaves
//!   the last committed transaction intact, so the chain never breaks.

mod record;
mod scan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use record::{
    DecodeError, FORMAT_VERSION, GENESIS_HASH, Hash, MAX_EVIDENCE_BYTES, MAX_SUBJECT_BYTES,
    NewRecord, Source, UsageRecord,
};

/// Records are stored in blocks, one block per commit group:
/// seq of the block's first record -> entry*, where
/// entry = u16 length of the encoding (big-endian) || hash (32) || encoding.
/// One insert per group keeps the writer cheap under concurrency.
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("usage_blocks");
/// "head" -> last seq (8, big-endian) || last hash (32)
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// (plugin, key) -> value
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("plugin_kv");

/// File name of the ledger inside the data directory.
pub const LEDGER_FILE: &str = "ledger.redb";

/// Most commits taken into one transaction.
const MAX_GROUP: usize = 1024;

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
    plugin: Arc<str>,
    effects: CallEffects,
    reply: tokio::sync::oneshot::Sender<Result<CommitReceipt, LedgerError>>,
}

enum WriterMsg {
    Commit(CommitRequest),
    Stop,
}

/// The open ledger. Cheap to share (`Arc`).
pub struct Ledger {
    db: Arc<Database>,
    path: PathBuf,
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

    fn encode(&self) -> [u8; 40] {
        let mut out = [0; 40];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    fn decode(b: &[u8]) -> Option<Head> {
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
        let head = {
            let txn = db.begin_write()?;
            txn.open_table(BLOCKS)?;
            txn.open_table(KV)?;
            let head = {
                let meta = txn.open_table(META)?;
                meta.get("head")?.map(|v| Head::decode(v.value()))
            };
            txn.commit()?;
            match head {
                None => Head::GENESIS,
                Some(Some(h)) => h,
                Some(None) => {
                    return Err(LedgerError::Open {
                        path,
                        message: "the chain head entry is corrupt".into(),
                    });
                }
            }
        };
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(&writer_db, head, &rx))
            .map_err(|e| LedgerError::Open {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(Arc::new(Self {
            db,
            path,
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
        if effects.is_empty() {
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
                plugin,
                effects,
                reply,
            }))
            .map_err(|_| LedgerError::Closed)?;
        }
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// The committed value of a plugin's key.
    pub fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, LedgerError> {
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
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        let mut keys = Vec::new();
        for entry in table.range((plugin, prefix)..)? {
            let (k, _) = entry?;
            let (p, key) = k.value();
            if p != plugin || !key.starts_with(prefix) || keys.len() >= limit {
                break;
            }
            keys.push(key.to_string());
        }
        Ok(keys)
    }

    /// The chain head as committed.
    pub fn head(&self) -> Result<Head, LedgerError> {
        read_head(&self.db)
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

/// The writer: takes every queued commit into one transaction.
fn writer_loop(db: &Database, mut head: Head, rx: &mpsc::Receiver<WriterMsg>) {
    let mut stop = false;
    // The encoded records of a group, reused from group to group: a fresh
    // buffer per transaction costs page faults under load.
    let mut block = Vec::new();
    while !stop {
        let first = match rx.recv() {
            Ok(WriterMsg::Commit(c)) => c,
            Ok(WriterMsg::Stop) | Err(_) => break,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(WriterMsg::Commit(c)) => group.push(c),
                Ok(WriterMsg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let n = group.len();
        match write_group(db, head, &group, &mut block) {
            Ok((new_head, receipts)) => {
                head = new_head;
                crate::metrics::global().record_ledger_commit(n, started.elapsed());
                tracing::trace!(
                    group_size = n,
                    head = head.seq,
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
                // The in-memory head is unchanged; re-read it in case the
                // failure happened after a partial success elsewhere.
                if let Ok(h) = read_head(db) {
                    head = h;
                }
            }
        }
    }
    // Drain anything that raced with Stop.
    while let Ok(WriterMsg::Commit(c)) = rx.try_recv() {
        let _ = c.reply.send(Err(LedgerError::Closed));
    }
}

fn write_group(
    db: &Database,
    head: Head,
    group: &[CommitRequest],
    block: &mut Vec<u8>,
) -> Result<(Head, Vec<CommitReceipt>), LedgerError> {
    let txn = db.begin_write()?;
    let mut cursor = head;
    let mut receipts = Vec::with_capacity(group.len());
    block.clear();
    // Keep at most 4 MiB between transactions.
    if block.capacity() > 4 << 20 {
        block.shrink_to(4 << 20);
    }
    let now = now_ms();
    {
        let mut kv = txn.open_table(KV)?;
        for c in group {
            let first = cursor.seq + 1;
            for r in &c.effects.records {
                // entry = u16 length || hash || encoding; the length and hash
                // are filled in once the encoding is written in place.
                let entry = block.len();
                block.extend_from_slice(&[0; 34]);
                let seq = cursor.seq + 1;
                let time_ms = if r.time_ms == 0 { now } else { r.time_ms };
                record::encode_into(
                    block,
                    seq,
                    time_ms,
                    &c.plugin,
                    &r.unit,
                    r.quantity,
                    r.source,
                    r.subject.as_deref(),
                    r.evidence.as_deref(),
                );
                let encoding = &block[entry + 34..];
                let len = u16::try_from(encoding.len())
                    .map_err(|_| LedgerError::Storage("a record is larger than 64 KiB".into()))?;
                let hash = UsageRecord::chain_hash(&cursor.hash, encoding);
                block[entry..entry + 2].copy_from_slice(&len.to_be_bytes());
                block[entry + 2..entry + 34].copy_from_slice(&hash);
                cursor = Head { seq, hash };
            }
            for (key, write) in &c.effects.kv {
                match write {
                    KvWrite::Set(v) => {
                        kv.insert((&*c.plugin, key.as_str()), v.as_slice())?;
                    }
                    KvWrite::Delete => {
                        kv.remove((&*c.plugin, key.as_str()))?;
                    }
                }
            }
            let seqs = (cursor.seq >= first).then_some((first, cursor.seq));
            receipts.push(CommitReceipt {
                seqs,
                group_size: group.len(),
            });
        }
        if !block.is_empty() {
            let mut blocks = txn.open_table(BLOCKS)?;
            blocks.insert(head.seq + 1, block.as_slice())?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert("head", cursor.encode().as_slice())?;
    }
    txn.commit()?;
    Ok((cursor, receipts))
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
        Ok(Self {
            db: open_db(&path, false)?,
        })
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
        let report = LedgerReader::open(dir.path()).unwrap().verify().unwrap();
        assert_eq!((report.records, report.broken), (3, None));
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

    #[tokio::test]
    async fn a_second_open_is_refused_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _ledger = Ledger::open(dir.path()).unwrap();
        let e = LedgerReader::open(dir.path()).err().unwrap();
        assert!(matches!(e, LedgerError::InUse { .. }), "{e}");
    }
}
