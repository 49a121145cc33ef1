//! `depin:plugin/blobs`: the plugin's content-addressed blob store. Digests
//! are checked at the boundary; `fetch-into` checks the outbound allow-list
//! before connecting, streams the origin's body to a temp file while hashing
//! it, and stores the blob only if the digest matches. Concurrent fetches of
//! one digest share one origin request, and a fetch the quota refused is
//! resumed, not repeated, when the plugin asks again after evicting (or
//! passes the blob through). `pass-through` opens an origin response that
//! the call's `blob` answer is then streamed from, unstored. Both are
//! bounded by the plugin's blob deadline in all (head and body), besides
//! [`BODY_IDLE_TIMEOUT`] of silence.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::Incoming;
use wasmtime::component::HasData;

use super::Blame;
use crate::blobstore::{BlobDigest, BlobStore, StoreError};
use crate::runtime::PluginShared;
use crate::runtime::contract::depin::plugin::blobs::{BlobError, BlobStat, Host, StoreUsage};
use crate::runtime::host::outbound_http::{BODY_IDLE_TIMEOUT, OutboundError};
use crate::runtime::state::CallState;

/// Most bytes one `read-range` returns.
pub const MAX_READ_BYTES: u32 = 1 << 20;
/// Most blobs one `list-blobs` returns.
pub const MAX_LIST: u32 = 10_000;

/// The blobs part of a call's state: the origin responses it holds open.
#[derive(Default)]
pub(crate) struct BlobsState {
    /// An origin response `fetch-into` could not store yet (see
    /// [`ParkedFetch`]).
    parked_fetch: Option<ParkedFetch>,
    /// The origin response a `blob` answer of this call is served from
    /// (`pass-through`).
    pub(crate) pass_through: Option<PassThrough>,
}

/// What `blobs` functions reach during one call: its open origin
/// responses, and the plugin's blob store and outbound allow-list.
pub(crate) struct BlobsView<'a> {
    state: &'a mut BlobsState,
    plugin: &'a PluginShared,
    request_id: &'a str,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> BlobsView<'_> {
    BlobsView {
        state: &mut call.blobs,
        plugin: &call.plugin,
        request_id: &call.request_id,
    }
}

impl<'a> BlobsView<'a> {
    fn blob_store(&self) -> Result<&'a Arc<BlobStore>, BlobError> {
        self.plugin.blobs.as_ref().ok_or(BlobError::Unavailable)
    }

    fn blob_io(&self, op: &str, e: impl std::fmt::Display) -> BlobError {
        tracing::warn!(plugin = %self.plugin.name, request_id = %self.request_id, error = %e, "blobs {op} failed");
        BlobError::Io(e.to_string())
    }
}

/// The `blobs` capability, for the linker.
pub(crate) struct Blobs;

impl HasData for Blobs {
    type Data<'a> = BlobsView<'a>;
}

/// The origin's answer to a `fetch-into` that the quota refused before any
/// byte of the body was read (its `content-length` does not fit). The
/// plugin usually evicts and asks again for the same URL and digest, or
/// passes a blob larger than the quota through; that `fetch-into` or
/// `pass-through`, in the same call, reads this response instead of
/// sending a second request. Dropped, with its connection, when the call
/// ends.
pub(crate) struct ParkedFetch {
    url: String,
    digest: BlobDigest,
    response: Response<Incoming>,
}

impl ParkedFetch {
    /// The parked response if it is for `url` and `digest`.
    fn take_for(
        parked: &mut Option<Self>,
        url: &str,
        digest: &BlobDigest,
    ) -> Option<Response<Incoming>> {
        match parked.take() {
            Some(p) if p.url == url && p.digest == *digest => Some(p.response),
            _ => None,
        }
    }
}

/// An origin response opened by `pass-through`: the call's `blob` answer
/// for `digest` is streamed from it, verified on the way, and not stored.
pub struct PassThrough {
    pub(crate) digest: BlobDigest,
    /// The origin's `content-length`.
    pub(crate) size: u64,
    pub(crate) response: Response<Incoming>,
    /// When the whole body must have arrived: the plugin's blob deadline
    /// from the moment the origin was asked.
    pub(crate) deadline: tokio::time::Instant,
    /// The blob deadline in milliseconds, for the error that cuts it.
    pub(crate) deadline_ms: u128,
}

/// The error of a blob stream cut at its total deadline.
fn too_slow(plugin: &PluginShared) -> BlobError {
    BlobError::Io(format!(
        "the origin did not send the whole blob within {} ms",
        plugin.outbound_http.blob_deadline_ms()
    ))
}

