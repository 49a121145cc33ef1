//! Encoding tests of [`super`]: golden bytes per version, canonical
//! decoding, signatures, and the fuzz corpus's current-format input.

use super::*;

pub(crate) fn sample() -> EpochReport {
    EpochReport {
        version: REPORT_VERSION,
        gateway_key: [7; 32],
        epoch: 3,
        length_ms: 1000,
        prev_hash: [1; 32],
        first_seq: 10,
        records: 2,
        merkle_root: [2; 32],
        components: vec![ComponentDigest {
            plugin: "tpl".into(),
            digest: [3; 32],
            signer: Some([4; 32]),
        }],
        totals: vec![EpochTotal {
            plugin: "tpl".into(),
            kind: "other".into(),
            source: "plugin".into(),
            unit: "hits".into(),
            records: 2,
            quantity: 5,
            subjects: 1,
        }],
        subject_totals: vec![SubjectTotal {
            plugin: "tpl".into(),
            unit: "hits".into(),
            subject: "d1".into(),
            records: 2,
            quantity: 5,
        }],
        proofs: vec![
            ProofOutcome {
                challenge_id: "c1".into(),
                passed: true,
            },
            ProofOutcome {
                challenge_id: "c2".into(),
                passed: false,
            },
        ],
        reward_micro: 9,
    }
}

/// The v2 encoding: the sample without signers.
fn sample_v2() -> EpochReport {
    let mut r = sample();
    r.version = REPORT_VERSION_UNSIGNED_COMPONENTS;
    for c in &mut r.components {
        c.signer = None;
    }
    r
}

#[test]
fn encoding_v3_matches_golden_bytes() {
    let expected = [
        "44504752",
        "03",
        &"07".repeat(32),
        "0000000000000003",
        "00000000000003e8",
        &"01".repeat(32),
        "000000000000000a",
        "0000000000000002",
        &"02".repeat(32),
        "0001",
        "0003 74706c",
        &"03".repeat(32),
        "01",
        &"04".repeat(32),
        "0001",
        "0003 74706c",
        "0005 6f74686572",
        "01",
        "0004 68697473",
        "0000000000000002",
        "00000000000000000000000000000005",
        "0000000000000001",
        "0001",
        "0003 74706c",
        "0004 68697473",
        "0002 6431",
        "0000000000000002",
        "00000000000000000000000000000005",
        "0002",
        "0002 6331 01",
        "0002 6332 00",
        "00000000000000000000000000000009",
    ]
    .concat()
    .replace(' ', "");
    assert_eq!(hex::encode(sample().encode()), expected);
    // unsigned: one zero byte after the digest
    let mut unsigned = sample();
    unsigned.components[0].signer = None;
    let bytes = hex::encode(unsigned.encode());
    assert!(bytes.contains(&format!("{}00{}", "03".repeat(32), "0001")));
}

#[test]
fn version_2_still_decodes_without_signers_and_bad_flags_are_refused() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut r = sample_v2();
    r.gateway_key = key.verifying_key().to_bytes();
    let signed = r.clone().sign(&key);
    let back = SignedReport::decode(&signed.bytes).unwrap();
    assert_eq!(back.report, r);
    assert_eq!(back.report.version, 2);
    // v3: a signer flag other than 0 or 1 is malformed
    let mut v3 = sample();
    v3.gateway_key = key.verifying_key().to_bytes();
    v3.components[0].signer = None;
    let mut body = v3.encode();
    let flag = body
        .windows(33)
        .position(|w| w[..32] == [3; 32] && w[32] == 0)
        .unwrap()
        + 32;
    body[flag] = 2;
    let sig = key.sign(&body);
    body.extend_from_slice(&sig.to_bytes());
    assert_eq!(
        SignedReport::decode(&body).unwrap_err(),
        ReportError::Malformed("bad signer flag")
    );
}

