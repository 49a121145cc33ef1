//! The admin API, on a listener of its own (`[admin]`, loopback by
//! default):
//!
//! | endpoint | token | answers |
//! |---|---|---|
//! | `GET /healthz` | no | 200 while the process serves, 503 once the ledger's storage failed for good |
//! | `GET /readyz` | no | 200 when the ledger is readable, commits succeed and plugins are loaded, else 503 |
//! | `GET /metrics` | yes (unless `open_metrics`) | Prometheus text |
//! | `GET /v1/status` | yes | gateway id, version, uptime, plugins, ledger head, last reload |
//! | `POST /v1/plugins/reload` | yes, always | 200 with the reload report, or 409 with the error (old plugins keep serving) |
//! | `/ui` | sign-in | the operator's console ([`console`]) |
//!
//! With `token_file` set, the token endpoints require
//! `Authorization: Bearer <token>` and answer 401 otherwise. Requests that
//! change something need the token even on loopback: without `token_file`
//! they answer 403. Every request's `Host` must be the listener's own
//! address, `localhost` on a loopback listener, or one of
//! `admin.allowed_hosts`; others get 403, so a web page whose name was
//! rebound to the box's address cannot use the API (DNS rebinding).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod console;

use crate::config::AdminConfig;
use crate::ledger::Ledger;
use crate::reload::Reloader;
use crate::service::{Service, stopped};

/// Why the admin listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.token_file {path}: {problem}")]
    Token { path: String, problem: String },
    #[error("admin: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the admin API reports on and acts on.
pub struct AdminApi {
    gateway_id: String,
    started: Instant,
    ledger: Arc<Ledger>,
    reloader: Arc<Reloader>,
    token: Option<String>,
    open_metrics: bool,
    /// `[epochs] length_ms`, for the current epoch in `/v1/status`.
    epoch_length_ms: u64,
    /// `admin.allowed_hosts`, lower-case.
    allowed_hosts: Vec<String>,
    console: console::Console,
}

type AdminBody = Full<Bytes>;

impl AdminApi {
    /// Reads the token file (if any) and binds the listener. Fails if the
    /// token file is missing or empty, so a typo never leaves the API open.
    pub async fn bind(
        config: &AdminConfig,
        gateway_id: String,
        ledger: Arc<Ledger>,
        reloader: Arc<Reloader>,
        epoch_length_ms: u64,
        console_sources: console::ConsoleSources,
    ) -> Result<(Arc<Self>, TcpListener), AdminError> {
        let token = match &config.token_file {
            None => None,
            Some(path) => {
                let fail = |problem: String| AdminError::Token {
                    path: path.display().to_string(),
                    problem,
                };
                let text =
                    std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(fail("is empty".into()));
                }
                Some(token)
            }
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AdminError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let console = console::Console::new(console_sources, reloader.clone(), gateway_id.clone());
        let api = Arc::new(Self {
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            console,
            gateway_id,
            started: Instant::now(),
            ledger,
            reloader,
            token,
            open_metrics: config.open_metrics,
            epoch_length_ms,
        });
        Ok((api, listener))
    }

