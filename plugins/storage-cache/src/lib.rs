//! The storage-cache plugin: a content-addressed pull-through blob cache
//! that registry clients can use as an OCI distribution mirror. The plugin
//! decides; the host moves the bytes: misses are fetched by the host
//! straight to disk (`blobs::fetch_into`, verified against the digest) and
//! hits are streamed by the host from disk (`HttpResponse::blob`).
//!
//! Routes (below the plugin's route prefix, which is usually `/`):
//!
//! | request | answer |
//! |---|---|
//! | `GET\|HEAD /blobs/sha256:<hex>` | the blob; a miss is pulled from `{origin}/sha256:<hex>` |
//! | `GET /v2/` | 200 (registry API version check) |
//! | `GET\|HEAD /v2/<name>/blobs/<digest>` | the blob; a miss is pulled from the upstream registry |
//! | `GET\|HEAD /v2/<name>/manifests/<digest>` | the manifest, cached like a blob |
//! | `GET\|HEAD /v2/<name>/manifests/<tag>` | the manifest the tag points to; the tag is re-resolved upstream after `tag_ttl_ms` |
//!
//! Configuration (`[plugin.config]`): `origin` (base URL for `/blobs/`),
//! `upstream` (base URL of the upstream registry), `tag_ttl_ms` (default
//! 60000), `hit_reuse_ms` (default 1000; 0 turns it off). Both URLs must
//! also be on the plugin's `[plugin.outbound] http` allow-list, and the
//! plugin needs `[plugin.blobs]`.
//!
//! A hit on a request named by digest is marked reusable for
//! `hit_reuse_ms` ([`HttpResponse::reusable_for_ms`]): for that long the
//! host answers repeats of the same request itself, recording a
//! `cache-hits` claim for each, without calling the plugin. The access
//! time used for eviction is then refreshed once per `hit_reuse_ms` rather
//! than on every hit. Manifests named by tag are never reused.
//!
//! When a new blob does not fit the quota, the least recently used blobs are
//! evicted (access times in kv); a blob bigger than the whole quota is
//! passed through (`blobs::pass_through`: the host streams it from the
//! origin to the client, verifying it, whatever its size) and not stored.
//!
//! Metering: `cache-hits` and `cache-misses` (subject and evidence: the
//! digest), `blobs-stored` (quantity: bytes; subject: digest; evidence: the
//! blob's chunk Merkle root, see [`possession`]), `byte-seconds` (bytes stored
//! times seconds, sampled on `tick`). The host itself attests the bytes
//! served (`bytes-out`).
//!
//! Challenge kind `chunk-possession`: see [`possession::ChunkChallenge`].

pub mod auth;
mod eviction;
mod manifest;
pub mod oci;
pub mod possession;

use depin_plugin_sdk::blobs::{self, BlobError};
use depin_plugin_sdk::outbound_http;
use depin_plugin_sdk::{
    Challenge, HttpRequest, HttpResponse, Plugin, PluginInfo, Proof, ResourceKind, Usage, config,
    export_plugin, kv, log, meter_usage,
};
use depin_protocol::{Hash, merkle};
use sha2::{Digest, Sha256};

use eviction::{fetch_with_eviction, put_with_eviction};
use manifest::manifest;
use possession::{ChunkChallenge, ChunkProof};

/// The storage-cache plugin.
pub struct StorageCache;

const OCTET_STREAM: &str = "application/octet-stream";
const DEFAULT_TAG_TTL_MS: u64 = 60_000;
const DEFAULT_HIT_REUSE_MS: u32 = 1_000;
/// The host reuses an answer for at most a minute.
const MAX_HIT_REUSE_MS: u32 = 60_000;
/// Media types a registry client accepts for manifests, when it names none.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

