//! Fixtures for the upstream tests: a throwaway PKI (rcgen), a collector
//! configuration in a temporary directory, and collector processes that are
//! always stopped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use depin_gateway::config::{CollectorUrls, UpstreamConfig};
use depin_gateway::identity::DeviceKey;
use depin_gateway::upstream::sender::CollectorClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};

/// A client certificate and key written to files.
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// sha256 of the DER certificate, hex (what `collector.toml` maps).
    pub sha256: String,
}

/// A test CA that issues the collector's server certificate and gateways'
/// client certificates, all as PEM files in `dir`.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA and a server certificate for 127.0.0.1, ::1 and localhost.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let ca = params.self_signed(&key).expect("ca cert");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write ca");
        let issuer = Issuer::new(params, key);
        let server = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ])
        .expect("server params");
        let server_key = KeyPair::generate().expect("server key");
        let cert = server.signed_by(&server_key, &issuer).expect("server cert");
        let server_cert = dir.join("server.pem");
        let server_key_file = dir.join("server.key");
        std::fs::write(&server_cert, cert.pem()).expect("write");
        std::fs::write(&server_key_file, server_key.serialize_pem()).expect("write");
        Self {
            dir: dir.to_path_buf(),
            ca_file,
            server_cert,
            server_key: server_key_file,
            issuer,
        }
    }

    /// Issues a client certificate named `name`.
    pub fn client(&self, name: &str) -> ClientCert {
        let params = CertificateParams::new(vec![format!("{name}.gateways.test")]).expect("params");
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        let cert_file = self.dir.join(format!("{name}.pem"));
        let key_file = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        ClientCert {
            cert_file,
            key_file,
            sha256: hex::encode(Sha256::digest(cert.der().as_ref())),
        }
    }

    /// The `[upstream]` table of a gateway using `client` against `port`.
    pub fn upstream_toml(&self, port: u16, client: &ClientCert) -> String {
        format!(
            "[upstream]\nurl = \"https://127.0.0.1:{port}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nretry_min_ms = 50\nretry_max_ms = 400\nrequest_timeout_ms = 5000\n",
            self.ca_file.display(),
            client.cert_file.display(),
            client.key_file.display()
        )
    }

    /// The `[upstream]` table of a gateway that presents its device-key
    /// certificate (no cert_file) to the collectors on `ports`, in order.
    pub fn upstream_toml_device_key(&self, ports: &[u16]) -> String {
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("\"https://127.0.0.1:{p}\""))
            .collect();
        format!(
            "[upstream]\nurl = [{}]\nca_file = \"{}\"\nretry_min_ms = 50\nretry_max_ms = 400\nrequest_timeout_ms = 5000\n",
            urls.join(", "),
            self.ca_file.display(),
        )
    }

    /// An HTTPS client presenting `client` to the collector on `port`.
    pub fn https(&self, port: u16, client: &ClientCert) -> CollectorClient {
        CollectorClient::new(&UpstreamConfig {
            url: format!("https://127.0.0.1:{port}").into(),
            ca_file: self.ca_file.clone(),
            cert_file: Some(client.cert_file.clone()),
            key_file: Some(client.key_file.clone()),
            retry_min_ms: 50,
            retry_max_ms: 400,
            request_timeout_ms: 5000,
        })
        .expect("client config")
    }
}

impl Pki {
    /// An HTTPS client presenting `key`'s device-key certificate (no
    /// certificate files) to the collectors on `ports`, tried in order.
    pub fn https_device_key(&self, ports: &[u16], key: &DeviceKey) -> CollectorClient {
        let urls = ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        let config = UpstreamConfig {
            url: CollectorUrls::Several(urls),
            ca_file: self.ca_file.clone(),
            cert_file: None,
            key_file: None,
            retry_min_ms: 50,
            retry_max_ms: 400,
            request_timeout_ms: 30_000,
        };
        let key = DeviceKey::from_signing_key(key.signing_key().clone());
        CollectorClient::with_identity(&config, Some(std::sync::Arc::new(key)))
            .expect("client config")
    }
}