/// The origin's successful answer for `url` (the parked one if it is for
/// `url` and `digest`, else a new GET following redirects, by `deadline`)
/// and its `content-length`.
async fn origin_response(
    plugin: &PluginShared,
    uri: hyper::Uri,
    url: &str,
    digest: &BlobDigest,
    headers: &[(String, String)],
    parked: &mut Option<ParkedFetch>,
    deadline: tokio::time::Instant,
) -> Result<(Response<Incoming>, Option<u64>), BlobError> {
    let response = match ParkedFetch::take_for(parked, url, digest) {
        Some(r) => r,
        None => tokio::time::timeout_at(deadline, plugin.outbound_http.get_following(uri, headers))
            .await
            .map_err(|_| too_slow(plugin))?
            .map_err(outbound_error)?,
    };
    if !response.status().is_success() {
        return Err(BlobError::OriginStatus(response.status().as_u16()));
    }
    let size = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    Ok((response, size))
}

/// `pass-through` after the boundary checks.
async fn open_pass_through(
    plugin: &PluginShared,
    url: &str,
    digest: BlobDigest,
    headers: &[(String, String)],
    parked: &mut Option<ParkedFetch>,
) -> Result<PassThrough, BlobError> {
    let outbound = &plugin.outbound_http;
    let uri = outbound
        .check(url)
        .map_err(|e| BlobError::Denied(e.to_string()))?;
    let deadline = outbound.blob_deadline();
    let (response, size) =
        origin_response(plugin, uri, url, &digest, headers, parked, deadline).await?;
    let size = size.ok_or_else(|| {
        BlobError::Io("the origin's answer has no content-length to pass through".into())
    })?;
    Ok(PassThrough {
        digest,
        size,
        response,
        deadline,
        deadline_ms: outbound.blob_deadline_ms(),
    })
}

/// `fetch-into` after the boundary checks: one origin request per digest
/// at a time, streamed to disk, committed only if the digest matches.
async fn fetch_blob(
    plugin: &PluginShared,
    store: &Arc<BlobStore>,
    url: &str,
    digest: &BlobDigest,
    headers: &[(String, String)],
    parked: &mut Option<ParkedFetch>,
) -> Result<u64, BlobError> {
    let outbound = &plugin.outbound_http;
    let uri = outbound
        .check(url)
        .map_err(|e| BlobError::Denied(e.to_string()))?;
    let _flight = store.flight(digest).await;
    // Whoever held the flight before us may have stored it.
    if let Some(size) = store
        .stat(digest)
        .map_err(|e| BlobError::Io(e.to_string()))?
    {
        return Ok(size);
    }
    let deadline = outbound.blob_deadline();
    let (response, size_hint) =
        origin_response(plugin, uri, url, digest, headers, parked, deadline).await?;
    let mut writer = match store.begin(digest, size_hint) {
        Ok(writer) => writer,
        Err(e @ (StoreError::QuotaExceeded { .. } | StoreError::TooLarge { .. })) => {
            *parked = Some(ParkedFetch {
                url: url.to_string(),
                digest: digest.clone(),
                response,
            });
            return Err(store_error(e));
        }
        Err(e) => return Err(store_error(e)),
    };
    let mut body = response.into_body();
    loop {
        let idle = tokio::time::Instant::now() + BODY_IDLE_TIMEOUT;
        let next = tokio::time::timeout_at(idle.min(deadline), body.frame())
            .await
            .map_err(|_| {
                if idle < deadline {
                    BlobError::Io(format!(
                        "the origin sent nothing for {} s",
                        BODY_IDLE_TIMEOUT.as_secs()
                    ))
                } else {
                    too_slow(plugin)
                }
            })?;
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| BlobError::Io(format!("reading from the origin: {e}")))?;
        if let Some(data) = frame.data_ref() {
            writer.write(data).map_err(store_error)?;
        }
    }
    // fsync and rename off the async workers: a large blob's fsync can take
    // a while.
    let size = tokio::task::spawn_blocking(move || writer.commit())
        .await
        .map_err(|e| BlobError::Io(format!("the commit task failed: {e}")))?
        .map_err(store_error)?;
    tracing::debug!(plugin = %plugin.name, digest = digest.as_str(), size, "blob fetched");
    Ok(size)
}

fn outbound_error(e: OutboundError) -> BlobError {
    match e {
        OutboundError::Denied(_) => BlobError::Denied(e.to_string()),
        other => BlobError::Io(other.to_string()),
    }
}

