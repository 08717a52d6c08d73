//! Prometheus metrics of the gateway (served at `/metrics`, prefix `ocpp_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    pub kind: String,
}

impl Label {
    pub fn of(kind: &str) -> Self {
        Self { kind: kind.into() }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Charge points connected now.
    pub connected: Gauge,
    /// Handshakes refused, by why (`unknown`, `unauthorized`, `subprotocol`).
    pub refused: Family<Label, Counter>,
    /// CALLs received from charge points, by action.
    pub calls: Family<Label, Counter>,
    /// CALLERRORs sent to charge points, by code.
    pub call_errors: Family<Label, Counter>,
    /// Station statuses published.
    pub statuses: Counter,
    /// Reservations, by outcome (`accepted`, `rejected`, `timed_out`, `cancelled`, `arrived`,
    /// `waiting`: made for later while every connector is busy, `updated`: a `reserve`
    /// that changed one the gateway had, waiting or placed).
    pub reservations: Family<Label, Counter>,
    /// Calls to charge points that were not answered in time.
    pub call_timeouts: Counter,
    pub mqtt_reconnects: Counter,
    /// Broker connections taken over by another client with the gateway's client id.
    pub mqtt_takeovers: Counter,
    pub registry_reloads: Family<Label, Counter>,
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("ocpp");
        r.register(
            "connected",
            "Charge points connected",
            self.connected.clone(),
        );
        r.register(
            "handshakes_refused",
            "WebSocket handshakes refused, by why",
            self.refused.clone(),
        );
        r.register(
            "calls",
            "CALLs received from charge points, by action",
            self.calls.clone(),
        );
        r.register(
            "call_errors_sent",
            "CALLERRORs sent to charge points, by code",
            self.call_errors.clone(),
        );
        r.register(
            "statuses_published",
            "Station statuses published",
            self.statuses.clone(),
        );
        r.register(
            "reservations",
            "Reservations at charge points, by outcome",
            self.reservations.clone(),
        );
        r.register(
            "call_timeouts",
            "Calls to charge points not answered in time",
            self.call_timeouts.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "Reconnections to the broker",
            self.mqtt_reconnects.clone(),
        );
        r.register(
            "mqtt_takeovers",
            "Connections to the regional broker taken over by another client with the same client id (a second instance)",
            self.mqtt_takeovers.clone(),
        );
        r.register(
            "registry_reloads",
            "Reloads of the chargers file, by outcome",
            self.registry_reloads.clone(),
        );
        r
    }
}
