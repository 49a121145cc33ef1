//! The collector's store: accepted reports, each gateway's chain head,
//! every challenge issued with its deadline and verdict, the decision
//! (reward lines with reasons) per gateway and epoch, the time of each
//! gateway's next challenge round, and the registry of gateways allowed to
//! report.
//!
//! One interface, two backends: `collector.redb` in `data_dir` (the
//! embedded default, one process) or PostgreSQL (`[store] url`), which
//! several collector replicas share.
//!
//! Guarantees, on both: a report is accepted at most once (the same bytes
//! as the last accepted report again are a duplicate with the same
//! acknowledgement; a different report for an accepted epoch is
//! `overlapping`); a gateway's accepted reports form an unbroken chain of
//! consecutive epochs from its first report (previous hash = zeros).
//! Accepting a report, deciding its epoch's challenges and storing its
//! decision happen in one transaction. A challenge is handed out, decided
//! and expired at most once, and a gateway's round is claimed by one
//! issuer, however many replicas run. Challenges are found by (gateway,
//! status) and by (gateway, deadline), never by a full scan.

use std::path::Path;
use std::sync::Arc;

use depin_protocol::report::SignedReport;
use depin_protocol::{GENESIS_HASH, Hash};

mod postgres;
mod postgres_challenges;
mod postgres_notify;
mod postgres_registry;
mod redb;
mod redb_challenges;
mod redb_registry;
mod registry;

pub use self::redb::CollectorStore;
pub use postgres::{PgStore, SCHEMA_VERSION};
pub use postgres_notify::ChallengeEvent;
pub use registry::{GatewayRecord, GatewayStatus, is_gateway_id};

/// Statuses of a challenge that wait for an answer.
pub const OPEN: [&str; 2] = ["pending", "sent"];
/// Statuses of a decided challenge.
pub const DECIDED: [&str; 3] = ["passed", "failed", "expired"];

/// `[store]` in `collector.toml`. Absent: `collector.redb` in `data_dir`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database` (the keyword form
    /// `host=… dbname=…` works too). TLS to the database is not built in:
    /// reach it over loopback, a private network or a local TLS proxy.
    #[serde(default)]
    pub url: String,
    /// A file holding the URL instead (e.g. a mounted Kubernetes Secret),
    /// read at start; give `url` or `url_file`, not both.
    pub url_file: Option<std::path::PathBuf>,
    /// Most connections this replica opens; requests beyond wait for one.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Any statement running longer is cancelled by the server, ms.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

fn default_pool_size() -> usize {
    16
}

fn default_statement_timeout_ms() -> u64 {
    10_000
}

/// What happened to a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// New, stored and counted; the collector's decision.
    New(serde_json::Value),
    /// The last accepted report again; not counted again. Its decision.
    Duplicate(serde_json::Value),
}

/// Why a report does not fit the gateway's chain; each has a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a different report for epoch {0} was already accepted")]
    Overlapping(u64),
    #[error("epoch {epoch} precedes the last accepted epoch {last}")]
    Preceding { epoch: u64, last: u64 },
    #[error("epoch {epoch} was accepted before, and the chain has moved on to {last}")]
    Replayed { epoch: u64, last: u64 },
    #[error(
        "epoch {epoch} does not follow the last accepted epoch {last} (its previous-report hash or its number leaves a gap, or the chain forks)"
    )]
    Gap { epoch: u64, last: u64 },
    #[error("the first report of a gateway must start its chain (previous hash all zeros)")]
    NotGenesis,
    #[error("the report lists challenge {0}, which the collector never issued to this gateway")]
    UnknownChallenge(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

impl ChainError {
    /// The documented refusal name.
    pub fn name(&self) -> &'static str {
        match self {
            ChainError::Overlapping(_) => "overlapping",
            ChainError::Preceding { .. } => "preceding",
            ChainError::Replayed { .. } => "replayed",
            ChainError::Gap { .. } => "gap",
            ChainError::NotGenesis => "not-genesis",
            ChainError::UnknownChallenge(_) => "unknown-challenge",
            ChainError::Storage(_) => "storage",
        }
    }
}