impl Plugin for StorageCache {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "storage-cache",
            env!("CARGO_PKG_VERSION"),
            ResourceKind::StorageCache,
        )
        .unit("cache-hits", "one blob request served from the store")
        .unit("cache-misses", "one blob request pulled from the origin")
        .unit(
            "blobs-stored",
            "one byte of a blob newly stored (evidence: its chunk Merkle root)",
        )
        .unit("byte-seconds", "one byte kept stored for one second")
    }

    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in &config {
            match key.as_str() {
                "upstream_username" | "upstream_password" => {}
                "upstream_auth_realms" => {
                    if let Some(bad) = auth::unreadable_realm(value) {
                        return Err(format!(
                            "config `upstream_auth_realms`: `{bad}` is not an http:// or \
                             https:// origin"
                        ));
                    }
                }
                "origin" | "upstream" => {
                    if !(value.starts_with("http://") || value.starts_with("https://")) {
                        return Err(format!(
                            "config `{key}` = `{value}` must be an http:// or https:// URL"
                        ));
                    }
                }
                "tag_ttl_ms" => {
                    value
                        .parse::<u64>()
                        .map_err(|e| format!("config `tag_ttl_ms` = `{value}`: {e}"))?;
                }
                "hit_reuse_ms" => {
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|ms| *ms <= MAX_HIT_REUSE_MS)
                        .ok_or_else(|| {
                            format!(
                                "config `hit_reuse_ms` = `{value}` must be a number of \
                                 milliseconds from 0 to {MAX_HIT_REUSE_MS}"
                            )
                        })?;
                }
                other => {
                    return Err(format!(
                        "unknown config key `{other}` (known: origin, upstream, \
                         upstream_username, upstream_password, upstream_auth_realms, \
                         tag_ttl_ms, hit_reuse_ms)"
                    ));
                }
            }
        }
        match blobs::usage() {
            Ok(u) => log::info(&format!(
                "storage-cache ready: {} blobs, {} of {} bytes stored",
                u.count, u.bytes, u.quota
            )),
            Err(e) => return Err(format!("needs a blob store ([plugin.blobs]): {e}")),
        }
        Ok(())
    }

    fn handle_http(req: HttpRequest) -> HttpResponse {
        if req.method != "GET" && req.method != "HEAD" {
            return HttpResponse::text(405, "only GET and HEAD").with_header("allow", "GET, HEAD");
        }
        let path = req.path.trim_end_matches('/');
        if let Some(digest) = path.strip_prefix("/blobs/") {
            let Some(origin) = config::get("origin") else {
                return serve_or_404(digest);
            };
            let url = format!("{}/{digest}", origin.trim_end_matches('/'));
            return blob(digest, &url, None, OCTET_STREAM);
        }
        if req.path == "/v2/" || req.path == "/v2" {
            return HttpResponse::json(200, &serde_json::json!({}))
                .with_header("docker-distribution-api-version", "registry/2.0");
        }
        if let Some(rest) = req.path.strip_prefix("/v2/") {
            return match oci::parse(rest) {
                Ok(oci::Request::Blob { name, digest }) => {
                    let url = match upstream(&format!("/v2/{name}/blobs/{digest}")) {
                        Ok(u) => u,
                        Err(r) => return r,
                    };
                    blob(digest, &url, Some(name), OCTET_STREAM)
                        .with_header("docker-content-digest", digest)
                }
                Ok(oci::Request::Manifest { name, reference }) => manifest(&req, name, reference),
                Err(message) => oci_error(400, "NAME_INVALID", &message),
            };
        }
        HttpResponse::text(404, &format!("no route for {}", req.path))
    }

    fn tick(now_ms: u64) {
        let Ok(usage) = blobs::usage() else { return };
        let last = kv::get_json::<u64>("meta/last-tick-ms").ok().flatten();
        if let Some(last) = last.filter(|l| *l < now_ms) {
            let byte_seconds = usage.bytes.saturating_mul(now_ms - last) / 1000;
            record(Usage::new("byte-seconds", byte_seconds));
        }
        if let Err(e) = kv::set_json("meta/last-tick-ms", &now_ms) {
            log::warn(&format!("cannot keep the tick time: {e}"));
        }
    }

    fn prove(c: Challenge) -> Result<Proof, String> {
        if c.kind != "chunk-possession" {
            return Err(format!("challenge kind `{}` is not supported", c.kind));
        }
        let params: ChunkChallenge =
            serde_json::from_slice(&c.params).map_err(|e| format!("params: {e}"))?;
        let stat = blobs::stat(&params.digest).map_err(|e| format!("{}: {e}", params.digest))?;
        let count = possession::chunk_count(stat.size);
        if params.chunk >= count {
            return Err(format!("chunk {} of {count}", params.chunk));
        }
        let (leaves, chunk) = chunk_leaves(&params.digest, stat.size, Some(params.chunk))?;
        let chunk = chunk.unwrap_or_default();
        let proof = ChunkProof {
            bound: hex::encode(possession::bind(&c.nonce, &chunk)),
            path: merkle::path(&leaves, params.chunk as usize)
                .iter()
                .map(|s| hex::encode(s.sibling))
                .collect(),
            chunk: hex::encode(&chunk),
        };
        Ok(Proof {
            challenge_id: c.id,
            payload: serde_json::to_vec(&proof).map_err(|e| e.to_string())?,
        })
    }

    fn verify(c: Challenge, p: Proof) -> bool {
        if c.kind != "chunk-possession" || p.challenge_id != c.id {
            return false;
        }
        let (Ok(params), Ok(proof)) = (
            serde_json::from_slice::<ChunkChallenge>(&c.params),
            serde_json::from_slice::<ChunkProof>(&p.payload),
        ) else {
            return false;
        };
        possession::check(&params, &c.nonce, &proof).is_ok()
    }
}

