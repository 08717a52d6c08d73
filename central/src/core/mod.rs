//! Central's decisions as one pure state machine, [`CentralCore`]: the messages central
//! receives and the time come in, the messages to publish come back. Nothing here
//! touches the network, a clock, a channel, the metrics registry or the dashboard:
//! time is always passed in as milliseconds on the shared clock (the fogs' clock,
//! `--clock-speed` times faster than real time in a simulation), so every timeout can
//! be tested by passing a later time, and a simulator can run central in-process on
//! simulated time.
//!
//! - **In:** [`CentralCore::receive`] — a message from `regions/+/up/#` (aggregates,
//!   station lists, reroute requests, handoff replies, revoked handoffs) at `now_ms`;
//!   [`CentralCore::tick`] — the timers (handoff timeouts, heartbeats, forgetting old
//!   reroute ids), safe to call as often as one likes;
//!   [`CentralCore::next_wake_ms`] says when `tick` next has something to do;
//!   [`CentralCore::shutdown`] answers the running reroutes before central stops.
//! - **Out:** the [`Outgoing`] messages to publish, in order, on `regions/{r}/down/…`;
//!   [`Event`]s for the metrics and the dashboard's live arrows
//!   ([`CentralCore::take_events`]); and, to read at any time, the regions
//!   ([`CentralCore::regions`]), cumulative [`Counters`] and what only the dashboard
//!   shows ([`Board`]).
//!
//! Real-time settings (the stale limit, the handoff timeout, the heartbeat period) are
//! turned into clock milliseconds with the clock speed of [`CoreSettings`], so a fog at
//! any speed sees the same real limits. Handoff ids are made here, from the start time
//! and a counter (`h-{started_ms:x}-{n}`): the same inputs give the same outputs.
//!
//! By job:
//! - this file: settings, the dispatch of each message, aggregates, station lists,
//!   revoked handoffs, events and counters;
//! - `reroute`: one reroute from request to reply, its handoffs,
//!   their timeouts and the deadline (the rule: [`crate::reroute`]);
//! - `heartbeat`: central's heartbeat to every region, with the
//!   open regions and the neighbours' stations it offers;
//! - `board`: what only the dashboard shows.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cost_model::CostParams;
use protocol::ProtocolError;
use protocol::fog::{self, Aggregate, FogMessage, Revoked};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::regions::{Ingest, Regions};

mod board;
mod heartbeat;
mod reroute;
#[cfg(test)]
mod tests;

pub use board::{Board, RECENT_REROUTES, RerouteEvent, StationList};

/// What central's [`Config`](crate::Config) gives the core ([`crate::Config::core_settings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CoreSettings {
    /// The cost model (the fogs' own); its `max_wait_s` is the wait limit of a region
    /// whose aggregate states none (`--max-wait-s`).
    pub model: CostParams,
    /// A region is stale when its latest aggregate is older than this, real time
    /// (`--stale-after-ms`).
    pub stale_after: Duration,
    /// How long to wait for a handoff reply before asking the next candidate, real
    /// time (`--handoff-timeout-ms`).
    pub handoff_timeout: Duration,
    /// How often the heartbeat goes to every region, real time (`--heartbeat-ms`).
    pub heartbeat_period: Duration,
    /// Clock milliseconds per real millisecond (`--clock-speed`); a value that is not
    /// a positive number means 1.
    pub clock_speed: f64,
    /// The heartbeat offers other regions' stations this close to the receiving
    /// region's outline, km (`--offer-radius-km`).
    pub offer_radius_km: f64,
    /// At most this many offers per heartbeat (`--offer-limit`).
    pub offer_limit: usize,
}

impl Default for CoreSettings {
    /// Central's command-line defaults.
    fn default() -> Self {
        Self {
            model: CostParams::default(),
            stale_after: Duration::from_millis(6000),
            handoff_timeout: Duration::from_millis(1000),
            heartbeat_period: Duration::from_millis(1000),
            clock_speed: 1.0,
            offer_radius_km: 15.0,
            offer_limit: 16,
        }
    }
}

impl CoreSettings {
    /// The clock speed, 1 when the setting is not a positive number.
    pub fn speed(&self) -> f64 {
        if self.clock_speed.is_finite() && self.clock_speed > 0.0 {
            self.clock_speed
        } else {
            1.0
        }
    }

