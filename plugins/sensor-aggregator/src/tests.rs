//! The plugin's logic on the native test host.

use depin_plugin_sdk::testing::TestHost;
use ed25519_dalek::{Signer, SigningKey};

use super::*;

const TOKEN: &str = "test-admin-token-0123";

fn host() -> TestHost {
    let host = TestHost::install(&[("admin_token", TOKEN), ("window_ms", "1000")]);
    host.declare_units(&[UNIT_READINGS, UNIT_WINDOW_ROOTS]);
    host
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn provision_device(id: &str, k: &SigningKey) -> HttpResponse {
    let body = serde_json::json!({
        "id": id,
        "public_key": hex::encode(k.verifying_key().as_bytes()),
        "names": { "temp": { "min": -40.0, "max": 85.0 }, "door": {} },
    });
    let mut req = HttpRequest::new("POST", "/devices").with_body(body.to_string());
    req.headers
        .push(("authorization".into(), format!("Bearer {TOKEN}")));
    SensorAggregator::handle_http(req)
}

fn pack_request(id: &str, seq: u64, k: &SigningKey, pack: &str) -> HttpRequest {
    let sig = k.sign(&envelope::signed_message(id, seq, pack.as_bytes()));
    let mut req = HttpRequest::new("POST", "/packs").with_body(pack);
    req.headers = vec![
        ("content-type".into(), SENML_JSON.into()),
        ("x-device-id".into(), id.into()),
        ("x-sequence".into(), seq.to_string()),
        ("x-signature".into(), hex::encode(sig.to_bytes())),
    ];
    req
}

fn body(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(r.body_bytes()).expect("JSON body")
}

fn stats() -> serde_json::Value {
    body(&SensorAggregator::handle_http(HttpRequest::new(
        "GET", "/stats",
    )))
}

#[test]
fn provisioning_needs_the_admin_token() {
    let _h = host();
    let req = HttpRequest::new("POST", "/devices").with_body("{}");
    assert_eq!(SensorAggregator::handle_http(req).status, 401);
    assert_eq!(provision_device("dev-1", &key(1)).status, 201);
}

#[test]
fn accepted_readings_are_aggregated_and_metered() {
    let host = host();
    provision_device("dev-1", &key(1));
    let pack =
        r#"[{"bn":"","bu":"Cel","n":"temp","v":20},{"n":"temp","v":22},{"n":"door","vb":true}]"#;
    let r = SensorAggregator::handle_http(pack_request("dev-1", 1, &key(1), pack));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(r.body_bytes()));
    assert_eq!(body(&r)["accepted"], 3);
    assert_eq!(host.total(UNIT_READINGS), 3);
    let aggs = body(&SensorAggregator::handle_http(
        HttpRequest::new("GET", "/aggregates").with_query("device=dev-1&name=temp"),
    ));
    assert_eq!(aggs[0]["count"], 2);
    assert_eq!(aggs[0]["min"], 20.0);
    assert_eq!(aggs[0]["max"], 22.0);
    assert_eq!(aggs[0]["mean"], 21.0);
    assert_eq!(stats()["accepted"], 3);
}

#[test]
fn each_rejection_reason_is_counted() {
    let host = host();
    provision_device("dev-1", &key(1));
    let ok = r#"[{"n":"temp","v":1}]"#;
    let send = |req| SensorAggregator::handle_http(req).status;
    assert_eq!(send(pack_request("nobody", 1, &key(1), ok)), 403);
    assert_eq!(send(pack_request("dev-1", 1, &key(2), ok)), 401);
    assert_eq!(send(pack_request("dev-1", 5, &key(1), ok)), 200);
    assert_eq!(send(pack_request("dev-1", 5, &key(1), ok)), 409);
    assert_eq!(send(pack_request("dev-1", 2000, &key(1), ok)), 200);
    assert_eq!(send(pack_request("dev-1", 900, &key(1), ok)), 409);
    assert_eq!(send(pack_request("dev-1", 2001, &key(1), "[{\"n\":")), 400);
    let far = r#"[{"n":"temp","v":1,"t":4102444800}]"#; // 2100-01-01
    let r = SensorAggregator::handle_http(pack_request("dev-1", 2002, &key(1), far));
    assert_eq!(body(&r)["rejected_readings"]["bad-timestamp"], 1);
    let hot = r#"[{"n":"temp","v":99},{"n":"humidity","v":1}]"#;
    let r = SensorAggregator::handle_http(pack_request("dev-1", 2003, &key(1), hot));
    assert_eq!(body(&r)["rejected_readings"]["out-of-range"], 2);
    let s = stats();
    for reason in [
        "unknown-device",
        "bad-signature",
        "malformed",
        "bad-timestamp",
    ] {
        assert_eq!(s["rejected"][reason], 1, "{reason}: {s}");
    }
    assert_eq!(s["rejected"]["replayed"], 2);
    assert_eq!(s["rejected"]["out-of-range"], 2);
    assert_eq!(s["accepted"], 2);
    assert_eq!(host.total(UNIT_READINGS), 2);
    // Folding the counters' deltas into totals changes no count.
    SensorAggregator::tick(now_ms());
    assert!(host.kv("total|replayed").is_some());
    assert_eq!(stats(), s);
}

