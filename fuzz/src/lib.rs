//! The entry function of each fuzz target: what a target feeds its input
//! to, shared by the libFuzzer binaries (`fuzz_targets/`) and the corpus
//! replay test, which runs on stable.

use depin_protocol::proofs::{Answer, InclusionProof};
use depin_protocol::record::UsageRecord;
use depin_protocol::report::SignedReport;

/// Every target, by name (= its corpus directory), with its entry.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("report", report),
    ("proof_answer", proof_answer),
    ("record", record),
    ("senml", senml),
    ("gwmp", gwmp),
];

/// Epoch report decoding (signed, canonical): what the collector accepts
/// from a gateway. A report that decodes must re-encode to its bytes.
pub fn report(data: &[u8]) {
    if let Ok(signed) = SignedReport::decode(data) {
        let body = &data[..data.len() - 64];
        assert_eq!(
            signed.report.encode(),
            body,
            "decoded reports are canonical"
        );
    }
}

/// A challenge answer and an inclusion proof: what the collector takes back
/// from a gateway.
pub fn proof_answer(data: &[u8]) {
    let _ = Answer::decode(data);
    let _ = InclusionProof::decode(data);
}

/// A usage record as stored (read back by `ledger verify`, by the epoch
/// close and by the collector's proof checks).
pub fn record(data: &[u8]) {
    if let Ok(r) = UsageRecord::decode(data) {
        let _ = r.encode();
    }
}

/// A SenML pack (HTTP body) and the MQTT envelope around one.
pub fn senml(data: &[u8]) {
    let _ = sensor_aggregator_plugin::senml::resolve(data, 1_700_000_000_000);
    let _ = sensor_aggregator_plugin::envelope::SignedPack::from_mqtt(data);
}

/// A GWMP (Semtech UDP packet forwarder) datagram and the JSON of a
/// PUSH_DATA inside it.
pub fn gwmp(data: &[u8]) {
    use hotspot_relay_plugin::gwmp::{Kind, parse};
    if let Ok(packet) = parse(data)
        && packet.kind == Kind::PushData
        && let Ok(body) = serde_json::from_slice(packet.body)
    {
        let _ = hotspot_relay_plugin::relay::parse_push_data(&body);
    }
}
