//! The fog server's HTTP side: health, readiness, Prometheus metrics, and the
//! region's state as JSON; while the server stands by (another instance serves the
//! region), only health and readiness.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;

use crate::Shared;
use crate::planner::Reservation;
use crate::region::StationView;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/stations", get(stations))
        .route("/api/reservations", get(reservations))
        .route("/api/region", get(region))
        .with_state(shared)
}

/// What a fog server answers before it serves: `/healthz` 503 while it is still
/// finding out whether another instance holds the region (so that "healthy" never
/// comes before the first subscription), 200 once it knows it stands by; `/readyz`
/// and everything else 503 with why it waits.
pub fn standby_router(state: Arc<Mutex<Standby>>) -> Router {
    let not_ready = |State(state): State<Arc<Mutex<Standby>>>| async move {
        let why = state.lock().unwrap_or_else(|e| e.into_inner()).why.clone();
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    };
    let health = |State(state): State<Arc<Mutex<Standby>>>| async move {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.standing_by {
            (StatusCode::OK, "ok (standing by)\n".to_owned())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", state.why))
        }
    };
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(not_ready))
        .fallback(not_ready)
        .with_state(state)
}

/// What a fog server that does not serve yet is doing.
#[derive(Debug, Default)]
pub struct Standby {
    /// Another instance serves the region (as opposed to: still finding out).
    pub standing_by: bool,
    pub why: String,
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let (ready, why) = shared.readiness();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{why}\n")).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn stations(State(shared): State<Arc<Shared>>) -> Json<Vec<StationView>> {
    let now = shared.clock.now_ms();
    Json(shared.lock().station_views(now))
}

async fn reservations(State(shared): State<Arc<Shared>>) -> Json<Vec<Reservation>> {
    let mut list: Vec<Reservation> = shared.lock().planner.reservations().cloned().collect();
    list.sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
    Json(list)
}

#[derive(Serialize)]
struct RegionView {
    region: String,
    outline: Option<Vec<[f64; 2]>>,
    stations: usize,
    stations_in_service: usize,
    reservations_active: usize,
    /// Central's heartbeat heard within `--central-timeout-ms`.
    central_present: bool,
    /// The regions central's last heartbeat lists as able to take vehicles.
    central_open_regions: Vec<String>,
    now_ms: u64,
}

async fn region(State(shared): State<Arc<Shared>>) -> Json<RegionView> {
    let now_ms = shared.clock.now_ms();
    let region = shared.lock();
    Json(RegionView {
        region: region.name.clone(),
        outline: shared.area.as_ref().map(|a| a.outline()),
        stations: region.planner.stations.len(),
        stations_in_service: region.planner.stations.in_service(),
        reservations_active: region.planner.active_reservations(),
        central_present: region.central_present(now_ms),
        central_open_regions: region.central_open_regions(),
        now_ms,
    })
}
