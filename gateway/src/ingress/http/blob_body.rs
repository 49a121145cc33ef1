//! Responses whose body is a stored blob (`body.blob`): the host streams
//! the file from the plugin's blob store, and answers `Range` (206 with
//! `content-range`, 416 when unsatisfiable), `HEAD` and `If-None-Match`
//! (304) itself. The `etag` is the digest. `content-length` is always the
//! number of bytes the body carries, so the bytes-out the host records are
//! the bytes served.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::Either;
use hyper::body::{Frame, SizeHint};
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};

use super::{HttpBody, error_response, plugin_response};
use crate::blobstore::{BlobDigest, BlobStore, OpenedBlob};
use crate::runtime::contract::{BlobRef, Body, HttpRequest, HttpResponse};

/// Largest read per body frame.
const CHUNK: usize = 1 << 20;
/// Bodies up to this size are read in one go on the calling thread.
const SMALL: u64 = 64 << 10;

/// What of the request decides how a blob is served.
#[derive(Debug, Clone, Default)]
pub(super) struct Conditional {
    head: bool,
    range: Option<String>,
    if_none_match: Option<String>,
}

impl Conditional {
    /// The same, read off a request's head before it became an
    /// `HttpRequest` (the answer is reused without a plugin call).
    pub(super) fn of_headers(head: bool, headers: &hyper::HeaderMap) -> Self {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            head,
            range: header(hyper::header::RANGE),
            if_none_match: header(hyper::header::IF_NONE_MATCH),
        }
    }

    pub(super) fn of(req: &HttpRequest) -> Self {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        Self {
            head: req.method == "HEAD",
            range: header("range"),
            if_none_match: header("if-none-match"),
        }
    }
}

/// The response for a plugin answer with a blob body. `hot`: the answer
/// is repeated by the host, so a small blob is served from the copy the
/// store keeps in memory ([`BlobStore::open_hot`]).
pub(super) fn respond(
    store: Option<&BlobStore>,
    r: HttpResponse,
    cond: &Conditional,
    request_id: &std::sync::Arc<str>,
    hot: bool,
) -> Response<HttpBody> {
    let Body::Blob(blob) = &r.body else {
        unreachable!("called for blob bodies only")
    };
    let BlobRef {
        digest,
        offset,
        length,
    } = blob.clone();
    let Some(store) = store else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            request_id,
            "the plugin answered with a blob but has no blob store ([plugin.blobs])",
        );
    };
    let digest = match BlobDigest::parse(&digest) {
        Ok(d) => d,
        Err(problem) => {
            tracing::warn!(%problem, "plugin answered with an invalid blob digest");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                request_id,
                "the plugin answered with an invalid blob digest",
            );
        }
    };
    let opened = if hot {
        store.open_hot(&digest)
    } else {
        store
            .open_blob(&digest)
            .map(|o| o.map(|(file, size)| OpenedBlob::File(file, size)))
    };
    let blob = match opened {
        Ok(Some(b)) => b,
        Ok(None) => {
            return error_response(
                StatusCode::NOT_FOUND,
                request_id,
                &format!("blob {} is not stored", digest.as_str()),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, store = %store.path().display(), "cannot open a blob");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                request_id,
                "cannot read the blob",
            );
        }
    };
    let size = blob.size();
    // The entity: the slice of the blob the plugin named.
    let start = offset.min(size);
    let len = length.map_or(size - start, |l| l.min(size - start));
    let whole = start == 0 && len == size;
    let etag = if whole {
        let mut tag = String::with_capacity(digest.as_str().len() + 2);
        tag.push('"');
        tag.push_str(digest.as_str());
        tag.push('"');
        tag
    } else {
        format!("\"{}:{start}-{}\"", digest.as_str(), start + len)
    };
    let status = r.status;
    let mut response = plugin_response(
        HttpResponse {
            status: r.status,
            headers: r.headers,
            body: Body::Bytes(Vec::new()),
        },
        request_id,
    );
    let ok = status == 200;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, v);
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if ok
        && cond
            .if_none_match
            .as_deref()
            .is_some_and(|v| etag_matches(v, &etag))
    {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let (from, count) = match cond.range.as_deref().filter(|_| ok) {
        None => (0, len),
        Some(range) => match parse_range(range, len) {
            RangeSpec::Ignore => (0, len),
            RangeSpec::Unsatisfiable => {
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    response.headers_mut().insert(CONTENT_RANGE, v);
                }
                return response;
            }
            RangeSpec::Satisfiable(first, last) => {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                    response.headers_mut().insert(CONTENT_RANGE, v);
                }
                (first, last - first + 1)
            }
        },
    };
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(count));
    if cond.head {
        return response;
    }
    let (parts, _) = response.into_parts();
    match open_body(blob, start + from, count) {
        Ok(body) => Response::from_parts(parts, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a blob");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                request_id,
                "cannot read the blob",
            )
        }
    }
}

