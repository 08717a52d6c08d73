//! The core with time passed in: every timeout is a later `now`, never a wait.

use std::collections::HashMap;

use protocol::fog::{
    Aggregate, AggregateStation, CentralHeartbeat, Handoff, HandoffReply, RerouteReply,
    RerouteRequest, Revoked,
};
use protocol::{ChargeRequest, Recommendation, RecommendationStatus, StationRef, Validate};
use serde::de::DeserializeOwned;

use super::*;

/// When the core starts (the shared clock).
const T0: u64 = 1_796_140_000_000;
const KM: f64 = 1.0 / 111.195;
const LAT0: f64 = -12.25;
const LON0: f64 = -38.95;

fn settings() -> CoreSettings {
    CoreSettings {
        handoff_timeout: Duration::from_millis(300),
        ..CoreSettings::default()
    }
}

fn station(id: &str, km_north: f64, wait_s: u32) -> AggregateStation {
    AggregateStation {
        station_id: id.into(),
        lat: LAT0 + km_north * KM,
        lon: LON0,
        chargers: 2,
        power_kw: 50.0,
        occupied: 0,
        queue: 0,
        reservations: 0,
        predicted_wait_s: wait_s,
    }
}

fn charge_request() -> ChargeRequest {
    ChargeRequest {
        v: 1,
        request_id: "r-1".into(),
        lat: LAT0,
        lon: LON0,
        soc: 0.3,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
        ts_ms: None,
    }
}

/// What a target fog answers when it takes the vehicle.
fn rerouted(region: &str) -> Recommendation {
    Recommendation {
        v: 1,
        request_id: "r-1".into(),
        status: RecommendationStatus::Rerouted,
        station: Some(StationRef {
            station_id: format!("{region}-s1"),
            region: region.into(),
            lat: LAT0 + 5.0 * KM,
            lon: LON0,
        }),
        distance_km: Some(6.5),
        eta_s: Some(585),
        wait_s: Some(0),
        charge_s: Some(2300),
        reservation_id: Some(format!("{region}-0001")),
        expires_ms: Some(T0 + 1_200_000),
        reason: None,
        served_by: Some(region.into()),
        data_age_ms: Some(10),
        revised: false,
    }
}

/// The messages of one kind in `out`, with the region of their topic.
fn sent(out: &[Outgoing], kind: FogMessage) -> Vec<(String, &[u8])> {
    out.iter()
        .filter_map(|o| {
            let (region, k) = FogMessage::parse_central(&o.topic).expect("a central topic");
            (k == kind).then(|| (region.to_owned(), o.payload.as_slice()))
        })
        .collect()
}

/// The one message of `kind` in `out`, to `region`, decoded and checked.
fn one<T: DeserializeOwned + Validate>(out: &[Outgoing], kind: FogMessage, region: &str) -> T {
    let list = sent(out, kind);
    assert_eq!(list.len(), 1, "one {kind:?} expected in {out:?}");
    assert_eq!(list[0].0, region, "{kind:?} to the wrong region");
    protocol::decode(list[0].1).expect("a valid message")
}

fn none_of(out: &[Outgoing], kind: FogMessage) {
    assert!(
        sent(out, kind).is_empty(),
        "no {kind:?} expected in {out:?}"
    );
}

/// A core, the time, and the fogs' side of the conversation.
struct World {
    core: CentralCore,
    now: u64,
    seq: HashMap<String, u64>,
}

