//! Central's HTTP side.
//!
//! - `GET /api/regions`: every region, by id: `id`, `aggregate` (as the fog published
//!   it), `received_ms`, `data_age_ms`, `stale`, `saturated`.
//! - `GET /api/stations/best?lat=&lon=[&k=][&soc=][&battery_kwh=][&kwh_per_km=][&target_soc=]`:
//!   the `k` (default 5, at most 100) stations listed in the regions' aggregates that
//!   the vehicle can reach, least estimated total first (the estimate of
//!   [`cost_model::estimate`]). The vehicle defaults to 60 kWh, 0.18 kWh/km, soc
//!   0.3 → 0.8. Bad or unknown parameters get a 400 with `{"error": "…"}`.
//! - `GET /`, `/api/dashboard`, `/api/events`, `/report`, `/api/report`: the live
//!   dashboard ([`crate::dashboard`]).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when connected to the central broker, else 503.
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use protocol::{ChargeRequest, PROTOCOL_VERSION, Validate};
use serde::Serialize;

use crate::regions::{RegionView, StationEstimate, Vehicle};
use crate::{Shared, dashboard};

/// The vehicle assumed when the query does not describe one.
pub const DEFAULT_VEHICLE: Vehicle = Vehicle {
    lat: 0.0,
    lon: 0.0,
    soc: 0.3,
    battery_kwh: 60.0,
    kwh_per_km: 0.18,
    target_soc: 0.8,
};

/// Stations returned when `k` is not given, and the most that may be asked for.
pub const DEFAULT_K: usize = 5;
pub const MAX_K: usize = 100;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/regions", get(regions))
        .route("/api/stations/best", get(best_stations))
        .route("/", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::dashboard_js))
        .route("/dashboard.css", get(dashboard::dashboard_css))
        .route("/api/dashboard", get(dashboard::api_dashboard))
        .route("/api/events", get(dashboard::events))
        .route("/report", get(dashboard::report_page))
        .route("/report.js", get(dashboard::report_js))
        .route("/api/report", get(dashboard::api_report))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_connected() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the central broker\n",
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = String::new();
    let encoded = {
        // Held across both steps, so that concurrent scrapes do not see each other's
        // half-rebuilt per-region gauges. Encoding takes microseconds.
        let now = shared.now_ms();
        let core = shared.core();
        shared.metrics.observe_regions(core.regions(), now);
        prometheus_client::encoding::text::encode(&mut body, &shared.registry)
    };
    if let Err(e) = encoded {
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

async fn regions(State(shared): State<Arc<Shared>>) -> Json<Vec<RegionView>> {
    let now = shared.now_ms();
    Json(shared.core().regions().views(now))
}

#[derive(Debug, Serialize)]
struct BestStations {
    vehicle: Vehicle,
    stations: Vec<StationEstimate>,
}

async fn best_stations(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (vehicle, k) = match parse_best_query(&params) {
        Ok(parsed) => parsed,
        Err(msg) => return bad_request(msg),
    };
    let now = shared.now_ms();
    let mut stations = {
        let core = shared.core();
        core.regions()
            .rank_stations(&vehicle, &core.settings().model, now)
    };
    stations.truncate(k);
    Json(BestStations { vehicle, stations }).into_response()
}

fn bad_request(msg: String) -> Response {
    #[derive(Serialize)]
    struct Error {
        error: String,
    }
    (StatusCode::BAD_REQUEST, Json(Error { error: msg })).into_response()
}

/// Reads the vehicle and `k` from the query; the error says what is wrong.
pub fn parse_best_query(params: &HashMap<String, String>) -> Result<(Vehicle, usize), String> {
    const KNOWN: [&str; 7] = [
        "lat",
        "lon",
        "k",
        "soc",
        "battery_kwh",
        "kwh_per_km",
        "target_soc",
    ];
    let mut unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(format!(
            "unknown parameter(s) {}; expected lat, lon and optionally k, soc, battery_kwh, kwh_per_km, target_soc",
            unknown.join(", ")
        ));
    }
    let number = |name: &str| -> Result<Option<f64>, String> {
        params
            .get(name)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{name} must be a number, got {v:?}"))
            })
            .transpose()
    };
    let required = |name: &str| -> Result<f64, String> {
        number(name)?.ok_or_else(|| format!("{name} is required"))
    };
    let d = DEFAULT_VEHICLE;
    let vehicle = Vehicle {
        lat: required("lat")?,
        lon: required("lon")?,
        soc: number("soc")?.unwrap_or(d.soc),
        battery_kwh: number("battery_kwh")?.unwrap_or(d.battery_kwh),
        kwh_per_km: number("kwh_per_km")?.unwrap_or(d.kwh_per_km),
        target_soc: number("target_soc")?.unwrap_or(d.target_soc),
    };
    // The protocol's own rules for a charge request (ranges, finiteness).
    ChargeRequest {
        v: PROTOCOL_VERSION,
        request_id: "http".into(),
        lat: vehicle.lat,
        lon: vehicle.lon,
        soc: vehicle.soc,
        battery_kwh: vehicle.battery_kwh,
        kwh_per_km: vehicle.kwh_per_km,
        target_soc: vehicle.target_soc,
        ts_ms: None,
    }
    .validate()
    .map_err(|e| e.to_string())?;
    let k = match params.get("k") {
        None => DEFAULT_K,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(k) if (1..=MAX_K).contains(&k) => k,
            _ => return Err(format!("k must be an integer in [1, {MAX_K}], got {v:?}")),
        },
    };
    Ok((vehicle, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_fill_the_vehicle() {
        let (v, k) = parse_best_query(&q(&[("lat", "-12.25"), ("lon", "-38.95")])).unwrap();
        assert_eq!(k, DEFAULT_K);
        assert_eq!((v.lat, v.lon), (-12.25, -38.95));
        assert_eq!(v.battery_kwh, 60.0);
        assert_eq!(v.soc, 0.3);
        let (v, k) = parse_best_query(&q(&[
            ("lat", "1"),
            ("lon", "2"),
            ("k", "3"),
            ("soc", "0.5"),
            ("battery_kwh", "80"),
            ("kwh_per_km", "0.2"),
            ("target_soc", "0.9"),
        ]))
        .unwrap();
        assert_eq!(k, 3);
        assert_eq!(
            (v.soc, v.battery_kwh, v.kwh_per_km, v.target_soc),
            (0.5, 80.0, 0.2, 0.9)
        );
    }

    #[test]
    fn bad_input_is_named() {
        let err = |pairs: &[(&str, &str)]| parse_best_query(&q(pairs)).unwrap_err();
        assert!(err(&[("lon", "1")]).contains("lat is required"));
        assert!(err(&[("lat", "x"), ("lon", "1")]).contains("lat must be a number"));
        assert!(err(&[("lat", "91"), ("lon", "1")]).contains("lat"));
        assert!(err(&[("lat", "1"), ("lon", "1"), ("soc", "1.5")]).contains("soc"));
        assert!(err(&[("lat", "1"), ("lon", "1"), ("battery_kwh", "0")]).contains("battery_kwh"));
        assert!(err(&[("lat", "1"), ("lon", "1"), ("k", "0")]).contains("k must be"));
        assert!(err(&[("lat", "1"), ("lon", "1"), ("k", "101")]).contains("k must be"));
        assert!(err(&[("lat", "NaN"), ("lon", "1")]).contains("lat"));
        assert!(err(&[("lat", "1"), ("lon", "1"), ("foo", "1")]).contains("unknown parameter"));
    }
}
