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

use super::tls::{TlsError, client_config};
use crate::config::{CollectorUrl, UpstreamConfig};
use depin_protocol::time::now_ms;

use crate::epochs::{CollectorFigure, EpochStore};
use crate::service::Service;

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot reach the collector: {0}")]
    Connect(String),
    #[error("the collector answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the collector acknowledged something else: {0}")]
    BadAck(String),
    #[error("epoch store: {0}")]
    Store(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
}

/// An HTTPS client with this gateway's client certificate.
#[derive(Clone)]
pub struct CollectorClient {
    tls: TlsConnector,
    url: CollectorUrl,
    timeout: Duration,
}

impl CollectorClient {
    /// Builds the client; fails on unreadable certificate files.
    pub fn new(config: &UpstreamConfig) -> Result<Self, TlsError> {
        let url = CollectorUrl::parse(&config.url).map_err(|problem| TlsError {
            file: "upstream.url".into(),
            problem,
        })?;
        let tls = client_config(&config.ca_file, &config.cert_file, &config.key_file)?;
        Ok(Self {
            tls: TlsConnector::from(tls),
            url,
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

    /// Sends one request; returns the status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), DeliveryError> {
        let ms = self.timeout.as_millis() as u64;
        tokio::time::timeout(self.timeout, self.request_inner(method, path, body))
            .await
            .map_err(|_| DeliveryError::Timeout(ms))?
    }

    async fn request_inner(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), DeliveryError> {
        let connect = |e: &dyn std::fmt::Display| DeliveryError::Connect(e.to_string());
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| connect(&e))?;
        let name = ServerName::try_from(self.url.host.clone()).map_err(|e| connect(&e))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| connect(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect(&e))?;
        let conn = tokio::spawn(conn);
        let host = format!("{}:{}", self.url.host, self.url.port);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect(&e))?;
        let resp = send.send_request(req).await.map_err(|e| connect(&e))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(&e))?
            .to_bytes();
        drop(send);
        conn.abort();
        Ok((status, body))
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
        let hash = hex::encode(sha2::Sha256::digest(&entry.bytes));
        let (status, body) = client
            .request("POST", "/v1/reports", entry.bytes.clone())
            .await?;
        if status != 200 {
            return Err(DeliveryError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let ack: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| DeliveryError::BadAck(format!("not JSON: {e}")))?;
        if ack["hash"].as_str() != Some(hash.as_str()) || ack["epoch"].as_u64() != Some(epoch) {
            return Err(DeliveryError::BadAck(ack.to_string()));
        }
        // A collector that sends no figure (or an unreadable one) still
        // acknowledged the report.
        let figure: Option<CollectorFigure> = serde_json::from_value(ack["decision"].clone()).ok();
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.acknowledge(&entry, now_ms(), figure.as_ref()))
            .await
            .map_err(|e| DeliveryError::Store(e.to_string()))?
            .map_err(|e| DeliveryError::Store(e.to_string()))?;
        tracing::info!(
            epoch,
            status = ack["status"].as_str().unwrap_or("?"),
            collector_reward_micro = ack["decision"]["reward_micro"].as_str().unwrap_or("?"),
            "report delivered"
        );
    }
}
