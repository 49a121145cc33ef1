//! The gateway registry end to end, on both stores: its HTTP API
//! (`[admin]`) and approval on first contact, with gateways that present
//! their device-key certificates over real mutual TLS.

use depin_e2e::upstream::{Pki, free_port};
use depin_e2e::{HttpClient, Reply};
use depin_gateway::identity::DeviceKey;

use super::*;

const TOKEN: &str = "registry-admin-token-0123";

/// The `[admin]` table of a collector serving the registry API on
/// `port`, its token in a file in `dir`.
fn admin_toml(dir: &Path, port: u16) -> String {
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    )
}

/// The registry API of a collector, as an operator's script uses it.
struct Admin {
    http: HttpClient,
}

impl Admin {
    fn new(port: u16) -> Self {
        Self {
            http: HttpClient::new(([127, 0, 0, 1], port).into()),
        }
    }

    /// Sends with `token` (none: no Authorization header); (status, JSON).
    async fn send_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let headers: Vec<(String, String)> = token
            .map(|t| ("authorization".into(), format!("Bearer {t}")))
            .into_iter()
            .collect();
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let reply: Reply = self
            .http
            .send_with_headers(method, path, &headers, body)
            .await
            .expect("admin request");
        let v = serde_json::from_slice(&reply.body).unwrap_or_else(|_| Value::String(reply.text()));
        (reply.status, v)
    }

    async fn send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.send_as(Some(TOKEN), method, path, body).await
    }
}

/// A forger presenting its device-key certificate to the collector on
/// `port`.
fn device_key_forger(pki: &Pki, port: u16) -> Forger {
    let key = DeviceKey::generate();
    let https = pki.https_device_key(&[port], &key);
    Forger::with_client(key, https)
}

/// (status, body text) of `GET /v1/gateways` from `f`: whether the
/// collector admits it.
async fn admitted(f: &Forger) -> (u16, String) {
    let (status, body) = f
        .https
        .request("GET", "/v1/gateways", Vec::new())
        .await
        .expect("request");
    (status, String::from_utf8_lossy(&body).into_owned())
}

on_both_stores!(the_registry_api_adds_revokes_and_approves_gateways_with_a_token);
async fn the_registry_api_adds_revokes_and_approves_gateways_with_a_token(backend: Backend) {
    let fx = Fixture::new(backend);
    let (pki, port, admin_port) = (&fx.pki, fx.port, free_port());
    let template = &fx.template;
    let _collector = fx.collector(
        &[],
        &format!(
            "{}{}[challenges]\ninterval_ms = 0\n",
            admin_toml(fx.dir(), admin_port),
            depin_e2e::upstream::approve(template, "other", None, &[])
        ),
    );
    let admin = Admin::new(admin_port);
    let mut f = device_key_forger(pki, port);
    let (status, body) = admitted(&f).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("is not registered"), "{body}");

    // No token, a wrong token: 401, and nothing changes.
    let pem = f.key.certificate().unwrap().pem;
    let add = serde_json::json!({ "device_cert_pem": pem });
    for token in [None, Some("registry-admin-token-9999")] {
        let (status, e) = admin
            .send_as(token, "POST", "/v1/registry", add.clone())
            .await;
        assert_eq!(status, 401, "{e}");
        assert!(e["error"].as_str().unwrap().contains("bearer token"), "{e}");
    }
    assert_eq!(admitted(&f).await.0, 403);

    // Added by its device-key certificate: admitted from the next request.
    let (status, g) = admin.send("POST", "/v1/registry", add.clone()).await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["id"], f.id().as_str(), "the id is the certificate's key");
    assert_eq!(g["status"], "active");
    let e0 = current_epoch() - 2;
    let tpl = [("template", digest_bytes(template))];
    let work = [("template", "other", "requests", 10)];
    let (status, body) = f.post(f.report(e0, &tpl, &work)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );

    // Revoked: refused on its next request; approved: admitted again.
    let revoke = format!("/v1/registry/{}/revoke", f.id());
    let (status, g) = admin.send("POST", &revoke, Value::Null).await;
    assert_eq!(
        (status, g["status"].as_str()),
        (200, Some("revoked")),
        "{g}"
    );
    let (status, body) = admitted(&f).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let (status, listed) = admin.send("GET", "/v1/registry", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["id"], f.id().as_str(), "{listed}");
    assert_eq!(listed[0]["status"], "revoked", "{listed}");
    let approve = format!("/v1/registry/{}/approve", f.id());
    let (status, g) = admin.send("POST", &approve, Value::Null).await;
    assert_eq!((status, g["status"].as_str()), (200, Some("active")), "{g}");
    assert_eq!(admitted(&f).await.0, 200);

    // By id, pending: known but not admitted until approved.
    let other = device_key_forger(pki, port);
    let (status, g) = admin
        .send(
            "POST",
            "/v1/registry",
            serde_json::json!({ "id": other.id(), "pending": true }),
        )
        .await;
    assert_eq!(
        (status, g["status"].as_str()),
        (201, Some("pending")),
        "{g}"
    );
    let (status, body) = admitted(&other).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not yet approved"), "{body}");

    // Bad input and unknown ids, each with a message.
    let unknown = format!("dpg1{}", "cd".repeat(32));
    for (method, path, body, want, says) in [
        (
            "POST",
            "/v1/registry".to_string(),
            add.clone(),
            409,
            "already registered",
        ),
        (
            "POST",
            "/v1/registry".into(),
            serde_json::json!({ "id": "gw-7" }),
            400,
            "not a gateway id",
        ),
        (
            "POST",
            "/v1/registry".into(),
            serde_json::json!({ "device_cert_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" }),
            400,
            "not a device-key certificate",
        ),
        (
            "POST",
            format!("/v1/registry/{unknown}/revoke"),
            Value::Null,
            404,
            "is not registered",
        ),
        (
            "PUT",
            format!("/v1/registry/{unknown}"),
            Value::Null,
            405,
            "not allowed",
        ),
    ] {
        let (status, e) = admin.send(method, &path, body).await;
        assert_eq!(status, want, "{method} {path}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{says}: {e}");
    }
    // The gateway-facing listener does not serve the registry API.
    let (status, _) = f
        .https
        .request("GET", "/v1/registry", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 404);
}

