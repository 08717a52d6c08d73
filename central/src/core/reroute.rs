//! One reroute from request to reply, as steps of the core: rank the candidates, send
//! a handoff to the best, and on its reply (or its timeout, at `tick`) answer the origin
//! or ask the next; the deadline cuts the wait. The rule itself is documented in
//! [`crate::reroute`].
//!
//! A running reroute always waits for exactly one handoff, so running reroutes are
//! kept by the id of that handoff; a timer per handoff (`(expires_ms, handoff_id)`,
//! sorted) says which timeout comes next.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use protocol::fog::{FogMessage, Handoff, HandoffReply, RerouteReply, RerouteRequest};
use protocol::{PROTOCOL_VERSION, ProtocolError, RecommendationStatus};
use tracing::{debug, info, warn};

use super::{Answered, CentralCore, Event, Outgoing, RerouteEvent, matches_topic};
use crate::regions::Vehicle;
use crate::reroute::{
    Candidate, HINT_HOLD, MIN_ATTEMPT, Memory, NoCandidate, REPLY_MARGIN, Seen, candidates,
    open_station_distance_km,
};

/// The running reroutes, their handoffs' timers and the reroute ids seen lately.
#[derive(Debug)]
pub(super) struct Reroutes {
    /// Running reroutes, by the id of the handoff each waits for.
    waiting: HashMap<String, Waiting>,
    /// `(expires_ms, handoff_id)` of every waiting handoff.
    timers: BTreeSet<(u64, String)>,
    memory: Memory,
    /// Handoffs sent so far: the last part of the next handoff id.
    sent: u64,
}

/// One reroute between its handoffs.
#[derive(Debug)]
struct Conversation {
    origin: String,
    request: RerouteRequest,
    /// When the request came (clock ms): the reroute's latency is measured from here.
    received_ms: u64,
    /// The candidates not asked yet, best first.
    left: VecDeque<Candidate>,
    tally: Tally,
}

/// What the handoffs of one reroute came to so far.
#[derive(Debug, Default)]
struct Tally {
    /// The regions asked, in order.
    tried: Vec<String>,
    failures: Vec<String>,
    refused: usize,
    timed_out: usize,
    deadline: bool,
}

/// A reroute waiting for its handoff's reply.
#[derive(Debug)]
struct Waiting {
    conversation: Conversation,
    /// The region asked.
    region: String,
    sent_ms: u64,
    expires_ms: u64,
    /// How long it waits, real time.
    wait: Duration,
    /// The wait was cut short by the request's deadline.
    cut: bool,
}

impl Reroutes {
    pub(super) fn new(memory_ttl_ms: u64) -> Self {
        Self {
            waiting: HashMap::new(),
            timers: BTreeSet::new(),
            memory: Memory::new(memory_ttl_ms),
            sent: 0,
        }
    }

