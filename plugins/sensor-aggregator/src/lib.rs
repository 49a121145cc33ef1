//! sensor-aggregator: device-signed SenML (RFC 8428) readings over HTTP and
//! MQTT, quality checks with counted rejection reasons, windowed aggregates
//! per device and name, and Merkle proofs of inclusion.
//!
//! The wire format for device makers is in this crate's README.

pub mod envelope;
pub mod ingest;
pub mod proof;
pub mod senml;
pub mod settings;
pub mod store;

use std::collections::BTreeMap;

use depin_plugin_sdk::{
    Challenge, HttpRequest, HttpResponse, Plugin, PluginInfo, Proof, ResourceKind, Usage,
    export_plugin, kv, log, meter_usage,
};
use depin_protocol::time::now_ms;
use depin_protocol::{Hash, merkle};
use serde::Serialize;

use envelope::SignedPack;
use ingest::{Aggregate, Outcome, Reason};
use settings::Settings;
use store::{Device, WindowRoot};

/// One accepted reading (subject: device id; evidence: the reading's leaf hash).
pub const UNIT_READINGS: &str = "readings";
/// One closed window (subject `window:<n>`; evidence: its Merkle root;
/// quantity: its readings).
pub const UNIT_WINDOW_ROOTS: &str = "window-roots";

/// The content type of SenML JSON packs.
pub const SENML_JSON: &str = "application/senml+json";

pub struct SensorAggregator;

impl Plugin for SensorAggregator {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "sensor-aggregator",
            env!("CARGO_PKG_VERSION"),
            ResourceKind::SensorAggregator,
        )
        .unit(UNIT_READINGS, "one accepted, device-signed sensor reading")
        .unit(
            UNIT_WINDOW_ROOTS,
            "one closed window; evidence is the Merkle root of its readings",
        )
    }

    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if let Some((k, _)) = config
            .iter()
            .find(|(k, _)| !settings::KEYS.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown config key `{k}`; known keys: {}",
                settings::KEYS.join(", ")
            ));
        }
        Settings::load().map(|_| ())
    }

    fn handle_http(req: HttpRequest) -> HttpResponse {
        match Settings::load() {
            Ok(s) => route(&req, &s),
            Err(e) => HttpResponse::json(500, &error(&e)),
        }
    }

    fn handle_message(topic: String, payload: Vec<u8>) -> Result<(), String> {
        let settings = Settings::load()?;
        let outcome = ingest::ingest(SignedPack::from_mqtt(&payload), now_ms() as i64, &settings)
            .map_err(|e| format!("store failure, retry later: {e:?}"))?;
        if let Some(reason) = outcome.rejected_pack {
            log::debug(&format!(
                "pack on `{topic}` rejected ({reason}): {}",
                outcome.detail.as_deref().unwrap_or("")
            ));
        }
        Ok(())
    }

    fn tick(now_ms: u64) {
        let Ok(settings) = Settings::load() else {
            return;
        };
        for counter in Reason::ALL
            .map(Reason::name)
            .into_iter()
            .chain([store::ACCEPTED])
        {
            if let Err(e) = store::fold_counter(counter) {
                log::warn(&format!("folding counter `{counter}` failed: {e:?}"));
            }
        }
        if let Err(e) = close_windows(now_ms as i64, &settings) {
            log::warn(&format!(
                "closing windows failed; retrying on the next tick: {e}"
            ));
        }
    }

    fn prove(c: Challenge) -> Result<Proof, String> {
        let settings = Settings::load()?;
        proof::prove(&c, |w| settings.window_start(w))
    }

    fn verify(c: Challenge, p: Proof) -> bool {
        proof::verify(&c, &p)
    }
}

export_plugin!(SensorAggregator);

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn error(message: &str) -> ErrorBody<'_> {
    ErrorBody { error: message }
}

fn route(req: &HttpRequest, s: &Settings) -> HttpResponse {
    let path = req.path.trim_end_matches('/');
    match (req.method.as_str(), path) {
        ("POST", "/packs") => post_pack(req, s),
        ("GET", "/aggregates") => get_aggregates(req, s),
        ("GET", "/stats") => get_stats(),
        ("GET", "/windows") => get_windows(s),
        ("POST", "/devices") => admin(req, s, provision),
        ("GET", p) if p.starts_with("/devices/") => {
            admin(req, s, |r| get_device(&r.path["/devices/".len()..]))
        }
        (_, "/packs" | "/aggregates" | "/stats" | "/windows" | "/devices") => HttpResponse::json(
            405,
            &error(&format!("{} is not allowed on {path}", req.method)),
        ),
        _ => HttpResponse::json(404, &error(&format!("no such resource: {}", req.path))),
    }
}

