//! The host imports: the real ones inside a component, the in-memory
//! [`TestHost`](crate::testing::TestHost) when plugin code runs natively.

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::depin::plugin::{config, kv, log, metering};

#[cfg(not(target_arch = "wasm32"))]
pub use crate::testing::native::{config, kv, log, metering};

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::depin::plugin::outbound_udp;

#[cfg(not(target_arch = "wasm32"))]
pub use crate::testing::native::outbound_udp;
