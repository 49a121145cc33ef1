//! The collector side of challenges: issues them on a timer, hands them out
//! to long-polling gateways, and checks answers — inclusion answers against
//! the Merkle root of the accepted report, possession answers with the
//! plugin's own `verify` export, loaded from a component pinned by digest.
//!
//! What a possession challenge looks like is data, not code: each
//! `[[challenges.possession]]` table names a plugin, a challenge kind and
//! parameters, so a new resource type needs a table, not a collector change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use depin_gateway::config::{PluginConfig, RuntimeConfig};
use depin_gateway::ledger::Ledger;
use depin_gateway::proofs::ToWit;
use depin_gateway::runtime::{LoadedPlugin, Runtime};
use depin_protocol::proofs::{Answer, ChallengeSpec, InclusionProof};
use depin_protocol::report::SignedReport;
use depin_protocol::time::now_ms;
use rand::{Rng, RngCore};
use serde::Deserialize;

use crate::store::{ChainError, ChallengeRecord, CollectorStore};

/// `[challenges]` in `collector.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengesConfig {
    /// How often each gateway gets new challenges, ms (0: never).
    pub interval_ms: u64,
    /// Issue inclusion challenges on records of accepted reports.
    pub inclusion: bool,
    /// Most challenges a gateway may have open at once.
    pub max_open: usize,
    /// A challenge not answered this long after it was issued expires, ms.
    pub answer_timeout_ms: u64,
    /// Possession challenge templates, one per plugin and kind.
    pub possession: Vec<PossessionTemplate>,
}

impl Default for ChallengesConfig {
    fn default() -> Self {
        Self {
            interval_ms: 60_000,
            inclusion: true,
            max_open: 4,
            answer_timeout_ms: 120_000,
            possession: Vec::new(),
        }
    }
}

/// One `[[challenges.possession]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PossessionTemplate {
    /// The plugin's configured name on the gateways.
    pub plugin: String,
    /// The plugin-specific challenge kind, e.g. `echo-hash`.
    pub kind: String,
    /// Kind-specific parameters, hex.
    #[serde(default)]
    pub params: String,
    /// The plugin component whose `verify` checks the answers.
    pub component: PathBuf,
    /// Its pinned digest, `sha256:<hex>`; a different file is refused.
    pub digest: String,
}

/// Plugin components loaded to run `verify`, by plugin name.
pub struct Verifiers {
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    _runtime: Runtime,
    _ledger: Arc<Ledger>,
}

