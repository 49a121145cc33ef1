//! `depin:plugin/outbound-http`: HTTP requests to the origins on the
//! plugin's `[plugin.outbound] http` allow-list. The allow-list is checked
//! before anything is resolved or connected; everything else is refused
//! with an error the plugin sees.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wasmtime::component::HasData;

mod pool;
mod redirect;

use pool::{PoolConnector, tls_config};
use redirect::{origin_of, resolve_location};

use super::Blame;
use crate::config::parse_http_origin;
use crate::runtime::contract::depin::plugin::outbound_http::{
    Host, HttpError, OutboundRequest, OutboundResponse,
};
use crate::runtime::state::CallState;

/// Largest response body `fetch` returns, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Longest wait for a response's head (connect, send, first byte).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence from an origin in the middle of a body that the host
/// streams (`fetch-into`, `pass-through`).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most redirects [`HttpOutbound::get_following`] follows.
pub const MAX_REDIRECTS: usize = 5;
/// Longest a `fetch` may take in all, response head and whole body: an
/// origin that trickles its body cannot hold a call past it. Default of
/// `[plugin.outbound] fetch_deadline_ms`.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(60);
/// Longest a streamed blob (`fetch-into`, a `pass-through` answer) may take
/// in all, head and whole body: an origin that trickles a byte now and
/// then, never idle for [`BODY_IDLE_TIMEOUT`], cannot hold a call, a
/// download slot or a client's response past it. Default of
/// `[plugin.outbound] blob_deadline_ms`.
pub const BLOB_DEADLINE: Duration = Duration::from_secs(600);

/// One plugin's outbound HTTP capability: its allow-list and one pool of
/// kept-alive connections, `http://` and `https://` (rustls) alike.
pub struct HttpOutbound {
    allowed: Vec<(String, String, u16)>,
    client: Client<PoolConnector, Full<Bytes>>,
    /// [`FETCH_DEADLINE`] unless configured.
    fetch_deadline: Duration,
    /// [`BLOB_DEADLINE`] unless configured.
    blob_deadline: Duration,
}

impl std::fmt::Debug for HttpOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOutbound")
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// Why an outbound request was not sent or not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("`{0}` is not on the plugin's outbound http allow-list")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

