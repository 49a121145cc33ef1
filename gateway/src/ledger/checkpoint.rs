//! Checkpoints: moving commit groups from the log into redb, in one
//! durable transaction each, on the checkpoint thread (or on the writer's
//! when it must wait for one).

use std::io;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use redb::Database;

use super::overlay::{Layer, Overlay};
use super::{BLOCKS, KV, LedgerError, META};

/// Consecutive record blocks are stored as one redb value up to this size.
const MERGED_BLOCK_BYTES: usize = 256 << 10;

/// Frozen groups for the checkpoint thread to store, with the log
/// generation redb replays from once they are stored.
pub(super) struct CheckpointJob {
    pub(super) layer: Arc<Layer>,
    pub(super) generation: u64,
}

/// Stores `layer` in one durable redb transaction, with `generation` as the
/// log generation still to replay.
pub(super) fn store(db: &Database, layer: &Layer, generation: u64) -> Result<(), LedgerError> {
    let txn = db.begin_write()?;
    {
        let mut blocks = txn.open_table(BLOCKS)?;
        let mut merged = Vec::new();
        let mut first = 0;
        for (seq, block) in &layer.blocks {
            if !merged.is_empty() && merged.len() + block.len() > MERGED_BLOCK_BYTES {
                blocks.insert(first, merged.as_slice())?;
                merged.clear();
            }
            if merged.is_empty() {
                first = *seq;
            }
            merged.extend_from_slice(block);
        }
        if !merged.is_empty() {
            blocks.insert(first, merged.as_slice())?;
        }
        let mut kv = txn.open_table(KV)?;
        for (plugin, writes) in &layer.kv {
            for (key, value) in writes {
                match value {
                    Some(v) => {
                        kv.insert((&**plugin, key.as_str()), v.as_slice())?;
                    }
                    None => {
                        kv.remove((&**plugin, key.as_str()))?;
                    }
                }
            }
        }
        let mut meta = txn.open_table(META)?;
        if let Some(head) = layer.head {
            meta.insert("head", head.encode().as_slice())?;
        }
        meta.insert("wal", generation.to_be_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// The checkpoint thread: stores each job's layer, reporting each result
/// to the writer, until the writer stops sending.
pub(super) struct Checkpointer {
    db: Arc<Database>,
    overlay: Arc<Mutex<Overlay>>,
    /// One result per job.
    done: mpsc::Sender<Result<(), LedgerError>>,
}

impl Checkpointer {
    pub(super) fn new(
        db: Arc<Database>,
        overlay: Arc<Mutex<Overlay>>,
        done: mpsc::Sender<Result<(), LedgerError>>,
    ) -> Self {
        Self { db, overlay, done }
    }

    /// Starts the thread. It takes jobs from `jobs` and ends once their
    /// sender is dropped (the writer's way of stopping it) after finishing
    /// the job in hand, or once the writer no longer takes results.
    pub(super) fn spawn(self, jobs: mpsc::Receiver<CheckpointJob>) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || self.run(&jobs))
    }

    fn run(self, jobs: &mpsc::Receiver<CheckpointJob>) {
        while let Ok(job) = jobs.recv() {
            let result = store_checkpoint(&self.db, &self.overlay, &job.layer, job.generation);
            if self.done.send(result).is_err() {
                break;
            }
        }
    }
}

/// Stores a frozen generation in one durable redb transaction with
/// `generation` as the one to replay from, then stops showing it from the
/// overlay (redb has it now).
pub(super) fn store_checkpoint(
    db: &Database,
    overlay: &Mutex<Overlay>,
    layer: &Arc<Layer>,
    generation: u64,
) -> Result<(), LedgerError> {
    let started = Instant::now();
    store(db, layer, generation)?;
    let mut overlay = overlay.lock().expect("ledger overlay lock");
    if overlay
        .applying
        .as_ref()
        .is_some_and(|a| Arc::ptr_eq(a, layer))
    {
        overlay.applying = None;
    }
    tracing::trace!(
        blocks = layer.blocks.len(),
        micros = started.elapsed().as_micros() as u64,
        "ledger checkpoint"
    );
    Ok(())
}
