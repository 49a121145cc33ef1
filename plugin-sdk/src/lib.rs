//! # depin-plugin-sdk
//!
//! Write a depin-gateway resource plugin in Rust. A plugin is a
//! WebAssembly component targeting the `depin:plugin` world (`wit/` in the
//! gateway's repository); this crate generates the bindings, gives every
//! export a default, and wraps the host imports in small typed helpers.
//!
//! ## A complete plugin
//!
//! ```
//! use depin_plugin_sdk::{
//!     export_plugin, kv, meter, HttpRequest, HttpResponse, Plugin, PluginInfo, ResourceKind,
//!     UnitInfo,
//! };
//!
//! struct Counter;
//!
//! impl Plugin for Counter {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("counter", "0.1.0", ResourceKind::Other)
//!             .unit("hits", "one counted request")
//!     }
//!
//!     fn handle_http(req: HttpRequest) -> HttpResponse {
//!         if req.method != "POST" {
//!             return HttpResponse::text(405, "POST only");
//!         }
//!         let n: u64 = kv::get_json("count").ok().flatten().unwrap_or(0) + 1;
//!         if let Err(e) = kv::set_json("count", &n) {
//!             return HttpResponse::text(500, &e.to_string());
//!         }
//!         let _ = meter("hits", 1);
//!         HttpResponse::json(200, &serde_json::json!({ "count": n }))
//!     }
//! }
//!
//! export_plugin!(Counter);
//!
//! // Plugin logic runs natively in tests, against an in-memory host:
//! # fn main() {
//! use depin_plugin_sdk::testing::TestHost;
//! let host = TestHost::install(&[]);
//! let req = HttpRequest::new("POST", "/");
//! assert_eq!(Counter::handle_http(req.clone()).status, 200);
//! assert_eq!(Counter::handle_http(req).body_bytes(), br#"{"count":2}"#);
//! assert_eq!(host.usage().len(), 2);
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate
//! needs `crate-type = ["cdylib", "rlib"]`) and point a `[[plugin]]` table
//! of `gateway.toml` at `target/wasm32-wasip2/release/<name>.wasm`.
//!
//! ## The rules of the sandbox
//!
//! - Every call runs in a fresh instance: statics do not survive between
//!   calls. Keep state in [`kv`].
//! - Usage records ([`meter`]) and kv writes of a call are committed together
//!   after the call returns; if the call panics, none of them is kept.
//! - Only units declared in [`Plugin::describe`] can be metered.

#![warn(missing_docs)]

extern crate self as depin_plugin_sdk;

/// Raw bindings generated from the `depin:plugin` WIT package. Prefer the
/// helpers at the crate root.
#[allow(missing_docs, clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "resource-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_raw",
        default_bindings_module: "depin_plugin_sdk::bindings",
        runtime_path: "depin_plugin_sdk::__private::wit_bindgen::rt",
    });
}

mod http;
mod imports;
pub use http::REUSE_HEADER;
pub mod testing;

pub use bindings::depin::plugin::kv::KvError;
pub use bindings::depin::plugin::log::Level;
pub use bindings::depin::plugin::types::{
    BlobRef, Body, Challenge, Datagram, HttpRequest, HttpResponse, PluginInfo, Proof, ResourceKind,
    UnitInfo, Usage,
};

/// Deterministic WebAssembly jobs (`depin:plugin/jobs`) for plugins with a
/// `[plugin.jobs]` table: store a WASI preview-1 module, run it on an input
/// with a fuel and memory limit, get its output and the fuel it used. Jobs
/// run only inside the gateway; the native [`testing::TestHost`] does not
/// provide them (calling them natively panics).
pub use bindings::depin::plugin::jobs;

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// A resource plugin. Every method has a default except [`describe`];
/// implement what your resource needs.
///
/// [`describe`]: Plugin::describe
pub trait Plugin {
    /// Who the plugin is and which units it meters. Must be cheap and pure.
    fn describe() -> PluginInfo;

    /// Validates the configuration once per load. An `Err` keeps the plugin
    /// from loading; say what is wrong and how to fix it.
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    /// Answers an HTTP request under the plugin's route. Default: 404.
    fn handle_http(req: HttpRequest) -> HttpResponse {
        HttpResponse::text(404, &format!("no handler for {} {}", req.method, req.path))
    }

    /// Handles a UDP datagram; returns datagrams to send. Default: none.
    fn handle_datagram(_d: Datagram) -> Vec<Datagram> {
        Vec::new()
    }

    /// Handles an MQTT message. An `Err` leaves it unacknowledged, so the
    /// broker redelivers it. Default: accept and ignore.
    fn handle_message(topic: String, _payload: Vec<u8>) -> Result<(), String> {
        log::debug(&format!(
            "ignoring a message on `{topic}`: this plugin handles no messages"
        ));
        Ok(())
    }

    /// Periodic housekeeping. Default: nothing.
    fn tick(_now_ms: u64) {}

    /// Answers a challenge. Default: every kind is unsupported.
    fn prove(c: Challenge) -> Result<Proof, String> {
        Err(format!(
            "challenge kind `{}` is not supported by this plugin",
            c.kind
        ))
    }

