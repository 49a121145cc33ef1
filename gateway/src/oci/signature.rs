//! Cosign's key-based signatures of components, verified offline.
//!
//! The format (cosign's "simple signing" over the OCI registry): the
//! signatures of the manifest `sha256:<hex>` are an image manifest under
//! the tag `sha256-<hex>.sig` in the same repository. Each layer is one
//! signature: its blob is the JSON payload
//!
//! ```json
//! {"critical":{"identity":{"docker-reference":"HOST/REPO"},
//!   "image":{"docker-manifest-digest":"sha256:<hex>"},
//!   "type":"cosign container image signature"},"optional":null}
//! ```
//!
//! (media type `application/vnd.dev.cosign.simplesigning.v1+json`), and
//! its annotation `dev.cosignproject.cosign/signature` holds the base64
//! of an ECDSA P-256 / SHA-256 signature (ASN.1 DER) over the payload's
//! exact bytes. Publisher keys are PEM SubjectPublicKeyInfo, as
//! `cosign generate-key-pair` writes `cosign.pub`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Media type of a signature layer (the payload).
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation of a signature layer that carries the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload's `critical.type`.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Config media type of the signature manifest (an OCI image config).
pub const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The tag cosign stores the signatures of `manifest_digest` under.
pub fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replacen(':', "-", 1))
}

/// The simple-signing payload for `docker_reference` (`HOST/REPO`) at
/// `manifest_digest`, byte for byte as cosign writes it.
pub fn payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    // serde_json orders object keys, so this is cosign's key order too.
    json!({
        "critical": {
            "identity": { "docker-reference": docker_reference },
            "image": { "docker-manifest-digest": manifest_digest },
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    })
    .to_string()
    .into_bytes()
}

/// Checks that `payload` is a cosign payload for `manifest_digest`.
pub fn check_payload(payload: &[u8], manifest_digest: &str) -> Result<(), String> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("the signature payload is not JSON: {e}"))?;
    let critical = &v["critical"];
    if critical["type"].as_str() != Some(PAYLOAD_TYPE) {
        return Err(format!(
            "the signature payload's type is {}, not `{PAYLOAD_TYPE}`",
            critical["type"]
        ));
    }
    match critical["image"]["docker-manifest-digest"].as_str() {
        Some(d) if d == manifest_digest => Ok(()),
        Some(d) => Err(format!(
            "the signature payload is for {d}, not for {manifest_digest}"
        )),
        None => Err("the signature payload names no docker-manifest-digest".into()),
    }
}

/// A publisher key the gateway trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    key: VerifyingKey,
    /// sha256 of the key's DER SubjectPublicKeyInfo: how reports name it.
    pub fingerprint: [u8; 32],
    /// Where it was read from (named in errors).
    pub source: PathBuf,
}

impl TrustedKey {
    /// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, P-256).
    pub fn load(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the trusted key {}: {e}", path.display()))?;
        Self::from_pem(&pem, path)
    }

    /// Parses a PEM public key; `source` names it.
    pub fn from_pem(pem: &str, source: &Path) -> Result<Self, String> {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            format!(
                "{}: not a PEM ECDSA P-256 public key (cosign.pub): {e}",
                source.display()
            )
        })?;
        Ok(Self {
            fingerprint: fingerprint(&key),
            key,
            source: source.to_path_buf(),
        })
    }

    /// `sha256:<hex>` of the key.
    pub fn fingerprint_string(&self) -> String {
        format!("sha256:{}", hex::encode(self.fingerprint))
    }
}

fn fingerprint(key: &VerifyingKey) -> [u8; 32] {
    let der = key
        .to_public_key_der()
        .expect("a P-256 key always encodes as SubjectPublicKeyInfo");
    Sha256::digest(der.as_bytes()).into()
}

/// One signature found next to a component: its payload and the base64
/// signature from its annotation.
#[derive(Debug, Clone)]
pub struct FoundSignature {
    pub payload: Vec<u8>,
    pub signature_b64: String,
}

/// Finds the first signature over `manifest_digest` that verifies under
/// one of `trusted`; returns that key. The error says why none did.
pub fn verify<'k>(
    found: &[FoundSignature],
    manifest_digest: &str,
    trusted: &'k [TrustedKey],
) -> Result<&'k TrustedKey, String> {
    if found.is_empty() {
        return Err("unsigned: the signature manifest holds no signature".into());
    }
    let mut problems = Vec::new();
    for s in found {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(s.signature_b64.trim())
        else {
            problems.push("a signature is not base64".to_string());
            continue;
        };
        let Ok(sig) = Signature::from_der(&raw) else {
            problems.push("a signature is not an ASN.1 DER ECDSA signature".to_string());
            continue;
        };
        let Some(key) = trusted
            .iter()
            .find(|k| k.key.verify(&s.payload, &sig).is_ok())
        else {
            problems.push("a signature by a key that is not trusted".to_string());
            continue;
        };
        match check_payload(&s.payload, manifest_digest) {
            Ok(()) => return Ok(key),
            Err(p) => problems.push(p),
        }
    }
    problems.dedup();
    Err(format!(
        "no valid signature by a trusted key ({} found: {}; {} trusted key{})",
        found.len(),
        problems.join("; "),
        trusted.len(),
        if trusted.len() == 1 { "" } else { "s" }
    ))
}

