//! Plugin authors' tools: the scaffold (`plugin new`), the script harness
//! (`plugin test`), and the Python plugin built with componentize-py,
//! checked call for call against the Rust template.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use depin_e2e::{Home, HttpClient, PluginSpec, plugin, run_cli, workspace};
use depin_gateway::RunningGateway;
use depin_gateway::runtime::CONTRACT;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

/// Builds the Python plugin with componentize-py (from `target/py-tools`,
/// where `.ci/run` installs it, or from `PATH`) against the contract in
/// `wit`, as `make plugins` does.
fn componentize(wit: &Path, out: &Path) {
    let local = workspace().join("target/py-tools/bin/componentize-py");
    let tool = if local.exists() {
        local
    } else {
        PathBuf::from("componentize-py")
    };
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let status = Command::new(&tool)
        .current_dir(python_dir())
        .arg("-d")
        .arg(wit)
        .args(["-w", "resource-plugin", "componentize", "app", "-o"])
        .arg(out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (install it: python3 -m venv target/py-tools && \
                 target/py-tools/bin/pip install componentize-py)",
                tool.display()
            )
        });
    assert!(status.success(), "componentize-py failed");
}

/// The Python plugin's component, built once per test process.
fn python_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace();
            let out = root.join("target/wasm32-wasip2/plugin/python_counter.wasm");
            componentize(&root.join("wit"), &out);
            out
        })
        .clone()
}

fn python_dir() -> PathBuf {
    workspace().join("plugins/python-counter")
}

/// `plugin test FILE` with the Python plugin's configuration, `script`
/// and `more` arguments: (exit code, stdout, stderr).
fn plugin_test(component: &Path, script: &Path, more: &[&str]) -> (i32, String, String) {
    let config = python_dir().join("tests/plugin.toml");
    let mut args = vec![
        "plugin",
        "test",
        component.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    run_cli(BIN, &args)
}

/// `plugin test FILE --json`: (exit code, the report, stderr).
fn plugin_test_json(component: &Path, script: &Path) -> (i32, Value, String) {
    let (code, out, err) = plugin_test(component, script, &["--json"]);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, report, err)
}

/// What a step came to, without what legitimately differs between two
/// components (host-measured wall time, fuel and bytes, the request ids).
fn comparable(step: &Value) -> Value {
    let mut s = step.clone();
    let claims: Vec<Value> = step["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "plugin")
        .map(|r| {
            serde_json::json!({
                "unit": r["unit"], "quantity": r["quantity"],
                "subject": r["subject"], "evidence": r["evidence"],
            })
        })
        .collect();
    s["usage"] = Value::Array(claims);
    s
}

#[test]
fn the_python_plugin_answers_meters_and_proves_like_the_rust_template() {
    let script = python_dir().join("tests/calls.toml");
    let (code, python, err) = plugin_test_json(&python_plugin(), &script);
    assert_eq!(code, 0, "{python:#}\n{err}");
    let (code, rust, err) = plugin_test_json(&plugin("template_plugin"), &script);
    assert_eq!(code, 0, "{rust:#}\n{err}");
    let (python, rust) = (
        python["steps"].as_array().unwrap(),
        rust["steps"].as_array().unwrap(),
    );
    assert_eq!(python.len(), 15);
    for (p, r) in python.iter().zip(rust) {
        assert_eq!(comparable(p), comparable(r), "{}", p["call"]);
    }
    // The proofs are the same bytes, and each plugin's claims carry the
    // same evidence (the sha256 of the echoed body).
    let echo = &python[1]["usage"];
    let evidence = echo
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["unit"] == "bytes-echoed")
        .map(|r| r["evidence"].clone());
    assert_eq!(
        evidence,
        Some(Value::String(hex::encode(
            <sha2::Sha256 as sha2::Digest>::digest(b"abc")
        )))
    );
    assert!(python[13]["proof_hex"].is_string());
}

