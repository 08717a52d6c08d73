//! Cross-region rerouting: how central decides where a vehicle from a saturated region
//! goes, and the handoff conversation that reserves it a slot there.
//!
//! # The decision
//!
//! An origin fog that cannot serve a vehicle well publishes a [`RerouteRequest`] on
//! `regions/{origin}/up/reroute`. Central then
//!
//! 1. **ranks the other regions** from their latest aggregates. A region is a
//!    candidate when it is not the origin, its data is fresh (not stale, see
//!    [`crate::regions`]), it is not saturated (its fog would refuse: its planner has
//!    the same wait limit), and one of the stations its aggregate lists as `best` is
//!    reachable. For every listed station the vehicle can reach:
//!
//!    ```text
//!    road km = great-circle km × road factor          (reachable if ≤ range × (1 − safety margin))
//!    total   = road km / avg speed                     (drive)
//!            + the station's predicted_wait_s          (wait, as its fog predicted it)
//!            + (target soc − soc at arrival) × battery / power_kw   (charge)
//!    ```
//!
//!    A region's estimate is the least total among its reachable listed stations (see
//!    [`crate::regions::estimate`]). When the request carries `local_best_total_s`,
//!    only regions whose estimate beats it qualify: moving a vehicle to another region
//!    must save it time. Candidates are sorted by estimate, least first (ties by
//!    region id).
//!
//! 2. **asks them in turn**: publishes a [`Handoff`] (a fresh `handoff_id`,
//!    `max_total_s` = the origin's `local_best_total_s`) on
//!    `regions/{target}/down/handoff` and waits for the [`HandoffReply`] with that id on
//!    `regions/{target}/up/handoff-reply`, for at most `--handoff-timeout-ms`. The
//!    target fog plans the vehicle with its full, current station data, and either
//!    reserves a slot (accepted, with a `rerouted` recommendation) or refuses. On a
//!    refusal or a timeout central asks the next candidate.
//!
//! 3. **stops** at the first acceptance, when the candidates run out, or when the
//!    request's `deadline_ms` (on the fogs' clock, which central shares through
//!    `--clock-speed`/`--clock-epoch-ms`) would be passed: a handoff is only sent
//!    while at least [`MIN_ATTEMPT`] is left before the deadline less
//!    [`REPLY_MARGIN`] (the time kept for the reply to reach the origin), and its wait
//!    is cut to fit.
//!
//! 4. **answers the origin** with a [`RerouteReply`] on
//!    `regions/{origin}/down/reroute-reply`: `ok = true` with the target's
//!    recommendation unchanged (the target made it, with its station and reservation;
//!    an `assigned` status is corrected to `rerouted`), or `ok = false` with a `reason`
//!    that says why — no other region has fresh data, no region in range, every region
//!    in range saturated, none beats the local best, all refused, timed out, deadline
//!    reached — and, in both cases, `tried`: the regions asked, in order.
//!
//! # Concurrency and duplicates
//!
//! Every reroute runs in its own task. The task that owns the MQTT connection never
//! waits: it hands each [`HandoffReply`] to the waiting reroute task through
//! [`Handoffs`], a map of oneshot senders keyed by `handoff_id` (a reply whose region
//! differs from the one asked is refused; a reply that nobody waits for — late, after
//! a timeout — is counted and dropped; the target's reservation then expires by
//! itself). A repeated `reroute_id` from the same origin (a QoS 1 redelivery, a
//! retry) never starts a second reroute ([`Memory`]): while the first runs it is
//! ignored, afterwards the first reply is published again.
//!
//! # Limits
//!
//! Aggregates list only a region's best few stations (by wait), so the estimate can
//! miss a region whose good station is not listed, or rank a region by a station the
//! vehicle cannot reach while a nearer unlisted one would do; the target fog's own
//! plan is what the vehicle gets. Travel between regions uses the same road factor
//! and speed everywhere.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::fog::{FogMessage, Handoff, HandoffReply, RerouteReply, RerouteRequest};
use protocol::{PROTOCOL_VERSION, RecommendationStatus};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use cost_model::CostParams;

use crate::Shared;
use crate::regions::{Estimate, Regions, Vehicle};

/// Time kept, before a request's deadline, for the reply to reach the origin fog.
pub const REPLY_MARGIN: Duration = Duration::from_millis(25);

/// A handoff is only sent when at least this long is left to wait for its reply.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(25);

