//! Hashes: every hash in the protocol is a sha256.

use sha2::{Digest, Sha256};

/// A 32-byte sha256 hash.
pub type Hash = [u8; 32];

/// The previous hash of the first record of a ledger, and of the first
/// report of a gateway.
pub const GENESIS_HASH: Hash = [0; 32];

/// `sha256(bytes)`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// `sha256(a || b)`, without concatenating first.
pub fn sha256_concat(a: &[u8], b: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(a);
    h.update(b);
    h.finalize().into()
}
