//! Entry points of the fuzz targets (`fuzz/`) for what reaches the
//! gateway from outside its process and is parsed here rather than in
//! `depin-protocol`: the configuration file and the ledger's log. The
//! libFuzzer binaries call them; `tests` below replays their saved
//! corpora (`fuzz/corpus/<target>/`) as ordinary unit tests.

use std::path::Path;

use crate::config::GatewayConfig;

/// `gateway.toml`: any text either parses and validates, or is refused
/// with an error that names the file (the configuration contract).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/depin/gateway.toml");
    match GatewayConfig::parse(path, text) {
        Ok(config) => {
            // Paths inside resolve against the file's directory.
            assert!(config.data_dir.is_absolute(), "{:?}", config.data_dir);
            let _ = config.key_path();
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("/etc/depin/gateway.toml"), "{message}");
        }
    }
}

/// `ledger.wal`: what the ledger replays at start (see
/// `ledger/wal.rs`).
pub fn ledger_log(data: &[u8]) {
    let _ = crate::ledger::fuzz_replay(data);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every saved input of `target`'s corpus, with its name.
    pub(crate) fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} is empty", dir.display());
        inputs
    }

    use super::*;

    #[test]
    fn the_config_corpus_replays() {
        for (path, input) in corpus("gateway_config") {
            eprintln!("{}", path.display());
            config(&input);
        }
    }

    #[test]
    fn the_ledger_log_corpus_replays() {
        let mut entries = 0;
        for (path, input) in corpus("ledger_log") {
            eprintln!("{}", path.display());
            entries += crate::ledger::fuzz_replay(&input);
        }
        assert!(entries > 0, "no saved input reaches the payload parser");
    }
}
