//! The one shape of every background service of the gateway (ingress
//! servers, watchers, epoch closing, report delivery, challenge answering,
//! plugin ticks): a value that holds what it needs, started once with
//! [`Service::spawn`], running until the shutdown signal turns true.
//! [`Services`] is the one list they are collected in, and stops them.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a service may take to finish after the shutdown signal before
/// it is aborted, unless it asks for longer ([`Service::drain`]).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A long-running task of the gateway.
pub trait Service: Send + 'static {
    /// A short name for logs (`http`, `epoch-closer`, …).
    fn name(&self) -> &'static str;

    /// How long, after the shutdown signal, the service may keep running to
    /// finish in-flight work before it is aborted. [`STOP_GRACE`] unless the
    /// service drains requests for longer.
    fn drain(&self) -> Duration {
        STOP_GRACE
    }

    /// Starts the service on the current tokio runtime. It runs until
    /// `shutdown` turns true (or its sender is dropped), then finishes what
    /// it holds and returns.
    fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()>;
}

/// The running services of one gateway, in start order, and the signal
/// that stops them.
pub struct Services {
    shutdown: watch::Sender<bool>,
    running: Vec<Running>,
}

struct Running {
    name: &'static str,
    drain: Duration,
    task: JoinHandle<()>,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            shutdown: watch::channel(false).0,
            running: Vec::new(),
        }
    }
}

impl Services {
    /// Starts `service` and keeps it in the list.
    pub fn start(&mut self, service: impl Service) {
        let name = service.name();
        let drain = service.drain();
        let task = service.spawn(self.signal());
        self.running.push(Running { name, drain, task });
    }

    /// A receiver of the shutdown signal, for work started outside the list
    /// that must stop with it.
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Signals shutdown and waits for every service, in start order; one
    /// that has not finished within its drain time (counted from the
    /// signal) is aborted.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        let signalled = tokio::time::Instant::now();
        for mut service in self.running.drain(..) {
            let deadline = signalled + service.drain;
            if tokio::time::timeout_at(deadline, &mut service.task)
                .await
                .is_err()
            {
                tracing::warn!(
                    service = service.name,
                    drain_ms = service.drain.as_millis() as u64,
                    "service did not stop in time; aborted"
                );
                service.task.abort();
                let _ = service.task.await;
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for service in &self.running {
            service.task.abort();
        }
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Cooperative(Arc<AtomicBool>);

    impl Service for Cooperative {
        fn name(&self) -> &'static str {
            "cooperative"
        }
        fn spawn(self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
            tokio::spawn(async move {
                stopped(&mut shutdown).await;
                self.0.store(true, Ordering::SeqCst);
            })
        }
    }

    struct Stubborn;

    impl Service for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }
        fn drain(&self) -> Duration {
            Duration::from_millis(50)
        }
        fn spawn(self, _shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
            tokio::spawn(std::future::pending())
        }
    }

    #[tokio::test]
    async fn stop_lets_services_finish_and_aborts_those_past_their_drain_time() {
        let finished = Arc::new(AtomicBool::new(false));
        let mut services = Services::default();
        services.start(Cooperative(finished.clone()));
        services.start(Stubborn);
        tokio::time::timeout(Duration::from_secs(5), services.stop())
            .await
            .expect("stop returns once the stubborn service is aborted");
        assert!(finished.load(Ordering::SeqCst));
        assert!(services.running.is_empty());
    }
}
