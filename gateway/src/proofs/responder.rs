//! The gateway side of challenges: long-polls the collector (edge boxes are
//! behind NAT, so the gateway asks), answers each challenge, signs the
//! answer, posts it back, and keeps the verdict for the next epoch report.
//!
//! A plugin that fails, traps or runs past its CPU deadline fails only that
//! challenge: the gateway posts a signed "could not answer" with the reason.
//!
//! Possession challenges may take two phases: a `prove` that answers with
//! an error starting with [`PENDING_PREFIX`] has started something whose
//! result arrives later (a beacon's acknowledgement); the [`Prover`] asks
//! again every [`PENDING_RETRY`] until the plugin answers or
//! [`PENDING_DEADLINE`] passes. The challenges of one poll are answered
//! concurrently, so a pending one does not hold up the others.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use depin_protocol::proofs::{Answer, ChallengeSpec, InclusionProof};
use depin_protocol::{GENESIS_HASH, merkle};

use super::ToWit;
use crate::call::{self, HostMeasurements};
use crate::epochs::EpochStore;
use crate::identity::DeviceSigner;
use crate::ingress::udp::IngressPorts;
use crate::ledger::Ledger;
use crate::plugin_table::PluginTable;
use crate::runtime::RecentPeers;
use crate::service::Service;
use crate::upstream::sender::{CollectorClient, DeliveryError};

/// How long one long-poll waits at the collector for a challenge.
pub const POLL_WAIT_MS: u64 = 20_000;
/// A `prove` error starting with this means "call me again with the same
/// challenge" (see the WIT documentation of `prove`).
pub const PENDING_PREFIX: &str = "pending";
/// How long a pending challenge is asked again before it is answered as
/// not answered.
pub const PENDING_DEADLINE: Duration = Duration::from_secs(10);
/// The delay between two `prove` calls of a pending challenge.
pub const PENDING_RETRY: Duration = Duration::from_millis(200);

/// Answers challenges for one gateway.
pub struct Responder {
    pub client: CollectorClient,
    pub store: Arc<EpochStore>,
    pub ledger: Arc<Ledger>,
    pub key: Arc<dyn DeviceSigner>,
    /// Answers possession challenges with the current plugins.
    pub prover: Prover,
}

/// What one `prove` call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The proof's payload.
    Proved(Vec<u8>),
    /// The plugin said `pending…`: ask again (its message).
    Pending(String),
    /// No proof: why.
    Failed(String),
}

/// Runs plugins' `prove` for possession challenges. Each call's usage
/// records and kv writes are committed (with a host `bytes-out` record for
/// what it sends) before the datagrams it queued with `outbound-udp.reply`
/// leave the plugin's UDP ingress socket; if the commit fails nothing is
/// sent and the attempt fails.
#[derive(Clone)]
pub struct Prover {
    /// The current plugins (followed across reloads).
    pub plugins: Arc<PluginTable>,
    pub ledger: Arc<Ledger>,
    /// The plugins' UDP ingress sockets, for `reply`.
    pub udp: IngressPorts,
    /// How long a pending challenge is asked again ([`PENDING_DEADLINE`]).
    pub pending_deadline: Duration,
}

impl Prover {
    /// A prover with the default pending deadline.
    pub fn new(plugins: Arc<PluginTable>, ledger: Arc<Ledger>, udp: IngressPorts) -> Self {
        Self {
            plugins,
            ledger,
            udp,
            pending_deadline: PENDING_DEADLINE,
        }
    }

