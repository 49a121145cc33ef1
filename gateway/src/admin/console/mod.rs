//! The operator's console: `/ui` on the admin listener. One
//! server-rendered page (inline CSS and SVG charts, no script, nothing
//! loaded from elsewhere) with the plugins, usage over the last epochs,
//! epochs and their delivery, challenges and self-checks, the outbox and
//! the collector connection, and storage.
//!
//! | request | answers |
//! |---|---|
//! | `GET /ui` | the page when signed in (or no token is configured), else 303 to `/ui/login` |
//! | `GET /ui/login` | the login form (`?failed` adds "Wrong token.") |
//! | `POST /ui/login` | `token=…`: right → session cookie and 303 to `/ui`; wrong → 303 to `/ui/login?failed` |
//! | `POST /ui/logout` | `csrf=…`: ends the session, 303 to `/ui/login` |
//! | `POST /ui/reload` | `csrf=…`: reloads the plugins, 303 to `/ui`; needs a configured token |

pub mod auth;
pub mod charts;
pub mod gauges;
pub mod html;
pub mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};

use super::constant_time_eq;
use crate::reload::Reloader;
pub use view::{ConsoleSources, Snapshot};

/// Largest form body accepted.
pub const MAX_FORM_BYTES: usize = 4096;

/// How a request was let in.
enum Access {
    /// No admin token is configured: the page is open, nothing can change.
    Open,
    /// A signed-in browser; its session id and CSRF token.
    Session { id: String, csrf: String },
    /// A client that sent the bearer token (read only here).
    Bearer,
}

/// What the admin listener knows about a request before the console sees
/// it.
pub struct Admission<'a> {
    /// The configured admin token.
    pub token: Option<&'a str>,
    /// Whether the request carries the right bearer token.
    pub bearer_ok: bool,
    /// The request's (already allowed) `Host`.
    pub host: &'a str,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
}

/// The console's state.
pub struct Console {
    sources: Arc<ConsoleSources>,
    reloader: Arc<Reloader>,
    gateway_id: String,
    started: Instant,
    sessions: auth::Sessions,
    /// Call counts at the previous view, for calls/s.
    last_counts: Mutex<Option<(Instant, BTreeMap<String, u64>)>>,
}

type Body = Full<Bytes>;

impl Console {
    pub fn new(sources: ConsoleSources, reloader: Arc<Reloader>, gateway_id: String) -> Self {
        Self {
            sources: Arc::new(sources),
            reloader,
            gateway_id,
            started: Instant::now(),
            sessions: auth::Sessions::default(),
            last_counts: Mutex::new(None),
        }
    }

    /// Reads everything the page and the gauges show, off the async
    /// threads.
    pub async fn snapshot(&self) -> Snapshot {
        let sources = self.sources.clone();
        let table = self.reloader.table().clone();
        tokio::task::spawn_blocking(move || Snapshot::gather(&sources, &table))
            .await
            .expect("console snapshot")
    }

    /// The scrape-time gauges of `/metrics`.
    pub async fn gauges(&self, ready: bool) -> String {
        gauges::render(&self.snapshot().await, ready)
    }

