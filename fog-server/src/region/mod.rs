//! The region's state and what each incoming message does to it: a pure state machine.
//! A checked message ([`Incoming`]) and the time come in; what to do comes back as
//! [`Effects`] (journal records to write, metric changes, then messages to publish).
//! Nothing here touches the network, the disk, the metrics registry or a clock: the
//! time is always passed in, on the server's (possibly scaled) clock, so every timeout
//! can be tested by passing a later time.
//!
//! By job:
//! - this file: the [`Region`] itself, the dispatch of each message, the periodic
//!   [`Region::tick`], and the journal records of the reservations made and ended;
//! - [`requests`]: a vehicle's charge request, from memory (redeliveries) to answer;
//! - [`reroute`]: the origin side of a reroute: central's heartbeat, asking central
//!   for a saturated request, and central's reply;
//! - [`handoff`]: the target side: central asks this region to take a vehicle;
//! - [`stations`]: station statuses, and putting back journaled reservations;
//! - [`station_reservations`]: stations that take reservations themselves (OCPP);
//! - [`gateways`]: OCPP gateways' presence (a dead gateway's stations are offline);
//! - [`aggregate`]: the region's summary for central, and when it goes out
//!   ([`AggregateSchedule`]);
//! - [`views`]: what the HTTP API and the gauges show.

use std::collections::{HashMap, VecDeque};

use protocol::fog::{CentralHeartbeat, HandoffReply};
use protocol::{Incoming, IncomingError, IncomingKind, Recommendation, Refused};
use tracing::{debug, warn};

use crate::metrics::Update;
use crate::planner::{Planner, PlannerParams, ReservationChange};
use crate::store::{Record, Restored, Saved};

mod aggregate;
mod gateways;
mod handoff;
mod replan;
mod requests;
mod reroute;
mod station_reservations;
mod stations;
mod views;

pub use aggregate::{AggregateDue, AggregateSchedule};
pub use reroute::{CentralView, RerouteSettings};
pub use views::StationView;

use requests::VehicleMemory;
use reroute::{NoRegionHint, PendingReroute};

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What handling a message (or a tick) asks the I/O shell to do, in this order: write
/// `journal` to the reservation journal, apply `metrics`, and only then publish
/// `publish` (so that no answer is ever out whose reservation a crash could forget,
/// and the metrics count an answer by the time it arrives).
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Reservations made and ended, for the journal (empty without one).
    pub journal: Vec<Record>,
    /// Messages to publish, in order: answers first, then messages to stations.
    pub publish: Vec<Outgoing>,
    /// Changes to the metrics.
    pub metrics: Vec<Update>,
    /// The message was a request answered at once (not asked of central): what the
    /// planning-time histogram measures.
    pub planned: bool,
}

impl Effects {
    fn send(&mut self, out: Outgoing) {
        self.publish.push(out);
    }
}

/// Everything a fog server knows about its region.
#[derive(Debug)]
pub struct Region {
    pub name: String,
    pub planner: Planner,
    vehicles: HashMap<String, VehicleMemory>,
    /// Metric changes since the last effects were handed out.
    updates: Vec<Update>,
    next_reservation: u64,
    /// Random per process start, so reservation ids differ across restarts.
    id_salt: u32,
    pub reroute: RerouteSettings,
    /// Reroutes waiting for central, by reroute id.
    pending: HashMap<String, PendingReroute>,
    /// Handoff replies already sent, by handoff id (with when), for redeliveries.
    handoffs: HashMap<String, (HandoffReply, u64)>,
    /// The region's outline, for aggregates.
    pub outline: Vec<[f64; 2]>,
    aggregate_seq: u64,
    saturated_requests: u64,
    /// Requests answered since start (any status), for the aggregates.
    answered: u64,
    /// Something an aggregate shows changed since the last one.
    dirty: bool,
    /// Whether reservations are journaled (see [`Region::restore_journal`]).
    journal: bool,
    /// Answers given since the last [`Region::sync`], with their request ids: what the
    /// journal and the stations are told about the reservations just made.
    just_answered: Vec<(String, Recommendation)>,
    /// Handoffs taken since the last [`Region::sync`], by reservation id.
    just_handed: Vec<(String, station_reservations::HandedOff)>,
    /// Reservations read back at start whose station is not known yet, by station id.
    restoring: HashMap<String, Vec<Saved>>,
    /// Answers to publish at the next tick (requests superseded while with central).
    deferred: Vec<Outgoing>,
    /// Central's last heartbeat and when it came (clock ms).
    central: Option<(u64, CentralHeartbeat)>,
    /// Central's recent "no region within" answers (see [`NoRegionHint`]).
    hints: VecDeque<NoRegionHint>,
    /// Stations that take reservations and what they were told.
    station_reservations: station_reservations::StationReservations,
    /// OCPP gateways and their stations.
    gateways: gateways::Gateways,
    /// Vehicles other regions sent here, by the reservation they hold here (a
    /// re-plan tells them through central).
    handed: HashMap<String, station_reservations::HandedOff>,
    /// When the plans were last checked against the clock (clock ms).
    last_replan_ms: u64,
}

