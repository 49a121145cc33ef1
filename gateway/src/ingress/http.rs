//! HTTP ingress (hyper 1 on tokio). A request reads top to bottom as
//! phases: route → read body → call plugin → commit usage → respond. The
//! response is sent only after the call's usage records are durable.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use depin_protocol::units;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::HttpConfig;
use crate::ledger::{CallEffects, EncodedRecords, KvWrite, Ledger, LedgerError};
use crate::metrics::CallObservation;
use crate::plugin_table::PluginTable;
use crate::runtime::LoadedPlugin;
use crate::runtime::contract::{Body, HttpRequest, HttpResponse};
use crate::runtime::reuse;

mod blob_body;

/// Unique ids for requests: a random per-process prefix and a counter.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: rand::random(),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// A fresh id, 20 hex digits: the prefix, then the low 48 bits of a
    /// counter (written by hand: `format!` showed in profiles).
    pub fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff;
        let id = (u128::from(self.prefix) << 48) | u128::from(n);
        let mut out = [0u8; 20];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((id >> (4 * (19 - i))) & 0xf) as usize];
        }
        std::str::from_utf8(&out).expect("hex digits").into()
    }
}

/// The routing table and limits of the ingress.
pub struct HttpIngress {
    /// The plugins and their routes, read per request (hot reload swaps it).
    table: Arc<PluginTable>,
    ledger: Arc<Ledger>,
    pub(crate) limits: HttpConfig,
    ids: RequestIds,
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
        Self {
            table,
            ledger,
            limits,
            ids: RequestIds::default(),
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
                        let _ = stream.set_nodelay(true);
                        let conn = self
                            .connection_builder()
                            .serve_connection(TokioIo::new(stream), self.clone().service(peer));
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
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

    fn connection_builder(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
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
                return (error_response(status, request_id, &message), facts);
            }
        };
        let bytes_in = request_size(&request);
        let conditional = blob_body::Conditional::of(&request);
        let reuse_key = (matches!(request.method.as_str(), "GET" | "HEAD")
            && request.body.is_empty())
        .then(|| reuse::key(&request.method, &request.path, &request.query));

