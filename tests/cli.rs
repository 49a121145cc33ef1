//! The command line: keys, configuration errors, inspection.

use std::os::unix::fs::PermissionsExt;

use depin_e2e::{Home, PluginSpec, plugin, run_cli};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

fn run_with(home: &Home) -> (i32, String, String) {
    run_cli(
        BIN,
        &["run", "--config", home.config_path.to_str().unwrap()],
    )
}

#[test]
fn keygen_writes_a_private_key_and_prints_the_gateway_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/device.key");
    let (code, out, err) = run_cli(BIN, &["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.trim().starts_with("dpg1") && out.trim().len() == 68,
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, _, err) = run_cli(BIN, &["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let (code, _, err) = run_cli(BIN, &["run", "--config", "/nonexistent/gateway.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/gateway.toml"), "{err}");
    assert!(err.contains("cannot read the configuration file"), "{err}");
}

#[test]
fn bad_toml_names_the_file_and_the_line() {
    let home = Home::new(&[], "");
    std::fs::write(&home.config_path, "listen = \"127.0.0.1:0\"\n[http\n").unwrap();
    let (code, _, err) = run_with(&home);
    assert_eq!(code, 1);
    assert!(err.contains("gateway.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn unknown_key_names_the_file_and_the_key() {
    let home = Home::new(&[], "");
    let text = std::fs::read_to_string(&home.config_path).unwrap();
    std::fs::write(&home.config_path, format!("{text}\n[http]\nmax_body = 5\n")).unwrap();
    let (code, _, err) = run_with(&home);
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml: key `http.max_body`: unknown field `max_body`"),
        "{err}"
    );
}

#[test]
fn world_readable_key_is_refused() {
    let home = Home::new(&[], "");
    home.make_key_world_readable();
    let (code, _, err) = run_with(&home);
    assert_eq!(code, 1);
    assert!(err.contains("device.key"), "{err}");
    assert!(
        err.contains("readable or writable by group or others"),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn missing_key_says_how_to_make_one() {
    let home = Home::new(&[], "");
    std::fs::remove_file(home.key_path()).unwrap();
    let (code, _, err) = run_with(&home);
    assert_eq!(code, 1);
    assert!(
        err.contains("no device key") && err.contains("depin-gateway keygen --config"),
        "{err}"
    );
}

#[test]
fn missing_component_file_is_named_with_its_plugin() {
    let home = Home::new(
        &[PluginSpec::new(
            "ghost",
            "/nonexistent/ghost.wasm".into(),
            "/g",
        )],
        "",
    );
    let (code, _, err) = run_with(&home);
    assert_eq!(code, 1);
    assert!(
        err.contains("plugin `ghost` (/nonexistent/ghost.wasm): cannot read the component"),
        "{err}"
    );
}

#[test]
fn ledger_commands_refuse_a_missing_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(
        BIN,
        &[
            "ledger",
            "verify",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no ledger here"), "{err}");
}

#[test]
fn plugin_inspect_shows_describe_and_the_contract_fit() {
    let template = plugin("template_plugin");
    let (code, out, err) = run_cli(BIN, &["plugin", "inspect", template.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("contract: fits depin:plugin@0.1.4"), "{out}");
    assert!(out.contains("plugin:   template"), "{out}");
    assert!(out.contains("requests"), "{out}");
    assert!(out.contains("depin:plugin/kv@0.1.4"), "{out}");

    let other = plugin("other_world_plugin");
    let (code, out, _) = run_cli(
        BIN,
        &["plugin", "inspect", "--json", other.to_str().unwrap()],
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["fits"], false);
    assert!(
        v["problem"].as_str().unwrap().contains("missing exports"),
        "{out}"
    );
    assert!(
        v["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "greet"),
        "{out}"
    );
}

#[test]
fn help_lists_every_command() {
    let (code, out, _) = run_cli(BIN, &["--help"]);
    assert_eq!(code, 0);
    for cmd in ["run", "keygen", "ledger", "plugin"] {
        assert!(out.contains(cmd), "{out}");
    }
    let (_, out, _) = run_cli(BIN, &["ledger", "--help"]);
    assert!(out.contains("verify") && out.contains("summary"), "{out}");
}
