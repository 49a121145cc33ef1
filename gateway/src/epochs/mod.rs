//! Epochs: fixed-length windows of wall-clock time, aligned to multiples of
//! their length since the Unix epoch (epoch `n` covers
//! `[n * length, (n + 1) * length)` ms).
//!
//! Closing an epoch takes the ledger records that follow the previous
//! epoch's last record and were committed before the epoch's end, and
//! computes their totals per plugin, source and unit (with the number of
//! distinct subjects), the Merkle root over their chain hashes, the digest
//! of each plugin's component, and the reward under the policy; the result is a signed report stored durably
//! (with an outbox entry when a collector is configured). Epochs close in
//! order and none is skipped, empty ones included, so the reports form a
//! chain without gaps. Records of epoch `n` are the contiguous sequence
//! range after epoch `n - 1`'s, so no record is in two epochs or in none,
//! even if the clock steps back.

pub mod inspect;
pub mod store;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash as _, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use depin_protocol::Hash;
use depin_protocol::merkle;
use depin_protocol::record::Source;
use depin_protocol::report::{
    ComponentDigest, EpochReport, EpochTotal, MAX_SUBJECT_ROWS, REPORT_VERSION, SignedReport,
    SubjectTotal,
};
use depin_protocol::rewards::{ProofResults, RewardInput, RewardPolicy};
use depin_protocol::time::now_ms;

use crate::identity::DeviceKey;
use crate::ledger::{Ledger, LedgerError};
use crate::service::{Service, Services};
pub use store::{ClosedEpoch, CollectorFigure, Cursor, EpochStore, EpochStoreError, OutboxEntry};

/// Why an epoch could not be closed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] EpochStoreError),
}

/// What a plugin is, as an epoch report states it: the kind its
/// `describe` claims (for the gateway's own estimate only; the collector
/// decides by digest) and the sha256 of its component file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginIdentity {
    pub kind: String,
    pub digest: Hash,
    /// Loaded now (listed in the report even without records, so the
    /// collector can challenge it).
    pub loaded: bool,
}

/// Where an epoch close learns each plugin's identity: the plugins loaded
/// now (followed across hot reloads, so a plugin added by a reload is in
/// the next report with its digest), and the last identity seen of any
/// plugin since removed.
///
/// A plugin replaced in the middle of an epoch is reported with the
/// component loaded when the epoch closes.
pub struct PluginIdentities {
    table: Option<Arc<crate::plugin_table::PluginTable>>,
    seen: Mutex<BTreeMap<String, PluginIdentity>>,
}

impl PluginIdentities {
    /// Follows the gateway's plugin table.
    pub fn follow(table: Arc<crate::plugin_table::PluginTable>) -> Self {
        let ids = Self {
            table: Some(table),
            seen: Mutex::new(BTreeMap::new()),
        };
        ids.refresh();
        ids
    }

    /// Fixed identities (tools and tests that run no plugins).
    pub fn fixed(ids: BTreeMap<String, PluginIdentity>) -> Self {
        Self {
            table: None,
            seen: Mutex::new(ids),
        }
    }

    /// Fixed kinds with unknown (all-zero) digests.
    pub fn from_kinds(kinds: BTreeMap<String, String>) -> Self {
        Self::fixed(
            kinds
                .into_iter()
                .map(|(p, kind)| {
                    let id = PluginIdentity {
                        kind,
                        digest: [0; 32],
                        loaded: true,
                    };
                    (p, id)
                })
                .collect(),
        )
    }

    /// The identities in force: the loaded plugins over the remembered.
    pub fn refresh(&self) -> BTreeMap<String, PluginIdentity> {
        let mut seen = self.seen.lock().expect("identities lock");
        if let Some(table) = &self.table {
            for id in seen.values_mut() {
                id.loaded = false;
            }
            for (_, p) in table.snapshot().plugins.iter() {
                let digest = p
                    .digest
                    .strip_prefix("sha256:")
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 32]);
                seen.insert(
                    p.name().to_string(),
                    PluginIdentity {
                        kind: crate::runtime::contract::kind_name(p.info.kind).to_string(),
                        digest,
                        loaded: true,
                    },
                );
            }
        }
        seen.clone()
    }
}

