//! The table of loaded plugins that every ingress reads per call.
//!
//! A reload builds a whole new [`PluginSet`] and swaps it in at once. A call
//! takes an `Arc` of the plugin it routes to, so a call already running
//! finishes on the version it started with, and the next call sees the new
//! one; no call ever sees half a reload.

use std::sync::{Arc, RwLock};

use crate::config::PluginConfig;
use crate::runtime::LoadedPlugin;

/// One consistent generation of plugins and their HTTP routes.
pub struct PluginSet {
    /// Counts up by one per successful reload; the first set is 1.
    pub generation: u64,
    /// (configuration, plugin), in configuration order.
    pub plugins: Vec<(PluginConfig, Arc<LoadedPlugin>)>,
    /// (normalized prefix, plugin), longest prefix first.
    routes: Vec<(String, Arc<LoadedPlugin>)>,
}

impl PluginSet {
    /// A set of `plugins` (in configuration order) and the routes they claim.
    pub fn new(generation: u64, plugins: Vec<(PluginConfig, Arc<LoadedPlugin>)>) -> Self {
        let mut routes: Vec<(String, Arc<LoadedPlugin>)> = plugins
            .iter()
            .filter_map(|(cfg, p)| Some((cfg.normalized_route()?, p.clone())))
            .collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            generation,
            plugins,
            routes,
        }
    }

    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins
            .iter()
            .find(|(_, p)| &*p.shared.name == name)
            .map(|(_, p)| p)
    }

    /// The plugin for an HTTP `path` and the path below its prefix; the
    /// longest matching prefix wins, `/` catches everything else.
    pub fn route<'a>(&self, path: &'a str) -> Option<(&Arc<LoadedPlugin>, &'a str)> {
        self.routes.iter().find_map(|(prefix, plugin)| {
            if prefix == "/" {
                return Some((plugin, path));
            }
            let rest = path.strip_prefix(prefix.as_str())?;
            if rest.is_empty() {
                Some((plugin, "/"))
            } else if rest.starts_with('/') {
                Some((plugin, rest))
            } else {
                None
            }
        })
    }
}

/// The current [`PluginSet`], swapped atomically by reloads.
///
/// Ingresses and workers look plugins up per call (`table.get(name)` or
/// `table.route(path)`) instead of holding an `Arc<LoadedPlugin>` for their
/// lifetime, so they follow reloads.
pub struct PluginTable {
    current: RwLock<Arc<PluginSet>>,
}

impl PluginTable {
    /// A table holding `set`.
    pub fn new(set: PluginSet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// The current generation. Cheap: one read lock and an `Arc` clone.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.current.read().expect("plugin table lock").clone()
    }

    /// The current version of the plugin called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.snapshot().get(name).cloned()
    }

    /// The current plugin for an HTTP `path`, and the path below its prefix.
    pub fn route(&self, path: &str) -> Option<(Arc<LoadedPlugin>, String)> {
        let set = self.snapshot();
        set.route(path)
            .map(|(p, rest)| (p.clone(), rest.to_string()))
    }

    /// Replaces the current set; returns the one it replaced. Calls that
    /// already hold a plugin of the old set finish on it.
    pub fn swap(&self, set: PluginSet) -> Arc<PluginSet> {
        let mut current = self.current.write().expect("plugin table lock");
        std::mem::replace(&mut *current, Arc::new(set))
    }
}
