//! A gateway that signs whatever it likes with a real device key, over
//! real mutual TLS: the dishonest gateway of the collector tests and the
//! simulated gateways of the fleet benchmark. It can also keep an honest
//! ledger of its own (records chained and under the report's Merkle root)
//! and prove inclusion of any record it reported.

use std::collections::BTreeMap;
use std::time::Duration;

use depin_gateway::identity::DeviceKey;
use depin_gateway::upstream::sender::CollectorClient;
use depin_protocol::proofs::{Answer, ChallengeSpec, InclusionProof};
use depin_protocol::record::{Source, UsageRecord};
use depin_protocol::report::{ComponentDigest, EpochReport, EpochTotal, REPORT_VERSION};
use depin_protocol::{GENESIS_HASH, Hash, merkle};
use serde_json::Value;

use crate::upstream::{ClientCert, Pki};

/// The epoch schedule of the collectors forgers report to (the collector
/// tests and the fleet benchmark): epochs of `LENGTH_MS`, each report
/// accepted `GRACE_MS` after its epoch ended. A forger reports epochs of
/// this length.
pub const LENGTH_MS: u64 = 1000;
/// See [`LENGTH_MS`].
pub const GRACE_MS: u64 = 100;

/// The collector's `[schedule]` table of that schedule.
pub fn schedule_toml() -> String {
    crate::upstream::schedule_toml(LENGTH_MS, GRACE_MS)
}

/// The epoch running now on that schedule.
pub fn current_epoch() -> u64 {
    depin_protocol::time::now_ms() / LENGTH_MS
}

/// Waits until `epoch`'s report may be accepted (ended + grace).
pub async fn until_acceptable(epoch: u64) {
    let from = (epoch + 1) * LENGTH_MS + GRACE_MS + 20;
    let now = depin_protocol::time::now_ms();
    if now < from {
        tokio::time::sleep(Duration::from_millis(from - now)).await;
    }
}

/// The records of one epoch a forger kept honestly.
struct KeptEpoch {
    first_seq: u64,
    /// Chain hash before the first record.
    prev: Hash,
    records: Vec<Vec<u8>>,
}

/// A gateway that signs whatever it likes with a real key.
pub struct Forger {
    pub key: DeviceKey,
    pub https: CollectorClient,
    /// Hash of its last accepted report.
    pub prev: Hash,
    pub length_ms: u64,
    /// Epochs built by [`Forger::honest_report`], for inclusion proofs.
    kept: BTreeMap<u64, KeptEpoch>,
    next_seq: u64,
    chain: Hash,
}

impl Forger {
    /// A forger with a fresh key and a CA-issued client certificate named
    /// `name`, reporting to the collector on `port`.
    pub fn new(pki: &Pki, port: u16, name: &str) -> (Self, ClientCert) {
        let cert = pki.client(name);
        let forger = Self::with_client(DeviceKey::generate(), pki.https(port, &cert));
        (forger, cert)
    }

    /// A forger with `key` reporting through `https`, 1-second epochs.
    pub fn with_client(key: DeviceKey, https: CollectorClient) -> Self {
        Self {
            key,
            https,
            prev: GENESIS_HASH,
            length_ms: LENGTH_MS,
            kept: BTreeMap::new(),
            next_seq: 1,
            chain: GENESIS_HASH,
        }
    }

    pub fn id(&self) -> String {
        self.key.gateway_id()
    }

    /// A v2 report of `epoch` chained to the last accepted one, with
    /// `totals` of (plugin, claimed kind, unit, quantity) and `components`.
    pub fn report(
        &self,
        epoch: u64,
        components: &[(&str, Hash)],
        totals: &[(&str, &str, &str, u128)],
    ) -> EpochReport {
        EpochReport {
            version: REPORT_VERSION,
            gateway_key: self.key.verifying_key().to_bytes(),
            epoch,
            length_ms: self.length_ms,
            prev_hash: self.prev,
            first_seq: 1,
            records: 3,
            merkle_root: [9; 32],
            components: components
                .iter()
                .map(|(p, d)| ComponentDigest {
                    plugin: p.to_string(),
                    digest: *d,
                    signer: None,
                })
                .collect(),
            totals: totals
                .iter()
                .map(|(plugin, kind, unit, q)| EpochTotal {
                    plugin: plugin.to_string(),
                    kind: kind.to_string(),
                    source: "plugin".into(),
                    unit: unit.to_string(),
                    records: 1,
                    quantity: *q,
                    subjects: 0,
                })
                .collect(),
            subject_totals: Vec::new(),
            proofs: Vec::new(),
            // The estimate claims a fortune; the collector decides.
            reward_micro: 1 << 60,
        }
    }

