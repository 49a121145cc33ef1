//! Small inline SVG charts: no script, no external file, scaled by the
//! browser to the width it has.

use std::fmt::Write as _;

use super::html::escape;

/// Width and height of a chart's view box; the page scales it.
const W: f64 = 300.0;
const H: f64 = 60.0;

/// One bar per value, with a tooltip each (`labels[i]`). `label` names the
/// chart for screen readers. Bars take `slots` places (at least one per value), the last value at
/// the right edge, so charts of few epochs line up with full ones.
pub fn bars(label: &str, values: &[f64], labels: &[String], slots: usize) -> String {
    let max = values.iter().copied().fold(0.0, f64::max);
    let n = slots.max(values.len()).max(1);
    let offset = (n - values.len()) as f64;
    let slot = W / n as f64;
    let gap = (slot * 0.15).min(4.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="{0}"><title>{0}</title><line class="axis" x1="0" y1="{H}" x2="{W}" y2="{H}"/>"#,
        escape(label)
    );
    for (i, v) in values.iter().enumerate() {
        let h = if max > 0.0 { v / max * (H - 2.0) } else { 0.0 };
        // A visible stub for zero, so an empty epoch is still a bar slot.
        let h = h.max(0.5);
        let _ = write!(
            out,
            r#"<rect class="bar" x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}"><title>{}</title></rect>"#,
            (offset + i as f64) * slot + gap / 2.0,
            H - h,
            (slot - gap).max(0.5),
            h,
            escape(labels.get(i).map_or("", String::as_str))
        );
    }
    out.push_str("</svg>");
    out
}

/// A horizontal gauge: `used` of `total`, coloured as it fills.
pub fn meter(label: &str, used: f64, total: f64) -> String {
    let share = if total > 0.0 {
        (used / total).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let class = match share {
        s if s >= 0.9 => "bad",
        s if s >= 0.75 => "warn",
        _ => "ok",
    };
    format!(
        r#"<svg class="meter" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label="{0}"><title>{0}</title><rect class="track" x="0" y="0" width="100" height="8"/><rect class="fill {class}" x="0" y="0" width="{1:.2}" height="8"/></svg>"#,
        escape(label),
        share * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value_and_carry_their_labels() {
        let svg = bars(
            "calls",
            &[1.0, 4.0, 0.0],
            &["a".into(), "b<".into(), "c".into()],
            3,
        );
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 3);
        assert!(svg.contains("height=\"58.00\""), "{svg}");
        assert!(svg.contains("<title>b&lt;</title>"), "{svg}");
        assert!(svg.starts_with("<svg class=\"chart\""));
    }

    #[test]
    fn a_nearly_full_meter_is_marked_bad() {
        assert!(meter("disk", 95.0, 100.0).contains("fill bad"));
        assert!(meter("disk", 10.0, 100.0).contains("fill ok"));
        assert!(meter("disk", 1.0, 0.0).contains("width=\"0.00\""));
    }
}
