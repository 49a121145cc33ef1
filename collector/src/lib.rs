//! The reference collector (`depin-collector --config collector.toml`):
//! receives epoch reports over mutual TLS, issues and judges challenges,
//! and decides every reward line by line, trusting nothing a gateway can
//! fake (see `intake` for the checks and `docs/operators/collector.md`
//! for the threat model).
//!
//! Serves over HTTPS (client certificate required): `POST /v1/reports`
//! (the acknowledgement carries the collector's decision), `GET
//! /v1/challenges?wait_ms=N` (long poll), `POST /v1/challenges/answer`,
//! `GET /v1/gateways`, `GET /v1/gateways/{id}/epochs/{n}` (the decision:
//! reward lines with reasons), `GET /v1/rewards?epoch=N` and a Prometheus
//! `GET /metrics`. `depin-collector explain --gateway ID --epoch N` prints
//! the same decision from the store. The gateway registry is managed by
//! `depin-collector gateways …` and by the HTTP API on `[admin] listen`
//! (`admin`), plain probes are on `[server] health_listen` (`health`).

pub mod admin;
pub mod challenges;
mod cli;
pub mod config;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateways;
mod health;
pub mod intake;
pub mod peer;
pub mod polls;
pub mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use depin_protocol::report::SignedReport;
use depin_protocol::rewards::RewardPolicy;
use depin_protocol::time::now_ms;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use cli::{Cli, block_on, main, run};
pub use config::CollectorConfig;
pub use intake::{Rejection, check_report};
pub use store::{Accepted, ChainError, CollectorStore, Store};

/// Largest report body accepted.
const MAX_REPORT_BYTES: usize = 1 << 20;

/// A running collector's shared state.
pub struct Collector {
    store: Store,
    policy: RewardPolicy,
    schedule: config::ScheduleConfig,
    server: config::ServerConfig,
    /// Approved component digest -> kind.
    approved: BTreeMap<String, String>,
    /// Client certificate fingerprint -> gateway id, of `[[gateway]]`
    /// entries (certificates issued by the operator's CA).
    certs: BTreeMap<String, String>,
    enrollment: config::EnrollmentConfig,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    verifiers: challenges::Verifiers,
    /// Long polls waiting for challenges, woken when they are issued.
    pub waiting: polls::Waiting,
    proofs_passed: AtomicU64,
    proofs_failed: AtomicU64,
    proofs_expired: AtomicU64,
    connections: Arc<tokio::sync::Semaphore>,
    handshakes_timed_out: AtomicU64,
}

impl Collector {
    /// Opens the store, loads the policy and the verifier components named
    /// by `config`.
    pub async fn open(config: &CollectorConfig) -> anyhow::Result<Self> {
        let policy = match &config.policy {
            Some(p) => depin_gateway::config::load_policy(p)?,
            None => RewardPolicy::default(),
        };
        let store = Store::open(config.store.as_ref(), &config.data_dir).await?;
        gateways::seed(&store, &config.gateways).await?;
        Ok(Self {
            store,
            policy,
            schedule: config.schedule.clone(),
            server: config.server.clone(),
            approved: config
                .components
                .iter()
                .map(|c| (c.digest.clone(), c.kind.clone()))
                .collect(),
            certs: config.cert_map(),
            enrollment: config.enrollment.clone(),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: Mutex::new(BTreeMap::new()),
            verifiers: challenges::Verifiers::load(&config.components, &config.data_dir).await?,
            waiting: polls::Waiting::default(),
            proofs_passed: AtomicU64::new(0),
            proofs_failed: AtomicU64::new(0),
            proofs_expired: AtomicU64::new(0),
            connections: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            handshakes_timed_out: AtomicU64::new(0),
        })
    }

