//! Merkle tree over a window's accepted readings.
//!
//! Leaf hash: `sha256("depin-senml-leaf/1\n" || device || "\n" || seq (8, BE)
//! || index (4, BE) || sha256(pack))`. Inner node: `sha256(0x01 || left || right)`.
//! A level with an odd number of nodes carries its last node up unchanged.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The leaf for record `index` of the pack `(device, seq)`.
pub fn leaf(device: &str, seq: u64, index: u32, pack: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"depin-senml-leaf/1\n");
    h.update(device.as_bytes());
    h.update(b"\n");
    h.update(seq.to_be_bytes());
    h.update(index.to_be_bytes());
    h.update(Sha256::digest(pack));
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// One step of a path: the sibling and on which side it sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The sibling hash, hex.
    pub sibling: String,
    /// True when the sibling is the left child.
    pub left: bool,
}

/// The root of `leaves` (all zeros for none) and the path of `index`.
pub fn root_and_path(leaves: &[Hash], index: Option<usize>) -> (Hash, Vec<Step>) {
    if leaves.is_empty() {
        return ([0; 32], Vec::new());
    }
    let mut level = leaves.to_vec();
    let mut at = index;
    let mut path = Vec::new();
    while level.len() > 1 {
        if let Some(i) = at {
            let sibling = if i % 2 == 1 { Some(i - 1) } else { Some(i + 1) };
            if let Some(s) = sibling.filter(|s| *s < level.len()) {
                path.push(Step {
                    sibling: hex::encode(level[s]),
                    left: s < i,
                });
            }
            at = Some(i / 2);
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [only] => *only,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    (level[0], path)
}

/// The root that `leaf` and `path` lead to, or `None` if the path is not hex.
pub fn climb(leaf: Hash, path: &[Step]) -> Option<Hash> {
    let mut h = leaf;
    for step in path {
        let mut s = [0u8; 32];
        hex::decode_to_slice(&step.sibling, &mut s).ok()?;
        h = if step.left {
            node(&s, &h)
        } else {
            node(&h, &s)
        };
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_climbs_to_the_root() {
        for n in 1..=9usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf("d", i as u64, 0, b"p")).collect();
            let (root, _) = root_and_path(&leaves, None);
            for i in 0..n {
                let (r, path) = root_and_path(&leaves, Some(i));
                assert_eq!(r, root);
                assert_eq!(climb(leaves[i], &path), Some(root), "n={n} i={i}");
                if n > 1 {
                    assert_ne!(climb(leaves[(i + 1) % n], &path), Some(root));
                }
            }
        }
    }
}
