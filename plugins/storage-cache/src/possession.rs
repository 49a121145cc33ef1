//! Possession proofs over stored blobs (challenge kind `chunk-possession`).
//!
//! A blob is cut into [`CHUNK`]-byte chunks (the last may be shorter); its
//! chunk tree is the protocol's Merkle tree (`depin_protocol::merkle`) with
//! leaf `i` = `merkle::leaf(chunk i)` = `sha256(0x00 || chunk i)`. The root
//! of a blob is committed in the ledger when the blob is stored (evidence
//! of a `blobs-stored` record), so a proof can be checked knowing only the
//! challenge, the blob's size and that root. A proof carries only the
//! sibling hashes; their sides follow from the chunk's index and the chunk
//! count, so the path also proves which chunk it is.

use depin_protocol::merkle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes per chunk.
pub const CHUNK: u64 = 256 * 1024;

/// How many chunks a blob of `size` bytes has (an empty blob has one, empty).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK).max(1)
}

/// A `chunk-possession` challenge's parameters (JSON). `root` and `size`
/// come from the ledger record that committed the blob; `prove` needs only
/// `digest` and `chunk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChallenge {
    pub digest: String,
    pub chunk: u64,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

/// A `chunk-possession` proof (JSON): the chunk itself, its hash bound to
/// the nonce, and the Merkle path to the committed root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkProof {
    /// The chunk's bytes, hex.
    pub chunk: String,
    /// `sha256(nonce || chunk)`, hex.
    pub bound: String,
    /// Sibling hashes from the leaf up, hex.
    pub path: Vec<String>,
}

/// `sha256(nonce || chunk)`.
pub fn bind(nonce: &[u8], chunk: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(chunk);
    h.finalize().into()
}

/// Checks `proof` against the challenge's committed `root` and `size`.
pub fn check(c: &ChunkChallenge, nonce: &[u8], proof: &ChunkProof) -> Result<(), String> {
    let root = c.root.as_deref().ok_or("the challenge names no root")?;
    let size = c.size.ok_or("the challenge names no size")?;
    let count = chunk_count(size);
    if c.chunk >= count {
        return Err(format!("chunk {} of {count}", c.chunk));
    }
    let chunk = hex::decode(&proof.chunk).map_err(|e| format!("chunk: {e}"))?;
    let expected_len = if c.chunk + 1 == count {
        size - c.chunk * CHUNK
    } else {
        CHUNK
    };
    if chunk.len() as u64 != expected_len {
        return Err(format!(
            "chunk is {} bytes, expected {expected_len}",
            chunk.len()
        ));
    }
    if hex::encode(bind(nonce, &chunk)) != proof.bound {
        return Err("the chunk is not bound to this nonce".into());
    }
    let siblings = proof
        .path
        .iter()
        .map(|s| {
            hex::decode(s)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or("a path entry is not a 32-byte hex hash")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let path = merkle::positional_path(c.chunk, count, &siblings)
        .ok_or("the path has the wrong length")?;
    let computed = merkle::climb(merkle::leaf(&chunk), &path);
    if hex::encode(computed) != root {
        return Err("the path does not lead to the committed root".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_counts() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK), 1);
        assert_eq!(chunk_count(CHUNK + 1), 2);
    }
}
