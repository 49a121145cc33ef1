//! Real origins for the storage-cache tests: Debian's `docker-registry`
//! (an OCI distribution registry) on a loopback port with its own temp
//! storage, optionally with token authentication from a [`TokenService`]
//! (the distribution token flow, with ES256 tokens signed by a key
//! generated here), and a small HTTP origin that serves fixed bodies and
//! counts requests. All stop when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;

mod origin;
mod tokens;

pub use origin::Origin;
pub use tokens::TokenService;
use tokens::{TOKEN_ISSUER, TOKEN_SERVICE, TokenSigner};

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
