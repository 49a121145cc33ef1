//! `depin:plugin/config`: the plugin's own `config` table, read-only.

use wasmtime::Result;

use crate::runtime::contract::depin::plugin::config::Host;
use crate::runtime::state::CallState;

impl Host for CallState {
    fn get(&mut self, key: String) -> Result<Option<String>> {
        Ok(self.plugin.config.get(&key).cloned())
    }

    fn all(&mut self) -> Result<Vec<(String, String)>> {
        Ok(self
            .plugin
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
