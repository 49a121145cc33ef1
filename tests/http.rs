//! The HTTP path end to end: a real client, the template plugin, the ledger.

use depin_e2e::{Home, HttpClient, PluginSpec, plugin, run_cli};
use depin_gateway::RunningGateway;
use depin_gateway::ledger::{LedgerReader, Source};
use depin_gateway::runtime::CacheOutcome;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

fn template(name: &'static str, route: &'static str) -> PluginSpec {
    PluginSpec::new(name, plugin("template_plugin"), route).config("greeting = \"hi\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_plugin_answers_and_every_call_is_in_the_ledger() {
    let home = Home::new(&[template("template", "/t")], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);

    let hello = http.get("/t/hello?name=ada").await;
    assert_eq!((hello.status, hello.text().as_str()), (200, "hi, ada"));
    assert_eq!(hello.request_id().len(), 20);
    let echo = http.post("/t/echo", b"payload").await;
    assert_eq!(echo.body.as_ref(), b"payload");
    for expected in 1..=3 {
        let c = http.post("/t/counter", b"").await;
        assert_eq!(c.text(), format!("{{\"count\":{expected}}}"));
    }
    let missing = http.get("/nowhere").await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains(&missing.request_id()),
        "{}",
        missing.text()
    );
    gw.shutdown().await;

    let data = home.data_dir();
    let data = data.to_str().unwrap();
    let (code, out, err) = run_cli(BIN, &["ledger", "verify", "--data-dir", data]);
    assert_eq!(code, 0, "{err}");
    // 5 calls x 4 host records + 5 `requests` + 1 `bytes-echoed`.
    assert_eq!(out.trim(), "ok, 26 records");

    let (code, out, err) = run_cli(BIN, &["ledger", "summary", "--json", "--data-dir", data]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let find = |source: &str, unit: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["source"] == source && r["unit"] == unit)
            .unwrap_or_else(|| panic!("no {source}/{unit} in {out}"))
            .clone()
    };
    assert_eq!(find("plugin", "requests")["quantity"], "5");
    assert_eq!(find("plugin", "bytes-echoed")["quantity"], "7");
    assert_eq!(find("host", "bytes-in")["records"], 5);
    assert_eq!(find("host", "bytes-out")["records"], 5);
    assert_eq!(find("host", "fuel")["records"], 5);
    assert_eq!(find("host", "wall-time-us")["records"], 5);
    assert_ne!(find("host", "fuel")["quantity"], "0");

    let (code, out, _) = run_cli(BIN, &["ledger", "summary", "--data-dir", data]);
    assert_eq!(code, 0);
    assert!(out.starts_with("PLUGIN"), "{out}");
    assert!(out.contains("bytes-echoed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_records_name_the_request_they_measured() {
    let home = Home::new(&[template("template", "/t")], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let reply = HttpClient::new(gw.http_addr)
        .post("/t/echo", b"12345")
        .await;
    gw.shutdown().await;
    let reader = LedgerReader::open(&home.data_dir()).unwrap();
    let mut host = Vec::new();
    reader
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            if r.source == Source::Host {
                host.push(r);
            }
            true
        })
        .unwrap();
    assert_eq!(host.len(), 4);
    assert!(
        host.iter()
            .all(|r| r.subject.as_deref() == Some(reply.request_id().as_str()))
    );
    let bytes_in = host.iter().find(|r| r.unit == "bytes-in").unwrap();
    assert!(
        bytes_in.quantity >= 5,
        "body bytes are counted: {bytes_in:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_cannot_see_each_others_keys() {
    let home = Home::new(&[template("alpha", "/a"), template("beta", "/b")], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let put = http.send("PUT", "/a/kv/secret", "mine").await.unwrap();
    assert_eq!(put.status, 204);
    assert_eq!(http.get("/a/kv/secret").await.text(), "mine");
    assert_eq!(http.get("/b/kv/secret").await.status, 404);
    assert_eq!(http.get("/b/kv").await.text(), "[]");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_route_prefix_wins_and_prefixes_match_whole_segments() {
    let home = Home::new(&[template("root", "/"), template("deep", "/x/y")], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    http.send("PUT", "/x/y/kv/k", "deep").await.unwrap();
    http.send("PUT", "/kv/k", "root").await.unwrap();
    assert_eq!(http.get("/x/y/kv/k").await.text(), "deep");
    assert_eq!(http.get("/kv/k").await.text(), "root");
    // `/x/yz` is not under `/x/y`: it goes to the root plugin, which has no such route.
    let r = http.get("/x/yz/hello").await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("no route for GET /x/yz/hello"),
        "{}",
        r.text()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_have_no_effect() {
    let home = Home::new(
        &[template("template", "/t")],
        "[http]\nmax_body_bytes = 1024\n",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let big = vec![b'x'; 4096];
    let r = http.send("PUT", "/t/kv/big", big).await.unwrap();
    assert_eq!(r.status, 413);
    assert!(r.text().contains("1024"), "{}", r.text());
    assert_eq!(http.get("/t/kv/big").await.status, 404);
    let ok = http
        .send("PUT", "/t/kv/small", vec![b'x'; 1024])
        .await
        .unwrap();
    assert_eq!(ok.status, 204);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_uses_the_compile_cache() {
    let home = Home::new(&[template("template", "/t")], "");
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("first start");
    assert_eq!(gw.plugins[0].cache, CacheOutcome::Compiled);
    gw.shutdown().await;
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("second start");
    assert_eq!(gw.plugins[0].cache, CacheOutcome::Hit);
    assert_eq!(
        HttpClient::new(gw.http_addr).get("/t/hello").await.status,
        200
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_survives_a_restart() {
    let home = Home::new(&[template("template", "/t")], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    HttpClient::new(gw.http_addr).post("/t/counter", b"").await;
    gw.shutdown().await;
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("restart");
    let c = HttpClient::new(gw.http_addr).post("/t/counter", b"").await;
    assert_eq!(c.text(), "{\"count\":2}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tick_is_called_on_its_interval_and_its_writes_are_kept() {
    let home = Home::new(
        &[template("template", "/t").table("tick_interval_ms = 50")],
        "",
    );
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let http = HttpClient::new(gw.http_addr);
    let mut ticks = 0;
    for _ in 0..100 {
        let v: serde_json::Value =
            serde_json::from_slice(&http.get("/t/ticks").await.body).unwrap();
        ticks = v["ticks"].as_u64().unwrap();
        if ticks >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ticks >= 3, "ticked {ticks} times");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_get_431() {
    let home = Home::new(&[template("template", "/t")], "[http]\nmax_headers = 8\n");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let mut stream = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
    let mut req = String::from("GET /t/hello HTTP/1.1\r\nhost: x\r\n");
    for i in 0..20 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    assert_eq!(
        HttpClient::new(gw.http_addr).get("/t/hello").await.status,
        200
    );
    gw.shutdown().await;
}