export_plugin!(StorageCache);

/// `{upstream}{path}`, or the answer when no upstream is configured.
fn upstream(path: &str) -> Result<String, HttpResponse> {
    config::get("upstream")
        .map(|u| format!("{}{path}", u.trim_end_matches('/')))
        .ok_or_else(|| {
            oci_error(
                404,
                "NAME_UNKNOWN",
                "this mirror has no upstream configured",
            )
        })
}

fn oci_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::json(
        status,
        &serde_json::json!({ "errors": [{ "code": code, "message": message }] }),
    )
}

fn record(u: Usage) {
    if let Err(e) = meter_usage(u) {
        log::error(&format!("cannot meter: {e}"));
    }
}

fn evidence(digest: &str) -> Vec<u8> {
    hex::decode(digest.trim_start_matches("sha256:")).unwrap_or_default()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Notes that `digest` was just used (for least-recently-used eviction).
fn touch(digest: &str) {
    if let Err(e) = kv::set_json(&format!("atime/{digest}"), &now_us()) {
        log::warn(&format!("cannot record the access time of {digest}: {e}"));
    }
}

/// The blob `digest` from the store, or 404.
fn serve_or_404(digest: &str) -> HttpResponse {
    if let Err(e) = blobs::stat(digest) {
        return match e {
            BlobError::InvalidDigest(m) => HttpResponse::text(400, &m),
            _ => HttpResponse::text(404, &format!("{digest} is not stored")),
        };
    }
    hit(digest, OCTET_STREAM).reusable_for_ms(hit_reuse_ms())
}

/// How long a hit on a digest may be reused by the host.
fn hit_reuse_ms() -> u32 {
    config::parse::<u32>("hit_reuse_ms")
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_HIT_REUSE_MS)
}

fn hit(digest: &str, content_type: &str) -> HttpResponse {
    touch(digest);
    record(
        Usage::new("cache-hits", 1)
            .subject(digest)
            .evidence(evidence(digest)),
    );
    HttpResponse::blob(200, content_type, digest)
}

/// A blob request: a hit from the store, or a miss pulled from `url`
/// (for the upstream repository `repository`, authenticating as it asks).
fn blob(digest: &str, url: &str, repository: Option<&str>, content_type: &str) -> HttpResponse {
    match blobs::stat(digest) {
        Ok(_) => return hit(digest, content_type).reusable_for_ms(hit_reuse_ms()),
        Err(BlobError::InvalidDigest(m)) => return HttpResponse::text(400, &m),
        Err(_) => {}
    }
    let kept = repository.and_then(|name| auth::kept(name, now_us()));
    let had_token = kept.is_some();
    let mut headers: Vec<(String, String)> = kept.into_iter().collect();
    let mut fetched = fetch_with_eviction(url, digest, &headers);
    if let (Err(BlobError::OriginStatus(401)), Some(name)) = (&fetched, repository) {
        if had_token {
            auth::forget(name);
        }
        // `fetch-into` does not show the challenge: ask for it without a body.
        let answer = match blob_challenge(url).and_then(|c| auth::answer(&c, name, now_us())) {
            Ok(a) => a,
            Err(e) => return oci_error(502, "UNAUTHORIZED", &format!("upstream: {e}")),
        };
        headers = vec![answer.header.clone()];
        fetched = fetch_with_eviction(url, digest, &headers);
        // Kept only for a blob that exists: a client naming random
        // repositories leaves nothing behind.
        match &fetched {
            Err(BlobError::OriginStatus(401 | 403)) => return refused(),
            Ok(_) | Err(BlobError::TooLarge(_) | BlobError::QuotaExceeded(_)) => {
                auth::keep(name, &answer)
            }
            Err(_) => {}
        }
    }
    match fetched {
        Ok(size) => {
            stored(digest, size);
            touch(digest);
            record(
                Usage::new("cache-misses", 1)
                    .subject(digest)
                    .evidence(evidence(digest)),
            );
            HttpResponse::blob(200, content_type, digest)
        }
        Err(BlobError::TooLarge(quota)) => pass_through(digest, url, &headers, content_type, quota),
        Err(e) => miss_failed(digest, e),
    }
}

