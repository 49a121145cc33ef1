//! The per-call path: `Store::new` → instantiate (pooled) → call the
//! export → collect effects. One short function a reader can audit for
//! allocations; every export is called through it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::ledger::{CallEffects, KvEffects, LedgerError};
use crate::runtime::contract::{
    Challenge, Datagram, HttpRequest, HttpResponse, Proof, ResourcePlugin,
};
use crate::runtime::state::CallState;
use crate::runtime::{LoadedPlugin, PassThrough, QueuedDatagram, RecentPeers};

/// Why one call failed. Only that call is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin exceeded its CPU deadline of {0} ms")]
    Deadline(u64),
    #[error("the plugin exceeded its memory limit of {0} MiB")]
    Memory(u64),
    #[error("the plugin ran out of fuel (budget {0})")]
    Fuel(u64),
    #[error("too many plugin calls at once; try again")]
    Busy,
    #[error("the plugin exceeded its wall-clock deadline of {0} ms")]
    Timeout(u64),
    #[error("host failure: {0}")]
    Host(String),
    /// A concurrent call changed what this one read while it ran: it had
    /// no effect and is run again.
    #[error("the call conflicted with a concurrent call")]
    Conflict,
}

impl CallError {
    /// A short machine-readable kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Trap(_) => "trap",
            CallError::Deadline(_) => "deadline",
            CallError::Memory(_) => "memory",
            CallError::Fuel(_) => "fuel",
            CallError::Busy => "busy",
            CallError::Timeout(_) => "timeout",
            CallError::Host(_) => "host",
            CallError::Conflict => "conflict",
        }
    }
}

/// The result of one call and what the host measured about it.
#[derive(Debug)]
pub struct CallOutcome<R> {
    pub result: Result<R, CallError>,
    /// The call's buffered records and kv writes; empty when it failed.
    pub effects: CallEffects,
    /// Fuel the call consumed (host-attested).
    pub fuel: u64,
    /// Wall time from `Store::new` to the export's return.
    pub wall: Duration,
}

/// A call ran past its plugin's `limits.wall_ms`.
#[derive(Debug, thiserror::Error)]
#[error("wall-clock deadline exceeded")]
struct WallClockExceeded;

type ExportCall<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

