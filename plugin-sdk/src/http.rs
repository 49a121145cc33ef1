//! Conveniences on the HTTP types of the contract.

use crate::{Body, HttpRequest, HttpResponse};

impl HttpRequest {
    /// A request with no query, headers or body (for tests).
    pub fn new(method: &str, path: &str) -> Self {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The same request with `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The same request with `query` (without `?`).
    pub fn with_query(mut self, query: &str) -> Self {
        self.query = query.into();
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name` (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether the request carries `authorization: Bearer <token>`, compared
    /// in constant time (the time taken does not tell how much matched).
    pub fn has_bearer(&self, token: &str) -> bool {
        let given = self
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .as_bytes();
        let token = token.as_bytes();
        given.len() == token.len()
            && given
                .iter()
                .zip(token)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

/// The response header that marks an answer reusable (see
/// [`HttpResponse::reusable_for_ms`]); the host removes it.
pub const REUSE_HEADER: &str = "depin-reuse-ms";

impl HttpResponse {
    /// A response with a raw body and a content type.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: Body::Bytes(body.into()),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: &str) -> Self {
        Self::bytes(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    /// An `application/json` response.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::bytes(status, "application/json", body),
            Err(e) => Self::text(500, &format!("cannot encode the response: {e}")),
        }
    }

    /// A response whose body is the stored blob `digest`, streamed by the
    /// host (which also answers `Range`, `HEAD` and `If-None-Match`).
    pub fn blob(status: u16, content_type: &str, digest: &str) -> Self {
        Self::blob_range(status, content_type, digest, 0, None)
    }

    /// A response whose body is `length` bytes (or the rest) of the stored
    /// blob `digest` from `offset`.
    pub fn blob_range(
        status: u16,
        content_type: &str,
        digest: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Self {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: Body::Blob(crate::BlobRef {
                digest: digest.into(),
                offset,
                length,
            }),
        }
    }

    /// Lets the host answer the same request (method, path and query) with
    /// this answer for the next `ms` milliseconds (at most 60 s) without
    /// calling the plugin: it serves the same blob and records this call's
    /// usage records again, each time, durably before the response. Only
    /// blob answers with status 200 are reused; anything else the plugin did
    /// in this call (kv writes, logs) is not repeated. Use it for answers
    /// that depend on nothing but the path, such as content-addressed
    /// blobs; a deleted blob ends the reuse. A reload forgets every reusable
    /// answer.
    pub fn reusable_for_ms(self, ms: u32) -> Self {
        if ms == 0 {
            return self;
        }
        self.with_header(REUSE_HEADER, &ms.to_string())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The body bytes (empty for a blob body).
    pub fn body_bytes(&self) -> &[u8] {
        match &self.body {
            Body::Bytes(b) => b,
            Body::Blob(_) => &[],
        }
    }
}
