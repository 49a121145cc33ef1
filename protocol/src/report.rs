//! The epoch report: what a gateway tells the collector about one epoch,
//! in a canonical encoding both ends share, signed with the device key.
//!
//! Version 3, integers big-endian, `str` = u16 length + UTF-8:
//!
//! ```text
//! 4    magic "DPGR"
//! u8   version (3)
//! 32   gateway public key (ed25519)
//! u64  epoch number (start_ms / length_ms)
//! u64  epoch length, ms
//! 32   hash of the previous report (zeros for the first)
//! u64  first record sequence number in the epoch (0 when empty)
//! u64  record count
//! 32   Merkle root over the records' chain hashes
//! u16  number of components (v2 and v3): every plugin loaded at the close
//!        or with records in the epoch, sorted by plugin, each once:
//!        str plugin, 32 sha256 of the component file that produced the
//!        plugin's records (zeros when unknown), then (v3 only) u8 signed
//!        (0 or 1) and, when 1, 32 signer: the sha256 of the DER
//!        SubjectPublicKeyInfo of the trusted publisher key whose signature
//!        the gateway verified before loading the component
//! u16  number of totals, then per total (sorted by plugin, source, unit):
//!        str plugin, str resource kind, u8 source (0 host, 1 plugin),
//!        str unit, u64 records, u128 quantity, u64 distinct subjects
//!        (exact up to 65 536; above, the gateway's HyperLogLog estimate,
//!        relative standard error at most 1.04 %, see the gateway's
//!        `epochs::distinct`)
//! u16  number of subject totals (plugin-claimed records with a subject;
//!      at most `MAX_SUBJECT_ROWS`, the first subjects seen in the epoch),
//!      sorted by plugin, unit, subject; per row:
//!        str plugin, str unit, str subject, u64 records, u128 quantity
//! u16  number of challenge results counted in this epoch, then per
//!        result: str challenge id, u8 passed (0 or 1)
//! u128 reward estimate, micro-tokens
//! 64   ed25519 signature over every byte before it
//! ```
//!
//! A report's hash (what the next report chains to) is the sha256 of all
//! its bytes, signature included.
//!
//! Version 2 is version 3 without the signer byte (and signer) of each
//! component; it decodes with no signers. Version 1 is version 2 without
//! the component list. It still decodes (with an empty list) so a
//! collector can refuse it by name, or admit it under an explicit legacy
//! policy; new reports are always version 3.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::hash::Hash;
use crate::rewards::{ProofResults, RewardInput, RewardPolicy};

const MAGIC: &[u8; 4] = b"DPGR";
/// Version of the report encoding written by this code.
pub const REPORT_VERSION: u8 = 3;
/// Components without signers. Decoded, never written except by
/// [`EpochReport::encode`] of a report whose `version` says so.
pub const REPORT_VERSION_UNSIGNED_COMPONENTS: u8 = 2;
/// The previous version: no component digests. Decoded, never written
/// except by [`EpochReport::encode`] of a report whose `version` says so.
pub const REPORT_VERSION_LEGACY: u8 = 1;
const SIGNATURE_LEN: usize = 64;

/// Totals of one (plugin, source, unit) in an epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EpochTotal {
    pub plugin: String,
    pub kind: String,
    /// `host` or `plugin`.
    pub source: String,
    pub unit: String,
    pub records: u64,
    #[serde(serialize_with = "as_string")]
    pub quantity: u128,
    /// Distinct subjects of the total's records: exact up to 65 536, an
    /// estimate above (a gateway counts them in bounded memory). Nothing
    /// in the rewards depends on it.
    pub subjects: u64,
}

fn as_string<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// Most per-subject rows in one report.
pub const MAX_SUBJECT_ROWS: usize = 1024;

/// Totals of one subject (a device, a blob, a job...) of a plugin's unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubjectTotal {
    pub plugin: String,
    pub unit: String,
    pub subject: String,
    pub records: u64,
    #[serde(serialize_with = "as_string")]
    pub quantity: u128,
}

/// The result of one challenge, as counted in a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProofOutcome {
    pub challenge_id: String,
    pub passed: bool,
}

/// The component that produced one plugin's records in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDigest {
    pub plugin: String,
    /// sha256 of the component file (zeros when the gateway does not know
    /// it, e.g. a plugin removed before it was ever seen loaded).
    pub digest: Hash,
    /// The publisher key whose signature over the component the gateway
    /// verified (sha256 of its DER SubjectPublicKeyInfo), when the plugin
    /// required one (v3; always `None` in older versions).
    pub signer: Option<Hash>,
}

impl ComponentDigest {
    /// `sha256:<hex>`, as plugin digests are written elsewhere.
    pub fn digest_string(&self) -> String {
        format!("sha256:{}", hex::encode(self.digest))
    }

