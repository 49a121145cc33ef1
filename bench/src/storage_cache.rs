//! `depin-bench-storage-cache`: cache hits of the storage-cache plugin
//! through the gateway vs nginx serving the same files from disk, in one
//! run, with `wrk` as the load generator for both. Prints requests/s, MB/s
//! and the ratios.
//!
//! Needs `nginx` and `wrk` (Debian packages of those names) and the plugin
//! components (`make plugins`). Run with
//! `cargo run --release -p depin-bench --bin depin-bench-storage-cache`.
//!
//! nginx is also the origin: the gateway pulls each blob from it once, so
//! both sides then serve identical bytes from the same disk.
//!
//! Each row alternates nginx and the gateway for `BENCH_ROUNDS` rounds
//! (default 3) of `BENCH_SECONDS` each (default 5), the order flipping
//! every round, and reports the median of the rounds' ratios: on a shared
//! machine one phase of either side can run 20% fast or slow, which a
//! single pair of phases turns straight into the ratio.
//!
//! `BENCH_CONNS` (comma-separated, default `16,64,256`) sets the connection
//! counts of the 4 KiB rows; each round also prints wrk's mean latency.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use depin_e2e::registry::{pseudo_random, sha256_digest};
use depin_e2e::{Home, HttpClient, PluginSpec, plugin};
use depin_gateway::RunningGateway;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// nginx serving `root` on a free loopback port; stopped when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, root: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "{user}\ndaemon off;\nworker_processes 2;\npid {pid};\nerror_log stderr warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
                 client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n\
                 uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
                 server {{ listen {addr}; root {root}; location / {{ }} }}\n}}\n",
                pid = dir.join("nginx.pid").display(),
                tmp = dir.display(),
                root = root.display(),
            ),
        )
        .expect("write nginx.conf");
        let mut child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx (apt-get install nginx)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Self { child, addr };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nginx did not start");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}

struct Wrk {
    rps: f64,
    /// wrk's mean latency, as it prints it (e.g. `412.50us`).
    latency: String,
    mb_per_s: f64,
    non_2xx: u64,
}

/// `wrk -t2 -c<conns> -d<secs>s <url>`, parsed.
/// Totals of the gateway's ledger transactions, read from its metrics.
struct LedgerGroups {
    commits: f64,
    calls: f64,
    seconds: f64,
}

impl LedgerGroups {
    fn now() -> Self {
        let text = depin_gateway::metrics::global().render_prometheus();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Self {
            commits: value("depin_ledger_commit_group_size_count"),
            calls: value("depin_ledger_commit_group_size_sum"),
            seconds: value("depin_ledger_commit_duration_seconds_sum"),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            commits: self.commits - before.commits,
            calls: self.calls - before.calls,
            seconds: self.seconds - before.seconds,
        }
    }

    fn calls_per_commit(&self) -> f64 {
        self.calls / self.commits.max(1.0)
    }

    fn micros_per_commit(&self) -> f64 {
        self.seconds * 1e6 / self.commits.max(1.0)
    }
}

