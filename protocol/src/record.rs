//! Usage records and their canonical encoding.
//!
//! The encoding is the thing that is hashed, so it is fixed byte for byte
//! (see the golden test below); a change to it is a new `FORMAT_VERSION`.
//!
//! Version 1, all integers big-endian:
//!
//! ```text
//! u8   format version (1)
//! u64  sequence number (1 for the first record)
//! u64  time, Unix milliseconds
//! str  plugin                      str = u16 length, then UTF-8 bytes
//! str  unit
//! u64  quantity
//! u8   source: 0 = host, 1 = plugin
//! opt  subject (str)               opt = u8 0 (absent) or 1, then the value
//! opt  evidence (bytes)            bytes = u16 length, then the bytes
//! ```
//!
//! A record's hash is `sha256(previous hash || encoding)`; the first
//! record's previous hash is 32 zero bytes.

pub use crate::hash::{GENESIS_HASH, Hash};

/// Version of the canonical encoding.
pub const FORMAT_VERSION: u8 = 1;

/// Longest subject accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Longest evidence hash accepted, in bytes.
pub const MAX_EVIDENCE_BYTES: usize = 64;

/// Who measured a usage record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Measured by the gateway itself; a plugin cannot forge it.
    Host,
    /// Claimed by the plugin through the `metering` import.
    Plugin,
}

impl Source {
    fn code(self) -> u8 {
        match self {
            Source::Host => 0,
            Source::Plugin => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Source::Host),
            1 => Some(Source::Plugin),
            _ => None,
        }
    }

    /// `host` or `plugin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Host => "host",
            Source::Plugin => "plugin",
        }
    }
}

/// A record before it has a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub time_ms: u64,
    pub unit: String,
    pub quantity: u64,
    pub source: Source,
    pub subject: Option<String>,
    pub evidence: Option<Vec<u8>>,
}

impl NewRecord {
    /// A host-attested record, timestamped at commit.
    pub fn host(unit: &str, quantity: u64, subject: &str) -> Self {
        NewRecord {
            time_ms: 0,
            unit: unit.to_string(),
            quantity,
            source: Source::Host,
            subject: Some(subject.to_string()),
            evidence: None,
        }
    }
}

/// A committed usage record: durable, numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub plugin: String,
    pub unit: String,
    pub quantity: u64,
    pub source: Source,
    pub subject: Option<String>,
    #[serde(serialize_with = "hex_opt")]
    pub evidence: Option<Vec<u8>>,
}

fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_some(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

/// Why bytes are not a valid encoded record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed record encoding: {0}")]
pub struct DecodeError(pub &'static str);

impl UsageRecord {
    /// The canonical encoding (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.plugin.len() + self.unit.len());
        encode_into(
            &mut out,
            self.seq,
            self.time_ms,
            &self.plugin,
            &self.unit,
            self.quantity,
            self.source,
            self.subject.as_deref(),
            self.evidence.as_deref(),
        );
        out
    }

    /// Parses a canonical encoding; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != FORMAT_VERSION {
            return Err(DecodeError("unknown format version"));
        }
        let record = UsageRecord {
            seq: r.u64()?,
            time_ms: r.u64()?,
            plugin: r.str()?,
            unit: r.str()?,
            quantity: r.u64()?,
            source: Source::from_code(r.u8()?).ok_or(DecodeError("unknown source"))?,
            subject: if r.flag()? { Some(r.str()?) } else { None },
            evidence: if r.flag()? {
                Some(r.bytes()?.to_vec())
            } else {
                None
            },
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(record)
    }

    /// `sha256(prev || encoding)`.
    pub fn chain_hash(prev: &Hash, encoding: &[u8]) -> Hash {
        crate::hash::sha256_concat(prev, encoding)
    }
}

/// Appends the canonical encoding of a record to `out`, without building a
/// `UsageRecord` first (the ledger writer's hot path).
#[allow(clippy::too_many_arguments)]
pub fn encode_into(
    out: &mut Vec<u8>,
    seq: u64,
    time_ms: u64,
    plugin: &str,
    unit: &str,
    quantity: u64,
    source: Source,
    subject: Option<&str>,
    evidence: Option<&[u8]>,
) {
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    put_str(out, plugin);
    put_str(out, unit);
    out.extend_from_slice(&quantity.to_be_bytes());
    out.push(source.code());
    match subject {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
    match evidence {
        Some(e) => {
            out.push(1);
            put_bytes(out, e);
        }
        None => out.push(0),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths are bounded by validation (subject 256, evidence 64, names 64);
    // saturate rather than wrap so an unvalidated caller cannot alias records.
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(len)]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad option flag")),
        }
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        self.take(usize::from(len))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn sample() -> UsageRecord {
        UsageRecord {
            seq: 1,
            time_ms: 1_700_000_000_000,
            plugin: "tpl".into(),
            unit: "hits".into(),
            quantity: 3,
            source: Source::Plugin,
            subject: Some("d1".into()),
            evidence: Some(vec![0xAB, 0xCD]),
        }
    }

    #[test]
    fn encoding_matches_golden_bytes() {
        let expected = "01\
            0000000000000001\
            0000018bcfe56800\
            0003 74706c\
            0004 68697473\
            0000000000000003\
            01\
            01 0002 6431\
            01 0002 abcd"
            .replace(' ', "");
        assert_eq!(hex::encode(sample().encode()), expected);
    }

    #[test]
    fn chain_hash_matches_golden_value() {
        let h = UsageRecord::chain_hash(&GENESIS_HASH, &sample().encode());
        // sha256(32 zero bytes || golden encoding above)
        let mut input = vec![0u8; 32];
        input.extend(sample().encode());
        let direct: Hash = Sha256::digest(&input).into();
        assert_eq!(h, direct);
        assert_ne!(h, UsageRecord::chain_hash(&[1; 32], &sample().encode()));
    }

    #[test]
    fn decode_inverts_encode() {
        let mut r = sample();
        assert_eq!(UsageRecord::decode(&r.encode()).unwrap(), r);
        r.subject = None;
        r.evidence = None;
        r.source = Source::Host;
        assert_eq!(UsageRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn decode_rejects_truncated_and_trailing_bytes() {
        let enc = sample().encode();
        assert!(UsageRecord::decode(&enc[..enc.len() - 1]).is_err());
        let mut longer = enc.clone();
        longer.push(0);
        assert!(UsageRecord::decode(&longer).is_err());
    }
}
