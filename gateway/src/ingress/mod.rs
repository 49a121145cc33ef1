//! Where traffic enters the gateway.

pub mod http;
pub mod mqtt;
