//! Drives a region as these tests read best: one message in, its answer out (at most
//! one); the messages for stations kept aside until asked for; the metric changes
//! applied, as the server does.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use fog_server::metrics::Metrics;
use fog_server::region::{Effects, Outgoing, Region};
use protocol::{StationChannel, Topic};

pub struct Driven {
    region: Region,
    to_stations: Vec<Outgoing>,
    metrics: Arc<Metrics>,
}

impl From<Region> for Driven {
    fn from(region: Region) -> Self {
        Self {
            region,
            to_stations: Vec::new(),
            metrics: Arc::new(Metrics::new()),
        }
    }
}

impl Deref for Driven {
    type Target = Region;
    fn deref(&self) -> &Region {
        &self.region
    }
}

impl DerefMut for Driven {
    fn deref_mut(&mut self) -> &mut Region {
        &mut self.region
    }
}

#[allow(dead_code)] // each test binary uses some of these
impl Driven {
    /// Handles one message; returns what it published other than to stations.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
        let fx = self.region.receive(topic, payload, now_ms);
        let mut out = self.keep_station_messages(fx);
        assert!(out.len() <= 1, "one message, one answer: {out:?}");
        out.pop()
    }

    /// One tick; returns what it published other than to stations.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outgoing> {
        let fx = self.region.tick(now_ms);
        self.keep_station_messages(fx)
    }

    /// The metrics, as the server's `/metrics` shows them.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The messages for stations published since the last call.
    pub fn take_station_messages(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.to_stations)
    }

    fn keep_station_messages(&mut self, fx: Effects) -> Vec<Outgoing> {
        for update in &fx.metrics {
            self.metrics.apply(update);
        }
        let (to_stations, out): (Vec<Outgoing>, Vec<Outgoing>) =
            fx.publish.into_iter().partition(|o| {
                matches!(
                    Topic::parse(&o.topic),
                    Ok(Topic::Station {
                        channel: StationChannel::Reservations,
                        ..
                    })
                )
            });
        self.to_stations.extend(to_stations);
        out
    }
}