    pub(super) fn running(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn next_timeout_ms(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }

    pub(super) fn forget_old(&mut self, now_ms: u64) {
        self.memory.forget_old(now_ms);
    }

    fn take(&mut self, handoff_id: &str) -> Option<Waiting> {
        let w = self.waiting.remove(handoff_id)?;
        self.timers.remove(&(w.expires_ms, handoff_id.to_owned()));
        Some(w)
    }
}

/// What a handoff reply means.
enum Judged {
    Accepted(Box<RerouteReply>),
    Refused(String),
}

impl CentralCore {
    pub(super) fn on_reroute(
        &mut self,
        origin: &str,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) {
        let request = match protocol::decode::<RerouteRequest>(payload).and_then(|r| {
            matches_topic("origin_region", &r.origin_region, origin)?;
            Ok(r)
        }) {
            Ok(r) => r,
            Err(e) => {
                self.emit(Event::Invalid("reroute"));
                warn!(origin, error = %e, "invalid reroute request");
                self.reject_reroute(origin, payload, &e, out);
                return;
            }
        };
        match self
            .reroutes
            .memory
            .admit(origin, &request.reroute_id, now_ms)
        {
            Seen::New => {}
            Seen::Running => {
                self.emit(Event::RerouteDuplicate);
                debug!(origin, reroute = %request.reroute_id, "duplicate reroute request (running)");
                return;
            }
            Seen::Done(reply) => {
                self.emit(Event::RerouteDuplicate);
                debug!(origin, reroute = %request.reroute_id, "duplicate reroute request (answered again)");
                out.push(Outgoing::down(FogMessage::RerouteReply, origin, reply));
                return;
            }
        }
        self.emit(Event::RerouteRequested);
        info!(origin, reroute = %request.reroute_id, vehicle = %request.vehicle_id,
            local_best_total_s = ?request.local_best_total_s, "reroute requested");
        let vehicle = Vehicle::from(&request.request);
        let ranked = candidates(
            &self.regions,
            origin,
            &vehicle,
            &self.settings.model,
            request.local_best_total_s,
            now_ms,
        );
        let mut conversation = Conversation {
            origin: origin.to_owned(),
            request,
            received_ms: now_ms,
            left: VecDeque::new(),
            tally: Tally::default(),
        };
        match ranked {
            Ok(ranked) => {
                debug!(
                    reroute = %conversation.request.reroute_id,
                    candidates = ?ranked.iter().map(|c| (&c.region, c.estimate.total_s)).collect::<Vec<_>>(),
                    "reroute candidates"
                );
                conversation.left = ranked.into();
                self.ask_next(conversation, now_ms, out);
            }
            Err(none) => {
                let mut reply = failed(&conversation.request, none.to_string(), Vec::new());
                if !matches!(none, NoCandidate::NoneBetter { .. }) {
                    // Like vehicles need not ask again for a while: say how far the
                    // nearest region that can take vehicles is.
                    reply.no_region_within_km = Some(open_station_distance_km(
                        &self.regions,
                        origin,
                        &vehicle,
                        now_ms,
                    ));
                    reply.hold_ms = Some(HINT_HOLD.as_millis() as u64);
                }
                self.answer(conversation, reply, Some("no_region"), now_ms, out);
            }
        }
    }

    /// Answers an invalid reroute request with `ok = false`, when its `reroute_id` can
    /// be read, so that the origin need not wait for its deadline.
    fn reject_reroute(
        &mut self,
        origin: &str,
        payload: &[u8],
        error: &ProtocolError,
        out: &mut Vec<Outgoing>,
    ) {
        #[derive(serde::Deserialize)]
        struct Probe {
            reroute_id: String,
        }
        let Ok(probe) = serde_json::from_slice::<Probe>(payload) else {
            return;
        };
        if protocol::validate_id("reroute_id", &probe.reroute_id).is_err() {
            return;
        }
        self.emit(Event::RerouteInvalid);
        let reply = RerouteReply {
            v: PROTOCOL_VERSION,
            reroute_id: probe.reroute_id,
            ok: false,
            recommendation: None,
            reason: Some(format!("invalid reroute request: {error}")),
            tried: Vec::new(),
            no_region_within_km: None,
            hold_ms: None,
        };
        out.push(Outgoing::down(
            FogMessage::RerouteReply,
            origin,
            protocol::encode(&reply),
        ));
    }

    /// Asks the next candidate, or answers the origin when there is none or the
    /// deadline leaves no time for one.
    fn ask_next(&mut self, mut conversation: Conversation, now_ms: u64, out: &mut Vec<Outgoing>) {
        if conversation.left.is_empty() {
            return self.no_acceptance(conversation, now_ms, out);
        }
        let Some(wait) = self.attempt_wait(conversation.request.deadline_ms, now_ms) else {
            conversation.tally.deadline = true;
            return self.no_acceptance(conversation, now_ms, out);
        };
        let Some(candidate) = conversation.left.pop_front() else {
            return self.no_acceptance(conversation, now_ms, out);
        };
        self.reroutes.sent += 1;
        let id = format!("h-{:x}-{}", self.started_ms, self.reroutes.sent);
        let request = &conversation.request;
        let msg = Handoff {
            v: PROTOCOL_VERSION,
            handoff_id: id.clone(),
            reroute_id: request.reroute_id.clone(),
            origin_region: conversation.origin.clone(),
            vehicle_id: request.vehicle_id.clone(),
            request: request.request.clone(),
            max_total_s: request.local_best_total_s,
        };
        out.push(Outgoing::down(
            FogMessage::Handoff,
            &candidate.region,
            protocol::encode(&msg),
        ));
        debug!(reroute = %request.reroute_id, handoff = %id, target = %candidate.region,
            estimate_s = candidate.estimate.total_s, station = %candidate.station_id, "handoff sent");
        let expires_ms = now_ms + self.settings.clock_ms(wait).max(1);
        conversation.tally.tried.push(candidate.region.clone());
        self.reroutes.timers.insert((expires_ms, id.clone()));
        self.reroutes.waiting.insert(
            id,
            Waiting {
                conversation,
                region: candidate.region,
                sent_ms: now_ms,
                expires_ms,
                wait,
                cut: wait < self.settings.handoff_timeout,
            },
        );
    }