impl World {
    fn new(settings: CoreSettings) -> Self {
        Self {
            core: CentralCore::new(settings, T0),
            now: T0,
            seq: HashMap::new(),
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    fn receive(&mut self, topic: &str, payload: &[u8]) -> Vec<Outgoing> {
        self.core.receive(topic, payload, self.now)
    }

    fn tick(&mut self) -> Vec<Outgoing> {
        self.core.tick(self.now)
    }

    fn aggregate_of(&mut self, region: &str, best: Vec<AggregateStation>) -> Aggregate {
        let seq = self.seq.entry(region.to_owned()).or_insert(0);
        *seq += 1;
        Aggregate {
            v: 1,
            region: region.into(),
            seq: *seq,
            ts_ms: self.now,
            stations: best.len() as u32,
            stations_in_service: best.len() as u32,
            chargers: 2 * best.len() as u32,
            chargers_free: 2 * best.len() as u32,
            queued: 0,
            reservations: 0,
            min_wait_s: best.iter().map(|s| s.predicted_wait_s).min(),
            max_wait_s: None,
            outline: vec![],
            best,
            saturated_requests: 0,
            requests_total: 0,
        }
    }

    fn publish_aggregate(&mut self, a: &Aggregate) -> Vec<Outgoing> {
        let topic = FogMessage::Aggregate.central_topic(&a.region);
        self.receive(&topic, &protocol::encode(a))
    }

    fn aggregate(&mut self, region: &str, best: Vec<AggregateStation>) -> Vec<Outgoing> {
        let a = self.aggregate_of(region, best);
        self.publish_aggregate(&a)
    }

    /// `a` saturated, `b` 5 km away, `c` 8 km away, `far` out of range; all but `a`
    /// free.
    fn neighbours(&mut self) {
        self.aggregate("a", vec![station("a1", 0.1, 3000)]);
        self.aggregate("b", vec![station("b1", 5.0, 0)]);
        self.aggregate("c", vec![station("c1", 8.0, 0)]);
        self.aggregate("far", vec![station("far1", 500.0, 0)]);
        self.core.take_events();
    }

    fn request(&self, id: &str, origin: &str, local_best: Option<f64>) -> RerouteRequest {
        RerouteRequest {
            v: 1,
            reroute_id: id.into(),
            origin_region: origin.into(),
            vehicle_id: "car-1".into(),
            request: charge_request(),
            local_best_total_s: local_best,
            deadline_ms: self.now + 10_000,
        }
    }

    fn send_reroute(&mut self, req: &RerouteRequest) -> Vec<Outgoing> {
        let topic = FogMessage::Reroute.central_topic(&req.origin_region);
        self.receive(&topic, &protocol::encode(req))
    }

    /// Sends a reroute and returns the handoff it starts, to `region`.
    fn reroute_to(&mut self, req: &RerouteRequest, region: &str) -> Handoff {
        let out = self.send_reroute(req);
        one(&out, FogMessage::Handoff, region)
    }

    /// Answers a handoff as the fog of `region` would.
    fn answer(&mut self, region: &str, h: &Handoff, accept: bool) -> Vec<Outgoing> {
        let reply = HandoffReply {
            v: 1,
            handoff_id: h.handoff_id.clone(),
            region: region.into(),
            accepted: accept,
            recommendation: accept.then(|| rerouted(region)),
            reason: (!accept).then(|| "no station free".to_owned()),
        };
        let topic = FogMessage::HandoffReply.central_topic(region);
        self.receive(&topic, &protocol::encode(&reply))
    }

    fn answered(&mut self) -> Vec<Answered> {
        self.core
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::RerouteAnswered(a) => Some(*a),
                _ => None,
            })
            .collect()
    }
}

fn world() -> World {
    World::new(settings())
}

// ---------------------------------------------------------------------------------
// Reroutes
// ---------------------------------------------------------------------------------

#[test]
fn a_reroute_asks_the_best_candidate_and_passes_its_acceptance_on() {
    let mut w = world();
    w.neighbours();
    let req = w.request("rr-1", "a", Some(5000.0));
    let out = w.send_reroute(&req);
    assert_eq!(out.len(), 1, "only the handoff: {out:?}");
    let h: Handoff = one(&out, FogMessage::Handoff, "b");
    assert_eq!(h.handoff_id, format!("h-{T0:x}-1"));
    assert_eq!(h.reroute_id, "rr-1");
    assert_eq!(h.origin_region, "a");
    assert_eq!(h.vehicle_id, "car-1");
    assert_eq!(h.max_total_s, Some(5000.0));
    assert_eq!(h.request, charge_request());
    assert_eq!(w.core.reroutes_running(), 1);
    assert_eq!(out[0].qos(), 1);

    w.advance(7);
    let out = w.answer("b", &h, true);
    assert_eq!(out.len(), 1, "only the reply: {out:?}");
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.reroute_id, "rr-1");
    assert_eq!(reply.tried, ["b"]);
    assert_eq!(
        reply.recommendation,
        Some(rerouted("b")),
        "passed on unchanged"
    );

    let events = w.core.take_events();
    assert!(events.contains(&Event::HandoffReplied { latency_ms: 7 }));
    assert!(events.contains(&Event::Handoff("accepted")));
    let arrow = RerouteEvent {
        at_ms: w.now,
        origin_region: "a".into(),
        target_region: "b".into(),
        vehicle_id: "car-1".into(),
        station_id: "b-s1".into(),
        from: [LAT0, LON0],
        to: [LAT0 + 5.0 * KM, LON0],
    };
    assert_eq!(
        events.last(),
        Some(&Event::RerouteAnswered(Box::new(Answered {
            origin: "a".into(),
            reroute_id: "rr-1".into(),
            vehicle_id: "car-1".into(),
            failure: None,
            tried: vec!["b".into()],
            latency_ms: 7,
            moved: Some(arrow.clone()),
        })))
    );
    let c = w.core.counters();
    assert_eq!((c.reroutes_requested, c.reroutes_succeeded), (1, 1));
    assert_eq!(c.handoffs.get("accepted"), Some(&1));
    assert_eq!(c.reroutes_failed_total(), 0);
    assert_eq!(w.core.board().reroutes().collect::<Vec<_>>(), [&arrow]);
    assert_eq!(w.core.reroutes_running(), 0);
}

