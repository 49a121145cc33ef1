//! The registry's HTTP API (`[admin]`): list, add, approve and revoke
//! gateways over plain HTTP on a listener of its own (not the gateways'
//! mutual-TLS one), every request authenticated by a bearer token read
//! from `admin.token_file`. JSON in and out; the operations are the ones
//! `depin-collector gateways` runs (`crate::gateways`).
//!
//! - `GET /v1/registry`: every registered gateway;
//! - `GET /v1/registry/{id}`: one;
//! - `POST /v1/registry` with `{"id": …}` or `{"device_cert_pem": …}`
//!   (optional `cert_sha256`, `pending`): registers it, 201;
//! - `POST /v1/registry/{id}/approve`, `POST /v1/registry/{id}/revoke`.
//!
//! Errors are `{"error": "…"}` with 400 (bad input), 401 (missing or wrong
//! token), 404 (unknown id or route), 405, 409 (already registered), 413
//! (body over `MAX_ADMIN_BODY`) or 503 (the store does not answer).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::gateways::{self, NewGateway, RegistryError};
use crate::json;
use crate::store::{GatewayStatus, Store};

/// Shortest bearer token accepted in `admin.token_file`, characters.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Largest request body (a gateway to add, with its certificate).
const MAX_ADMIN_BODY: usize = 64 * 1024;
/// Most admin connections open at once; more wait in the backlog.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// A request whose headers do not arrive in this long is dropped.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `[admin]` in `collector.toml`: the registry's HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Plain-HTTP address, e.g. `127.0.0.1:9444`. Keep it on loopback or
    /// a private network (or behind a TLS proxy): the token travels in
    /// clear.
    pub listen: SocketAddr,
    /// A file holding the bearer token (at least `MIN_TOKEN_CHARS`
    /// characters; surrounding whitespace is ignored), read at start.
    pub token_file: PathBuf,
}

/// Why the admin listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.token_file {path}: {problem}")]
    Token { path: String, problem: String },
    #[error("admin.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The registry API over one store.
pub struct RegistryApi {
    store: Store,
    token: String,
    connections: Arc<tokio::sync::Semaphore>,
}

impl RegistryApi {
    /// An API answering requests that carry `token`.
    pub fn new(store: Store, token: String) -> Self {
        Self {
            store,
            token,
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS)),
        }
    }

    /// Reads the token file and binds the listener; a missing, unreadable
    /// or short token stops the collector, so a typo never leaves the
    /// registry open.
    pub async fn bind(
        config: &AdminConfig,
        store: Store,
    ) -> Result<(Self, TcpListener), AdminError> {
        let fail = |problem: String| AdminError::Token {
            path: config.token_file.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(&config.token_file)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let token = text.trim().to_string();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(fail(format!(
                "the token must have at least {MIN_TOKEN_CHARS} characters"
            )));
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AdminError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Ok((Self::new(store, token), listener))
    }

    /// Serves plain HTTP on `listener` until aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let permit = self
                .connections
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }

    /// Answers one request: the token first, then the route.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Err(problem) = self.authorize(&req) {
            let mut r = error(StatusCode::UNAUTHORIZED, problem);
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let Some(rest) = path
            .strip_prefix("/v1/registry")
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        else {
            return error(StatusCode::NOT_FOUND, format!("no admin endpoint {path}"));
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let result = match (&method, segments.as_slice()) {
            (&Method::GET, []) => gateways::list(&self.store)
                .await
                .map(|all| (StatusCode::OK, serde_json::json!(all))),
            (&Method::POST, []) => {
                let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "the body cannot be read (at most {MAX_ADMIN_BODY} bytes): {e}"
                            ),
                        );
                    }
                };
                match serde_json::from_slice::<NewGateway>(&body) {
                    Ok(new) => gateways::add(&self.store, &new)
                        .await
                        .map(|g| (StatusCode::CREATED, serde_json::json!(g))),
                    Err(e) => Err(RegistryError::Invalid(format!(
                        "the body must be a JSON object with `id` or `device_cert_pem` \
                         (optional `cert_sha256`, `pending`): {e}"
                    ))),
                }
            }
            (&Method::GET, [id]) => match self.store.registered(id).await {
                Ok(Some(g)) => Ok((StatusCode::OK, serde_json::json!(g))),
                Ok(None) => Err(RegistryError::NotRegistered(id.to_string())),
                Err(e) => Err(e.into()),
            },
            (&Method::POST, [id, action @ ("approve" | "revoke")]) => {
                let status = if *action == "approve" {
                    GatewayStatus::Active
                } else {
                    GatewayStatus::Revoked
                };
                gateways::set_status(&self.store, id, status)
                    .await
                    .map(|g| (StatusCode::OK, serde_json::json!(g)))
            }
            (_, [] | [_] | [_, "approve" | "revoke"]) => {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not allowed on {path}"),
                );
            }
            _ => {
                return error(StatusCode::NOT_FOUND, format!("no admin endpoint {path}"));
            }
        };
        match result {
            Ok((status, body)) => json(status, body),
            Err(e) => {
                if let RegistryError::Storage(_) = &e {
                    tracing::error!(error = %e, "registry request failed");
                }
                error(e.status(), e.to_string())
            }
        }
    }

    fn authorize<B>(&self, req: &Request<B>) -> Result<(), String> {
        let Some(value) = req.headers().get(AUTHORIZATION) else {
            return Err("missing bearer token (Authorization: Bearer <admin.token_file>)".into());
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("the Authorization header is not `Bearer <token>`")?;
        if depin_gateway::admin::constant_time_eq(given.trim().as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            Err("wrong bearer token".into())
        }
    }
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests;
