//! Prometheus metrics of central (served at `/metrics`, all prefixed `central_`).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `central_aggregates_total` | counter | — aggregates accepted (new, newer, or a fog restart) |
//! | `central_aggregates_ignored_total` | counter | — duplicates and out-of-order copies |
//! | `central_invalid_messages_total` | counter | `kind`: `topic`, `aggregate`, `reroute`, `handoff_reply` |
//! | `central_reroutes_requested_total` | counter | — distinct reroute requests |
//! | `central_reroutes_duplicate_total` | counter | — repeated `reroute_id`s (no second reroute) |
//! | `central_reroutes_succeeded_total` | counter | — |
//! | `central_reroutes_failed_total` | counter | `reason`: `invalid`, `no_region`, `refused`, `timeout`, `deadline`, `shutdown` |
//! | `central_handoffs_total` | counter | `outcome`: `accepted`, `refused`, `timeout`, `revoked` (the target could not keep the reservation; passed on to the origin) |
//! | `central_handoff_replies_unmatched_total` | counter | — replies to no waiting handoff (late or unknown) |
//! | `central_handoff_seconds` | histogram | — handoff sent → reply received |
//! | `central_reroute_seconds` | histogram | — reroute request received → reply sent |
//! | `central_regions` | gauge | — regions known |
//! | `central_regions_stale` | gauge | — regions whose data is stale |
//! | `central_regions_saturated` | gauge | — regions saturated |
//! | `central_region_data_age_seconds` | gauge | `region` |
//! | `central_mqtt_reconnects_total` | counter | — |
//! | `central_mqtt_takeovers_total` | counter | — |
//!
//! The counters and histograms follow the core's [`Event`]s ([`Metrics::apply`],
//! after every step of the core); the latencies are measured by the core on the shared
//! clock in whole milliseconds and shown in real seconds. The region gauges are
//! computed when `/metrics` is scraped.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::Event;
use crate::regions::Regions;

/// The `kind` values of `central_invalid_messages_total`.
pub const INVALID_KINDS: [&str; 6] = [
    "topic",
    "aggregate",
    "stations",
    "reroute",
    "handoff_reply",
    "handoff_revoked",
];

/// The `reason` values of `central_reroutes_failed_total`.
pub const FAILURE_REASONS: [&str; 6] = [
    "invalid",
    "no_region",
    "refused",
    "timeout",
    "deadline",
    "shutdown",
];

