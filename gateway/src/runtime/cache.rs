//! Compiled components on disk, keyed by the component's sha256 and the
//! engine's compatibility hash, so a restart does not recompile and an
//! engine upgrade never loads stale code. Each file is sealed
//! ([`CodeSeal`]): one that does not check out is compiled again.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::seal::CodeSeal;

/// Whether a component came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled code from the cache.
    Hit,
    /// Compiled now (and stored, when there is a cache).
    Compiled,
}

/// The component's digest, `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn engine_key(engine: &Engine) -> String {
    // `DefaultHasher::new()` uses fixed keys, so this is stable for a given
    // build of the gateway; a new wasmtime or new settings give a new key.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

fn cache_path(dir: &Path, digest: &str, engine: &Engine) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    dir.join(format!("{hex}-{}.cwasm", engine_key(engine)))
}

/// Reads the component at `path` and returns it compiled, with its digest.
pub fn compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    seal: &CodeSeal,
    path: &Path,
) -> Result<(Component, String, CacheOutcome), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the component: {e}"))?;
    check_is_component(&bytes)?;
    let digest = digest(&bytes);
    let cached = cache_dir.map(|d| cache_path(d, &digest, engine));
    if let Some(cached) = &cached
        && cached.exists()
    {
        let loaded = seal
            .read(cached)
            .map_err(|e| e.to_string())
            .and_then(|code| {
                // SAFETY: the code checked out under the gateway's seal, so it
                // was written by `Component::serialize` of this gateway for
                // this file name, i.e. this source digest and an engine with
                // the same compatibility hash.
                unsafe { Component::deserialize(engine, &code) }.map_err(|e| format!("{e:#}"))
            });
        match loaded {
            Ok(component) => return Ok((component, digest, CacheOutcome::Hit)),
            Err(e) => {
                tracing::warn!(path = %cached.display(), error = %e, "discarding compiled component from the cache; compiling it again");
                let _ = std::fs::remove_file(cached);
            }
        }
    }
    let component =
        Component::from_binary(engine, &bytes).map_err(|e| format!("invalid component: {e:#}"))?;
    if let Some(cached) = &cached
        && let Err(e) = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|code| seal.write(cached, &code).map_err(|e| e.to_string()))
    {
        tracing::warn!(path = %cached.display(), error = %e, "cannot write the compile cache");
    }
    Ok((component, digest, CacheOutcome::Compiled))
}

/// A friendly error for files that are not components at all.
fn check_is_component(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly file (no `\\0asm` header)".into());
    }
    // Core modules have version 1 with layer 0; components have layer 1.
    if bytes[6..8] == [0, 0] {
        return Err(
            "this is a core WebAssembly module, not a component; build the plugin with \
             `cargo build --target wasm32-wasip2`"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_and_garbage_are_named() {
        assert!(
            check_is_component(b"hello world")
                .unwrap_err()
                .contains("not a WebAssembly")
        );
        let core = [0, b'a', b's', b'm', 1, 0, 0, 0];
        assert!(
            check_is_component(&core)
                .unwrap_err()
                .contains("core WebAssembly module")
        );
        let component = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
        assert!(check_is_component(&component).is_ok());
    }
}
