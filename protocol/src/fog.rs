//! Fog ↔ central messages, carried over the Mosquitto bridges.
//!
//! On a regional broker the fog server publishes under `fog/up/…` and subscribes to
//! `fog/down/…`; the bridge maps these to `regions/{region}/up/…` and
//! `regions/{region}/down/…` on the central broker (see `docs/fog-central.md`).
//!
//! | message | regional topic | central topic | QoS | retained |
//! | --- | --- | --- | --- | --- |
//! | [`Aggregate`] | `fog/up/aggregate` | `regions/{r}/up/aggregate` | 1 | yes |
//! | [`Stations`] | `fog/up/stations` | `regions/{r}/up/stations` | 1 | yes |
//! | [`RerouteRequest`] | `fog/up/reroute` | `regions/{r}/up/reroute` | 1 | no |
//! | [`Handoff`] | `fog/down/handoff` | `regions/{r}/down/handoff` | 1 | no |
//! | [`HandoffReply`] | `fog/up/handoff-reply` | `regions/{r}/up/handoff-reply` | 1 | no |
//! | [`RerouteReply`] | `fog/down/reroute-reply` | `regions/{r}/down/reroute-reply` | 1 | no |
//! | [`CentralHeartbeat`] | `fog/down/heartbeat` | `regions/{r}/down/heartbeat` | 0 | no |
//! | [`Revoked`] | `fog/up/handoff-revoked` | `regions/{r}/up/handoff-revoked` | 1 | no |
//! | [`Revoked`] | `fog/down/reroute-revoked` | `regions/{r}/down/reroute-revoked` | 1 | no |

use serde::{Deserialize, Serialize};

use crate::messages::{ChargeRequest, Recommendation};
use crate::validate::{Validate, validate_id};
use crate::{PROTOCOL_VERSION, ProtocolError};

/// The kinds of fog ↔ central message; the last level of their topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FogMessage {
    Aggregate,
    Stations,
    Reroute,
    Handoff,
    HandoffReply,
    RerouteReply,
    Heartbeat,
    /// Target → central: a handed-off vehicle's reservation could not be kept.
    HandoffRevoked,
    /// Central → origin: the same, for the region that answered the vehicle.
    RerouteRevoked,
}

/// Which way a message crosses the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// fog → central
    Up,
    /// central → fog
    Down,
}

impl FogMessage {
    pub const ALL: [Self; 9] = [
        Self::Aggregate,
        Self::Stations,
        Self::Reroute,
        Self::Handoff,
        Self::HandoffReply,
        Self::RerouteReply,
        Self::Heartbeat,
        Self::HandoffRevoked,
        Self::RerouteRevoked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Aggregate => "aggregate",
            Self::Stations => "stations",
            Self::Reroute => "reroute",
            Self::Handoff => "handoff",
            Self::HandoffReply => "handoff-reply",
            Self::RerouteReply => "reroute-reply",
            Self::Heartbeat => "heartbeat",
            Self::HandoffRevoked => "handoff-revoked",
            Self::RerouteRevoked => "reroute-revoked",
        }
    }

    pub fn direction(self) -> Direction {
        match self {
            Self::Aggregate
            | Self::Stations
            | Self::Reroute
            | Self::HandoffReply
            | Self::HandoffRevoked => Direction::Up,
            Self::Handoff | Self::RerouteReply | Self::Heartbeat | Self::RerouteRevoked => {
                Direction::Down
            }
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The topic on the regional broker: `fog/up/{name}` or `fog/down/{name}`.
    pub fn regional_topic(self) -> String {
        format!("fog/{}/{}", dir(self.direction()), self.name())
    }

    /// The topic on the central broker: `regions/{region}/up|down/{name}`.
    pub fn central_topic(self, region: &str) -> String {
        format!("regions/{region}/{}/{}", dir(self.direction()), self.name())
    }

    /// Parses a regional-broker topic (`fog/up/…`, `fog/down/…`).
    pub fn parse_regional(topic: &str) -> Result<Self, ProtocolError> {
        let bad = |reason| ProtocolError::Topic {
            topic: topic.chars().take(200).collect(),
            reason,
        };
        let mut it = topic.split('/');
        let (Some("fog"), Some(d), Some(name), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad("expected fog/up/{message} or fog/down/{message}"));
        };
        let m = Self::from_name(name).ok_or_else(|| bad("unknown fog message"))?;
        if d != dir(m.direction()) {
            return Err(bad("message sent in the wrong direction"));
        }
        Ok(m)
    }

    /// Parses a central-broker topic: `regions/{region}/up|down/{name}`.
    pub fn parse_central(topic: &str) -> Result<(&str, Self), ProtocolError> {
        let bad = |reason| ProtocolError::Topic {
            topic: topic.chars().take(200).collect(),
            reason,
        };
        let mut it = topic.split('/');
        let (Some("regions"), Some(region), Some(d), Some(name), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad("expected regions/{region}/up|down/{message}"));
        };
        validate_id("region", region).map_err(|_| bad("region is not a valid id"))?;
        let m = Self::from_name(name).ok_or_else(|| bad("unknown fog message"))?;
        if d != dir(m.direction()) {
            return Err(bad("message sent in the wrong direction"));
        }
        Ok((region, m))
    }
}

