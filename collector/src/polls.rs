//! Long polls waiting for challenges (`GET /v1/challenges?wait_ms=N`),
//! by gateway, and what wakes them: this replica's issuer, and on
//! PostgreSQL every replica's issues through LISTEN/NOTIFY. While
//! notifications are not coming (redb has none to come; a lost listening
//! connection), a shared store's polls look at the database themselves.
//!
//! Bound: one entry per gateway with a poll waiting here, and each poll
//! holds a connection, so at most `server.max_connections` entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::sync::Notify;

use crate::store::ChallengeEvent;
use crate::{json, text};

/// On a shared store with notifications arriving, how often a waiting
/// poll still looks at the database (a notification lost with its
/// connection, before the loss is noticed).
pub const NOTIFIED_RECHECK: Duration = Duration::from_secs(5);

/// On a shared store without notifications (the listening connection is
/// down), how often a waiting poll looks at the database.
pub const UNNOTIFIED_RECHECK: Duration = Duration::from_millis(500);

/// The polls waiting on this replica.
#[derive(Default)]
pub struct Waiting {
    by_gateway: Mutex<HashMap<String, Arc<Notify>>>,
    /// Whether other replicas' issues reach this one (LISTEN is up).
    notified: AtomicBool,
}

/// One poll's place in [`Waiting`]; leaves it when dropped.
pub struct Waiter<'a> {
    waiting: &'a Waiting,
    gateway: String,
    notify: Arc<Notify>,
}

impl Waiter<'_> {
    /// Completes at the next wake-up of this gateway's polls after this
    /// call (wake-ups between this call and the first poll count).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut map = self.waiting.by_gateway.lock().unwrap();
        // The map's and this one's: no other poll of the gateway waits.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.gateway);
        }
    }
}

impl Waiting {
    /// Registers a poll of `gateway`.
    pub fn enter(&self, gateway: &str) -> Waiter<'_> {
        let notify = self
            .by_gateway
            .lock()
            .unwrap()
            .entry(gateway.to_string())
            .or_default()
            .clone();
        Waiter {
            waiting: self,
            gateway: gateway.to_string(),
            notify,
        }
    }

    /// Wakes the polls of `gateway` waiting here.
    pub fn wake(&self, gateway: &str) {
        if let Some(n) = self.by_gateway.lock().unwrap().get(gateway) {
            n.notify_waiters();
        }
    }

    /// Wakes every poll waiting here.
    pub fn wake_all(&self) {
        for n in self.by_gateway.lock().unwrap().values() {
            n.notify_waiters();
        }
    }

    /// How many gateways have a poll waiting here.
    pub fn gateways(&self) -> usize {
        self.by_gateway.lock().unwrap().len()
    }

    /// Whether challenges issued anywhere wake the polls here by
    /// notification (so the issuer need not wake them itself).
    pub fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Relaxed)
    }

    /// Applies what the store's listening connection reports.
    pub fn on_event(&self, event: ChallengeEvent) {
        match event {
            ChallengeEvent::Issued(gateway) => self.wake(&gateway),
            ChallengeEvent::Listening => {
                self.notified.store(true, Ordering::Relaxed);
                // Whatever was issued while not listening.
                self.wake_all();
            }
            ChallengeEvent::Lost => self.notified.store(false, Ordering::Relaxed),
        }
    }

    /// How long a waiting poll may sleep before it looks at the store
    /// itself: never on an unshared store (its issuer wakes it), rarely
    /// on a shared one while notifications arrive, often while not.
    pub fn recheck(&self, shared: bool) -> Option<Duration> {
        match (shared, self.is_notified()) {
            (false, _) => None,
            (true, true) => Some(NOTIFIED_RECHECK),
            (true, false) => Some(UNNOTIFIED_RECHECK),
        }
    }
}

impl crate::Collector {
    /// `GET /v1/challenges?wait_ms=N`: hands out `gateway`'s pending
    /// challenges, waiting up to `wait` for some to be issued (woken as
    /// described above); an empty list when none came.
    pub(crate) async fn long_poll(&self, gateway: &str, wait: Duration) -> Response<Full<Bytes>> {
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.waiting.enter(gateway);
        loop {
            let notified = waiter.notified();
            match self.store.take_pending(gateway).await {
                Ok(list) if !list.is_empty() || tokio::time::Instant::now() >= deadline => {
                    let specs: Vec<_> = list.into_iter().map(|c| c.spec).collect();
                    return json(StatusCode::OK, serde_json::json!(specs));
                }
                Ok(_) => {}
                Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
            let wake = match self.waiting.recheck(self.store.is_shared()) {
                Some(every) => deadline.min(tokio::time::Instant::now() + every),
                None => deadline,
            };
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_only_its_gateways_polls_and_entries_leave_with_them() {
        let waiting = Waiting::default();
        let a1 = waiting.enter("a");
        let a2 = waiting.enter("a");
        let b = waiting.enter("b");
        assert_eq!(waiting.gateways(), 2);
        let (wa1, wa2, wb) = (a1.notified(), a2.notified(), b.notified());
        waiting.wake("a");
        // Created before the wake: they complete; b's does not.
        tokio::time::timeout(Duration::from_secs(1), async { tokio::join!(wa1, wa2) })
            .await
            .expect("a's polls woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wb)
                .await
                .is_err()
        );
        drop(a1);
        assert_eq!(waiting.gateways(), 2, "a still has a poll");
        drop(a2);
        drop(b);
        assert_eq!(waiting.gateways(), 0);
    }

    #[tokio::test]
    async fn polls_recheck_often_only_while_notifications_do_not_arrive() {
        let waiting = Waiting::default();
        assert_eq!(waiting.recheck(false), None);
        assert_eq!(waiting.recheck(true), Some(UNNOTIFIED_RECHECK));
        let w = waiting.enter("a");
        let woken = w.notified();
        waiting.on_event(ChallengeEvent::Listening);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("listening again wakes every poll once");
        assert_eq!(waiting.recheck(true), Some(NOTIFIED_RECHECK));
        let woken = w.notified();
        waiting.on_event(ChallengeEvent::Issued("a".into()));
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("an issue wakes the gateway's poll");
        waiting.on_event(ChallengeEvent::Lost);
        assert_eq!(waiting.recheck(true), Some(UNNOTIFIED_RECHECK));
        assert!(!waiting.is_notified());
    }
}
