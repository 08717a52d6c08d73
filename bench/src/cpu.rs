//! CPU time of processes, from `/proc/{pid}/stat` (user + system, all threads).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc` times.
fn ticks_per_s() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds used so far by process `pid` (`None`: this process).
pub fn cpu_s(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_s())
}

/// A window over which CPU use is measured.
pub struct Window {
    started: Instant,
    at_start: Option<f64>,
    pid: Option<u32>,
}

impl Window {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            started: Instant::now(),
            at_start: cpu_s(pid),
            pid,
        }
    }

    /// Share of one core used since the start, percent.
    pub fn percent(&self) -> Option<f64> {
        let wall = self.started.elapsed().max(Duration::from_millis(1));
        Some(self.used_s()? / wall.as_secs_f64() * 100.0)
    }

    /// CPU seconds used since the start.
    pub fn used_s(&self) -> Option<f64> {
        Some(cpu_s(self.pid)? - self.at_start?)
    }
}

/// Busy and total jiffies of the whole machine, and the VM's steal time.
fn machine_jiffies() -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    Some((total - idle, total, *v.get(7).unwrap_or(&0.0)))
}

/// The whole machine's CPU use over a window.
pub struct MachineWindow {
    at_start: Option<(f64, f64, f64)>,
}

impl MachineWindow {
    pub fn start() -> Self {
        Self {
            at_start: machine_jiffies(),
        }
    }

    /// (busy, steal) since the start, percent of one core.
    pub fn percent(&self) -> Option<(f64, f64)> {
        let (busy0, total0, steal0) = self.at_start?;
        let (busy1, total1, steal1) = machine_jiffies()?;
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let total = (total1 - total0).max(1.0);
        Some((
            (busy1 - busy0) / total * cores * 100.0,
            (steal1 - steal0) / total * cores * 100.0,
        ))
    }
}

/// CPU use of each process during a scenario, percent of one core (the machine has
/// `nproc` × 100%).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// The bench's main process: the fog server (and the idle echo server).
    pub server: Option<f64>,
    /// The Mosquitto broker.
    pub broker: Option<f64>,
    /// The simulated devices (load generator) in their own process.
    pub devices: Option<f64>,
    /// CPU time of the server process per request sent, µs.
    #[serde(default)]
    pub server_us_per_request: Option<f64>,
    /// Everything else running on the machine meanwhile (other users of this shared
    /// machine), percent of one core: a step with a lot here was disturbed.
    #[serde(default)]
    pub other: Option<f64>,
    /// Time the hypervisor gave to other guests, percent of one core.
    #[serde(default)]
    pub steal: Option<f64>,
}
