//! The device key on a hardware token (PKCS#11), with a real SoftHSM2
//! token per test: keygen on the token, a gateway that signs its reports,
//! challenge answers and TLS handshakes there, a real collector that
//! verifies them under the id of the token's public key, and the private
//! key's attributes as the token itself reports them.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use depin_e2e::softhsm::{SoftHsm, USER_PIN};
use depin_e2e::upstream::{Pki, device_key_collector, free_port, schedule_toml, wait_for_verdicts};
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin, run_cli};
use depin_gateway::identity::DeviceKey;
use depin_protocol::report::SignedReport;

use crate::upstream::{POLICY, reports_at_collector, wait_for_reports};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-under-test");
const PROBE_BIN: &str = env!("CARGO_BIN_EXE_pkcs11-probe");

/// A gateway home whose device key is `object` on `hsm`'s token, with the
/// template plugin, 1-second epochs and the collector on `port` (device-key
/// TLS identity). The key file `Home` writes is removed: the gateway has
/// no key but the token's.
fn token_home(hsm: &SoftHsm, object: &str, pki: &Pki, port: u16) -> Home {
    let extra = format!(
        "key = \"{uri}\"\n[pkcs11]\nmodule = \"{module}\"\n\
         [epochs]\nlength_ms = 1000\nclose_delay_ms = 150\npolicy = \"rewards.toml\"\n{upstream}",
        uri = hsm.uri(object),
        module = hsm.module.display(),
        upstream = pki.upstream_toml_device_key(&[port]),
    );
    let home = Home::new(
        &[PluginSpec::new("template", plugin("template_plugin"), "/t")],
        &extra,
    );
    std::fs::write(home.dir.path().join("rewards.toml"), POLICY).unwrap();
    std::fs::remove_file(home.key_path()).unwrap();
    home
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the token itself says about the key pair labelled `object`.
fn probe(hsm: &SoftHsm, object: &str) -> serde_json::Value {
    let out = hsm
        .command(PROBE_BIN)
        .arg(&hsm.module)
        .arg(&hsm.label)
        .arg(object)
        .arg(&hsm.pin_file)
        .output()
        .expect("run pkcs11-probe");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "pkcs11-probe: {stderr}");
    serde_json::from_str(&stdout).expect("probe JSON")
}

