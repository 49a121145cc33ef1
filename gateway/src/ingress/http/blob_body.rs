//! Responses whose body is a stored blob (`body.blob`): the host streams
//! the file from the plugin's blob store, and answers `Range` (206 with
//! `content-range`, 416 when unsatisfiable), `HEAD` and `If-None-Match`
//! (304) itself. The `etag` is the digest. `content-length` is always the
//! number of bytes the body carries, so the bytes-out the host records are
//! the bytes served.
//!
//! A blob the call passed through (`blobs.pass-through`) is streamed from
//! the origin's response instead, whole, hashed on the way: if the bytes
//! do not hash to the digest, the body ends in an error before its last
//! frame, so the client never receives a complete wrong blob. Its bytes-out
//! are the length the origin announced, recorded before the first byte, so
//! a body cut short (wrong bytes, an origin silent for
//! [`BODY_IDLE_TIMEOUT`], a client gone) counts its full length.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::Either;
use hyper::body::{Frame, SizeHint};
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};

use super::range::{RangeSpec, etag_matches, parse_range};
use super::{HttpBody, error_response, plugin_response};
use sha2::{Digest, Sha256};

use crate::blobstore::{BlobDigest, BlobStore, OpenedBlob};
use crate::runtime::BODY_IDLE_TIMEOUT;
use crate::runtime::PassThrough;
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
/// store keeps in memory ([`BlobStore::open_hot`]). `pass`: the origin
/// response the call opened for passing a blob through; used when it is
/// for the answer's digest.
pub(super) fn respond(
    store: Option<&BlobStore>,
    r: HttpResponse,
    cond: &Conditional,
    request_id: &std::sync::Arc<str>,
    hot: bool,
    pass: Option<PassThrough>,
) -> Response<HttpBody> {
    let Body::Blob(blob) = &r.body else {
        unreachable!("called for blob bodies only")
    };
    let BlobRef {
        digest,
        offset,
        length,
    } = blob.clone();
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
    if let Some(pass) = pass.filter(|p| p.digest == digest) {
        return passed_through(r, pass, cond, request_id);
    }
    let Some(store) = store else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            request_id,
            "the plugin answered with a blob but has no blob store ([plugin.blobs])",
        );
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
        whole_etag(&digest)
    } else {
        format!("\"{}:{start}-{}\"", digest.as_str(), start + len)
    };
    let ok = r.status == 200;
    let mut response = head_response(r, &etag, request_id);
    response
        .headers_mut()
        .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if ok && cond.not_modified(&etag) {
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

/// `"<digest>"`, the etag of a whole blob.
fn whole_etag(digest: &BlobDigest) -> String {
    let mut tag = String::with_capacity(digest.as_str().len() + 2);
    tag.push('"');
    tag.push_str(digest.as_str());
    tag.push('"');
    tag
}

/// The plugin's status and headers with the blob's `etag`; no body yet.
fn head_response(
    r: HttpResponse,
    etag: &str,
    request_id: &std::sync::Arc<str>,
) -> Response<HttpBody> {
    let mut response = plugin_response(
        HttpResponse {
            status: r.status,
            headers: r.headers,
            body: Body::Bytes(Vec::new()),
        },
        request_id,
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(ETAG, v);
    }
    response
}

impl Conditional {
    /// Whether `If-None-Match` names `etag`.
    fn not_modified(&self, etag: &str) -> bool {
        self.if_none_match
            .as_deref()
            .is_some_and(|v| etag_matches(v, etag))
    }
}

/// The response for a blob passed through from its origin: whole (no
/// ranges), verified while it streams.
fn passed_through(
    r: HttpResponse,
    pass: PassThrough,
    cond: &Conditional,
    request_id: &std::sync::Arc<str>,
) -> Response<HttpBody> {
    let PassThrough {
        digest,
        size,
        response: origin,
        deadline,
        deadline_ms,
    } = pass;
    if size == 0 && BlobDigest::of(&[]) != digest {
        return error_response(
            StatusCode::BAD_GATEWAY,
            request_id,
            &format!("the origin's bytes do not match {}", digest.as_str()),
        );
    }
    let ok = r.status == 200;
    let mut response = head_response(r, &whole_etag(&digest), request_id);
    response
        .headers_mut()
        .insert(ACCEPT_RANGES, HeaderValue::from_static("none"));
    if ok && cond.not_modified(&whole_etag(&digest)) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(size));
    if cond.head {
        return response;
    }
    let (parts, _) = response.into_parts();
    let body = BlobBody {
        source: Source::Origin {
            body: origin.into_body(),
            hasher: Sha256::new(),
            digest,
            idle: Box::pin(tokio::time::sleep(BODY_IDLE_TIMEOUT)),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            deadline_ms,
        },
        remaining: size,
    };
    Response::from_parts(parts, Either::Right(body))
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
        source: Source::File {
            file,
            buf: BytesMut::new(),
        },
        remaining: count,
    }))
}

