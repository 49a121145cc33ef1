//! The ledger's write-ahead log: a commit group becomes durable with one
//! contiguous write and one fdatasync, instead of a redb transaction per
//! group (which writes a dozen scattered pages and, on a growing file, file
//! system metadata too).
//!
//! The log is one file, `ledger.wal`, written with zeros when it is created
//! so that later writes overwrite allocated blocks. It has two regions of
//! equal size; generation `g` is written in region `g % 2`, entries one
//! after another from the region's start:
//!
//! ```text
//! "DWAL" | generation u64 | index u64 | payload length u32 | sha256 (32)
//! payload = chain head before (seq u64, hash 32) | chain head after (same)
//!         | records block (u32 length, then the block, as stored in redb)
//!         | key-value writes (u32 count, then per write: plugin (u16 length),
//!           key (u32 length), 1 = set + value (u32 length) or 0 = delete)
//! ```
//!
//! The checksum covers generation, index, length and payload. To move what
//! is logged into redb (a checkpoint), the writer freezes its generation
//! `g` and goes on logging generation `g + 1` in the other region while a
//! checkpoint thread stores the frozen groups with `g + 1` as redb's
//! generation to replay from. The writer starts `g + 2` (back in the first
//! region) only once that checkpoint is committed, so redb's generation `w`
//! always leaves at most `w` and `w + 1` to replay. Opening the ledger
//! replays the entries of `w`, then those of `w + 1`, each with
//! consecutive indexes from 0, stopping at the first that does not check
//! out (a torn write, zeros, or a stale entry of an older generation), and
//! then moves redb to `w + 2`, so nothing written before the replay can
//! ever be replayed again.
//!
//! Logs written before there were regions hold one generation from offset
//! 0; a generation that is not found in its region is looked for there.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Head, KvWrite, LedgerError};

/// File name of the log inside the data directory.
pub const WAL_FILE: &str = "ledger.wal";
/// Size of the log file.
pub(super) const WAL_BYTES: u64 = 8 << 20;
/// Size of each of its two regions.
pub(super) const REGION_BYTES: u64 = WAL_BYTES / 2;
const MAGIC: [u8; 4] = *b"DWAL";
/// magic, generation, index, payload length, checksum
const HEADER: usize = 4 + 8 + 8 + 4 + 32;

/// The log file, where the next entry goes, and its place in the sequence.
pub(super) struct Wal {
    file: File,
    pub generation: u64,
    index: u64,
    /// Offset of the next entry within the generation's region.
    pos: u64,
    /// The last append failed, so its entry may be on disk, whole, at
    /// `pos`, and must be erased before anything is logged after it or
    /// the log moves to another region (see [`Wal::append`]).
    unerased: bool,
    /// Test support: the next this many log I/O steps fail.
    #[cfg(test)]
    pub failures: u32,
}

/// Where the entries of `generation` start in the file.
fn region_start(generation: u64) -> u64 {
    (generation % 2) * REGION_BYTES
}

impl Wal {
    /// Opens (creating and zero-filling if needed) the log in `data_dir`;
    /// new entries start at the beginning of `generation`'s region.
    pub fn open(data_dir: &Path, generation: u64) -> Result<Self, LedgerError> {
        let path = data_dir.join(WAL_FILE);
        let failed = |e: std::io::Error| LedgerError::Open {
            path: path.clone(),
            message: e.to_string(),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        let len = file.metadata().map_err(failed)?.len();
        if len < WAL_BYTES {
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < WAL_BYTES {
                let n = (WAL_BYTES - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at).map_err(failed)?;
                at += n as u64;
            }
            file.sync_all().map_err(failed)?;
            // The file's name must be durable before anything relies on it.
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(failed)?;
        }
        Ok(Self {
            file,
            generation,
            index: 0,
            pos: 0,
            unerased: false,
            #[cfg(test)]
            failures: 0,
        })
    }

    /// Bytes logged in the current generation.
    pub fn used(&self) -> u64 {
        self.pos
    }

    /// Whether an entry of `len` bytes still fits in the current region.
    pub fn fits(&self, len: usize) -> bool {
        self.pos + len as u64 <= REGION_BYTES
    }

    /// Whether an entry of `len` bytes fits in an empty region.
    pub fn ever_fits(len: usize) -> bool {
        len as u64 <= REGION_BYTES
    }

    /// The header of the next entry; `entry` must start with `HEADER`
    /// placeholder bytes (see [`begin_entry`]) followed by the payload.
    fn seal(&self, entry: &mut [u8]) {
        seal(entry, self.generation, self.index);
    }

    /// Writes `entry` (built with [`begin_entry`]) after the last one and
    /// makes it durable. On error the position is unchanged and the entry,
    /// which may have reached the disk whole although its group failed, is
    /// erased, now or (when that fails too) before the next append or
    /// restart. Otherwise a crash could replay a group whose callers were
    /// told it failed, and one logged after it in the other region would
    /// then no longer continue the chain there and be lost. While the
    /// erasure keeps failing, so does every append and restart: nothing
    /// acknowledged is ever logged after a failed entry.
    pub fn append(&mut self, entry: &mut [u8]) -> std::io::Result<()> {
        debug_assert!(self.fits(entry.len()));
        self.erase_failed()?;
        self.seal(entry);
        let written = self
            .file
            .write_all_at(entry, region_start(self.generation) + self.pos)
            .and_then(|()| self.injected_failure())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.unerased = true;
            if let Err(again) = self.erase_failed() {
                tracing::error!(error = %again, "cannot erase a failed ledger log entry yet");
            }
            return Err(e);
        }
        self.pos += entry.len() as u64;
        self.index += 1;
        Ok(())
    }

