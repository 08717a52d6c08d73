//! Everything a fog server receives, parsed in one place: [`Incoming::parse`] turns a
//! `(topic, payload)` from the regional broker into a checked message, or into an
//! [`IncomingError`] that says what was wrong and keeps what the fog needs to answer
//! (the region and ids from the topic, a rejected request's `request_id`).

use thiserror::Error;

use crate::fog::{CentralHeartbeat, FogMessage, Handoff, RerouteReply, Revoked};
use crate::messages::{
    ChargeRequest, GatewayStatus, ReservationUpdate, StationReservationEvent, StationStatus,
    Telemetry,
};
use crate::topics::{StationChannel, Topic, VehicleChannel};
use crate::validate::{decode, validate_id};
use crate::{MAX_PAYLOAD_BYTES, ProtocolError};

/// Where Mosquitto says how its bridges are: `$SYS/broker/connection/{name}/state`.
pub const BRIDGE_STATE_PREFIX: &str = "$SYS/broker/connection/";

/// The subscription for every bridge's state on the regional broker.
pub const BRIDGE_STATE_FILTER: &str = "$SYS/broker/connection/+/state";

/// A message a fog server received, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A station's (retained) status; `None`: the retained status was cleared, the
    /// station is gone.
    StationStatus {
        region: String,
        station_id: String,
        status: Option<StationStatus>,
    },
    /// An OCPP gateway's (retained) presence; `None`: cleared.
    GatewayStatus {
        region: String,
        gateway_id: String,
        status: Option<GatewayStatus>,
    },
    /// A vehicle asks where to charge.
    Request {
        region: String,
        vehicle_id: String,
        request: ChargeRequest,
    },
    /// A vehicle arrived or cancels its reservation.
    Reservation {
        region: String,
        vehicle_id: String,
        update: ReservationUpdate,
    },
    Telemetry {
        region: String,
        vehicle_id: String,
        telemetry: Telemetry,
    },
    /// A station that takes reservations says what became of one.
    StationReservationEvent {
        region: String,
        station_id: String,
        event: StationReservationEvent,
    },
    /// A device topic the fog publishes on itself (recommendations, reservations sent
    /// to stations): nothing to do, whatever the payload.
    Own {
        region: String,
    },
    /// Central asks this region to take a vehicle from another region.
    Handoff(Handoff),
    /// Central's answer to a reroute this region asked for.
    RerouteReply(RerouteReply),
    Heartbeat(CentralHeartbeat),
    /// A vehicle this region rerouted lost its reservation in the target region.
    RerouteRevoked(Revoked),
    /// The regional broker's bridge to central connected (`true`) or was lost:
    /// Mosquitto's retained `$SYS/broker/connection/{name}/state` (`1` / `0`).
    BridgeState {
        connection: String,
        connected: bool,
    },
}

/// Which message a payload was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingKind {
    StationStatus,
    GatewayStatus,
    Request,
    Reservation,
    Telemetry,
    StationReservationEvent,
    Handoff,
    RerouteReply,
    Heartbeat,
    RerouteRevoked,
}

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum IncomingError {
    /// Not a device topic of any region.
    #[error("{0}")]
    Topic(ProtocolError),
    /// A `fog/…` topic that carries nothing a fog server receives.
    #[error("unexpected message on fog topic {topic:?}")]
    FogTopic { topic: String },
    /// A known topic whose payload is not a valid message of its kind.
    #[error("{:?} refused: {}", .0.kind, .0.error)]
    Payload(Box<Refused>),
}

/// A payload refused on a known topic, with what the topic said.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub kind: IncomingKind,
    /// The region of a device topic (`None` for `fog/…` topics).
    pub region: Option<String>,
    /// The vehicle or station id of a device topic (empty for `fog/…` topics).
    pub id: String,
    /// For a request: its `request_id` if the payload has a usable one (else empty),
    /// so the `rejected` answer can name it.
    pub request_id: String,
    pub error: ProtocolError,
}

impl IncomingError {
    /// The region of the device topic the message came on, if it got that far.
    pub fn region(&self) -> Option<&str> {
        match self {
            Self::Payload(refused) => refused.region.as_deref(),
            Self::Topic(_) | Self::FogTopic { .. } => None,
        }
    }
}

