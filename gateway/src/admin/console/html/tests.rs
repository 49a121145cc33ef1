use super::*;
use depin_protocol::rewards::ProofResults;

#[test]
fn times_and_numbers_read_as_people_write_them() {
    assert_eq!(time(0), "1970-01-01 00:00:00");
    assert_eq!(time(1_772_409_600_000 + 3_723_000), "2026-03-02 01:02:03");
    assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00");
    assert_eq!(number(1_234_567), "1\u{2009}234\u{2009}567");
    assert_eq!(number(12), "12");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(3 << 20), "3.0 MiB");
}

#[test]
fn outside_text_is_escaped() {
    assert_eq!(
        escape("<a href='x'>&\"</a>"),
        "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
    );
    let page = login_page(Some("<script>"));
    assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
}

#[test]
fn the_collector_columns_say_what_is_known() {
    let row = |collector| EpochRow {
        epoch: 7,
        start_ms: 0,
        length_ms: 1000,
        records: 3,
        reward_micro: 30,
        proofs: ProofResults::default(),
        delivery: "delivered",
        acknowledged_ms: Some(1),
        collector,
    };
    let (figure, reasons) = collector_cells(&row(CollectorView::NotYetReported));
    assert!(figure.contains("not yet reported by the collector"));
    assert!(reasons.is_empty());
    let (figure, reasons) = collector_cells(&row(CollectorView::Reported {
        figure_micro: 1500,
        reasons: vec!["rated".into(), "capped".into()],
    }));
    assert_eq!(figure, "1\u{2009}500");
    assert!(reasons.contains(">rated<") && reasons.contains(">capped<"));
}
