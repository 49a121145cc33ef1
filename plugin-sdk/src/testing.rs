//! A native test host: run plugin logic in `cargo test` without building
//! WebAssembly. It enforces the same limits as the gateway (declared units,
//! key and value sizes) so tests catch what the gateway would refuse.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::{Level, Usage};

#[derive(Default)]
struct State {
    config: BTreeMap<String, String>,
    kv: BTreeMap<String, Vec<u8>>,
    usage: Vec<Usage>,
    logs: Vec<(Level, String)>,
    units: Option<Vec<String>>,
    /// Stored blobs by digest, and the store's quota (none: no store).
    blobs: BTreeMap<String, Vec<u8>>,
    blob_quota: Option<u64>,
    /// What outbound requests get, by URL: status and body.
    origins: BTreeMap<String, (u16, Vec<u8>)>,
    /// URLs requested from `origins`, in order.
    fetched: Vec<String>,
    /// The digest and bytes the last `pass-through` opened.
    passed_through: Option<(String, Vec<u8>)>,
    udp_allowed: Vec<String>,
    udp_sent: Vec<(String, Vec<u8>, String)>,
    udp_arrived_on: Option<String>,
    /// Peers `reply` may reach (none: no ingress socket).
    udp_peers: Option<Vec<String>>,
    udp_replies: Vec<(String, Vec<u8>)>,
}

thread_local! {
    static HOST: RefCell<Option<Rc<RefCell<State>>>> = const { RefCell::new(None) };
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    HOST.with(|h| {
        let h = h.borrow();
        let state = h.as_ref().expect(
            "no test host: call depin_plugin_sdk::testing::TestHost::install() at the start of the test",
        );
        let mut s = state.borrow_mut();
        f(&mut s)
    })
}

/// The in-memory host of the current thread. Each test installs its own.
#[derive(Clone)]
pub struct TestHost(Rc<RefCell<State>>);

impl TestHost {
    /// Installs a fresh host for this thread with the plugin's `config`.
    pub fn install(config: &[(&str, &str)]) -> Self {
        let state = State {
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..State::default()
        };
        let rc = Rc::new(RefCell::new(state));
        HOST.with(|h| *h.borrow_mut() = Some(rc.clone()));
        TestHost(rc)
    }

    /// Refuse units not in `units`, as the gateway does with the units a
    /// plugin declares in `describe`.
    pub fn declare_units(&self, units: &[&str]) {
        self.0.borrow_mut().units = Some(units.iter().map(|u| u.to_string()).collect());
    }

    /// Every usage record so far.
    pub fn usage(&self) -> Vec<Usage> {
        self.0.borrow().usage.clone()
    }

    /// The sum of quantities recorded for `unit`.
    pub fn total(&self, unit: &str) -> u64 {
        self.0
            .borrow()
            .usage
            .iter()
            .filter(|u| u.unit == unit)
            .map(|u| u.quantity)
            .sum()
    }

    /// The stored value of `key`.
    pub fn kv(&self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().kv.get(key).cloned()
    }

    /// Allow `outbound_udp::send` to these targets, as `[plugin.outbound]
    /// udp` does in the gateway.
    pub fn allow_udp(&self, targets: &[&str]) {
        self.0.borrow_mut().udp_allowed = targets.iter().map(|t| t.to_string()).collect();
    }

    /// The datagrams queued through `outbound_udp::send` since the last
    /// call of this method: `(target, payload, session)`.
    pub fn take_udp_sent(&self) -> Vec<(String, Vec<u8>, String)> {
        std::mem::take(&mut self.0.borrow_mut().udp_sent)
    }

    /// Gives the plugin a UDP ingress socket whose recent peers are
    /// `peers`: `outbound_udp::reply` reaches them and refuses others.
    /// Without it `reply` answers `Unavailable`.
    pub fn set_recent_peers(&self, peers: &[&str]) {
        self.0.borrow_mut().udp_peers = Some(peers.iter().map(|p| p.to_string()).collect());
    }