/// The body for `count` bytes of `blob` from `position`: a slice of the
/// copy in memory, or read from the file at once when small (one syscall
/// beats a trip to the blocking pool), streamed otherwise.
fn open_body(blob: OpenedBlob, position: u64, count: u64) -> io::Result<HttpBody> {
    use std::io::{Read, Seek};
    let mut file = match blob {
        OpenedBlob::Memory(bytes) => {
            let slice = bytes.slice(position as usize..(position + count) as usize);
            return Ok(Either::Left(http_body_util::Full::new(slice)));
        }
        OpenedBlob::File(file, _) => file,
    };
    file.seek(io::SeekFrom::Start(position))?;
    if count <= SMALL {
        let mut bytes = vec![0u8; count as usize];
        file.read_exact(&mut bytes)?;
        return Ok(Either::Left(http_body_util::Full::new(Bytes::from(bytes))));
    }
    let mut file = tokio::fs::File::from_std(file);
    file.set_max_buf_size(CHUNK);
    Ok(Either::Right(BlobBody {
        file,
        remaining: count,
        buf: BytesMut::new(),
    }))
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Malformed or multi-range: serve the whole entity.
    Ignore,
    Unsatisfiable,
    /// First and last byte, inclusive.
    Satisfiable(u64, u64),
}

/// One `bytes=` range against an entity of `len` bytes (RFC 9110 14.1.2).
fn parse_range(header: &str, len: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(n) if len > 0 => RangeSpec::Satisfiable(len.saturating_sub(n), len - 1),
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Ignore,
        },
        // bytes=A-: from A to the end.
        (false, true) => match parse(first) {
            Some(a) if a < len => RangeSpec::Satisfiable(a, len - 1),
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Ignore,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(a), Some(b)) if a > b => RangeSpec::Ignore,
            (Some(a), Some(b)) if a < len => RangeSpec::Satisfiable(a, b.min(len - 1)),
            (Some(_), Some(_)) => RangeSpec::Unsatisfiable,
            _ => RangeSpec::Ignore,
        },
        (true, true) => RangeSpec::Ignore,
    }
}

/// A response body that streams the next `remaining` bytes of a file.
pub struct BlobBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
}

impl hyper::body::Body for BlobBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(CHUNK as u64) as usize;
        if this.buf.len() != want {
            this.buf.clear();
            this.buf.resize(want, 0);
        }
        let mut read_buf = ReadBuf::new(&mut this.buf[..]);
        match Pin::new(&mut this.file).poll_read(cx, &mut read_buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the blob file is shorter than its recorded size",
                    ))));
                }
                this.remaining -= n as u64;
                let chunk = this.buf.split_to(n).freeze();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Satisfiable(0, 9));
        assert_eq!(parse_range("bytes=90-200", 100), Satisfiable(90, 99));
        assert_eq!(parse_range("bytes=95-", 100), Satisfiable(95, 99));
        assert_eq!(parse_range("bytes=-10", 100), Satisfiable(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), Satisfiable(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=200-300", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
    }

    #[test]
    fn etags_match_lists_weak_tags_and_star() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(!etag_matches("\"a\"", "\"b\""));
    }
}