    /// Overwrites the header of an entry whose append failed with zeros,
    /// durably, so that replay stops before it.
    fn erase_failed(&mut self) -> std::io::Result<()> {
        if !self.unerased {
            return Ok(());
        }
        self.injected_failure()?;
        self.file
            .write_all_at(&[0u8; HEADER], region_start(self.generation) + self.pos)?;
        self.file.sync_data()?;
        self.unerased = false;
        Ok(())
    }

    fn injected_failure(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.failures > 0 {
            self.failures -= 1;
            return Err(std::io::Error::other("injected failure"));
        }
        Ok(())
    }

    /// Starts logging `generation`, from the beginning of its region, once
    /// a failed entry in the current one is erased.
    pub fn restart(&mut self, generation: u64) -> std::io::Result<()> {
        self.erase_failed()?;
        self.generation = generation;
        self.index = 0;
        self.pos = 0;
        Ok(())
    }
}

/// Writes the header of entry `index` of `generation` over the `HEADER`
/// placeholder bytes at the start of `entry`.
fn seal(entry: &mut [u8], generation: u64, index: u64) {
    let len = (entry.len() - HEADER) as u32;
    let mut h = Sha256::new();
    h.update(generation.to_be_bytes());
    h.update(index.to_be_bytes());
    h.update(len.to_be_bytes());
    h.update(&entry[HEADER..]);
    let sum: [u8; 32] = h.finalize().into();
    entry[..4].copy_from_slice(&MAGIC);
    entry[4..12].copy_from_slice(&generation.to_be_bytes());
    entry[12..20].copy_from_slice(&index.to_be_bytes());
    entry[20..24].copy_from_slice(&len.to_be_bytes());
    entry[24..HEADER].copy_from_slice(&sum);
}

/// The fuzz target's entry (see [`crate::fuzzing::ledger_log`]): `data`
/// read as a log file as found on disk (any bytes, any generation), then
/// as the payloads of entries with valid headers, so that the checksum
/// passes and the payload parser and the records block are reached. An
/// entry read back must encode to an entry that reads back the same, and
/// every record in its block must decode or fail with an error. Returns
/// how many entries were read back from the valid headers.
pub(crate) fn fuzz_replay(data: &[u8]) -> usize {
    for generation in 0..3 {
        let _ = read_entries(data, generation);
    }
    // Payloads: u16 big-endian length, then that many bytes, repeated.
    let mut log = Vec::new();
    let mut rest = data;
    let mut index = 0;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let start = log.len();
        log.extend_from_slice(&[0; HEADER]);
        log.extend_from_slice(&tail[..len]);
        seal(&mut log[start..], 0, index);
        index += 1;
        rest = &tail[len..];
    }
    let entries = read_entries(&log, 0);
    let read = entries.len();
    for logged in entries {
        for (_, encoding) in super::encoding::block_entries(&logged.block).flatten() {
            let _ = depin_protocol::record::UsageRecord::decode(encoding);
        }
        let mut again = Vec::new();
        begin_entry(&mut again, &logged.before, &logged.after, &logged.block);
        let writes: Vec<(&str, &str, KvWrite)> = logged
            .kv
            .iter()
            .flat_map(|(plugin, keys)| {
                keys.iter().map(|(key, value)| {
                    let write = match value {
                        Some(v) => KvWrite::Set(v.clone()),
                        None => KvWrite::Delete,
                    };
                    (plugin.as_str(), key.as_str(), write)
                })
            })
            .collect();
        put_kv(
            &mut again,
            writes.len(),
            writes.iter().map(|(p, k, w)| (*p, *k, w)),
        );
        seal(&mut again, 0, 0);
        assert_eq!(
            read_entries(&again, 0),
            vec![logged],
            "an entry read back encodes to one that reads back the same"
        );
    }
    read
}