    /// The datagrams queued through `outbound_udp::reply` since the last
    /// call of this method: `(peer, payload)`.
    pub fn take_udp_replies(&self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.0.borrow_mut().udp_replies)
    }

    /// What `outbound_udp::arrived_on` returns from now on.
    pub fn set_arrived_on(&self, session: Option<&str>) {
        self.0.borrow_mut().udp_arrived_on = session.map(str::to_string);
    }

    /// Every log message so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.0.borrow().logs.clone()
    }

    /// Gives the plugin a blob store of `quota` bytes, as `[plugin.blobs]`
    /// does.
    pub fn enable_blobs(&self, quota: u64) {
        self.0.borrow_mut().blob_quota = Some(quota);
    }

    /// The stored blob `digest`.
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        self.0.borrow().blobs.get(digest).cloned()
    }

    /// Answers outbound requests (`outbound-http` and `fetch-into`) for
    /// `url` with `status` and `body`. Every other URL is refused as not
    /// allow-listed.
    pub fn serve_url(&self, url: &str, status: u16, body: impl Into<Vec<u8>>) {
        self.0
            .borrow_mut()
            .origins
            .insert(url.to_string(), (status, body.into()));
    }

    /// The URLs fetched so far, in order.
    pub fn fetched(&self) -> Vec<String> {
        self.0.borrow().fetched.clone()
    }

    /// The digest and origin bytes the last `blobs::pass_through` opened.
    /// Unlike the gateway, which checks the bytes while it streams them to
    /// the client, the test host does not check them: compare them with
    /// the digest in the test.
    pub fn passed_through(&self) -> Option<(String, Vec<u8>)> {
        self.0.borrow().passed_through.clone()
    }
}

/// `sha256:<hex>` of `bytes`, as blob digests are written.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Native implementations with the same signatures as the generated imports.
#[doc(hidden)]
pub mod native {
    pub mod metering {
        use super::super::with;
        use crate::Usage;

        pub fn record_usage(u: &Usage) -> Result<(), String> {
            with(|s| {
                if let Some(units) = &s.units
                    && !units.contains(&u.unit)
                {
                    return Err(format!("unit `{}` was not declared in describe", u.unit));
                }
                if u.subject.as_ref().is_some_and(|x| x.len() > 256) {
                    return Err("subject longer than 256 bytes".into());
                }
                if u.evidence.as_ref().is_some_and(|x| x.len() > 64) {
                    return Err("evidence longer than 64 bytes".into());
                }
                s.usage.push(u.clone());
                Ok(())
            })
        }
    }

    pub mod kv {
        use super::super::with;
        use crate::KvError;
        use crate::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

        fn check(key: &str) -> Result<(), KvError> {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                Err(KvError::InvalidKey(MAX_KEY_BYTES as u32))
            } else {
                Ok(())
            }
        }

        pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
            check(key)?;
            Ok(with(|s| s.kv.get(key).cloned()))
        }

        pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
            check(key)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(KvError::ValueTooLarge(MAX_VALUE_BYTES as u32));
            }
            with(|s| s.kv.insert(key.to_string(), value.to_vec()));
            Ok(())
        }

        pub fn delete(key: &str) -> Result<(), KvError> {
            check(key)?;
            with(|s| s.kv.remove(key));
            Ok(())
        }

        pub fn add(key: &str, delta: i64) -> Result<i64, KvError> {
            check(key)?;
            with(|s| {
                let current = match s.kv.get(key) {
                    None => 0,
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|t| t.trim().parse::<i64>().ok())
                        .ok_or_else(|| {
                            KvError::Store(format!(
                                "`{key}` holds a value that is not a decimal integer; `add` needs a counter"
                            ))
                        })?,
                };
                let value = current.checked_add(delta).ok_or_else(|| {
                    KvError::Store(format!("adding {delta} to `{key}` overflows an s64"))
                })?;
                s.kv.insert(key.to_string(), value.to_string().into_bytes());
                Ok(value)
            })
        }

        pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
            Ok(with(|s| {
                s.kv.range(prefix.to_string()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(prefix))
                    .take(limit as usize)
                    .cloned()
                    .collect()
            }))
        }
    }

    pub mod log {
        use super::super::with;
        use crate::Level;

        pub fn log(level: Level, message: &str) {
            with(|s| s.logs.push((level, message.to_string())));
        }
    }

    pub mod blobs {
        use super::super::{sha256_digest, with};
        use crate::blobs::{BlobError, BlobStat, StoreUsage};

        fn check(digest: &str) -> Result<(), BlobError> {
            let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            });
            if ok {
                Ok(())
            } else {
                Err(BlobError::InvalidDigest(format!(
                    "`{digest}` must be `sha256:` followed by 64 lower-case hex digits"
                )))
            }
        }

        fn enabled() -> Result<(), BlobError> {
            with(|s| s.blob_quota.map(|_| ()).ok_or(BlobError::Unavailable))
        }

        pub fn stat(digest: &str) -> Result<BlobStat, BlobError> {
            enabled()?;
            check(digest)?;
            with(|s| s.blobs.get(digest).map(|b| b.len() as u64))
                .map(|size| BlobStat {
                    digest: digest.to_string(),
                    size,
                })
                .ok_or(BlobError::NotFound)
        }

        pub fn has(digest: &str) -> bool {
            stat(digest).is_ok()
        }

        pub fn delete(digest: &str) -> Result<bool, BlobError> {
            enabled()?;
            check(digest)?;
            Ok(with(|s| s.blobs.remove(digest).is_some()))
        }

        pub fn list_blobs(after: Option<&str>, limit: u32) -> Result<Vec<BlobStat>, BlobError> {
            enabled()?;
            Ok(with(|s| {
                s.blobs
                    .iter()
                    .filter(|(d, _)| after.is_none_or(|a| d.as_str() > a))
                    .take(limit as usize)
                    .map(|(d, b)| BlobStat {
                        digest: d.clone(),
                        size: b.len() as u64,
                    })
                    .collect()
            }))
        }

        pub fn usage() -> Result<StoreUsage, BlobError> {
            enabled()?;
            Ok(with(|s| StoreUsage {
                bytes: s.blobs.values().map(|b| b.len() as u64).sum(),
                count: s.blobs.len() as u64,
                quota: s.blob_quota.unwrap_or(0),
            }))
        }

        pub fn read_range(digest: &str, offset: u64, length: u32) -> Result<Vec<u8>, BlobError> {
            enabled()?;
            check(digest)?;
            with(|s| {
                let b = s.blobs.get(digest).ok_or(BlobError::NotFound)?;
                let start = (offset as usize).min(b.len());
                let end = (start + (length.min(1 << 20) as usize)).min(b.len());
                Ok(b[start..end].to_vec())
            })
        }

        pub fn put(digest: &str, bytes: &[u8]) -> Result<BlobStat, BlobError> {
            enabled()?;
            check(digest)?;
            let actual = sha256_digest(bytes);
            if actual != digest {
                return Err(BlobError::DigestMismatch(actual));
            }
            with(|s| {
                let quota = s.blob_quota.unwrap_or(0);
                let size = bytes.len() as u64;
                let used: u64 = s.blobs.values().map(|b| b.len() as u64).sum();
                if size > quota {
                    return Err(BlobError::TooLarge(quota));
                }
                if !s.blobs.contains_key(digest) && used + size > quota {
                    return Err(BlobError::QuotaExceeded(used + size - quota));
                }
                s.blobs.insert(digest.to_string(), bytes.to_vec());
                Ok(BlobStat {
                    digest: digest.to_string(),
                    size,
                })
            })
        }

        /// The body the test origin serves for `url` (noted as fetched),
        /// or the error `fetch-into` and `pass-through` report.
        fn origin_body(s: &mut super::super::State, url: &str) -> Result<Vec<u8>, BlobError> {
            let (status, body) = s
                .origins
                .get(url)
                .cloned()
                .ok_or_else(|| BlobError::Denied(format!("`{url}` is not allow-listed")))?;
            s.fetched.push(url.to_string());
            if !(200..300).contains(&status) {
                return Err(BlobError::OriginStatus(status));
            }
            Ok(body)
        }

        pub fn fetch_into(
            url: &str,
            digest: &str,
            _headers: &[(String, String)],
        ) -> Result<BlobStat, BlobError> {
            enabled()?;
            check(digest)?;
            if let Ok(stat) = stat(digest) {
                return Ok(stat);
            }
            with(|s| {
                let body = origin_body(s, url)?;
                let actual = sha256_digest(&body);
                if actual != digest {
                    return Err(BlobError::DigestMismatch(actual));
                }
                let quota = s.blob_quota.unwrap_or(0);
                let size = body.len() as u64;
                if size > quota {
                    return Err(BlobError::TooLarge(quota));
                }
                let used: u64 = s.blobs.values().map(|b| b.len() as u64).sum();
                if used + size > quota {
                    return Err(BlobError::QuotaExceeded(used + size - quota));
                }
                s.blobs.insert(digest.to_string(), body);
                Ok(BlobStat {
                    digest: digest.to_string(),
                    size,
                })
            })
        }

        pub fn pass_through(
            url: &str,
            digest: &str,
            _headers: &[(String, String)],
        ) -> Result<BlobStat, BlobError> {
            check(digest)?;
            with(|s| {
                let body = origin_body(s, url)?;
                let size = body.len() as u64;
                s.passed_through = Some((digest.to_string(), body));
                Ok(BlobStat {
                    digest: digest.to_string(),
                    size,
                })
            })
        }
    }

    pub mod outbound_http {
        use super::super::with;
        use crate::outbound_http::{HttpError, OutboundRequest, OutboundResponse};

        pub fn fetch(req: &OutboundRequest) -> Result<OutboundResponse, HttpError> {
            with(|s| {
                let (status, body) = s
                    .origins
                    .get(&req.url)
                    .cloned()
                    .ok_or_else(|| HttpError::Denied(req.url.clone()))?;
                s.fetched.push(req.url.clone());
                Ok(OutboundResponse {
                    status,
                    headers: Vec::new(),
                    body,
                })
            })
        }
    }

    pub mod outbound_udp {
        use super::super::with;
        use crate::outbound_udp::SendError;

        pub fn send(target: &str, payload: &[u8], session: &str) -> Result<(), SendError> {
            with(|s| {
                if !s.udp_allowed.iter().any(|t| t == target) {
                    return Err(SendError::NotAllowed(target.to_string()));
                }
                if session.is_empty() || session.len() > 64 {
                    return Err(SendError::Invalid(
                        "session name must be 1 to 64 bytes".into(),
                    ));
                }
                s.udp_sent
                    .push((target.to_string(), payload.to_vec(), session.to_string()));
                Ok(())
            })
        }

        pub fn arrived_on() -> Option<String> {
            with(|s| s.udp_arrived_on.clone())
        }

        pub fn reply(peer: &str, payload: &[u8]) -> Result<(), SendError> {
            with(|s| {
                let peers = s.udp_peers.as_ref().ok_or(SendError::Unavailable)?;
                if !peers.iter().any(|p| p == peer) {
                    return Err(SendError::NotAllowed(peer.to_string()));
                }
                s.udp_replies.push((peer.to_string(), payload.to_vec()));
                Ok(())
            })
        }
    }

    pub mod config {
        use super::super::with;

        pub fn get(key: &str) -> Option<String> {
            with(|s| s.config.get(key).cloned())
        }

        pub fn all() -> Vec<(String, String)> {
            with(|s| {
                s.config
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
        }
    }
}
