//! The origin side of a reroute: what the region knows of central (its heartbeat and
//! its recent "no region within" hints), asking central for a saturated request, and
//! what central answers — or the timeout when it does not.
//!
//! Every time here is on the server's clock (ms), like the rest of the region: the
//! real durations of [`RerouteSettings`] are turned into clock ms by its speed.

use std::time::Duration;

use protocol::fog::{CentralHeartbeat, FogMessage, RerouteReply, RerouteRequest};
use protocol::{ChargeRequest, Recommendation, RecommendationStatus};
use tracing::{debug, info, warn};

use super::{Effects, Outgoing, Region};
use crate::metrics::Update;

/// Most hints kept.
const HINTS: usize = 32;

/// Cross-region rerouting, as the fog server sees it.
#[derive(Debug, Clone)]
pub struct RerouteSettings {
    /// Ask central when the region is saturated for a request.
    pub enabled: bool,
    /// How long to wait for central's answer before answering locally.
    pub timeout: Duration,
    /// Clock ms per real ms: the durations here are real time, the region's clock
    /// may run faster.
    pub clock_speed: f64,
    /// Central counts as unreachable when its last heartbeat is older than this (or
    /// none came yet): saturated requests are then answered at once, not asked.
    pub central_timeout: Duration,
    /// Ask central also for a request the region can serve, when a neighbour's
    /// station that central's heartbeat offers gets the vehicle charged at least this
    /// many seconds sooner (0: only saturated requests are asked).
    pub border_margin_s: u32,
}

impl Default for RerouteSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_millis(1500),
            clock_speed: 1.0,
            central_timeout: Duration::from_millis(3500),
            border_margin_s: 120,
        }
    }
}

impl RerouteSettings {
    /// A real duration in clock ms.
    fn clock_ms(&self, real: Duration) -> u64 {
        (real.as_secs_f64() * 1000.0 * self.clock_speed) as u64
    }

    /// Clock ms in real ms.
    fn real_ms(&self, clock_ms: u64) -> u64 {
        (clock_ms as f64 / self.clock_speed) as u64
    }
}

/// A request waiting for central's reroute answer.
#[derive(Debug)]
pub(super) struct PendingReroute {
    pub(super) vehicle_id: String,
    pub(super) request: ChargeRequest,
    /// When to stop waiting (clock ms): the deadline central was given.
    deadline_ms: u64,
    /// The local reservation held for the vehicle while central is asked: requests
    /// after it see the local station as it will be if central finds nothing better
    /// (not as if every request asking at once could have it). Ended when central
    /// reroutes the vehicle; its answer otherwise.
    pub(super) held: Option<String>,
    /// Asked although a local station serves it (a neighbour's looks sooner): the
    /// vehicle has its answer already (the held reservation), and a reroute comes to
    /// it as a revision.
    border: bool,
}

/// Central said that no region that can take vehicles lists a station within `km` of
/// (`lat`, `lon`): until `until_ms`, a request that could not reach past that either is
/// answered at once.
#[derive(Debug, Clone)]
pub(super) struct NoRegionHint {
    lat: f64,
    lon: f64,
    km: f64,
    at_ms: u64,
    until_ms: u64,
}

/// The region's own best for a request it asks central about.
#[derive(Debug, Clone)]
pub(super) struct LocalBest {
    /// Only regions whose total (drive + wait + charge) beats this qualify, s.
    pub(super) total_s: f64,
    /// The reservation held locally meanwhile ([`PendingReroute::held`]).
    pub(super) held: Option<String>,
    /// A border ask: `held` has been answered already ([`PendingReroute::border`]).
    pub(super) border: bool,
}

/// What the fog knows of central when a request is saturated.
#[derive(Debug, Clone, PartialEq)]
pub enum CentralView {
    /// Heard recently, and another region can take vehicles: ask.
    Ask,
    /// Heard recently, but no other region can take vehicles now.
    NoOpenRegion,
    /// Not heard within the timeout (or never); how long, real ms.
    Unreachable { silent_ms: Option<u128> },
}

impl Region {
    /// How far `req` can get, great-circle km (its usable range over the road factor).
    fn reach_km(&self, req: &ChargeRequest) -> f64 {
        let vehicle = cost_model::Vehicle::from(req);
        self.planner.params.cost.reach_great_circle_km(&vehicle)
    }

    /// Whether central's heartbeat says that every station of a region that can take
    /// vehicles is beyond `req`'s reach.
    fn beyond_reach(&self, req: &ChargeRequest) -> bool {
        let Some(nearest_open_km) = self.central.as_ref().and_then(|(_, hb)| hb.nearest_open_km)
        else {
            return false;
        };
        let Some(outside_km) =
            protocol::fog::distance_to_outline_km(&self.outline, req.lat, req.lon)
        else {
            return false;
        };
        outside_km + self.reach_km(req) < nearest_open_km
    }

