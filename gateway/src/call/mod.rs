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
//!    effects, before anything the call caused leaves the gateway.

mod ids;
mod measure;
mod run;

use std::sync::Arc;

pub use ids::RequestIds;
pub use measure::HostMeasurements;
pub use run::{CallError, CallOutcome};

use crate::ledger::{CallEffects, CommitReceipt, EncodedRecords, Ledger, LedgerError, NewRecord};

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
    ledger
        .commit_encoded(plugin.clone(), encoded, effects.kv)
        .await
}
