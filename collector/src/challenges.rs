//! The collector side of challenges: issues them at random times, hands
//! them out to long-polling gateways, and judges answers — inclusion
//! answers against the Merkle root of the accepted report, possession
//! answers with the `verify` export of the approved component whose digest
//! the gateway reported for the plugin.
//!
//! Every challenge is kept with its deadline and decided by the collector
//! alone: `passed`, `failed`, or `expired` (no answer by the deadline),
//! which counts as failed in the epoch the deadline falls in.
//!
//! What a possession challenge looks like is data, not code: each
//! `[[challenges.possession]]` table names a component digest, a challenge
//! kind and parameters, so a new resource type needs a table, not a
//! collector change.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use depin_gateway::config::{JobsConfig, PluginConfig, RuntimeConfig};
use depin_gateway::ledger::Ledger;
use depin_gateway::proofs::ToWit;
use depin_gateway::runtime::{LoadedPlugin, Runtime};
use depin_protocol::proofs::{Answer, ChallengeSpec, InclusionProof};
use depin_protocol::report::SignedReport;
use depin_protocol::time::now_ms;
use rand::{Rng, RngCore};
use serde::Deserialize;

use crate::config::ApprovedComponent;
use crate::store::{ChainError, ChallengeRecord, Store};

/// `[challenges]` in `collector.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengesConfig {
    /// Mean time between two rounds of challenges for one gateway, ms (0:
    /// never). Each gateway's next round comes at a random time between
    /// half and one and a half of it, so a gateway cannot predict it.
    pub interval_ms: u64,
    /// Issue inclusion challenges on records of accepted reports (any
    /// accepted epoch, picked at random).
    pub inclusion: bool,
    /// Most challenges a gateway may have open at once.
    pub max_open: usize,
    /// A challenge not answered this long after it was issued expires, ms.
    pub answer_timeout_ms: u64,
    /// Decided challenges are deleted once their deadline is this old, ms.
    /// Reports delivered later than this are scored on what remains.
    pub retention_ms: u64,
    /// Possession challenge templates, one per component digest and kind.
    pub possession: Vec<PossessionTemplate>,
}

impl Default for ChallengesConfig {
    fn default() -> Self {
        Self {
            interval_ms: 60_000,
            inclusion: true,
            max_open: 4,
            answer_timeout_ms: 120_000,
            retention_ms: 7 * 24 * 3_600_000,
            possession: Vec::new(),
        }
    }
}

/// One `[[challenges.possession]]`: issued to every plugin whose reported
/// component has `digest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PossessionTemplate {
    /// The approved component (`[[component]]` with a verifier).
    pub digest: String,
    /// The plugin-specific challenge kind, e.g. `echo-hash`.
    pub kind: String,
    /// Kind-specific parameters, hex.
    #[serde(default)]
    pub params: String,
}

/// Verifier components loaded to run `verify`, by digest, with a job
/// engine and a module store for proofs that re-execute jobs.
pub struct Verifiers {
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    _runtime: Runtime,
    _ledger: Arc<Ledger>,
}

/// Jobs one verifier may run: as a gateway's default `[plugin.jobs]`.
fn verifier_jobs() -> JobsConfig {
    JobsConfig::default()
}

