//! OpenTelemetry traces over OTLP (HTTP/protobuf): one span per plugin call
//! with the plugin, route, status, fuel and bytes.
//!
//! On only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variable is set (and neither
//! `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); the other
//! `OTEL_EXPORTER_OTLP_*` variables (headers, timeout) and
//! `OTEL_SERVICE_NAME` apply as the specification says. Off, a call costs
//! one check of an initialized `OnceLock`. Spans are batched and exported
//! from a background thread; a slow or absent collector never delays a
//! response.

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTING: OnceLock<Option<Exporting>> = OnceLock::new();

/// Whether the environment asks for OTLP trace export.
fn requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Starts OTLP export if the environment asks for it. Later calls do
/// nothing. Returns whether spans are exported.
pub fn init_from_env() -> bool {
    EXPORTING
        .get_or_init(|| {
            if !requested() {
                return None;
            }
            // The exporter's blocking HTTP client must be built outside the
            // async runtime.
            let built = std::thread::spawn(|| {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()
            })
            .join();
            let exporter = match built {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "OTLP trace export not started");
                    return None;
                }
                Err(_) => {
                    tracing::error!("OTLP trace export not started: the exporter panicked");
                    return None;
                }
            };
            let service = std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "depin-gateway".into());
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(service)
                        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                        .build(),
                )
                .build();
            let tracer = provider.tracer("depin-gateway");
            tracing::info!("exporting traces over OTLP");
            Some(Exporting { provider, tracer })
        })
        .is_some()
}

/// Sends every finished span now (at shutdown). Does nothing when off.
pub fn flush() {
    if let Some(Some(e)) = EXPORTING.get()
        && let Err(err) = e.provider.force_flush()
    {
        tracing::warn!(error = %err, "cannot flush OTLP spans");
    }
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