    /// A recent hint of central's that covers `req`: it can reach no region that could
    /// take it. Its age (real ms), if so.
    fn hint_for(&mut self, req: &ChargeRequest, now_ms: u64) -> Option<u64> {
        self.hints.retain(|h| h.until_ms > now_ms);
        let reach_km = self.reach_km(req);
        self.hints
            .iter()
            .find(|h| protocol::geo::haversine_km(req.lat, req.lon, h.lat, h.lon) + reach_km < h.km)
            .map(|h| self.reroute.real_ms(now_ms.saturating_sub(h.at_ms)))
    }

    /// Real ms since central's last heartbeat, if one came.
    fn central_silent_ms(&self, now_ms: u64) -> Option<u64> {
        self.central
            .as_ref()
            .map(|(at, _)| self.reroute.real_ms(now_ms.saturating_sub(*at)))
    }

    /// What asking central for a saturated request would do at `now_ms`.
    pub fn central_view(&self, now_ms: u64) -> CentralView {
        let timeout_ms = self.reroute.central_timeout.as_millis() as u64;
        match (&self.central, self.central_silent_ms(now_ms)) {
            (None, _) | (_, None) => CentralView::Unreachable { silent_ms: None },
            (Some(_), Some(silent)) if silent > timeout_ms => CentralView::Unreachable {
                silent_ms: Some(u128::from(silent)),
            },
            (Some((_, hb)), _) if hb.open_regions.iter().any(|r| *r != self.name) => {
                CentralView::Ask
            }
            (Some(_), _) => CentralView::NoOpenRegion,
        }
    }

    /// The regions central's last heartbeat lists as able to take vehicles.
    pub fn central_open_regions(&self) -> Vec<String> {
        self.central
            .as_ref()
            .map(|(_, hb)| hb.open_regions.clone())
            .unwrap_or_default()
    }

    /// Whether central's heartbeat was heard within the timeout.
    pub fn central_present(&self, now_ms: u64) -> bool {
        !matches!(self.central_view(now_ms), CentralView::Unreachable { .. })
    }

    pub(super) fn on_heartbeat(&mut self, hb: CentralHeartbeat, now_ms: u64) {
        let timeout_ms = self.reroute.central_timeout.as_millis() as u64;
        match (&self.central, self.central_silent_ms(now_ms)) {
            (None, _) => {
                info!(open_regions = ?hb.open_regions, "central heard: saturated requests are rerouted")
            }
            (Some(_), Some(silent_ms)) if silent_ms > timeout_ms => {
                info!(
                    silent_ms,
                    "central heard again: saturated requests are rerouted again"
                )
            }
            (Some((_, old)), _) if old.started_ms != hb.started_ms => info!("central restarted"),
            (Some(_), _) => {}
        }
        if self
            .central
            .as_ref()
            .is_none_or(|(_, old)| old.open_regions != hb.open_regions)
        {
            // Which regions can take vehicles changed: central's hints are out of date.
            self.hints.clear();
        }
        self.central = Some((now_ms, hb));
    }

    /// Why a saturated request is not worth asking central about, in words for the
    /// vehicle (counted); `None`: ask.
    pub(super) fn why_not_ask_central(
        &mut self,
        req: &ChargeRequest,
        now_ms: u64,
    ) -> Option<String> {
        let (kind, why) = match self.central_view(now_ms) {
            CentralView::Ask if self.beyond_reach(req) => (
                "no_region_in_reach",
                "no other region that can take vehicles is in reach (central's heartbeat)"
                    .to_owned(),
            ),
            CentralView::Ask => {
                let age_ms = self.hint_for(req, now_ms)?;
                (
                    "no_region_in_reach",
                    format!(
                        "no other region that can take vehicles is in reach (central, {age_ms} ms ago)"
                    ),
                )
            }
            CentralView::NoOpenRegion => (
                "no_open_region",
                "no other region can take vehicles now (central's heartbeat lists none)".to_owned(),
            ),
            CentralView::Unreachable { silent_ms } => (
                "central_unreachable",
                match silent_ms {
                    Some(ms) => format!("central unreachable (no heartbeat for {ms} ms)"),
                    None => "central unreachable (no heartbeat heard yet)".to_owned(),
                },
            ),
        };
        self.count_reroute(kind);
        Some(why)
    }

    /// Whether this very request is already with central.
    pub(super) fn is_with_central(&self, vehicle_id: &str, request_id: &str) -> bool {
        self.pending
            .values()
            .any(|p| p.vehicle_id == vehicle_id && p.request.request_id == request_id)
    }

