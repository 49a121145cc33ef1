//! The console's HTML: one server-rendered page, inline CSS and SVG, no
//! script. Every value from outside (plugin names, reasons, errors) goes
//! through [`escape`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use depin_protocol::rewards::proof_score_ppm;

use super::charts;
use super::view::{CollectorView, EpochRow, Snapshot};
use crate::reload::ReloadReport;

/// What the page needs besides the snapshot.
pub struct PageContext {
    pub gateway_id: String,
    pub version: &'static str,
    pub uptime_s: u64,
    pub generation: u64,
    /// Calls per second per plugin, since the previous view.
    pub rates: BTreeMap<String, f64>,
    /// The session's CSRF token; `None` when no admin token is configured
    /// (then nothing on the page can change anything).
    pub csrf: Option<String>,
    pub last_reload: Option<ReloadReport>,
    pub ready: bool,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = include_str!("style.css");

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light\">\
         <title>{}</title><style>{STYLE}</style></head>",
        escape(title)
    );
}

/// The login form; `error` is shown above it (a wrong token).
pub fn login_page(error: Option<&str>) -> String {
    let mut out = String::new();
    head(&mut out, "depin-gateway console: sign in");
    out.push_str("<body><div class=\"login\" id=\"login\"><h1>depin-gateway console</h1>");
    if let Some(e) = error {
        let _ = write!(
            out,
            "<p class=\"error\" id=\"login-error\">{}</p>",
            escape(e)
        );
    }
    out.push_str(
        "<form method=\"post\" action=\"/ui/login\">\
         <label for=\"token\">Admin token</label>\
         <input id=\"token\" type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus>\
         <p><button type=\"submit\" id=\"sign-in\">Sign in</button></p></form>\
         <p class=\"muted\">The token is the content of <code>admin.token_file</code>.</p></div></body></html>",
    );
    out
}

/// A short page for a refused action (CSRF, no token configured).
pub fn refusal_page(message: &str) -> String {
    let mut out = String::new();
    head(&mut out, "depin-gateway console");
    let _ = write!(
        out,
        "<body><div class=\"login\"><h1>Refused</h1><p id=\"refusal\">{}</p>\
         <p><a href=\"/ui\">Back to the console</a></p></div></body></html>",
        escape(message)
    );
    out
}

/// The console page.
pub fn console_page(ctx: &PageContext, s: &Snapshot) -> String {
    let mut out = String::with_capacity(32 * 1024);
    head(&mut out, "depin-gateway console");
    out.push_str("<body><header><div><h1>depin-gateway console</h1>");
    let _ = write!(
        out,
        "<div class=\"id\">{} · v{} · up {} · generation {} · {}</div></div><div>",
        escape(&ctx.gateway_id),
        escape(ctx.version),
        duration(ctx.uptime_s),
        ctx.generation,
        if ctx.ready {
            "<span class=\"pill ok\" id=\"ready\">ready</span>"
        } else {
            "<span class=\"pill bad\" id=\"ready\">not ready</span>"
        }
    );
    if let Some(csrf) = &ctx.csrf {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button class=\"plain\" type=\"submit\" id=\"logout\">Sign out</button></form>",
            escape(csrf)
        );
    }
    out.push_str("</div></header><main>");
    for p in &s.problems {
        let _ = write!(
            out,
            "<section class=\"wide notice\">{}</section>",
            escape(p)
        );
    }
    plugins(&mut out, ctx, s);
    usage(&mut out, s);
    epochs(&mut out, s);
    challenges(&mut out, s);
    outbox(&mut out, s);
    storage(&mut out, s);
    out.push_str("</main></body></html>");
    out
}

