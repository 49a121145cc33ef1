//! Proof of relay. A `relayed-packet` challenge names a packet by the
//! sha256 of its PHY payload (the evidence of its usage records, as 32 raw
//! bytes or 64 hex digits in `params`). The proof reveals the radio
//! metadata the forwarder reported for it (time, frequency, data rate,
//! RSSI, SNR) and binds it to the challenge's nonce:
//!
//! `binding = sha256("hotspot-relay/relayed-packet/1" || len(nonce) as u32 BE || nonce || packet hash || JSON(eui, meta))`
//!
//! `verify` recomputes the binding, so a proof made for another nonce,
//! another packet, or with altered metadata fails.
//!
//! `prove` and `verify` also dispatch `beacon` challenges to
//! [`crate::beacon`].

use depin_plugin_sdk::{Challenge, Proof, kv};

use crate::beacon::{self, BEACON};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The challenge kind this plugin answers.
pub const RELAYED_PACKET: &str = "relayed-packet";
const DOMAIN: &[u8] = b"hotspot-relay/relayed-packet/1";

/// The packet hash a challenge names.
fn packet_hash(c: &Challenge) -> Result<[u8; 32], String> {
    let raw = if c.params.len() == 64 {
        hex::decode(&c.params).map_err(|e| format!("params: {e}"))?
    } else {
        c.params.clone()
    };
    raw.try_into()
        .map_err(|_| "params must be a sha256 (32 bytes or 64 hex digits)".to_string())
}

fn binding(nonce: &[u8], hash: &[u8; 32], eui: &Value, meta: &Value) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update((nonce.len() as u32).to_be_bytes());
    h.update(nonce);
    h.update(hash);
    h.update(serde_json::to_vec(&json!([eui, meta])).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Answers a challenge: `relayed-packet` here, `beacon` in [`crate::beacon`].
pub fn prove(c: Challenge) -> Result<Proof, String> {
    if c.kind == BEACON {
        return beacon::prove(c);
    }
    if c.kind != RELAYED_PACKET {
        return Err(format!(
            "challenge kind `{}` is not supported (supported: {RELAYED_PACKET}, {BEACON})",
            c.kind
        ));
    }
    if c.nonce.is_empty() {
        return Err("the challenge has no nonce".into());
    }
    let hash = packet_hash(&c)?;
    let record: Value = kv::get_json(&format!("pkt/{}", hex::encode(hash)))
        .map_err(|e| format!("cannot read the packet record: {e:?}"))?
        .ok_or_else(|| {
            format!(
                "packet {} was not relayed here (or has expired)",
                hex::encode(hash)
            )
        })?;
    let (eui, meta) = (&record["eui"], &record["meta"]);
    let payload = json!({
        "packet": hex::encode(hash),
        "eui": eui,
        "meta": meta,
        "binding": binding(&c.nonce, &hash, eui, meta),
    });
    Ok(Proof {
        challenge_id: c.id,
        payload: serde_json::to_vec(&payload).map_err(|e| e.to_string())?,
    })
}

/// Checks a proof made by [`prove`]: same challenge, same packet, binding
/// recomputes over the challenge's nonce, and the metadata names a
/// frequency and a data rate.
pub fn verify(c: &Challenge, p: &Proof) -> bool {
    if c.kind == BEACON {
        return beacon::verify(c, p);
    }
    if c.kind != RELAYED_PACKET || p.challenge_id != c.id || c.nonce.is_empty() {
        return false;
    }
    let (Ok(hash), Ok(payload)) = (packet_hash(c), serde_json::from_slice::<Value>(&p.payload))
    else {
        return false;
    };
    let meta = &payload["meta"];
    payload["packet"].as_str() == Some(hex::encode(hash).as_str())
        && meta["freq"].is_number()
        && meta["datr"].is_string()
        && payload["binding"].as_str()
            == Some(binding(&c.nonce, &hash, &payload["eui"], meta).as_str())
}
