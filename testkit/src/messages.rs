//! Device message builders shared by the integration tests.

use protocol::fog::{CentralHeartbeat, Offer};
use protocol::{ChargeRequest, StationState, StationStatus};

/// An available station with nobody charging or waiting.
pub fn station(id: &str, lat: f64, lon: f64, chargers: u32, power_kw: f64) -> StationStatus {
    StationStatus {
        v: 1,
        station_id: id.into(),
        lat: Some(lat),
        lon: Some(lon),
        chargers: Some(chargers),
        power_kw: Some(power_kw),
        occupied: 0,
        queue: 0,
        state: StationState::Available,
        ts_ms: None,
        takes_reservations: false,
        gateway: None,
    }
}

/// A 50 kW station on the equator at `lon` with `occupied` chargers busy and `queue`
/// vehicles waiting (the test cities lie along the equator).
pub fn busy_station(id: &str, lon: f64, chargers: u32, occupied: u32, queue: u32) -> StationStatus {
    StationStatus {
        occupied,
        queue,
        ..station(id, 0.0, lon, chargers, 50.0)
    }
}

/// A request from a 60 kWh vehicle using 0.18 kWh/km, charging to 80%.
pub fn request(id: &str, lat: f64, lon: f64, soc: f64) -> ChargeRequest {
    ChargeRequest {
        v: 1,
        request_id: id.into(),
        lat,
        lon,
        soc,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
        ts_ms: None,
    }
}

/// Central's heartbeat (started a minute before `ts_ms`, one a second) naming `open`
/// as the regions that can take vehicles, with `offers`.
pub fn heartbeat(ts_ms: u64, open: &[&str], offers: Vec<Offer>) -> CentralHeartbeat {
    CentralHeartbeat {
        v: 1,
        started_ms: ts_ms - 60_000,
        seq: 1,
        ts_ms,
        period_ms: 1000,
        open_regions: open.iter().map(|s| s.to_string()).collect(),
        nearest_open_km: None,
        offers,
    }
}
