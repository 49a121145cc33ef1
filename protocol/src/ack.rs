//! The collector's acknowledgement of an epoch report, as the gateway
//! reads it: JSON from outside the gateway, so decoding is strict about
//! what the gateway relies on (the epoch and the report's hash) and
//! lenient about the rest (a figure it cannot read is dropped, not an
//! error, because the report was acknowledged all the same).
//!
//! ```json
//! {"status": "accepted", "gateway_id": "dpg1…", "epoch": 7,
//!  "hash": "<sha256 hex of the report bytes>",
//!  "decision": {"reward_micro": "12", "proof_score_ppm": "1000000", "lines": […]}}
//! ```

use serde::{Deserialize, Serialize};

use crate::rewards::{RewardLine, u128_string};

/// Largest acknowledgement the gateway reads; a collector's answer is a
/// few kilobytes (one reward line per total).
pub const MAX_ACK_BYTES: usize = 1 << 20;

/// What the collector decided for an epoch, as its acknowledgement carried
/// it: the reward, the proof score from its own records, and one line per
/// total with its reason. The gateway's own figure is the report's
/// `reward_micro` (an estimate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorFigure {
    #[serde(with = "u128_string")]
    pub reward_micro: u128,
    /// Share of the challenges due in the epoch that passed, ppm.
    #[serde(with = "u128_string")]
    pub proof_score_ppm: u128,
    pub lines: Vec<RewardLine>,
}

/// A decoded acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub epoch: u64,
    /// sha256 of the acknowledged report's bytes.
    pub hash: crate::Hash,
    /// `accepted`, `duplicate`, or what a newer collector says; for logs.
    pub status: String,
    /// The collector's figure; `None` when it sent none or one this
    /// gateway cannot read.
    pub figure: Option<CollectorFigure>,
}

/// Why an acknowledgement was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("the acknowledgement is {0} bytes, more than the {MAX_ACK_BYTES} read")]
    TooLarge(usize),
    #[error("the acknowledgement is not a JSON object: {0}")]
    NotJson(String),
    #[error("the acknowledgement has no {0}")]
    Missing(&'static str),
    #[error("the acknowledgement is for epoch {got}, not {expected}")]
    OtherEpoch { expected: u64, got: u64 },
    #[error("the acknowledgement is for a report with hash {got}, not {expected}")]
    OtherReport { expected: String, got: String },
}

#[derive(Deserialize)]
struct Wire {
    epoch: Option<u64>,
    hash: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    decision: Option<serde_json::Value>,
}

impl Acknowledgement {
    /// Decodes `body` (any bytes).
    pub fn decode(body: &[u8]) -> Result<Self, AckError> {
        if body.len() > MAX_ACK_BYTES {
            return Err(AckError::TooLarge(body.len()));
        }
        let wire: Wire =
            serde_json::from_slice(body).map_err(|e| AckError::NotJson(e.to_string()))?;
        let epoch = wire.epoch.ok_or(AckError::Missing("epoch"))?;
        let hash = wire
            .hash
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <crate::Hash>::try_from(h).ok())
            .ok_or(AckError::Missing("hash (64 hex digits)"))?;
        let figure = wire
            .decision
            .and_then(|d| serde_json::from_value::<CollectorFigure>(d).ok());
        let status = wire.status.unwrap_or_default().chars().take(32).collect();
        Ok(Self {
            epoch,
            hash,
            status,
            figure,
        })
    }

    /// Decodes `body` and checks that it acknowledges the report of
    /// `epoch` whose bytes hash to `hash`.
    pub fn decode_for(body: &[u8], epoch: u64, hash: &crate::Hash) -> Result<Self, AckError> {
        let ack = Self::decode(body)?;
        if ack.epoch != epoch {
            return Err(AckError::OtherEpoch {
                expected: epoch,
                got: ack.epoch,
            });
        }
        if &ack.hash != hash {
            return Err(AckError::OtherReport {
                expected: hex::encode(hash),
                got: hex::encode(ack.hash),
            });
        }
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(epoch: u64, hash: &str, decision: &str) -> Vec<u8> {
        format!(
            r#"{{"status":"accepted","gateway_id":"dpg1x","epoch":{epoch},"hash":"{hash}","decision":{decision}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_collectors_acknowledgement_decodes_with_its_figure() {
        let hash = [7u8; 32];
        let b = body(
            3,
            &hex::encode(hash),
            r#"{"reward_micro":"12","proof_score_ppm":"1000000","lines":[]}"#,
        );
        let ack = Acknowledgement::decode_for(&b, 3, &hash).unwrap();
        assert_eq!(ack.status, "accepted");
        let figure = ack.figure.unwrap();
        assert_eq!(figure.reward_micro, 12);
        assert_eq!(figure.proof_score_ppm, 1_000_000);
    }

    #[test]
    fn an_unreadable_figure_is_dropped_but_the_acknowledgement_holds() {
        let hash = [1u8; 32];
        let b = body(1, &hex::encode(hash), r#"{"reward_micro":12}"#);
        let ack = Acknowledgement::decode_for(&b, 1, &hash).unwrap();
        assert_eq!(ack.figure, None);
    }

    #[test]
    fn another_epoch_or_report_or_garbage_is_refused() {
        let hash = [1u8; 32];
        let b = body(2, &hex::encode(hash), "null");
        assert_eq!(
            Acknowledgement::decode_for(&b, 1, &hash),
            Err(AckError::OtherEpoch {
                expected: 1,
                got: 2
            })
        );
        assert!(matches!(
            Acknowledgement::decode_for(&b, 2, &[2u8; 32]),
            Err(AckError::OtherReport { .. })
        ));
        assert!(matches!(
            Acknowledgement::decode(b"[1,2]"),
            Err(AckError::NotJson(_))
        ));
        assert_eq!(
            Acknowledgement::decode(br#"{"epoch":1,"hash":"zz"}"#),
            Err(AckError::Missing("hash (64 hex digits)"))
        );
        assert_eq!(
            Acknowledgement::decode(&vec![b' '; MAX_ACK_BYTES + 1]),
            Err(AckError::TooLarge(MAX_ACK_BYTES + 1))
        );
    }

    #[test]
    fn a_long_status_is_cut_to_32_characters() {
        let hash = [1u8; 32];
        let b = format!(
            r#"{{"status":"{}","epoch":1,"hash":"{}"}}"#,
            "é".repeat(40),
            hex::encode(hash)
        );
        let ack = Acknowledgement::decode(b.as_bytes()).unwrap();
        assert_eq!(ack.status, "é".repeat(32));
    }
}