    /// Checks a proof made by [`Plugin::prove`]. Must be deterministic.
    /// Default: rejects everything.
    fn verify(_c: Challenge, _p: Proof) -> bool {
        false
    }
}

/// Exports a [`Plugin`] implementation as the component's `depin:plugin`
/// exports. Use once per plugin crate, at the crate root.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __DepinPluginExports;

        impl $crate::bindings::Guest for __DepinPluginExports {
            fn describe() -> $crate::PluginInfo {
                <$plugin as $crate::Plugin>::describe()
            }
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                <$plugin as $crate::Plugin>::init(config)
            }
            fn handle_http(req: $crate::HttpRequest) -> $crate::HttpResponse {
                <$plugin as $crate::Plugin>::handle_http(req)
            }
            fn handle_datagram(d: $crate::Datagram) -> ::std::vec::Vec<$crate::Datagram> {
                <$plugin as $crate::Plugin>::handle_datagram(d)
            }
            fn handle_message(
                topic: ::std::string::String,
                payload: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                <$plugin as $crate::Plugin>::handle_message(topic, payload)
            }
            fn tick(now_ms: u64) {
                <$plugin as $crate::Plugin>::tick(now_ms)
            }
            fn prove(
                c: $crate::Challenge,
            ) -> ::std::result::Result<$crate::Proof, ::std::string::String> {
                <$plugin as $crate::Plugin>::prove(c)
            }
            fn verify(c: $crate::Challenge, p: $crate::Proof) -> bool {
                <$plugin as $crate::Plugin>::verify(c, p)
            }
        }

        // Only a component exports symbols. A native build of a plugin
        // crate (its unit tests, or a benchmark that links two plugins as
        // libraries) must not: two plugins' `describe`, `handle-http`, ...
        // would clash at link time.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_raw!(__DepinPluginExports);
    };
}

/// Records `quantity` of a declared `unit` for this call.
pub fn meter(unit: &str, quantity: u64) -> Result<(), String> {
    meter_usage(Usage::new(unit, quantity))
}

/// Records a usage record with a subject and/or evidence.
pub fn meter_usage(usage: Usage) -> Result<(), String> {
    imports::metering::record_usage(&usage)
}

impl Usage {
    /// `quantity` of `unit`, no subject, no evidence.
    pub fn new(unit: &str, quantity: u64) -> Self {
        Usage {
            unit: unit.to_string(),
            quantity,
            subject: None,
            evidence: None,
        }
    }

    /// Who or what the service was for (at most 256 bytes).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// A hash of the evidence (at most 64 bytes).
    pub fn evidence(mut self, hash: impl Into<Vec<u8>>) -> Self {
        self.evidence = Some(hash.into());
        self
    }
}

impl PluginInfo {
    /// A description with no units yet.
    pub fn new(name: &str, version: &str, kind: ResourceKind) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            kind,
            units: Vec::new(),
        }
    }

    /// Declares a unit this plugin meters.
    pub fn unit(mut self, name: &str, description: &str) -> Self {
        self.units.push(UnitInfo {
            name: name.into(),
            description: description.into(),
        });
        self
    }
}

/// The plugin's private key-value store.
pub mod kv {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub use crate::KvError;
    use crate::imports::kv as host;

    /// Longest key the host accepts, in bytes.
    pub const MAX_KEY_BYTES: usize = 512;
    /// Largest value the host accepts, in bytes.
    pub const MAX_VALUE_BYTES: usize = 1 << 20;

    /// The bytes stored under `key`.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        host::get(key)
    }

    /// Stores `value` under `key` (committed when the call succeeds).
    pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
        host::set(key, value)
    }

    /// Removes `key`.
    pub fn delete(key: &str) -> Result<(), KvError> {
        host::delete(key)
    }

    /// Keys starting with `prefix`, in byte order, at most `limit`.
    pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
        host::list_keys(prefix, limit)
    }

    /// Adds `delta` to the counter under `key` (a decimal integer, what
    /// [`set_json`] writes for a number; absent counts as 0) and returns
    /// its new value. The increment commits with the call; the value is
    /// exact in commit order, and concurrent `add`s of one key do not
    /// conflict with each other as [`get`] then [`set`] would.
    pub fn add(key: &str, delta: i64) -> Result<i64, KvError> {
        host::add(key, delta)
    }

    /// A JSON value stored under `key`. A value that does not parse as `T`
    /// is reported as a store error.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, KvError> {
        match get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                KvError::Store(format!("value of `{key}` is not the expected JSON: {e}"))
            }),
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(value).map_err(|e| KvError::Store(e.to_string()))?;
        set(key, &bytes)
    }
}

/// Logging into the gateway's log.
pub mod log {
    pub use crate::Level;
    use crate::imports::log as host;

    /// Logs `message` at `level`.
    pub fn log(level: Level, message: &str) {
        host::log(level, message)
    }
    /// Logs at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// The plugin's content-addressed blob store (`[plugin.blobs]` in
/// `gateway.toml`). Blob writes and deletes take effect at once, unlike
/// [`kv`] writes. Serve a stored blob with [`HttpResponse::blob`].
pub mod blobs {
    pub use crate::bindings::depin::plugin::blobs::{BlobError, BlobStat, StoreUsage};
    use crate::imports::blobs as host;