    /// A report of `epoch` over `records` real usage records of `plugin`
    /// (one `unit` each), chained and under the report's Merkle root, with
    /// totals that match them. The records are kept, so the forger can
    /// answer inclusion challenges on them.
    pub fn honest_report(
        &mut self,
        epoch: u64,
        plugin: (&str, Hash),
        kind: &str,
        unit: &str,
        records: u64,
    ) -> EpochReport {
        let first_seq = self.next_seq;
        let prev = self.chain;
        let mut encoded = Vec::new();
        let mut leaves = Vec::new();
        for i in 0..records {
            let bytes = UsageRecord {
                seq: first_seq + i,
                time_ms: epoch * self.length_ms + i,
                plugin: plugin.0.to_string(),
                unit: unit.to_string(),
                quantity: 1,
                source: Source::Plugin,
                subject: None,
                evidence: None,
            }
            .encode();
            self.chain = UsageRecord::chain_hash(&self.chain, &bytes);
            leaves.push(merkle::leaf(&self.chain));
            encoded.push(bytes);
        }
        self.next_seq += records;
        self.kept.insert(
            epoch,
            KeptEpoch {
                first_seq,
                prev,
                records: encoded,
            },
        );
        let mut r = self.report(epoch, &[plugin], &[(plugin.0, kind, unit, records as u128)]);
        r.first_seq = first_seq;
        r.records = records;
        r.merkle_root = merkle::root(leaves);
        r.totals[0].records = records;
        r.reward_micro = 0;
        r
    }

    /// The inclusion proof a challenge asks for, from the kept records.
    pub fn prove(&self, spec: &ChallengeSpec) -> Option<Vec<u8>> {
        let kept = self.kept.get(&spec.epoch)?;
        let index = usize::try_from(spec.index).ok()?;
        let mut chain = kept.prev;
        let mut hashes = Vec::with_capacity(kept.records.len());
        for r in &kept.records {
            chain = UsageRecord::chain_hash(&chain, r);
            hashes.push(chain);
        }
        let prev_hash = if index == 0 {
            kept.prev
        } else {
            *hashes.get(index - 1)?
        };
        let leaves: Vec<Hash> = hashes.iter().map(|h| merkle::leaf(h)).collect();
        debug_assert_eq!(kept.first_seq + spec.index, kept.first_seq + index as u64);
        Some(
            InclusionProof {
                prev_hash,
                record: kept.records.get(index)?.clone(),
                path: merkle::path(&leaves, index),
            }
            .encode(),
        )
    }

    /// Signs and posts; remembers the hash when accepted.
    pub async fn post(&mut self, r: EpochReport) -> (u16, Value) {
        let signed = r.sign(self.key.signing_key());
        self.post_bytes(&signed.bytes, signed.hash()).await
    }

    /// Posts signed report bytes (`hash`: their report hash); remembers
    /// the hash when accepted.
    pub async fn post_bytes(&mut self, bytes: &[u8], hash: Hash) -> (u16, Value) {
        let (status, body) = self
            .https
            .request("POST", "/v1/reports", bytes.to_vec())
            .await
            .expect("post a report");
        if status == 200 {
            self.prev = hash;
        }
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, body)
    }

    /// Long-polls for challenges (up to 3 s).
    pub async fn poll(&self) -> Vec<ChallengeSpec> {
        let (status, body) = self
            .https
            .with_extra_timeout(Duration::from_secs(5))
            .request("GET", "/v1/challenges?wait_ms=3000", Vec::new())
            .await
            .expect("poll");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    /// Signs and sends an answer; returns the verdict.
    pub async fn answer(&self, id: &str, answered: bool, payload: Vec<u8>) -> Value {
        let bytes = Answer {
            gateway_key: self.key.verifying_key().to_bytes(),
            challenge_id: id.to_string(),
            answered,
            payload,
        }
        .sign(self.key.signing_key());
        let (status, body) = self
            .https
            .request("POST", "/v1/challenges/answer", bytes)
            .await
            .expect("answer");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The collector's decision on `epoch` of this gateway.
    pub async fn explain(&self, epoch: u64) -> Value {
        let path = format!("/v1/gateways/{}/epochs/{epoch}", self.id());
        let (status, body) = self
            .https
            .request("GET", &path, Vec::new())
            .await
            .expect("GET");
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("JSON")
    }
}
