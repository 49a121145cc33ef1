//! Mutual TLS between gateways and the collector (rustls, ring provider,
//! TLS 1.2 and 1.3). PEM files: certificate chains, PKCS#8/PKCS#1/SEC1
//! private keys, CA bundles.

use std::path::{Path, PathBuf};
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
    let files = UpstreamFiles {
        ca_file: ca_file.to_path_buf(),
        cert_file: Some(cert_file.to_path_buf()),
        key_file: Some(key_file.to_path_buf()),
    };
    upstream_client_config(&files, None)
}

/// The TLS files of `[upstream]`, kept to name the file at fault when a
/// handshake fails.
#[derive(Debug, Clone)]
pub struct UpstreamFiles {
    pub ca_file: PathBuf,
    /// `None` (with `key_file`): the device-key certificate is presented.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl UpstreamFiles {
    fn ca(&self) -> String {
        format!("upstream.ca_file ({})", self.ca_file.display())
    }

    /// What the gateway presents, named for a sentence.
    fn client(&self) -> String {
        match &self.cert_file {
            Some(p) => format!("upstream.cert_file ({})", p.display()),
            None => "the device-key certificate (no upstream.cert_file)".into(),
        }
    }

    fn key(&self) -> String {
        match &self.key_file {
            Some(p) => format!("upstream.key_file ({})", p.display()),
            None => "the device key".into(),
        }
    }

    /// A handshake failure in plain words, naming the file at fault and
    /// what to do; `host` is the collector the gateway was reaching.
    pub fn explain(&self, error: &rustls::Error, host: &str) -> String {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let server = format!("the collector's certificate ({host})");
        let device_hint = if self.cert_file.is_some() {
            ", or omit cert_file and key_file to use the device-key identity"
        } else {
            ""
        };
        match error {
            E::InvalidCertificate(c) => match c {
                C::UnknownIssuer => format!(
                    "{server} is not issued by a CA in {}: put the collector's CA certificate in that file",
                    self.ca()
                ),
                C::BadSignature => format!(
                    "{server} does not verify against the CA of its name in {}: a CA of the same name but another key (was the CA re-created?); put the collector's current CA certificate in that file",
                    self.ca()
                ),
                C::Expired | C::ExpiredContext { .. } => format!(
                    "{server} has expired: its operator must renew it (nothing in this gateway's files is at fault)"
                ),
                C::NotValidYet | C::NotValidYetContext { .. } => format!(
                    "{server} is not valid yet: check this machine's clock, or the collector's certificate dates"
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                    "{server} does not name `{host}`: write upstream.url with a name the certificate lists, or re-issue it with that name"
                ),
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => format!(
                    "{server} is not for TLS servers (its extended key usage): re-issue it with serverAuth"
                ),
                C::Other(o) if is_v1(o) => format!(
                    "{server} is an X.509 v1 certificate: its operator must re-issue it as v3 (with extensions)"
                ),
                other => format!(
                    "{server} was refused ({other:?}); {} is the CA it is checked against",
                    self.ca()
                ),
            },
            E::AlertReceived(alert) => {
                let client = self.client();
                match alert {
                    A::CertificateExpired => format!(
                        "the collector refused {client}: expired or not yet valid; renew it{device_hint}"
                    ),
                    A::UnknownCA => format!(
                        "the collector does not trust the issuer of {client}: have it issued by the collector's client CA{device_hint}"
                    ),
                    A::DecryptError => format!(
                        "the collector could not verify a signature of {client}: its issuer is not the collector's client CA but one of the same name (was the CA re-created?), or {} does not belong to it{device_hint}",
                        self.key()
                    ),
                    A::UnsupportedCertificate => format!(
                        "the collector refused {client}: not for TLS clients (its extended key usage); re-issue it with clientAuth{device_hint}"
                    ),
                    A::BadCertificate | A::CertificateUnknown | A::AccessDenied => {
                        format!("the collector refused {client} ({alert:?}){device_hint}")
                    }
                    other => format!("the collector ended the handshake ({other:?})"),
                }
            }
            other => other.to_string(),
        }
    }
}