#[test]
fn an_assigned_acceptance_is_made_rerouted_and_one_without_a_station_is_a_refusal() {
    let mut w = world();
    w.neighbours();
    let h = w.reroute_to(&w.request("rr-1", "a", None), "b");
    let mut rec = rerouted("b");
    rec.station = None;
    rec.status = RecommendationStatus::Unavailable;
    let reply = HandoffReply {
        v: 1,
        handoff_id: h.handoff_id.clone(),
        region: "b".into(),
        accepted: true,
        recommendation: Some(rec),
        reason: None,
    };
    let out = w.receive("regions/b/up/handoff-reply", &protocol::encode(&reply));
    let hc: Handoff = one(&out, FogMessage::Handoff, "c");
    let mut rec = rerouted("c");
    rec.status = RecommendationStatus::Assigned;
    let reply = HandoffReply {
        v: 1,
        handoff_id: hc.handoff_id.clone(),
        region: "c".into(),
        accepted: true,
        recommendation: Some(rec),
        reason: None,
    };
    let out = w.receive("regions/c/up/handoff-reply", &protocol::encode(&reply));
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert!(reply.ok);
    assert_eq!(
        reply.recommendation.unwrap().status,
        RecommendationStatus::Rerouted
    );
    assert_eq!(w.core.counters().handoffs.get("refused"), Some(&1));
}

#[test]
fn a_refusal_asks_the_next_candidate() {
    let mut w = world();
    w.neighbours();
    let hb = w.reroute_to(&w.request("rr-2", "a", None), "b");
    let out = w.answer("b", &hb, false);
    none_of(&out, FogMessage::RerouteReply);
    let hc: Handoff = one(&out, FogMessage::Handoff, "c");
    assert_eq!(
        hc.handoff_id,
        format!("h-{T0:x}-2"),
        "a fresh id per handoff"
    );
    let out = w.answer("c", &hc, true);
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert!(reply.ok);
    assert_eq!(reply.tried, ["b", "c"]);
    assert_eq!(w.core.counters().handoffs.get("refused"), Some(&1));
}

#[test]
fn a_silent_region_times_out_at_the_handoff_timeout_and_the_next_is_asked() {
    let mut w = world();
    w.neighbours();
    let sent_at = w.now;
    let hb = w.reroute_to(&w.request("rr-3", "a", None), "b");
    assert_eq!(w.core.next_wake_ms(), Some(sent_at + 300));
    w.advance(299);
    assert!(sent(&w.tick(), FogMessage::Handoff).is_empty());
    w.advance(1);
    let out = w.tick();
    let hc: Handoff = one(&out, FogMessage::Handoff, "c");
    assert_eq!(w.core.counters().handoffs.get("timeout"), Some(&1));
    assert_eq!(w.core.next_wake_ms(), Some(w.now + 300));
    let out = w.answer("c", &hc, true);
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert!(reply.ok);
    assert_eq!(reply.tried, ["b", "c"]);

    // b's late acceptance is counted and dropped: it changes nothing.
    w.core.take_events();
    w.advance(50);
    let out = w.answer("b", &hb, true);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(w.core.take_events(), [Event::HandoffReplyUnmatched]);
    assert_eq!(w.core.counters().handoff_replies_unmatched, 1);
    assert_eq!(w.core.counters().reroutes_succeeded, 1);
}

#[test]
fn when_every_region_refuses_or_is_silent_the_reply_says_so() {
    let mut w = world();
    w.neighbours();
    let hb = w.reroute_to(&w.request("rr-4", "a", None), "b");
    let out = w.answer("b", &hb, false);
    one::<Handoff>(&out, FogMessage::Handoff, "c");
    w.advance(300);
    let out = w.tick();
    none_of(&out, FogMessage::Handoff);
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert!(!reply.ok);
    assert_eq!(reply.tried, ["b", "c"]);
    let reason = reply.reason.unwrap();
    assert!(
        reason.starts_with("all regions refused or timed out"),
        "{reason}"
    );
    assert!(reason.contains("b refused (no station free)"), "{reason}");
    assert!(
        reason.contains("c did not answer within 300 ms"),
        "{reason}"
    );
    assert_eq!(w.answered()[0].failure, Some("refused"));

    // Both silent: a timeout.
    w.reroute_to(&w.request("rr-5", "a", None), "b");
    w.advance(300);
    one::<Handoff>(&w.tick(), FogMessage::Handoff, "c");
    w.advance(300);
    let reply: RerouteReply = one(&w.tick(), FogMessage::RerouteReply, "a");
    assert_eq!(
        reply.reason.as_deref(),
        Some("timed out: b did not answer within 300 ms; c did not answer within 300 ms")
    );
    assert_eq!(w.answered()[0].failure, Some("timeout"));
    assert_eq!(w.core.counters().reroutes_failed.get("timeout"), Some(&1));
}

