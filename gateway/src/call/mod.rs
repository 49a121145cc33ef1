//! The one call path. Every way a plugin is invoked — an HTTP request, a
//! datagram, an MQTT message, a tick, a proof, `init` at load — runs the
//! same phases:
//!
//! 1. **run** ([`run`]): a fresh instance in a fresh `Store` with the
//!    plugin's limits; the export's result and the call's buffered effects
//!    (usage records, kv writes) come back as a [`CallOutcome`];
//! 2. **measure** ([`HostMeasurements`]): the host's own measurements of
//!    the call (bytes in and out, wall time, fuel), the same type for every
//!    ingress, so no ingress can meter differently;
//! 3. **commit** ([`commit`]): the measurements become host-attested
//!    records, in one place, and are made durable together with the call's
//!    effects, before anything the call caused leaves the gateway. The
//!    ledger checks what the call read against what committed since (calls
//!    of one plugin are serializable); a call that conflicts had no effect,
//!    and [`serialized`] runs it again from the start, before anything is
//!    answered.

mod ids;
mod measure;
mod run;

use std::future::Future;
use std::sync::Arc;

pub use ids::RequestIds;
pub use measure::HostMeasurements;
pub use run::{CallError, CallOutcome};

use crate::ledger::{
    CallEffects, CommitReceipt, EncodedRecords, KvEffects, Ledger, LedgerError, NewRecord,
};
use crate::metrics::ConflictOutcome;
use crate::runtime::LoadedPlugin;

/// Most times a call is run again after conflicts; then it fails with
/// [`LedgerError::Contended`] (HTTP 503). Counted in
/// `depin_call_conflict_failures_total`.
pub const MAX_RETRIES: u32 = 8;

/// Runs of a call made alongside the plugin's other calls. Later runs take
/// the plugin's calls in turn: each waits until the calls in flight have
/// committed and runs while no other call of the plugin starts, so it
/// cannot conflict again.
const RUNS_ALONGSIDE: u32 = 3;

/// What one run of a call came to: the answer it built and whether its
/// effects were committed.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub result: Result<CommitReceipt, LedgerError>,
}

/// Runs `run` (one run of a call: call the plugin, build the answer,
/// [`commit`]) until it does not conflict, at most [`MAX_RETRIES`] times
/// more. Only the last run's answer may be sent: the runs before had no
/// effect. A run that conflicted after an effect that cannot be repeated
/// is not run again ([`LedgerError::Unrepeatable`]).
pub async fn serialized<T, F, Run>(plugin: &LoadedPlugin, mut run: F) -> Committed<T>
where
    F: FnMut() -> Run,
    Run: Future<Output = Committed<T>>,
{
    let mut runs = 0;
    loop {
        runs += 1;
        let committed = if runs <= RUNS_ALONGSIDE {
            let _turn = plugin.turns.read().await;
            run().await
        } else {
            let _turn = plugin.turns.write().await;
            run().await
        };
        let outcome = match &committed.result {
            Err(LedgerError::Conflict) if runs <= MAX_RETRIES => ConflictOutcome::Retried,
            Err(LedgerError::Conflict | LedgerError::Unrepeatable(_)) => ConflictOutcome::Failed,
            _ => return committed,
        };
        crate::metrics::global().record_conflict(plugin.name(), outcome);
        if outcome == ConflictOutcome::Failed {
            let result = match committed.result {
                Err(LedgerError::Conflict) => Err(LedgerError::Contended(runs)),
                other => other,
            };
            tracing::warn!(plugin = %plugin.name(), runs, "call failed after conflicts");
            return Committed {
                value: committed.value,
                result,
            };
        }
    }
}

/// The records of a finished call as they will be stored: the host's
/// measurements first, then `claims` (what the call recorded, in order).
pub fn records(
    plugin: &str,
    request_id: &str,
    measured: &HostMeasurements,
    claims: &[NewRecord],
) -> Result<EncodedRecords, LedgerError> {
    let mut records = EncodedRecords::with_capacity(measured.count() + claims.len());
    measured.encode_into(&mut records, plugin, request_id)?;
    for claim in claims {
        records.push(plugin, claim)?;
    }
    Ok(records)
}

/// Commits a finished call of `plugin`: its host-attested records, the
/// records it made and its kv writes, as one atomic, durable group. Returns
/// once they are on disk; only then may the call's answer be sent.
pub async fn commit(
    ledger: &Ledger,
    plugin: &Arc<str>,
    request_id: &str,
    measured: HostMeasurements,
    effects: CallEffects,
) -> Result<CommitReceipt, LedgerError> {
    let encoded = records(plugin, request_id, &measured, &effects.records)?;
    drop(effects.records);
    commit_encoded(ledger, plugin, encoded, effects.kv, effects.unrepeatable).await
}

/// [`commit`] for records already encoded ([`records`]). A conflict of a
/// call that made an effect that cannot be repeated (`unrepeatable`) is
/// [`LedgerError::Unrepeatable`], not [`LedgerError::Conflict`].
pub async fn commit_encoded(
    ledger: &Ledger,
    plugin: &Arc<str>,
    encoded: EncodedRecords,
    kv: KvEffects,
    unrepeatable: Option<String>,
) -> Result<CommitReceipt, LedgerError> {
    match ledger.commit_encoded(plugin.clone(), encoded, kv).await {
        Err(LedgerError::Conflict) => Err(match unrepeatable {
            Some(effect) => LedgerError::Unrepeatable(effect),
            None => LedgerError::Conflict,
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflicted() -> KvEffects {
        KvEffects {
            conflicted: true,
            ..KvEffects::default()
        }
    }

    #[tokio::test]
    async fn a_conflict_after_a_request_that_cannot_be_repeated_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let plugin: Arc<str> = "p".into();
        let r = commit_encoded(
            &ledger,
            &plugin,
            EncodedRecords::default(),
            conflicted(),
            None,
        )
        .await;
        assert!(matches!(r, Err(LedgerError::Conflict)), "{r:?}");
        let effect = "a POST request to http://127.0.0.1:9/jobs".to_string();
        let r = commit_encoded(
            &ledger,
            &plugin,
            EncodedRecords::default(),
            conflicted(),
            Some(effect),
        )
        .await;
        let e = r.unwrap_err();
        assert!(matches!(e, LedgerError::Unrepeatable(_)));
        assert!(
            e.to_string()
                .contains("after it made a POST request to http://127.0.0.1:9/jobs"),
            "{e}"
        );
    }
}
