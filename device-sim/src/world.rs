//! The world a simulation starts from: regions, stations and vehicles, made from a
//! scenario and a seed. The same scenario and seed always give the same world.

use clap::Args;
use geo::{Contains, Coord, LineString, Point, Polygon};
use protocol::geo::haversine_km;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use topology::Topology;

/// What to simulate. Every field has a command-line flag (`device-sim --help`).
#[derive(Debug, Clone, Args, Serialize)]
pub struct Scenario {
    /// Seed of the world (stations, vehicles, trips): the same seed, the same world.
    #[arg(long, env = "SIM_SEED", default_value_t = 7)]
    pub seed: u64,

    /// Number of vehicles.
    #[arg(long, env = "SIM_VEHICLES", default_value_t = 1200)]
    pub vehicles: usize,

    /// Number of charging stations.
    #[arg(long, env = "SIM_STATIONS", default_value_t = 60)]
    pub stations: usize,

    /// Simulated duration, hours.
    #[arg(long, env = "SIM_HOURS", default_value_t = 3.0)]
    pub hours: f64,

    /// Simulation step, simulated seconds.
    #[arg(long, env = "SIM_STEP_S", default_value_t = 1.0)]
    pub step_s: f64,

    /// A vehicle asks for a station when its state of charge falls below this.
    #[arg(long, env = "SIM_SOC_THRESHOLD", default_value_t = 0.25)]
    pub soc_threshold: f64,

    /// Vehicles charge up to this state of charge.
    #[arg(long, env = "SIM_TARGET_SOC", default_value_t = 0.8)]
    pub target_soc: f64,

    /// Lowest state of charge at the start (uniform up to 0.9).
    #[arg(long, env = "SIM_MIN_START_SOC", default_value_t = 0.12)]
    pub min_start_soc: f64,

    /// Share of vehicles that start near, and of trips that end near, the demand
    /// hotspot (0: demand spread over the city).
    #[arg(long, env = "SIM_HOTSPOT_SHARE", default_value_t = 0.3)]
    pub hotspot_share: f64,

    /// The hotspot, `lat,lon` (default: the middle of the first region).
    #[arg(long, env = "SIM_HOTSPOT", value_parser = parse_point, allow_hyphen_values = true)]
    pub hotspot: Option<(f64, f64)>,

    /// Radius of the hotspot, km.
    #[arg(long, env = "SIM_HOTSPOT_KM", default_value_t = 2.5)]
    pub hotspot_km: f64,

    /// A region overloaded by design: it gets only `--overload-stations` stations while
    /// the hotspot (`--hotspot-share` of the demand) is inside it. Default: `nw` in the
    /// demo city (so its fog must reroute at peak), none in other topologies; `none`
    /// turns it off.
    #[arg(long, env = "SIM_OVERLOAD_REGION")]
    pub overload_region: Option<String>,

    /// Stations in the overloaded region.
    #[arg(long, env = "SIM_OVERLOAD_STATIONS", default_value_t = 1)]
    pub overload_stations: usize,

    /// Share of drivers (drawn per vehicle from the seed) who follow the server's
    /// answer; the others still ask, then give the reservation back and drive to the
    /// nearest station.
    #[arg(long, env = "SIM_COMPLIANCE", default_value_t = 1.0)]
    pub compliance: f64,

    /// Share of charging session starts that fail: the charger goes faulted for
    /// `--charger-fault-s` (out of service: the station reports fewer chargers) and the
    /// vehicle, still first in line, tries the next free one. Drawn per station from
    /// the seed.
    #[arg(long, env = "SIM_CHARGER_FAULT_RATE", default_value_t = 0.0)]
    pub charger_fault_rate: f64,

    /// How long a faulted charger stays out of service, simulated seconds.
    #[arg(long, env = "SIM_CHARGER_FAULT_S", default_value_t = 600.0)]
    pub charger_fault_s: f64,

    /// Vehicles send telemetry this often, simulated seconds (0: never).
    #[arg(long, env = "SIM_TELEMETRY_S", default_value_t = 120.0)]
    pub telemetry_s: f64,

