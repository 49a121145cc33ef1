//! The gateway's metrics: calls, errors by kind, latency, fuel and bytes per
//! plugin; ledger commit latency and group size; reloads. One process-wide
//! registry (`global()`), rendered as Prometheus text on the admin
//! listener's `/metrics`.
//!
//! Recording a call takes one short uncontended lock; nothing is exported
//! unless someone reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the ledger group-size histogram buckets.
const GROUP_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// What one call of a plugin came to, as the ingress saw it.
#[derive(Debug, Clone, Copy)]
pub struct CallObservation {
    /// The HTTP status sent to the client.
    pub status: u16,
    /// Why the call failed, when it did: a `CallError::kind`, `timeout`
    /// (the wall-clock budget ran out) or `ledger` (usage not committed).
    pub error: Option<&'static str>,
    /// From routing to the response.
    pub latency: Duration,
    pub fuel: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Answered from a reusable plugin answer, without a plugin call.
    pub reused: bool,
}

/// Counters of one plugin.
#[derive(Debug, Clone)]
pub struct PluginCounters {
    pub calls_by_status: BTreeMap<u16, u64>,
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    latency: Histogram,
    pub fuel: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests answered from a reusable answer (no plugin call).
    pub reused: u64,
}

impl PluginCounters {
    fn new() -> Self {
        Self {
            calls_by_status: BTreeMap::new(),
            errors_by_kind: BTreeMap::new(),
            latency: Histogram::new(&LATENCY_BUCKETS),
            fuel: 0,
            bytes_in: 0,
            bytes_out: 0,
            reused: 0,
        }
    }

    /// All calls, whatever their status.
    pub fn calls(&self) -> u64 {
        self.calls_by_status.values().sum()
    }

    /// Calls that failed, whatever the kind.
    pub fn errors(&self) -> u64 {
        self.errors_by_kind.values().sum()
    }
}

#[derive(Debug)]
struct Ledger {
    commit_seconds: Histogram,
    group_size: Histogram,
}

/// Outcome counts of hot reloads.
#[derive(Debug, Default, Clone, Copy)]
struct Reloads {
    ok: u64,
    failed: u64,
}

/// The process-wide metrics registry.
#[derive(Debug)]
pub struct Metrics {
    plugins: Mutex<BTreeMap<Arc<str>, PluginCounters>>,
    ledger: Mutex<Ledger>,
    reloads: Mutex<Reloads>,
    /// Reports waiting in the upstream outbox; `None` until the outbox
    /// reports it (it is not exported before).
    outbox_depth: Mutex<Option<u64>>,
    /// Conflicts between concurrent calls, by plugin.
    conflicts: Mutex<BTreeMap<Arc<str>, ConflictCounts>>,
    /// Plugin log lines dropped by the log rate limits, per plugin.
    log_dropped: PerPlugin,
    /// Job modules evicted by the module quota, per plugin.
    modules_evicted: PerPlugin,
    /// Self-check runs and failures by (plugin, challenge kind).
    self_checks: Mutex<BTreeMap<(String, String), SelfCheckCounts>>,
    /// Report deliveries to the collector.
    deliveries: Mutex<DeliveryState>,
}

/// How often one plugin's calls conflicted and were run again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConflictCounts {
    /// Calls refused at commit (or stopped while running) because a
    /// concurrent call changed what they read.
    pub conflicts: u64,
    /// Calls run again after a conflict.
    pub retries: u64,
    /// Calls that gave up: out of retries, or an effect that cannot be
    /// repeated was made before the conflict.
    pub failed: u64,
}

/// What happened after a call conflicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictOutcome {
    /// The call is run again.
    Retried,
    /// The call failed: no retries left, or it cannot be repeated.
    Failed,
}

/// Runs and failures of one plugin's self-check of one kind.
#[derive(Debug, Default, Clone, Copy)]
struct SelfCheckCounts {
    runs: u64,
    failures: u64,
}

/// What the report sender has seen of the collector.
#[derive(Debug, Default, Clone)]
pub struct DeliveryState {
    /// Delivery rounds that emptied the outbox.
    pub ok: u64,
    /// Delivery rounds that failed.
    pub failed: u64,
    /// When a round last emptied the outbox, Unix ms.
    pub last_ok_ms: Option<u64>,
    /// When a round last failed, Unix ms, and why.
    pub last_error: Option<(u64, String)>,
}

