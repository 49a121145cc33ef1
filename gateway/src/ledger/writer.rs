//! The writer thread: takes every queued commit into one group, numbers
//! and chains its records, logs it with one write and one fdatasync, and
//! starts checkpoints when they are due.

use std::io;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::Database;

use super::checkpoint::{CheckpointJob, store, store_checkpoint};
use super::encoding::{EncodedRecords, encode_group};
use super::health::HealthCell;
use super::overlay::{Layer, Overlay};
use super::serial::{KvEffects, Verdict};
use super::{CommitReceipt, Head, KvWrite, LedgerError, wal};

/// Longest a commit whose `kv.add` increment was reserved after one not
/// yet committed waits for it; then it conflicts (and its call is run
/// again). Bounds the wait on a call that never commits.
const MAX_ADD_WAIT: Duration = Duration::from_millis(50);
/// How often the writer looks again at commits kept waiting.
const WAIT_POLL: Duration = Duration::from_millis(1);

/// Longest value that can hold a counter (`i64::MIN` in decimal, with
/// room for surrounding spaces).
const MAX_COUNTER_BYTES: usize = 24;

/// Most commits taken into one group.
const MAX_GROUP: usize = 1024;
/// A checkpoint moves logged groups into redb this long after the first
/// of them was logged...
pub(super) const CHECKPOINT_AFTER: Duration = Duration::from_millis(100);
/// ...or once this much is logged, whichever comes first.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// One call's effects, queued for the writer.
pub(super) struct CommitRequest {
    pub(super) records: EncodedRecords,
    pub(super) kv: KvEffects,
    pub(super) plugin: Arc<str>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<CommitReceipt, LedgerError>>,
}

/// What the writer thread is told, in order: a `Stop` comes after every
/// commit queued before it.
pub(super) enum WriterMsg {
    Commit(CommitRequest),
    Stop,
    /// Test support: stop without a last checkpoint, as a crash would.
    #[cfg(test)]
    Abandon,
    /// Test support: changes how the writer behaves from now on.
    #[cfg(test)]
    Hook(TestHook),
}

#[cfg(test)]
pub(super) enum TestHook {
    /// Freeze generations for checkpoints but never store them, as if
    /// every checkpoint were cut short by a crash.
    HoldCheckpoints,
    /// The next this many I/O steps of the log fail.
    FailLogWrites(u32),
}

fn log_failed(e: std::io::Error) -> LedgerError {
    LedgerError::Storage(format!("cannot write the ledger log: {e}"))
}

/// The writer thread's state.
pub(super) struct Writer {
    db: Arc<Database>,
    /// The chain head including everything logged.
    head: Head,
    wal: wal::Wal,
    overlay: Arc<Mutex<Overlay>>,
    /// The encoded records of a group and the log entry, reused from group
    /// to group: fresh buffers per group cost page faults under load.
    block: Vec<u8>,
    entry: Vec<u8>,
    /// Since when a checkpoint is wanted: when the first group of the
    /// current generation was logged, or when a checkpoint failed.
    pending_since: Option<Instant>,
    /// To the checkpoint thread; `None` once it is told to stop.
    jobs: Option<mpsc::Sender<CheckpointJob>>,
    /// Its results, one per job.
    done: mpsc::Receiver<Result<(), LedgerError>>,
    checkpointer: Option<JoinHandle<()>>,
    /// A job is with the checkpoint thread.
    checkpointing: bool,
    /// Commits kept back for an earlier increment, with when they arrived.
    waiting: Vec<(Instant, CommitRequest)>,
    /// What readiness and the process supervisor see.
    health: Arc<HealthCell>,
    #[cfg(test)]
    hold_checkpoints: bool,
}

/// How often a writer that is due for a checkpoint looks again while the
/// previous one is still running.
const CHECKPOINT_POLL: Duration = Duration::from_millis(5);

impl Writer {
    /// The frozen generation being stored by a checkpoint, if any.
    fn applying_layer(&self) -> Option<Arc<Layer>> {
        self.overlay
            .lock()
            .expect("ledger overlay lock")
            .applying
            .clone()
    }

    pub(super) fn new(
        db: Arc<Database>,
        head: Head,
        wal: wal::Wal,
        overlay: Arc<Mutex<Overlay>>,
        jobs: mpsc::Sender<CheckpointJob>,
        done: mpsc::Receiver<Result<(), LedgerError>>,
        checkpointer: JoinHandle<()>,
    ) -> Self {
        Self {
            db,
            head,
            wal,
            overlay,
            block: Vec::new(),
            entry: Vec::new(),
            pending_since: None,
            jobs: Some(jobs),
            done,
            checkpointer: Some(checkpointer),
            checkpointing: false,
            waiting: Vec::new(),
            health: Arc::new(HealthCell::new()),
            #[cfg(test)]
            hold_checkpoints: false,
        }
    }

