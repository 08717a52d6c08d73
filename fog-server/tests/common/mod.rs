//! Message builders shared by the fog server's integration tests.
#![allow(dead_code)] // each test binary uses some of them

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
