//! The gateway side of challenges: long-polls the collector (edge boxes are
//! behind NAT, so the gateway asks), answers each challenge, signs the
//! answer, posts it back, and keeps the verdict for the next epoch report.
//!
//! A plugin that fails, traps or runs past its CPU deadline fails only that
//! challenge: the gateway posts a signed "could not answer" with the reason.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use super::{Answer, ChallengeSpec, InclusionProof};
use crate::epochs::{EpochStore, merkle};
use crate::identity::DeviceKey;
use crate::ledger::{GENESIS_HASH, Ledger};
use crate::upstream::sender::{CollectorClient, DeliveryError};

/// How long one long-poll waits at the collector for a challenge.
pub const POLL_WAIT_MS: u64 = 20_000;

/// Answers challenges for one gateway.
pub struct Responder {
    pub client: CollectorClient,
    pub store: Arc<EpochStore>,
    pub ledger: Arc<Ledger>,
    pub key: Arc<DeviceKey>,
    /// The current plugins (followed across reloads).
    pub plugins: Arc<crate::plugin_table::PluginTable>,
}

impl Responder {
    /// Polls and answers until `stop`; backs off (with jitter) while the
    /// collector is unreachable.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut delay = 200u64;
        loop {
            let wait = match self.poll().await {
                Ok(challenges) => {
                    delay = 200;
                    for c in challenges {
                        self.handle(c).await;
                    }
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

    /// Answers one challenge and records the collector's verdict.
    async fn handle(&self, c: ChallengeSpec) {
        let result = match c.family.as_str() {
            "inclusion" => {
                let (store, ledger, spec) = (self.store.clone(), self.ledger.clone(), c.clone());
                tokio::task::spawn_blocking(move || answer_inclusion(&store, &ledger, &spec))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            "possession" => self.answer_possession(&c).await,
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
            gateway_key: self.key.verifying_key().to_bytes(),
            challenge_id: c.id.clone(),
            answered,
            payload,
        }
        .sign(self.key.signing_key());
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
            let (store, id) = (self.store.clone(), c.id.clone());
            let stored = tokio::task::spawn_blocking(move || store.record_proof(&id, passed)).await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(challenge = %c.id, "cannot store a challenge result");
            }
        }
    }

    async fn answer_possession(&self, c: &ChallengeSpec) -> Result<Vec<u8>, String> {
        let plugin = self
            .plugins
            .get(&c.plugin)
            .ok_or_else(|| format!("no plugin `{}` here", c.plugin))?;
        let id: Arc<str> = format!("challenge-{}", c.id).into();
        let outcome = plugin.prove(&id, c.to_wit()).await;
        if !outcome.effects.is_empty()
            && let Err(e) = self
                .ledger
                .commit(plugin.name().clone(), outcome.effects)
                .await
        {
            tracing::error!(plugin = %c.plugin, error = %e, "cannot commit what `prove` wrote");
        }
        match outcome.result {
            Ok(Ok(proof)) if proof.challenge_id == c.id => Ok(proof.payload),
            Ok(Ok(_)) => Err("the plugin's proof names another challenge".into()),
            Ok(Err(message)) => Err(format!("`prove` refused: {message}")),
            Err(e) => Err(format!("`prove` failed: {e}")),
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
    let mut hashes = Vec::with_capacity(r.records as usize);
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
            if rec.seq == first + c.index {
                record = Some(rec.encode());
            }
            hashes.push(h);
            true
        })
        .map_err(|e| e.to_string())?;
    let record = record.ok_or("the record is missing from the ledger")?;
    let i = c.index as usize;
    let prev_hash = if i == 0 { before_first } else { hashes[i - 1] };
    Ok(InclusionProof {
        prev_hash,
        record,
        path: merkle::path(&hashes, i),
    }
    .encode())
}
