//! Mutual TLS between gateways and the collector (rustls, ring provider,
//! TLS 1.2 and 1.3). PEM files: certificate chains, PKCS#8/PKCS#1/SEC1
//! private keys, CA bundles.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A TLS file or setting that does not work, with the file named.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct TlsError {
    pub file: String,
    pub problem: String,
}

fn err(file: &Path, problem: impl ToString) -> TlsError {
    TlsError {
        file: file.display().to_string(),
        problem: problem.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, e))?;
    if certs.is_empty() {
        return Err(err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| err(path, format!("no usable private key: {e}")))
}

fn roots(ca_file: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca_file)? {
        roots.add(c).map_err(|e| err(ca_file, e))?;
    }
    Ok(Arc::new(roots))
}

/// Client side: trusts only `ca_file`, presents `cert_file`/`key_file`.
pub fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert_file, e))?
        .with_root_certificates(roots(ca_file)?)
        .with_client_auth_cert(load_certs(cert_file)?, load_key(key_file)?)
        .map_err(|e| err(key_file, e))?;
    Ok(Arc::new(config))
}

/// Server side: requires a client certificate issued by `client_ca_file`.
pub fn server_config(
    client_ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca_file)?, provider())
        .build()
        .map_err(|e| err(client_ca_file, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert_file, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)
        .map_err(|e| err(key_file, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The sha256 fingerprint of a certificate, lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}
