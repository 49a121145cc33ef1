//! HTTP ingress (hyper 1 on tokio). A request reads top to bottom as
//! phases: route → read body → call plugin → commit usage → respond. The
//! response is sent only after the call's usage records are durable.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::call::{self, CallError, HostMeasurements, RequestIds};
use crate::config::HttpConfig;
use crate::ledger::{CallEffects, EncodedRecords, KvEffects, Ledger, LedgerError};
use crate::metrics::CallObservation;
use crate::plugin_table::PluginTable;
use crate::runtime::LoadedPlugin;
use crate::runtime::contract::Body;
use crate::runtime::reuse;
use crate::service::{STOP_GRACE, Service, stopped};

mod admission;
mod blob_body;
mod message;
mod range;
mod reuse_answer;

use message::{error_response, plugin_response, request_size, response_size};

/// The routing table and limits of the ingress.
pub struct HttpIngress {
    /// The plugins and their routes, read per request (hot reload swaps it).
    table: Arc<PluginTable>,
    ledger: Arc<Ledger>,
    pub(crate) limits: HttpConfig,
    ids: RequestIds,
    /// The connection caps of `limits`.
    admission: Arc<admission::Admission>,
}

pub(crate) type HttpBody = http_body_util::Either<Full<Bytes>, blob_body::BlobBody>;

/// What the host learned about a call besides its response.
#[derive(Default)]
struct CallFacts {
    error: Option<&'static str>,
    fuel: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Answered from a reusable plugin answer, without a plugin call.
    reused: bool,
}

impl HttpIngress {
    /// An ingress that routes each request through the current plugins of
    /// `table`.
    pub fn new(table: Arc<PluginTable>, ledger: Arc<Ledger>, limits: HttpConfig) -> Self {
        let admission =
            admission::Admission::new(limits.max_connections, limits.max_connections_per_peer);
        Self {
            table,
            ledger,
            limits,
            ids: RequestIds::default(),
            admission,
        }
    }

