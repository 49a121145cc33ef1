//! Epochs: fixed-length windows of wall-clock time, aligned to multiples of
//! their length since the Unix epoch (epoch `n` covers
//! `[n * length, (n + 1) * length)` ms).
//!
//! Closing an epoch takes the ledger records that follow the previous
//! epoch's last record and were committed before the epoch's end, and
//! computes their totals per plugin, source and unit (with the number of
//! distinct subjects: exact up to [`distinct::EXACT_SUBJECTS`] per total,
//! a HyperLogLog estimate above), the Merkle root over their chain hashes
//! (streamed: memory does not grow with the epoch), the digest
//! of each plugin's component, and the reward under the policy; the result is a signed report stored durably
//! (with an outbox entry when a collector is configured). Epochs close in
//! order and none is skipped, empty ones included, so the reports form a
//! chain without gaps. Records of epoch `n` are the contiguous sequence
//! range after epoch `n - 1`'s, so no record is in two epochs or in none,
//! even if the clock steps back.

pub mod distinct;
pub mod inspect;
pub mod store;

use std::collections::BTreeMap;
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

use crate::identity::{DeviceSigner, SignError};
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
    #[error(transparent)]
    Sign(#[from] SignError),
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
    /// The trusted publisher key whose signature was verified at load.
    pub signer: Option<Hash>,
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
                        signer: None,
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
                        signer: p.signer,
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
    pub key: Arc<dyn DeviceSigner>,
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
        let records = content.records;
        let report = self.key.sign_report(EpochReport {
            version: REPORT_VERSION,
            gateway_key: self.key.public_key().to_bytes(),
            epoch,
            length_ms: self.length_ms,
            prev_hash: cursor.prev_hash,
            first_seq: if records == 0 { 0 } else { cursor.next_seq },
            records,
            merkle_root: content.merkle_root,
            components: content.components,
            totals: content.totals,
            subject_totals: content.subject_totals,
            proofs,
            reward_micro,
        })?;
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

/// What an epoch holds, read from the ledger in one pass whose memory
/// does not grow with the number of records: O(log n) for the Merkle tree,
/// and per total at most [`distinct::EXACT_SUBJECTS`] subject hashes or
/// one sketch.
pub struct EpochContent {
    /// Records in the epoch.
    pub records: u64,
    /// The Merkle root over the records' chain hashes ([`merkle::leaf`] of
    /// each), in sequence order.
    pub merkle_root: Hash,
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
        let mut tree = merkle::StreamingRoot::new();
        let mut sums: BTreeMap<Key, (u64, u128, distinct::DistinctSubjects)> = BTreeMap::new();
        let mut by_subject: BTreeMap<(String, String, String), (u64, u128)> = BTreeMap::new();
        ledger.scan_from(from_seq, |hash, r| {
            if r.time_ms >= end_ms {
                return false;
            }
            tree.push(merkle::leaf(&hash));
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
                entry.2.insert(s);
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
                signer: identities.get(plugin).and_then(|i| i.signer),
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
                    subjects: subjects.count(),
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
            records: tree.count(),
            merkle_root: tree.finish(),
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
    key: &Arc<dyn DeviceSigner>,
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
        Some(u) => Some(crate::upstream::sender::CollectorClient::with_identity(
            u,
            Some(key.clone()),
        )?),
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
    let key = key.clone();
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
mod tests;