/// Closes epochs over one ledger into one store.
pub struct EpochCloser {
    pub ledger: Arc<Ledger>,
    pub store: Arc<EpochStore>,
    pub key: Arc<DeviceKey>,
    pub policy: RewardPolicy,
    /// Kind and component digest of each plugin.
    pub identities: PluginIdentities,
    pub length_ms: u64,
    pub close_delay_ms: u64,
    /// Write closed reports to the outbox for delivery.
    pub deliver: bool,
}

impl EpochCloser {
    /// Closes every epoch whose end (plus the close delay) has passed.
    /// Returns the reports made, oldest first.
    pub fn close_due(&self, now_ms: u64) -> Result<Vec<SignedReport>, CloseError> {
        let first = Cursor::first(now_ms / self.length_ms, self.length_ms);
        let mut cursor = match Some(self.store.init_cursor(first)?) {
            Some(c) if c.length_ms == self.length_ms => c,
            // The length changed: continue the chain at the first epoch of
            // the new length that starts at or after the old cursor.
            Some(c) => Cursor {
                next_epoch: (c.next_epoch * c.length_ms).div_ceil(self.length_ms),
                length_ms: self.length_ms,
                ..c
            },
            None => first,
        };
        let mut made = Vec::new();
        while (cursor.next_epoch + 1) * self.length_ms + self.close_delay_ms <= now_ms {
            let (report, next) = self.close(cursor)?;
            made.push(report);
            cursor = next;
        }
        Ok(made)
    }

    /// Closes the epoch at `cursor` and stores it.
    fn close(&self, cursor: Cursor) -> Result<(SignedReport, Cursor), CloseError> {
        let epoch = cursor.next_epoch;
        let end_ms = (epoch + 1) * self.length_ms;
        let identities = self.identities.refresh();
        let content = EpochContent::collect(&self.ledger, cursor.next_seq, end_ms, &identities)?;
        // A challenge counts in the epoch its deadline falls in (the
        // collector counts the same way, from its own records); one whose
        // deadline fell in an earlier epoch but arrived late counts here.
        // At most 1000 per report.
        let mut proofs = self.store.proofs_due_before(end_ms)?;
        proofs.truncate(1000);
        let results = ProofResults {
            issued: proofs.len() as u32,
            passed: proofs.iter().filter(|p| p.passed).count() as u32,
        };
        let reward_micro = self.policy.reward(content.reward_inputs(), results);
        let records = content.hashes.len() as u64;
        let report = EpochReport {
            version: REPORT_VERSION,
            gateway_key: self.key.verifying_key().to_bytes(),
            epoch,
            length_ms: self.length_ms,
            prev_hash: cursor.prev_hash,
            first_seq: if records == 0 { 0 } else { cursor.next_seq },
            records,
            merkle_root: merkle::root(
                content
                    .hashes
                    .into_iter()
                    .map(|h| merkle::leaf(&h))
                    .collect(),
            ),
            components: content.components,
            totals: content.totals,
            subject_totals: content.subject_totals,
            proofs,
            reward_micro,
        }
        .sign(self.key.signing_key());
        let next = Cursor {
            next_epoch: epoch + 1,
            length_ms: self.length_ms,
            next_seq: cursor.next_seq + records,
            prev_hash: report.hash(),
        };
        self.store.record_close(&report, next, self.deliver)?;
        tracing::info!(
            epoch,
            records,
            reward_micro = %reward_micro,
            root = %hex::encode(report.report.merkle_root),
            "epoch closed"
        );
        Ok((report, next))
    }
}

