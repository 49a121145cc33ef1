//! `/metrics`: the registry of [`super`] in the Prometheus text exposition
//! format (0.0.4).

use std::fmt::Write as _;

use super::{ConflictCounts, Histogram, Metrics, PerPlugin, PluginCounters, SelfCheckCounts};

impl Metrics {
    /// Everything, in the Prometheus text exposition format (0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let plugins = self.plugins.lock().expect("metrics lock").clone();

        header(
            &mut out,
            "depin_calls_total",
            "counter",
            "Plugin calls by HTTP status.",
        );
        for (p, c) in &plugins {
            for (status, n) in &c.calls_by_status {
                let _ = writeln!(
                    out,
                    "depin_calls_total{{plugin=\"{}\",status=\"{status}\"}} {n}",
                    escape(p)
                );
            }
        }
        header(
            &mut out,
            "depin_call_errors_total",
            "counter",
            "Failed plugin calls by kind (trap, deadline, memory, fuel, busy, host, timeout, ledger, request).",
        );
        for (p, c) in &plugins {
            for (kind, n) in &c.errors_by_kind {
                let _ = writeln!(
                    out,
                    "depin_call_errors_total{{plugin=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(p)
                );
            }
        }
        header(
            &mut out,
            "depin_call_duration_seconds",
            "histogram",
            "Time from routing a request to its response, including the ledger commit.",
        );
        for (p, c) in &plugins {
            c.latency.render(
                &mut out,
                "depin_call_duration_seconds",
                &format!("plugin=\"{}\"", escape(p)),
            );
        }
        for (name, help, value) in [
            (
                "depin_call_fuel_total",
                "WebAssembly fuel consumed by calls.",
                (|c: &PluginCounters| c.fuel) as fn(&PluginCounters) -> u64,
            ),
            (
                "depin_call_bytes_in_total",
                "Request bytes received by calls.",
                |c| c.bytes_in,
            ),
            (
                "depin_call_bytes_out_total",
                "Response bytes sent by calls.",
                |c| c.bytes_out,
            ),
            (
                "depin_call_reused_total",
                "Requests answered from an answer the plugin marked reusable, without calling it.",
                |c| c.reused,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for (p, c) in &plugins {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", escape(p), value(c));
            }
        }
        {
            let l = self.ledger.lock().expect("metrics lock");
            header(
                &mut out,
                "depin_ledger_commit_duration_seconds",
                "histogram",
                "Time of one ledger transaction (write and fsync).",
            );
            l.commit_seconds
                .render(&mut out, "depin_ledger_commit_duration_seconds", "");
            header(
                &mut out,
                "depin_ledger_commit_group_size",
                "histogram",
                "Calls committed together in one ledger transaction.",
            );
            l.group_size
                .render(&mut out, "depin_ledger_commit_group_size", "");
        }
        let r = *self.reloads.lock().expect("metrics lock");
        header(
            &mut out,
            "depin_reloads_total",
            "counter",
            "Hot reload attempts by result.",
        );
        let _ = writeln!(out, "depin_reloads_total{{result=\"ok\"}} {}", r.ok);
        let _ = writeln!(out, "depin_reloads_total{{result=\"failed\"}} {}", r.failed);
        if let Some(depth) = *self.outbox_depth.lock().expect("metrics lock") {
            header(
                &mut out,
                "depin_outbox_depth",
                "gauge",
                "Reports waiting in the upstream outbox.",
            );
            let _ = writeln!(out, "depin_outbox_depth {depth}");
        }
        let conflicts = self.conflicts.lock().expect("metrics lock").clone();
        for (name, help, value) in [
            (
                "depin_call_conflicts_total",
                "Calls refused because a concurrent call changed what they read.",
                (|c: &ConflictCounts| c.conflicts) as fn(&ConflictCounts) -> u64,
            ),
            (
                "depin_call_retries_total",
                "Calls run again from the start after a conflict.",
                |c| c.retries,
            ),
            (
                "depin_call_conflict_failures_total",
                "Calls that failed after a conflict (out of retries, or not repeatable).",
                |c| c.failed,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for (p, c) in &conflicts {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", escape(p), value(c));
            }
        }
        crate::ingress::pressure::render(&mut out);
        self.log_dropped.render(
            &mut out,
            "depin_plugin_log_dropped_total",
            "Plugin log lines dropped by the per-call and per-plugin log limits.",
        );
        self.modules_evicted.render(
            &mut out,
            "depin_job_modules_evicted_total",
            "Job modules removed, least recently used first, to stay under the module quota.",
        );
        let checks = self.self_checks.lock().expect("metrics lock").clone();
        for (name, help, value) in [
            (
                "depin_self_checks_total",
                "Self-checks run: the gateway's own challenges to its plugins, by plugin and kind.",
                (|c: &SelfCheckCounts| c.runs) as fn(&SelfCheckCounts) -> u64,
            ),
            (
                "depin_self_check_failures_total",
                "Self-checks whose proof was missing or failed the plugin's own verify.",
                |c| c.failures,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for ((plugin, kind), c) in &checks {
                let _ = writeln!(
                    out,
                    "{name}{{plugin=\"{}\",kind=\"{}\"}} {}",
                    escape(plugin),
                    escape(kind),
                    value(c)
                );
            }
        }
        let d = self.deliveries();
        header(
            &mut out,
            "depin_report_deliveries_total",
            "counter",
            "Report delivery rounds to the collector by result.",
        );
        let _ = writeln!(
            out,
            "depin_report_deliveries_total{{result=\"ok\"}} {}",
            d.ok
        );
        let _ = writeln!(
            out,
            "depin_report_deliveries_total{{result=\"failed\"}} {}",
            d.failed
        );
        out
    }
}

impl Histogram {
    pub(super) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

impl PerPlugin {
    /// The counter `name`, one line per plugin.
    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "counter", help);
        for (p, n) in self.0.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {n}", escape(p));
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
