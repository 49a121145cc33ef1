//! The template plugin: a tiny key-value and echo service that exercises
//! every host import of the contract (metering, kv, log, config). Copy this
//! crate to start a new resource type.
//!
//! Routes (below the plugin's route prefix):
//!
//! | request | answer | meters |
//! |---|---|---|
//! | `GET /hello` | `<greeting>, <name>` (config `greeting`, query `name`) | `requests` |
//! | `POST /echo` | the request body | `requests`, `bytes-echoed` with the body's sha256 as evidence |
//! | `POST /counter` | `{"count": n}`, incremented in kv | `requests` |
//! | `GET /ticks` | `{"ticks": n}`: how often the host called `tick` | `requests` |
//! | `GET /kv/<key>` | the stored value, or 404 | `requests` |
//! | `PUT /kv/<key>` | 204, stores the body | `requests` |
//! | `DELETE /kv/<key>` | 204 | `requests` |
//! | `GET /kv?prefix=p` | JSON list of keys | `requests` |
//!
//! Challenge kind `echo-hash`: the proof is `sha256(nonce || params)`.

use depin_plugin_sdk::{
    Challenge, HttpRequest, HttpResponse, Plugin, PluginInfo, Proof, ResourceKind, Usage, config,
    export_plugin, kv, log, meter, meter_usage,
};
use sha2::{Digest, Sha256};

/// The template plugin.
pub struct Template;

impl Plugin for Template {
    fn describe() -> PluginInfo {
        PluginInfo::new("template", env!("CARGO_PKG_VERSION"), ResourceKind::Other)
            .unit("requests", "one HTTP request answered")
            .unit("bytes-echoed", "one byte of request body echoed back")
    }

    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in &config {
            match key.as_str() {
                "greeting" if value.is_empty() => {
                    return Err("config `greeting` must not be empty".into());
                }
                "greeting" => {}
                other => return Err(format!("unknown config key `{other}` (known: greeting)")),
            }
        }
        kv::set("meta/initialized", b"1").map_err(|e| e.to_string())?;
        Ok(())
    }

    fn handle_http(req: HttpRequest) -> HttpResponse {
        let response = route(&req);
        if let Err(e) = meter("requests", 1) {
            log::error(&format!("cannot meter: {e}"));
        }
        response
    }

    fn tick(now_ms: u64) {
        match kv::add("ticks", 1) {
            Ok(ticks) => log::debug(&format!("tick {ticks} at {now_ms}")),
            Err(e) => log::warn(&format!("cannot count the tick: {e}")),
        }
    }

    fn prove(c: Challenge) -> Result<Proof, String> {
        match c.kind.as_str() {
            "echo-hash" => Ok(Proof {
                challenge_id: c.id.clone(),
                payload: echo_hash(&c),
            }),
            other => Err(format!(
                "challenge kind `{other}` is not supported (supported: echo-hash)"
            )),
        }
    }

    fn verify(c: Challenge, p: Proof) -> bool {
        c.kind == "echo-hash" && p.challenge_id == c.id && p.payload == echo_hash(&c)
    }
}

fn echo_hash(c: &Challenge) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(&c.nonce);
    h.update(&c.params);
    h.finalize().to_vec()
}

fn route(req: &HttpRequest) -> HttpResponse {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("GET", "/hello") => {
            let greeting = config::get("greeting").unwrap_or_else(|| "hello".into());
            let name = req.query_param("name").unwrap_or("world");
            HttpResponse::text(200, &format!("{greeting}, {name}"))
        }
        ("POST", "/echo") => {
            let digest = Sha256::digest(&req.body).to_vec();
            let usage = Usage::new("bytes-echoed", req.body.len() as u64).evidence(digest);
            if let Err(e) = meter_usage(usage) {
                return HttpResponse::text(500, &e);
            }
            let content_type = req
                .header("content-type")
                .unwrap_or("application/octet-stream");
            HttpResponse::bytes(200, content_type, req.body.clone())
        }
        ("GET", "/ticks") => {
            let ticks = kv::get_json::<u64>("ticks").ok().flatten().unwrap_or(0);
            HttpResponse::json(200, &serde_json::json!({ "ticks": ticks }))
        }
        ("POST", "/counter") => {
            // `?key=name` counts under its own key; `?via=get-set` reads
            // and writes the counter instead of adding to it (the same
            // result, but concurrent calls conflict and are run again).
            let key = match req.query_param("key") {
                Some(name) => format!("counter/{name}"),
                None => "counter".to_string(),
            };
            let count = if req.query_param("via") == Some("get-set") {
                kv::get_json::<i64>(&key).and_then(|n| {
                    let n = n.unwrap_or(0) + 1;
                    kv::set_json(&key, &n).map(|()| n)
                })
            } else {
                kv::add(&key, 1)
            };
            match count {
                Ok(count) => HttpResponse::json(200, &serde_json::json!({ "count": count })),
                Err(e) => HttpResponse::text(500, &e.to_string()),
            }
        }
        ("GET", "/kv") => {
            let prefix = req.query_param("prefix").unwrap_or("");
            match kv::list_keys(&format!("user/{prefix}"), 1000) {
                Ok(keys) => {
                    let keys: Vec<&str> = keys.iter().map(|k| &k["user/".len()..]).collect();
                    HttpResponse::json(200, &keys)
                }
                Err(e) => HttpResponse::text(500, &e.to_string()),
            }
        }
        (method, p) if p.starts_with("/kv/") => {
            kv_route(method, &format!("user/{}", &p[4..]), &req.body)
        }
        _ => HttpResponse::text(404, &format!("no route for {} {}", req.method, req.path)),
    }
}