    /// Serves connections from `listener` until `shutdown` turns true, then
    /// stops accepting and lets in-flight requests finish (up to the grace
    /// period).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(admitted) = self.admit(peer) else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let conn = self
                            .connection_builder()
                            .serve_connection(TokioIo::new(stream), self.clone().service(peer));
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
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
        self.drain(graceful).await;
    }

    /// The service for one connection from `peer`: every request goes to
    /// [`Self::handle`].
    pub(super) fn service(
        self: Arc<Self>,
        peer: SocketAddr,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<HttpBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<HttpBody>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.handle(req, peer).await) }
        })
    }

    /// After the listener is closed: lets in-flight requests finish, for
    /// the grace period at most.
    pub(super) async fn drain(&self, graceful: GracefulShutdown) {
        let grace = Duration::from_millis(self.limits.shutdown_grace_ms);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "draining in-flight requests"
        );
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }

    /// Counts a just-accepted connection from `peer` against the
    /// connection caps; `None` (and the connection is closed when the
    /// caller drops it) when a cap is reached.
    pub(super) fn admit(&self, peer: SocketAddr) -> Option<admission::Admitted> {
        match self.admission.admit(peer.ip()) {
            Ok(a) => Some(a),
            Err(refusal) => {
                tracing::debug!(%peer, ?refusal, "connection refused: connection cap reached");
                None
            }
        }
    }

    fn connection_builder(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(self.limits.header_read_timeout_ms))
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .max_headers(self.limits.max_headers);
        b
    }

    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<HttpBody> {
        let request_id = self.ids.next();
        let path = req.uri().path().to_string();
        let Some((plugin, sub_path)) = self.table.route(&path) else {
            return error_response(
                StatusCode::NOT_FOUND,
                &request_id,
                &format!("no plugin serves {path}"),
            );
        };
        let method = req.method().clone();
        let started_at = std::time::SystemTime::now();
        let span = tracing::info_span!(
            "call",
            plugin = %plugin.name(),
            method = %req.method(),
            route = %path,
            request_id = %request_id,
            %peer,
            status = tracing::field::Empty,
            duration_us = tracing::field::Empty,
            fuel = tracing::field::Empty,
            bytes_in = tracing::field::Empty,
            bytes_out = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        async move {
            let started = Instant::now();
            let (response, facts) = self.call_phases(&plugin, req, sub_path, &request_id).await;
            let latency = started.elapsed();
            let span = tracing::Span::current();
            span.record("status", response.status().as_u16());
            span.record("duration_us", latency.as_micros() as u64);
            span.record("fuel", facts.fuel);
            span.record("bytes_in", facts.bytes_in);
            span.record("bytes_out", facts.bytes_out);
            if let Some(kind) = facts.error {
                span.record("error", kind);
            }
            if crate::otel::enabled() {
                crate::otel::record_call(crate::otel::CallSpan {
                    plugin: plugin.name(),
                    method: method.as_str(),
                    route: &path,
                    request_id: &request_id,
                    status: response.status().as_u16(),
                    error: facts.error,
                    fuel: facts.fuel,
                    bytes_in: facts.bytes_in,
                    bytes_out: facts.bytes_out,
                    started: started_at,
                });
            }
            crate::metrics::global().record_call(
                plugin.name(),
                CallObservation {
                    status: response.status().as_u16(),
                    error: facts.error,
                    latency,
                    fuel: facts.fuel,
                    bytes_in: facts.bytes_in,
                    bytes_out: facts.bytes_out,
                    reused: facts.reused,
                },
            );
            tracing::debug!(status = response.status().as_u16(), "request done");
            response
        }
        .instrument(span)
        .await
    }

    async fn call_phases(
        &self,
        plugin: &LoadedPlugin,
        req: Request<Incoming>,
        sub_path: String,
        request_id: &Arc<str>,
    ) -> (Response<HttpBody>, CallFacts) {
        // Phase: answer from a reusable plugin answer, when there is one.
        let req = match self.reuse(plugin, req, &sub_path, request_id).await {
            Ok(done) => return done,
            Err(req) => req,
        };

        // Phase: read the request.
        let request = match self.read_request(req, sub_path).await {
            Ok(r) => r,
            Err((status, message)) => {
                let facts = CallFacts {
                    error: Some("request"),
                    ..CallFacts::default()
                };
                let mut response = error_response(status, request_id, &message);
                if status == StatusCode::REQUEST_TIMEOUT {
                    // The rest of the body may still trickle in: the
                    // connection is not kept for another request.
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                return (response, facts);
            }
        };
        let bytes_in = request_size(&request);
        let conditional = blob_body::Conditional::of(&request);
        let reuse_key = (matches!(request.method.as_str(), "GET" | "HEAD")
            && request.body.is_empty())
        .then(|| reuse::key(&request.method, &request.path, &request.query));

        // Phases: call the plugin, build the response, commit; all of it
        // again from the start when the call conflicted with a concurrent
        // one (see `call::serialized`).
        let timeout = Duration::from_millis(self.limits.call_timeout_ms);
        let request = Arc::new(request);
        let name = plugin.name();
        let request = &request;
        let reuse_key = &reuse_key;
        let conditional = &conditional;
        let committed = call::serialized(plugin, || async move {
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(timeout, plugin.handle_http(request_id, request.clone()))
                    .await;

            // Phase: build the response and the call's records.
            let mut keep = None;
            let (response, effects, fuel, wall, error) = match outcome {
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = self.limits.call_timeout_ms,
                        "plugin call timed out"
                    );
                    let r = error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        request_id,
                        &format!(
                            "the plugin did not answer within {} ms",
                            self.limits.call_timeout_ms
                        ),
                    );
                    let error = Some("timeout");
                    (r, CallEffects::default(), 0, started.elapsed(), error)
                }
                Ok(o) => {
                    let error = o.result.as_ref().err().map(|e| e.kind());
                    let (result, pass) = match o.result {
                        Ok((r, pass)) => (Ok(r), pass),
                        Err(e) => (Err(e), None),
                    };
                    // The plugin's answer and claims, when it marked the
                    // answer reusable (kept once the call's records are
                    // durable). Not a blob passed through: it is not stored.
                    keep = reuse_key
                        .clone()
                        .filter(|_| pass.is_none())
                        .zip(result.as_ref().ok())
                        .and_then(|(key, r)| {
                            let ttl = reuse::requested(r)?;
                            Some((key, r.clone(), ttl))
                        });
                    let response = match result {
                        Ok(r) if matches!(r.body, Body::Blob(_)) => blob_body::respond(
                            plugin.shared.blobs.as_deref(),
                            r,
                            conditional,
                            request_id,
                            false,
                            pass,
                        ),
                        Ok(r) => plugin_response(r, request_id),
                        Err(e) => {
                            let status = match e {
                                CallError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                                CallError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                                _ => StatusCode::INTERNAL_SERVER_ERROR,
                            };
                            error_response(
                                status,
                                request_id,
                                &format!("plugin call failed: {}", e.kind()),
                            )
                        }
                    };
                    (response, o.effects, o.fuel, o.wall, error)
                }
            };

            // Phase: commit usage.
            let bytes_out = response_size(&response);
            let measured = HostMeasurements::of_call(wall, fuel)
                .bytes_in(bytes_in)
                .bytes_out(bytes_out);
            let facts = CallFacts {
                error,
                fuel,
                bytes_in,
                bytes_out,
                reused: false,
            };
            let CallEffects {
                records: claims,
                kv,
                unrepeatable,
            } = effects;
            let result = match call::records(name, request_id, &measured, &claims) {
                Ok(encoded) => {
                    call::commit_encoded(&self.ledger, name, encoded, kv, unrepeatable).await
                }
                Err(e) => Err(e),
            };
            call::Committed {
                value: (response, facts, keep, claims),
                result,
            }
        })
        .await;

        // Phase: respond.
        let (response, mut facts, keep, claims) = committed.value;
        let response = match committed.result {
            Ok(_) => response,
            Err(e) => {
                facts.error = Some(commit_failed(&e));
                commit_failure_response(&e, request_id)
            }
        };
        if let Some((key, answer, ttl)) = keep
            && facts.error.is_none()
            && (response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED)
        {
            plugin.reuse.insert(name, key, answer, &claims, ttl);
        }
        (response, facts)
    }

    /// Commits the effects of an answer made without a plugin call, then
    /// gives back the response; a 503 instead when they cannot be
    /// committed (the request had no effect).
    async fn commit_then_respond(
        &self,
        plugin: &LoadedPlugin,
        records: Result<EncodedRecords, LedgerError>,
        kv: KvEffects,
        response: Response<HttpBody>,
        mut facts: CallFacts,
        request_id: &Arc<str>,
    ) -> (Response<HttpBody>, CallFacts) {
        let committed = match records {
            Ok(records) => {
                self.ledger
                    .commit_encoded(plugin.name().clone(), records, kv)
                    .await
            }
            Err(e) => Err(e),
        };
        match committed {
            Ok(_) => (response, facts),
            Err(e) => {
                facts.error = Some(commit_failed(&e));
                (commit_failure_response(&e, request_id), facts)
            }
        }
    }
}

