//! The target side of a reroute: central asks this region to take a vehicle from a
//! saturated one, if it can do better than the origin. The reply is remembered for a
//! while, so a redelivered handoff gets the same reply (and reserves nothing twice).

use protocol::RecommendationStatus;
use protocol::fog::{FogMessage, Handoff, HandoffReply};
use tracing::info;

use super::requests::saturation_reason;
use super::station_reservations::HandedOff;
use super::{Effects, Outgoing, Region};
use crate::metrics::Update;

/// How long handoff replies are remembered, for redelivered handoffs.
const HANDOFF_MEMORY_MS: u64 = 600_000;

impl Region {
    /// Central asks this region to take a vehicle from another region.
    pub(super) fn on_handoff(&mut self, handoff: &Handoff, now_ms: u64, fx: &mut Effects) {
        let reply = match self.handoffs.get(&handoff.handoff_id) {
            Some((reply, _)) => reply.clone(),
            None => {
                let reply = self.take_handoff(handoff, now_ms);
                self.handoffs
                    .insert(handoff.handoff_id.clone(), (reply.clone(), now_ms));
                reply
            }
        };
        fx.send(Outgoing {
            topic: FogMessage::HandoffReply.regional_topic(),
            payload: protocol::encode(&reply),
            retain: false,
        });
    }

    fn take_handoff(&mut self, h: &Handoff, now_ms: u64) -> HandoffReply {
        let refuse = |reason: String| HandoffReply {
            v: protocol::PROTOCOL_VERSION,
            handoff_id: h.handoff_id.clone(),
            region: self.name.clone(),
            accepted: false,
            recommendation: None,
            reason: Some(reason),
        };
        let choice = match self.planner.choose(&h.request, now_ms) {
            Ok(choice) => choice,
            Err(no) => return refuse(saturation_reason(&no, self.planner.params.cost.max_wait_s)),
        };
        if let Some(max) = h.max_total_s {
            if choice.total_s() >= max {
                return refuse(format!(
                    "best total here is {:.0} s, no better than {max:.0} s at the origin",
                    choice.total_s()
                ));
            }
        }
        let reason = format!(
            "region {} is saturated; rerouted to {}",
            h.origin_region, self.name
        );
        let recommendation = self.assign(
            &h.vehicle_id,
            &h.request,
            &choice,
            now_ms,
            RecommendationStatus::Rerouted,
            Some(reason),
        );
        let accepted = recommendation.status == RecommendationStatus::Rerouted;
        if let (true, Some(reservation_id)) = (accepted, &recommendation.reservation_id) {
            let handed = HandedOff {
                handoff_id: h.handoff_id.clone(),
                reroute_id: h.reroute_id.clone(),
                origin_region: h.origin_region.clone(),
            };
            self.handed.insert(reservation_id.clone(), handed.clone());
            self.just_handed.push((reservation_id.clone(), handed));
        }
        info!(vehicle = %h.vehicle_id, origin = %h.origin_region, accepted, "handoff");
        self.count(Update::Handoff(if accepted {
            "accepted"
        } else {
            "refused"
        }));
        HandoffReply {
            v: protocol::PROTOCOL_VERSION,
            handoff_id: h.handoff_id.clone(),
            region: self.name.clone(),
            accepted,
            reason: recommendation.reason.clone(),
            recommendation: accepted.then_some(recommendation),
        }
    }

    /// Forgets handoff replies too old to be asked for again.
    pub(super) fn expire_handoffs(&mut self, now_ms: u64) {
        self.handoffs
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) < HANDOFF_MEMORY_MS);
    }
}
