//! Self-checks: the gateway challenges its own plugins the way the
//! collector does — the same challenge kinds and parameters
//! (`[[self_check.possession]]`), fresh nonces of its own — and checks each
//! answer with the same plugin's `verify`. A plugin whose proofs would fail
//! at the collector shows up here first: in the log, in
//! `depin_self_check_failures_total{plugin,kind}`, on the console page.
//!
//! A self-check answers through the same [`Prover`] as a real challenge, so
//! what `prove` records or sends (a beacon) is committed and sent exactly
//! as for the collector; choose the kinds to self-check with that in mind.
//! Results are not reported upstream and do not change any reward.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use tokio::sync::watch;

use depin_protocol::proofs::ChallengeSpec;
use depin_protocol::time::now_ms;

use super::ToWit;
use super::responder::Prover;
use crate::config::{SelfCheckConfig, SelfCheckTemplate};
use crate::runtime::contract::Proof;
use crate::service::{Service, stopped};

/// Most characters of a failure reason kept for the console.
pub const MAX_REASON_CHARS: usize = 300;

/// The latest result of one plugin's self-check of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfCheckResult {
    pub plugin: String,
    pub kind: String,
    /// Checks run since the gateway started.
    pub runs: u64,
    /// Of those, how many failed.
    pub failures: u64,
    /// When the latest check finished, Unix ms.
    pub last_ms: u64,
    /// Whether the latest check passed.
    pub last_passed: bool,
    /// Why the latest check failed.
    pub last_reason: Option<String>,
}

/// The results every self-check writes and the console reads. Bounded by
/// the number of configured templates.
#[derive(Debug, Default)]
pub struct SelfCheckBoard {
    results: Mutex<BTreeMap<(String, String), SelfCheckResult>>,
}

impl SelfCheckBoard {
    /// Every (plugin, kind) checked so far, sorted.
    pub fn results(&self) -> Vec<SelfCheckResult> {
        self.results
            .lock()
            .expect("self-check lock")
            .values()
            .cloned()
            .collect()
    }

    fn record(&self, t: &SelfCheckTemplate, outcome: &Result<(), String>) {
        let mut results = self.results.lock().expect("self-check lock");
        let r = results
            .entry((t.plugin.clone(), t.kind.clone()))
            .or_insert_with(|| SelfCheckResult {
                plugin: t.plugin.clone(),
                kind: t.kind.clone(),
                runs: 0,
                failures: 0,
                last_ms: 0,
                last_passed: false,
                last_reason: None,
            });
        r.runs += 1;
        r.last_ms = now_ms();
        r.last_passed = outcome.is_ok();
        r.failures += u64::from(outcome.is_err());
        r.last_reason = outcome
            .as_ref()
            .err()
            .map(|e| e.chars().take(MAX_REASON_CHARS).collect());
    }
}

/// Runs every template at start and then every `interval_ms`, as a
/// [`Service`].
pub struct SelfChecks {
    pub config: SelfCheckConfig,
    pub prover: Prover,
    pub board: Arc<SelfCheckBoard>,
}

impl Service for SelfChecks {
    fn name(&self) -> &'static str {
        "self-check"
    }

    fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every =
                tokio::time::interval(Duration::from_millis(self.config.interval_ms.max(1)));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stopped(&mut shutdown) => return,
                }
                for t in &self.config.possession {
                    let outcome = tokio::select! {
                        o = check(&self.prover, t) => o,
                        _ = stopped(&mut shutdown) => return,
                    };
                    crate::metrics::global().record_self_check(&t.plugin, &t.kind, outcome.is_ok());
                    match &outcome {
                        Ok(()) => {
                            tracing::debug!(plugin = %t.plugin, kind = %t.kind, "self-check passed")
                        }
                        Err(reason) => tracing::warn!(
                            plugin = %t.plugin,
                            kind = %t.kind,
                            %reason,
                            "self-check failed: the collector would fail this proof"
                        ),
                    }
                    self.board.record(t, &outcome);
                }
            }
        })
    }
}

/// One self-check: a fresh challenge, the plugin's `prove`, then its own
/// `verify`.
pub async fn check(prover: &Prover, t: &SelfCheckTemplate) -> Result<(), String> {
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    let spec = ChallengeSpec {
        id: format!("self-{}", hex::encode(id)),
        family: "possession".into(),
        epoch: 0,
        index: 0,
        plugin: t.plugin.clone(),
        kind: t.kind.clone(),
        nonce: hex::encode(nonce),
        params: t.params.clone(),
        deadline_ms: 0,
    };
    let payload = prover.answer(&spec).await?;
    let plugin = prover
        .plugins
        .get(&t.plugin)
        .ok_or_else(|| format!("no plugin `{}` here", t.plugin))?;
    let proof = Proof {
        challenge_id: spec.id.clone(),
        payload,
    };
    let request: Arc<str> = format!("self-verify-{}", spec.id).into();
    match plugin.verify(&request, spec.to_wit(), proof).await.result {
        Ok(true) => Ok(()),
        Ok(false) => Err("the plugin's own `verify` rejects its proof".into()),
        Err(e) => Err(format!("`verify` failed: {e}")),
    }
}
