//! Whether the ledger can commit, for readiness and for the decision to
//! restart.
//!
//! Two conditions, kept apart because they call for different answers:
//! - a commit group failed (the log could not be written or synced): the
//!   log erases the failed entry and the next group may succeed, so this
//!   clears on the next successful commit;
//! - storing a checkpoint in redb failed (ENOSPC, EIO): redb refuses every
//!   later transaction of that handle (`PreviousIo`) until the database is
//!   reopened, so this never clears. From then on every commit is refused
//!   at once; whoever owns the process restarts it (see `cli/run.rs`),
//!   and opening the ledger again replays the log, which still holds every
//!   acknowledged group that was not yet in redb.

use tokio::sync::watch;

/// The ledger's commit health as last observed by its writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerHealth {
    /// The last commit group failed, and why; `None` once one succeeds.
    pub commit_failing: Option<String>,
    /// redb failed to store logged groups, and why. Permanent for this
    /// open ledger.
    pub storage_failed: Option<String>,
}

impl LedgerHealth {
    /// Whether commits are expected to succeed.
    pub fn is_ok(&self) -> bool {
        self.commit_failing.is_none() && self.storage_failed.is_none()
    }
}

/// Shared between the ledger's handle and its writer thread.
#[derive(Debug)]
pub(super) struct HealthCell(watch::Sender<LedgerHealth>);

impl HealthCell {
    pub(super) fn new() -> Self {
        Self(watch::Sender::new(LedgerHealth::default()))
    }

    pub(super) fn get(&self) -> LedgerHealth {
        self.0.borrow().clone()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<LedgerHealth> {
        self.0.subscribe()
    }

    pub(super) fn storage_failed(&self) -> Option<String> {
        self.0.borrow().storage_failed.clone()
    }

    pub(super) fn commit_succeeded(&self) {
        self.0
            .send_if_modified(|h| h.commit_failing.take().is_some());
    }

    pub(super) fn commit_failed(&self, why: &str) {
        self.0.send_if_modified(|h| {
            let changed = h.commit_failing.as_deref() != Some(why);
            h.commit_failing = Some(why.to_string());
            changed
        });
    }

    /// Records the first storage failure; later ones add nothing.
    pub(super) fn fail_storage(&self, why: &str) {
        self.0.send_if_modified(|h| {
            if h.storage_failed.is_some() {
                return false;
            }
            tracing::error!(
                error = why,
                "ledger storage failed; no more commits until the gateway restarts"
            );
            h.storage_failed = Some(why.to_string());
            true
        });
    }
}