impl LoadedPlugin {
    /// Calls `handle-http`. Also returns the origin response the call
    /// opened with `blobs.pass-through`, if any.
    pub async fn handle_http(
        &self,
        request_id: &Arc<str>,
        req: Arc<HttpRequest>,
    ) -> CallOutcome<(HttpResponse, Option<PassThrough>)> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move {
                let r = p.call_handle_http(&mut *s, &req).await?;
                Ok((r, s.data_mut().blobs.pass_through.take()))
            })
        })
        .await
    }

    /// Calls `handle-datagram`.
    pub async fn handle_datagram(
        &self,
        request_id: &Arc<str>,
        d: Datagram,
    ) -> CallOutcome<Vec<Datagram>> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_handle_datagram(s, &d).await })
        })
        .await
    }

    /// Calls `handle-datagram` for a datagram that arrived on the ingress
    /// socket (`arrived_on` none) or on an upstream session's socket.
    /// `ingress` is the plugin's ingress socket, if it has one. The call may
    /// queue datagrams through `outbound-udp`; they are returned with its
    /// answer, to be sent after its effects are committed: first the
    /// answers for ingress peers (`reply`, then the returned ones), then
    /// the upstream ones.
    pub async fn handle_datagram_on(
        &self,
        request_id: &Arc<str>,
        d: Datagram,
        arrived_on: Option<Arc<str>>,
        ingress: Option<Arc<dyn RecentPeers>>,
    ) -> CallOutcome<(Vec<Datagram>, Vec<QueuedDatagram>)> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move {
                let udp = &mut s.data_mut().outbound_udp;
                udp.enabled = true;
                udp.arrived_on = arrived_on;
                udp.ingress = ingress;
                let returned = p.call_handle_datagram(&mut *s, &d).await?;
                let udp = &mut s.data_mut().outbound_udp;
                let mut replies = std::mem::take(&mut udp.replies);
                replies.extend(returned);
                Ok((replies, std::mem::take(&mut udp.queued)))
            })
        })
        .await
    }

    /// Calls `handle-message`.
    pub async fn handle_message(
        &self,
        request_id: &Arc<str>,
        topic: String,
        payload: Vec<u8>,
    ) -> CallOutcome<Result<(), String>> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_handle_message(s, &topic, &payload).await })
        })
        .await
    }

    /// Calls `tick`.
    pub async fn tick(&self, request_id: &Arc<str>, now_ms: u64) -> CallOutcome<()> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(p.call_tick(s, now_ms))
        })
        .await
    }

    /// Calls `prove` without an ingress socket (`reply` answers
    /// `unavailable`). The caller commits the outcome's effects; the
    /// challenge responder uses [`LoadedPlugin::prove_with_replies`].
    pub async fn prove(
        &self,
        request_id: &Arc<str>,
        c: Challenge,
    ) -> CallOutcome<Result<Proof, String>> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_prove(s, &c).await })
        })
        .await
    }

    /// Calls `prove` with the plugin's ingress socket (if it has one), so
    /// the call may `reply` to the ingress's recent peers. Returns the
    /// proof and the datagrams the call queued, to be sent after its
    /// effects are committed.
    pub async fn prove_with_replies(
        &self,
        request_id: &Arc<str>,
        c: Challenge,
        ingress: Option<Arc<dyn RecentPeers>>,
    ) -> CallOutcome<(Result<Proof, String>, Vec<Datagram>)> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move {
                s.data_mut().outbound_udp.ingress = ingress;
                let proof = p.call_prove(&mut *s, &c).await?;
                Ok((
                    proof,
                    std::mem::take(&mut s.data_mut().outbound_udp.replies),
                ))
            })
        })
        .await
    }

    /// Calls `verify`.
    pub async fn verify(
        &self,
        request_id: &Arc<str>,
        c: Challenge,
        proof: Proof,
    ) -> CallOutcome<bool> {
        self.call(request_id.clone(), move |p, s| {
            Box::pin(async move { p.call_verify(s, &c, &proof).await })
        })
        .await
    }

    /// The per-call path. Keep it short: a reader should be able to audit
    /// every allocation here.
    pub(crate) async fn call<R>(
        &self,
        request_id: Arc<str>,
        f: impl for<'a> FnOnce(&'a ResourcePlugin, &'a mut Store<CallState>) -> ExportCall<'a, R>,
    ) -> CallOutcome<R> {
        let started = Instant::now();
        let state = CallState::new(
            self.shared.clone(),
            self.ledger.clone(),
            request_id,
            self.max_ticks,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let budget = self.shared.limits.fuel.unwrap_or(u64::MAX);
        let _ = store.set_fuel(budget);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let s = cx.data_mut();
            s.ticks += 1;
            if s.ticks >= s.max_ticks {
                s.deadline_hit = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let wall_limit = Duration::from_millis(self.shared.limits.wall_ms);
        let run = async {
            match self.pre.instantiate_async(&mut store).await {
                Ok(bindings) => f(&bindings, &mut store).await,
                Err(e) => Err(e),
            }
        };
        // Dropping the call's future at the deadline cancels it (it yields
        // at every epoch tick, so even a busy loop is reached).
        let result = tokio::time::timeout(wall_limit, run)
            .await
            .unwrap_or_else(|_| Err(wasmtime::Error::new(WallClockExceeded)));
        let fuel = budget.saturating_sub(store.get_fuel().unwrap_or(0));
        let wall = started.elapsed();
        let mut state = store.into_data();
        let mut records = std::mem::take(&mut state.jobs.host_records);
        let unrepeatable = state.unrepeatable.take();
        match result {
            Ok(value) => CallOutcome {
                result: Ok(value),
                effects: CallEffects {
                    records: {
                        records.append(&mut state.metering.usage);
                        records
                    },
                    kv: std::mem::take(&mut state.kv).into_effects(),
                    unrepeatable,
                },
                fuel,
                wall,
            },
            Err(e) if e.downcast_ref::<LedgerError>().is_some() => {
                // Stopped by a conflict: nothing of it is kept, and
                // committing it makes the caller run it again.
                CallOutcome {
                    result: Err(CallError::Conflict),
                    effects: CallEffects {
                        records,
                        kv: KvEffects {
                            conflicted: true,
                            ..KvEffects::default()
                        },
                        unrepeatable,
                    },
                    fuel,
                    wall,
                }
            }
            Err(e) => {
                let error = self.classify(&state, &e);
                tracing::warn!(
                    plugin = %self.shared.name,
                    request_id = %state.request_id,
                    kind = error.kind(),
                    error = %format!("{e:?}"),
                    stderr = state.stderr_text().unwrap_or_default(),
                    "plugin call failed"
                );
                CallOutcome {
                    result: Err(error),
                    effects: CallEffects {
                        records,
                        ..CallEffects::default()
                    },
                    fuel,
                    wall,
                }
            }
        }
    }

    fn classify(&self, state: &CallState, e: &wasmtime::Error) -> CallError {
        if e.downcast_ref::<WallClockExceeded>().is_some() {
            return CallError::Timeout(self.shared.limits.wall_ms);
        }
        if state.deadline_hit {
            return CallError::Deadline(self.shared.limits.cpu_ms);
        }
        if state.limiter.memory_cap_hit {
            return CallError::Memory(self.shared.limits.memory_mb);
        }
        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return CallError::Busy;
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => CallError::Fuel(self.shared.limits.fuel.unwrap_or(u64::MAX)),
            Some(trap) => {
                let detail = state
                    .stderr_text()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                CallError::Trap(format!("{trap}{detail}"))
            }
            None => CallError::Host(format!("{e:#}")),
        }
    }
}
