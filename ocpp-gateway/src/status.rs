//! OCPP connector statuses → a fogcharge station status (no I/O).
//!
//! - `chargers` = the charger's connectors (from the chargers file);
//! - `occupied` = connectors in Preparing, Charging, SuspendedEV, SuspendedEVSE or
//!   Finishing;
//! - `state`: connector 0 (the whole charge point) or every connector Faulted →
//!   `faulted`; Unavailable → `offline`; else `full` when every connector is occupied,
//!   `available` otherwise. A connector not heard from yet counts as Available.

use protocol::{StationState, StationStatus};
use rust_ocpp::v1_6::types::ChargePointStatus;

use crate::chargers::Charger;

/// Whether a vehicle is on the connector.
pub fn is_occupied(s: &ChargePointStatus) -> bool {
    matches!(
        s,
        ChargePointStatus::Preparing
            | ChargePointStatus::Charging
            | ChargePointStatus::SuspendedEV
            | ChargePointStatus::SuspendedEVSE
            | ChargePointStatus::Finishing
    )
}

/// What the charge point said about its connectors (index 0: the charge point itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Connectors {
    statuses: Vec<Option<ChargePointStatus>>,
}

impl Connectors {
    /// `n` connectors, none heard from.
    pub fn new(n: u32) -> Self {
        Self {
            statuses: vec![None; n as usize + 1],
        }
    }

    /// Records a StatusNotification; `false` for a connector id the charger does not
    /// have.
    pub fn set(&mut self, connector_id: u32, status: ChargePointStatus) -> bool {
        match self.statuses.get_mut(connector_id as usize) {
            Some(slot) => {
                *slot = Some(status);
                true
            }
            None => false,
        }
    }

    /// Connectors 1..=n with their status (None: not heard from).
    pub fn connectors(&self) -> impl Iterator<Item = (u32, Option<&ChargePointStatus>)> {
        self.statuses
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, s)| (i as u32, s.as_ref()))
    }

    /// Grows or shrinks to `n` connectors (the chargers file changed).
    pub fn resize(&mut self, n: u32) {
        self.statuses.resize(n as usize + 1, None);
    }

    pub fn occupied(&self) -> u32 {
        self.connectors()
            .filter(|(_, s)| s.is_some_and(is_occupied))
            .count() as u32
    }

    pub fn state(&self) -> StationState {
        let whole = self.statuses[0].as_ref();
        let all = |want: ChargePointStatus| self.connectors().all(|(_, s)| s == Some(&want));
        if whole == Some(&ChargePointStatus::Faulted) || all(ChargePointStatus::Faulted) {
            StationState::Faulted
        } else if whole == Some(&ChargePointStatus::Unavailable)
            || all(ChargePointStatus::Unavailable)
        {
            StationState::Offline
        } else if self.occupied() as usize >= self.statuses.len() - 1 {
            StationState::Full
        } else {
            StationState::Available
        }
    }
}

/// The station status of a connected charger.
pub fn station_status(charger: &Charger, connectors: &Connectors, ts_ms: u64) -> StationStatus {
    StationStatus {
        v: protocol::PROTOCOL_VERSION,
        station_id: charger.id.clone(),
        lat: Some(charger.lat),
        lon: Some(charger.lon),
        chargers: Some(charger.connectors),
        power_kw: Some(charger.power_kw),
        occupied: connectors.occupied().min(charger.connectors),
        queue: 0,
        state: connectors.state(),
        ts_ms: Some(ts_ms),
        takes_reservations: true,
        gateway: None,
    }
}

/// What a charger that is gone (socket closed, heartbeat missed) looks like: the last
/// will form, which the fog never recommends.
pub fn offline(station_id: &str, ts_ms: u64) -> StationStatus {
    StationStatus {
        ts_ms: Some(ts_ms),
        ..StationStatus::offline(station_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChargePointStatus::*;

    fn with(statuses: &[(u32, ChargePointStatus)], n: u32) -> Connectors {
        let mut c = Connectors::new(n);
        for (id, s) in statuses {
            assert!(c.set(*id, s.clone()));
        }
        c
    }

    #[test]
    fn the_mapping_of_the_issue() {
        let cases = [
            (vec![], StationState::Available, 0),
            (vec![(1, Charging)], StationState::Available, 1),
            (
                vec![(1, Preparing), (2, SuspendedEV)],
                StationState::Full,
                2,
            ),
            (
                vec![(1, SuspendedEVSE), (2, Finishing)],
                StationState::Full,
                2,
            ),
            (
                vec![(1, Reserved), (2, Available)],
                StationState::Available,
                0,
            ),
            (vec![(1, Faulted), (2, Faulted)], StationState::Faulted, 0),
            (
                vec![(1, Faulted), (2, Available)],
                StationState::Available,
                0,
            ),
            (vec![(0, Faulted), (1, Available)], StationState::Faulted, 0),
            (
                vec![(1, Unavailable), (2, Unavailable)],
                StationState::Offline,
                0,
            ),
            (vec![(0, Unavailable)], StationState::Offline, 0),
            (
                vec![(0, Available), (1, Charging), (2, Unavailable)],
                StationState::Available,
                1,
            ),
        ];
        for (statuses, state, occupied) in cases {
            let c = with(&statuses, 2);
            assert_eq!((c.state(), c.occupied()), (state, occupied), "{statuses:?}");
        }
        let mut c = Connectors::new(2);
        assert!(!c.set(3, Charging), "no connector 3");
        c.resize(3);
        assert!(c.set(3, Charging));
    }

    #[test]
    fn a_station_status_the_fog_accepts() {
        let charger = Charger {
            id: "CP-1".into(),
            lat: 1.0,
            lon: 2.0,
            connectors: 2,
            power_kw: 22.0,
            password: None,
        };
        let s = station_status(&charger, &with(&[(1, Charging)], 2), 5);
        assert_eq!(
            (s.chargers, s.occupied, s.state),
            (Some(2), 1, StationState::Available)
        );
        assert!(s.takes_reservations);
        let bytes = protocol::encode(&s);
        assert_eq!(protocol::decode::<StationStatus>(&bytes).unwrap(), s);
        let off = protocol::encode(&offline("CP-1", 5));
        assert!(protocol::decode::<StationStatus>(&off).is_ok());
    }
}