    /// Road distance / great-circle distance, as the fog servers assume.
    #[arg(long, env = "SIM_ROAD_FACTOR", default_value_t = 1.3)]
    pub road_factor: f64,

    /// Share of the range the naive strategies keep in reserve (as the fog's
    /// `--safety-margin`).
    #[arg(long, env = "SIM_SAFETY_MARGIN", default_value_t = 0.1)]
    pub safety_margin: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            scenario: Scenario,
        }
        Wrapper::parse_from(["device-sim"]).scenario
    }
}

impl Scenario {
    /// Checks what clap cannot; the message names the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(self.vehicles > 0, "--vehicles must be at least 1");
        ensure!(self.stations > 0, "--stations must be at least 1");
        ensure!(
            self.hours.is_finite() && self.hours > 0.0,
            "--hours must be positive"
        );
        ensure!(
            self.step_s.is_finite() && (0.01..=60.0).contains(&self.step_s),
            "--step-s must be in [0.01, 60]"
        );
        for (flag, v) in [
            ("--soc-threshold", self.soc_threshold),
            ("--target-soc", self.target_soc),
            ("--min-start-soc", self.min_start_soc),
            ("--hotspot-share", self.hotspot_share),
            ("--compliance", self.compliance),
            ("--charger-fault-rate", self.charger_fault_rate),
        ] {
            ensure!(
                (0.0..=1.0).contains(&v),
                "{flag} must be in [0, 1], got {v}"
            );
        }
        ensure!(
            self.target_soc > self.soc_threshold,
            "--target-soc must be above --soc-threshold"
        );
        ensure!(
            self.min_start_soc < 0.9,
            "--min-start-soc must be below 0.9"
        );
        ensure!(
            self.road_factor.is_finite() && self.road_factor >= 1.0,
            "--road-factor must be at least 1"
        );
        ensure!(
            (0.0..1.0).contains(&self.safety_margin),
            "--safety-margin must be in [0, 1)"
        );
        ensure!(
            self.charger_fault_s.is_finite() && self.charger_fault_s > 0.0,
            "--charger-fault-s must be positive"
        );
        ensure!(
            self.telemetry_s.is_finite() && self.telemetry_s >= 0.0,
            "--telemetry-s must be 0 or positive"
        );
        Ok(())
    }

    pub fn duration_ms(&self) -> f64 {
        self.hours * 3_600_000.0
    }
}

fn parse_point(s: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = s.split_once(',').ok_or("expected lat,lon")?;
    let lat: f64 = lat.trim().parse().map_err(|e| format!("lat: {e}"))?;
    let lon: f64 = lon.trim().parse().map_err(|e| format!("lon: {e}"))?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err("lat must be in [-90, 90] and lon in [-180, 180]".into());
    }
    Ok((lat, lon))
}

/// A region of the simulated city.
#[derive(Debug, Clone)]
pub struct RegionArea {
    pub id: String,
    outline: Polygon<f64>,
    /// min_lat, min_lon, max_lat, max_lon
    bbox: [f64; 4],
}

impl RegionArea {
    pub fn new(id: &str, points: &[[f64; 2]]) -> Self {
        let coords: Vec<Coord<f64>> = points.iter().map(|p| Coord { x: p[1], y: p[0] }).collect();
        let mut bbox = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        for p in points {
            bbox[0] = bbox[0].min(p[0]);
            bbox[1] = bbox[1].min(p[1]);
            bbox[2] = bbox[2].max(p[0]);
            bbox[3] = bbox[3].max(p[1]);
        }
        Self {
            id: id.to_owned(),
            outline: Polygon::new(LineString::from(coords), Vec::new()),
            bbox,
        }
    }

