//! The reward policy and the reward function.
//!
//! The reward of an epoch is a pure function of the epoch's totals, its proof
//! results and the policy, computed in integers (micro-tokens, parts per
//! million) so the gateway's estimate and the collector's recomputation agree
//! bit for bit on every machine.
//!
//! ```text
//! line(t)     = min(t.quantity * rate.micro / rate.per, rate.cap_micro)   per total t
//! base        = sum of line(t)
//! score_ppm   = 1_000_000 when no challenge was issued,
//!               else passed * 1_000_000 / issued
//! multiplier  = max(score_ppm, proof.floor_ppm)
//! reward      = min(base * multiplier / 1_000_000, epoch_cap_micro)
//! ```
//!
//! All divisions round down. A total without a matching rate earns nothing.

use serde::Deserialize;

/// Parts per million: 1.0 as a fixed-point number.
pub const PPM: u128 = 1_000_000;

/// The reward policy file (TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardPolicy {
    /// Rates per resource kind, unit and source.
    #[serde(default, rename = "rate")]
    pub rates: Vec<Rate>,
    /// How proof results scale the reward.
    #[serde(default)]
    pub proof: ProofPolicy,
    /// Most micro-tokens one gateway can earn in one epoch.
    pub epoch_cap_micro: Option<u128>,
}

/// One `[[rate]]`: what a unit of a resource kind earns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Resource kind: `storage-cache`, `hotspot-relay`, `compute-task`,
    /// `sensor-aggregator`, `other`, or `*` for any.
    pub kind: String,
    /// Unit name, e.g. `bytes-out`.
    pub unit: String,
    /// `host` or `plugin`; any source when absent.
    pub source: Option<String>,
    /// Micro-tokens earned per `per` units.
    pub micro: u128,
    /// Units the rate is quoted for (default 1).
    #[serde(default = "one")]
    pub per: u128,
    /// Most micro-tokens this rate pays per plugin per epoch.
    pub cap_micro: Option<u128>,
}

fn one() -> u128 {
    1
}

/// `[proof]`: the proof-score multiplier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProofPolicy {
    /// The multiplier never drops below this (parts per million).
    pub floor_ppm: u128,
}

/// The usage of one plugin's unit in an epoch, as the reward sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardInput<'a> {
    pub kind: &'a str,
    pub source: &'a str,
    pub unit: &'a str,
    pub quantity: u128,
}

/// Challenge results that count toward an epoch's reward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProofResults {
    pub issued: u32,
    pub passed: u32,
}

/// Why a policy is not valid: the key (as `rate[0].per`) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct PolicyError {
    pub key: String,
    pub problem: String,
}

impl RewardPolicy {
    /// Checks the values serde cannot: every `per` above 0, every `source`
    /// `host` or `plugin`, the proof floor at most 1.0.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |key: String, problem: String| PolicyError { key, problem };
        for (i, r) in self.rates.iter().enumerate() {
            if r.per == 0 {
                return Err(err(
                    format!("rate[{i}].per"),
                    "must be greater than 0".into(),
                ));
            }
            if let Some(s) = &r.source
                && s != "host"
                && s != "plugin"
            {
                return Err(err(
                    format!("rate[{i}].source"),
                    format!("`{s}` is neither `host` nor `plugin`"),
                ));
            }
        }
        if self.proof.floor_ppm > PPM {
            return Err(err(
                "proof.floor_ppm".into(),
                format!("{} is above {PPM} (1.0)", self.proof.floor_ppm),
            ));
        }
        Ok(())
    }

    /// The first rate that matches, in file order.
    fn rate_for(&self, t: &RewardInput<'_>) -> Option<&Rate> {
        self.rates.iter().find(|r| {
            (r.kind == "*" || r.kind == t.kind)
                && r.unit == t.unit
                && r.source.as_deref().is_none_or(|s| s == t.source)
        })
    }

    /// The reward in micro-tokens. Pure and deterministic; saturates instead
    /// of overflowing.
    pub fn reward<'a>(
        &self,
        totals: impl IntoIterator<Item = RewardInput<'a>>,
        proofs: ProofResults,
    ) -> u128 {
        let base = totals
            .into_iter()
            .map(|t| match self.rate_for(&t) {
                None => 0,
                Some(rate) => {
                    let line = t.quantity.saturating_mul(rate.micro) / rate.per;
                    rate.cap_micro.map_or(line, |cap| line.min(cap))
                }
            })
            .fold(0u128, u128::saturating_add);
        let score = proof_score_ppm(proofs);
        let multiplier = score.max(self.proof.floor_ppm);
        let reward = base.saturating_mul(multiplier) / PPM;
        self.epoch_cap_micro.map_or(reward, |cap| reward.min(cap))
    }
}

