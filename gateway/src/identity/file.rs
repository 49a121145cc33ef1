//! The device key in a file.
//!
//! Key file format (text, one line): `depin-ed25519-secret:<64 hex digits>`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use sha2::Digest as _;

use super::{DeviceCertificate, DeviceSigner, IdentityError, SignError};

const KEY_PREFIX: &str = "depin-ed25519-secret:";

/// The gateway's device key, held in memory (read from a key file, or
/// generated).
pub struct DeviceKey {
    signing: SigningKey,
    /// Where it came from, for messages.
    path: Option<PathBuf>,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("gateway_id", &self.gateway_id())
            .finish()
    }
}

impl DeviceKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
            path: None,
        }
    }

    /// Writes the key to `path` with mode 0600, creating parent directories.
    /// Refuses to replace an existing file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if path.exists() && !force {
            return Err(IdentityError::Exists {
                path: path.to_path_buf(),
            });
        }
        let tmp = path.with_extension("key.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let line = format!("{KEY_PREFIX}{}\n", hex::encode(self.signing.to_bytes()));
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(parent) = path.parent() {
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// Reads the key at `path`. Refuses a file that group or others can
    /// read or write.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let malformed = |problem: &str| IdentityError::Malformed {
            path: path.to_path_buf(),
            problem: problem.to_string(),
        };
        let hex_part = text
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| malformed("missing the `depin-ed25519-secret:` prefix"))?;
        let bytes: [u8; 32] = hex::decode(hex_part)
            .map_err(|_| malformed("the key is not hex"))?
            .try_into()
            .map_err(|_| malformed("the key is not 32 bytes"))?;
        Ok(Self {
            signing: SigningKey::from_bytes(&bytes),
            path: Some(path.to_path_buf()),
        })
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// A device key from its signing half.
    pub fn from_signing_key(signing: SigningKey) -> Self {
        Self {
            signing,
            path: None,
        }
    }

    /// The signing half (tools and tests that sign by hand; the gateway
    /// signs through [`DeviceSigner`], which a token key implements too).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The gateway id: `dpg1` followed by the public key in hex.
    pub fn gateway_id(&self) -> String {
        super::gateway_id(&self.verifying_key())
    }

    /// The key as PKCS#8 v2 DER (RFC 8410: seed and public key), the form
    /// TLS libraries take an Ed25519 private key in.
    pub fn pkcs8_der(&self) -> PrivatePkcs8KeyDer<'static> {
        let mut der = PKCS8_V2_PREFIX.to_vec();
        der.extend_from_slice(&self.signing.to_bytes());
        der.extend_from_slice(&PKCS8_V2_PUBLIC);
        der.extend_from_slice(&self.verifying_key().to_bytes());
        PrivatePkcs8KeyDer::from(der)
    }

    /// The TLS client certificate of this device key (see
    /// [`super::device_certificate`]).
    pub fn certificate(&self) -> Result<DeviceCertificate, super::CertificateError> {
        super::device_certificate(self)
    }
}

impl DeviceSigner for DeviceKey {
    fn public_key(&self) -> VerifyingKey {
        self.verifying_key()
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, SignError> {
        Ok(self.signing.sign(message))
    }

    fn location(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "in-memory key".into(),
        }
    }

    /// `sha256(label || secret seed)`.
    fn derive_secret(&self, label: &[u8]) -> Result<[u8; 32], SignError> {
        let mut h = sha2::Sha256::new();
        h.update(label);
        h.update(self.signing.to_bytes());
        Ok(h.finalize().into())
    }
}

/// RFC 8410 OneAsymmetricKey v2 for Ed25519, up to the 32-byte seed.
const PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// Between the seed and the 32-byte public key: `[1] BIT STRING`.
const PKCS8_V2_PUBLIC: [u8; 3] = [0x81, 0x21, 0x00];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_key_loads_back_with_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/device.key");
        let key = DeviceKey::generate();
        key.write(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            DeviceKey::load(&path).unwrap().gateway_id(),
            key.gateway_id()
        );
        assert!(key.gateway_id().starts_with("dpg1"));
        assert_eq!(key.gateway_id().len(), 4 + 64);
    }

    #[test]
    fn device_certificate_is_deterministic_and_signs_with_the_device_key() {
        let key = DeviceKey::generate();
        let a = key.certificate().unwrap();
        let b = key.certificate().unwrap();
        assert_eq!(a.der, b.der);
        let cert = webpki::EndEntityCert::try_from(&a.der).unwrap();
        let spki = cert.subject_public_key_info();
        assert!(spki.as_ref().ends_with(key.verifying_key().as_bytes()));
        assert_eq!(cert.issuer(), cert.subject());
        // rustls takes the PKCS#8 form and signs with the same key.
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&key.pkcs8_der()).unwrap();
        assert!(signer.public_key().unwrap().as_ref() == spki.as_ref());
        // The certificate's signature is the device key's.
        let der = a.der.as_ref();
        let sig: [u8; 64] = der[der.len() - 64..].try_into().unwrap();
        assert_eq!(der[der.len() - 67..der.len() - 64], [0x03, 0x41, 0x00]);
        let tbs_len = usize::from(u16::from_be_bytes([der[6], der[7]])) + 4;
        use ed25519_dalek::Verifier as _;
        key.verifying_key()
            .verify(&der[4..4 + tbs_len], &Signature::from_bytes(&sig))
            .unwrap();
    }

    #[test]
    fn existing_key_is_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        DeviceKey::generate().write(&path, false).unwrap();
        let e = DeviceKey::generate().write(&path, false).unwrap_err();
        assert!(matches!(e, IdentityError::Exists { .. }), "{e}");
        DeviceKey::generate().write(&path, true).unwrap();
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        DeviceKey::generate().write(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = DeviceKey::load(&path).unwrap_err();
        assert!(e.to_string().contains("mode 0644"), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn malformed_key_file_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        std::fs::write(&path, "hello").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = DeviceKey::load(&path).unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }
}
