//! Writing a blob: space is reserved against the quota as bytes arrive,
//! and the blob becomes visible only once its bytes match its digest and
//! are durable.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use cap_std::fs::OpenOptions;
use sha2::{Digest as _, Sha256};

use super::digest::BlobDigest;
use super::{BlobStore, StoreError, TMP};

impl BlobStore {
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
            tmp_exists: false,
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
        writer.tmp_exists = true;
        Ok(writer)
    }
}

/// A blob being written: bytes go to a temp file and into the hash; only
/// [`BlobWriter::commit`] makes the blob visible, and only if the digest
/// matches. Dropping it without a successful commit removes the temp
/// file and releases the space it reserved; a commit that fails at its
/// sync or rename does the same.
pub struct BlobWriter {
    store: Arc<BlobStore>,
    expected: BlobDigest,
    tmp: String,
    file: Option<std::fs::File>,
    /// The temp file is on disk (until renamed into place).
    tmp_exists: bool,
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

    /// Verifies the digest, makes the file durable, renames it into place
    /// and makes the rename durable (fsync of the blob directory). Blocks
    /// on disk I/O: call it off the async workers. Returns the blob's size.
    pub fn commit(mut self) -> Result<u64, StoreError> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.expected.as_str() {
            return Err(StoreError::DigestMismatch { actual });
        }
        let file = self.file.take().expect("open until commit");
        // On failure the temp file is still there: `drop` removes it
        // before it releases the space.
        file.sync_all()?;
        drop(file);
        let store = self.store.clone();
        {
            // Under the lock, so two writers of one digest count it once.
            let mut a = store.accounting.lock().expect("accounting lock");
            let replaced = store.stat(&self.expected)?;
            store.dir.rename(
                Path::new(TMP).join(&self.tmp),
                &store.dir,
                self.expected.file(),
            )?;
            self.tmp_exists = false;
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
        }
        // The blob is in place and counted; its name is durable only once
        // the directory is synced.
        store.sync_blob_dir()?;
        Ok(self.written)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        drop(self.file.take());
        if self.tmp_exists {
            match self.store.dir.remove_file(Path::new(TMP).join(&self.tmp)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // The bytes still take space: keep them counted until
                    // the store is opened again (which empties `tmp`).
                    tracing::warn!(
                        store = %self.store.path.display(),
                        tmp = %self.tmp,
                        error = %e,
                        "cannot remove a blob's temp file; its space stays reserved"
                    );
                    return;
                }
            }
        }
        self.store.release(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::tests::{put, store};

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
    fn a_failed_rename_removes_the_temp_file_and_releases_its_space() {
        let (_d, s) = store(1 << 20);
        let d = BlobDigest::of(b"blocked");
        // A directory where the blob's file goes: the rename fails.
        s.dir.create_dir_all(d.file()).unwrap();
        let mut w = s.begin(&d, Some(7)).unwrap();
        w.write(b"blocked").unwrap();
        assert!(matches!(w.commit(), Err(StoreError::Io(_))));
        assert_eq!(s.dir.read_dir(TMP).unwrap().count(), 0, "temp file left");
        assert_eq!(s.accounting.lock().unwrap().reserved, 0);
        assert_eq!(s.usage().bytes, 0);
        // Once the way is clear the same blob stores normally.
        s.dir.remove_dir(d.file()).unwrap();
        assert_eq!(put(&s, b"blocked").unwrap(), d);
        assert_eq!(s.usage().bytes, 7);
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
}
