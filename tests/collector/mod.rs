//! The collector end to end, every test against both store backends
//! (`NAME::redb`, `NAME::postgres` on a real PostgreSQL cluster):
//! - `cheats`: validly signed reports (a real device key, a real client
//!   certificate over mutual TLS) that cheat in each way the collector
//!   must catch, each with its documented outcome;
//! - `honest`: the honest control — a real gateway with real plugins
//!   answering real challenges — that gets its full reward with every line
//!   `rated`, and the server's bounds;
//! - `registry`: the gateway registry's HTTP API and approval on first
//!   contact;
//! - `replicas`: several collector replicas on one PostgreSQL database,
//!   the gateway registry's CLI;
//! - `rounds`: challenge round times through a replica's `kill -9`, and
//!   long polls woken across replicas;
//! - `signers`: reports whose components name their signer (v3) and
//!   reports of the previous version.

mod cheats;
mod honest;
mod registry;
mod replicas;
mod rounds;
mod signers;

use std::path::{Path, PathBuf};

use depin_e2e::forger::{Forger, LENGTH_MS, current_epoch, schedule_toml, until_acceptable};
use depin_e2e::postgres::Postgres;
use depin_e2e::upstream::{
    ClientCert, CollectorProcess, Pki, approve, collector_config, file_digest, free_port,
};
use depin_protocol::Hash;
use depin_protocol::proofs::{Answer, ChallengeSpec};
use depin_protocol::time::now_ms;
use serde_json::Value;

use crate::upstream::get_json;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-under-test");

/// Rates for every unit the template plugin and the storage cache record,
/// no caps, and a proof floor of one half.
const POLICY: &str = r#"
[proof]
floor_ppm = 500000

[[rate]]
kind = "other"
unit = "requests"
micro = 7

[[rate]]
kind = "other"
unit = "bytes-echoed"
micro = 1

[[rate]]
kind = "storage-cache"
unit = "bytes-out"
micro = 5

[[rate]]
kind = "*"
unit = "bytes-in"
source = "host"
micro = 3
per = 10

[[rate]]
kind = "*"
unit = "bytes-out"
source = "host"
micro = 1
per = 10

[[rate]]
kind = "*"
unit = "wall-time-us"
source = "host"
micro = 1
per = 1000

[[rate]]
kind = "*"
unit = "fuel"
source = "host"
micro = 1
per = 100000
"#;

fn digest_bytes(digest: &str) -> Hash {
    hex::decode(digest.strip_prefix("sha256:").unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn reasons(decision: &Value) -> Vec<String> {
    decision["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect()
}

/// The store a test's collector uses.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// `collector.redb` in the data directory (no `[store]`).
    Redb,
    /// A database on a PostgreSQL cluster of the test's own.
    Postgres,
}

/// A started backend: the `[store]` table naming it (empty for redb) and
/// the cluster, stopped when this is dropped.
pub struct TestStore {
    pub toml: String,
    _cluster: Option<Postgres>,
}

impl Backend {
    pub fn start(self) -> TestStore {
        match self {
            Backend::Redb => TestStore {
                toml: String::new(),
                _cluster: None,
            },
            Backend::Postgres => {
                let pg = Postgres::start();
                let url = pg.create_database("collector");
                TestStore {
                    toml: format!("[store]\nurl = \"{url}\"\npool_size = 4\n"),
                    _cluster: Some(pg),
                }
            }
        }
    }
}

/// Runs `async fn NAME(backend: Backend)` once per store backend, as the
/// tests `NAME::redb` and `NAME::postgres`.
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                super::$name(crate::collector::Backend::Redb).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::collector::Backend::Postgres).await
            }
        }
    };
}
use on_both_stores;

/// What most collector tests start with: a store on one backend, a
/// temporary directory, a PKI and the collector's port; the collector
/// itself is started with the gateways and tables each test needs.
pub struct Fixture {
    pub pki: Pki,
    pub port: u16,
    /// `sha256:…` of the template plugin, the component most tests report.
    pub template: String,
    store: TestStore,
    tmp: tempfile::TempDir,
}

impl Fixture {
    pub fn new(backend: Backend) -> Self {
        let store = backend.start();
        let tmp = tempfile::tempdir().unwrap();
        Self {
            pki: Pki::new(&tmp.path().join("pki")),
            port: free_port(),
            template: file_digest(&depin_e2e::plugin("template_plugin")),
            store,
            tmp,
        }
    }

    /// The test's temporary directory.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A forger with a CA-issued client certificate named `name`.
    pub fn forger(&self, name: &str) -> (Forger, ClientCert) {
        Forger::new(&self.pki, self.port, name)
    }

    /// Writes the collector's configuration: the tests' schedule, policy
    /// and store, `gateways` (id, certificate sha256) and `extra` tables.
    pub fn config(&self, gateways: &[(String, String)], extra: &str) -> PathBuf {
        let extra = format!("{}{}{extra}", schedule_toml(), self.store.toml);
        collector_config(self.dir(), &self.pki, self.port, gateways, POLICY, &extra)
    }

    /// A forger `name` and a collector that knows it and approves the
    /// template plugin for kind `other`; `challenges` is the body of the
    /// collector's `[challenges]` table.
    pub fn template_forger(&self, name: &str, challenges: &str) -> (Forger, CollectorProcess) {
        let (forger, cert) = self.forger(name);
        let extra = format!(
            "{}[challenges]\n{challenges}",
            approve(&self.template, "other", None, &[])
        );
        let collector = self.collector(&[(forger.id(), cert.sha256)], &extra);
        (forger, collector)
    }

    /// Starts the collector [`Fixture::config`] describes.
    pub fn collector(&self, gateways: &[(String, String)], extra: &str) -> CollectorProcess {
        CollectorProcess::start(COLLECTOR_BIN, &self.config(gateways, extra))
    }
}

/// Writes `collector.toml` for replica `name` (its own data directory)
/// with `store` and `extra` tables.
fn replica_config(
    tmp: &Path,
    name: &str,
    pki: &Pki,
    port: u16,
    gateways: &[(String, String)],
    extra: &str,
) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let extra = format!("{}{extra}", schedule_toml());
    collector_config(&dir, pki, port, gateways, POLICY, &extra)
}
