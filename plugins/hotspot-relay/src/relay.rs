//! The relay itself: what happens to each datagram, and the housekeeping
//! `tick` does. State lives in kv:
//!
//! | key | value |
//! |---|---|
//! | `fwd/<eui>` | the forwarder's address for downlinks (from its PULL_DATA) |
//! | `seen/<sha256>` | the clock when a PHY payload was first metered |
//! | `pkt/<sha256>` | what a proof of that packet reveals (see `proof`) |
//! | `beacon/<eui>/<token>` | a beacon challenge's PULL_RESP and, once it came, its TX_ACK (see `beacon`) |
//! | `exp/<time>/<sha256>`, `pexp/<time>/<sha256>`, `bexp/<time>/<eui>/<token>` | expiry indexes of `seen/`, `pkt/` and `beacon/`, oldest first |
//! | `clock` | Unix ms of the last tick |
//! | `drop/<reason>/<source>` | datagrams dropped for `reason` from `source` |
//!
//! Drop counters are kept per source so that the calls that update one
//! counter are the calls of one source, which the host runs in order.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use depin_plugin_sdk::{Datagram, Usage, config, kv, log, meter_usage, outbound_udp};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::airtime::{self, LoraParams};
use crate::beacon;
use crate::gwmp::{self, Kind, Packet};
use crate::units;

pub use crate::expiry::{index_key, tick};

/// The default dedupe window.
pub const DEFAULT_DEDUPE_WINDOW_MS: u64 = 10_000;
/// How long a relayed packet can be proven.
pub const PROOF_RETENTION_MS: u64 = 24 * 3_600_000;
/// Most keys one tick examines per prefix.
pub(crate) const TICK_SCAN: u32 = 10_000;
/// Expiry index of `seen/`: `exp/<time>/<sha256>`.
pub(crate) const SEEN_INDEX: &str = "exp/";
/// Expiry index of `pkt/`: `pexp/<time>/<sha256>`.
pub(crate) const PROOF_INDEX: &str = "pexp/";

/// Base64 as packet forwarders write it: padding optional.
pub const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The plugin's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The network server, `host:port`, as allow-listed.
    pub upstream: String,
    pub dedupe_window_ms: u64,
}

impl Settings {
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, String> {
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let upstream = get("upstream")
            .ok_or("config `upstream` is required: the network server's host:port")?
            .clone();
        if upstream
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!(
                "config `upstream` = `{upstream}`: must be host:port"
            ));
        }
        let dedupe_window_ms = match get("dedupe_window_ms") {
            None => DEFAULT_DEDUPE_WINDOW_MS,
            Some(v) => v
                .parse()
                .map_err(|e| format!("config `dedupe_window_ms` = `{v}`: {e}"))?,
        };
        Ok(Settings {
            upstream,
            dedupe_window_ms,
        })
    }

    pub(crate) fn load() -> Result<Self, String> {
        Self::from_pairs(&config::all())
    }
}

/// Handles one datagram; returns what goes back out of the ingress socket.
pub fn handle(d: Datagram) -> Vec<Datagram> {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            log::error(&e);
            return Vec::new();
        }
    };
    let session = outbound_udp::arrived_on();
    let source = match &session {
        Some(s) => format!("upstream-{s}"),
        None => d.peer.clone(),
    };
    let packet = match gwmp::parse(&d.payload) {
        Ok(p) => p,
        Err(m) => {
            count_drop(m.reason(), &source);
            return Vec::new();
        }
    };
    let outcome = match &session {
        Some(eui) => from_upstream(eui, &packet, &d),
        None => from_forwarder(&settings, &packet, &d),
    };
    match outcome {
        Ok(out) => out,
        Err(reason) => {
            count_drop(reason, &source);
            Vec::new()
        }
    }
}

/// A datagram from a packet forwarder.
fn from_forwarder(
    settings: &Settings,
    p: &Packet<'_>,
    d: &Datagram,
) -> Result<Vec<Datagram>, &'static str> {
    let eui = hex::encode(p.eui.unwrap_or_default());
    match p.kind {
        Kind::PushData => {
            let body = json_object(p.body)?;
            let uplinks = parse_push_data(&body)?;
            let clock = clock();
            for up in &uplinks {
                meter_uplink(settings, &eui, up, clock);
            }
            relay_upstream(settings, &eui, &d.payload);
            Ok(vec![reply(d, gwmp::ack(p.token, Kind::PushAck))])
        }
        Kind::PullData => {
            let key = format!("fwd/{eui}");
            let known = kv::get(&key).ok().flatten();
            if known.as_deref() != Some(d.peer.as_bytes())
                && let Err(e) = kv::set(&key, d.peer.as_bytes())
            {
                log::warn(&format!("cannot remember forwarder {eui}: {e:?}"));
            }
            relay_upstream(settings, &eui, &d.payload);
            Ok(vec![reply(d, gwmp::ack(p.token, Kind::PullAck))])
        }
        Kind::TxAck => {
            // The body is optional; some forwarders end it with NUL bytes.
            let body = trim_body(p.body);
            if !body.is_empty() {
                json_object(body)?;
            }
            // The acknowledgement of a beacon the relay sent itself.
            if !beacon::take_ack(&eui, p.token, &d.payload) {
                relay_upstream(settings, &eui, &d.payload);
            }
            Ok(Vec::new())
        }
        Kind::PushAck | Kind::PullResp | Kind::PullAck => Err("unexpected-type"),
    }
}

