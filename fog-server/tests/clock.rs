//! The region runs on the clock it is handed: every timeout (central's reroute
//! deadline, central's heartbeat, central's hints) passes exactly when a later `now` is
//! passed in, on a scaled clock too, with no waiting. And the journal records of each
//! message come out with it, built from the answer just given.

use std::time::Duration;

use fog_server::metrics::Update;
use fog_server::planner::PlannerParams;
use fog_server::region::{CentralView, Effects, Region, RerouteSettings};
use fog_server::store::Record;
use protocol::fog::{FogMessage, RerouteReply, RerouteRequest};
use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, StationStatus, decode, encode, topics,
};

const NOW: u64 = 1_700_000_000_000;

fn station(id: &str, occupied: u32, queue: u32) -> StationStatus {
    StationStatus {
        occupied,
        queue,
        ..testkit::messages::station(id, 1.0 / 111.19, 0.0, 1, 50.0)
    }
}

fn request(id: &str) -> ChargeRequest {
    testkit::messages::request(id, 0.0, 0.0, 0.4)
}

fn heartbeat(r: &mut Region, at_ms: u64) {
    let hb = testkit::messages::heartbeat(at_ms, &["other"], Vec::new());
    let fx = r.receive(&FogMessage::Heartbeat.regional_topic(), &encode(&hb), at_ms);
    assert_eq!(fx, Effects::default());
}

/// A region whose only station has a long queue (every request is saturated), on a
/// clock running `speed` times real time, central heard at `NOW`.
fn saturated(speed: f64) -> Region {
    let mut r = Region::new("a", PlannerParams::default());
    r.reroute = RerouteSettings {
        enabled: true,
        timeout: Duration::from_millis(1500),
        clock_speed: speed,
        central_timeout: Duration::from_millis(3500),
        border_margin_s: 120,
    };
    heartbeat(&mut r, NOW);
    r.receive(
        &topics::station_status("a", "busy"),
        &encode(&station("busy", 1, 6)),
        NOW,
    );
    r
}

fn ask(r: &mut Region, vehicle: &str, id: &str, now_ms: u64) -> Effects {
    r.receive(
        &topics::request("a", vehicle),
        &encode(&request(id)),
        now_ms,
    )
}

fn answers(fx: &Effects) -> Vec<Recommendation> {
    fx.publish
        .iter()
        .filter(|o| o.topic.ends_with("/recommendation"))
        .map(|o| decode(&o.payload).unwrap())
        .collect()
}

#[test]
fn the_reroute_deadline_passes_on_the_clock_passed_in() {
    for speed in [1.0, 60.0] {
        let mut a = saturated(speed);
        let fx = ask(&mut a, "car-1", "r-1", NOW);
        let rr: RerouteRequest = decode(&fx.publish[0].payload).unwrap();
        let deadline = NOW + (1500.0 * speed) as u64;
        assert_eq!(rr.deadline_ms, deadline, "speed {speed}");
        // One clock millisecond before the deadline: still waiting for central.
        let fx = a.tick(deadline - 1);
        assert!(
            fx.publish.is_empty() && fx.journal.is_empty(),
            "speed {speed}"
        );
        assert_eq!(a.pending_reroutes(), 1);
        // At the deadline: answered locally, once.
        let fx = a.tick(deadline);
        let answer = &answers(&fx)[..];
        assert_eq!(answer.len(), 1, "speed {speed}: {fx:?}");
        assert_eq!(answer[0].status, RecommendationStatus::Assigned);
        let reason = answer[0].reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("no reroute answer within 1500 ms"),
            "{reason}"
        );
        assert_eq!(a.pending_reroutes(), 0);
        assert!(answers(&a.tick(deadline + 1)).is_empty(), "answered once");
        assert!(fx.metrics.contains(&Update::Reroute("timed_out")), "{fx:?}");
        assert!(fx.metrics.contains(&Update::Answered("assigned")), "{fx:?}");
    }
}

