//! The one cost model of fogcharge (documented in `docs/planner.md`): what it costs,
//! in seconds, to send a vehicle to a station. The fog planner uses it to choose a
//! station in its region, central to compare stations of different regions, so the
//! two cannot drift apart. Pure arithmetic: no I/O, no clock.
//!
//! ```text
//! road km   = great-circle km × road factor
//! reachable = road km ≤ soc × battery / consumption × (1 − safety margin)
//! total     = drive (road km / avg speed)
//!           + wait at arrival (max(0, earliest free charger − drive))
//!           + charge ((target soc − soc at arrival) × battery / power)
//! ```
//!
//! A region is **saturated** for a request when every reachable station waits longer
//! than `max_wait_s` (see [`is_saturated`] for the rule on a region's aggregate).
//!
//! The parameters are one clap group, [`CostParams`], flattened into both servers'
//! command lines; each binary names its environment variables ([`EnvNames`]).

#![forbid(unsafe_code)]

use clap::Args;
use protocol::ChargeRequest;
use protocol::fog::{AggregateStation, Offer};
use serde::{Deserialize, Serialize};

/// The model's parameters, shared by the fog server and central (same flags, same
/// defaults; the environment fallbacks are per binary, see [`CostParams::with_env`]).
#[derive(Debug, Clone, Copy, PartialEq, Args)]
pub struct CostParams {
    /// Road distance = great-circle distance × this factor.
    #[arg(long, default_value_t = 1.3)]
    pub road_factor: f64,
    /// Average driving speed, km/h.
    #[arg(long, default_value_t = 40.0)]
    pub avg_speed_kmh: f64,
    /// Share of the vehicle's range kept in reserve: a station is reachable when its
    /// road distance is at most range × (1 − margin).
    #[arg(long, default_value_t = 0.1)]
    pub safety_margin: f64,
    /// Longest acceptable predicted wait, seconds; a region whose every reachable
    /// station waits longer is saturated for that request.
    #[arg(long, default_value_t = 1800)]
    pub max_wait_s: u32,
}

impl Default for CostParams {
    fn default() -> Self {
        Self {
            road_factor: 1.3,
            avg_speed_kmh: 40.0,
            safety_margin: 0.1,
            max_wait_s: 1800,
        }
    }
}

/// A parameter that would make the model meaningless; the message names the flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("--{flag} must be a positive number, got {value}")]
    NotPositive { flag: &'static str, value: f64 },
    #[error("--road-factor must be at least 1, got {0}")]
    RoadFactorBelowOne(f64),
    #[error("--safety-margin must be in [0, 1), got {0}")]
    SafetyMargin(f64),
}

/// The environment variables of the group's flags in one binary (each binary has its
/// own prefix: `FOG_ROAD_FACTOR`, `CENTRAL_ROAD_FACTOR`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvNames {
    pub road_factor: &'static str,
    pub avg_speed_kmh: &'static str,
    pub safety_margin: &'static str,
    pub max_wait_s: &'static str,
}

impl CostParams {
    /// Gives a flag of the group its environment fallback from `names`; other flags are
    /// returned as they are. For a command that flattens the group:
    /// `#[command(mut_args(|arg| CostParams::with_env(arg, &NAMES)))]`.
    pub fn with_env(arg: clap::Arg, names: &EnvNames) -> clap::Arg {
        let name = match arg.get_id().as_str() {
            "road_factor" => names.road_factor,
            "avg_speed_kmh" => names.avg_speed_kmh,
            "safety_margin" => names.safety_margin,
            "max_wait_s" => names.max_wait_s,
            _ => return arg,
        };
        arg.env(name)
    }

    /// Refuses parameters that would make the model meaningless.
    pub fn check(&self) -> Result<(), ParamError> {
        for (flag, value) in [
            ("road-factor", self.road_factor),
            ("avg-speed-kmh", self.avg_speed_kmh),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ParamError::NotPositive { flag, value });
            }
        }
        if self.road_factor < 1.0 {
            return Err(ParamError::RoadFactorBelowOne(self.road_factor));
        }
        if !(0.0..1.0).contains(&self.safety_margin) {
            return Err(ParamError::SafetyMargin(self.safety_margin));
        }
        Ok(())
    }

    /// Road kilometres for a great-circle distance.
    pub fn road_km(&self, great_circle_km: f64) -> f64 {
        great_circle_km * self.road_factor
    }

    /// Road kilometres the vehicle may drive to a station: its range less the margin.
    pub fn usable_range_km(&self, vehicle: &Vehicle) -> f64 {
        vehicle.range_km() * (1.0 - self.safety_margin)
    }

    /// Great-circle kilometres within the vehicle's usable range (no station farther
    /// away, as the crow flies, can be reachable).
    pub fn reach_great_circle_km(&self, vehicle: &Vehicle) -> f64 {
        self.usable_range_km(vehicle) / self.road_factor
    }

    /// Seconds to drive `road_km`.
    pub fn drive_s(&self, road_km: f64) -> f64 {
        road_km / self.avg_speed_kmh * 3600.0
    }

    /// Whether a predicted wait is acceptable (at most `max_wait_s`).
    pub fn accepts_wait(&self, wait_s: f64) -> bool {
        wait_s <= f64::from(self.max_wait_s)
    }
}