        // Phase: call the plugin.
        let timeout = Duration::from_millis(self.limits.call_timeout_ms);
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, plugin.handle_http(request_id, request)).await;

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
                // The plugin's answer and claims, when it marked the answer
                // reusable (kept once the call's records are durable). Not
                // a blob passed through: it is not stored.
                keep = reuse_key
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
                        &conditional,
                        request_id,
                        false,
                        pass,
                    ),
                    Ok(r) => plugin_response(r, request_id),
                    Err(e) => {
                        let status = match e {
                            crate::runtime::CallError::Busy => StatusCode::SERVICE_UNAVAILABLE,
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

        // Phase: commit usage, then respond.
        let bytes_out = response_size(&response);
        let name = plugin.name();
        let mut records = EncodedRecords::with_capacity(4 + effects.records.len());
        let encoded = host_records(&mut records, name, request_id, bytes_in, bytes_out, wall)
            .and_then(|()| records.push_host(name, units::FUEL, fuel, request_id))
            .and_then(|()| {
                effects
                    .records
                    .iter()
                    .try_for_each(|r| records.push(name, r))
            })
            .map(|()| records);
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
        } = effects;
        let (response, facts) = self
            .commit_then_respond(plugin, encoded, kv, response, facts, request_id)
            .await;
        if let Some((key, answer, ttl)) = keep
            && facts.error.is_none()
            && (response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED)
        {
            plugin.reuse.insert(name, key, answer, &claims, ttl);
        }
        (response, facts)
    }

    /// Answers `req` from the plugin's reusable answer for it: the same
    /// blob, the same plugin-claimed records plus the host's own, durable
    /// before the response, with no plugin call. Gives the request back
    /// when there is no live answer (or its blob is gone), so the plugin is
    /// called as usual.
    async fn reuse(
        &self,
        plugin: &LoadedPlugin,
        req: Request<Incoming>,
        sub_path: &str,
        request_id: &Arc<str>,
    ) -> Result<(Response<HttpBody>, CallFacts), Request<Incoming>> {
        use hyper::body::Body as _;
        let head = req.method() == Method::HEAD;
        if !(head || req.method() == Method::GET) || !req.body().is_end_stream() {
            return Err(req);
        }
        let key = reuse::key(
            req.method().as_str(),
            sub_path,
            req.uri().query().unwrap_or(""),
        );
        let Some(answer) = plugin.reuse.get(&key) else {
            return Err(req);
        };
        // A header that is not visible ASCII: the plugin path answers 400.
        let Some(bytes_in) = head_size(&req, sub_path) else {
            return Err(req);
        };
        let started = Instant::now();
        let conditional = blob_body::Conditional::of_headers(head, req.headers());
        let response = blob_body::respond(
            plugin.shared.blobs.as_deref(),
            answer.response.clone(),
            &conditional,
            request_id,
            true,
            None,
        );
        if response.status() == StatusCode::NOT_FOUND || response.status().is_server_error() {
            // The blob is gone (evicted, deleted) or unreadable: ask the plugin.
            plugin.reuse.remove(&key);
            return Err(req);
        }
        let bytes_out = response_size(&response);
        // No plugin ran, so no fuel was used: no `fuel` record.
        let mut records = EncodedRecords::with_capacity(3 + answer.claims.len());
        let encoded = host_records(
            &mut records,
            plugin.name(),
            request_id,
            bytes_in,
            bytes_out,
            started.elapsed(),
        )
        .map(|()| {
            records.extend(&answer.claims);
            records
        });
        let facts = CallFacts {
            bytes_in,
            bytes_out,
            reused: true,
            ..CallFacts::default()
        };
        Ok(self
            .commit_then_respond(
                plugin,
                encoded,
                BTreeMap::new(),
                response,
                facts,
                request_id,
            )
            .await)
    }

    /// Commits the call's effects, then gives back the response; a 503
    /// instead when the ledger cannot take them (the request had no
    /// effect).
    async fn commit_then_respond(
        &self,
        plugin: &LoadedPlugin,
        records: Result<EncodedRecords, LedgerError>,
        kv: BTreeMap<String, KvWrite>,
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
                tracing::error!(error = %e, "cannot commit usage; withholding the response");
                facts.error = Some("ledger");
                let r = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    request_id,
                    "the usage ledger is unavailable; the request had no effect",
                );
                (r, facts)
            }
        }
    }

    async fn read_request(
        &self,
        req: Request<Incoming>,
        path: String,
    ) -> Result<HttpRequest, (StatusCode, String)> {
        let max = self.limits.max_body_bytes;
        let too_large = || {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the limit of {max} bytes"),
            )
        };
        if let Some(len) = req.headers().get(CONTENT_LENGTH) {
            let len: u64 = len.to_str().ok().and_then(|s| s.parse().ok()).ok_or((
                StatusCode::BAD_REQUEST,
                "invalid content-length".to_string(),
            ))?;
            if len > max as u64 {
                return Err(too_large());
            }
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(too_large());
            }
            Err(e) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ));
            }
        };
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let value = value.to_str().map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("header `{name}` is not visible ASCII"),
                )
            })?;
            headers.push((name.as_str().to_string(), value.to_string()));
        }
        Ok(HttpRequest {
            method: parts.method.as_str().to_string(),
            path,
            query: parts.uri.query().unwrap_or("").to_string(),
            headers,
            body: body.to_vec(),
        })
    }
}

