//! The storage-cache plugin end to end: a real registry (`docker-registry`)
//! and a small counting origin behind the gateway, a real registry client
//! (`skopeo`) and a real HTTP client in front of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use depin_e2e::registry::{Origin, Registry, TokenService, pseudo_random, sha256_digest};
use depin_e2e::{Home, PluginSpec, plugin};
use depin_gateway::RunningGateway;
use depin_gateway::ledger::LedgerReader;
use depin_gateway::runtime::contract::{Challenge, Proof};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

mod deadlines;
mod metering;
mod proofs;

/// A gateway home with the storage-cache plugin at `/`, allowed to reach
/// `origins`, with `quota` bytes of blob store and `config` lines.
fn cache_home(origins: &[String], quota: u64, config: String) -> Home {
    cache_home_with(origins, "", quota, config)
}

/// [`cache_home`] with extra lines for `[plugin.outbound]`.
fn cache_home_with(origins: &[String], outbound: &str, quota: u64, config: String) -> Home {
    let allow: Vec<String> = origins.iter().map(|o| format!("\"{o}\"")).collect();
    let table = format!(
        "[plugin.blobs]\nquota_bytes = {quota}\n[plugin.outbound]\nhttp = [{}]\n{outbound}\n",
        allow.join(", ")
    );
    let spec = PluginSpec::new("cache", plugin("storage_cache_plugin"), "/")
        .table(table.leak())
        .config(config.leak());
    Home::new(&[spec], "")
}

