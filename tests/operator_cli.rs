//! The operator's command line on a real ledger: `rewards preview` against
//! `epochs list`, and commands piped into a reader that stops early.

use std::process::Command;
use std::time::{Duration, Instant};

use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin, run_cli};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

const POLICY: &str = "[[rate]]\nkind = \"other\"\nunit = \"requests\"\nmicro = 250\n\
                      [[rate]]\nkind = \"*\"\nunit = \"bytes-out\"\nsource = \"host\"\nmicro = 3\nper = 2\n";
const DOUBLED: &str = "[[rate]]\nkind = \"other\"\nunit = \"requests\"\nmicro = 500\n\
                       [[rate]]\nkind = \"*\"\nunit = \"bytes-out\"\nsource = \"host\"\nmicro = 6\nper = 2\n";

/// A stopped gateway whose ledger holds known traffic over several
/// closed epochs.
fn home_with_traffic() -> Home {
    let home =
        Home::new(
            &[PluginSpec::new("cli-t", plugin("template_plugin"), "/t")
                .config("greeting = \"hello\"")],
            "[epochs]\nlength_ms = 500\nclose_delay_ms = 50\npolicy = \"rewards.toml\"\n",
        );
    std::fs::write(home.dir.path().join("rewards.toml"), POLICY).unwrap();
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = HttpClient::new(gw.addr);
    rt.block_on(async {
        for round in 0..3 {
            for i in 0..(10 + round * 7) {
                assert_eq!(http.get(&format!("/t/hello?name={i}")).await.status, 200);
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        // Let the last traffic's epoch close.
        tokio::time::sleep(Duration::from_millis(700)).await;
    });
    assert!(gw.terminate(), "the gateway did not stop cleanly");
    home
}

fn json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = run_cli(BIN, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn rewards_preview_reproduces_epochs_list_and_a_doubled_rate_doubles_the_rated_lines() {
    let home = home_with_traffic();
    let config = home.config_path.to_str().unwrap();
    let current = home.dir.path().join("rewards.toml");
    let doubled = home.dir.path().join("doubled.toml");
    std::fs::write(&doubled, DOUBLED).unwrap();

    let listed = json(&["epochs", "list", "--config", config, "--json"]);
    let listed = listed.as_array().unwrap();
    assert!(listed.len() >= 3, "{listed:?}");
    let rewarded = listed.iter().filter(|e| e["reward_micro"] != "0").count();
    assert!(rewarded >= 2, "{listed:?}");

    // The current policy reproduces every reported figure exactly.
    let same = json(&[
        "rewards",
        "preview",
        "--config",
        config,
        "--policy",
        current.to_str().unwrap(),
        "--json",
    ]);
    let same = same.as_array().unwrap();
    assert_eq!(same.len(), listed.len());
    for (p, e) in same.iter().zip(listed) {
        assert_eq!(p["epoch"], e["epoch"]);
        assert_eq!(p["proposed_micro"], e["reward_micro"], "{p}");
        assert_eq!(p["reported_micro"], e["reward_micro"], "{p}");
        assert_eq!(p["current_micro"], e["reward_micro"], "{p}");
        assert_eq!(p["ledger_matches_report"], true, "{p}");
    }

    // A doubled rate doubles every rated line and, without caps, the
    // epoch; unrated lines stay at zero.
    let twice = json(&[
        "rewards",
        "preview",
        "--config",
        config,
        "--policy",
        doubled.to_str().unwrap(),
        "--json",
    ]);
    let n = |v: &serde_json::Value| v.as_str().unwrap().parse::<u128>().unwrap();
    let mut rated = 0;
    // Each line's amount is rounded down to a whole micro-unit on its own
    // (the shared reward function prices line by line), so twice the rate
    // gives twice the amount, or one more where the halved amount had a
    // half micro-unit rounded away; the epoch is the sum of its lines.
    for p in twice.as_array().unwrap() {
        let mut sum = 0;
        for l in p["lines"].as_array().unwrap() {
            let (cur, new) = (n(&l["current_micro"]), n(&l["proposed_micro"]));
            assert!(new == 2 * cur || new == 2 * cur + 1, "{l}");
            sum += new;
            if l["unit"] == "requests" || l["unit"] == "bytes-out" {
                assert!(cur > 0, "{l}");
                rated += 1;
            } else {
                assert_eq!(cur, 0, "{l}");
            }
        }
        assert_eq!(n(&p["proposed_micro"]), sum, "{p}");
        let doubled = 2 * n(&p["current_micro"]);
        let lines = p["lines"].as_array().unwrap().len() as u128;
        assert!((doubled..=doubled + lines).contains(&sum), "{p}");
    }
    assert!(rated >= 4, "{twice}");

    // A range selects epochs; the table names the columns.
    let first = listed[1]["epoch"].as_u64().unwrap();
    let range = format!("{first}..{}", first + 1);
    let some = json(&[
        "rewards",
        "preview",
        "--config",
        config,
        "--policy",
        doubled.to_str().unwrap(),
        "--epochs",
        &range,
        "--json",
    ]);
    assert_eq!(some.as_array().unwrap().len(), 2);
    let (code, table, err) = run_cli(
        BIN,
        &[
            "rewards",
            "preview",
            "--config",
            config,
            "--policy",
            doubled.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("         EPOCH    RECORDS"), "{table}");
    assert!(table.contains("PROPOSED"), "{table}");
    // Not on a terminal: no progress line.
    assert!(err.is_empty(), "{err}");
}

#[test]
fn commands_piped_into_a_reader_that_stops_early_do_not_panic() {
    let home = home_with_traffic();
    let config = home.config_path.to_str().unwrap();
    let listed = json(&["epochs", "list", "--config", config, "--json"]);
    let epoch = listed[0]["epoch"].as_u64().unwrap().to_string();
    let report = home.dir.path().join("r.bin");
    let (code, _, err) = run_cli(
        BIN,
        &[
            "epochs",
            "show",
            &epoch,
            "--config",
            config,
            "--out",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let policy = home.dir.path().join("rewards.toml");
    let commands = [
        format!("report verify {}", report.display()),
        format!("epochs list --config {config}"),
        format!("ledger summary --config {config}"),
        format!(
            "rewards preview --config {config} --policy {}",
            policy.display()
        ),
    ];
    for command in &commands {
        // `head -3` as an operator types it, and `true`, which reads
        // nothing, so the first write meets a closed pipe.
        for reader in ["head -3", "true"] {
            let started = Instant::now();
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("{BIN} {command} 2>&1 | {reader}"))
                .output()
                .expect("run sh");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{command} | {reader}: {text}");
            assert!(
                !text.contains("panicked") && !text.contains("Broken pipe"),
                "{command} | {reader}: {text}"
            );
            if reader == "head -3" {
                assert_eq!(text.lines().count(), 3, "{command}: {text}");
            }
            assert!(started.elapsed() < Duration::from_secs(60));
        }
    }
}
