//! Challenges and their answers, shared by the gateway (which answers) and
//! the collector (which issues and checks).
//!
//! Two families:
//! - `inclusion`: "show record `index` of epoch `epoch`". The gateway answers
//!   from its ledger: the record's encoding, the hash of the record before
//!   it, and the Merkle path to the epoch's root; the collector checks the
//!   path against the root of the report it accepted.
//! - `possession`: resource-specific, addressed to one plugin with a `kind`,
//!   a fresh nonce and parameters. The plugin's `prove` export answers; the
//!   collector checks with the same plugin's `verify` export.
//!
//! Answers are signed with the device key. Encoding v1, big-endian:
//!
//! ```text
//! 4    magic "DPGA"
//! u8   version (1)
//! 32   gateway public key
//! str  challenge id            (u16 length + UTF-8)
//! u8   1 = answered, 0 = the gateway could not answer
//! u32  payload length, payload (inclusion: see `InclusionProof`;
//!      possession: the plugin's proof payload; failure: the reason)
//! 64   ed25519 signature over every byte before it
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::merkle::{self, PathStep};
use crate::record::UsageRecord;

/// A challenge as the collector sends it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeSpec {
    /// Unique id (hex).
    pub id: String,
    /// `inclusion` or `possession`.
    pub family: String,
    /// Inclusion: the epoch.
    #[serde(default)]
    pub epoch: u64,
    /// Inclusion: the record's index within the epoch (0-based).
    #[serde(default)]
    pub index: u64,
    /// Possession: the plugin (by its configured name).
    #[serde(default)]
    pub plugin: String,
    /// Possession: the plugin-specific challenge kind.
    #[serde(default)]
    pub kind: String,
    /// Fresh randomness, hex.
    pub nonce: String,
    /// Kind-specific parameters, hex.
    #[serde(default)]
    pub params: String,
    /// When the collector stops accepting an answer, Unix ms (0 from a
    /// collector that sets none). The challenge counts in the epoch this
    /// falls in, answered or not: unanswered counts as failed.
    #[serde(default)]
    pub deadline_ms: u64,
}

/// Why an answer is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    #[error("the answer's signature does not match")]
    BadSignature,
}

/// A signed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub gateway_key: [u8; 32],
    pub challenge_id: String,
    pub answered: bool,
    pub payload: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"DPGA";

impl Answer {
    /// Encodes and signs.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        match self.try_sign(|body| Ok::<_, core::convert::Infallible>(key.sign(body))) {
            Ok(bytes) => bytes,
            Err(never) => match never {},
        }
    }

    /// Encodes and signs with `sign`, which may fail (a key held by a
    /// hardware token): the same bytes as [`Answer::sign`] with the same
    /// key.
    pub fn try_sign<E>(
        &self,
        sign: impl FnOnce(&[u8]) -> Result<Signature, E>,
    ) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(110 + self.challenge_id.len() + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.push(1);
        out.extend_from_slice(&self.gateway_key);
        let id = &self.challenge_id.as_bytes()[..self.challenge_id.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
        out.push(u8::from(self.answered));
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        let sig = sign(&out)?;
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }

    /// Parses and checks the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, AnswerError> {
        let bad = AnswerError::Malformed;
        if bytes.len() < 64 + 4 + 1 + 32 + 2 + 1 + 4 {
            return Err(bad("truncated"));
        }
        let (body, sig) = bytes.split_at(bytes.len() - 64);
        if &body[..4] != MAGIC || body[4] != 1 {
            return Err(bad("not a v1 answer"));
        }
        let gateway_key: [u8; 32] = body[5..37].try_into().expect("32");
        let id_len = usize::from(u16::from_be_bytes([body[37], body[38]]));
        let rest = &body[39..];
        if rest.len() < id_len + 5 {
            return Err(bad("truncated"));
        }
        let challenge_id =
            String::from_utf8(rest[..id_len].to_vec()).map_err(|_| bad("id is not UTF-8"))?;
        let answered = match rest[id_len] {
            0 => false,
            1 => true,
            _ => return Err(bad("bad answered flag")),
        };
        let len = u32::from_be_bytes(rest[id_len + 1..id_len + 5].try_into().expect("4")) as usize;
        let payload = &rest[id_len + 5..];
        if payload.len() != len {
            return Err(bad("payload length does not match"));
        }
        let key = VerifyingKey::from_bytes(&gateway_key).map_err(|_| bad("bad gateway key"))?;
        key.verify(body, &Signature::from_bytes(sig.try_into().expect("64")))
            .map_err(|_| AnswerError::BadSignature)?;
        Ok(Answer {
            gateway_key,
            challenge_id,
            answered,
            payload: payload.to_vec(),
        })
    }
}

/// The payload of an inclusion answer.
///
/// ```text
/// 32   chain hash of the record before it (zeros for record 1)
/// u32  length, the record's canonical encoding
/// u16  path steps, then per step: 32 sibling hash, u8 1 = sibling on the left
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    pub prev_hash: Hash,
    pub record: Vec<u8>,
    pub path: Vec<PathStep>,
}

impl InclusionProof {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.record.len() + self.path.len() * 33);
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&(self.record.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.record);
        out.extend_from_slice(&(self.path.len() as u16).to_be_bytes());
        for s in &self.path {
            out.extend_from_slice(&s.sibling);
            out.push(u8::from(s.sibling_is_left));
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let prev_hash: Hash = b.get(..32)?.try_into().ok()?;
        let len = u32::from_be_bytes(b.get(32..36)?.try_into().ok()?) as usize;
        let record = b.get(36..36 + len)?.to_vec();
        let mut rest = b.get(36 + len..)?;
        let n = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        rest = &rest[2..];
        let mut path = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let step = rest.get(..33)?;
            path.push(PathStep {
                sibling: step[..32].try_into().ok()?,
                sibling_is_left: step[32] == 1,
            });
            rest = &rest[33..];
        }
        rest.is_empty().then_some(InclusionProof {
            prev_hash,
            record,
            path,
        })
    }

    /// Whether this proves record number `expected_seq` is under `root`.
    pub fn check(&self, expected_seq: u64, root: &Hash) -> bool {
        let Ok(record) = UsageRecord::decode(&self.record) else {
            return false;
        };
        let hash = UsageRecord::chain_hash(&self.prev_hash, &self.record);
        record.seq == expected_seq && merkle::verify(merkle::leaf(&hash), &self.path, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_a_changed_byte_is_rejected() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let a = Answer {
            gateway_key: key.verifying_key().to_bytes(),
            challenge_id: "abc".into(),
            answered: true,
            payload: vec![1, 2, 3],
        };
        let bytes = a.sign(&key);
        assert_eq!(Answer::decode(&bytes).unwrap(), a);
        for i in [0, 10, 40, bytes.len() - 66, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Answer::decode(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn inclusion_proof_round_trips() {
        let p = InclusionProof {
            prev_hash: [1; 32],
            record: vec![5; 20],
            path: vec![PathStep {
                sibling: [2; 32],
                sibling_is_left: true,
            }],
        };
        assert_eq!(InclusionProof::decode(&p.encode()).unwrap(), p);
        assert!(InclusionProof::decode(&p.encode()[..50]).is_none());
    }
}
