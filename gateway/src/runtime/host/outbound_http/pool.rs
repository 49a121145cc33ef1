//! The connection pool's connector: TCP, with TLS (rustls, HTTP/1.1) for
//! `https://` origins; connections are kept alive and reused.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;

/// The rustls client configuration: system roots plus `extra_roots`.
pub(super) fn tls_config(extra_roots: Option<&Path>) -> Result<rustls::ClientConfig, String> {
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

/// Opens the pool's connections: TCP, with TLS (rustls, HTTP/1.1) for
/// `https://` URIs. Only origins on the allow-list get here.
#[derive(Clone)]
pub(super) struct PoolConnector {
    pub(super) http: HttpConnector,
    /// Present when an `https://` origin is allowed.
    pub(super) tls: Option<tokio_rustls::TlsConnector>,
}

type ConnectError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for PoolConnector {
    type Response = PoolStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<PoolStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let tcp = http.call(uri.clone()).await?;
            if !https {
                return Ok(PoolStream::Plain(tcp));
            }
            let tls = tls.ok_or("no https origin is allowed")?;
            let host = uri.host().unwrap_or_default();
            // IPv6 literals come bracketed in URLs.
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let server_name = rustls::pki_types::ServerName::try_from(bare)
                .map_err(|e| format!("`{host}`: {e}"))?;
            let stream = tls
                .connect(server_name, tcp.into_inner())
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            Ok(PoolStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A pooled connection, plain or TLS.
pub(super) enum PoolStream {
    Plain(TokioIo<tokio::net::TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

impl Connection for PoolStream {
    fn connected(&self) -> Connected {
        match self {
            PoolStream::Plain(s) => s.connected(),
            PoolStream::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

impl hyper::rt::Read for PoolStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PoolStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for PoolStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PoolStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PoolStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PoolStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
