//! Reading committed records while the gateway runs (epoch close, inclusion
//! proofs).

use redb::ReadableDatabase;

use super::encoding::block_entries;
use super::{BLOCKS, DecodeError, Hash, Ledger, LedgerError, UsageRecord};

impl Ledger {
    /// Calls `f` with every committed record from `from_seq` on, in sequence
    /// order: its chain hash and its contents. Stops when `f` returns false.
    /// Sees a consistent snapshot: records committed meanwhile are not seen.
    pub fn scan_from(
        &self,
        from_seq: u64,
        mut f: impl FnMut(Hash, UsageRecord) -> bool,
    ) -> Result<(), LedgerError> {
        // redb's snapshot and the logged blocks are taken together, so no
        // group falls between them (a checkpoint may put a group in both;
        // it is read once).
        let (txn, logged) = {
            let overlay = self.overlay();
            (self.db.begin_read()?, overlay.blocks())
        };
        // The next record to hand out.
        let mut next = from_seq;
        let mut visit = |first: u64, block: &[u8]| -> Result<bool, LedgerError> {
            for (seq, e) in (first..).zip(block_entries(block)) {
                if seq < next {
                    continue;
                }
                let (hash, enc) = e.map_err(|e| storage(seq, e))?;
                let record = UsageRecord::decode(enc).map_err(|e| storage(seq, e))?;
                next = seq + 1;
                if !f(hash, record) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        match txn.open_table(BLOCKS) {
            Ok(table) => {
                // The block holding `from_seq` starts at or before it.
                let start = match table.range(..=from_seq)?.next_back() {
                    Some(entry) => entry?.0.value(),
                    None => from_seq,
                };
                for entry in table.range(start..)? {
                    let (k, v) = entry?;
                    if !visit(k.value(), v.value())? {
                        return Ok(());
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        for (first, block) in logged {
            if !visit(first, &block)? {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn storage(seq: u64, e: DecodeError) -> LedgerError {
    LedgerError::Storage(format!("record {seq}: {e}"))
}
