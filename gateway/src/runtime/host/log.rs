//! `depin:plugin/log`: plugin messages in the gateway's log, tagged with the
//! plugin and the request id.

use wasmtime::component::HasData;

use crate::runtime::contract::depin::plugin::log::{Host, Level};
use crate::runtime::state::CallState;

/// Longest message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// What `log` functions reach during one call: whom to tag lines with.
/// The capability keeps no state.
pub(crate) struct LogView<'a> {
    plugin: &'a str,
    request_id: &'a str,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> LogView<'_> {
    LogView {
        plugin: &call.plugin.name,
        request_id: &call.request_id,
    }
}

/// The `log` capability, for the linker.
pub(crate) struct Log;

impl HasData for Log {
    type Data<'a> = LogView<'a>;
}

impl Host for LogView<'_> {
    fn log(&mut self, level: Level, mut message: String) -> wasmtime::Result<()> {
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = self.plugin;
        let request_id = self.request_id;
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
