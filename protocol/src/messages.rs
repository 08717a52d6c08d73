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
    /// The station takes reservations: the fog tells it about each one on
    /// `ev/{region}/stations/{station_id}/reservations` (an OCPP charger behind the
    /// gateway). Absent (false) for plain stations, which get nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub takes_reservations: bool,
    /// The OCPP gateway that speaks for this station (its `gateway_id`): while that
    /// gateway is offline (`ev/{region}/gateways/{gateway_id}/status`), the station
    /// counts as offline whatever its last status says. Absent for plain stations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl StationStatus {
    /// The `offline` form, without position (a station's last will): never recommended.
    pub fn offline(station_id: impl Into<String>) -> Self {
        Self {
            v: crate::PROTOCOL_VERSION,
            station_id: station_id.into(),
            lat: None,
            lon: None,
            chargers: None,
            power_kw: None,
            occupied: 0,
            queue: 0,
            state: StationState::Offline,
            ts_ms: None,
            takes_reservations: false,
            gateway: None,
        }
    }
}

/// An OCPP gateway's presence: `ev/{region}/gateways/{gateway_id}/status` (QoS 1,
/// retained). The gateway says `online: true` once connected and `online: false` when
/// it stops; its last will is the `online: false` form, so a gateway that dies is
/// known at once. While a gateway is offline, every station whose status names it
/// counts as offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub v: u32,
    pub gateway_id: String,
    pub online: bool,
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
    /// This answer replaces the earlier one for the same `request_id`: the fog
    /// re-planned the reservation (its station refused it, faulted or went offline, a
    /// session ran over, a walk-in took a connector) and the wait grew by more than
    /// 5 min or the station changed; `reason` says why. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revised: bool,
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
            revised: false,
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

/// The fog tells a station that takes reservations about one:
/// `ev/{region}/stations/{station_id}/reservations` (QoS 1, not retained). Sent only to
/// stations whose status says `takes_reservations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationReservation {
    pub v: u32,
    pub reservation_id: String,
    pub action: StationReservationAction,
    /// Who will come (`reserve` only): derived from the vehicle id by
    /// [`id_tag_for_vehicle`], at most 20 characters (an OCPP `IdToken`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_tag: Option<String>,
    /// When the reservation lapses (`reserve` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// When the fog plans the vehicle to start charging here (`reserve` only; fog
    /// clock, ms): the reservation's place in the station's plan. A station serves the
    /// reservations waiting for a connector in order of `start_ms` (those without one
    /// last, in the order they came). A `reserve` for a reservation the station
    /// already has updates it (a re-plan moved it), as OCPP's ReserveNow does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StationReservationAction {
    /// Hold a connector for the vehicle until `expires_ms`.
    Reserve,
    /// The reservation is over (cancelled, expired, replaced or the vehicle arrived).
    Cancel,
}

/// A station answers about a reservation:
/// `ev/{region}/stations/{station_id}/reservation-events` (QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationReservationEvent {
    pub v: u32,
    pub reservation_id: String,
    pub event: StationReservationEventKind,
    /// Why (`rejected`): e.g. the charger's `Occupied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StationReservationEventKind {
    /// The station holds a connector for the vehicle.
    Accepted,
    /// The station cannot hold it: the fog releases the slot and tells the vehicle.
    Rejected,
    /// The vehicle started charging on the reservation: it ends as `arrived`.
    Arrived,
}

impl StationReservationEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Arrived => "arrived",
        }
    }
}

/// Longest id tag (OCPP 1.6 `IdToken`, CiString20).
pub const MAX_ID_TAG_LEN: usize = 20;

/// The id tag a vehicle's reservation carries: the vehicle id itself when it fits in
/// 20 characters, else its first 11 characters, `-` and 8 hex digits of a hash of the
/// whole id (FNV-1a), so long ids stay distinct.
pub fn id_tag_for_vehicle(vehicle_id: &str) -> String {
    if vehicle_id.len() <= MAX_ID_TAG_LEN {
        return vehicle_id.to_owned();
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in vehicle_id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let head: String = vehicle_id.chars().take(11).collect();
    format!("{head}-{hash:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_tags_fit_ocpp_and_stay_distinct() {
        assert_eq!(id_tag_for_vehicle("car-7"), "car-7");
        let exactly = "a".repeat(MAX_ID_TAG_LEN);
        assert_eq!(id_tag_for_vehicle(&exactly), exactly);
        let a = id_tag_for_vehicle(&format!("fleet-vehicle-{}-a", "x".repeat(40)));
        let b = id_tag_for_vehicle(&format!("fleet-vehicle-{}-b", "x".repeat(40)));
        assert_ne!(a, b);
        for tag in [a, b] {
            assert_eq!(tag.len(), MAX_ID_TAG_LEN);
            assert!(crate::validate_id("id_tag", &tag).is_ok(), "{tag}");
        }
    }
}
