//! Proof of coverage by beacon. A `beacon` challenge names a packet
//! forwarder by its gateway EUI; the relay has it transmit a payload only
//! the challenge's nonce determines, and the forwarder's TX_ACK (without an
//! error) is the proof that the concentrator took the transmission.
//!
//! `params` is the EUI alone (8 raw bytes or 16 hex digits; default radio
//! settings) or a JSON object:
//! `{"eui": "<16 hex>", "freq": 869.525, "datr": "SF9BW125", "codr": "4/5", "powe": 14, "rfch": 0}`
//! where every field but `eui` is optional (the defaults are shown).
//!
//! The beacon's payload and the PULL_RESP token follow from the nonce:
//!
//! `payload = sha256("hotspot-relay/beacon/1" || len(nonce) as u32 BE || nonce || eui)` (32 bytes)
//! `token = payload[0..2]`
//!
//! Two phases (the `pending` convention of `prove`):
//!
//! 1. The first `prove` sends a PULL_RESP (`txpk` with `imme: true`, the
//!    payload base64 in `data`) from the relay's UDP ingress socket to the
//!    address the forwarder last sent PULL_DATA from, keeps
//!    `beacon/<eui>/<token>` in kv, and answers `pending: …`.
//! 2. The forwarder's TX_ACK with that token is kept (and, since the
//!    network server never sent that PULL_RESP, not relayed upstream). The
//!    next `prove` of the same challenge answers with the proof, JSON:
//!    `{"eui": "<16 hex>", "pull_resp": "<hex>", "tx_ack": "<hex>"}` (both
//!    datagrams byte for byte). A TX_ACK that reports an error is still
//!    returned: `verify` fails it.
//!
//! `verify` checks that the PULL_RESP carries exactly the payload and token
//! the nonce demands, with the challenged radio settings, and that the
//! TX_ACK comes from the challenged EUI with the PULL_RESP's token and no
//! error (`error` absent or `NONE`).
//!
//! The TX_ACK is not signed by the forwarder: the proof shows that the
//! relay scheduled the right transmission at the right time (the nonce is
//! fresh) and reports an acknowledgement for it, not that a radio heard it.

use depin_plugin_sdk::outbound_udp::{self, SendError};
use depin_plugin_sdk::{Challenge, Proof, kv, log};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::airtime;
use crate::gwmp::{self, Kind};
use crate::relay::{self, BASE64};

/// The challenge kind this module answers.
pub const BEACON: &str = "beacon";
/// How long a beacon's state is kept (for its TX_ACK and its proof).
pub const BEACON_RETENTION_MS: u64 = 3_600_000;
/// Expiry index of `beacon/`: `bexp/<time>/<eui>/<token>`.
pub const BEACON_INDEX: &str = "bexp/";
const DOMAIN: &[u8] = b"hotspot-relay/beacon/1";

/// Radio settings of the beacon's `txpk`.
#[derive(Debug, Clone, PartialEq)]
pub struct Radio {
    /// MHz.
    pub freq: f64,
    /// LoRa data rate, e.g. `SF9BW125`.
    pub datr: String,
    /// LoRa coding rate, e.g. `4/5`.
    pub codr: String,
    /// dBm.
    pub powe: u64,
    /// The concentrator's RF chain.
    pub rfch: u64,
}

impl Default for Radio {
    fn default() -> Self {
        Radio {
            freq: 869.525,
            datr: "SF9BW125".into(),
            codr: "4/5".into(),
            powe: 14,
            rfch: 0,
        }
    }
}

/// What a `beacon` challenge asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct BeaconParams {
    pub eui: [u8; 8],
    pub radio: Radio,
}

