//! `depin:plugin/outbound-http`: HTTP requests to the origins on the
//! plugin's `[plugin.outbound] http` allow-list. The allow-list is checked
//! before anything is resolved or connected; everything else is refused
//! with an error the plugin sees.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wasmtime::Result;

use crate::config::parse_http_origin;
use crate::runtime::contract::depin::plugin::outbound_http::{
    Host, HttpError, OutboundRequest, OutboundResponse,
};
use crate::runtime::state::CallState;

/// Largest response body `fetch` returns, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Longest wait for a response's head (connect, send, first byte).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// One plugin's outbound HTTP capability: its allow-list and a connection
/// pool.
pub struct HttpOutbound {
    allowed: Vec<(String, String, u16)>,
    client: Client<HttpConnector, Full<Bytes>>,
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
    /// [`parse_http_origin`]).
    pub fn new(origins: &[String]) -> Result<Self, String> {
        let allowed = origins
            .iter()
            .map(|o| parse_http_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { allowed, client })
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
        if scheme == "https" {
            return Err(OutboundError::Invalid(format!(
                "`{origin}`: https is not supported by this gateway build yet"
            )));
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
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(OutboundError::Io(error_chain(&e))),
            Err(_) => Err(OutboundError::Io(format!(
                "no response within {} s",
                RESPONSE_TIMEOUT.as_secs()
            ))),
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

impl Host for CallState {
    async fn fetch(&mut self, req: OutboundRequest) -> Result<Result<OutboundResponse, HttpError>> {
        let outbound = self.plugin.outbound_http.clone();
        let uri = match outbound.check(&req.url) {
            Ok(uri) => uri,
            Err(e) => return Ok(Err(e.into())),
        };
        let response = match outbound
            .send(&req.method, uri, &req.headers, req.body)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(plugin = %self.plugin.name, request_id = %self.request_id, url = %req.url, error = %e, "outbound request failed");
                return Ok(Err(e.into()));
            }
        };
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Ok(Err(HttpError::TooLarge(MAX_RESPONSE_BYTES as u64)));
            }
            Err(e) => return Ok(Err(HttpError::Io(format!("reading the body: {e}")))),
        };
        let headers = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Ok(Ok(OutboundResponse {
            status: parts.status.as_u16(),
            headers,
            body: body.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_listed_origins_pass() {
        let o = HttpOutbound::new(&["http://127.0.0.1:5000".into(), "http://Example.org".into()])
            .unwrap();
        assert!(o.check("http://127.0.0.1:5000/v2/x").is_ok());
        assert!(o.check("http://example.org/a").is_ok());
        assert!(o.check("http://example.org:80/a").is_ok());
        for denied in [
            "http://127.0.0.1:5001/v2/x",
            "http://example.org:8080/",
            "http://user@127.0.0.1:5000/",
            "http://evil.example.org/",
        ] {
            assert!(
                matches!(o.check(denied), Err(OutboundError::Denied(_))),
                "{denied}"
            );
        }
        assert!(matches!(
            o.check("not a url"),
            Err(OutboundError::Invalid(_))
        ));
    }
}