impl Verifiers {
    /// Loads every approved component that names a verifier, checks its
    /// digest, and stores its job modules.
    pub async fn load(components: &[ApprovedComponent], data_dir: &Path) -> anyhow::Result<Self> {
        let scratch = data_dir.join("verifiers");
        std::fs::create_dir_all(&scratch)?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobs = Arc::new(depin_gateway::jobs::JobEngine::open(
            &scratch.join("jobs"),
            workers,
        )?);
        let runtime = Runtime::new(
            &RuntimeConfig {
                max_instances: 16,
                ..RuntimeConfig::default()
            },
            Some(&data_dir.join("compiled")),
        )?
        .with_jobs(jobs.clone());
        let ledger = Ledger::open(&scratch)?;
        let mut plugins = BTreeMap::new();
        for c in components {
            let Some(file) = &c.verifier else { continue };
            // The module store is per plugin name: one per digest.
            let name = format!("verifier-{}", &c.digest["sha256:".len()..][..16]);
            let cfg = PluginConfig {
                name: name.clone(),
                component: file.clone(),
                jobs: (!c.job_modules.is_empty()).then(verifier_jobs),
                ..PluginConfig::default()
            };
            // `verify` needs no gateway configuration, and the collector has
            // none to give: the component is prepared (compiled, checked,
            // linked, described) but its `init` is not called, so a plugin
            // whose `init` requires settings (the relay's `upstream`) can
            // still check proofs.
            let compiled = runtime.compile(file).map_err(anyhow::Error::msg)?;
            let loaded = LoadedPlugin::prepare(&runtime, &cfg, ledger.clone(), compiled)
                .await
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if loaded.digest != c.digest {
                anyhow::bail!(
                    "{}: digest is {}, but its [[component]] approves {}",
                    file.display(),
                    loaded.digest,
                    c.digest
                );
            }
            for m in &c.job_modules {
                let wasm = std::fs::read(m).map_err(|e| anyhow::anyhow!("{}: {e}", m.display()))?;
                // Approved modules are never evicted.
                let quota = depin_gateway::jobs::ModuleQuota {
                    max_modules: usize::MAX,
                    max_stored_bytes: u64::MAX,
                    ..verifier_jobs().module_quota()
                };
                jobs.put_module(&name, wasm, &quota)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", m.display()))?;
            }
            plugins.insert(c.digest.clone(), loaded);
        }
        Ok(Self {
            plugins,
            _runtime: runtime,
            _ledger: ledger,
        })
    }

