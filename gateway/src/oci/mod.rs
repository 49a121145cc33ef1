//! Components from OCI registries: references pinned by digest, the CNCF
//! Wasm artifact layout, cosign signatures verified offline, and a local
//! copy in the data directory so a box that pulled once starts offline.
//!
//! The registry protocol (distribution API, anonymous, basic and
//! bearer-token authentication) is `oci-client`'s.

pub mod artifact;
mod fetch;
mod local;
mod publish;
pub mod reference;
mod registry;
pub mod signature;

pub use fetch::{Fetched, SignaturePolicy};
pub use local::LocalCopies;
pub use publish::{Pushed, Signed};
pub use reference::{ComponentRef, Pin};
pub use registry::Registries;
pub use signature::{PublisherKey, TrustedKey};
