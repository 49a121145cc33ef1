//! Reporting upstream: the mutual-TLS setup and the outbox sender. The
//! report encoding is in `depin_protocol::report`; the reference collector
//! is its own crate, `depin-collector`.

pub mod sender;
pub mod tls;

#[cfg(test)]
mod tests;
