//! What the host measures about a call, defined once for every way a
//! plugin is invoked, and the host-attested records it becomes.

use std::time::Duration;

use depin_protocol::units;

use crate::ledger::{EncodedRecords, LedgerError};

/// What the host measured about one call. Each measurement that is present
/// becomes one host-attested record; an absent one is not recorded (a tick
/// receives no bytes; an answer reused without a plugin call used no fuel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMeasurements {
    /// Bytes received for the call (request, datagram, message).
    pub bytes_in: Option<u64>,
    /// Bytes sent because of the call (response, datagrams).
    pub bytes_out: Option<u64>,
    /// Wall time of the plugin call.
    pub wall: Option<Duration>,
    /// Fuel the plugin call consumed.
    pub fuel: Option<u64>,
}

impl HostMeasurements {
    /// The wall time and fuel of a plugin call.
    pub fn of_call(wall: Duration, fuel: u64) -> Self {
        Self {
            wall: Some(wall),
            fuel: Some(fuel),
            ..Self::default()
        }
    }

    /// These measurements with `bytes` received.
    pub fn bytes_in(self, bytes: u64) -> Self {
        Self {
            bytes_in: Some(bytes),
            ..self
        }
    }

    /// These measurements with `bytes` sent.
    pub fn bytes_out(self, bytes: u64) -> Self {
        Self {
            bytes_out: Some(bytes),
            ..self
        }
    }

    /// Appends one host-attested record per present measurement, in a fixed
    /// order (bytes in, bytes out, wall time, fuel), with `request_id` as
    /// each record's subject. This is the only place a call's measurements
    /// become records.
    pub fn encode_into(
        &self,
        records: &mut EncodedRecords,
        plugin: &str,
        request_id: &str,
    ) -> Result<(), LedgerError> {
        let measured = [
            (units::BYTES_IN, self.bytes_in),
            (units::BYTES_OUT, self.bytes_out),
            (units::WALL_TIME_US, self.wall.map(|w| w.as_micros() as u64)),
            (units::FUEL, self.fuel),
        ];
        for (unit, quantity) in measured {
            if let Some(quantity) = quantity {
                records.push_host(plugin, unit, quantity, request_id)?;
            }
        }
        Ok(())
    }

    /// How many records [`Self::encode_into`] appends.
    pub fn count(&self) -> usize {
        [
            self.bytes_in.is_some(),
            self.bytes_out.is_some(),
            self.wall.is_some(),
            self.fuel.is_some(),
        ]
        .into_iter()
        .filter(|present| *present)
        .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Source;

    #[test]
    fn present_measurements_become_host_records_in_a_fixed_order() {
        let m = HostMeasurements::of_call(Duration::from_micros(7), 42)
            .bytes_out(5)
            .bytes_in(3);
        let mut records = EncodedRecords::default();
        m.encode_into(&mut records, "p", "req-1").unwrap();
        let decoded = records.decode();
        let units: Vec<(&str, u64)> = decoded
            .iter()
            .map(|r| (r.unit.as_str(), r.quantity))
            .collect();
        assert_eq!(
            units,
            [
                (units::BYTES_IN, 3),
                (units::BYTES_OUT, 5),
                (units::WALL_TIME_US, 7),
                (units::FUEL, 42)
            ]
        );
        assert_eq!(m.count(), 4);
        for r in &decoded {
            assert_eq!(r.source, Source::Host);
            assert_eq!(r.subject.as_deref(), Some("req-1"));
            assert_eq!(r.plugin, "p");
        }
    }

    #[test]
    fn absent_measurements_are_not_recorded() {
        let m = HostMeasurements::default().bytes_out(9);
        let mut records = EncodedRecords::default();
        m.encode_into(&mut records, "p", "challenge-1").unwrap();
        let decoded = records.decode();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].unit, units::BYTES_OUT);
        assert_eq!(m.count(), 1);
    }
}