    /// Whether the verifier of `digest` accepts `payload` for `spec`. A
    /// verifier that traps, or no verifier, counts as a failed proof.
    pub async fn verify(&self, digest: &str, spec: &ChallengeSpec, payload: Vec<u8>) -> bool {
        let Some(plugin) = self.plugins.get(digest) else {
            return false;
        };
        let proof = depin_gateway::runtime::contract::Proof {
            challenge_id: spec.id.clone(),
            payload,
        };
        let id: Arc<str> = format!("verify-{}", spec.id).into();
        let outcome = plugin.verify(&id, spec.to_wit(), proof).await;
        matches!(outcome.result, Ok(true))
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// When a gateway seen for the first time gets its first round: a random
/// time within one interval.
fn first_round(now: u64, interval_ms: u64) -> u64 {
    now + rand::thread_rng().gen_range(0..=interval_ms)
}

/// The round after one at `now`: between half and one and a half
/// intervals later.
fn next_round(now: u64, interval_ms: u64) -> u64 {
    now + rand::thread_rng().gen_range(interval_ms / 2..=interval_ms * 3 / 2)
}

/// Issues challenges to every gateway that has reported and whose random
/// round time (kept in the store) has come; expires overdue ones first.
/// Each round is claimed in the store, so of several replicas one issues
/// it. Returns how many were issued.
pub async fn issue_round(
    store: &Store,
    config: &ChallengesConfig,
    now: u64,
) -> anyhow::Result<usize> {
    let mut issued = 0;
    for gateway in store.gateway_ids().await? {
        let (first, next) = (
            first_round(now, config.interval_ms),
            next_round(now, config.interval_ms),
        );
        let claimed = store.claim_round(&gateway, now, first, next).await?;
        // Counted after the claim, so a round another replica issued
        // just before is seen.
        let open = store.expire_overdue(&gateway, now).await?;
        if !claimed {
            continue;
        }
        let mut room = config.max_open.saturating_sub(open);
        let mut specs = Vec::new();
        if config.inclusion
            && let Some((epoch, records)) = pick_epoch_with_records(store, &gateway).await?
        {
            specs.push((
                ChallengeSpec {
                    id: random_hex(16),
                    family: "inclusion".into(),
                    epoch,
                    index: rand::thread_rng().gen_range(0..records),
                    plugin: String::new(),
                    kind: "inclusion".into(),
                    nonce: random_hex(16),
                    params: String::new(),
                    deadline_ms: 0,
                },
                String::new(),
            ));
        }
        if let Some(latest) = store.latest_reports(&gateway, 1).await?.pop() {
            for t in &config.possession {
                for c in &latest.report.components {
                    if c.digest_string() != t.digest {
                        continue;
                    }
                    specs.push((
                        ChallengeSpec {
                            id: random_hex(16),
                            family: "possession".into(),
                            epoch: 0,
                            index: 0,
                            plugin: c.plugin.clone(),
                            kind: t.kind.clone(),
                            nonce: random_hex(32),
                            params: t.params.clone(),
                            deadline_ms: 0,
                        },
                        t.digest.clone(),
                    ));
                }
            }
        }
        for (mut spec, digest) in specs {
            if room == 0 {
                break;
            }
            let deadline_ms = now + config.answer_timeout_ms;
            spec.deadline_ms = deadline_ms;
            store
                .issue(&ChallengeRecord {
                    spec,
                    gateway: gateway.clone(),
                    issued_ms: now,
                    deadline_ms,
                    digest,
                    status: "pending".into(),
                    decided_ms: None,
                })
                .await?;
            room -= 1;
            issued += 1;
        }
    }
    Ok(issued)
}

/// A random accepted epoch of `gateway` that has records: (epoch, count).
async fn pick_epoch_with_records(
    store: &Store,
    gateway: &str,
) -> Result<Option<(u64, u64)>, ChainError> {
    let epochs = store.report_epochs(gateway).await?;
    if epochs.is_empty() {
        return Ok(None);
    }
    for _ in 0..8 {
        let epoch = epochs[rand::thread_rng().gen_range(0..epochs.len())];
        let Some(bytes) = store.report(gateway, epoch).await? else {
            continue;
        };
        let r = SignedReport::decode(&bytes).map_err(|e| ChainError::Storage(e.to_string()))?;
        if r.report.records > 0 {
            return Ok(Some((epoch, r.report.records)));
        }
    }
    Ok(None)
}

/// Why an answer was refused (the verdict itself is not an error).
#[derive(Debug, thiserror::Error)]
pub enum AnswerRejection {
    #[error("{0}")]
    Malformed(String),
    #[error("the answer is not from the certificate's gateway")]
    WrongGateway,
    #[error("no open challenge {0} for this gateway")]
    Unknown(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Checks an answer and records the verdict; returns the challenge id and
/// the status it ends in (`passed`, `failed`, or `expired` when the answer
/// came after the deadline).
pub async fn judge(
    store: &Store,
    verifiers: &Verifiers,
    cert_gateway: &str,
    bytes: &[u8],
) -> Result<(String, String), AnswerRejection> {
    let received = now_ms();
    let answer = Answer::decode(bytes).map_err(|e| AnswerRejection::Malformed(e.to_string()))?;
    if format!("dpg1{}", hex::encode(answer.gateway_key)) != cert_gateway {
        return Err(AnswerRejection::WrongGateway);
    }
    let storage = |e: ChainError| AnswerRejection::Storage(e.to_string());
    let record = store
        .challenge(&answer.challenge_id)
        .await
        .map_err(storage)?
        .filter(|c| c.gateway == cert_gateway && crate::store::OPEN.contains(&c.status.as_str()))
        .ok_or_else(|| AnswerRejection::Unknown(answer.challenge_id.clone()))?;
    let spec = &record.spec;
    let passed = if !answer.answered || record.deadline_ms < received {
        false
    } else if spec.family == "inclusion" {
        let report = store
            .report(cert_gateway, spec.epoch)
            .await
            .map_err(storage)?
            .and_then(|bytes| SignedReport::decode(&bytes).ok());
        match (report, InclusionProof::decode(&answer.payload)) {
            (Some(r), Some(proof)) => {
                proof.check(r.report.first_seq + spec.index, &r.report.merkle_root)
            }
            _ => false,
        }
    } else {
        verifiers.verify(&record.digest, spec, answer.payload).await
    };
    // Judged by when the answer arrived, not by when the verifier finished.
    let status = store
        .resolve(&answer.challenge_id, passed, received)
        .await
        .map_err(storage)?;
    Ok((answer.challenge_id, status))
}

/// Issues challenges (at random times per gateway), prunes decided ones
/// past retention, and wakes long-polls.
pub async fn issue_forever(collector: Arc<crate::Collector>, config: ChallengesConfig) {
    if config.interval_ms == 0 {
        return;
    }
    // Ticks often enough that the random times keep their spread.
    let tick = Duration::from_millis((config.interval_ms / 8).clamp(10, 1_000));
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = now_ms();
        let work = async {
            let issued = issue_round(&collector.store, &config, now).await?;
            let pruned = collector
                .store
                .prune_decided(now.saturating_sub(config.retention_ms), 1_000)
                .await?;
            anyhow::Ok((issued, pruned))
        };
        match work.await {
            Ok((issued, pruned)) => {
                if pruned > 0 {
                    tracing::debug!(pruned, "decided challenges pruned");
                }
                // With notifications up, every replica's polls (this
                // one's too) are woken by the store.
                if issued > 0 {
                    tracing::debug!(issued, "challenges issued");
                    if !collector.waiting.is_notified() {
                        collector.waiting.wake_all();
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot issue challenges"),
        }
    }
}

#[cfg(test)]
mod tests {
    use depin_gateway::identity::DeviceKey;
    use depin_protocol::report::{EpochReport, REPORT_VERSION};

    use super::*;

    struct Zero;
    impl crate::store::Decide for Zero {
        fn decide(&self, _: &SignedReport, _: &[ChallengeRecord]) -> (serde_json::Value, u128) {
            (serde_json::Value::Null, 0)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn rounds_come_at_random_times_and_unanswered_challenges_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let key = DeviceKey::generate();
        for epoch in [7, 8] {
            let report = EpochReport {
                version: REPORT_VERSION,
                gateway_key: key.verifying_key().to_bytes(),
                epoch,
                length_ms: 1000,
                prev_hash: store
                    .latest_reports(&key.gateway_id(), 1)
                    .await
                    .unwrap()
                    .pop()
                    .map_or([0; 32], |r| r.hash()),
                first_seq: 1,
                records: 5,
                merkle_root: [1; 32],
                components: vec![],
                totals: vec![],
                subject_totals: vec![],
                proofs: vec![],
                reward_micro: 0,
            }
            .sign(key.signing_key());
            let end = (epoch + 1) * 1000;
            store.accept(&report, end, end, &Zero).await.unwrap();
        }
        let config = ChallengesConfig {
            interval_ms: 1000,
            max_open: 1,
            answer_timeout_ms: 500,
            ..ChallengesConfig::default()
        };
        // first sight: a random first time within one interval
        assert_eq!(issue_round(&store, &config, 10_000).await.unwrap(), 0);
        assert_eq!(issue_round(&store, &config, 11_000).await.unwrap(), 1);
        // the next round comes 500..=1500 ms later, and only with room
        assert_eq!(issue_round(&store, &config, 11_001).await.unwrap(), 0);
        let sent = store.take_pending(&key.gateway_id()).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert!([7, 8].contains(&sent[0].spec.epoch));
        assert_eq!(sent[0].spec.deadline_ms, 11_500);
        assert!(sent[0].spec.index < 5);
        // unanswered: it expires, and the next round has room again
        assert_eq!(issue_round(&store, &config, 12_600).await.unwrap(), 1);
        let id = &sent[0].spec.id;
        let c = store.challenge(id).await.unwrap().unwrap();
        assert_eq!(c.status, "expired");
        // the round times are the store's: a second claim of the same
        // round finds it taken
        assert!(
            !store
                .claim_round(&key.gateway_id(), 12_600, 0, 0)
                .await
                .unwrap()
        );
        // the times differ between gateways and rounds
        let seen: std::collections::BTreeSet<u64> = (0..20).map(|_| first_round(0, 1000)).collect();
        assert!(seen.len() > 10, "{seen:?}");
        let next: std::collections::BTreeSet<u64> = (0..20).map(|_| next_round(0, 1000)).collect();
        assert!(next.iter().all(|t| (500..=1500).contains(t)), "{next:?}");
    }
}