fn store_error(e: StoreError) -> BlobError {
    match e {
        StoreError::QuotaExceeded { needed, .. } => BlobError::QuotaExceeded(needed),
        StoreError::TooLarge { quota } => BlobError::TooLarge(quota),
        StoreError::DigestMismatch { actual } => BlobError::DigestMismatch(actual),
        StoreError::Io(e) => BlobError::Io(e.to_string()),
    }
}

fn parse(digest: &str) -> Result<BlobDigest, BlobError> {
    BlobDigest::parse(digest).map_err(BlobError::InvalidDigest)
}

impl Host for BlobsView<'_> {
    fn stat(&mut self, digest: String) -> Result<BlobStat, Blame<BlobError>> {
        let store = self.blob_store()?;
        let d = parse(&digest)?;
        match store.stat(&d) {
            Ok(Some(size)) => Ok(BlobStat { digest, size }),
            Ok(None) => Err(BlobError::NotFound.into()),
            Err(e) => Err(self.blob_io("stat", e).into()),
        }
    }

    fn has(&mut self, digest: String) -> wasmtime::Result<bool> {
        let (Ok(store), Ok(d)) = (self.blob_store(), parse(&digest)) else {
            return Ok(false);
        };
        Ok(matches!(store.stat(&d), Ok(Some(_))))
    }

    fn delete(&mut self, digest: String) -> Result<bool, Blame<BlobError>> {
        let store = self.blob_store()?;
        let d = parse(&digest)?;
        Ok(store.delete(&d).map_err(|e| self.blob_io("delete", e))?)
    }

    fn list_blobs(
        &mut self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<BlobStat>, Blame<BlobError>> {
        let store = self.blob_store()?;
        let listed = store
            .list(after.as_deref(), limit.min(MAX_LIST) as usize)
            .map_err(|e| self.blob_io("list", e))?;
        Ok(listed
            .into_iter()
            .map(|(d, size)| BlobStat {
                digest: d.as_str().to_string(),
                size,
            })
            .collect())
    }

    fn usage(&mut self) -> Result<StoreUsage, Blame<BlobError>> {
        let u = self.blob_store()?.usage();
        Ok(StoreUsage {
            bytes: u.bytes,
            count: u.count,
            quota: u.quota,
        })
    }

    fn read_range(
        &mut self,
        digest: String,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, Blame<BlobError>> {
        let store = self.blob_store()?;
        let d = parse(&digest)?;
        match store.read_range(&d, offset, length.min(MAX_READ_BYTES) as usize) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(BlobError::NotFound.into()),
            Err(e) => Err(self.blob_io("read", e).into()),
        }
    }

    async fn put(&mut self, digest: String, bytes: Vec<u8>) -> Result<BlobStat, Blame<BlobError>> {
        let store = self.blob_store()?.clone();
        let d = parse(&digest)?;
        if let Ok(Some(size)) = store.stat(&d) {
            return Ok(BlobStat { digest, size });
        }
        // Writing, fsync and rename off the async workers: a sync can take
        // long enough to stall every call sharing the worker.
        let size = tokio::task::spawn_blocking(move || {
            let mut writer = store.begin(&d, Some(bytes.len() as u64))?;
            writer.write(&bytes)?;
            writer.commit()
        })
        .await
        .map_err(|e| BlobError::Io(format!("the put task failed: {e}")))?
        .map_err(store_error)?;
        Ok(BlobStat { digest, size })
    }

    async fn fetch_into(
        &mut self,
        url: String,
        digest: String,
        headers: Vec<(String, String)>,
    ) -> Result<BlobStat, Blame<BlobError>> {
        let store = self.blob_store()?;
        let d = parse(&digest)?;
        if let Ok(Some(size)) = store.stat(&d) {
            return Ok(BlobStat { digest, size });
        }
        let parked = &mut self.state.parked_fetch;
        let size = fetch_blob(self.plugin, store, &url, &d, &headers, parked).await?;
        Ok(BlobStat { digest, size })
    }

    async fn pass_through(
        &mut self,
        url: String,
        digest: String,
        headers: Vec<(String, String)>,
    ) -> Result<BlobStat, Blame<BlobError>> {
        let d = parse(&digest)?;
        let parked = &mut self.state.parked_fetch;
        let pass = open_pass_through(self.plugin, &url, d, &headers, parked).await?;
        let size = pass.size;
        self.state.pass_through = Some(pass);
        Ok(BlobStat { digest, size })
    }

    fn convert_blob_error(&mut self, e: Blame<BlobError>) -> wasmtime::Result<BlobError> {
        e.into_wit()
    }
}
