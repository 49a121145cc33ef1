//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, every call's span
//! and the call metrics reach an OTLP/HTTP receiver that decodes the real
//! protobuf. The gateway runs as a process of its own with the variables in
//! its environment, because the exporter is configured once per process from
//! the environment, and the test process is shared by every test.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use depin_e2e::{GatewayProcess, Home, HttpClient, PluginSpec, plugin};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

/// Every span the receiver decoded, with its resource's service name.
type Received = Arc<Mutex<Vec<(String, Span)>>>;
/// Every metric the receiver decoded, in arrival order.
type ReceivedMetrics = Arc<Mutex<Vec<Metric>>>;

/// A minimal OTLP/HTTP trace receiver on a loopback port: decodes each
/// `POST /v1/traces` body as `ExportTraceServiceRequest`.
async fn start_receiver() -> (std::net::SocketAddr, Received, ReceivedMetrics) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let metrics: ReceivedMetrics = Arc::default();
    let sink = received.clone();
    let metric_sink = metrics.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            let metric_sink = metric_sink.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    let metric_sink = metric_sink.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let protobuf = req.headers()["content-type"] == "application/x-protobuf";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if path == "/v1/metrics" && protobuf {
                            let status = match ExportMetricsServiceRequest::decode(body) {
                                Ok(export) => {
                                    let mut sink = metric_sink.lock().unwrap();
                                    for rm in export.resource_metrics {
                                        for sm in rm.scope_metrics {
                                            sink.extend(sm.metrics);
                                        }
                                    }
                                    200
                                }
                                Err(_) => 400,
                            };
                            let mut r = hyper::Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            return Ok::<_, Infallible>(r);
                        }
                        let ok = path == "/v1/traces" && protobuf;
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(export) if ok => {
                                let mut sink = sink.lock().unwrap();
                                for rs in export.resource_spans {
                                    let service = rs
                                        .resource
                                        .as_ref()
                                        .and_then(|r| string_attr(&r.attributes, "service.name"))
                                        .unwrap_or_default();
                                    for ss in rs.scope_spans {
                                        for span in ss.spans {
                                            sink.push((service.clone(), span));
                                        }
                                    }
                                }
                                200
                            }
                            _ => 400,
                        };
                        let mut r = hyper::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received, metrics)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_traces_and_metrics_arrive_at_a_receiver_one_span_per_call() {
    let (receiver, received, metrics) = start_receiver().await;
    let endpoint = format!("http://{receiver}");
    let spec =
        PluginSpec::new("traced", plugin("template_plugin"), "/t").config("greeting = \"hello\"");
    let home = Home::new(&[spec], "");
    let mut gw = GatewayProcess::start_with_env(
        BIN,
        &home.config_path,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    let http = HttpClient::new(gw.addr);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = http.get("/t/hello?name=otel").await;
        assert_eq!(r.status, 200);
        ids.push(r.request_id());
    }
    assert_eq!(http.get("/t/missing").await.status, 404);
    // SIGTERM: the gateway shuts down as in production, flushing spans
    // and metrics before it exits.
    assert!(gw.terminate(), "clean exit on SIGTERM");

    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = received.lock().unwrap().clone();
        if spans.len() >= 4 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(spans.len(), 4, "spans received: {spans:?}");
    for (service, span) in &spans {
        assert_eq!(service, "depin-gateway");
        assert_eq!(span.name, "GET traced");
        assert_eq!(
            string_attr(&span.attributes, "depin.plugin").as_deref(),
            Some("traced")
        );
        assert!(int_attr(&span.attributes, "depin.fuel").unwrap() > 0);
        assert!(int_attr(&span.attributes, "depin.bytes_in").unwrap() > 0);
        assert!(int_attr(&span.attributes, "depin.bytes_out").unwrap() > 0);
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    let mut statuses: Vec<i64> = spans
        .iter()
        .map(|(_, s)| int_attr(&s.attributes, "http.response.status_code").unwrap())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 404]);
    for id in ids {
        assert!(
            spans.iter().any(
                |(_, s)| string_attr(&s.attributes, "depin.request_id").as_deref()
                    == Some(id.as_str())
            ),
            "no span for request {id}"
        );
    }
    assert!(
        spans.iter().any(|(_, s)| {
            string_attr(&s.attributes, "url.path").as_deref() == Some("/t/hello")
        })
    );

    // Metrics: flushed at shutdown; the last export of `depin.calls` holds
    // the cumulative count per status.
    let calls = |status: i64| -> i64 {
        let metrics = metrics.lock().unwrap();
        let Some(m) = metrics.iter().rev().find(|m| m.name == "depin.calls") else {
            return -1;
        };
        let Some(Data::Sum(sum)) = &m.data else {
            panic!("depin.calls is not a sum: {m:?}");
        };
        sum.data_points
            .iter()
            .filter(|p| int_attr(&p.attributes, "status") == Some(status))
            .filter(|p| string_attr(&p.attributes, "plugin").as_deref() == Some("traced"))
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => v,
                _ => panic!("not an integer point: {p:?}"),
            })
            .sum()
    };
    assert_eq!((calls(200), calls(404)), (3, 1));
    let names: Vec<String> = metrics
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.name.clone())
        .collect();
    for name in [
        "depin.call.duration",
        "depin.call.fuel",
        "depin.ledger.commit.group_size",
    ] {
        assert!(names.iter().any(|n| n == name), "no {name} in {names:?}");
    }
}