/// How long a reroute id is remembered (for duplicates).
pub const MEMORY_TTL: Duration = Duration::from_secs(600);

/// Most reroute ids remembered at once.
pub const MEMORY_CAP: usize = 10_000;

/// A region worth asking, with the station that makes it worth it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub region: String,
    pub station_id: String,
    pub estimate: Estimate,
}

/// Why no region is worth asking.
#[derive(Debug, Clone, PartialEq)]
pub enum NoCandidate {
    /// No region other than the origin has fresh data.
    NoFreshRegion { stale: usize },
    /// No fresh region lists a station the vehicle can reach.
    NoneInRange { fresh: usize },
    /// Every fresh region in range is saturated.
    AllSaturated { in_range: usize },
    /// Regions are in range, but none beats the origin's own best.
    NoneBetter { in_range: usize, local_best_s: f64 },
}

impl fmt::Display for NoCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFreshRegion { stale: 0 } => write!(f, "no other region has reported"),
            Self::NoFreshRegion { stale } => write!(
                f,
                "no other region has fresh data ({stale} stale region(s))"
            ),
            Self::NoneInRange { fresh } => write!(
                f,
                "no region in range: none of {fresh} other region(s) with fresh data lists a station the vehicle can reach"
            ),
            Self::AllSaturated { in_range } => write!(
                f,
                "every region in range is saturated ({in_range} region(s))"
            ),
            Self::NoneBetter {
                in_range,
                local_best_s,
            } => write!(
                f,
                "no region in range beats the local best total of {local_best_s:.0} s ({in_range} region(s) in range)"
            ),
        }
    }
}

/// The regions worth asking for `vehicle` from `origin`, best first (see the module
/// docs for the rule).
pub fn candidates(
    regions: &Regions,
    origin: &str,
    vehicle: &Vehicle,
    model: &CostParams,
    local_best_total_s: Option<f64>,
    now: Instant,
) -> Result<Vec<Candidate>, NoCandidate> {
    let (mut fresh, mut stale, mut in_range, mut unsaturated) = (0, 0, 0, 0);
    let mut out = Vec::new();
    for (id, state) in regions.iter() {
        if id == origin {
            continue;
        }
        if regions.is_stale(state, now) {
            stale += 1;
            continue;
        }
        fresh += 1;
        let best = state
            .aggregate
            .best
            .iter()
            .filter_map(|s| crate::regions::estimate(vehicle, s, model).map(|e| (s, e)))
            .min_by(|a, b| a.1.total_s.total_cmp(&b.1.total_s));
        let Some((station, estimate)) = best else {
            continue;
        };
        in_range += 1;
        if regions.is_saturated(&state.aggregate) {
            continue;
        }
        unsaturated += 1;
        if local_best_total_s.is_some_and(|local| estimate.total_s >= local) {
            continue;
        }
        out.push(Candidate {
            region: id.to_owned(),
            station_id: station.station_id.clone(),
            estimate,
        });
    }
    if out.is_empty() {
        return Err(if fresh == 0 {
            NoCandidate::NoFreshRegion { stale }
        } else if in_range == 0 {
            NoCandidate::NoneInRange { fresh }
        } else if unsaturated == 0 {
            NoCandidate::AllSaturated { in_range }
        } else {
            NoCandidate::NoneBetter {
                in_range,
                local_best_s: local_best_total_s.unwrap_or_default(),
            }
        });
    }
    out.sort_by(|a, b| {
        a.estimate
            .total_s
            .total_cmp(&b.estimate.total_s)
            .then_with(|| a.region.cmp(&b.region))
    });
    Ok(out)
}

/// How long a "no region within" hint holds for the origin fog.
pub const HINT_HOLD: Duration = Duration::from_secs(2);

/// The great-circle distance from `vehicle` to the nearest listed station of any other
/// region that can take vehicles now (fresh, not saturated), km;
/// [`protocol::fog::EVERYWHERE_KM`] when there is none.
pub fn open_station_distance_km(
    regions: &Regions,
    origin: &str,
    vehicle: &Vehicle,
    now: Instant,
) -> f64 {
    regions
        .iter()
        .filter(|(id, s)| {
            *id != origin && !regions.is_stale(s, now) && !regions.is_saturated(&s.aggregate)
        })
        .flat_map(|(_, s)| s.aggregate.best.iter())
        .map(|st| protocol::geo::haversine_km(vehicle.lat, vehicle.lon, st.lat, st.lon))
        .fold(protocol::fog::EVERYWHERE_KM, f64::min)
}