#[test]
fn the_deadline_cuts_the_wait_and_ends_the_search() {
    let mut w = World::new(CoreSettings {
        handoff_timeout: Duration::from_secs(5),
        ..settings()
    });
    w.neighbours();
    let mut req = w.request("rr-7", "a", None);
    req.deadline_ms = w.now + 500;
    w.reroute_to(&req, "b");
    // 500 ms less the 25 ms kept for the reply, not the 5 s timeout.
    assert_eq!(w.core.next_wake_ms(), Some(w.now + 475));
    w.advance(474);
    assert!(w.tick().is_empty());
    w.advance(1);
    let out = w.tick();
    none_of(&out, FogMessage::Handoff);
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert!(!reply.ok);
    assert_eq!(reply.tried, ["b"]);
    assert_eq!(
        reply.reason.as_deref(),
        Some("deadline reached: b did not answer within 475 ms")
    );
    assert_eq!(w.answered()[0].failure, Some("deadline"));

    // Too near a deadline to ask anyone.
    let mut req = w.request("rr-8", "a", None);
    req.deadline_ms = w.now + 49;
    let out = w.send_reroute(&req);
    none_of(&out, FogMessage::Handoff);
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert_eq!(
        reply.reason.as_deref(),
        Some("deadline reached before any region could be asked")
    );
    assert!(reply.tried.is_empty());
    // A refusal with too little time left ends the search too.
    let mut req = w.request("rr-9", "a", None);
    req.deadline_ms = w.now + 100;
    let h = w.reroute_to(&req, "b");
    w.advance(60);
    let out = w.answer("b", &h, false);
    none_of(&out, FogMessage::Handoff);
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert_eq!(
        reply.reason.as_deref(),
        Some("deadline reached: b refused (no station free)")
    );
}

#[test]
fn a_duplicate_reroute_id_starts_nothing_and_a_finished_one_replays_its_first_reply() {
    let mut w = world();
    w.neighbours();
    let req = w.request("rr-8", "a", None);
    let h = w.reroute_to(&req, "b");
    assert!(w.send_reroute(&req).is_empty(), "ignored while it runs");
    assert_eq!(w.core.counters().reroutes_duplicate, 1);
    let out = w.answer("b", &h, true);
    let first = sent(&out, FogMessage::RerouteReply)[0].1.to_vec();

    w.advance(1000);
    let out = w.send_reroute(&req);
    none_of(&out, FogMessage::Handoff);
    assert_eq!(
        sent(&out, FogMessage::RerouteReply),
        [("a".into(), &first[..])]
    );
    let c = w.core.counters();
    assert_eq!((c.reroutes_requested, c.reroutes_duplicate), (1, 2));
    // The same id from another origin is another reroute.
    let mut other = req.clone();
    other.origin_region = "c".into();
    w.reroute_to(&other, "b");
    assert_eq!(w.core.counters().reroutes_requested, 2);
}

#[test]
fn reroute_ids_are_forgotten_after_their_time_at_tick() {
    let mut w = world();
    w.neighbours();
    let req = w.request("rr-1", "a", None);
    let h = w.reroute_to(&req, "b");
    w.answer("b", &h, true);
    w.advance(600_001);
    w.tick();
    // Not a replay: a new reroute (by now every region is stale).
    let reply: RerouteReply = one(&w.send_reroute(&req), FogMessage::RerouteReply, "a");
    assert!(!reply.ok);
    assert!(reply.reason.unwrap().contains("fresh data"));
    assert_eq!(w.core.counters().reroutes_requested, 2);
}

#[test]
fn a_handoff_reply_from_another_region_is_refused_and_the_handoff_still_waits() {
    let mut w = world();
    w.neighbours();
    let h = w.reroute_to(&w.request("rr-1", "a", None), "b");
    // On c's topic, and on b's topic naming c.
    assert!(w.answer("c", &h, true).is_empty());
    let reply = HandoffReply {
        v: 1,
        handoff_id: h.handoff_id.clone(),
        region: "c".into(),
        accepted: true,
        recommendation: Some(rerouted("c")),
        reason: None,
    };
    assert!(
        w.receive("regions/b/up/handoff-reply", &protocol::encode(&reply))
            .is_empty()
    );
    assert_eq!(w.core.counters().invalid.get("handoff_reply"), Some(&2));
    assert_eq!(w.core.reroutes_running(), 1);
    let reply: RerouteReply = one(&w.answer("b", &h, true), FogMessage::RerouteReply, "a");
    assert!(reply.ok);
}

#[test]
fn a_stale_region_is_not_a_candidate() {
    let mut w = World::new(CoreSettings {
        stale_after: Duration::from_millis(1000),
        ..settings()
    });
    w.aggregate("quiet", vec![station("q1", 1.0, 0)]);
    w.advance(1000);
    w.reroute_to(&w.request("rr-1", "a", None), "quiet");
    w.advance(1);
    let reply: RerouteReply = one(
        &w.send_reroute(&w.request("rr-2", "a", None)),
        FogMessage::RerouteReply,
        "a",
    );
    assert!(!reply.ok);
    assert_eq!(
        reply.reason.as_deref(),
        Some("no other region has fresh data (1 stale region(s))")
    );
    assert!(reply.tried.is_empty());
    // A new aggregate makes it fresh again.
    w.aggregate("quiet", vec![station("q1", 1.0, 0)]);
    w.reroute_to(&w.request("rr-3", "a", None), "quiet");
}