/// What an epoch holds, read from the ledger.
pub struct EpochContent {
    /// Chain hashes of the records, in sequence order.
    pub hashes: Vec<Hash>,
    /// Per plugin loaded or with records, its component digest, sorted by
    /// plugin.
    pub components: Vec<ComponentDigest>,
    /// Totals, sorted by plugin, source and unit.
    pub totals: Vec<EpochTotal>,
    /// Totals of plugin-claimed usage per subject: the first
    /// `MAX_SUBJECT_ROWS` (plugin, unit, subject) seen in sequence order,
    /// sorted.
    pub subject_totals: Vec<SubjectTotal>,
}

impl EpochContent {
    /// Reads records from `from_seq` while they were committed before
    /// `end_ms`.
    pub fn collect(
        ledger: &Ledger,
        from_seq: u64,
        end_ms: u64,
        identities: &BTreeMap<String, PluginIdentity>,
    ) -> Result<Self, LedgerError> {
        type Key = (String, &'static str, String);
        let mut hashes = Vec::new();
        let mut sums: BTreeMap<Key, (u64, u128, HashSet<u64>)> = BTreeMap::new();
        let mut by_subject: BTreeMap<(String, String, String), (u64, u128)> = BTreeMap::new();
        ledger.scan_from(from_seq, |hash, r| {
            if r.time_ms >= end_ms {
                return false;
            }
            hashes.push(hash);
            if r.source == Source::Plugin
                && let Some(subject) = &r.subject
            {
                let key = (r.plugin.clone(), r.unit.clone(), subject.clone());
                let room = by_subject.len() < MAX_SUBJECT_ROWS;
                let row = if room {
                    Some(by_subject.entry(key).or_default())
                } else {
                    by_subject.get_mut(&key)
                };
                if let Some(row) = row {
                    row.0 += 1;
                    row.1 += u128::from(r.quantity);
                }
            }
            let entry = sums
                .entry((r.plugin, r.source.as_str(), r.unit))
                .or_default();
            entry.0 += 1;
            entry.1 += u128::from(r.quantity);
            if let Some(s) = &r.subject {
                let mut h = DefaultHasher::new();
                s.hash(&mut h);
                entry.2.insert(h.finish());
            }
            true
        })?;
        let listed: std::collections::BTreeSet<&String> = sums
            .keys()
            .map(|(plugin, _, _)| plugin)
            .chain(identities.iter().filter(|(_, i)| i.loaded).map(|(p, _)| p))
            .collect();
        let components: Vec<ComponentDigest> = listed
            .into_iter()
            .map(|plugin| ComponentDigest {
                plugin: plugin.clone(),
                digest: identities.get(plugin).map_or([0; 32], |i| i.digest),
            })
            .collect();
        let totals = sums
            .into_iter()
            .map(
                |((plugin, source, unit), (records, quantity, subjects))| EpochTotal {
                    kind: identities
                        .get(&plugin)
                        .map_or_else(|| "other".into(), |i| i.kind.clone()),
                    plugin,
                    source: source.into(),
                    unit,
                    records,
                    quantity,
                    subjects: subjects.len() as u64,
                },
            )
            .collect();
        let subject_totals = by_subject
            .into_iter()
            .map(
                |((plugin, unit, subject), (records, quantity))| SubjectTotal {
                    plugin,
                    unit,
                    subject,
                    records,
                    quantity,
                },
            )
            .collect();
        Ok(Self {
            hashes,
            components,
            totals,
            subject_totals,
        })
    }

    fn reward_inputs(&self) -> impl Iterator<Item = RewardInput<'_>> {
        self.totals.iter().map(|t| RewardInput {
            kind: &t.kind,
            source: &t.source,
            unit: &t.unit,
            quantity: t.quantity,
        })
    }
}