/// Handoffs waiting for their reply, keyed by `handoff_id`.
#[derive(Debug, Default)]
pub struct Handoffs {
    waiting: Mutex<HashMap<String, Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    region: String,
    tx: oneshot::Sender<HandoffReply>,
}

/// What became of a handoff reply handed to [`Handoffs::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Nobody waits for this id (a late reply, after its timeout, or an unknown id).
    Unmatched,
    /// The reply came from another region than the one asked; not delivered.
    WrongRegion {
        expected: String,
    },
}

impl Handoffs {
    fn register(&self, handoff_id: &str, region: &str) -> oneshot::Receiver<HandoffReply> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            handoff_id.to_owned(),
            Waiter {
                region: region.to_owned(),
                tx,
            },
        );
        rx
    }

    fn forget(&self, handoff_id: &str) {
        self.lock().remove(handoff_id);
    }

    /// Hands a reply received on `regions/{topic_region}/up/handoff-reply` to the
    /// task waiting for it. Never blocks.
    pub fn deliver(&self, topic_region: &str, reply: HandoffReply) -> Delivery {
        let mut waiting = self.lock();
        match waiting.get(&reply.handoff_id) {
            None => Delivery::Unmatched,
            Some(w) if w.region != topic_region || reply.region != topic_region => {
                Delivery::WrongRegion {
                    expected: w.region.clone(),
                }
            }
            Some(_) => {
                if let Some(w) = waiting.remove(&reply.handoff_id) {
                    // The receiver is gone only if its task ended; nothing to do then.
                    let _ = w.tx.send(reply);
                }
                Delivery::Delivered
            }
        }
    }

    /// How many handoffs wait for a reply now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reroute ids seen lately (per origin region), so a repeated request starts nothing.
#[derive(Debug, Default)]
pub struct Memory {
    entries: HashMap<(String, String), Option<Vec<u8>>>,
    order: VecDeque<((String, String), Instant)>,
}

/// What [`Memory::admit`] knows about a reroute id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: go ahead (it is now remembered as running).
    New,
    /// A reroute with this id is running.
    Running,
    /// A reroute with this id finished with this reply payload.
    Done(Vec<u8>),
}

