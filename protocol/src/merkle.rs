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

/// The root over leaves fed one at a time, in order: the same root as
/// [`root`] over the same leaves, holding one hash per level (the roots of
/// the complete subtrees not yet paired), so memory is O(log n).
///
/// A level's node `j` covers leaves `[j * 2^k, min((j + 1) * 2^k, n))`, and
/// a node left alone at the end of a level is carried up: the tree over
/// `n` leaves is the complete subtrees of `n`'s binary digits, largest
/// first, joined from the right. That is what [`finish`](Self::finish)
/// does with the pending subtrees.
#[derive(Debug, Clone, Default)]
pub struct StreamingRoot {
    /// `pending[k]`: a complete subtree of `2^k` leaves waiting for its
    /// right neighbour.
    pending: Vec<Option<Hash>>,
    count: u64,
}

impl StreamingRoot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next leaf (already a leaf hash).
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = leaf;
        for slot in self.pending.iter_mut() {
            match slot.take() {
                None => {
                    *slot = Some(carry);
                    self.count += 1;
                    return;
                }
                Some(left) => carry = node(&left, &carry),
            }
        }
        self.pending.push(Some(carry));
        self.count += 1;
    }

    /// Leaves pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The root over the leaves pushed so far ([`EMPTY_ROOT`] for none).
    pub fn finish(&self) -> Hash {
        // Lowest level first: the rightmost subtree first.
        self.pending
            .iter()
            .flatten()
            .fold(None, |right: Option<Hash>, left| {
                Some(right.map_or(*left, |r| node(left, &r)))
            })
            .unwrap_or(EMPTY_ROOT)
    }
}

/// The inclusion path of leaf `index` among `count` leaves fed one at a
/// time, in order: the same path as [`path`], holding O(log² n) hashes
/// instead of the leaves. Each step's sibling is the root of the leaves
/// `[s * 2^k, min((s + 1) * 2^k, count))` for the sibling `s` of the
/// leaf's node on level `k`; one [`StreamingRoot`] per step collects it.
#[derive(Debug, Clone)]
pub struct StreamingPath {
    /// Per step, bottom up: the leaf range of the sibling, its side, and
    /// its root so far.
    steps: Vec<(u64, u64, bool, StreamingRoot)>,
    next: u64,
}

impl StreamingPath {
    /// A path for leaf `index` of `count`.
    pub fn new(index: u64, count: u64) -> Self {
        let mut steps = Vec::new();
        let mut level_count = count;
        let mut k = 0u32;
        while level_count > 1 {
            let j = index >> k;
            let s = j ^ 1;
            if s < level_count {
                let start = s << k;
                let end = ((s + 1) << k).min(count);
                steps.push((start, end, s < j, StreamingRoot::new()));
            }
            level_count = level_count.div_ceil(2);
            k += 1;
        }
        Self { steps, next: 0 }
    }

    /// Adds the next leaf (already a leaf hash).
    pub fn push(&mut self, leaf: Hash) {
        let at = self.next;
        self.next += 1;
        for (start, end, _, sibling) in &mut self.steps {
            if (*start..*end).contains(&at) {
                sibling.push(leaf);
            }
        }
    }

    /// The path, bottom up; `None` until all `count` leaves were pushed.
    pub fn finish(&self) -> Option<Vec<PathStep>> {
        self.steps
            .iter()
            .map(|(start, end, left, sibling)| {
                (sibling.count() == end - start).then(|| PathStep {
                    sibling: sibling.finish(),
                    sibling_is_left: *left,
                })
            })
            .collect()
    }
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
    fn streaming_root_is_the_root_at_every_size() {
        let all: Vec<Hash> = (0..1100u32).map(|i| leaf(&i.to_be_bytes())).collect();
        let mut streamed = StreamingRoot::new();
        assert_eq!(streamed.finish(), EMPTY_ROOT);
        for n in 1..=all.len() {
            streamed.push(all[n - 1]);
            assert_eq!(streamed.count(), n as u64);
            assert_eq!(streamed.finish(), root(all[..n].to_vec()), "n={n}");
        }
        for n in [4095usize, 4096, 4097, 65_537, 100_003] {
            let many: Vec<Hash> = (0..n as u32).map(|i| leaf(&i.to_le_bytes())).collect();
            let mut streamed = StreamingRoot::new();
            many.iter().for_each(|l| streamed.push(*l));
            assert_eq!(streamed.finish(), root(many), "n={n}");
        }
    }

    #[test]
    fn streaming_paths_are_the_paths() {
        for n in 1..=70usize {
            let l: Vec<Hash> = (0..n).map(|i| leaf(&[i as u8; 5])).collect();
            for i in 0..n {
                let mut p = StreamingPath::new(i as u64, n as u64);
                l.iter().for_each(|x| p.push(*x));
                assert_eq!(p.finish(), Some(path(&l, i)), "n={n} i={i}");
            }
        }
        let mut short = StreamingPath::new(3, 8);
        short.push(leaf(b"only one"));
        assert_eq!(short.finish(), None, "not all leaves seen");
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
