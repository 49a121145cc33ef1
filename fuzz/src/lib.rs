//! The entry function of each fuzz target: what a target feeds its input
//! to, shared by the libFuzzer binaries (`fuzz_targets/`) and the corpus
//! replay test, which runs on stable.

use depin_protocol::proofs::{Answer, InclusionProof};

/// The gateway's `range` and `if-none-match` parsing, compiled from its
/// own file: it depends on nothing beyond `std`, and linking the gateway
/// (and wasmtime) into an instrumented build is not needed for it.
#[path = "../../gateway/src/ingress/http/range.rs"]
#[allow(dead_code)]
mod range;
use depin_protocol::record::UsageRecord;
use depin_protocol::report::SignedReport;

/// Every target, by name (= its corpus directory), with its entry.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("report", report),
    ("proof_answer", proof_answer),
    ("record", record),
    ("senml", senml),
    ("gwmp", gwmp),
    ("registry", registry),
    ("http_range", http_range),
    ("policy", policy),
    ("ack", ack),
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

/// What storage-cache reads from registry clients and registries: an OCI
/// distribution path (`<name>/blobs/<digest>`, `<name>/manifests/<ref>`),
/// a `www-authenticate` challenge, and the realm URL it names. Strings are
/// taken from the input as UTF-8 (lossy), split at the first NUL.
pub fn registry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, header) = text.split_once('\0').unwrap_or((&text, &text));
    if let Ok(request) = storage_cache_plugin::oci::parse(path) {
        let _ = format!("{request:?}");
    }
    if let Some(challenge) = storage_cache_plugin::auth::parse(header) {
        for (_, value) in &challenge.params {
            let _ = storage_cache_plugin::auth::origin(value);
        }
    }
    let _ = storage_cache_plugin::auth::origin(path);
}

/// A `range` and an `if-none-match` header as a client sends them, against
/// a blob whose length is the input's first 8 bytes (big-endian); the rest,
/// as UTF-8 (lossy), is the header text. A satisfiable range must lie
/// inside the blob, first byte before last.
pub fn http_range(data: &[u8]) {
    let Some((len, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let len = u64::from_be_bytes(*len);
    let header = String::from_utf8_lossy(header);
    if let range::RangeSpec::Satisfiable(first, last) = range::parse_range(&header, len) {
        assert!(
            first <= last && last < len,
            "{header:?} of {len}: {first}-{last}"
        );
    }
    let _ = range::etag_matches(&header, "\"sha256:00\"");
}

/// A reward policy file as the gateway and the collector read it (TOML into
/// the protocol's policy, then its validation); a valid policy then prices
/// totals at the extremes of their range, which must not panic.
pub fn policy(data: &[u8]) {
    use depin_protocol::rewards::{ProofResults, RewardInput, RewardPolicy};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = toml::from_str::<RewardPolicy>(text) else {
        return;
    };
    if policy.validate().is_err() {
        return;
    }
    for quantity in [0, 1, u128::from(u64::MAX), u128::MAX] {
        for (issued, passed) in [(0, 0), (3, 1), (u32::MAX, u32::MAX)] {
            let totals = ["host", "plugin"].map(|source| RewardInput {
                kind: "compute-task",
                source,
                unit: "requests",
                quantity,
            });
            let _ = policy.reward(totals, ProofResults { issued, passed });
        }
    }
}

/// The collector's acknowledgement of a report, as the gateway reads it:
/// one that decodes is accepted by `decode_for` with its own epoch and
/// hash, and refused for any other epoch.
pub fn ack(data: &[u8]) {
    use depin_protocol::ack::Acknowledgement;
    if let Ok(ack) = Acknowledgement::decode(data) {
        assert!(ack.status.chars().count() <= 32);
        assert!(Acknowledgement::decode_for(data, ack.epoch, &ack.hash).is_ok());
        assert!(Acknowledgement::decode_for(data, ack.epoch ^ 1, &ack.hash).is_err());
    }
}