fn storage(e: impl std::fmt::Display) -> ChainError {
    ChainError::Storage(e.to_string())
}

/// A report for an epoch of which `stored` (bytes) was accepted, the
/// gateway's chain at `last`: the same bytes as the last accepted report
/// are a duplicate (`Ok`, acknowledged again); other bytes overlap; the
/// same bytes of an older epoch are a replay. Both backends decide so.
fn check_again(stored: &[u8], report: &SignedReport, last: Option<u64>) -> Result<(), ChainError> {
    let epoch = report.report.epoch;
    let last = last.unwrap_or(epoch);
    if stored != report.bytes.as_slice() {
        Err(ChainError::Overlapping(epoch))
    } else if epoch == last {
        Ok(())
    } else {
        Err(ChainError::Replayed { epoch, last })
    }
}

/// Whether `report` (of an epoch not yet accepted) extends the chain
/// whose head is `head` (last epoch, its report's hash): the first report
/// starts from the genesis hash, each next one follows the last epoch and
/// names its hash. Both backends decide so.
fn check_extends(head: Option<(u64, Hash)>, report: &SignedReport) -> Result<(), ChainError> {
    let (epoch, prev) = (report.report.epoch, report.report.prev_hash);
    match head {
        None if prev != GENESIS_HASH => Err(ChainError::NotGenesis),
        Some((last, _)) if epoch < last => Err(ChainError::Preceding { epoch, last }),
        Some((last, hash)) if epoch != last + 1 || prev != hash => {
            Err(ChainError::Gap { epoch, last })
        }
        _ => Ok(()),
    }
}

/// A challenge the collector issued, and what became of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChallengeRecord {
    pub spec: depin_protocol::proofs::ChallengeSpec,
    pub gateway: String,
    pub issued_ms: u64,
    /// Answers after this are not judged; unanswered it is `expired`,
    /// which counts as failed in the epoch the deadline falls in. (0 in
    /// records of an older collector: never due in any epoch.)
    #[serde(default)]
    pub deadline_ms: u64,
    /// Possession: the component digest whose verifier judges it.
    #[serde(default)]
    pub digest: String,
    /// `pending` (not yet fetched), `sent`, `passed`, `failed`, `expired`.
    pub status: String,
    /// When it was decided.
    #[serde(default)]
    pub decided_ms: Option<u64>,
}

/// A gateway as the collector knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewaySummary {
    pub gateway_id: String,
    pub reports: u64,
    pub last_epoch: u64,
    pub last_hash: String,
    pub reward_micro: String,
}

/// How the collector decides an accepted report's reward: given the
/// report and the challenges due in its epoch (the collector's records),
/// the decision as JSON and the reward.
pub trait Decide: Sync {
    fn decide(&self, report: &SignedReport, due: &[ChallengeRecord]) -> (serde_json::Value, u128);
}

/// The open store, whichever backend.
#[derive(Clone)]
pub enum Store {
    /// `collector.redb`: one process.
    Redb(Arc<CollectorStore>),
    /// PostgreSQL: any number of replicas.
    Postgres(PgStore),
}

/// Runs a redb call on this worker thread without stalling the others
/// (redb commits fsync).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// Dispatches one call to the backend; redb calls run via `blocking`.
macro_rules! dispatch {
    ($self:ident, $s:ident => $redb:expr, $pg:expr) => {
        match $self {
            Store::Redb($s) => blocking(|| $redb),
            Store::Postgres($s) => $pg.await,
        }
    };
}

impl Store {
    /// Opens the store `config` names: PostgreSQL (migrating its schema)
    /// when `[store]` is given, else `collector.redb` in `data_dir`.
    pub async fn open(config: Option<&StoreConfig>, data_dir: &Path) -> Result<Self, ChainError> {
        match config {
            Some(c) => Ok(Store::Postgres(PgStore::connect(c).await?)),
            None => Ok(Store::Redb(Arc::new(blocking(|| {
                CollectorStore::open(data_dir)
            })?))),
        }
    }