    /// The signer's key fingerprint, `sha256:<hex>`, when there is one.
    pub fn signer_string(&self) -> Option<String> {
        self.signer.map(|s| format!("sha256:{}", hex::encode(s)))
    }
}

/// The contents of an epoch report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochReport {
    /// Encoding version: [`REPORT_VERSION`], or [`REPORT_VERSION_LEGACY`]
    /// for a decoded version-1 report.
    pub version: u8,
    pub gateway_key: [u8; 32],
    pub epoch: u64,
    pub length_ms: u64,
    pub prev_hash: Hash,
    pub first_seq: u64,
    pub records: u64,
    pub merkle_root: Hash,
    /// Per plugin loaded at the close or with records, its component (v2).
    pub components: Vec<ComponentDigest>,
    pub totals: Vec<EpochTotal>,
    /// Per-subject totals of plugin-claimed usage.
    pub subject_totals: Vec<SubjectTotal>,
    /// Challenge results counted toward this epoch's reward.
    pub proofs: Vec<ProofOutcome>,
    pub reward_micro: u128,
}

/// Why bytes are not a valid signed report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("malformed report: {0}")]
    Malformed(&'static str),
    #[error("the signature does not match the report and its gateway key")]
    BadSignature,
}

/// A report with its signature, as sent and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReport {
    pub report: EpochReport,
    pub bytes: Vec<u8>,
}

