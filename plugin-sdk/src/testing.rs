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
    udp_allowed: Vec<String>,
    udp_sent: Vec<(String, Vec<u8>, String)>,
    udp_arrived_on: Option<String>,
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

    /// What `outbound_udp::arrived_on` returns from now on.
    pub fn set_arrived_on(&self, session: Option<&str>) {
        self.0.borrow_mut().udp_arrived_on = session.map(str::to_string);
    }

    /// Every log message so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.0.borrow().logs.clone()
    }
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
