//! The host imports: the real ones inside a component, the in-memory
//! [`TestHost`](crate::testing::TestHost) when plugin code runs natively.

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::depin::plugin::{blobs, config, kv, log, metering, outbound_http};

#[cfg(not(target_arch = "wasm32"))]
pub use crate::testing::native::{blobs, config, kv, log, metering, outbound_http};

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::depin::plugin::outbound_udp;

#[cfg(not(target_arch = "wasm32"))]
pub use crate::testing::native::outbound_udp;