/// The `outcome` values of `central_handoffs_total`.
pub const HANDOFF_OUTCOMES: [&str; 4] = ["accepted", "refused", "timeout", "revoked"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabel {
    pub region: String,
}

/// Every metric central keeps. Cheap to update from the message loop.
#[derive(Debug)]
pub struct Metrics {
    pub aggregates: Counter,
    pub aggregates_ignored: Counter,
    pub invalid_messages: Family<KindLabel, Counter>,
    pub reroutes_requested: Counter,
    pub reroutes_duplicate: Counter,
    pub reroutes_succeeded: Counter,
    pub reroutes_failed: Family<ReasonLabel, Counter>,
    pub handoffs: Family<OutcomeLabel, Counter>,
    pub handoff_replies_unmatched: Counter,
    pub handoff_seconds: Histogram,
    pub reroute_seconds: Histogram,
    pub regions: Gauge,
    pub regions_stale: Gauge,
    pub regions_saturated: Gauge,
    pub region_data_age_seconds: Family<RegionLabel, Gauge<f64, AtomicU64>>,
    pub mqtt_reconnects: Counter,
    /// Connections taken over by another client with this client id.
    pub mqtt_takeovers: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let latency = || {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        };
        let m = Self {
            aggregates: Counter::default(),
            aggregates_ignored: Counter::default(),
            invalid_messages: Family::default(),
            reroutes_requested: Counter::default(),
            reroutes_duplicate: Counter::default(),
            reroutes_succeeded: Counter::default(),
            reroutes_failed: Family::default(),
            handoffs: Family::default(),
            handoff_replies_unmatched: Counter::default(),
            handoff_seconds: latency(),
            reroute_seconds: latency(),
            regions: Gauge::default(),
            regions_stale: Gauge::default(),
            regions_saturated: Gauge::default(),
            region_data_age_seconds: Family::default(),
            mqtt_reconnects: Counter::default(),
            mqtt_takeovers: Counter::default(),
        };
        // Every label value exists from the start (at 0), so that dashboards and
        // `rate()` see the series before the first event.
        for kind in INVALID_KINDS {
            let _ = m.invalid_messages.get_or_create(&KindLabel { kind });
        }
        for reason in FAILURE_REASONS {
            let _ = m.reroutes_failed.get_or_create(&ReasonLabel { reason });
        }
        for outcome in HANDOFF_OUTCOMES {
            let _ = m.handoffs.get_or_create(&OutcomeLabel { outcome });
        }
        m
    }

    /// A registry exposing these metrics under the `central_` prefix.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("central");
        r.register(
            "aggregates",
            "Region aggregates accepted",
            self.aggregates.clone(),
        );
        r.register(
            "aggregates_ignored",
            "Region aggregates ignored as duplicates or out of order",
            self.aggregates_ignored.clone(),
        );
        r.register(
            "invalid_messages",
            "Messages refused as invalid, by kind",
            self.invalid_messages.clone(),
        );
        r.register(
            "reroutes_requested",
            "Reroute requests received (duplicates not counted)",
            self.reroutes_requested.clone(),
        );
        r.register(
            "reroutes_duplicate",
            "Repeated reroute ids that started no second reroute",
            self.reroutes_duplicate.clone(),
        );
        r.register(
            "reroutes_succeeded",
            "Reroutes that found a region accepting the vehicle",
            self.reroutes_succeeded.clone(),
        );
        r.register(
            "reroutes_failed",
            "Reroutes that found no region, by reason",
            self.reroutes_failed.clone(),
        );
        r.register(
            "handoffs",
            "Handoffs sent to target regions, by outcome",
            self.handoffs.clone(),
        );
        r.register(
            "handoff_replies_unmatched",
            "Handoff replies that matched no waiting handoff (late or unknown)",
            self.handoff_replies_unmatched.clone(),
        );
        r.register(
            "handoff_seconds",
            "Time from sending a handoff to receiving its reply",
            self.handoff_seconds.clone(),
        );
        r.register(
            "reroute_seconds",
            "Time from receiving a reroute request to sending its reply",
            self.reroute_seconds.clone(),
        );
        r.register("regions", "Regions known", self.regions.clone());
        r.register(
            "regions_stale",
            "Regions whose latest aggregate is older than --stale-after-ms",
            self.regions_stale.clone(),
        );
        r.register(
            "regions_saturated",
            "Regions whose shortest predicted wait is missing or over their fog's wait limit (--max-wait-s)",
            self.regions_saturated.clone(),
        );
        r.register(
            "region_data_age_seconds",
            "Time since the region's latest aggregate was received",
            self.region_data_age_seconds.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "Reconnections to the central broker",
            self.mqtt_reconnects.clone(),
        );
        r.register(
            "mqtt_takeovers",
            "Connections to the central broker taken over by another client with the same client id (a second instance)",
            self.mqtt_takeovers.clone(),
        );
        r
    }

    pub fn invalid(&self, kind: &'static str) {
        self.invalid_messages
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub fn handoff(&self, outcome: &'static str) {
        self.handoffs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn reroute_failed(&self, reason: &'static str) {
        self.reroutes_failed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts what the core tells; `clock_speed` turns its clock milliseconds into
    /// real seconds.
    pub fn apply(&self, event: &Event, clock_speed: f64) {
        let seconds = |clock_ms: u64| clock_ms as f64 / clock_speed / 1000.0;
        match event {
            Event::Invalid(kind) => self.invalid(kind),
            Event::AggregateAccepted => {
                self.aggregates.inc();
            }
            Event::AggregateIgnored => {
                self.aggregates_ignored.inc();
            }
            Event::RerouteRequested => {
                self.reroutes_requested.inc();
            }
            Event::RerouteDuplicate => {
                self.reroutes_duplicate.inc();
            }
            Event::RerouteInvalid => self.reroute_failed("invalid"),
            Event::Handoff(outcome) => self.handoff(outcome),
            Event::HandoffReplied { latency_ms } => {
                self.handoff_seconds.observe(seconds(*latency_ms));
            }
            Event::HandoffReplyUnmatched => {
                self.handoff_replies_unmatched.inc();
            }
            Event::RerouteAnswered(answered) => {
                self.reroute_seconds.observe(seconds(answered.latency_ms));
                match answered.failure {
                    None => {
                        self.reroutes_succeeded.inc();
                    }
                    Some(reason) => self.reroute_failed(reason),
                }
            }
        }
    }

    /// Sets the region gauges from the current state (called at scrape time, with the
    /// time on the shared clock).
    pub fn observe_regions(&self, regions: &Regions, now_ms: u64) {
        self.regions.set(regions.len() as i64);
        self.regions_stale.set(regions.stale_count(now_ms) as i64);
        self.regions_saturated.set(regions.saturated_count() as i64);
        self.region_data_age_seconds.clear();
        for (id, state) in regions.iter() {
            self.region_data_age_seconds
                .get_or_create(&RegionLabel {
                    region: id.to_owned(),
                })
                .set(regions.data_age_ms(state, now_ms) as f64 / 1000.0);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