/// A datagram from the network server, on the session of forwarder `eui`.
fn from_upstream(eui: &str, p: &Packet<'_>, d: &Datagram) -> Result<Vec<Datagram>, &'static str> {
    match p.kind {
        Kind::PullResp => {
            let body = json_object(trim_body(p.body))?;
            let data = body
                .get("txpk")
                .and_then(Value::as_object)
                .and_then(|t| t.get("data"))
                .and_then(Value::as_str)
                .and_then(|s| BASE64.decode(s).ok())
                .ok_or("txpk")?;
            let forwarder = kv::get(&format!("fwd/{eui}"))
                .ok()
                .flatten()
                .and_then(|a| String::from_utf8(a).ok())
                .ok_or("unknown-forwarder")?;
            let usage = Usage::new(units::DOWNLINKS, 1)
                .subject(eui)
                .evidence(Sha256::digest(&data).to_vec());
            if let Err(e) = meter_usage(usage) {
                log::warn(&format!("cannot meter a downlink: {e}"));
            }
            Ok(vec![Datagram {
                peer: forwarder,
                payload: d.payload.clone(),
            }])
        }
        // The relay acknowledged its forwarders itself.
        Kind::PushAck | Kind::PullAck => Ok(Vec::new()),
        Kind::PushData | Kind::PullData | Kind::TxAck => Err("unexpected-type"),
    }
}

/// One LoRa (or FSK) packet of a PUSH_DATA, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    /// sha256 of the PHY payload.
    pub hash: [u8; 32],
    pub size: u64,
    pub airtime_us: u64,
    /// False when the concentrator reported a CRC failure: relayed, not metered.
    pub crc_ok: bool,
    /// The radio metadata a proof reveals.
    pub meta: Map<String, Value>,
}

/// Checks every `rxpk` and the `stat` of a PUSH_DATA body. One bad entry
/// rejects the datagram.
pub fn parse_push_data(body: &Map<String, Value>) -> Result<Vec<Uplink>, &'static str> {
    if let Some(stat) = body.get("stat")
        && !stat.is_object()
    {
        return Err("stat");
    }
    let Some(rxpk) = body.get("rxpk") else {
        return Ok(Vec::new());
    };
    let list = rxpk.as_array().ok_or("rxpk")?;
    list.iter()
        .map(|r| parse_rxpk(r.as_object().ok_or("rxpk")?).ok_or("rxpk"))
        .collect()
}

fn parse_rxpk(r: &Map<String, Value>) -> Option<Uplink> {
    let data = BASE64.decode(r.get("data")?.as_str()?).ok()?;
    let size = data.len() as u64;
    if let Some(declared) = r.get("size")
        && declared.as_u64() != Some(size)
    {
        return None;
    }
    let airtime_us = match r.get("modu").and_then(Value::as_str).unwrap_or("LORA") {
        "LORA" => {
            let (sf, bw) = airtime::parse_datr(r.get("datr")?.as_str()?)?;
            let cr = airtime::parse_codr(r.get("codr")?.as_str()?)?;
            airtime::lora_us(LoraParams::uplink(sf, bw, cr), size as u32)?
        }
        "FSK" => airtime::fsk_us(u32::try_from(r.get("datr")?.as_u64()?).ok()?, size as u32)?,
        _ => return None,
    };
    let crc_ok = r.get("stat").and_then(Value::as_i64) != Some(-1);
    let mut meta = Map::new();
    for k in ["time", "tmst", "freq", "datr", "codr", "rssi", "lsnr"] {
        if let Some(v) = r.get(k) {
            meta.insert(k.into(), v.clone());
        }
    }
    // Version-2 forwarders report signal per antenna, in `rsig`.
    if let Some(first) = r
        .get("rsig")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        for (from, to) in [("rssic", "rssi"), ("lsnr", "lsnr")] {
            if let Some(v) = first.get(from)
                && !meta.contains_key(to)
            {
                meta.insert(to.into(), v.clone());
            }
        }
    }
    Some(Uplink {
        hash: Sha256::digest(&data).into(),
        size,
        airtime_us,
        crc_ok,
        meta,
    })
}