fn is_v1(other: &rustls::OtherError) -> bool {
    matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::UnsupportedCertVersion)
    )
}

/// Checks a configured client certificate before any connection: it must
/// be X.509 v3, within its validity and usable for TLS clients. Whether it
/// chains to the collector's CA only the collector can tell.
fn check_client_cert(cert: &CertificateDer<'_>, file: &Path) -> Result<(), TlsError> {
    let at = |problem: String| TlsError {
        file: format!("upstream.cert_file ({})", file.display()),
        problem,
    };
    let ee = match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee,
        Err(webpki::Error::UnsupportedCertVersion) => {
            return Err(at(
                "an X.509 v1 certificate (no extensions), which TLS does not accept: \
                 re-issue it as v3 with extensions (e.g. `openssl x509 -req -extfile` with \
                 `extendedKeyUsage=clientAuth`), or omit cert_file and key_file to use the \
                 device-key identity"
                    .into(),
            ));
        }
        Err(e) => return Err(at(format!("not a certificate TLS can use ({e:?})"))),
    };
    // No trust anchors: the checks that do not depend on the issuer
    // (validity, extended key usage) run first and say what is wrong;
    // the expected outcome is only "unknown issuer".
    let now = rustls_pki_types::UnixTime::now();
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[],
        &[],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    ) {
        Err(webpki::Error::CertExpired { .. }) | Err(webpki::Error::InvalidCertValidity) => Err(at(
            "has expired: renew it, or omit cert_file and key_file to use the device-key identity"
                .into(),
        )),
        Err(webpki::Error::CertNotValidYet { .. }) => Err(at(
            "is not valid yet: check this machine's clock, or the certificate's dates".into(),
        )),
        Err(webpki::Error::RequiredEkuNotFoundContext(_)) => Err(at(
            "is not for TLS clients (its extended key usage lacks clientAuth): re-issue it with clientAuth, or omit cert_file and key_file to use the device-key identity".into(),
        )),
        _ => Ok(()),
    }
}

/// The gateway's client configuration: trusts only `files.ca_file`;
/// presents `files.cert_file`/`key_file` when configured, else the
/// certificate of `device` (see [`crate::identity::device_certificate`]),
/// whose handshake signatures the device key makes (on its token, for a
/// token key). Errors name the file at fault and what to do.
pub fn upstream_client_config(
    files: &UpstreamFiles,
    device: Option<Arc<dyn crate::identity::DeviceSigner>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(&files.ca_file).map_err(|e| TlsError {
        file: files.ca(),
        problem: e.problem,
    })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&files.ca_file, e))?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file, device) {
        (Some(cert_file), Some(key_file), _) => {
            let chain = load_certs(cert_file).map_err(|e| TlsError {
                file: format!("upstream.cert_file ({})", cert_file.display()),
                problem: e.problem,
            })?;
            check_client_cert(&chain[0], cert_file)?;
            let key = load_key(key_file).map_err(|e| TlsError {
                file: format!("upstream.key_file ({})", key_file.display()),
                problem: e.problem,
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError {
                        file: files.key(),
                        problem: format!(
                            "is not the private key of {}: configure the key the certificate was issued for",
                            files.client()
                        ),
                    },
                    other => TlsError {
                        file: files.client(),
                        problem: other.to_string(),
                    },
                })?
        }
        (_, _, Some(device)) => {
            let device_error = |problem: String| TlsError {
                file: format!("device key {}", device.location()),
                problem,
            };
            let cert = crate::identity::device_certificate(device.as_ref())
                .map_err(|e| device_error(format!("cannot make its TLS certificate: {e}")))?;
            let signing = Arc::new(crate::identity::DeviceTlsKey::new(device.clone()));
            let certified = rustls::sign::CertifiedKey::new(vec![cert.der], signing);
            certified
                .keys_match()
                .map_err(|e| device_error(format!("its TLS certificate does not match it: {e}")))?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                certified,
            )))
        }
        _ => {
            return Err(TlsError {
                file: "upstream.cert_file".into(),
                problem: "no client certificate: set cert_file and key_file, or run the gateway with its device key".into(),
            });
        }
    };
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