#[test]
fn no_region_in_range_answers_with_how_far_the_nearest_open_station_is() {
    let mut w = world();
    w.aggregate("a", vec![station("a1", 0.1, 3000)]);
    w.aggregate("far", vec![station("far1", 500.0, 0)]);
    let out = w.send_reroute(&w.request("rr-5", "a", None));
    none_of(&out, FogMessage::Handoff);
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert!(!reply.ok);
    assert!(reply.reason.unwrap().starts_with("no region in range"));
    let km = reply.no_region_within_km.expect("a hint");
    assert!((km - 500.0).abs() < 1.0, "{km}");
    assert_eq!(reply.hold_ms, Some(2000));
    assert_eq!(w.core.counters().reroutes_failed.get("no_region"), Some(&1));

    // None beating the local best is no reason for like vehicles to stay away.
    w.aggregate("b", vec![station("b1", 5.0, 0)]);
    let reply: RerouteReply = one(
        &w.send_reroute(&w.request("rr-6", "a", Some(1200.0))),
        FogMessage::RerouteReply,
        "a",
    );
    assert!(reply.reason.unwrap().contains("beats the local best"));
    assert_eq!((reply.no_region_within_km, reply.hold_ms), (None, None));
}

#[test]
fn an_invalid_reroute_request_is_answered_when_it_names_itself() {
    let mut w = world();
    w.neighbours();
    let mut broken = serde_json::to_value(w.request("rr-bad", "a", None)).unwrap();
    broken["request"]["soc"] = serde_json::json!(7);
    let out = w.receive(
        "regions/a/up/reroute",
        &serde_json::to_vec(&broken).unwrap(),
    );
    let reply: RerouteReply = one(&out, FogMessage::RerouteReply, "a");
    assert_eq!(reply.reroute_id, "rr-bad");
    assert!(!reply.ok);
    assert!(reply.reason.unwrap().starts_with("invalid reroute request"));
    // Another origin than its topic's, and bytes that name nothing.
    let wrong = w.request("rr-x", "b", None);
    assert_eq!(
        sent(
            &w.receive("regions/a/up/reroute", &protocol::encode(&wrong)),
            FogMessage::RerouteReply
        )
        .len(),
        1
    );
    assert!(w.receive("regions/a/up/reroute", &[0xff; 100]).is_empty());
    let c = w.core.counters();
    assert_eq!(c.invalid.get("reroute"), Some(&3));
    assert_eq!(c.reroutes_failed.get("invalid"), Some(&2));
    assert_eq!(c.reroutes_requested, 0);
}

#[test]
fn a_revoked_handoff_is_passed_on_to_the_origin() {
    let mut w = world();
    let revoked = Revoked {
        v: 1,
        reroute_id: "a-rr-1".into(),
        handoff_id: "h-1".into(),
        origin_region: "a".into(),
        region: "b".into(),
        vehicle_id: "car-1".into(),
        reservation_id: "b-77".into(),
        reason: "station CP-b could not hold reservation b-77 (Occupied)".into(),
        revised: None,
    };
    // From another region than the one that held the reservation: refused.
    let payload = protocol::encode(&revoked);
    assert!(
        w.receive("regions/c/up/handoff-revoked", &payload)
            .is_empty()
    );
    assert!(
        w.receive("regions/b/up/handoff-revoked", b"{\"v\":1}")
            .is_empty()
    );
    assert_eq!(w.core.counters().invalid.get("handoff_revoked"), Some(&2));
    let out = w.receive("regions/b/up/handoff-revoked", &payload);
    let got: Revoked = one(&out, FogMessage::RerouteRevoked, "a");
    assert_eq!(got, revoked);
    assert_eq!(w.core.counters().handoffs.get("revoked"), Some(&1));
}

#[test]
fn shutdown_answers_the_running_reroutes() {
    let mut w = world();
    w.neighbours();
    let h = w.reroute_to(&w.request("rr-1", "a", None), "b");
    let mut from_c = w.request("rr-2", "c", None);
    from_c.origin_region = "c".into();
    w.reroute_to(&from_c, "b");
    let out = w.core.shutdown(w.now + 5);
    let replies = sent(&out, FogMessage::RerouteReply);
    assert_eq!(replies.len(), 2);
    for (origin, payload) in replies {
        let reply: RerouteReply = protocol::decode(payload).unwrap();
        assert!(!reply.ok, "{origin}");
        assert_eq!(reply.reason.as_deref(), Some("central is shutting down"));
        assert_eq!(reply.tried, ["b"]);
    }
    assert_eq!(w.core.counters().reroutes_failed.get("shutdown"), Some(&2));
    assert_eq!(w.core.reroutes_running(), 0);
    assert!(w.answer("b", &h, true).is_empty());
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    fn run() -> Vec<Outgoing> {
        let mut w = world();
        let mut all = Vec::new();
        w.neighbours();
        all.extend(w.tick());
        let req = w.request("rr-1", "a", None);
        let out = w.send_reroute(&req);
        let h: Handoff = one(&out, FogMessage::Handoff, "b");
        all.extend(out);
        w.advance(300);
        all.extend(w.tick());
        w.advance(3);
        all.extend(w.answer("b", &h, true));
        w.advance(1000);
        all.extend(w.tick());
        all
    }
    let first = run();
    assert!(first.len() > 5);
    assert_eq!(first, run());
    for o in &first {
        if let Ok((_, FogMessage::Handoff)) = FogMessage::parse_central(&o.topic) {
            let h: Handoff = protocol::decode(&o.payload).unwrap();
            protocol::validate_id("handoff_id", &h.handoff_id).unwrap();
        }
    }
}