#[test]
fn encoding_v2_matches_golden_bytes() {
    let expected = [
        "44504752",
        "02",
        &"07".repeat(32),
        "0000000000000003",
        "00000000000003e8",
        &"01".repeat(32),
        "000000000000000a",
        "0000000000000002",
        &"02".repeat(32),
        "0001",
        "0003 74706c",
        &"03".repeat(32),
        "0001",
        "0003 74706c",
        "0005 6f74686572",
        "01",
        "0004 68697473",
        "0000000000000002",
        "00000000000000000000000000000005",
        "0000000000000001",
        "0001",
        "0003 74706c",
        "0004 68697473",
        "0002 6431",
        "0000000000000002",
        "00000000000000000000000000000005",
        "0002",
        "0002 6331 01",
        "0002 6332 00",
        "00000000000000000000000000000009",
    ]
    .concat()
    .replace(' ', "");
    assert_eq!(hex::encode(sample_v2().encode()), expected);
}

#[test]
fn version_1_still_decodes_without_components() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut r = sample();
    r.version = REPORT_VERSION_LEGACY;
    r.components.clear();
    r.gateway_key = key.verifying_key().to_bytes();
    let signed = r.clone().sign(&key);
    let back = SignedReport::decode(&signed.bytes).unwrap();
    assert_eq!(back.report, r);
    assert_eq!(back.report.version, 1);
    // a component list out of order (or naming a plugin twice) is refused
    let mut v2 = sample();
    v2.components.push(ComponentDigest {
        plugin: "a".into(),
        digest: [0; 32],
        signer: None,
    });
    v2.gateway_key = key.verifying_key().to_bytes();
    assert!(matches!(
        SignedReport::decode(&v2.sign(&key).bytes),
        Err(ReportError::Malformed(_))
    ));
}

#[test]
fn encoding_v1_matches_golden_bytes() {
    let mut v1 = sample();
    v1.version = REPORT_VERSION_LEGACY;
    v1.components.clear();
    let expected = [
        "44504752",
        "01",
        &"07".repeat(32),
        "0000000000000003",
        "00000000000003e8",
        &"01".repeat(32),
        "000000000000000a",
        "0000000000000002",
        &"02".repeat(32),
        "0001",
        "0003 74706c",
        "0005 6f74686572",
        "01",
        "0004 68697473",
        "0000000000000002",
        "00000000000000000000000000000005",
        "0000000000000001",
        "0001",
        "0003 74706c",
        "0004 68697473",
        "0002 6431",
        "0000000000000002",
        "00000000000000000000000000000005",
        "0002",
        "0002 6331 01",
        "0002 6332 00",
        "00000000000000000000000000000009",
    ]
    .concat()
    .replace(' ', "");
    assert_eq!(hex::encode(v1.encode()), expected);
}

#[test]
fn signed_report_decodes_and_one_changed_byte_is_rejected() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut r = sample();
    r.gateway_key = key.verifying_key().to_bytes();
    let signed = r.clone().sign(&key);
    assert_eq!(SignedReport::decode(&signed.bytes).unwrap().report, r);
    // same input, same bytes
    assert_eq!(r.clone().sign(&key).bytes, signed.bytes);
    for i in [5, 50, 100, signed.bytes.len() - 70, signed.bytes.len() - 1] {
        let mut bad = signed.bytes.clone();
        bad[i] ^= 1;
        assert!(SignedReport::decode(&bad).is_err(), "byte {i}");
    }
}

#[test]
fn report_signed_by_another_key_is_rejected() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let other = SigningKey::from_bytes(&[6; 32]);
    let mut r = sample();
    r.gateway_key = key.verifying_key().to_bytes();
    let forged = r.sign(&other);
    assert_eq!(
        SignedReport::decode(&forged.bytes).unwrap_err(),
        ReportError::BadSignature
    );
}

mod corpus {
    use super::*;

    /// The fuzz corpus holds a signed v3 report with a signer, so the
    /// canonical-encoding target starts from the current format. Run with
    /// `DEPIN_WRITE_CORPUS=1` to (re)write it.
    #[test]
    fn fuzz_corpus_holds_a_v3_report_with_a_signer() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/report/v3-signed-component");
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut r = sample();
        r.gateway_key = key.verifying_key().to_bytes();
        let signed = r.clone().sign(&key);
        if std::env::var_os("DEPIN_WRITE_CORPUS").is_some() {
            std::fs::write(&path, &signed.bytes).unwrap();
        }
        let saved = std::fs::read(&path).unwrap();
        let back = SignedReport::decode(&saved).unwrap();
        assert_eq!(back.report, r);
        assert_eq!(back.report.version, REPORT_VERSION);
        assert_eq!(back.report.components[0].signer, Some([4; 32]));
    }
}
