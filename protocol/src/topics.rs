//! Every MQTT topic of fogcharge: builders, subscription filters and one parser.
//! No other crate formats or splits a topic string.
//!
//! Device topics live on the regional broker:
//! - `ev/{region}/stations/{station_id}/status`
//! - `ev/{region}/stations/{station_id}/{reservations|reservation-events}` (stations
//!   that take reservations: fog → station, station → fog)
//! - `ev/{region}/gateways/{gateway_id}/status` (an OCPP gateway's presence)
//! - `ev/{region}/vehicles/{vehicle_id}/{request|recommendation|reservation|telemetry}`

use crate::{ProtocolError, validate_id};

/// The channels of a vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VehicleChannel {
    Request,
    Recommendation,
    Reservation,
    Telemetry,
}

impl VehicleChannel {
    pub const ALL: [Self; 4] = [
        Self::Request,
        Self::Recommendation,
        Self::Reservation,
        Self::Telemetry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Recommendation => "recommendation",
            Self::Reservation => "reservation",
            Self::Telemetry => "telemetry",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The reservation channels of a station that takes reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StationChannel {
    /// fog → station: [`crate::StationReservation`].
    Reservations,
    /// station → fog: [`crate::StationReservationEvent`].
    ReservationEvents,
}

impl StationChannel {
    pub const ALL: [Self; 2] = [Self::Reservations, Self::ReservationEvents];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reservations => "reservations",
            Self::ReservationEvents => "reservation-events",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A parsed device topic, borrowing from the topic string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    StationStatus {
        region: &'a str,
        station_id: &'a str,
    },
    Vehicle {
        region: &'a str,
        vehicle_id: &'a str,
        channel: VehicleChannel,
    },
    /// An OCPP gateway's presence: `ev/{region}/gateways/{gateway_id}/status`.
    GatewayStatus {
        region: &'a str,
        gateway_id: &'a str,
    },
    /// A station's reservation channels (not its status).
    Station {
        region: &'a str,
        station_id: &'a str,
        channel: StationChannel,
    },
}

impl<'a> Topic<'a> {
    /// Parses a device topic; every id must be a valid id and there must be exactly
    /// the expected levels.
    pub fn parse(topic: &'a str) -> Result<Self, ProtocolError> {
        let bad = |reason| ProtocolError::Topic {
            topic: topic.chars().take(200).collect(),
            reason,
        };
        let mut levels = topic.split('/');
        let mut next = || levels.next();
        let (Some("ev"), Some(region), Some(kind), Some(id), Some(leaf), None) =
            (next(), next(), next(), next(), next(), next())
        else {
            return Err(bad(
                "expected ev/{region}/stations/{id}/status, ev/{region}/gateways/{id}/status or ev/{region}/vehicles/{id}/{channel}",
            ));
        };
        validate_id("region", region).map_err(|_| bad("region is not a valid id"))?;
        match (kind, leaf) {
            ("stations", "status") => {
                validate_id("station_id", id).map_err(|_| bad("station id is not a valid id"))?;
                Ok(Self::StationStatus {
                    region,
                    station_id: id,
                })
            }
            ("stations", leaf) => {
                validate_id("station_id", id).map_err(|_| bad("station id is not a valid id"))?;
                let channel = StationChannel::from_str(leaf).ok_or_else(|| {
                    bad("unknown station channel (status, reservations, reservation-events)")
                })?;
                Ok(Self::Station {
                    region,
                    station_id: id,
                    channel,
                })
            }
            ("gateways", "status") => {
                validate_id("gateway_id", id).map_err(|_| bad("gateway id is not a valid id"))?;
                Ok(Self::GatewayStatus {
                    region,
                    gateway_id: id,
                })
            }
            ("vehicles", leaf) => {
                validate_id("vehicle_id", id).map_err(|_| bad("vehicle id is not a valid id"))?;
                let channel = VehicleChannel::from_str(leaf).ok_or_else(|| {
                    bad("unknown vehicle channel (request, recommendation, reservation, telemetry)")
                })?;
                Ok(Self::Vehicle {
                    region,
                    vehicle_id: id,
                    channel,
                })
            }
            _ => Err(bad("unknown topic kind")),
        }
    }

    /// The region the topic belongs to.
    pub fn region(&self) -> &'a str {
        match *self {
            Self::StationStatus { region, .. }
            | Self::GatewayStatus { region, .. }
            | Self::Vehicle { region, .. }
            | Self::Station { region, .. } => region,
        }
    }
}

/// `ev/{region}/stations/{station_id}/status`
pub fn station_status(region: &str, station_id: &str) -> String {
    format!("ev/{region}/stations/{station_id}/status")
}

/// `ev/{region}/gateways/{gateway_id}/status`
pub fn gateway_status(region: &str, gateway_id: &str) -> String {
    format!("ev/{region}/gateways/{gateway_id}/status")
}

/// `ev/{region}/stations/{station_id}/{channel}`
pub fn station(region: &str, station_id: &str, channel: StationChannel) -> String {
    format!("ev/{region}/stations/{station_id}/{}", channel.as_str())
}

/// `ev/{region}/stations/{station_id}/reservations` (fog → station)
pub fn station_reservations(region: &str, station_id: &str) -> String {
    station(region, station_id, StationChannel::Reservations)
}

/// `ev/{region}/stations/{station_id}/reservation-events` (station → fog)
pub fn station_reservation_events(region: &str, station_id: &str) -> String {
    station(region, station_id, StationChannel::ReservationEvents)
}

/// `ev/{region}/vehicles/{vehicle_id}/{channel}`
pub fn vehicle(region: &str, vehicle_id: &str, channel: VehicleChannel) -> String {
    format!("ev/{region}/vehicles/{vehicle_id}/{}", channel.as_str())
}

/// `ev/{region}/vehicles/{vehicle_id}/request`
pub fn request(region: &str, vehicle_id: &str) -> String {
    vehicle(region, vehicle_id, VehicleChannel::Request)
}

/// `ev/{region}/vehicles/{vehicle_id}/recommendation`
pub fn recommendation(region: &str, vehicle_id: &str) -> String {
    vehicle(region, vehicle_id, VehicleChannel::Recommendation)
}

/// `ev/{region}/vehicles/{vehicle_id}/reservation`
pub fn reservation(region: &str, vehicle_id: &str) -> String {
    vehicle(region, vehicle_id, VehicleChannel::Reservation)
}

/// `ev/{region}/vehicles/{vehicle_id}/telemetry`
pub fn telemetry(region: &str, vehicle_id: &str) -> String {
    vehicle(region, vehicle_id, VehicleChannel::Telemetry)
}

/// Subscription filters.
pub mod filters {
    use super::{StationChannel, VehicleChannel};

