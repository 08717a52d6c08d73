//! What a run measured, per strategy: a table for people and JSON for programs
//! (`--report-json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole report: the scenario and one entry per strategy, in run order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub scenario: serde_json::Value,
    pub strategies: BTreeMap<String, StrategyReport>,
    /// Strategy names in the order they ran.
    pub order: Vec<String>,
    /// How the simulated stations talked: `mqtt` (their own MQTT clients) or `ocpp`
    /// (OCPP 1.6J charge points of each region's gateway).
    #[serde(default = "mqtt")]
    pub station_transport: String,
}

fn mqtt() -> String {
    "mqtt".into()
}

/// Percentiles of the request → answer round trip, wall-clock milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Rtt {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Wait at the station from arrival to the start of charging, simulated seconds —
/// vehicles still queued at the end count with their wait so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Wait {
    pub mean: f64,
    pub p95: f64,
    pub max: f64,
    /// How many vehicles waited how long: bands of [`WAIT_BANDS_MIN`] minutes.
    #[serde(default)]
    pub hist: Vec<HistBin>,
}

/// Lower edges of the wait bands, minutes (the last band is open).
pub const WAIT_BANDS_MIN: [u32; 8] = [0, 5, 10, 15, 30, 60, 90, 120];

/// One wait band: `from_min` ≤ wait < `to_min` (no `to_min`: the open last band).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistBin {
    pub from_min: u32,
    pub to_min: Option<u32>,
    pub count: u32,
}

/// Share of charger time spent charging, over stations.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Utilisation {
    pub mean: f64,
    pub p10: f64,
    pub p90: f64,
    pub max: f64,
    /// Coefficient of variation (standard deviation / mean): the spread.
    pub cv: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StrategyReport {
    /// Vehicles that needed a station (retries not counted).
    pub requests: u32,
    /// Requests that got a station or a definite "none" (for `fog`: a recommendation).
    pub answered: u32,
    /// Round trip of requests to the fog server; `None` for the strategies that decide
    /// in the vehicle without asking anybody.
    pub rtt_ms: Option<Rtt>,
    pub wait_s: Wait,
    pub stranded: u32,
    /// Answers that sent the vehicle to another region's station.
    pub rerouted: u32,
    /// Answers `unavailable`.
    pub unavailable: u32,
    /// Revised answers to a vehicle on its way: the station refused the reservation
    /// (only stations that take reservations, OCPP ones). The vehicle asks again (a
    /// request more) once; after a second refusal it drives on to that station without
    /// a reservation.
    #[serde(default)]
    pub revised: u32,
    /// Requests answered by nobody in time (the vehicle asked again, then fell back).
    pub timeouts: u32,
    /// Vehicles that drove to the nearest station because the fog gave them none.
    pub fallbacks: u32,
    pub arrivals: u32,
    pub charged: u32,
    /// At the end: vehicles still waiting, and charging.
    pub queued_at_end: u32,
    pub charging_at_end: u32,
    /// Times a station charged more vehicles than it has chargers (always 0).
    pub overbooked: u32,
    pub utilisation: Utilisation,
    /// Drivers who asked and follow the answer, and who asked but drive to the nearest
    /// station anyway (`--compliance`); 0 for the strategies that ask nobody.
    #[serde(default)]
    pub followers: u32,
    #[serde(default)]
    pub non_followers: u32,
    /// Reservations the non-followers gave back (`cancel`).
    #[serde(default)]
    pub cancelled: u32,
    /// The network the run put between the devices and their brokers, and between
    /// the regional brokers and central: configured round trips, ms (`None`: no server
    /// asked).
    #[serde(default)]
    pub device_rtt_ms: Option<f64>,
    #[serde(default)]
    pub bridge_rtt_ms: Option<f64>,
    /// MQTT messages sent and received by the simulated devices, per wall second.
    pub msgs_per_s: f64,
    /// The same, per broker (region id): what each server's broker carried from and to
    /// the devices.
    #[serde(default)]
    pub msgs_per_s_by_broker: BTreeMap<String, f64>,
    pub messages: u64,
    pub sim_hours: f64,
    pub wall_s: f64,
    /// How far the world fell behind the shared clock at worst, simulated seconds.
    pub max_lag_s: f64,
    /// With `--station-transport ocpp`: what the charge points said and answered.
    #[serde(default)]
    pub ocpp: Option<crate::ocpp::OcppFigures>,
}