#[test]
fn on_a_faster_clock_the_real_time_limits_hold() {
    // The clock runs 10 times faster than real time.
    let mut w = World::new(CoreSettings {
        clock_speed: 10.0,
        stale_after: Duration::from_millis(1000),
        ..settings()
    });
    w.neighbours();
    let mut req = w.request("rr-1", "a", None);
    req.deadline_ms = w.now + 15_000; // 1.5 s real
    w.reroute_to(&req, "b");
    // 300 ms real = 3,000 clock ms.
    assert_eq!(w.core.next_wake_ms(), Some(w.now + 3_000));
    w.advance(2_999);
    assert!(w.tick().is_empty());
    w.advance(1);
    let h: Handoff = one(&w.tick(), FogMessage::Handoff, "c");
    w.advance(20);
    let reply: RerouteReply = one(&w.answer("c", &h, true), FogMessage::RerouteReply, "a");
    assert!(reply.ok);
    // Latency in clock ms; the failure text in real ms.
    let answered = w.answered();
    assert_eq!(answered[0].latency_ms, 3_020);
    // The regions reported at the start: 1 s real = 10,000 clock ms.
    assert!(!w.core.regions().views(T0 + 10_000)[0].stale);
    assert!(w.core.regions().views(T0 + 10_010)[0].stale);
    // A heartbeat period of 1 s real is 10,000 clock ms; it says 1000 (real).
    let hb: CentralHeartbeat = {
        let mut w = World::new(CoreSettings {
            clock_speed: 10.0,
            ..settings()
        });
        w.aggregate("b", vec![station("b1", 5.0, 0)]);
        assert_eq!(w.core.next_wake_ms(), Some(T0 + 10_000));
        w.advance(10_000);
        one(&w.tick(), FogMessage::Heartbeat, "b")
    };
    assert_eq!((hb.seq, hb.period_ms), (2, 1000));
}

// ---------------------------------------------------------------------------------
// Aggregates, station lists, bad input
// ---------------------------------------------------------------------------------

#[test]
fn aggregates_are_taken_in_order_and_bad_ones_counted() {
    let mut w = world();
    let first = w.aggregate_of("north", vec![station("n1", 1.0, 120)]);
    w.publish_aggregate(&first);
    assert_eq!(w.core.take_events(), [Event::AggregateAccepted]);
    // The same again (a retained copy): ignored.
    assert!(w.publish_aggregate(&first).is_empty());
    assert_eq!(w.core.take_events(), [Event::AggregateIgnored]);
    w.advance(42);
    let view = &w.core.regions().views(w.now)[0];
    assert_eq!((view.id.as_str(), view.data_age_ms), ("north", 42));
    assert_eq!(view.received_ms, T0);

    for (topic, payload) in [
        ("regions/north/up/aggregate", b"not json".to_vec()),
        (
            "regions/north/up/aggregate",
            protocol::encode(&w.aggregate_of("south", vec![])),
        ),
        ("regions/north/up/stations", b"{}".to_vec()),
        ("regions/north/up/nonsense", b"{}".to_vec()),
        ("regions/bad region/up/aggregate", b"{}".to_vec()),
        ("regions/north/up/heartbeat", b"{}".to_vec()),
    ] {
        assert!(w.receive(topic, &payload).is_empty(), "{topic}");
    }
    let c = w.core.counters();
    assert_eq!(c.invalid.get("aggregate"), Some(&2));
    assert_eq!(c.invalid.get("stations"), Some(&1));
    assert_eq!(c.invalid.get("topic"), Some(&3));
    assert_eq!((c.aggregates, c.aggregates_ignored), (1, 1));
}

