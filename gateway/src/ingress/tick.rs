//! Timer ingress: a plugin's `tick` export, called on a fixed interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::call::{self, HostMeasurements};
use crate::ledger::Ledger;
use crate::runtime::LoadedPlugin;
use crate::service::{Service, stopped};

/// Calls one plugin's `tick` export every `every`, committing what it
/// records and writes with the host's measurements (subject `tick`). A
/// tick that is late does not make the next one early.
///
/// Stops between ticks, never during one: on shutdown or when `retired`
/// turns true (a reload replaced its plugin generation), the tick in
/// flight runs to its end and is committed first, so work it did (a job
/// run) is recorded once and not done again by the next generation.
pub struct Ticker {
    pub plugin: Arc<LoadedPlugin>,
    pub ledger: Arc<Ledger>,
    pub every: Duration,
    pub retired: watch::Receiver<bool>,
}

impl Ticker {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let id: Arc<str> = "tick".into();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped(&mut shutdown) => return,
                _ = stopped(&mut self.retired) => return,
            }
            let name = self.plugin.name();
            // Run again from the start on a conflict (see `call::serialized`).
            let committed = call::serialized(&self.plugin, || async {
                let outcome = self.plugin.tick(&id, depin_protocol::time::now_ms()).await;
                let measured = HostMeasurements::of_call(outcome.wall, outcome.fuel);
                call::Committed {
                    value: (),
                    result: call::commit(&self.ledger, name, &id, measured, outcome.effects).await,
                }
            })
            .await;
            if let Err(e) = committed.result {
                tracing::error!(plugin = %name, error = %e, "cannot commit a tick's usage");
            }
        }
    }
}

impl Service for Ticker {
    fn name(&self) -> &'static str {
        "plugin-ticker"
    }

    fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }
}