/// The value below which `q` of the sorted `values` lie (nearest rank); 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn rtt(mut values_ms: Vec<f64>) -> Rtt {
    values_ms.sort_by(f64::total_cmp);
    Rtt {
        p50: percentile(&values_ms, 0.50),
        p95: percentile(&values_ms, 0.95),
        p99: percentile(&values_ms, 0.99),
        max: values_ms.last().copied().unwrap_or(0.0),
    }
}

pub fn wait(mut values_s: Vec<f64>) -> Wait {
    values_s.sort_by(f64::total_cmp);
    let mean = if values_s.is_empty() {
        0.0
    } else {
        values_s.iter().sum::<f64>() / values_s.len() as f64
    };
    let hist = WAIT_BANDS_MIN
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            let to = WAIT_BANDS_MIN.get(i + 1).copied();
            let count = values_s
                .iter()
                .filter(|&&w| {
                    let min = w / 60.0;
                    min >= f64::from(from) && to.is_none_or(|t| min < f64::from(t))
                })
                .count() as u32;
            HistBin {
                from_min: from,
                to_min: to,
                count,
            }
        })
        .collect();
    Wait {
        mean,
        p95: percentile(&values_s, 0.95),
        max: values_s.last().copied().unwrap_or(0.0),
        hist,
    }
}

pub fn utilisation(mut shares: Vec<f64>) -> Utilisation {
    shares.sort_by(f64::total_cmp);
    let n = shares.len().max(1) as f64;
    let mean = shares.iter().sum::<f64>() / n;
    let var = shares.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
    Utilisation {
        mean,
        p10: percentile(&shares, 0.10),
        p90: percentile(&shares, 0.90),
        max: shares.last().copied().unwrap_or(0.0),
        cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
    }
}

