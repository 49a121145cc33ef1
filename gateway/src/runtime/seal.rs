//! Authenticated compiled code on disk. Deserializing compiled code runs
//! whatever native code the file holds, so the gateway loads a cached
//! `.cwasm` only if it carries a MAC made with a key only the gateway
//! derives: HMAC-SHA256 over the file's name (which binds the source digest
//! and the engine) and its bytes, keyed from the device key. A file that
//! was swapped, truncated or written under another key is discarded with a
//! warning and compiled again.
//!
//! File layout: the serialized code, then the 32-byte tag.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Length of the tag at the end of a sealed file.
const TAG_BYTES: usize = 32;
/// SHA-256's block size, for HMAC.
const BLOCK: usize = 64;

/// The key that seals compiled code. Cheap to clone.
#[derive(Clone)]
pub struct CodeSeal {
    key: [u8; 32],
}

impl std::fmt::Debug for CodeSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSeal(..)")
    }
}

/// Why a cached file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("its MAC does not check out (altered, swapped or written under another key)")]
    Forged,
}

impl CodeSeal {
    /// The seal of a gateway: a secret only its device key derives (see
    /// [`crate::identity::DeviceSigner::derive_secret`]), with a label of
    /// its own so it is never the same as any other use of the key. Fails
    /// when the key cannot derive it (a token whose signatures are not
    /// deterministic).
    pub fn from_device_key(
        key: &dyn crate::identity::DeviceSigner,
    ) -> Result<Self, crate::identity::SignError> {
        Ok(Self {
            key: key.derive_secret(b"depin-gateway compiled-code seal v1\0")?,
        })
    }

    /// A seal known to this process only: code it cached is not reused by
    /// another process (for tools and tests without a device key).
    pub fn ephemeral() -> Self {
        Self {
            key: rand::random(),
        }
    }

    fn tag(&self, name: &[u8], code: &[u8]) -> [u8; TAG_BYTES] {
        self.hmac(&[&(name.len() as u64).to_be_bytes(), name, code])
    }

    /// HMAC (RFC 2104) with SHA-256 over the concatenation of `parts`.
    fn hmac(&self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for (i, k) in self.key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        for part in parts {
            inner.update(part);
        }
        let mut outer = Sha256::new();
        outer.update(opad);
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    /// Writes `code` and its tag to `path` durably (temp file, fsync,
    /// rename, fsync of the directory).
    pub fn write(&self, path: &Path, code: &[u8]) -> std::io::Result<()> {
        let tag = self.tag(name_of(path), code);
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(code)?;
            f.write_all(&tag)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The code in the sealed file at `path`, if its tag checks out.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, SealError> {
        let mut bytes = std::fs::read(path)?;
        let Some(split) = bytes.len().checked_sub(TAG_BYTES) else {
            return Err(SealError::Forged);
        };
        let expected = self.tag(name_of(path), &bytes[..split]);
        let equal = expected
            .iter()
            .zip(&bytes[split..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if !equal {
            return Err(SealError::Forged);
        }
        bytes.truncate(split);
        Ok(bytes)
    }
}

fn name_of(path: &Path) -> &[u8] {
    path.file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_reads_back_only_under_its_key_its_name_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let seal = CodeSeal::ephemeral();
        let a = dir.path().join("a.cwasm");
        seal.write(&a, b"native code").unwrap();
        assert_eq!(seal.read(&a).unwrap(), b"native code");
        // Another key.
        assert!(matches!(
            CodeSeal::ephemeral().read(&a),
            Err(SealError::Forged)
        ));
        // Another name: a valid file swapped in for another digest.
        let b = dir.path().join("b.cwasm");
        std::fs::copy(&a, &b).unwrap();
        assert!(matches!(seal.read(&b), Err(SealError::Forged)));
        // One bit flipped; a file shorter than a tag.
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&a, &bytes).unwrap();
        assert!(matches!(seal.read(&a), Err(SealError::Forged)));
        std::fs::write(&a, b"short").unwrap();
        assert!(matches!(seal.read(&a), Err(SealError::Forged)));
        assert!(matches!(
            seal.read(&dir.path().join("missing")),
            Err(SealError::Io(_))
        ));
    }

    #[test]
    fn the_mac_is_hmac_sha256() {
        // RFC 4231, test case 1: a 20-byte key, which HMAC pads with zeros
        // exactly as it pads our 32-byte keys.
        let mut key = [0u8; 32];
        key[..20].fill(0x0b);
        let seal = CodeSeal { key };
        assert_eq!(
            hex::encode(seal.hmac(&[b"Hi ", b"There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_ne!(
            seal.tag(b"n", b"x"),
            seal.tag(b"", b"nx"),
            "the name is delimited"
        );
    }
}
