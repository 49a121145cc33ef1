//! The device identity: an ed25519 key that signs everything the gateway
//! reports upstream. Plugins never see it.
//!
//! Key file format (text, one line): `depin-ed25519-secret:<64 hex digits>`.
//! The gateway id is the public key as `dpg1<64 hex digits>`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;

const KEY_PREFIX: &str = "depin-ed25519-secret:";
const ID_PREFIX: &str = "dpg1";

/// Why a key file could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: already exists; refusing to overwrite a device key (pass --force to replace it)"
    )]
    Exists { path: PathBuf },
    #[error(
        "{path}: the device key is readable or writable by group or others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a depin-gateway key file ({problem})")]
    Malformed { path: PathBuf, problem: String },
}

/// The gateway's device key.
pub struct DeviceKey {
    signing: SigningKey,
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
        })
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// A device key from its signing half.
    pub fn from_signing_key(signing: SigningKey) -> Self {
        Self { signing }
    }

    /// The signing half, for signing reports and proofs inside the gateway.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The gateway id: `dpg1` followed by the public key in hex.
    pub fn gateway_id(&self) -> String {
        gateway_id(&self.verifying_key())
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

    /// The TLS client certificate of this device key: a self-signed X.509
    /// v3 certificate over the Ed25519 public key, subject `CN=<gateway
    /// id>`, client-auth only. Deterministic: the same key always gives
    /// the same bytes (fixed validity and serial, Ed25519 signatures are
    /// deterministic), so its sha256 can be written down once.
    pub fn certificate(&self) -> Result<DeviceCertificate, rcgen::Error> {
        let pkcs8 = self.pkcs8_der();
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.gateway_id());
        let serial = sha2::Sha256::digest(self.verifying_key().as_bytes());
        let mut serial: [u8; 16] = serial[..16].try_into().expect("16 of 32 bytes");
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key_pair)?;
        Ok(DeviceCertificate {
            der: cert.der().clone(),
            pem: cert.pem(),
            key: pkcs8,
        })
    }
}

/// RFC 8410 OneAsymmetricKey v2 for Ed25519, up to the 32-byte seed.
const PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// Between the seed and the 32-byte public key: `[1] BIT STRING`.
const PKCS8_V2_PUBLIC: [u8; 3] = [0x81, 0x21, 0x00];

/// A device key's TLS client certificate (see [`DeviceKey::certificate`]).
#[derive(Debug)]
pub struct DeviceCertificate {
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// The certificate, PEM.
    pub pem: String,
    /// Its private key (the device key), PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl DeviceCertificate {
    /// sha256 of the DER certificate, lowercase hex.
    pub fn sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.der.as_ref()))
    }
}

/// The gateway id of a public key.
pub fn gateway_id(key: &VerifyingKey) -> String {
    format!("{ID_PREFIX}{}", hex::encode(key.to_bytes()))
}

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
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&a.key).unwrap();
        assert!(signer.public_key().unwrap().as_ref() == spki.as_ref());
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
