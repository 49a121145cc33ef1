//! The reference collector (`depin-collector --config collector.toml`):
//! receives epoch reports over mutual TLS and keeps the authoritative
//! record.
//!
//! For each `POST /v1/reports` it checks, in order: the client certificate
//! maps to a known gateway id (403); the body is a canonical, correctly
//! signed report (400 malformed, 401 bad signature); the report's gateway
//! key is the one the certificate maps to (403); the reward estimate equals
//! the collector's recomputation under its policy (422); the report extends
//! the gateway's chain (409: gap, reordering, conflicting report). The same
//! report again gets the same acknowledgement and is counted once.
//!
//! Also serves `GET /v1/gateways`, `GET /v1/rewards?epoch=N` (JSON) and a
//! Prometheus `GET /metrics`.

pub mod challenges;
pub mod config;
pub mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use depin_gateway::upstream::tls::{fingerprint, server_config};
use depin_protocol::report::{ReportError, SignedReport};
use depin_protocol::rewards::RewardPolicy;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use config::CollectorConfig;
pub use store::{Accepted, ChainError, CollectorStore};

/// Largest report body accepted.
const MAX_REPORT_BYTES: usize = 1 << 20;

/// Why a report was refused, with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Malformed(ReportError),
    #[error("{0}")]
    BadSignature(ReportError),
    #[error("the report is signed for {report} but the client certificate belongs to {cert}")]
    WrongGateway { report: String, cert: String },
    #[error("the reward estimate {estimate} does not match the policy's {computed}")]
    RewardMismatch { estimate: u128, computed: u128 },
    #[error(transparent)]
    Chain(ChainError),
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
            Rejection::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Rejection::WrongGateway { .. } => StatusCode::FORBIDDEN,
            Rejection::RewardMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::Chain(ChainError::Storage(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::Chain(ChainError::ProofMismatch(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::Chain(_) => StatusCode::CONFLICT,
        }
    }

    /// The metrics label.
    fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::WrongGateway { .. } => "wrong_gateway",
            Rejection::RewardMismatch { .. } => "reward_mismatch",
            Rejection::Chain(ChainError::Storage(_)) => "storage",
            Rejection::Chain(ChainError::ProofMismatch(_)) => "proof_mismatch",
            Rejection::Chain(_) => "chain",
        }
    }
}

/// Checks a report's encoding, signature, sender and reward; does not touch
/// storage. Returns the report and the collector's reward.
pub fn check_report(
    bytes: &[u8],
    cert_gateway: &str,
    policy: &RewardPolicy,
) -> Result<(SignedReport, u128), Rejection> {
    let report = SignedReport::decode(bytes).map_err(|e| match e {
        ReportError::BadSignature => Rejection::BadSignature(e),
        other => Rejection::Malformed(other),
    })?;
    let id = report.report.gateway_id();
    if id != cert_gateway {
        return Err(Rejection::WrongGateway {
            report: id,
            cert: cert_gateway.to_string(),
        });
    }
    let computed = report.report.reward_under(policy);
    if computed != report.report.reward_micro {
        return Err(Rejection::RewardMismatch {
            estimate: report.report.reward_micro,
            computed,
        });
    }
    Ok((report, computed))
}

/// A running collector's shared state.
pub struct Collector {
    store: CollectorStore,
    policy: RewardPolicy,
    certs: BTreeMap<String, String>,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    verifiers: challenges::Verifiers,
    /// Woken when new challenges are issued (long polls wait on it).
    pub challenge_ready: tokio::sync::Notify,
    proofs_passed: AtomicU64,
    proofs_failed: AtomicU64,
}

impl Collector {
    /// Opens the store, loads the policy and the verifier components named
    /// by `config`.
    pub async fn open(config: &CollectorConfig) -> anyhow::Result<Self> {
        let policy = match &config.policy {
            Some(p) => depin_gateway::config::load_policy(p)?,
            None => RewardPolicy::default(),
        };
        Ok(Self {
            store: CollectorStore::open(&config.data_dir)?,
            policy,
            certs: config.cert_map(),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: Mutex::new(BTreeMap::new()),
            verifiers: challenges::Verifiers::load(&config.challenges.possession, &config.data_dir)
                .await?,
            challenge_ready: tokio::sync::Notify::new(),
            proofs_passed: AtomicU64::new(0),
            proofs_failed: AtomicU64::new(0),
        })
    }

