//! Where traffic enters the gateway.

pub mod http;
pub mod mqtt;
pub mod tls;
pub mod udp;