impl Memory {
    /// Looks `(origin, reroute_id)` up, remembering it as running when new.
    pub fn admit(&mut self, origin: &str, reroute_id: &str, now: Instant) -> Seen {
        while let Some((key, at)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) > MEMORY_TTL;
            if !(expired || self.order.len() >= MEMORY_CAP) {
                break;
            }
            self.entries.remove(key);
            self.order.pop_front();
        }
        let key = (origin.to_owned(), reroute_id.to_owned());
        match self.entries.get(&key) {
            Some(None) => Seen::Running,
            Some(Some(reply)) => Seen::Done(reply.clone()),
            None => {
                self.entries.insert(key.clone(), None);
                self.order.push_back((key, now));
                Seen::New
            }
        }
    }

    /// Records the reply of a finished reroute.
    pub fn finish(&mut self, origin: &str, reroute_id: &str, reply: Vec<u8>) {
        if let Some(entry) = self
            .entries
            .get_mut(&(origin.to_owned(), reroute_id.to_owned()))
        {
            *entry = Some(reply);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A fresh handoff id: `h-` and 16 hex digits.
fn handoff_id() -> String {
    format!("h-{:016x}", rand::random::<u64>())
}

/// How one handoff ended.
enum Attempt {
    Accepted(Box<RerouteReply>),
    Refused(String),
    TimedOut { waited: Duration, cut: bool },
    Shutdown,
}

/// Runs one reroute to the end and publishes its reply to the origin. `received` is
/// when the request arrived (for the latency metric).
pub async fn run(
    shared: std::sync::Arc<Shared>,
    origin: String,
    request: RerouteRequest,
    received: Instant,
    shutdown: CancellationToken,
) {
    let reply = decide(&shared, &origin, &request, &shutdown).await;
    let payload = protocol::encode(&reply);
    shared.publish(&FogMessage::RerouteReply.central_topic(&origin), &payload);
    shared.finish_reroute(&origin, &request.reroute_id, payload);
    shared
        .metrics
        .reroute_seconds
        .observe(received.elapsed().as_secs_f64());
    if reply.ok {
        shared.metrics.reroutes_succeeded.inc();
        if let Some(station) = reply
            .recommendation
            .as_ref()
            .and_then(|r| r.station.as_ref())
        {
            shared.dashboard.on_reroute(crate::dashboard::RerouteEvent {
                at_ms: shared.clock.now_ms(),
                origin_region: origin.clone(),
                target_region: station.region.clone(),
                vehicle_id: request.vehicle_id.clone(),
                station_id: station.station_id.clone(),
                from: [request.request.lat, request.request.lon],
                to: [station.lat, station.lon],
            });
        }
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
}

async fn decide(
    shared: &Shared,
    origin: &str,
    request: &RerouteRequest,
    shutdown: &CancellationToken,
) -> RerouteReply {
    let failed = |reason: String, tried: Vec<String>, label: &'static str| {
        shared.metrics.reroute_failed(label);
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
    };
    let vehicle = Vehicle::from(&request.request);
    let ranked = {
        let regions = shared.regions();
        candidates(
            &regions,
            origin,
            &vehicle,
            &shared.model,
            request.local_best_total_s,
            Instant::now(),
        )
    };
    let candidates = match ranked {
        Ok(c) => c,
        Err(none) => {
            let mut reply = failed(none.to_string(), Vec::new(), "no_region");
            if !matches!(none, NoCandidate::NoneBetter { .. }) {
                // Like vehicles need not ask again for a while: say how far the
                // nearest region that can take vehicles is.
                let regions = shared.regions();
                reply.no_region_within_km = Some(open_station_distance_km(
                    &regions,
                    origin,
                    &vehicle,
                    Instant::now(),
                ));
                reply.hold_ms = Some(HINT_HOLD.as_millis() as u64);
            }
            return reply;
        }
    };
    debug!(
        reroute = %request.reroute_id,
        candidates = ?candidates.iter().map(|c| (&c.region, c.estimate.total_s)).collect::<Vec<_>>(),
        "reroute candidates"
    );

    let mut tried = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut refused, mut timed_out, mut deadline) = (0, 0, false);
    for candidate in &candidates {
        let Some(wait) = attempt_wait(shared, request.deadline_ms) else {
            deadline = true;
            break;
        };
        tried.push(candidate.region.clone());
        match handoff(shared, origin, request, candidate, wait, shutdown).await {
            Attempt::Accepted(reply) => {
                let mut reply = *reply;
                reply.tried = tried;
                return reply;
            }
            Attempt::Refused(why) => {
                refused += 1;
                failures.push(format!("{} refused ({why})", candidate.region));
            }
            Attempt::TimedOut { waited, cut } => {
                timed_out += 1;
                deadline |= cut;
                failures.push(format!(
                    "{} did not answer within {} ms",
                    candidate.region,
                    waited.as_millis()
                ));
                if cut {
                    break;
                }
            }
            Attempt::Shutdown => {
                return failed("central is shutting down".into(), tried, "shutdown");
            }
        }
    }
    let details = failures.join("; ");
    if deadline {
        let reason = if tried.is_empty() {
            "deadline reached before any region could be asked".to_owned()
        } else {
            format!("deadline reached: {details}")
        };
        failed(reason, tried, "deadline")
    } else if refused == 0 {
        failed(format!("timed out: {details}"), tried, "timeout")
    } else if timed_out == 0 {
        failed(format!("all regions refused: {details}"), tried, "refused")
    } else {
        failed(
            format!("all regions refused or timed out: {details}"),
            tried,
            "refused",
        )
    }
}

/// How long the next handoff may wait for its reply, or `None` when the deadline
/// leaves no time for one.
fn attempt_wait(shared: &Shared, deadline_ms: u64) -> Option<Duration> {
    let left_clock_ms = deadline_ms.saturating_sub(shared.clock.now_ms());
    let left = Duration::from_secs_f64(left_clock_ms as f64 / 1000.0 / shared.clock.speed());
    let left = left.checked_sub(REPLY_MARGIN)?;
    (left >= MIN_ATTEMPT).then(|| left.min(shared.handoff_timeout))
}

async fn handoff(
    shared: &Shared,
    origin: &str,
    request: &RerouteRequest,
    candidate: &Candidate,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Attempt {
    let id = handoff_id();
    let msg = Handoff {
        v: PROTOCOL_VERSION,
        handoff_id: id.clone(),
        reroute_id: request.reroute_id.clone(),
        origin_region: origin.to_owned(),
        vehicle_id: request.vehicle_id.clone(),
        request: request.request.clone(),
        max_total_s: request.local_best_total_s,
    };
    let rx = shared.handoffs.register(&id, &candidate.region);
    let sent = Instant::now();
    shared.publish(
        &FogMessage::Handoff.central_topic(&candidate.region),
        &protocol::encode(&msg),
    );
    debug!(reroute = %request.reroute_id, handoff = %id, target = %candidate.region,
        estimate_s = candidate.estimate.total_s, station = %candidate.station_id, "handoff sent");
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = tokio::time::timeout(wait, rx) => Some(r),
    };
    let reply = match outcome {
        None => {
            shared.handoffs.forget(&id);
            return Attempt::Shutdown;
        }
        Some(Err(_elapsed)) => {
            shared.handoffs.forget(&id);
            shared.metrics.handoff("timeout");
            warn!(reroute = %request.reroute_id, handoff = %id, target = %candidate.region,
                waited_ms = wait.as_millis() as u64, "handoff timed out");
            return Attempt::TimedOut {
                waited: wait,
                cut: wait < shared.handoff_timeout,
            };
        }
        // The sender lives in the map until delivered or forgotten by us; a closed
        // channel cannot happen, but is a refusal if it does.
        Some(Ok(Err(_closed))) => {
            shared.metrics.handoff("refused");
            return Attempt::Refused("no reply".into());
        }
        Some(Ok(Ok(reply))) => reply,
    };
    shared
        .metrics
        .handoff_seconds
        .observe(sent.elapsed().as_secs_f64());
    let recommendation = match reply.recommendation {
        Some(mut rec) if reply.accepted && rec.station.is_some() => {
            if rec.status != RecommendationStatus::Rerouted {
                if rec.status == RecommendationStatus::Assigned {
                    rec.status = RecommendationStatus::Rerouted;
                } else {
                    shared.metrics.handoff("refused");
                    return Attempt::Refused(format!(
                        "accepted with a {} recommendation",
                        rec.status.as_str()
                    ));
                }
            }
            rec
        }
        _ if reply.accepted => {
            shared.metrics.handoff("refused");
            warn!(handoff = %id, target = %candidate.region, "handoff accepted without a station; taken as a refusal");
            return Attempt::Refused("accepted without a recommended station".into());
        }
        _ => {
            shared.metrics.handoff("refused");
            return Attempt::Refused(reply.reason.unwrap_or_else(|| "no reason given".to_owned()));
        }
    };
    shared.metrics.handoff("accepted");
    Attempt::Accepted(Box::new(RerouteReply {
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

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::fog::{Aggregate, AggregateStation};

    const KM: f64 = 1.0 / 111.195;

    fn aggregate(region: &str, stations: &[(&str, f64, u32)]) -> Aggregate {
        Aggregate {
            v: 1,
            region: region.into(),
            seq: 1,
            ts_ms: 1,
            stations: stations.len() as u32,
            stations_in_service: stations.len() as u32,
            chargers: 2,
            chargers_free: 1,
            queued: 0,
            reservations: 0,
            min_wait_s: stations.iter().map(|s| s.2).min(),
            max_wait_s: None,
            outline: vec![],
            best: stations
                .iter()
                .map(|(id, km_north, wait)| AggregateStation {
                    station_id: (*id).into(),
                    lat: km_north * KM,
                    lon: 0.0,
                    chargers: 2,
                    power_kw: 50.0,
                    occupied: 0,
                    queue: 0,
                    reservations: 0,
                    predicted_wait_s: *wait,
                })
                .collect(),
            saturated_requests: 0,
            requests_total: 0,
        }
    }

    const CAR: Vehicle = Vehicle {
        lat: 0.0,
        lon: 0.0,
        soc: 0.3,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
    };

    fn regions(list: Vec<Aggregate>) -> (Regions, Instant) {
        let mut r = Regions::new(Duration::from_secs(6), 1800);
        let now = Instant::now();
        for a in list {
            r.ingest(a, now, 0);
        }
        (r, now)
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.region.as_str()).collect()
    }

    #[test]
    fn ranks_by_the_best_reachable_station_and_skips_the_origin() {
        let (r, now) = regions(vec![
            aggregate("origin", &[("o", 0.1, 0)]),
            aggregate("slow", &[("s", 2.0, 1200)]),
            aggregate("fast", &[("f1", 5.0, 0), ("f-far", 500.0, 0)]),
            aggregate("far", &[("x", 500.0, 0)]),
        ]);
        let c = candidates(&r, "origin", &CAR, &CostParams::default(), None, now).unwrap();
        assert_eq!(names(&c), ["fast", "slow"]);
        assert_eq!(c[0].station_id, "f1");
    }

    #[test]
    fn only_regions_beating_the_local_best_qualify() {
        let (r, now) = regions(vec![
            aggregate("a", &[("a1", 2.0, 0)]),
            aggregate("b", &[("b1", 2.0, 1200)]),
        ]);
        let m = CostParams::default();
        let all = candidates(&r, "o", &CAR, &m, None, now).unwrap();
        let local = all[0].estimate.total_s + 10.0;
        let c = candidates(&r, "o", &CAR, &m, Some(local), now).unwrap();
        assert_eq!(names(&c), ["a"]);
        let err = candidates(&r, "o", &CAR, &m, Some(100.0), now).unwrap_err();
        assert!(matches!(err, NoCandidate::NoneBetter { in_range: 2, .. }));
        assert!(err.to_string().starts_with("no region in range beats"));
    }

    #[test]
    fn stale_saturated_and_unreachable_regions_are_not_asked() {
        let m = CostParams::default();
        let (r, now) = regions(vec![aggregate("far", &[("x", 500.0, 0)])]);
        let err = candidates(&r, "o", &CAR, &m, None, now).unwrap_err();
        assert_eq!(err, NoCandidate::NoneInRange { fresh: 1 });
        assert!(err.to_string().starts_with("no region in range"));

        let (r, now) = regions(vec![aggregate("busy", &[("b", 1.0, 4000)])]);
        let err = candidates(&r, "o", &CAR, &m, None, now).unwrap_err();
        assert_eq!(err, NoCandidate::AllSaturated { in_range: 1 });

        let (r, now) = regions(vec![aggregate("a", &[("a", 1.0, 0)])]);
        let later = now + Duration::from_secs(7);
        let err = candidates(&r, "o", &CAR, &m, None, later).unwrap_err();
        assert_eq!(err, NoCandidate::NoFreshRegion { stale: 1 });

        let (r, now) = regions(vec![aggregate("o", &[("a", 1.0, 0)])]);
        let err = candidates(&r, "o", &CAR, &m, None, now).unwrap_err();
        assert_eq!(err, NoCandidate::NoFreshRegion { stale: 0 });
    }

    #[test]
    fn memory_admits_an_id_once_and_replays_its_reply() {
        let mut m = Memory::default();
        let t = Instant::now();
        assert_eq!(m.admit("a", "r1", t), Seen::New);
        assert_eq!(m.admit("a", "r1", t), Seen::Running);
        assert_eq!(m.admit("b", "r1", t), Seen::New, "ids are per origin");
        m.finish("a", "r1", b"reply".to_vec());
        assert_eq!(m.admit("a", "r1", t), Seen::Done(b"reply".to_vec()));
        // Forgotten after the TTL.
        let later = t + MEMORY_TTL + Duration::from_secs(1);
        assert_eq!(m.admit("c", "r9", later), Seen::New);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn handoff_replies_go_to_the_waiter_of_the_same_region_only() {
        let h = Handoffs::default();
        let mut rx = h.register("h-1", "b");
        let reply = |region: &str| HandoffReply {
            v: 1,
            handoff_id: "h-1".into(),
            region: region.into(),
            accepted: false,
            recommendation: None,
            reason: None,
        };
        assert_eq!(
            h.deliver("c", reply("c")),
            Delivery::WrongRegion {
                expected: "b".into()
            }
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(h.deliver("b", reply("b")), Delivery::Delivered);
        assert_eq!(rx.try_recv().unwrap().region, "b");
        assert_eq!(h.deliver("b", reply("b")), Delivery::Unmatched);
        assert!(h.is_empty());
    }

    #[test]
    fn handoff_ids_are_valid_protocol_ids() {
        let id = handoff_id();
        protocol::validate_id("handoff_id", &id).unwrap();
        assert_ne!(id, handoff_id());
    }
}
