//! The reward policy and the reward function.
//!
//! The reward of an epoch is a pure function of the epoch's totals, its proof
//! results and the policy, computed in integers (micro-tokens, parts per
//! million) so the gateway's estimate and the collector's decision agree
//! bit for bit on every machine. Every total becomes one [`RewardLine`]
//! that says what it earned and why ([`Reason`]).
//!
//! ```text
//! line(t)     = min(t.quantity * rate.micro / rate.per, rate.cap_micro)   per total t
//!               (0 when no rate matches or the component is unapproved)
//! score_ppm   = 1_000_000 when no challenge was due,
//!               else passed * 1_000_000 / due
//! multiplier  = max(score_ppm, proof.floor_ppm)
//! amount(t)   = line(t) * multiplier / 1_000_000
//! sum         = sum of amount(t)
//! with epoch_cap_micro < sum: amount(t) = amount(t) * epoch_cap_micro / sum
//! reward      = sum of amount(t)
//! ```
//!
//! All divisions round down. A total without a matching rate earns nothing.

use serde::{Deserialize, Serialize};

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

    /// The reward in micro-tokens: the total of [`decide`](Self::decide).
    pub fn reward<'a>(
        &self,
        totals: impl IntoIterator<Item = RewardInput<'a>>,
        proofs: ProofResults,
    ) -> u128 {
        self.decide(
            totals.into_iter().map(|t| LineInput {
                plugin: "",
                digest: "",
                kind: Some(t.kind),
                source: t.source,
                unit: t.unit,
                quantity: t.quantity,
            }),
            proofs,
        )
        .total_micro
    }

    /// The reward of an epoch line by line, each with its reason. Pure and
    /// deterministic; saturates instead of overflowing.
    pub fn decide<'a>(
        &self,
        totals: impl IntoIterator<Item = LineInput<'a>>,
        proofs: ProofResults,
    ) -> RewardDecision {
        let score_ppm = proof_score_ppm(proofs);
        let multiplier = score_ppm.max(self.proof.floor_ppm);
        let mut lines: Vec<RewardLine> = totals
            .into_iter()
            .map(|t| {
                let mut line = RewardLine {
                    plugin: t.plugin.to_string(),
                    digest: t.digest.to_string(),
                    kind: t.kind.unwrap_or("").to_string(),
                    source: t.source.to_string(),
                    unit: t.unit.to_string(),
                    quantity: t.quantity,
                    rate_micro: None,
                    rate_per: None,
                    amount_micro: 0,
                    reason: Reason::Rated,
                };
                let Some(kind) = t.kind else {
                    line.reason = Reason::UnapprovedComponent;
                    return line;
                };
                let input = RewardInput {
                    kind,
                    source: t.source,
                    unit: t.unit,
                    quantity: t.quantity,
                };
                let Some(rate) = self.rate_for(&input) else {
                    line.reason = Reason::NoRate;
                    return line;
                };
                line.rate_micro = Some(rate.micro);
                line.rate_per = Some(rate.per);
                let full = t.quantity.saturating_mul(rate.micro) / rate.per;
                let capped = rate.cap_micro.map_or(full, |cap| full.min(cap));
                if capped < full {
                    line.reason = Reason::Capped;
                }
                line.amount_micro = capped.saturating_mul(multiplier) / PPM;
                if line.amount_micro < capped {
                    line.reason = Reason::ProofScore;
                }
                line
            })
            .collect();
        let sum = lines
            .iter()
            .map(|l| l.amount_micro)
            .fold(0u128, u128::saturating_add);
        if let Some(cap) = self.epoch_cap_micro
            && sum > cap
        {
            for l in &mut lines {
                let scaled = scale(l.amount_micro, cap, sum);
                if scaled < l.amount_micro {
                    l.reason = Reason::EpochCap;
                }
                l.amount_micro = scaled;
            }
        }
        let total_micro = lines
            .iter()
            .map(|l| l.amount_micro)
            .fold(0u128, u128::saturating_add);
        RewardDecision {
            lines,
            proofs,
            score_ppm,
            multiplier_ppm: multiplier,
            total_micro,
        }
    }
}

/// `amount * num / den` without overflowing (num <= den).
fn scale(amount: u128, num: u128, den: u128) -> u128 {
    match amount.checked_mul(num) {
        Some(p) => p / den,
        // Too large to multiply: divide first (loses only sub-unit
        // precision at magnitudes no real epoch reaches).
        None => amount / den.max(1) * num + (amount % den.max(1)).saturating_mul(num) / den.max(1),
    }
}

