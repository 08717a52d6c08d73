//! What a run measured, per strategy: a table for people and JSON for programs
//! (`--report-json`).
//!
//! - [`Report`], [`StrategyReport`]: the whole report and one strategy's figures.
//! - [`rtt`], [`wait`], [`utilisation`], [`promise`]: figures from raw measurements.
//! - [`Report::table`]: the comparison table, one column per strategy.

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
    /// The servers' cores ran in the simulator, on the simulated clock, over a
    /// modelled network (`--in-process`), not as processes behind brokers.
    #[serde(default)]
    pub in_process: bool,
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

/// How well the servers' promised waits held: for every vehicle that followed an answer
/// and started charging on it, its actual wait at the station against the answer's
/// `wait_s`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Promise {
    /// Promises checked.
    pub checked: u32,
    /// Share kept: actual wait within [`PROMISE_KEPT_S`] (5 min) of the promised one,
    /// earlier or later; 0 when none was checked.
    pub kept_share: f64,
    /// Broken: more than [`PROMISE_BROKEN_S`] (10 min) later than promised.
    pub broken: u32,
    /// Actual − promised wait, seconds, signed (> 0: later than promised).
    pub error_s: ErrorStats,
    /// Revised answers (a station refused the reservation) that vehicles followed.
    pub revised: u32,
}

/// Percentiles (nearest rank) and maximum of a signed error, seconds: `p95` and `max`
/// are the late tail. Signed, not absolute, so that early and late do not cancel out
/// into one "error" and a vehicle served early does not count as a miss as bad as
/// one served as late.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ErrorStats {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// A promise is kept when the actual wait is within this of the promised one, s.
pub const PROMISE_KEPT_S: f64 = 300.0;
/// A promise is broken when the actual wait is more than this longer, s.
pub const PROMISE_BROKEN_S: f64 = 600.0;

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
    /// Vehicles an answer sent to another region's station (at once, or by a
    /// revision of a local answer).
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
    /// Promised waits against actual ones; `None` for the strategies that promise
    /// nothing.
    #[serde(default)]
    pub promise: Option<Promise>,
    /// Charging session starts that failed (`--charger-fault-rate`).
    #[serde(default)]
    pub faults: u32,
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