    /// How long the next handoff may wait for its reply (real time), or `None` when
    /// the deadline (on the clock) leaves no time for one.
    fn attempt_wait(&self, deadline_ms: u64, now_ms: u64) -> Option<Duration> {
        let left = self.settings.real(deadline_ms.saturating_sub(now_ms));
        let left = left.checked_sub(REPLY_MARGIN)?;
        (left >= MIN_ATTEMPT).then(|| left.min(self.settings.handoff_timeout))
    }

    pub(super) fn on_handoff_reply(
        &mut self,
        region: &str,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) {
        let reply = match protocol::decode::<HandoffReply>(payload) {
            Ok(r) => r,
            Err(e) => {
                self.emit(Event::Invalid("handoff_reply"));
                warn!(region, error = %e, "invalid handoff reply");
                return;
            }
        };
        let id = reply.handoff_id.clone();
        let Some(waiting) = self.reroutes.waiting.get(&id) else {
            self.emit(Event::HandoffReplyUnmatched);
            info!(region, handoff = %id, "handoff reply for no waiting handoff (late or unknown)");
            return;
        };
        if waiting.region != region || reply.region != region {
            let expected = waiting.region.clone();
            self.emit(Event::Invalid("handoff_reply"));
            warn!(region, handoff = %id, %expected, "handoff reply from another region than the one asked");
            return;
        }
        let Some(Waiting {
            mut conversation,
            sent_ms,
            ..
        }) = self.reroutes.take(&id)
        else {
            return;
        };
        self.emit(Event::HandoffReplied {
            latency_ms: now_ms.saturating_sub(sent_ms),
        });
        match self.judge(&conversation.request, &id, region, reply) {
            Judged::Accepted(reply) => {
                let mut reply = *reply;
                reply.tried = conversation.tally.tried.clone();
                self.answer(conversation, reply, None, now_ms, out);
            }
            Judged::Refused(why) => {
                conversation.tally.refused += 1;
                conversation
                    .tally
                    .failures
                    .push(format!("{region} refused ({why})"));
                self.ask_next(conversation, now_ms, out);
            }
        }
    }

    /// What a target's reply means: an acceptance only with a station and an
    /// `assigned` (made `rerouted`) or `rerouted` recommendation.
    fn judge(
        &mut self,
        request: &RerouteRequest,
        id: &str,
        region: &str,
        reply: HandoffReply,
    ) -> Judged {
        let recommendation = match reply.recommendation {
            Some(mut rec) if reply.accepted && rec.station.is_some() => {
                if rec.status != RecommendationStatus::Rerouted {
                    if rec.status == RecommendationStatus::Assigned {
                        rec.status = RecommendationStatus::Rerouted;
                    } else {
                        self.emit(Event::Handoff("refused"));
                        return Judged::Refused(format!(
                            "accepted with a {} recommendation",
                            rec.status.as_str()
                        ));
                    }
                }
                rec
            }
            _ if reply.accepted => {
                self.emit(Event::Handoff("refused"));
                warn!(handoff = %id, target = %region, "handoff accepted without a station; taken as a refusal");
                return Judged::Refused("accepted without a recommended station".into());
            }
            _ => {
                self.emit(Event::Handoff("refused"));
                return Judged::Refused(
                    reply.reason.unwrap_or_else(|| "no reason given".to_owned()),
                );
            }
        };
        self.emit(Event::Handoff("accepted"));
        Judged::Accepted(Box::new(RerouteReply {
            v: PROTOCOL_VERSION,
            reroute_id: request.reroute_id.clone(),
            ok: true,
            recommendation: Some(recommendation),
            reason: None,
            tried: Vec::new(),
            no_region_within_km: None,
            hold_ms: None,
        }))
    }

