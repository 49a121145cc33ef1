//! Who is on the other end of a TLS connection.
//!
//! Two kinds of client certificate are accepted:
//! - one chaining to `client_ca_file`, mapped to a gateway id by its
//!   sha256 in a `[[gateway]]` entry (the CA-issued enrollment);
//! - a device-key certificate: self-signed, X.509 v3, over the gateway's
//!   Ed25519 device key. Its gateway id is its public key
//!   ([`device_key_id`]); the TLS handshake signature, checked with the
//!   certificate's key, proves the client holds the device key.
//!
//! Accepting a certificate only authenticates the peer; whether that
//! gateway may report is decided where the id is looked up.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use depin_gateway::upstream::tls::{TlsError, load_certs, load_key};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte
/// key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The gateway id (`dpg1<hex public key>`) of a device-key certificate:
/// a well-formed X.509 v3 certificate, issuer equal to subject, over an
/// Ed25519 key, whose self-signature verifies with that key and which is
/// valid now. `None` for anything else (CA-issued certificates included).
pub fn device_key_id(cert_der: &[u8]) -> Option<String> {
    device_key_id_at(&CertificateDer::from(cert_der), UnixTime::now())
}

fn device_key_id_at(cert: &CertificateDer<'_>, now: UnixTime) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = ee.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    if key.len() != 32 || ee.issuer() != ee.subject() {
        return None;
    }
    // The certificate as its own trust anchor: path building checks the
    // issuer name, the validity period, the client-auth usage and the
    // signature over the certificate with its own (Ed25519) key.
    let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
    ee.verify_for_usage(
        &[webpki::ring::ED25519],
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .ok()?;
    Some(format!("dpg1{}", hex::encode(key)))
}

/// Accepts a client certificate that chains to the client CA (when one is
/// configured) or is a device-key certificate ([`device_key_id`]). The
/// handshake signature is verified with the presented certificate's key
/// either way.
#[derive(Debug)]
pub struct GatewayCertVerifier {
    ca: Option<Arc<dyn ClientCertVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl GatewayCertVerifier {
    /// `client_ca_file`: the CA bundle of CA-issued gateway certificates;
    /// `None` accepts device-key certificates only.
    pub fn new(
        client_ca_file: Option<&Path>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let ca = match client_ca_file {
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs(file)? {
                    roots.add(c).map_err(|e| TlsError {
                        file: file.display().to_string(),
                        problem: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError {
                            file: file.display().to_string(),
                            problem: e.to_string(),
                        })?;
                Some(verifier)
            }
            None => None,
        };
        Ok(Self {
            ca,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for GatewayCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.as_ref().map_or(&[], |ca| ca.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.is_empty() && device_key_id_at(end_entity, now).is_some() {
            return Ok(ClientCertVerified::assertion());
        }
        match &self.ca {
            Some(ca) => ca.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::CertificateError::ApplicationVerificationFailure.into()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The collector's server configuration: its own certificate, and client
/// certificates accepted by [`GatewayCertVerifier`].
pub fn server_config(
    client_ca_file: Option<&Path>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = GatewayCertVerifier::new(client_ca_file, provider.clone())?;
    let at = |file: &Path, e: rustls::Error| TlsError {
        file: file.display().to_string(),
        problem: e.to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| at(cert_file, e))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)
        .map_err(|e| at(key_file, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
