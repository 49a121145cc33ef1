//! Components from a real OCI registry (Debian's `docker-registry` on
//! loopback): pushed with `plugin push`, named by digest, pulled, checked,
//! signed cosign-style, and loaded offline from the local copy.

use depin_e2e::registry::{Registry, TokenService, sha256_digest};
use depin_e2e::{GatewayProcess, Home, HttpClient, plugin, run_cli};
use depin_gateway::gateway::RunningGateway;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

/// `plugin push` of the template plugin to `target` with `flags`: the
/// exit code, standard output and standard error.
fn push_template(target: &str, flags: &[&str]) -> (i32, String, String) {
    let file = plugin("template_plugin");
    let args = ["plugin", "push", file.to_str().unwrap(), target];
    run_cli(BIN, &[&args[..], flags].concat())
}

/// The manifest digest `plugin push` printed first.
fn printed_digest(out: &str) -> String {
    let digest = out.lines().next().unwrap_or("").trim().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{out}");
    digest
}

/// `plugin push` of the template plugin to `repo:tag`; the manifest digest.
fn push(registry: &Registry, repo: &str, tag: &str) -> String {
    let target = format!("{}/{repo}:{tag}", registry.addr);
    let (code, out, err) = push_template(&target, &["--insecure"]);
    assert_eq!(code, 0, "{err}");
    printed_digest(&out)
}

fn reference(registry: &Registry, repo: &str, digest: &str) -> String {
    format!("oci://{}/{repo}@{digest}", registry.addr)
}

/// Appends `text` to `home`'s configuration.
fn append(home: &Home, text: &str) {
    let config = std::fs::read_to_string(&home.config_path).unwrap();
    std::fs::write(&home.config_path, format!("{config}\n{text}")).unwrap();
}

/// The `[[plugin]]` table of plugin `t` at `/t` running `component`, with
/// `table` added.
fn plugin_t(component: &str, table: &str) -> String {
    format!(
        "[[plugin]]\nname = \"t\"\ncomponent = \"{component}\"\nroute = \"/t\"\n{table}\n\
         [plugin.config]\ngreeting = \"hi\"\n"
    )
}

/// A gateway home whose one plugin, `t` at `/t`, is `component`, with the
/// registry allowed over plain HTTP and `table` added to the plugin.
fn home_with(registry: &Registry, component: &str, table: &str) -> Home {
    let home = Home::new(&[], "");
    append(
        &home,
        &format!(
            "[[registry]]\nhost = \"{}\"\ninsecure = true\n",
            registry.addr
        ),
    );
    append(&home, &plugin_t(component, table));
    home
}

/// Starts a gateway on `home` expecting it to fail; the error text.
async fn refused(home: &Home) -> String {
    match RunningGateway::start(&home.config()).await {
        Ok(gw) => {
            gw.shutdown().await;
            panic!("the gateway started")
        }
        Err(e) => e.to_string(),
    }
}

/// A P-256 publisher key pair in `dir`: (private PEM path, public PEM path).
fn publisher_key(dir: &std::path::Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (
        private.to_str().unwrap().to_string(),
        public.to_str().unwrap().to_string(),
    )
}