    /// `ev/{region}/stations/+/{channel}`
    pub fn stations(region: &str, channel: StationChannel) -> String {
        format!("ev/{region}/stations/+/{}", channel.as_str())
    }

    /// `ev/{region}/stations/+/status`
    pub fn station_status(region: &str) -> String {
        format!("ev/{region}/stations/+/status")
    }

    /// `ev/{region}/gateways/+/status`
    pub fn gateway_status(region: &str) -> String {
        format!("ev/{region}/gateways/+/status")
    }

    /// `ev/{region}/vehicles/+/{channel}`
    pub fn vehicles(region: &str, channel: VehicleChannel) -> String {
        format!("ev/{region}/vehicles/+/{}", channel.as_str())
    }

    /// Everything on a region's device topics: `ev/{region}/#`.
    pub fn region_devices(region: &str) -> String {
        format!("ev/{region}/#")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_parser_agree() {
        let t = station_status("north", "north-001");
        assert_eq!(
            Topic::parse(&t).unwrap(),
            Topic::StationStatus {
                region: "north",
                station_id: "north-001"
            }
        );
        for channel in VehicleChannel::ALL {
            let t = vehicle("south_2", "car-7", channel);
            assert_eq!(
                Topic::parse(&t).unwrap(),
                Topic::Vehicle {
                    region: "south_2",
                    vehicle_id: "car-7",
                    channel
                }
            );
        }
    }

    #[test]
    fn station_channels_parse() {
        for channel in StationChannel::ALL {
            let t = station("north", "CP-001", channel);
            assert_eq!(
                Topic::parse(&t).unwrap(),
                Topic::Station {
                    region: "north",
                    station_id: "CP-001",
                    channel
                }
            );
        }
        assert_eq!(
            station_reservations("n", "s"),
            "ev/n/stations/s/reservations"
        );
        assert!(Topic::parse("ev/n/stations/s/reservation").is_err());
    }

    #[test]
    fn parser_refuses_malformed_topics() {
        let long = format!("ev/r/vehicles/{}/request", "a".repeat(65));
        for t in [
            "",
            "ev",
            "ev/north",
            "ev/north/vehicles/car-1",
            "ev/north/vehicles/car-1/request/extra",
            "ev/north/vehicles/car-1/honk",
            "ev/north/stations/s-1/request",
            "ev/north/trucks/t-1/request",
            "xx/north/vehicles/car-1/request",
            "ev//vehicles/car-1/request",
            "ev/north/vehicles//request",
            "ev/no rth/vehicles/car-1/request",
            "ev/north/vehicles/car.1/request",
            "ev/north/vehicles/+/request",
            "ev/north/vehicles/#",
            "/ev/north/vehicles/car-1/request",
            &long,
        ] {
            let err = Topic::parse(t).unwrap_err();
            assert!(matches!(err, ProtocolError::Topic { .. }), "{t}: {err}");
        }
    }
}
