//! `depin:plugin/log`: plugin messages in the gateway's log, tagged with the
//! plugin and the request id.
//!
//! Bounded: a call may log at most [`CALL_LOG_LINES`] lines and
//! [`CALL_LOG_BYTES`] bytes, and a plugin as a whole at most
//! [`PLUGIN_LOG_BYTES_PER_SEC`] on average (bursts up to
//! [`PLUGIN_LOG_BURST_BYTES`]). Lines past a limit are dropped and counted
//! in `depin_plugin_log_dropped_total{plugin}`; the gateway says so in its
//! own log once when a plugin starts being cut, then at most every
//! [`DROP_NOTICE_EVERY`] while it goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::HasData;

use crate::runtime::contract::depin::plugin::log::{Host, Level};
use crate::runtime::state::CallState;

/// Longest message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most lines one call may log.
pub const CALL_LOG_LINES: u32 = 256;
/// Most bytes one call may log (messages as kept, after truncation).
pub const CALL_LOG_BYTES: usize = 64 << 10;
/// What one plugin may log per second on average, over all its calls.
pub const PLUGIN_LOG_BYTES_PER_SEC: f64 = (256 << 10) as f64;
/// What one plugin may log at once after being quiet.
pub const PLUGIN_LOG_BURST_BYTES: f64 = (1 << 20) as f64;
/// How often, at most, the gateway repeats that a plugin's lines are
/// being dropped.
pub const DROP_NOTICE_EVERY: Duration = Duration::from_secs(10);

/// What one call has logged.
#[derive(Debug, Default)]
pub(crate) struct CallLog {
    lines: u32,
    bytes: usize,
}

/// One plugin's allowance (a token bucket of bytes) and its drop notices.
struct PluginAllowance {
    tokens: f64,
    refilled: Instant,
    /// Lines dropped since the last notice, and when that was.
    dropped_unreported: u64,
    noticed: Option<Instant>,
}

impl PluginAllowance {
    fn new(now: Instant) -> Self {
        Self {
            tokens: PLUGIN_LOG_BURST_BYTES,
            refilled: now,
            dropped_unreported: 0,
            noticed: None,
        }
    }

    fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * PLUGIN_LOG_BYTES_PER_SEC).min(PLUGIN_LOG_BURST_BYTES);
        self.refilled = now;
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

/// Every plugin's allowance, by plugin name (kept across reloads, so a
/// reload does not reset a flooding plugin's budget). Bounded by the
/// number of configured plugin names.
fn allowances() -> &'static Mutex<HashMap<Arc<str>, PluginAllowance>> {
    static ALLOWANCES: OnceLock<Mutex<HashMap<Arc<str>, PluginAllowance>>> = OnceLock::new();
    ALLOWANCES.get_or_init(Default::default)
}

/// Why a line was dropped.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Call,
    Plugin,
}

/// What `log` functions reach during one call: whom to tag lines with,
/// and what the call has logged so far.
pub(crate) struct LogView<'a> {
    plugin: &'a Arc<str>,
    request_id: &'a str,
    call: &'a mut CallLog,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> LogView<'_> {
    LogView {
        plugin: &call.plugin.name,
        request_id: &call.request_id,
        call: &mut call.log,
    }
}

/// The `log` capability, for the linker.
pub(crate) struct Log;

impl HasData for Log {
    type Data<'a> = LogView<'a>;
}

impl LogView<'_> {
    /// Whether a line of `bytes` may be written; counts it if so, and the
    /// drop (with a notice when due) if not.
    fn admit(&mut self, bytes: usize) -> bool {
        let cut = if self.call.lines >= CALL_LOG_LINES || self.call.bytes + bytes > CALL_LOG_BYTES {
            Some(Cut::Call)
        } else {
            None
        };
        let now = Instant::now();
        let mut all = allowances().lock().expect("log allowances lock");
        let allowance = match all.get_mut(self.plugin) {
            Some(a) => a,
            None => all
                .entry(self.plugin.clone())
                .or_insert_with(|| PluginAllowance::new(now)),
        };
        let cut = match cut {
            Some(c) => Some(c),
            None if !allowance.take(bytes, now) => Some(Cut::Plugin),
            None => None,
        };
        let Some(cut) = cut else {
            self.call.lines += 1;
            self.call.bytes += bytes;
            return true;
        };
        allowance.dropped_unreported += 1;
        crate::metrics::global().record_log_dropped(self.plugin, 1);
        let due = allowance
            .noticed
            .is_none_or(|at| now.saturating_duration_since(at) >= DROP_NOTICE_EVERY);
        if due {
            let dropped = std::mem::take(&mut allowance.dropped_unreported);
            allowance.noticed = Some(now);
            let limit = match cut {
                Cut::Call => format!("{CALL_LOG_LINES} lines or {CALL_LOG_BYTES} bytes per call"),
                Cut::Plugin => format!(
                    "{PLUGIN_LOG_BYTES_PER_SEC} bytes per second per plugin (bursts of {PLUGIN_LOG_BURST_BYTES})"
                ),
            };
            tracing::warn!(
                plugin = %self.plugin,
                request_id = self.request_id,
                dropped,
                "plugin log lines dropped: over {limit}; counted in depin_plugin_log_dropped_total, \
                 next notice in {} s at the earliest",
                DROP_NOTICE_EVERY.as_secs()
            );
        }
        false
    }
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
        if !self.admit(message.len()) {
            return Ok(());
        }
        let plugin = &**self.plugin;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_allowance_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut a = PluginAllowance::new(t0);
        assert!(a.take(PLUGIN_LOG_BURST_BYTES as usize, t0));
        assert!(!a.take(1, t0), "the burst is spent");
        let half_second = t0 + Duration::from_millis(500);
        let refill = (PLUGIN_LOG_BYTES_PER_SEC / 2.0) as usize;
        assert!(a.take(refill - 1, half_second));
        assert!(!a.take(1024, half_second));
        let much_later = t0 + Duration::from_secs(3600);
        assert!(a.take(PLUGIN_LOG_BURST_BYTES as usize, much_later));
        assert!(!a.take(1, much_later), "never more than the burst");
    }
}
