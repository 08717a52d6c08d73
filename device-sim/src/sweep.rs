//! `--in-process --seeds 1..20`: the same scenario over many seeds (each seed another
//! world: stations, vehicles, trips, drivers), every strategy in process — how far a
//! comparison holds beyond one seed. [`Sweep::table`] prints each seed's mean waits
//! and, when both ran, the fog/cloud ratio of mean waits, then the mean over the seeds
//! and the worst (highest) ratio.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::report::StrategyReport;

/// Every seed's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sweep {
    pub scenario: serde_json::Value,
    /// Strategy names in the order they ran.
    pub order: Vec<String>,
    pub runs: Vec<SeedRun>,
}

/// One seed's run of every strategy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedRun {
    pub seed: u64,
    pub strategies: BTreeMap<String, StrategyReport>,
}

impl SeedRun {
    /// `a`'s mean wait over `b`'s, when both ran (and `b` waited at all).
    pub fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        let (a, b) = (self.strategies.get(a)?, self.strategies.get(b)?);
        (b.wait_s.mean > 0.0).then(|| a.wait_s.mean / b.wait_s.mean)
    }
}

impl Sweep {
    /// The fog/cloud ratios of mean waits, by seed.
    pub fn fog_cloud_ratios(&self) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.ratio("fog", "cloud"))
            .collect()
    }

    /// One line per seed (mean wait of each strategy, minutes, and the fog/cloud
    /// ratio), then the mean of each column over the seeds and the worst ratio.
    pub fn table(&self) -> String {
        let ratio =
            self.order.iter().any(|s| s == "fog") && self.order.iter().any(|s| s == "cloud");
        let mut out = String::from("mean wait (min) by seed\n");
        let _ = write!(out, "{:>8}", "seed");
        for name in &self.order {
            let _ = write!(out, "{name:>13}");
        }
        if ratio {
            let _ = write!(out, "{:>13}", "fog/cloud");
        }
        out.push('\n');
        for run in &self.runs {
            let _ = write!(out, "{:>8}", run.seed);
            for name in &self.order {
                match run.strategies.get(name) {
                    Some(r) => {
                        let _ = write!(out, "{:>13.1}", r.wait_s.mean / 60.0);
                    }
                    None => {
                        let _ = write!(out, "{:>13}", "-");
                    }
                }
            }
            if ratio {
                match run.ratio("fog", "cloud") {
                    Some(x) => {
                        let _ = write!(out, "{x:>13.2}");
                    }
                    None => {
                        let _ = write!(out, "{:>13}", "-");
                    }
                }
            }
            out.push('\n');
        }
        let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        let _ = write!(out, "{:>8}", "mean");
        for name in &self.order {
            let waits: Vec<f64> = self
                .runs
                .iter()
                .filter_map(|r| Some(r.strategies.get(name)?.wait_s.mean / 60.0))
                .collect();
            let _ = write!(out, "{:>13}", fmt(mean(&waits), 1));
        }
        let ratios = self.fog_cloud_ratios();
        if ratio {
            let _ = write!(out, "{:>13}", fmt(mean(&ratios), 2));
        }
        out.push('\n');
        if ratio {
            let worst = ratios.iter().copied().reduce(f64::max);
            let _ = writeln!(
                out,
                "fog/cloud mean-wait ratio over {} seeds: mean {}, worst {}",
                ratios.len(),
                fmt(mean(&ratios), 2),
                fmt(worst, 2)
            );
        }
        out
    }
}

fn fmt(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Wait;

    fn run(seed: u64, fog_min: f64, cloud_min: f64) -> SeedRun {
        let wait = |min: f64| StrategyReport {
            wait_s: Wait {
                mean: min * 60.0,
                ..Wait::default()
            },
            ..StrategyReport::default()
        };
        SeedRun {
            seed,
            strategies: BTreeMap::from([
                ("fog".to_owned(), wait(fog_min)),
                ("cloud".to_owned(), wait(cloud_min)),
            ]),
        }
    }

    #[test]
    fn the_table_gives_each_seeds_ratio_and_their_mean_and_worst() {
        let sweep = Sweep {
            scenario: serde_json::json!({}),
            order: vec!["fog".into(), "cloud".into()],
            runs: vec![run(1, 10.0, 8.0), run(2, 6.0, 12.0), run(3, 9.0, 0.0)],
        };
        assert_eq!(
            sweep.fog_cloud_ratios(),
            [1.25, 0.5],
            "no ratio without a wait"
        );
        let table = sweep.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["1", "10.0", "8.0", "1.25"]
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            ["3", "9.0", "0.0", "-"]
        );
        assert_eq!(
            lines[5].split_whitespace().collect::<Vec<_>>(),
            ["mean", "8.3", "6.7", "0.88"]
        );
        assert!(
            table.ends_with("fog/cloud mean-wait ratio over 2 seeds: mean 0.88, worst 1.25\n"),
            "{table}"
        );
    }

    #[test]
    fn without_both_fog_and_cloud_there_is_no_ratio() {
        let sweep = Sweep {
            scenario: serde_json::json!({}),
            order: vec!["fog".into()],
            runs: vec![run(1, 10.0, 8.0)],
        };
        let table = sweep.table();
        assert!(!table.contains("fog/cloud"), "{table}");
    }
}
