//! The device key's TLS identity: a self-signed client certificate over the
//! Ed25519 public key, and a rustls signing key that signs the handshake
//! through [`DeviceSigner`], so a token-held key serves TLS without ever
//! leaving the token.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::Digest as _;

use super::{DeviceSigner, SignError};

/// A device key's TLS client certificate (see [`device_certificate`]).
#[derive(Debug, Clone)]
pub struct DeviceCertificate {
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// The certificate, PEM.
    pub pem: String,
}

impl DeviceCertificate {
    /// sha256 of the DER certificate, lowercase hex.
    pub fn sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.der.as_ref()))
    }
}

/// Why the device certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("{0}")]
    Build(#[from] rcgen::Error),
}

/// The TLS client certificate of a device key: a self-signed X.509 v3
/// certificate over the Ed25519 public key, subject `CN=<gateway id>`,
/// client-auth only, signed by the key itself. Deterministic: the same
/// key always gives the same bytes (fixed validity and serial, Ed25519
/// signatures are deterministic), so its sha256 can be written down once.
pub fn device_certificate(key: &dyn DeviceSigner) -> Result<DeviceCertificate, CertificateError> {
    let public = key.public_key();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, key.gateway_id());
    let serial = sha2::Sha256::digest(public.as_bytes());
    let mut serial: [u8; 16] = serial[..16].try_into().expect("16 of 32 bytes");
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let signer = CertificateSigner {
        key,
        public: public.to_bytes(),
        failure: RefCell::new(None),
    };
    let cert =
        params
            .self_signed(&signer)
            .map_err(|e| match signer.failure.borrow_mut().take() {
                Some(why) => CertificateError::Sign(why),
                None => CertificateError::Build(e),
            })?;
    Ok(DeviceCertificate {
        der: cert.der().clone(),
        pem: cert.pem(),
    })
}

/// The device key as rcgen's signer; keeps the signing error rcgen cannot
/// carry.
struct CertificateSigner<'a> {
    key: &'a dyn DeviceSigner,
    public: [u8; 32],
    failure: RefCell<Option<SignError>>,
}

impl rcgen::PublicKeyData for CertificateSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for CertificateSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self.key.sign(msg) {
            Ok(sig) => Ok(sig.to_bytes().to_vec()),
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                Err(rcgen::Error::RemoteKeyError)
            }
        }
    }
}

/// SubjectPublicKeyInfo of an Ed25519 key (RFC 8410), up to the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The device key as a rustls signing key: offers only Ed25519 and signs
/// each handshake through [`DeviceSigner::sign`] (a token round trip for a
/// token key, made on the thread that drives the handshake).
#[derive(Debug)]
pub struct DeviceTlsKey {
    key: Arc<dyn DeviceSigner>,
    spki: Vec<u8>,
}

impl DeviceTlsKey {
    pub fn new(key: Arc<dyn DeviceSigner>) -> Self {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_bytes());
        Self { key, spki }
    }
}

impl rustls::sign::SigningKey for DeviceTlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(DeviceTlsSigner(self.key.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct DeviceTlsSigner(Arc<dyn DeviceSigner>);

impl rustls::sign::Signer for DeviceTlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(message)
            .map(|s| s.to_bytes().to_vec())
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceKey;

    #[test]
    fn tls_key_has_the_spki_of_the_certificate_and_signs_verifiably() {
        let key = Arc::new(DeviceKey::generate());
        let cert = device_certificate(key.as_ref()).unwrap();
        let ee = webpki::EndEntityCert::try_from(&cert.der).unwrap();
        let tls = DeviceTlsKey::new(key.clone());
        use rustls::sign::SigningKey as _;
        assert_eq!(
            tls.public_key().unwrap().as_ref(),
            ee.subject_public_key_info().as_ref()
        );
        // the same SPKI as ring's own Ed25519 key over the PKCS#8 form
        let ring = rustls::crypto::ring::sign::any_eddsa_type(&key.pkcs8_der()).unwrap();
        assert_eq!(tls.public_key(), ring.public_key());
        assert!(
            tls.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
                .is_none()
        );
        let signer = tls.choose_scheme(&[SignatureScheme::ED25519]).unwrap();
        let sig = signer.sign(b"transcript").unwrap();
        let ring_sig = ring
            .choose_scheme(&[SignatureScheme::ED25519])
            .unwrap()
            .sign(b"transcript")
            .unwrap();
        assert_eq!(sig, ring_sig, "Ed25519 is deterministic");
    }
}
