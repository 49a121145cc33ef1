//! Report intake: what the collector checks before a report counts, and
//! how it decides the reward of an accepted one.
//!
//! Checks, in order, each refusal with its name: the body is a canonical,
//! correctly signed report (`malformed`, `bad-signature`); its gateway key
//! is the one the client certificate maps to (`wrong-gateway`); it is
//! encoding v2, unless the policy admits v1 (`legacy-report`); its epoch
//! has the collector's length (`wrong-length`), has begun (`future`) and
//! ended at least `grace_ms` ago (`not-ended`); it extends the gateway's
//! chain (`overlapping`, `preceding`, `replayed`, `gap`, `not-genesis`);
//! the challenges it lists were issued to it (`unknown-challenge`).
//!
//! The reward is the collector's own: the proof score comes from its
//! records of the challenges due in the epoch (expired = failed), the
//! kind of each total from the approved digest the report gives for its
//! plugin (`unapproved-component` otherwise), never from the report's own
//! kind, score or estimate.

use std::collections::{BTreeMap, BTreeSet};

use depin_protocol::report::{REPORT_VERSION_LEGACY, ReportError, SignedReport};
use depin_protocol::rewards::{LineInput, ProofResults, RewardPolicy};
use hyper::StatusCode;

use crate::config::ScheduleConfig;
use crate::store::{ChainError, ChallengeRecord, Decide};

/// Why a report was refused, with its HTTP status and name.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Malformed(ReportError),
    #[error("{0}")]
    BadSignature(ReportError),
    #[error("the report is signed for {report} but the client certificate belongs to {cert}")]
    WrongGateway { report: String, cert: String },
    #[error("report encoding v1 carries no component digests; this collector admits v2 only")]
    LegacyReport,
    #[error("the epoch is {got} ms long; the collector's epochs are {want} ms")]
    WrongLength { got: u64, want: u64 },
    #[error("epoch {epoch} starts at {start_ms}, in the future (now {now_ms})")]
    Future {
        epoch: u64,
        start_ms: u64,
        now_ms: u64,
    },
    #[error("epoch {epoch} ends at {end_ms}; reports are accepted from {from_ms} (now {now_ms})")]
    NotEnded {
        epoch: u64,
        end_ms: u64,
        from_ms: u64,
        now_ms: u64,
    },
    #[error(transparent)]
    Chain(ChainError),
}

impl Rejection {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
            Rejection::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Rejection::WrongGateway { .. } => StatusCode::FORBIDDEN,
            Rejection::LegacyReport | Rejection::WrongLength { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Rejection::Future { .. } | Rejection::NotEnded { .. } => StatusCode::TOO_EARLY,
            Rejection::Chain(ChainError::Storage(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::Chain(ChainError::UnknownChallenge(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::Chain(_) => StatusCode::CONFLICT,
        }
    }

    /// The documented name (also the metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::BadSignature(_) => "bad-signature",
            Rejection::WrongGateway { .. } => "wrong-gateway",
            Rejection::LegacyReport => "legacy-report",
            Rejection::WrongLength { .. } => "wrong-length",
            Rejection::Future { .. } => "future",
            Rejection::NotEnded { .. } => "not-ended",
            Rejection::Chain(c) => c.name(),
        }
    }
}

/// Checks a report's encoding, signature, sender, version and schedule;
/// does not touch storage. Returns the report and its epoch's end, ms.
pub fn check_report(
    bytes: &[u8],
    cert_gateway: &str,
    schedule: &ScheduleConfig,
    now_ms: u64,
) -> Result<(SignedReport, u64), Rejection> {
    let report = SignedReport::decode(bytes).map_err(|e| match e {
        ReportError::BadSignature => Rejection::BadSignature(e),
        other => Rejection::Malformed(other),
    })?;
    let r = &report.report;
    let id = r.gateway_id();
    if id != cert_gateway {
        return Err(Rejection::WrongGateway {
            report: id,
            cert: cert_gateway.to_string(),
        });
    }
    if r.version == REPORT_VERSION_LEGACY && !schedule.admit_v1 {
        return Err(Rejection::LegacyReport);
    }
    if r.length_ms != schedule.length_ms {
        return Err(Rejection::WrongLength {
            got: r.length_ms,
            want: schedule.length_ms,
        });
    }
    let start_ms = r.epoch.saturating_mul(r.length_ms);
    let end_ms = start_ms.saturating_add(r.length_ms);
    if start_ms > now_ms {
        return Err(Rejection::Future {
            epoch: r.epoch,
            start_ms,
            now_ms,
        });
    }
    let from_ms = end_ms.saturating_add(schedule.grace_ms);
    if now_ms < from_ms {
        return Err(Rejection::NotEnded {
            epoch: r.epoch,
            end_ms,
            from_ms,
            now_ms,
        });
    }
    Ok((report, end_ms))
}

/// The collector's reward decision: its policy, its approved components.
pub struct Decider<'a> {
    pub policy: &'a RewardPolicy,
    /// Approved digest (`sha256:<hex>`) -> kind.
    pub approved: &'a BTreeMap<String, String>,
}