fn dir(d: Direction) -> &'static str {
    match d {
        Direction::Up => "up",
        Direction::Down => "down",
    }
}

/// The topic of the region's [`Lease`] on its own broker (retained, never bridged:
/// the bridge carries only `fog/up/…` and `fog/down/…`).
pub const LEASE: &str = "fog/lease";

/// Which fog server instance serves the region: retained on [`LEASE`], QoS 1. The
/// serving instance publishes `online: true` when it connects and every few seconds;
/// `online: false` is its last will and the last thing it publishes when it stops
/// (after handing over). A second instance stands by while another holder's lease is
/// live (see `docs/fog-central.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub v: u32,
    /// The instance: host name, process id and start time.
    pub holder: String,
    /// True while the holder serves the region.
    pub online: bool,
}

impl Validate for Lease {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("holder", &self.holder)
    }
}

/// Subscription filters for the fog ↔ central topics.
pub mod filters {
    /// What a fog server subscribes to on its regional broker: `fog/down/#`.
    pub const FOG_DOWN: &str = "fog/down/#";

    /// What central subscribes to on the central broker: `regions/+/up/#`.
    pub const CENTRAL_UP: &str = "regions/+/up/#";

    /// Every fog ↔ central topic on a regional broker (the fog's own and the lease):
    /// `fog/#`.
    pub const FOG_ALL: &str = "fog/#";

    /// Every region's topics on the central broker: `regions/#`.
    pub const REGIONS_ALL: &str = "regions/#";

    /// One region's topics on the central broker: `regions/{region}/#` (what its
    /// bridge may carry).
    pub fn region(region: &str) -> String {
        format!("regions/{region}/#")
    }
}

/// The prefixes a region's bridge maps between the regional broker and the central
/// one (Mosquitto's `topic # {direction} {qos} {local prefix} {remote prefix}`):
/// `fog/up/` → `regions/{region}/up/` and `fog/down/` ← `regions/{region}/down/`.
pub fn bridge_prefixes(region: &str, direction: Direction) -> (String, String) {
    let d = dir(direction);
    (format!("fog/{d}/"), format!("regions/{region}/{d}/"))
}

/// A region's latest state, published retained by its fog server every few seconds
/// and on significant change. A latest-value message: losing one does no harm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub v: u32,
    pub region: String,
    /// Increases by one with every aggregate a fog server process publishes.
    pub seq: u64,
    /// When it was made (fog clock, ms since the epoch).
    pub ts_ms: u64,
    pub stations: u32,
    pub stations_in_service: u32,
    pub chargers: u32,
    pub chargers_free: u32,
    pub queued: u32,
    pub reservations: u32,
    /// Shortest predicted wait at any in-service station, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_wait_s: Option<u32>,
    /// The longest predicted wait this fog server accepts (its `--max-wait-s`): the
    /// region is saturated when `min_wait_s` is missing or longer. Fog servers older
    /// than this field leave it out; central then applies its own `--max-wait-s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_s: Option<u32>,
    /// The region's outline as `[lat, lon]` points (a box has 4), if configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outline: Vec<[f64; 2]>,
    /// The stations with the shortest predicted wait, best first.
    #[serde(default)]
    pub best: Vec<AggregateStation>,
    /// Requests this fog server found saturated since it started.
    #[serde(default)]
    pub saturated_requests: u64,
    /// Requests this fog server answered since it started (any status).
    #[serde(default)]
    pub requests_total: u64,
}