    /// How many clock milliseconds `real` takes (rounded up).
    pub fn clock_ms(&self, real: Duration) -> u64 {
        // From whole nanoseconds, so that whole milliseconds at a whole speed stay exact.
        (real.as_nanos() as f64 * self.speed() / 1e6).ceil() as u64
    }

    /// How much real time `clock_ms` clock milliseconds take (to the nanosecond below).
    pub fn real(&self, clock_ms: u64) -> Duration {
        Duration::from_nanos((clock_ms as f64 * 1e6 / self.speed()) as u64)
    }
}

/// A message to publish on the central broker (topics `regions/{region}/down/…`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Outgoing {
    fn down(kind: FogMessage, region: &str, payload: Vec<u8>) -> Self {
        Self {
            topic: kind.central_topic(region),
            payload,
            retain: false,
        }
    }

    /// The QoS to publish it with: 0 for heartbeats (only a live central's count, see
    /// `docs/fog-central.md`), 1 for everything else.
    pub fn qos(&self) -> i32 {
        match FogMessage::parse_central(&self.topic) {
            Ok((_, FogMessage::Heartbeat)) => 0,
            _ => 1,
        }
    }
}

/// Something that happened, for the metrics and the dashboard: drained with
/// [`CentralCore::take_events`] after each call. Every event is also counted in
/// [`Counters`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message refused, by kind (`topic`, `aggregate`, `stations`, `reroute`,
    /// `handoff_reply`, `handoff_revoked`).
    Invalid(&'static str),
    /// An aggregate accepted (new, newer, or a fog restart).
    AggregateAccepted,
    /// An aggregate ignored as a duplicate or out of order.
    AggregateIgnored,
    /// A distinct reroute request (a new reroute started).
    RerouteRequested,
    /// A repeated reroute id: no second reroute.
    RerouteDuplicate,
    /// An invalid reroute request answered with `ok = false`.
    RerouteInvalid,
    /// A handoff ended, by outcome: `accepted`, `refused`, `timeout`, or `revoked`
    /// (the target could not keep the reservation; passed on to the origin).
    Handoff(&'static str),
    /// A reply to a waiting handoff came, this long after the handoff went out.
    HandoffReplied { latency_ms: u64 },
    /// A handoff reply for no waiting handoff (late, after its timeout, or unknown).
    HandoffReplyUnmatched,
    /// A reroute was answered.
    RerouteAnswered(Box<Answered>),
}

/// A reroute's answer, as [`Event::RerouteAnswered`] tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub origin: String,
    pub reroute_id: String,
    pub vehicle_id: String,
    /// `None` when a region took the vehicle; else why not: `no_region`, `refused`,
    /// `timeout`, `deadline` or `shutdown`.
    pub failure: Option<&'static str>,
    /// The regions asked, in order.
    pub tried: Vec<String>,
    /// From the request to the reply, clock milliseconds.
    pub latency_ms: u64,
    /// Where the vehicle was sent, when it was (the dashboard's arrow).
    pub moved: Option<RerouteEvent>,
}

/// Everything counted since the core started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub aggregates: u64,
    pub aggregates_ignored: u64,
    /// Messages refused, by kind.
    pub invalid: BTreeMap<&'static str, u64>,
    pub reroutes_requested: u64,
    pub reroutes_duplicate: u64,
    pub reroutes_succeeded: u64,
    /// Reroutes that found no region, by reason (`invalid`, `no_region`, `refused`,
    /// `timeout`, `deadline`, `shutdown`).
    pub reroutes_failed: BTreeMap<&'static str, u64>,
    /// Handoffs by outcome (`accepted`, `refused`, `timeout`, `revoked`).
    pub handoffs: BTreeMap<&'static str, u64>,
    pub handoff_replies_unmatched: u64,
    /// Heartbeat rounds sent (each to every known region).
    pub heartbeats: u64,
    /// Events dropped because nobody took them ([`MAX_EVENTS`]).
    pub events_dropped: u64,
}

impl Counters {
    /// Reroutes that found no region, whatever the reason.
    pub fn reroutes_failed_total(&self) -> u64 {
        self.reroutes_failed.values().sum()
    }