/// Polls the collector's `/metrics` until `done(passed, failed)` holds for
/// its challenge verdict counters, and returns them; panics with the metrics
/// after `timeout`.
pub async fn wait_for_verdicts(
    collector: &CollectorClient,
    timeout: Duration,
    done: impl Fn(u64, u64) -> bool,
) -> (u64, u64) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (_, m) = collector
            .request("GET", "/metrics", Vec::new())
            .await
            .expect("collector metrics");
        let m = String::from_utf8_lossy(&m).into_owned();
        let count = |verdict: &str| {
            m.lines()
                .find(|l| l.contains(&format!("verdict=\"{verdict}\"")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let verdicts = (count("passed"), count("failed"));
        if done(verdicts.0, verdicts.1) {
            return verdicts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "challenges were not judged in time: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sha256:<hex>` of a file, as plugin digests are written.
pub fn file_digest(path: &Path) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
    )
}

/// The `[schedule]` table of a collector whose epochs are `length_ms` long
/// and accepted `grace_ms` after they end.
pub fn schedule_toml(length_ms: u64, grace_ms: u64) -> String {
    format!("[schedule]\nlength_ms = {length_ms}\ngrace_ms = {grace_ms}\n")
}

/// A `[[component]]` table approving `digest` as `kind`, with the
/// component file `verifier` (and its job modules) when given.
pub fn approve(digest: &str, kind: &str, verifier: Option<&Path>, job_modules: &[&Path]) -> String {
    let mut t = format!("[[component]]\ndigest = \"{digest}\"\nkind = \"{kind}\"\n");
    if let Some(v) = verifier {
        t.push_str(&format!("verifier = \"{}\"\n", v.display()));
    }
    if !job_modules.is_empty() {
        let list: Vec<String> = job_modules
            .iter()
            .map(|m| format!("\"{}\"", m.display()))
            .collect();
        t.push_str(&format!("job_modules = [{}]\n", list.join(", ")));
    }
    t
}

/// A free loopback TCP port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Writes `collector.toml` in `dir`: listening on `port`, mapping
/// `gateways` (id, client certificate sha256; an empty sha256 lists the
/// gateway by id only, for its device-key certificate), with `policy` as
/// its reward policy text and `extra` TOML tables (e.g. `[challenges]`).
pub fn collector_config(
    dir: &Path,
    pki: &Pki,
    port: u16,
    gateways: &[(String, String)],
    policy: &str,
    extra: &str,
) -> PathBuf {
    let policy_file = dir.join("collector-rewards.toml");
    std::fs::write(&policy_file, policy).expect("write policy");
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"collector-data\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\npolicy = \"{}\"\nlog_format = \"json\"\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_file.display(),
        policy_file.display(),
    );
    text.push_str(extra);
    text.push('\n');
    for (id, sha) in gateways {
        text.push_str(&format!("[[gateway]]\nid = \"{id}\"\n"));
        if !sha.is_empty() {
            text.push_str(&format!("cert_sha256 = \"{sha}\"\n"));
        }
    }
    let path = dir.join("collector.toml");
    std::fs::write(&path, text).expect("write collector config");
    path
}

/// Starts a collector (`bin`) in `dir` on `port` that knows the gateways
/// `ids` by their device keys only and has no client CA at all, with
/// `policy` and `extra` TOML tables (see [`collector_config`]).
pub fn device_key_collector(
    bin: &str,
    dir: &Path,
    pki: &Pki,
    port: u16,
    ids: &[String],
    policy: &str,
    extra: &str,
) -> CollectorProcess {
    std::fs::create_dir_all(dir).expect("collector dir");
    let gateways: Vec<(String, String)> =
        ids.iter().map(|id| (id.clone(), String::new())).collect();
    let config = collector_config(dir, pki, port, &gateways, policy, extra);
    let text = std::fs::read_to_string(&config).expect("read collector config");
    let without_ca: String = text
        .lines()
        .filter(|l| !l.starts_with("client_ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, without_ca).expect("write collector config");
    CollectorProcess::start(bin, &config)
}

/// A collector running as a separate process. Killed when dropped.
pub struct CollectorProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
}

impl CollectorProcess {
    /// Starts `bin --config <config>` (`bin`: the collector-under-test
    /// binary) and waits for `collector ready`.
    pub fn start(bin: &str, config: &Path) -> Self {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the collector");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("collector ready")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v["addr"].as_str()
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "collector did not become ready; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child,
            addr,
            stderr_lines: lines,
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
