//! The ledger both epoch benchmarks close: `n` records, all in epoch 1
//! (times 1 h to 2 h), four units in turn, a quarter of the subjects
//! distinct per total (one subject per request).

use std::time::Instant;

use depin_gateway::ledger::{CallEffects, Ledger, NewRecord, Source};

/// Epoch length of the benchmarks.
pub const LENGTH_MS: u64 = 3_600_000;

/// Record `i` of `n`.
pub fn record(i: u64, n: u64) -> NewRecord {
    let unit = ["requests", "bytes-out", "wall-time-us", "fuel"][(i % 4) as usize];
    NewRecord {
        time_ms: LENGTH_MS + i * (LENGTH_MS - 1) / n,
        unit: unit.into(),
        quantity: 100 + i % 1000,
        source: if i.is_multiple_of(4) {
            Source::Plugin
        } else {
            Source::Host
        },
        subject: Some(format!("req-{}", i / 4)),
        evidence: None,
    }
}

/// Commits the `n` records to `ledger`, 1000 per call, as plugin `bench`;
/// returns the seconds it took.
pub async fn fill(ledger: &Ledger, n: u64) -> f64 {
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch = (n - i).min(1000);
        let effects = CallEffects {
            records: (i..i + batch).map(|j| record(j, n)).collect(),
            ..CallEffects::default()
        };
        ledger
            .commit("bench".into(), effects)
            .await
            .expect("commit");
        i += batch;
    }
    started.elapsed().as_secs_f64()
}
