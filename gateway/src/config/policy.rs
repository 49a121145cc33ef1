//! The reward policy file (`[epochs] policy`, and the collector's
//! `policy`). The policy's types and the reward function are in
//! `depin_protocol::rewards`, shared with the collector; this is only how
//! the file is read.

use std::path::Path;

use depin_protocol::rewards::RewardPolicy;

use super::{ConfigError, load_toml, parse_toml};

/// Reads and validates a policy file; errors name the file and key.
pub fn load_policy(path: &Path) -> Result<RewardPolicy, ConfigError> {
    let policy: RewardPolicy = load_toml(path)?;
    validated(path, policy)
}

/// Parses policy text that came from `path`.
pub fn parse_policy(path: &Path, text: &str) -> Result<RewardPolicy, ConfigError> {
    let policy: RewardPolicy = parse_toml(path, text)?;
    validated(path, policy)
}

fn validated(path: &Path, policy: RewardPolicy) -> Result<RewardPolicy, ConfigError> {
    policy.validate().map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: Some(e.key),
        problem: e.problem,
    })?;
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

    #[test]
    fn syntax_errors_give_the_line_and_column() {
        let e = parse_policy(Path::new("r.toml"), "[[rate]]\nkind = \n").unwrap_err();
        assert!(e.problem.contains("line 2"), "{e}");
    }
}
