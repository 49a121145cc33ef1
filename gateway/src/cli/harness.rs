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
use depin_protocol::record::{Source, UsageRecord};
use serde::Deserialize;

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

/// A script: steps run in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    #[serde(rename = "step")]
    steps: Vec<Step>,
}

/// One call; exactly one of `http`, `datagram`, `message`, `tick`,
/// `challenge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    http: Option<HttpCall>,
    datagram: Option<DatagramCall>,
    message: Option<MessageCall>,
    tick: Option<TickCall>,
    challenge: Option<ChallengeCall>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCall {
    #[serde(default = "get")]
    method: String,
    /// Below the plugin's route, starting with `/`; may carry `?query`.
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    body_hex: Option<String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatagramCall {
    payload: Option<String>,
    payload_hex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageCall {
    topic: String,
    payload: Option<String>,
    payload_hex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TickCall {
    /// The `now-ms` the plugin is given [default: the current time].
    now_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeCall {
    kind: String,
    #[serde(default = "default_nonce")]
    nonce_hex: String,
    #[serde(default)]
    params_hex: String,
}

fn default_nonce() -> String {
    "00".repeat(16)
}

/// What a step must come to; everything left out is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// HTTP status.
    status: Option<u16>,
    /// HTTP body, or the first reply datagram, as text.
    body: Option<String>,
    body_contains: Option<String>,
    /// The first reply datagram, as text.
    reply: Option<String>,
    /// How many datagrams came back.
    replies: Option<usize>,
    /// An MQTT message was accepted (`handle-message` returned ok), or a
    /// tick ran without failing.
    ok: Option<bool>,
    /// `prove` answered with a proof.
    proved: Option<bool>,
    /// `verify` accepted the proof.
    verified: Option<bool>,
    /// `prove`'s refusal contains this.
    error_contains: Option<String>,
    /// Plugin-claimed quantity per unit recorded during the step.
    #[serde(default)]
    usage: BTreeMap<String, u64>,
    /// kv values after the step, as text (`""`: the key is absent).
    #[serde(default)]
    kv: BTreeMap<String, String>,
}

/// What a step came to.
#[derive(Debug, Default, serde::Serialize)]
struct Outcome {
    call: String,
    status: Option<u16>,
    body: Option<String>,
    replies: Vec<String>,
    ok: Option<bool>,
    proof_hex: Option<String>,
    verified: Option<bool>,
    error: Option<String>,
    kv: BTreeMap<String, String>,
    usage: Vec<UsageRecord>,
    unmet: Vec<String>,
    /// Ledger sequence numbers committed before and after the step.
    #[serde(skip)]
    seqs: (u64, u64),
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

/// Compares what a step came to with what it expected.
fn check(step: &Step, o: &mut Outcome) {
    let e = &step.expect;
    let mut unmet = std::mem::take(&mut o.unmet);
    let mut want = |what: &str, ok: bool, got: String| {
        if !ok {
            unmet.push(format!("{what}; got {got}"));
        }
    };
    if let Some(s) = e.status {
        want(
            &format!("status {s}"),
            o.status == Some(s),
            format!("{:?}", o.status),
        );
    }
    let text = o.body.clone().or_else(|| o.replies.first().cloned());
    if let Some(b) = &e.body {
        want(
            &format!("body {b:?}"),
            text.as_ref() == Some(b),
            format!("{text:?}"),
        );
    }
    if let Some(b) = &e.body_contains {
        let ok = text.as_ref().is_some_and(|t| t.contains(b.as_str()));
        want(&format!("a body containing {b:?}"), ok, format!("{text:?}"));
    }
    if let Some(r) = &e.reply {
        let first = o.replies.first();
        want(
            &format!("reply {r:?}"),
            first == Some(r),
            format!("{first:?}"),
        );
    }
    if let Some(n) = e.replies {
        want(
            &format!("{n} replies"),
            o.replies.len() == n,
            o.replies.len().to_string(),
        );
    }
    if let Some(ok) = e.ok {
        want(
            &format!("ok = {ok}"),
            o.ok == Some(ok),
            format!("{:?} {:?}", o.ok, o.error),
        );
    }
    if let Some(p) = e.proved {
        let got = o.proof_hex.is_some();
        want(
            &format!("proved = {p}"),
            got == p,
            format!("{got} ({:?})", o.error),
        );
    }
    if let Some(v) = e.verified {
        want(
            &format!("verified = {v}"),
            o.verified == Some(v),
            format!("{:?}", o.verified),
        );
    }
    if let Some(m) = &e.error_contains {
        let ok = o.error.as_ref().is_some_and(|x| x.contains(m.as_str()));
        want(
            &format!("an error containing {m:?}"),
            ok,
            format!("{:?}", o.error),
        );
    }
    let mut claimed: BTreeMap<&str, u64> = BTreeMap::new();
    for r in o.usage.iter().filter(|r| r.source == Source::Plugin) {
        *claimed.entry(r.unit.as_str()).or_default() += r.quantity;
    }
    for (unit, q) in &e.usage {
        let got = claimed.get(unit.as_str()).copied().unwrap_or(0);
        want(&format!("{q} {unit} metered"), got == *q, got.to_string());
    }
    for (key, v) in &e.kv {
        let got = o.kv.get(key).cloned().unwrap_or_default();
        want(&format!("kv {key} = {v:?}"), &got == v, format!("{got:?}"));
    }
    o.unmet = unmet;
}

fn print_step(n: usize, o: &Outcome) {
    let verdict = if o.unmet.is_empty() { "ok" } else { "FAILED" };
    println!("step {n}: {} ... {verdict}", o.call);
    if let Some(s) = o.status {
        println!("  status:   {s}");
    }
    if let Some(b) = &o.body {
        println!("  body:     {}", shorten(b));
    }
    for r in &o.replies {
        println!("  reply:    {}", shorten(r));
    }
    if let Some(ok) = o.ok {
        println!("  ok:       {ok}");
    }
    if let Some(p) = &o.proof_hex {
        println!("  proof:    {p}");
    }
    if let Some(v) = o.verified {
        println!("  verify:   {v}");
    }
    if let Some(e) = &o.error {
        println!("  error:    {e}");
    }
    for r in &o.usage {
        let source = match r.source {
            Source::Host => "host",
            Source::Plugin => "plugin",
        };
        let evidence = r.evidence.as_ref().map(hex::encode).unwrap_or_default();
        println!(
            "  usage:    {source:<6} {:<16} {:>8} {evidence}",
            r.unit, r.quantity
        );
    }
    for (k, v) in &o.kv {
        println!("  kv:       {k} = {v:?}");
    }
    for u in &o.unmet {
        println!("  expected: {u}");
    }
}

fn shorten(s: &str) -> String {
    const SHOWN: usize = 200;
    match s.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{:?}… ({} bytes)", &s[..at], s.len()),
        None => format!("{s:?}"),
    }
}

fn bytes(text: &Option<String>, hex_text: &Option<String>) -> anyhow::Result<Vec<u8>> {
    match (text, hex_text) {
        (Some(_), Some(_)) => bail!("give the bytes as text or as hex, not both"),
        (Some(t), None) => Ok(t.as_bytes().to_vec()),
        (None, Some(h)) => hex::decode(h).context("not hex"),
        (None, None) => Ok(Vec::new()),
    }
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
