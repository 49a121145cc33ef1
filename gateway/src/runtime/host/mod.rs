//! Host imports, one file per capability of the contract. Each capability
//! owns its part of the call's state (`KvState`, `UdpState`, …, held by
//! [`CallState`]) and implements its generated `Host` trait on its own view:
//! a borrow of that state and of the read-only call context it needs (the
//! plugin, the ledger, the request id). Views are built per host call from
//! borrows only; nothing is allocated for them.
//!
//! Each checks its limits at the boundary, before any work. What a host
//! function gives back when it fails is a [`Blame`]: the WIT error the
//! plugin sees, or a host fault that traps the call.

pub(crate) mod blobs;
mod config;
pub(crate) mod jobs;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod metering;
pub(crate) mod outbound_http;
pub mod outbound_udp;

use wasmtime::component::{HasSelf, Linker};

use super::contract::depin::plugin as wit;
use super::state::CallState;

/// Why a host function failed, and so who hears of it.
///
/// Bindgen's `trappable_error_type` maps every WIT error type of the
/// contract (`kv-error`, `blob-error`, …) to `Blame<ThatError>`, so host
/// functions return `Result<T, Blame<E>>` and the generated glue turns it
/// into the guest's `result` or a trap.
#[derive(Debug)]
pub enum Blame<E> {
    /// Returned to the plugin as the WIT error `E`: its own mistake, a
    /// refusal by policy or limit, or a failure the contract lets it see
    /// and handle (a `store`, `io` or `host` variant; those are logged
    /// where they happen).
    Guest(E),
    /// A fault of the host the plugin cannot act on: the call traps, and
    /// the call path logs it with the call's failure.
    Host(wasmtime::Error),
}

impl<E> From<E> for Blame<E> {
    fn from(e: E) -> Self {
        Blame::Guest(e)
    }
}

impl<E> Blame<E> {
    /// The WIT error for the guest, or the trap.
    pub(crate) fn into_wit(self) -> wasmtime::Result<E> {
        match self {
            Blame::Guest(e) => Ok(e),
            Blame::Host(e) => Err(e),
        }
    }
}

/// The generated shape of a trappable import whose WIT error type cannot
/// be named in bindgen's options (`result<_, string>`), from `r`.
pub(crate) fn to_wit<T, E>(r: Result<T, Blame<E>>) -> wasmtime::Result<Result<T, E>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(blame) => blame.into_wit().map(Err),
    }
}

impl wit::types::Host for CallState {}

/// Links every interface of the contract, each to its capability's view of
/// the call's state.
pub(crate) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    wit::types::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    wit::metering::add_to_linker::<_, metering::Metering>(linker, metering::view)?;
    wit::kv::add_to_linker::<_, kv::Kv>(linker, kv::view)?;
    wit::log::add_to_linker::<_, log::Log>(linker, log::view)?;
    wit::config::add_to_linker::<_, config::Config>(linker, config::view)?;
    wit::blobs::add_to_linker::<_, blobs::Blobs>(linker, blobs::view)?;
    wit::outbound_http::add_to_linker::<_, outbound_http::OutboundHttp>(
        linker,
        outbound_http::view,
    )?;
    wit::jobs::add_to_linker::<_, jobs::Jobs>(linker, jobs::view)?;
    wit::outbound_udp::add_to_linker::<_, outbound_udp::OutboundUdp>(linker, outbound_udp::view)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_errors_reach_the_plugin_and_host_faults_trap() {
        let guest: Result<(), Blame<String>> = Err("no such unit".to_string().into());
        assert_eq!(to_wit(guest).expect("no trap"), Err("no such unit".into()));
        assert_eq!(to_wit::<_, String>(Ok(7)).expect("no trap"), Ok(7));
        let fault: Result<(), Blame<String>> = Err(Blame::Host(wasmtime::Error::msg("disk gone")));
        let trap = to_wit(fault).expect_err("a trap");
        assert_eq!(trap.to_string(), "disk gone");
    }
}