    /// Answers a request below `/ui`.
    pub async fn handle(&self, req: Request<Incoming>, a: Admission<'_>) -> Response<Body> {
        let access = self.access(&req, &a);
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/ui" | "/ui/") => match access {
                Some(access) => self.page(access, a.ready).await,
                None => see_other("/ui/login", None),
            },
            (Method::GET, "/ui/login") => match (a.token, access) {
                (None, _) | (_, Some(Access::Session { .. })) => see_other("/ui", None),
                _ => {
                    let failed = req.uri().query().is_some_and(|q| q == "failed");
                    html(
                        StatusCode::OK,
                        html::login_page(failed.then_some("Wrong token.")),
                    )
                }
            },
            (Method::POST, "/ui/login") => {
                let Some(token) = a.token else {
                    return see_other("/ui", None);
                };
                let given = match read_form(req, "token").await {
                    Ok(v) => v.unwrap_or_default(),
                    Err(r) => return r,
                };
                if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                    let id = self.sessions.start();
                    tracing::info!("console: signed in");
                    see_other("/ui", Some(auth::set_cookie(&id)))
                } else {
                    tracing::warn!("console: sign-in with a wrong token");
                    see_other("/ui/login?failed", None)
                }
            }
            (Method::POST, "/ui/logout") => {
                let Some(Access::Session { id, csrf }) = access else {
                    return see_other("/ui/login", Some(auth::clear_cookie()));
                };
                if let Err(r) = self.check_form(req, &csrf, a.host).await {
                    return r;
                }
                self.sessions.end(&id);
                see_other("/ui/login", Some(auth::clear_cookie()))
            }
            (Method::POST, "/ui/reload") => {
                let csrf = match access {
                    _ if a.token.is_none() => {
                        return html(
                            StatusCode::FORBIDDEN,
                            html::refusal_page(
                                "Reloading needs admin.token_file: requests that change something \
                                 require the admin token, also on loopback.",
                            ),
                        );
                    }
                    Some(Access::Session { csrf, .. }) => csrf,
                    _ => return see_other("/ui/login", None),
                };
                if let Err(r) = self.check_form(req, &csrf, a.host).await {
                    return r;
                }
                match self.reloader.reload("console").await {
                    Ok(report) => {
                        tracing::info!(generation = report.generation, "console: plugins reloaded")
                    }
                    Err(e) => tracing::warn!(error = %e, "console: reload refused"),
                }
                see_other("/ui", None)
            }
            (_, "/ui" | "/ui/" | "/ui/login" | "/ui/logout" | "/ui/reload") => html(
                StatusCode::METHOD_NOT_ALLOWED,
                html::refusal_page("That method is not allowed here."),
            ),
            _ => html(
                StatusCode::NOT_FOUND,
                html::refusal_page("No such console page."),
            ),
        }
    }

    fn access(&self, req: &Request<Incoming>, a: &Admission<'_>) -> Option<Access> {
        if a.token.is_none() {
            return Some(Access::Open);
        }
        let session = req
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| auth::session_id(v).map(str::to_string));
        if let Some(id) = session
            && let Some(csrf) = self.sessions.csrf(&id)
        {
            return Some(Access::Session { id, csrf });
        }
        a.bearer_ok.then_some(Access::Bearer)
    }

    /// Refuses a form from another origin or without the session's CSRF
    /// token.
    async fn check_form(
        &self,
        req: Request<Incoming>,
        csrf: &str,
        host: &str,
    ) -> Result<(), Response<Body>> {
        let foreign = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let origin_ok = foreign("origin").is_none_or(|o| o == format!("http://{host}"));
        let site_ok = foreign("sec-fetch-site").is_none_or(|s| s == "same-origin");
        let given = read_form(req, "csrf").await?.unwrap_or_default();
        if origin_ok && site_ok && constant_time_eq(given.as_bytes(), csrf.as_bytes()) {
            Ok(())
        } else {
            tracing::warn!("console: form refused (CSRF token or origin)");
            Err(html(
                StatusCode::FORBIDDEN,
                html::refusal_page(
                    "This form did not come from this console page (CSRF check failed).",
                ),
            ))
        }
    }

    async fn page(&self, access: Access, ready: bool) -> Response<Body> {
        let snapshot = self.snapshot().await;
        let rates = self.rates(&snapshot);
        let ctx = html::PageContext {
            gateway_id: self.gateway_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: self.started.elapsed().as_secs(),
            generation: self.reloader.table().snapshot().generation,
            rates,
            csrf: match access {
                Access::Session { csrf, .. } => Some(csrf),
                Access::Open | Access::Bearer => None,
            },
            last_reload: self.reloader.last_report(),
            ready,
        };
        html(StatusCode::OK, html::console_page(&ctx, &snapshot))
    }

    /// Calls per second per plugin since the previous view (at least a
    /// second ago), else since the console started.
    fn rates(&self, s: &Snapshot) -> BTreeMap<String, f64> {
        let now = Instant::now();
        let counts: BTreeMap<String, u64> = s
            .plugins
            .iter()
            .map(|p| (p.name.clone(), p.calls))
            .collect();
        let mut last = self.last_counts.lock().expect("rates lock");
        let (since, base) = match &*last {
            Some((at, base)) if now.duration_since(*at) >= Duration::from_secs(1) => {
                (*at, base.clone())
            }
            _ => (self.started, BTreeMap::new()),
        };
        if last
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            *last = Some((now, counts.clone()));
        }
        let secs = now.duration_since(since).as_secs_f64().max(0.001);
        counts
            .into_iter()
            .map(|(name, n)| {
                let before = base.get(&name).copied().unwrap_or(0);
                (name, n.saturating_sub(before) as f64 / secs)
            })
            .collect()
    }
}

async fn read_form(req: Request<Incoming>, key: &str) -> Result<Option<String>, Response<Body>> {
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| {
            html(
                StatusCode::PAYLOAD_TOO_LARGE,
                html::refusal_page("The form is too large."),
            )
        })?
        .to_bytes();
    Ok(auth::form_value(&body, key))
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    r
}

fn see_other(location: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut r = html(StatusCode::SEE_OTHER, String::new());
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(location));
    if let Some(c) = cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}
