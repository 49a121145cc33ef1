//! `collector.redb`: the embedded backend of the store (one process).
//! Each write is one redb transaction, so a report's acceptance, its
//! epoch's challenge decisions and its decision commit together.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use depin_protocol::Hash;
use depin_protocol::report::SignedReport;

use super::redb_challenges::decide_due;
use super::{
    Accepted, ChainError, ChallengeRecord, Decide, GatewaySummary, check_again, check_extends,
    storage,
};

/// (gateway id, epoch) -> signed report bytes
const REPORTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("reports");
/// gateway id -> last epoch (8) || last report hash (32) || its start ms (8)
const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("heads");
/// challenge id -> JSON `ChallengeRecord`
pub(super) const CHALLENGES: TableDefinition<&str, &[u8]> = TableDefinition::new("challenges");
/// (gateway id, status, challenge id) -> deadline ms
pub(super) const BY_STATUS: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("challenges-by-status");
/// (gateway id, deadline ms, challenge id) -> ()
pub(super) const BY_DEADLINE: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("challenges-by-deadline");
/// (epoch, gateway id) -> reward, micro-tokens
const REWARDS: TableDefinition<(u64, &str), u128> = TableDefinition::new("rewards");
/// (gateway id, epoch) -> JSON decision (what `explain` shows)
const DECISIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("decisions");
/// gateway id -> JSON of its latest refused report
const REFUSALS: TableDefinition<&str, &[u8]> = TableDefinition::new("refusals");
/// gateway id -> Unix ms of its next challenge round
pub(super) const ROUNDS: TableDefinition<&str, u64> = TableDefinition::new("rounds");
/// gateway id -> JSON `GatewayRecord`
pub(super) const GATEWAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("gateways");

impl<E: Into<redb::Error>> From<E> for ChainError {
    fn from(e: E) -> Self {
        ChainError::Storage(e.into().to_string())
    }
}

/// The open collector store.
pub struct CollectorStore {
    pub(super) db: Database,
}