    /// Every handoff whose wait is over by `now_ms`: ask the next candidate, or answer
    /// the origin when the deadline cut the wait.
    pub(super) fn handoff_timeouts(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        while let Some((at, id)) = self.reroutes.timers.first().cloned() {
            if at > now_ms {
                break;
            }
            self.reroutes.timers.pop_first();
            let Some(waiting) = self.reroutes.waiting.remove(&id) else {
                continue;
            };
            let Waiting {
                mut conversation,
                region,
                wait,
                cut,
                ..
            } = waiting;
            self.emit(Event::Handoff("timeout"));
            warn!(reroute = %conversation.request.reroute_id, handoff = %id, target = %region,
                waited_ms = wait.as_millis() as u64, "handoff timed out");
            let tally = &mut conversation.tally;
            tally.timed_out += 1;
            tally.deadline |= cut;
            tally.failures.push(format!(
                "{region} did not answer within {} ms",
                wait.as_millis()
            ));
            if cut {
                self.no_acceptance(conversation, now_ms, out);
            } else {
                self.ask_next(conversation, now_ms, out);
            }
        }
    }

    /// Answers every running reroute: central is shutting down.
    pub(super) fn answer_all_shutting_down(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        let mut ids: Vec<String> = self.reroutes.waiting.keys().cloned().collect();
        ids.sort();
        for id in ids {
            if let Some(w) = self.reroutes.take(&id) {
                let conversation = w.conversation;
                let reply = failed(
                    &conversation.request,
                    "central is shutting down".into(),
                    conversation.tally.tried.clone(),
                );
                self.answer(conversation, reply, Some("shutdown"), now_ms, out);
            }
        }
    }

    /// The reply when no candidate accepted.
    fn no_acceptance(&mut self, conversation: Conversation, now_ms: u64, out: &mut Vec<Outgoing>) {
        let tally = &conversation.tally;
        let details = tally.failures.join("; ");
        let tried = tally.tried.clone();
        let (reason, label) = if tally.deadline {
            let reason = if tried.is_empty() {
                "deadline reached before any region could be asked".to_owned()
            } else {
                format!("deadline reached: {details}")
            };
            (reason, "deadline")
        } else if tally.refused == 0 {
            (format!("timed out: {details}"), "timeout")
        } else if tally.timed_out == 0 {
            (format!("all regions refused: {details}"), "refused")
        } else {
            (
                format!("all regions refused or timed out: {details}"),
                "refused",
            )
        };
        let reply = failed(&conversation.request, reason, tried);
        self.answer(conversation, reply, Some(label), now_ms, out);
    }

    /// Publishes the reply to the origin, remembers it for duplicates, and tells.
    fn answer(
        &mut self,
        conversation: Conversation,
        reply: RerouteReply,
        failure: Option<&'static str>,
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) {
        let Conversation {
            origin,
            request,
            received_ms,
            ..
        } = conversation;
        let payload = protocol::encode(&reply);
        out.push(Outgoing::down(
            FogMessage::RerouteReply,
            &origin,
            payload.clone(),
        ));
        self.reroutes
            .memory
            .finish(&origin, &request.reroute_id, payload);
        let moved = reply
            .recommendation
            .as_ref()
            .and_then(|r| r.station.as_ref())
            .filter(|_| reply.ok)
            .map(|station| RerouteEvent {
                at_ms: now_ms,
                origin_region: origin.clone(),
                target_region: station.region.clone(),
                vehicle_id: request.vehicle_id.clone(),
                station_id: station.station_id.clone(),
                from: [request.request.lat, request.request.lon],
                to: [station.lat, station.lon],
            });
        if let Some(event) = &moved {
            self.board.on_reroute(event.clone());
        }
        info!(
            reroute = %request.reroute_id,
            origin = %origin,
            vehicle = %request.vehicle_id,
            ok = reply.ok,
            tried = ?reply.tried,
            reason = reply.reason.as_deref().unwrap_or(""),
            "reroute answered"
        );
        self.emit(Event::RerouteAnswered(Box::new(Answered {
            origin,
            reroute_id: request.reroute_id,
            vehicle_id: request.vehicle_id,
            failure,
            tried: reply.tried,
            latency_ms: now_ms.saturating_sub(received_ms),
            moved,
        })));
    }
}

/// A failed reroute's reply.
fn failed(request: &RerouteRequest, reason: String, tried: Vec<String>) -> RerouteReply {
    RerouteReply {
        v: PROTOCOL_VERSION,
        reroute_id: request.reroute_id.clone(),
        ok: false,
        recommendation: None,
        reason: Some(reason),
        tried,
        no_region_within_km: None,
        hold_ms: None,
    }
}