impl Decide for Decider<'_> {
    fn decide(&self, report: &SignedReport, due: &[ChallengeRecord]) -> (serde_json::Value, u128) {
        let r = &report.report;
        let legacy = r.version == REPORT_VERSION_LEGACY;
        let digests: BTreeMap<&str, String> = r
            .components
            .iter()
            .map(|c| (c.plugin.as_str(), c.digest_string()))
            .collect();
        let passed = due.iter().filter(|c| c.status == "passed").count();
        let proofs = ProofResults {
            issued: due.len() as u32,
            passed: passed as u32,
        };
        let decision = self.policy.decide(
            r.totals.iter().map(|t| {
                let digest = digests.get(t.plugin.as_str()).map_or("", |d| d.as_str());
                // v1 (admitted by policy): the kind the gateway claims.
                let kind = if legacy {
                    Some(t.kind.as_str())
                } else {
                    self.approved.get(digest).map(|k| k.as_str())
                };
                LineInput {
                    plugin: &t.plugin,
                    digest,
                    kind,
                    source: &t.source,
                    unit: &t.unit,
                    quantity: t.quantity,
                }
            }),
            proofs,
        );
        let count = |s: &str| due.iter().filter(|c| c.status == s).count();
        let json = serde_json::json!({
            "status": "accepted",
            "gateway_id": r.gateway_id(),
            "epoch": r.epoch,
            "start_ms": r.start_ms(),
            "length_ms": r.length_ms,
            "version": r.version,
            "report_hash": hex::encode(report.hash()),
            "reward_micro": decision.total_micro.to_string(),
            "estimate_micro": r.reward_micro.to_string(),
            "components": r.components.iter().map(|c| serde_json::json!({
                "plugin": c.plugin,
                "digest": c.digest_string(),
                "signer": c.signer_string(),
            })).collect::<Vec<_>>(),
            "proof_score_ppm": decision.score_ppm.to_string(),
            "multiplier_ppm": decision.multiplier_ppm.to_string(),
            "proofs": {
                "due": due.len(),
                "passed": count("passed"),
                "failed": count("failed"),
                "expired": count("expired"),
                "challenges": due.iter().map(|c| serde_json::json!({
                    "id": c.spec.id,
                    "family": c.spec.family,
                    "plugin": c.spec.plugin,
                    "kind": c.spec.kind,
                    "deadline_ms": c.deadline_ms,
                    "status": c.status,
                })).collect::<Vec<_>>(),
                "discrepancies": discrepancies(report, due),
            },
            "lines": decision.lines,
        });
        (json, decision.total_micro)
    }
}

/// Where the report's list of challenge results differs from the
/// collector's records of the challenges due in the epoch. Informational:
/// the score is the collector's either way.
fn discrepancies(report: &SignedReport, due: &[ChallengeRecord]) -> Vec<serde_json::Value> {
    let listed: BTreeMap<&str, bool> = report
        .report
        .proofs
        .iter()
        .map(|p| (p.challenge_id.as_str(), p.passed))
        .collect();
    let due_ids: BTreeSet<&str> = due.iter().map(|c| c.spec.id.as_str()).collect();
    let mut out = Vec::new();
    for c in due {
        match listed.get(c.spec.id.as_str()) {
            None => out.push(serde_json::json!({
                "id": c.spec.id, "problem": "dropped", "collector": c.status,
            })),
            Some(&passed) if passed != (c.status == "passed") => out.push(serde_json::json!({
                "id": c.spec.id, "problem": "contradicted",
                "report": if passed { "passed" } else { "failed" }, "collector": c.status,
            })),
            Some(_) => {}
        }
    }
    for (id, passed) in listed {
        if !due_ids.contains(id) {
            out.push(serde_json::json!({
                "id": id, "problem": "not-due-in-epoch",
                "report": if passed { "passed" } else { "failed" },
            }));
        }
    }
    out
}

/// The refusal as `explain` shows it.
pub fn refusal_json(report: &SignedReport, e: &Rejection, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "status": "refused",
        "gateway_id": report.report.gateway_id(),
        "epoch": report.report.epoch,
        "report_hash": hex::encode(report.hash()),
        "reason": "refused-report",
        "refusal": e.name(),
        "message": e.to_string(),
        "refused_ms": now_ms,
        "reward_micro": "0",
        "lines": [],
    })
}

#[cfg(test)]
mod tests {
    use depin_gateway::identity::DeviceKey;
    use depin_protocol::report::{EpochReport, REPORT_VERSION};

    use super::*;

    #[test]
    fn the_schedule_is_the_collectors() {
        let key = DeviceKey::generate();
        let schedule = ScheduleConfig {
            length_ms: 1000,
            grace_ms: 100,
            admit_v1: false,
        };
        let report = |version: u8, epoch: u64, length_ms: u64| {
            EpochReport {
                version,
                gateway_key: key.verifying_key().to_bytes(),
                epoch,
                length_ms,
                prev_hash: [0; 32],
                first_seq: 0,
                records: 0,
                merkle_root: [0; 32],
                components: vec![],
                totals: vec![],
                subject_totals: vec![],
                proofs: vec![],
                reward_micro: 0,
            }
            .sign(key.signing_key())
        };
        let check = |version: u8, epoch: u64, length_ms: u64, now: u64| {
            let r = report(version, epoch, length_ms);
            check_report(&r.bytes, &key.gateway_id(), &schedule, now)
                .map(|(_, end)| end)
                .map_err(|e| e.name())
        };
        assert_eq!(check(REPORT_VERSION, 5, 1000, 6_100), Ok(6_000));
        assert_eq!(check(REPORT_VERSION, 5, 1000, 6_099), Err("not-ended"));
        assert_eq!(check(REPORT_VERSION, 5, 1000, 5_500), Err("not-ended"));
        assert_eq!(check(REPORT_VERSION, 7, 1000, 6_100), Err("future"));
        assert_eq!(check(REPORT_VERSION, 50, 100, 6_100), Err("wrong-length"));
        assert_eq!(check(1, 5, 1000, 6_100), Err("legacy-report"));
        let admitting = ScheduleConfig {
            admit_v1: true,
            ..schedule.clone()
        };
        let r = report(1, 5, 1000);
        assert!(check_report(&r.bytes, &key.gateway_id(), &admitting, 6_100).is_ok());
    }
}