    /// Whether replicas may share this store (PostgreSQL): another
    /// replica may issue the challenges a poll here waits for.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// On a shared store, tells `on_event` of every challenge any replica
    /// issues, forever (reconnecting); on redb, returns at once (this
    /// process is the only issuer).
    pub async fn listen_for_challenges(&self, on_event: impl FnMut(ChallengeEvent)) {
        if let Store::Postgres(s) = self {
            s.listen_for_challenges(on_event).await;
        }
    }

    /// Answers when the store does (readiness).
    pub async fn ping(&self) -> Result<(), ChainError> {
        dispatch!(self, s => s.gateway_ids().map(|_| ()), s.ping())
    }

    /// Accepts `report` (already checked: encoding, signature, sender,
    /// schedule) if it extends its gateway's chain: decides every
    /// challenge due in `[start_ms, end_ms)` (open ones expire),
    /// cross-checks the report's list against them, and stores the
    /// decision `decide` makes — all in one transaction.
    pub async fn accept(
        &self,
        report: &SignedReport,
        end_ms: u64,
        now_ms: u64,
        decide: &dyn Decide,
    ) -> Result<Accepted, ChainError> {
        dispatch!(self, s => s.accept(report, end_ms, now_ms, decide), s.accept(report, end_ms, now_ms, decide))
    }

    /// Keeps `gateway`'s latest refused report (one per gateway).
    pub async fn record_refusal(
        &self,
        gateway: &str,
        refusal: &serde_json::Value,
    ) -> Result<(), ChainError> {
        dispatch!(self, s => s.record_refusal(gateway, refusal), s.record_refusal(gateway, refusal))
    }

    /// The decision on `gateway`'s `epoch`, else its latest refusal when
    /// it names that epoch.
    pub async fn explain(
        &self,
        gateway: &str,
        epoch: u64,
    ) -> Result<Option<serde_json::Value>, ChainError> {
        dispatch!(self, s => s.explain(gateway, epoch), s.explain(gateway, epoch))
    }

    /// Every gateway that has reported, with its totals.
    pub async fn gateways(&self) -> Result<Vec<GatewaySummary>, ChainError> {
        dispatch!(self, s => s.gateways(), s.gateways())
    }

    /// Rewards of `epoch`: (gateway id, micro-tokens).
    pub async fn rewards(&self, epoch: u64) -> Result<Vec<(String, u128)>, ChainError> {
        dispatch!(self, s => s.rewards(epoch), s.rewards(epoch))
    }

    /// An accepted report's bytes.
    pub async fn report(&self, gateway: &str, epoch: u64) -> Result<Option<Vec<u8>>, ChainError> {
        dispatch!(self, s => s.report(gateway, epoch), s.report(gateway, epoch))
    }

    /// The gateway's accepted reports, newest first, at most `n`.
    pub async fn latest_reports(
        &self,
        gateway: &str,
        n: usize,
    ) -> Result<Vec<SignedReport>, ChainError> {
        dispatch!(self, s => s.latest_reports(gateway, n), s.latest_reports(gateway, n))
    }

    /// The ids of every gateway that has reported.
    pub async fn gateway_ids(&self) -> Result<Vec<String>, ChainError> {
        dispatch!(self, s => s.gateway_ids(), s.gateway_ids())
    }

    /// The epochs of `gateway`'s accepted reports, oldest first.
    pub async fn report_epochs(&self, gateway: &str) -> Result<Vec<u64>, ChainError> {
        dispatch!(self, s => s.report_epochs(gateway), s.report_epochs(gateway))
    }

    /// Stores a newly issued challenge.
    pub async fn issue(&self, c: &ChallengeRecord) -> Result<(), ChainError> {
        dispatch!(self, s => s.issue(c), s.issue(c))
    }

