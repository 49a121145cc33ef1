//! A real PostgreSQL server for the tests and the fleet benchmark: a
//! temporary cluster made by `initdb`, served on a loopback port by a
//! non-root user, and removed when dropped.
//!
//! Debian's `postgresql` package provides the binaries under
//! `/usr/lib/postgresql/<version>/bin`. PostgreSQL refuses to run as root,
//! so when the tests run as root the server runs as the package's
//! `postgres` user (through `setpriv`, which execs, so the child is the
//! server itself and dropping it stops the server).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sensors::free_port;

/// A running PostgreSQL cluster on 127.0.0.1, stopped and deleted on drop.
pub struct Postgres {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

/// The directory holding `initdb`, `postgres` and friends: the newest
/// version under `/usr/lib/postgresql`, else whatever `PATH` has.
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root).ok().and_then(|dirs| {
        dirs.filter_map(|d| d.ok())
            .filter_map(|d| {
                let v: u32 = d.file_name().to_str()?.parse().ok()?;
                Some((v, d.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("initdb").exists())
            .max_by_key(|(v, _)| *v)
            .map(|(_, bin)| bin)
    });
    if let Some(bin) = newest {
        return bin;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|p| p.join("initdb").exists() && p.join("postgres").exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: no initdb under /usr/lib/postgresql/*/bin or on PATH \
             (Debian: apt-get install postgresql)"
        )
    })
}

fn is_root() -> bool {
    // The owner of a file we just made is our effective uid.
    let probe = tempfile::NamedTempFile::new().expect("temp file");
    std::os::unix::fs::MetadataExt::uid(&probe.as_file().metadata().expect("metadata")) == 0
}

/// A command for `program` run as the server's user: as `postgres` through
/// `setpriv` when we are root, else as ourselves.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_to_server_user(path: &Path) {
    if !is_root() {
        return;
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown postgres {}: is the Debian postgresql package installed (it makes the user)?",
        path.display()
    );
}

impl Postgres {
    /// Makes a cluster in a temporary directory and starts it on a free
    /// loopback port; returns once it accepts connections.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("depin-pg-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).expect("socket dir");
        chown_to_server_user(dir.path());

        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        chown_to_server_user(&dir.path().join("server.log"));
        let child = as_server_user(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&sockets)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Test clusters are thrown away: durability buys nothing here.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let mut pg = Postgres {
            child,
            port,
            bin,
            _dir: dir,
        };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll postgres") {
                panic!("postgres exited at start ({status}): {}", self.log());
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.psql("postgres", "SELECT 1").is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections on port {} within 30 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs one SQL command with `psql` against `database`; returns its
    /// output (unaligned, tuples only) or its error text.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Creates an empty database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url(name)
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME` (trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: clients are disconnected.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_answers_and_is_gone_after_drop() {
        let pg = Postgres::start();
        let url = pg.create_database("probe");
        assert!(url.ends_with("/probe"), "{url}");
        pg.psql(
            "probe",
            "CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)",
        )
        .expect("create");
        assert_eq!(pg.psql("probe", "SELECT sum(x) FROM t").expect("sum"), "42");
        let port = pg.port;
        drop(pg);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "port {port} still answers after drop"
        );
    }
}