/// Starts an entry in `out`: header placeholder, then the chain heads.
pub(super) fn begin_entry(out: &mut Vec<u8>, before: &Head, after: &Head, block: &[u8]) {
    out.clear();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&before.encode());
    out.extend_from_slice(&after.encode());
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(block);
}

/// Appends the key-value writes of an entry.
pub(super) fn put_kv<'a>(
    out: &mut Vec<u8>,
    count: usize,
    writes: impl Iterator<Item = (&'a str, &'a str, &'a KvWrite)>,
) {
    out.extend_from_slice(&(count as u32).to_be_bytes());
    for (plugin, key, write) in writes {
        out.extend_from_slice(&(plugin.len() as u16).to_be_bytes());
        out.extend_from_slice(plugin.as_bytes());
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        match write {
            KvWrite::Set(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            KvWrite::Delete => out.push(0),
        }
    }
}

/// One logged commit group, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Logged {
    pub before: Head,
    pub after: Head,
    pub block: Vec<u8>,
    /// plugin -> key -> value (None = deleted), last write wins.
    pub kv: BTreeMap<String, BTreeMap<String, Option<Vec<u8>>>>,
}

/// The entries of `generation` in the log `bytes`, in order, up to the
/// first that does not check out.
pub(super) fn read_entries(bytes: &[u8], generation: u64) -> Vec<Logged> {
    let start = region_start(generation) as usize;
    let found = read_entries_at(bytes.get(start..).unwrap_or_default(), generation);
    if found.is_empty() && start != 0 {
        // A log written before there were regions.
        return read_entries_at(bytes, generation);
    }
    found
}

fn read_entries_at(bytes: &[u8], generation: u64) -> Vec<Logged> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    for index in 0u64.. {
        let Some(header) = bytes.get(pos..pos + HEADER) else {
            break;
        };
        let len = u32::from_be_bytes(header[20..24].try_into().expect("4 bytes")) as usize;
        let Some(payload) = bytes.get(pos + HEADER..pos + HEADER + len) else {
            break;
        };
        if header[..4] != MAGIC
            || header[4..12] != generation.to_be_bytes()
            || header[12..20] != index.to_be_bytes()
        {
            break;
        }
        let mut h = Sha256::new();
        h.update(&header[4..24]);
        h.update(payload);
        let sum: [u8; 32] = h.finalize().into();
        if header[24..HEADER] != sum {
            break;
        }
        match parse_payload(payload) {
            Some(entry) => out.push(entry),
            None => break,
        }
        pos += HEADER + len;
    }
    out
}

