//! The one Merkle tree of the protocol.
//!
//! An inner node is `sha256(0x01 || left || right)`; a level with an odd
//! count carries its last node up unchanged. The root of no leaves is
//! [`EMPTY_ROOT`] (32 zero bytes).
//!
//! Leaves are hashed by their domain before they enter the tree:
//! - an epoch's records: [`leaf`] of each record's chain hash, in sequence
//!   order (the root in every epoch report);
//! - a stored blob's chunks (storage-cache): [`leaf`] of each chunk's bytes;
//! - a window's sensor readings (sensor-aggregator): its own leaf rule, see
//!   that plugin.
//!
//! A path ([`PathStep`]s, bottom up) says for each level the sibling and on
//! which side it sits; [`climb`] follows it. When only the sibling hashes
//! travel, [`positional_path`] rebuilds the sides from the leaf's index and
//! the leaf count, so the path also proves the position.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hash::Hash;

/// The root of an empty tree.
pub const EMPTY_ROOT: Hash = [0; 32];

/// The byte-leaf rule: `sha256(0x00 || bytes)`. Used for record chain
/// hashes (epoch trees) and blob chunks (storage-cache).
pub fn leaf(bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

/// An inner node: `sha256(0x01 || left || right)`.
pub fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// One step of an inclusion path: the sibling and whether it is on the
/// left. As JSON: `{"sibling": "<hex>", "left": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStep {
    #[serde(with = "hex_hash")]
    pub sibling: Hash,
    #[serde(rename = "left")]
    pub sibling_is_left: bool,
}

/// Replaces each level by the next one up, in place, until one node is
/// left.
fn reduce(level: &mut Vec<Hash>) {
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
}

/// The root over `leaves` (already leaf hashes; consumed as the working
/// buffer, so a caller that owns them pays no copy).
pub fn root(mut leaves: Vec<Hash>) -> Hash {
    if leaves.is_empty() {
        return EMPTY_ROOT;
    }
    reduce(&mut leaves);
    leaves[0]
}

/// The inclusion path of leaf `index` among `leaves`, bottom up. Empty when
/// there is one leaf (or `index` is out of range of every level).
pub fn path(leaves: &[Hash], mut index: usize) -> Vec<PathStep> {
    let mut level = leaves.to_vec();
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
        for i in 0..n / 2 {
            level[i] = node(&level[2 * i], &level[2 * i + 1]);
        }
        if n % 2 == 1 {
            level[n / 2] = level[n - 1];
        }
        level.truncate(n.div_ceil(2));
        index /= 2;
    }
    steps
}

/// The root that `leaf` and `path` lead to.
pub fn climb(leaf: Hash, path: &[PathStep]) -> Hash {
    path.iter().fold(leaf, |h, s| {
        if s.sibling_is_left {
            node(&s.sibling, &h)
        } else {
            node(&h, &s.sibling)
        }
    })
}

/// Whether `leaf` with `path` leads to `root`.
pub fn verify(leaf: Hash, path: &[PathStep], root: &Hash) -> bool {
    &climb(leaf, path) == root
}

/// The path of leaf `index` of `count` leaves whose siblings, bottom up,
/// are `siblings`: the sides follow from the position (a last node alone
/// on its level has no sibling). `None` if `siblings` has the wrong length
/// for that position.
pub fn positional_path(mut index: u64, mut count: u64, siblings: &[Hash]) -> Option<Vec<PathStep>> {
    let mut siblings = siblings.iter();
    let mut steps = Vec::new();
    while count > 1 {
        let is_last_alone = index.is_multiple_of(2) && index + 1 == count;
        if !is_last_alone {
            steps.push(PathStep {
                sibling: *siblings.next()?,
                sibling_is_left: !index.is_multiple_of(2),
            });
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    siblings.next().is_none().then_some(steps)
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::hash::Hash;

    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        let mut h = [0u8; 32];
        hex::decode_to_slice(&s, &mut h).map_err(serde::de::Error::custom)?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: u8) -> Vec<Hash> {
        (0..n).map(|i| [i; 32]).collect()
    }

    fn leaves(record_hashes: &[Hash]) -> Vec<Hash> {
        record_hashes.iter().map(|h| leaf(h)).collect()
    }

    #[test]
    fn root_of_one_and_three_leaves_follow_the_rules() {
        assert_eq!(root(vec![]), EMPTY_ROOT);
        assert_eq!(root(leaves(&hashes(1))), leaf(&[0; 32]));
        let l = leaves(&hashes(3));
        assert_eq!(root(l.clone()), node(&node(&l[0], &l[1]), &l[2]));
    }

    #[test]
    fn every_leaf_has_a_path_to_the_root_and_a_wrong_leaf_does_not() {
        for n in 1..=9u8 {
            let l = leaves(&hashes(n));
            let r = root(l.clone());
            for i in 0..l.len() {
                let p = path(&l, i);
                assert!(verify(l[i], &p, &r), "n={n} i={i}");
                assert!(!verify(leaf(&[99; 32]), &p, &r), "n={n} i={i}");
            }
        }
    }

    #[test]
    fn positional_paths_prove_the_position() {
        for n in 1..=9usize {
            let l: Vec<Hash> = (0..n).map(|i| leaf(&[i as u8; 3])).collect();
            let r = root(l.clone());
            for i in 0..n {
                let siblings: Vec<Hash> = path(&l, i).iter().map(|s| s.sibling).collect();
                let p = positional_path(i as u64, n as u64, &siblings).unwrap();
                assert_eq!(p, path(&l, i), "n={n} i={i}");
                assert_eq!(climb(l[i], &p), r, "n={n} i={i}");
                if n > 1 {
                    let other = (i + 1) % n;
                    let wrong = positional_path(other as u64, n as u64, &siblings);
                    assert_ne!(
                        wrong.map(|p| climb(l[i], &p)),
                        Some(r),
                        "leaf {i} must not pass as {other} (n={n})"
                    );
                }
            }
        }
    }

    #[test]
    fn path_steps_as_json_name_the_sibling_in_hex_and_its_side() {
        let s = PathStep {
            sibling: [0xab; 32],
            sibling_is_left: true,
        };
        let json = format!("{{\"sibling\":\"{}\",\"left\":true}}", "ab".repeat(32));
        assert_eq!(serde_json::to_string(&s).unwrap(), json);
        assert_eq!(serde_json::from_str::<PathStep>(&json).unwrap(), s);
        assert!(serde_json::from_str::<PathStep>(r#"{"sibling":"zz","left":true}"#).is_err());
    }
}
