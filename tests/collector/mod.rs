//! The collector end to end, every test against both store backends
//! (`NAME::redb`, `NAME::postgres` on a real PostgreSQL cluster):
//! - `cheats`: validly signed reports (a real device key, a real client
//!   certificate over mutual TLS) that cheat in each way the collector
//!   must catch, each with its documented outcome;
//! - `honest`: the honest control — a real gateway with real plugins
//!   answering real challenges — that gets its full reward with every line
//!   `rated`, and the server's bounds;
//! - `replicas`: several collector replicas on one PostgreSQL database,
//!   the gateway registry and its CLI;
//! - `signers`: reports whose components name their signer (v3) and
//!   reports of the previous version.

mod cheats;
mod honest;
mod replicas;
mod signers;

use std::path::Path;
use std::time::Duration;

use depin_e2e::forger::Forger;
use depin_e2e::postgres::Postgres;
use depin_e2e::upstream::{CollectorProcess, Pki, collector_config, schedule_toml};
use depin_protocol::Hash;
use depin_protocol::proofs::{Answer, ChallengeSpec};
use depin_protocol::time::now_ms;
use serde_json::Value;

use crate::upstream::get_json;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-under-test");

/// Epochs of the collector under test, ms, and how long after its end an
/// epoch's report is accepted.
const LENGTH_MS: u64 = 1000;
const GRACE_MS: u64 = 100;

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

/// The epoch running now, as the collector counts them.
fn current_epoch() -> u64 {
    now_ms() / LENGTH_MS
}

/// Waits until `epoch`'s report may be accepted (ended + grace).
async fn until_acceptable(epoch: u64) {
    let from = (epoch + 1) * LENGTH_MS + GRACE_MS + 20;
    let now = now_ms();
    if now < from {
        tokio::time::sleep(Duration::from_millis(from - now)).await;
    }
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

fn start_collector(
    store: &TestStore,
    dir: &Path,
    pki: &Pki,
    port: u16,
    gateways: &[(String, String)],
    extra: &str,
) -> CollectorProcess {
    let extra = format!(
        "{}{}{extra}",
        schedule_toml(LENGTH_MS, GRACE_MS),
        store.toml
    );
    let config = collector_config(dir, pki, port, gateways, POLICY, &extra);
    CollectorProcess::start(COLLECTOR_BIN, &config)
}