    /// Inside or on the edge (so that a tiling leaves no point without a region).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let [a, b, c, d] = self.bbox;
        if lat < a || lat > c || lon < b || lon > d {
            return false;
        }
        let p = Point::new(lon, lat);
        self.outline.contains(&p) || geo::Intersects::intersects(&self.outline, &p)
    }

    pub fn center(&self) -> (f64, f64) {
        (
            (self.bbox[0] + self.bbox[2]) / 2.0,
            (self.bbox[1] + self.bbox[3]) / 2.0,
        )
    }
}

/// The regions of a city; finds the region of a point.
#[derive(Debug, Clone)]
pub struct Regions {
    pub areas: Vec<RegionArea>,
    /// min_lat, min_lon, max_lat, max_lon of all regions.
    pub bbox: [f64; 4],
}

impl Regions {
    pub fn from_topology(t: &Topology) -> Self {
        Self::new(
            t.regions
                .iter()
                .map(|r| RegionArea::new(&r.id, &r.outline()))
                .collect(),
        )
    }

    pub fn new(areas: Vec<RegionArea>) -> Self {
        let mut bbox = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        for a in &areas {
            bbox[0] = bbox[0].min(a.bbox[0]);
            bbox[1] = bbox[1].min(a.bbox[1]);
            bbox[2] = bbox[2].max(a.bbox[2]);
            bbox[3] = bbox[3].max(a.bbox[3]);
        }
        Self { areas, bbox }
    }

    /// The index of the region holding the point, or of the one whose middle is nearest
    /// (a point outside every region still talks to some broker).
    pub fn locate(&self, lat: f64, lon: f64) -> usize {
        if let Some(i) = self.areas.iter().position(|a| a.contains(lat, lon)) {
            return i;
        }
        let mut best = (f64::MAX, 0);
        for (i, a) in self.areas.iter().enumerate() {
            let (clat, clon) = a.center();
            let d = haversine_km(lat, lon, clat, clon);
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1
    }

    pub fn index(&self, id: &str) -> Option<usize> {
        self.areas.iter().position(|a| a.id == id)
    }
}

/// A charging station as generated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StationSpec {
    pub id: String,
    pub region: usize,
    pub lat: f64,
    pub lon: f64,
    pub chargers: u32,
    pub power_kw: f64,
}

/// A vehicle as generated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VehicleSpec {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
    pub battery_kwh: f64,
    pub kwh_per_km: f64,
    /// Average road speed.
    pub speed_kmh: f64,
    pub soc: f64,
    /// Seed of this vehicle's own trip generator.
    pub trip_seed: u64,
}

/// Everything a run starts from.
#[derive(Debug, Clone)]
pub struct World {
    pub scenario: Scenario,
    pub regions: Regions,
    pub stations: Vec<StationSpec>,
    pub vehicles: Vec<VehicleSpec>,
    pub hotspot: (f64, f64),
}

/// Station powers on offer, kW (AC 22 kW up to 150 kW DC).
const POWERS_KW: [f64; 5] = [22.0, 50.0, 75.0, 100.0, 150.0];

