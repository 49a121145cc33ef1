//! Chunk Merkle trees over stored blobs, and the possession proofs built on
//! them.
//!
//! A blob is cut into [`CHUNK`]-byte chunks (the last may be shorter).
//! Leaf `i` is `sha256(0x00 || chunk i)`; an inner node is
//! `sha256(0x01 || left || right)`; a node without a right sibling moves up
//! unchanged. The root of a blob is committed in the ledger when the blob
//! is stored (evidence of a `blobs-stored` record), so a proof can be
//! checked knowing only the challenge, the blob's size and that root.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A sha256 hash.
pub type Hash = [u8; 32];

/// Bytes per chunk.
pub const CHUNK: u64 = 256 * 1024;

/// The hash of one chunk's bytes.
pub fn leaf(chunk: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(chunk);
    h.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// How many chunks a blob of `size` bytes has (an empty blob has one, empty).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK).max(1)
}

/// The root over `leaves` (at least one).
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [only] => *only,
                _ => unreachable!("chunks(2)"),
            })
            .collect();
    }
    level[0]
}

/// The siblings on the way from leaf `index` to the root, bottom up.
pub fn path(leaves: &[[u8; 32]], mut index: usize) -> Vec<[u8; 32]> {
    let mut level = leaves.to_vec();
    let mut siblings = Vec::new();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if sibling < level.len() {
            siblings.push(level[sibling]);
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [only] => *only,
                _ => unreachable!("chunks(2)"),
            })
            .collect();
        index /= 2;
    }
    siblings
}

/// The root that `leaf` at `index` of `count` leaves and `siblings` lead
/// to; `None` if the path has the wrong length.
pub fn root_from_path(
    leaf: [u8; 32],
    mut index: u64,
    mut count: u64,
    siblings: &[[u8; 32]],
) -> Option<[u8; 32]> {
    let mut hash = leaf;
    let mut siblings = siblings.iter();
    while count > 1 {
        let is_last_alone = index.is_multiple_of(2) && index + 1 == count;
        if !is_last_alone {
            let s = siblings.next()?;
            hash = if index.is_multiple_of(2) {
                node(&hash, s)
            } else {
                node(s, &hash)
            };
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    siblings.next().is_none().then_some(hash)
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
    let computed = root_from_path(leaf(&chunk), c.chunk, count, &siblings)
        .ok_or("the path has the wrong length")?;
    if hex::encode(computed) != root {
        return Err("the path does not lead to the committed root".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| leaf(&[i as u8; 3])).collect()
    }

    #[test]
    fn every_leaf_path_leads_to_the_root() {
        for n in 1..=9 {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = path(&l, i);
                assert_eq!(
                    root_from_path(l[i], i as u64, n as u64, &p),
                    Some(r),
                    "n={n} i={i}"
                );
                if n > 1 {
                    let other = (i + 1) % n;
                    assert_ne!(
                        root_from_path(l[i], other as u64, n as u64, &p),
                        Some(r),
                        "leaf {i} must not pass as {other} (n={n})"
                    );
                }
            }
        }
    }

    #[test]
    fn chunk_counts() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK), 1);
        assert_eq!(chunk_count(CHUNK + 1), 2);
    }
}