async fn wrk(url: String, connections: u32, secs: u64) -> Wrk {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .args([
                // wrk refuses more threads than connections.
                if connections < 2 { "-t1" } else { "-t2" },
                &format!("-c{connections}"),
                &format!("-d{secs}s"),
                &url,
            ])
            .output()
            .expect("run wrk (apt-get install wrk)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no `{name}` in wrk output:\n{text}"))
    };
    let rps: f64 = field("Requests/sec:").parse().unwrap();
    let transfer = field("Transfer/sec:");
    let (number, unit) = transfer.split_at(transfer.len() - 2);
    let scale = match unit {
        "GB" => 1024.0,
        "MB" => 1.0,
        "KB" => 1.0 / 1024.0,
        _ => 1.0 / (1024.0 * 1024.0),
    };
    let number = number.trim_end_matches('M').trim_end_matches('G');
    let mb_per_s = number.trim().parse::<f64>().unwrap_or(0.0) * scale;
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    let latency = field("Latency")
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string();
    Wrk {
        rps,
        latency,
        mb_per_s,
        non_2xx,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs = env_number("BENCH_SECONDS", 5);
    let rounds = env_number("BENCH_ROUNDS", 3);
    println!(
        "depin-bench-storage-cache: {rounds} rounds of {secs} s per side and row \
         (BENCH_ROUNDS, BENCH_SECONDS to change)\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("b")).unwrap();
    // (size, label, connection counts): small hits at several concurrency
    // levels, because a durable answer's throughput grows with the number
    // of requests that can share one fsync'd ledger transaction.
    let small_conns = std::env::var("BENCH_CONNS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|c| {
                    c.trim()
                        .parse::<u32>()
                        .expect("BENCH_CONNS: numbers, comma-separated")
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| vec![16, 64, 256]);
    let sizes: [(usize, &str, &[u32]); 2] = [
        (4 * 1024, "4 KiB", &small_conns),
        (16 << 20, "16 MiB", &[8]),
    ];
    let mut digests = Vec::new();
    for (i, (size, _, _)) in sizes.iter().enumerate() {
        let bytes = pseudo_random(*size, 100 + i as u64);
        let digest = sha256_digest(&bytes);
        std::fs::write(root.join("b").join(&digest), &bytes).unwrap();
        digests.push(digest);
    }
    let nginx = Nginx::start(dir.path(), &root);
    let origin = format!("http://{}", nginx.addr);
    let table = format!(
        "[plugin.blobs]\nquota_bytes = 1073741824\n[plugin.outbound]\nhttp = [\"{origin}\"]\n"
    );
    let home = Home::new(
        &[
            PluginSpec::new("cache", plugin("storage_cache_plugin"), "/")
                .table(table.clone().leak())
                .limits("cpu_ms = 5000")
                .config(format!("origin = \"{origin}/b\"").leak()),
            // The same plugin with reused answers off: every hit is a call.
            PluginSpec::new("cache-calls", plugin("storage_cache_plugin"), "/calls")
                .table(table.clone().leak())
                .limits("cpu_ms = 5000")
                .config(format!("origin = \"{origin}/b\"\nhit_reuse_ms = 0").leak()),
            // The per-request floor of any plugin call with a durable commit.
            PluginSpec::new("template", plugin("template_plugin"), "/t")
                .config("greeting = \"hello\""),
        ],
        "[runtime]\nmax_instances = 1000\n",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    // Warm the cache: one miss per blob, pulled from nginx.
    let http = HttpClient::new(gw.http_addr);
    for d in &digests {
        let r = http.get(&format!("/blobs/{d}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = http.get(&format!("/calls/blobs/{}", digests[0])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut reused_64 = 0.0;

    println!("cache hits, wrk -t2, keep-alive; per row: each round's requests/s, then the medians");
    for ((_, label, conn_counts), digest) in sizes.iter().zip(&digests) {
        for conns in *conn_counts {
            let nginx_url = format!("http://{}/b/{digest}", nginx.addr);
            let gateway_url = format!("http://{}/blobs/{digest}", gw.http_addr);
            let (mut ns, mut gs, mut ratios, mut mb_ratios) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let before = LedgerGroups::now();
            for round in 0..rounds {
                let (n, g) = if round % 2 == 0 {
                    let n = wrk(nginx_url.clone(), *conns, secs).await;
                    (n, wrk(gateway_url.clone(), *conns, secs).await)
                } else {
                    let g = wrk(gateway_url.clone(), *conns, secs).await;
                    (wrk(nginx_url.clone(), *conns, secs).await, g)
                };
                assert!(
                    n.non_2xx + g.non_2xx == 0,
                    "errors under load: {} non-2xx answers from nginx, {} from the gateway \
                     (is the disk full?)",
                    n.non_2xx,
                    g.non_2xx
                );
                println!(
                    "   {label:>6}, {conns:>3} conns  round {}: nginx {:>9.0} req/s ({:>8} mean latency)  gateway {:>9.0} req/s ({:>8})  ratio {:.2}x",
                    round + 1,
                    n.rps,
                    n.latency,
                    g.rps,
                    g.latency,
                    g.rps / n.rps
                );
                ratios.push(g.rps / n.rps);
                mb_ratios.push(g.mb_per_s / n.mb_per_s);
                ns.push(n);
                gs.push(g);
            }
            let groups = LedgerGroups::now().since(&before);
            let (n_rps, g_rps) = (
                median(ns.iter().map(|w| w.rps).collect()),
                median(gs.iter().map(|w| w.rps).collect()),
            );
            if *conns == 64 && label.contains("KiB") {
                reused_64 = g_rps;
            }
            println!(
                "   {label:>6}, {conns:>3} conns  nginx   {:>9.0} req/s {:>8.1} MB/s (medians)",
                n_rps,
                median(ns.iter().map(|w| w.mb_per_s).collect())
            );
            println!(
                "   {label:>6}, {conns:>3} conns  gateway {:>9.0} req/s {:>8.1} MB/s (medians)",
                g_rps,
                median(gs.iter().map(|w| w.mb_per_s).collect())
            );
            println!(
                "   {label:>6}, {conns:>3} conns  gateway ledger: {:.1} calls per fsync'd transaction, {:.0} µs per transaction",
                groups.calls_per_commit(),
                groups.micros_per_commit()
            );
            let target = if label.contains("KiB") { 0.5 } else { 0.7 };
            println!(
                "   ratio gateway/nginx at {label}, {conns} conns: requests/s {:.2}x  MB/s {:.2}x  \
                 (median of {rounds} rounds, {:.2}-{:.2}x; target >= {target}x)\n",
                median(ratios.clone()),
                median(mb_ratios),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
        }
    }
    let calls = wrk(
        format!("http://{}/calls/blobs/{}", gw.http_addr, digests[0]),
        64,
        secs,
    )
    .await;
    assert_eq!(calls.non_2xx, 0, "errors under load");
    println!(
        "    4 KiB,  64 conns  gateway, hit_reuse_ms = 0 (every hit calls the plugin) {:>9.0} req/s; \
         reused answers are {:.2}x that",
        calls.rps,
        reused_64 / calls.rps
    );
    let floor = wrk(format!("http://{}/t/hello", gw.http_addr), 64, secs).await;
    println!(
        "   reference: gateway, template plugin GET /t/hello, 64 conns {:>9.0} req/s \
         (the per-call floor: plugin call + durable usage commit)",
        floor.rps
    );
    gw.shutdown().await;
    drop(nginx);
}
