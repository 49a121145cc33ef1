//! A content-addressed blob store, one per plugin, in its own directory
//! under the data directory. The directory is opened with cap-std, so no
//! name can reach outside it (no `..`, no absolute paths, no symlinks out),
//! and names are digests checked before any file access.
//!
//! Guarantees: a blob file exists only if its bytes hashed to its digest
//! when written (temp file, fsync, rename); the stored bytes never exceed
//! the quota (space is reserved before a write and released if it fails);
//! concurrent fetches of one digest can be serialized with [`BlobStore::flight`].

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest as _, Sha256};

/// Subdirectory of stored blobs, named by hex digest.
const BLOBS: &str = "sha256";
/// Subdirectory of writes in progress; emptied on open.
const TMP: &str = "tmp";

/// A validated `sha256:<64 lower-case hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobDigest(String);

impl BlobDigest {
    /// Parses `sha256:<64 lower-case hex digits>`; the error says what is
    /// wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(format!("`{}` must start with `sha256:`", truncate(s)));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "`{}` must be `sha256:` followed by 64 lower-case hex digits",
                truncate(s)
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    fn file(&self) -> PathBuf {
        Path::new(BLOBS).join(self.hex())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storing {size} bytes would exceed the quota; free {needed} bytes first")]
    QuotaExceeded { size: u64, needed: u64 },
    #[error("the blob is larger than the whole quota of {quota} bytes")]
    TooLarge { quota: u64 },
    #[error("the bytes hash to {actual}, not to the expected digest")]
    DigestMismatch { actual: String },
    #[error("blob store I/O: {0}")]
    Io(#[from] io::Error),
}

/// Bytes and blobs stored, and the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    pub bytes: u64,
    pub count: u64,
    pub quota: u64,
}

#[derive(Debug, Default)]
struct Accounting {
    stored: u64,
    count: u64,
    /// Space held by writes in progress.
    reserved: u64,
}

/// Largest blob [`BlobStore::open_hot`] keeps in memory.
pub const HOT_BLOB_BYTES: u64 = 64 << 10;
/// Most bytes of blobs a store keeps in memory.
const HOT_BUDGET_BYTES: usize = 8 << 20;

/// One plugin's blob store.
pub struct BlobStore {
    dir: Dir,
    path: PathBuf,
    quota: u64,
    accounting: Mutex<Accounting>,
    flights: Mutex<HashMap<BlobDigest, Arc<tokio::sync::Mutex<()>>>>,
    hot: Mutex<Hot>,
}

/// Small blobs kept in memory for the answers the host repeats (see
/// `runtime::reuse`). Blobs are content-addressed, so a kept copy is never
/// stale; `delete` forgets it.
#[derive(Default)]
struct Hot {
    blobs: HashMap<BlobDigest, bytes::Bytes>,
    bytes: usize,
    /// Counts deletes, so a read that raced with one is not kept.
    deletes: u64,
}

/// A stored blob, opened.
#[derive(Debug)]
pub enum OpenedBlob {
    File(std::fs::File, u64),
    Memory(bytes::Bytes),
}

impl OpenedBlob {
    pub fn size(&self) -> u64 {
        match self {
            OpenedBlob::File(_, size) => *size,
            OpenedBlob::Memory(b) => b.len() as u64,
        }
    }
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("path", &self.path)
            .field("quota", &self.quota)
            .finish()
    }
}

