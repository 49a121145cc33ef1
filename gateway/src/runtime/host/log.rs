//! `depin:plugin/log`: plugin messages in the gateway's log, tagged with the
//! plugin and the request id.

use wasmtime::Result;

use crate::runtime::contract::depin::plugin::log::{Host, Level};
use crate::runtime::state::CallState;

/// Longest message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;

impl Host for CallState {
    fn log(&mut self, level: Level, mut message: String) -> Result<()> {
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.plugin.name;
        let request_id = &*self.request_id;
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, request_id, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, request_id, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, request_id, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, request_id, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, request_id, "{message}"),
        }
        Ok(())
    }
}