/// Every in-service station of a region, published retained with the periodic
/// aggregate (for central's dashboard). A latest-value message. It grows with the
/// region (~170 bytes a station): decode it with [`Stations::decode`], whose size limit
/// is [`MAX_STATIONS_PAYLOAD_BYTES`], not the devices' 16 KiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stations {
    pub v: u32,
    pub region: String,
    /// When it was made (fog clock, ms since the epoch).
    pub ts_ms: u64,
    pub stations: Vec<AggregateStation>,
}

/// Farther than any two points on Earth, km: "no region anywhere".
pub const EVERYWHERE_KM: f64 = 20_100.0;

/// The great-circle distance from (`lat`, `lon`) to the bounding box of `outline`
/// (`[lat, lon]` points), km: 0 inside. Never more than the distance to the outline
/// itself, so a bound built on it is safe. `None` for an empty outline.
pub fn distance_to_outline_km(outline: &[[f64; 2]], lat: f64, lon: f64) -> Option<f64> {
    let first = outline.first()?;
    let (mut min_lat, mut max_lat, mut min_lon, mut max_lon) =
        (first[0], first[0], first[1], first[1]);
    for [la, lo] in outline {
        min_lat = min_lat.min(*la);
        max_lat = max_lat.max(*la);
        min_lon = min_lon.min(*lo);
        max_lon = max_lon.max(*lo);
    }
    let (clat, clon) = (lat.clamp(min_lat, max_lat), lon.clamp(min_lon, max_lon));
    Some(crate::geo::haversine_km(lat, lon, clat, clon))
}

/// Largest station list accepted: 32 MiB, ~190,000 stations.
pub const MAX_STATIONS_PAYLOAD_BYTES: usize = 32 * 1024 * 1024;

impl Stations {
    /// Decodes and validates a station list (see [`MAX_STATIONS_PAYLOAD_BYTES`]).
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        crate::decode_at_most(payload, MAX_STATIONS_PAYLOAD_BYTES)
    }
}

/// One of a region's best stations, as the aggregate lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateStation {
    pub station_id: String,
    pub lat: f64,
    pub lon: f64,
    pub chargers: u32,
    pub power_kw: f64,
    pub occupied: u32,
    pub queue: u32,
    pub reservations: u32,
    pub predicted_wait_s: u32,
}

/// Origin fog → central: this vehicle cannot be served well here; find another region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerouteRequest {
    pub v: u32,
    pub reroute_id: String,
    pub origin_region: String,
    pub vehicle_id: String,
    pub request: ChargeRequest,
    /// The best total (drive + wait + charge, seconds) the origin could offer, if any:
    /// a reroute is only worth it if it beats this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_best_total_s: Option<f64>,
    /// The origin gives up waiting at this time (the shared clock, ms: a real-time
    /// timeout times the clock speed).
    pub deadline_ms: u64,
}

/// Central → target fog: reserve a slot for this foreign vehicle, if you can do better
/// than `max_total_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub v: u32,
    pub handoff_id: String,
    pub reroute_id: String,
    pub origin_region: String,
    pub vehicle_id: String,
    pub request: ChargeRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_s: Option<f64>,
}

/// Target fog → central: the handoff's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffReply {
    pub v: u32,
    pub handoff_id: String,
    pub region: String,
    pub accepted: bool,
    /// The `rerouted` recommendation, with the target's station and reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Central → origin fog: the reroute's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerouteReply {
    pub v: u32,
    pub reroute_id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Regions asked, in order.
    #[serde(default)]
    pub tried: Vec<String>,
    /// When no region could be asked at all: no region that can take vehicles (fresh,
    /// not saturated) lists a station within this great-circle distance of the
    /// request, km. For `hold_ms`, the origin may answer a saturated request at once
    /// when this distance exceeds the request's own distance from this one plus its
    /// reach (it could not reach any of them either) instead of asking again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_region_within_km: Option<f64>,
    /// How long `no_region_within_km` holds, real milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<u64>,
}

/// A rerouted vehicle's reservation that the target region could not keep (the OCPP
/// charger refused ReserveNow): the target sends it to central
/// ([`FogMessage::HandoffRevoked`]), central passes it on to the origin
/// ([`FogMessage::RerouteRevoked`]), and the origin, which answered the vehicle, sends
/// it a revised recommendation for its original request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    pub v: u32,
    pub reroute_id: String,
    pub handoff_id: String,
    pub origin_region: String,
    /// The region that held the reservation (the target).
    pub region: String,
    pub vehicle_id: String,
    pub reservation_id: String,
    /// Why (at most 200 characters).
    pub reason: String,
    /// Not revoked but re-planned: the target planned the vehicle again (its wait grew
    /// by more than 5 min, or its station changed) and this is the new answer (status
    /// `rerouted`; its `reservation_id` may be a new one). The origin sends it to the
    /// vehicle as a revised recommendation. Absent: the reservation is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised: Option<Box<crate::Recommendation>>,
}

