//! Reading committed records while the gateway runs (epoch close, inclusion
//! proofs).

use redb::ReadableDatabase;

use super::{BLOCKS, DecodeError, Hash, Ledger, LedgerError, UsageRecord, block_entries};

impl Ledger {
    /// Calls `f` with every committed record from `from_seq` on, in sequence
    /// order: its chain hash and its contents. Stops when `f` returns false.
    /// Sees a consistent snapshot: records committed meanwhile are not seen.
    pub fn scan_from(
        &self,
        from_seq: u64,
        mut f: impl FnMut(Hash, UsageRecord) -> bool,
    ) -> Result<(), LedgerError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(BLOCKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // The block holding `from_seq` starts at or before it.
        let start = match table.range(..=from_seq)?.next_back() {
            Some(entry) => entry?.0.value(),
            None => from_seq,
        };
        for entry in table.range(start..)? {
            let (k, v) = entry?;
            for (seq, e) in (k.value()..).zip(block_entries(v.value())) {
                if seq < from_seq {
                    continue;
                }
                let (hash, enc) = e.map_err(|e| storage(seq, e))?;
                let record = UsageRecord::decode(enc).map_err(|e| storage(seq, e))?;
                if !f(hash, record) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn storage(seq: u64, e: DecodeError) -> LedgerError {
    LedgerError::Storage(format!("record {seq}: {e}"))
}
