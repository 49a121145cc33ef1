//! The plugin's settings, from its `[plugin.config]` table.

use depin_plugin_sdk::config;

/// Every key the plugin understands.
pub const KEYS: [&str; 5] = [
    "window_ms",
    "max_future_ms",
    "max_age_ms",
    "admin_token",
    "close_grace_ms",
];

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Length of aggregate and proof windows, in milliseconds (default 60 000).
    pub window_ms: i64,
    /// How far a reading's time may be ahead of the gateway's clock
    /// (default 60 000).
    pub max_future_ms: i64,
    /// How far a reading's time may be behind the gateway's clock
    /// (default 86 400 000, one day).
    pub max_age_ms: i64,
    /// Bearer token of the admin endpoints; they answer 403 without one.
    pub admin_token: Option<String>,
    /// How long after a window's end its Merkle root is built (default 2 000).
    pub close_grace_ms: i64,
}

impl Settings {
    /// Reads and checks the configuration.
    pub fn load() -> Result<Self, String> {
        let positive = |key: &str, default: i64| -> Result<i64, String> {
            match config::parse::<i64>(key)? {
                None => Ok(default),
                Some(v) if v > 0 => Ok(v),
                Some(v) => Err(format!("config `{key}` = `{v}`: must be greater than 0")),
            }
        };
        let admin_token = config::get("admin_token");
        if admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err("config `admin_token`: must be at least 16 characters".into());
        }
        Ok(Self {
            window_ms: positive("window_ms", 60_000)?,
            max_future_ms: positive("max_future_ms", 60_000)?,
            max_age_ms: positive("max_age_ms", 86_400_000)?,
            admin_token,
            close_grace_ms: positive("close_grace_ms", 2_000)?,
        })
    }

    /// The window a time falls in.
    pub fn window_of(&self, time_ms: i64) -> u64 {
        (time_ms.max(0) / self.window_ms) as u64
    }

    /// Start of `window`, Unix milliseconds.
    pub fn window_start(&self, window: u64) -> i64 {
        window as i64 * self.window_ms
    }
}