    /// A request still with central is superseded by a new one of the same vehicle: it
    /// is answered `unavailable` (at the next tick; a border ask had its answer) and
    /// central's late reply will be ignored, so that it cannot replace the reservation
    /// the new request gets.
    pub(super) fn supersede_pending(&mut self, vehicle_id: &str, new_request: &str, now_ms: u64) {
        let mut superseded: Vec<(u64, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.vehicle_id == vehicle_id)
            .map(|(id, p)| (p.deadline_ms, id.clone()))
            .collect();
        // In the order they were asked, not the map's (which differs from run to run).
        superseded.sort();
        for (_, id) in superseded {
            if let Some(p) = self.pending.remove(&id) {
                if let Some(held) = &p.held {
                    if self.planner.end(held, vehicle_id).is_ok() {
                        self.count_ended("replaced", 1);
                    }
                }
                if p.border {
                    continue;
                }
                let answer = Recommendation::refusal(
                    p.request.request_id.clone(),
                    RecommendationStatus::Unavailable,
                    format!("superseded by request {new_request}"),
                    &self.name,
                );
                self.remember(vehicle_id, &p.request.request_id, &answer, now_ms);
                let out = self.reply(vehicle_id, &answer);
                self.deferred.push(out);
            }
        }
    }

    /// The best total (drive + wait + charge, seconds) at a station of another region
    /// that central's heartbeat offers, when it beats `local_total_s` by the border
    /// margin: then the request is worth asking central about although the region
    /// could serve it.
    pub(super) fn better_across_border(
        &self,
        req: &ChargeRequest,
        local_total_s: f64,
        now_ms: u64,
    ) -> Option<f64> {
        let margin = f64::from(self.reroute.border_margin_s);
        if !self.reroute.enabled || margin <= 0.0 {
            return None;
        }
        if self.central_view(now_ms) != CentralView::Ask {
            return None;
        }
        let (_, hb) = self.central.as_ref()?;
        let cost = &self.planner.params.cost;
        let vehicle = cost_model::Vehicle::from(req);
        hb.offers
            .iter()
            .filter(|o| o.region != self.name)
            .filter_map(|o| cost_model::estimate(&vehicle, o.into(), cost).map(|e| e.total_s))
            .min_by(f64::total_cmp)
            .filter(|best| best + margin < local_total_s)
    }

    /// Sends the request to central for a reroute (only regions beating
    /// `local_best_total_s` qualify); the vehicle is answered when central replies or
    /// the deadline passes ([`Region::tick`]).
    pub(super) fn ask_central(
        &mut self,
        vehicle_id: &str,
        req: ChargeRequest,
        local: Option<LocalBest>,
        now_ms: u64,
    ) -> Outgoing {
        let local_best_total_s = local.as_ref().map(|l| l.total_s);
        let border = local.as_ref().is_some_and(|l| l.border);
        let held = local.and_then(|l| l.held);
        let reroute_id = self.next_id("rr-");
        let deadline_ms = now_ms + self.reroute.clock_ms(self.reroute.timeout);
        let message = RerouteRequest {
            v: protocol::PROTOCOL_VERSION,
            reroute_id: reroute_id.clone(),
            origin_region: self.name.clone(),
            vehicle_id: vehicle_id.to_owned(),
            request: req.clone(),
            local_best_total_s,
            deadline_ms,
        };
        info!(vehicle = vehicle_id, request = %req.request_id, reroute = %reroute_id, "region saturated: asking central");
        self.count_reroute("requested");
        self.pending.insert(
            reroute_id,
            PendingReroute {
                vehicle_id: vehicle_id.to_owned(),
                request: req,
                deadline_ms,
                held,
                border,
            },
        );
        Outgoing {
            topic: FogMessage::Reroute.regional_topic(),
            payload: protocol::encode(&message),
            retain: false,
        }
    }

    /// Central's answer to a reroute: forward it to the vehicle, or answer locally.
    pub(super) fn on_reroute_reply(&mut self, reply: RerouteReply, now_ms: u64, fx: &mut Effects) {
        let Some(pending) = self.pending.remove(&reply.reroute_id) else {
            debug!(reroute = %reply.reroute_id, "reroute reply for no pending request (late or repeated)");
            return;
        };
        if let (false, Some(km), Some(hold_ms)) =
            (reply.ok, reply.no_region_within_km, reply.hold_ms)
        {
            if self.hints.len() >= HINTS {
                self.hints.pop_front();
            }
            let hold = Duration::from_millis(hold_ms.min(60_000));
            self.hints.push_back(NoRegionHint {
                lat: pending.request.lat,
                lon: pending.request.lon,
                km,
                at_ms: now_ms,
                until_ms: now_ms + self.reroute.clock_ms(hold),
            });
        }
        match reply.recommendation {
            Some(rec) if reply.ok && rec.station.is_some() && pending.border => {
                self.improve(pending, rec, now_ms, fx);
            }
            Some(mut rec) if reply.ok && rec.station.is_some() => {
                let (vehicle_id, req) = (&pending.vehicle_id, &pending.request);
                if let Some(held) = &pending.held {
                    if self.planner.end(held, vehicle_id).is_ok() {
                        self.count_ended("rerouted", 1);
                    }
                }
                rec.request_id = req.request_id.clone();
                rec.status = RecommendationStatus::Rerouted;
                self.count_reroute("succeeded");
                self.finish(vehicle_id, &req.request_id, rec, now_ms, fx);
            }
            _ => {
                self.count_reroute("failed");
                let why = format!(
                    "no other region could take the vehicle: {}",
                    reply.reason.as_deref().unwrap_or("central gave no reason")
                );
                self.finish_unrerouted(pending, &why, now_ms, fx);
            }
        }
    }

