//! Where traffic enters the gateway: each ingress turns its traffic into
//! plugin calls on the one call path ([`crate::call`]).

pub mod http;
pub mod mqtt;
pub mod pressure;
pub mod tick;
pub mod tls;
pub mod udp;
