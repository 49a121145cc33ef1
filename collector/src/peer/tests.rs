use std::sync::Arc;

use depin_gateway::identity::DeviceKey;
use rcgen::{CertificateParams, KeyPair};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn device_key_certificate_names_its_gateway() {
    let key = DeviceKey::generate();
    let cert = key.certificate().unwrap();
    assert_eq!(device_key_id(&cert.der), Some(key.gateway_id()));
}

#[test]
fn other_certificates_have_no_device_key_id() {
    // Self-signed over an ECDSA key.
    let ecdsa = KeyPair::generate().unwrap();
    let c = CertificateParams::new(vec!["g.test".to_string()])
        .unwrap()
        .self_signed(&ecdsa)
        .unwrap();
    assert_eq!(device_key_id(c.der()), None);
    // Issued by a CA, even over an Ed25519 key.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let c = CertificateParams::new(vec!["g.test".to_string()])
        .unwrap()
        .signed_by(&ed, &issuer)
        .unwrap();
    assert_eq!(device_key_id(c.der()), None);
    // Expired.
    let mut params = CertificateParams::default();
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let c = params.self_signed(&ed).unwrap();
    assert_eq!(device_key_id(c.der()), None);
    // A device-key certificate whose self-signature was altered.
    let mut der = DeviceKey::generate().certificate().unwrap().der.to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    assert_eq!(device_key_id(&der), None);
    assert_eq!(device_key_id(b"not a certificate"), None);
}

/// A client that presents `cert` but signs the handshake with `signer`.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

struct Server {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("s.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("s.key"), key.serialize_pem()).unwrap();
    Server {
        dir,
        ca: cert.der().clone(),
    }
}

/// Runs one handshake against a collector configuration accepting
/// device-key certificates only; returns the device key id the server
/// saw, or the handshake error.
async fn handshake(server: &Server, client: Arc<CertifiedKey>) -> Result<Option<String>, String> {
    let config = server_config(
        None,
        &server.dir.path().join("s.pem"),
        &server.dir.path().join("s.key"),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let id = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| device_key_id(c));
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(id)
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.ca.clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_cert_resolver(Arc::new(Presents(client)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(client_config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    if let Ok(mut tls) = connected {
        // TLS 1.3: the server judges the client's certificate after the
        // client thinks it is done; a byte makes the outcome visible.
        let _ = tls.write_all(b"x").await;
        let _ = tls.flush().await;
    }
    accept.await.unwrap()
}

fn certified(cert: CertificateDer<'static>, key: &DeviceKey) -> Arc<CertifiedKey> {
    let signer = rustls::crypto::ring::sign::any_eddsa_type(&key.pkcs8_der()).unwrap();
    Arc::new(CertifiedKey::new(vec![cert], signer))
}

#[tokio::test]
async fn device_key_certificate_is_accepted_without_a_client_ca() {
    let server = server();
    let key = DeviceKey::generate();
    let cert = key.certificate().unwrap();
    let seen = handshake(&server, certified(cert.der, &key)).await.unwrap();
    assert_eq!(seen, Some(key.gateway_id()));
}

#[tokio::test]
async fn device_key_certificate_without_its_private_key_is_refused() {
    let server = server();
    let victim = DeviceKey::generate();
    let thief = DeviceKey::generate();
    let cert = victim.certificate().unwrap();
    let e = handshake(&server, certified(cert.der, &thief))
        .await
        .unwrap_err();
    assert!(e.contains("ignature") || e.contains("Decrypt"), "{e}");
}

#[tokio::test]
async fn certificate_that_is_neither_issued_nor_a_device_key_is_refused() {
    let server = server();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["g.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        key.serialize_der().into(),
    ))
    .unwrap();
    let e = handshake(
        &server,
        Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)),
    )
    .await
    .unwrap_err();
    assert!(!e.is_empty());
}