impl BeaconParams {
    /// Parses `params`: the EUI (8 bytes or 16 hex digits), or a JSON object.
    pub fn parse(params: &[u8]) -> Result<Self, String> {
        if params.len() == 8 {
            let eui = params.try_into().expect("8 bytes");
            return Ok(Self {
                eui,
                radio: Radio::default(),
            });
        }
        if params.first() != Some(&b'{') {
            return Ok(Self {
                eui: parse_eui(std::str::from_utf8(params).unwrap_or(""))?,
                radio: Radio::default(),
            });
        }
        let v: Map<String, Value> =
            serde_json::from_slice(params).map_err(|e| format!("params: {e}"))?;
        let mut radio = Radio::default();
        let eui = parse_eui(v.get("eui").and_then(Value::as_str).unwrap_or(""))?;
        if let Some(f) = v.get("freq") {
            radio.freq = f
                .as_f64()
                .filter(|f| *f > 0.0 && *f < 10_000.0)
                .ok_or("params: `freq` must be MHz")?;
        }
        if let Some(d) = v.get("datr") {
            radio.datr = d
                .as_str()
                .filter(|d| airtime::parse_datr(d).is_some())
                .ok_or("params: `datr` must be a LoRa data rate like SF9BW125")?
                .into();
        }
        if let Some(c) = v.get("codr") {
            radio.codr = c
                .as_str()
                .filter(|c| airtime::parse_codr(c).is_some())
                .ok_or("params: `codr` must be a LoRa coding rate like 4/5")?
                .into();
        }
        if let Some(p) = v.get("powe") {
            radio.powe = p
                .as_u64()
                .filter(|p| *p <= 40)
                .ok_or("params: `powe` must be 0 to 40 dBm")?;
        }
        if let Some(r) = v.get("rfch") {
            radio.rfch = r
                .as_u64()
                .filter(|r| *r <= 1)
                .ok_or("params: `rfch` must be 0 or 1")?;
        }
        Ok(Self { eui, radio })
    }
}

fn parse_eui(s: &str) -> Result<[u8; 8], String> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "params must name the forwarder's gateway EUI (8 bytes or 16 hex digits, or JSON with `eui`)".to_string())
}