impl BlobStore {
    /// Opens (creating if needed) the store at `path` with `quota` bytes,
    /// drops writes a crash left behind and counts what is stored.
    pub fn open(path: &Path, quota: u64) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        dir.create_dir_all(BLOBS)?;
        if dir.exists(TMP) {
            dir.remove_dir_all(TMP)?;
        }
        dir.create_dir_all(TMP)?;
        let mut accounting = Accounting::default();
        for entry in dir.read_dir(BLOBS)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() {
                accounting.stored += meta.len();
                accounting.count += 1;
            }
        }
        Ok(Self {
            dir,
            path: path.to_path_buf(),
            quota,
            accounting: Mutex::new(accounting),
            flights: Mutex::new(HashMap::new()),
            hot: Mutex::new(Hot::default()),
        })
    }

    /// The store's directory (for log messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The size of a stored blob, `None` when it is not stored.
    pub fn stat(&self, digest: &BlobDigest) -> io::Result<Option<u64>> {
        match self.dir.symlink_metadata(digest.file()) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a stored blob for reading, with its size.
    pub fn open_blob(&self, digest: &BlobDigest) -> io::Result<Option<(std::fs::File, u64)>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match self.dir.open_with(digest.file(), &options) {
            Ok(f) => {
                let f = f.into_std();
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like [`open_blob`](Self::open_blob), but a blob of at most
    /// [`HOT_BLOB_BYTES`] is read once and then served from memory (up to
    /// 8 MiB per store; when that is full the kept copies are dropped and
    /// kept anew). For answers the host repeats many times a second.
    pub fn open_hot(&self, digest: &BlobDigest) -> io::Result<Option<OpenedBlob>> {
        let deletes = {
            let hot = self.hot.lock().expect("hot blobs lock");
            if let Some(b) = hot.blobs.get(digest) {
                return Ok(Some(OpenedBlob::Memory(b.clone())));
            }
            hot.deletes
        };
        let Some((mut file, size)) = self.open_blob(digest)? else {
            return Ok(None);
        };
        if size > HOT_BLOB_BYTES {
            return Ok(Some(OpenedBlob::File(file, size)));
        }
        let mut buf = vec![0u8; size as usize];
        file.read_exact(&mut buf)?;
        let bytes = bytes::Bytes::from(buf);
        let mut hot = self.hot.lock().expect("hot blobs lock");
        if hot.deletes == deletes {
            if hot.bytes + bytes.len() > HOT_BUDGET_BYTES {
                hot.blobs.clear();
                hot.bytes = 0;
            }
            if hot.blobs.insert(digest.clone(), bytes.clone()).is_none() {
                hot.bytes += bytes.len();
            }
        }
        Ok(Some(OpenedBlob::Memory(bytes)))
    }

    /// Up to `length` bytes of a stored blob from `offset`.
    pub fn read_range(
        &self,
        digest: &BlobDigest,
        offset: u64,
        length: usize,
    ) -> io::Result<Option<Vec<u8>>> {
        let Some((mut f, size)) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let take = size.saturating_sub(offset).min(length as u64) as usize;
        let mut buf = vec![0u8; take];
        f.seek(SeekFrom::Start(offset.min(size)))?;
        f.read_exact(&mut buf)?;
        Ok(Some(buf))
    }

    /// Removes a stored blob; returns whether it was there.
    pub fn delete(&self, digest: &BlobDigest) -> io::Result<bool> {
        {
            let mut hot = self.hot.lock().expect("hot blobs lock");
            hot.deletes += 1;
            if let Some(b) = hot.blobs.remove(digest) {
                hot.bytes -= b.len();
            }
        }
        let Some(size) = self.stat(digest)? else {
            return Ok(false);
        };
        match self.dir.remove_file(digest.file()) {
            Ok(()) => {
                let mut a = self.accounting.lock().expect("accounting lock");
                a.stored = a.stored.saturating_sub(size);
                a.count = a.count.saturating_sub(1);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stored blobs in digest order after `after`, at most `limit`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> io::Result<Vec<(BlobDigest, u64)>> {
        let mut all = Vec::new();
        for entry in self.dir.read_dir(BLOBS)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(digest) = BlobDigest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            if after.is_some_and(|a| digest.as_str() <= a) {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_file() {
                all.push((digest, meta.len()));
            }
        }
        all.sort();
        all.truncate(limit);
        Ok(all)
    }

    /// Bytes and blobs stored, and the quota.
    pub fn usage(&self) -> StoreUsage {
        let a = self.accounting.lock().expect("accounting lock");
        StoreUsage {
            bytes: a.stored,
            count: a.count,
            quota: self.quota,
        }
    }

    /// A lock per digest: holders of the same digest's lock run one at a
    /// time, so the second of two concurrent fetches finds the blob stored.
    pub async fn flight(&self, digest: &BlobDigest) -> FlightGuard<'_> {
        let lock = self
            .flights
            .lock()
            .expect("flights lock")
            .entry(digest.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        FlightGuard {
            store: self,
            digest: digest.clone(),
            lock,
            _guard: guard,
        }
    }

    /// Starts writing the blob `digest`. `size_hint`, when known, is checked
    /// against the quota at once; otherwise space is reserved as bytes
    /// arrive.
    pub fn begin(
        self: &Arc<Self>,
        digest: &BlobDigest,
        size_hint: Option<u64>,
    ) -> Result<BlobWriter, StoreError> {
        let mut writer = BlobWriter {
            store: self.clone(),
            expected: digest.clone(),
            tmp: format!("{}.{:016x}", digest.hex(), rand::random::<u64>()),
            file: None,
            hasher: Sha256::new(),
            written: 0,
            reserved: 0,
        };
        if let Some(size) = size_hint {
            writer.reserve_to(size)?;
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        let file = self
            .dir
            .open_with(Path::new(TMP).join(&writer.tmp), &options)?;
        writer.file = Some(file.into_std());
        Ok(writer)
    }

    fn reserve(&self, more: u64) -> Result<(), StoreError> {
        let mut a = self.accounting.lock().expect("accounting lock");
        let total = a.stored + a.reserved + more;
        if total > self.quota {
            return Err(StoreError::QuotaExceeded {
                size: more,
                needed: total - self.quota,
            });
        }
        a.reserved += more;
        Ok(())
    }

    fn release(&self, reserved: u64) {
        let mut a = self.accounting.lock().expect("accounting lock");
        a.reserved = a.reserved.saturating_sub(reserved);
    }
}

/// Held while a digest is being fetched; see [`BlobStore::flight`].
pub struct FlightGuard<'a> {
    store: &'a BlobStore,
    digest: BlobDigest,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self.store.flights.lock().expect("flights lock");
        // The map's copy, ours and the guard's: nobody else is waiting.
        if Arc::strong_count(&self.lock) <= 3 {
            flights.remove(&self.digest);
        }
    }
}

/// A blob being written: bytes go to a temp file and into the hash; only
/// [`BlobWriter::commit`] makes the blob visible, and only if the digest
/// matches. Dropping it without a commit removes the temp file.
pub struct BlobWriter {
    store: Arc<BlobStore>,
    expected: BlobDigest,
    tmp: String,
    file: Option<std::fs::File>,
    hasher: Sha256,
    written: u64,
    reserved: u64,
}

impl BlobWriter {
    fn reserve_to(&mut self, size: u64) -> Result<(), StoreError> {
        if size > self.store.quota {
            return Err(StoreError::TooLarge {
                quota: self.store.quota,
            });
        }
        if size > self.reserved {
            self.store.reserve(size - self.reserved)?;
            self.reserved = size;
        }
        Ok(())
    }

    /// Appends `bytes`, reserving quota for them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let end = self.written + bytes.len() as u64;
        self.reserve_to(end)?;
        self.file
            .as_mut()
            .expect("open until commit")
            .write_all(bytes)?;
        self.hasher.update(bytes);
        self.written = end;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the digest, makes the file durable and renames it into
    /// place. Returns the blob's size.
    pub fn commit(mut self) -> Result<u64, StoreError> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.expected.as_str() {
            return Err(StoreError::DigestMismatch { actual });
        }
        let file = self.file.take().expect("open until commit");
        file.sync_all()?;
        drop(file);
        let store = self.store.clone();
        // Under the lock, so two writers of one digest count it once.
        let mut a = store.accounting.lock().expect("accounting lock");
        let replaced = store.stat(&self.expected)?;
        store.dir.rename(
            Path::new(TMP).join(&self.tmp),
            &store.dir,
            self.expected.file(),
        )?;
        a.reserved = a.reserved.saturating_sub(self.reserved);
        self.reserved = 0;
        match replaced {
            // Someone stored the same bytes meanwhile: same size, same count.
            Some(_) => {}
            None => {
                a.stored += self.written;
                a.count += 1;
            }
        }
        Ok(self.written)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = self.store.dir.remove_file(Path::new(TMP).join(&self.tmp));
        }
        self.store.release(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(quota: u64) -> (tempfile::TempDir, Arc<BlobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(BlobStore::open(&dir.path().join("p"), quota).unwrap());
        (dir, s)
    }

    fn put(s: &Arc<BlobStore>, bytes: &[u8]) -> Result<BlobDigest, StoreError> {
        let d = BlobDigest::of(bytes);
        let mut w = s.begin(&d, Some(bytes.len() as u64))?;
        w.write(bytes)?;
        w.commit()?;
        Ok(d)
    }

    #[test]
    fn digests_must_be_sha256_lower_hex() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(BlobDigest::parse(&good).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}/x", "a".repeat(62)),
            "".into(),
        ] {
            assert!(BlobDigest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_blob_is_stored_only_if_its_bytes_match_the_digest() {
        let (_d, s) = store(1 << 20);
        let d = put(&s, b"hello").unwrap();
        assert_eq!(s.stat(&d).unwrap(), Some(5));
        assert_eq!(s.read_range(&d, 1, 3).unwrap().unwrap(), b"ell");
        let wrong = BlobDigest::of(b"other");
        let mut w = s.begin(&wrong, None).unwrap();
        w.write(b"not other").unwrap();
        assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
        assert_eq!(s.stat(&wrong).unwrap(), None);
        assert_eq!(s.usage().bytes, 5);
        assert_eq!(s.usage().count, 1);
        assert_eq!(s.dir.read_dir(TMP).unwrap().count(), 0, "temp files left");
    }

    #[test]
    fn the_quota_is_never_exceeded() {
        let (_d, s) = store(10);
        put(&s, b"123456").unwrap();
        match put(&s, b"abcdef") {
            Err(StoreError::QuotaExceeded { needed, .. }) => assert_eq!(needed, 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            put(&s, b"this is more than ten"),
            Err(StoreError::TooLarge { quota: 10 })
        ));
        // Without a size hint the quota is checked as bytes arrive.
        let d = BlobDigest::of(b"abcdef");
        let mut w = s.begin(&d, None).unwrap();
        assert!(w.write(b"abcdef").is_err());
        drop(w);
        assert_eq!(s.usage().bytes, 6);
        assert!(s.delete(&BlobDigest::of(b"123456")).unwrap());
        put(&s, b"abcdef").unwrap();
        assert_eq!(s.usage().bytes, 6);
    }

    #[test]
    fn small_blobs_are_kept_in_memory_until_deleted() {
        let (_d, s) = store(1 << 20);
        let small = put(&s, b"small blob").unwrap();
        let large_bytes = vec![9u8; HOT_BLOB_BYTES as usize + 1];
        let large = put(&s, &large_bytes).unwrap();
        match s.open_hot(&large).unwrap().unwrap() {
            OpenedBlob::File(_, size) => assert_eq!(size, large_bytes.len() as u64),
            other => panic!("a large blob is read from its file: {other:?}"),
        }
        match s.open_hot(&small).unwrap().unwrap() {
            OpenedBlob::Memory(b) => assert_eq!(b.as_ref(), b"small blob"),
            other => panic!("{other:?}"),
        }
        // Kept: served even though its file is gone behind the store's back.
        s.dir.remove_file(small.file()).unwrap();
        assert!(matches!(
            s.open_hot(&small).unwrap(),
            Some(OpenedBlob::Memory(_))
        ));
        // Deleted through the store: forgotten at once.
        let again = put(&s, b"small blob").unwrap();
        assert!(s.delete(&again).unwrap());
        assert!(s.open_hot(&small).unwrap().is_none());
        let hot = s.hot.lock().unwrap();
        assert_eq!((hot.blobs.len(), hot.bytes), (0, 0));
    }

    #[test]
    fn reopening_counts_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(BlobStore::open(&dir.path().join("p"), 100).unwrap());
        let a = put(&s, b"aaa").unwrap();
        put(&s, b"bbbb").unwrap();
        drop(s);
        let s = BlobStore::open(&dir.path().join("p"), 100).unwrap();
        assert_eq!(s.usage().bytes, 7);
        assert_eq!(s.usage().count, 2);
        let listed = s.list(None, 10).unwrap();
        assert_eq!(listed.len(), 2);
        let after = s.list(Some(listed[0].0.as_str()), 10).unwrap();
        assert_eq!(after.len(), 1);
        assert!(s.stat(&a).unwrap().is_some());
    }
}
