//! Proofs of inclusion: "reading `index` of window `window` is in the root
//! this gateway committed, and its device signed it".
//!
//! Challenge: kind `reading-inclusion`, params JSON `{"window": W, "index": I}`.
//! The proof payload is [`InclusionProof`] as JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use depin_plugin_sdk::{Challenge, KvError, Proof, kv};
use depin_protocol::Hash;
use depin_protocol::merkle::{self, PathStep};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::SignedPack;
use crate::senml::{self, Reading};
use crate::store::{self, WindowRoot};

/// The challenge kind this plugin answers.
pub const KIND: &str = "reading-inclusion";

/// The leaf of record `index` of the pack `(device, seq)` in its window's
/// Merkle tree (`depin_protocol::merkle`): `sha256("depin-senml-leaf/1\n"
/// || device || "\n" || seq (8, BE) || index (4, BE) || sha256(pack))`.
pub fn reading_leaf(device: &str, seq: u64, index: u32, pack: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"depin-senml-leaf/1\n");
    h.update(device.as_bytes());
    h.update(b"\n");
    h.update(seq.to_be_bytes());
    h.update(index.to_be_bytes());
    h.update(Sha256::digest(pack));
    h.finalize().into()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub window: u64,
    pub index: u64,
}

/// Everything a verifier needs, self-contained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub window: u64,
    pub index: u64,
    /// Leaves in the window.
    pub leaves: u64,
    /// The committed root, hex.
    pub root: String,
    /// The challenge's nonce, hex.
    pub nonce: String,
    pub device: String,
    /// The device's ed25519 public key, hex.
    pub public_key: String,
    pub seq: u64,
    /// The reading's record index in the pack.
    pub reading_index: u32,
    /// The exact signed pack, base64.
    pub pack: String,
    /// The device's signature, hex.
    pub signature: String,
    pub path: Vec<PathStep>,
    /// The reading as the gateway resolved it.
    pub reading: Reading,
}

/// Answers `c`; `window_start_ms` resolves relative times in the shown reading.
pub fn prove(c: &Challenge, window_start_ms: impl Fn(u64) -> i64) -> Result<Proof, String> {
    if c.kind != KIND {
        return Err(format!(
            "challenge kind `{}` is not supported; this plugin answers `{KIND}`",
            c.kind
        ));
    }
    let params: Params = serde_json::from_slice(&c.params)
        .map_err(|e| format!("params must be JSON {{\"window\": W, \"index\": I}}: {e}"))?;
    let kv_err = |e: KvError| format!("store: {e:?}");
    let root: WindowRoot = kv::get_json(&store::root_key(params.window))
        .map_err(kv_err)?
        .ok_or_else(|| format!("window {} is not closed or has no readings", params.window))?;
    let entries = store::window_leaves(params.window).map_err(kv_err)?;
    let leaves: Vec<Hash> = entries.iter().map(|(_, e)| e.leaf).collect();
    let i = usize::try_from(params.index)
        .ok()
        .filter(|i| *i < leaves.len())
        .ok_or_else(|| {
            format!(
                "window {} has {} readings; index {} is out of range",
                params.window,
                leaves.len(),
                params.index
            )
        })?;
    let path = merkle::path(&leaves, i);
    let computed = merkle::climb(leaves[i], &path);
    if hex::encode(computed) != root.root {
        return Err(format!(
            "window {}: stored leaves do not match the committed root",
            params.window
        ));
    }
    let (device, entry) = &entries[i];
    let stored = kv::get(&store::pack_key(device, entry.seq))
        .map_err(kv_err)?
        .filter(|s| s.len() >= 64)
        .ok_or_else(|| format!("pack {device}/{} is no longer stored", entry.seq))?;
    let (signature, pack) = stored.split_at(64);
    let key = store::device(device)
        .map_err(kv_err)?
        .ok_or_else(|| format!("device `{device}` is no longer provisioned"))?
        .public_key;
    let reading = reading_at(pack, entry.index, window_start_ms(params.window))
        .ok_or("the stored pack no longer resolves")?;
    let proof = InclusionProof {
        window: params.window,
        index: params.index,
        leaves: leaves.len() as u64,
        root: root.root,
        nonce: hex::encode(&c.nonce),
        device: device.clone(),
        public_key: key,
        seq: entry.seq,
        reading_index: entry.index,
        pack: B64.encode(pack),
        signature: hex::encode(signature),
        path,
        reading,
    };
    Ok(Proof {
        challenge_id: c.id.clone(),
        payload: serde_json::to_vec(&proof).expect("proof serializes"),
    })
}

/// Checks a proof: bound to this challenge, the pack signed by the device,
/// the reading in the pack, the leaf on the path to the root, and the root
/// the one this plugin committed (when it has it; a collector compares the
/// root with the ledger's evidence).
pub fn verify(c: &Challenge, p: &Proof) -> bool {
    check(c, p).is_ok()
}

fn check(c: &Challenge, p: &Proof) -> Result<(), &'static str> {
    if c.kind != KIND || p.challenge_id != c.id {
        return Err("not this challenge");
    }
    let params: Params = serde_json::from_slice(&c.params).map_err(|_| "params")?;
    let proof: InclusionProof = serde_json::from_slice(&p.payload).map_err(|_| "payload")?;
    if proof.window != params.window
        || proof.index != params.index
        || proof.nonce != hex::encode(&c.nonce)
    {
        return Err("not bound to the challenge");
    }
    let pack = B64.decode(&proof.pack).map_err(|_| "pack")?;
    let signed = SignedPack::from_parts(
        &proof.device,
        &proof.seq.to_string(),
        &proof.signature,
        pack,
    )
    .map_err(|_| "envelope")?;
    let key = crate::ingest::parse_key(&proof.public_key).map_err(|_| "key")?;
    if let Ok(Some(device)) = store::device(&proof.device)
        && device.public_key != proof.public_key
    {
        return Err("not the provisioned key");
    }
    if !signed.verify(&key) {
        return Err("signature");
    }
    let resolved =
        reading_at(&signed.pack, proof.reading_index, proof.reading.time_ms).ok_or("reading")?;
    if (&resolved.name, &resolved.unit, &resolved.value)
        != (
            &proof.reading.name,
            &proof.reading.unit,
            &proof.reading.value,
        )
    {
        return Err("reading does not match the pack");
    }
    let leaf = reading_leaf(&proof.device, proof.seq, proof.reading_index, &signed.pack);
    let root = merkle::climb(leaf, &proof.path);
    if hex::encode(root) != proof.root {
        return Err("path does not lead to the root");
    }
    if let Ok(Some(committed)) = kv::get_json::<WindowRoot>(&store::root_key(proof.window))
        && committed.root != proof.root
    {
        return Err("not the committed root");
    }
    Ok(())
}

/// Record `index` of `pack`, resolved; relative times against `now_ms`.
fn reading_at(pack: &[u8], index: u32, now_ms: i64) -> Option<Reading> {
    senml::resolve(pack, now_ms)
        .ok()?
        .into_iter()
        .find(|r| r.index == index)
}
