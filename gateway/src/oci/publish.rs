//! Publishing: push a component as a Wasm artifact, and sign a pushed
//! artifact the way cosign does (for publishers without cosign).

use hyper::header::HeaderValue;
use oci_client::RegistryOperation;
use serde_json::json;

use super::artifact::{Descriptor, MANIFEST_MEDIA_TYPE, WasmArtifact};
use super::reference::ComponentRef;
use super::registry::{Registries, describe, is_missing};
use super::signature::{
    self, PAYLOAD_MEDIA_TYPE, PublisherKey, SIGNATURE_ANNOTATION, SIGNATURE_CONFIG_MEDIA_TYPE,
};
use crate::runtime::component_digest;

/// What `push` wrote.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The reference pinned to the new manifest.
    pub pinned: ComponentRef,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the component (the layer).
    pub component_digest: String,
}

/// What `sign` wrote.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signed manifest.
    pub pinned: ComponentRef,
    /// Where the signatures are: `…:sha256-<hex>.sig`.
    pub signatures: ComponentRef,
    /// The signing key's fingerprint.
    pub signer: String,
}

impl Registries {
    /// Pushes `artifact` to `r` (a tag or a digest).
    pub async fn push(
        &self,
        r: &ComponentRef,
        component: &[u8],
        artifact: &WasmArtifact,
    ) -> Result<Pushed, String> {
        let image = r.to_client_reference();
        let auth = self.auth(&r.registry)?;
        self.client
            .auth(&image, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| describe(&e))?;
        self.push_blob(r, component, &artifact.layer_descriptor)
            .await?;
        self.push_blob(r, &artifact.config, &artifact.config_descriptor)
            .await?;
        let manifest_digest = component_digest(&artifact.manifest);
        self.client
            .push_manifest_raw(
                &image,
                artifact.manifest.clone(),
                HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
            )
            .await
            .map_err(|e| format!("cannot push the manifest: {}", describe(&e)))?;
        Ok(Pushed {
            pinned: r.with_digest(&manifest_digest),
            manifest_digest,
            component_digest: artifact.layer_descriptor.digest.clone(),
        })
    }

    async fn push_blob(
        &self,
        r: &ComponentRef,
        bytes: &[u8],
        d: &Descriptor,
    ) -> Result<(), String> {
        let image = r.to_client_reference();
        if self
            .client
            .blob_exists(&image, &d.digest)
            .await
            .unwrap_or(false)
        {
            return Ok(());
        }
        self.client
            .push_blob(&image, bytes.to_vec(), &d.digest)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot push blob {}: {}", d.digest, describe(&e)))
    }

    /// Signs the manifest `r` names (a tag is resolved first) with `key`:
    /// adds a cosign simple-signing layer to the signature manifest under
    /// `sha256-<hex>.sig`, keeping the signatures already there.
    pub async fn sign(&self, r: &ComponentRef, key: &PublisherKey) -> Result<Signed, String> {
        let auth = self.auth(&r.registry)?;
        self.client
            .auth(&r.to_client_reference(), &auth, RegistryOperation::Push)
            .await
            .map_err(|e| describe(&e))?;
        let (pinned, _) = self.resolve(r, &auth).await?;
        // The manifest must exist and be what the reference pins.
        self.pull_manifest(&pinned, &auth).await?;
        let digest = pinned.digest().expect("resolved").to_string();
        let payload = signature::payload(&pinned.docker_reference(), &digest);
        let payload_descriptor = Descriptor {
            media_type: PAYLOAD_MEDIA_TYPE.into(),
            digest: component_digest(&payload),
            size: payload.len() as u64,
        };
        let signed = key.sign(&payload);
        let sig_ref = pinned.with_tag(&signature::signature_tag(&digest));
        let mut layers = match self
            .client
            .pull_manifest_raw(
                &sig_ref.to_client_reference(),
                &auth,
                &[MANIFEST_MEDIA_TYPE],
            )
            .await
        {
            Ok((bytes, _)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["layers"].as_array().cloned())
                .unwrap_or_default(),
            Err(e) if is_missing(&e) => Vec::new(),
            Err(e) => {
                return Err(format!(
                    "cannot read the existing signatures: {}",
                    describe(&e)
                ));
            }
        };
        let layer = json!({
            "mediaType": PAYLOAD_MEDIA_TYPE,
            "digest": payload_descriptor.digest,
            "size": payload_descriptor.size,
            "annotations": { SIGNATURE_ANNOTATION: signed },
        });
        if !layers.contains(&layer) {
            layers.push(layer);
        }
        self.push_blob(&sig_ref, &payload, &payload_descriptor)
            .await?;
        // The config cosign writes: an empty image whose layers are the
        // payloads.
        let diff_ids: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
        let config = json!({
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{ "created": "0001-01-01T00:00:00Z" }],
            "os": "",
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        })
        .to_string()
        .into_bytes();
        let config_descriptor = Descriptor {
            media_type: SIGNATURE_CONFIG_MEDIA_TYPE.into(),
            digest: component_digest(&config),
            size: config.len() as u64,
        };
        self.push_blob(&sig_ref, &config, &config_descriptor)
            .await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": config_descriptor.media_type,
                "digest": config_descriptor.digest,
                "size": config_descriptor.size,
            },
            "layers": layers,
        })
        .to_string()
        .into_bytes();
        self.client
            .push_manifest_raw(
                &sig_ref.to_client_reference(),
                manifest,
                HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
            )
            .await
            .map_err(|e| format!("cannot push the signature manifest: {}", describe(&e)))?;
        Ok(Signed {
            pinned,
            signatures: sig_ref,
            signer: key.fingerprint_string(),
        })
    }
}
