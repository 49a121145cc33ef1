//! A content-addressed blob store, one per plugin, in its own directory
//! under the data directory. The directory is opened with cap-std, so no
//! name can reach outside it (no `..`, no absolute paths, no symlinks out),
//! and names are digests checked before any file access.
//!
//! Guarantees: a blob file exists only if its bytes hashed to its digest
//! when written (temp file, fsync, rename, fsync of the directory); the
//! stored bytes never exceed the quota (space is reserved before a write
//! and released, with its temp file removed, if it fails);
//! concurrent fetches of one digest can be serialized with [`BlobStore::flight`].
//!
//! Files: `digest.rs` (blob names), `hot.rs` (small blobs kept in memory),
//! `flight.rs` (one fetch per digest at a time), `writer.rs` (writing a
//! blob: quota, hash check, durable rename); this file opens the store,
//! reads, lists and deletes.

mod digest;
mod flight;
mod hot;
mod writer;

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

pub use digest::BlobDigest;
pub use flight::FlightGuard;
use hot::Hot;
pub use hot::{HOT_BLOB_BYTES, OpenedBlob};
pub use writer::BlobWriter;

/// Subdirectory of stored blobs, named by hex digest.
const BLOBS: &str = "sha256";
/// Subdirectory of writes in progress; emptied on open.
const TMP: &str = "tmp";

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

/// One plugin's blob store.
pub struct BlobStore {
    dir: Dir,
    path: PathBuf,
    quota: u64,
    accounting: Mutex<Accounting>,
    flights: Mutex<HashMap<BlobDigest, Arc<tokio::sync::Mutex<()>>>>,
    hot: Mutex<Hot>,
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

    /// Makes the names in the blob directory durable (after a rename).
    fn sync_blob_dir(&self) -> io::Result<()> {
        // Opened for reading: a directory handle opened for path lookups
        // only (as `open_dir` does) cannot be synced.
        let mut options = OpenOptions::new();
        options.read(true);
        self.dir.open_with(BLOBS, &options)?.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn store(quota: u64) -> (tempfile::TempDir, Arc<BlobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(BlobStore::open(&dir.path().join("p"), quota).unwrap());
        (dir, s)
    }

    pub(super) fn put(s: &Arc<BlobStore>, bytes: &[u8]) -> Result<BlobDigest, StoreError> {
        let d = BlobDigest::of(bytes);
        let mut w = s.begin(&d, Some(bytes.len() as u64))?;
        w.write(bytes)?;
        w.commit()?;
        Ok(d)
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