/// The registry every part of the gateway records into.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            plugins: Mutex::new(BTreeMap::new()),
            ledger: Mutex::new(Ledger {
                commit_seconds: Histogram::new(&LATENCY_BUCKETS),
                group_size: Histogram::new(&GROUP_BUCKETS),
            }),
            reloads: Mutex::new(Reloads::default()),
            outbox_depth: Mutex::new(None),
            conflicts: Mutex::new(BTreeMap::new()),
            log_dropped: PerPlugin::default(),
            modules_evicted: PerPlugin::default(),
            self_checks: Mutex::new(BTreeMap::new()),
            deliveries: Mutex::new(DeliveryState::default()),
        }
    }

    /// Counts one conflict of a call of `plugin` and what came of it.
    pub fn record_conflict(&self, plugin: &Arc<str>, outcome: ConflictOutcome) {
        let mut all = self.conflicts.lock().expect("metrics lock");
        let c = match all.get_mut(plugin) {
            Some(c) => c,
            None => all.entry(plugin.clone()).or_default(),
        };
        c.conflicts += 1;
        match outcome {
            ConflictOutcome::Retried => c.retries += 1,
            ConflictOutcome::Failed => c.failed += 1,
        }
    }

    /// One plugin's conflict counts (zero before its first conflict).
    pub fn conflicts(&self, name: &str) -> ConflictCounts {
        self.conflicts
            .lock()
            .expect("metrics lock")
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// Counts one call of `plugin`.
    pub fn record_call(&self, plugin: &Arc<str>, call: CallObservation) {
        crate::otel::export_call(plugin, &call);
        let mut plugins = self.plugins.lock().expect("metrics lock");
        let c = match plugins.get_mut(plugin) {
            Some(c) => c,
            None => plugins
                .entry(plugin.clone())
                .or_insert_with(PluginCounters::new),
        };
        *c.calls_by_status.entry(call.status).or_default() += 1;
        if let Some(kind) = call.error {
            *c.errors_by_kind.entry(kind).or_default() += 1;
        }
        c.latency.observe(call.latency.as_secs_f64());
        c.fuel += call.fuel;
        c.bytes_in += call.bytes_in;
        c.bytes_out += call.bytes_out;
        c.reused += u64::from(call.reused);
    }

    /// Counts one ledger commit group (one log write and fdatasync) of
    /// `group_size` calls.
    pub fn record_ledger_commit(&self, group_size: usize, took: Duration) {
        crate::otel::export_ledger_commit(group_size, took);
        let mut l = self.ledger.lock().expect("metrics lock");
        l.commit_seconds.observe(took.as_secs_f64());
        l.group_size.observe(group_size as f64);
    }

    /// Counts one hot reload attempt.
    pub fn record_reload(&self, ok: bool) {
        let mut r = self.reloads.lock().expect("metrics lock");
        if ok {
            r.ok += 1;
        } else {
            r.failed += 1;
        }
    }

    /// Sets the number of reports waiting in the upstream outbox (the
    /// `depin_outbox_depth` gauge). For the outbox worker to call whenever
    /// the depth changes.
    pub fn set_outbox_depth(&self, depth: u64) {
        *self.outbox_depth.lock().expect("metrics lock") = Some(depth);
    }

    /// Counts `lines` log lines of `plugin` dropped by the log rate
    /// limits (`depin_plugin_log_dropped_total`).
    pub fn record_log_dropped(&self, plugin: &Arc<str>, lines: u64) {
        self.log_dropped.add(plugin, lines);
    }

    /// Log lines of `plugin` dropped so far.
    pub fn log_dropped(&self, plugin: &str) -> u64 {
        self.log_dropped.get(plugin)
    }

    /// Counts `modules` job modules of `plugin` evicted to stay under its
    /// module quota (`depin_job_modules_evicted_total`).
    pub fn record_modules_evicted(&self, plugin: &str, modules: u64) {
        self.modules_evicted.add(plugin, modules);
    }

    /// Job modules of `plugin` evicted so far.
    pub fn modules_evicted(&self, plugin: &str) -> u64 {
        self.modules_evicted.get(plugin)
    }

    /// Counts one self-check of `plugin` with challenge `kind`.
    pub fn record_self_check(&self, plugin: &str, kind: &str, passed: bool) {
        let mut checks = self.self_checks.lock().expect("metrics lock");
        let c = checks
            .entry((plugin.to_string(), kind.to_string()))
            .or_default();
        c.runs += 1;
        c.failures += u64::from(!passed);
    }

    /// Counts one delivery round of the report sender: `Ok` when it
    /// emptied the outbox, else why it stopped.
    pub fn record_delivery(&self, result: Result<(), String>) {
        let now = depin_protocol::time::now_ms();
        let mut d = self.deliveries.lock().expect("metrics lock");
        match result {
            Ok(()) => {
                d.ok += 1;
                d.last_ok_ms = Some(now);
            }
            Err(e) => {
                d.failed += 1;
                d.last_error = Some((now, e));
            }
        }
    }

    /// What the report sender has seen of the collector so far.
    pub fn deliveries(&self) -> DeliveryState {
        self.deliveries.lock().expect("metrics lock").clone()
    }

    /// A copy of one plugin's counters (`None` before its first call).
    pub fn plugin(&self, name: &str) -> Option<PluginCounters> {
        self.plugins
            .lock()
            .expect("metrics lock")
            .get(name)
            .cloned()
    }
}

/// A counter per plugin.
#[derive(Debug, Default)]
struct PerPlugin(Mutex<BTreeMap<Arc<str>, u64>>);

impl PerPlugin {
    fn add(&self, plugin: &str, n: u64) {
        let mut all = self.0.lock().expect("metrics lock");
        match all.get_mut(plugin) {
            Some(count) => *count += n,
            None => {
                all.insert(plugin.into(), n);
            }
        }
    }

    fn get(&self, plugin: &str) -> u64 {
        let all = self.0.lock().expect("metrics lock");
        all.get(plugin).copied().unwrap_or(0)
    }
}

mod render;

pub(crate) use render::escape;
#[cfg(test)]
mod tests;
