//! Device-facing messages of protocol v1 (see `docs/protocol.md` and
//! `docs/asyncapi.yaml`). Optional fields are skipped when absent, so what we send is
//! exactly what the contract shows.

use serde::{Deserialize, Serialize};

/// What a station says about itself: `ev/{region}/stations/{station_id}/status`
/// (QoS 1, retained). Its last will is the `offline` form, which carries no position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationStatus {
    pub v: u32,
    pub station_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chargers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_kw: Option<f64>,
    #[serde(default)]
    pub occupied: u32,
    #[serde(default)]
    pub queue: u32,
    pub state: StationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ms: Option<u64>,
}

/// A station's operating state. Only `available` and `full` stations are recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StationState {
    Available,
    Full,
    Faulted,
    Offline,
}

impl StationState {
    /// Whether a vehicle may be sent to a station in this state.
    pub fn is_in_service(self) -> bool {
        matches!(self, Self::Available | Self::Full)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Full => "full",
            Self::Faulted => "faulted",
            Self::Offline => "offline",
        }
    }
}

/// A vehicle asks where to charge: `ev/{region}/vehicles/{vehicle_id}/request` (QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub v: u32,
    pub request_id: String,
    pub lat: f64,
    pub lon: f64,
    /// State of charge now, in [0, 1].
    pub soc: f64,
    pub battery_kwh: f64,
    pub kwh_per_km: f64,
    /// State of charge to charge up to, in [0, 1].
    pub target_soc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ms: Option<u64>,
}

impl ChargeRequest {
    /// Kilometres the vehicle can still drive on its charge, with no safety margin.
    pub fn range_km(&self) -> f64 {
        self.soc * self.battery_kwh / self.kwh_per_km
    }
}

/// The fog's answer: `ev/{region}/vehicles/{vehicle_id}/recommendation` (QoS 1).
/// Exactly one per request, carrying its `request_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub v: u32,
    /// The request's id; empty only for a `rejected` answer to a payload that had none.
    pub request_id: String,
    pub status: RecommendationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<StationRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Why the vehicle got no station (`unavailable`, `rejected`), or a note on how
    /// the answer was reached (e.g. central unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Age of the station data the answer was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_age_ms: Option<u64>,
}

impl Recommendation {
    /// An answer with no station: `unavailable` or `rejected`, with the reason.
    pub fn refusal(
        request_id: impl Into<String>,
        status: RecommendationStatus,
        reason: impl Into<String>,
        served_by: impl Into<String>,
    ) -> Self {
        Self {
            v: crate::PROTOCOL_VERSION,
            request_id: request_id.into(),
            status,
            station: None,
            distance_km: None,
            eta_s: None,
            wait_s: None,
            charge_s: None,
            reservation_id: None,
            expires_ms: None,
            reason: Some(reason.into()),
            served_by: Some(served_by.into()),
            data_age_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecommendationStatus {
    /// A station in this region, reserved.
    Assigned,
    /// A station in another region, reserved there.
    Rerouted,
    /// Nothing reachable can take the vehicle; `reason` says why.
    Unavailable,
    /// The request was invalid; `reason` says what.
    Rejected,
}

impl RecommendationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Rerouted => "rerouted",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
        }
    }
}

/// Where to go: the recommended station and the region that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationRef {
    pub station_id: String,
    pub region: String,
    pub lat: f64,
    pub lon: f64,
}

/// A vehicle ends its reservation: `ev/{region}/vehicles/{vehicle_id}/reservation`
/// (QoS 1), sent to the region that holds the reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationUpdate {
    pub v: u32,
    pub reservation_id: String,
    pub action: ReservationAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationAction {
    Arrived,
    Cancel,
}

/// Where a vehicle is: `ev/{region}/vehicles/{vehicle_id}/telemetry` (QoS 0, optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub v: u32,
    pub lat: f64,
    pub lon: f64,
    pub soc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_kmh: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ms: Option<u64>,
}
