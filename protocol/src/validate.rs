//! The rules every message obeys, and the one way to turn bytes into a checked message.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::messages::*;
use crate::{MAX_ID_LEN, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, ProtocolError};

/// A message that can check its own fields.
pub trait Validate {
    fn validate(&self) -> Result<(), ProtocolError>;
}

/// Decodes and validates a payload: size limit first, then JSON, then the rules.
/// A payload with another `"v"` is reported as a version error even when the rest of
/// it does not parse, so a device from the future learns what is wrong.
pub fn decode<T: DeserializeOwned + Validate>(payload: &[u8]) -> Result<T, ProtocolError> {
    decode_at_most(payload, MAX_PAYLOAD_BYTES)
}

/// [`decode`] with another size limit: for the few messages that grow with the
/// region (the fog's station list), never for what devices send.
pub fn decode_at_most<T: DeserializeOwned + Validate>(
    payload: &[u8],
    max: usize,
) -> Result<T, ProtocolError> {
    if payload.len() > max {
        return Err(ProtocolError::TooLarge {
            size: payload.len(),
            max,
        });
    }
    let msg: T = serde_json::from_slice(payload).map_err(|e| {
        #[derive(serde::Deserialize)]
        struct Probe {
            v: u64,
        }
        match serde_json::from_slice::<Probe>(payload) {
            Ok(p) if p.v != u64::from(PROTOCOL_VERSION) => ProtocolError::Version(p.v),
            _ => ProtocolError::Json(e.to_string()),
        }
    })?;
    msg.validate()?;
    Ok(msg)
}

/// Encodes a message as compact JSON.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own plain structs (no maps with non-string keys) cannot fail.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Ids (regions, stations, vehicles, requests, reservations): 1-64 of `[A-Za-z0-9_-]`.
pub fn validate_id(field: &'static str, value: &str) -> Result<(), ProtocolError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::InvalidId {
            field,
            value: value.chars().take(80).collect(),
        })
    }
}

fn version(v: u32) -> Result<(), ProtocolError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::Version(u64::from(v)))
    }
}

/// A finite number within `[min, max]`.
fn range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), ProtocolError> {
    if !value.is_finite() {
        return Err(ProtocolError::NotFinite { field });
    }
    if value < min || value > max {
        return Err(ProtocolError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// A finite number strictly above zero and at most `max`; refused as out of `(0, max]`.
fn positive(field: &'static str, value: f64, max: f64) -> Result<(), ProtocolError> {
    match range(field, value, 0.0, max) {
        Ok(()) if value > 0.0 => Ok(()),
        Err(e @ ProtocolError::NotFinite { .. }) => Err(e),
        _ => Err(ProtocolError::OutOfRange {
            field,
            value,
            min: f64::MIN_POSITIVE,
            max,
        }),
    }
}

pub(crate) fn position(lat: f64, lon: f64) -> Result<(), ProtocolError> {
    range("lat", lat, -90.0, 90.0)?;
    range("lon", lon, -180.0, 180.0)
}

/// Upper bounds that keep arithmetic sane; no real charger or car comes near them.
pub mod limits {
    pub const MAX_CHARGERS: u32 = 1_000;
    pub const MAX_QUEUE: u32 = 100_000;
    pub const MAX_POWER_KW: f64 = 5_000.0;
    pub const MAX_BATTERY_KWH: f64 = 1_000.0;
    pub const MAX_KWH_PER_KM: f64 = 10.0;
    pub const MAX_SPEED_KMH: f64 = 1_000.0;
}

impl Validate for StationStatus {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("station_id", &self.station_id)?;
        if let Some(gateway) = &self.gateway {
            validate_id("gateway", gateway)?;
        }
        if let (Some(lat), Some(lon)) = (self.lat, self.lon) {
            position(lat, lon)?;
        }
        if let Some(power) = self.power_kw {
            positive("power_kw", power, limits::MAX_POWER_KW)?;
        }
        if let Some(chargers) = self.chargers {
            range(
                "chargers",
                f64::from(chargers),
                1.0,
                f64::from(limits::MAX_CHARGERS),
            )?;
            if self.occupied > chargers {
                return Err(ProtocolError::OccupiedExceedsChargers {
                    occupied: self.occupied,
                    chargers,
                });
            }
        }
        range(
            "queue",
            f64::from(self.queue),
            0.0,
            f64::from(limits::MAX_QUEUE),
        )?;
        if self.state.is_in_service() {
            let state = self.state.as_str();
            let required = [
                ("lat", self.lat.is_some()),
                ("lon", self.lon.is_some()),
                ("chargers", self.chargers.is_some()),
                ("power_kw", self.power_kw.is_some()),
            ];
            if let Some((field, _)) = required.iter().find(|(_, present)| !present) {
                return Err(ProtocolError::MissingField { field, state });
            }
        } else if self.lat.is_some() != self.lon.is_some() {
            return Err(ProtocolError::MissingField {
                field: if self.lat.is_some() { "lon" } else { "lat" },
                state: self.state.as_str(),
            });
        }
        Ok(())
    }
}

impl Validate for GatewayStatus {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("gateway_id", &self.gateway_id)
    }
}

impl Validate for ChargeRequest {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("request_id", &self.request_id)?;
        position(self.lat, self.lon)?;
        range("soc", self.soc, 0.0, 1.0)?;
        range("target_soc", self.target_soc, 0.0, 1.0)?;
        positive("battery_kwh", self.battery_kwh, limits::MAX_BATTERY_KWH)?;
        positive("kwh_per_km", self.kwh_per_km, limits::MAX_KWH_PER_KM)
    }
}

