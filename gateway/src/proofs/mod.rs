//! The gateway's side of challenges: the responder that fetches them from
//! the collector and answers. The challenge and answer types are in
//! `depin_protocol::proofs`, shared with the collector.

pub mod responder;
pub mod self_check;

use depin_protocol::proofs::ChallengeSpec;

use crate::runtime::contract::Challenge;

/// A challenge as a plugin's `prove`/`verify` export takes it.
pub trait ToWit {
    /// The `challenge` record handed to a plugin's `prove`/`verify`.
    fn to_wit(&self) -> Challenge;
}

impl ToWit for ChallengeSpec {
    fn to_wit(&self) -> Challenge {
        Challenge {
            id: self.id.clone(),
            kind: self.kind.clone(),
            nonce: hex::decode(&self.nonce).unwrap_or_default(),
            params: hex::decode(&self.params).unwrap_or_default(),
        }
    }
}