    fn count(&mut self, event: &Event) {
        match event {
            Event::Invalid(kind) => *self.invalid.entry(kind).or_default() += 1,
            Event::AggregateAccepted => self.aggregates += 1,
            Event::AggregateIgnored => self.aggregates_ignored += 1,
            Event::RerouteRequested => self.reroutes_requested += 1,
            Event::RerouteDuplicate => self.reroutes_duplicate += 1,
            Event::RerouteInvalid => *self.reroutes_failed.entry("invalid").or_default() += 1,
            Event::Handoff(outcome) => *self.handoffs.entry(outcome).or_default() += 1,
            Event::HandoffReplied { .. } => {}
            Event::HandoffReplyUnmatched => self.handoff_replies_unmatched += 1,
            Event::RerouteAnswered(a) => match a.failure {
                None => self.reroutes_succeeded += 1,
                Some(reason) => *self.reroutes_failed.entry(reason).or_default() += 1,
            },
        }
    }
}

/// Events kept for [`CentralCore::take_events`] at most; the oldest go first (and are
/// counted in [`Counters::events_dropped`]) when a caller never takes them.
pub const MAX_EVENTS: usize = 65_536;

/// Central's state and decisions (see the module docs).
#[derive(Debug)]
pub struct CentralCore {
    settings: CoreSettings,
    started_ms: u64,
    /// The latest time passed in.
    now_ms: u64,
    regions: Regions,
    board: Board,
    reroutes: reroute::Reroutes,
    heartbeats: heartbeat::Heartbeats,
    counters: Counters,
    events: VecDeque<Event>,
}

impl CentralCore {
    /// A core that started at `started_ms` on the shared clock (the heartbeat's
    /// `started_ms`; a new value tells the fogs central restarted).
    pub fn new(settings: CoreSettings, started_ms: u64) -> Self {
        let regions = Regions::new(
            settings.stale_after,
            settings.model.max_wait_s,
            settings.speed(),
        );
        let memory_ttl_ms = settings.clock_ms(crate::reroute::MEMORY_TTL);
        Self {
            regions,
            board: Board::default(),
            reroutes: reroute::Reroutes::new(memory_ttl_ms),
            heartbeats: heartbeat::Heartbeats::new(started_ms),
            counters: Counters::default(),
            events: VecDeque::new(),
            started_ms,
            now_ms: started_ms,
            settings,
        }
    }

