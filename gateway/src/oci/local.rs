//! The local copy of pulled artifacts, under `<data_dir>/oci/`:
//!
//! - `blobs/sha256/<hex>`: manifests, components and signature payloads,
//!   content-addressed; a file is used only if it still hashes to its
//!   name, so a damaged copy is pulled again, never loaded.
//! - `tags/<sha256 of the tag reference>`: the digest a tag last resolved
//!   to (for `allow_tag` components on a box without the registry).
//! - `signatures/<manifest hex>`: the last signature manifest seen for a
//!   manifest (its payloads are blobs). Signatures are verified from it
//!   at every load, against the keys trusted then.
//!
//! Files are written to a temporary name and renamed, so a crash leaves
//! either the old file or the new one.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::reference::ComponentRef;

/// The local copy of pulled artifacts.
#[derive(Debug, Clone)]
pub struct LocalCopies {
    root: PathBuf,
}

impl LocalCopies {
    /// Keeps copies under `root` (`<data_dir>/oci`).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where the blob `digest` (`sha256:<hex>`) is kept.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The blob, if it is here and still hashes to `digest`.
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.blob_path(digest)).ok()?;
        if crate::runtime::component_digest(&bytes) == digest {
            Some(bytes)
        } else {
            tracing::warn!(
                digest,
                "the local copy of a blob is damaged; pulling it again"
            );
            None
        }
    }

    /// Keeps `bytes` as blob `digest` (the caller has checked the digest).
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        let path = self.blob_path(digest);
        write_atomically(&path, bytes)?;
        Ok(path)
    }

    fn tag_path(&self, r: &ComponentRef) -> PathBuf {
        let key = hex::encode(Sha256::digest(r.to_string().as_bytes()));
        self.root.join("tags").join(key)
    }

    /// The digest `r` (a tag reference) last resolved to.
    pub fn tag(&self, r: &ComponentRef) -> Option<String> {
        let text = std::fs::read_to_string(self.tag_path(r)).ok()?;
        let digest = text.trim().to_string();
        depin_protocol::oci::check_digest(&digest).ok()?;
        Some(digest)
    }

    /// Remembers that `r` (a tag reference) resolved to `digest`.
    pub fn put_tag(&self, r: &ComponentRef, digest: &str) -> Result<(), String> {
        write_atomically(&self.tag_path(r), digest.as_bytes())
    }

    fn signatures_path(&self, manifest_digest: &str) -> PathBuf {
        self.root
            .join("signatures")
            .join(manifest_digest.trim_start_matches("sha256:"))
    }

    /// The signature manifest last seen for `manifest_digest`.
    pub fn signatures(&self, manifest_digest: &str) -> Option<Vec<u8>> {
        std::fs::read(self.signatures_path(manifest_digest)).ok()
    }

    /// Keeps the signature manifest of `manifest_digest`.
    pub fn put_signatures(&self, manifest_digest: &str, manifest: &[u8]) -> Result<(), String> {
        write_atomically(&self.signatures_path(manifest_digest), manifest)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().expect("local copies live in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_blob_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalCopies::new(dir.path().to_path_buf());
        let digest = crate::runtime::component_digest(b"hello");
        local.put_blob(&digest, b"hello").unwrap();
        assert_eq!(local.blob(&digest).as_deref(), Some(&b"hello"[..]));
        std::fs::write(local.blob_path(&digest), b"hellO").unwrap();
        assert_eq!(local.blob(&digest), None);
    }
}