/// The error kind of a call whose effects were not committed.
fn commit_failed(e: &LedgerError) -> &'static str {
    match e {
        LedgerError::Conflict | LedgerError::Contended(_) | LedgerError::Unrepeatable(_) => {
            "conflict"
        }
        _ => "ledger",
    }
}

/// The answer, instead of the plugin's, when the call's effects could not
/// be committed: 503, and the request had no effect.
fn commit_failure_response(e: &LedgerError, request_id: &Arc<str>) -> Response<HttpBody> {
    let message = match e {
        LedgerError::Conflict | LedgerError::Contended(_) | LedgerError::Unrepeatable(_) => {
            e.to_string()
        }
        _ => {
            tracing::error!(error = %e, "cannot commit usage; withholding the response");
            "the usage ledger is unavailable; the request had no effect".to_string()
        }
    };
    error_response(StatusCode::SERVICE_UNAVAILABLE, request_id, &message)
}

/// An accept error (out of file descriptors and the like): logged, then a
/// short back-off, and serving goes on.
pub(super) async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The public HTTP listener as a [`Service`]: plain HTTP, or TLS when the
/// ingress has `[http.tls]`. On shutdown it stops accepting and drains
/// in-flight requests for the configured grace period.
pub struct HttpServer {
    pub ingress: Arc<HttpIngress>,
    pub listener: TcpListener,
    pub tls: Option<Arc<crate::ingress::tls::TlsIngress>>,
}

impl Service for HttpServer {
    fn name(&self) -> &'static str {
        "http"
    }

    fn drain(&self) -> Duration {
        Duration::from_millis(self.ingress.limits.shutdown_grace_ms) + STOP_GRACE
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        match self.tls {
            Some(tls) => tokio::spawn(self.ingress.serve_tls(self.listener, tls, shutdown)),
            None => tokio::spawn(self.ingress.serve(self.listener, shutdown)),
        }
    }
}
