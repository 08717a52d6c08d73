//! OCPP gateways' presence (`ev/{region}/gateways/{id}/status`, retained, the
//! gateway's last will when it dies): while a gateway is offline, every station whose
//! status names it counts as offline, whatever its last retained status says, so a
//! dead gateway's chargers are never recommended and their reservations are released.
//! The gateway publishes its chargers' statuses again when it is back.

use std::collections::{HashMap, HashSet};

use protocol::{GatewayStatus, StationState, StationStatus};
use tracing::{info, warn};

use super::Region;

/// Which stations speak through which gateway, and which gateways are down.
#[derive(Debug, Default)]
pub struct Gateways {
    /// The gateway of each station whose status names one.
    of_station: HashMap<String, String>,
    /// Gateways whose latest presence says offline.
    down: HashSet<String>,
}

impl Region {
    /// A station's status as the region takes it: offline while its gateway is.
    pub(super) fn through_gateway(&mut self, mut status: StationStatus) -> StationStatus {
        let gateways = &mut self.gateways;
        match &status.gateway {
            Some(gateway) => {
                gateways
                    .of_station
                    .insert(status.station_id.clone(), gateway.clone());
                if gateways.down.contains(gateway) && status.state.is_in_service() {
                    status.state = StationState::Offline;
                }
            }
            None => {
                gateways.of_station.remove(&status.station_id);
            }
        }
        status
    }

    /// A station is gone: it no longer belongs to a gateway.
    pub(super) fn forget_gateway_of(&mut self, station_id: &str) {
        self.gateways.of_station.remove(station_id);
    }

    /// A gateway's presence; `None`: its retained presence was cleared (nothing is
    /// known: its stations count by their own statuses).
    pub(super) fn on_gateway_status(
        &mut self,
        gateway_id: &str,
        status: Option<GatewayStatus>,
        now_ms: u64,
        fx: &mut super::Effects,
    ) {
        let online = status.is_none_or(|s| s.online);
        if online {
            if self.gateways.down.remove(gateway_id) {
                info!(gateway = gateway_id, "OCPP gateway is back");
            }
            return;
        }
        if !self.gateways.down.insert(gateway_id.to_owned()) {
            return;
        }
        let mut stations: Vec<String> = self
            .gateways
            .of_station
            .iter()
            .filter(|(_, g)| *g == gateway_id)
            .map(|(s, _)| s.clone())
            .collect();
        stations.sort();
        warn!(
            gateway = gateway_id,
            stations = stations.len(),
            "OCPP gateway is gone: its stations are offline"
        );
        for station_id in stations {
            let offline = StationStatus {
                gateway: Some(gateway_id.to_owned()),
                ..StationStatus::offline(station_id.clone())
            };
            self.on_status(&station_id, Some(offline), now_ms, fx);
        }
    }
}
