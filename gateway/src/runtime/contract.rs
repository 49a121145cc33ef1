//! The `depin:plugin` contract as the host sees it: generated bindings and
//! the load-time check that a component fits.

use std::collections::BTreeSet;

use wasmtime::Engine;
use wasmtime::component::Component;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "resource-plugin",
    imports: {
        "depin:plugin/blobs.fetch-into": async | trappable,
        "depin:plugin/blobs.pass-through": async | trappable,
        "depin:plugin/blobs.put": async | trappable,
        "depin:plugin/outbound-http.fetch": async | trappable,
        "depin:plugin/jobs.put-module": async | trappable,
        "depin:plugin/jobs.run": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    // Host functions fail with a `Blame`: the WIT error for the plugin, or
    // a trap. The generated glue turns it into one or the other.
    trappable_error_type: {
        "depin:plugin/kv.kv-error" => crate::runtime::host::Blame<depin::plugin::kv::KvError>,
        "depin:plugin/blobs.blob-error" => crate::runtime::host::Blame<depin::plugin::blobs::BlobError>,
        "depin:plugin/outbound-http.http-error" =>
            crate::runtime::host::Blame<depin::plugin::outbound_http::HttpError>,
        "depin:plugin/jobs.module-error" => crate::runtime::host::Blame<depin::plugin::jobs::ModuleError>,
        "depin:plugin/jobs.job-failure" => crate::runtime::host::Blame<depin::plugin::jobs::JobFailure>,
        "depin:plugin/outbound-udp.send-error" =>
            crate::runtime::host::Blame<depin::plugin::outbound_udp::SendError>,
    },
});

pub use depin::plugin::types::{BlobRef, Body, ResourceKind, UnitInfo, Usage};

/// The WIT name of a resource kind, e.g. `storage-cache`.
pub fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::HotspotRelay => "hotspot-relay",
        ResourceKind::StorageCache => "storage-cache",
        ResourceKind::ComputeTask => "compute-task",
        ResourceKind::SensorAggregator => "sensor-aggregator",
        ResourceKind::Other => "other",
    }
}

/// The contract this gateway speaks.
pub const CONTRACT: &str = "depin:plugin@0.1.4";
const PACKAGE: &str = "depin:plugin";
const VERSION_MAJOR_MINOR: &str = "0.1";

/// Exports every plugin must have.
pub const REQUIRED_EXPORTS: [&str; 8] = [
    "describe",
    "init",
    "handle-http",
    "handle-datagram",
    "handle-message",
    "tick",
    "prove",
    "verify",
];

/// Interfaces of the contract a plugin may import.
pub const CONTRACT_IMPORTS: [&str; 9] = [
    "types",
    "metering",
    "kv",
    "log",
    "config",
    "blobs",
    "outbound-http",
    "jobs",
    "outbound-udp",
];