impl EpochReport {
    /// The canonical encoding of the signed part.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.totals.len() * 64);
        out.extend_from_slice(MAGIC);
        out.push(self.version);
        out.extend_from_slice(&self.gateway_key);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.length_ms.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.records.to_be_bytes());
        out.extend_from_slice(&self.merkle_root);
        if self.version != REPORT_VERSION_LEGACY {
            let n = u16::try_from(self.components.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&n.to_be_bytes());
            for c in self.components.iter().take(usize::from(n)) {
                put_str(&mut out, &c.plugin);
                out.extend_from_slice(&c.digest);
                if self.version >= REPORT_VERSION {
                    match &c.signer {
                        None => out.push(0),
                        Some(signer) => {
                            out.push(1);
                            out.extend_from_slice(signer);
                        }
                    }
                }
            }
        }
        let n = u16::try_from(self.totals.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for t in self.totals.iter().take(usize::from(n)) {
            put_str(&mut out, &t.plugin);
            put_str(&mut out, &t.kind);
            out.push(u8::from(t.source == "plugin"));
            put_str(&mut out, &t.unit);
            out.extend_from_slice(&t.records.to_be_bytes());
            out.extend_from_slice(&t.quantity.to_be_bytes());
            out.extend_from_slice(&t.subjects.to_be_bytes());
        }
        let n = u16::try_from(self.subject_totals.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for t in self.subject_totals.iter().take(usize::from(n)) {
            put_str(&mut out, &t.plugin);
            put_str(&mut out, &t.unit);
            put_str(&mut out, &t.subject);
            out.extend_from_slice(&t.records.to_be_bytes());
            out.extend_from_slice(&t.quantity.to_be_bytes());
        }
        let n = u16::try_from(self.proofs.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for p in self.proofs.iter().take(usize::from(n)) {
            put_str(&mut out, &p.challenge_id);
            out.push(u8::from(p.passed));
        }
        out.extend_from_slice(&self.reward_micro.to_be_bytes());
        out
    }

    /// Signs the report with the device key.
    pub fn sign(self, key: &SigningKey) -> SignedReport {
        match self.try_sign(|body| Ok::<_, core::convert::Infallible>(key.sign(body))) {
            Ok(signed) => signed,
            Err(never) => match never {},
        }
    }

    /// Signs with `sign`, which may fail (a key held by a hardware token):
    /// the canonical encoding followed by the signature over it, the same
    /// bytes as [`EpochReport::sign`] with the same key.
    pub fn try_sign<E>(
        self,
        sign: impl FnOnce(&[u8]) -> Result<Signature, E>,
    ) -> Result<SignedReport, E> {
        let mut bytes = self.encode();
        let sig = sign(&bytes)?;
        bytes.extend_from_slice(&sig.to_bytes());
        Ok(SignedReport {
            report: self,
            bytes,
        })
    }

    /// The gateway id of the signer.
    pub fn gateway_id(&self) -> String {
        format!("dpg1{}", hex::encode(self.gateway_key))
    }

    /// Epoch start, Unix milliseconds.
    pub fn start_ms(&self) -> u64 {
        self.epoch.saturating_mul(self.length_ms)
    }

    /// The component digest the report gives for `plugin`.
    pub fn component_of(&self, plugin: &str) -> Option<&ComponentDigest> {
        self.components.iter().find(|c| c.plugin == plugin)
    }

    /// Challenges counted and passed.
    pub fn proof_results(&self) -> ProofResults {
        ProofResults {
            issued: self.proofs.len() as u32,
            passed: self.proofs.iter().filter(|p| p.passed).count() as u32,
        }
    }

    /// The reward this report's totals and proofs earn under `policy`.
    pub fn reward_under(&self, policy: &RewardPolicy) -> u128 {
        policy.reward(
            self.totals.iter().map(|t| RewardInput {
                kind: &t.kind,
                source: &t.source,
                unit: &t.unit,
                quantity: t.quantity,
            }),
            self.proof_results(),
        )
    }
}

impl SignedReport {
    /// Parses and checks a signed report: canonical encoding (re-encoding
    /// gives the same bytes) and a valid signature by the key inside.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() < SIGNATURE_LEN {
            return Err(ReportError::Malformed("truncated"));
        }
        let (body, sig) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let report = decode_body(body)?;
        if report.encode() != body {
            return Err(ReportError::Malformed("not in canonical form"));
        }
        let key = VerifyingKey::from_bytes(&report.gateway_key)
            .map_err(|_| ReportError::Malformed("the gateway key is not a valid ed25519 key"))?;
        let sig = Signature::from_bytes(sig.try_into().expect("64 bytes"));
        key.verify(body, &sig)
            .map_err(|_| ReportError::BadSignature)?;
        Ok(SignedReport {
            report,
            bytes: bytes.to_vec(),
        })
    }

    /// sha256 of the whole signed report; the next report's `prev_hash`.
    pub fn hash(&self) -> Hash {
        crate::hash::sha256(&self.bytes)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReportError> {
        if self.0.len() < n {
            return Err(ReportError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReportError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u16(&mut self) -> Result<u16, ReportError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ReportError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, ReportError> {
        Ok(u128::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<String, ReportError> {
        let n = self.u16()?;
        String::from_utf8(self.take(usize::from(n))?.to_vec())
            .map_err(|_| ReportError::Malformed("string is not UTF-8"))
    }
}

fn decode_body(body: &[u8]) -> Result<EpochReport, ReportError> {
    let mut r = Reader(body);
    if r.take(4)? != MAGIC {
        return Err(ReportError::Malformed("not an epoch report (bad magic)"));
    }
    let version = r.array::<1>()?[0];
    if !matches!(
        version,
        REPORT_VERSION | REPORT_VERSION_UNSIGNED_COMPONENTS | REPORT_VERSION_LEGACY
    ) {
        return Err(ReportError::Malformed("unknown report version"));
    }
    let gateway_key = r.array()?;
    let epoch = r.u64()?;
    let length_ms = r.u64()?;
    let prev_hash = r.array()?;
    let first_seq = r.u64()?;
    let records = r.u64()?;
    let merkle_root = r.array()?;
    let mut components = Vec::new();
    if version != REPORT_VERSION_LEGACY {
        let n = r.u16()?;
        for _ in 0..n {
            let plugin = r.str()?;
            let digest = r.array()?;
            let signer = if version >= REPORT_VERSION {
                match r.array::<1>()?[0] {
                    0 => None,
                    1 => Some(r.array()?),
                    _ => return Err(ReportError::Malformed("bad signer flag")),
                }
            } else {
                None
            };
            let c = ComponentDigest {
                plugin,
                digest,
                signer,
            };
            if components
                .last()
                .is_some_and(|p: &ComponentDigest| p.plugin >= c.plugin)
            {
                return Err(ReportError::Malformed(
                    "components are not sorted by plugin, each once",
                ));
            }
            components.push(c);
        }
    }
    let n = r.u16()?;
    let mut totals = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let plugin = r.str()?;
        let kind = r.str()?;
        let source = match r.array::<1>()?[0] {
            0 => "host",
            1 => "plugin",
            _ => return Err(ReportError::Malformed("unknown source")),
        };
        totals.push(EpochTotal {
            plugin,
            kind,
            source: source.into(),
            unit: r.str()?,
            records: r.u64()?,
            quantity: r.u128()?,
            subjects: r.u64()?,
        });
    }
    let n = r.u16()?;
    let mut subject_totals = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        subject_totals.push(SubjectTotal {
            plugin: r.str()?,
            unit: r.str()?,
            subject: r.str()?,
            records: r.u64()?,
            quantity: r.u128()?,
        });
    }
    let n = r.u16()?;
    let mut proofs = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let challenge_id = r.str()?;
        let passed = match r.array::<1>()?[0] {
            0 => false,
            1 => true,
            _ => return Err(ReportError::Malformed("bad proof flag")),
        };
        proofs.push(ProofOutcome {
            challenge_id,
            passed,
        });
    }
    let reward_micro = r.u128()?;
    if !r.0.is_empty() {
        return Err(ReportError::Malformed("trailing bytes"));
    }
    Ok(EpochReport {
        version,
        gateway_key,
        epoch,
        length_ms,
        prev_hash,
        first_seq,
        records,
        merkle_root,
        components,
        totals,
        subject_totals,
        proofs,
        reward_micro,
    })
}

#[cfg(test)]
pub(crate) mod tests;