/// Starts closing epochs (and, with `[upstream]`, delivering reports) for a
/// starting gateway into `store` (opened by the caller, who shares it with
/// the console). Fails before anything runs when the policy or the TLS
/// files are not right.
pub fn start(
    config: &crate::config::GatewayConfig,
    key: &DeviceKey,
    ledger: &Arc<Ledger>,
    store: Arc<EpochStore>,
    plugins: &Arc<crate::plugin_table::PluginTable>,
    udp: &crate::ingress::udp::IngressPorts,
    services: &mut Services,
) -> Result<(), crate::StartError> {
    let policy = match &config.epochs.policy {
        Some(p) => crate::config::load_policy(p)?,
        None => RewardPolicy::default(),
    };
    let client = match &config.upstream {
        Some(u) => Some(crate::upstream::sender::CollectorClient::new(u)?),
        None => None,
    };
    if client.is_some() {
        let added = store.enqueue_unacknowledged()?;
        if added > 0 {
            tracing::info!(
                reports = added,
                "queued reports closed while no collector was configured"
            );
        }
    }
    let key = Arc::new(DeviceKey::from_signing_key(key.signing_key().clone()));
    let closer = Arc::new(EpochCloser {
        ledger: ledger.clone(),
        store: store.clone(),
        key: key.clone(),
        policy,
        identities: PluginIdentities::follow(plugins.clone()),
        length_ms: config.epochs.length_ms,
        close_delay_ms: config.epochs.close_delay_ms,
        deliver: client.is_some(),
    });
    let closed = Arc::new(Notify::new());
    services.start(EpochClosing {
        closer,
        closed: closed.clone(),
    });
    if let (Some(client), Some(u)) = (client, &config.upstream) {
        services.start(crate::proofs::responder::Responder {
            client: client.clone(),
            store: store.clone(),
            ledger: ledger.clone(),
            key,
            prover: crate::proofs::responder::Prover::new(
                plugins.clone(),
                ledger.clone(),
                udp.clone(),
            ),
        });
        services.start(crate::upstream::sender::ReportSender {
            store,
            client,
            config: u.clone(),
            wake: closed,
        });
    }
    Ok(())
}

/// Closes epochs as they end, as a [`Service`]; wakes `closed` after each
/// close (the report sender waits on it).
pub struct EpochClosing {
    pub closer: Arc<EpochCloser>,
    pub closed: Arc<Notify>,
}

impl Service for EpochClosing {
    fn name(&self) -> &'static str {
        "epoch-closer"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(close_epochs(self.closer, self.closed, shutdown))
    }
}