impl Incoming {
    /// Parses what a fog server received on `topic`: a device topic
    /// (`ev/{region}/…`) or a central → fog topic (`fog/down/…`).
    pub fn parse(topic: &str, payload: &[u8]) -> Result<Self, IncomingError> {
        if topic.starts_with("fog/") {
            return parse_fog(topic, payload);
        }
        if let Some(connection) = topic
            .strip_prefix(BRIDGE_STATE_PREFIX)
            .and_then(|rest| rest.strip_suffix("/state"))
            .filter(|c| !c.is_empty() && !c.contains('/'))
        {
            return Ok(Self::BridgeState {
                connection: connection.to_owned(),
                connected: payload == b"1",
            });
        }
        let parsed = Topic::parse(topic).map_err(IncomingError::Topic)?;
        let region = parsed.region().to_owned();
        let refused = |kind, id: &str, error| {
            IncomingError::Payload(Box::new(Refused {
                kind,
                region: Some(region.clone()),
                id: id.to_owned(),
                request_id: if kind == IncomingKind::Request {
                    request_id_of(payload)
                } else {
                    String::new()
                },
                error,
            }))
        };
        use IncomingKind as K;
        Ok(match parsed {
            Topic::StationStatus { station_id, .. } => {
                let status = station_status(station_id, payload)
                    .map_err(|e| refused(K::StationStatus, station_id, e))?;
                Self::StationStatus {
                    region,
                    station_id: station_id.to_owned(),
                    status,
                }
            }
            Topic::GatewayStatus { gateway_id, .. } => {
                let status = gateway_status(gateway_id, payload)
                    .map_err(|e| refused(K::GatewayStatus, gateway_id, e))?;
                Self::GatewayStatus {
                    region,
                    gateway_id: gateway_id.to_owned(),
                    status,
                }
            }
            Topic::Vehicle {
                vehicle_id,
                channel,
                ..
            } => {
                let vehicle = vehicle_id.to_owned();
                match channel {
                    VehicleChannel::Request => Self::Request {
                        request: decode(payload).map_err(|e| refused(K::Request, vehicle_id, e))?,
                        region,
                        vehicle_id: vehicle,
                    },
                    VehicleChannel::Reservation => Self::Reservation {
                        update: decode(payload)
                            .map_err(|e| refused(K::Reservation, vehicle_id, e))?,
                        region,
                        vehicle_id: vehicle,
                    },
                    VehicleChannel::Telemetry => Self::Telemetry {
                        telemetry: decode(payload)
                            .map_err(|e| refused(K::Telemetry, vehicle_id, e))?,
                        region,
                        vehicle_id: vehicle,
                    },
                    VehicleChannel::Recommendation => Self::Own { region },
                }
            }
            Topic::Station {
                station_id,
                channel: StationChannel::ReservationEvents,
                ..
            } => Self::StationReservationEvent {
                event: decode(payload)
                    .map_err(|e| refused(K::StationReservationEvent, station_id, e))?,
                region,
                station_id: station_id.to_owned(),
            },
            Topic::Station { .. } => Self::Own { region },
        })
    }

    /// The region of a device topic (`None` for messages from central).
    pub fn region(&self) -> Option<&str> {
        match self {
            Self::StationStatus { region, .. }
            | Self::GatewayStatus { region, .. }
            | Self::Request { region, .. }
            | Self::Reservation { region, .. }
            | Self::Telemetry { region, .. }
            | Self::StationReservationEvent { region, .. }
            | Self::Own { region } => Some(region),
            Self::Handoff(_)
            | Self::RerouteReply(_)
            | Self::Heartbeat(_)
            | Self::RerouteRevoked(_)
            | Self::BridgeState { .. } => None,
        }
    }
}

/// A station status, checked against the station id of its topic; an empty payload
/// (a cleared retained status) is `None`.
fn station_status(
    station_id: &str,
    payload: &[u8],
) -> Result<Option<StationStatus>, ProtocolError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let status: StationStatus = decode(payload)?;
    if status.station_id != station_id {
        return Err(ProtocolError::TopicMismatch {
            field: "station_id",
            payload: status.station_id,
            topic: station_id.into(),
        });
    }
    Ok(Some(status))
}

/// A gateway status, checked against the gateway id of its topic; an empty payload
/// (a cleared retained status) is `None`.
fn gateway_status(
    gateway_id: &str,
    payload: &[u8],
) -> Result<Option<GatewayStatus>, ProtocolError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let status: GatewayStatus = decode(payload)?;
    if status.gateway_id != gateway_id {
        return Err(ProtocolError::TopicMismatch {
            field: "gateway_id",
            payload: status.gateway_id,
            topic: gateway_id.into(),
        });
    }
    Ok(Some(status))
}

fn parse_fog(topic: &str, payload: &[u8]) -> Result<Incoming, IncomingError> {
    let refused = |kind, error| {
        IncomingError::Payload(Box::new(Refused {
            kind,
            region: None,
            id: String::new(),
            request_id: String::new(),
            error,
        }))
    };
    match FogMessage::parse_regional(topic) {
        Ok(FogMessage::Handoff) => decode(payload)
            .map(Incoming::Handoff)
            .map_err(|e| refused(IncomingKind::Handoff, e)),
        Ok(FogMessage::RerouteReply) => decode(payload)
            .map(Incoming::RerouteReply)
            .map_err(|e| refused(IncomingKind::RerouteReply, e)),
        Ok(FogMessage::Heartbeat) => decode(payload)
            .map(Incoming::Heartbeat)
            .map_err(|e| refused(IncomingKind::Heartbeat, e)),
        Ok(FogMessage::RerouteRevoked) => decode(payload)
            .map(Incoming::RerouteRevoked)
            .map_err(|e| refused(IncomingKind::RerouteRevoked, e)),
        Ok(_) | Err(_) => Err(IncomingError::FogTopic {
            topic: topic.chars().take(200).collect(),
        }),
    }
}

/// The `request_id` of a request that failed to decode, if it has a usable one.
/// Oversized payloads are not parsed at all.
fn request_id_of(payload: &[u8]) -> String {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return String::new();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        request_id: String,
    }
    serde_json::from_slice::<Probe>(payload)
        .ok()
        .map(|p| p.request_id)
        .filter(|id| validate_id("request_id", id).is_ok())
        .unwrap_or_default()
}