fn plugins(out: &mut String, ctx: &PageContext, s: &Snapshot) {
    out.push_str(
        "<section class=\"wide\" id=\"plugins\"><h2>Plugins</h2><div class=\"scroll\"><table class=\"stack\">\
         <thead><tr><th>plugin</th><th>kind</th><th>serves on</th><th class=\"num\">calls</th>\
         <th class=\"num\">calls/s</th><th>errors by kind</th><th class=\"num\">limits hit</th>\
         <th>digest</th></tr></thead><tbody>",
    );
    for p in &s.plugins {
        let mut serves = Vec::new();
        if let Some(r) = &p.route {
            serves.push(format!("HTTP {}", escape(r)));
        }
        if let Some(u) = &p.udp {
            serves.push(format!("UDP {}", escape(u)));
        }
        if let Some(m) = &p.mqtt {
            serves.push(format!("MQTT {}", escape(m)));
        }
        if serves.is_empty() {
            serves.push("<span class=\"muted\">ticks only</span>".into());
        }
        let errors = if p.errors.is_empty() {
            "<span class=\"muted\">none</span>".to_string()
        } else {
            p.errors
                .iter()
                .map(|(k, n)| format!("<span class=\"pill bad\">{} {n}</span>", escape(k)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rate = ctx.rates.get(&p.name).copied().unwrap_or(0.0);
        let _ = write!(
            out,
            "<tr class=\"plugin\" data-plugin=\"{name}\"><td data-label=\"plugin\"><span><strong>{name}</strong> <span class=\"muted\">v{version}</span></span></td>\
             <td data-label=\"kind\">{kind}</td><td data-label=\"serves on\"><span>{serves}</span></td><td class=\"num\" data-label=\"calls\">{calls}</td>\
             <td class=\"num\" data-label=\"calls/s\">{rate:.2}</td><td data-label=\"errors by kind\"><span>{errors}</span></td>\
             <td class=\"num\" data-label=\"limits hit\">{limits}</td><td data-label=\"digest\"><code title=\"{digest}\">{short}</code></td></tr>",
            name = escape(&p.name),
            version = escape(&p.version),
            kind = p.kind,
            serves = serves.join("<br>"),
            calls = p.calls,
            limits = p.limits_hit,
            digest = escape(&p.digest),
            short = escape(&short_digest(&p.digest)),
        );
    }
    if s.plugins.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"muted\">no plugin loaded</td></tr>");
    }
    out.push_str("</tbody></table></div>");
    let _ = write!(
        out,
        "<p class=\"muted\">calls/s is averaged since the previous view of this page (or since start). Limits hit counts {} errors.</p>",
        super::view::LIMIT_KINDS.join(", ")
    );
    match &ctx.csrf {
        Some(csrf) => {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/ui/reload\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\" id=\"reload\">Reload plugins</button></form>",
                escape(csrf)
            );
        }
        None => out.push_str(
            "<p><button type=\"button\" id=\"reload\" disabled>Reload plugins</button> \
             <span class=\"muted\">needs <code>admin.token_file</code></span></p>",
        ),
    }
    if let Some(r) = &ctx.last_reload {
        let _ = write!(
            out,
            "<p id=\"last-reload\">Last reload {}: {} (generation {}{}{})</p>",
            time(r.at_ms),
            if r.ok {
                "<span class=\"pill ok\">ok</span>"
            } else {
                "<span class=\"pill bad\">refused</span>"
            },
            r.generation,
            if r.reloaded.is_empty() {
                String::new()
            } else {
                format!("; reloaded {}", escape(&r.reloaded.join(", ")))
            },
            r.error
                .as_deref()
                .map(|e| format!("; {}", escape(e)))
                .unwrap_or_default()
        );
    }
    out.push_str("</section>");
}

fn usage(out: &mut String, s: &Snapshot) {
    out.push_str(
        "<section class=\"wide\" id=\"usage\"><h2>Usage per plugin and unit, last epochs</h2>",
    );
    if s.usage.is_empty() {
        out.push_str("<p class=\"muted\">No epoch with usage closed yet.</p>");
    }
    for series in &s.usage {
        let values: Vec<f64> = series.points.iter().map(|(_, q)| *q as f64).collect();
        let labels: Vec<String> = series
            .points
            .iter()
            .map(|(e, q)| format!("epoch {e}: {}", number(*q)))
            .collect();
        let total: u128 = series.points.iter().map(|(_, q)| q).sum();
        let name = format!("{} · {} ({})", series.plugin, series.unit, series.source);
        let _ = write!(
            out,
            "<div class=\"series\" data-plugin=\"{}\"><div class=\"name\"><strong>{}</strong><br>\
             <span class=\"muted\">{} in {} epochs, last {}</span></div>{}</div>",
            escape(&series.plugin),
            escape(&name),
            number(total),
            series.points.len(),
            number(series.points.last().map_or(0, |p| p.1)),
            charts::bars(&name, &values, &labels, super::view::CHART_EPOCHS)
        );
    }
    out.push_str("</section>");
}

