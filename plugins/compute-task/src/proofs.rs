//! Proofs of the compute resource.
//!
//! - `canary`: params `{"module", "input_hex", "fuel", "memory_mb"}` name a
//!   job the verifier knows. The proof is its output, fuel and exit status,
//!   bound to the nonce; `verify` runs the job again and compares all of it
//!   exactly.
//! - `job-inclusion`: params `{"job", "evidence"?}` name a finished job. The
//!   proof is `(module, input hash, output hash, fuel, evidence)` where
//!   `evidence = sha256(module || 0x00 || input hash || output hash)`, the
//!   hash the ledger records for the job; `verify` recomputes it and, when
//!   the challenge carries the ledger's evidence, compares the two.

use depin_plugin_sdk::jobs;
use depin_plugin_sdk::{Challenge, Proof};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::queue::{self, State};

/// Parameters of a `canary` challenge.
#[derive(Debug, Serialize, Deserialize)]
pub struct Canary {
    pub module: String,
    pub input_hex: String,
    pub fuel: u64,
    pub memory_mb: u32,
}

/// The proof of a `canary` challenge.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryProof {
    pub output_hex: String,
    pub fuel: u64,
    pub exit_code: u32,
    /// `sha256(nonce || output || fuel (u64 LE) || exit code (u32 LE))`.
    pub binding: String,
}

/// Parameters of a `job-inclusion` challenge.
#[derive(Debug, Serialize, Deserialize)]
pub struct Inclusion {
    pub job: String,
    /// The evidence the ledger holds for the job, hex; checked by `verify`.
    #[serde(default)]
    pub evidence: Option<String>,
}

/// The proof of a `job-inclusion` challenge.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub job: String,
    pub module: String,
    pub input_sha256: String,
    pub output_sha256: String,
    pub fuel: u64,
    pub evidence: String,
}

/// The challenge kinds this plugin answers.
pub const KINDS: &str = "canary, job-inclusion";

/// Answers a challenge.
pub fn prove(c: &Challenge) -> Result<Proof, String> {
    let payload = match c.kind.as_str() {
        "canary" => serde_json::to_vec(&run_canary(c)?),
        "job-inclusion" => serde_json::to_vec(&inclusion(c)?),
        other => {
            return Err(format!(
                "challenge kind `{other}` is not supported ({KINDS})"
            ));
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(Proof {
        challenge_id: c.id.clone(),
        payload,
    })
}

/// Checks a proof; re-executes canaries.
pub fn verify(c: &Challenge, p: &Proof) -> bool {
    if p.challenge_id != c.id {
        return false;
    }
    match c.kind.as_str() {
        "canary" => {
            let Ok(claimed) = serde_json::from_slice::<CanaryProof>(&p.payload) else {
                return false;
            };
            run_canary(c).is_ok_and(|expected| expected == claimed)
        }
        "job-inclusion" => {
            let (Ok(params), Ok(claimed)) = (
                serde_json::from_slice::<Inclusion>(&c.params),
                serde_json::from_slice::<InclusionProof>(&p.payload),
            ) else {
                return false;
            };
            let Some(recomputed) = evidence_hex(
                &claimed.module,
                &claimed.input_sha256,
                &claimed.output_sha256,
            ) else {
                return false;
            };
            claimed.job == params.job
                && claimed.evidence == recomputed
                && params.evidence.is_none_or(|e| e == recomputed)
        }
        _ => false,
    }
}

fn run_canary(c: &Challenge) -> Result<CanaryProof, String> {
    let params: Canary = serde_json::from_slice(&c.params).map_err(|e| {
        format!("canary params are not {{module, input_hex, fuel, memory_mb}}: {e}")
    })?;
    let input = hex::decode(&params.input_hex).map_err(|e| format!("input_hex: {e}"))?;
    let subject = format!("challenge:{}", c.id);
    let out = jobs::run(
        &params.module,
        &input,
        params.fuel,
        params.memory_mb,
        Some(&subject),
    )
    .map_err(|f| format!("the canary did not finish: {}", crate::describe_failure(&f)))?;
    let mut h = Sha256::new();
    h.update(&c.nonce);
    h.update(&out.output);
    h.update(out.fuel_consumed.to_le_bytes());
    h.update(out.exit_code.to_le_bytes());
    Ok(CanaryProof {
        output_hex: hex::encode(&out.output),
        fuel: out.fuel_consumed,
        exit_code: out.exit_code,
        binding: hex::encode(h.finalize()),
    })
}

fn inclusion(c: &Challenge) -> Result<InclusionProof, String> {
    let params: Inclusion = serde_json::from_slice(&c.params)
        .map_err(|e| format!("job-inclusion params are not {{job}}: {e}"))?;
    let job = queue::get(&params.job)?.ok_or_else(|| format!("no job `{}`", params.job))?;
    let result = match (&job.state, &job.result) {
        (State::Done, Some(r)) => r,
        _ => return Err(format!("job `{}` has not finished", job.id)),
    };
    let output_sha256 = result.output_sha256.clone().unwrap_or_default();
    let evidence = evidence_hex(&job.module, &job.input_sha256, &output_sha256)
        .ok_or("the job record is damaged")?;
    Ok(InclusionProof {
        job: job.id,
        module: job.module,
        input_sha256: job.input_sha256,
        output_sha256,
        fuel: result.fuel_used,
        evidence,
    })
}

/// The evidence hash of a finished job (the same the host records with its
/// `job-fuel` record): `sha256(module || 0x00 || sha256(input) ||
/// sha256(output))`, from the hex hashes.
pub fn evidence_hex(module: &str, input_sha256: &str, output_sha256: &str) -> Option<String> {
    let input = hex::decode(input_sha256).ok().filter(|b| b.len() == 32)?;
    let output = hex::decode(output_sha256).ok().filter(|b| b.len() == 32)?;
    let mut h = Sha256::new();
    h.update(module.as_bytes());
    h.update([0]);
    h.update(input);
    h.update(output);
    Some(hex::encode(h.finalize()))
}
