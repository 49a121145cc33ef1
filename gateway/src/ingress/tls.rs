//! TLS for the public HTTP ingress (rustls): HTTP/1.1 and HTTP/2 chosen by
//! ALPN, certificate and key from PEM files, re-read when the files change.
//!
//! Rotation never drops a connection: each handshake asks [`RotatingCert`]
//! for the current key, so established connections keep the key they
//! started with and new ones get the new key. A rotated pair that does not
//! load (half-written files, a key that does not match the certificate) is
//! logged and the previous pair stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::http::{HttpIngress, accept_failed};
use crate::config::TlsConfig;
use crate::service::{Service, stopped};

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {}: {problem}", path.display())]
pub struct TlsError {
    /// The file that is wrong.
    pub path: PathBuf,
    pub problem: String,
}

/// The server's certificate and key, replaceable while serving.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl RotatingCert {
    /// The pair new handshakes use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("certificate lock").clone()
    }

    fn replace(&self, key: CertifiedKey) {
        *self.current.write().expect("certificate lock") = Arc::new(key);
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key and checks that they belong
/// together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let fail = |path: &Path, problem: String| TlsError {
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail(cert, "holds no PEM certificate".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| fail(key, format!("not a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        fail(
            key,
            format!("does not fit the certificate {}: {e}", cert.display()),
        )
    })
}

/// The TLS side of the ingress: the acceptor and the rotating pair behind it.
pub struct TlsIngress {
    /// Accepts TLS connections with the current pair, offering `h2` and
    /// `http/1.1`.
    pub acceptor: TlsAcceptor,
    /// The pair in use.
    pub cert: Arc<RotatingCert>,
    config: TlsConfig,
}

impl TlsIngress {
    /// Loads the pair named by `config`; fails if it does not load.
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let pair = load_pair(&config.cert, &config.key)?;
        let cert = Arc::new(RotatingCert {
            current: RwLock::new(Arc::new(pair)),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                path: config.cert.clone(),
                problem: format!("{e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            cert,
            config: config.clone(),
        })
    }

    /// Re-reads the pair whenever either file's modification time changes,
    /// until `stop` turns true.
    pub async fn watch_files(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stamps = |c: &TlsConfig| (stamp(&c.cert), stamp(&c.key));
        let mut seen: (Option<SystemTime>, Option<SystemTime>) = stamps(&self.config);
        let mut interval = tokio::time::interval(Duration::from_millis(self.config.poll_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            let now = stamps(&self.config);
            if now == seen {
                continue;
            }
            match load_pair(&self.config.cert, &self.config.key) {
                Ok(pair) => {
                    self.cert.replace(pair);
                    seen = now;
                    tracing::info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                }
                // Keep `seen` so a half-written pair is retried next tick.
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the previous one")
                }
            }
        }
    }
}

impl HttpIngress {
    /// Like [`HttpIngress::serve`], over TLS: each connection is
    /// handshaken, then served as HTTP/2 or HTTP/1.1.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<TlsIngress>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let graceful = GracefulShutdown::new();
        let (drain_tx, drain_rx) = watch::channel(false);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(admitted) = self.admit(peer) else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let this = self.clone();
                        let acceptor = tls.acceptor.clone();
                        let watcher = graceful.watcher();
                        let mut drain = drain_rx.clone();
                        tokio::spawn(async move {
                            let handshake = tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            );
                            let stream = tokio::select! {
                                r = handshake => match r {
                                    Ok(Ok(s)) => s,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                },
                                _ = stopped(&mut drain) => return,
                            };
                            let builder = this.auto_builder();
                            let conn = builder.serve_connection(TokioIo::new(stream), this.clone().service(peer));
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            drop(admitted);
                        });
                    }
                    Err(e) => accept_failed(e).await,
                },
                _ = stopped(&mut shutdown) => break,
            }
        }
        drop(listener);
        let _ = drain_tx.send(true);
        self.drain(graceful).await;
    }

    fn auto_builder(&self) -> auto::Builder<TokioExecutor> {
        let limits = &self.limits;
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes.max(8192) as u32)
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .keep_alive_interval(Duration::from_millis(limits.h2_keep_alive_interval_ms))
            .keep_alive_timeout(Duration::from_millis(limits.h2_keep_alive_timeout_ms));
        b
    }
}

/// Re-reads the certificate and key when they change, as a [`Service`].
pub struct CertWatcher(pub Arc<TlsIngress>);

impl Service for CertWatcher {
    fn name(&self) -> &'static str {
        "tls-cert-watcher"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.0.watch_files(shutdown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a");
        assert_eq!(load_pair(&c, &k).unwrap().cert.len(), 1);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        let e = load_pair(&c, &other_key).unwrap_err();
        assert_eq!(e.path, other_key);
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a");
        let missing = dir.path().join("missing.crt");
        assert_eq!(load_pair(&missing, &k).unwrap_err().path, missing);
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(load_pair(&c, &empty).unwrap_err().path, empty);
    }
}