    /// Checks one report from `cert_gateway` and, when it may count,
    /// decides and stores it. A refusal of a report that is signed by the
    /// certificate's gateway is kept for `explain`.
    pub async fn receive(
        &self,
        bytes: &[u8],
        cert_gateway: &str,
    ) -> Result<(SignedReport, Accepted), Rejection> {
        let now = now_ms();
        let decider = intake::Decider {
            policy: &self.policy,
            approved: &self.approved,
        };
        let result = match check_report(bytes, cert_gateway, &self.schedule, now) {
            Ok((report, end_ms)) => self
                .store
                .accept(&report, end_ms, now, &decider)
                .await
                .map(|a| (report, a))
                .map_err(Rejection::Chain),
            Err(e) => Err(e),
        };
        match &result {
            Ok((_, Accepted::New(_))) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok((_, Accepted::Duplicate(_))) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                *self.rejected.lock().unwrap().entry(e.name()).or_default() += 1;
                let authentic = !matches!(
                    e,
                    Rejection::Malformed(_)
                        | Rejection::BadSignature(_)
                        | Rejection::WrongGateway { .. }
                        | Rejection::Chain(ChainError::Storage(_))
                );
                if authentic && let Ok(report) = SignedReport::decode(bytes) {
                    let refusal = intake::refusal_json(&report, e, now);
                    if let Err(err) = self.store.record_refusal(cert_gateway, &refusal).await {
                        tracing::error!(error = %err, "cannot keep a refusal");
                    }
                }
            }
        }
        result
    }

    async fn metrics(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP depin_collector_reports_accepted_total Reports accepted and counted.\n",
        );
        out.push_str("# TYPE depin_collector_reports_accepted_total counter\n");
        out.push_str(&format!(
            "depin_collector_reports_accepted_total {}\n",
            self.accepted.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP depin_collector_reports_duplicate_total Reports received again and not counted.\n");
        out.push_str("# TYPE depin_collector_reports_duplicate_total counter\n");
        out.push_str(&format!(
            "depin_collector_reports_duplicate_total {}\n",
            self.duplicates.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP depin_collector_reports_rejected_total Reports refused, by reason.\n");
        out.push_str("# TYPE depin_collector_reports_rejected_total counter\n");
        for (reason, n) in self.rejected.lock().unwrap().iter() {
            out.push_str(&format!(
                "depin_collector_reports_rejected_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out.push_str(
            "# HELP depin_collector_challenges_total Challenge answers judged, by verdict.\n",
        );
        out.push_str("# TYPE depin_collector_challenges_total counter\n");
        out.push_str(&format!(
            "depin_collector_challenges_total{{verdict=\"passed\"}} {}\n",
            self.proofs_passed.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "depin_collector_challenges_total{{verdict=\"failed\"}} {}\n",
            self.proofs_failed.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "depin_collector_challenges_total{{verdict=\"expired\"}} {}\n",
            self.proofs_expired.load(Ordering::Relaxed)
        ));
        let open = self.server.max_connections - self.connections.available_permits();
        out.push_str("# HELP depin_collector_connections Open client connections (bound: server.max_connections).\n");
        out.push_str("# TYPE depin_collector_connections gauge\n");
        out.push_str(&format!("depin_collector_connections {open}\n"));
        out.push_str("# HELP depin_collector_tls_handshake_timeouts_total TLS handshakes dropped after server.handshake_timeout_ms.\n");
        out.push_str("# TYPE depin_collector_tls_handshake_timeouts_total counter\n");
        out.push_str(&format!(
            "depin_collector_tls_handshake_timeouts_total {}\n",
            self.handshakes_timed_out.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP depin_collector_polls_waiting Gateways with a challenge long-poll waiting here (bound: server.max_connections).\n");
        out.push_str("# TYPE depin_collector_polls_waiting gauge\n");
        out.push_str(&format!(
            "depin_collector_polls_waiting {}\n",
            self.waiting.gateways()
        ));
        out.push_str("# HELP depin_collector_challenge_notifications 1 while challenges issued by any replica wake polls here by notification (PostgreSQL LISTEN), 0 while polls re-check the store.\n");
        out.push_str("# TYPE depin_collector_challenge_notifications gauge\n");
        out.push_str(&format!(
            "depin_collector_challenge_notifications {}\n",
            u8::from(self.waiting.is_notified())
        ));
        let gateways = self.store.gateway_ids().await.map(|g| g.len()).unwrap_or(0);
        out.push_str("# HELP depin_collector_gateways Gateways that have reported.\n");
        out.push_str("# TYPE depin_collector_gateways gauge\n");
        out.push_str(&format!("depin_collector_gateways {gateways}\n"));
        out
    }

    async fn handle(
        self: Arc<Self>,
        peer: Option<String>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let Some(gateway) = peer else {
            return text(
                StatusCode::FORBIDDEN,
                "the client certificate is not mapped to a gateway id".into(),
            );
        };
        // Looked up on every request: a revocation holds from the next
        // request on, on every replica.
        if let Err(refused) = gateways::admit(&self.store, &self.enrollment, &gateway).await {
            return text(refused.status(), refused.to_string());
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        match (method.as_str(), path.as_str()) {
            ("POST", "/v1/reports") => {
                let body = match Limited::new(req.into_body(), MAX_REPORT_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                };
                match self.receive(&body, &gateway).await {
                    Ok((report, accepted)) => {
                        let (status, decision) = match accepted {
                            Accepted::New(d) => ("accepted", d),
                            Accepted::Duplicate(d) => ("duplicate", d),
                        };
                        tracing::info!(gateway = %report.report.gateway_id(), epoch = report.report.epoch, status, reward_micro = decision["reward_micro"].as_str().unwrap_or("?"), "report received");
                        json(
                            StatusCode::OK,
                            serde_json::json!({
                                "status": status,
                                "gateway_id": report.report.gateway_id(),
                                "epoch": report.report.epoch,
                                "hash": hex::encode(report.hash()),
                                "decision": decision,
                            }),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, reason = e.name(), "report refused");
                        json(
                            e.status(),
                            serde_json::json!({"refused": e.name(), "message": e.to_string()}),
                        )
                    }
                }
            }
            ("GET", "/v1/challenges") => {
                let wait_ms = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("wait_ms="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(60_000);
                self.long_poll(&gateway, Duration::from_millis(wait_ms))
                    .await
            }
            ("POST", "/v1/challenges/answer") => {
                let body = match Limited::new(req.into_body(), MAX_REPORT_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                };
                match challenges::judge(&self.store, &self.verifiers, &gateway, &body).await {
                    Ok((id, status)) => {
                        let counter = match status.as_str() {
                            "passed" => &self.proofs_passed,
                            "expired" => &self.proofs_expired,
                            _ => &self.proofs_failed,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let passed = status == "passed";
                        tracing::info!(%gateway, challenge = %id, %status, "challenge judged");
                        json(
                            StatusCode::OK,
                            serde_json::json!({"id": id, "passed": passed, "status": status}),
                        )
                    }
                    Err(e @ challenges::AnswerRejection::Storage(_)) => {
                        text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    }
                    Err(e @ challenges::AnswerRejection::WrongGateway) => {
                        text(StatusCode::FORBIDDEN, e.to_string())
                    }
                    Err(e @ challenges::AnswerRejection::Unknown(_)) => {
                        text(StatusCode::CONFLICT, e.to_string())
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                }
            }
            ("GET", p) if p.starts_with("/v1/gateways/") => {
                let rest = &p["/v1/gateways/".len()..];
                let parsed = rest
                    .split_once("/epochs/")
                    .and_then(|(id, n)| Some((id.to_string(), n.parse::<u64>().ok()?)));
                let Some((id, epoch)) = parsed else {
                    return text(StatusCode::NOT_FOUND, format!("no route {method} {path}"));
                };
                match self.store.explain(&id, epoch).await {
                    Ok(Some(d)) => json(StatusCode::OK, d),
                    Ok(None) => text(
                        StatusCode::NOT_FOUND,
                        format!("no report of {id} for epoch {epoch} was received"),
                    ),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            ("GET", "/v1/gateways") => match self.store.gateways().await {
                Ok(g) => json(StatusCode::OK, serde_json::json!(g)),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            ("GET", "/v1/rewards") => {
                let epoch = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("epoch="))
                    .and_then(|v| v.parse::<u64>().ok());
                let Some(epoch) = epoch else {
                    return text(StatusCode::BAD_REQUEST, "need ?epoch=N".into());
                };
                match self.store.rewards(epoch).await {
                    Ok(rows) => json(
                        StatusCode::OK,
                        serde_json::json!({
                            "epoch": epoch,
                            "rewards": rows.iter().map(|(g, r)| serde_json::json!({
                                "gateway_id": g, "reward_micro": r.to_string(),
                            })).collect::<Vec<_>>(),
                        }),
                    ),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            ("GET", "/metrics") => {
                let mut r = text(StatusCode::OK, self.metrics().await);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }

    /// Serves HTTPS on `listener` forever: at most
    /// `server.max_connections` connections at once (more wait in the
    /// backlog), TLS handshakes bounded by `server.handshake_timeout_ms`,
    /// request headers by `server.header_timeout_ms`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = TlsAcceptor::from(tls);
        let handshake = Duration::from_millis(self.server.handshake_timeout_ms);
        let header = Duration::from_millis(self.server.header_timeout_ms);
        loop {
            let permit = self
                .connections
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        this.handshakes_timed_out.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .cloned();
                let peer = match cert {
                    Some(c) => gateways::proved(&this.store, &this.certs, &c).await,
                    None => None,
                };
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, Infallible>(this.handle(peer, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body + "\n")));
    *r.status_mut() = status;
    r
}

pub(crate) fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
