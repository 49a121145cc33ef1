//! Pulling a component: resolve the reference, fetch (or find locally) the
//! manifest and the one Wasm layer, check every digest, and verify the
//! signature when one is required.

use std::path::PathBuf;

use depin_protocol::oci::check_digest;
use oci_client::secrets::RegistryAuth;

use super::artifact::{self, MANIFEST_MEDIA_TYPE};
use super::reference::{ComponentRef, Pin};
use super::registry::{Registries, describe, is_missing};
use super::signature::{
    self, FoundSignature, PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION, TrustedKey,
};
use crate::runtime::component_digest;

/// Whether (and by whom) a component must be signed.
#[derive(Debug, Clone, Default)]
pub enum SignaturePolicy {
    /// Load it signed or not; signatures are not looked at.
    #[default]
    NotRequired,
    /// Refuse it without a valid signature by one of these keys.
    TrustedKeys(Vec<TrustedKey>),
}

/// A component pulled (or found in the local copy) and checked.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The reference pinned to the manifest digest it resolved to.
    pub pinned: ComponentRef,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// The component file in the local copy.
    pub component_path: PathBuf,
    /// `sha256:<hex>` of the component (the layer).
    pub component_digest: String,
    /// The trusted key whose signature was verified, when one was required.
    pub signer: Option<TrustedKey>,
    /// Everything came from the local copy; the registry was not asked.
    pub offline: bool,
}

impl Registries {
    /// Pulls `r` (or finds it in the local copy) and checks it. The error
    /// says why, without the reference (callers name it).
    pub async fn fetch(
        &self,
        r: &ComponentRef,
        policy: &SignaturePolicy,
    ) -> Result<Fetched, String> {
        let auth = self.auth(&r.registry)?;
        let (pinned, mut offline) = self.resolve(r, &auth).await?;
        let manifest_digest = pinned.digest().expect("resolved").to_string();
        let manifest = match self.local.blob(&manifest_digest) {
            Some(m) => m,
            None => {
                offline = false;
                let m = self.pull_manifest(&pinned, &auth).await?;
                self.local.put_blob(&manifest_digest, &m)?;
                m
            }
        };
        let layer = artifact::wasm_layer(&manifest)?;
        let component_path = match self.local.blob(&layer.digest) {
            Some(_) => self.local.blob_path(&layer.digest),
            None => {
                offline = false;
                let bytes = self
                    .pull_blob(&pinned, &layer, &auth)
                    .await
                    .map_err(|p| format!("the component layer {}: {p}", layer.digest))?;
                self.local.put_blob(&layer.digest, &bytes)?
            }
        };
        let signer = match policy {
            SignaturePolicy::NotRequired => None,
            SignaturePolicy::TrustedKeys(keys) => {
                let (key, asked) = self.verify_signature(&pinned, &auth, keys).await?;
                offline &= !asked;
                Some(key)
            }
        };
        Ok(Fetched {
            pinned,
            manifest_digest,
            component_path,
            component_digest: layer.digest,
            signer,
            offline,
        })
    }

    /// The reference pinned to a digest: as given, or the tag resolved
    /// (the registry asked; the last resolution when it cannot answer).
    /// Also whether no registry was asked.
    pub(super) async fn resolve(
        &self,
        r: &ComponentRef,
        auth: &RegistryAuth,
    ) -> Result<(ComponentRef, bool), String> {
        let Pin::Tag(tag) = &r.pin else {
            return Ok((r.clone(), true));
        };
        match self
            .client
            .fetch_manifest_digest(&r.to_client_reference(), auth)
            .await
        {
            Ok(digest) => {
                check_digest(&digest)
                    .map_err(|p| format!("the registry resolved the tag to {p}"))?;
                self.local.put_tag(r, &digest)?;
                tracing::info!(reference = %r, tag, %digest, "tag resolved");
                Ok((r.with_digest(&digest), false))
            }
            Err(e) if is_missing(&e) => Err(format!("tag `{tag}`: {}", describe(&e))),
            Err(e) => match self.local.tag(r) {
                Some(digest) => {
                    tracing::warn!(reference = %r, %digest, error = %describe(&e), "cannot resolve the tag; using the digest it last resolved to");
                    Ok((r.with_digest(&digest), true))
                }
                None => Err(format!("cannot resolve tag `{tag}`: {}", describe(&e))),
            },
        }
    }

