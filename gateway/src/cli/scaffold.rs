//! `depin-gateway plugin new`: writes a standalone plugin crate that builds
//! for `wasm32-wasip2` with one command and passes its tests as generated.
//!
//! The crate depends on the SDK by path when it is created inside a
//! checkout of this repository (or `--sdk-path` names one): it then builds
//! against exactly the SDK and contract of that checkout, and its
//! `Cargo.lock` starts from the checkout's, so it resolves the same
//! dependency versions. Anywhere else it depends on `depin-plugin-sdk` by
//! version, the version of this gateway (the SDK and the gateway are
//! released together, so the contract matches).

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

/// Which resource the new plugin provides (its `describe` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Kind {
    HotspotRelay,
    StorageCache,
    ComputeTask,
    SensorAggregator,
    Other,
}

impl Kind {
    fn wit_name(self) -> &'static str {
        match self {
            Kind::HotspotRelay => "hotspot-relay",
            Kind::StorageCache => "storage-cache",
            Kind::ComputeTask => "compute-task",
            Kind::SensorAggregator => "sensor-aggregator",
            Kind::Other => "other",
        }
    }

    fn variant(self) -> &'static str {
        match self {
            Kind::HotspotRelay => "HotspotRelay",
            Kind::StorageCache => "StorageCache",
            Kind::ComputeTask => "ComputeTask",
            Kind::SensorAggregator => "SensorAggregator",
            Kind::Other => "Other",
        }
    }
}

/// What `plugin new` was asked for.
#[derive(Debug, clap::Args)]
pub(super) struct NewPlugin {
    /// The plugin's name: lower-case letters, digits and `-`, starting with
    /// a letter. It names the crate, the plugin and its route.
    name: String,
    /// The resource the plugin provides.
    #[arg(long, value_enum, default_value = "other")]
    kind: Kind,
    /// Where to create the crate [default: ./NAME]. Must not exist yet.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Depend on the SDK in this directory (a checkout's `plugin-sdk`)
    /// instead of finding it or using the released version.
    #[arg(long)]
    sdk_path: Option<PathBuf>,
}

/// The files of a new crate, relative to its directory, with their
/// templates.
const FILES: [(&str, &str); 7] = [
    ("Cargo.toml", include_str!("scaffold/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("scaffold/lib.rs.tmpl")),
    ("tests/gateway.rs", include_str!("scaffold/gateway.rs.tmpl")),
    (
        "tests/plugin.toml",
        include_str!("scaffold/plugin.toml.tmpl"),
    ),
    ("tests/calls.toml", include_str!("scaffold/calls.toml.tmpl")),
    ("README.md", include_str!("scaffold/README.md.tmpl")),
    (".gitignore", "/target\n"),
];

impl NewPlugin {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        check_name(&self.name)?;
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&self.name));
        if dir.exists() {
            bail!("{} exists already; pick another --dir", dir.display());
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let at = dir.canonicalize()?;
        let sdk = match &self.sdk_path {
            Some(p) => Some(
                p.canonicalize()
                    .with_context(|| format!("--sdk-path {}", p.display()))?,
            ),
            None => enclosing_checkout(&at).map(|root| root.join("plugin-sdk")),
        };
        let sdk_dependency = match &sdk {
            Some(path) => format!(
                "depin-plugin-sdk = {{ path = \"{}\" }}",
                relative(&at, path).display()
            ),
            None => format!("depin-plugin-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
        };
        let vars = [
            ("{{name}}", self.name.clone()),
            ("{{lib_name}}", self.name.replace('-', "_")),
            ("{{type_name}}", type_name(&self.name)),
            ("{{kind}}", self.kind.wit_name().to_string()),
            ("{{kind_variant}}", self.kind.variant().to_string()),
            ("{{sdk_dependency}}", sdk_dependency),
        ];
        for (file, template) in FILES {
            let text = vars
                .iter()
                .fold(template.to_string(), |t, (k, v)| t.replace(k, v));
            let path = at.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        // The checkout's lock file: the same dependency versions as the
        // gateway and its plugins, already downloaded and often built.
        if let Some(lock) = sdk
            .as_ref()
            .and_then(|s| s.parent())
            .map(|r| r.join("Cargo.lock"))
            && lock.is_file()
        {
            std::fs::copy(&lock, at.join("Cargo.lock"))?;
        }
        // Laid out as `cargo fmt` would, when rustfmt is installed.
        let _ = std::process::Command::new("rustfmt")
            .args(["--edition", "2024", "src/lib.rs", "tests/gateway.rs"])
            .current_dir(&at)
            .status();
        println!("created {} in {}", self.name, dir.display());
        match &sdk {
            Some(p) => println!("  SDK:  by path, {}", p.display()),
            None => println!(
                "  SDK:  depin-plugin-sdk {} (use --sdk-path to build against a checkout)",
                env!("CARGO_PKG_VERSION")
            ),
        }
        println!("next:");
        println!("  cd {}", dir.display());
        println!("  cargo build --release --target wasm32-wasip2");
        println!("  cargo test");
        Ok(ExitCode::SUCCESS)
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!(
            "`{name}` is not a plugin name: use 1 to 64 lower-case letters, digits and `-`, \
             starting with a letter (e.g. `air-quality`)"
        );
    }
    Ok(())
}

/// `air-quality` → `AirQuality`.
fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The root of the checkout of this repository that contains `dir`, if any.
fn enclosing_checkout(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|a| {
        let manifest = std::fs::read_to_string(a.join("plugin-sdk/Cargo.toml")).ok()?;
        manifest
            .contains("name = \"depin-plugin-sdk\"")
            .then(|| a.to_path_buf())
    })
}

/// `to` relative to `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_rust_types_and_bad_names_are_refused() {
        assert_eq!(type_name("air-quality"), "AirQuality");
        assert_eq!(type_name("echo2"), "Echo2");
        assert!(check_name("air-quality").is_ok());
        for bad in ["", "Air", "1up", "a_b", "echo-", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        let r = relative(Path::new("/a/b/c"), Path::new("/a/plugin-sdk"));
        assert_eq!(r, PathBuf::from("../../plugin-sdk"));
    }

    #[test]
    fn every_placeholder_is_filled() {
        for (file, template) in FILES {
            for piece in template.split("{{").skip(1) {
                let name = piece.split("}}").next().unwrap_or("");
                let known = [
                    "name",
                    "lib_name",
                    "type_name",
                    "kind",
                    "kind_variant",
                    "sdk_dependency",
                ];
                // `{{` also escapes a brace in Rust format strings.
                if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !name.is_empty() {
                    assert!(known.contains(&name), "{file}: {{{{{name}}}}}");
                }
            }
        }
    }
}
