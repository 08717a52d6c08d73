//! Prometheus metrics of a fog server (served at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Every metric the fog server keeps. Cheap to update from the message loop.
#[derive(Debug)]
pub struct Metrics {
    /// Answers sent, by recommendation status.
    pub requests: Family<StatusLabel, Counter>,
    /// Time to plan one request, seconds.
    pub planning_seconds: Histogram,
    pub reservations_active: Gauge,
    /// Reservations ended, by how (`arrived`, `cancel`, `expired`, `replaced`, `station_removed`).
    pub reservations_ended: Family<KindLabel, Counter>,
    pub stations: Family<StateLabel, Gauge>,
    /// Messages refused, by what they were (`request`, `status`, `reservation`, `telemetry`, `topic`).
    pub invalid_messages: Family<KindLabel, Counter>,
    pub duplicate_requests: Counter,
    /// Reroutes through central, by outcome (`requested`, `succeeded`, `failed`, `timed_out`,
    /// `border`, `too_late`, and the reasons not to ask: see docs/fog-central.md).
    pub reroutes: Family<KindLabel, Counter>,
    /// Handoffs from other regions, by outcome (`accepted`, `refused`).
    pub handoffs: Family<KindLabel, Counter>,
    pub aggregates_published: Counter,
    pub telemetry: Counter,
    pub mqtt_reconnects: Counter,
    /// Connections taken over by another client with this client id.
    pub mqtt_takeovers: Counter,
    /// Messages to stations that take reservations, by action (`reserve`, `cancel`).
    pub station_reservations: Family<KindLabel, Counter>,
    /// What such stations answered, by event (`accepted`, `rejected`, `arrived`).
    pub station_reservation_events: Family<KindLabel, Counter>,
    /// Revised answers sent after a re-plan, by what changed (`later`: same station,
    /// a longer wait; `moved`: another station; `unavailable`: none could take it).
    pub revisions: Family<KindLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            planning_seconds: Histogram::new([
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
            ]),
            reservations_active: Gauge::default(),
            reservations_ended: Family::default(),
            stations: Family::default(),
            invalid_messages: Family::default(),
            duplicate_requests: Counter::default(),
            reroutes: Family::default(),
            handoffs: Family::default(),
            aggregates_published: Counter::default(),
            telemetry: Counter::default(),
            mqtt_reconnects: Counter::default(),
            mqtt_takeovers: Counter::default(),
            station_reservations: Family::default(),
            station_reservation_events: Family::default(),
            revisions: Family::default(),
        }
    }

    /// A registry exposing these metrics under the `fog_` prefix.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("fog");
        r.register(
            "requests",
            "Charge requests answered, by status",
            self.requests.clone(),
        );
        r.register(
            "station_reservations",
            "Reservation messages sent to stations that take reservations, by action",
            self.station_reservations.clone(),
        );
        r.register(
            "station_reservation_events",
            "Reservation events from stations that take reservations, by event",
            self.station_reservation_events.clone(),
        );
        r.register(
            "revisions",
            "Revised answers sent after a re-plan, by what changed",
            self.revisions.clone(),
        );
        r.register(
            "planning_seconds",
            "Time to plan one charge request",
            self.planning_seconds.clone(),
        );
        r.register(
            "reservations_active",
            "Reservations currently held",
            self.reservations_active.clone(),
        );
        r.register(
            "reservations_ended",
            "Reservations ended, by how",
            self.reservations_ended.clone(),
        );
        r.register("stations", "Known stations by state", self.stations.clone());
        r.register(
            "reroutes",
            "Reroutes through central, by outcome",
            self.reroutes.clone(),
        );
        r.register(
            "handoffs",
            "Handoffs from other regions, by outcome",
            self.handoffs.clone(),
        );
        r.register(
            "aggregates_published",
            "Aggregates published for central",
            self.aggregates_published.clone(),
        );
        r.register(
            "invalid_messages",
            "Messages refused as invalid, by kind",
            self.invalid_messages.clone(),
        );
        r.register(
            "duplicate_requests",
            "Repeated request ids answered from memory",
            self.duplicate_requests.clone(),
        );
        r.register(
            "telemetry",
            "Telemetry messages received",
            self.telemetry.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "Reconnections to the regional broker",
            self.mqtt_reconnects.clone(),
        );
        r.register(
            "mqtt_takeovers",
            "Connections to the regional broker taken over by another client with the same client id (a second instance)",
            self.mqtt_takeovers.clone(),
        );
        r
    }

    pub fn invalid(&self, kind: &'static str) {
        self.invalid_messages
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// Applies a change the region reported.
    pub fn apply(&self, update: &Update) {
        let kind = |kind| KindLabel { kind };
        match *update {
            Update::Invalid(k) => self.invalid(k),
            Update::Telemetry => {
                self.telemetry.inc();
            }
            Update::DuplicateRequest => {
                self.duplicate_requests.inc();
            }
            Update::Answered(status) => {
                self.requests.get_or_create(&StatusLabel { status }).inc();
            }
            Update::ReservationsActive(n) => {
                self.reservations_active.set(n as i64);
            }
            Update::Ended(k, n) => {
                self.reservations_ended
                    .get_or_create(&kind(k))
                    .inc_by(n as u64);
            }
            Update::Stations(state, n) => {
                self.stations
                    .get_or_create(&StateLabel { state })
                    .set(n as i64);
            }
            Update::Reroute(k) => {
                self.reroutes.get_or_create(&kind(k)).inc();
            }
            Update::Handoff(k) => {
                self.handoffs.get_or_create(&kind(k)).inc();
            }
            Update::StationReservation(k) => {
                self.station_reservations.get_or_create(&kind(k)).inc();
            }
            Update::Revision(k) => {
                self.revisions.get_or_create(&kind(k)).inc();
            }
            Update::StationReservationEvent(k) => {
                self.station_reservation_events
                    .get_or_create(&kind(k))
                    .inc();
            }
        }
    }
}

/// A change to the metrics, as the region reports it in its effects (it keeps no
/// registry itself): counters count up, gauges are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A message refused, by kind.
    Invalid(&'static str),
    Telemetry,
    DuplicateRequest,
    /// A recommendation sent, by status.
    Answered(&'static str),
    /// Reservations active now.
    ReservationsActive(usize),
    /// Reservations ended, by how, and how many.
    Ended(&'static str, usize),
    /// Stations in a state now.
    Stations(&'static str, usize),
    /// A reroute step, by kind.
    Reroute(&'static str),
    /// A handoff accepted or refused.
    Handoff(&'static str),
    /// A message to a station that takes reservations, by action.
    StationReservation(&'static str),
    /// A station's word on one of its reservations, by event.
    StationReservationEvent(&'static str),
    /// A revised answer after a re-plan, by what changed.
    Revision(&'static str),
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