impl Verifiers {
    /// Loads every template's component and checks its digest.
    pub async fn load(templates: &[PossessionTemplate], data_dir: &Path) -> anyhow::Result<Self> {
        let runtime = Runtime::new(
            &RuntimeConfig {
                max_instances: 16,
                ..RuntimeConfig::default()
            },
            Some(&data_dir.join("compiled")),
        )?;
        let scratch = data_dir.join("verifiers");
        std::fs::create_dir_all(&scratch)?;
        let ledger = Ledger::open(&scratch)?;
        let mut plugins = BTreeMap::new();
        for t in templates {
            if plugins.contains_key(&t.plugin) {
                continue;
            }
            let cfg = PluginConfig {
                name: t.plugin.clone(),
                component: t.component.clone(),
                ..PluginConfig::default()
            };
            // `verify` needs no gateway configuration, and the collector has
            // none to give: the component is prepared (compiled, checked,
            // linked, described) but its `init` is not called, so a plugin
            // whose `init` requires settings (the relay's `upstream`) can
            // still check proofs.
            let compiled = runtime.compile(&t.component).map_err(anyhow::Error::msg)?;
            let loaded = LoadedPlugin::prepare(&runtime, &cfg, ledger.clone(), compiled)
                .await
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("{}: {e}", t.component.display()))?;
            if loaded.digest != t.digest {
                anyhow::bail!(
                    "{}: digest is {}, but challenges.possession pins {}",
                    t.component.display(),
                    loaded.digest,
                    t.digest
                );
            }
            plugins.insert(t.plugin.clone(), loaded);
        }
        Ok(Self {
            plugins,
            _runtime: runtime,
            _ledger: ledger,
        })
    }

    /// Whether the plugin's `verify` accepts `payload` for `spec`. A
    /// verifier that traps counts as a failed proof.
    pub async fn verify(&self, spec: &ChallengeSpec, payload: Vec<u8>) -> bool {
        let Some(plugin) = self.plugins.get(&spec.plugin) else {
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

/// Issues one round of challenges to every gateway that has reported.
/// Returns how many were issued.
pub fn issue_round(store: &CollectorStore, config: &ChallengesConfig) -> anyhow::Result<usize> {
    let mut issued = 0;
    for gateway in store.gateway_ids()? {
        let now = now_ms();
        let mut open = 0;
        for c in store.challenges_of(&gateway)? {
            if c.status != "pending" && c.status != "sent" {
                continue;
            }
            if c.issued_ms.saturating_add(config.answer_timeout_ms) < now {
                store.set_status(&c.spec.id, "expired")?;
            } else {
                open += 1;
            }
        }
        let mut room = config.max_open.saturating_sub(open);
        let recent = store.latest_reports(&gateway, 8)?;
        let mut specs = Vec::new();
        if config.inclusion
            && let Some(r) = recent.iter().find(|r| r.report.records > 0)
        {
            specs.push(ChallengeSpec {
                id: random_hex(16),
                family: "inclusion".into(),
                epoch: r.report.epoch,
                index: rand::thread_rng().gen_range(0..r.report.records),
                plugin: String::new(),
                kind: "inclusion".into(),
                nonce: random_hex(16),
                params: String::new(),
            });
        }
        for t in &config.possession {
            let runs_it = recent
                .iter()
                .any(|r| r.report.totals.iter().any(|x| x.plugin == t.plugin));
            if runs_it {
                specs.push(ChallengeSpec {
                    id: random_hex(16),
                    family: "possession".into(),
                    epoch: 0,
                    index: 0,
                    plugin: t.plugin.clone(),
                    kind: t.kind.clone(),
                    nonce: random_hex(32),
                    params: t.params.clone(),
                });
            }
        }
        for spec in specs {
            if room == 0 {
                break;
            }
            store.issue(&ChallengeRecord {
                spec,
                gateway: gateway.clone(),
                issued_ms: now_ms(),
                status: "pending".into(),
                counted_in: None,
            })?;
            room -= 1;
            issued += 1;
        }
    }
    Ok(issued)
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

/// Checks an answer and records the verdict; returns whether it passed.
pub async fn judge(
    store: &CollectorStore,
    verifiers: &Verifiers,
    cert_gateway: &str,
    bytes: &[u8],
) -> Result<(String, bool), AnswerRejection> {
    let answer = Answer::decode(bytes).map_err(|e| AnswerRejection::Malformed(e.to_string()))?;
    if format!("dpg1{}", hex::encode(answer.gateway_key)) != cert_gateway {
        return Err(AnswerRejection::WrongGateway);
    }
    let storage = |e: ChainError| AnswerRejection::Storage(e.to_string());
    let record = store
        .challenge(&answer.challenge_id)
        .map_err(storage)?
        .filter(|c| c.gateway == cert_gateway && (c.status == "sent" || c.status == "pending"))
        .ok_or_else(|| AnswerRejection::Unknown(answer.challenge_id.clone()))?;
    let spec = &record.spec;
    let passed = if !answer.answered {
        false
    } else if spec.family == "inclusion" {
        let report = store
            .report(cert_gateway, spec.epoch)
            .map_err(storage)?
            .and_then(|bytes| SignedReport::decode(&bytes).ok());
        match (report, InclusionProof::decode(&answer.payload)) {
            (Some(r), Some(proof)) => {
                proof.check(r.report.first_seq + spec.index, &r.report.merkle_root)
            }
            _ => false,
        }
    } else {
        verifiers.verify(spec, answer.payload).await
    };
    store
        .resolve(&answer.challenge_id, passed)
        .map_err(storage)?;
    Ok((answer.challenge_id, passed))
}

/// Issues challenges every `interval_ms` and wakes long-polls.
pub async fn issue_forever(collector: Arc<crate::Collector>, config: ChallengesConfig) {
    if config.interval_ms == 0 {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_millis(config.interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let c = collector.clone();
        let cfg = config.clone();
        match tokio::task::spawn_blocking(move || issue_round(&c.store, &cfg)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::debug!(issued = n, "challenges issued");
                collector.challenge_ready.notify_waiters();
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot issue challenges"),
            Err(e) => tracing::error!(error = %e, "challenge issuer panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use depin_gateway::identity::DeviceKey;
    use depin_protocol::report::EpochReport;

    use super::*;

    #[test]
    fn unanswered_challenges_expire_and_make_room_for_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = CollectorStore::open(dir.path()).unwrap();
        let key = DeviceKey::generate();
        let report = EpochReport {
            gateway_key: key.verifying_key().to_bytes(),
            epoch: 7,
            length_ms: 1000,
            prev_hash: [0; 32],
            first_seq: 1,
            records: 5,
            merkle_root: [1; 32],
            totals: vec![],
            subject_totals: vec![],
            proofs: vec![],
            reward_micro: 0,
        }
        .sign(key.signing_key());
        store.accept(&report, 0).unwrap();
        let config = ChallengesConfig {
            interval_ms: 1,
            inclusion: true,
            max_open: 1,
            answer_timeout_ms: 60_000,
            possession: vec![],
        };
        assert_eq!(issue_round(&store, &config).unwrap(), 1);
        // full: nothing new while the first is open
        assert_eq!(issue_round(&store, &config).unwrap(), 0);
        let sent = store.take_pending(&key.gateway_id()).unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].spec.epoch, 7);
        assert!(sent[0].spec.index < 5);
        std::thread::sleep(Duration::from_millis(5));
        let expiring = ChallengesConfig {
            answer_timeout_ms: 1,
            ..config
        };
        assert_eq!(issue_round(&store, &expiring).unwrap(), 1);
        let mut statuses: Vec<String> = store
            .challenges_of(&key.gateway_id())
            .unwrap()
            .into_iter()
            .map(|c| c.status)
            .collect();
        statuses.sort();
        assert_eq!(statuses, ["expired", "pending"]);
    }
}
