//! The fog server's notion of "now", in milliseconds since the Unix epoch.
//!
//! Production uses the wall clock. A simulation that runs faster than real time starts
//! the servers with the same `epoch_ms` and `speed` as itself, so that ETAs, waits and
//! reservation expiry are all in simulated time (see `docs/planner.md`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Clock {
    started: Instant,
    epoch_ms: u64,
    speed: f64,
}

impl Clock {
    /// The wall clock.
    pub fn wall() -> Self {
        Self::scaled(wall_ms(), 1.0)
    }

    /// A clock that reads `epoch_ms` now and runs `speed` times faster than real time.
    pub fn scaled(epoch_ms: u64, speed: f64) -> Self {
        Self {
            started: Instant::now(),
            epoch_ms,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
        }
    }

    pub fn now_ms(&self) -> u64 {
        let elapsed = self.started.elapsed().as_secs_f64() * 1000.0 * self.speed;
        self.epoch_ms + elapsed as u64
    }

    /// How many clock milliseconds pass per real millisecond.
    pub fn speed(&self) -> f64 {
        self.speed
    }
}

/// Milliseconds since the Unix epoch on the wall clock.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