/// The payload a beacon for `nonce` to `eui` carries.
pub fn beacon_payload(nonce: &[u8], eui: &[u8; 8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update((nonce.len() as u32).to_be_bytes());
    h.update(nonce);
    h.update(eui);
    h.finalize().into()
}

/// The PULL_RESP that schedules `payload` at once with `radio`.
pub fn pull_resp(token: [u8; 2], radio: &Radio, payload: &[u8]) -> Vec<u8> {
    let txpk = json!({ "txpk": {
        "imme": true,
        "freq": radio.freq,
        "rfch": radio.rfch,
        "powe": radio.powe,
        "modu": "LORA",
        "datr": radio.datr,
        "codr": radio.codr,
        "ipol": false,
        "prea": 8,
        "size": payload.len(),
        "data": base64::Engine::encode(&BASE64, payload),
    }});
    let mut out = gwmp::ack(token, Kind::PullResp);
    out.extend_from_slice(txpk.to_string().as_bytes());
    out
}

fn state_key(eui: &str, token: [u8; 2]) -> String {
    format!("beacon/{eui}/{}", hex::encode(token))
}

/// Answers a `beacon` challenge: schedules the beacon the first time
/// (`pending`), returns the proof once the forwarder acknowledged it.
pub fn prove(c: Challenge) -> Result<Proof, String> {
    if c.nonce.is_empty() {
        return Err("the challenge has no nonce".into());
    }
    let params = BeaconParams::parse(&c.params)?;
    let payload = beacon_payload(&c.nonce, &params.eui);
    let token = [payload[0], payload[1]];
    let eui = hex::encode(params.eui);
    let key = state_key(&eui, token);
    let state: Option<Value> =
        kv::get_json(&key).map_err(|e| format!("cannot read the beacon state: {e:?}"))?;
    if let Some(state) = state {
        let same = state["challenge"].as_str() == Some(c.id.as_str())
            && state["payload"].as_str() == Some(hex::encode(payload).as_str());
        match (same, state["tx_ack"].as_str()) {
            (true, Some(tx_ack)) => {
                let proof =
                    json!({ "eui": eui, "pull_resp": state["pull_resp"], "tx_ack": tx_ack });
                return Ok(Proof {
                    challenge_id: c.id,
                    payload: serde_json::to_vec(&proof).map_err(|e| e.to_string())?,
                });
            }
            (true, None) => {
                return Err(format!(
                    "pending: beacon sent to forwarder {eui}, waiting for its TX_ACK"
                ));
            }
            (false, None) => {
                return Err(format!(
                    "forwarder {eui} has another beacon with the same token waiting for its TX_ACK; try later"
                ));
            }
            // An answered beacon of another challenge: replaced below.
            (false, Some(_)) => {}
        }
    }
    let forwarder = kv::get(&format!("fwd/{eui}"))
        .ok()
        .flatten()
        .and_then(|a| String::from_utf8(a).ok())
        .ok_or_else(|| {
            format!("forwarder {eui} is unknown here: it never sent PULL_DATA to this relay")
        })?;
    let datagram = pull_resp(token, &params.radio, &payload);
    outbound_udp::reply(&forwarder, &datagram).map_err(|e| match e {
        SendError::NotAllowed(_) => format!(
            "forwarder {eui} at {forwarder} has not been heard from recently; cannot reach it"
        ),
        SendError::Unavailable => "the relay has no UDP ingress socket ([plugin.udp])".into(),
        other => format!("cannot send the beacon: {other:?}"),
    })?;
    let clock = relay::clock();
    let state = json!({
        "challenge": c.id,
        "payload": hex::encode(payload),
        "pull_resp": hex::encode(&datagram),
        "forwarder": forwarder,
        "at": clock,
    });
    kv::set_json(&key, &state)
        .and_then(|()| {
            kv::set(
                &relay::index_key(
                    BEACON_INDEX,
                    clock,
                    &format!("{eui}/{}", hex::encode(token)),
                ),
                b"",
            )
        })
        .map_err(|e| format!("cannot keep the beacon state: {e:?}"))?;
    Err(format!(
        "pending: beacon sent to forwarder {eui} at {forwarder}; ask again for its TX_ACK"
    ))
}

/// Keeps a forwarder's TX_ACK if it acknowledges a beacon still waiting
/// for one. Returns whether it did (then the TX_ACK is not relayed: the
/// network server never sent that PULL_RESP).
pub fn take_ack(eui: &str, token: [u8; 2], tx_ack: &[u8]) -> bool {
    let key = state_key(eui, token);
    let Some(mut state) = kv::get_json::<Value>(&key).ok().flatten() else {
        return false;
    };
    if !state["tx_ack"].is_null() {
        return false;
    }
    state["tx_ack"] = json!(hex::encode(tx_ack));
    if let Err(e) = kv::set_json(&key, &state) {
        log::warn(&format!("cannot keep a beacon's TX_ACK: {e:?}"));
    }
    true
}

/// Forgets a beacon's state (from `tick`, past the retention).
pub fn forget(eui_token: &str, at: u64, now_ms: u64) {
    let key = format!("beacon/{eui_token}");
    let Some(mut state) = kv::get_json::<Value>(&key).ok().flatten() else {
        return;
    };
    if state["at"].as_u64() == Some(at) {
        let _ = if at == 0 {
            state["at"] = json!(now_ms);
            kv::set_json(&key, &state)
        } else {
            kv::delete(&key)
        };
    }
}

/// Why a beacon proof does not hold, if it does not.
pub fn check(c: &Challenge, p: &Proof) -> Result<(), &'static str> {
    if c.kind != BEACON || p.challenge_id != c.id {
        return Err("another challenge");
    }
    if c.nonce.is_empty() {
        return Err("no nonce");
    }
    let params = BeaconParams::parse(&c.params).map_err(|_| "bad params")?;
    let proof: Value = serde_json::from_slice(&p.payload).map_err(|_| "proof is not JSON")?;
    if proof["eui"].as_str() != Some(hex::encode(params.eui).as_str()) {
        return Err("another forwarder");
    }
    let bytes = |field: &str| {
        proof[field]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or("proof lacks a datagram")
    };
    let (resp_bytes, ack_bytes) = (bytes("pull_resp")?, bytes("tx_ack")?);
    let resp = gwmp::parse(&resp_bytes).map_err(|_| "malformed PULL_RESP")?;
    let ack = gwmp::parse(&ack_bytes).map_err(|_| "malformed TX_ACK")?;
    let payload = beacon_payload(&c.nonce, &params.eui);
    if resp.kind != Kind::PullResp || resp.token != [payload[0], payload[1]] {
        return Err("not the PULL_RESP this nonce demands");
    }
    let body: Value = serde_json::from_slice(resp.body).map_err(|_| "PULL_RESP is not JSON")?;
    let txpk = &body["txpk"];
    let data = txpk["data"]
        .as_str()
        .and_then(|d| base64::Engine::decode(&BASE64, d).ok());
    if data.as_deref() != Some(&payload[..]) || txpk["size"].as_u64() != Some(payload.len() as u64)
    {
        return Err("the beacon's payload is not the one this nonce demands");
    }
    if txpk["imme"] != json!(true)
        || txpk["freq"].as_f64() != Some(params.radio.freq)
        || txpk["datr"].as_str() != Some(params.radio.datr.as_str())
        || txpk["powe"].as_u64() != Some(params.radio.powe)
    {
        return Err("the beacon's radio settings are not the challenged ones");
    }
    if ack.kind != Kind::TxAck || ack.eui != Some(params.eui) {
        return Err("not a TX_ACK from the challenged forwarder");
    }
    if ack.token != resp.token {
        return Err("the TX_ACK acknowledges another PULL_RESP");
    }
    let ack_body = relay::trim_body(ack.body);
    if !ack_body.is_empty() {
        let v: Value = serde_json::from_slice(ack_body).map_err(|_| "TX_ACK is not JSON")?;
        match &v["txpk_ack"]["error"] {
            Value::Null => {}
            Value::String(e) if e == "NONE" => {}
            _ => return Err("the forwarder refused the beacon"),
        }
    }
    Ok(())
}