#[test]
fn mqtt_payload_is_taken_in_like_http() {
    let _h = host();
    provision_device("dev-1", &key(1));
    let pack = r#"[{"n":"temp","v":3}]"#;
    let sig = key(1).sign(&envelope::signed_message("dev-1", 1, pack.as_bytes()));
    let payload = format!("dev-1 1 {}\n{pack}", hex::encode(sig.to_bytes()));
    assert_eq!(
        SensorAggregator::handle_message("t".into(), payload.clone().into_bytes()),
        Ok(())
    );
    // A redelivery is acknowledged but not counted again.
    assert_eq!(
        SensorAggregator::handle_message("t".into(), payload.into_bytes()),
        Ok(())
    );
    let s = stats();
    assert_eq!(
        (s["accepted"].as_u64(), s["rejected"]["replayed"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn proof_round_trip_and_forgeries_fail() {
    let host = host();
    provision_device("dev-1", &key(1));
    for seq in 1..=3 {
        let pack = format!(
            r#"[{{"n":"temp","v":{seq}}},{{"n":"temp","v":{}}}]"#,
            seq + 10
        );
        assert_eq!(
            SensorAggregator::handle_http(pack_request("dev-1", seq, &key(1), &pack)).status,
            200
        );
    }
    SensorAggregator::tick(now_ms() + 10_000);
    assert_eq!(host.total(UNIT_WINDOW_ROOTS), 6);
    let windows = body(&SensorAggregator::handle_http(HttpRequest::new(
        "GET", "/windows",
    )));
    let window = windows[0]["window"].as_u64().unwrap();
    let c = Challenge {
        id: "c1".into(),
        kind: proof::KIND.into(),
        nonce: vec![7; 16],
        params: serde_json::to_vec(&serde_json::json!({ "window": window, "index": 3 })).unwrap(),
    };
    let p = SensorAggregator::prove(c.clone()).unwrap();
    assert!(SensorAggregator::verify(c.clone(), p.clone()));

    let mut forged: proof::InclusionProof = serde_json::from_slice(&p.payload).unwrap();
    let pack = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &forged.pack).unwrap(),
    )
    .unwrap();
    forged.pack = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        pack.replace("12", "13"),
    );
    forged.reading.value = senml::Value::V(13.0);
    let forged = Proof {
        challenge_id: "c1".into(),
        payload: serde_json::to_vec(&forged).unwrap(),
    };
    assert!(
        !SensorAggregator::verify(c.clone(), forged),
        "a forged reading must fail"
    );

    let mut wrong: proof::InclusionProof = serde_json::from_slice(&p.payload).unwrap();
    wrong.path[0].sibling_is_left = !wrong.path[0].sibling_is_left;
    let wrong = Proof {
        challenge_id: "c1".into(),
        payload: serde_json::to_vec(&wrong).unwrap(),
    };
    assert!(
        !SensorAggregator::verify(c.clone(), wrong),
        "a wrong path must fail"
    );

    let other_nonce = Challenge {
        nonce: vec![8; 16],
        ..c
    };
    assert!(
        !SensorAggregator::verify(other_nonce, p),
        "a proof is bound to its nonce"
    );
}

#[test]
fn late_packs_within_the_window_count_once() {
    let mut w = store::SeqWindow::default();
    assert!(w.accept(3));
    assert!(w.accept(5));
    assert!(w.accept(4), "a reordered pack is accepted");
    assert!(!w.accept(4), "but only once");
    assert!(!w.accept(5));
    assert!(w.accept(100));
    assert!(!w.accept(3), "marks survive aging across words");
    assert!(w.accept(2000));
    assert!(
        w.accept(2000 - 1023),
        "1023 below the highest is still in the window"
    );
    assert!(!w.accept(2000 - 1024), "1024 below is not");
    assert!(!w.accept(2000 - 1023));
    // Every number in a shuffled range is accepted exactly once.
    let mut w = store::SeqWindow::default();
    let order: Vec<u64> = (1..=3000u64).map(|i| (i * 7919) % 3000 + 1).collect();
    let first_pass = order.iter().filter(|s| w.accept(**s)).count();
    assert!(order.iter().all(|s| !w.accept(*s)), "no number twice");
    assert!(first_pass > 0);
}