/// The `www-authenticate` challenge of a blob URL that answered 401.
fn blob_challenge(url: &str) -> Result<String, String> {
    let response = outbound_http::fetch(&outbound_http::OutboundRequest {
        method: "HEAD".into(),
        url: url.into(),
        headers: Vec::new(),
        body: Vec::new(),
    })
    .map_err(|e| format!("cannot reach {url}: {e}"))?;
    response
        .header("www-authenticate")
        .map(str::to_string)
        .ok_or_else(|| format!("{url} answered {} without a challenge", response.status))
}

/// A GET of an upstream manifest URL for repository `name`, with a kept
/// token, or asked again with a fresh one when the upstream wants it.
fn upstream_get(
    name: &str,
    url: &str,
    accept: &str,
) -> Result<outbound_http::OutboundResponse, HttpResponse> {
    let unreachable = |e: outbound_http::HttpError| {
        oci_error(502, "UNKNOWN", &format!("cannot reach the upstream: {e}"))
    };
    let kept = auth::kept(name, now_us());
    let mut headers = vec![("accept", accept)];
    if let Some((k, v)) = &kept {
        headers.push((k.as_str(), v.as_str()));
    }
    let response = outbound_http::get(url, &headers).map_err(unreachable)?;
    let challenge = match response.header("www-authenticate") {
        Some(c) if response.status == 401 => c.to_string(),
        _ => return Ok(response),
    };
    if kept.is_some() {
        auth::forget(name);
    }
    let answer = auth::answer(&challenge, name, now_us())
        .map_err(|e| oci_error(502, "UNAUTHORIZED", &format!("upstream: {e}")))?;
    let (k, v) = &answer.header;
    let again = outbound_http::get(url, &[("accept", accept), (k.as_str(), v.as_str())])
        .map_err(unreachable)?;
    if matches!(again.status, 401 | 403) {
        return Err(refused());
    }
    // Kept only for a manifest that exists: a client naming random
    // repositories leaves nothing behind.
    if (200..300).contains(&again.status) {
        auth::keep(name, &answer);
    }
    Ok(again)
}

/// The upstream refused the token or credentials it asked for.
fn refused() -> HttpResponse {
    oci_error(
        502,
        "UNAUTHORIZED",
        "upstream: the registry refused the token or credentials it asked for \
         (check upstream_username and upstream_password)",
    )
}

fn miss_failed(digest: &str, e: BlobError) -> HttpResponse {
    match e {
        BlobError::OriginStatus(404) => {
            HttpResponse::text(404, &format!("{digest} is not at the origin"))
        }
        BlobError::DigestMismatch(actual) => {
            log::warn(&format!(
                "origin sent bytes hashing to {actual} for {digest}; not stored"
            ));
            HttpResponse::text(502, &format!("the origin's bytes do not match {digest}"))
        }
        BlobError::InvalidDigest(m) => HttpResponse::text(400, &m),
        other => {
            log::warn(&format!("cannot pull {digest}: {other}"));
            HttpResponse::text(
                502,
                &format!("cannot pull {digest} from the origin: {other}"),
            )
        }
    }
}

/// Computes and keeps the chunk Merkle root of a newly stored blob, and
/// commits it through metering.
fn stored(digest: &str, size: u64) {
    let root = match chunk_leaves(digest, size, None) {
        Ok((leaves, _)) => merkle::root(leaves),
        Err(e) => {
            log::warn(&format!("cannot hash {digest} into chunks: {e}"));
            return;
        }
    };
    if let Err(e) = kv::set(&format!("root/{digest}"), hex::encode(root).as_bytes()) {
        log::warn(&format!("cannot keep the root of {digest}: {e}"));
    }
    record(
        Usage::new("blobs-stored", size)
            .subject(digest)
            .evidence(root.to_vec()),
    );
}

/// The chunk leaves of the stored blob, and the bytes of chunk `want`.
fn chunk_leaves(
    digest: &str,
    size: u64,
    want: Option<u64>,
) -> Result<(Vec<Hash>, Option<Vec<u8>>), String> {
    let count = possession::chunk_count(size);
    let mut leaves = Vec::with_capacity(count as usize);
    let mut wanted = None;
    for i in 0..count {
        let bytes = blobs::read_range(digest, i * possession::CHUNK, possession::CHUNK as u32)
            .map_err(|e| e.to_string())?;
        leaves.push(merkle::leaf(&bytes));
        if want == Some(i) {
            wanted = Some(bytes);
        }
    }
    Ok((leaves, wanted))
}

