//! The script `plugin test` runs: its steps and expectations as read
//! from TOML, what each step came to, the check of one against the other,
//! and the report of a step.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use depin_protocol::record::{Source, UsageRecord};
use serde::Deserialize;

/// A script: steps run in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Script {
    #[serde(rename = "step")]
    pub(super) steps: Vec<Step>,
}

/// One call; exactly one of `http`, `datagram`, `message`, `tick`,
/// `challenge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Step {
    pub(super) http: Option<HttpCall>,
    pub(super) datagram: Option<DatagramCall>,
    pub(super) message: Option<MessageCall>,
    pub(super) tick: Option<TickCall>,
    pub(super) challenge: Option<ChallengeCall>,
    #[serde(default)]
    pub(super) expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpCall {
    #[serde(default = "get")]
    pub(super) method: String,
    /// Below the plugin's route, starting with `/`; may carry `?query`.
    pub(super) path: String,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) body: Option<String>,
    pub(super) body_hex: Option<String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DatagramCall {
    pub(super) payload: Option<String>,
    pub(super) payload_hex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageCall {
    pub(super) topic: String,
    pub(super) payload: Option<String>,
    pub(super) payload_hex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TickCall {
    /// The `now-ms` the plugin is given [default: the current time].
    pub(super) now_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChallengeCall {
    pub(super) kind: String,
    #[serde(default = "default_nonce")]
    pub(super) nonce_hex: String,
    #[serde(default)]
    pub(super) params_hex: String,
}

fn default_nonce() -> String {
    "00".repeat(16)
}

/// What a step must come to; everything left out is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Expect {
    /// HTTP status.
    pub(super) status: Option<u16>,
    /// HTTP body, or the first reply datagram, as text.
    pub(super) body: Option<String>,
    pub(super) body_contains: Option<String>,
    /// The first reply datagram, as text.
    pub(super) reply: Option<String>,
    /// How many datagrams came back.
    pub(super) replies: Option<usize>,
    /// An MQTT message was accepted (`handle-message` returned ok), or a
    /// tick ran without failing.
    pub(super) ok: Option<bool>,
    /// `prove` answered with a proof.
    pub(super) proved: Option<bool>,
    /// `verify` accepted the proof.
    pub(super) verified: Option<bool>,
    /// `prove`'s refusal contains this.
    pub(super) error_contains: Option<String>,
    /// Plugin-claimed quantity per unit recorded during the step.
    #[serde(default)]
    pub(super) usage: BTreeMap<String, u64>,
    /// kv values after the step, as text (`""`: the key is absent).
    #[serde(default)]
    pub(super) kv: BTreeMap<String, String>,
}

/// What a step came to.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Outcome {
    pub(super) call: String,
    pub(super) status: Option<u16>,
    pub(super) body: Option<String>,
    pub(super) replies: Vec<String>,
    pub(super) ok: Option<bool>,
    pub(super) proof_hex: Option<String>,
    pub(super) verified: Option<bool>,
    pub(super) error: Option<String>,
    pub(super) kv: BTreeMap<String, String>,
    pub(super) usage: Vec<UsageRecord>,
    pub(super) unmet: Vec<String>,
    /// Ledger sequence numbers committed before and after the step.
    #[serde(skip)]
    pub(super) seqs: (u64, u64),
}

/// Compares what a step came to with what it expected.
pub(super) fn check(step: &Step, o: &mut Outcome) {
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

pub(super) fn print_step(n: usize, o: &Outcome) {
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

pub(super) fn bytes(text: &Option<String>, hex_text: &Option<String>) -> anyhow::Result<Vec<u8>> {
    match (text, hex_text) {
        (Some(_), Some(_)) => bail!("give the bytes as text or as hex, not both"),
        (Some(t), None) => Ok(t.as_bytes().to_vec()),
        (None, Some(h)) => hex::decode(h).context("not hex"),
        (None, None) => Ok(Vec::new()),
    }
}