fn collector_cells(e: &EpochRow) -> (String, String) {
    match &e.collector {
        CollectorView::NoCollector => (
            "<span class=\"muted\">no collector configured</span>".into(),
            String::new(),
        ),
        CollectorView::NotYetReported => (
            "<span class=\"muted collector-pending\">not yet reported by the collector</span>"
                .into(),
            String::new(),
        ),
        CollectorView::Reported {
            figure_micro,
            reasons,
        } => (
            number(*figure_micro),
            reasons
                .iter()
                .map(|r| format!("<span class=\"pill\">{}</span>", escape(r)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

fn epochs(out: &mut String, s: &Snapshot) {
    out.push_str(
        "<section class=\"wide\" id=\"epochs\"><h2>Epochs</h2><div class=\"scroll\"><table id=\"epochs-table\" class=\"stack\">\
         <thead><tr><th class=\"num\">epoch</th><th>started (UTC)</th><th class=\"num\">records</th>\
         <th class=\"num\">local estimate (micro)</th><th class=\"num\">proofs</th><th>delivery</th>\
         <th class=\"num\">collector's figure</th><th>collector's reasons</th></tr></thead><tbody>",
    );
    for e in &s.epochs {
        let delivery_class = match e.delivery {
            "delivered" => "ok",
            "pending" => "warn",
            _ => "muted",
        };
        let acked = e
            .acknowledged_ms
            .map(|ms| format!("<br><span class=\"muted\">{}</span>", time(ms)))
            .unwrap_or_default();
        let (figure, reasons) = collector_cells(e);
        let _ = write!(
            out,
            "<tr class=\"epoch\" data-epoch=\"{epoch}\"><td class=\"num\" data-label=\"epoch\">{epoch}</td><td data-label=\"started\">{start}</td>\
             <td class=\"num\" data-label=\"records\">{records}</td><td class=\"num\" data-label=\"local estimate\">{reward}</td>\
             <td class=\"num\" data-label=\"proofs\">{passed}/{issued}</td>\
             <td data-label=\"delivery\"><span><span class=\"pill {delivery_class}\">{delivery}</span>{acked}</span></td>\
             <td class=\"num\" data-label=\"collector's figure\">{figure}</td><td data-label=\"collector's reasons\"><span>{reasons}</span></td></tr>",
            epoch = e.epoch,
            start = time(e.start_ms),
            records = number(u128::from(e.records)),
            reward = number(e.reward_micro),
            passed = e.proofs.passed,
            issued = e.proofs.issued,
            delivery = e.delivery,
        );
    }
    if s.epochs.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"muted\">no epoch closed yet</td></tr>");
    }
    out.push_str("</tbody></table></div>");
    if let Some(e) = s.epochs.first() {
        let _ = write!(
            out,
            "<p class=\"muted\">Epochs are {} long. The local estimate is this gateway's reward under its own policy; \
             the collector decides.</p>",
            duration(e.length_ms / 1000)
        );
    }
    out.push_str("</section>");
}

fn challenges(out: &mut String, s: &Snapshot) {
    let score = proof_score_ppm(s.score) as f64 / 10_000.0;
    let class = match score {
        x if x >= 95.0 => "ok",
        x if x >= 80.0 => "warn",
        _ => "bad",
    };
    let _ = write!(
        out,
        "<section id=\"challenges\"><h2>Challenges</h2><p>Running score \
         <strong class=\"{class}\" id=\"score\">{score:.1}%</strong> \
         <span class=\"muted\">({} of {} passed over the last {} epochs and those waiting)</span></p>",
        s.score.passed,
        s.score.issued,
        super::view::RECENT_EPOCHS
    );
    if s.challenges.is_empty() {
        out.push_str("<p class=\"muted\">No challenge answered yet.</p>");
    } else {
        out.push_str(
            "<div class=\"scroll\"><table><thead><tr><th>challenge</th><th>result</th><th>counted in</th></tr></thead><tbody>",
        );
        for c in s.challenges.iter().take(12) {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&c.id),
                if c.passed {
                    "<span class=\"pill ok\">passed</span>"
                } else {
                    "<span class=\"pill bad\">failed</span>"
                },
                c.epoch
                    .map_or_else(|| "next epoch".to_string(), |e| format!("epoch {e}"))
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("<h2 id=\"self-checks\">Self-checks</h2>");
    if s.self_checks.is_empty() {
        out.push_str(
            "<p class=\"muted\">None configured (<code>[[self_check.possession]]</code>).</p>",
        );
    } else {
        out.push_str(
            "<div class=\"scroll\"><table id=\"self-check-table\" class=\"stack\"><thead><tr><th>plugin</th><th>kind</th><th>latest</th>\
             <th class=\"num\">failed / run</th></tr></thead><tbody>",
        );
        for c in &s.self_checks {
            let latest = if c.last_passed {
                format!(
                    "<span class=\"pill ok\">passed</span> <span class=\"muted\">{}</span>",
                    time(c.last_ms)
                )
            } else {
                format!(
                    "<span class=\"pill bad\">failed</span> <span class=\"muted\">{}</span><br>{}",
                    time(c.last_ms),
                    escape(c.last_reason.as_deref().unwrap_or(""))
                )
            };
            let _ = write!(
                out,
                "<tr class=\"self-check {}\" data-plugin=\"{}\"><td data-label=\"plugin\">{}</td><td data-label=\"kind\">{}</td>\
                 <td data-label=\"latest\"><span>{latest}</span></td><td class=\"num\" data-label=\"failed / run\">{} / {}</td></tr>",
                if c.last_passed { "passing" } else { "failing" },
                escape(&c.plugin),
                escape(&c.plugin),
                escape(&c.kind),
                c.failures,
                c.runs
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</section>");
}

fn outbox(out: &mut String, s: &Snapshot) {
    let o = &s.outbox;
    out.push_str("<section id=\"outbox\"><h2>Outbox and collector</h2><table>");
    match &o.upstream {
        None => out.push_str(
            "<tr><th>collector</th><td class=\"muted\">none configured: reports stay local</td></tr>",
        ),
        Some(url) => {
            let _ = write!(out, "<tr><th>collector</th><td><code>{}</code></td></tr>", escape(url));
            let state = match (&o.deliveries.last_ok_ms, &o.deliveries.last_error) {
                (_, Some((err_ms, e))) if o.deliveries.last_ok_ms.is_none_or(|ok| ok < *err_ms) => {
                    format!(
                        "<span class=\"pill bad\">unreachable</span> since {}: {}",
                        time(*err_ms),
                        escape(e)
                    )
                }
                (Some(ok), _) => format!("<span class=\"pill ok\">reachable</span> at {}", time(*ok)),
                _ => "<span class=\"muted\">no delivery attempted yet</span>".into(),
            };
            let _ = write!(out, "<tr><th>connection</th><td id=\"upstream-state\">{state}</td></tr>");
        }
    }
    let _ = write!(
        out,
        "<tr><th>reports waiting</th><td id=\"outbox-depth\">{}{}</td></tr>\
         <tr><th>last acknowledged</th><td>{}</td></tr>\
         <tr><th>delivery rounds</th><td>{} ok, {} failed</td></tr></table></section>",
        o.depth,
        o.oldest_pending
            .map(|e| format!(" (oldest: epoch {e})"))
            .unwrap_or_default(),
        o.last_acknowledged_ms.map_or_else(|| "never".into(), time),
        o.deliveries.ok,
        o.deliveries.failed
    );
}

fn storage(out: &mut String, s: &Snapshot) {
    let st = &s.storage;
    out.push_str("<section id=\"storage\"><h2>Storage</h2><table>");
    let _ = write!(
        out,
        "<tr><th>ledger</th><td id=\"ledger-size\">{} <span class=\"muted\">(+ {} log, {} epochs)</span></td></tr>",
        bytes(st.ledger_bytes),
        bytes(st.wal_bytes),
        bytes(st.epochs_bytes)
    );
    out.push_str("</table>");
    match st.disk {
        Some((free, total)) => {
            let used = total.saturating_sub(free);
            let _ = write!(
                out,
                "<p>Disk: <span id=\"disk-free\">{} free</span> of {}</p>{}",
                bytes(free),
                bytes(total),
                charts::meter("disk use", used as f64, total as f64)
            );
        }
        None => out.push_str("<p class=\"bad\">Free disk space is unknown.</p>"),
    }
    for (plugin, used, quota) in &st.blobs {
        let _ = write!(
            out,
            "<p>Blobs of <strong>{}</strong>: {} of {} quota</p>{}",
            escape(plugin),
            bytes(*used),
            bytes(*quota),
            charts::meter(
                &format!("blob quota of {plugin}"),
                *used as f64,
                *quota as f64
            )
        );
    }
    if st.blobs.is_empty() {
        out.push_str("<p class=\"muted\">No plugin has a blob store.</p>");
    }
    out.push_str("</section>");
}

/// `sha256:` and the first 16 hex digits; the page's `title` has it all.
fn short_digest(d: &str) -> String {
    match d.get(..23) {
        Some(head) if d.len() > 24 => format!("{head}…"),
        _ => d.to_string(),
    }
}

/// 1234567 -> "1 234 567" (thin spaces keep columns readable).
pub fn number(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() * 2);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(s: u64) -> String {
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = depin_protocol::time::civil(ms / 1000);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

#[cfg(test)]
mod tests;
