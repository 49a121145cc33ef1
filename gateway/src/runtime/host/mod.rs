//! Host imports, one file per capability of the contract. Each checks its
//! limits at the boundary, before any work. Guest mistakes come back to the
//! plugin as WIT errors; host faults trap the call and are logged.

pub(crate) mod blobs;
mod config;
pub(crate) mod jobs;
mod kv;
mod log;
mod metering;
pub(crate) mod outbound_http;
pub mod outbound_udp;

use super::contract::depin::plugin::types;
use super::state::CallState;

impl types::Host for CallState {}
