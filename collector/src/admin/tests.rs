use depin_gateway::identity::DeviceKey;
use http_body_util::BodyExt;

use super::*;

const TOKEN: &str = "a-token-of-twenty-chars";

async fn api() -> (RegistryApi, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, dir.path()).await.unwrap();
    (RegistryApi::new(store, TOKEN.into()), dir)
}

/// Sends one request (with the right token unless `auth` says otherwise)
/// and returns (status, JSON body).
async fn send(
    api: &RegistryApi,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let res = api.handle(req).await;
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn bearer() -> Option<&'static str> {
    Some("Bearer a-token-of-twenty-chars")
}

fn id(n: u8) -> String {
    format!("dpg1{}", hex::encode([n; 32]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn requests_without_the_right_bearer_token_are_refused_with_401() {
    let (api, _dir) = api().await;
    for (auth, says) in [
        (None, "missing bearer token"),
        (Some("Basic YTpi"), "not `Bearer <token>`"),
        (Some("Bearer a-token-of-twenty-charz"), "wrong bearer token"),
        (Some("Bearer short"), "wrong bearer token"),
    ] {
        let (status, body) = send(&api, "GET", "/v1/registry", auth, "").await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }
    // Refused before any work: nothing was added without the token.
    let add = serde_json::json!({ "id": id(1) }).to_string();
    assert_eq!(send(&api, "POST", "/v1/registry", None, &add).await.0, 401);
    let (status, listed) = send(&api, "GET", "/v1/registry", bearer(), "").await;
    assert_eq!((status, listed), (200, serde_json::json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn gateways_are_added_by_id_or_device_certificate_listed_approved_and_revoked() {
    let (api, _dir) = api().await;
    let add = |v: serde_json::Value| v.to_string();
    let (status, g) = send(
        &api,
        "POST",
        "/v1/registry",
        bearer(),
        &add(serde_json::json!({ "id": id(1), "pending": true })),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(
        (g["id"].as_str(), g["status"].as_str()),
        (Some(id(1).as_str()), Some("pending"))
    );
    // By device-key certificate: the id is the certificate's key.
    let key = DeviceKey::generate();
    let pem = key.certificate().unwrap().pem;
    let (status, g) = send(
        &api,
        "POST",
        "/v1/registry",
        bearer(),
        &add(serde_json::json!({ "device_cert_pem": pem })),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["id"], key.gateway_id().as_str());
    assert_eq!(g["status"], "active");
    // Twice: 409.
    let (status, e) = send(
        &api,
        "POST",
        "/v1/registry",
        bearer(),
        &add(serde_json::json!({ "id": key.gateway_id() })),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("already registered"),
        "{e}"
    );
    // Approve, revoke; GET one.
    let path = format!("/v1/registry/{}/approve", id(1));
    let (status, g) = send(&api, "POST", &path, bearer(), "").await;
    assert_eq!((status, g["status"].as_str()), (200, Some("active")), "{g}");
    let path = format!("/v1/registry/{}/revoke", key.gateway_id());
    let (status, g) = send(&api, "POST", &path, bearer(), "").await;
    assert_eq!(
        (status, g["status"].as_str()),
        (200, Some("revoked")),
        "{g}"
    );
    let (status, g) = send(
        &api,
        "GET",
        &format!("/v1/registry/{}", key.gateway_id()),
        bearer(),
        "",
    )
    .await;
    assert_eq!(
        (status, g["status"].as_str()),
        (200, Some("revoked")),
        "{g}"
    );
    let (status, all) = send(&api, "GET", "/v1/registry", bearer(), "").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{all}");
    assert!(
        ids.contains(&id(1).as_str()) && ids.contains(&key.gateway_id().as_str()),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn bad_input_and_unknown_ids_get_a_4xx_that_says_what_is_wrong() {
    let (api, _dir) = api().await;
    let other = DeviceKey::generate();
    let pem = DeviceKey::generate().certificate().unwrap().pem;
    let ca_issued = {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["gw.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    };
    for (body, status, says) in [
        ("not json".to_string(), 400, "JSON object"),
        (r#"{"id": "dpg1xyz"}"#.into(), 400, "not a gateway id"),
        (r#"{"name": "x"}"#.into(), 400, "unknown field"),
        (
            "{}".into(),
            400,
            "give the gateway's id or its device-key certificate",
        ),
        (
            serde_json::json!({ "device_cert_pem": "junk" }).to_string(),
            400,
            "no PEM certificate",
        ),
        (
            serde_json::json!({ "device_cert_pem": ca_issued }).to_string(),
            400,
            "not a device-key certificate",
        ),
        (
            serde_json::json!({ "id": other.gateway_id(), "device_cert_pem": pem }).to_string(),
            400,
            "is not the one the device-key certificate names",
        ),
        (
            serde_json::json!({ "id": id(2), "cert_sha256": "abc" }).to_string(),
            400,
            "64 hex digits",
        ),
        ("x".repeat(MAX_ADMIN_BODY + 1), 413, "at most"),
    ] {
        let (got, e) = send(&api, "POST", "/v1/registry", bearer(), &body).await;
        assert_eq!(got, status, "{body:.60}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{says}: {e}");
    }
    for (method, path, status, says) in [
        (
            "POST",
            format!("/v1/registry/{}/revoke", id(3)),
            404,
            "is not registered",
        ),
        (
            "POST",
            format!("/v1/registry/{}/approve", id(3)),
            404,
            "is not registered",
        ),
        (
            "GET",
            format!("/v1/registry/{}", id(3)),
            404,
            "is not registered",
        ),
        (
            "DELETE",
            format!("/v1/registry/{}", id(3)),
            405,
            "not allowed",
        ),
        (
            "GET",
            format!("/v1/registry/{}/revoke", id(3)),
            405,
            "not allowed",
        ),
        ("GET", "/v1/other".to_string(), 404, "no admin endpoint"),
        (
            "POST",
            format!("/v1/registry/{}/delete", id(3)),
            404,
            "no admin endpoint",
        ),
    ] {
        let (got, e) = send(&api, method, &path, bearer(), "").await;
        assert_eq!(got, status, "{method} {path}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{says}: {e}");
    }
    let (_, all) = send(&api, "GET", "/v1/registry", bearer(), "").await;
    assert_eq!(all, serde_json::json!([]), "nothing was registered");
}
