//! `depin-gateway plugin test`: runs a component in a real gateway,
//! in-process, and drives it with a script.
//!
//! The gateway is the one `depin-gateway run` starts ([`RunningGateway`]),
//! with a fresh data directory and device key, the HTTP ingress on a free
//! loopback port, and the script's plugin configuration. HTTP requests go
//! over TCP to the HTTP ingress and datagrams over UDP to the plugin's UDP
//! ingress; MQTT messages are handed to the plugin through the call path
//! the MQTT ingress uses (no broker is needed, so the broker connection
//! itself is not exercised); ticks are called and committed as the timer
//! ingress does; challenges are answered by the gateway's
//! challenge prover and the proof is checked with the plugin's `verify`,
//! as the collector does. Steps run one at a time; each step's usage
//! records are the ledger records committed while it ran.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use depin_protocol::proofs::ChallengeSpec;

mod script;

use script::{Outcome, Script, Step, bytes, check, print_step};

use super::async_runtime;
use crate::call::{self, HostMeasurements};
use crate::config::GatewayConfig;
use crate::gateway::RunningGateway;
use crate::identity::DeviceKey;
use crate::ledger::{Ledger, LedgerReader};
use crate::proofs::ToWit;
use crate::runtime::contract::Proof;

/// How long a step waits for the gateway: a datagram's commit and reply.
const STEP_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for further reply datagrams after the first.
const MORE_REPLIES: Duration = Duration::from_millis(100);

/// What `plugin test` was asked for.
#[derive(Debug, clap::Args)]
pub(super) struct TestPlugin {
    /// The component file.
    file: PathBuf,
    /// The plugin's configuration: a `[[plugin]]` table as in gateway.toml
    /// (`component` may be left out: FILE is used). Relative paths are
    /// relative to this file.
    #[arg(long)]
    config: PathBuf,
    /// The calls to make and what to expect (`[[step]]` tables).
    #[arg(long)]
    script: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

impl TestPlugin {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let script: Script = read_toml(&self.script)?;
        for (i, s) in script.steps.iter().enumerate() {
            let calls = [
                s.http.is_some(),
                s.datagram.is_some(),
                s.message.is_some(),
                s.tick.is_some(),
                s.challenge.is_some(),
            ];
            if calls.iter().filter(|c| **c).count() != 1 {
                bail!(
                    "{}: step {}: give exactly one of http, datagram, message, tick, challenge",
                    self.script.display(),
                    i + 1
                );
            }
        }
        let scratch = tempfile_dir()?;
        let result = self.run_in(&scratch, &script);
        let _ = std::fs::remove_dir_all(&scratch);
        let outcomes = result?;
        let failed = outcomes.iter().filter(|o| !o.unmet.is_empty()).count();
        if self.json {
            let v = serde_json::json!({ "steps": outcomes, "failed": failed });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            for (i, o) in outcomes.iter().enumerate() {
                print_step(i + 1, o);
            }
            if failed == 0 {
                println!("result: ok. {} steps as expected", outcomes.len());
            } else {
                println!(
                    "result: FAILED. {failed} of {} steps did not meet their expectations",
                    outcomes.len()
                );
            }
        }
        Ok(super::exit(failed == 0))
    }

    fn run_in(&self, scratch: &Path, script: &Script) -> anyhow::Result<Vec<Outcome>> {
        let config = self.gateway_config(scratch)?;
        DeviceKey::generate().write(&config.key_path(), false)?;
        let plugin = config.plugins[0].clone();
        let mut outcomes = async_runtime()?.block_on(async {
            let gateway = RunningGateway::start(&config).await?;
            let ledger = gateway.prover().ledger.clone();
            let mut outcomes = Vec::new();
            for step in &script.steps {
                let before = ledger.head()?.seq;
                let mut o = match run_step(&gateway, &plugin, step, &ledger, before).await {
                    Ok(o) => o,
                    Err(e) => Outcome {
                        call: "?".into(),
                        unmet: vec![format!("{e:#}")],
                        ..Outcome::default()
                    },
                };
                o.seqs = (before, ledger.head()?.seq);
                for key in step.expect.kv.keys() {
                    let v = ledger.kv_get(&plugin.name, key)?;
                    let text = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                    o.kv.insert(key.clone(), text.unwrap_or_default());
                }
                outcomes.push(o);
            }
            gateway.shutdown().await;
            anyhow::Ok(outcomes)
        })?;
        let mut records = BTreeMap::new();
        LedgerReader::open(&config.data_dir)?.for_each(|seq, r| {
            if let Ok((_, _, record)) = r {
                records.insert(seq, record);
            }
            true
        })?;
        for (o, step) in outcomes.iter_mut().zip(&script.steps) {
            o.usage = records
                .range(o.seqs.0 + 1..o.seqs.1.max(o.seqs.0) + 1)
                .map(|(_, r)| r.clone())
                .collect();
            check(step, o);
        }
        Ok(outcomes)
    }

    /// The snippet's plugins in a gateway of their own in `scratch`.
    fn gateway_config(&self, scratch: &Path) -> anyhow::Result<GatewayConfig> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("cannot read {}", self.config.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}", self.config.display()))?;
        let component = std::path::absolute(&self.file)?;
        let Some(toml::Value::Array(plugins)) = table.get_mut("plugin") else {
            bail!("{}: no [[plugin]] table", self.config.display());
        };
        if plugins.len() != 1 {
            bail!(
                "{}: give exactly one [[plugin]] table (the one under test)",
                self.config.display()
            );
        }
        if let Some(p) = plugins[0].as_table_mut() {
            p.insert("component".into(), component.display().to_string().into());
        }
        table.insert("listen".into(), "127.0.0.1:0".into());
        table.insert("data_dir".into(), scratch.display().to_string().into());
        let text = toml::to_string(&table)?;
        Ok(GatewayConfig::parse(&self.config, &text)?)
    }
}