    /// The manifest bytes of `pinned`, checked against its digest.
    pub(super) async fn pull_manifest(
        &self,
        pinned: &ComponentRef,
        auth: &RegistryAuth,
    ) -> Result<Vec<u8>, String> {
        let digest = pinned.digest().expect("pinned");
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&pinned.to_client_reference(), auth, &[MANIFEST_MEDIA_TYPE])
            .await
            .map_err(|e| format!("the manifest: {}", describe(&e)))?;
        let actual = component_digest(&bytes);
        if actual != digest {
            return Err(format!(
                "wrong digest: the registry's manifest hashes to {actual}, the reference pins {digest}"
            ));
        }
        Ok(bytes.to_vec())
    }

    /// A blob of `pinned`'s repository, checked against its descriptor.
    async fn pull_blob(
        &self,
        pinned: &ComponentRef,
        d: &artifact::Descriptor,
        auth: &RegistryAuth,
    ) -> Result<Vec<u8>, String> {
        let image = pinned.to_client_reference();
        self.client
            .store_auth_if_needed(image.resolve_registry(), auth)
            .await;
        let mut bytes = Vec::new();
        self.client
            .pull_blob(&image, &d.to_client(), &mut bytes)
            .await
            .map_err(|e| match e {
                oci_client::errors::OciDistributionError::DigestError(_) => format!(
                    "tampered: the registry's bytes do not hash to the digest the manifest names ({})",
                    describe(&e)
                ),
                e => describe(&e),
            })?;
        let actual = component_digest(&bytes);
        if actual != d.digest || bytes.len() as u64 != d.size {
            return Err(format!(
                "tampered: the registry's bytes hash to {actual} ({} bytes), the manifest names {} ({} bytes)",
                bytes.len(),
                d.digest,
                d.size
            ));
        }
        Ok(bytes)
    }

    /// Verifies the cosign signatures of `pinned`: from the local copy
    /// first, then (if those do not verify, or there are none) from the
    /// registry. Returns the key and whether the registry was asked.
    async fn verify_signature(
        &self,
        pinned: &ComponentRef,
        auth: &RegistryAuth,
        keys: &[TrustedKey],
    ) -> Result<(TrustedKey, bool), String> {
        let digest = pinned.digest().expect("pinned");
        if let Some(cached) = self.local.signatures(digest)
            && let Ok(found) = self.signatures_in(pinned, &cached, auth).await
            && let Ok(key) = signature::verify(&found, digest, keys)
        {
            return Ok((key.clone(), false));
        }
        let tag = signature::signature_tag(digest);
        let sig_ref = pinned.with_tag(&tag);
        let manifest = match self
            .client
            .pull_manifest_raw(&sig_ref.to_client_reference(), auth, &[MANIFEST_MEDIA_TYPE])
            .await
        {
            Ok((bytes, _)) => bytes.to_vec(),
            Err(e) if is_missing(&e) => {
                return Err(format!(
                    "unsigned: no signature in the registry (no `{tag}` tag), and \
                     `require_signature = true`"
                ));
            }
            Err(e) => return Err(format!("cannot fetch the signatures: {}", describe(&e))),
        };
        let found = self.signatures_in(pinned, &manifest, auth).await?;
        let key = signature::verify(&found, digest, keys).map_err(|p| format!("signature: {p}"))?;
        self.local.put_signatures(digest, &manifest)?;
        Ok((key.clone(), true))
    }

    /// The signatures a cosign signature manifest holds, with payloads
    /// from the local copy or the registry.
    async fn signatures_in(
        &self,
        pinned: &ComponentRef,
        manifest: &[u8],
        auth: &RegistryAuth,
    ) -> Result<Vec<FoundSignature>, String> {
        let v: serde_json::Value = serde_json::from_slice(manifest)
            .map_err(|e| format!("the signature manifest is not JSON: {e}"))?;
        let mut found = Vec::new();
        for layer in v["layers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let Ok(d) = artifact::descriptor(layer) else {
                continue;
            };
            let Some(sig) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else {
                continue;
            };
            if d.media_type != PAYLOAD_MEDIA_TYPE || d.size > MAX_PAYLOAD_BYTES {
                continue;
            }
            let payload = match self.local.blob(&d.digest) {
                Some(p) => p,
                None => {
                    let p = self
                        .pull_blob(pinned, &d, auth)
                        .await
                        .map_err(|p| format!("a signature payload: {p}"))?;
                    self.local.put_blob(&d.digest, &p)?;
                    p
                }
            };
            found.push(FoundSignature {
                payload,
                signature_b64: sig.to_string(),
            });
        }
        Ok(found)
    }
}

/// Largest signature payload read (cosign's are a few hundred bytes).
const MAX_PAYLOAD_BYTES: u64 = 64 << 10;
