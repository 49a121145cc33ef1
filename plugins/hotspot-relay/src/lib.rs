//! hotspot-relay: a LoRaWAN hotspot relay between concentrators running a
//! Semtech UDP packet forwarder (GWMP v2) and an upstream network server
//! that speaks the same protocol.
//!
//! - PUSH_DATA from a forwarder: answered at once with PUSH_ACK, relayed
//!   upstream unchanged; every new LoRa packet in it is metered for the
//!   forwarder's EUI (`uplink-packets`, `payload-bytes`, `airtime-us`, with
//!   the sha256 of the PHY payload as evidence).
//! - PULL_DATA: answered with PULL_ACK, relayed upstream, and the
//!   forwarder's address is remembered for its EUI.
//! - PULL_RESP from upstream: sent to the forwarder it is for (metered as a
//!   `downlinks`); TX_ACK from a forwarder: relayed upstream.
//! - Each forwarder has its own upstream session (a host socket named by its
//!   EUI), so the network server sees one address per gateway and its
//!   PULL_RESP comes back on the right session.
//! - The same PHY payload heard again within the dedupe window (by the same
//!   or another forwarder) is relayed but metered once.
//! - Anything malformed is dropped, never relayed or metered, and counted
//!   by reason; `GET /status` shows the counts, the known forwarders and
//!   the beacons waiting for or holding their TX_ACK.
//! - Proofs (`prove`/`verify`): `relayed-packet` (the radio metadata of a
//!   relayed packet, bound to the nonce; see [`proof`]) and `beacon` (the
//!   forwarder transmits a payload derived from the nonce and acknowledges
//!   it with TX_ACK; two phases, see [`beacon`]). A beacon needs the
//!   plugin's `[plugin.udp]` ingress: it leaves from that socket, to the
//!   address the forwarder last sent PULL_DATA from.
//!
//! Configuration (`[plugin.config]`): `upstream` (required, `host:port`,
//! also in `[plugin.outbound] udp`), `dedupe_window_ms` (default 10000).
//! Dedupe windows advance with `tick`, so give the plugin a
//! `tick_interval_ms`.

pub mod airtime;
pub mod beacon;
pub mod expiry;
pub mod gwmp;
pub mod proof;
pub mod relay;

use depin_plugin_sdk::{
    Challenge, Datagram, HttpRequest, HttpResponse, Plugin, PluginInfo, Proof, ResourceKind,
    export_plugin,
};

/// The relay plugin.
pub struct HotspotRelay;

/// Metered units.
pub mod units {
    pub const UPLINK_PACKETS: &str = "uplink-packets";
    pub const PAYLOAD_BYTES: &str = "payload-bytes";
    pub const AIRTIME_US: &str = "airtime-us";
    pub const DOWNLINKS: &str = "downlinks";
}

impl Plugin for HotspotRelay {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "hotspot-relay",
            env!("CARGO_PKG_VERSION"),
            ResourceKind::HotspotRelay,
        )
        .unit(units::UPLINK_PACKETS, "one LoRa packet relayed upstream")
        .unit(
            units::PAYLOAD_BYTES,
            "one byte of LoRa PHY payload relayed upstream",
        )
        .unit(
            units::AIRTIME_US,
            "one microsecond of LoRa time on air received",
        )
        .unit(units::DOWNLINKS, "one downlink delivered to a forwarder")
    }

    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        relay::Settings::from_pairs(&config).map(|_| ())
    }

    fn handle_datagram(d: Datagram) -> Vec<Datagram> {
        relay::handle(d)
    }

    fn handle_http(req: HttpRequest) -> HttpResponse {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/status") => HttpResponse::json(200, &relay::status()),
            _ => HttpResponse::text(404, "try GET /status"),
        }
    }

    fn tick(now_ms: u64) {
        relay::tick(now_ms)
    }

    fn prove(c: Challenge) -> Result<Proof, String> {
        proof::prove(c)
    }

    fn verify(c: Challenge, p: Proof) -> bool {
        proof::verify(&c, &p)
    }
}

export_plugin!(HotspotRelay);
