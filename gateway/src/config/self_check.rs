//! `[self_check]`: the gateway challenges its own plugins the way the
//! collector does, so a broken proof shows on the console and in the
//! metrics before a collector scores it.

use serde::Deserialize;

use super::PluginConfig;

/// `[self_check]` in `gateway.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfCheckConfig {
    /// How often every template is run, in milliseconds (default 5 min).
    pub interval_ms: u64,
    /// Challenge templates, one per plugin and kind: the same tables as the
    /// collector's `[[challenges.possession]]`, without the component and
    /// digest (the gateway verifies with the plugin it serves).
    pub possession: Vec<SelfCheckTemplate>,
}

impl Default for SelfCheckConfig {
    fn default() -> Self {
        Self {
            interval_ms: 300_000,
            possession: Vec::new(),
        }
    }
}

/// One `[[self_check.possession]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfCheckTemplate {
    /// The plugin's configured name.
    pub plugin: String,
    /// The plugin-specific challenge kind, e.g. `echo-hash`.
    pub kind: String,
    /// Kind-specific parameters, hex.
    #[serde(default)]
    pub params: String,
}

impl SelfCheckConfig {
    /// Checks the interval, the parameters and that every template names a
    /// configured plugin; returns (key, problem).
    pub fn validate(&self, plugins: &[PluginConfig]) -> Result<(), (String, String)> {
        if self.interval_ms < 100 {
            return Err((
                "self_check.interval_ms".into(),
                format!("{} is below the minimum of 100 ms", self.interval_ms),
            ));
        }
        for (i, t) in self.possession.iter().enumerate() {
            if !plugins.iter().any(|p| p.name == t.plugin) {
                return Err((
                    format!("self_check.possession[{i}].plugin"),
                    format!("no plugin named `{}` is configured", t.plugin),
                ));
            }
            if t.kind.is_empty() {
                return Err((
                    format!("self_check.possession[{i}].kind"),
                    "must not be empty".into(),
                ));
            }
            if hex::decode(&t.params).is_err() {
                return Err((
                    format!("self_check.possession[{i}].params"),
                    "must be hex".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_test_config as parse;

    #[test]
    fn templates_must_name_a_configured_plugin() {
        let c = parse("").unwrap();
        assert!(c.self_check.possession.is_empty());
        assert_eq!(c.self_check.interval_ms, 300_000);
        let e =
            parse("[[self_check.possession]]\nplugin = \"x\"\nkind = \"echo-hash\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("self_check.possession[0].plugin"));
        let e = parse("[self_check]\ninterval_ms = 5\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("self_check.interval_ms"));
    }
}