fn parse_payload(p: &[u8]) -> Option<Logged> {
    let mut r = p;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = r.split_at_checked(n)?;
        r = b;
        Some(a)
    };
    let before = Head::decode(take(40)?)?;
    let after = Head::decode(take(40)?)?;
    let block_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let block = take(block_len)?.to_vec();
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut kv: BTreeMap<String, BTreeMap<String, Option<Vec<u8>>>> = BTreeMap::new();
    for _ in 0..count {
        let n = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let plugin = std::str::from_utf8(take(n)?).ok()?.to_string();
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(take(n)?).ok()?.to_string();
        let value = match take(1)?[0] {
            1 => {
                let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
                Some(take(n)?.to_vec())
            }
            0 => None,
            _ => return None,
        };
        kv.entry(plugin).or_default().insert(key, value);
    }
    if !r.is_empty() {
        return None;
    }
    Some(Logged {
        before,
        after,
        block,
        kv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64, b: u8) -> Head {
        Head { seq, hash: [b; 32] }
    }

    fn entry(before: Head, after: Head, block: &[u8], kv: &[(&str, &str, KvWrite)]) -> Vec<u8> {
        let mut e = Vec::new();
        begin_entry(&mut e, &before, &after, block);
        put_kv(&mut e, kv.len(), kv.iter().map(|(p, k, w)| (*p, *k, w)));
        e
    }

    #[test]
    fn entries_read_back_until_the_first_that_does_not_check_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 7).unwrap();
        let set = KvWrite::Set(b"v".to_vec());
        let mut a = entry(head(0, 0), head(2, 1), b"two records", &[("p", "k", set)]);
        let mut b = entry(head(2, 1), head(2, 1), b"", &[("p", "k", KvWrite::Delete)]);
        wal.append(&mut a).unwrap();
        wal.append(&mut b).unwrap();
        let bytes = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
        assert_eq!(bytes.len() as u64, WAL_BYTES, "zero-filled to its size");
        let got = read_entries(&bytes, 7);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].block, b"two records");
        assert_eq!(got[0].kv["p"]["k"], Some(b"v".to_vec()));
        assert_eq!(
            (got[1].before, got[1].kv["p"]["k"].clone()),
            (head(2, 1), None)
        );
        // Another generation's entries are stale.
        assert!(read_entries(&bytes, 8).is_empty());
        // A torn second entry: only the first survives.
        let mut torn = bytes.clone();
        let second = region_start(7) as usize + a.len() + HEADER + 3;
        torn[second] ^= 1;
        assert_eq!(read_entries(&torn, 7).len(), 1);
        // The next generation goes to the other region; the one after it
        // back to this one, where the old entries behind its own are not
        // read (its index 1 is missing).
        wal.restart(8).unwrap();
        let mut c = entry(head(2, 1), head(3, 2), b"one", &[]);
        wal.append(&mut c).unwrap();
        wal.restart(9).unwrap();
        let mut d = entry(head(3, 2), head(4, 3), b"two", &[]);
        wal.append(&mut d).unwrap();
        let bytes = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
        let got = read_entries(&bytes, 8);
        assert_eq!((got.len(), got[0].block.as_slice()), (1, b"one".as_slice()));
        let got = read_entries(&bytes, 9);
        assert_eq!((got.len(), got[0].block.as_slice()), (1, b"two".as_slice()));
        assert!(read_entries(&bytes, 7).is_empty(), "overwritten");
    }

    #[test]
    fn a_failed_entry_is_erased_at_once_or_before_the_log_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WAL_FILE);
        let mut wal = Wal::open(dir.path(), 2).unwrap();
        let mut a = entry(head(0, 0), head(1, 1), b"kept", &[]);
        wal.append(&mut a).unwrap();
        // The entry reaches the file, its sync fails: erased at once.
        wal.failures = 1;
        let mut b = entry(head(1, 1), head(2, 2), b"failed", &[]);
        assert!(wal.append(&mut b).is_err());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(read_entries(&bytes, 2).len(), 1);
        // Now the erasure fails too: the entry stays on disk until the log
        // restarts in the other region, which erases it first.
        wal.failures = 2;
        assert!(wal.append(&mut b).is_err());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(read_entries(&bytes, 2).len(), 2, "still there");
        wal.failures = 1;
        assert!(wal.restart(3).is_err(), "not erased: no restart");
        assert_eq!(wal.generation, 2);
        wal.restart(3).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let replayable = read_entries(&bytes, 2);
        assert_eq!(replayable.len(), 1);
        assert_eq!(replayable[0].block, b"kept");
    }

    #[test]
    fn generations_alternate_between_the_regions() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 4).unwrap();
        let mut a = entry(head(0, 0), head(1, 1), b"even", &[]);
        wal.append(&mut a).unwrap();
        wal.restart(5).unwrap();
        let mut b = entry(head(1, 1), head(2, 2), b"odd", &[]);
        wal.append(&mut b).unwrap();
        let bytes = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
        assert_eq!(&bytes[HEADER + 80 + 4..][..4], b"even");
        let second = REGION_BYTES as usize;
        assert_eq!(&bytes[second + HEADER + 80 + 4..][..3], b"odd");
        assert_eq!(read_entries(&bytes, 4)[0].block, b"even");
        assert_eq!(read_entries(&bytes, 5)[0].block, b"odd");
    }

    #[test]
    fn a_log_from_before_the_regions_is_read_from_its_start() {
        // An odd generation written at offset 0, as the single-region log
        // did, in a file of the old size.
        let dir = tempfile::tempdir().unwrap();
        let mut e = entry(head(0, 0), head(1, 1), b"old", &[]);
        let wal = Wal {
            file: File::create(dir.path().join("unused")).unwrap(),
            generation: 3,
            index: 0,
            pos: 0,
            unerased: false,
            failures: 0,
        };
        wal.seal(&mut e);
        let mut bytes = vec![0u8; (REGION_BYTES) as usize];
        bytes[..e.len()].copy_from_slice(&e);
        let got = read_entries(&bytes, 3);
        assert_eq!((got.len(), got[0].block.as_slice()), (1, b"old".as_slice()));
    }

    #[test]
    fn an_existing_log_is_not_zeroed_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1).unwrap();
        let mut a = entry(head(0, 0), head(1, 1), b"r", &[]);
        wal.append(&mut a).unwrap();
        drop(wal);
        let _again = Wal::open(dir.path(), 1).unwrap();
        let bytes = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
        assert_eq!(read_entries(&bytes, 1).len(), 1);
    }
}
