//! Records as the ledger stores them: encoded by the caller, then
//! numbered, timestamped and chained by the writer, one block per commit
//! group (see `BLOCKS`).

use super::record::{self, DecodeError, Hash, NewRecord, Source, UsageRecord};
use super::writer::CommitRequest;
use super::{CommitReceipt, Head, LedgerError};

/// A call's usage records, encoded on the caller's thread as they will be
/// stored (see `BLOCKS`), with the sequence number, the hash and, for
/// records timestamped at commit, the time still zero: the writer only
/// fills those in. Building them without `NewRecord`s spares the hot paths
/// an allocation per field, and the writer thread freeing them.
#[derive(Debug, Default, Clone)]
pub struct EncodedRecords {
    bytes: Vec<u8>,
    count: usize,
}

impl EncodedRecords {
    /// Room for about `records` records.
    pub fn with_capacity(records: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(records * 160),
            count: 0,
        }
    }

    /// `records`, in order.
    pub fn of(plugin: &str, records: &[NewRecord]) -> Result<Self, LedgerError> {
        let mut out = Self::with_capacity(records.len());
        for r in records {
            out.push(plugin, r)?;
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `r`, recorded by `plugin`.
    pub fn push(&mut self, plugin: &str, r: &NewRecord) -> Result<(), LedgerError> {
        self.push_parts(
            plugin,
            r.time_ms,
            &r.unit,
            r.quantity,
            r.source,
            r.subject.as_deref(),
            r.evidence.as_deref(),
        )
    }

    /// Appends a host-attested record, timestamped at commit (what
    /// [`NewRecord::host`] makes, without building one).
    pub fn push_host(
        &mut self,
        plugin: &str,
        unit: &str,
        quantity: u64,
        subject: &str,
    ) -> Result<(), LedgerError> {
        self.push_parts(plugin, 0, unit, quantity, Source::Host, Some(subject), None)
    }

    /// The records as they stand (sequence number 0; time 0 when it is
    /// set at commit), for tests.
    #[cfg(test)]
    pub fn decode(&self) -> Vec<UsageRecord> {
        block_entries(&self.bytes)
            .map(|e| UsageRecord::decode(e.expect("entry").1).expect("record"))
            .collect()
    }

    /// Appends the records of `other`.
    pub fn extend(&mut self, other: &EncodedRecords) {
        self.bytes.extend_from_slice(&other.bytes);
        self.count += other.count;
    }

    #[allow(clippy::too_many_arguments)]
    fn push_parts(
        &mut self,
        plugin: &str,
        time_ms: u64,
        unit: &str,
        quantity: u64,
        source: Source,
        subject: Option<&str>,
        evidence: Option<&[u8]>,
    ) -> Result<(), LedgerError> {
        let entry = self.bytes.len();
        self.bytes.extend_from_slice(&[0; ENTRY_HEAD]);
        record::encode_into(
            &mut self.bytes,
            0,
            time_ms,
            plugin,
            unit,
            quantity,
            source,
            subject,
            evidence,
        );
        let Ok(len) = u16::try_from(self.bytes.len() - entry - ENTRY_HEAD) else {
            self.bytes.truncate(entry);
            return Err(LedgerError::Storage(
                "a record is larger than 64 KiB".into(),
            ));
        };
        self.bytes[entry..entry + 2].copy_from_slice(&len.to_be_bytes());
        self.count += 1;
        Ok(())
    }
}

/// A stored record entry: u16 length of the encoding, then its hash.
const ENTRY_HEAD: usize = 2 + 32;
/// Where the sequence number and the time are in an encoding.
const SEQ_AT: std::ops::Range<usize> = 1..9;
const TIME_AT: std::ops::Range<usize> = 9..17;

/// Numbers and chains the records of a group into `block` (entries as
/// stored in redb). Returns the chain head after them and each call's
/// receipt.
pub(super) fn encode_group(
    head: Head,
    group: &[CommitRequest],
    block: &mut Vec<u8>,
) -> (Head, Vec<CommitReceipt>) {
    let mut cursor = head;
    let mut receipts = Vec::with_capacity(group.len());
    block.clear();
    // Keep at most 4 MiB between groups.
    if block.capacity() > 4 << 20 {
        block.shrink_to(4 << 20);
    }
    let now = depin_protocol::time::now_ms().to_be_bytes();
    for c in group {
        let first = cursor.seq + 1;
        // The caller encoded the entries; fill in sequence numbers, times
        // still unset, and the chain.
        let mut entry = block.len();
        block.extend_from_slice(&c.records.bytes);
        while entry < block.len() {
            let len = usize::from(u16::from_be_bytes([block[entry], block[entry + 1]]));
            let encoding = entry + ENTRY_HEAD..entry + ENTRY_HEAD + len;
            let seq = cursor.seq + 1;
            let e = &mut block[encoding.clone()];
            e[SEQ_AT].copy_from_slice(&seq.to_be_bytes());
            if e[TIME_AT] == [0; 8] {
                e[TIME_AT].copy_from_slice(&now);
            }
            let hash = UsageRecord::chain_hash(&cursor.hash, &block[encoding.clone()]);
            block[entry + 2..entry + ENTRY_HEAD].copy_from_slice(&hash);
            cursor = Head { seq, hash };
            entry = encoding.end;
        }
        let seqs = (cursor.seq >= first).then_some((first, cursor.seq));
        receipts.push(CommitReceipt {
            seqs,
            group_size: group.len(),
        });
    }
    (cursor, receipts)
}

/// Splits a block into (hash, encoding) entries.
pub(super) fn block_entries(
    block: &[u8],
) -> impl Iterator<Item = Result<(Hash, &[u8]), DecodeError>> {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 34 {
            rest = &[];
            return Some(Err(DecodeError("truncated block entry")));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < 34 + len {
            rest = &[];
            return Some(Err(DecodeError("truncated block entry")));
        }
        let hash: Hash = rest[2..34].try_into().expect("32 bytes");
        let encoding = &rest[34..34 + len];
        rest = &rest[34 + len..];
        Some(Ok((hash, encoding)))
    })
}