/// Meters a packet unless it was already metered within the window, and
/// keeps what a proof of it needs.
fn meter_uplink(settings: &Settings, eui: &str, up: &Uplink, clock: u64) {
    if !up.crc_ok {
        return;
    }
    let hash = hex::encode(up.hash);
    let seen_key = format!("seen/{hash}");
    // Stamp 0: seen before the first tick ever; the next tick restamps it.
    if let Some(first) = read_u64(&seen_key)
        && (first == 0 || clock.saturating_sub(first) <= settings.dedupe_window_ms)
    {
        return;
    }
    let with = |unit: &str, q: u64| Usage::new(unit, q).subject(eui).evidence(up.hash.to_vec());
    for usage in [
        with(units::UPLINK_PACKETS, 1),
        with(units::PAYLOAD_BYTES, up.size),
        with(units::AIRTIME_US, up.airtime_us),
    ] {
        if let Err(e) = meter_usage(usage) {
            log::warn(&format!("cannot meter an uplink: {e}"));
        }
    }
    let record = json!({ "eui": eui, "meta": up.meta, "at": clock });
    let writes = kv::set(&seen_key, clock.to_string().as_bytes())
        .and_then(|()| kv::set(&index_key(SEEN_INDEX, clock, &hash), b""))
        .and_then(|()| kv::set_json(&format!("pkt/{hash}"), &record))
        .and_then(|()| kv::set(&index_key(PROOF_INDEX, clock, &hash), b""));
    if let Err(e) = writes {
        log::warn(&format!("cannot record packet {hash}: {e:?}"));
    }
}

fn relay_upstream(settings: &Settings, eui: &str, payload: &[u8]) {
    if let Err(e) = outbound_udp::send(&settings.upstream, payload, eui) {
        log::warn(&format!("cannot relay to {}: {e:?}", settings.upstream));
    }
}

fn reply(d: &Datagram, payload: Vec<u8>) -> Datagram {
    Datagram {
        peer: d.peer.clone(),
        payload,
    }
}

/// `body` without the NUL bytes and white space some forwarders end it with.
pub fn trim_body(body: &[u8]) -> &[u8] {
    let end = body
        .iter()
        .rposition(|b| !matches!(b, 0 | b' ' | b'\n' | b'\r' | b'\t'))
        .map_or(0, |i| i + 1);
    &body[..end]
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, &'static str> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err("json"),
    }
}