/// Central → every region it knows, every `period_ms` and whenever `open_regions`
/// changes (QoS 0, not retained: only a live central sends it). A fog server that has
/// not heard one for a few periods treats central as unreachable and answers saturated
/// requests at once instead of asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CentralHeartbeat {
    pub v: u32,
    /// When this central process started (central's clock, ms since the epoch): a new
    /// value means central restarted.
    pub started_ms: u64,
    /// Increases by one with every heartbeat of this process.
    pub seq: u64,
    /// When it was sent (central's clock).
    pub ts_ms: u64,
    /// How often central sends it (real milliseconds).
    pub period_ms: u64,
    /// The regions that can take vehicles from others now (fresh data, not
    /// saturated), sorted. A saturated region with no other region here need not ask.
    #[serde(default)]
    pub open_regions: Vec<String>,
    /// The great-circle distance from the receiving region's outline (its bounding box)
    /// to the nearest station listed by another region that can take vehicles, km
    /// ([`EVERYWHERE_KM`] when none can); absent when the region sent no outline. A
    /// saturated request in the region whose reach is shorter could reach none of them:
    /// the fog answers it at once instead of asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nearest_open_km: Option<f64>,
    /// Stations of other regions that can take vehicles now (fresh, not saturated),
    /// listed in their aggregates' `best`, within central's `--offer-radius-km` of the
    /// receiving region's outline (its bounding box): nearest to the outline first, at
    /// most `--offer-limit`. Empty (and left out) for a region without an outline, or
    /// when none is near. The origin fog can then ask central when a neighbour's
    /// station beats its own best by a margin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offers: Vec<Offer>,
}

/// A neighbour's station near a region's outline, as central's heartbeat offers it
/// ([`CentralHeartbeat::offers`]); figures from that region's latest aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The region that listed it.
    pub region: String,
    pub station_id: String,
    pub lat: f64,
    pub lon: f64,
    pub power_kw: f64,
    /// Its predicted wait, seconds (as its fog predicted it).
    pub wait_s: u32,
}

impl Validate for Offer {
    fn validate(&self) -> Result<(), ProtocolError> {
        validate_id("region", &self.region)?;
        validate_id("station_id", &self.station_id)?;
        crate::validate::position(self.lat, self.lon)?;
        power_kw(self.power_kw)
    }
}

impl Validate for CentralHeartbeat {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        if self.period_ms == 0 {
            return Err(ProtocolError::OutOfRange {
                field: "period_ms",
                value: 0.0,
                min: 1.0,
                max: f64::MAX,
            });
        }
        if let Some(km) = self.nearest_open_km {
            if !(km.is_finite() && km >= 0.0) {
                return Err(ProtocolError::OutOfRange {
                    field: "nearest_open_km",
                    value: km,
                    min: 0.0,
                    max: f64::MAX,
                });
            }
        }
        self.open_regions
            .iter()
            .try_for_each(|r| validate_id("open_regions", r))?;
        self.offers.iter().try_for_each(Validate::validate)
    }
}

fn version(v: u32) -> Result<(), ProtocolError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::Version(u64::from(v)))
    }
}

impl Validate for AggregateStation {
    fn validate(&self) -> Result<(), ProtocolError> {
        validate_id("station_id", &self.station_id)?;
        crate::validate::position(self.lat, self.lon)?;
        power_kw(self.power_kw)
    }
}

/// A station's power: finite, above zero, at most [`crate::validate::limits::MAX_POWER_KW`].
fn power_kw(kw: f64) -> Result<(), ProtocolError> {
    if kw.is_finite() && kw > 0.0 && kw <= crate::validate::limits::MAX_POWER_KW {
        Ok(())
    } else {
        Err(ProtocolError::OutOfRange {
            field: "power_kw",
            value: kw,
            min: 0.0,
            max: crate::validate::limits::MAX_POWER_KW,
        })
    }
}

impl Validate for Stations {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("region", &self.region)?;
        self.stations.iter().try_for_each(Validate::validate)
    }
}

impl Validate for Aggregate {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("region", &self.region)?;
        self.best.iter().try_for_each(Validate::validate)?;
        for [lat, lon] in &self.outline {
            crate::validate::position(*lat, *lon)?;
        }
        Ok(())
    }
}

