//! Entry point of the fuzz target (`fuzz/`) for the collector's
//! configuration file; `tests` below replays its saved corpus
//! (`fuzz/corpus/collector_config/`) as an ordinary unit test.

use std::path::Path;

use crate::config::CollectorConfig;

/// `collector.toml`: any text either parses and validates, or is refused
/// with an error that names the file. Texts naming `url_file` are
/// skipped: that key makes the parser read the file it names, which is
/// the operator's choice, not input to fuzz.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("url_file") {
        return;
    }
    let path = Path::new("/etc/depin/collector.toml");
    if let Err(e) = CollectorConfig::parse(path, text) {
        let message = e.to_string();
        assert!(
            message.starts_with("/etc/depin/collector.toml"),
            "{message}"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_corpus_replays() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/collector_config");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            eprintln!("{}", path.display());
            config(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
        assert!(replayed > 0, "{} is empty", dir.display());
    }

    use super::*;
}
