//! The one TOML loader and path resolver every configuration file uses
//! (the gateway's, the reward policy, the collector's): errors name the
//! file, the key as a dotted path, and the line and column.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The offending key as a dotted path (`plugin[0].limits.memory_mb`),
    /// when the problem is with one key.
    pub key: Option<String>,
    /// The problem, in words.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses the TOML file at `path` into `T`. Unknown keys are
/// errors when `T` denies them; every error names the file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    parse_toml(path, &read_config(path)?)
}

/// The text of the configuration file at `path`, or an error naming it.
pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: None,
        problem: format!("cannot read the configuration file: {e}"),
    })
}

/// Parses TOML `text` that came from `path` into `T`; an error names the
/// offending key (`plugin[0].limits.memory_mb`) and its line and column.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let err = |key: Option<String>, problem: String| ConfigError {
        file: path.to_path_buf(),
        key,
        problem,
    };
    let de =
        toml::Deserializer::parse(text).map_err(|e| err(None, describe_toml_error(text, &e)))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = (key != "." && !key.is_empty()).then_some(key);
        err(key, describe_toml_error(text, e.inner()))
    })
}

/// `p` as written in a configuration file whose directory is `base`:
/// absolute paths stay, relative ones are relative to `base`.
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Turns a toml error into one line with its position.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}
