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