    /// A message received on the central broker (e.g. `regions/north/up/aggregate`,
    /// `regions/north/up/reroute`, `…/handoff-reply`, `…/handoff-revoked`), at
    /// `now_ms` on the shared clock. Returns what to publish, in order.
    pub fn receive(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Vec<Outgoing> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        let (region, kind) = match FogMessage::parse_central(topic) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.emit(Event::Invalid("topic"));
                warn!(topic, error = %e, "message on an unknown topic");
                return out;
            }
        };
        match kind {
            FogMessage::Aggregate => {
                if self.on_aggregate(region, payload, now_ms) {
                    // The open regions may have changed: tell the regions at once.
                    self.heartbeat_if_changed(now_ms, &mut out);
                }
            }
            FogMessage::Stations => self.on_stations(region, payload, now_ms),
            FogMessage::Reroute => self.on_reroute(region, payload, now_ms, &mut out),
            FogMessage::HandoffReply => self.on_handoff_reply(region, payload, now_ms, &mut out),
            FogMessage::HandoffRevoked => self.on_handoff_revoked(region, payload, &mut out),
            // parse_central refuses down-direction messages on up topics.
            FogMessage::Handoff
            | FogMessage::RerouteReply
            | FogMessage::Heartbeat
            | FogMessage::RerouteRevoked => self.emit(Event::Invalid("topic")),
        }
        out
    }

    /// Timers: handoff timeouts (ask the next candidate or answer the origin),
    /// heartbeats when due (and at once when the open regions changed, e.g. a region
    /// went stale), forgetting old reroute ids. Safe to call often.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outgoing> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        self.handoff_timeouts(now_ms, &mut out);
        self.heartbeat_tick(now_ms, &mut out);
        self.reroutes.forget_old(now_ms);
        out
    }

    /// The earliest time `tick` has something to do, if any (so a simulator can step
    /// to it): a handoff's timeout, the next heartbeat (only while a region is known),
    /// the moment an open region goes stale. Forgetting old reroute ids needs no wake.
    pub fn next_wake_ms(&self) -> Option<u64> {
        [self.reroutes.next_timeout_ms(), self.heartbeat_wake_ms()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Answers every running reroute "central is shutting down" (central is about to
    /// stop; nobody would hear their handoff replies).
    pub fn shutdown(&mut self, now_ms: u64) -> Vec<Outgoing> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        self.answer_all_shutting_down(now_ms, &mut out);
        out
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    /// When this core started, on the shared clock.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The latest aggregate of every region (views, staleness, estimates).
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// What only the dashboard shows: station lists, request rates, recent reroutes.
    pub fn board(&self) -> &Board {
        &self.board
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Reroutes waiting for a handoff reply now.
    pub fn reroutes_running(&self) -> usize {
        self.reroutes.running()
    }

    /// Whole real milliseconds between `since_ms` and `now_ms` on the clock.
    pub fn real_ms_between(&self, since_ms: u64, now_ms: u64) -> u64 {
        crate::regions::real_ms(now_ms.saturating_sub(since_ms), self.settings.speed())
    }

    fn emit(&mut self, event: Event) {
        self.counters.count(&event);
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.counters.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Takes an aggregate (or, empty, a region's withdrawal). True when the regions
    /// changed.
    fn on_aggregate(&mut self, region: &str, payload: &[u8], now_ms: u64) -> bool {
        if payload.is_empty() {
            // The retained aggregate was cleared: the region is gone.
            self.board.remove(region);
            let known = self.regions.remove(region);
            if known {
                info!(region, "region withdrawn (retained aggregate cleared)");
            }
            return known;
        }
        let aggregate = match protocol::decode::<Aggregate>(payload)
            .and_then(|a| matches_topic("region", &a.region, region).map(|()| a))
        {
            Ok(a) => a,
            Err(e) => {
                self.emit(Event::Invalid("aggregate"));
                warn!(region, error = %e, "invalid aggregate");
                return false;
            }
        };
        let (seq, requests_total) = (aggregate.seq, aggregate.requests_total);
        match self.regions.ingest(aggregate, now_ms) {
            Ingest::Ignored { held_seq } => {
                self.emit(Event::AggregateIgnored);
                debug!(
                    region,
                    seq, held_seq, "aggregate ignored (duplicate or out of order)"
                );
                return false;
            }
            Ingest::New => info!(region, seq, "first aggregate from region"),
            Ingest::Restarted => info!(region, seq, "region's fog server restarted"),
            Ingest::Updated => {}
        }
        self.emit(Event::AggregateAccepted);
        let speed = self.settings.speed();
        self.board
            .on_requests_total(region, requests_total, now_ms, speed);
        true
    }

    /// A region's station list, for the dashboard.
    fn on_stations(&mut self, region: &str, payload: &[u8], now_ms: u64) {
        if payload.is_empty() {
            return;
        }
        match fog::Stations::decode(payload)
            .and_then(|s| matches_topic("region", &s.region, region).map(|()| s))
        {
            Ok(list) => self.board.on_stations(region, list.stations, now_ms),
            Err(e) => {
                self.emit(Event::Invalid("stations"));
                warn!(region, error = %e, "invalid station list");
            }
        }
    }

    /// A target region could not keep a handed-off vehicle's reservation (its station
    /// refused it): passed on to the origin, which answered the vehicle.
    fn on_handoff_revoked(&mut self, region: &str, payload: &[u8], out: &mut Vec<Outgoing>) {
        let revoked = match protocol::decode::<Revoked>(payload)
            .and_then(|r| matches_topic("region", &r.region, region).map(|()| r))
        {
            Ok(r) => r,
            Err(e) => {
                self.emit(Event::Invalid("handoff_revoked"));
                warn!(region, error = %e, "invalid handoff revocation");
                return;
            }
        };
        self.emit(Event::Handoff("revoked"));
        info!(region, origin = %revoked.origin_region, vehicle = %revoked.vehicle_id,
            reservation = %revoked.reservation_id, "handoff revoked: telling the origin");
        out.push(Outgoing::down(
            FogMessage::RerouteRevoked,
            &revoked.origin_region,
            protocol::encode(&revoked),
        ));
    }
}

fn matches_topic(field: &'static str, payload: &str, topic: &str) -> Result<(), ProtocolError> {
    if payload == topic {
        Ok(())
    } else {
        Err(ProtocolError::TopicMismatch {
            field,
            payload: payload.to_owned(),
            topic: topic.to_owned(),
        })
    }
}
