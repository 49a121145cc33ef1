//! Opening redb, and replaying what the log holds beyond the last
//! checkpoint (after a crash, or a kill before the last checkpoint).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase};

use super::checkpoint::store;
use super::encoding::block_entries;
use super::overlay::Layer;
use super::{Head, LedgerError, META, WAL_FILE, wal};

/// Bytes of redb's page cache for the ledger. redb's default (1 GiB) let
/// one scan of a large epoch (epoch close, an inclusion proof) grow the
/// process by the size of every page it read, up to a Kubernetes memory
/// limit on its own; reads past the cache go to the file (and the OS page
/// cache, which the kernel can reclaim).
pub const LEDGER_CACHE_BYTES: usize = 128 << 20;

pub(super) fn open_db(path: &Path, create: bool) -> Result<Database, LedgerError> {
    if create && let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| LedgerError::Open {
            path: path.to_path_buf(),
            message: format!("cannot create the data directory: {e}"),
        })?;
    }
    let mut builder = redb::Builder::new();
    builder.set_cache_size(LEDGER_CACHE_BYTES);
    let result = if create {
        builder.create(path)
    } else {
        builder.open(path)
    };
    result.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => LedgerError::InUse {
            path: path.to_path_buf(),
        },
        other => LedgerError::Open {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// A storage failure while opening, with the ledger's path.
pub(super) fn naming(path: &Path, e: LedgerError) -> LedgerError {
    match e {
        LedgerError::Storage(message) => LedgerError::Open {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    }
}

/// Moves what the log holds beyond the last checkpoint into redb and
/// starts a new log generation. Returns the chain head and the generation
/// new log entries belong to.
pub(super) fn recover(db: &Database, data_dir: &Path) -> Result<(Head, u64), LedgerError> {
    let head = read_head(db)?;
    let generation = read_generation(db)?;
    let path = data_dir.join(WAL_FILE);
    let mut layer = Layer::default();
    let mut cursor = head;
    let mut groups = 0usize;
    match std::fs::read(&path) {
        Ok(bytes) => {
            // The generation redb has not got, and the one logged while its
            // checkpoint ran (see wal.rs).
            let entries = wal::read_entries(&bytes, generation)
                .into_iter()
                .chain(wal::read_entries(&bytes, generation + 1));
            for logged in entries {
                let records = block_entries(&logged.block).count() as u64;
                if logged.before != cursor || logged.after.seq != cursor.seq + records {
                    tracing::warn!(
                        log = %path.display(),
                        at_record = cursor.seq,
                        "a ledger log entry does not continue the chain; replay stops there"
                    );
                    break;
                }
                layer.add_block(cursor.seq + 1, &logged.block, logged.after);
                for (plugin, writes) in logged.kv {
                    let plugin: Arc<str> = plugin.into();
                    for (key, value) in writes {
                        layer.add_kv(&plugin, key, value);
                    }
                }
                cursor = logged.after;
                groups += 1;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(LedgerError::Open {
                path,
                message: format!("cannot read the ledger log: {e}"),
            });
        }
    }
    // Past both generations that were replayable.
    let generation = generation + 2;
    store(db, &layer, generation)?;
    if groups > 0 {
        tracing::info!(
            groups,
            records = cursor.seq - head.seq,
            "ledger: replayed commit groups from the log"
        );
    }
    Ok((cursor, generation))
}

fn read_generation(db: &Database) -> Result<u64, LedgerError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    match meta.get("wal")? {
        None => Ok(0),
        Some(v) => {
            v.value().try_into().map(u64::from_be_bytes).map_err(|_| {
                LedgerError::Storage("the ledger log generation entry is corrupt".into())
            })
        }
    }
}

pub(super) fn read_head(db: &Database) -> Result<Head, LedgerError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Head::GENESIS),
        Err(e) => return Err(e.into()),
    };
    match meta.get("head")? {
        None => Ok(Head::GENESIS),
        Some(v) => Head::decode(v.value())
            .ok_or_else(|| LedgerError::Storage("the chain head entry is corrupt".into())),
    }
}
