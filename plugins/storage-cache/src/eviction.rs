//! The quota: a new blob that does not fit makes room by deleting the least
//! recently used blobs (access times in kv), never the one being stored.

use super::*;

/// `fetch_into`, evicting least recently used blobs when the quota is in
/// the way.
pub(crate) fn fetch_with_eviction(
    url: &str,
    digest: &str,
    headers: &[(String, String)],
) -> Result<u64, BlobError> {
    for _ in 0..4 {
        match blobs::fetch_into(url, digest, headers) {
            Ok(stat) => return Ok(stat.size),
            Err(BlobError::QuotaExceeded(needed)) => evict(needed, digest)?,
            Err(e) => return Err(e),
        }
    }
    Err(BlobError::Io("the store stayed full after evicting".into()))
}

/// Stores `bytes` (already fetched) as `digest`, evicting when needed.
pub(crate) fn put_with_eviction(digest: &str, bytes: &[u8]) -> Result<u64, BlobError> {
    for _ in 0..4 {
        match blobs::put(digest, bytes) {
            Ok(stat) => return Ok(stat.size),
            Err(BlobError::QuotaExceeded(needed)) => evict(needed, digest)?,
            Err(e) => return Err(e),
        }
    }
    Err(BlobError::Io("the store stayed full after evicting".into()))
}

/// Deletes least recently used blobs (never `keep`) until `needed` bytes
/// are free.
fn evict(needed: u64, keep: &str) -> Result<(), BlobError> {
    let mut stored = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = blobs::list(after.as_deref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.digest.clone());
        stored.extend(page);
    }
    let mut by_age: Vec<(u64, String, u64)> = stored
        .into_iter()
        .filter(|b| b.digest != keep)
        .map(|b| {
            let atime = kv::get_json::<u64>(&format!("atime/{}", b.digest))
                .ok()
                .flatten()
                .unwrap_or(0);
            (atime, b.digest, b.size)
        })
        .collect();
    by_age.sort();
    let mut freed = 0;
    for (_, digest, size) in by_age {
        if freed >= needed {
            break;
        }
        if blobs::delete(&digest)? {
            freed += size;
            log::info(&format!("evicted {digest} ({size} bytes)"));
        }
        let _ = kv::delete(&format!("atime/{digest}"));
        let _ = kv::delete(&format!("root/{digest}"));
        let _ = kv::delete(&format!("type/{digest}"));
    }
    Ok(())
}
