//! `[epochs]` in `gateway.toml`: epoch length and the reward policy file.

use std::path::PathBuf;

use serde::Deserialize;

/// `[epochs]` in `gateway.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpochsConfig {
    /// Epoch length in milliseconds (default one hour).
    pub length_ms: u64,
    /// How long after an epoch's end it is closed, so records committed at
    /// its very end are in it (default 1000 ms).
    pub close_delay_ms: u64,
    /// The reward policy file (TOML), relative to the configuration file.
    /// Without one every epoch's reward is 0.
    pub policy: Option<PathBuf>,
}

impl Default for EpochsConfig {
    fn default() -> Self {
        Self {
            length_ms: 3_600_000,
            close_delay_ms: 1_000,
            policy: None,
        }
    }
}

impl EpochsConfig {
    /// Checks values; returns (key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.length_ms < 100 {
            return Err((
                "epochs.length_ms".into(),
                format!("{} is below the minimum of 100 ms", self.length_ms),
            ));
        }
        if self.close_delay_ms >= self.length_ms {
            return Err((
                "epochs.close_delay_ms".into(),
                "must be shorter than epochs.length_ms".into(),
            ));
        }
        Ok(())
    }
}
