//! The servers' notion of "now", in milliseconds since the Unix epoch.
//!
//! Production uses the wall clock. A simulation that runs `speed` times faster than real
//! time shares a **time scale** with its servers: the clock equals the wall clock at the
//! instant `epoch_ms` and from then on runs `speed` times faster,
//!
//! ```text
//! now = epoch_ms + (wall_ms - epoch_ms) * speed
//! ```
//!
//! Every process given the same `epoch_ms` and `speed` reads the same time, whenever it
//! started and without talking to the others; that is how `device-sim`, the fog servers
//! and central agree on ETAs, waits and reservation expiry at any speed (see
//! `docs/simulation.md`).

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Clock {
    epoch_ms: f64,
    speed: f64,
}

impl Clock {
    /// The wall clock.
    pub fn wall() -> Self {
        Self::scaled(wall_ms(), 1.0)
    }

    /// The clock that equals the wall clock at `epoch_ms` and runs `speed` times faster.
    /// A speed that is not a positive number means 1.
    pub fn scaled(epoch_ms: u64, speed: f64) -> Self {
        Self {
            epoch_ms: epoch_ms as f64,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms_f64().max(0.0) as u64
    }

    /// [`now_ms`](Self::now_ms) with sub-millisecond precision.
    pub fn now_ms_f64(&self) -> f64 {
        self.epoch_ms + (wall_ms_f64() - self.epoch_ms) * self.speed
    }

    /// How many clock milliseconds pass per real millisecond.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// The wall instant (ms since the Unix epoch) at which this clock reads `clock_ms`.
    pub fn wall_at(&self, clock_ms: f64) -> f64 {
        self.epoch_ms + (clock_ms - self.epoch_ms) / self.speed
    }
}

/// Milliseconds since the Unix epoch on the wall clock.
pub fn wall_ms() -> u64 {
    wall_ms_f64() as u64
}

fn wall_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_clocks_with_the_same_scale_agree_whenever_they_were_made() {
        let epoch = wall_ms() - 10_000;
        let a = Clock::scaled(epoch, 60.0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = Clock::scaled(epoch, 60.0);
        let (ta, tb) = (a.now_ms_f64(), b.now_ms_f64());
        // 10 s of wall time since the epoch, 60 times faster: ~10 min ahead of the epoch.
        assert!((ta - tb).abs() < 60.0 * 5.0, "{ta} vs {tb}");
        assert!(ta > epoch as f64 + 590_000.0, "{ta}");
    }

    #[test]
    fn wall_at_inverts_the_scale() {
        let c = Clock::scaled(1_000_000, 10.0);
        assert_eq!(c.wall_at(1_000_000.0), 1_000_000.0);
        assert_eq!(c.wall_at(1_010_000.0), 1_001_000.0);
    }

    #[test]
    fn a_bad_speed_means_real_time() {
        assert_eq!(Clock::scaled(0, f64::NAN).speed(), 1.0);
        assert_eq!(Clock::scaled(0, -2.0).speed(), 1.0);
    }
}

/// A shared time scale written to a file, so that processes started at different times
/// (containers of one deployment) read the same clock: `{"speed": 60.0, "epoch_ms": …}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClockFile {
    pub speed: f64,
    pub epoch_ms: u64,
}

impl ClockFile {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the clock file {}", path.display()))?;
        let file: Self = serde_json::from_str(&text)
            .with_context(|| format!("the clock file {} is not valid", path.display()))?;
        if !(file.speed.is_finite() && file.speed > 0.0) {
            anyhow::bail!(
                "the clock file {}: speed must be a positive number",
                path.display()
            );
        }
        Ok(file)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn clock(&self) -> Clock {
        Clock::scaled(self.epoch_ms, self.speed)
    }
}

/// The clock of a server's options: `--clock-file` when given, else `--clock-speed`
/// from `--clock-epoch-ms` (default: now).
pub fn from_options(
    speed: f64,
    epoch_ms: Option<u64>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Clock> {
    Ok(match file {
        Some(path) => ClockFile::load(path)?.clock(),
        None => Clock::scaled(epoch_ms.unwrap_or_else(wall_ms), speed),
    })
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn a_clock_file_round_trips_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock.json");
        let file = ClockFile {
            speed: 60.0,
            epoch_ms: 1_000,
        };
        std::fs::write(&path, file.to_json()).unwrap();
        assert_eq!(ClockFile::load(&path).unwrap(), file);
        let clock = from_options(1.0, None, Some(&path)).unwrap();
        assert_eq!(clock.speed(), 60.0);
        std::fs::write(&path, r#"{"speed": -1, "epoch_ms": 0}"#).unwrap();
        assert!(
            ClockFile::load(&path)
                .unwrap_err()
                .to_string()
                .contains("speed")
        );
        std::fs::write(&path, "speed=2").unwrap();
        assert!(format!("{:#}", ClockFile::load(&path).unwrap_err()).contains("not valid"));
        let missing = dir.path().join("nope.json");
        assert!(
            format!("{:#}", from_options(1.0, None, Some(&missing)).unwrap_err())
                .contains("nope.json")
        );
    }
}
