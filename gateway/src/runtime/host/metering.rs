//! `depin:plugin/metering`: plugin-claimed usage, buffered until the call
//! succeeds.

use wasmtime::component::HasData;

use super::{Blame, to_wit};
use crate::ledger::{MAX_EVIDENCE_BYTES, MAX_SUBJECT_BYTES, NewRecord, Source};
use crate::runtime::PluginShared;
use crate::runtime::contract::Usage;
use crate::runtime::contract::depin::plugin::metering::Host;
use crate::runtime::state::CallState;

/// Most plugin-claimed records one call may produce.
pub const MAX_RECORDS_PER_CALL: usize = 1024;

/// The metering part of a call's state: the plugin-claimed records,
/// buffered until the call succeeds (at most [`MAX_RECORDS_PER_CALL`]).
#[derive(Debug, Default)]
pub(crate) struct MeteringState {
    pub(crate) usage: Vec<NewRecord>,
}

/// What `metering` functions reach during one call: its buffered records
/// and the units the plugin declared.
pub(crate) struct MeteringView<'a> {
    state: &'a mut MeteringState,
    plugin: &'a PluginShared,
}

/// The view of `call`'s state that the capability's functions get.
pub(crate) fn view(call: &mut CallState) -> MeteringView<'_> {
    MeteringView {
        state: &mut call.metering,
        plugin: &call.plugin,
    }
}

impl MeteringView<'_> {
    fn record(&mut self, u: Usage) -> Result<(), Blame<String>> {
        if !self.plugin.units.contains(&u.unit) {
            return Err(format!(
                "unit `{}` was not declared in describe (declared: {})",
                u.unit,
                self.plugin.declared_units()
            )
            .into());
        }
        if let Some(s) = &u.subject
            && s.len() > MAX_SUBJECT_BYTES
        {
            return Err(format!(
                "subject is {} bytes, the limit is {MAX_SUBJECT_BYTES}",
                s.len()
            )
            .into());
        }
        if let Some(e) = &u.evidence
            && e.len() > MAX_EVIDENCE_BYTES
        {
            return Err(format!(
                "evidence is {} bytes, the limit is {MAX_EVIDENCE_BYTES}",
                e.len()
            )
            .into());
        }
        if self.state.usage.len() >= MAX_RECORDS_PER_CALL {
            return Err(
                format!("this call already recorded {MAX_RECORDS_PER_CALL} records").into(),
            );
        }
        self.state.usage.push(NewRecord {
            time_ms: 0,
            unit: u.unit,
            quantity: u.quantity,
            source: Source::Plugin,
            subject: u.subject,
            evidence: u.evidence,
        });
        Ok(())
    }
}

/// The `metering` capability, for the linker.
pub(crate) struct Metering;

impl HasData for Metering {
    type Data<'a> = MeteringView<'a>;
}

impl Host for MeteringView<'_> {
    fn record_usage(&mut self, u: Usage) -> wasmtime::Result<Result<(), String>> {
        to_wit(self.record(u))
    }
}
