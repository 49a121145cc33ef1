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
        "depin:plugin/outbound-http.fetch": async | trappable,
        "depin:plugin/jobs.put-module": async | trappable,
        "depin:plugin/jobs.run": async | trappable,
        default: trappable,
    },
    exports: { default: async },
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
pub const CONTRACT: &str = "depin:plugin@0.1.1";
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
            e.contains("`depin:plugin/teleport@0.1.0`, which depin:plugin@0.1.1 does not define"),
            "{e}"
        );
        assert!(e.contains("built against depin:plugin@0.2.0"), "{e}");
        assert!(!e.contains("wasi:cli"), "{e}");
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