    /// Hands out `gateway`'s pending challenges, marking them sent; each
    /// is handed out once, whichever replica is asked.
    pub async fn take_pending(&self, gateway: &str) -> Result<Vec<ChallengeRecord>, ChainError> {
        dispatch!(self, s => s.take_pending(gateway), s.take_pending(gateway))
    }

    /// Records the verdict on challenge `id` if it is still open; returns
    /// the status it ends in (an answer after the deadline finds it
    /// `expired`; a decided one keeps its verdict).
    pub async fn resolve(&self, id: &str, passed: bool, now_ms: u64) -> Result<String, ChainError> {
        dispatch!(self, s => s.resolve(id, passed, now_ms), s.resolve(id, passed, now_ms))
    }

    /// Expires `gateway`'s open challenges whose deadline passed; returns
    /// how many are still open.
    pub async fn expire_overdue(&self, gateway: &str, now_ms: u64) -> Result<usize, ChainError> {
        dispatch!(self, s => s.expire_overdue(gateway, now_ms), s.expire_overdue(gateway, now_ms))
    }

    /// Removes decided challenges whose deadline is older than
    /// `before_ms`, at most `limit`; returns how many.
    pub async fn prune_decided(&self, before_ms: u64, limit: usize) -> Result<usize, ChainError> {
        dispatch!(self, s => s.prune_decided(before_ms, limit), s.prune_decided(before_ms, limit))
    }

    /// One challenge.
    pub async fn challenge(&self, id: &str) -> Result<Option<ChallengeRecord>, ChainError> {
        dispatch!(self, s => s.challenge(id), s.challenge(id))
    }

    /// Every challenge of `gateway` in `status`.
    pub async fn challenges_in(
        &self,
        gateway: &str,
        status: &str,
    ) -> Result<Vec<ChallengeRecord>, ChainError> {
        dispatch!(self, s => s.challenges_in(gateway, status), s.challenges_in(gateway, status))
    }

    /// Claims `gateway`'s challenge round if its time has come: true for
    /// exactly one caller per round, which moves the round to `next_ms`.
    /// A gateway seen for the first time gets `first_ms` and is not due.
    /// The times are stored, so they survive a restart.
    pub async fn claim_round(
        &self,
        gateway: &str,
        now_ms: u64,
        first_ms: u64,
        next_ms: u64,
    ) -> Result<bool, ChainError> {
        dispatch!(self, s => s.claim_round(gateway, now_ms, first_ms, next_ms), s.claim_round(gateway, now_ms, first_ms, next_ms))
    }

    /// Adds `record` unless the gateway is registered already (then
    /// nothing changes: a revoked gateway stays revoked); true if added.
    pub async fn register(&self, record: &GatewayRecord) -> Result<bool, ChainError> {
        dispatch!(self, s => s.register(record), s.register(record))
    }

    /// The registry entry of `id`.
    pub async fn registered(&self, id: &str) -> Result<Option<GatewayRecord>, ChainError> {
        dispatch!(self, s => s.registered(id), s.registered(id))
    }

    /// The registry entry whose client certificate has `sha256` (hex).
    pub async fn registered_by_cert(
        &self,
        sha256: &str,
    ) -> Result<Option<GatewayRecord>, ChainError> {
        dispatch!(self, s => s.registered_by_cert(sha256), s.registered_by_cert(sha256))
    }

    /// Every registered gateway, by id.
    pub async fn registry(&self) -> Result<Vec<GatewayRecord>, ChainError> {
        dispatch!(self, s => s.registry(), s.registry())
    }

    /// Sets `id`'s status; false if it is not registered.
    pub async fn set_status(
        &self,
        id: &str,
        status: GatewayStatus,
        now_ms: u64,
    ) -> Result<bool, ChainError> {
        dispatch!(self, s => s.set_status(id, status, now_ms), s.set_status(id, status, now_ms))
    }
}