#[test]
fn the_python_component_fits_the_contract_and_imports_only_what_rust_plugins_may() {
    let (code, out, err) = run_cli(
        BIN,
        &[
            "plugin",
            "inspect",
            python_plugin().to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["fits"], true, "{v:#}");
    assert_eq!(v["describe"]["name"], "python-counter");
    // Every import is the contract or WASI, served by the same linker and
    // the same deny-all WASI context as every Rust plugin.
    for import in v["imports"].as_array().unwrap() {
        let i = import.as_str().unwrap();
        assert!(
            i.starts_with("depin:plugin/") || i.starts_with("wasi:"),
            "{i}"
        );
    }
}

/// The Python plugin built against a copy of wit/ whose version is
/// `version`, with `kv` given one more function when `extra` is set.
fn python_plugin_against(dir: &Path, version: &str, extra_kv: Option<&str>) -> PathBuf {
    let wit = dir.join(format!("wit-{version}"));
    std::fs::create_dir_all(&wit).unwrap();
    for entry in std::fs::read_dir(workspace().join("wit")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replace(
            &format!("package {CONTRACT};"),
            &format!("package depin:plugin@{version};"),
        );
        if let (Some(f), Some("kv.wit")) = (extra_kv, path.file_name().and_then(|n| n.to_str())) {
            text = text.replace(
                "    /// Remove `key`;",
                &format!("    {f}\n    /// Remove `key`;"),
            );
        }
        std::fs::write(wit.join(path.file_name().unwrap()), text).unwrap();
    }
    let out = dir.join(format!("python-{version}.wasm"));
    componentize(&wit, &out);
    out
}

#[test]
fn inspect_explains_a_python_plugin_built_against_another_contract() {
    let dir = tempfile::tempdir().unwrap();
    let inspect = |file: &Path| {
        let (code, out, err) = run_cli(BIN, &["plugin", "inspect", file.to_str().unwrap()]);
        (code, format!("{out}{err}"))
    };
    // This gateway's version, 0.1.N, and the next one.
    let ours = CONTRACT.rsplit_once('@').unwrap().1;
    let patch: u32 = ours.rsplit_once('.').unwrap().1.parse().unwrap();
    let newer = format!("0.1.{}", patch + 1);
    // Newer, using a function this gateway lacks.
    let extra = "tally: func(key: string, delta: s64) -> result<s64, kv-error>;";
    let (code, out) = inspect(&python_plugin_against(dir.path(), &newer, Some(extra)));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "uses `kv.tally`, which comes from depin:plugin@{newer}, newer than this gateway's {CONTRACT}"
        )),
        "{out}"
    );
    assert!(out.contains("To change: upgrade the gateway"), "{out}");
    assert!(
        out.contains(&format!(
            "built:    against depin:plugin@{newer} (newer than {ours}"
        )),
        "{out}"
    );
    // Older: still fits, and says so.
    let (code, out) = inspect(&python_plugin_against(dir.path(), "0.1.0", None));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("older than {ours}; 0.1.x plugins keep loading")),
        "{out}"
    );
    // Another contract altogether.
    let (code, out) = inspect(&python_plugin_against(dir.path(), "0.2.0", None));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "built against depin:plugin@0.2.0, this gateway speaks {CONTRACT}. To change: rebuild"
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_plugin_keeps_kv_across_calls_in_a_gateway_like_the_template() {
    let python = PluginSpec::new("py", python_plugin(), "/py").config("greeting = \"hi\"");
    let rust = PluginSpec::new("rs", plugin("template_plugin"), "/rs").config("greeting = \"hi\"");
    let home = Home::new(&[python, rust], "");
    let gateway = RunningGateway::start(&home.config()).await.expect("start");
    let client = HttpClient::new(gateway.http_addr);
    for n in 1..=3 {
        for prefix in ["/py", "/rs"] {
            let r = client.post(&format!("{prefix}/counter"), b"").await;
            assert_eq!(r.text(), format!("{{\"count\":{n}}}"), "{prefix}");
        }
    }
    gateway.shutdown().await;
    // Both plugins' counters are durable, under their own names.
    let restarted = RunningGateway::start(&home.config())
        .await
        .expect("restart");
    let client = HttpClient::new(restarted.http_addr);
    for prefix in ["/py", "/rs"] {
        let r = client.post(&format!("{prefix}/counter"), b"").await;
        assert_eq!(r.text(), "{\"count\":4}", "{prefix}");
    }
    restarted.shutdown().await;
}