impl Region {
    pub fn new(name: impl Into<String>, params: PlannerParams) -> Self {
        Self {
            name: name.into(),
            planner: {
                // Changes are read only by a journal (see `restore_journal`) or for
                // stations that take reservations.
                let mut planner = Planner::new(params);
                planner.keep_changes(false);
                planner
            },
            vehicles: HashMap::new(),
            updates: Vec::new(),
            next_reservation: 0,
            id_salt: rand::random(),
            reroute: RerouteSettings::default(),
            pending: HashMap::new(),
            handoffs: HashMap::new(),
            outline: Vec::new(),
            aggregate_seq: 0,
            saturated_requests: 0,
            answered: 0,
            dirty: true,
            journal: false,
            just_answered: Vec::new(),
            just_handed: Vec::new(),
            restoring: HashMap::new(),
            deferred: Vec::new(),
            central: None,
            hints: VecDeque::new(),
            station_reservations: Default::default(),
            gateways: Default::default(),
            handed: HashMap::new(),
            last_replan_ms: 0,
        }
    }

    /// The same region with `salt` in its ids instead of a random one (the ids are
    /// `{region}-{salt:08x}{counter}`): for runs that must repeat exactly (a
    /// simulation); a server keeps the random salt, so ids differ across restarts.
    pub fn with_id_salt(mut self, salt: u32) -> Self {
        self.id_salt = salt;
        self
    }

    /// Counts a metric change (handed out with the next effects).
    fn count(&mut self, update: Update) {
        self.updates.push(update);
    }

    /// A fresh id, unique across restarts: `{region}-{kind}{salt}{counter}`, at most 64
    /// characters.
    fn next_id(&mut self, kind: &str) -> String {
        self.next_reservation += 1;
        format!(
            "{}-{kind}{:08x}{:x}",
            truncate_id(&self.name, 40 - kind.len()),
            self.id_salt,
            self.next_reservation
        )
    }