async fn close_epochs(
    closer: Arc<EpochCloser>,
    closed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let c = closer.clone();
        match tokio::task::spawn_blocking(move || c.close_due(now_ms())).await {
            Ok(Ok(made)) if !made.is_empty() => closed.notify_one(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot close an epoch; retrying"),
            Err(e) => tracing::error!(error = %e, "epoch close panicked; retrying"),
        }
        let now = now_ms();
        let next_close = (now / closer.length_ms + 1) * closer.length_ms + closer.close_delay_ms;
        let wait = Duration::from_millis(next_close.saturating_sub(now).clamp(10, 60_000));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{CallEffects, NewRecord, Source};

    fn record(unit: &str, q: u64, time_ms: u64) -> NewRecord {
        NewRecord {
            time_ms,
            unit: unit.into(),
            quantity: q,
            source: Source::Plugin,
            subject: Some(format!("s{q}")),
            evidence: None,
        }
    }

    async fn commit(ledger: &Ledger, records: Vec<NewRecord>) {
        let effects = CallEffects {
            records,
            ..CallEffects::default()
        };
        ledger.commit("tpl".into(), effects).await.unwrap();
    }

    #[tokio::test]
    async fn epochs_close_in_order_with_contiguous_records_and_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        // epoch length 1000: records in epochs 5, 5, 7
        commit(
            &ledger,
            vec![record("hits", 2, 5_100), record("hits", 3, 5_900)],
        )
        .await;
        commit(&ledger, vec![record("hits", 4, 7_000)]).await;
        let policy = crate::config::parse_policy(
            std::path::Path::new("p.toml"),
            "[[rate]]\nkind = \"other\"\nunit = \"hits\"\nmicro = 10\n",
        )
        .unwrap();
        let store = Arc::new(EpochStore::open(dir.path()).unwrap());
        let closer = EpochCloser {
            ledger: ledger.clone(),
            store: store.clone(),
            key: Arc::new(DeviceKey::generate()),
            policy,
            identities: PluginIdentities::from_kinds(BTreeMap::new()),
            length_ms: 1000,
            close_delay_ms: 100,
            deliver: true,
        };
        // first run at t=5_500: the cursor starts at epoch 5, nothing due
        assert!(closer.close_due(5_500).unwrap().is_empty());
        assert!(closer.close_due(6_050).unwrap().is_empty());
        let made = closer.close_due(8_100).unwrap();
        let epochs: Vec<u64> = made.iter().map(|r| r.report.epoch).collect();
        assert_eq!(epochs, [5, 6, 7]);
        assert_eq!(made[0].report.records, 2);
        assert_eq!(made[0].report.totals[0].quantity, 5);
        assert_eq!(made[0].report.totals[0].subjects, 2);
        let subjects: Vec<&str> = made[0]
            .report
            .subject_totals
            .iter()
            .map(|t| t.subject.as_str())
            .collect();
        assert_eq!(subjects, ["s2", "s3"]);
        assert_eq!(made[0].report.reward_micro, 50);
        assert_eq!(made[1].report.records, 0);
        assert_eq!(made[1].report.merkle_root, merkle::EMPTY_ROOT);
        assert_eq!(made[2].report.first_seq, 3);
        assert_eq!(made[1].report.prev_hash, made[0].hash());
        assert_eq!(made[2].report.prev_hash, made[1].hash());
        // all three wait in the outbox, oldest first
        assert_eq!(store.outbox_len().unwrap(), 3);
        let first = store.outbox_first().unwrap().unwrap();
        assert_eq!(first.epoch, 5);
        store.acknowledge(&first, 9_000, None).unwrap();
        assert_eq!(store.outbox_first().unwrap().unwrap().epoch, 6);
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].acknowledged_ms, Some(9_000));
        assert!(listed[1].pending);
        // closing again closes nothing twice
        assert!(closer.close_due(8_200).unwrap().is_empty());
        // epochs closed without a collector are queued once one is configured
        assert_eq!(store.enqueue_unacknowledged().unwrap(), 0);
        let local = EpochCloser {
            deliver: false,
            ..closer
        };
        assert_eq!(local.close_due(9_200).unwrap().len(), 1);
        assert_eq!(store.outbox_len().unwrap(), 2);
        assert_eq!(store.enqueue_unacknowledged().unwrap(), 1);
        assert_eq!(store.outbox_len().unwrap(), 3);
        ledger.close();
    }

    #[tokio::test]
    async fn the_outbox_keeps_close_order_when_the_length_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        commit(&ledger, vec![record("hits", 1, 5_100)]).await;
        let store = Arc::new(EpochStore::open(dir.path()).unwrap());
        let closer = |length_ms| EpochCloser {
            ledger: ledger.clone(),
            store: store.clone(),
            key: Arc::new(DeviceKey::from_signing_key(
                ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
            )),
            policy: RewardPolicy::default(),
            identities: PluginIdentities::fixed(BTreeMap::from([(
                "tpl".to_string(),
                PluginIdentity {
                    kind: "other".into(),
                    digest: [9; 32],
                    loaded: true,
                },
            )])),
            length_ms,
            close_delay_ms: 100,
            deliver: true,
        };
        closer(1000).close_due(5_500).unwrap();
        let made = closer(1000).close_due(8_100).unwrap();
        assert_eq!(made.len(), 3);
        assert_eq!(made[0].report.components.len(), 1);
        assert_eq!(made[0].report.components[0].digest, [9; 32]);
        // twice as long: epoch 4 of 2000 ms starts where epoch 8 of 1000
        // would have; its number is smaller, its place in the chain later
        let made = closer(2000).close_due(10_200).unwrap();
        assert_eq!(made[0].report.epoch, 4);
        let mut delivered = Vec::new();
        while let Some(entry) = store.outbox_first().unwrap() {
            delivered.push(entry.epoch);
            store.acknowledge(&entry, 11_000, None).unwrap();
        }
        assert_eq!(delivered, [5, 6, 7, 4]);
        ledger.close();
    }
}
