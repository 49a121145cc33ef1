//! Delivers the outbox to the collector, oldest report first.
//!
//! Guarantees: a report leaves the outbox only after the collector
//! acknowledged exactly that report (the acknowledgement carries its hash).
//! Reports are sent one at a time in close order, so the collector sees the
//! chain in order. The acknowledgement also carries the collector's figure
//! (reward, proof score, reward lines), kept next to the gateway's own
//! estimate. A report sent again after a crash or a lost
//! acknowledgement is recognised by the collector as a duplicate and counted
//! once. Failures back off exponentially (with jitter) up to
//! `retry_max_ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::Rng;
use rustls_pki_types::ServerName;
use sha2::Digest as _;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsConnector;

use super::tls::{TlsError, UpstreamFiles, upstream_client_config};
use crate::config::{CollectorUrl, UpstreamConfig};
use crate::identity::DeviceSigner;
use depin_protocol::time::now_ms;

/// Largest answer read from a collector: an acknowledgement with its
/// reward lines, or a batch of challenges.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

use crate::epochs::EpochStore;
use crate::service::Service;
use depin_protocol::ack::Acknowledgement;

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot reach the collector: {0}")]
    Connect(String),
    #[error("TLS with the collector failed: {0}")]
    Tls(String),
    #[error("the collector answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the collector acknowledged something else: {0}")]
    BadAck(String),
    #[error("epoch store: {0}")]
    Store(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
}

/// An HTTPS client with this gateway's client certificate, for one
/// collector or several (`[upstream] url` as a list).
///
/// Failover: a request goes to the collector that answered last (the first
/// URL at start); on a connection failure, a timeout or a 5xx answer it is
/// tried on the next URL, in list order, until one answers or every URL
/// was tried once. The request bytes are the same on every URL: a report
/// is signed once, at epoch close, and only ever re-sent, so replicas
/// sharing a store count it once.
#[derive(Clone)]
pub struct CollectorClient {
    tls: TlsConnector,
    urls: Arc<[CollectorUrl]>,
    /// Index in `urls` of the collector that answered last.
    current: Arc<AtomicUsize>,
    files: Arc<UpstreamFiles>,
    timeout: Duration,
}

impl CollectorClient {
    /// Builds the client from configured certificate files (`cert_file`
    /// and `key_file` must be set); fails on unusable files.
    pub fn new(config: &UpstreamConfig) -> Result<Self, TlsError> {
        Self::with_identity(config, None)
    }

    /// Builds the client; without `cert_file`/`key_file` it presents the
    /// certificate of `device`. Fails on unusable files, naming them.
    pub fn with_identity(
        config: &UpstreamConfig,
        device: Option<Arc<dyn DeviceSigner>>,
    ) -> Result<Self, TlsError> {
        let urls = config.url.parse().map_err(|problem| TlsError {
            file: "upstream.url".into(),
            problem,
        })?;
        let files = UpstreamFiles {
            ca_file: config.ca_file.clone(),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
        };
        let tls = upstream_client_config(&files, device)?;
        Ok(Self {
            tls: TlsConnector::from(tls),
            urls: urls.into(),
            current: Arc::new(AtomicUsize::new(0)),
            files: Arc::new(files),
            timeout: Duration::from_millis(config.request_timeout_ms),
        })
    }

    /// The same client with a longer request budget (for long polls).
    pub fn with_extra_timeout(&self, extra: Duration) -> Self {
        Self {
            timeout: self.timeout + extra,
            ..self.clone()
        }
    }

