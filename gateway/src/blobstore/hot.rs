//! Small blobs kept in memory for answers the host repeats many times a
//! second.

use std::collections::HashMap;
use std::io::{self, Read};

use super::BlobStore;
use super::digest::BlobDigest;

/// Largest blob [`BlobStore::open_hot`] keeps in memory.
pub const HOT_BLOB_BYTES: u64 = 64 << 10;
/// Most bytes of blobs a store keeps in memory.
const HOT_BUDGET_BYTES: usize = 8 << 20;

/// Small blobs kept in memory for the answers the host repeats (see
/// `runtime::reuse`). Blobs are content-addressed, so a kept copy is never
/// stale; `delete` forgets it.
#[derive(Default)]
pub(super) struct Hot {
    pub(super) blobs: HashMap<BlobDigest, bytes::Bytes>,
    pub(super) bytes: usize,
    /// Counts deletes, so a read that raced with one is not kept.
    pub(super) deletes: u64,
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

impl BlobStore {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::tests::{put, store};

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
}