impl CollectorStore {
    /// Opens (creating) `collector.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, ChainError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| ChainError::Storage(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join("collector.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => ChainError::Storage(format!(
                "{}: in use by a running collector (ask it: GET /v1/gateways/ID/epochs/N)",
                path.display()
            )),
            other => ChainError::Storage(format!("{}: {other}", path.display())),
        })?;
        let txn = db.begin_write()?;
        txn.open_table(REPORTS)?;
        txn.open_table(HEADS)?;
        txn.open_table(REWARDS)?;
        txn.open_table(CHALLENGES)?;
        txn.open_table(BY_STATUS)?;
        txn.open_table(BY_DEADLINE)?;
        txn.open_table(DECISIONS)?;
        txn.open_table(REFUSALS)?;
        txn.open_table(ROUNDS)?;
        txn.open_table(GATEWAYS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Accepts `report` (already checked: encoding, signature, sender,
    /// schedule) if it extends its gateway's chain: decides every challenge
    /// due in `[start_ms, end_ms)` (open ones expire), cross-checks the
    /// report's list against them, and stores the decision `decide` makes.
    pub fn accept(
        &self,
        report: &SignedReport,
        end_ms: u64,
        now_ms: u64,
        decide: &dyn Decide,
    ) -> Result<Accepted, ChainError> {
        let gateway = report.report.gateway_id();
        let epoch = report.report.epoch;
        let txn = self.db.begin_write()?;
        let decision = {
            let mut reports = txn.open_table(REPORTS)?;
            let mut heads = txn.open_table(HEADS)?;
            let head = heads.get(gateway.as_str())?.map(|v| decode_head(v.value()));
            if let Some(existing) = reports.get((gateway.as_str(), epoch))? {
                check_again(existing.value(), report, head.map(|h| h.0))?;
                let d = txn
                    .open_table(DECISIONS)?
                    .get((gateway.as_str(), epoch))?
                    .map(|v| serde_json::from_slice(v.value()))
                    .transpose()
                    .map_err(storage)?
                    .unwrap_or(serde_json::Value::Null);
                return Ok(Accepted::Duplicate(d));
            }
            check_extends(head.map(|(epoch, hash, _)| (epoch, hash)), report)?;
            let start = report.report.start_ms();
            let due = decide_due(&txn, &gateway, start, end_ms, now_ms)?;
            {
                let challenges = txn.open_table(CHALLENGES)?;
                for p in &report.report.proofs {
                    let known = challenges
                        .get(p.challenge_id.as_str())?
                        .map(|v| serde_json::from_slice::<ChallengeRecord>(v.value()))
                        .transpose()
                        .map_err(storage)?
                        .is_some_and(|c| c.gateway == gateway);
                    if !known {
                        return Err(ChainError::UnknownChallenge(p.challenge_id.clone()));
                    }
                }
            }
            let (decision, reward) = decide.decide(report, &due);
            reports.insert((gateway.as_str(), epoch), report.bytes.as_slice())?;
            let mut head = [0u8; 48];
            head[..8].copy_from_slice(&epoch.to_be_bytes());
            head[8..40].copy_from_slice(&report.hash());
            head[40..].copy_from_slice(&start.to_be_bytes());
            heads.insert(gateway.as_str(), head.as_slice())?;
            txn.open_table(REWARDS)?
                .insert((epoch, gateway.as_str()), reward)?;
            let json = serde_json::to_vec(&decision).map_err(storage)?;
            txn.open_table(DECISIONS)?
                .insert((gateway.as_str(), epoch), json.as_slice())?;
            decision
        };
        txn.commit()?;
        Ok(Accepted::New(decision))
    }

    /// Keeps `gateway`'s latest refused report (one per gateway: a
    /// gateway cannot fill the store with refusals).
    pub fn record_refusal(
        &self,
        gateway: &str,
        refusal: &serde_json::Value,
    ) -> Result<(), ChainError> {
        let json = serde_json::to_vec(refusal).map_err(storage)?;
        let txn = self.db.begin_write()?;
        txn.open_table(REFUSALS)?.insert(gateway, json.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The collector's decision on `gateway`'s `epoch`: the stored
    /// decision of an accepted report, else the latest refusal when it
    /// names that epoch.
    pub fn explain(
        &self,
        gateway: &str,
        epoch: u64,
    ) -> Result<Option<serde_json::Value>, ChainError> {
        let txn = self.db.begin_read()?;
        if let Some(v) = txn.open_table(DECISIONS)?.get((gateway, epoch))? {
            return serde_json::from_slice(v.value()).map(Some).map_err(storage);
        }
        let Some(v) = txn.open_table(REFUSALS)?.get(gateway)? else {
            return Ok(None);
        };
        let refusal: serde_json::Value = serde_json::from_slice(v.value()).map_err(storage)?;
        Ok((refusal["epoch"].as_u64() == Some(epoch)).then_some(refusal))
    }

    /// Every gateway that has reported, with its totals.
    pub fn gateways(&self) -> Result<Vec<GatewaySummary>, ChainError> {
        let txn = self.db.begin_read()?;
        let heads = txn.open_table(HEADS)?;
        let reports = txn.open_table(REPORTS)?;
        let rewards = txn.open_table(REWARDS)?;
        let mut out = Vec::new();
        for entry in heads.iter()? {
            let (k, v) = entry?;
            let id = k.value().to_string();
            let (last_epoch, last_hash, _) = decode_head(v.value());
            let mut count = 0;
            let mut total = 0u128;
            for r in reports.range((id.as_str(), 0)..=(id.as_str(), u64::MAX))? {
                let (key, _) = r?;
                count += 1;
                if let Some(w) = rewards.get((key.value().1, id.as_str()))? {
                    total = total.saturating_add(w.value());
                }
            }
            out.push(GatewaySummary {
                gateway_id: id,
                reports: count,
                last_epoch,
                last_hash: hex::encode(last_hash),
                reward_micro: total.to_string(),
            });
        }
        Ok(out)
    }

    /// Rewards of `epoch`: (gateway id, micro-tokens).
    pub fn rewards(&self, epoch: u64) -> Result<Vec<(String, u128)>, ChainError> {
        let txn = self.db.begin_read()?;
        let rewards = txn.open_table(REWARDS)?;
        let mut out = Vec::new();
        for entry in rewards.range((epoch, "")..(epoch + 1, ""))? {
            let (k, v) = entry?;
            out.push((k.value().1.to_string(), v.value()));
        }
        Ok(out)
    }

    /// An accepted report.
    pub fn report(&self, gateway: &str, epoch: u64) -> Result<Option<Vec<u8>>, ChainError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(REPORTS)?
            .get((gateway, epoch))?
            .map(|v| v.value().to_vec()))
    }

    /// The gateway's accepted reports, newest first, at most `n`.
    pub fn latest_reports(&self, gateway: &str, n: usize) -> Result<Vec<SignedReport>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REPORTS)?;
        let mut out = Vec::new();
        for entry in t.range((gateway, 0)..=(gateway, u64::MAX))?.rev().take(n) {
            let (_, v) = entry?;
            out.push(SignedReport::decode(v.value()).map_err(storage)?);
        }
        Ok(out)
    }

    /// The ids of every gateway that has reported.
    pub fn gateway_ids(&self) -> Result<Vec<String>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HEADS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(entry?.0.value().to_string());
        }
        Ok(out)
    }

    /// The epochs of `gateway`'s accepted reports, oldest first.
    pub fn report_epochs(&self, gateway: &str) -> Result<Vec<u64>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REPORTS)?;
        let mut out = Vec::new();
        for entry in t.range((gateway, 0)..=(gateway, u64::MAX))? {
            out.push(entry?.0.value().1);
        }
        Ok(out)
    }
}