/// One total of an epoch as the reward function sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput<'a> {
    pub plugin: &'a str,
    /// `sha256:<hex>` of the component that produced the records (empty
    /// when the caller does not know it).
    pub digest: &'a str,
    /// The resource kind the rates apply by; `None` when the component is
    /// not approved (the line earns nothing, reason `unapproved-component`).
    pub kind: Option<&'a str>,
    pub source: &'a str,
    pub unit: &'a str,
    pub quantity: u128,
}

/// Why a reward line is what it is. The set is closed and documented in
/// the collector's operator guide; the wire form is the kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The rate applied in full: quantity * micro / per.
    Rated,
    /// No `[[rate]]` matches the line's kind, unit and source: 0.
    NoRate,
    /// The rate's `cap_micro` cut the line.
    Capped,
    /// The component's digest is not approved by the collector: 0.
    UnapprovedComponent,
    /// The proof-score multiplier (below 1.0) cut the line.
    ProofScore,
    /// The epoch cap cut the line (every line in proportion).
    EpochCap,
    /// The report was refused; nothing of it counts.
    RefusedReport,
}

impl Reason {
    /// The wire name, e.g. `unapproved-component`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rated => "rated",
            Reason::NoRate => "no-rate",
            Reason::Capped => "capped",
            Reason::UnapprovedComponent => "unapproved-component",
            Reason::ProofScore => "proof-score",
            Reason::EpochCap => "epoch-cap",
            Reason::RefusedReport => "refused-report",
        }
    }
}

/// What one total of an epoch earned, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardLine {
    pub plugin: String,
    /// `sha256:<hex>`, or empty when unknown.
    pub digest: String,
    /// The kind the rates applied by (empty when unapproved).
    pub kind: String,
    pub source: String,
    pub unit: String,
    #[serde(with = "u128_string")]
    pub quantity: u128,
    /// The rate that applied: `rate_micro` per `rate_per` units.
    #[serde(with = "opt_u128_string", default)]
    pub rate_micro: Option<u128>,
    #[serde(with = "opt_u128_string", default)]
    pub rate_per: Option<u128>,
    #[serde(with = "u128_string")]
    pub amount_micro: u128,
    pub reason: Reason,
}

/// An epoch's reward, line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardDecision {
    pub lines: Vec<RewardLine>,
    pub proofs: ProofResults,
    pub score_ppm: u128,
    pub multiplier_ppm: u128,
    pub total_micro: u128,
}

/// Serde for a `u128` as a decimal string (JSON numbers lose precision
/// above 2^53): `#[serde(with = "depin_protocol::rewards::u128_string")]`.
pub mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

mod opt_u128_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|v| v.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Share of challenges passed, in parts per million; 1.0 when none were
/// due.
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
    fn every_line_says_why_it_is_what_it_is() {
        let p = policy();
        let line = |plugin, kind, source, unit, q| LineInput {
            plugin,
            digest: "sha256:00",
            kind,
            source,
            unit,
            quantity: q,
        };
        let totals = || {
            [
                line("cache", Some("storage-cache"), "host", "bytes-out", 2_000),
                line("cache", Some("storage-cache"), "plugin", "requests", 80),
                line("cache", Some("storage-cache"), "host", "fuel", 9),
                line("fake", None, "host", "bytes-out", 2_000),
            ]
        };
        let d = p.decide(totals(), ProofResults::default());
        let reasons: Vec<&str> = d.lines.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["rated", "capped", "no-rate", "unapproved-component"]
        );
        let amounts: Vec<u128> = d.lines.iter().map(|l| l.amount_micro).collect();
        assert_eq!(amounts, [6, 1000, 0, 0]);
        assert_eq!(d.total_micro, 1006);
        assert_eq!(d.total_micro, amounts.iter().sum::<u128>());
        // half the challenges failed: the score cuts every paying line
        let half = ProofResults {
            issued: 2,
            passed: 1,
        };
        let d = p.decide(totals(), half);
        let reasons: Vec<&str> = d.lines.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "proof-score",
                "proof-score",
                "no-rate",
                "unapproved-component"
            ]
        );
        assert_eq!(d.total_micro, 3 + 500);
        assert_eq!(d.score_ppm, 500_000);
        // the epoch cap scales every line in proportion
        let huge = [line(
            "c",
            Some("storage-cache"),
            "host",
            "bytes-out",
            u64::MAX.into(),
        )];
        let d = p.decide(huge, ProofResults::default());
        assert_eq!(d.lines[0].reason, Reason::EpochCap);
        assert_eq!(d.total_micro, 5_000_000);
        // the wire form is the documented name
        let json = serde_json::to_value(&d.lines[0]).unwrap();
        assert_eq!(json["reason"], "epoch-cap");
        assert_eq!(json["amount_micro"], "5000000");
        let back: RewardLine = serde_json::from_value(json).unwrap();
        assert_eq!(back, d.lines[0]);
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