/// A response body that streams the next `remaining` bytes of a stored
/// blob's file, or of a passed-through blob's origin response.
pub struct BlobBody {
    source: Source,
    remaining: u64,
}

enum Source {
    File {
        file: tokio::fs::File,
        buf: BytesMut,
    },
    Origin {
        body: hyper::body::Incoming,
        hasher: Sha256,
        digest: BlobDigest,
        /// Fires when the origin has sent nothing for `BODY_IDLE_TIMEOUT`.
        idle: Pin<Box<tokio::time::Sleep>>,
        /// Fires at the plugin's blob deadline, counted from the request to
        /// the origin: the body is cut however steadily it trickles.
        deadline: Pin<Box<tokio::time::Sleep>>,
        deadline_ms: u128,
    },
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
        match &mut this.source {
            Source::File { file, buf } => poll_file(file, buf, &mut this.remaining, cx),
            Source::Origin {
                body,
                hasher,
                digest,
                idle,
                deadline,
                deadline_ms,
            } => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the origin did not send the whole blob within {deadline_ms} ms"),
                    ))));
                }
                poll_origin(body, hasher, digest, idle, &mut this.remaining, cx)
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

fn poll_file(
    file: &mut tokio::fs::File,
    buf: &mut BytesMut,
    remaining: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
    let want = (*remaining).min(CHUNK as u64) as usize;
    if buf.len() != want {
        buf.clear();
        buf.resize(want, 0);
    }
    let mut read_buf = ReadBuf::new(&mut buf[..]);
    match Pin::new(file).poll_read(cx, &mut read_buf) {
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
            *remaining -= n as u64;
            let chunk = buf.split_to(n).freeze();
            Poll::Ready(Some(Ok(Frame::data(chunk))))
        }
    }
}

/// The origin's next data frame, hashed; the last one only if the whole
/// body hashes to `digest`.
fn poll_origin(
    body: &mut hyper::body::Incoming,
    hasher: &mut Sha256,
    digest: &BlobDigest,
    idle: &mut Pin<Box<tokio::time::Sleep>>,
    remaining: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
    use hyper::body::Body as _;
    loop {
        let frame = match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => {
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the origin sent nothing for {} s",
                            BODY_IDLE_TIMEOUT.as_secs()
                        ),
                    ))));
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the origin's body ended before its content-length",
                ))));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(io::Error::other(e)))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.len() as u64 > *remaining {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the origin sent more than its content-length",
            ))));
        }
        hasher.update(&data);
        *remaining -= data.len() as u64;
        idle.as_mut()
            .reset(tokio::time::Instant::now() + BODY_IDLE_TIMEOUT);
        if *remaining == 0 {
            let actual = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
            if actual != digest.as_str() {
                tracing::warn!(
                    digest = digest.as_str(),
                    %actual,
                    "a passed-through blob's bytes do not match its digest; the response is cut short"
                );
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the origin's bytes hash to {actual}, not {}",
                        digest.as_str()
                    ),
                ))));
            }
        }
        return Poll::Ready(Some(Ok(Frame::data(data))));
    }
}