    /// Parses and handles one message received on the region's broker.
    pub fn receive(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Effects {
        self.handle(Incoming::parse(topic, payload), now_ms)
    }

    /// Handles one message received on the region's broker (parsed by
    /// [`Incoming::parse`]). A refused message is an input too: a bad request is
    /// answered `rejected`, anything else is dropped and counted.
    pub fn handle(&mut self, incoming: Result<Incoming, IncomingError>, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        match incoming {
            Ok(incoming) => self.dispatch(incoming, now_ms, &mut fx),
            Err(error) => self.refuse(error, &mut fx),
        }
        self.sync(&mut fx);
        fx.metrics = std::mem::take(&mut self.updates);
        fx
    }

    /// Whether a message on a device topic is for this region (counted if not).
    fn ours(&mut self, region: Option<&str>) -> bool {
        match region {
            Some(r) if r != self.name => {
                warn!(region = r, "message for another region ignored");
                self.count(Update::Invalid("topic"));
                false
            }
            _ => true,
        }
    }

    fn dispatch(&mut self, incoming: Incoming, now_ms: u64, fx: &mut Effects) {
        if !self.ours(incoming.region()) {
            return;
        }
        match incoming {
            Incoming::StationStatus {
                station_id, status, ..
            } => self.on_status(&station_id, status, now_ms, fx),
            Incoming::GatewayStatus {
                gateway_id, status, ..
            } => self.on_gateway_status(&gateway_id, status, now_ms, fx),
            Incoming::Request {
                vehicle_id,
                request,
                ..
            } => self.on_request(&vehicle_id, request, now_ms, fx),
            Incoming::Reservation {
                vehicle_id, update, ..
            } => self.on_reservation(&vehicle_id, &update),
            Incoming::Telemetry { .. } => self.count(Update::Telemetry),
            Incoming::StationReservationEvent {
                station_id, event, ..
            } => self.on_station_reservation_event(&station_id, &event, now_ms, fx),
            Incoming::Own { .. } => {}
            Incoming::Handoff(handoff) => self.on_handoff(&handoff, now_ms, fx),
            Incoming::RerouteReply(reply) => self.on_reroute_reply(reply, now_ms, fx),
            Incoming::Heartbeat(hb) => self.on_heartbeat(hb, now_ms),
            Incoming::RerouteRevoked(revoked) => self.on_reroute_revoked(&revoked, fx),
            Incoming::BridgeState {
                connection,
                connected,
            } => self.on_bridge_state(&connection, connected),
        }
    }

    /// A message that did not parse: a request is answered `rejected`, anything else
    /// is dropped; each is counted under its kind.
    fn refuse(&mut self, error: IncomingError, fx: &mut Effects) {
        if !self.ours(error.region()) {
            return;
        }
        let refused = match error {
            IncomingError::Payload(refused) => *refused,
            IncomingError::FogTopic { topic } => {
                warn!(topic, "unexpected message on a fog topic dropped");
                self.count(Update::Invalid("fog"));
                return;
            }
            IncomingError::Topic(error) => {
                warn!(error = %error, "message on a malformed topic dropped");
                self.count(Update::Invalid("topic"));
                return;
            }
        };
        let Refused {
            kind,
            id,
            request_id,
            error,
            ..
        } = refused;
        let label = invalid_label(kind);
        match kind {
            IncomingKind::Request => {
                warn!(vehicle = %id, error = %error, "charge request rejected");
                self.count(Update::Invalid(label));
                self.reject(&id, request_id, &error, fx);
            }
            IncomingKind::Telemetry => {
                debug!(vehicle = %id, error = %error, "telemetry refused");
                self.count(Update::Invalid(label));
            }
            _ => {
                warn!(kind = label, id = %id, error = %error, "message refused");
                self.count(Update::Invalid(label));
            }
        }
    }

    /// Ends reservations whose time is up, answers reroutes central did not answer in
    /// time, and forgets idle vehicles. Call periodically; carry out what it returns.
    pub fn tick(&mut self, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        self.restoring.retain(|_, entries| {
            entries.retain(|s| s.reservation.expires_ms > now_ms);
            !entries.is_empty()
        });
        fx.publish.append(&mut self.deferred);
        self.expire_reroutes(now_ms, &mut fx);
        self.expire_handoffs(now_ms);
        let expired = self.planner.expire(now_ms);
        for r in &expired {
            tracing::info!(vehicle = %r.vehicle_id, reservation = %r.reservation_id, station = %r.station_id, "reservation expired");
        }
        self.count_ended("expired", expired.len());
        if !expired.is_empty() {
            self.dirty = true;
        }
        self.forget_idle_vehicles(now_ms);
        if now_ms.saturating_sub(self.last_replan_ms) >= replan::REPLAN_EVERY_MS {
            self.last_replan_ms = now_ms;
            self.replan_all(now_ms, &mut fx);
        }
        self.set_reservations_gauge();
        self.sync(&mut fx);
        fx.metrics = std::mem::take(&mut self.updates);
        fx
    }

    /// Keeps reservations in a journal from now on (the records come out in each
    /// [`Effects`]), and puts back those it held (each as soon as its station is known
    /// again).
    pub fn restore_journal(&mut self, restored: Restored, now_ms: u64) {
        self.journal = true;
        self.planner.keep_changes(true);
        self.restore(restored, now_ms);
    }

    /// The reservations made and ended since the last call: journal records, and
    /// messages for the stations that take reservations. Built from the planner's
    /// change log and the answers just given (no search).
    fn sync(&mut self, fx: &mut Effects) {
        let answered = std::mem::take(&mut self.just_answered);
        let handed = std::mem::take(&mut self.just_handed);
        let mut changes = self.planner.take_changes();
        if changes.is_empty() {
            return;
        }
        // Reservations that ended together (e.g. expired in one sweep) in id order, not
        // in the order a hash map gave them: the same inputs, the same messages.
        for run in changes.chunk_by_mut(|a, b| {
            matches!(
                (a, b),
                (ReservationChange::Ended(_), ReservationChange::Ended(_))
            )
        }) {
            run.sort_by(|a, b| match (a, b) {
                (ReservationChange::Ended(a), ReservationChange::Ended(b)) => a.cmp(b),
                _ => std::cmp::Ordering::Equal,
            });
        }
        let answer_of = |reservation_id: &str| {
            answered
                .iter()
                .rev()
                .find(|(_, a)| a.reservation_id.as_deref() == Some(reservation_id))
        };
        self.tell_stations(
            &changes,
            |id| answer_of(id).map(|(r, _)| r.clone()),
            &handed,
            fx,
        );
        if !self.journal {
            return;
        }
        for change in changes {
            fx.journal.push(match change {
                ReservationChange::Made(reservation) => {
                    let answer = answer_of(&reservation.reservation_id);
                    Record::Made(Box::new(Saved {
                        request_id: answer.map(|(id, _)| id.clone()),
                        answer: answer.map(|(_, a)| a.clone()),
                        reservation,
                    }))
                }
                ReservationChange::Updated(reservation) => {
                    let answer = self.answer_holding(&reservation.reservation_id);
                    Record::Made(Box::new(Saved {
                        request_id: answer.as_ref().map(|(id, _)| id.clone()),
                        answer: answer.map(|(_, a)| a),
                        reservation,
                    }))
                }
                ReservationChange::Ended(id) => Record::Ended { id },
            });
        }
    }
}

/// The `invalid_messages` label of a refused payload.
fn invalid_label(kind: IncomingKind) -> &'static str {
    match kind {
        IncomingKind::StationStatus => "status",
        IncomingKind::GatewayStatus => "gateway",
        IncomingKind::Request => "request",
        IncomingKind::Reservation => "reservation",
        IncomingKind::Telemetry => "telemetry",
        IncomingKind::StationReservationEvent => "station-reservation",
        IncomingKind::Handoff => "handoff",
        IncomingKind::RerouteReply => "reroute-reply",
        IncomingKind::Heartbeat => "heartbeat",
        IncomingKind::RerouteRevoked => "reroute-revoked",
    }
}

fn truncate_id(s: &str, max: usize) -> &str {
    &s[..s.len().min(max)]
}