/// `plugin sign REF --key KEY`; the key fingerprint it prints.
fn sign(reference: &str, key: &str) -> String {
    let (code, out, err) = run_cli(
        BIN,
        &["plugin", "sign", reference, "--key", key, "--insecure"],
    );
    assert_eq!(code, 0, "{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_named_by_digest_is_pulled_called_and_starts_offline_from_its_copy() {
    let registry = Registry::start().await;
    let digest = push(&registry, "plugins/template", "v1");
    let reference = reference(&registry, "plugins/template", &digest);
    let home = home_with(&registry, &reference, "");

    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let loaded = &gw.plugins[0];
    assert_eq!(loaded.pinned.as_deref(), Some(reference.as_str()));
    let file = std::fs::read(plugin("template_plugin")).unwrap();
    assert_eq!(loaded.digest, sha256_digest(&file));
    assert!(loaded.path.starts_with(home.data_dir().join("oci")));
    let hello = HttpClient::new(gw.http_addr).get("/t/hello?name=ada").await;
    assert_eq!((hello.status, hello.text().as_str()), (200, "hi, ada"));
    gw.shutdown().await;

    // No registry any more: the local copy is enough.
    drop(registry);
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("starts offline");
    let hello = HttpClient::new(gw.http_addr).get("/t/hello?name=bo").await;
    assert_eq!((hello.status, hello.text().as_str()), (200, "hi, bo"));
    gw.shutdown().await;
}

#[test]
fn pushed_artifact_has_the_wasm_media_types_as_skopeo_reads_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let registry = rt.block_on(Registry::start());
    let digest = push(&registry, "plugins/skopeo", "v1");
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!(
            "docker://{}/plugins/skopeo@{digest}",
            registry.addr
        ))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_digest(&out.stdout), digest);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    let file = std::fs::read(plugin("template_plugin")).unwrap();
    assert_eq!(layers[0]["digest"], sha256_digest(&file).as_str());
    assert_eq!(layers[0]["size"], file.len());

    // `plugin inspect` and `plugin pull` take the reference too.
    let r = format!("{}/plugins/skopeo:v1", registry.addr);
    let (code, out, err) = run_cli(BIN, &["plugin", "inspect", &r, "--insecure"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("/plugins/skopeo@{digest}")), "{out}");
    assert!(out.contains("contract: fits"), "{out}");
    let data = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        BIN,
        &[
            "plugin",
            "pull",
            &r,
            "--insecure",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("manifest:   {digest}")), "{out}");
    let copy = out
        .lines()
        .find_map(|l| l.strip_prefix("file:"))
        .unwrap()
        .trim();
    assert_eq!(std::fs::read(copy).unwrap(), file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_artifacts_and_wrong_digests_are_refused_naming_the_reference() {
    let registry = Registry::start().await;
    let digest = push(&registry, "plugins/template", "v1");

    // A digest the repository does not have.
    let absent = sha256_digest(b"no such manifest");
    let r = reference(&registry, "plugins/template", &absent);
    let e = refused(&home_with(&registry, &r, "")).await;
    assert!(
        e.contains(&r) && e.contains("not found in the registry"),
        "{e}"
    );

    // A repository nothing was pushed to.
    let r = reference(&registry, "plugins/never-pushed", &digest);
    let e = refused(&home_with(&registry, &r, "")).await;
    assert!(e.contains(&r) && e.contains("missing artifact"), "{e}");

    // The registry serves a manifest that does not hash to the digest.
    let manifest = registry.blob_file(&digest);
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes.extend_from_slice(b"\n ");
    std::fs::write(&manifest, bytes).unwrap();
    let r = reference(&registry, "plugins/template", &digest);
    let e = refused(&home_with(&registry, &r, "")).await;
    assert!(e.contains(&r) && e.contains("wrong digest"), "{e}");

    // A tag without `allow_tag` is a configuration error.
    let tagged = format!("oci://{}/plugins/template:v1", registry.addr);
    let home = home_with(&registry, &tagged, "");
    let e = depin_gateway::config::GatewayConfig::load(&home.config_path).unwrap_err();
    assert!(e.to_string().contains("allow_tag"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_media_types_and_tampered_layers_are_refused_naming_the_reference() {
    let registry = Registry::start().await;
    // An ordinary container image is not a Wasm artifact.
    let (image, _, _) = registry
        .push_image("images/app", "v1", &[b"not wasm".to_vec()])
        .await;
    let r = reference(&registry, "images/app", &image);
    let e = refused(&home_with(&registry, &r, "")).await;
    assert!(e.contains(&r) && e.contains("wrong media type"), "{e}");

    // A layer whose bytes were changed in the registry's storage.
    let digest = push(&registry, "plugins/tampered", "v1");
    let file = std::fs::read(plugin("template_plugin")).unwrap();
    let layer = registry.blob_file(&sha256_digest(&file));
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let r = reference(&registry, "plugins/tampered", &digest);
    let e = refused(&home_with(&registry, &r, "")).await;
    assert!(e.contains(&r) && e.contains("tampered"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_required_from_a_trusted_key_and_the_signer_is_reported() {
    let registry = Registry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (publisher, publisher_pub) = publisher_key(keys.path(), "publisher");
    let (stranger, _) = publisher_key(keys.path(), "stranger");
    let trust = format!("require_signature = true\ntrusted_keys = [\"{publisher_pub}\"]\n");

    // Unsigned.
    let digest = push(&registry, "plugins/signed", "v1");
    let r = reference(&registry, "plugins/signed", &digest);
    let e = refused(&home_with(&registry, &r, &trust)).await;
    assert!(e.contains(&r) && e.contains("unsigned"), "{e}");

    // Signed, but by a key nobody trusts.
    sign(&r, &stranger);
    let e = refused(&home_with(&registry, &r, &trust)).await;
    assert!(
        e.contains(&r) && e.contains("no valid signature by a trusted key"),
        "{e}"
    );

    // Signed by the publisher too: loads, and its reports name the signer.
    let fingerprint = sign(&r, &publisher);
    let home = home_with(&registry, &r, &trust);
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let signer = gw.plugins[0].signer.expect("a verified signer");
    assert_eq!(format!("sha256:{}", hex::encode(signer)), fingerprint);
    let ids = depin_gateway::epochs::PluginIdentities::follow(gw.table().clone()).refresh();
    assert_eq!(ids["t"].signer, Some(signer));
    let hello = HttpClient::new(gw.http_addr).get("/t/hello?name=ada").await;
    assert_eq!(hello.status, 200);
    gw.shutdown().await;

    // The signature is checked from the local copy when the registry is
    // gone, against the keys trusted now.
    drop(registry);
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("starts offline, signature from the copy");
    assert_eq!(gw.plugins[0].signer, Some(signer));
    gw.shutdown().await;
    let (_, stranger_pub) = publisher_key(keys.path(), "other");
    let trust_other = format!("require_signature = true\ntrusted_keys = [\"{stranger_pub}\"]\n");
    let text = std::fs::read_to_string(&home.config_path)
        .unwrap()
        .replace(&trust, &trust_other);
    std::fs::write(&home.config_path, text).unwrap();
    let e = refused(&home).await;
    assert!(e.contains(&r), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_follows_a_changed_reference_and_keeps_serving_when_a_pull_fails() {
    let registry = Registry::start().await;
    let first = reference(&registry, "plugins/a", &push(&registry, "plugins/a", "v1"));
    let second = reference(&registry, "plugins/b", &push(&registry, "plugins/b", "v1"));
    let home = home_with(&registry, &first, "");
    let gw = RunningGateway::start_with_source(&home.config(), Some(&home.config_path))
        .await
        .expect("start");
    let http = HttpClient::new(gw.http_addr);
    let set = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&home.config_path).unwrap();
        std::fs::write(&home.config_path, text.replace(from, to)).unwrap();
    };

    set(&first, &second);
    let report = gw.reload("test").await.expect("reloaded");
    assert_eq!(report.reloaded, ["t"]);
    let snapshot = gw.table().snapshot();
    assert_eq!(
        snapshot.plugins[0].1.pinned.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(http.get("/t/hello?name=ada").await.text(), "hi, ada");

    // A reference the registry does not have: refused, the old one serves.
    let missing = reference(&registry, "plugins/b", &sha256_digest(b"gone"));
    set(&second, &missing);
    let e = gw.reload("test").await.unwrap_err().to_string();
    assert!(e.contains(&missing) && e.contains("not found"), "{e}");
    let snapshot = gw.table().snapshot();
    assert_eq!(
        snapshot.plugins[0].1.pinned.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(http.get("/t/hello?name=bo").await.text(), "hi, bo");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_file_pass_the_token_flow_and_are_never_logged() {
    const PASSWORD: &str = "s3cret-Pa55-for-the-registry";
    let tokens = TokenService::start("publisher", PASSWORD).await;
    let registry = Registry::start_with_tokens(&tokens).await;
    let home = Home::new(&[], "");
    std::fs::write(
        home.dir.path().join("registry.pass"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    append(
        &home,
        &format!(
            "[[registry]]\nhost = \"{}\"\ninsecure = true\nusername = \"publisher\"\n\
             password_file = \"registry.pass\"\n",
            registry.addr
        ),
    );
    let target = format!("{}/plugins/private:v1", registry.addr);

    // Anonymous: the token service refuses.
    let (code, _, err) = push_template(&target, &["--insecure"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not authorized"), "{err}");

    // With the configuration's credentials: basic to the token service,
    // then the bearer token to the registry.
    let config = home.config_path.to_str().unwrap();
    let (code, out, err) = push_template(&target, &["--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));
    let digest = printed_digest(&out);
    let issued = tokens.issued();
    assert!(issued > 0);

    let reference = format!("oci://{}/plugins/private@{digest}", registry.addr);
    append(&home, &plugin_t(&reference, ""));
    let mut gw = GatewayProcess::start(BIN, &home.config_path);
    let hello = HttpClient::new(gw.addr).get("/t/hello?name=ada").await;
    assert_eq!((hello.status, hello.text().as_str()), (200, "hi, ada"));
    assert!(gw.terminate());
    assert!(tokens.issued() > issued, "the gateway got its own token");
    let log = gw.stderr_lines.lock().unwrap().join("\n");
    assert!(log.contains("component pulled"), "{log}");
    assert!(!log.contains(PASSWORD), "the password is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registries_are_trusted_through_ca_file_and_plain_http_is_not_assumed() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = depin_e2e::upstream::Pki::new(&tmp.path().join("pki"));
    let registry = Registry::start_tls(&pki.server_cert, &pki.server_key).await;
    let home = Home::new(&[], "");
    append(
        &home,
        &format!(
            "[[registry]]\nhost = \"{}\"\nca_file = \"{}\"\n",
            registry.addr,
            pki.ca_file.display()
        ),
    );
    let target = format!("{}/plugins/tls:v1", registry.addr);
    let config = home.config_path.to_str().unwrap();

    // Without the CA the registry's certificate is not trusted.
    let (code, _, err) = push_template(&target, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the registry"), "{err}");
    // With it, over HTTPS.
    let (code, out, err) = push_template(&target, &["--config", config]);
    assert_eq!(code, 0, "{err}");
    let digest = printed_digest(&out);

    let reference = format!("oci://{}/plugins/tls@{digest}", registry.addr);
    append(&home, &plugin_t(&reference, ""));
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let hello = HttpClient::new(gw.http_addr).get("/t/hello?name=ada").await;
    assert_eq!((hello.status, hello.text().as_str()), (200, "hi, ada"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_tag_is_resolved_to_a_digest_and_remembered_for_offline_starts() {
    let registry = Registry::start().await;
    let digest = push(&registry, "plugins/tagged", "stable");
    let tagged = format!("oci://{}/plugins/tagged:stable", registry.addr);
    let home = home_with(&registry, &tagged, "allow_tag = true");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let pinned = reference(&registry, "plugins/tagged", &digest);
    assert_eq!(gw.plugins[0].pinned.as_deref(), Some(pinned.as_str()));
    gw.shutdown().await;

    drop(registry);
    let gw = RunningGateway::start(&home.config())
        .await
        .expect("starts with the digest the tag last resolved to");
    assert_eq!(gw.plugins[0].pinned.as_deref(), Some(pinned.as_str()));
    let hello = HttpClient::new(gw.http_addr).get("/t/hello?name=ada").await;
    assert_eq!(hello.text(), "hi, ada");
    gw.shutdown().await;
}
