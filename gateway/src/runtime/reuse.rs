//! Reusable answers: a plugin may mark a blob answer to a `GET` or `HEAD`
//! as reusable for a short time (the `depin-reuse-ms` response header).
//! Until then the host answers the same request (method, path and query)
//! itself: it serves the same blob and records the same plugin-claimed
//! usage again, with its own host-attested records, without calling the
//! plugin. The records are durable before the response, as for any call.
//!
//! Only blob answers qualify: a blob is content-addressed, so the bytes
//! behind the answer cannot change while it is reused. Small blobs are
//! served from the copy the store keeps in memory (`BlobStore::open_hot`),
//! which a delete through the store forgets; a larger blob deleted in the
//! meantime is noticed when the host opens it (the request then goes to
//! the plugin). A reload starts with no reusable answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ledger::{EncodedRecords, NewRecord, Source};
use crate::runtime::contract::{Body, HttpResponse};

/// The response header a plugin sets to mark its answer reusable; its
/// value is the time in milliseconds. The host removes it from the answer.
pub const REUSE_HEADER: &str = "depin-reuse-ms";
/// The longest a plugin may have an answer reused.
pub const MAX_REUSE: Duration = Duration::from_secs(60);
/// Reusable answers kept per plugin.
pub const MAX_ENTRIES: usize = 4096;
/// Most plugin-claimed records an answer may carry to be reusable.
pub const MAX_CLAIMS: usize = 16;

/// One reusable answer.
#[derive(Debug)]
pub struct Reusable {
    /// The plugin's answer, without the reuse header.
    pub response: HttpResponse,
    /// The plugin-claimed records of the call, recorded again on reuse
    /// (encoded once, timestamped at each commit).
    pub claims: EncodedRecords,
    expires: Instant,
}

/// The reusable answers of one loaded plugin.
#[derive(Debug, Default)]
pub struct ReuseTable {
    entries: Mutex<HashMap<String, Arc<Reusable>>>,
}

/// The key of a request: method, path under the plugin's route, query.
pub fn key(method: &str, path: &str, query: &str) -> String {
    let mut k = String::with_capacity(method.len() + path.len() + query.len() + 2);
    k.push_str(method);
    k.push(' ');
    k.push_str(path);
    if !query.is_empty() {
        k.push('?');
        k.push_str(query);
    }
    k
}

/// How long the plugin asked for `r` to be reused: `None` when it did not
/// ask, or asked for something this table cannot honour (not a blob, not
/// a 200, an unparsable or zero time). Times above [`MAX_REUSE`] are
/// capped.
pub fn requested(r: &HttpResponse) -> Option<Duration> {
    let ms = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(REUSE_HEADER))?
        .1
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)?;
    (r.status == 200 && matches!(r.body, Body::Blob(_)))
        .then(|| Duration::from_millis(ms).min(MAX_REUSE))
}

