//! Host-attested units: measured by the gateway for every call, so a
//! plugin cannot forge them.

/// Request line, headers and body received, in bytes.
pub const BYTES_IN: &str = "bytes-in";
/// Response headers and body sent, in bytes.
pub const BYTES_OUT: &str = "bytes-out";
/// Wall time of the plugin call, in microseconds.
pub const WALL_TIME_US: &str = "wall-time-us";
/// WebAssembly fuel the call consumed.
pub const FUEL: &str = "fuel";
