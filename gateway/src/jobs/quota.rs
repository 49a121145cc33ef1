//! The module quota of each plugin: how many job modules it keeps and how
//! many bytes they take on disk (the module plus its compiled code), with
//! least-recently-used eviction to make room for a new one.
//!
//! The index of a plugin is built from its module directory the first time
//! the plugin stores or runs a module; the last-use order survives restarts
//! through each module file's modification time, which a use refreshes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The caps of one plugin's module store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleQuota {
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// Modules kept at most; the least recently used go first.
    pub max_modules: usize,
    /// Bytes of modules and their compiled code kept at most.
    pub max_stored_bytes: u64,
}

impl Default for ModuleQuota {
    fn default() -> Self {
        Self {
            max_module_bytes: 4 << 20,
            max_modules: 128,
            max_stored_bytes: 256 << 20,
        }
    }
}

/// One stored module: its size on disk and when it was last used.
#[derive(Debug, Clone, Copy)]
struct Stored {
    bytes: u64,
    last_use: u64,
}

/// The stored modules of one plugin, by digest.
#[derive(Debug, Default)]
pub(super) struct PluginModules {
    modules: HashMap<String, Stored>,
    clock: u64,
}

/// What making room for a module decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// The module fits; these (least recently used first) must go.
    Fits { evict: Vec<String> },
    /// The module alone is larger than the store.
    TooLarge,
}

impl PluginModules {
    /// The index of the modules under `dir` (`<hex>.wasm`), oldest use
    /// first by modification time; `size_of` gives each one's bytes on
    /// disk (module and compiled code).
    pub(super) fn scan(dir: &Path, size_of: impl Fn(&str, u64) -> u64) -> Self {
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".wasm")) else {
                    continue;
                };
                let digest = format!("sha256:{hex}");
                if !super::valid_digest(&digest) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((modified, digest, meta.len()));
            }
        }
        found.sort();
        let mut index = Self::default();
        for (_, digest, len) in found {
            let bytes = size_of(&digest, len);
            index.touch(&digest, bytes);
        }
        index
    }

    /// Records a use of `digest` (stored with `bytes` on disk).
    pub(super) fn touch(&mut self, digest: &str, bytes: u64) {
        self.clock += 1;
        let last_use = self.clock;
        self.modules
            .entry(digest.to_string())
            .and_modify(|s| s.last_use = last_use)
            .or_insert(Stored { bytes, last_use });
    }

    /// Records a use of `digest` if it is stored.
    pub(super) fn used(&mut self, digest: &str) {
        if let Some(bytes) = self.modules.get(digest).map(|s| s.bytes) {
            self.touch(digest, bytes);
        }
    }

    /// Which modules must go so that `digest`, taking `bytes`, fits under
    /// `quota`. Nothing changes until the caller [`forget`](Self::forget)s
    /// the evicted ones.
    pub(super) fn admit(&self, digest: &str, bytes: u64, quota: &ModuleQuota) -> Admission {
        if bytes > quota.max_stored_bytes {
            return Admission::TooLarge;
        }
        let mut others: Vec<(&String, &Stored)> =
            self.modules.iter().filter(|(d, _)| *d != digest).collect();
        others.sort_by_key(|(_, s)| s.last_use);
        let mut count = others.len() + 1;
        let mut total: u64 = others.iter().map(|(_, s)| s.bytes).sum::<u64>() + bytes;
        let mut evict = Vec::new();
        for (d, s) in others {
            if count <= quota.max_modules && total <= quota.max_stored_bytes {
                break;
            }
            evict.push(d.clone());
            count -= 1;
            total -= s.bytes;
        }
        Admission::Fits { evict }
    }

    /// Drops `digest` from the index.
    pub(super) fn forget(&mut self, digest: &str) {
        self.modules.remove(digest);
    }

    /// Modules stored and their bytes on disk.
    pub(super) fn usage(&self) -> (usize, u64) {
        (
            self.modules.len(),
            self.modules.values().map(|s| s.bytes).sum(),
        )
    }
}

/// Sets `path`'s modification time to now, so a restart knows it was used
/// recently. Best effort: the order in memory is what counts while the
/// gateway runs.
pub(super) fn mark_used(path: &PathBuf) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(max_modules: usize, max_stored_bytes: u64) -> ModuleQuota {
        ModuleQuota {
            max_module_bytes: 1 << 20,
            max_modules,
            max_stored_bytes,
        }
    }

    #[test]
    fn evicts_the_least_recently_used_past_the_count() {
        let mut m = PluginModules::default();
        m.touch("a", 10);
        m.touch("b", 10);
        m.used("a");
        assert_eq!(
            m.admit("c", 10, &quota(2, 1000)),
            Admission::Fits {
                evict: vec!["b".into()]
            }
        );
    }

    #[test]
    fn evicts_until_the_bytes_fit_and_refuses_what_never_fits() {
        let mut m = PluginModules::default();
        m.touch("a", 40);
        m.touch("b", 40);
        m.touch("c", 40);
        assert_eq!(
            m.admit("d", 70, &quota(10, 120)),
            Admission::Fits {
                evict: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(m.admit("d", 121, &quota(10, 120)), Admission::TooLarge);
        assert_eq!(
            m.admit("a", 40, &quota(3, 120)),
            Admission::Fits { evict: vec![] },
            "storing a module again needs no room"
        );
    }
}