fn post_pack(req: &HttpRequest, s: &Settings) -> HttpResponse {
    let content_type = req.header("content-type").unwrap_or("");
    if !content_type.eq_ignore_ascii_case(SENML_JSON) {
        return HttpResponse::json(
            415,
            &error(&format!(
                "the body must be `{SENML_JSON}`, not `{content_type}`"
            )),
        );
    }
    let header = |name: &str| {
        req.header(name)
            .ok_or_else(|| format!("header `{name}` is missing"))
    };
    let pack = (|| {
        SignedPack::from_parts(
            header("x-device-id")?,
            header("x-sequence")?,
            header("x-signature")?,
            req.body.clone(),
        )
    })();
    match ingest::ingest(pack, now_ms() as i64, s) {
        Ok(outcome) => HttpResponse::json(status_of(&outcome), &outcome),
        Err(e) => HttpResponse::json(503, &error(&format!("store failure, retry later: {e:?}"))),
    }
}

fn status_of(o: &Outcome) -> u16 {
    let reason = Reason::ALL
        .iter()
        .find(|r| Some(r.name()) == o.rejected_pack);
    match reason {
        None => 200,
        Some(Reason::Malformed) => 400,
        Some(Reason::BadSignature) => 401,
        Some(Reason::UnknownDevice) => 403,
        Some(Reason::Replayed) => 409,
        Some(_) => 422,
    }
}

fn admin(
    req: &HttpRequest,
    s: &Settings,
    f: impl FnOnce(&HttpRequest) -> HttpResponse,
) -> HttpResponse {
    let Some(token) = &s.admin_token else {
        return HttpResponse::json(
            403,
            &error("the admin endpoints are off: set config `admin_token`"),
        );
    };
    if !req.has_bearer(token) {
        return HttpResponse::json(401, &error("missing or wrong bearer token"))
            .with_header("www-authenticate", "Bearer");
    }
    f(req)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Provision {
    id: String,
    #[serde(flatten)]
    device: Device,
}

fn provision(req: &HttpRequest) -> HttpResponse {
    let p: Provision = match serde_json::from_slice(&req.body) {
        Ok(p) => p,
        Err(e) => {
            return HttpResponse::json(
                400,
                &error(&format!(
                    "expected {{\"id\", \"public_key\", \"names\": {{name: {{\"min\", \"max\"}}}}}}: {e}"
                )),
            );
        }
    };
    let problem = envelope::check_device_id(&p.id)
        .and_then(|_| p.device.verifying_key().map(|_| ()))
        .and_then(|_| {
            if p.device.names.is_empty() {
                return Err("names must list at least one SenML name".into());
            }
            for (name, range) in &p.device.names {
                senml::check_name(name)?;
                if let (Some(lo), Some(hi)) = (range.min, range.max)
                    && lo > hi
                {
                    return Err(format!("names.{name}: min {lo} is above max {hi}"));
                }
            }
            Ok(())
        });
    if let Err(e) = problem {
        return HttpResponse::json(400, &error(&e));
    }
    match kv::set_json(&store::device_key(&p.id), &p.device) {
        Ok(()) => HttpResponse::json(201, &serde_json::json!({ "id": p.id })),
        Err(e) => HttpResponse::json(503, &error(&format!("store failure: {e:?}"))),
    }
}

fn get_device(id: &str) -> HttpResponse {
    match store::device(id) {
        Ok(Some(d)) => HttpResponse::json(200, &d),
        Ok(None) => HttpResponse::json(404, &error(&format!("device `{id}` is not provisioned"))),
        Err(e) => HttpResponse::json(503, &error(&format!("store failure: {e:?}"))),
    }
}

/// One window's aggregate as the API shows it.
#[derive(Serialize)]
struct AggregateView {
    device: String,
    name: String,
    window_start_ms: i64,
    window_end_ms: i64,
    count: u64,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    last: Option<senml::Value>,
    last_time_ms: i64,
}

fn get_aggregates(req: &HttpRequest, s: &Settings) -> HttpResponse {
    let param = |n: &str| {
        req.query_param(n)
            .map(percent_decode)
            .filter(|v| !v.is_empty())
    };
    let Some(device) = param("device") else {
        return HttpResponse::json(400, &error("query parameter `device` is required"));
    };
    let name = param("name");
    let bound = |n: &str, default: i64| match param(n) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| format!("`{n}` must be Unix milliseconds, not `{v}`")),
    };
    let (from, to) = match (bound("from", i64::MIN), bound("to", i64::MAX)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return HttpResponse::json(400, &error(&e)),
    };
    let prefix = match &name {
        Some(n) => format!("{}{n}|", store::aggregate_prefix(&device)),
        None => store::aggregate_prefix(&device),
    };
    let keys = match kv::list_keys(&prefix, 10_000) {
        Ok(k) => k,
        Err(e) => return HttpResponse::json(503, &error(&format!("store failure: {e:?}"))),
    };
    let mut out = Vec::new();
    for key in keys {
        let rest = &key[store::aggregate_prefix(&device).len()..];
        let Some((n, w)) = rest.rsplit_once('|') else {
            continue;
        };
        let Ok(window) = w.parse::<u64>() else {
            continue;
        };
        let start = s.window_start(window);
        let end = start + s.window_ms;
        if end <= from || start >= to {
            continue;
        }
        let agg: Aggregate = match kv::get_json(&key) {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(e) => return HttpResponse::json(503, &error(&format!("store failure: {e:?}"))),
        };
        out.push(AggregateView {
            device: device.clone(),
            name: n.to_string(),
            window_start_ms: start,
            window_end_ms: end,
            count: agg.count,
            min: agg.min,
            max: agg.max,
            mean: agg.mean(),
            last: agg.last.clone(),
            last_time_ms: agg.last_time_ms,
        });
    }
    HttpResponse::json(200, &out)
}

