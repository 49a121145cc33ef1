//! Real origins for the storage-cache tests: Debian's `docker-registry`
//! (an OCI distribution registry) on a loopback port with its own temp
//! storage, optionally with token authentication from a [`TokenService`]
//! (the distribution token flow, with ES256 tokens signed by a key
//! generated here), and a small HTTP origin that serves fixed bodies and
//! counts requests. All stop when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A `docker-registry` process serving on a free loopback port.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    access_log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Signs the helper's own push tokens when the registry wants tokens.
    signer: Option<TokenSigner>,
}

impl Registry {
    /// Starts the registry and waits until `GET /v2/` answers.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a registry that accepts only tokens from `tokens`.
    pub async fn start_with_tokens(tokens: &TokenService) -> Self {
        Self::start_with(Some(tokens)).await
    }

    /// Starts a registry that serves HTTPS with the PEM certificate
    /// `cert` and key `key` (its [`Registry::url`] stays `http://…`; this
    /// helper's own requests do not work on it).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::start_configured(
            None,
            Some(format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )),
        )
        .await
    }

    async fn start_with(tokens: Option<&TokenService>) -> Self {
        Self::start_configured(tokens, None).await
    }

    async fn start_configured(tokens: Option<&TokenService>, tls: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(tls) = &tls {
            text.push_str(tls);
        }
        if let Some(tokens) = tokens {
            let bundle = dir.path().join("token-signer.pem");
            std::fs::write(&bundle, &tokens.signer.cert_pem).expect("write the token certificate");
            text.push_str(&format!(
                "auth:\n  token:\n    realm: {}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                tokens.url(),
                bundle.display()
            ));
        }
        std::fs::write(&config, text).expect("write registry config");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let stdout = child.stdout.take().expect("stdout");
        let access_log = Arc::new(Mutex::new(Vec::new()));
        let sink = access_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let registry = Self {
            child,
            addr,
            access_log,
            _dir: dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
            signer: tokens.map(|t| t.signer.clone()),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tls.is_some() {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return registry;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            // 401: up, and asking for a token.
            if let Ok((200 | 401, _, _)) = registry.request("GET", "/v2/", &[], Bytes::new()).await
            {
                break;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        registry
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The file the registry keeps blob `digest` in (manifests too), for
    /// tests that tamper with what it serves.
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Access-log lines of requests whose path starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> usize {
        self.access_log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&format!(" {prefix}")))
            .count()
    }

    async fn request(
        &self,
        method: &str,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
        let uri = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.url())
        };
        let mut req = hyper::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .client
            .request(req.body(Full::new(body)).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    }

    /// The `authorization` value for pushing to `name`, when the registry
    /// wants tokens.
    fn push_authorization(&self, name: &str) -> Option<String> {
        let signer = self.signer.as_ref()?;
        Some(format!(
            "Bearer {}",
            signer.token(&format!("repository:{name}:pull,push"), "pusher")
        ))
    }

    /// Pushes a blob to `name` (monolithic upload); returns its digest.
    pub async fn push_blob(&self, name: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let auth = self.push_authorization(name);
        let auth: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, headers, body) = self
            .request(
                "POST",
                &format!("/v2/{name}/blobs/uploads/"),
                &auth,
                Bytes::new(),
            )
            .await
            .expect("start upload");
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        let location = headers["location"].to_str().unwrap().to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let (status, _, body) = self
            .request(
                "PUT",
                &format!("{location}{sep}digest={digest}"),
                &[
                    &[("content-type", "application/octet-stream")],
                    auth.as_slice(),
                ]
                .concat(),
                Bytes::copy_from_slice(bytes),
            )
            .await
            .expect("finish upload");
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        digest
    }

    /// Pushes an OCI image `name:tag` with one layer per entry of `layers`
    /// (each an uncompressed tar holding one file). Returns the manifest's
    /// digest, the config's digest and the layers' digests.
    pub async fn push_image(
        &self,
        name: &str,
        tag: &str,
        layers: &[Vec<u8>],
    ) -> (String, String, Vec<String>) {
        let mut layer_digests = Vec::new();
        let mut descriptors = Vec::new();
        for (i, content) in layers.iter().enumerate() {
            let tar = tar_with_one_file(&format!("file{i}.bin"), content);
            let digest = self.push_blob(name, &tar).await;
            descriptors.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": tar.len(),
            }));
            layer_digests.push(digest);
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": layer_digests },
        })
        .to_string();
        let config_digest = self.push_blob(name, config.as_bytes()).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": descriptors,
        })
        .to_string();
        let auth = self.push_authorization(name);
        let auth: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, _, body) = self
            .request(
                "PUT",
                &format!("/v2/{name}/manifests/{tag}"),
                &[
                    &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                    auth.as_slice(),
                ]
                .concat(),
                Bytes::from(manifest.clone()),
            )
            .await
            .expect("push manifest");
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        (
            sha256_digest(manifest.as_bytes()),
            config_digest,
            layer_digests,
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `service` and `issuer` a token-authenticated [`Registry`] expects.
const TOKEN_SERVICE: &str = "depin-test-registry";
const TOKEN_ISSUER: &str = "depin-test-tokens";

/// Signs registry tokens: ES256 JSON web tokens carrying their certificate
/// (`x5c`), which the registry trusts as its root bundle.
#[derive(Clone)]
struct TokenSigner {
    key: Arc<ring::signature::EcdsaKeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl TokenSigner {
    fn generate() -> Self {
        let key = rcgen::KeyPair::generate().expect("generate a token key");
        let cert = rcgen::CertificateParams::new(vec!["depin-test-tokens".to_string()])
            .expect("certificate params")
            .self_signed(&key)
            .expect("self-sign the token certificate");
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("load the token key");
        Self {
            key: Arc::new(key),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }

    /// A token for `scopes` (space-separated `repository:<name>:<actions>`),
    /// valid for five minutes.
    fn token(&self, scopes: &str, subject: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let access: Vec<serde_json::Value> = scopes
            .split_whitespace()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({
            "alg": "ES256", "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", pseudo_random(8, now).iter().map(|b| format!("{b:02x}")).collect::<String>()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("sign a token");
        format!("{input}.{}", b64.encode(signature.as_ref()))
    }
}

/// A registry token service on a free loopback port: `GET
/// /token?service=…&scope=…` answers `{"token": …, "expires_in": 300}` to
/// clients that present the basic credentials it was started with and
/// name the registry's service, 401 to others without those credentials,
/// 400 without the service. Counts the tokens it issued.
pub struct TokenService {
    pub addr: SocketAddr,
    signer: TokenSigner,
    issued: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenService {
    pub async fn start(user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the token service");
        let addr = listener.local_addr().expect("token service addr");
        let signer = TokenSigner::generate();
        let issued = Arc::new(AtomicUsize::new(0));
        let expected =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let (s, n) = (signer.clone(), issued.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (signer, issued, expected) = (s.clone(), n.clone(), expected.clone());
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let target = head.split_whitespace().nth(1).unwrap_or("");
                    let query = target.split_once('?').map_or("", |(_, q)| q);
                    let scopes: Vec<String> = query
                        .split('&')
                        .filter_map(|kv| kv.strip_prefix("scope="))
                        .map(percent_decode)
                        .collect();
                    let for_us = query.split('&').any(|kv| {
                        kv.strip_prefix("service=").map(percent_decode).as_deref()
                            == Some(TOKEN_SERVICE)
                    });
                    let authorized = head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("authorization")
                                && v.trim()
                                    .split_once(' ')
                                    .is_some_and(|(scheme, credentials)| {
                                        scheme.eq_ignore_ascii_case("basic")
                                            && credentials == expected
                                    })
                        })
                    });
                    let (status, body) = if !for_us {
                        (
                            "400 Bad Request",
                            "{\"details\":\"unknown or missing service\"}".to_string(),
                        )
                    } else if authorized {
                        issued.fetch_add(1, Ordering::SeqCst);
                        let token = signer.token(&scopes.join(" "), "puller");
                        (
                            "200 OK",
                            serde_json::json!({ "token": token, "expires_in": 300 }).to_string(),
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            "{\"details\":\"credentials required\"}".to_string(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            signer,
            issued,
            task,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request's head, up to the blank line (`None` if the peer closes
/// first).
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A ustar archive with one regular file.
pub fn tar_with_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// Deterministic pseudo-random bytes (xorshift), so blobs differ per seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A minimal HTTP/1.1 origin on a loopback port: answers `GET <path>` with
/// the body registered for it (404 otherwise), after an optional delay,
/// and counts the requests per path. Stops when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    /// The PEM certificate to trust, for an origin started with
    /// [`Origin::start_tls`].
    pub ca_pem: Option<String>,
    scheme: &'static str,
    bodies: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    authorized: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// A plain-HTTP origin.
    pub async fn start(delay: Duration) -> Self {
        Self::start_with(delay, None).await
    }

    /// An HTTPS origin (rustls) with a fresh self-signed certificate for
    /// 127.0.0.1, generated here; trust [`Origin::ca_pem`] to reach it.
    pub async fn start_tls(delay: Duration) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("generate a test certificate");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server TLS config");
        let mut origin = Self::start_with(
            delay,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await;
        origin.ca_pem = Some(certified.cert.pem());
        origin
    }

    async fn start_with(delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let bodies: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let redirects: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let authorized: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let (b, r, h, a, t) = (
            bodies.clone(),
            redirects.clone(),
            hits.clone(),
            authorized.clone(),
            total.clone(),
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let served = Served {
                    bodies: b.clone(),
                    redirects: r.clone(),
                    hits: h.clone(),
                    authorized: a.clone(),
                    total: t.clone(),
                    delay,
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                served.answer_one(stream).await;
                            }
                        }
                        None => served.answer_one(stream).await,
                    }
                });
            }
        });
        Self {
            addr,
            ca_pem: None,
            scheme,
            bodies,
            redirects,
            hits,
            authorized,
            total,
            task,
        }
    }

    /// `http://<addr>` or `https://<addr>`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Serves `body` at `path`.
    pub fn serve(&self, path: &str, body: Vec<u8>) {
        self.bodies.lock().unwrap().insert(path.to_string(), body);
    }

    /// Answers `path` with `307 Temporary Redirect` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.redirects
            .lock()
            .unwrap()
            .insert(path.to_string(), location.to_string());
    }

    /// Requests for `path` that carried an `authorization` header.
    pub fn authorized_hits(&self, path: &str) -> usize {
        self.authorized
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Served {
    bodies: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    authorized: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    delay: Duration,
}

impl Served {
    /// One request per connection: read the head, answer, close.
    async fn answer_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        mut stream: S,
    ) {
        let Some(head) = read_head(&mut stream).await else {
            return;
        };
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        self.total.fetch_add(1, Ordering::SeqCst);
        *self.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        if head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        {
            *self
                .authorized
                .lock()
                .unwrap()
                .entry(path.clone())
                .or_default() += 1;
        }
        tokio::time::sleep(self.delay).await;
        let redirect = self.redirects.lock().unwrap().get(&path).cloned();
        let body = self.bodies.lock().unwrap().get(&path).cloned();
        let (status, body, location) = match (redirect, body) {
            (Some(to), _) => (
                "307 Temporary Redirect",
                Vec::new(),
                format!("location: {to}\r\n"),
            ),
            (None, Some(body)) => ("200 OK", body, String::new()),
            (None, None) => ("404 Not Found", b"not here".to_vec(), String::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\n{location}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }
}
