//! depin-gateway: an edge gateway that hosts sandboxed WebAssembly resource
//! plugins and meters the service they provide into a durable, hash-chained
//! usage ledger.

pub mod admin;
pub mod blobstore;
pub mod call;
pub mod cli;
pub mod config;
pub mod epochs;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod ingress;
pub mod jobs;
pub mod ledger;
pub mod metrics;
pub mod oci;
pub mod otel;
pub mod plugin_table;
pub mod proofs;
pub mod reload;
pub mod runtime;
pub mod service;
pub mod telemetry;
pub mod upstream;

pub use gateway::{RunningGateway, StartError};

/// Makes ring the process's default rustls provider. The gateway's own TLS
/// configurations name ring themselves, but the HTTP clients inside the
/// registry client and the OTLP exporter are built without a provider of
/// their own and take the process default: without one they panic, and
/// OTLP export or a registry pull silently never starts. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