    /// A border ask that central rerouted: the vehicle's local reservation ends and
    /// its answer is revised to the neighbour's station. If that reservation ended
    /// meanwhile (the vehicle arrived, cancelled or asked again, or a re-plan moved
    /// it), the vehicle keeps what it has; the neighbour's reservation expires unused.
    fn improve(
        &mut self,
        pending: PendingReroute,
        mut rec: Recommendation,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        let vehicle_id = pending.vehicle_id.as_str();
        let Some(held) = pending.held.filter(|id| {
            self.planner
                .reservation(id)
                .is_some_and(|r| r.vehicle_id == vehicle_id)
        }) else {
            info!(vehicle = vehicle_id, request = %pending.request.request_id, "reroute across the border came after the local reservation ended: not passed on");
            self.count_reroute("too_late");
            return;
        };
        self.count_reroute("succeeded");
        rec.status = RecommendationStatus::Rerouted;
        rec.reason.get_or_insert_with(|| {
            "a station across the border gets you charged sooner".to_owned()
        });
        // Found by the answer that names the local reservation, before it ends.
        self.deliver(vehicle_id, &held, rec, "rerouted", now_ms, fx);
        if self.planner.end(&held, vehicle_id).is_ok() {
            self.count_ended("rerouted", 1);
        }
    }

    /// Answers a request central did not reroute (`why`): with the reservation held
    /// for it while central was asked, if it still stands, else as a saturated
    /// request. A border ask was answered when it was asked: nothing more to say.
    fn finish_unrerouted(
        &mut self,
        pending: PendingReroute,
        why: &str,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        if pending.border {
            debug!(vehicle = %pending.vehicle_id, request = %pending.request.request_id, why, "no better station across the border");
            return;
        }
        let held = pending.held.as_deref().and_then(|id| {
            self.planner
                .reservation(id)
                .filter(|r| r.vehicle_id == pending.vehicle_id)
                .cloned()
        });
        let Some(r) = held else {
            self.finish_saturated(&pending.vehicle_id, &pending.request, why, now_ms, fx);
            return;
        };
        let wait_s = r.start_ms.saturating_sub(r.arrival_ms) / 1000;
        let reason = if wait_s > u64::from(self.planner.params.cost.max_wait_s) {
            Some(format!(
                "{why}; best local station despite a predicted wait of {wait_s} s"
            ))
        } else {
            Some(format!("{why}; a local station has room again"))
        };
        let request_id = pending.request.request_id;
        let mut answer = self.answer_for(&r, now_ms, reason);
        answer.request_id = request_id.clone();
        answer.status = RecommendationStatus::Assigned;
        answer.revised = false;
        self.finish(&pending.vehicle_id, &request_id, answer, now_ms, fx);
        // The station and the journal learn which request the reservation answers.
        self.answered_held(&r, request_id);
    }

    /// Answers locally the reroutes whose deadline has passed.
    pub(super) fn expire_reroutes(&mut self, now_ms: u64, fx: &mut Effects) {
        let mut late: Vec<(u64, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(id, p)| (p.deadline_ms, id.clone()))
            .collect();
        // Answered in the order they were asked (each answer may reserve a slot the
        // next one then sees), not in the map's order, which differs from run to run.
        late.sort();
        for (_, id) in late {
            let Some(pending) = self.pending.remove(&id) else {
                continue;
            };
            warn!(vehicle = %pending.vehicle_id, reroute = %id, "central did not answer in time");
            self.count_reroute("timed_out");
            let why = format!(
                "central unreachable (no reroute answer within {} ms)",
                self.reroute.timeout.as_millis()
            );
            self.finish_unrerouted(pending, &why, now_ms, fx);
        }
    }

    /// Reroutes waiting for central.
    pub fn pending_reroutes(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn count_reroute(&mut self, kind: &'static str) {
        self.count(Update::Reroute(kind));
    }
}