impl Validate for RerouteRequest {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("reroute_id", &self.reroute_id)?;
        validate_id("origin_region", &self.origin_region)?;
        validate_id("vehicle_id", &self.vehicle_id)?;
        self.request.validate()
    }
}

impl Validate for Handoff {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("handoff_id", &self.handoff_id)?;
        validate_id("reroute_id", &self.reroute_id)?;
        validate_id("origin_region", &self.origin_region)?;
        validate_id("vehicle_id", &self.vehicle_id)?;
        self.request.validate()
    }
}

impl Validate for Revoked {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("reroute_id", &self.reroute_id)?;
        validate_id("handoff_id", &self.handoff_id)?;
        validate_id("origin_region", &self.origin_region)?;
        validate_id("region", &self.region)?;
        validate_id("vehicle_id", &self.vehicle_id)?;
        validate_id("reservation_id", &self.reservation_id)?;
        let n = self.reason.chars().count();
        if n > crate::validate::MAX_REASON_LEN {
            return Err(ProtocolError::OutOfRange {
                field: "reason length",
                value: n as f64,
                min: 0.0,
                max: crate::validate::MAX_REASON_LEN as f64,
            });
        }
        Ok(())
    }
}

impl Validate for HandoffReply {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("handoff_id", &self.handoff_id)?;
        validate_id("region", &self.region)?;
        if let Some(r) = &self.recommendation {
            r.validate()?;
        }
        Ok(())
    }
}

impl Validate for RerouteReply {
    fn validate(&self) -> Result<(), ProtocolError> {
        version(self.v)?;
        validate_id("reroute_id", &self.reroute_id)?;
        if let Some(km) = self.no_region_within_km {
            if !(km.is_finite() && km >= 0.0) {
                return Err(ProtocolError::OutOfRange {
                    field: "no_region_within_km",
                    value: km,
                    min: 0.0,
                    max: f64::MAX,
                });
            }
        }
        if let Some(r) = &self.recommendation {
            r.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate() -> Aggregate {
        Aggregate {
            v: 1,
            region: "north".into(),
            seq: 7,
            ts_ms: 1_750_000_000_000,
            stations: 2,
            stations_in_service: 2,
            chargers: 6,
            chargers_free: 1,
            queued: 3,
            reservations: 2,
            min_wait_s: Some(420),
            max_wait_s: Some(900),
            outline: vec![[0.0, 0.0], [0.0, 0.1], [0.1, 0.1], [0.1, 0.0]],
            best: vec![],
            saturated_requests: 4,
            requests_total: 40,
        }
    }

    #[test]
    fn an_aggregate_round_trips_with_its_fogs_wait_limit() {
        let a = aggregate();
        let bytes = crate::encode(&a);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["max_wait_s"], 900);
        assert_eq!(crate::decode::<Aggregate>(&bytes).unwrap(), a);
    }

    #[test]
    fn an_aggregate_of_an_older_fog_has_no_wait_limit() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&crate::encode(&aggregate())).unwrap();
        json.as_object_mut().unwrap().remove("max_wait_s");
        let old = crate::decode::<Aggregate>(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(old.max_wait_s, None);
        assert_eq!(
            old,
            Aggregate {
                max_wait_s: None,
                ..aggregate()
            }
        );
        // And a fog that has none to say says nothing.
        let bytes = crate::encode(&old);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(json.get("max_wait_s").is_none());
    }

    #[test]
    fn regional_and_central_topics_follow_the_bridge_contract() {
        for m in FogMessage::ALL {
            let regional = m.regional_topic();
            assert_eq!(FogMessage::parse_regional(&regional).unwrap(), m);
            let central = m.central_topic("north");
            assert_eq!(FogMessage::parse_central(&central).unwrap(), ("north", m));
            // The bridge maps fog/{d}/X to regions/north/{d}/X.
            let suffix = regional.strip_prefix("fog/").unwrap();
            assert_eq!(central, format!("regions/north/{suffix}"));
        }
        for bad in [
            "fog/down/aggregate",
            "fog/up/handoff",
            "fog/up/heartbeat",
            "fog/up/nope",
            "fog/up/aggregate/x",
            "regions/no rth/up/aggregate",
            "regions/north/sideways/aggregate",
            "regions/north/up",
        ] {
            assert!(
                FogMessage::parse_regional(bad).is_err() && FogMessage::parse_central(bad).is_err(),
                "{bad}"
            );
        }
    }
}