on_both_stores!(approval_on_first_contact_admits_device_keys_but_never_a_revoked_gateway);
async fn approval_on_first_contact_admits_device_keys_but_never_a_revoked_gateway(
    backend: Backend,
) {
    let fx = Fixture::new(backend);
    let (pki, port, admin_port) = (&fx.pki, fx.port, free_port());
    let template = &fx.template;
    let collector = |first_contact: bool| {
        fx.collector(
            &[],
            &format!(
                "{}{}[challenges]\ninterval_ms = 0\n[enrollment]\napprove_on_first_contact = {first_contact}\n",
                admin_toml(fx.dir(), admin_port),
                depin_e2e::upstream::approve(template, "other", None, &[])
            ),
        )
    };
    let tpl = [("template", digest_bytes(template))];
    let work = [("template", "other", "requests", 10)];
    let e0 = current_epoch() - 3;
    let mut f = device_key_forger(pki, port);

    // Off: an unknown gateway's report is refused, in plain words.
    let mut closed = collector(false);
    let (status, body) = f.post(f.report(e0, &tpl, &work)).await;
    assert_eq!(status, 403, "{body}");
    let text = body.as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("gateway {} is not registered", f.id()))
            && text.contains("depin-collector gateways add"),
        "{body}"
    );
    closed.kill();

    // On: admitted on its first request, registered, its report counted.
    let mut open = collector(true);
    let (status, body) = f.post(f.report(e0, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    assert_eq!(body["decision"]["reward_micro"], "70", "{body}");
    let admin = Admin::new(admin_port);
    let (_, g) = admin
        .send("GET", &format!("/v1/registry/{}", f.id()), Value::Null)
        .await;
    assert_eq!(g["status"], "active", "registered on first contact: {g}");
    let logged = open
        .stderr_lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("gateway approved on first contact") && l.contains(&f.id()));
    assert!(logged, "first-contact approvals are logged");

    // Revoked: refused though first contact is on.
    let (status, _) = admin
        .send(
            "POST",
            &format!("/v1/registry/{}/revoke", f.id()),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = f.post(f.report(e0 + 1, &tpl, &work)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.as_str().unwrap_or_default().contains("is revoked"),
        "{body}"
    );
    // Also after a restart with the mode on: the registry is the store's.
    open.kill();
    let _again = collector(true);
    let (status, body) = admitted(&f).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    // A newcomer, admitted on first contact, reads the totals.
    let reader = device_key_forger(pki, port);
    let gws = get_json(&reader.https, "/v1/gateways").await;
    assert_eq!(
        gws[0]["reports"], 1,
        "only the report sent while active counts: {gws}"
    );
}
