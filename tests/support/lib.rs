//! Shared fixtures of the end-to-end tests: plugin components built for
//! wasm32-wasip2, gateway configurations in temporary directories, a real
//! HTTP client, and gateway processes that are always stopped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use depin_gateway::config::GatewayConfig;
use depin_gateway::identity::DeviceKey;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub mod browser;
pub mod forger;
pub mod ops;
pub mod postgres;
pub mod registry;
pub mod sensors;
pub mod softhsm;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `cargo build --profile <profile> --target <target> <args>` in the
/// workspace and returns the directory the artifacts land in.
fn cargo_build(profile: &str, target: &str, args: &[&str]) -> PathBuf {
    let root = workspace();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--profile", profile, "--target", target])
        .args(args)
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("run cargo to build wasm test artifacts");
    assert!(
        status.success(),
        "building {args:?} for {target} failed (is the target installed? `rustup target add {target}`)"
    );
    target_dir.join(target).join(profile)
}

/// Builds the plugin components once per test process (a no-op when
/// `make test` has built them already) and returns the path of `crate_name`'s
/// component, e.g. `plugin("template_plugin")`.
pub fn plugin(file_stem: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        cargo_build(
            "plugin",
            "wasm32-wasip2",
            &[
                "-p",
                "template-plugin",
                "-p",
                "hostile-plugin",
                "-p",
                "other-world-plugin",
                "-p",
                "storage-cache-plugin",
                "-p",
                "compute-task-plugin",
                "-p",
                "hotspot-relay-plugin",
                "-p",
                "sensor-aggregator-plugin",
                "-p",
                "broken-proofs-plugin",
            ],
        )
    });
    let path = dir.join(format!("{file_stem}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Builds the job modules of `tests/jobs` for wasm32-wasip1 once per test
/// process and returns the bytes of `name`'s module, e.g. `job_module("sha256")`.
pub fn job_module(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    // Profile `job`: opt-level 3, as the native side of the benchmark.
    let dir =
        BUILT.get_or_init(|| cargo_build("job", "wasm32-wasip1", &["-p", "test-jobs", "--bins"]));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The compute-task plugin's upload token in test configurations.
pub const JOB_UPLOAD_TOKEN: &str = "test-upload-token-0123";

/// `[plugin.config]` of the compute-task plugin in tests: the upload token
/// ([`JOB_UPLOAD_TOKEN`]) and 32 MiB jobs.
pub const COMPUTE_TASK_CONFIG: &str =
    "default_memory_mb = 32\nupload_token = \"test-upload-token-0123\"";

/// `PUT <prefix>/modules` of a compute-task plugin with the test upload
/// token.
pub async fn put_job_module(
    http: &HttpClient,
    prefix: &str,
    wasm: impl Into<Bytes>,
) -> Result<Reply, String> {
    let auth = vec![(
        "authorization".to_string(),
        format!("Bearer {JOB_UPLOAD_TOKEN}"),
    )];
    http.send_with_headers("PUT", &format!("{prefix}/modules"), &auth, wasm)
        .await
}

/// A `[[plugin]]` table for a test configuration.
pub struct PluginSpec {
    pub name: &'static str,
    pub component: PathBuf,
    pub route: &'static str,
    /// Extra lines for the `[[plugin]]` table itself.
    pub table: &'static str,
    /// Extra lines for `[plugin.limits]`.
    pub limits: &'static str,
    /// Extra lines for `[plugin.config]`.
    pub config: &'static str,
}

impl PluginSpec {
    pub fn new(name: &'static str, component: PathBuf, route: &'static str) -> Self {
        Self {
            name,
            component,
            route,
            table: "",
            limits: "",
            config: "",
        }
    }
    pub fn table(mut self, table: &'static str) -> Self {
        self.table = table;
        self
    }
    pub fn limits(mut self, limits: &'static str) -> Self {
        self.limits = limits;
        self
    }
    pub fn config(mut self, config: &'static str) -> Self {
        self.config = config;
        self
    }
}

/// A temporary gateway home: config file, data dir, device key.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Home {
    /// Writes `gateway.toml` (listening on a free loopback port) with
    /// `plugins` and `extra` top-level TOML, and a device key.
    pub fn new(plugins: &[PluginSpec], extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{extra}\n");
        // Many gateways run at once in one test process; a small instance
        // pool keeps their address-space reservations small.
        if !extra.contains("[runtime]") {
            text.push_str("[runtime]\nmax_instances = 64\n");
        }
        for p in plugins {
            text.push_str(&format!(
                "[[plugin]]\nname = \"{}\"\ncomponent = \"{}\"\nroute = \"{}\"\n{}\n[plugin.limits]\n{}\n[plugin.config]\n{}\n",
                p.name,
                p.component.display(),
                p.route,
                p.table,
                p.limits,
                p.config
            ));
        }
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, text).expect("write config");
        DeviceKey::generate()
            .write(&dir.path().join("data/device.key"), false)
            .expect("write key");
        Self { dir, config_path }
    }

    pub fn config(&self) -> GatewayConfig {
        GatewayConfig::load(&self.config_path).expect("valid test config")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn key_path(&self) -> PathBuf {
        self.data_dir().join("device.key")
    }

    pub fn make_key_world_readable(&self) {
        std::fs::set_permissions(self.key_path(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Reads a whole response.
    pub async fn read(res: hyper::Response<hyper::body::Incoming>) -> Result<Reply, String> {
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn request_id(&self) -> String {
        self.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// A real HTTP/1.1 client (hyper) for one gateway address.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// A client whose connections leave from `local` (e.g. `127.0.0.2`, to
    /// be another peer than a test's other loopback clients).
    pub fn new_from(addr: SocketAddr, local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        self.send_with_headers(method, path, &[], body).await
    }

    /// Sends a request with `headers`.
    pub async fn send_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        Reply::read(res).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, Bytes::new()).await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: &'static [u8]) -> Reply {
        self.send("POST", path, Bytes::from_static(body))
            .await
            .expect("POST")
    }
}

/// A gateway running as a separate process (`gateway-under-test run`).
/// Killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The admin listener's address, when `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
}

impl GatewayProcess {
    /// Starts `bin run --config <config> --log-format json` and waits for the
    /// `gateway ready` event.
    pub fn start(bin: &str, config: &Path) -> Self {
        Self::start_with_env(bin, config, &[])
    }

    /// Like [`GatewayProcess::start`], with `env` added to the process's
    /// environment: how a test sets what the gateway reads from the
    /// environment once per process (the OTLP exporter's variables) without
    /// touching the environment of the test process, which every test shares.
    pub fn start_with_env(bin: &str, config: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway process");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("gateway ready")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v["http_addr"].as_str()
                {
                    let admin = v["admin_addr"].as_str().and_then(|a| a.parse().ok());
                    let _ = tx.send((addr.parse::<SocketAddr>().expect("address"), admin));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, admin_addr) = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gateway did not become ready; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child,
            addr,
            stderr_lines: lines,
            admin_addr,
        }
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the gateway CLI to completion: (exit code, stdout, stderr).
pub fn run_cli(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `ledger verify` on `data_dir`; panics with the output, naming
/// `after`, unless the chain checks out. Returns what it printed.
pub fn verify_ledger(bin: &str, data_dir: &Path, after: &str) -> String {
    let data_dir = data_dir.to_str().expect("UTF-8 path");
    let (code, out, err) = run_cli(bin, &["ledger", "verify", "--data-dir", data_dir]);
    assert_eq!(code, 0, "chain broken after {after}: {out}{err}");
    out
}

/// The request ids of the ledger's host records (each carries the id of
/// the request it measured as its subject).
pub fn request_ids_in_ledger(data_dir: &Path) -> std::collections::HashSet<String> {
    use depin_gateway::ledger::{LedgerReader, Source};
    let reader = LedgerReader::open(data_dir).expect("open the ledger");
    let mut ids = std::collections::HashSet::new();
    reader
        .for_each(|_, r| {
            let (_, _, r) = r.expect("decodable record");
            if r.source == Source::Host {
                ids.insert(r.subject.expect("host records carry the request id"));
            }
            true
        })
        .unwrap();
    ids
}

pub mod upstream;