/// Share of challenges passed, in parts per million; 1.0 when none were
/// issued.
pub fn proof_score_ppm(p: ProofResults) -> u128 {
    if p.issued == 0 {
        PPM
    } else {
        u128::from(p.passed.min(p.issued)) * PPM / u128::from(p.issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
epoch_cap_micro = 5000000

[proof]
floor_ppm = 250000

[[rate]]
kind = "storage-cache"
unit = "bytes-out"
source = "host"
micro = 3
per = 1000

[[rate]]
kind = "*"
unit = "requests"
micro = 20
cap_micro = 1000
"#;

    fn policy() -> RewardPolicy {
        let p: RewardPolicy = toml::from_str(POLICY).unwrap();
        p.validate().unwrap();
        p
    }

    fn input<'a>(kind: &'a str, source: &'a str, unit: &'a str, q: u128) -> RewardInput<'a> {
        RewardInput {
            kind,
            source,
            unit,
            quantity: q,
        }
    }

    #[test]
    fn readme_worked_example() {
        // 2_500_000 bytes out: 2_500_000 * 3 / 1000 = 7500
        // 80 requests: 80 * 20 = 1600, capped at 1000
        // 8 of 10 challenges passed: 800_000 ppm -> (7500 + 1000) * 0.8 = 6800
        let totals = [
            input("storage-cache", "host", "bytes-out", 2_500_000),
            input("storage-cache", "plugin", "requests", 80),
            input("storage-cache", "host", "wall-time-us", 123_456),
        ];
        let r = policy().reward(
            totals,
            ProofResults {
                issued: 10,
                passed: 8,
            },
        );
        assert_eq!(r, 6800);
    }

    #[test]
    fn floor_and_epoch_cap_bound_the_reward() {
        let p = policy();
        let t = || [input("other", "plugin", "requests", 50)];
        // all challenges failed: the floor (0.25) applies
        let r = p.reward(
            t(),
            ProofResults {
                issued: 4,
                passed: 0,
            },
        );
        assert_eq!(r, 250);
        // no challenges: full reward
        assert_eq!(p.reward(t(), ProofResults::default()), 1000);
        let huge = [input("storage-cache", "host", "bytes-out", u64::MAX.into())];
        assert_eq!(p.reward(huge, ProofResults::default()), 5_000_000);
    }

    #[test]
    fn source_must_match_when_given() {
        let t = [input("storage-cache", "plugin", "bytes-out", 1_000_000)];
        assert_eq!(policy().reward(t, ProofResults::default()), 0);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let p: RewardPolicy =
            toml::from_str("[[rate]]\nkind = \"*\"\nunit = \"u\"\nmicro = 1\nper = 0\n").unwrap();
        assert_eq!(p.validate().unwrap_err().key, "rate[0].per");
        let p: RewardPolicy =
            toml::from_str("[[rate]]\nkind = \"*\"\nunit = \"u\"\nmicro = 1\nsource = \"x\"\n")
                .unwrap();
        assert_eq!(p.validate().unwrap_err().key, "rate[0].source");
        let p: RewardPolicy = toml::from_str("[proof]\nfloor_ppm = 1000001\n").unwrap();
        assert_eq!(p.validate().unwrap_err().key, "proof.floor_ppm");
    }
}
