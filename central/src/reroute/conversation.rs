//! One reroute from request to reply: rank the candidates, ask them in turn with a
//! handoff each, answer the origin.

use std::time::{Duration, Instant};

use protocol::fog::{FogMessage, Handoff, HandoffReply, RerouteReply, RerouteRequest};
use protocol::{PROTOCOL_VERSION, RecommendationStatus};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::candidates::{Candidate, HINT_HOLD, NoCandidate, candidates, open_station_distance_km};
use crate::Shared;
use crate::regions::Vehicle;

/// Time kept, before a request's deadline, for the reply to reach the origin fog.
pub const REPLY_MARGIN: Duration = Duration::from_millis(25);

/// A handoff is only sent when at least this long is left to wait for its reply.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(25);

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
    let vehicle = Vehicle::from(&request.request);
    let candidates = match rank(shared, origin, request, &vehicle) {
        Ok(c) => c,
        Err(reply) => return *reply,
    };
    debug!(
        reroute = %request.reroute_id,
        candidates = ?candidates.iter().map(|c| (&c.region, c.estimate.total_s)).collect::<Vec<_>>(),
        "reroute candidates"
    );
    ask_in_turn(shared, origin, request, &candidates, shutdown).await
}

/// A failed reroute's reply (counted under `label`).
fn failed(
    shared: &Shared,
    request: &RerouteRequest,
    reason: String,
    tried: Vec<String>,
    label: &'static str,
) -> RerouteReply {
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
}

/// The candidates for the request, or the reply saying why there are none.
fn rank(
    shared: &Shared,
    origin: &str,
    request: &RerouteRequest,
    vehicle: &Vehicle,
) -> Result<Vec<Candidate>, Box<RerouteReply>> {
    let ranked = {
        let regions = shared.regions();
        candidates(
            &regions,
            origin,
            vehicle,
            &shared.model,
            request.local_best_total_s,
            Instant::now(),
        )
    };
    ranked.map_err(|none| {
        let mut reply = failed(shared, request, none.to_string(), Vec::new(), "no_region");
        if !matches!(none, NoCandidate::NoneBetter { .. }) {
            // Like vehicles need not ask again for a while: say how far the
            // nearest region that can take vehicles is.
            let regions = shared.regions();
            reply.no_region_within_km = Some(open_station_distance_km(
                &regions,
                origin,
                vehicle,
                Instant::now(),
            ));
            reply.hold_ms = Some(HINT_HOLD.as_millis() as u64);
        }
        Box::new(reply)
    })
}

/// What the handoffs of one reroute came to so far.
#[derive(Default)]
struct Tally {
    /// The regions asked, in order.
    tried: Vec<String>,
    failures: Vec<String>,
    refused: usize,
    timed_out: usize,
    deadline: bool,
}

/// Asks the candidates in turn until one accepts, they run out, or the deadline comes.
async fn ask_in_turn(
    shared: &Shared,
    origin: &str,
    request: &RerouteRequest,
    candidates: &[Candidate],
    shutdown: &CancellationToken,
) -> RerouteReply {
    let mut tally = Tally::default();
    for candidate in candidates {
        let Some(wait) = attempt_wait(shared, request.deadline_ms) else {
            tally.deadline = true;
            break;
        };
        tally.tried.push(candidate.region.clone());
        match handoff(shared, origin, request, candidate, wait, shutdown).await {
            Attempt::Accepted(reply) => {
                let mut reply = *reply;
                reply.tried = tally.tried;
                return reply;
            }
            Attempt::Refused(why) => {
                tally.refused += 1;
                tally
                    .failures
                    .push(format!("{} refused ({why})", candidate.region));
            }
            Attempt::TimedOut { waited, cut } => {
                tally.timed_out += 1;
                tally.deadline |= cut;
                tally.failures.push(format!(
                    "{} did not answer within {} ms",
                    candidate.region,
                    waited.as_millis()
                ));
                if cut {
                    break;
                }
            }
            Attempt::Shutdown => {
                let reason = "central is shutting down".into();
                return failed(shared, request, reason, tally.tried, "shutdown");
            }
        }
    }
    no_acceptance(shared, request, tally)
}

/// The reply when no candidate accepted.
fn no_acceptance(shared: &Shared, request: &RerouteRequest, tally: Tally) -> RerouteReply {
    let details = tally.failures.join("; ");
    let tried = tally.tried;
    if tally.deadline {
        let reason = if tried.is_empty() {
            "deadline reached before any region could be asked".to_owned()
        } else {
            format!("deadline reached: {details}")
        };
        failed(shared, request, reason, tried, "deadline")
    } else if tally.refused == 0 {
        failed(
            shared,
            request,
            format!("timed out: {details}"),
            tried,
            "timeout",
        )
    } else if tally.timed_out == 0 {
        let reason = format!("all regions refused: {details}");
        failed(shared, request, reason, tried, "refused")
    } else {
        let reason = format!("all regions refused or timed out: {details}");
        failed(shared, request, reason, tried, "refused")
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

/// Offers the vehicle to one candidate and waits (at most `wait`) for its answer.
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
    judge(shared, request, &id, candidate, reply)
}

/// What a target's reply means: an acceptance only with a station and an `assigned`
/// (made `rerouted`) or `rerouted` recommendation.
fn judge(
    shared: &Shared,
    request: &RerouteRequest,
    id: &str,
    candidate: &Candidate,
    reply: HandoffReply,
) -> Attempt {
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

    #[test]
    fn handoff_ids_are_valid_protocol_ids() {
        let id = handoff_id();
        protocol::validate_id("handoff_id", &id).unwrap();
        assert_ne!(id, handoff_id());
    }
}
