//! Central's heartbeat ([`CentralHeartbeat`]) to every region it knows: every
//! heartbeat period, and at once when the regions or the open ones changed (an
//! aggregate arrived, a region was withdrawn, a region went stale). Each region's
//! copy carries its own `nearest_open_km` and `offers`.

use protocol::fog::{CentralHeartbeat, FogMessage};
use protocol::{MAX_PAYLOAD_BYTES, PROTOCOL_VERSION};

use super::{CentralCore, Outgoing};

/// The heartbeat's own state.
#[derive(Debug)]
pub(super) struct Heartbeats {
    seq: u64,
    /// When the next periodic heartbeat is due (clock ms).
    next_due_ms: u64,
    /// What the last one said: the regions it went to, and the open ones.
    last: Option<(Vec<String>, Vec<String>)>,
}

impl Heartbeats {
    pub(super) fn new(started_ms: u64) -> Self {
        Self {
            seq: 0,
            next_due_ms: started_ms,
            last: None,
        }
    }
}

impl CentralCore {
    /// The regions a heartbeat goes to, and the open ones, now.
    fn heartbeat_state(&self, now_ms: u64) -> (Vec<String>, Vec<String>) {
        (self.regions.ids(), self.regions.open_regions(now_ms))
    }

    pub(super) fn heartbeat_tick(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        if self.regions.is_empty() {
            return;
        }
        let state = self.heartbeat_state(now_ms);
        if now_ms >= self.heartbeats.next_due_ms || self.heartbeats.last.as_ref() != Some(&state) {
            self.send_heartbeats(state, now_ms, out);
        }
    }

    pub(super) fn heartbeat_if_changed(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        if self.regions.is_empty() {
            return;
        }
        let state = self.heartbeat_state(now_ms);
        if self.heartbeats.last.as_ref() != Some(&state) {
            self.send_heartbeats(state, now_ms, out);
        }
    }

    /// When [`Self::heartbeat_tick`] next has something to do: the next period, or
    /// an open region going stale first. Nothing while no region is known.
    pub(super) fn heartbeat_wake_ms(&self) -> Option<u64> {
        if self.regions.is_empty() {
            return None;
        }
        let stale = self
            .regions
            .iter()
            .filter(|(_, s)| self.regions.is_open(s, self.now_ms))
            .map(|(_, s)| self.regions.stale_at_ms(s))
            .min();
        Some(stale.map_or(self.heartbeats.next_due_ms, |s| {
            s.min(self.heartbeats.next_due_ms)
        }))
    }

    fn send_heartbeats(
        &mut self,
        (regions, open): (Vec<String>, Vec<String>),
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) {
        let period = self.settings.heartbeat_period;
        self.heartbeats.seq += 1;
        self.heartbeats.next_due_ms = now_ms + self.settings.clock_ms(period).max(1);
        let mut heartbeat = CentralHeartbeat {
            v: PROTOCOL_VERSION,
            started_ms: self.started_ms,
            seq: self.heartbeats.seq,
            ts_ms: now_ms,
            period_ms: (period.as_millis() as u64).max(1),
            open_regions: open.clone(),
            nearest_open_km: None,
            offers: Vec::new(),
        };
        for region in &regions {
            heartbeat.nearest_open_km = self.regions.nearest_open_km(region, now_ms);
            heartbeat.offers = self.regions.offers(
                region,
                now_ms,
                self.settings.offer_radius_km,
                self.settings.offer_limit,
            );
            out.push(Outgoing::down(
                FogMessage::Heartbeat,
                region,
                encode_fitting(&mut heartbeat),
            ));
        }
        self.counters.heartbeats += 1;
        self.heartbeats.last = Some((regions, open));
    }
}

/// The heartbeat encoded, its farthest offers left out until it fits the fogs'
/// payload limit ([`MAX_PAYLOAD_BYTES`]): a heartbeat a fog refuses would make it
/// believe central gone.
fn encode_fitting(heartbeat: &mut CentralHeartbeat) -> Vec<u8> {
    loop {
        let payload = protocol::encode(heartbeat);
        if payload.len() <= MAX_PAYLOAD_BYTES || heartbeat.offers.is_empty() {
            return payload;
        }
        // Drop about as many offers as the excess takes (measured by the farthest
        // one and its comma), at least one; the loop checks.
        let last = heartbeat
            .offers
            .last()
            .map_or(1, |o| protocol::encode(o).len() + 1);
        let excess = payload.len() - MAX_PAYLOAD_BYTES;
        let drop = excess.div_ceil(last.max(1)).max(1);
        let keep = heartbeat.offers.len().saturating_sub(drop);
        heartbeat.offers.truncate(keep);
    }
}
