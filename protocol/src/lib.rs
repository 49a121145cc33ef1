//! depin-protocol: what the gateway, the collector and the plugins must
//! agree on byte for byte.
//!
//! Pure: no I/O, no async runtime, no storage engine; it builds for
//! `wasm32-wasip2` so plugins use the same code as the host.
//!
//! - [`hash`]: the hash type and sha256 helpers;
//! - [`merkle`]: the one Merkle tree (root, inclusion path, climb);
//! - [`record`]: usage records, their canonical encoding and chain hash;
//! - [`report`]: the signed epoch report (feature `signing`);
//! - [`ack`]: the collector's acknowledgement of a report;
//! - [`proofs`]: challenges and signed answers (feature `signing`);
//! - [`rewards`]: the reward policy, the reward function and its lines;
//! - [`units`]: host-attested unit names;
//! - [`time`]: the wall clock in Unix milliseconds;
//! - [`oci`]: OCI repository names, tags and digests.

pub mod ack;
pub mod hash;
pub mod merkle;
pub mod oci;
#[cfg(feature = "signing")]
pub mod proofs;
pub mod record;
#[cfg(feature = "signing")]
pub mod report;
pub mod rewards;
pub mod time;
pub mod units;

pub use hash::{GENESIS_HASH, Hash};
