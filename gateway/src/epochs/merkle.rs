//! The Merkle tree over an epoch's record hashes.
//!
//! Leaves are the ledger's chain hashes of the epoch's records, in sequence
//! order. `leaf = sha256(0x00 || record hash)`, `node = sha256(0x01 || left
//! || right)`; a level with an odd count carries its last node up unchanged.
//! The root of an empty epoch is 32 zero bytes.

use sha2::{Digest, Sha256};

use crate::ledger::Hash;

/// The root of an empty tree.
pub const EMPTY_ROOT: Hash = [0; 32];

fn leaf(record_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(record_hash);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root over `record_hashes` (consumed as the working buffer).
pub fn root(mut level: Vec<Hash>) -> Hash {
    if level.is_empty() {
        return EMPTY_ROOT;
    }
    for h in level.iter_mut() {
        *h = leaf(h);
    }
    while level.len() > 1 {
        let n = level.len();
        for i in 0..n / 2 {
            level[i] = node(&level[2 * i], &level[2 * i + 1]);
        }
        if n % 2 == 1 {
            level[n / 2] = level[n - 1];
        }
        level.truncate(n.div_ceil(2));
    }
    level[0]
}

/// One step of an inclusion path: the sibling and whether it is on the left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStep {
    pub sibling: Hash,
    pub sibling_is_left: bool,
}

/// The inclusion path of leaf `index` (bottom up).
pub fn path(record_hashes: &[Hash], mut index: usize) -> Vec<PathStep> {
    let mut level: Vec<Hash> = record_hashes.iter().map(leaf).collect();
    let mut steps = Vec::new();
    while level.len() > 1 {
        let n = level.len();
        let sibling = index ^ 1;
        if sibling < n {
            steps.push(PathStep {
                sibling: level[sibling],
                sibling_is_left: sibling < index,
            });
        }
        let next: Vec<Hash> = level
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
        level = next;
        index /= 2;
    }
    steps
}

/// Whether `record_hash` with `path` leads to `root`.
pub fn verify_path(record_hash: &Hash, path: &[PathStep], root: &Hash) -> bool {
    let mut h = leaf(record_hash);
    for s in path {
        h = if s.sibling_is_left {
            node(&s.sibling, &h)
        } else {
            node(&h, &s.sibling)
        };
    }
    &h == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: u8) -> Vec<Hash> {
        (0..n).map(|i| [i; 32]).collect()
    }

    #[test]
    fn root_of_one_and_three_leaves_follow_the_rules() {
        assert_eq!(root(vec![]), EMPTY_ROOT);
        assert_eq!(root(hashes(1)), leaf(&[0; 32]));
        let l: Vec<Hash> = hashes(3).iter().map(leaf).collect();
        assert_eq!(root(hashes(3)), node(&node(&l[0], &l[1]), &l[2]));
    }

    #[test]
    fn every_leaf_has_a_path_to_the_root_and_a_wrong_leaf_does_not() {
        for n in 1..=9u8 {
            let hs = hashes(n);
            let r = root(hs.clone());
            for i in 0..hs.len() {
                let p = path(&hs, i);
                assert!(verify_path(&hs[i], &p, &r), "n={n} i={i}");
                assert!(!verify_path(&[99; 32], &p, &r), "n={n} i={i}");
            }
        }
    }
}