#[test]
fn plugin_test_fails_on_unmet_expectations_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("calls.toml");
    std::fs::write(
        &script,
        r#"
[[step]]
http = { method = "POST", path = "/echo", body = "abc" }
expect = { status = 200, usage = { bytes-echoed = 3 } }

[[step]]
http = { method = "POST", path = "/echo", body = "abcd" }
expect = { status = 201, usage = { bytes-echoed = 3 } }

[[step]]
challenge = { kind = "echo-hash", nonce_hex = "01" }
expect = { proved = false }
"#,
    )
    .unwrap();
    let (code, out, err) = plugin_test(&plugin("template_plugin"), &script, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("step 1: http POST /counter/echo ... ok"),
        "{out}"
    );
    assert!(out.contains("expected: status 201; got Some(200)"), "{out}");
    assert!(
        out.contains("expected: 3 bytes-echoed metered; got 4"),
        "{out}"
    );
    assert!(out.contains("expected: proved = false; got true"), "{out}");
    assert!(out.contains("result: FAILED. 2 of 3 steps"), "{out}");
    // The usage records of each step are printed, host and plugin.
    assert!(out.contains("usage:    plugin bytes-echoed"), "{out}");
    assert!(out.contains("usage:    host   bytes-in"), "{out}");
}

#[test]
fn plugin_test_refuses_a_step_with_two_calls() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("calls.toml");
    std::fs::write(
        &script,
        "[[step]]\nhttp = { path = \"/\" }\nmessage = { topic = \"t\" }\n",
    )
    .unwrap();
    let (code, _, err) = plugin_test(&plugin("template_plugin"), &script, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("step 1: give exactly one of"), "{err}");
}

#[test]
fn outside_a_checkout_the_scaffold_depends_on_the_sdk_by_version() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("meter");
    let (code, out, err) = run_cli(
        BIN,
        &["plugin", "new", "meter", "--dir", at.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let manifest = std::fs::read_to_string(at.join("Cargo.toml")).unwrap();
    let version = format!("depin-plugin-sdk = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(manifest.contains(&version), "{manifest}");
    assert!(!at.join("Cargo.lock").exists());
    let lib = std::fs::read_to_string(at.join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("ResourceKind::Other") && lib.contains("pub struct Meter;"),
        "{lib}"
    );
    // A name that is not a crate name is refused, and so is an existing directory.
    let (code, _, err) = run_cli(BIN, &["plugin", "new", "Bad_Name"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a plugin name"), "{err}");
    let (code, _, err) = run_cli(
        BIN,
        &["plugin", "new", "meter", "--dir", at.to_str().unwrap()],
    );
    assert_eq!(code, 1);
    assert!(err.contains("exists already"), "{err}");
}

/// Generates a plugin with the scaffold, builds it for wasm32-wasip2 with
/// the one command its README gives, runs its tests as generated (native
/// and end to end), then serves it from a gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_plugin_builds_passes_its_tests_and_serves_in_a_gateway() {
    let root = workspace();
    // Inside the checkout, so the crate uses this SDK by path; its build
    // directory is kept between runs.
    let parent = tempfile::tempdir_in(root.join("target")).unwrap();
    let dir = parent.path().join("air-echo");
    let (code, out, err) = run_cli(
        BIN,
        &[
            "plugin",
            "new",
            "air-echo",
            "--kind",
            "sensor-aggregator",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("SDK:  by path"), "{out}");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("depin-plugin-sdk = { path = \""),
        "{manifest}"
    );
    let target_dir = root.join("target/scaffolded");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(&cargo)
        .current_dir(&dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .unwrap();
    assert!(build.success());
    let test = Command::new(&cargo)
        .current_dir(&dir)
        .arg("test")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("DEPIN_GATEWAY", BIN)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(report.contains("test result: ok. 4 passed"), "{report}");
    assert!(
        report.contains("test the_script_passes_in_a_real_gateway ... ok"),
        "{report}"
    );

    let component = target_dir.join("wasm32-wasip2/release/air_echo.wasm");
    let home = Home::new(&[PluginSpec::new("air", component, "/air")], "");
    let gateway = RunningGateway::start(&home.config()).await.expect("start");
    assert_eq!(gateway.plugins[0].info.name, "air-echo");
    let client = HttpClient::new(gateway.http_addr);
    let echoed = client.post("/air/echo", b"hello gateway").await;
    assert_eq!(
        (echoed.status, echoed.text().as_str()),
        (200, "hello gateway")
    );
    assert_eq!(client.get("/air/echoes").await.text(), "{\"echoes\":1}");
    gateway.shutdown().await;
}
