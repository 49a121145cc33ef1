//! Certificate problems in plain words, naming the file at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ed25519_dalek::Signer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::sender::{CollectorClient, DeliveryError};
use super::tls::server_config;
use crate::config::UpstreamConfig;
use crate::identity::DeviceKey;

/// A CA in `dir`: its certificate file and issuer.
struct Ca {
    file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let file = dir.join(format!("{name}.pem"));
    std::fs::write(&file, cert.pem()).unwrap();
    Ca {
        file,
        issuer: Issuer::new(params, key),
    }
}

/// Writes a certificate issued by `ca` with `params` and its key; returns
/// (cert file, key file).
fn issue(dir: &Path, name: &str, ca: &Ca, params: CertificateParams) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let cert_file = dir.join(format!("{name}.pem"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

fn upstream(port: u16, ca_file: &Path, files: Option<(&Path, &Path)>) -> UpstreamConfig {
    UpstreamConfig {
        url: format!("https://127.0.0.1:{port}").into(),
        ca_file: ca_file.to_path_buf(),
        cert_file: files.map(|f| f.0.to_path_buf()),
        key_file: files.map(|f| f.1.to_path_buf()),
        retry_min_ms: 50,
        retry_max_ms: 400,
        request_timeout_ms: 5000,
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// An X.509 v1 certificate (no version field, no extensions), as
/// `openssl x509 -req` makes without an extension file: Ed25519,
/// self-signed.
fn v1_certificate(key: &DeviceKey) -> Vec<u8> {
    let alg = der(0x30, &der(0x06, &[0x2b, 0x65, 0x70]));
    let cn = [der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"gw")].concat();
    let name = der(0x30, &der(0x31, &der(0x30, &cn)));
    let validity = der(
        0x30,
        &[der(0x17, b"200101000000Z"), der(0x17, b"491231000000Z")].concat(),
    );
    let mut public = vec![0u8];
    public.extend_from_slice(key.verifying_key().as_bytes());
    let spki = der(0x30, &[alg.clone(), der(0x03, &public)].concat());
    let tbs = der(
        0x30,
        &[
            der(0x02, &[7]),
            alg.clone(),
            name.clone(),
            validity,
            name,
            spki,
        ]
        .concat(),
    );
    let mut signature = vec![0u8];
    signature.extend_from_slice(&key.signing_key().sign(&tbs).to_bytes());
    der(0x30, &[tbs, alg, der(0x03, &signature)].concat())
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn start_error(config: &UpstreamConfig) -> String {
    match CollectorClient::with_identity(config, None) {
        Ok(_) => panic!("the client configuration was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn v1_client_certificate_is_explained_on_the_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path(), "ca");
    let key = DeviceKey::generate();
    let cert_file = dir.path().join("v1.pem");
    let key_file = dir.path().join("v1.key");
    std::fs::write(&cert_file, pem("CERTIFICATE", &v1_certificate(&key))).unwrap();
    std::fs::write(
        &key_file,
        pem("PRIVATE KEY", key.pkcs8_der().secret_pkcs8_der()),
    )
    .unwrap();
    let e = start_error(&upstream(1, &ca.file, Some((&cert_file, &key_file))));
    assert!(e.starts_with("upstream.cert_file ("), "{e}");
    assert!(e.contains("v1.pem"), "{e}");
    assert!(
        e.contains("X.509 v1") && e.contains("omit cert_file"),
        "{e}"
    );
    assert!(!e.contains("v1.key") && !e.contains("OtherError"), "{e}");
}

#[test]
fn expired_client_certificate_is_explained_on_the_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path(), "ca");
    let mut params = CertificateParams::new(vec!["gw.test".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let (cert, key) = issue(dir.path(), "old", &ca, params);
    let e = start_error(&upstream(1, &ca.file, Some((&cert, &key))));
    assert!(e.starts_with("upstream.cert_file ("), "{e}");
    assert!(e.contains("old.pem") && e.contains("expired"), "{e}");
}

#[test]
fn key_not_matching_the_certificate_is_explained_on_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path(), "ca");
    let params = || CertificateParams::new(vec!["gw.test".to_string()]).unwrap();
    let (cert, _) = issue(dir.path(), "a", &ca, params());
    let (_, other_key) = issue(dir.path(), "b", &ca, params());
    let e = start_error(&upstream(1, &ca.file, Some((&cert, &other_key))));
    assert!(e.starts_with("upstream.key_file ("), "{e}");
    assert!(e.contains("b.key") && e.contains("a.pem"), "{e}");
    assert!(e.contains("not the private key"), "{e}");
}

/// A TLS server on loopback requiring client certificates from
/// `client_ca`, serving `cert`/`key`; answers every request with 200.
async fn server(client_ca: &Path, cert: &Path, key: &Path) -> u16 {
    server_answering(client_ca, cert, key, 200).await.0
}

/// [`server`], answering every request with `status`; the counter counts
/// the requests.
async fn server_answering(
    client_ca: &Path,
    cert: &Path,
    key: &Path,
    status: u16,
) -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let config = server_config(client_ca, cert, key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let service = hyper::service::service_fn(move |_req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        async move {
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(format!("answered {status}")),
                            ));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    (port, hits)
}

async fn request_error(config: &UpstreamConfig) -> DeliveryError {
    let client =
        CollectorClient::with_identity(config, Some(Arc::new(DeviceKey::generate()))).unwrap();
    client
        .request("GET", "/", Vec::new())
        .await
        .expect_err("the handshake must fail")
}

#[tokio::test]
async fn collector_certificate_from_another_ca_is_explained_on_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(dir.path(), "ours");
    let theirs = ca(dir.path(), "theirs");
    let (server_cert, server_key) = issue(
        dir.path(),
        "server",
        &theirs,
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap(),
    );
    let (cert, key) = issue(
        dir.path(),
        "gw",
        &theirs,
        CertificateParams::new(vec!["gw.test".to_string()]).unwrap(),
    );
    let port = server(&theirs.file, &server_cert, &server_key).await;
    let e = request_error(&upstream(port, &ours.file, Some((&cert, &key)))).await;
    let text = e.to_string();
    assert!(matches!(e, DeliveryError::Tls(_)), "{text}");
    assert!(
        text.contains("upstream.ca_file (") && text.contains("ours.pem"),
        "{text}"
    );
    assert!(text.contains("not issued by a CA"), "{text}");
}

#[tokio::test]
async fn client_certificate_from_a_ca_the_collector_does_not_trust_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let collector_ca = ca(dir.path(), "collector-ca");
    let other = ca(dir.path(), "other");
    let (server_cert, server_key) = issue(
        dir.path(),
        "server",
        &collector_ca,
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap(),
    );
    let (cert, key) = issue(
        dir.path(),
        "gw",
        &other,
        CertificateParams::new(vec!["gw.test".to_string()]).unwrap(),
    );
    let port = server(&collector_ca.file, &server_cert, &server_key).await;
    let e = request_error(&upstream(port, &collector_ca.file, Some((&cert, &key)))).await;
    let text = e.to_string();
    assert!(matches!(e, DeliveryError::Tls(_)), "{text}");
    assert!(
        text.contains("upstream.cert_file (") && text.contains("gw.pem"),
        "{text}"
    );
    assert!(text.contains("does not trust the issuer"), "{text}");
    // The same server with a good certificate answers: the failure above is
    // the certificate's, not the setup's.
    let (good, good_key) = issue(
        dir.path(),
        "good",
        &collector_ca,
        CertificateParams::new(vec!["gw.test".to_string()]).unwrap(),
    );
    let client = CollectorClient::new(&upstream(
        port,
        &collector_ca.file,
        Some((&good, &good_key)),
    ))
    .unwrap();
    assert_eq!(client.request("GET", "/", Vec::new()).await.unwrap().0, 200);
}

#[tokio::test]
async fn requests_fail_over_on_5xx_and_refused_connections_and_stay_on_the_one_that_answered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path(), "ca");
    let (server_cert, server_key) = issue(
        dir.path(),
        "server",
        &ca,
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap(),
    );
    let (cert, key) = issue(
        dir.path(),
        "gw",
        &ca,
        CertificateParams::new(vec!["gw.test".to_string()]).unwrap(),
    );
    let (failing, failed_hits) = server_answering(&ca.file, &server_cert, &server_key, 503).await;
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = refusing.local_addr().unwrap().port();
    drop(refusing);
    let (good, good_hits) = server_answering(&ca.file, &server_cert, &server_key, 200).await;
    let mut config = upstream(1, &ca.file, Some((&cert, &key)));
    config.url = crate::config::CollectorUrls::Several(
        [failing, closed, good]
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect(),
    );
    let client = CollectorClient::new(&config).unwrap();
    let (status, body) = client.request("GET", "/", Vec::new()).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"answered 200"[..]));
    // The next request goes straight to the one that answered.
    assert_eq!(client.request("GET", "/", Vec::new()).await.unwrap().0, 200);
    assert_eq!(failed_hits.load(Ordering::Relaxed), 1);
    assert_eq!(good_hits.load(Ordering::Relaxed), 2);
    // A 4xx is an answer: no failover.
    let (bad, _) = server_answering(&ca.file, &server_cert, &server_key, 409).await;
    config.url = crate::config::CollectorUrls::Several(vec![
        format!("https://127.0.0.1:{bad}"),
        format!("https://127.0.0.1:{good}"),
    ]);
    let client = CollectorClient::new(&config).unwrap();
    assert_eq!(client.request("GET", "/", Vec::new()).await.unwrap().0, 409);
    // Every one failing: the last answer is returned.
    config.url = crate::config::CollectorUrls::Several(vec![
        format!("https://127.0.0.1:{closed}"),
        format!("https://127.0.0.1:{failing}"),
    ]);
    let client = CollectorClient::new(&config).unwrap();
    assert_eq!(client.request("GET", "/", Vec::new()).await.unwrap().0, 503);
}