    /// Reports commit health to `health` (shared with the ledger's handle).
    pub(super) fn with_health(mut self, health: Arc<HealthCell>) -> Self {
        self.health = health;
        self
    }

    /// Starts the thread. It commits what `inbox` brings until it receives
    /// `Stop` or every sender is dropped; then it makes a last checkpoint,
    /// stops the checkpoint thread and fails commits queued after `Stop`.
    pub(super) fn spawn(self, inbox: mpsc::Receiver<WriterMsg>) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || self.run(&inbox))
    }

    /// Takes every queued commit into one group, until stopped; then
    /// checkpoints what is logged.
    fn run(mut self, rx: &mpsc::Receiver<WriterMsg>) {
        let mut stop = false;
        // Only a test's abandon skips the last checkpoint.
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut last_checkpoint = true;
        while !stop {
            let due = match (self.checkpoint_due_in(), self.waiting.is_empty()) {
                (due, true) => due,
                (due, false) => Some(due.map_or(WAIT_POLL, |d| d.min(WAIT_POLL))),
            };
            let msg = match due {
                Some(due) => match rx.recv_timeout(due) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if !self.waiting.is_empty() {
                            self.commit(Vec::new());
                        }
                        self.maybe_checkpoint();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            let first = match msg {
                WriterMsg::Commit(c) => c,
                WriterMsg::Stop => break,
                #[cfg(test)]
                WriterMsg::Abandon => {
                    last_checkpoint = false;
                    break;
                }
                #[cfg(test)]
                WriterMsg::Hook(hook) => {
                    self.hook(hook);
                    continue;
                }
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(WriterMsg::Commit(c)) => group.push(c),
                    Ok(WriterMsg::Stop) => {
                        stop = true;
                        break;
                    }
                    #[cfg(test)]
                    Ok(WriterMsg::Abandon) => {
                        stop = true;
                        last_checkpoint = false;
                        break;
                    }
                    #[cfg(test)]
                    Ok(WriterMsg::Hook(hook)) => self.hook(hook),
                    Err(_) => break,
                }
            }
            self.commit(group);
            // Also checked here: a steady stream of commits never lets the
            // receive above time out.
            self.maybe_checkpoint();
        }
        if last_checkpoint && let Err(e) = self.checkpoint_now() {
            tracing::error!(error = %e, "last ledger checkpoint failed; the log keeps the groups");
        }
        // The checkpoint thread finishes its job, if any, and ends.
        self.jobs = None;
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
        // Drain anything that raced with Stop.
        for (_, c) in self.waiting.drain(..) {
            let _ = c.reply.send(Err(LedgerError::Closed));
        }
        while let Ok(WriterMsg::Commit(c)) = rx.try_recv() {
            let _ = c.reply.send(Err(LedgerError::Closed));
        }
    }

    #[cfg(test)]
    fn hook(&mut self, hook: TestHook) {
        match hook {
            TestHook::HoldCheckpoints => self.hold_checkpoints = true,
            TestHook::FailLogWrites(n) => self.wal.failures = n,
        }
    }

    /// Checks the calls of `group` (after those kept waiting from earlier
    /// groups) against everything logged before them (see `serial.rs`):
    /// refuses those that conflict, keeps back those whose increment waits
    /// for an earlier one (at most [`MAX_ADD_WAIT`]), and returns the rest
    /// in the order they are to be logged.
    fn check(&mut self, group: Vec<CommitRequest>) -> Vec<CommitRequest> {
        let now = Instant::now();
        let mut arrived: Vec<(Instant, CommitRequest)> = std::mem::take(&mut self.waiting);
        arrived.extend(group.into_iter().map(|c| (now, c)));
        if arrived
            .iter()
            .all(|(_, c)| c.kv.reads.is_empty() && c.kv.adds.is_empty() && !c.kv.conflicted)
        {
            return arrived.into_iter().map(|(_, c)| c).collect();
        }
        let (verdicts, order) = {
            let overlay = self.overlay.lock().expect("ledger overlay lock");
            let mut calls: Vec<(&Arc<str>, &mut KvEffects)> = arrived
                .iter_mut()
                .map(|(_, c)| (&c.plugin, &mut c.kv))
                .collect();
            overlay.serial.check_group(&mut calls)
        };
        let mut slots: Vec<Option<(Instant, CommitRequest)>> =
            arrived.into_iter().map(Some).collect();
        let passed = order
            .iter()
            .map(|&i| slots[i].take().expect("each call passes once").1)
            .collect();
        for (slot, verdict) in slots.into_iter().zip(verdicts) {
            let Some((since, c)) = slot else { continue };
            match verdict {
                Verdict::Wait if since.elapsed() < MAX_ADD_WAIT => self.waiting.push((since, c)),
                _ => {
                    let _ = c.reply.send(Err(LedgerError::Conflict));
                }
            }
        }
        passed
    }

    fn commit(&mut self, group: Vec<CommitRequest>) {
        let mut group = self.check(group);
        if group.is_empty() {
            return;
        }
        let started = Instant::now();
        let n = group.len();
        let logged = match self.health.storage_failed() {
            // redb refuses every transaction after an I/O error: nothing
            // logged now could be checkpointed before a restart.
            Some(why) => Err(LedgerError::Storage(format!(
                "the ledger storage failed earlier ({why}); the gateway must restart"
            ))),
            None => self.log_group(&mut group),
        };
        match logged {
            Ok(receipts) => {
                self.health.commit_succeeded();
                crate::metrics::global().record_ledger_commit(n, started.elapsed());
                tracing::trace!(
                    group_size = n,
                    head = self.head.seq,
                    micros = started.elapsed().as_micros() as u64,
                    "ledger commit"
                );
                for (c, receipt) in group.into_iter().zip(receipts) {
                    let _ = c.reply.send(Ok(receipt));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, group_size = n, "ledger commit failed");
                self.health.commit_failed(&e.to_string());
                for c in group {
                    let _ = c.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Makes a group durable in the log (or, when it is larger than a log
    /// region, straight in redb) and visible to readers.
    fn log_group(
        &mut self,
        group: &mut [CommitRequest],
    ) -> Result<Vec<CommitReceipt>, LedgerError> {
        let before = self.head;
        let (after, receipts) = encode_group(before, group, &mut self.block);
        wal::begin_entry(&mut self.entry, &before, &after, &self.block);
        let writes = group.iter().map(|c| c.kv.writes.len()).sum();
        wal::put_kv(
            &mut self.entry,
            writes,
            group
                .iter()
                .flat_map(|c| c.kv.writes.iter().map(|(k, w)| (&*c.plugin, k.as_str(), w))),
        );
        let mut layer = Layer::default();
        layer.add_block(before.seq + 1, &self.block, after);
        for c in group.iter_mut() {
            for (key, write) in c.kv.writes.iter_mut() {
                let value = match write {
                    // What publishing needs of a value is whether it is a
                    // counter: small values are copied, large ones moved.
                    KvWrite::Set(v) if v.len() <= MAX_COUNTER_BYTES => Some(v.clone()),
                    KvWrite::Set(v) => Some(std::mem::take(v)),
                    KvWrite::Delete => None,
                };
                layer.add_kv(&c.plugin, key.clone(), value);
            }
        }
        if wal::Wal::ever_fits(self.entry.len()) {
            if !self.wal.fits(self.entry.len()) {
                // The other region is free once the previous checkpoint
                // is stored; this one is stored while logging goes on.
                self.settle()?;
                self.rotate()?;
            }
            // On failure the log erases the entry (see `Wal::append`).
            self.wal.append(&mut self.entry).map_err(log_failed)?;
            let mut overlay = self.overlay.lock().expect("ledger overlay lock");
            overlay.current.absorb(layer);
            publish(&mut overlay, group);
            self.pending_since.get_or_insert(Instant::now());
        } else {
            // Larger than a whole region (huge key-value writes): stored
            // straight in redb, after everything logged before it.
            self.checkpoint_now()?;
            let generation = self.wal.generation + 1;
            store(&self.db, &layer, generation).inspect_err(|e| self.storage_failed(e))?;
            self.wal.restart(generation).map_err(log_failed)?;
            publish(
                &mut self.overlay.lock().expect("ledger overlay lock"),
                group,
            );
        }
        self.head = after;
        Ok(receipts)
    }

    /// How long until a checkpoint is due; `None` when none is wanted.
    fn checkpoint_due_in(&mut self) -> Option<Duration> {
        self.collect_done();
        if self.health.storage_failed().is_some() {
            // Retrying cannot succeed on this handle.
            return None;
        }
        let since = self.pending_since?;
        let due = (since + CHECKPOINT_AFTER).saturating_duration_since(Instant::now());
        Some(if self.checkpointing {
            due.max(CHECKPOINT_POLL)
        } else {
            due
        })
    }

    /// Takes the results of finished checkpoint jobs, without waiting.
    fn collect_done(&mut self) {
        while let Ok(result) = self.done.try_recv() {
            self.checkpoint_finished(result);
        }
    }

    fn checkpoint_finished(&mut self, result: Result<(), LedgerError>) {
        self.checkpointing = false;
        if let Err(e) = result {
            tracing::error!(error = %e, "ledger checkpoint failed; the log keeps the groups");
            self.storage_failed(&e);
            // Retried later, not in a tight loop.
            self.pending_since = Some(Instant::now());
        }
    }

    /// Starts a checkpoint when one is due and none is running: of the
    /// current generation, or again of a frozen one whose checkpoint
    /// failed.
    fn maybe_checkpoint(&mut self) {
        self.collect_done();
        let due = self
            .pending_since
            .is_some_and(|since| since.elapsed() >= CHECKPOINT_AFTER)
            || self.wal.used() >= CHECKPOINT_BYTES;
        if !due || self.checkpointing || self.health.storage_failed().is_some() {
            return;
        }
        let failed = self.applying_layer();
        // A frozen generation is stored with the current one as redb's
        // generation to replay from: the writer rotates again only once
        // it is stored.
        match failed {
            Some(layer) => {
                self.pending_since = Some(Instant::now());
                self.send_job(layer, self.wal.generation);
            }
            None if self.wal.used() > 0 => {
                if let Err(e) = self.rotate() {
                    tracing::error!(error = %e, "ledger checkpoint not started");
                    self.pending_since = Some(Instant::now());
                }
            }
            None => self.pending_since = None,
        }
    }

    /// Freezes the current generation for a checkpoint and starts logging
    /// the next one in the other region. Only when no frozen generation is
    /// left to store (after [`Self::settle`], or when `applying` is empty
    /// and no job runs): the other region still holds the previous one
    /// until it is stored.
    fn rotate(&mut self) -> Result<(), LedgerError> {
        let generation = self.wal.generation + 1;
        self.wal.restart(generation).map_err(log_failed)?;
        let frozen = {
            let mut overlay = self.overlay.lock().expect("ledger overlay lock");
            debug_assert!(overlay.applying.is_none() && !self.checkpointing);
            let frozen = Arc::new(std::mem::take(&mut overlay.current));
            overlay.applying = Some(frozen.clone());
            frozen
        };
        self.pending_since = None;
        self.send_job(frozen, generation);
        Ok(())
    }

    fn send_job(&mut self, layer: Arc<Layer>, generation: u64) {
        self.checkpointing = true;
        #[cfg(test)]
        if self.hold_checkpoints {
            return;
        }
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(CheckpointJob { layer, generation }).is_ok());
        if !sent {
            // No checkpoint thread: `settle` stores the layer itself.
            self.checkpointing = false;
        }
    }

    /// Waits for a running checkpoint, then stores a frozen generation
    /// that is still not in redb (its checkpoint failed) on this thread.
    /// Afterwards both log regions but the current one are free.
    fn settle(&mut self) -> Result<(), LedgerError> {
        if self.checkpointing {
            #[cfg(test)]
            if self.hold_checkpoints {
                return Err(LedgerError::Storage("checkpoints are held".into()));
            }
            let result = self
                .done
                .recv()
                .unwrap_or_else(|_| Err(LedgerError::Storage("checkpoint thread ended".into())));
            self.checkpoint_finished(result);
        }
        let failed = self.applying_layer();
        if let Some(layer) = failed {
            store_checkpoint(&self.db, &self.overlay, &layer, self.wal.generation)
                .inspect_err(|e| self.storage_failed(e))?;
        }
        Ok(())
    }

    /// A redb transaction failed: the handle is unusable until reopened.
    fn storage_failed(&self, e: &LedgerError) {
        self.health.fail_storage(&e.to_string());
    }

    /// Moves everything logged into redb before returning.
    fn checkpoint_now(&mut self) -> Result<(), LedgerError> {
        self.settle()?;
        self.rotate()?;
        self.settle()
    }
}

/// Makes the kv changes of a logged group visible with their versions,
/// under the same lock as its values, and forgets versions no running call
/// needs any more.
fn publish(overlay: &mut Overlay, group: &mut [CommitRequest]) {
    for c in group.iter_mut() {
        overlay.serial.publish(&c.plugin, &mut c.kv);
    }
    overlay.serial.prune();
}