/// A vehicle as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Vehicle {
    pub lat: f64,
    pub lon: f64,
    /// State of charge now, in [0, 1].
    pub soc: f64,
    pub battery_kwh: f64,
    pub kwh_per_km: f64,
    /// State of charge to charge up to, in [0, 1].
    pub target_soc: f64,
}

impl From<&ChargeRequest> for Vehicle {
    fn from(r: &ChargeRequest) -> Self {
        Self {
            lat: r.lat,
            lon: r.lon,
            soc: r.soc,
            battery_kwh: r.battery_kwh,
            kwh_per_km: r.kwh_per_km,
            target_soc: r.target_soc,
        }
    }
}

impl Vehicle {
    /// Kilometres the vehicle can still drive on its charge, with no safety margin.
    pub fn range_km(&self) -> f64 {
        self.soc * self.battery_kwh / self.kwh_per_km
    }

    /// Seconds to charge, after driving `road_km`, from the state of charge at arrival
    /// to the target at `power_kw` (the charging curve taken as flat; 0 when already
    /// above the target).
    pub fn charge_s(&self, road_km: f64, power_kw: f64) -> f64 {
        let arrival_soc = self.soc - road_km * self.kwh_per_km / self.battery_kwh;
        let kwh = (self.target_soc - arrival_soc).max(0.0) * self.battery_kwh;
        kwh / power_kw * 3600.0
    }
}

/// A station as another region listed it (in an aggregate, or an offer on central's
/// heartbeat): where it is, its power and the wait its fog predicted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Listed {
    pub lat: f64,
    pub lon: f64,
    pub power_kw: f64,
    pub predicted_wait_s: u32,
}

impl From<&AggregateStation> for Listed {
    fn from(s: &AggregateStation) -> Self {
        Self {
            lat: s.lat,
            lon: s.lon,
            power_kw: s.power_kw,
            predicted_wait_s: s.predicted_wait_s,
        }
    }
}

impl From<&Offer> for Listed {
    fn from(o: &Offer) -> Self {
        Self {
            lat: o.lat,
            lon: o.lon,
            power_kw: o.power_kw,
            predicted_wait_s: o.wait_s,
        }
    }
}

/// The predicted cost of sending a vehicle to one listed station, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub road_km: f64,
    pub drive_s: f64,
    pub wait_s: f64,
    pub charge_s: f64,
    /// drive + wait + charge.
    pub total_s: f64,
}

/// The estimate for `vehicle` at a station another region listed, or `None` when it
/// is out of reach (or its power is not a positive number).
///
/// road km = great-circle km × road factor; reachable when road km ≤ usable range;
/// drive = road km / average speed; wait = the station's predicted wait (as its fog
/// published it); charge = (target soc − soc at arrival) × battery / power (0 when
/// already above the target; the charging curve taken as flat).
pub fn estimate(vehicle: &Vehicle, station: Listed, model: &CostParams) -> Option<Estimate> {
    let km = protocol::geo::haversine_km(vehicle.lat, vehicle.lon, station.lat, station.lon);
    let road_km = model.road_km(km);
    // Written so that NaN (bad data) counts as unreachable / unpowered.
    let reachable = road_km <= model.usable_range_km(vehicle);
    let powered = station.power_kw.is_finite() && station.power_kw > 0.0;
    if !(reachable && powered) {
        return None;
    }
    let drive_s = model.drive_s(road_km);
    let charge_s = vehicle.charge_s(road_km, station.power_kw);
    let wait_s = f64::from(station.predicted_wait_s);
    Some(Estimate {
        road_km,
        drive_s,
        wait_s,
        charge_s,
        total_s: drive_s + wait_s + charge_s,
    })
}

/// Seconds a typical session of `session_kwh` lasts at a station of `power_kw`.
pub fn session_s(session_kwh: f64, power_kw: f64) -> f64 {
    session_kwh / power_kw.max(f64::MIN_POSITIVE) * 3600.0
}