    /// Answers `c`: calls `prove` until it answers something other than
    /// pending, or the pending deadline passes.
    pub async fn answer(&self, c: &ChallengeSpec) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + self.pending_deadline;
        loop {
            match self.prove_once(c).await {
                Attempt::Proved(payload) => return Ok(payload),
                Attempt::Failed(reason) => return Err(reason),
                Attempt::Pending(message) => {
                    if Instant::now() + PENDING_RETRY > deadline {
                        return Err(format!(
                            "still pending after {} ms: {message}",
                            self.pending_deadline.as_millis()
                        ));
                    }
                    tokio::time::sleep(PENDING_RETRY).await;
                }
            }
        }
    }

    /// One `prove` call for `c`: call, commit, send.
    pub async fn prove_once(&self, c: &ChallengeSpec) -> Attempt {
        let Some(plugin) = self.plugins.get(&c.plugin) else {
            return Attempt::Failed(format!("no plugin `{}` here", c.plugin));
        };
        let id: Arc<str> = format!("challenge-{}", c.id).into();
        let port = self.udp.get(&c.plugin);
        let ingress = port.clone().map(|p| p as Arc<dyn RecentPeers>);
        // Run again from the start on a conflict (see `call::serialized`);
        // only the last run's datagrams are sent, after its commit.
        let (id_ref, port_ref, ingress) = (&id, &port, &ingress);
        let plugin = &*plugin;
        let committed = call::serialized(plugin, || async move {
            let id = id_ref;
            let outcome = plugin
                .prove_with_replies(id, c.to_wit(), ingress.clone())
                .await;
            let (result, replies) = match outcome.result {
                Ok((proof, replies)) => (Ok(proof), replies),
                Err(e) => (Err(e), Vec::new()),
            };
            let sends = match port_ref {
                Some(port) => port.clear(id, replies),
                None => Vec::new(),
            };
            // Only what a proof sends is metered: proving is not service to
            // a client, so its wall time and fuel are not recorded.
            let bytes_out: u64 = sends.iter().map(|(_, p)| p.len() as u64).sum();
            let measured = HostMeasurements {
                bytes_out: (bytes_out > 0).then_some(bytes_out),
                ..HostMeasurements::default()
            };
            let committed =
                call::commit(&self.ledger, plugin.name(), id, measured, outcome.effects).await;
            call::Committed {
                value: (result, sends),
                result: committed,
            }
        })
        .await;
        let (result, sends) = committed.value;
        if let Err(e) = committed.result {
            tracing::error!(plugin = %c.plugin, error = %e, "cannot commit what `prove` wrote");
            return Attempt::Failed(format!("cannot commit what `prove` wrote: {e}"));
        }
        if let Some(port) = &port {
            port.send(&id, sends).await;
        }
        match result {
            Ok(Ok(proof)) if proof.challenge_id == c.id => Attempt::Proved(proof.payload),
            Ok(Ok(_)) => Attempt::Failed("the plugin's proof names another challenge".into()),
            Ok(Err(message)) if message.starts_with(PENDING_PREFIX) => Attempt::Pending(message),
            Ok(Err(message)) => Attempt::Failed(format!("`prove` refused: {message}")),
            Err(e) => Attempt::Failed(format!("`prove` failed: {e}")),
        }
    }
}

impl Service for Responder {
    fn name(&self) -> &'static str {
        "challenge-responder"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(Arc::new(self).run(shutdown))
    }
}

