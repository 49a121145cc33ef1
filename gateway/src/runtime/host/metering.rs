//! `depin:plugin/metering`: plugin-claimed usage, buffered until the call
//! succeeds.

use wasmtime::Result;

use crate::ledger::{MAX_EVIDENCE_BYTES, MAX_SUBJECT_BYTES, NewRecord, Source};
use crate::runtime::contract::Usage;
use crate::runtime::contract::depin::plugin::metering::Host;
use crate::runtime::state::CallState;

/// Most plugin-claimed records one call may produce.
pub const MAX_RECORDS_PER_CALL: usize = 1024;

impl Host for CallState {
    fn record_usage(&mut self, u: Usage) -> Result<Result<(), String>> {
        if !self.plugin.units.contains(&u.unit) {
            return Ok(Err(format!(
                "unit `{}` was not declared in describe (declared: {})",
                u.unit,
                self.plugin.declared_units()
            )));
        }
        if let Some(s) = &u.subject
            && s.len() > MAX_SUBJECT_BYTES
        {
            return Ok(Err(format!(
                "subject is {} bytes, the limit is {MAX_SUBJECT_BYTES}",
                s.len()
            )));
        }
        if let Some(e) = &u.evidence
            && e.len() > MAX_EVIDENCE_BYTES
        {
            return Ok(Err(format!(
                "evidence is {} bytes, the limit is {MAX_EVIDENCE_BYTES}",
                e.len()
            )));
        }
        if self.usage.len() >= MAX_RECORDS_PER_CALL {
            return Ok(Err(format!(
                "this call already recorded {MAX_RECORDS_PER_CALL} records"
            )));
        }
        self.usage.push(NewRecord {
            time_ms: 0,
            unit: u.unit,
            quantity: u.quantity,
            source: Source::Plugin,
            subject: u.subject,
            evidence: u.evidence,
        });
        Ok(Ok(()))
    }
}