/// An accept error (out of file descriptors and the like): logged, then a
/// short back-off, and serving goes on.
pub(super) async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: treat it as a stop too.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// [`request_size`] of the request `req` would become, read off its head;
/// `None` when a header value is not visible ASCII.
fn head_size<B>(req: &Request<B>, path: &str) -> Option<u64> {
    let mut head = req.method().as_str().len() + path.len() + req.uri().query().map_or(0, str::len);
    for (name, value) in req.headers() {
        value.to_str().ok()?;
        head += name.as_str().len() + value.len() + 4;
    }
    Some(head as u64)
}

fn request_size(r: &HttpRequest) -> u64 {
    let head: usize = r.method.len()
        + r.path.len()
        + r.query.len()
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    (head + r.body.len()) as u64
}

fn response_size(r: &Response<HttpBody>) -> u64 {
    use hyper::body::Body as _;
    let head: usize = r
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    head as u64 + r.body().size_hint().exact().unwrap_or(0)
}

/// Appends the host-attested records every call gets (the `fuel` record
/// only when a plugin ran).
fn host_records(
    records: &mut EncodedRecords,
    plugin: &str,
    request_id: &str,
    bytes_in: u64,
    bytes_out: u64,
    wall: Duration,
) -> Result<(), LedgerError> {
    records.push_host(plugin, units::BYTES_IN, bytes_in, request_id)?;
    records.push_host(plugin, units::BYTES_OUT, bytes_out, request_id)?;
    records.push_host(
        plugin,
        units::WALL_TIME_US,
        wall.as_micros() as u64,
        request_id,
    )
}

/// Headers a plugin may not set: the host owns framing and the connection.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-request-id",
    reuse::REUSE_HEADER,
];

fn plugin_response(r: HttpResponse, request_id: &Arc<str>) -> Response<HttpBody> {
    let Some(status) = (100..=599)
        .contains(&r.status)
        .then(|| StatusCode::from_u16(r.status).ok())
        .flatten()
    else {
        tracing::warn!(status = r.status, "plugin returned an invalid status");
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            request_id,
            "the plugin returned an invalid status",
        );
    };
    let body = match r.body {
        Body::Bytes(b) => b,
        Body::Blob(_) => {
            return error_response(
                StatusCode::NOT_IMPLEMENTED,
                request_id,
                "blob bodies need the blobs capability, which this gateway version does not offer",
            );
        }
    };
    let mut response = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in r.headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        match (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => tracing::warn!(header = %name, "plugin returned an invalid header; dropped"),
        }
    }
    set_request_id(&mut response, request_id);
    response
}

fn set_request_id(response: &mut Response<HttpBody>, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
}

/// A JSON error body that carries the request id, so a caller can quote it
/// and an operator can find the call in the log.
fn error_response(status: StatusCode, request_id: &str, message: &str) -> Response<HttpBody> {
    let body = serde_json::json!({ "error": message, "request_id": request_id });
    let mut response = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
        body.to_string(),
    ))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set_request_id(&mut response, request_id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_fixed_width() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        // The same digits `format!` would write.
        assert_eq!(&*b, format!("{:08x}{:012x}", ids.prefix, 2));
    }

    #[test]
    fn plugin_cannot_set_framing_headers() {
        let r = HttpResponse {
            status: 201,
            headers: vec![
                ("Content-Length".into(), "999".into()),
                ("x-custom".into(), "1".into()),
                ("bad header".into(), "x".into()),
            ],
            body: Body::Bytes(b"hi".to_vec()),
        };
        let resp = plugin_response(r, &Arc::from("rid"));
        assert_eq!(resp.status(), 201);
        assert!(resp.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(resp.headers().get("x-custom").unwrap(), "1");
        assert_eq!(resp.headers().get("x-request-id").unwrap(), "rid");
    }

    #[test]
    fn invalid_status_becomes_500() {
        for status in [42, 600, 999] {
            let r = HttpResponse {
                status,
                headers: vec![],
                body: Body::Bytes(vec![]),
            };
            assert_eq!(plugin_response(r, &Arc::from("rid")).status(), 500);
        }
    }
}