/// The promise figures of `pairs` of (promised, actual) waits, seconds, and the
/// `revised` answers vehicles followed.
pub fn promise(pairs: &[(f64, f64)], revised: u32) -> Promise {
    let mut errors: Vec<f64> = pairs
        .iter()
        .map(|(promised, actual)| actual - promised)
        .collect();
    errors.sort_by(f64::total_cmp);
    let kept = errors.iter().filter(|e| e.abs() <= PROMISE_KEPT_S).count();
    Promise {
        checked: errors.len() as u32,
        kept_share: if errors.is_empty() {
            0.0
        } else {
            kept as f64 / errors.len() as f64
        },
        broken: errors.iter().filter(|&&e| e > PROMISE_BROKEN_S).count() as u32,
        error_s: ErrorStats {
            p50: percentile(&errors, 0.50),
            p95: percentile(&errors, 0.95),
            max: errors.last().copied().unwrap_or(0.0),
        },
        revised,
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

/// How a row of [`Report::table`] gets its cell from a strategy's report (`None`: "-").
enum Cell {
    /// A number and how to write it: 0 whole, 1 ms, 2 seconds as minutes, 3 share as
    /// %, 4 two decimals, 5 whole.
    Num(fn(&StrategyReport) -> Option<f64>, u8),
    /// Written by the row itself.
    Text(fn(&StrategyReport) -> Option<String>),
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
        use Cell::{Num, Text};
        type Row = (&'static str, Cell);
        let rows: &[Row] = &[
            ("network: device rtt (ms)", Num(|r| r.device_rtt_ms, 1)),
            ("network: bridge rtt (ms)", Num(|r| r.bridge_rtt_ms, 1)),
            ("requests", Num(|r| Some(r.requests.into()), 0)),
            ("answered", Num(|r| Some(r.answered.into()), 0)),
            ("round trip p50 (ms)", Num(|r| r.rtt_ms.map(|x| x.p50), 1)),
            ("round trip p95 (ms)", Num(|r| r.rtt_ms.map(|x| x.p95), 1)),
            ("round trip p99 (ms)", Num(|r| r.rtt_ms.map(|x| x.p99), 1)),
            ("wait mean (min)", Num(|r| Some(r.wait_s.mean), 2)),
            ("wait p95 (min)", Num(|r| Some(r.wait_s.p95), 2)),
            ("wait max (min)", Num(|r| Some(r.wait_s.max), 2)),
            ("stranded", Num(|r| Some(r.stranded.into()), 0)),
            ("rerouted", Num(|r| Some(r.rerouted.into()), 0)),
            (
                "unavailable / fallback",
                Num(|r| Some(r.fallbacks.into()), 0),
            ),
            ("charged", Num(|r| Some(r.charged.into()), 0)),
            ("queued at end", Num(|r| Some(r.queued_at_end.into()), 0)),
            (
                "promises checked",
                Num(|r| r.promise.as_ref().map(|p| p.checked.into()), 0),
            ),
            (
                "promises kept (±5 min)",
                Num(|r| r.promise.as_ref().map(|p| p.kept_share), 3),
            ),
            (
                "promises broken (>10 min late)",
                Num(|r| r.promise.as_ref().map(|p| p.broken.into()), 0),
            ),
            (
                "promise error p50/p95/max (min)",
                Text(|r| {
                    r.promise.as_ref().map(|p| {
                        let e = p.error_s;
                        format!(
                            "{:.1}/{:.1}/{:.1}",
                            e.p50 / 60.0,
                            e.p95 / 60.0,
                            e.max / 60.0
                        )
                    })
                }),
            ),
            ("charger faults", Num(|r| Some(r.faults.into()), 0)),
            ("utilisation mean", Num(|r| Some(r.utilisation.mean), 3)),
            (
                "utilisation p10-p90",
                Num(|r| Some(r.utilisation.p90 - r.utilisation.p10), 3),
            ),
            (
                "utilisation spread (cv)",
                Num(|r| Some(r.utilisation.cv), 4),
            ),
            (
                "followers",
                Num(|r| r.rtt_ms.map(|_| r.followers.into()), 0),
            ),
            (
                "non-followers",
                Num(|r| r.rtt_ms.map(|_| r.non_followers.into()), 0),
            ),
            ("messages / s", Num(|r| Some(r.msgs_per_s), 5)),
            (
                "messages / s, busiest broker",
                Num(
                    |r| r.msgs_per_s_by_broker.values().copied().reduce(f64::max),
                    5,
                ),
            ),
            ("wall time (s)", Num(|r| Some(r.wall_s), 5)),
        ];
        let ocpp_rows: &[Row] = &[
            (
                "revised (reserve refused)",
                Num(|r| Some(r.revised.into()), 0),
            ),
            (
                "ocpp: reserve accepted",
                Num(
                    |r| r.ocpp.as_ref().map(|o| o.reservations_accepted as f64),
                    0,
                ),
            ),
            (
                "ocpp: reserve refused",
                Num(
                    |r| r.ocpp.as_ref().map(|o| o.reservations_refused as f64),
                    0,
                ),
            ),
            (
                "ocpp: start on reservation",
                Num(
                    |r| {
                        r.ocpp
                            .as_ref()
                            .map(|o| o.transactions_on_reservation as f64)
                    },
                    0,
                ),
            ),
            (
                "ocpp: call errors",
                Num(|r| r.ocpp.as_ref().map(|o| o.call_errors as f64), 0),
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
            } else if self.in_process {
                "in process, with the servers' cores on the simulated clock (network modelled)"
            } else {
                "MQTT clients"
            }
        );
        let width = 32;
        let _ = write!(out, "{:<width$}", "");
        for (name, _) in &cols {
            let _ = write!(out, "{name:>14}");
        }
        out.push('\n');
        for (label, get) in rows {
            let _ = write!(out, "{label:<width$}");
            for (_, r) in &cols {
                let value = match get {
                    Num(get, kind) => get(r).map(|v| match kind {
                        0 => format!("{v:.0}"),
                        1 => ms(v),
                        2 => min(v),
                        3 => pct(v),
                        4 => format!("{v:.2}"),
                        _ => format!("{v:.0}"),
                    }),
                    Text(get) => get(r),
                };
                let cell = value.unwrap_or_else(|| "-".to_owned());
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
            in_process: false,
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

    #[test]
    fn promise_figures_count_kept_within_5_min_and_broken_beyond_10_min_late() {
        // (promised, actual) waits, s; errors: 300, -300, 301, 600, 601, -1200, 0, 1800.
        let pairs = [
            (600.0, 900.0),
            (600.0, 300.0),
            (0.0, 301.0),
            (100.0, 700.0),
            (100.0, 701.0),
            (1200.0, 0.0),
            (0.0, 0.0),
            (300.0, 2100.0),
        ];
        let p = promise(&pairs, 4);
        assert_eq!(p.checked, 8);
        // Kept: -300, 0, 300 (the bounds are in); 301 is not.
        assert_eq!(p.kept_share, 3.0 / 8.0);
        // Broken: 601 and 1800 (600 is late, not broken; early never is).
        assert_eq!(p.broken, 2);
        // Sorted: -1200, -300, 0, 300, 301, 600, 601, 1800 — signed, nearest rank.
        assert_eq!(
            p.error_s,
            ErrorStats {
                p50: 300.0,
                p95: 1800.0,
                max: 1800.0
            }
        );
        assert_eq!(p.revised, 4);
        // Early by a lot is a miss but not a break; the median goes below 0.
        let early = promise(&[(900.0, 0.0), (900.0, 100.0), (60.0, 60.0)], 0);
        assert_eq!((early.kept_share, early.broken), (1.0 / 3.0, 0));
        assert_eq!((early.error_s.p50, early.error_s.max), (-800.0, 0.0));
        let none = promise(&[], 1);
        assert_eq!(
            none,
            Promise {
                revised: 1,
                ..Promise::default()
            }
        );
    }

    #[test]
    fn promises_and_faults_are_in_the_json_the_table_and_the_page() {
        let mut strategies = BTreeMap::new();
        strategies.insert(
            "fog".to_owned(),
            StrategyReport {
                rtt_ms: Some(Rtt::default()),
                promise: Some(promise(&[(0.0, 300.0), (0.0, -60.0), (0.0, 1800.0)], 2)),
                faults: 7,
                ..StrategyReport::default()
            },
        );
        strategies.insert("nearest".to_owned(), StrategyReport::default());
        let r = Report {
            scenario: serde_json::json!({}),
            strategies,
            order: vec!["fog".into(), "nearest".into()],
            station_transport: "mqtt".into(),
            in_process: false,
        };
        let j = serde_json::to_value(&r).unwrap();
        let p = &j["strategies"]["fog"]["promise"];
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(p),
            ["broken", "checked", "error_s", "kept_share", "revised"]
        );
        assert_eq!(keys(&p["error_s"]), ["max", "p50", "p95"]);
        assert_eq!(p["checked"], 3);
        assert_eq!(p["broken"], 1);
        assert_eq!(j["strategies"]["fog"]["faults"], 7);
        assert!(j["strategies"]["nearest"]["promise"].is_null());
        // A report from before these fields still reads.
        let mut old = j["strategies"]["nearest"].clone();
        let o = old.as_object_mut().unwrap();
        o.remove("promise");
        o.remove("faults");
        let back: StrategyReport = serde_json::from_value(old).unwrap();
        assert_eq!((back.promise, back.faults), (None, 0));

        let table = r.table();
        let row = |label: &str| -> Vec<String> {
            let line = table
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label:?} in\n{table}"));
            line[label.len()..]
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(row("promises checked"), ["3", "-"]);
        assert_eq!(row("promises kept (±5 min)"), ["67%", "-"]);
        assert_eq!(row("promises broken (>10 min late)"), ["1", "-"]);
        assert_eq!(
            row("promise error p50/p95/max (min)"),
            ["5.0/30.0/30.0", "-"]
        );
        assert_eq!(row("charger faults"), ["7", "0"]);

        // The page reads the same fields.
        for field in [
            "promise",
            "checked",
            "kept_share",
            "broken",
            "error_s",
            "p50",
            "p95",
            "max",
            "revised",
            "faults",
        ] {
            assert!(
                report_page::REPORT_JS.contains(&format!(".{field}")),
                "the report page does not read {field}"
            );
        }
    }
}