/// The gateway id of an Ed25519 CKA_EC_POINT (DER OCTET STRING).
fn id_of_ec_point(hex_point: &str) -> String {
    let point = hex::decode(hex_point).unwrap();
    assert_eq!(&point[..2], &[0x04, 0x20], "DER OCTET STRING of 32 bytes");
    format!("dpg1{}", hex::encode(&point[2..]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_made_on_the_token_signs_reports_the_collector_verifies_and_never_leaves_it() {
    let Some(hsm) = SoftHsm::start("depin-e2e") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_port();
    let home = token_home(&hsm, "device", &pki, port);
    let config = home.config_path.to_str().unwrap();

    // keygen on the token, with the configuration's URI and module
    let out = hsm
        .command(BIN)
        .args(["keygen", "--config", config])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("created the device key on the token"),
        "{stderr}"
    );
    assert!(!stderr.contains(USER_PIN) && !stdout.contains(USER_PIN));
    let id = stdout.trim().to_string();

    // the token holds it: its public key is the gateway id, and the
    // private key is sensitive and cannot be read or exported
    let token = probe(&hsm, "device");
    assert_eq!(id_of_ec_point(token["ec_point"].as_str().unwrap()), id);
    let private = &token["private"];
    assert_eq!(private["value"], "sensitive", "{token}");
    assert_eq!(private["value_read"], false, "{token}");
    assert_eq!(private["sensitive"], true, "{token}");
    assert_eq!(private["extractable"], false, "{token}");
    assert_eq!(private["never_extractable"], true, "{token}");
    assert_eq!(private["always_sensitive"], true, "{token}");
    assert_eq!(private["token"], true, "{token}");

    // a module restart under a running key: the next signature reopens
    // the session, logs in again and succeeds
    let out = hsm
        .command(PROBE_BIN)
        .arg("restart")
        .arg(&hsm.module)
        .arg(hsm.uri("device"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let restart: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(restart["before_verifies"], true, "{restart}");
    assert_eq!(restart["after"]["verifies"], true, "{restart}");
    assert_eq!(restart["after"]["same_as_before"], true, "{restart}");

    // keygen again keeps it, with the command-line form of the URI
    let out = hsm
        .command(BIN)
        .args(["keygen", "--pkcs11", &hsm.uri("device"), "--module"])
        .arg(&hsm.module)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("kept the existing device key"), "{stderr}");
    assert_eq!(stdout.trim(), id);

    // a collector that knows the gateway by that id only (its TLS client
    // certificate is self-signed by the token key), with inclusion
    // challenges the gateway answers with token signatures
    let watcher = DeviceKey::generate();
    let watcher_id = watcher.gateway_id();
    let challenges = format!(
        "{}[challenges]\ninterval_ms = 400\ninclusion = true\nmax_open = 4\nanswer_timeout_ms = 3000\n",
        schedule_toml(1000, 100)
    );
    let _collector = device_key_collector(
        COLLECTOR_BIN,
        &tmp.path().join("collector"),
        &pki,
        port,
        &[id.clone(), watcher_id],
        POLICY,
        &challenges,
    );
    let https = pki.https_device_key(&[port], &watcher);

    let mut gw = GatewayProcess::start_with_env(BIN, &home.config_path, &hsm.env());
    // (the reader thread stores the line just after it reports ready)
    let ready = wait_for_line(&gw, "gateway ready").await;
    assert!(ready.contains(&id), "{ready}");
    assert!(
        ready.contains("pkcs11:token=depin-e2e;object=device"),
        "{ready}"
    );
    let http = HttpClient::new(gw.addr);
    for _ in 0..10 {
        assert_eq!(http.post("/t/echo", b"0123456789").await.status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_for_reports(&https, &id, 2).await;
    wait_for_verdicts(&https, Duration::from_secs(60), |passed, _| passed >= 1).await;
    assert!(gw.terminate());
    assert!(reports_at_collector(&https, &id).await >= 2);

    // a stored report verifies offline under the token's public key
    let report_file = tmp.path().join("report.bin");
    let (code, list, err) = run_cli(BIN, &["epochs", "list", "--config", config, "--json"]);
    assert_eq!(code, 0, "{err}");
    let epochs: serde_json::Value = serde_json::from_str(&list).unwrap();
    let delivered = epochs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["delivery"] == "delivered")
        .expect("a delivered epoch");
    let n = delivered["epoch"].as_u64().unwrap().to_string();
    let (code, _, err) = run_cli(
        BIN,
        &[
            "epochs",
            "show",
            &n,
            "--config",
            config,
            "--out",
            report_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let signed = SignedReport::decode(&std::fs::read(&report_file).unwrap()).unwrap();
    assert_eq!(signed.report.gateway_id(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_errors_name_the_uri_and_return_code_and_the_pin_may_come_from_env() {
    let Some(hsm) = SoftHsm::start("depin-e2e-errors") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let home = token_home(&hsm, "device", &pki, free_port());
    let config = home.config_path.to_str().unwrap();
    let run = || {
        let out = hsm
            .command(BIN)
            .args(["run", "--config", config])
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        (out.status.success(), stderr)
    };

    // no key on the token yet
    let (ok, stderr) = run();
    assert!(!ok);
    assert!(
        stderr.contains("pkcs11:token=depin-e2e-errors;object=device"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no private key with this label"),
        "{stderr}"
    );
    assert!(stderr.contains("keygen --pkcs11"), "{stderr}");

    let out = hsm
        .command(BIN)
        .args(["keygen", "--config", config])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);

    // a wrong PIN: the URI, the function and the return code, not the PIN
    std::fs::write(&hsm.pin_file, "0000-wrong\n").unwrap();
    let (ok, stderr) = run();
    assert!(!ok);
    assert!(
        stderr.contains("pkcs11:token=depin-e2e-errors;object=device"),
        "{stderr}"
    );
    assert!(stderr.contains("C_Login: CKR_PIN_INCORRECT"), "{stderr}");
    assert!(!stderr.contains("0000-wrong"), "{stderr}");

    // a PIN file others can read is refused before it is used
    std::fs::write(&hsm.pin_file, format!("{USER_PIN}\n")).unwrap();
    set_mode(&hsm.pin_file, 0o644);
    let (ok, stderr) = run();
    assert!(!ok);
    assert!(stderr.contains("chmod o-rwx"), "{stderr}");
    set_mode(&hsm.pin_file, 0o600);

    // a token label that no token has lists the tokens there are
    let wrong_token = std::fs::read_to_string(&home.config_path)
        .unwrap()
        .replace("token=depin-e2e-errors", "token=elsewhere");
    std::fs::write(&home.config_path, wrong_token).unwrap();
    let (ok, stderr) = run();
    assert!(!ok);
    assert!(stderr.contains("no token matches the URI"), "{stderr}");
    assert!(stderr.contains("`depin-e2e-errors`"), "{stderr}");

    // the PIN from the environment variable `[pkcs11] pin_env` names
    let pin_source = format!("?pin-source=file:{}", hsm.pin_file.display());
    let from_env = std::fs::read_to_string(&home.config_path)
        .unwrap()
        .replace("token=elsewhere", "token=depin-e2e-errors")
        .replace(&pin_source, "")
        .replace("[pkcs11]\n", "[pkcs11]\npin_env = \"E2E_TOKEN_PIN\"\n");
    std::fs::write(&home.config_path, from_env).unwrap();
    let keygen = |pin: Option<&str>| {
        let mut c = hsm.command(BIN);
        c.args(["keygen", "--config", config]);
        if let Some(pin) = pin {
            c.env("E2E_TOKEN_PIN", pin);
        }
        let out = c.output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr)
    };
    let (ok, _, stderr) = keygen(None);
    assert!(!ok);
    assert!(
        stderr.contains("E2E_TOKEN_PIN (pkcs11.pin_env) is not set"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = keygen(Some(USER_PIN));
    assert!(ok, "{stderr}");
    assert!(stderr.contains("kept the existing device key"), "{stderr}");
    assert!(stdout.trim().starts_with("dpg1"), "{stdout}");
}

/// The first stderr line of `gw` containing `needle`, waiting up to 10 s.
async fn wait_for_line(gw: &GatewayProcess, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = gw
            .stderr_lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned();
        if let Some(line) = found {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "no `{needle}` line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