    /// Sends one request; returns the status and body. Fails over as
    /// described on [`CollectorClient`]; the error (or 5xx answer) of the
    /// last URL tried is returned when none answered.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), DeliveryError> {
        let first = self.current.load(Ordering::Relaxed) % self.urls.len();
        let mut last = None;
        for step in 0..self.urls.len() {
            let i = (first + step) % self.urls.len();
            let url = &self.urls[i];
            let ms = self.timeout.as_millis() as u64;
            let outcome = tokio::time::timeout(
                self.timeout,
                self.request_to(url, method, path, body.clone()),
            )
            .await
            .unwrap_or(Err(DeliveryError::Timeout(ms)));
            match outcome {
                Ok((status, body)) if status < 500 => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((status, body));
                }
                other => {
                    if self.urls.len() > 1 {
                        let problem = match &other {
                            Ok((status, _)) => format!("answered {status}"),
                            Err(e) => e.to_string(),
                        };
                        tracing::warn!(collector = %format!("{}:{}", url.host, url.port), %problem, "collector unavailable; trying the next one");
                    }
                    last = Some(other);
                }
            }
        }
        last.expect("at least one URL")
    }

    async fn request_to(
        &self,
        url: &CollectorUrl,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), DeliveryError> {
        // A TLS failure can surface at the handshake or, with TLS 1.3 (the
        // server judges the client certificate after the client finished),
        // at the first read: either way it is explained.
        let connect = |e: &(dyn std::error::Error + 'static)| match rustls_error(e) {
            Some(tls) => DeliveryError::Tls(self.files.explain(tls, &url.host)),
            None => DeliveryError::Connect(e.to_string()),
        };
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| connect(&e))?;
        let name = ServerName::try_from(url.host.clone()).map_err(|e| connect(&e))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| connect(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect(&e))?;
        let conn = tokio::spawn(conn);
        let host = format!("{}:{}", url.host, url.port);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect(&e))?;
        let resp = send.send_request(req).await.map_err(|e| connect(&e))?;
        let status = resp.status().as_u16();
        // Bounded: the collector's answer is read into memory.
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| DeliveryError::Connect(format!("reading the collector's answer: {e}")))?
            .to_bytes();
        drop(send);
        conn.abort();
        Ok((status, body))
    }
}

/// The rustls error somewhere in `e`'s chain of causes (I/O errors wrap
/// theirs without exposing it as a source).
fn rustls_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        e = inner.or_else(|| e.source())?;
    }
}

/// Delivers the outbox to the collector, as a [`Service`]: exactly once
/// per report (the collector acknowledges), retrying with backoff.
pub struct ReportSender {
    pub store: Arc<EpochStore>,
    pub client: CollectorClient,
    pub config: UpstreamConfig,
    /// Notified when an epoch closes, so its report goes out at once.
    pub wake: Arc<Notify>,
}

impl Service for ReportSender {
    fn name(&self) -> &'static str {
        "report-sender"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(send_reports(
            self.store,
            self.client,
            self.config,
            self.wake,
            shutdown,
        ))
    }
}

/// Sends the outbox until `stop`. `wake` is notified when an epoch closes.
async fn send_reports(
    store: Arc<EpochStore>,
    client: CollectorClient,
    config: UpstreamConfig,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = config.retry_min_ms;
    loop {
        let delivered = deliver_pending(&store, &client).await;
        crate::metrics::global().record_delivery(match &delivered {
            Ok(()) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
        let wait = match delivered {
            Ok(()) => {
                delay = config.retry_min_ms;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay, "report delivery failed");
                let jittered = delay / 2 + rand::thread_rng().gen_range(0..=delay / 2);
                delay = (delay * 2).min(config.retry_max_ms);
                Some(Duration::from_millis(jittered))
            }
        };
        tokio::select! {
            _ = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => wake.notified().await,
                }
            } => {}
            _ = stop.changed() => return,
        }
    }
}

/// Delivers every report in the outbox, oldest first.
async fn deliver_pending(
    store: &Arc<EpochStore>,
    client: &CollectorClient,
) -> Result<(), DeliveryError> {
    loop {
        let s = store.clone();
        let (next, depth) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::epochs::EpochStoreError>((s.outbox_first()?, s.outbox_len()?))
        })
        .await
        .map_err(|e| DeliveryError::Store(e.to_string()))?
        .map_err(|e| DeliveryError::Store(e.to_string()))?;
        crate::metrics::global().set_outbox_depth(depth);
        let Some(entry) = next else {
            return Ok(());
        };
        let epoch = entry.epoch;
        let (status, body) = client
            .request("POST", "/v1/reports", entry.bytes.clone())
            .await?;
        if status != 200 {
            return Err(DeliveryError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let hash = sha2::Sha256::digest(&entry.bytes).into();
        let ack = Acknowledgement::decode_for(&body, epoch, &hash)
            .map_err(|e| DeliveryError::BadAck(e.to_string()))?;
        // A collector that sends no figure (or an unreadable one) still
        // acknowledged the report.
        let figure = ack.figure;
        let collector_reward_micro = figure.as_ref().map(|f| f.reward_micro.to_string());
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.acknowledge(&entry, now_ms(), figure.as_ref()))
            .await
            .map_err(|e| DeliveryError::Store(e.to_string()))?
            .map_err(|e| DeliveryError::Store(e.to_string()))?;
        tracing::info!(
            epoch,
            status = %ack.status,
            collector_reward_micro,
            "report delivered"
        );
    }
}
