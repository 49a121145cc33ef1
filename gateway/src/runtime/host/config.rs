//! `depin:plugin/config`: the plugin's own `config` table, read-only.

use std::collections::BTreeMap;

use wasmtime::component::HasData;

use crate::runtime::contract::depin::plugin::config::Host;
use crate::runtime::state::CallState;

/// What `config` functions reach during one call: the plugin's table.
/// The capability keeps no state.
pub(crate) struct ConfigView<'a> {
    table: &'a BTreeMap<String, String>,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> ConfigView<'_> {
    ConfigView {
        table: &call.plugin.config,
    }
}

/// The `config` capability, for the linker.
pub(crate) struct Config;

impl HasData for Config {
    type Data<'a> = ConfigView<'a>;
}

impl Host for ConfigView<'_> {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&key).cloned())
    }

    fn all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .table
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
