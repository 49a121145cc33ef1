use super::*;
use hyper_util::rt::TokioIo;

#[test]
fn only_allow_listed_origins_pass() {
    let o = HttpOutbound::new(
        &["http://127.0.0.1:5000".into(), "http://Example.org".into()],
        None,
    )
    .unwrap();
    assert!(o.check("http://127.0.0.1:5000/v2/x").is_ok());
    assert!(o.check("http://example.org/a").is_ok());
    assert!(o.check("http://example.org:80/a").is_ok());
    for denied in [
        "http://127.0.0.1:5001/v2/x",
        "http://example.org:8080/",
        "http://user@127.0.0.1:5000/",
        "http://evil.example.org/",
    ] {
        assert!(
            matches!(o.check(denied), Err(OutboundError::Denied(_))),
            "{denied}"
        );
    }
    assert!(matches!(
        o.check("not a url"),
        Err(OutboundError::Invalid(_))
    ));
}

/// An HTTPS server on a loopback port (HTTP/1.1, keep-alive) that
/// answers every request with `ok` and counts its connections; its
/// certificate is written to `ca` for the client to trust.
async fn counting_tls_server(
    ca: &Path,
) -> (
    u16,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(ca, certified.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, accepted, task)
}

#[tokio::test]
async fn https_connections_are_kept_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let (port, accepted, server) = counting_tls_server(&ca).await;
    let origin = format!("https://127.0.0.1:{port}");
    let outbound = HttpOutbound::new(std::slice::from_ref(&origin), Some(&ca)).unwrap();
    for i in 0..3 {
        let uri = outbound.check(&format!("{origin}/r/{i}")).unwrap();
        let response = outbound.send("GET", uri, &[], Vec::new()).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"ok");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    server.abort();
}

/// A registry-like [`recording_server`]: `/same` redirects to `/here` on
/// itself (200), `/cross` to `<cdn_url>/blob`, and `more` if given.
async fn redirecting_registry(
    cdn_url: &str,
    more: Option<(String, String)>,
) -> (
    u16,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let mut routes = vec![
        (
            "/same".into(),
            "307 Temporary Redirect\r\nlocation: /here\r\n".into(),
        ),
        ("/here".into(), "200 OK\r\n".into()),
        (
            "/cross".into(),
            format!("307 Temporary Redirect\r\nlocation: {cdn_url}/blob\r\n"),
        ),
    ];
    routes.extend(more);
    recording_server(routes).await
}

/// A plain HTTP server on a loopback port that answers `routes`
/// (path -> status line and extra header lines; 404 otherwise), one
/// request per connection, and keeps every request's head.
async fn recording_server(
    routes: Vec<(String, String)>,
) -> (
    u16,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = heads.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            kept.lock().unwrap().push(head);
            let answer = routes
                .iter()
                .find(|(p, _)| *p == path)
                .map_or("404 Not Found\r\n".to_string(), |(_, a)| a.clone());
            let reply =
                format!("HTTP/1.1 {answer}content-length: 2\r\nconnection: close\r\n\r\nok");
            let _ = tcp.write_all(reply.as_bytes()).await;
            let _ = tcp.shutdown().await;
        }
    });
    (port, heads, task)
}

fn has_authorization(head: &str) -> bool {
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with("authorization:"))
}

#[tokio::test]
async fn redirects_keep_authorization_on_their_origin_only_and_stay_allow_listed() {
    let (cdn_port, cdn_heads, cdn) =
        recording_server(vec![("/blob".into(), "200 OK\r\n".into())]).await;
    let (other_port, other_heads, other) = recording_server(vec![]).await;
    let cdn_url = format!("http://127.0.0.1:{cdn_port}");
    let away = (
        "/away".to_string(),
        format!("302 Found\r\nlocation: http://127.0.0.1:{other_port}/blob\r\n"),
    );
    let (port, heads, registry) = redirecting_registry(&cdn_url, Some(away)).await;
    let registry_url = format!("http://127.0.0.1:{port}");
    let outbound = HttpOutbound::new(&[registry_url.clone(), cdn_url], None).unwrap();
    let auth = [("Authorization".to_string(), "Bearer t".to_string())];
    let get = |path: &str| {
        let uri = outbound.check(&format!("{registry_url}{path}")).unwrap();
        outbound.get_following(uri, &auth)
    };

    assert_eq!(get("/same").await.unwrap().status(), 200);
    assert_eq!(get("/cross").await.unwrap().status(), 200);
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3);
    assert!(heads.iter().all(|h| has_authorization(h)), "{heads:?}");
    let cdn_heads = cdn_heads.lock().unwrap().clone();
    assert_eq!(cdn_heads.len(), 1);
    assert!(!has_authorization(&cdn_heads[0]), "{}", cdn_heads[0]);

    let e = get("/away").await.unwrap_err();
    assert!(
        matches!(&e, OutboundError::Denied(m) if m.contains("redirect")),
        "{e}"
    );
    assert!(other_heads.lock().unwrap().is_empty(), "never contacted");
    for t in [cdn, other, registry] {
        t.abort();
    }
}