/// A blob bigger than the whole quota: served from the origin by the host
/// (verified while it streams) and not stored.
fn pass_through(
    digest: &str,
    url: &str,
    headers: &[(String, String)],
    content_type: &str,
    quota: u64,
) -> HttpResponse {
    let size = match blobs::pass_through(url, digest, headers) {
        Ok(stat) => stat.size,
        Err(e) => return miss_failed(digest, e),
    };
    log::info(&format!(
        "{digest} ({size} bytes) is larger than the quota of {quota} bytes; passed through without storing"
    ));
    record(
        Usage::new("cache-misses", 1)
            .subject(digest)
            .evidence(evidence(digest)),
    );
    HttpResponse::blob(200, content_type, digest)
}

#[cfg(test)]
mod tests {
    use depin_plugin_sdk::Body;
    use depin_plugin_sdk::testing::{TestHost, sha256_digest};

    use super::*;

    fn host(quota: u64) -> TestHost {
        let host = TestHost::install(&[("origin", "http://origin.test/b")]);
        host.enable_blobs(quota);
        host.declare_units(&["cache-hits", "cache-misses", "blobs-stored", "byte-seconds"]);
        host
    }

    fn get(path: &str) -> HttpResponse {
        StorageCache::handle_http(HttpRequest::new("GET", path))
    }

    #[test]
    fn a_miss_is_pulled_once_then_served_from_the_store() {
        let host = host(1 << 20);
        let bytes = vec![7u8; 1000];
        let digest = sha256_digest(&bytes);
        host.serve_url(
            &format!("http://origin.test/b/{digest}"),
            200,
            bytes.clone(),
        );
        for _ in 0..2 {
            let r = get(&format!("/blobs/{digest}"));
            assert_eq!(r.status, 200);
            assert!(matches!(&r.body, Body::Blob(b) if b.digest == digest));
        }
        assert_eq!(host.fetched().len(), 1);
        assert_eq!(host.blob(&digest), Some(bytes));
        assert_eq!(host.total("cache-misses"), 1);
        assert_eq!(host.total("cache-hits"), 1);
        assert_eq!(host.total("blobs-stored"), 1000);
        assert!(host.kv(&format!("root/{digest}")).is_some());
    }

    #[test]
    fn wrong_bytes_are_a_502_and_nothing_is_kept() {
        let host = host(1 << 20);
        let digest = sha256_digest(b"wanted");
        host.serve_url(
            &format!("http://origin.test/b/{digest}"),
            200,
            b"other".to_vec(),
        );
        assert_eq!(get(&format!("/blobs/{digest}")).status, 502);
        assert_eq!(host.blob(&digest), None);
        assert_eq!(host.total("cache-misses"), 0);
    }

    #[test]
    fn a_blob_larger_than_the_quota_is_passed_through_unstored() {
        let host = host(100);
        let bytes = vec![3u8; 1000];
        let digest = sha256_digest(&bytes);
        host.serve_url(
            &format!("http://origin.test/b/{digest}"),
            200,
            bytes.clone(),
        );
        let r = get(&format!("/blobs/{digest}"));
        assert_eq!(r.status, 200);
        assert!(matches!(&r.body, Body::Blob(b) if b.digest == digest));
        assert_eq!(host.passed_through(), Some((digest.clone(), bytes)));
        assert_eq!(host.blob(&digest), None);
        assert_eq!(host.total("cache-misses"), 1);
        assert_eq!(host.total("blobs-stored"), 0);
    }

    #[test]
    fn init_refuses_unknown_keys_and_a_missing_blob_store() {
        let _host = TestHost::install(&[]);
        assert!(
            StorageCache::init(vec![])
                .unwrap_err()
                .contains("[plugin.blobs]")
        );
        let host = TestHost::install(&[]);
        host.enable_blobs(10);
        let e = StorageCache::init(vec![("orign".into(), "x".into())]).unwrap_err();
        assert!(e.contains("unknown config key `orign`"), "{e}");
        assert!(StorageCache::init(vec![("upstream".into(), "ftp://x".into())]).is_err());
        assert!(StorageCache::init(vec![("tag_ttl_ms".into(), "5000".into())]).is_ok());
    }
}