/// Checks a proof made by [`prove`]; see [`check`].
pub fn verify(c: &Challenge, p: &Proof) -> bool {
    check(c, p).is_ok()
}

#[cfg(test)]
mod tests {
    use depin_plugin_sdk::Datagram;
    use depin_plugin_sdk::testing::TestHost;

    use super::*;

    const UPSTREAM: &str = "10.0.0.1:1700";
    const FORWARDER: &str = "192.0.2.7:40000";
    const EUI: [u8; 8] = [0xaa, 0x55, 0, 0, 0, 0, 0, 1];

    fn host() -> TestHost {
        let host = TestHost::install(&[("upstream", UPSTREAM)]);
        host.allow_udp(&[UPSTREAM]);
        host.set_recent_peers(&[FORWARDER]);
        host
    }

    fn from_forwarder(kind: u8, token: [u8; 2], body: &[u8]) -> Vec<Datagram> {
        let mut payload = vec![2, token[0], token[1], kind];
        payload.extend_from_slice(&EUI);
        payload.extend_from_slice(body);
        relay::handle(Datagram {
            peer: FORWARDER.into(),
            payload,
        })
    }

    fn challenge(nonce: &[u8], params: &[u8]) -> Challenge {
        Challenge {
            id: "c-7".into(),
            kind: BEACON.into(),
            nonce: nonce.to_vec(),
            params: params.to_vec(),
        }
    }

    fn tx_ack(token: [u8; 2], eui: [u8; 8], body: &str) -> Vec<u8> {
        let mut d = vec![2, token[0], token[1], 5];
        d.extend_from_slice(&eui);
        d.extend_from_slice(body.as_bytes());
        d
    }

