//! OpenTelemetry over OTLP (HTTP/protobuf): one span per plugin call with
//! the plugin, path, status, fuel and bytes; and the metrics of
//! [`crate::metrics`] (calls, errors by kind, latency, fuel, bytes, ledger
//! commit latency and group size).
//!
//! Traces are on only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variable is set (and neither
//! `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); metrics
//! likewise with `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` and
//! `OTEL_METRICS_EXPORTER`. The other `OTEL_EXPORTER_OTLP_*` variables
//! (headers, timeout), `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_SERVICE_NAME`
//! apply as the specification says. Off, a call costs one check of an
//! initialized `OnceLock`. Export is batched on background threads; a slow
//! or absent collector never delays a response.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::metrics::CallObservation;

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTING: OnceLock<Option<Exporting>> = OnceLock::new();

/// The OTLP counterparts of the Prometheus metrics.
struct MetricsExport {
    provider: SdkMeterProvider,
    calls: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
    fuel: Counter<u64>,
    bytes_in: Counter<u64>,
    bytes_out: Counter<u64>,
    ledger_commit: Histogram<f64>,
    ledger_group: Histogram<u64>,
}

static METRICS: OnceLock<Option<MetricsExport>> = OnceLock::new();

/// Whether the environment asks for OTLP export of `signal` (`TRACES` or
/// `METRICS`).
fn requested(signal: &str) -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let none = |k: &str| std::env::var(k).is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || none(&format!("OTEL_{signal}_EXPORTER"));
    !disabled
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
}

fn resource() -> Resource {
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "depin-gateway".into());
    Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Builds an exporter on a thread of its own: its blocking HTTP client must
/// be built outside the async runtime. Logs why when it cannot be built.
fn build_exporter<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    signal: &str,
    build: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Option<T> {
    match std::thread::spawn(build).join() {
        Ok(Ok(e)) => Some(e),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "OTLP {signal} export not started");
            None
        }
        Err(_) => {
            tracing::error!("OTLP {signal} export not started: the exporter panicked");
            None
        }
    }
}

fn start_metrics() -> Option<MetricsExport> {
    if !requested("METRICS") {
        return None;
    }
    let exporter = build_exporter("metric", || {
        opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
    })?;
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(resource())
        .build();
    let meter = provider.meter("depin-gateway");
    let export = MetricsExport {
        calls: meter
            .u64_counter("depin.calls")
            .with_description("Plugin calls by HTTP status.")
            .build(),
        errors: meter
            .u64_counter("depin.call.errors")
            .with_description("Failed plugin calls by kind.")
            .build(),
        duration: meter
            .f64_histogram("depin.call.duration")
            .with_unit("s")
            .with_description("Time from routing a request to its response.")
            .build(),
        fuel: meter.u64_counter("depin.call.fuel").build(),
        bytes_in: meter
            .u64_counter("depin.call.bytes_in")
            .with_unit("By")
            .build(),
        bytes_out: meter
            .u64_counter("depin.call.bytes_out")
            .with_unit("By")
            .build(),
        ledger_commit: meter
            .f64_histogram("depin.ledger.commit.duration")
            .with_unit("s")
            .build(),
        ledger_group: meter
            .u64_histogram("depin.ledger.commit.group_size")
            .build(),
        provider,
    };
    tracing::info!("exporting metrics over OTLP");
    Some(export)
}

/// Starts OTLP export of traces and metrics, each if the environment asks
/// for it. Later calls do nothing. Returns whether spans are exported.
pub fn init_from_env() -> bool {
    crate::install_crypto_provider();
    METRICS.get_or_init(start_metrics);
    EXPORTING
        .get_or_init(|| {
            if !requested("TRACES") {
                return None;
            }
            let exporter = build_exporter("trace", || {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()
            })?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build();
            let tracer = provider.tracer("depin-gateway");
            tracing::info!("exporting traces over OTLP");
            Some(Exporting { provider, tracer })
        })
        .is_some()
}

/// Sends every finished span and the current metrics now (at shutdown).
/// Does nothing when off.
pub fn flush() {
    if let Some(Some(e)) = EXPORTING.get()
        && let Err(err) = e.provider.force_flush()
    {
        tracing::warn!(error = %err, "cannot flush OTLP spans");
    }
    if let Some(Some(m)) = METRICS.get()
        && let Err(err) = m.provider.force_flush()
    {
        tracing::warn!(error = %err, "cannot flush OTLP metrics");
    }
}

/// Adds one call to the OTLP metrics, when exporting.
pub(crate) fn export_call(plugin: &str, call: &CallObservation) {
    let Some(Some(m)) = METRICS.get() else {
        return;
    };
    let p = KeyValue::new("plugin", plugin.to_string());
    m.calls.add(
        1,
        &[p.clone(), KeyValue::new("status", i64::from(call.status))],
    );
    if let Some(kind) = call.error {
        m.errors.add(1, &[p.clone(), KeyValue::new("kind", kind)]);
    }
    let one = std::slice::from_ref(&p);
    m.duration.record(call.latency.as_secs_f64(), one);
    m.fuel.add(call.fuel, one);
    m.bytes_in.add(call.bytes_in, one);
    m.bytes_out.add(call.bytes_out, one);
}

/// Adds one ledger transaction to the OTLP metrics, when exporting.
pub(crate) fn export_ledger_commit(group_size: usize, took: Duration) {
    let Some(Some(m)) = METRICS.get() else {
        return;
    };
    m.ledger_commit.record(took.as_secs_f64(), &[]);
    m.ledger_group.record(group_size as u64, &[]);
}

/// One finished HTTP call, as its span reports it.
pub struct CallSpan<'a> {
    pub plugin: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub request_id: &'a str,
    pub status: u16,
    pub error: Option<&'static str>,
    pub fuel: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub started: SystemTime,
}

/// Whether spans are exported (check before assembling a [`CallSpan`]).
#[inline]
pub fn enabled() -> bool {
    matches!(EXPORTING.get(), Some(Some(_)))
}

/// Records the span of one call, when exporting.
pub fn record_call(c: CallSpan<'_>) {
    let Some(Some(e)) = EXPORTING.get() else {
        return;
    };
    let mut attributes = vec![
        KeyValue::new("depin.plugin", c.plugin.to_string()),
        KeyValue::new("http.request.method", c.method.to_string()),
        KeyValue::new("url.path", c.route.to_string()),
        KeyValue::new("http.response.status_code", i64::from(c.status)),
        KeyValue::new("depin.request_id", c.request_id.to_string()),
        KeyValue::new("depin.fuel", c.fuel as i64),
        KeyValue::new("depin.bytes_in", c.bytes_in as i64),
        KeyValue::new("depin.bytes_out", c.bytes_out as i64),
    ];
    if let Some(kind) = c.error {
        attributes.push(KeyValue::new("error.type", kind));
    }
    let mut span = e
        .tracer
        .span_builder(format!("{} {}", c.method, c.plugin))
        .with_kind(SpanKind::Server)
        .with_start_time(c.started)
        .with_attributes(attributes)
        .start(&e.tracer);
    if c.status >= 500 {
        span.set_status(Status::error(c.error.unwrap_or("server error")));
    }
    span.end();
}
