//! The HTTP messages of a call: reading a request into the contract's
//! type, sizing what was received and sent, and building responses.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::{HttpBody, HttpIngress};
use crate::runtime::contract::{Body, HttpRequest, HttpResponse};
use crate::runtime::reuse;

impl HttpIngress {
    pub(super) async fn read_request(
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
        let timeout = std::time::Duration::from_millis(self.limits.body_read_timeout_ms);
        let collected = tokio::time::timeout(timeout, Limited::new(body, max).collect()).await;
        let Ok(collected) = collected else {
            crate::ingress::pressure::count(crate::ingress::pressure::HTTP_BODY_TIMEOUTS, &[], 1);
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    self.limits.body_read_timeout_ms
                ),
            ));
        };
        let body = match collected {
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

/// [`request_size`] of the request `req` would become, read off its head;
/// `None` when a header value is not visible ASCII.
pub(super) fn head_size<B>(req: &Request<B>, path: &str) -> Option<u64> {
    let mut head = req.method().as_str().len() + path.len() + req.uri().query().map_or(0, str::len);
    for (name, value) in req.headers() {
        value.to_str().ok()?;
        head += name.as_str().len() + value.len() + 4;
    }
    Some(head as u64)
}

pub(super) fn request_size(r: &HttpRequest) -> u64 {
    let head: usize = r.method.len()
        + r.path.len()
        + r.query.len()
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    (head + r.body.len()) as u64
}

pub(super) fn response_size(r: &Response<HttpBody>) -> u64 {
    use hyper::body::Body as _;
    let head: usize = r
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    head as u64 + r.body().size_hint().exact().unwrap_or(0)
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

pub(super) fn plugin_response(r: HttpResponse, request_id: &Arc<str>) -> Response<HttpBody> {
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

pub(super) fn set_request_id(response: &mut Response<HttpBody>, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
}

/// A JSON error body that carries the request id, so a caller can quote it
/// and an operator can find the call in the log.
pub(super) fn error_response(
    status: StatusCode,
    request_id: &str,
    message: &str,
) -> Response<HttpBody> {
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