/// epoch (8) || report hash (32) || epoch start ms (8)
fn decode_head(b: &[u8]) -> (u64, Hash, u64) {
    let mut epoch = [0u8; 8];
    let mut hash = [0u8; 32];
    let mut start = [0u8; 8];
    if b.len() == 48 {
        epoch.copy_from_slice(&b[..8]);
        hash.copy_from_slice(&b[8..40]);
        start.copy_from_slice(&b[40..]);
    }
    (u64::from_be_bytes(epoch), hash, u64::from_be_bytes(start))
}

#[cfg(test)]
mod tests {
    use depin_gateway::identity::DeviceKey;
    use depin_protocol::GENESIS_HASH;
    use depin_protocol::report::{EpochReport, REPORT_VERSION};

    use super::*;

    struct Zero;
    impl Decide for Zero {
        fn decide(&self, _: &SignedReport, due: &[ChallengeRecord]) -> (serde_json::Value, u128) {
            (serde_json::json!({ "due": due.len() }), 0)
        }
    }

    fn report(key: &DeviceKey, epoch: u64, prev: Hash) -> SignedReport {
        EpochReport {
            version: REPORT_VERSION,
            gateway_key: key.verifying_key().to_bytes(),
            epoch,
            length_ms: 1000,
            prev_hash: prev,
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
    }

    fn accept(store: &CollectorStore, r: &SignedReport) -> Result<Accepted, ChainError> {
        let end = r.report.start_ms() + r.report.length_ms;
        store.accept(r, end, end + 1, &Zero)
    }

    #[test]
    fn the_chain_refuses_each_way_out_of_order_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = CollectorStore::open(dir.path()).unwrap();
        let key = DeviceKey::generate();
        let a = report(&key, 10, GENESIS_HASH);
        assert!(matches!(accept(&store, &a), Ok(Accepted::New(_))));
        assert!(matches!(accept(&store, &a), Ok(Accepted::Duplicate(_))));
        let b = report(&key, 11, a.hash());
        assert!(matches!(accept(&store, &b), Ok(Accepted::New(_))));
        let name = |r: &SignedReport| accept(&store, r).unwrap_err().name();
        assert_eq!(name(&a), "replayed");
        assert_eq!(name(&report(&key, 11, [3; 32])), "overlapping");
        assert_eq!(name(&report(&key, 10, [3; 32])), "overlapping");
        assert_eq!(name(&report(&key, 9, b.hash())), "preceding");
        assert_eq!(name(&report(&key, 13, b.hash())), "gap");
        assert_eq!(name(&report(&key, 12, [7; 32])), "gap");
        assert_eq!(
            name(&report(&DeviceKey::generate(), 3, [1; 32])),
            "not-genesis"
        );
        assert_eq!(store.gateways().unwrap().len(), 1);
    }

    #[test]
    fn open_challenges_due_in_the_epoch_expire_when_it_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let store = CollectorStore::open(dir.path()).unwrap();
        let key = DeviceKey::generate();
        let gw = key.gateway_id();
        for (id, deadline) in [("in", 10_500), ("after", 11_200)] {
            store
                .issue(&ChallengeRecord {
                    spec: depin_protocol::proofs::ChallengeSpec {
                        id: id.into(),
                        family: "inclusion".into(),
                        epoch: 0,
                        index: 0,
                        plugin: String::new(),
                        kind: "inclusion".into(),
                        nonce: String::new(),
                        params: String::new(),
                        deadline_ms: deadline,
                    },
                    gateway: gw.clone(),
                    issued_ms: 10_000,
                    deadline_ms: deadline,
                    digest: String::new(),
                    status: "pending".into(),
                    decided_ms: None,
                })
                .unwrap();
        }
        let a = report(&key, 10, GENESIS_HASH);
        let Accepted::New(d) = accept(&store, &a).unwrap() else {
            panic!("new")
        };
        assert_eq!(d["due"], 1);
        assert_eq!(store.challenge("in").unwrap().unwrap().status, "expired");
        assert_eq!(store.challenge("after").unwrap().unwrap().status, "pending");
        assert_eq!(store.ids_in(&gw, "expired").unwrap().len(), 1);
        // an answer after the deadline finds it expired
        assert_eq!(store.resolve("in", true, 12_000).unwrap(), "expired");
        assert_eq!(store.prune_decided(10_501, 10).unwrap(), 1);
        assert!(store.challenge("in").unwrap().is_none());
        assert_eq!(store.take_pending(&gw).unwrap().len(), 1);
        assert!(store.take_pending(&gw).unwrap().is_empty());
    }
}
