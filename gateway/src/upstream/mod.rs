//! Reporting upstream: the epoch report format shared with the collector,
//! the mutual-TLS setup, the outbox sender and the reference collector.

pub mod collector;
pub mod report;
pub mod sender;
pub mod tls;