#[tokio::test]
async fn a_redirect_to_another_origin_carries_only_allow_listed_headers() {
    let (cdn_port, cdn_heads, cdn) =
        recording_server(vec![("/blob".into(), "200 OK\r\n".into())]).await;
    let cdn_url = format!("http://127.0.0.1:{cdn_port}");
    let (port, heads, registry) = redirecting_registry(&cdn_url, None).await;
    let registry_url = format!("http://127.0.0.1:{port}");
    let outbound = HttpOutbound::new(&[registry_url.clone(), cdn_url], None).unwrap();
    let headers: Vec<(String, String)> = [
        ("X-Registry-Token", "secret-1"),
        ("Cookie", "session=secret-2"),
        ("Proxy-Authorization", "Basic secret-3"),
        ("Range", "bytes=0-9"),
        ("Accept", "application/octet-stream"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let get = |path: &str| {
        let uri = outbound.check(&format!("{registry_url}{path}")).unwrap();
        outbound.get_following(uri, &headers)
    };
    assert_eq!(get("/same").await.unwrap().status(), 200);
    assert_eq!(get("/cross").await.unwrap().status(), 200);
    let heads = heads.lock().unwrap().clone();
    assert!(
        heads
            .iter()
            .all(|h| h.contains("secret-1") && h.contains("secret-2")),
        "the origin itself gets everything: {heads:?}"
    );
    let cdn_head = cdn_heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(!cdn_head.contains("secret"), "{cdn_head}");
    assert!(cdn_head.contains("range: bytes=0-9"), "{cdn_head}");
    assert!(
        cdn_head.contains("accept: application/octet-stream"),
        "{cdn_head}"
    );
    cdn.abort();
    registry.abort();
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_fetch_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 2048];
        let _ = tcp.read(&mut buf).await;
        // A prompt head, then one body byte every 100 ms: never idle
        // for long, never done.
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
        let _ = tcp.write_all(head).await;
        loop {
            if tcp.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    let mut outbound = HttpOutbound::new(std::slice::from_ref(&url), None).unwrap();
    outbound.fetch_deadline = Duration::from_millis(700);
    let started = std::time::Instant::now();
    let uri = outbound.check(&format!("{url}/slow")).unwrap();
    let e = outbound
        .fetch_whole("GET", uri, &[], Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, HttpError::Io(m) if m.contains("within 700 ms")),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    server.abort();
}

#[test]
fn redirect_locations_resolve_against_the_request() {
    let base: Uri = "https://registry.example:5000/v2/a/blobs/x"
        .parse()
        .unwrap();
    assert_eq!(
        resolve_location(&base, "/cdn/x?sig=1").unwrap(),
        "https://registry.example:5000/cdn/x?sig=1"
    );
    assert_eq!(
        resolve_location(&base, "http://cdn.example/x").unwrap(),
        "http://cdn.example/x"
    );
    assert_eq!(
        resolve_location(&base, "HTTPS://cdn.example/x").unwrap(),
        "https://cdn.example/x"
    );
    assert_eq!(
        resolve_location(&base, "//cdn.example/x").unwrap(),
        "https://cdn.example/x"
    );
    let here = "https://registry.example:5000";
    for (location, resolved) in [
        ("y", "/v2/a/blobs/y"),
        ("../z?a=1", "/v2/a/z?a=1"),
        ("./", "/v2/a/blobs/"),
        ("../../../../..", "/"),
        ("?q=1", "/v2/a/blobs/x?q=1"),
        ("/a/./b/../c#frag", "/a/c"),
    ] {
        assert_eq!(
            resolve_location(&base, location).unwrap(),
            format!("{here}{resolved}"),
            "{location}"
        );
    }
    assert_eq!(origin_of(&base), "https://registry.example:5000");
}