fn get_stats() -> HttpResponse {
    let mut rejected = BTreeMap::new();
    for r in Reason::ALL {
        match store::counter(r.name()) {
            Ok(n) => {
                rejected.insert(r.name(), n);
            }
            Err(e) => return HttpResponse::json(503, &error(&format!("store failure: {e:?}"))),
        }
    }
    match store::counter(store::ACCEPTED) {
        Ok(accepted) => HttpResponse::json(
            200,
            &serde_json::json!({ "accepted": accepted, "rejected": rejected }),
        ),
        Err(e) => HttpResponse::json(503, &error(&format!("store failure: {e:?}"))),
    }
}

fn get_windows(_s: &Settings) -> HttpResponse {
    let roots = kv::list_keys("root|", 10_000).and_then(|keys| {
        keys.iter()
            .filter_map(|k| kv::get_json::<WindowRoot>(k).transpose())
            .collect::<Result<Vec<_>, _>>()
    });
    match roots {
        Ok(r) => HttpResponse::json(200, &r),
        Err(e) => HttpResponse::json(503, &error(&format!("store failure: {e:?}"))),
    }
}

/// Builds the Merkle root of every window that ended at least
/// `close_grace_ms` ago and commits it as a `window-roots` record.
fn close_windows(now_ms: i64, s: &Settings) -> Result<(), String> {
    let kv_err = |e| format!("{e:?}");
    for key in kv::list_keys("open|", 1000).map_err(kv_err)? {
        let Ok(window) = key["open|".len()..].parse::<u64>() else {
            continue;
        };
        if s.window_start(window) + s.window_ms + s.close_grace_ms > now_ms {
            continue;
        }
        let leaves: Vec<Hash> = store::window_leaves(window)
            .map_err(kv_err)?
            .into_iter()
            .map(|(_, e)| e.leaf)
            .collect();
        let leaves_count = leaves.len() as u64;
        let root = merkle::root(leaves);
        let committed = WindowRoot {
            window,
            root: hex::encode(root),
            leaves: leaves_count,
        };
        kv::set_json(&store::root_key(window), &committed).map_err(kv_err)?;
        kv::delete(&key).map_err(kv_err)?;
        meter_usage(
            Usage::new(UNIT_WINDOW_ROOTS, leaves_count)
                .subject(format!("window:{window}"))
                .evidence(root.to_vec()),
        )?;
        log::info(&format!(
            "window {window} closed: {} readings, root {}",
            leaves_count, committed.root
        ));
    }
    Ok(())
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
