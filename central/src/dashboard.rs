//! The live dashboard: what the page at `/` shows, and how it stays current.
//!
//! - `GET /` (`/dashboard.js`, `/dashboard.css`): the page, embedded in the binary (no
//!   external assets, works offline): an SVG map of the region outlines shaded by
//!   saturation, every station as a marker coloured by predicted wait and sized by
//!   chargers (details on hover, focus or click), reroutes as arrows from the vehicle to
//!   the station it was sent to, counters, and each region's data age with a warning
//!   when it is stale (its fog server or bridge is down).
//! - `GET /api/dashboard`: the page's JSON ([`Snapshot`]).
//! - `GET /api/events`: Server-Sent Events: `snapshot` (a [`Snapshot`]) at once and then
//!   every second, `reroute` (a [`RerouteEvent`]) the moment central answers one.
//! - `GET /report` (`/report.js`) and `GET /api/report`: device-sim's JSON report drawn as
//!   charts (the page of the `report-page` crate), when central was given
//!   `--report-file`.
//!
//! Stations come from the fogs' retained `stations` messages (every periodic
//! aggregate); region figures from the aggregates; both as the core holds them
//! ([`crate::core::Board`], [`crate::regions`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use protocol::fog::AggregateStation;
use serde::Serialize;
use tokio::sync::broadcast;

use report_page::{REPORT_HTML, REPORT_JS};

use crate::Shared;
pub use crate::core::RerouteEvent;

pub const INDEX_HTML: &str = include_str!("dashboard/index.html");
pub const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
pub const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// One station on the map.
#[derive(Debug, Clone, Serialize)]
pub struct StationView {
    pub region: String,
    #[serde(flatten)]
    pub station: AggregateStation,
    pub data_age_ms: u64,
}

/// One region on the map.
#[derive(Debug, Clone, Serialize)]
pub struct RegionSummary {
    pub id: String,
    pub outline: Vec<[f64; 2]>,
    pub saturated: bool,
    pub stale: bool,
    pub data_age_ms: u64,
    pub stations: u32,
    pub stations_in_service: u32,
    pub chargers: u32,
    pub chargers_free: u32,
    pub queued: u32,
    pub reservations: u32,
    pub min_wait_s: Option<u32>,
    pub requests_total: u64,
    pub requests_per_s: f64,
    pub saturated_requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counters {
    pub requests_per_s: f64,
    pub reroutes_succeeded: u64,
    pub reroutes_failed: u64,
    pub saturated_requests: u64,
}

/// What the page shows: `GET /api/dashboard` and each `snapshot` event.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Central's clock (a simulation's runs `clock_speed` times faster than real time).
    pub now_ms: u64,
    pub clock_speed: f64,
    pub stale_after_ms: u64,
    pub regions: Vec<RegionSummary>,
    pub stations: Vec<StationView>,
    pub counters: Counters,
    pub reroutes: Vec<RerouteEvent>,
}

/// The dashboard's live side: the stream of reroutes for open pages (the data itself
/// is the core's).
#[derive(Debug)]
pub struct Dashboard {
    events: broadcast::Sender<RerouteEvent>,
    /// device-sim's report (`--report-file`), read when asked for.
    pub report_file: Option<std::path::PathBuf>,
    /// Ends the event streams, so that the HTTP server can stop.
    shutdown: tokio_util::sync::CancellationToken,
}

impl Dashboard {
    pub fn new(
        report_file: Option<std::path::PathBuf>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            events: broadcast::channel(256).0,
            report_file,
            shutdown,
        }
    }

    /// Central answered a reroute: sent to every open stream.
    pub fn on_reroute(&self, event: RerouteEvent) {
        // No receiver (no page open) is fine.
        let _ = self.events.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RerouteEvent> {
        self.events.subscribe()
    }
}

/// What the page shows now.
pub fn snapshot(shared: &Shared) -> Snapshot {
    let now = shared.now_ms();
    let core = shared.core();
    let counters = core.counters();
    let board = core.board();
    let mut regions = Vec::new();
    let mut totals = Counters {
        requests_per_s: 0.0,
        reroutes_succeeded: counters.reroutes_succeeded,
        reroutes_failed: counters.reroutes_failed_total(),
        saturated_requests: 0,
    };
    for v in core.regions().views(now) {
        let a = &v.aggregate;
        let requests_per_s = board.requests_per_s(&v.id);
        totals.requests_per_s += requests_per_s;
        totals.saturated_requests += a.saturated_requests;
        regions.push(RegionSummary {
            id: v.id.clone(),
            outline: a.outline.clone(),
            saturated: v.saturated,
            stale: v.stale,
            data_age_ms: v.data_age_ms,
            stations: a.stations,
            stations_in_service: a.stations_in_service,
            chargers: a.chargers,
            chargers_free: a.chargers_free,
            queued: a.queued,
            reservations: a.reservations,
            min_wait_s: a.min_wait_s,
            requests_total: a.requests_total,
            requests_per_s,
            saturated_requests: a.saturated_requests,
        });
    }
    let stations = board
        .stations()
        // A withdrawn region's stations go with it.
        .filter(|(region, _)| core.regions().get(region).is_some())
        .flat_map(|(region, list)| {
            let age = core.real_ms_between(list.received_ms, now);
            list.stations.iter().map(move |s| StationView {
                region: region.to_owned(),
                station: s.clone(),
                data_age_ms: age,
            })
        })
        .collect();
    Snapshot {
        now_ms: now,
        clock_speed: shared.clock.speed(),
        stale_after_ms: core.settings().stale_after.as_millis() as u64,
        regions,
        stations,
        counters: totals,
        reroutes: board.reroutes().cloned().collect(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn dashboard_js() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

pub async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

pub async fn report_page() -> Response {
    asset("text/html; charset=utf-8", REPORT_HTML)
}

pub async fn report_js() -> Response {
    asset("text/javascript; charset=utf-8", REPORT_JS)
}

pub async fn api_dashboard(State(shared): State<Arc<Shared>>) -> Json<Snapshot> {
    Json(snapshot(&shared))
}

/// `GET /api/report`: the report file as JSON; 404 without `--report-file`.
pub async fn api_report(State(shared): State<Arc<Shared>>) -> Response {
    let Some(path) = &shared.dashboard.report_file else {
        return (
            StatusCode::NOT_FOUND,
            "no report: start central with --report-file (device-sim --report-json writes one)\n",
        )
            .into_response();
    };
    // a small local file: read in place
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(value) => Json(value).into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{} is not a JSON report: {e}\n", path.display()),
            )
                .into_response(),
        },
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!("cannot read {}: {e}\n", path.display()),
        )
            .into_response(),
    }
}

/// `GET /api/events`: a `snapshot` now and every second, a `reroute` as it happens.
pub async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let reroutes = shared.dashboard.subscribe();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold(
        (shared, reroutes, ticks),
        |(shared, mut reroutes, mut ticks)| async move {
            let stop = shared.dashboard.shutdown.clone();
            let event = tokio::select! {
                _ = stop.cancelled() => return None,
                _ = ticks.tick() => json_event("snapshot", &snapshot(&shared)),
                r = reroutes.recv() => match r {
                    Ok(reroute) => json_event("reroute", &reroute),
                    // Fell behind: the next snapshot lists the recent reroutes.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        json_event("snapshot", &snapshot(&shared))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(event), (shared, reroutes, ticks)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn json_event(name: &str, value: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_default())
}
