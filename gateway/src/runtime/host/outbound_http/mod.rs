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
/// origin that trickles its body cannot hold a call past it.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(60);

/// One plugin's outbound HTTP capability: its allow-list and one pool of
/// kept-alive connections, `http://` and `https://` (rustls) alike.
pub struct HttpOutbound {
    allowed: Vec<(String, String, u16)>,
    client: Client<PoolConnector, Full<Bytes>>,
    /// [`FETCH_DEADLINE`], shorter in tests.
    fetch_deadline: Duration,
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
    /// [`MAX_RESPONSE_BYTES`]), all within [`FETCH_DEADLINE`].
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
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

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

    /// An HTTPS server on a loopback port (HTTP/1.1, keep-alive) that
    /// answers every request with `ok` and counts its connections; its
    /// certificate is written to `ca` for the client to trust.
    async fn counting_tls_server(
        ca: &Path,
    ) -> (
        u16,
        Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(ca, certified.cert.pem()).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (port, accepted, task)
    }

    #[tokio::test]
    async fn https_connections_are_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let (port, accepted, server) = counting_tls_server(&ca).await;
        let origin = format!("https://127.0.0.1:{port}");
        let outbound = HttpOutbound::new(std::slice::from_ref(&origin), Some(&ca)).unwrap();
        for i in 0..3 {
            let uri = outbound.check(&format!("{origin}/r/{i}")).unwrap();
            let response = outbound.send("GET", uri, &[], Vec::new()).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.as_ref(), b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        server.abort();
    }

