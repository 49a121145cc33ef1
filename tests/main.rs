//! The end-to-end tests, one module per area, in one test binary: the
//! gateway and wasmtime are linked once, and the support library
//! (`depin_e2e`) is shared by every area.
//!
//! Every area shares this process, so none may change process-wide state:
//! no environment variables, no working directory, no signal handlers, no
//! fixed ports. What the gateway reads once per process (the OTLP exporter's
//! environment) is tested against a gateway process of its own, and tests
//! that read the process-wide metrics use plugin names no other test uses.

mod authors;
mod cli;
mod collector;
mod compute_task;
mod console;
mod durability;
mod failover;
mod faults;
mod hostile_network;
mod hsm;
mod http;
mod jobs;
mod monitoring;
mod oci;
mod operator_cli;
mod ops;
mod otel;
mod relay;
mod sandbox;
mod sensors;
mod serializable;
mod storage_cache;
mod udp;
mod upstream;