    /// Checks and stores one report from `cert_gateway`.
    pub fn receive(
        &self,
        bytes: &[u8],
        cert_gateway: &str,
    ) -> Result<(SignedReport, Accepted), Rejection> {
        let result =
            check_report(bytes, cert_gateway, &self.policy).and_then(|(report, reward)| {
                self.store
                    .accept(&report, reward)
                    .map(|a| (report, a))
                    .map_err(Rejection::Chain)
            });
        match &result {
            Ok((_, Accepted::New)) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok((_, Accepted::Duplicate)) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                *self.rejected.lock().unwrap().entry(e.reason()).or_default() += 1;
            }
        }
        result
    }

    fn metrics(&self) -> String {
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
        let gateways = self.store.gateways().map(|g| g.len()).unwrap_or(0);
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
                let this = self.clone();
                let outcome =
                    tokio::task::spawn_blocking(move || this.receive(&body, &gateway)).await;
                match outcome {
                    Ok(Ok((report, accepted))) => {
                        let status = match accepted {
                            Accepted::New => "accepted",
                            Accepted::Duplicate => "duplicate",
                        };
                        tracing::info!(gateway = %report.report.gateway_id(), epoch = report.report.epoch, status, "report received");
                        json(
                            StatusCode::OK,
                            serde_json::json!({
                                "status": status,
                                "gateway_id": report.report.gateway_id(),
                                "epoch": report.report.epoch,
                                "hash": hex::encode(report.hash()),
                            }),
                        )
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "report rejected");
                        text(e.status(), e.to_string())
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            ("GET", "/v1/challenges") => {
                let wait_ms = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("wait_ms="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(60_000);
                let deadline =
                    tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
                loop {
                    let notified = self.challenge_ready.notified();
                    let this = self.clone();
                    let gw = gateway.clone();
                    let taken =
                        tokio::task::spawn_blocking(move || this.store.take_pending(&gw)).await;
                    match taken {
                        Ok(Ok(list))
                            if !list.is_empty() || tokio::time::Instant::now() >= deadline =>
                        {
                            let specs: Vec<_> = list.into_iter().map(|c| c.spec).collect();
                            return json(StatusCode::OK, serde_json::json!(specs));
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                        }
                        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
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
                    Ok((id, passed)) => {
                        let counter = if passed {
                            &self.proofs_passed
                        } else {
                            &self.proofs_failed
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%gateway, challenge = %id, passed, "challenge judged");
                        json(
                            StatusCode::OK,
                            serde_json::json!({"id": id, "passed": passed}),
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
            ("GET", "/v1/gateways") => match self.store.gateways() {
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
                match self.store.rewards(epoch) {
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
                let mut r = text(StatusCode::OK, self.metrics());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }

    /// Serves HTTPS on `listener` forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = TlsAcceptor::from(tls);
        loop {
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
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| this.certs.get(&fingerprint(c)).cloned());
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, Infallible>(this.handle(peer, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body + "\n")));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// depin-collector: the reference collector. Accepts gateways' epoch
/// reports over mutual TLS, checks them, recomputes rewards, and issues and
/// judges challenges. Runs until SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(name = "depin-collector", version, about, long_about)]
pub struct Cli {
    /// The collector's configuration file.
    #[arg(long, short, default_value = "collector.toml")]
    config: PathBuf,
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the collector configured by `config_path` until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = CollectorConfig::load(config_path)?;
    depin_gateway::telemetry::init(config.log_format);
    let tls = server_config(&config.client_ca_file, &config.cert_file, &config.key_file)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let collector = Arc::new(Collector::open(&config).await?);
        let issuer = tokio::spawn(challenges::issue_forever(
            collector.clone(),
            config.challenges.clone(),
        ));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(addr = %addr, gateways = config.gateways.len(), "collector ready");
        let server = tokio::spawn(collector.serve(listener, tls));
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        server.abort();
        issuer.abort();
        tracing::info!("collector stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
