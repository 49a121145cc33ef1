//! The operator's console in a real headless Chromium, against a running
//! gateway with traffic; its sign-in, CSRF and DNS-rebinding guards; the
//! self-checks.

use std::time::{Duration, Instant};

use depin_e2e::browser::Browser;
use depin_e2e::ops::{AdminClient, parse_prometheus};
use depin_e2e::{Home, HttpClient, PluginSpec, Reply, plugin};
use depin_gateway::RunningGateway;

const TOKEN: &str = "console-admin-token";

const POLICY: &str = "[[rate]]\nkind = \"other\"\nunit = \"requests\"\nmicro = 250\n";

/// A home with two plugins (a template at `/t`, one with broken proofs at
/// `/b`), one-second epochs with a policy, self-checks of both every
/// `check_ms`, and an admin listener (with a token file when `token`).
fn console_home(names: [&'static str; 2], check_ms: u64, token: bool) -> Home {
    let [good, broken] = names;
    let plugins = [
        PluginSpec::new(good, plugin("template_plugin"), "/t").config("greeting = \"hello\""),
        PluginSpec::new(broken, plugin("broken_proofs_plugin"), "/b"),
    ];
    let extra = format!(
        "[epochs]\nlength_ms = 1000\nclose_delay_ms = 100\npolicy = \"rewards.toml\"\n\
         [self_check]\ninterval_ms = {check_ms}\n\
         [[self_check.possession]]\nplugin = \"{good}\"\nkind = \"echo-hash\"\nparams = \"0102\"\n\
         [[self_check.possession]]\nplugin = \"{broken}\"\nkind = \"echo-hash\"\nparams = \"0102\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{}",
        if token {
            "token_file = \"admin.token\"\n"
        } else {
            ""
        }
    );
    let home = Home::new(&plugins, &extra);
    std::fs::write(home.dir.path().join("rewards.toml"), POLICY).unwrap();
    std::fs::write(home.dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    home
}

async fn traffic(http: &HttpClient) {
    for i in 0..30 {
        let r = http.get(&format!("/t/hello?name=n{i}")).await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..4 {
        assert_eq!(http.get("/t/missing").await.status, 404);
    }
    for _ in 0..10 {
        assert_eq!(http.get("/b/ok").await.status, 200);
    }
}

/// Waits until every epoch up to now has closed (the
/// `depin_epoch_last_closed_end_seconds` gauge has passed this moment).
async fn wait_for_epochs_to_close(admin: &AdminClient) {
    let now_s = depin_protocol::time::now_ms() / 1000;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = admin.send("GET", "/metrics", Some(TOKEN)).await;
        let end = parse_prometheus(&m.text())
            .into_iter()
            .find(|(k, _)| k == "depin_epoch_last_closed_end_seconds")
            .map_or(0.0, |(_, v)| v);
        if end as u64 > now_s {
            return;
        }
        assert!(Instant::now() < deadline, "no epoch closed: {}", m.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `method path` on the admin listener with extra headers and a form body.
async fn admin_form(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Reply {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain([(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )])
        .collect();
    HttpClient::new(addr)
        .send_with_headers(method, path, &headers, body.to_string())
        .await
        .expect("admin request")
}

/// Where the test saves its screenshots: `target/screenshots/`, or the
/// ones the operator docs show (`docs/operators/`) when
/// `UPDATE_SCREENSHOTS=1`, so an ordinary test run leaves the checkout as
/// it found it.
fn screenshot_path(name: &str) -> std::path::PathBuf {
    let root = depin_e2e::workspace();
    let dir = if std::env::var_os("UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        root.join("docs/operators")
    } else {
        root.join("target/screenshots")
    };
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir.join(name)
}

async fn save_full_page(browser: &Browser, width: u32, name: &str) {
    browser.resize(width, 900).await;
    let height = browser.page_height().await.clamp(600, 6000);
    browser.resize(width, height + 160).await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(screenshot_path(name), png).expect("write screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_plugins_usage_and_epochs_to_a_signed_in_browser_only() {
    let home = console_home(["console-t", "console-broken"], 1000, true);
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    let admin_addr = gw.admin_addr.expect("admin listener");
    let http = HttpClient::new(gw.http_addr);
    let anonymous = AdminClient::new(admin_addr);
    // Traffic over two epochs or more, all of it closed, so the table and
    // the chart have rows.
    traffic(&http).await;
    wait_for_epochs_to_close(&anonymous).await;
    traffic(&http).await;
    wait_for_epochs_to_close(&anonymous).await;

    // Without the token only the login form is served.
    let r = anonymous.send("GET", "/ui", None).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/ui/login");
    let r = anonymous.send("GET", "/ui/login", None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("id=\"login\""), "{}", r.text());
    assert!(!r.text().contains("console-t"), "{}", r.text());
    let r = admin_form(admin_addr, "POST", "/ui/reload", &[], "csrf=x").await;
    assert_eq!(
        (r.status, &r.headers["location"]),
        (303, &"/ui/login".parse().unwrap())
    );
    assert_eq!(anonymous.send("GET", "/ui/nothing", None).await.status, 404);

    let base = format!("http://{admin_addr}");
    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{base}/ui")).await;
    browser.find("#login").await;
    assert!(browser.find_all("#plugins").await.is_empty());

    // A wrong token: the form again, with the error.
    let input = browser.find("#token").await;
    browser.type_into(&input, "not-the-token").await;
    browser.click(&browser.find("#sign-in").await).await;
    let error = browser.find("#login-error").await;
    assert_eq!(browser.text(&error).await, "Wrong token.");
    assert!(browser.find_all("#plugins").await.is_empty());
    assert!(browser.cookies().await.is_empty());

    // The right token: the console, and an HttpOnly, SameSite cookie.
    let input = browser.find("#token").await;
    browser.type_into(&input, TOKEN).await;
    browser.click(&browser.find("#sign-in").await).await;
    // A click can return before the navigation it starts has committed:
    // wait for the console itself, then look at where the browser is.
    browser.find("#plugins").await;
    assert!(
        browser.url().await.ends_with("/ui"),
        "{}",
        browser.url().await
    );
    let cookies = browser.cookies().await;
    let cookie = cookies
        .iter()
        .find(|c| c["name"] == "depin_console")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    let session = cookie["value"].as_str().unwrap().to_string();

    // The rendered DOM: plugin names, a chart, the epochs table.
    let rows = browser.find_all("#plugins tr.plugin").await;
    let mut names = Vec::new();
    for r in &rows {
        names.push(
            browser
                .attribute(r, "data-plugin")
                .await
                .unwrap_or_default(),
        );
    }
    assert_eq!(names, ["console-t", "console-broken"]);
    let plugins_text = browser.text(&browser.find("#plugins").await).await;
    assert!(plugins_text.contains("sha256:"), "{plugins_text}");
    assert!(plugins_text.contains("HTTP /t"), "{plugins_text}");
    let charts = browser.find_all("#usage svg.chart").await;
    assert!(!charts.is_empty(), "no usage chart");
    let bars = browser.find_all("#usage svg.chart rect.bar").await;
    assert!(!bars.is_empty(), "a chart without bars");
    let usage_text = browser.text(&browser.find("#usage").await).await;
    assert!(
        usage_text.contains("console-t · requests (plugin)"),
        "{usage_text}"
    );
    let epochs = browser.find_all("#epochs-table tr.epoch").await;
    assert!(!epochs.is_empty(), "no epoch rows");
    let mut estimates = Vec::new();
    for e in &epochs {
        let text = browser.text(e).await;
        assert!(text.contains("local"), "{text}");
        assert!(text.contains("no collector configured"), "{text}");
        estimates.push(text);
    }
    // 250 micro per request: some epoch carries a non-zero estimate.
    assert!(
        estimates
            .iter()
            .any(|t| t.split_whitespace().nth(4).is_some_and(|r| r != "0")),
        "{estimates:?}"
    );
    // The self-checks have run at start: the broken plugin is flagged.
    let failing = browser
        .find_all("#self-check-table tr.failing[data-plugin=\"console-broken\"]")
        .await;
    assert_eq!(failing.len(), 1, "the broken plugin is not flagged");
    let passing = browser
        .find_all("#self-check-table tr.passing[data-plugin=\"console-t\"]")
        .await;
    assert_eq!(passing.len(), 1, "the template's self-check does not pass");
    let storage = browser.text(&browser.find("#storage").await).await;
    assert!(storage.contains("free"), "{storage}");

    save_full_page(&browser, 1280, "console-desktop.png").await;
    save_full_page(&browser, 390, "console-phone.png").await;
    browser.resize(1280, 900).await;

    // CSRF: the session cookie alone does not reload; nor does a foreign
    // origin with the right token.
    let source_csrf = {
        let input = browser
            .find("form[action=\"/ui/reload\"] input[name=\"csrf\"]")
            .await;
        browser
            .attribute(&input, "value")
            .await
            .expect("csrf value")
    };
    let cookie_header = ("cookie", format!("depin_console={session}"));
    let r = admin_form(
        admin_addr,
        "POST",
        "/ui/reload",
        std::slice::from_ref(&cookie_header),
        "csrf=forged",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = admin_form(
        admin_addr,
        "POST",
        "/ui/reload",
        &[
            cookie_header.clone(),
            ("origin", "http://evil.example".into()),
        ],
        &format!("csrf={source_csrf}"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(gw.table().snapshot().generation, 1);

    // The page's own button reloads.
    browser.click(&browser.find("#reload").await).await;
    // The answer is a new page: read the result from it once it is there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let last = loop {
        let last = match browser.find_all("#last-reload").await.first() {
            Some(e) => browser.text(e).await,
            None => String::new(),
        };
        if last.contains("generation 2") || Instant::now() > deadline {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        last.contains("ok") && last.contains("generation 2"),
        "{last}"
    );
    assert_eq!(gw.table().snapshot().generation, 2);

    // Sign out: the login form again, and the old session is dead.
    browser.click(&browser.find("#logout").await).await;
    browser.find("#login").await;
    browser.goto(&format!("{base}/ui")).await;
    browser.find("#login").await;
    let r = admin_form(admin_addr, "GET", "/ui", &[cookie_header], "").await;
    assert_eq!(r.status, 303);
    drop(browser);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_foreign_host_names_and_changes_without_a_configured_token() {
    // No token file: loopback reads work, changes do not.
    let home = console_home(["open-t", "open-broken"], 60_000, false);
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    let addr = gw.admin_addr.expect("admin listener");
    let admin = AdminClient::new(addr);
    assert_eq!(admin.send("GET", "/v1/status", None).await.status, 200);
    let r = admin.send("POST", "/v1/plugins/reload", None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("admin.token_file"), "{}", r.text());
    let page = admin.send("GET", "/ui", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("id=\"reload\" disabled"),
        "{}",
        page.text()
    );
    let r = admin_form(addr, "POST", "/ui/reload", &[], "csrf=x").await;
    assert_eq!(r.status, 403);
    assert_eq!(gw.table().snapshot().generation, 1);

    // DNS rebinding: a Host that is not this listener is refused, on every
    // endpoint; its own address and localhost are served.
    for path in ["/healthz", "/v1/status", "/metrics", "/ui"] {
        let r = admin_form(addr, "GET", path, &[("host", "evil.example".into())], "").await;
        assert_eq!(r.status, 403, "{path}");
        let r = admin_form(
            addr,
            "GET",
            path,
            &[("host", format!("evil.example:{}", addr.port()))],
            "",
        )
        .await;
        assert_eq!(r.status, 403, "{path}");
    }
    let r = admin_form(
        addr,
        "GET",
        "/healthz",
        &[("host", format!("localhost:{}", addr.port()))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = admin_form(
        addr,
        "GET",
        "/healthz",
        &[("host", "localhost:1".into())],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_with_broken_proofs_is_flagged_within_one_self_check_interval() {
    const INTERVAL_MS: u64 = 3000;
    let home = console_home(["sc-good", "sc-broken"], INTERVAL_MS, true);
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    // The first round runs as soon as the gateway serves; it must flag the
    // broken plugin before one interval has passed.
    let serving = Instant::now();
    let admin = AdminClient::new(gw.admin_addr.expect("admin listener"));
    let failures = "depin_self_check_failures_total{plugin=\"sc-broken\",kind=\"echo-hash\"}";
    let good = "depin_self_check_failures_total{plugin=\"sc-good\",kind=\"echo-hash\"}";
    let runs = "depin_self_checks_total{plugin=\"sc-good\",kind=\"echo-hash\"}";
    loop {
        let m = admin.send("GET", "/metrics", Some(TOKEN)).await;
        let samples = parse_prometheus(&m.text());
        let value = |s: &str| samples.iter().find(|(k, _)| k == s).map(|(_, v)| *v);
        if value(failures).is_some_and(|v| v >= 1.0) && value(runs).is_some_and(|v| v >= 1.0) {
            assert_eq!(value(good), Some(0.0), "{}", m.text());
            assert!(
                m.text().contains(
                    "depin_self_check_failing{plugin=\"sc-broken\",kind=\"echo-hash\"} 1"
                ),
                "{}",
                m.text()
            );
            break;
        }
        assert!(
            serving.elapsed() < Duration::from_millis(INTERVAL_MS),
            "not flagged within one interval: {}",
            m.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.shutdown().await;
}