/// What a component imports and exports, by name.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ComponentShape {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl ComponentShape {
    /// Reads the import and export names of `component`.
    pub fn of(engine: &Engine, component: &Component) -> Self {
        let ty = component.component_type();
        Self {
            imports: ty.imports(engine).map(|(n, _)| n.to_string()).collect(),
            exports: ty.exports(engine).map(|(n, _)| n.to_string()).collect(),
        }
    }

    /// True when the component imports any WASI interface (and so needs a
    /// WASI context when it calls one).
    pub fn uses_wasi(&self) -> bool {
        self.imports.iter().any(|i| i.starts_with("wasi:"))
    }

    /// Checks names against the contract: every required export present,
    /// every import one this gateway provides. Type mismatches are found
    /// later, when the component is linked ([`ComponentShape::explain_link_error`]).
    /// Each problem says what the plugin's author should change.
    pub fn check(&self) -> Result<(), String> {
        let exports: BTreeSet<&str> = self.exports.iter().map(String::as_str).collect();
        let missing: Vec<&str> = REQUIRED_EXPORTS
            .iter()
            .copied()
            .filter(|e| !exports.contains(e))
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(missing_exports(&missing, &self.exports));
        }
        for import in &self.imports {
            if let Some(problem) = import_problem(import) {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The contract versions the component was built against, from its
    /// `depin:plugin` imports (normally one).
    pub fn contract_versions(&self) -> BTreeSet<String> {
        self.imports
            .iter()
            .filter_map(|i| i.strip_prefix(PACKAGE)?.strip_prefix('/'))
            .filter_map(|rest| Some(rest.split_once('@')?.1.to_string()))
            .collect()
    }

    /// One line on the contract the component was built against, compared
    /// with this gateway's, e.g. `depin:plugin@0.1.1 (older than 0.1.3;
    /// 0.1.x plugins keep loading)`.
    pub fn built_against(&self) -> String {
        let versions = self.contract_versions();
        if versions.is_empty() {
            return "no depin:plugin import (a plugin that uses no host capability)".into();
        }
        let ours = version_of(CONTRACT);
        versions
            .iter()
            .map(|v| match (parse_version(v), parse_version(ours)) {
                (Some(theirs), Some(now)) if theirs == now => {
                    format!("{PACKAGE}@{v} (this gateway's)")
                }
                (Some(theirs), Some(now)) if (theirs.0, theirs.1) != (now.0, now.1) => {
                    format!("{PACKAGE}@{v} (another contract; this gateway speaks {ours})")
                }
                (Some(theirs), Some(now)) if theirs < now => {
                    format!("{PACKAGE}@{v} (older than {ours}; 0.1.x plugins keep loading)")
                }
                (Some(_), Some(_)) => format!(
                    "{PACKAGE}@{v} (newer than {ours}; it loads if it uses nothing added since)"
                ),
                _ => format!("{PACKAGE}@{v} (not a version)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Explains a linker or export-binding error in author terms: which
    /// import or export does not match, why, and what to change.
    pub fn explain_link_error(&self, error: &str) -> String {
        let quoted = |after: &str| -> Option<String> {
            let rest = &error[error.find(after)? + after.len()..];
            let rest = rest.strip_prefix('`')?;
            Some(rest[..rest.find('`')?].to_string())
        };
        if let Some(instance) = quoted("component imports instance ") {
            let item = quoted("instance export ").unwrap_or_default();
            return explain_missing_import(&instance, &item, error);
        }
        if let Some(export) = quoted("export ").or_else(|| quoted("function ")) {
            return format!(
                "its export `{export}` does not match {CONTRACT} ({error}). To change: build the \
                 plugin against this gateway's wit/ (Rust: the depin-plugin-sdk of this release, \
                 Python: componentize-py -d wit -w resource-plugin)"
            );
        }
        format!("{error} (build the plugin against this gateway's wit/, {CONTRACT})")
    }
}

/// WASI packages the gateway's linker provides: clocks and randomness, and
/// the rest denied (no environment or arguments, no preopened directory,
/// every socket address refused, stdin empty, stdout discarded).
const WASI_PROVIDED: [&str; 6] = [
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];
/// The WASI release line the linker provides.
const WASI_LINE: &str = "0.2.";

fn version_of(name: &str) -> &str {
    name.rsplit_once('@').map_or("", |(_, v)| v)
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split(['.', '-']).map(str::parse::<u32>);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

fn missing_exports(missing: &[&str], exports: &[String]) -> String {
    let mut text = format!("missing exports: {}.", missing.join(", "));
    if missing.len() == REQUIRED_EXPORTS.len() {
        text.push_str(&format!(
            " It exports {} instead: it targets another world, not `resource-plugin`.",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        ));
    }
    text.push_str(
        " To change: target the world `resource-plugin` of wit/ and export all eight \
         functions. Rust: implement `depin_plugin_sdk::Plugin` and call \
         `export_plugin!(YourPlugin)` (the SDK supplies a default for every export you leave \
         out). Python: define the class `WitWorld(wit_world.WitWorld)` with a method for each \
         export in the module you give componentize-py",
    );
    text
}

fn import_problem(import: &str) -> Option<String> {
    if import.starts_with("wasi:") {
        return wasi_problem(import);
    }
    let Some(rest) = import
        .strip_prefix(PACKAGE)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Some(format!(
            "imports `{import}`, which this gateway does not provide (it provides {CONTRACT} \
             interfaces {} and WASI 0.2 without files, environment or network). To change: \
             remove the dependency that imports it (`wasm-tools component wit FILE` shows the \
             imports), and reach the outside through the contract (`outbound-http`, \
             `outbound-udp`, `blobs`)",
            CONTRACT_IMPORTS.join(", ")
        ));
    };
    let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
    if !version.starts_with(&format!("{VERSION_MAJOR_MINOR}.")) {
        return Some(format!(
            "imports `{import}`: built against {PACKAGE}@{version}, this gateway speaks \
             {CONTRACT}. To change: rebuild the plugin against this gateway's wit/ (Rust: the \
             depin-plugin-sdk of this release, Python: componentize-py -d wit), or run a \
             gateway that speaks {version}"
        ));
    }
    if !CONTRACT_IMPORTS.contains(&iface) {
        let newer = parse_version(version) > parse_version(version_of(CONTRACT));
        return Some(if newer {
            format!(
                "imports `{import}`: interface `{iface}` comes from {PACKAGE}@{version}, newer \
                 than this gateway's {CONTRACT}. To change: upgrade the gateway, or build the \
                 plugin against {CONTRACT} and do without `{iface}`"
            )
        } else {
            format!(
                "imports `{import}`, which {CONTRACT} does not define (reserved for a later \
                 version?). To change: build against this gateway's wit/ unmodified"
            )
        });
    }
    None
}

fn wasi_problem(import: &str) -> Option<String> {
    let provided = WASI_PROVIDED.iter().any(|p| import.starts_with(p));
    let version = version_of(import);
    if provided && version.starts_with(WASI_LINE) {
        return None;
    }
    if provided {
        return Some(format!(
            "imports `{import}`: WASI {version}, but this gateway provides WASI 0.2. To change: \
             build for WASI 0.2 (Rust: `--target wasm32-wasip2`; Python: a componentize-py \
             release that targets WASI 0.2)"
        ));
    }
    let instead = if import.starts_with("wasi:http/") {
        "plugins make HTTP requests with `outbound-http.fetch` (Rust: \
         `depin_plugin_sdk::outbound_http::fetch`), to origins the operator allow-lists in \
         `[plugin.outbound] http`, and remove the WASI HTTP client (in Python: `urllib`/`requests` \
         over wasi:http)"
    } else {
        "remove the dependency that imports it: plugins reach state and the outside only \
         through the contract (`kv`, `blobs`, `config`, `outbound-http`, `outbound-udp`)"
    };
    Some(format!(
        "imports `{import}`, a WASI interface this gateway does not provide to plugins (it \
         provides wasi:cli, clocks, filesystem, io, random and sockets 0.2, with no files, \
         environment or network). To change: {instead}"
    ))
}

fn explain_missing_import(instance: &str, item: &str, error: &str) -> String {
    let what = if item.is_empty() {
        format!("`{instance}`")
    } else {
        format!("`{item}` of `{instance}`")
    };
    if let Some(rest) = instance
        .strip_prefix(PACKAGE)
        .and_then(|r| r.strip_prefix('/'))
    {
        let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
        if parse_version(version) > parse_version(version_of(CONTRACT)) {
            return format!(
                "uses `{iface}.{item}`, which comes from {PACKAGE}@{version}, newer than this \
                 gateway's {CONTRACT}. To change: upgrade the gateway to one that speaks \
                 {version}, or build the plugin against {CONTRACT} (this gateway's wit/) and do \
                 without `{iface}.{item}`"
            );
        }
        return format!(
            "imports {what}, which does not match {CONTRACT} ({error}). To change: build the \
             plugin against this gateway's wit/ unmodified"
        );
    }
    if instance.starts_with("wasi:") {
        return format!(
            "imports {what}, which this gateway's WASI 0.2 does not provide ({error}). To \
             change: build for WASI 0.2 (Rust: `--target wasm32-wasip2`), or remove what \
             imports it"
        );
    }
    format!("imports {what}, which this gateway does not provide ({error})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_exports_and_foreign_imports_are_named() {
        let shape = ComponentShape {
            imports: vec![
                "wasi:cli/environment@0.2.0".into(),
                "depin:plugin/kv@0.1.0".into(),
                "depin:plugin/teleport@0.1.0".into(),
                "acme:thing/x@1.0.0".into(),
                "depin:plugin/kv@0.2.0".into(),
            ],
            exports: vec!["describe".into(), "greet".into()],
        };
        let e = shape.check().unwrap_err();
        assert!(e.contains("missing exports: init, handle-http"), "{e}");
        assert!(
            e.contains("`acme:thing/x@1.0.0`, which this gateway does not provide"),
            "{e}"
        );
        assert!(
            e.contains("`depin:plugin/teleport@0.1.0`, which depin:plugin@0.1.4 does not define"),
            "{e}"
        );
        assert!(e.contains("built against depin:plugin@0.2.0"), "{e}");
        assert!(!e.contains("wasi:cli"), "{e}");
    }

    /// The binary of a component that imports one interface, `import`,
    /// with the single function `get: func(key: string) -> option<string>`
    /// (the `config.get` of every 0.1.x contract), and nothing else.
    fn component_importing(import: &str) -> Vec<u8> {
        component_importing_func(import, "get")
    }

    /// Like [`component_importing`], with the function named `func`.
    fn component_importing_func(import: &str, func: &str) -> Vec<u8> {
        let instance_type = [
            &[0x42, 3][..],
            // type 0: option<string>
            &[0x01, 0x6b, 0x73],
            // type 1: func(key: string) -> type 0
            &[0x01, 0x40, 1, 3, b'k', b'e', b'y', 0x73, 0x00, 0x00],
            // export `func`: func of type 1
            &[0x04, 0x00, func.len() as u8],
            func.as_bytes(),
            &[0x01, 0x01],
        ]
        .concat();
        let mut types = vec![1];
        types.extend_from_slice(&instance_type);
        let mut imports = vec![1, 0x00, import.len() as u8];
        imports.extend_from_slice(import.as_bytes());
        // an instance of type 0
        imports.extend_from_slice(&[0x05, 0x00]);
        let mut out = b"\0asm\x0d\x00\x01\x00".to_vec();
        for (id, body) in [(7u8, types), (10, imports)] {
            out.push(id);
            out.push(body.len() as u8);
            out.extend_from_slice(&body);
        }
        out
    }

    #[test]
    fn components_built_against_any_earlier_0_1_contract_still_link() {
        let runtime = crate::runtime::Runtime::new(
            &crate::config::RuntimeConfig {
                max_instances: 4,
                ..Default::default()
            },
            None,
        )
        .expect("runtime");
        let links = |version: &str| {
            let name = format!("{PACKAGE}/config@{version}");
            let component = Component::new(runtime.engine(), component_importing(&name))
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            runtime.linker().instantiate_pre(&component).map(|_| ())
        };
        for version in ["0.1.0", "0.1.1", "0.1.2", "0.1.3", "0.1.4"] {
            assert!(links(version).is_ok(), "{version}: {:?}", links(version));
        }
        assert!(links("0.2.0").is_err(), "0.2 is another contract");
        assert!(CONTRACT.ends_with("@0.1.4"));
    }

    fn link_error(import: &str, func: &str) -> String {
        let runtime = crate::runtime::Runtime::new(
            &crate::config::RuntimeConfig {
                max_instances: 4,
                ..Default::default()
            },
            None,
        )
        .expect("runtime");
        let component =
            Component::new(runtime.engine(), component_importing_func(import, func)).unwrap();
        let e = runtime
            .linker()
            .instantiate_pre(&component)
            .map(|_| ())
            .expect_err("does not link");
        let shape = ComponentShape::of(runtime.engine(), &component);
        shape.explain_link_error(&format!("{e:#}"))
    }

    #[test]
    fn a_function_of_a_newer_contract_is_explained_with_what_to_change() {
        let e = link_error("depin:plugin/kv@0.1.9", "add");
        assert!(
            e.contains(&format!(
                "uses `kv.add`, which comes from depin:plugin@0.1.9, newer than this gateway's {CONTRACT}"
            )),
            "{e}"
        );
        assert!(e.contains("upgrade the gateway"), "{e}");
        assert!(e.contains("do without `kv.add`"), "{e}");
    }

    #[test]
    fn wasi_outside_what_the_gateway_provides_is_explained() {
        let shape = ComponentShape {
            imports: vec![
                "wasi:http/outgoing-handler@0.2.0".into(),
                "wasi:io/poll@0.3.0".into(),
                "wasi:io/poll@0.2.9".into(),
            ],
            exports: REQUIRED_EXPORTS.iter().map(|s| s.to_string()).collect(),
        };
        let e = shape.check().unwrap_err();
        assert!(
            e.contains(
                "`wasi:http/outgoing-handler@0.2.0`, a WASI interface this gateway does not provide"
            ),
            "{e}"
        );
        assert!(e.contains("outbound-http.fetch"), "{e}");
        assert!(
            e.contains("`wasi:io/poll@0.3.0`: WASI 0.3.0, but this gateway provides WASI 0.2"),
            "{e}"
        );
        assert!(!e.contains("0.2.9"), "{e}");
        let e = link_error("wasi:http/types@0.2.0", "get");
        assert!(
            e.contains("which this gateway's WASI 0.2 does not provide"),
            "{e}"
        );
    }

    #[test]
    fn another_world_is_named_as_such() {
        let shape = ComponentShape {
            imports: vec![],
            exports: vec!["greet".into()],
        };
        let e = shape.check().unwrap_err();
        assert!(
            e.contains("It exports greet instead: it targets another world"),
            "{e}"
        );
        assert!(e.contains("export_plugin!(YourPlugin)"), "{e}");
        assert!(e.contains("WitWorld(wit_world.WitWorld)"), "{e}");
    }

    #[test]
    fn the_contract_a_component_was_built_against_is_compared_with_ours() {
        let built = |v: &str| ComponentShape {
            imports: vec![format!("depin:plugin/kv@{v}")],
            exports: vec![],
        };
        let ours = version_of(CONTRACT);
        assert!(built(ours).built_against().contains("this gateway's"));
        let older = built("0.1.0").built_against();
        let wanted = format!("older than {ours}; 0.1.x plugins keep loading");
        assert!(ours == "0.1.0" || older.contains(&wanted), "{older}");
        let newer = built("0.1.999").built_against();
        assert!(newer.contains(&format!("newer than {ours}")), "{newer}");
        assert!(built("0.2.0").built_against().contains("another contract"));
        let none = ComponentShape::default().built_against();
        assert!(none.contains("no depin:plugin import"), "{none}");
    }

    #[test]
    fn a_complete_shape_passes() {
        let shape = ComponentShape {
            imports: vec![
                "depin:plugin/metering@0.1.0".into(),
                "wasi:io/streams@0.2.6".into(),
            ],
            exports: REQUIRED_EXPORTS.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(shape.check(), Ok(()));
        assert!(shape.uses_wasi());
    }
}