    /// The stored blob `digest` (`sha256:<hex>`).
    pub fn stat(digest: &str) -> Result<BlobStat, BlobError> {
        host::stat(digest)
    }

    /// Whether `digest` is stored.
    pub fn has(digest: &str) -> bool {
        host::has(digest)
    }

    /// Removes `digest`; returns whether it was stored.
    pub fn delete(digest: &str) -> Result<bool, BlobError> {
        host::delete(digest)
    }

    /// Stored blobs in digest order after `after`, at most `limit`.
    pub fn list(after: Option<&str>, limit: u32) -> Result<Vec<BlobStat>, BlobError> {
        host::list_blobs(after, limit)
    }

    /// Bytes and blobs stored, and the quota.
    pub fn usage() -> Result<StoreUsage, BlobError> {
        host::usage()
    }

    /// Up to `length` bytes of `digest` from `offset` (at most 1 MiB).
    pub fn read_range(digest: &str, offset: u64, length: u32) -> Result<Vec<u8>, BlobError> {
        host::read_range(digest, offset, length)
    }

    /// Stores `bytes` as blob `digest` if they hash to it.
    pub fn put(digest: &str, bytes: &[u8]) -> Result<BlobStat, BlobError> {
        host::put(digest, bytes)
    }

    /// Fetches `url` from an allow-listed origin straight into the store,
    /// verified against `digest`; nothing is stored if the bytes differ.
    pub fn fetch_into(
        url: &str,
        digest: &str,
        headers: &[(String, String)],
    ) -> Result<BlobStat, BlobError> {
        host::fetch_into(url, digest, headers)
    }

    /// Opens `url` so that this call can answer with
    /// [`HttpResponse::blob`](crate::HttpResponse::blob) for `digest`
    /// without storing it (a blob larger than the quota): the host then
    /// streams the origin's bytes to the client, verifying them. Returns
    /// the size the origin announces. No store is needed, only the
    /// outbound allow-list.
    pub fn pass_through(
        url: &str,
        digest: &str,
        headers: &[(String, String)],
    ) -> Result<BlobStat, BlobError> {
        host::pass_through(url, digest, headers)
    }
}

/// HTTP(S) requests to the origins on the plugin's `[plugin.outbound] http`
/// allow-list.
pub mod outbound_http {
    pub use crate::bindings::depin::plugin::outbound_http::{
        HttpError, OutboundRequest, OutboundResponse,
    };
    use crate::imports::outbound_http as host;

    /// Sends `req`; any status is an `Ok` response.
    pub fn fetch(req: &OutboundRequest) -> Result<OutboundResponse, HttpError> {
        host::fetch(req)
    }

    /// A GET of `url` with `headers`.
    pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<OutboundResponse, HttpError> {
        fetch(&OutboundRequest {
            method: "GET".into(),
            url: url.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        })
    }
}

impl bindings::depin::plugin::outbound_http::OutboundResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// UDP datagrams to the upstream addresses allow-listed for this plugin
/// (`[plugin.outbound] udp` in `gateway.toml`).
pub mod outbound_udp {
    pub use crate::bindings::depin::plugin::outbound_udp::SendError;
    use crate::imports::outbound_udp as host;

    /// Queues `payload` for `target` (`host:port`, exactly as allow-listed)
    /// from the host's socket for `session`. It is sent after the call's
    /// effects are committed, and only if the call succeeds. Answers that
    /// come back on that socket arrive at `handle_datagram` with `target`'s
    /// address as the peer, and [`arrived_on`] returning `session`.
    pub fn send(target: &str, payload: &[u8], session: &str) -> Result<(), SendError> {
        host::send(target, payload, session)
    }

    /// The upstream session whose socket received the datagram being
    /// handled; `None` when it arrived on the plugin's UDP ingress socket.
    pub fn arrived_on() -> Option<String> {
        host::arrived_on()
    }

    /// Queues `payload` for `peer` (`ip:port`) from the plugin's UDP
    /// ingress socket. The peer must have sent to that socket within the
    /// last 10 minutes (`NotAllowed` otherwise). Allowed in
    /// `handle_datagram` and `prove` (`Unavailable` elsewhere, and when the
    /// plugin has no `[plugin.udp]`); sent after the call's effects are
    /// committed, and only if the call succeeds.
    pub fn reply(peer: &str, payload: &[u8]) -> Result<(), SendError> {
        host::reply(peer, payload)
    }
}

/// The plugin's `config` table from `gateway.toml`.
pub mod config {
    use crate::imports::config as host;

    /// The value for `key`.
    pub fn get(key: &str) -> Option<String> {
        host::get(key)
    }

    /// The value for `key` parsed as `T`; `Err` says which key and why.
    pub fn parse<T: std::str::FromStr>(key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| format!("config `{key}` = `{v}`: {e}")),
        }
    }

    /// All entries, sorted by key.
    pub fn all() -> Vec<(String, String)> {
        host::all()
    }
}
