//! Loading the reward policy file. The policy types and the reward
//! function are in `depin_protocol::rewards`, shared with the collector.

use std::path::{Path, PathBuf};

use depin_protocol::rewards::RewardPolicy;

use crate::config::ConfigError;

/// Reads and validates a policy file; errors name the file and key.
pub fn load_policy(path: &Path) -> Result<RewardPolicy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: None,
        problem: format!("cannot read the reward policy: {e}"),
    })?;
    parse_policy(path, &text)
}

/// Parses policy text that came from `path`.
pub fn parse_policy(path: &Path, text: &str) -> Result<RewardPolicy, ConfigError> {
    let err = |key: Option<String>, problem: String| ConfigError {
        file: PathBuf::from(path),
        key,
        problem,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| err(None, e.message().into()))?;
    let policy: RewardPolicy = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        err(
            (key != "." && !key.is_empty()).then_some(key),
            e.inner().message().trim().to_string(),
        )
    })?;
    policy.validate().map_err(|e| err(Some(e.key), e.problem))?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_policy_names_the_key() {
        let e = parse_policy(
            Path::new("r.toml"),
            "[[rate]]\nkind = \"*\"\nunit = \"u\"\nmicro = 1\nper = 0\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("rate[0].per"), "{e}");
        let e = parse_policy(Path::new("r.toml"), "[proof]\nfloor = 1\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("proof.floor"), "{e}");
        assert!(e.to_string().starts_with("r.toml"), "{e}");
    }
}
