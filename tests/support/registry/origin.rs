//! A small HTTP origin for the storage-cache and outbound tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::read_head;

/// A minimal HTTP/1.1 origin on a loopback port: answers `GET <path>` with
/// the body registered for it (404 otherwise), after an optional delay,
/// and counts the requests per path. Stops when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    /// The PEM certificate to trust, for an origin started with
    /// [`Origin::start_tls`].
    pub ca_pem: Option<String>,
    scheme: &'static str,
    bodies: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    authorized: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// A plain-HTTP origin.
    pub async fn start(delay: Duration) -> Self {
        Self::start_with(delay, None).await
    }

    /// An HTTPS origin (rustls) with a fresh self-signed certificate for
    /// 127.0.0.1, generated here; trust [`Origin::ca_pem`] to reach it.
    pub async fn start_tls(delay: Duration) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("generate a test certificate");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server TLS config");
        let mut origin = Self::start_with(
            delay,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await;
        origin.ca_pem = Some(certified.cert.pem());
        origin
    }

    async fn start_with(delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let bodies: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let redirects: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let authorized: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let (b, r, h, a, t) = (
            bodies.clone(),
            redirects.clone(),
            hits.clone(),
            authorized.clone(),
            total.clone(),
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let served = Served {
                    bodies: b.clone(),
                    redirects: r.clone(),
                    hits: h.clone(),
                    authorized: a.clone(),
                    total: t.clone(),
                    delay,
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                served.answer_one(stream).await;
                            }
                        }
                        None => served.answer_one(stream).await,
                    }
                });
            }
        });
        Self {
            addr,
            ca_pem: None,
            scheme,
            bodies,
            redirects,
            hits,
            authorized,
            total,
            task,
        }
    }

    /// `http://<addr>` or `https://<addr>`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Serves `body` at `path`.
    pub fn serve(&self, path: &str, body: Vec<u8>) {
        self.bodies.lock().unwrap().insert(path.to_string(), body);
    }

    /// Answers `path` with `307 Temporary Redirect` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.redirects
            .lock()
            .unwrap()
            .insert(path.to_string(), location.to_string());
    }

    /// Requests for `path` that carried an `authorization` header.
    pub fn authorized_hits(&self, path: &str) -> usize {
        self.authorized
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Served {
    bodies: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    authorized: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    delay: Duration,
}

impl Served {
    /// One request per connection: read the head, answer, close.
    async fn answer_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        mut stream: S,
    ) {
        let Some(head) = read_head(&mut stream).await else {
            return;
        };
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        self.total.fetch_add(1, Ordering::SeqCst);
        *self.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        if head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        {
            *self
                .authorized
                .lock()
                .unwrap()
                .entry(path.clone())
                .or_default() += 1;
        }
        tokio::time::sleep(self.delay).await;
        let redirect = self.redirects.lock().unwrap().get(&path).cloned();
        let body = self.bodies.lock().unwrap().get(&path).cloned();
        let (status, body, location) = match (redirect, body) {
            (Some(to), _) => (
                "307 Temporary Redirect",
                Vec::new(),
                format!("location: {to}\r\n"),
            ),
            (None, Some(body)) => ("200 OK", body, String::new()),
            (None, None) => ("404 Not Found", b"not here".to_vec(), String::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\n{location}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }
}