impl World {
    /// Makes the world of `scenario` over `regions`. Deterministic in `scenario.seed`.
    pub fn generate(scenario: &Scenario, regions: Regions) -> anyhow::Result<Self> {
        scenario.check()?;
        anyhow::ensure!(!regions.areas.is_empty(), "the topology has no regions");
        let overload = match scenario.overload_region.as_deref() {
            None | Some("none") => None,
            Some(id) => Some(regions.index(id).ok_or_else(|| {
                anyhow::anyhow!("--overload-region {id:?} is not a region of the topology")
            })?),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
        let hotspot = match (scenario.hotspot, overload) {
            (Some(p), _) => p,
            (None, Some(i)) => regions.areas[i].center(),
            (None, None) => regions.areas[0].center(),
        };

        let mut stations = Vec::with_capacity(scenario.stations);
        let clusters: Vec<(f64, f64)> = (0..(scenario.stations / 8).max(1))
            .map(|_| uniform_point(&mut rng, &regions.bbox))
            .collect();
        let mut per_region = vec![0usize; regions.areas.len()];
        let mut attempts = 0;
        while stations.len() < scenario.stations {
            attempts += 1;
            anyhow::ensure!(
                attempts < scenario.stations * 1000 + 10_000,
                "cannot place {} stations in this topology",
                scenario.stations
            );
            let (lat, lon) = if overload.is_some() && stations.len() < scenario.overload_stations {
                // The overloaded region's few stations, at its edge away from the demand.
                let area = &regions.areas[overload.unwrap_or(0)];
                uniform_point(&mut rng, &area.bbox)
            } else if rng.random_bool(0.7) {
                let c = clusters[rng.random_range(0..clusters.len())];
                near(&mut rng, c, 2.0)
            } else {
                uniform_point(&mut rng, &regions.bbox)
            };
            let in_city = lat >= regions.bbox[0]
                && lat <= regions.bbox[2]
                && lon >= regions.bbox[1]
                && lon <= regions.bbox[3];
            if !in_city {
                continue;
            }
            let region = regions.locate(lat, lon);
            if !regions.areas[region].contains(lat, lon) {
                continue;
            }
            if let Some(o) = overload {
                let placing_overloaded = stations.len() < scenario.overload_stations;
                if (region == o) != placing_overloaded {
                    continue;
                }
            }
            per_region[region] += 1;
            stations.push(StationSpec {
                id: format!("{}-s{:04}", regions.areas[region].id, per_region[region]),
                region,
                lat,
                lon,
                chargers: rng.random_range(1..=8),
                power_kw: POWERS_KW[rng.random_range(0..POWERS_KW.len())],
            });
        }

        let vehicles = (0..scenario.vehicles)
            .map(|i| {
                let (lat, lon) = if rng.random_bool(scenario.hotspot_share) {
                    near(&mut rng, hotspot, scenario.hotspot_km)
                } else {
                    uniform_point(&mut rng, &regions.bbox)
                };
                VehicleSpec {
                    id: format!("v{i:05}"),
                    lat: lat.clamp(regions.bbox[0], regions.bbox[2]),
                    lon: lon.clamp(regions.bbox[1], regions.bbox[3]),
                    battery_kwh: rng.random_range(40.0..=100.0),
                    kwh_per_km: rng.random_range(0.14..=0.22),
                    speed_kmh: rng.random_range(30.0..=50.0),
                    soc: rng.random_range(scenario.min_start_soc..=0.9),
                    trip_seed: rng.random(),
                }
            })
            .collect();

        Ok(Self {
            scenario: scenario.clone(),
            regions,
            stations,
            vehicles,
            hotspot,
        })
    }

    /// A trip destination: near the hotspot with probability `hotspot_share`, else
    /// anywhere in the city.
    pub fn destination(&self, rng: &mut ChaCha8Rng) -> (f64, f64) {
        let b = &self.regions.bbox;
        let (lat, lon) = if rng.random_bool(self.scenario.hotspot_share) {
            near(rng, self.hotspot, self.scenario.hotspot_km)
        } else {
            uniform_point(rng, b)
        };
        (lat.clamp(b[0], b[2]), lon.clamp(b[1], b[3]))
    }
}

/// The same world with one region, `id`, covering the whole city, every station in it:
/// what the devices see when one server serves the city (`--strategy cloud`). Trips,
/// stations and vehicles are unchanged.
pub fn city_wide(world: &World, id: &str) -> World {
    let [a, b, c, d] = world.regions.bbox;
    let mut w = world.clone();
    w.regions = Regions::new(vec![RegionArea::new(id, &[[a, b], [a, d], [c, d], [c, b]])]);
    for s in &mut w.stations {
        s.region = 0;
    }
    w
}

fn uniform_point(rng: &mut ChaCha8Rng, bbox: &[f64; 4]) -> (f64, f64) {
    (
        rng.random_range(bbox[0]..=bbox[2]),
        rng.random_range(bbox[1]..=bbox[3]),
    )
}

/// A point within about `radius_km` of `c` (uniform over the disc).
fn near(rng: &mut ChaCha8Rng, c: (f64, f64), radius_km: f64) -> (f64, f64) {
    let r = radius_km * rng.random::<f64>().sqrt();
    let a = rng.random_range(0.0..std::f64::consts::TAU);
    let dlat = r * a.sin() / 111.2;
    let dlon = r * a.cos() / (111.2 * c.0.to_radians().cos().max(0.01));
    (c.0 + dlat, c.1 + dlon)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Regions {
        Regions::from_topology(&Topology::demo_city())
    }

    #[test]
    fn the_same_seed_makes_the_same_world() {
        let s = Scenario::default();
        let a = World::generate(&s, demo()).unwrap();
        let b = World::generate(&s, demo()).unwrap();
        assert_eq!(a.stations, b.stations);
        assert_eq!(a.vehicles, b.vehicles);
        let c = World::generate(
            &Scenario {
                seed: 8,
                ..s.clone()
            },
            demo(),
        )
        .unwrap();
        assert_ne!(a.stations, c.stations);
    }

    #[test]
    fn stations_and_vehicles_are_in_range_and_in_their_region() {
        let w = World::generate(&Scenario::default(), demo()).unwrap();
        assert_eq!(w.stations.len(), 60);
        assert_eq!(w.vehicles.len(), 1200);
        for s in &w.stations {
            assert!((1..=8).contains(&s.chargers));
            assert!((22.0..=150.0).contains(&s.power_kw));
            assert!(w.regions.areas[s.region].contains(s.lat, s.lon), "{s:?}");
            assert!(s.id.starts_with(&w.regions.areas[s.region].id));
        }
        for v in &w.vehicles {
            assert!((40.0..=100.0).contains(&v.battery_kwh));
            assert!((0.12..=0.9).contains(&v.soc));
        }
        // Every region has stations with the default scenario.
        for i in 0..w.regions.areas.len() {
            assert!(w.stations.iter().any(|s| s.region == i), "region {i}");
        }
    }

    #[test]
    fn an_overloaded_region_gets_only_its_few_stations() {
        let s = Scenario {
            overload_region: Some("ne".into()),
            overload_stations: 2,
            ..Scenario::default()
        };
        let w = World::generate(&s, demo()).unwrap();
        let ne = w.regions.index("ne").unwrap();
        assert_eq!(w.stations.iter().filter(|s| s.region == ne).count(), 2);
        assert_eq!(w.regions.locate(w.hotspot.0, w.hotspot.1), ne);
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_flag_named() {
        let s = Scenario {
            target_soc: 0.1,
            ..Scenario::default()
        };
        let e = World::generate(&s, demo()).unwrap_err().to_string();
        assert!(e.contains("--target-soc"), "{e}");
        let s = Scenario {
            overload_region: Some("nowhere".into()),
            ..Scenario::default()
        };
        let e = World::generate(&s, demo()).unwrap_err().to_string();
        assert!(e.contains("nowhere"), "{e}");
        for rate in [-0.1, 1.5, f64::NAN] {
            let s = Scenario {
                charger_fault_rate: rate,
                ..Scenario::default()
            };
            let e = World::generate(&s, demo()).unwrap_err().to_string();
            assert!(e.contains("--charger-fault-rate"), "{rate}: {e}");
        }
        let s = Scenario {
            charger_fault_s: 0.0,
            ..Scenario::default()
        };
        let e = World::generate(&s, demo()).unwrap_err().to_string();
        assert!(e.contains("--charger-fault-s"), "{e}");
    }

    #[test]
    fn charger_faults_are_off_by_default_and_read_from_the_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            scenario: Scenario,
        }
        let d = Scenario::default();
        assert_eq!((d.charger_fault_rate, d.charger_fault_s), (0.0, 600.0));
        let s = Wrapper::parse_from([
            "device-sim",
            "--charger-fault-rate",
            "0.05",
            "--charger-fault-s",
            "900",
        ])
        .scenario;
        assert_eq!((s.charger_fault_rate, s.charger_fault_s), (0.05, 900.0));
        s.check().unwrap();
    }
}