#[test]
fn central_is_gone_when_its_heartbeat_is_older_than_the_timeout_on_the_clock() {
    for speed in [1.0, 60.0] {
        let mut a = saturated(speed);
        let timeout = (3500.0 * speed) as u64;
        assert_eq!(a.central_view(NOW + timeout), CentralView::Ask);
        let late = NOW + timeout + speed as u64;
        assert_eq!(
            a.central_view(late),
            CentralView::Unreachable {
                silent_ms: Some(3501)
            },
            "speed {speed}: silence is told in real ms"
        );
        // A saturated request then is answered at once, not asked.
        let fx = ask(&mut a, "car-1", "r-1", late);
        let answer = answers(&fx);
        assert_eq!(answer.len(), 1, "{fx:?}");
        let reason = answer[0].reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("central unreachable (no heartbeat for 3501 ms)"),
            "{reason}"
        );
        // A heartbeat brings central back.
        heartbeat(&mut a, late + 1);
        assert_eq!(a.central_view(late + 1), CentralView::Ask);
    }
}

#[test]
fn a_hint_from_central_holds_for_its_time_on_the_clock() {
    let mut a = saturated(10.0);
    let fx = ask(&mut a, "car-1", "r-1", NOW);
    let rr: RerouteRequest = decode(&fx.publish[0].payload).unwrap();
    let reply = RerouteReply {
        v: 1,
        reroute_id: rr.reroute_id,
        ok: false,
        recommendation: None,
        reason: Some("no region in range".into()),
        tried: Vec::new(),
        no_region_within_km: Some(500.0),
        hold_ms: Some(2_000),
    };
    let topic = FogMessage::RerouteReply.regional_topic();
    assert_eq!(answers(&a.receive(&topic, &encode(&reply), NOW)).len(), 1);
    // 2 s real = 20 s on this clock: until then, like requests are not asked.
    let hb_ok = NOW + 19_999;
    let fx = ask(&mut a, "car-2", "r-2", hb_ok);
    let reason = answers(&fx)[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("is in reach (central, 1999 ms ago)"),
        "{reason}"
    );
    let fx = ask(&mut a, "car-3", "r-3", NOW + 20_000);
    assert_eq!(fx.publish[0].topic, FogMessage::Reroute.regional_topic());
}

#[test]
fn journal_records_come_with_the_answer_they_back() {
    let mut r = Region::new("n", PlannerParams::default());
    r.reroute.enabled = false;
    r.restore_journal(Default::default(), NOW);
    r.receive(
        &topics::station_status("n", "free"),
        &encode(&station("free", 0, 0)),
        NOW,
    );
    let topic = topics::request("n", "car-1");
    let first = r.receive(&topic, &encode(&request("r-1")), NOW);
    let answer = answers(&first).remove(0);
    let [Record::Made(saved)] = &first.journal[..] else {
        panic!("one reservation made: {:?}", first.journal);
    };
    assert_eq!(saved.request_id.as_deref(), Some("r-1"));
    assert_eq!(saved.answer.as_ref(), Some(&answer));
    assert_eq!(
        Some(&saved.reservation.reservation_id),
        answer.reservation_id.as_ref()
    );
    // A redelivery changes nothing to journal; a new request replaces the
    // reservation: the old one ends first.
    assert!(
        r.receive(&topic, &encode(&request("r-1")), NOW)
            .journal
            .is_empty()
    );
    let second = r.receive(&topic, &encode(&request("r-2")), NOW);
    let [Record::Ended { id }, Record::Made(made)] = &second.journal[..] else {
        panic!("ended, then made: {:?}", second.journal);
    };
    assert_eq!(Some(id), answer.reservation_id.as_ref());
    assert_eq!(made.request_id.as_deref(), Some("r-2"));
    // Without a journal, no records.
    let mut plain = Region::new("n", PlannerParams::default());
    plain.receive(
        &topics::station_status("n", "free"),
        &encode(&station("free", 0, 0)),
        NOW,
    );
    let fx = plain.receive(&topic, &encode(&request("r-1")), NOW);
    assert_eq!((fx.journal.len(), answers(&fx).len()), (0, 1));
}
