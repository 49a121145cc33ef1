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
use hyper_util::rt::{TokioExecutor, TokioIo};
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
/// Most redirects [`HttpOutbound::get_following`] follows.
pub const MAX_REDIRECTS: usize = 5;

/// One plugin's outbound HTTP capability: its allow-list, a connection pool
/// for `http://` and a TLS configuration (rustls) for `https://`.
pub struct HttpOutbound {
    allowed: Vec<(String, String, u16)>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Present when an `https://` origin is allowed.
    tls: Option<Arc<rustls::ClientConfig>>,
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
            Some(Arc::new(tls_config(extra_roots)?))
        } else {
            None
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            allowed,
            client,
            tls,
        })
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
            match &self.tls {
                Some(tls) if request.uri().scheme_str() == Some("https") => {
                    send_tls(tls.clone(), request).await
                }
                _ => self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| OutboundError::Io(error_chain(&e))),
            }
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
    /// object store. `authorization` is not sent on to another origin.
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
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
            }
            uri = target;
        }
        Err(OutboundError::Io(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            origin_of(&uri)
        )))
    }
}

/// `scheme://host:port` of an absolute URI.
fn origin_of(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{}:{port}", uri.host().unwrap_or_default())
}

/// A redirect's `location` as an absolute URL: absolute already, or a path
/// on the same origin.
fn resolve_location(base: &Uri, location: &str) -> Result<String, OutboundError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let scheme = base.scheme_str().unwrap_or("http");
        let authority = base.authority().map_or("", |a| a.as_str());
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    Err(OutboundError::Invalid(format!(
        "a redirect to `{location}`, which is neither an absolute URL nor an absolute path"
    )))
}

/// The rustls client configuration: system roots plus `extra_roots`.
fn tls_config(extra_roots: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate could not be loaded");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_roots {
        let pem = std::fs::read(path)
            .map_err(|e| format!("{}: cannot read the CA file: {e}", path.display()))?;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!("{}: no PEM certificates", path.display()));
        }
    }
    if roots.is_empty() {
        return Err(
            "https origins are allowed but no root certificates were found (install \
             ca-certificates or set [plugin.outbound] http_ca_file)"
                .into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One request over a fresh TLS connection (HTTP/1.1).
async fn send_tls(
    tls: Arc<rustls::ClientConfig>,
    mut request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, OutboundError> {
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(443);
    // IPv6 literals come bracketed in URLs.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let server_name = rustls::pki_types::ServerName::try_from(bare.clone())
        .map_err(|e| OutboundError::Invalid(format!("`{host}`: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| OutboundError::Io(format!("connecting to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| OutboundError::Io(format!("TLS with {host}:{port}: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| OutboundError::Io(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "outbound TLS connection ended with an error");
        }
    });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path
        .parse()
        .map_err(|e| OutboundError::Invalid(format!("`{path}`: {e}")))?;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&authority) {
        request.headers_mut().insert(hyper::header::HOST, v);
    }
    sender
        .send_request(request)
        .await
        .map_err(|e| OutboundError::Io(error_chain(&e)))
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
        let o = HttpOutbound::new(
            &["http://127.0.0.1:5000".into(), "http://Example.org".into()],
            None,
        )
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

    #[test]
    fn redirect_locations_resolve_against_the_request() {
        let base: Uri = "https://registry.example:5000/v2/a/blobs/x"
            .parse()
            .unwrap();
        assert_eq!(
            resolve_location(&base, "/cdn/x?sig=1").unwrap(),
            "https://registry.example:5000/cdn/x?sig=1"
        );
        assert_eq!(
            resolve_location(&base, "http://cdn.example/x").unwrap(),
            "http://cdn.example/x"
        );
        assert!(resolve_location(&base, "//cdn.example/x").is_err());
        assert!(resolve_location(&base, "x").is_err());
        assert_eq!(origin_of(&base), "https://registry.example:5000");
    }
}