    /// A plain HTTP server on a loopback port that answers `routes`
    /// (path -> status line and extra header lines; 404 otherwise), one
    /// request per connection, and keeps every request's head.
    async fn recording_server(
        routes: Vec<(String, String)>,
    ) -> (
        u16,
        Arc<std::sync::Mutex<Vec<String>>>,
        tokio::task::JoinHandle<()>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                kept.lock().unwrap().push(head);
                let answer = routes
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map_or("404 Not Found\r\n".to_string(), |(_, a)| a.clone());
                let reply =
                    format!("HTTP/1.1 {answer}content-length: 2\r\nconnection: close\r\n\r\nok");
                let _ = tcp.write_all(reply.as_bytes()).await;
                let _ = tcp.shutdown().await;
            }
        });
        (port, heads, task)
    }

    fn has_authorization(head: &str) -> bool {
        head.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("authorization:"))
    }

    #[tokio::test]
    async fn redirects_keep_authorization_on_their_origin_only_and_stay_allow_listed() {
        let (cdn_port, cdn_heads, cdn) =
            recording_server(vec![("/blob".into(), "200 OK\r\n".into())]).await;
        let (other_port, other_heads, other) = recording_server(vec![]).await;
        let cdn_url = format!("http://127.0.0.1:{cdn_port}");
        let (port, heads, registry) = recording_server(vec![
            (
                "/same".into(),
                "307 Temporary Redirect\r\nlocation: /here\r\n".into(),
            ),
            ("/here".into(), "200 OK\r\n".into()),
            (
                "/cross".into(),
                format!("307 Temporary Redirect\r\nlocation: {cdn_url}/blob\r\n"),
            ),
            (
                "/away".into(),
                format!("302 Found\r\nlocation: http://127.0.0.1:{other_port}/blob\r\n"),
            ),
        ])
        .await;
        let registry_url = format!("http://127.0.0.1:{port}");
        let outbound = HttpOutbound::new(&[registry_url.clone(), cdn_url], None).unwrap();
        let auth = [("Authorization".to_string(), "Bearer t".to_string())];
        let get = |path: &str| {
            let uri = outbound.check(&format!("{registry_url}{path}")).unwrap();
            outbound.get_following(uri, &auth)
        };

        assert_eq!(get("/same").await.unwrap().status(), 200);
        assert_eq!(get("/cross").await.unwrap().status(), 200);
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 3);
        assert!(heads.iter().all(|h| has_authorization(h)), "{heads:?}");
        let cdn_heads = cdn_heads.lock().unwrap().clone();
        assert_eq!(cdn_heads.len(), 1);
        assert!(!has_authorization(&cdn_heads[0]), "{}", cdn_heads[0]);

        let e = get("/away").await.unwrap_err();
        assert!(
            matches!(&e, OutboundError::Denied(m) if m.contains("redirect")),
            "{e}"
        );
        assert!(other_heads.lock().unwrap().is_empty(), "never contacted");
        for t in [cdn, other, registry] {
            t.abort();
        }
    }

    #[tokio::test]
    async fn a_redirect_to_another_origin_carries_only_allow_listed_headers() {
        let (cdn_port, cdn_heads, cdn) =
            recording_server(vec![("/blob".into(), "200 OK\r\n".into())]).await;
        let cdn_url = format!("http://127.0.0.1:{cdn_port}");
        let (port, heads, registry) = recording_server(vec![
            (
                "/same".into(),
                "307 Temporary Redirect\r\nlocation: /here\r\n".into(),
            ),
            ("/here".into(), "200 OK\r\n".into()),
            (
                "/cross".into(),
                format!("307 Temporary Redirect\r\nlocation: {cdn_url}/blob\r\n"),
            ),
        ])
        .await;
        let registry_url = format!("http://127.0.0.1:{port}");
        let outbound = HttpOutbound::new(&[registry_url.clone(), cdn_url], None).unwrap();
        let headers: Vec<(String, String)> = [
            ("X-Registry-Token", "secret-1"),
            ("Cookie", "session=secret-2"),
            ("Proxy-Authorization", "Basic secret-3"),
            ("Range", "bytes=0-9"),
            ("Accept", "application/octet-stream"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let get = |path: &str| {
            let uri = outbound.check(&format!("{registry_url}{path}")).unwrap();
            outbound.get_following(uri, &headers)
        };
        assert_eq!(get("/same").await.unwrap().status(), 200);
        assert_eq!(get("/cross").await.unwrap().status(), 200);
        let heads = heads.lock().unwrap().clone();
        assert!(
            heads
                .iter()
                .all(|h| h.contains("secret-1") && h.contains("secret-2")),
            "the origin itself gets everything: {heads:?}"
        );
        let cdn_head = cdn_heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(!cdn_head.contains("secret"), "{cdn_head}");
        assert!(cdn_head.contains("range: bytes=0-9"), "{cdn_head}");
        assert!(
            cdn_head.contains("accept: application/octet-stream"),
            "{cdn_head}"
        );
        cdn.abort();
        registry.abort();
    }

    #[tokio::test]
    async fn a_trickled_body_is_cut_off_at_the_fetch_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = tcp.read(&mut buf).await;
            // A prompt head, then one body byte every 100 ms: never idle
            // for long, never done.
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
            let _ = tcp.write_all(head).await;
            loop {
                if tcp.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        let mut outbound = HttpOutbound::new(std::slice::from_ref(&url), None).unwrap();
        outbound.fetch_deadline = Duration::from_millis(700);
        let started = std::time::Instant::now();
        let uri = outbound.check(&format!("{url}/slow")).unwrap();
        let e = outbound
            .fetch_whole("GET", uri, &[], Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HttpError::Io(m) if m.contains("within 700 ms")),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        server.abort();
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
        assert_eq!(
            resolve_location(&base, "HTTPS://cdn.example/x").unwrap(),
            "https://cdn.example/x"
        );
        assert_eq!(
            resolve_location(&base, "//cdn.example/x").unwrap(),
            "https://cdn.example/x"
        );
        let here = "https://registry.example:5000";
        for (location, resolved) in [
            ("y", "/v2/a/blobs/y"),
            ("../z?a=1", "/v2/a/z?a=1"),
            ("./", "/v2/a/blobs/"),
            ("../../../../..", "/"),
            ("?q=1", "/v2/a/blobs/x?q=1"),
            ("/a/./b/../c#frag", "/a/c"),
        ] {
            assert_eq!(
                resolve_location(&base, location).unwrap(),
                format!("{here}{resolved}"),
                "{location}"
            );
        }
        assert_eq!(origin_of(&base), "https://registry.example:5000");
    }
}