/// The wait of a vehicle arriving `eta_s` from now at a station whose first charger is
/// free `free_at_s` from now.
pub fn wait_at_arrival_s(free_at_s: f64, eta_s: f64) -> f64 {
    (free_at_s - eta_s).max(0.0)
}

/// The saturation rule on a region's aggregate: saturated when no station is in
/// service (`min_wait_s` missing) or its shortest predicted wait is over the limit.
/// Free chargers and queues are already inside the predicted waits.
pub fn is_saturated(min_wait_s: Option<u32>, max_wait_s: u32) -> bool {
    min_wait_s.is_none_or(|w| w > max_wait_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    const NAMES: EnvNames = EnvNames {
        road_factor: "X_ROAD_FACTOR",
        avg_speed_kmh: "X_AVG_SPEED_KMH",
        safety_margin: "X_SAFETY_MARGIN",
        max_wait_s: "X_MAX_WAIT_S",
    };

    #[derive(Debug, Parser)]
    #[command(mut_args(|arg| CostParams::with_env(arg, &NAMES)))]
    struct Cli {
        #[arg(long)]
        other: Option<String>,
        #[command(flatten)]
        cost: CostParams,
    }

    const CAR: Vehicle = Vehicle {
        lat: 0.0,
        lon: 0.0,
        soc: 0.3,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
    };

    #[test]
    fn flag_defaults_are_the_default() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.cost, CostParams::default());
        cli.cost.check().unwrap();
        let cli = Cli::try_parse_from(["x", "--road-factor", "1.5", "--max-wait-s", "900"]);
        let cost = cli.unwrap().cost;
        assert_eq!((cost.road_factor, cost.max_wait_s), (1.5, 900));
    }

    #[test]
    fn every_flag_of_the_group_gets_its_variable_and_no_other_flag_does() {
        let cmd = Cli::command();
        let envs: Vec<(&str, Option<&str>)> = cmd
            .get_arguments()
            .map(|a| (a.get_id().as_str(), a.get_env().and_then(|e| e.to_str())))
            .collect();
        assert_eq!(
            envs,
            [
                ("other", None),
                ("road_factor", Some("X_ROAD_FACTOR")),
                ("avg_speed_kmh", Some("X_AVG_SPEED_KMH")),
                ("safety_margin", Some("X_SAFETY_MARGIN")),
                ("max_wait_s", Some("X_MAX_WAIT_S")),
            ]
        );
    }

    #[test]
    fn bad_parameters_name_the_flag() {
        let bad = |f: fn(&mut CostParams)| {
            let mut p = CostParams::default();
            f(&mut p);
            p.check().unwrap_err().to_string()
        };
        assert!(bad(|p| p.road_factor = 0.5).contains("--road-factor"));
        assert!(bad(|p| p.road_factor = f64::NAN).contains("--road-factor"));
        assert!(bad(|p| p.avg_speed_kmh = 0.0).contains("--avg-speed-kmh"));
        assert!(bad(|p| p.safety_margin = 1.0).contains("--safety-margin"));
    }

    #[test]
    fn drive_charge_range_and_wait() {
        let p = CostParams::default();
        assert_eq!(p.road_km(10.0), 13.0);
        assert_eq!(p.drive_s(13.0), 13.0 / 40.0 * 3600.0);
        // 0.3 × 60 / 0.18 = 100 km, 90 usable.
        assert!((p.usable_range_km(&CAR) - 90.0).abs() < 1e-9);
        assert!((p.reach_great_circle_km(&CAR) - 90.0 / 1.3).abs() < 1e-9);
        // arrival soc = 0.3 − 13 × 0.18 / 60 = 0.261; (0.8 − 0.261) × 60 / 50 h.
        let charge = CAR.charge_s(13.0, 50.0);
        assert!((charge - (0.8 - 0.261) * 60.0 / 50.0 * 3600.0).abs() < 1e-6);
        assert_eq!(Vehicle { soc: 0.9, ..CAR }.charge_s(1.0, 50.0), 0.0);
        assert_eq!(session_s(40.0, 50.0), 2880.0);
        assert_eq!(wait_at_arrival_s(300.0, 100.0), 200.0);
        assert_eq!(wait_at_arrival_s(300.0, 400.0), 0.0);
        assert!(p.accepts_wait(1800.0) && !p.accepts_wait(1800.5));
    }

    #[test]
    fn saturation_rule() {
        assert!(!is_saturated(Some(1800), 1800));
        assert!(is_saturated(Some(1801), 1800));
        assert!(is_saturated(None, 1800));
    }
}
