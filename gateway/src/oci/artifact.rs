//! The CNCF Wasm OCI artifact: an image manifest whose config has media
//! type `application/vnd.wasm.config.v0+json` and whose one layer is the
//! component (`application/wasm`), as `wkg`, wasmCloud and Spin write and
//! read it.

use serde_json::{Value, json};

/// The image manifest media type (OCI image spec).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config media type of a Wasm artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media type of the one layer: the component's bytes.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// A descriptor: what a manifest says about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.into(),
            digest: crate::runtime::component_digest(bytes),
            size: bytes.len() as u64,
        }
    }

    fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }

    /// In the registry client's terms (to pull the blob).
    pub fn to_client(&self) -> oci_client::manifest::OciDescriptor {
        oci_client::manifest::OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size as i64,
            ..Default::default()
        }
    }
}

/// A Wasm artifact ready to push: its manifest, config and layer.
pub struct WasmArtifact {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub config_descriptor: Descriptor,
    pub layer_descriptor: Descriptor,
}

impl WasmArtifact {
    /// Lays out `component` as a Wasm artifact. `imports`/`exports` are the
    /// component's WIT interfaces (the config lists them, as `wkg` does).
    pub fn build(
        component: &[u8],
        imports: &[String],
        exports: &[String],
        created_unix_s: u64,
    ) -> Self {
        let layer_descriptor = Descriptor::of(LAYER_MEDIA_TYPE, component);
        let config = json!({
            "created": rfc3339(created_unix_s),
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_descriptor.digest],
            "component": { "imports": imports, "exports": exports, "target": null },
        })
        .to_string()
        .into_bytes();
        let config_descriptor = Descriptor::of(CONFIG_MEDIA_TYPE, &config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config_descriptor.json(),
            "layers": [layer_descriptor.json()],
        })
        .to_string()
        .into_bytes();
        Self {
            manifest,
            config,
            config_descriptor,
            layer_descriptor,
        }
    }
}

/// Checks that `manifest` is a Wasm artifact's and returns its one layer.
/// Every refusal says what was found instead.
pub fn wasm_layer(manifest: &[u8]) -> Result<Descriptor, String> {
    let v: Value =
        serde_json::from_slice(manifest).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if v["schemaVersion"].as_u64() != Some(2) {
        return Err("the manifest is not an OCI image manifest (schemaVersion is not 2)".into());
    }
    if let Some(t) = v["mediaType"].as_str()
        && t != MANIFEST_MEDIA_TYPE
    {
        return Err(format!(
            "wrong media type: the manifest is `{t}`, not an OCI image manifest \
             ({MANIFEST_MEDIA_TYPE})"
        ));
    }
    let config = descriptor(&v["config"]).map_err(|p| format!("config: {p}"))?;
    if config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "wrong media type: the config is `{}`, not a Wasm component's ({CONFIG_MEDIA_TYPE})",
            config.media_type
        ));
    }
    let layers = v["layers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let [layer] = layers else {
        return Err(format!(
            "a Wasm artifact has exactly one layer, this manifest has {}",
            layers.len()
        ));
    };
    let layer = descriptor(layer).map_err(|p| format!("layer: {p}"))?;
    if layer.media_type != LAYER_MEDIA_TYPE {
        return Err(format!(
            "wrong media type: the layer is `{}`, not `{LAYER_MEDIA_TYPE}`",
            layer.media_type
        ));
    }
    Ok(layer)
}

/// Reads a descriptor object: media type, sha256 digest, size.
pub fn descriptor(v: &Value) -> Result<Descriptor, String> {
    let media_type = v["mediaType"].as_str().ok_or("no mediaType")?.to_string();
    let digest = v["digest"].as_str().ok_or("no digest")?.to_string();
    depin_protocol::oci::check_digest(&digest)?;
    let size = v["size"].as_u64().ok_or("no size")?;
    Ok(Descriptor {
        media_type,
        digest,
        size,
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
fn rfc3339(unix_s: u64) -> String {
    let (y, mo, d, h, mi, s) = depin_protocol::time::civil(unix_s);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_artifact_is_read_back_as_one_wasm_layer() {
        let a = WasmArtifact::build(b"\0asm\x0d\0\x01\0", &["wasi:io/streams".into()], &[], 0);
        let layer = wasm_layer(&a.manifest).unwrap();
        assert_eq!(layer, a.layer_descriptor);
        assert_eq!(layer.size, 8);
        let config: Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(config["layerDigests"][0], layer.digest.as_str());
        assert_eq!(a.config_descriptor.media_type, CONFIG_MEDIA_TYPE);
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(1_764_720_000), "2025-12-03T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn other_artifacts_are_refused_by_media_type() {
        let a = WasmArtifact::build(b"\0asm", &[], &[], 0);
        let swap = |from: &str, to: &str| {
            String::from_utf8(a.manifest.clone())
                .unwrap()
                .replace(from, to)
                .into_bytes()
        };
        let e = wasm_layer(&swap(
            CONFIG_MEDIA_TYPE,
            "application/vnd.oci.image.config.v1+json",
        ))
        .unwrap_err();
        assert!(e.contains("wrong media type: the config"), "{e}");
        let e = wasm_layer(&swap(
            "\"application/wasm\"",
            "\"application/octet-stream\"",
        ))
        .unwrap_err();
        assert!(e.contains("wrong media type: the layer"), "{e}");
        let e = wasm_layer(&swap(
            MANIFEST_MEDIA_TYPE,
            "application/vnd.oci.image.index.v1+json",
        ))
        .unwrap_err();
        assert!(e.contains("wrong media type: the manifest"), "{e}");
        let e = wasm_layer(b"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/vnd.wasm.config.v0+json\",\"digest\":\"sha256:0000000000000000000000000000000000000000000000000000000000000000\",\"size\":1},\"layers\":[]}").unwrap_err();
        assert!(e.contains("exactly one layer"), "{e}");
    }
}