#[test]
fn station_lists_and_request_rates_are_kept_for_the_dashboard() {
    let mut w = world();
    let mut a = w.aggregate_of("north", vec![station("n1", 1.0, 0)]);
    a.requests_total = 10;
    w.publish_aggregate(&a);
    let list = fog::Stations {
        v: 1,
        region: "north".into(),
        ts_ms: w.now,
        stations: vec![station("n1", 1.0, 0), station("n2", 2.0, 60)],
    };
    w.receive("regions/north/up/stations", &protocol::encode(&list));
    w.advance(2000);
    let mut a = w.aggregate_of("north", vec![station("n1", 1.0, 0)]);
    a.requests_total = 30;
    w.publish_aggregate(&a);
    assert_eq!(w.core.board().requests_per_s("north"), 10.0);
    let (region, held) = w.core.board().stations().next().unwrap();
    assert_eq!(
        (region, held.stations.len(), held.received_ms),
        ("north", 2, T0)
    );
    assert_eq!(w.core.real_ms_between(held.received_ms, w.now), 2000);
    // Withdrawn: the region and its list go.
    w.receive("regions/north/up/aggregate", b"");
    assert!(w.core.regions().is_empty());
    assert_eq!(w.core.board().stations().count(), 0);
}

#[test]
fn events_are_bounded_when_nobody_takes_them() {
    let mut w = world();
    for _ in 0..MAX_EVENTS + 3 {
        w.receive("nonsense", b"");
    }
    assert_eq!(w.core.counters().events_dropped, 3);
    assert_eq!(
        w.core.counters().invalid.get("topic"),
        Some(&(MAX_EVENTS as u64 + 3))
    );
    assert_eq!(w.core.take_events().len(), MAX_EVENTS);
    assert!(w.core.take_events().is_empty());
}

// ---------------------------------------------------------------------------------
// Heartbeats and offers
// ---------------------------------------------------------------------------------

fn heartbeats(out: &[Outgoing]) -> Vec<(String, CentralHeartbeat)> {
    sent(out, FogMessage::Heartbeat)
        .into_iter()
        .map(|(r, p)| (r, protocol::decode(p).expect("a valid heartbeat")))
        .collect()
}

#[test]
fn heartbeats_go_to_every_region_at_once_when_the_open_regions_change_and_every_period() {
    let mut w = world();
    assert_eq!(w.core.next_wake_ms(), None, "no region: nothing to do");
    assert!(w.tick().is_empty());

    // "a" is saturated: told at once that nobody is open.
    let out = w.aggregate("a", vec![station("a1", 0.1, 3000)]);
    let hb = heartbeats(&out);
    assert_eq!(hb.len(), 1);
    let (region, first) = &hb[0];
    assert_eq!(region, "a");
    assert_eq!(
        (first.started_ms, first.seq, first.ts_ms, first.period_ms),
        (T0, 1, T0, 1000)
    );
    assert!(first.open_regions.is_empty());
    assert_eq!(out[0].qos(), 0);
    assert!(!out[0].retain);

    // "b" opens: both are told at once.
    w.advance(10);
    let out = w.aggregate("b", vec![station("b1", 5.0, 0)]);
    let hb = heartbeats(&out);
    let to: Vec<&str> = hb.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(to, ["a", "b"]);
    for (_, h) in &hb {
        assert_eq!((h.seq, h.ts_ms), (2, T0 + 10));
        assert_eq!(h.open_regions, ["b"]);
        assert_eq!(h.nearest_open_km, None, "no outline, no distance");
        assert!(h.offers.is_empty());
    }
    // Nothing changed: nothing sent until the period is up.
    w.advance(10);
    assert!(heartbeats(&w.aggregate("b", vec![station("b1", 5.0, 0)])).is_empty());
    assert_eq!(w.core.next_wake_ms(), Some(T0 + 1010));
    w.now = T0 + 1009;
    assert!(w.tick().is_empty());
    w.now = T0 + 1010;
    let hb = heartbeats(&w.tick());
    assert_eq!(hb.len(), 2);
    assert_eq!(hb[0].1.seq, 3);
    assert_eq!(w.core.counters().heartbeats, 3);
}

#[test]
fn a_region_going_stale_is_told_at_once() {
    let mut w = World::new(CoreSettings {
        stale_after: Duration::from_millis(1500),
        ..settings()
    });
    w.aggregate("a", vec![station("a1", 0.1, 3000)]);
    w.aggregate("b", vec![station("b1", 5.0, 0)]);
    w.now = T0 + 1000;
    assert_eq!(heartbeats(&w.tick())[0].1.open_regions, ["b"]);
    // b goes stale at 1,501 ms, before the next period (2,000).
    assert_eq!(w.core.next_wake_ms(), Some(T0 + 1501));
    w.now = T0 + 1501;
    let hb = heartbeats(&w.tick());
    assert_eq!(hb.len(), 2, "every region hears it");
    assert!(hb[0].1.open_regions.is_empty());
    // Nothing left to go stale: the period again.
    assert_eq!(w.core.next_wake_ms(), Some(T0 + 2501));
}

#[test]
fn a_withdrawn_region_gets_no_more_heartbeats_and_the_others_hear_at_once() {
    let mut w = world();
    w.aggregate("a", vec![station("a1", 0.1, 3000)]);
    w.aggregate("b", vec![station("b1", 5.0, 0)]);
    let hb = heartbeats(&w.receive("regions/b/up/aggregate", b""));
    assert_eq!(hb.len(), 1);
    assert_eq!(hb[0].0, "a");
    assert!(hb[0].1.open_regions.is_empty());
    // The last one gone: nothing to send, nothing to wake for.
    assert!(heartbeats(&w.receive("regions/a/up/aggregate", b"")).is_empty());
    assert_eq!(w.core.next_wake_ms(), None);
}