impl HttpOutbound {
    /// A capability for `origins` (each checked by
    /// [`parse_http_origin`]). `https://` origins are verified against the
    /// system's root certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured)
    /// and the PEM certificates in `extra_roots`.
    pub fn new(origins: &[String], extra_roots: Option<&Path>) -> Result<Self, String> {
        let allowed = origins
            .iter()
            .map(|o| parse_http_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if allowed.iter().any(|(scheme, _, _)| scheme == "https") {
            Some(tokio_rustls::TlsConnector::from(Arc::new(tls_config(
                extra_roots,
            )?)))
        } else {
            None
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        // `https://` URIs reach the connector too; it adds TLS.
        http.enforce_http(false);
        let client = Client::builder(TokioExecutor::new()).build(PoolConnector { http, tls });
        Ok(Self {
            allowed,
            client,
            fetch_deadline: FETCH_DEADLINE,
            blob_deadline: BLOB_DEADLINE,
        })
    }

    /// The total deadlines of a `fetch` and of a streamed blob, instead of
    /// [`FETCH_DEADLINE`] and [`BLOB_DEADLINE`].
    pub fn with_deadlines(mut self, fetch: Duration, blob: Duration) -> Self {
        self.fetch_deadline = fetch;
        self.blob_deadline = blob;
        self
    }

    /// When a blob stream starting now must have ended (head and body).
    pub fn blob_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.blob_deadline
    }

    /// The blob deadline, for messages.
    pub fn blob_deadline_ms(&self) -> u128 {
        self.blob_deadline.as_millis()
    }

    /// The parsed URL if its origin is allowed.
    pub fn check(&self, url: &str) -> Result<Uri, OutboundError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| OutboundError::Invalid(format!("`{url}` is not a URL: {e}")))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(OutboundError::Invalid(format!(
                "`{url}` is not an absolute http(s) URL"
            )));
        };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        let origin = format!("{scheme}://{host}:{port}");
        if url.contains('@')
            || !self
                .allowed
                .iter()
                .any(|(s, h, p)| s == scheme && *h == host && *p == port)
        {
            return Err(OutboundError::Denied(origin));
        }
        Ok(uri)
    }

    /// Sends a request to an allowed URL; returns the response head with a
    /// streaming body.
    pub async fn send(
        &self,
        method: &str,
        uri: Uri,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Response<Incoming>, OutboundError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| OutboundError::Invalid(format!("`{method}` is not an HTTP method")))?;
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "host" | "connection" | "content-length" | "transfer-encoding" | "upgrade"
            ) {
                continue;
            }
            builder = builder.header(lower, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| OutboundError::Invalid(format!("invalid request: {e}")))?;
        let exchange = async {
            self.client
                .request(request)
                .await
                .map_err(|e| OutboundError::Io(error_chain(&e)))
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(OutboundError::Io(format!(
                "no response within {} s",
                RESPONSE_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl HttpOutbound {
    /// A GET of an allowed URL that follows redirects (301, 302, 303, 307,
    /// 308; at most [`MAX_REDIRECTS`]) as long as each target is allowed
    /// too. Registries answer blob requests with a redirect to a CDN or
    /// object store. Only the headers of
    /// [`redirect::CROSS_ORIGIN_HEADERS`] are sent on to another origin
    /// (no credentials, cookies or tokens of any name).
    pub async fn get_following(
        &self,
        uri: Uri,
        headers: &[(String, String)],
    ) -> Result<Response<Incoming>, OutboundError> {
        let mut uri = uri;
        let mut headers = headers.to_vec();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send("GET", uri.clone(), &headers, Vec::new()).await?;
            if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let Some(location) = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Ok(response);
            };
            let next = resolve_location(&uri, location)?;
            let target = self.check(&next).map_err(|e| match e {
                OutboundError::Denied(origin) => {
                    OutboundError::Denied(format!("{origin} (a redirect from {})", origin_of(&uri)))
                }
                other => other,
            })?;
            if origin_of(&target) != origin_of(&uri) {
                headers.retain(|(k, _)| redirect::passes_to_another_origin(k));
            }
            uri = target;
        }
        Err(OutboundError::Io(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            origin_of(&uri)
        )))
    }
}

impl HttpOutbound {
    /// [`Self::send`], then the whole body (at most
    /// [`MAX_RESPONSE_BYTES`]), all within the fetch deadline.
    pub async fn fetch_whole(
        &self,
        method: &str,
        uri: Uri,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(hyper::http::response::Parts, Bytes), HttpError> {
        let deadline = tokio::time::Instant::now() + self.fetch_deadline;
        let late = || {
            HttpError::Io(format!(
                "the response did not arrive in full within {} ms",
                self.fetch_deadline.as_millis()
            ))
        };
        let response = tokio::time::timeout_at(deadline, self.send(method, uri, headers, body))
            .await
            .map_err(|_| late())??;
        let (parts, body) = response.into_parts();
        let collected =
            tokio::time::timeout_at(deadline, Limited::new(body, MAX_RESPONSE_BYTES).collect())
                .await
                .map_err(|_| late())?;
        match collected {
            Ok(b) => Ok((parts, b.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(HttpError::TooLarge(MAX_RESPONSE_BYTES as u64))
            }
            Err(e) => Err(HttpError::Io(format!("reading the body: {e}"))),
        }
    }
}

/// An error and its causes, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<OutboundError> for HttpError {
    fn from(e: OutboundError) -> Self {
        match e {
            OutboundError::Denied(origin) => HttpError::Denied(origin),
            OutboundError::Invalid(m) => HttpError::InvalidRequest(m),
            OutboundError::Io(m) => HttpError::Io(m),
        }
    }
}

/// What `outbound-http` functions reach during one call: the plugin's
/// allow-list and connection pool, and the call's note of a request that
/// cannot be repeated.
pub(crate) struct OutboundHttpView<'a> {
    outbound: &'a HttpOutbound,
    /// The first request of the call that was not a GET or HEAD: a call
    /// that made one is not run again after a conflict.
    unrepeatable: &'a mut Option<String>,
    plugin: &'a str,
    request_id: &'a str,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> OutboundHttpView<'_> {
    OutboundHttpView {
        outbound: &call.plugin.outbound_http,
        unrepeatable: &mut call.unrepeatable,
        plugin: &call.plugin.name,
        request_id: &call.request_id,
    }
}

/// The `outbound-http` capability, for the linker.
pub(crate) struct OutboundHttp;

impl HasData for OutboundHttp {
    type Data<'a> = OutboundHttpView<'a>;
}

impl Host for OutboundHttpView<'_> {
    async fn fetch(&mut self, req: OutboundRequest) -> Result<OutboundResponse, Blame<HttpError>> {
        let uri = self.outbound.check(&req.url).map_err(HttpError::from)?;
        if self.unrepeatable.is_none()
            && !["GET", "HEAD"]
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&req.method))
        {
            *self.unrepeatable = Some(format!("a {} request to {}", req.method, req.url));
        }
        let (parts, body) = self
            .outbound
            .fetch_whole(&req.method, uri, &req.headers, req.body)
            .await
            .inspect_err(|e| {
                tracing::debug!(plugin = %self.plugin, request_id = %self.request_id, url = %req.url, error = ?e, "outbound request failed");
            })?;
        let headers = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Ok(OutboundResponse {
            status: parts.status.as_u16(),
            headers,
            body: body.to_vec(),
        })
    }

    fn convert_http_error(&mut self, e: Blame<HttpError>) -> wasmtime::Result<HttpError> {
        e.into_wit()
    }
}

#[cfg(test)]
mod tests;