pub(crate) fn read_u64(key: &str) -> Option<u64> {
    let bytes = kv::get(key).ok().flatten()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

/// Unix ms of the last tick (0 before the first).
pub fn clock() -> u64 {
    read_u64("clock").unwrap_or(0)
}

fn count_drop(reason: &str, source: &str) {
    let key = format!("drop/{reason}/{source}");
    let n = read_u64(&key).unwrap_or(0) + 1;
    if let Err(e) = kv::set(&key, n.to_string().as_bytes()) {
        log::warn(&format!("cannot count a dropped datagram: {e:?}"));
    }
    log::debug(&format!("dropped a datagram from {source}: {reason}"));
}

/// Drop counts by reason, the known forwarders, and the beacons kept
/// (waiting for their TX_ACK, or acknowledged), for `GET /status`.
pub fn status() -> Value {
    let mut dropped = Map::new();
    for key in kv::list_keys("drop/", TICK_SCAN).unwrap_or_default() {
        let reason = key["drop/".len()..].split('/').next().unwrap_or("");
        let n = read_u64(&key).unwrap_or(0);
        let total = dropped.entry(reason.to_string()).or_insert(json!(0));
        *total = json!(total.as_u64().unwrap_or(0) + n);
    }
    let mut forwarders = Map::new();
    for key in kv::list_keys("fwd/", TICK_SCAN).unwrap_or_default() {
        if let Some(addr) = kv::get(&key).ok().flatten() {
            forwarders.insert(
                key["fwd/".len()..].to_string(),
                Value::String(String::from_utf8_lossy(&addr).into_owned()),
            );
        }
    }
    let (mut pending, mut acknowledged) = (0u64, 0u64);
    for key in kv::list_keys("beacon/", TICK_SCAN).unwrap_or_default() {
        match kv::get_json::<Value>(&key).ok().flatten() {
            Some(state) if state["tx_ack"].is_string() => acknowledged += 1,
            Some(_) => pending += 1,
            None => {}
        }
    }
    json!({
        "dropped": dropped,
        "forwarders": forwarders,
        "beacons": { "pending": pending, "acknowledged": acknowledged },
    })
}

#[cfg(test)]
mod tests {
    use depin_plugin_sdk::testing::TestHost;

    use super::*;

    const UPSTREAM: &str = "10.0.0.1:1700";
    const FORWARDER: &str = "192.0.2.7:40000";

    fn host() -> TestHost {
        let host = TestHost::install(&[("upstream", UPSTREAM), ("dedupe_window_ms", "5000")]);
        host.allow_udp(&[UPSTREAM]);
        host
    }

    fn push(phy: &[u8]) -> Datagram {
        let body = json!({ "rxpk": [{
            "data": BASE64.encode(phy), "size": phy.len(), "datr": "SF7BW125",
            "codr": "4/5", "freq": 868.1, "rssi": -60, "lsnr": 9.0,
        }]});
        let mut payload = vec![2, 0, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        payload.extend_from_slice(body.to_string().as_bytes());
        Datagram {
            peer: FORWARDER.into(),
            payload,
        }
    }

    #[test]
    fn a_push_is_acked_relayed_on_the_forwarders_session_and_metered() {
        let host = host();
        let out = handle(push(b"\x40abc"));
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].peer.as_str(), out[0].payload.as_slice()),
            (FORWARDER, &[2, 0, 9, 1][..])
        );
        let sent = host.take_udp_sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].0.as_str(), sent[0].2.as_str()),
            (UPSTREAM, "0102030405060708")
        );
        assert_eq!(sent[0].1, push(b"\x40abc").payload, "relayed unchanged");
        assert_eq!(host.total(units::UPLINK_PACKETS), 1);
        assert_eq!(host.total(units::PAYLOAD_BYTES), 4);
    }

    #[test]
    fn packets_seen_before_the_first_tick_are_not_forgotten_by_it() {
        let host = host();
        handle(push(b"\x40early"));
        tick(1_700_000_000_000);
        handle(push(b"\x40early"));
        assert_eq!(host.total(units::UPLINK_PACKETS), 1);
        assert!(
            host.kv(&format!(
                "pkt/{}",
                hex::encode(Sha256::digest(b"\x40early"))
            ))
            .is_some()
        );
    }

    #[test]
    fn the_dedupe_window_moves_with_tick() {
        let host = host();
        tick(1_000);
        handle(push(b"\x40same"));
        tick(4_000);
        handle(push(b"\x40same"));
        assert_eq!(host.total(units::UPLINK_PACKETS), 1, "within the window");
        tick(7_000);
        handle(push(b"\x40same"));
        assert_eq!(host.total(units::UPLINK_PACKETS), 2, "past the window");
    }

    #[test]
    fn tick_expires_oldest_first_and_stops_at_the_first_young_entry() {
        let host = host();
        tick(1_000);
        handle(push(b"\x40old"));
        tick(5_000);
        handle(push(b"\x40new"));
        tick(9_000);
        let old = hex::encode(Sha256::digest(b"\x40old"));
        let new = hex::encode(Sha256::digest(b"\x40new"));
        assert!(host.kv(&format!("seen/{old}")).is_none(), "past the window");
        assert!(
            host.kv(&format!("seen/{new}")).is_some(),
            "within the window"
        );
        assert_eq!(
            kv::list_keys("exp/", 10).unwrap(),
            [format!("exp/{:020}/{new}", 5_000)]
        );
        assert!(
            host.kv(&format!("pkt/{old}")).is_some(),
            "provable for a day"
        );
    }

    #[test]
    fn a_refused_upstream_send_is_logged_and_the_forwarder_still_gets_its_ack() {
        let host = TestHost::install(&[("upstream", "203.0.113.9:1700")]);
        host.allow_udp(&[UPSTREAM]);
        assert_eq!(handle(push(b"\x40x")).len(), 1);
        assert!(host.take_udp_sent().is_empty());
        assert!(
            host.logs().iter().any(|(_, m)| m.contains("NotAllowed")),
            "{:?}",
            host.logs()
        );
    }

    #[test]
    fn drops_are_counted_per_reason_and_summed_in_status() {
        let _host = host();
        for d in [vec![2u8], vec![9, 0, 0, 0], vec![2, 0, 0, 0x42]] {
            handle(Datagram {
                peer: FORWARDER.into(),
                payload: d,
            });
        }
        handle(Datagram {
            peer: "192.0.2.8:1".into(),
            payload: vec![2],
        });
        let s = status();
        assert_eq!(
            s["dropped"],
            json!({ "short": 2, "version": 1, "unknown-type": 1 })
        );
    }

    #[test]
    fn a_downlink_for_an_unknown_forwarder_is_dropped_not_metered() {
        let host = host();
        host.set_arrived_on(Some("0102030405060708"));
        let mut payload = vec![2, 0, 5, 3];
        payload.extend_from_slice(br#"{"txpk":{"data":"YAE=","size":2}}"#);
        let out = handle(Datagram {
            peer: UPSTREAM.into(),
            payload,
        });
        assert!(out.is_empty());
        assert_eq!(host.total(units::DOWNLINKS), 0);
        assert_eq!(status()["dropped"]["unknown-forwarder"], 1);
    }
}