    /// Serves until `shutdown` turns true. Admin requests are short; open
    /// connections are dropped at shutdown.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let connections = shutdown.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let Ok(local) = stream.local_addr() else { continue };
                        let this = self.clone();
                        let mut stop = connections.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| {
                                let this = this.clone();
                                async move { Ok::<_, Infallible>(this.handle(req, local).await) }
                            });
                            let conn = http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(Duration::from_secs(10))
                                .serve_connection(TokioIo::new(stream), service);
                            tokio::select! {
                                _ = conn => {}
                                _ = stopped(&mut stop) => {}
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>, local: SocketAddr) -> Response<AdminBody> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let Some(host) = host.filter(|h| self.host_allowed(h, local)) else {
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "error": "Host is not a name of this admin listener (admin.allowed_hosts)" }),
            );
        };
        let path = req.uri().path();
        if path == "/ui" || path.starts_with("/ui/") {
            let admission = console::Admission {
                token: self.token.as_deref(),
                bearer_ok: self.token.is_some() && self.authorized(&req),
                host: &host,
                ready: self.is_ready(),
            };
            return self.console.handle(req, admission).await;
        }
        if req.method() == Method::POST && self.token.is_none() {
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "error": "requests that change something need admin.token_file, also on loopback" }),
            );
        }
        let needs_token = match path {
            "/healthz" | "/readyz" => false,
            "/metrics" => !self.open_metrics,
            _ => true,
        };
        if needs_token && !self.authorized(&req) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": "missing or wrong bearer token" }),
            );
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return r;
        }
        match (req.method(), path) {
            (&Method::GET, "/healthz") => match self.ledger.health().storage_failed {
                None => text(StatusCode::OK, "ok\n", "text/plain"),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("ledger storage failed: {why}\n"),
                    "text/plain",
                ),
            },
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                let mut body = crate::metrics::global().render_prometheus();
                body.push_str(&self.console.gauges(self.is_ready()).await);
                text(StatusCode::OK, &body, "text/plain; version=0.0.4")
            }
            (&Method::GET, "/v1/status") => json(StatusCode::OK, self.status()),
            (&Method::POST, "/v1/plugins/reload") => match self.reloader.reload("admin").await {
                Ok(report) => json(
                    StatusCode::OK,
                    serde_json::to_value(report).unwrap_or_default(),
                ),
                Err(e) => json(
                    StatusCode::CONFLICT,
                    serde_json::json!({
                        "error": e.to_string(),
                        "generation": self.reloader.table().snapshot().generation,
                    }),
                ),
            },
            (_, "/healthz" | "/readyz" | "/metrics" | "/v1/status" | "/v1/plugins/reload") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": format!("{} is not allowed on {path}", req.method()) }),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": format!("no admin endpoint {path}") }),
            ),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }

    /// Whether `Host` names this listener: its own address, `localhost`
    /// on a loopback listener, or a configured name.
    fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        if host == local.to_string() {
            return true;
        }
        if self.allowed_hosts.iter().any(|h| h == host) {
            return true;
        }
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !n.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
                (n, p.parse::<u16>().ok())
            }
            _ => (host, None),
        };
        self.allowed_hosts.iter().any(|h| h == name)
            || (name == "localhost"
                && local.ip().is_loopback()
                && port.is_none_or(|p| p == local.port()))
    }

    /// Whether `/readyz` answers 200.
    fn is_ready(&self) -> bool {
        self.readiness().status() == StatusCode::OK
    }

    fn readiness(&self) -> Response<AdminBody> {
        let ledger = self.ledger.head();
        let set = self.reloader.table().snapshot();
        let health = self.ledger.health();
        let ready = ledger.is_ok() && health.is_ok();
        let body = serde_json::json!({
            "ready": ready,
            "ledger": match (&ledger, health.storage_failed, health.commit_failing) {
                (Err(e), _, _) => e.to_string(),
                (Ok(_), Some(why), _) => format!("storage failed: {why}"),
                (Ok(_), None, Some(why)) => format!("commits failing: {why}"),
                (Ok(_), None, None) => "open".to_string(),
            },
            "plugins": set.plugins.len(),
            "generation": set.generation,
            "upstream": "not required",
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, body)
    }

    fn status(&self) -> serde_json::Value {
        let set = self.reloader.table().snapshot();
        let metrics = crate::metrics::global();
        let plugins: Vec<serde_json::Value> = set
            .plugins
            .iter()
            .map(|(cfg, p)| {
                let counters = metrics.plugin(&cfg.name);
                serde_json::json!({
                    "name": cfg.name,
                    "route": cfg.route,
                    "digest": p.digest,
                    "version": p.info.version,
                    "kind": crate::runtime::contract::kind_name(p.info.kind),
                    "calls": counters.as_ref().map_or(0, |c| c.calls()),
                    "errors": counters.as_ref().map_or(0, |c| c.errors()),
                })
            })
            .collect();
        let head = self.ledger.head().ok().map(|h| h.seq);
        let now_ms = depin_protocol::time::now_ms();
        let length = self.epoch_length_ms.max(1);
        let epoch = now_ms / length;
        serde_json::json!({
            "gateway_id": self.gateway_id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "generation": set.generation,
            "plugins": plugins,
            "ledger_head_seq": head,
            "current_epoch": {
                "number": epoch,
                "start_ms": epoch * length,
                "end_ms": (epoch + 1) * length,
            },
            "last_reload": self.reloader.last_report(),
        })
    }
}

/// Whether `a == b`, in time that depends on their lengths only (for
/// comparing secrets such as bearer tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &str, content_type: &'static str) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<AdminBody> {
    text(status, &body.to_string(), "application/json")
}

/// The admin listener as a [`Service`].
pub struct AdminServer {
    pub api: Arc<AdminApi>,
    pub listener: TcpListener,
}

impl Service for AdminServer {
    fn name(&self) -> &'static str {
        "admin"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.api.serve(self.listener, shutdown))
    }
}