impl ReuseTable {
    /// The live answer for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Arc<Reusable>> {
        let mut entries = self.entries.lock().expect("reuse table lock");
        let entry = entries.get(key)?;
        if entry.expires > Instant::now() {
            return Some(entry.clone());
        }
        entries.remove(key);
        None
    }

    /// Keeps `response` for `key` for `ttl`, with the plugin-claimed
    /// records `plugin`'s call made (host-attested records among `records`
    /// measured work of that call, which a repeat does not do, so they are
    /// not kept). Refused (returns false) when the answer carries too many
    /// claims or the table is full of live answers.
    pub fn insert(
        &self,
        plugin: &str,
        key: String,
        mut response: HttpResponse,
        records: &[NewRecord],
        ttl: Duration,
    ) -> bool {
        let mut claims = EncodedRecords::with_capacity(records.len());
        for r in records.iter().filter(|r| r.source == Source::Plugin) {
            if claims.len() == MAX_CLAIMS {
                return false;
            }
            // Timestamped at each commit, like the host's own records.
            let r = NewRecord {
                time_ms: 0,
                ..r.clone()
            };
            if claims.push(plugin, &r).is_err() {
                return false;
            }
        }
        response
            .headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(REUSE_HEADER));
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("reuse table lock");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_ENTRIES {
                return false;
            }
        }
        entries.insert(
            key,
            Arc::new(Reusable {
                response,
                claims,
                expires: now + ttl.min(MAX_REUSE),
            }),
        );
        true
    }

    /// Forgets the answer for `key` (its blob is gone).
    pub fn remove(&self, key: &str) {
        self.entries.lock().expect("reuse table lock").remove(key);
    }

    /// Whether no answer is kept, live or not yet purged (for tests).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.lock().expect("reuse table lock").is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::contract::BlobRef;

    fn blob_answer(reuse: &str) -> HttpResponse {
        HttpResponse {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/octet-stream".into()),
                (REUSE_HEADER.into(), reuse.into()),
            ],
            body: Body::Blob(BlobRef {
                digest: format!("sha256:{}", "ab".repeat(32)),
                offset: 0,
                length: None,
            }),
        }
    }

    fn claim() -> NewRecord {
        NewRecord {
            time_ms: 1234,
            unit: "cache-hits".into(),
            quantity: 1,
            source: Source::Plugin,
            subject: Some("d".into()),
            evidence: Some(vec![1, 2, 3]),
        }
    }

    #[test]
    fn only_blob_answers_with_a_positive_time_are_reusable() {
        assert_eq!(
            requested(&blob_answer("250")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(requested(&blob_answer("3600000")), Some(MAX_REUSE));
        assert_eq!(requested(&blob_answer("0")), None);
        assert_eq!(requested(&blob_answer("soon")), None);
        let mut not_found = blob_answer("250");
        not_found.status = 404;
        assert_eq!(requested(&not_found), None);
        let mut bytes = blob_answer("250");
        bytes.body = Body::Bytes(b"hi".to_vec());
        assert_eq!(requested(&bytes), None);
        let mut unmarked = blob_answer("250");
        unmarked.headers.truncate(1);
        assert_eq!(requested(&unmarked), None);
    }

    #[test]
    fn answers_are_kept_without_the_header_and_expire() {
        let t = ReuseTable::default();
        let k = key("GET", "/blobs/x", "");
        let host = NewRecord::host("job-fuel", 7, "req");
        assert!(t.insert(
            "p",
            k.clone(),
            blob_answer("50"),
            &[host, claim()],
            Duration::from_millis(50)
        ));
        let hit = t.get(&k).expect("kept");
        assert!(hit.response.headers.iter().all(|(k, _)| k != REUSE_HEADER));
        let claims = hit.claims.decode();
        assert_eq!(claims.len(), 1, "host-attested records are not kept");
        assert_eq!(
            (claims[0].source, claims[0].unit.as_str()),
            (Source::Plugin, "cache-hits")
        );
        assert_eq!(claims[0].time_ms, 0, "re-stamped at each commit");
        assert!(t.get(&key("HEAD", "/blobs/x", "")).is_none());
        assert!(t.get(&key("GET", "/blobs/x", "a=1")).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.get(&k).is_none());
        assert!(t.is_empty(), "expired answers are dropped when seen");
    }

    #[test]
    fn the_table_is_bounded() {
        let t = ReuseTable::default();
        let ttl = Duration::from_secs(10);
        for i in 0..MAX_ENTRIES {
            assert!(t.insert("p", format!("GET /{i}"), blob_answer("1"), &[], ttl));
        }
        assert!(!t.insert("p", "GET /one-more".into(), blob_answer("1"), &[], ttl));
        assert!(
            t.insert("p", "GET /0".into(), blob_answer("1"), &[], ttl),
            "an existing key is replaced"
        );
        assert!(!t.insert(
            "p",
            "GET /many-claims".into(),
            blob_answer("1"),
            &vec![claim(); MAX_CLAIMS + 1],
            ttl
        ));
    }
}
