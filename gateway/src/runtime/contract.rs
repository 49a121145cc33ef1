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
pub const CONTRACT: &str = "depin:plugin@0.1.3";
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
    /// later, when the component is linked.
    pub fn check(&self) -> Result<(), String> {
        let exports: BTreeSet<&str> = self.exports.iter().map(String::as_str).collect();
        let missing: Vec<&str> = REQUIRED_EXPORTS
            .iter()
            .copied()
            .filter(|e| !exports.contains(e))
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("missing exports: {}", missing.join(", ")));
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
}

fn import_problem(import: &str) -> Option<String> {
    if import.starts_with("wasi:") {
        return None; // checked against the linker
    }
    let Some(rest) = import
        .strip_prefix(PACKAGE)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Some(format!(
            "imports `{import}`, which this gateway does not provide (it provides {CONTRACT} \
             interfaces {} and WASI)",
            CONTRACT_IMPORTS.join(", ")
        ));
    };
    let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
    if !version.starts_with(&format!("{VERSION_MAJOR_MINOR}.")) {
        return Some(format!(
            "imports `{import}`: built against {PACKAGE}@{version}, this gateway speaks {CONTRACT}"
        ));
    }
    if !CONTRACT_IMPORTS.contains(&iface) {
        return Some(format!(
            "imports `{import}`, which {CONTRACT} does not define (reserved for a later version?)"
        ));
    }
    None
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
            e.contains("`depin:plugin/teleport@0.1.0`, which depin:plugin@0.1.3 does not define"),
            "{e}"
        );
        assert!(e.contains("built against depin:plugin@0.2.0"), "{e}");
        assert!(!e.contains("wasi:cli"), "{e}");
    }

    /// The binary of a component that imports one interface, `import`,
    /// with the single function `get: func(key: string) -> option<string>`
    /// (the `config.get` of every 0.1.x contract), and nothing else.
    fn component_importing(import: &str) -> Vec<u8> {
        let instance_type = [
            &[0x42, 3][..],
            // type 0: option<string>
            &[0x01, 0x6b, 0x73],
            // type 1: func(key: string) -> type 0
            &[0x01, 0x40, 1, 3, b'k', b'e', b'y', 0x73, 0x00, 0x00],
            // export "get": func of type 1
            &[0x04, 0x00, 3, b'g', b'e', b't', 0x01, 0x01],
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
        for version in ["0.1.0", "0.1.1", "0.1.2", "0.1.3"] {
            assert!(links(version).is_ok(), "{version}: {:?}", links(version));
        }
        assert!(links("0.2.0").is_err(), "0.2 is another contract");
        assert!(CONTRACT.ends_with("@0.1.3"));
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