impl Validate for Recommendation {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        if !(self.status == RecommendationStatus::Rejected && self.request_id.is_empty()) {
            validate_id("request_id", &self.request_id)?;
        }
        if let Some(station) = &self.station {
            validate_id("station.station_id", &station.station_id)?;
            validate_id("station.region", &station.region)?;
            position(station.lat, station.lon)?;
        }
        if matches!(
            self.status,
            RecommendationStatus::Assigned | RecommendationStatus::Rerouted
        ) && self.station.is_none()
        {
            return Err(ProtocolError::MissingField {
                field: "station",
                state: self.status.as_str(),
            });
        }
        if let Some(id) = &self.reservation_id {
            validate_id("reservation_id", id)?;
        }
        if let Some(d) = self.distance_km {
            range("distance_km", d, 0.0, 40_100.0)?;
        }
        Ok(())
    }
}

impl Validate for ReservationUpdate {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("reservation_id", &self.reservation_id)
    }
}

impl Validate for Telemetry {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        position(self.lat, self.lon)?;
        range("soc", self.soc, 0.0, 1.0)?;
        if let Some(speed) = self.speed_kmh {
            range("speed_kmh", speed, 0.0, limits::MAX_SPEED_KMH)?;
        }
        Ok(())
    }
}

impl Validate for StationReservation {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("reservation_id", &self.reservation_id)?;
        if let Some(tag) = &self.id_tag {
            id_tag(tag)?;
        }
        if self.action == StationReservationAction::Reserve {
            if self.id_tag.is_none() {
                return Err(ProtocolError::MissingField {
                    field: "id_tag",
                    state: "reserve",
                });
            }
            if self.expires_ms.is_none() {
                return Err(ProtocolError::MissingField {
                    field: "expires_ms",
                    state: "reserve",
                });
            }
        }
        Ok(())
    }
}

/// 1-20 of `[A-Za-z0-9_-]` (what [`id_tag_for_vehicle`] makes).
fn id_tag(tag: &str) -> Result<(), ProtocolError> {
    validate_id("id_tag", tag)?;
    if tag.len() > MAX_ID_TAG_LEN {
        return Err(ProtocolError::InvalidId {
            field: "id_tag",
            value: tag.chars().take(80).collect(),
        });
    }
    Ok(())
}

/// Longest `reason` of a station's reservation event.
pub const MAX_REASON_LEN: usize = 200;

impl Validate for StationReservationEvent {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("reservation_id", &self.reservation_id)?;
        if let Some(reason) = &self.reason {
            let n = reason.chars().count();
            if n > MAX_REASON_LEN {
                return Err(ProtocolError::OutOfRange {
                    field: "reason length",
                    value: n as f64,
                    min: 0.0,
                    max: MAX_REASON_LEN as f64,
                });
            }
        }
        Ok(())
    }
}