impl Report {
    /// The comparison table, one column per strategy.
    pub fn table(&self) -> String {
        let cols: Vec<(&str, &StrategyReport)> = self
            .order
            .iter()
            .filter_map(|n| Some((n.as_str(), self.strategies.get(n)?)))
            .collect();
        let ms = |v: f64| format!("{v:.2}");
        let min = |s: f64| format!("{:.1}", s / 60.0);
        let pct = |v: f64| format!("{:.0}%", v * 100.0);
        type Row = (&'static str, fn(&StrategyReport) -> Option<f64>, u8);
        let rows: &[Row] = &[
            ("network: device rtt (ms)", |r| r.device_rtt_ms, 1),
            ("network: bridge rtt (ms)", |r| r.bridge_rtt_ms, 1),
            ("requests", |r| Some(r.requests.into()), 0),
            ("answered", |r| Some(r.answered.into()), 0),
            ("round trip p50 (ms)", |r| r.rtt_ms.map(|x| x.p50), 1),
            ("round trip p95 (ms)", |r| r.rtt_ms.map(|x| x.p95), 1),
            ("round trip p99 (ms)", |r| r.rtt_ms.map(|x| x.p99), 1),
            ("wait mean (min)", |r| Some(r.wait_s.mean), 2),
            ("wait p95 (min)", |r| Some(r.wait_s.p95), 2),
            ("wait max (min)", |r| Some(r.wait_s.max), 2),
            ("stranded", |r| Some(r.stranded.into()), 0),
            ("rerouted", |r| Some(r.rerouted.into()), 0),
            ("unavailable / fallback", |r| Some(r.fallbacks.into()), 0),
            ("charged", |r| Some(r.charged.into()), 0),
            ("queued at end", |r| Some(r.queued_at_end.into()), 0),
            ("utilisation mean", |r| Some(r.utilisation.mean), 3),
            (
                "utilisation p10-p90",
                |r| Some(r.utilisation.p90 - r.utilisation.p10),
                3,
            ),
            ("utilisation spread (cv)", |r| Some(r.utilisation.cv), 4),
            ("followers", |r| r.rtt_ms.map(|_| r.followers.into()), 0),
            (
                "non-followers",
                |r| r.rtt_ms.map(|_| r.non_followers.into()),
                0,
            ),
            ("messages / s", |r| Some(r.msgs_per_s), 5),
            (
                "messages / s, busiest broker",
                |r| r.msgs_per_s_by_broker.values().copied().reduce(f64::max),
                5,
            ),
            ("wall time (s)", |r| Some(r.wall_s), 5),
        ];
        let ocpp_rows: &[Row] = &[
            ("revised (reserve refused)", |r| Some(r.revised.into()), 0),
            (
                "ocpp: reserve accepted",
                |r| r.ocpp.as_ref().map(|o| o.reservations_accepted as f64),
                0,
            ),
            (
                "ocpp: reserve refused",
                |r| r.ocpp.as_ref().map(|o| o.reservations_refused as f64),
                0,
            ),
            (
                "ocpp: start on reservation",
                |r| {
                    r.ocpp
                        .as_ref()
                        .map(|o| o.transactions_on_reservation as f64)
                },
                0,
            ),
            (
                "ocpp: call errors",
                |r| r.ocpp.as_ref().map(|o| o.call_errors as f64),
                0,
            ),
        ];
        let ocpp = self.station_transport == "ocpp";
        let rows = rows.iter().chain(ocpp_rows.iter().filter(|_| ocpp));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "stations: {}",
            if ocpp {
                "OCPP 1.6J charge points, through each region's gateway"
            } else {
                "MQTT clients"
            }
        );
        let width = 26;
        let _ = write!(out, "{:<width$}", "");
        for (name, _) in &cols {
            let _ = write!(out, "{name:>14}");
        }
        out.push('\n');
        for (label, get, kind) in rows {
            let _ = write!(out, "{label:<width$}");
            for (_, r) in &cols {
                let cell = match get(r) {
                    None => "-".to_owned(),
                    Some(v) => match kind {
                        0 => format!("{v:.0}"),
                        1 => ms(v),
                        2 => min(v),
                        3 => pct(v),
                        4 => format!("{v:.2}"),
                        _ => format!("{v:.0}"),
                    },
                };
                let _ = write!(out, "{cell:>14}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn utilisation_spread_is_zero_when_even() {
        let u = utilisation(vec![0.5, 0.5, 0.5]);
        assert_eq!(u.cv, 0.0);
        let u = utilisation(vec![0.0, 1.0]);
        assert!((u.cv - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_json_has_the_documented_shape() {
        let mut strategies = BTreeMap::new();
        strategies.insert(
            "fog".to_owned(),
            StrategyReport {
                rtt_ms: Some(Rtt::default()),
                ..StrategyReport::default()
            },
        );
        strategies.insert("nearest".to_owned(), StrategyReport::default());
        let r = Report {
            scenario: serde_json::json!({}),
            strategies,
            order: vec!["fog".into(), "nearest".into()],
            station_transport: "mqtt".into(),
        };
        let j = serde_json::to_value(&r).unwrap();
        for key in [
            "requests",
            "answered",
            "wait_s",
            "stranded",
            "rerouted",
            "msgs_per_s",
        ] {
            assert!(j["strategies"]["fog"].get(key).is_some(), "{key}");
        }
        assert!(j["strategies"]["fog"]["rtt_ms"]["p99"].is_number());
        assert!(j["strategies"]["nearest"]["rtt_ms"].is_null());
        assert!(j["strategies"]["fog"]["wait_s"]["p95"].is_number());
        let table = r.table();
        assert!(
            table.contains("fog") && table.contains("nearest"),
            "{table}"
        );
        assert_eq!(j["station_transport"], "mqtt");
        assert!(table.starts_with("stations: MQTT clients"), "{table}");
        assert!(!table.contains("ocpp:"), "{table}");
    }
}
