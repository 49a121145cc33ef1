use super::*;

#[test]
fn histogram_buckets_are_cumulative_and_end_in_inf() {
    let mut h = Histogram::new(&GROUP_BUCKETS);
    for v in [1.0, 3.0, 3.0, 1000.0] {
        h.observe(v);
    }
    let mut out = String::new();
    h.render(&mut out, "x", "");
    assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
    assert!(out.contains("x_bucket{le=\"4\"} 3\n"), "{out}");
    assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
    assert!(out.contains("x_count 4\n"), "{out}");
    assert!(out.contains("x_sum 1007\n"), "{out}");
}

#[test]
fn calls_are_counted_by_plugin_status_and_error_kind() {
    let m = Metrics::new();
    let p: Arc<str> = "a\"b".into();
    let call = |status, error| CallObservation {
        status,
        error,
        latency: Duration::from_millis(2),
        fuel: 10,
        bytes_in: 5,
        bytes_out: 7,
        reused: status == 200,
    };
    m.record_call(&p, call(200, None));
    m.record_call(&p, call(500, Some("trap")));
    let c = m.plugin("a\"b").unwrap();
    assert_eq!((c.calls(), c.errors(), c.fuel), (2, 1, 20));
    let text = m.render_prometheus();
    assert!(text.contains("depin_calls_total{plugin=\"a\\\"b\",status=\"500\"} 1\n"));
    assert!(text.contains("depin_call_errors_total{plugin=\"a\\\"b\",kind=\"trap\"} 1\n"));
    assert!(text.contains("depin_call_fuel_total{plugin=\"a\\\"b\"} 20\n"));
    assert!(text.contains("depin_call_reused_total{plugin=\"a\\\"b\"} 1\n"));
    assert!(!text.contains("depin_outbox_depth"));
    m.set_outbox_depth(3);
    assert!(m.render_prometheus().contains("depin_outbox_depth 3\n"));
}

#[test]
fn conflicts_and_retries_are_counted_by_plugin() {
    let m = Metrics::new();
    let p: Arc<str> = "conflicted".into();
    m.record_conflict(&p, ConflictOutcome::Retried);
    m.record_conflict(&p, ConflictOutcome::Retried);
    m.record_conflict(&p, ConflictOutcome::Failed);
    assert_eq!(
        m.conflicts("conflicted"),
        ConflictCounts {
            conflicts: 3,
            retries: 2,
            failed: 1
        }
    );
    let text = m.render_prometheus();
    assert!(
        text.contains("depin_call_conflicts_total{plugin=\"conflicted\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("depin_call_retries_total{plugin=\"conflicted\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("depin_call_conflict_failures_total{plugin=\"conflicted\"} 1"),
        "{text}"
    );
}
