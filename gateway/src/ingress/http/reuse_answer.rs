//! Answers from a plugin's reusable answers ([`crate::runtime::reuse`]):
//! no plugin call, the same claims, the host's own records, durable before
//! the response.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::message::{head_size, response_size};
use super::{CallFacts, HttpBody, HttpIngress, blob_body};
use crate::call::{self, HostMeasurements};
use crate::runtime::LoadedPlugin;
use crate::runtime::reuse;

impl HttpIngress {
    /// Answers `req` from the plugin's reusable answer for it: the same
    /// blob, the same plugin-claimed records plus the host's own, durable
    /// before the response, with no plugin call. Gives the request back
    /// when there is no live answer (or its blob is gone), so the plugin is
    /// called as usual.
    pub(super) async fn reuse(
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
        let measured = HostMeasurements {
            wall: Some(started.elapsed()),
            ..HostMeasurements::default()
        }
        .bytes_in(bytes_in)
        .bytes_out(bytes_out);
        let encoded =
            call::records(plugin.name(), request_id, &measured, &[]).map(|mut records| {
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
                Default::default(),
                response,
                facts,
                request_id,
            )
            .await)
    }
}
