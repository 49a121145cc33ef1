//! The signed envelope around a SenML pack (see the plugin's README):
//!
//! ```text
//! signed message = "depin-senml/1\n" || device-id || "\n" || seq (decimal) || "\n" || pack
//! signature      = Ed25519(device key, signed message), 64 bytes, sent as 128 lower-case hex digits
//! MQTT payload   = device-id || " " || seq || " " || signature-hex || "\n" || pack
//! HTTP           = POST .../packs, body = pack,
//!                  headers x-device-id, x-sequence, x-signature
//! ```

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Domain separation prefix of the signed message.
pub const SIGNED_PREFIX: &[u8] = b"depin-senml/1\n";

/// A pack as it arrived, with what the device claims about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPack {
    pub device: String,
    pub seq: u64,
    pub signature: [u8; 64],
    /// The exact pack bytes that were signed.
    pub pack: Vec<u8>,
}

/// The bytes a device signs for `pack`.
pub fn signed_message(device: &str, seq: u64, pack: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_PREFIX.len() + device.len() + 22 + pack.len());
    m.extend_from_slice(SIGNED_PREFIX);
    m.extend_from_slice(device.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(seq.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(pack);
    m
}

impl SignedPack {
    /// Parses an MQTT payload: `device seq signature-hex\npack`.
    pub fn from_mqtt(payload: &[u8]) -> Result<Self, String> {
        let newline = payload
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no header line (`device seq signature` and a newline) before the pack")?;
        let header = std::str::from_utf8(&payload[..newline])
            .map_err(|_| "the header line is not UTF-8".to_string())?;
        let mut fields = header.split(' ');
        let (Some(device), Some(seq), Some(sig), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(
                "the header line must be `device seq signature`, separated by one space".into(),
            );
        };
        Self::from_parts(device, seq, sig, payload[newline + 1..].to_vec())
    }

    /// Builds a pack from the HTTP headers' values and the body.
    pub fn from_parts(
        device: &str,
        seq: &str,
        signature: &str,
        pack: Vec<u8>,
    ) -> Result<Self, String> {
        check_device_id(device)?;
        let seq: u64 =
            seq.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                format!("sequence `{seq}` is not a decimal number from 1 to 2^64-1")
            })?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(signature, &mut sig)
            .map_err(|_| "the signature must be 128 hex digits".to_string())?;
        Ok(Self {
            device: device.to_string(),
            seq,
            signature: sig,
            pack,
        })
    }

    /// Whether the signature is valid for `key`.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let message = signed_message(&self.device, self.seq, &self.pack);
        key.verify(&message, &Signature::from_bytes(&self.signature))
            .is_ok()
    }
}

/// Device ids: 1 to 64 bytes of A-Z a-z 0-9 `.` `_` `-`.
pub fn check_device_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "device id `{id}` must be 1 to 64 bytes of A-Z, a-z, 0-9, `.`, `_`, `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_message_golden_bytes() {
        assert_eq!(
            signed_message("dev-1", 42, br#"[{"n":"t","v":1}]"#),
            b"depin-senml/1\ndev-1\n42\n[{\"n\":\"t\",\"v\":1}]".to_vec()
        );
    }

    #[test]
    fn mqtt_payload_round_trip() {
        let sig = "ab".repeat(64);
        let payload = format!("dev-1 7 {sig}\n[{{\"n\":\"t\",\"v\":1}}]");
        let p = SignedPack::from_mqtt(payload.as_bytes()).unwrap();
        assert_eq!(p.device, "dev-1");
        assert_eq!(p.seq, 7);
        assert_eq!(p.signature, [0xab; 64]);
        assert_eq!(p.pack, br#"[{"n":"t","v":1}]"#);
    }

    #[test]
    fn bad_headers_are_named() {
        assert!(SignedPack::from_mqtt(b"no newline").is_err());
        assert!(
            SignedPack::from_mqtt(b"dev 1\n[]")
                .unwrap_err()
                .contains("header line")
        );
        let e = SignedPack::from_parts("dev", "0", &"00".repeat(64), vec![]).unwrap_err();
        assert!(e.contains("sequence"), "{e}");
        let e = SignedPack::from_parts("dev", "1", "xyz", vec![]).unwrap_err();
        assert!(e.contains("128 hex"), "{e}");
        let e = SignedPack::from_parts("a b", "1", &"00".repeat(64), vec![]).unwrap_err();
        assert!(e.contains("device id"), "{e}");
    }
}