async fn run_step(
    gateway: &RunningGateway,
    plugin: &crate::config::PluginConfig,
    step: &Step,
    ledger: &Arc<Ledger>,
    before: u64,
) -> anyhow::Result<Outcome> {
    if let Some(h) = &step.http {
        let route = plugin.normalized_route().unwrap_or_default();
        let path = format!("{}{}", route.trim_end_matches('/'), h.path);
        let body = bytes(&h.body, &h.body_hex)?;
        let (status, body) = http(gateway.http_addr, &h.method, &path, &h.headers, &body)?;
        return Ok(Outcome {
            call: format!("http {} {path}", h.method),
            status: Some(status),
            body: Some(String::from_utf8_lossy(&body).into_owned()),
            ..Outcome::default()
        });
    }
    if let Some(d) = &step.datagram {
        let Some(to) = gateway.udp_addr(&plugin.name) else {
            bail!("datagram step, but the plugin has no [plugin.udp] ingress");
        };
        let payload = bytes(&d.payload, &d.payload_hex)?;
        let replies = datagram(
            to,
            &payload,
            step.expect.reply.is_some() || step.expect.replies.is_some_and(|n| n > 0),
        )
        .await?;
        wait_for_commit(ledger, before).await;
        return Ok(Outcome {
            call: format!("datagram to {to}"),
            replies: replies
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect(),
            ..Outcome::default()
        });
    }
    if let Some(m) = &step.message {
        let Some(loaded) = gateway.table().get(&plugin.name) else {
            bail!("the plugin is not loaded");
        };
        let payload = bytes(&m.payload, &m.payload_hex)?;
        let id: Arc<str> = format!("test-message-{before}").into();
        let bytes_in = (m.topic.len() + payload.len()) as u64;
        let outcome = loaded.handle_message(&id, m.topic.clone(), payload).await;
        let measured = HostMeasurements::of_call(outcome.wall, outcome.fuel).bytes_in(bytes_in);
        call::commit(ledger, loaded.name(), &id, measured, outcome.effects).await?;
        let (ok, error) = match outcome.result {
            Ok(Ok(())) => (true, None),
            Ok(Err(e)) => (false, Some(e)),
            Err(e) => (false, Some(e.to_string())),
        };
        return Ok(Outcome {
            call: format!("message on {}", m.topic),
            ok: Some(ok),
            error,
            ..Outcome::default()
        });
    }
    if let Some(t) = &step.tick {
        let Some(loaded) = gateway.table().get(&plugin.name) else {
            bail!("the plugin is not loaded");
        };
        // As the timer ingress calls and commits a tick.
        let id: Arc<str> = "tick".into();
        let now_ms = t.now_ms.unwrap_or_else(depin_protocol::time::now_ms);
        let outcome = loaded.tick(&id, now_ms).await;
        let measured = HostMeasurements::of_call(outcome.wall, outcome.fuel);
        call::commit(ledger, loaded.name(), &id, measured, outcome.effects).await?;
        return Ok(Outcome {
            call: format!("tick at {now_ms}"),
            ok: Some(outcome.result.is_ok()),
            error: outcome.result.err().map(|e| e.to_string()),
            ..Outcome::default()
        });
    }
    let c = step
        .challenge
        .as_ref()
        .expect("checked when the script was read");
    let spec = ChallengeSpec {
        id: format!("{before:016x}"),
        family: "possession".into(),
        epoch: 0,
        index: 0,
        plugin: plugin.name.clone(),
        kind: c.kind.clone(),
        nonce: c.nonce_hex.clone(),
        params: c.params_hex.clone(),
        deadline_ms: 0,
    };
    let mut o = Outcome {
        call: format!("challenge {}", c.kind),
        ..Outcome::default()
    };
    match gateway.prover().answer(&spec).await {
        Ok(payload) => {
            let Some(loaded) = gateway.table().get(&plugin.name) else {
                bail!("the plugin is not loaded");
            };
            let proof = Proof {
                challenge_id: spec.id.clone(),
                payload: payload.clone(),
            };
            let verified = loaded
                .verify(&"test-verify".into(), spec.to_wit(), proof)
                .await;
            o.proof_hex = Some(hex::encode(payload));
            o.verified = Some(verified.result.unwrap_or(false));
        }
        Err(e) => o.error = Some(e),
    }
    Ok(o)
}

/// One HTTP/1.1 request on its own connection; the status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(STEP_WAIT * 6))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// Sends `payload` to `to` from a fresh socket; the datagrams that come
/// back (waits for one only when `expect_reply`).
async fn datagram(
    to: SocketAddr,
    payload: &[u8],
    expect_reply: bool,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(payload, to).await?;
    let mut replies = Vec::new();
    let mut buf = vec![0; 65536];
    let mut wait = if expect_reply {
        STEP_WAIT
    } else {
        MORE_REPLIES
    };
    while let Ok(Ok((n, _))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        replies.push(buf[..n].to_vec());
        wait = MORE_REPLIES;
    }
    Ok(replies)
}

/// Waits until the ledger has records after `before` (every datagram call
/// commits at least the host's measurements).
async fn wait_for_commit(ledger: &Ledger, before: u64) {
    let started = Instant::now();
    while started.elapsed() < STEP_WAIT {
        if ledger.head().is_ok_and(|h| h.seq > before) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "depin-plugin-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