fn kv_route(method: &str, key: &str, body: &[u8]) -> HttpResponse {
    let result = match method {
        "GET" => {
            return match kv::get(key) {
                Ok(Some(v)) => HttpResponse::bytes(200, "application/octet-stream", v),
                Ok(None) => HttpResponse::text(404, "no such key"),
                Err(e) => HttpResponse::text(400, &e.to_string()),
            };
        }
        "PUT" => kv::set(key, body),
        "DELETE" => kv::delete(key),
        _ => return HttpResponse::text(405, "use GET, PUT or DELETE"),
    };
    match result {
        Ok(()) => HttpResponse::bytes(204, "text/plain", Vec::new()),
        Err(e) => HttpResponse::text(400, &e.to_string()),
    }
}

export_plugin!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use depin_plugin_sdk::testing::TestHost;

    fn host() -> TestHost {
        let host = TestHost::install(&[("greeting", "hi")]);
        host.declare_units(&["requests", "bytes-echoed"]);
        host
    }

    #[test]
    fn hello_uses_the_configured_greeting_and_meters_one_request() {
        let host = host();
        let res = Template::handle_http(HttpRequest::new("GET", "/hello").with_query("name=ada"));
        assert_eq!((res.status, res.body_bytes()), (200, &b"hi, ada"[..]));
        assert_eq!(host.total("requests"), 1);
    }

    #[test]
    fn echo_meters_bytes_with_the_body_hash_as_evidence() {
        let host = host();
        let res = Template::handle_http(HttpRequest::new("POST", "/echo").with_body("abc"));
        assert_eq!(res.body_bytes(), b"abc");
        let echoed: Vec<_> = host
            .usage()
            .into_iter()
            .filter(|u| u.unit == "bytes-echoed")
            .collect();
        assert_eq!(echoed.len(), 1);
        assert_eq!(echoed[0].quantity, 3);
        assert_eq!(
            echoed[0].evidence.as_deref(),
            Some(&Sha256::digest(b"abc")[..])
        );
    }

    #[test]
    fn counter_persists_in_kv() {
        let host = host();
        for _ in 0..3 {
            Template::handle_http(HttpRequest::new("POST", "/counter"));
        }
        assert_eq!(host.kv("counter").as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn counter_by_add_and_by_get_set_count_the_same_keys() {
        let host = host();
        let post = |query: &str| {
            let r = Template::handle_http(HttpRequest::new("POST", "/counter").with_query(query));
            String::from_utf8(r.body_bytes().to_vec()).unwrap()
        };
        assert_eq!(post(""), r#"{"count":1}"#);
        assert_eq!(post("via=get-set"), r#"{"count":2}"#);
        assert_eq!(post("key=a&via=get-set"), r#"{"count":1}"#);
        assert_eq!(post("key=a"), r#"{"count":2}"#);
        assert_eq!(host.kv("counter/a").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn kv_routes_store_list_and_delete() {
        let _host = host();
        let put = Template::handle_http(HttpRequest::new("PUT", "/kv/a").with_body("1"));
        assert_eq!(put.status, 204);
        let got = Template::handle_http(HttpRequest::new("GET", "/kv/a"));
        assert_eq!(got.body_bytes(), b"1");
        let list = Template::handle_http(HttpRequest::new("GET", "/kv"));
        assert_eq!(list.body_bytes(), br#"["a"]"#);
        Template::handle_http(HttpRequest::new("DELETE", "/kv/a"));
        assert_eq!(
            Template::handle_http(HttpRequest::new("GET", "/kv/a")).status,
            404
        );
    }

    #[test]
    fn init_rejects_unknown_keys_with_a_reason() {
        let _host = host();
        let e = Template::init(vec![("greting".into(), "x".into())]).unwrap_err();
        assert!(e.contains("greting"), "{e}");
        assert!(Template::init(vec![("greeting".into(), "yo".into())]).is_ok());
    }

    #[test]
    fn echo_hash_proof_verifies_and_a_forged_one_does_not() {
        let _host = host();
        let c = Challenge {
            id: "c1".into(),
            kind: "echo-hash".into(),
            nonce: vec![1, 2],
            params: vec![3],
        };
        let p = Template::prove(c.clone()).unwrap();
        assert!(Template::verify(c.clone(), p.clone()));
        let forged = Proof {
            payload: vec![0; 32],
            ..p
        };
        assert!(!Template::verify(c, forged));
    }
}
