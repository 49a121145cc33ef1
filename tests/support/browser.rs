//! A real headless Chromium driven over WebDriver (chromedriver's HTTP
//! API): Debian's `chromium` and `chromium-driver`, each run with a fresh
//! profile directory, on loopback only, stopped when dropped.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::HttpClient;

/// The WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_binary(candidates: &[&str]) -> String {
    for c in candidates {
        if std::path::Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!(
        "none of {candidates:?} exists: install Debian's chromium and chromium-driver (.ci/run does)"
    );
}

/// One chromedriver process with one browser session.
pub struct Browser {
    driver: Child,
    http: HttpClient,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of
    /// `width` x `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Self {
        let driver_bin = find_binary(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = find_binary(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let http = HttpClient::new(addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.send("GET", "/status", "").await
                && serde_json::from_slice::<Value>(&r.body)
                    .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let mut this = Self {
            driver,
            http,
            session: String::new(),
            _profile: profile,
        };
        let v = this.command("POST", "/session", caps).await;
        this.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        this
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" {
            String::new()
        } else {
            body.to_string()
        };
        let r = self
            .http
            .send_with_headers(
                method,
                path,
                &[("content-type".into(), "application/json".into())],
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {}", r.text()));
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    /// Loads `url` and waits for the page.
    pub async fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url })).await;
    }

    /// The current page's URL.
    pub async fn url(&self) -> String {
        self.session("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Ids of the elements matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .session(
                "POST",
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The one element matching `css`; panics when there is none.
    /// Waits up to five seconds for it (a page may still be loading
    /// after a click).
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "no element `{css}` on {}:\n{}",
                    self.url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current page's HTML as the browser has it.
    pub async fn source(&self) -> String {
        self.session("GET", "/source", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rendered text of an element.
    pub async fn text(&self, element: &str) -> String {
        self.session("GET", &format!("/element/{element}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The value of an element's attribute.
    pub async fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.session(
            "GET",
            &format!("/element/{element}/attribute/{name}"),
            Value::Null,
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    /// Types `text` into an input.
    pub async fn type_into(&self, element: &str, text: &str) {
        self.session(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Clicks an element (a submit button submits its form).
    pub async fn click(&self, element: &str) {
        self.session("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// The cookies the browser holds for the current page.
    pub async fn cookies(&self) -> Vec<Value> {
        self.session("GET", "/cookie", Value::Null)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Sets the window size in CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        self.session(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// A PNG of the visible part of the page.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.session("GET", "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .expect("base64 PNG")
    }

    /// The page's scroll height in CSS pixels.
    pub async fn page_height(&self) -> u32 {
        self.session(
            "POST",
            "/execute/sync",
            json!({ "script": "return document.documentElement.scrollHeight", "args": [] }),
        )
        .await
        .as_u64()
        .unwrap_or(0) as u32
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; then the driver goes.
        let http = self.http.clone();
        let path = format!("/session/{}", self.session);
        let ended = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
                .map(|rt| rt.block_on(http.send("DELETE", &path, "")))
        })
        .join();
        drop(ended);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