/// A publisher's signing key.
pub struct PublisherKey(SigningKey);

impl PublisherKey {
    /// Reads an unencrypted P-256 private key: PKCS#8 (`BEGIN PRIVATE
    /// KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`). Cosign's encrypted keys are
    /// refused with a pointer to cosign.
    pub fn load(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the key {}: {e}", path.display()))?;
        if pem.contains("ENCRYPTED") {
            return Err(format!(
                "{}: an encrypted key (cosign's keys are encrypted); sign with `cosign sign --key`, \
                 or use an unencrypted PKCS#8 P-256 key",
                path.display()
            ));
        }
        let pem = pem.trim();
        let key = SigningKey::from_pkcs8_pem(pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(pem).map(SigningKey::from))
            .map_err(|_| {
                format!(
                    "{}: not an unencrypted PEM ECDSA P-256 private key (PKCS#8 or SEC1)",
                    path.display()
                )
            })?;
        Ok(Self(key))
    }

    /// From raw scalar bytes (tests).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, String> {
        SigningKey::from_bytes(bytes.into())
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Signs `payload`: base64 of the DER signature, as the annotation
    /// holds it.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: Signature = self.0.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    /// `sha256:<hex>` fingerprint of the public half.
    pub fn fingerprint_string(&self) -> String {
        format!(
            "sha256:{}",
            hex::encode(fingerprint(self.0.verifying_key()))
        )
    }

    /// The public half as PEM (what verifiers list as trusted).
    pub fn public_pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("a P-256 key always encodes as PEM")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn trusted(key: &PublisherKey) -> TrustedKey {
        TrustedKey::from_pem(&key.public_pem(), Path::new("test.pub")).unwrap()
    }

    #[test]
    fn payload_is_cosigns_simple_signing_json() {
        let p = payload("127.0.0.1:5000/echo", D);
        assert_eq!(
            String::from_utf8(p.clone()).unwrap(),
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/echo\"}},\
                 \"image\":{{\"docker-manifest-digest\":\"{D}\"}},\
                 \"type\":\"cosign container image signature\"}},\"optional\":null}}"
            )
        );
        check_payload(&p, D).unwrap();
        let other = D.replace("0123", "3210");
        assert!(check_payload(&p, &other).unwrap_err().contains("is for"));
        assert!(check_payload(b"{}", D).unwrap_err().contains("type"));
        assert_eq!(signature_tag(D), format!("sha256-{}.sig", &D[7..]));
    }

    #[test]
    fn a_signature_by_a_trusted_key_verifies_and_names_it() {
        let key = PublisherKey::from_bytes(&[7; 32]).unwrap();
        let p = payload("r/echo", D);
        let found = [FoundSignature {
            signature_b64: key.sign(&p),
            payload: p,
        }];
        let keys = [trusted(&key)];
        let signer = verify(&found, D, &keys).unwrap();
        assert_eq!(signer.fingerprint_string(), key.fingerprint_string());
    }

    #[test]
    fn untrusted_tampered_and_misdirected_signatures_are_refused() {
        let key = PublisherKey::from_bytes(&[7; 32]).unwrap();
        let other = PublisherKey::from_bytes(&[8; 32]).unwrap();
        let keys = [trusted(&key)];
        let p = payload("r/echo", D);
        let by_other = [FoundSignature {
            signature_b64: other.sign(&p),
            payload: p.clone(),
        }];
        let e = verify(&by_other, D, &keys).unwrap_err();
        assert!(e.contains("not trusted"), "{e}");
        let mut tampered = p.clone();
        tampered[20] ^= 1;
        let e = verify(
            &[FoundSignature {
                signature_b64: key.sign(&p),
                payload: tampered,
            }],
            D,
            &keys,
        )
        .unwrap_err();
        assert!(e.contains("not trusted"), "{e}");
        let elsewhere = payload("r/echo", &D.replace("0123", "3210"));
        let e = verify(
            &[FoundSignature {
                signature_b64: key.sign(&elsewhere),
                payload: elsewhere,
            }],
            D,
            &keys,
        )
        .unwrap_err();
        assert!(e.contains("is for"), "{e}");
        assert!(verify(&[], D, &keys).unwrap_err().contains("unsigned"));
    }

    #[test]
    fn keys_load_from_pem_and_encrypted_keys_point_to_cosign() {
        let dir = tempfile::tempdir().unwrap();
        let rc = rcgen::KeyPair::generate().unwrap();
        let private = dir.path().join("k.pem");
        std::fs::write(&private, rc.serialize_pem()).unwrap();
        let public = dir.path().join("k.pub");
        std::fs::write(&public, rc.public_key_pem()).unwrap();
        let key = PublisherKey::load(&private).unwrap();
        let t = TrustedKey::load(&public).unwrap();
        assert_eq!(t.fingerprint_string(), key.fingerprint_string());
        let p = payload("r/x", D);
        verify(
            &[FoundSignature {
                signature_b64: key.sign(&p),
                payload: p,
            }],
            D,
            std::slice::from_ref(&t),
        )
        .unwrap();
        let enc = dir.path().join("cosign.key");
        std::fs::write(
            &enc,
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAA==\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = PublisherKey::load(&enc).err().unwrap();
        assert!(e.contains("cosign sign --key"), "{e}");
        assert!(
            TrustedKey::load(&private)
                .unwrap_err()
                .contains("not a PEM")
        );
    }
}
