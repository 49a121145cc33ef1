//! What the ingresses did to stay up under load: connections refused,
//! messages delayed, datagrams dropped, table entries evicted. Every bound
//! fed from outside names the counter here that shows it being hit; all of
//! them are exported on `/metrics` (families appear once first counted).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// One metric family: its name, help text and Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub gauge: bool,
}

impl Family {
    const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            gauge: false,
        }
    }

    const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            gauge: true,
        }
    }
}

/// Connections closed at accept because a connection cap was reached
/// (`reason` = `total` or `peer`).
pub const HTTP_CONNECTIONS_REFUSED: Family = Family::counter(
    "depin_http_connections_refused_total",
    "HTTP connections closed at accept: http.max_connections (reason=total) or http.max_connections_per_peer (reason=peer) reached.",
);
/// Requests whose body did not arrive within `http.body_read_timeout_ms`.
pub const HTTP_BODY_TIMEOUTS: Family = Family::counter(
    "depin_http_body_timeouts_total",
    "Requests answered 408 because the body did not arrive within http.body_read_timeout_ms.",
);
/// Open connections of the public HTTP ingress.
pub const HTTP_CONNECTIONS_OPEN: Family = Family::gauge(
    "depin_http_connections_open",
    "Open connections of the public HTTP ingress.",
);
/// Times the MQTT subscriber stopped reading its broker because its queue
/// was full.
pub const MQTT_BACKPRESSURE: Family = Family::counter(
    "depin_mqtt_backpressure_total",
    "MQTT messages that waited for room in the full delivery queue; the broker connection is not read meanwhile.",
);
/// MQTT messages received and not yet handled.
pub const MQTT_QUEUED: Family = Family::gauge(
    "depin_mqtt_queued_messages",
    "MQTT messages received from the broker and not yet handled.",
);
/// The most MQTT messages ever queued at once.
pub const MQTT_QUEUED_PEAK: Family = Family::gauge(
    "depin_mqtt_queued_messages_peak",
    "The most MQTT messages queued at once since start (bounded by the queue sizes).",
);
/// UDP datagrams dropped, by bound (`reason`).
pub const UDP_DROPPED: Family = Family::counter(
    "depin_udp_dropped_total",
    "UDP datagrams dropped: lane_full, queue_bytes (plugin byte budget), send_cap (per-call send cap), reply_budget (reply bytes bounded by bytes received from the peer).",
);
/// Upstream sessions closed, by why (`reason` = `idle` or `lru`).
pub const UDP_SESSIONS_CLOSED: Family = Family::counter(
    "depin_udp_sessions_closed_total",
    "Upstream UDP sessions closed: idle (unused for the idle period) or lru (least recently used, to make room).",
);
/// Recent peers forgotten to make room for new ones.
pub const UDP_PEERS_EVICTED: Family = Family::counter(
    "depin_udp_peers_evicted_total",
    "Recent UDP peers forgotten before their time to make room for new ones (least recently seen first).",
);

#[derive(Default)]
struct Registry {
    families: BTreeMap<&'static str, (Family, BTreeMap<String, u64>)>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", crate::metrics::escape(v));
    }
    s
}

fn update(family: Family, pairs: &[(&str, &str)], f: impl FnOnce(&mut u64)) {
    let mut r = registry().lock().expect("pressure metrics");
    let (_, series) = r
        .families
        .entry(family.name)
        .or_insert_with(|| (family, BTreeMap::new()));
    f(series.entry(labels(pairs)).or_default());
}

/// Adds `n` to a counter.
pub fn count(family: Family, pairs: &[(&str, &str)], n: u64) {
    update(family, pairs, |v| *v += n);
}

/// Sets a gauge.
pub fn set(family: Family, pairs: &[(&str, &str)], value: u64) {
    update(family, pairs, |v| *v = value);
}

/// Raises a gauge to `value` if it is below.
pub fn raise(family: Family, pairs: &[(&str, &str)], value: u64) {
    update(family, pairs, |v| *v = (*v).max(value));
}

/// The current value of one series (0 if never counted).
pub fn value(family: Family, pairs: &[(&str, &str)]) -> u64 {
    let r = registry().lock().expect("pressure metrics");
    r.families
        .get(family.name)
        .and_then(|(_, s)| s.get(&labels(pairs)).copied())
        .unwrap_or(0)
}

/// Appends every family counted so far, in the Prometheus text format.
pub fn render(out: &mut String) {
    let r = registry().lock().expect("pressure metrics");
    for (name, (family, series)) in &r.families {
        let kind = if family.gauge { "gauge" } else { "counter" };
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in series {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_with_escaped_labels() {
        count(UDP_PEERS_EVICTED, &[("plugin", "p\"q")], 2);
        count(UDP_PEERS_EVICTED, &[("plugin", "p\"q")], 1);
        raise(MQTT_QUEUED_PEAK, &[("plugin", "pressure-test")], 5);
        raise(MQTT_QUEUED_PEAK, &[("plugin", "pressure-test")], 3);
        assert_eq!(value(UDP_PEERS_EVICTED, &[("plugin", "p\"q")]), 3);
        assert_eq!(value(MQTT_QUEUED_PEAK, &[("plugin", "pressure-test")]), 5);
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("depin_udp_peers_evicted_total{plugin=\"p\\\"q\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE depin_mqtt_queued_messages_peak gauge\n"),
            "{out}"
        );
    }
}
