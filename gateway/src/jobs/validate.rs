//! Upload-time checks of a job module: a core WebAssembly module that
//! exports `_start` and `memory` and imports nothing beyond
//! [`wasi::ALLOWED_IMPORTS`]. Anything else is refused with the reason.

use wasmtime::{ExternType, Module};

use super::{ModuleError, wasi};

/// A friendly error for files that are not core modules at all.
pub fn header(bytes: &[u8]) -> Result<(), ModuleError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ModuleError::Invalid(
            "not a WebAssembly module (no `\\0asm` header)".into(),
        ));
    }
    if bytes[6..8] != [0, 0] {
        return Err(ModuleError::Invalid(
            "this is a WebAssembly component; a job is a core module built for wasm32-wasip1"
                .into(),
        ));
    }
    Ok(())
}

/// Checks imports and exports of a compiled module.
pub fn shape(module: &Module) -> Result<(), ModuleError> {
    let mut refused = Vec::new();
    for import in module.imports() {
        let allowed = import.module() == wasi::MODULE
            && wasi::ALLOWED_IMPORTS.contains(&import.name())
            && matches!(import.ty(), ExternType::Func(_));
        if !allowed {
            refused.push(format!("{}::{}", import.module(), import.name()));
        }
    }
    if !refused.is_empty() {
        return Err(ModuleError::Invalid(format!(
            "imports {}; a job may import only {}::{{{}}} (stdin, stdout, exit, empty arguments and environment)",
            refused.join(", "),
            wasi::MODULE,
            wasi::ALLOWED_IMPORTS.join(", ")
        )));
    }
    match module.get_export("_start") {
        Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
        _ => {
            return Err(ModuleError::Invalid(
                "no `_start: func()` export; a job is a WASI command (a Rust `bin` built for wasm32-wasip1)".into(),
            ));
        }
    }
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err(ModuleError::Invalid("no `memory` export".into()));
    }
    Ok(())
}