impl Responder {
    /// Polls and answers until `stop`; backs off (with jitter) while the
    /// collector is unreachable.
    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut delay = 200u64;
        loop {
            let wait = match self.poll().await {
                Ok(challenges) => {
                    delay = 200;
                    let mut answering = tokio::task::JoinSet::new();
                    for c in challenges {
                        let this = self.clone();
                        answering.spawn(async move { this.handle(c).await });
                    }
                    while answering.join_next().await.is_some() {}
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "challenge poll failed");
                    let d = delay / 2 + rand::thread_rng().gen_range(0..=delay / 2);
                    delay = (delay * 2).min(10_000);
                    Some(Duration::from_millis(d))
                }
            };
            if let Some(d) = wait {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stop.changed() => return,
                }
            } else if *stop.borrow() {
                return;
            }
        }
    }

    async fn poll(&self) -> Result<Vec<ChallengeSpec>, DeliveryError> {
        let path = format!("/v1/challenges?wait_ms={POLL_WAIT_MS}");
        let (status, body) = self
            .client
            .with_extra_timeout(Duration::from_millis(POLL_WAIT_MS))
            .request("GET", &path, Vec::new())
            .await?;
        if status != 200 {
            return Err(DeliveryError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| DeliveryError::BadAck(e.to_string()))
    }

    /// Answers one challenge and records the collector's verdict. The
    /// challenge is noted first: without a verdict it counts as failed in
    /// the epoch its deadline falls in, as it does at the collector.
    async fn handle(&self, c: ChallengeSpec) {
        let (store, id, deadline) = (self.store.clone(), c.id.clone(), c.deadline_ms);
        let noted = tokio::task::spawn_blocking(move || store.note_challenge(&id, deadline)).await;
        if !matches!(noted, Ok(Ok(()))) {
            tracing::error!(challenge = %c.id, "cannot note a challenge");
        }
        let result = match c.family.as_str() {
            "inclusion" => {
                let (store, ledger, spec) = (self.store.clone(), self.ledger.clone(), c.clone());
                tokio::task::spawn_blocking(move || answer_inclusion(&store, &ledger, &spec))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            "possession" => self.prover.answer(&c).await,
            other => Err(format!("unknown challenge family `{other}`")),
        };
        let (answered, payload) = match result {
            Ok(p) => (true, p),
            Err(reason) => {
                tracing::warn!(challenge = %c.id, family = %c.family, plugin = %c.plugin, %reason, "cannot answer a challenge");
                (false, reason.into_bytes())
            }
        };
        let answer = Answer {
            gateway_key: self.key.public_key().to_bytes(),
            challenge_id: c.id.clone(),
            answered,
            payload,
        };
        // A token signature is a blocking round trip.
        let key = self.key.clone();
        let answer = match tokio::task::spawn_blocking(move || key.sign_answer(&answer)).await {
            Ok(Ok(signed)) => signed,
            Ok(Err(e)) => {
                tracing::error!(challenge = %c.id, error = %e, "cannot sign an answer");
                return;
            }
            Err(e) => {
                tracing::error!(challenge = %c.id, error = %e, "answer signing panicked");
                return;
            }
        };
        let verdict = match self
            .client
            .request("POST", "/v1/challenges/answer", answer)
            .await
        {
            Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["passed"].as_bool()),
            Ok((status, body)) => {
                tracing::warn!(challenge = %c.id, status, body = %String::from_utf8_lossy(&body), "answer refused");
                None
            }
            Err(e) => {
                tracing::warn!(challenge = %c.id, error = %e, "cannot post an answer");
                None
            }
        };
        if let Some(passed) = verdict {
            tracing::info!(challenge = %c.id, family = %c.family, passed, "challenge answered");
            let (store, id, deadline) = (self.store.clone(), c.id.clone(), c.deadline_ms);
            let stored =
                tokio::task::spawn_blocking(move || store.record_proof(&id, passed, deadline))
                    .await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(challenge = %c.id, "cannot store a challenge result");
            }
        }
    }
}

/// Record `index` of a closed epoch with its Merkle path.
pub fn answer_inclusion(
    store: &EpochStore,
    ledger: &Ledger,
    c: &ChallengeSpec,
) -> Result<Vec<u8>, String> {
    let epoch = store
        .get(c.epoch)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("epoch {} is not closed here", c.epoch))?;
    let r = &epoch.report.report;
    if c.index >= r.records {
        return Err(format!(
            "epoch {} has {} records, no index {}",
            c.epoch, r.records, c.index
        ));
    }
    let first = r.first_seq;
    let end = first + r.records;
    let mut before_first = GENESIS_HASH;
    // The path is collected while the epoch's records are read again, in
    // O(log² n) hashes rather than all of them.
    let mut path = merkle::StreamingPath::new(c.index, r.records);
    let mut prev_hash = GENESIS_HASH;
    let mut record = None;
    ledger
        .scan_from(first.saturating_sub(1).max(1), |h, rec| {
            if rec.seq < first {
                before_first = h;
                return true;
            }
            if rec.seq >= end {
                return false;
            }
            if rec.seq + 1 == first + c.index {
                prev_hash = h;
            }
            if rec.seq == first + c.index {
                record = Some(rec.encode());
            }
            path.push(merkle::leaf(&h));
            true
        })
        .map_err(|e| e.to_string())?;
    let record = record.ok_or("the record is missing from the ledger")?;
    let prev_hash = if c.index == 0 {
        before_first
    } else {
        prev_hash
    };
    let path = path
        .finish()
        .ok_or("the ledger holds fewer records than the epoch")?;
    Ok(InclusionProof {
        prev_hash,
        record,
        path,
    }
    .encode())
}