    /// Schedules a beacon, acknowledges it with `ack_body`, and proves it.
    fn round_trip(host: &TestHost, c: &Challenge, ack_body: &str) -> Proof {
        from_forwarder(2, [0, 1], b"");
        let pending = prove(c.clone()).unwrap_err();
        assert!(pending.starts_with("pending"), "{pending}");
        let sent = host.take_udp_replies();
        assert_eq!(sent.len(), 1);
        let (to, resp) = &sent[0];
        assert_eq!(to, FORWARDER);
        let token = [resp[1], resp[2]];
        assert_eq!(host.take_udp_sent().len(), 1, "the PULL_DATA was relayed");
        assert_eq!(
            relay::status()["beacons"],
            json!({ "pending": 1, "acknowledged": 0 })
        );
        from_forwarder(5, token, ack_body.as_bytes());
        assert_eq!(
            relay::status()["beacons"],
            json!({ "pending": 0, "acknowledged": 1 })
        );
        assert!(
            host.take_udp_sent().is_empty(),
            "a beacon's TX_ACK is not relayed upstream"
        );
        prove(c.clone()).expect("a proof")
    }

    #[test]
    fn params_name_the_eui_raw_hex_or_in_json_with_radio_settings() {
        let raw = BeaconParams::parse(&EUI).unwrap();
        assert_eq!((raw.eui, raw.radio.clone()), (EUI, Radio::default()));
        assert_eq!(BeaconParams::parse(b"aa55000000000001").unwrap(), raw);
        let json = br#"{"eui":"aa55000000000001","freq":923.3,"datr":"SF10BW500","powe":27}"#;
        let p = BeaconParams::parse(json).unwrap();
        assert_eq!(
            (
                p.radio.freq,
                p.radio.datr.as_str(),
                p.radio.powe,
                p.radio.codr.as_str()
            ),
            (923.3, "SF10BW500", 27, "4/5")
        );
        for bad in [
            &b"aa55"[..],
            br#"{"freq":868.1}"#,
            br#"{"eui":"aa55000000000001","datr":"SF99"}"#,
            br#"{"eui":"aa55000000000001","powe":99}"#,
        ] {
            assert!(BeaconParams::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_payload_and_token_follow_from_nonce_and_eui_only() {
        let a = beacon_payload(b"nonce", &EUI);
        assert_eq!(a, beacon_payload(b"nonce", &EUI));
        assert_ne!(a, beacon_payload(b"nonce2", &EUI));
        assert_ne!(a, beacon_payload(b"nonce", &[0; 8]));
        let resp = pull_resp([a[0], a[1]], &Radio::default(), &a);
        let p = gwmp::parse(&resp).unwrap();
        assert_eq!((p.kind, p.token), (Kind::PullResp, [a[0], a[1]]));
        let body: Value = serde_json::from_slice(p.body).unwrap();
        assert_eq!(body["txpk"]["imme"], true);
        assert_eq!(body["txpk"]["size"], 32);
        assert_eq!(body["txpk"]["data"], base64::Engine::encode(&BASE64, a));
    }

    #[test]
    fn a_beacon_is_pending_until_its_tx_ack_then_proven_and_verified() {
        let host = host();
        let c = challenge(b"fresh", &EUI);
        let proof = round_trip(&host, &c, r#"{"txpk_ack":{"error":"NONE"}}"#);
        assert!(verify(&c, &proof), "{:?}", check(&c, &proof));
        let v: Value = serde_json::from_slice(&proof.payload).unwrap();
        assert_eq!(v["eui"], hex::encode(EUI));
        // asking again gives the same proof and sends nothing
        assert_eq!(prove(c.clone()).unwrap().payload, proof.payload);
        assert!(host.take_udp_replies().is_empty());
        // the proof is bound to its nonce, its forwarder and its challenge
        assert_eq!(
            check(&challenge(b"other", &EUI), &proof),
            Err("not the PULL_RESP this nonce demands")
        );
        assert_eq!(
            check(&challenge(b"fresh", &[9; 8]), &proof),
            Err("another forwarder")
        );
        let other_id = Challenge {
            id: "c-8".into(),
            ..c.clone()
        };
        assert_eq!(check(&other_id, &proof), Err("another challenge"));
    }

    #[test]
    fn an_empty_tx_ack_body_means_no_error() {
        let host = host();
        let c = challenge(b"n", &EUI);
        let proof = round_trip(&host, &c, "");
        assert!(verify(&c, &proof), "{:?}", check(&c, &proof));
    }

    #[test]
    fn a_tx_ack_with_an_error_is_returned_and_fails_verification() {
        let host = host();
        let c = challenge(b"n", &EUI);
        let proof = round_trip(&host, &c, r#"{"txpk_ack":{"error":"COLLISION_PACKET"}}"#);
        assert_eq!(check(&c, &proof), Err("the forwarder refused the beacon"));
    }

    #[test]
    fn forged_proofs_fail() {
        let host = host();
        let c = challenge(b"n", &EUI);
        let proof = round_trip(&host, &c, "");
        let v: Value = serde_json::from_slice(&proof.payload).unwrap();
        let resp = hex::decode(v["pull_resp"].as_str().unwrap()).unwrap();
        let token = [resp[1], resp[2]];
        let with = |field: &str, bytes: &[u8]| {
            let mut v = v.clone();
            v[field] = json!(hex::encode(bytes));
            Proof {
                challenge_id: c.id.clone(),
                payload: serde_json::to_vec(&v).unwrap(),
            }
        };
        // another payload in a PULL_RESP with the right token
        let forged = pull_resp(token, &Radio::default(), &[7; 32]);
        assert_eq!(
            check(&c, &with("pull_resp", &forged)),
            Err("the beacon's payload is not the one this nonce demands")
        );
        let loud = Radio {
            powe: 30,
            ..Radio::default()
        };
        let payload = beacon_payload(b"n", &EUI);
        assert_eq!(
            check(&c, &with("pull_resp", &pull_resp(token, &loud, &payload))),
            Err("the beacon's radio settings are not the challenged ones")
        );
        assert_eq!(
            check(&c, &with("tx_ack", &tx_ack(token, [1; 8], ""))),
            Err("not a TX_ACK from the challenged forwarder")
        );
        assert_eq!(
            check(&c, &with("tx_ack", &tx_ack([token[0], !token[1]], EUI, ""))),
            Err("the TX_ACK acknowledges another PULL_RESP")
        );
    }

    #[test]
    fn an_unknown_or_silent_forwarder_gets_no_beacon() {
        let host = host();
        let c = challenge(b"n", &EUI);
        let e = prove(c.clone()).unwrap_err();
        assert!(e.contains("unknown here"), "{e}");
        from_forwarder(2, [0, 1], b"");
        host.set_recent_peers(&[]);
        let e = prove(c.clone()).unwrap_err();
        assert!(e.contains("not been heard from recently"), "{e}");
        assert!(host.take_udp_replies().is_empty());
    }

    #[test]
    fn a_tx_ack_for_a_downlink_of_the_network_server_still_goes_upstream() {
        let host = host();
        from_forwarder(2, [0, 1], b"");
        host.take_udp_sent();
        from_forwarder(5, [0x12, 0x34], b"");
        assert_eq!(host.take_udp_sent().len(), 1);
    }

    #[test]
    fn beacon_state_expires_with_tick() {
        let _host = host();
        relay::tick(1_000);
        let c = challenge(b"n", &EUI);
        from_forwarder(2, [0, 1], b"");
        prove(c.clone()).unwrap_err();
        assert_eq!(kv::list_keys("beacon/", 10).unwrap().len(), 1);
        relay::tick(1_000 + BEACON_RETENTION_MS + 1);
        assert!(kv::list_keys("beacon/", 10).unwrap().is_empty());
        assert!(kv::list_keys(BEACON_INDEX, 10).unwrap().is_empty());
    }
}
