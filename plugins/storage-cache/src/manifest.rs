//! OCI manifests: by digest they are cached like blobs; by tag they are
//! resolved upstream at most once per `tag_ttl_ms` and the digest kept in
//! kv.

use super::*;

/// A manifest request: by digest it is cached like a blob; by tag it is
/// resolved upstream at most once per `tag_ttl_ms`.
pub(crate) fn manifest(req: &HttpRequest, name: &str, reference: &str) -> HttpResponse {
    let accept = req.header("accept").unwrap_or(MANIFEST_TYPES).to_string();
    let by_digest = reference.starts_with("sha256:");
    let digest = if by_digest {
        reference.to_string()
    } else {
        match resolve_tag(name, reference, &accept) {
            Ok(d) => d,
            Err(r) => return r,
        }
    };
    let content_type = kv::get(&format!("type/{digest}"))
        .ok()
        .flatten()
        .and_then(|t| String::from_utf8(t).ok());
    if let (true, Some(t)) = (blobs::has(&digest), &content_type) {
        let answer = hit(&digest, t).with_header("docker-content-digest", &digest);
        // A tag can move: only an answer named by digest is reusable.
        return if by_digest {
            answer.reusable_for_ms(hit_reuse_ms())
        } else {
            answer
        };
    }
    let url = match upstream(&format!("/v2/{name}/manifests/{digest}")) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match fetch_manifest(name, &url, &digest, &accept) {
        Ok(t) => HttpResponse::blob(200, &t, &digest).with_header("docker-content-digest", &digest),
        Err(r) => r,
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TagEntry {
    digest: String,
    fetched_us: u64,
}

/// The digest `name:tag` points to: from kv while fresh, else upstream
/// (which also stores the manifest).
fn resolve_tag(name: &str, tag: &str, accept: &str) -> Result<String, HttpResponse> {
    let key = format!("tag/{name}:{tag}");
    let ttl_ms = config::parse::<u64>("tag_ttl_ms")
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_TAG_TTL_MS);
    if let Ok(Some(entry)) = kv::get_json::<TagEntry>(&key)
        && now_us().saturating_sub(entry.fetched_us) < ttl_ms * 1000
        && blobs::has(&entry.digest)
    {
        return Ok(entry.digest);
    }
    let url = upstream(&format!("/v2/{name}/manifests/{tag}"))?;
    let response = upstream_get(name, &url, accept)?;
    if response.status != 200 {
        return Err(upstream_answer(response));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&response.body)));
    let content_type = response
        .header("content-type")
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    keep_manifest(&digest, &content_type, &response.body)
        .map_err(|e| oci_error(502, "UNKNOWN", &format!("cannot store the manifest: {e}")))?;
    let entry = TagEntry {
        digest: digest.clone(),
        fetched_us: now_us(),
    };
    if let Err(e) = kv::set_json(&key, &entry) {
        log::warn(&format!("cannot remember tag {name}:{tag}: {e}"));
    }
    Ok(digest)
}

/// Fetches the manifest `digest` upstream, checks and stores it; returns
/// its media type.
fn fetch_manifest(
    name: &str,
    url: &str,
    digest: &str,
    accept: &str,
) -> Result<String, HttpResponse> {
    let response = upstream_get(name, url, accept)?;
    if response.status != 200 {
        return Err(upstream_answer(response));
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&response.body)));
    if actual != digest {
        return Err(miss_failed(digest, BlobError::DigestMismatch(actual)));
    }
    let content_type = response
        .header("content-type")
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    keep_manifest(digest, &content_type, &response.body).map_err(|e| miss_failed(digest, e))?;
    record(
        Usage::new("cache-misses", 1)
            .subject(digest)
            .evidence(evidence(digest)),
    );
    Ok(content_type)
}

/// The upstream's non-200 answer, passed on to the client; an
/// authentication failure is this mirror's (502), not the client's.
fn upstream_answer(response: outbound_http::OutboundResponse) -> HttpResponse {
    if matches!(response.status, 401 | 403) {
        return oci_error(
            502,
            "UNAUTHORIZED",
            &format!(
                "upstream: the registry answered {} and asked for no authentication this \
                 mirror can give",
                response.status
            ),
        );
    }
    let content_type = response
        .header("content-type")
        .unwrap_or("application/json")
        .to_string();
    HttpResponse::bytes(response.status, &content_type, response.body)
}

fn keep_manifest(digest: &str, content_type: &str, body: &[u8]) -> Result<(), BlobError> {
    let fresh = !blobs::has(digest);
    let size = put_with_eviction(digest, body)?;
    if fresh {
        stored(digest, size);
    }
    touch(digest);
    kv::set(&format!("type/{digest}"), content_type.as_bytes())
        .map_err(|e| BlobError::Io(e.to_string()))
}