/// A band of the city along the equator: `i`-th 0.1° of longitude.
fn band(i: u32) -> Vec<[f64; 2]> {
    let (w, e) = (f64::from(i) * 0.1, f64::from(i + 1) * 0.1);
    vec![[0.0, w], [0.0, e], [0.1, e], [0.1, w]]
}

fn at(id: &str, lon: f64, wait_s: u32) -> AggregateStation {
    AggregateStation {
        lat: 0.05,
        lon,
        ..station(id, 0.0, wait_s)
    }
}

#[test]
fn heartbeats_offer_open_neighbours_stations_near_the_outline() {
    let mut w = world();
    // west | middle | east; west saturated; north without an outline.
    let mut west = w.aggregate_of("west", vec![at("w1", 0.09, 3000)]);
    west.outline = band(0);
    let mut middle = w.aggregate_of(
        "middle",
        vec![at("m-far", 0.19, 0), at("m-edge", 0.11, 120)],
    );
    middle.outline = band(1);
    let mut east = w.aggregate_of("east", vec![at("e-near", 0.21, 0), at("e-far", 0.29, 0)]);
    east.outline = band(2);
    let north = w.aggregate_of("north", vec![at("n1", 0.5, 0)]);
    for a in [&west, &middle, &east, &north] {
        w.publish_aggregate(a);
    }
    w.advance(1000);
    let hb: HashMap<String, CentralHeartbeat> = heartbeats(&w.tick()).into_iter().collect();
    let offered = |region: &str| -> Vec<String> {
        hb[region]
            .offers
            .iter()
            .map(|o| format!("{}/{}", o.region, o.station_id))
            .collect()
    };
    // From west's outline (lon ≤ 0.1): m-edge 1.1 km, m-far 10 km, e-near 12 km;
    // e-far (21 km) is beyond the 15 km.
    assert_eq!(
        offered("west"),
        ["middle/m-edge", "middle/m-far", "east/e-near"]
    );
    let edge = &hb["west"].offers[0];
    assert_eq!(
        (edge.lat, edge.lon, edge.power_kw, edge.wait_s),
        (0.05, 0.11, 50.0, 120)
    );
    // Saturated west is offered to nobody; north is too far for anyone.
    assert_eq!(offered("middle"), ["east/e-near", "east/e-far"]);
    assert_eq!(offered("east"), ["middle/m-far", "middle/m-edge"]);
    // A region without an outline gets none.
    assert!(hb["north"].offers.is_empty());
    assert!((hb["west"].nearest_open_km.unwrap() - 1.11).abs() < 0.01);

    // The limit keeps the nearest.
    let mut w2 = World::new(CoreSettings {
        offer_limit: 1,
        offer_radius_km: 15.0,
        ..settings()
    });
    for a in [&west, &middle, &east] {
        w2.publish_aggregate(a);
    }
    let out = w2.aggregate("north", vec![at("n1", 0.5, 0)]);
    let hb: HashMap<String, CentralHeartbeat> = heartbeats(&out).into_iter().collect();
    assert_eq!(hb["west"].offers.len(), 1);
    assert_eq!(hb["west"].offers[0].station_id, "m-edge");
}

#[test]
fn offers_are_cut_to_keep_the_heartbeat_within_the_payload_limit() {
    let mut w = World::new(CoreSettings {
        offer_limit: 100,
        offer_radius_km: 1000.0,
        ..settings()
    });
    let mut home = w.aggregate_of("home", vec![]);
    home.outline = band(0);
    w.publish_aggregate(&home);
    // Four neighbours listing 30 stations each with the longest ids: ~200 bytes an
    // offer, 100 offers would be ~20 KB.
    for n in 0..4 {
        let region = format!("n{n}-{}", "r".repeat(60));
        let best = (0..30)
            .map(|i| {
                let id = format!("{i:02}-{}", "s".repeat(61));
                at(&id, 0.1 + f64::from(n * 30 + i) * 0.001, 0)
            })
            .collect();
        let a = w.aggregate_of(&region, best);
        w.publish_aggregate(&a);
    }
    w.advance(1000);
    let out = w.tick();
    let payload = sent(&out, FogMessage::Heartbeat)
        .into_iter()
        .find(|(r, _)| r == "home")
        .unwrap()
        .1;
    assert!(
        payload.len() <= protocol::MAX_PAYLOAD_BYTES,
        "{}",
        payload.len()
    );
    let hb: CentralHeartbeat = protocol::decode(payload).unwrap();
    let n = hb.offers.len();
    assert!((50..100).contains(&n), "{n} offers");
    // The nearest were kept, in order.
    let all = w.core.regions().offers("home", w.now, 1000.0, 100);
    assert_eq!(hb.offers, all[..n]);
}
