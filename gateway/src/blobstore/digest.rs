//! Blob names: validated sha256 digests, the only names the store uses.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::BLOBS;

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

    pub(super) fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub(super) fn file(&self) -> PathBuf {
        Path::new(BLOBS).join(self.hex())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