/// A running gateway in front of `origin` (allow-listed, its `/b` the
/// origin of `/blobs/` misses) with `quota` bytes of store and `extra`
/// plugin config lines.
async fn gateway_for(origin: &Origin, quota: u64, extra: &str) -> (Home, RunningGateway) {
    let home = cache_home(
        &[origin.url()],
        quota,
        format!("origin = \"{}/b\"\n{extra}", origin.url()),
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    (home, gw)
}

fn blob_file(home: &Home, digest: &str) -> PathBuf {
    home.data_dir()
        .join("blobs/cache/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

async fn skopeo_copy(gateway: SocketAddr, image: &str, dest: &Path) {
    let src = format!("docker://{gateway}/{image}");
    let dest = format!("dir:{}", dest.display());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--src-tls-verify=false",
                &src,
                &dest,
            ])
            .output()
            .expect("run skopeo (apt-get install skopeo)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_an_image_through_the_mirror_and_a_second_pull_never_reaches_the_origin() {
    let registry = Registry::start().await;
    let layers = vec![pseudo_random(700 * 1024, 1), pseudo_random(3000, 2)];
    let (manifest, config, layer_digests) = registry.push_image("demo/app", "v1", &layers).await;
    let home = cache_home(
        &[registry.url()],
        64 << 20,
        format!("upstream = \"{}\"\n", registry.url()),
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let out = tempfile::tempdir().unwrap();

    skopeo_copy(gw.http_addr, "demo/app:v1", &out.path().join("first")).await;
    for digest in layer_digests.iter().chain([&config]) {
        let file = out
            .path()
            .join("first")
            .join(digest.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(&sha256_digest(&bytes), digest);
        assert!(blob_file(&home, digest).exists(), "{digest} not cached");
    }
    let pulled = std::fs::read(out.path().join("first/manifest.json")).unwrap();
    assert_eq!(sha256_digest(&pulled), manifest);
    let origin_requests = registry.requests("/v2/demo/app/");
    assert!(origin_requests >= 4, "{origin_requests}");

    skopeo_copy(gw.http_addr, "demo/app:v1", &out.path().join("second")).await;
    for digest in layer_digests.iter().chain([&config]) {
        let file = out
            .path()
            .join("second")
            .join(digest.trim_start_matches("sha256:"));
        assert_eq!(&sha256_digest(&std::fs::read(file).unwrap()), digest);
    }
    assert_eq!(
        registry.requests("/v2/demo/app/"),
        origin_requests,
        "the second pull reached the origin"
    );
    // A registry client's version check and an unknown repository.
    assert_eq!(call(gw.http_addr, "GET", "/v2/", &[]).await.0, 200);
    let (status, _, _) = call(gw.http_addr, "GET", "/v2/demo/nothing/manifests/v1", &[]).await;
    assert_eq!(status, 404);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_wants_tokens_is_mirrored_with_the_configured_credentials() {
    let tokens = TokenService::start("puller", "s3cret").await;
    let registry = Registry::start_with_tokens(&tokens).await;
    let layers = vec![pseudo_random(200 * 1024, 80), pseudo_random(2000, 81)];
    let (manifest, config, layer_digests) = registry.push_image("team/app", "v1", &layers).await;
    let (status, headers, _) = call(registry.addr, "GET", "/v2/team/app/manifests/v1", &[]).await;
    assert_eq!(status, 401, "the registry wants a token");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=")
    );
    // The token service is allow-listed beside the registry, and trusted
    // with the credentials.
    let home = cache_home(
        &[registry.url(), tokens.url()],
        64 << 20,
        format!(
            "upstream = \"{}\"\nupstream_username = \"puller\"\nupstream_password = \"s3cret\"\n\
             upstream_auth_realms = \"{}\"\n",
            registry.url(),
            tokens.url()
        ),
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let out = tempfile::tempdir().unwrap();
    skopeo_copy(gw.http_addr, "team/app:v1", out.path()).await;
    for digest in layer_digests.iter().chain([&config]) {
        let file = out.path().join(digest.trim_start_matches("sha256:"));
        assert_eq!(&sha256_digest(&std::fs::read(file).unwrap()), digest);
        assert!(blob_file(&home, digest).exists(), "{digest} not cached");
    }
    let pulled = std::fs::read(out.path().join("manifest.json")).unwrap();
    assert_eq!(sha256_digest(&pulled), manifest);
    // One token served the tag, the manifest and every blob of the
    // repository: it is kept until it expires.
    assert_eq!(tokens.issued(), 1);
    // A repository the upstream does not have: 404, and no token kept.
    let (status, _, _) = call(gw.http_addr, "GET", "/v2/team/nothing/manifests/v1", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(tokens.issued(), 2);
    gw.shutdown().await;
    let kept: Vec<String> = depin_gateway::ledger::Ledger::open(&home.data_dir())
        .unwrap()
        .kv_list("cache", "auth/", 10)
        .unwrap();
    assert_eq!(kept, ["auth/repository:team/app:pull"]);

    // Without credentials the token service refuses, and the client is
    // told why.
    let anonymous = cache_home(
        &[registry.url(), tokens.url()],
        64 << 20,
        format!("upstream = \"{}\"\n", registry.url()),
    );
    let gw = RunningGateway::start(&anonymous.config())
        .await
        .expect("start");
    let (status, _, body) = call(gw.http_addr, "GET", "/v2/team/app/manifests/v1", &[]).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains("401") && text.contains("upstream_username"),
        "{text}"
    );
    let (status, _, body) = call(
        gw.http_addr,
        "GET",
        &format!("/v2/team/app/blobs/{}", layer_digests[1]),
        &[],
    )
    .await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    gw.shutdown().await;

    // With credentials but a token service that is not trusted with them
    // (not the upstream's origin, not in upstream_auth_realms), it is asked
    // anonymously: it refuses, and issues nothing.
    let untrusted = cache_home(
        &[registry.url(), tokens.url()],
        64 << 20,
        format!(
            "upstream = \"{}\"\nupstream_username = \"puller\"\nupstream_password = \"s3cret\"\n",
            registry.url()
        ),
    );
    let gw = RunningGateway::start(&untrusted.config())
        .await
        .expect("start");
    let issued = tokens.issued();
    let (status, _, body) = call(gw.http_addr, "GET", "/v2/team/app/manifests/v1", &[]).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("401"), "{text}");
    assert_eq!(tokens.issued(), issued);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blobs_answer_range_head_and_if_none_match() {
    let origin = Origin::start(Duration::ZERO).await;
    let bytes = pseudo_random(100_000, 3);
    let digest = sha256_digest(&bytes);
    origin.serve(&format!("/b/{digest}"), bytes.clone());
    let (_home, gw) = gateway_for(&origin, 1 << 20, "").await;
    let addr = gw.http_addr;
    let path = format!("/blobs/{digest}");

    let (status, headers, body) = call(addr, "GET", &path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), bytes.as_slice());
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{digest}\""));
    assert_eq!(headers["content-length"], "100000");

    let (status, headers, body) = call(addr, "GET", &path, &[("range", "bytes=10-19")]).await;
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 10-19/100000");
    assert_eq!(body.as_ref(), &bytes[10..20]);

    let (status, headers, body) = call(addr, "GET", &path, &[("range", "bytes=-5")]).await;
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 99995-99999/100000");
    assert_eq!(body.as_ref(), &bytes[99_995..]);

    let (status, headers, body) = call(addr, "HEAD", &path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "100000");
    assert!(body.is_empty());

    let (status, _, body) = call(addr, "GET", &path, &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());

    let (status, headers, _) = call(addr, "GET", &path, &[("range", "bytes=100000-")]).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], "bytes */100000");

    assert_eq!(origin.total(), 1, "hits must not reach the origin");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_get_502_and_nothing_is_stored_and_traversal_gets_400() {
    let origin = Origin::start(Duration::ZERO).await;
    let claimed = sha256_digest(b"the bytes the client wants");
    origin.serve(
        &format!("/b/{claimed}"),
        b"something else entirely".to_vec(),
    );
    let (home, gw) = gateway_for(&origin, 1 << 20, "").await;
    let addr = gw.http_addr;

    let (status, _, _) = call(addr, "GET", &format!("/blobs/{claimed}"), &[]).await;
    assert_eq!(status, 502);
    assert!(!blob_file(&home, &claimed).exists());
    let tmp = home.data_dir().join("blobs/cache/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp file left"
    );

    for path in [
        "/blobs/sha256:..%2F..%2Fledger.redb",
        "/blobs/../../ledger.redb",
        "/blobs/sha256:../../../etc/passwd",
        "/v2/demo/app/blobs/sha256:..%2f..",
        "/v2/../x/manifests/latest",
    ] {
        let (status, _, body) = call(addr, "GET", path, &[]).await;
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, _) = call(addr, "GET", &format!("/blobs/{}", sha256_digest(b"x")), &[]).await;
    assert_eq!(status, 404, "missing at the origin");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_digest_cause_one_origin_fetch() {
    let origin = Origin::start(Duration::from_millis(300)).await;
    let bytes = pseudo_random(200_000, 4);
    let digest = sha256_digest(&bytes);
    let origin_path = format!("/b/{digest}");
    origin.serve(&origin_path, bytes.clone());
    let (_home, gw) = gateway_for(&origin, 1 << 20, "").await;
    let path = format!("/blobs/{digest}");
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let path = path.clone();
            let addr = gw.http_addr;
            tokio::spawn(async move { call(addr, "GET", &path, &[]).await })
        })
        .collect();
    for c in calls {
        let (status, _, body) = c.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.as_ref(), bytes.as_slice());
    }
    assert_eq!(origin.hits(&origin_path), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_blob_is_evicted_and_oversized_blobs_pass_through() {
    let origin = Origin::start(Duration::ZERO).await;
    let blobs: Vec<(String, Vec<u8>)> = (10..13)
        .map(|seed| {
            let b = pseudo_random(100_000, seed);
            (sha256_digest(&b), b)
        })
        .collect();
    let big = pseudo_random(300_000, 20);
    let big_digest = sha256_digest(&big);
    for (d, b) in blobs.iter().chain([&(big_digest.clone(), big.clone())]) {
        origin.serve(&format!("/b/{d}"), b.clone());
    }
    // Every hit calls the plugin, so access times are exact (reused hits
    // refresh them only once per `hit_reuse_ms`).
    let (home, gw) = gateway_for(&origin, 250_000, "hit_reuse_ms = 0\n").await;
    let get = |d: &String| {
        let path = format!("/blobs/{d}");
        let addr = gw.http_addr;
        async move { call(addr, "GET", &path, &[]).await }
    };
    let (a, b, c) = (&blobs[0].0, &blobs[1].0, &blobs[2].0);
    assert_eq!(get(a).await.0, 200);
    assert_eq!(get(b).await.0, 200);
    assert_eq!(get(a).await.0, 200); // a is now more recent than b
    let (status, _, body) = get(c).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), blobs[2].1.as_slice());
    assert!(blob_file(&home, a).exists(), "a was used recently");
    assert!(
        !blob_file(&home, b).exists(),
        "b was the least recently used"
    );
    assert!(blob_file(&home, c).exists());
    // c's miss had to evict b first, and still asked the origin once.
    assert_eq!(origin.hits(&format!("/b/{c}")), 1);

    let (status, _, body) = get(&big_digest).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), big.as_slice());
    assert!(
        !blob_file(&home, &big_digest).exists(),
        "larger than the quota"
    );
    assert!(blob_file(&home, a).exists() && blob_file(&home, c).exists());
    // The response `fetch-into` refused as too large was the one passed
    // through.
    assert_eq!(origin.hits(&format!("/b/{big_digest}")), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_to_allow_listed_origins_only() {
    let (origin, cdn, elsewhere) = (
        Origin::start(Duration::ZERO).await,
        Origin::start(Duration::ZERO).await,
        Origin::start(Duration::ZERO).await,
    );
    let (a, b) = (pseudo_random(50_000, 70), pseudo_random(50_000, 71));
    let (da, db) = (sha256_digest(&a), sha256_digest(&b));
    // a: the origin sends the client to the CDN, which is allow-listed.
    origin.redirect(&format!("/b/{da}"), &format!("{}/objects/{da}", cdn.url()));
    cdn.serve(&format!("/objects/{da}"), a.clone());
    // b: to an origin that is not.
    origin.redirect(
        &format!("/b/{db}"),
        &format!("{}/objects/{db}", elsewhere.url()),
    );
    elsewhere.serve(&format!("/objects/{db}"), b.clone());
    let home = cache_home(
        &[origin.url(), cdn.url()],
        1 << 20,
        format!("origin = \"{}/b\"\n", origin.url()),
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");

    let (status, _, body) = call(gw.http_addr, "GET", &format!("/blobs/{da}"), &[]).await;
    assert_eq!(status, 200);
    assert!(body.as_ref() == a.as_slice());
    assert!(blob_file(&home, &da).exists());
    assert_eq!(cdn.hits(&format!("/objects/{da}")), 1);

    let (status, _, body) = call(gw.http_addr, "GET", &format!("/blobs/{db}"), &[]).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains("allow-list") && text.contains("redirect"),
        "{text}"
    );
    assert_eq!(elsewhere.total(), 0, "never contacted");
    assert!(!blob_file(&home, &db).exists());
    gw.shutdown().await;
}

/// The status, headers and body of a request whose body may end in an
/// error (then the bytes received before it, and `false`).
async fn call_partial(addr: SocketAddr, path: &str) -> (u16, hyper::HeaderMap, Vec<u8>, bool) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.expect("request");
    let (parts, mut body) = res.into_parts();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => got.extend_from_slice(f.data_ref().map_or(&[][..], |d| d.as_ref())),
            Err(_) => return (parts.status.as_u16(), parts.headers, got, false),
        }
    }
    (parts.status.as_u16(), parts.headers, got, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_larger_than_the_quota_stream_from_the_origin_verified_at_any_size() {
    let origin = Origin::start(Duration::ZERO).await;
    // Larger than the quota and than the 8 MiB a plugin may hold of an
    // outbound response.
    let big = pseudo_random(9 << 20, 60);
    let digest = sha256_digest(&big);
    origin.serve(&format!("/b/{digest}"), big.clone());
    // Bytes that hash to something else, under another digest's name.
    let claimed = sha256_digest(b"not these bytes");
    let mut wrong = big.clone();
    wrong[5 << 20] ^= 1;
    origin.serve(&format!("/b/{claimed}"), wrong.clone());
    let (home, gw) = gateway_for(&origin, 1 << 20, "").await;
    let path = format!("/blobs/{digest}");

    let (status, headers, body) = call(gw.http_addr, "GET", &path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], (9u64 << 20).to_string().as_str());
    assert_eq!(headers["etag"], format!("\"{digest}\"").as_str());
    assert!(body.as_ref() == big.as_slice(), "the whole blob, unchanged");
    assert!(!blob_file(&home, &digest).exists(), "not stored");
    // One origin request per pass: `fetch-into`'s refused response is used.
    assert_eq!(origin.hits(&format!("/b/{digest}")), 1);

    // HEAD: the length, no body. A range is ignored: the whole blob.
    // If-None-Match with the digest: 304.
    let (status, headers, body) = call(gw.http_addr, "HEAD", &path, &[]).await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers["content-length"], (9u64 << 20).to_string().as_str());
    let (status, headers, body) = call(gw.http_addr, "GET", &path, &[("range", "bytes=0-9")]).await;
    assert_eq!((status, body.len()), (200, 9 << 20));
    assert_eq!(headers["accept-ranges"], "none");
    let etag = format!("\"{digest}\"");
    let (status, _, body) = call(
        gw.http_addr,
        "GET",
        &path,
        &[("if-none-match", etag.as_str())],
    )
    .await;
    assert_eq!((status, body.len()), (304, 0));

    // Wrong bytes: the response is cut short before its end, so the client
    // never holds a complete blob that is not the one it asked for.
    let (status, headers, got, complete) =
        call_partial(gw.http_addr, &format!("/blobs/{claimed}")).await;
    assert_eq!(
        status, 200,
        "the headers went out before the bytes were known"
    );
    assert_eq!(headers["content-length"], (9u64 << 20).to_string().as_str());
    assert!(!complete, "the body ends in an error");
    assert!(
        got.len() < wrong.len(),
        "{} bytes of {}",
        got.len(),
        wrong.len()
    );
    assert!(got.as_slice() == &wrong[..got.len()]);

    // The gateway goes on serving.
    let (status, _, body) = call(gw.http_addr, "GET", &path, &[]).await;
    assert_eq!((status, body.len()), (200, 9 << 20));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origins_are_reached_with_rustls_and_unlisted_origins_are_denied() {
    let origin = Origin::start_tls(Duration::ZERO).await;
    let bytes = pseudo_random(50_000, 6);
    let digest = sha256_digest(&bytes);
    origin.serve(&format!("/b/{digest}"), bytes.clone());
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("origin-ca.pem");
    std::fs::write(&ca_file, origin.ca_pem.as_deref().unwrap()).unwrap();
    let home = cache_home_with(
        &[origin.url()],
        &format!("http_ca_file = \"{}\"", ca_file.display()),
        1 << 20,
        format!("origin = \"{}/b\"\n", origin.url()),
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let (status, _, body) = call(gw.http_addr, "GET", &format!("/blobs/{digest}"), &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body.as_ref(), bytes.as_slice());
    assert_eq!(origin.total(), 1);
    gw.shutdown().await;

    // The same origin, not on the allow-list: refused before connecting.
    let home = cache_home(&[], 1 << 20, format!("origin = \"{}/b\"\n", origin.url()));
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let other = sha256_digest(b"other");
    let (status, _, body) = call(gw.http_addr, "GET", &format!("/blobs/{other}"), &[]).await;
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("allow-list"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(origin.total(), 1, "a denied origin must not be contacted");
    gw.shutdown().await;
}
