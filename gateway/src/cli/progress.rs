//! Progress of long CLI work on a terminal: done, rate and time left, on
//! one line of stderr, redrawn at most every [`REDRAW`]. Silent when
//! stderr is not a terminal, so pipes and logs stay clean.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Least time between two redraws.
pub const REDRAW: Duration = Duration::from_millis(200);

/// One progress line.
pub struct Progress {
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    on_terminal: bool,
}

impl Progress {
    /// Progress of `label` over `total` `unit`s (when known).
    pub fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Self {
        Self {
            label,
            unit,
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
            on_terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Counts `n` more done; redraws when it is time.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if !self.on_terminal || self.drawn.is_some_and(|d| d.elapsed() < REDRAW) {
            return;
        }
        self.drawn = Some(Instant::now());
        let line = self.line();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    /// The progress line as it is drawn.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        match self.total {
            Some(total) if total > 0 => {
                let left = total.saturating_sub(self.done) as f64 / rate.max(0.001);
                format!(
                    "{}: {} of {} {} ({:.0}%), {:.0}/s, {} left",
                    self.label,
                    self.done,
                    total,
                    self.unit,
                    self.done as f64 * 100.0 / total as f64,
                    rate,
                    eta(left)
                )
            }
            _ => format!("{}: {} {}, {:.0}/s", self.label, self.done, self.unit, rate),
        }
    }
}

impl Drop for Progress {
    /// Clears the line, so the result prints on a clean one.
    fn drop(&mut self) {
        if self.on_terminal && self.drawn.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

fn eta(secs: f64) -> String {
    let s = secs.ceil() as u64;
    if s >= 3600 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_done_total_rate_and_time_left() {
        let mut p = Progress::new("ledger verify", "records", Some(200));
        p.on_terminal = false;
        p.advance(50);
        let line = p.line();
        assert!(
            line.starts_with("ledger verify: 50 of 200 records (25%), "),
            "{line}"
        );
        assert!(line.ends_with(" left"), "{line}");
        let mut open = Progress::new("scan", "records", None);
        open.on_terminal = false;
        open.advance(7);
        assert!(open.line().starts_with("scan: 7 records, "));
        assert_eq!(eta(59.2), "1 min 0 s");
        assert_eq!(eta(3.0), "3 s");
        assert_eq!(eta(3725.0), "1 h 2 min");
    }
}
