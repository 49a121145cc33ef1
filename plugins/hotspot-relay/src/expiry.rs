//! Expiry: `tick` advances the plugin's clock and forgets what is past the
//! dedupe window, the proof retention and the beacon retention. Each kind
//! of state has a time-ordered index in kv, so a tick walks only what is
//! due.

use depin_plugin_sdk::{kv, log};
use serde_json::{Value, json};

use crate::beacon;
use crate::relay::{PROOF_INDEX, PROOF_RETENTION_MS, SEEN_INDEX, Settings, TICK_SCAN, read_u64};

/// Advances the clock and forgets what is past the dedupe window (and past
/// the proof and beacon retention). Expiry indexes are ordered by time, so a tick
/// stops at the first entry still young enough and never rescans them.
pub fn tick(now_ms: u64) {
    let Ok(settings) = Settings::load() else {
        return;
    };
    if let Err(e) = kv::set("clock", now_ms.to_string().as_bytes()) {
        log::warn(&format!("cannot advance the clock: {e:?}"));
        return;
    }
    expire(SEEN_INDEX, now_ms, settings.dedupe_window_ms, |hash, t| {
        let key = format!("seen/{hash}");
        if read_u64(&key) == Some(t) {
            let _ = if t == 0 {
                kv::set(&key, now_ms.to_string().as_bytes())
            } else {
                kv::delete(&key)
            };
        }
    });
    expire(PROOF_INDEX, now_ms, PROOF_RETENTION_MS, |hash, t| {
        let key = format!("pkt/{hash}");
        let Some(mut record) = kv::get_json::<Value>(&key).ok().flatten() else {
            return;
        };
        if record["at"].as_u64() == Some(t) {
            let _ = if t == 0 {
                record["at"] = json!(now_ms);
                kv::set_json(&key, &record)
            } else {
                kv::delete(&key)
            };
        }
    });
    expire(
        beacon::BEACON_INDEX,
        now_ms,
        beacon::BEACON_RETENTION_MS,
        |eui_token, t| beacon::forget(eui_token, t, now_ms),
    );
}

/// Walks the index `prefix` (`<prefix><time, 20 digits>/<hash>`) from the
/// oldest entry: entries older than `keep_ms` are removed and `f(hash, time)`
/// told; entries stamped 0 (made before the first tick ever) are restamped
/// with `now_ms` and `f(hash, 0)` told.
fn expire(prefix: &str, now_ms: u64, keep_ms: u64, mut f: impl FnMut(&str, u64)) {
    for key in kv::list_keys(prefix, TICK_SCAN).unwrap_or_default() {
        let Some((t, hash)) = key[prefix.len()..].split_once('/') else {
            let _ = kv::delete(&key);
            continue;
        };
        let Ok(t) = t.parse::<u64>() else {
            let _ = kv::delete(&key);
            continue;
        };
        if t != 0 && now_ms.saturating_sub(t) <= keep_ms {
            break;
        }
        let _ = kv::delete(&key);
        if t == 0 {
            let _ = kv::set(&index_key(prefix, now_ms, hash), b"");
        }
        f(hash, t);
    }
}

/// The key of an expiry index entry: `<prefix><time, 20 digits>/<name>`.
pub fn index_key(prefix: &str, t: u64, hash: &str) -> String {
    format!("{prefix}{t:020}/{hash}")
}
