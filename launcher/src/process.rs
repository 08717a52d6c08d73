//! Child processes that never outlive their owner.

use std::io::Write as _;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;

/// A child process and its orphan watchdog. Killed and reaped on drop.
///
/// The watchdog is a `sh` that blocks reading a pipe from this process. If this process
/// dies without dropping the broker (SIGKILL from a test runner's timeout, a panic
/// outside a test thread, `process::exit`), the pipe closes and the watchdog kills the
/// broker, so no Mosquitto outlives the tests. On a deliberate stop it is told "disarm"
/// first (before the broker's pid can be reused) and exits without killing.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    watchdog: Option<Watchdog>,
    reaped: bool,
}

impl Supervised {
    pub fn spawn(command: &mut Command) -> std::io::Result<Self> {
        let child = command.spawn()?;
        let watchdog = Watchdog::spawn(child.id());
        Ok(Self {
            child,
            watchdog,
            reaped: false,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.reaped {
            // Reaped before; report it as exited without asking the OS again.
            return Ok(Some(ExitStatus::default()));
        }
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.reaped = true;
            self.disarm();
        }
        Ok(status)
    }

    fn disarm(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL.
    pub fn terminate(&mut self, timeout: Duration) -> Result<()> {
        if self.ask_to_stop()? {
            self.wait_or_kill(Instant::now() + timeout)?;
        }
        Ok(())
    }

    /// Sends SIGTERM (disarming the watchdog); false when the process is already gone
    /// (or could not be signalled, and was killed).
    pub fn ask_to_stop(&mut self) -> Result<bool> {
        self.disarm();
        if self.try_wait()?.is_some() {
            return Ok(false);
        }
        // `std` only sends SIGKILL and `unsafe` is forbidden, so let kill(1) send SIGTERM.
        let pid = self.id();
        let term = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !term.is_ok_and(|s| s.success()) {
            tracing::warn!(pid, "could not send SIGTERM, killing the process");
            self.kill()?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Waits for the process to end until `deadline`, then SIGKILL.
    pub fn wait_or_kill(&mut self, deadline: Instant) -> Result<()> {
        while self.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                tracing::warn!(pid = self.id(), "process ignored SIGTERM, killing it");
                return Ok(self.kill()?);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.disarm();
        if !self.reaped {
            self.child.kill().ok();
            self.child.wait()?;
            self.reaped = true;
        }
        Ok(())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill().ok();
    }
}

/// See [`Supervised`].
#[derive(Debug)]
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Kills `$1` unless the first line read is "disarm" (EOF counts as not).
    const SCRIPT: &str = r#"read -r line; [ "$line" = disarm ] || kill -KILL "$1" 2>/dev/null"#;

    fn spawn(pid: u32) -> Option<Watchdog> {
        let spawned = Command::new("sh")
            .args(["-c", Self::SCRIPT, "fogcharge-watchdog", &pid.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                Some(Watchdog { child, stdin })
            }
            Err(error) => {
                tracing::warn!(%error, pid, "no watchdog for mosquitto (sh failed to start)");
                None
            }
        }
    }

    fn disarm(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"disarm\n").ok();
        }
        self.child.wait().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that takes `delay` to stop after SIGTERM (or ignores it: `None`).
    fn slow_to_stop(delay: Option<&str>) -> Supervised {
        let trap = match delay {
            Some(d) => format!("trap 'sleep {d}; exit 0' TERM"),
            None => "trap '' TERM".to_owned(),
        };
        let mut p = Supervised::spawn(
            Command::new("sh")
                .args([
                    "-c",
                    &format!("{trap}; echo ready; while :; do sleep 0.05; done"),
                ])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        // Wait until the trap is set (the shell says so), not for a while.
        let mut out = p.child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut out, &mut byte).unwrap();
        p
    }

    #[test]
    fn processes_asked_to_stop_together_stop_in_the_time_of_one() {
        let mut ps: Vec<Supervised> = (0..4).map(|_| slow_to_stop(Some("0.4"))).collect();
        let t0 = Instant::now();
        for p in &mut ps {
            assert!(p.ask_to_stop().unwrap(), "it was running");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut ps {
            p.wait_or_kill(deadline).unwrap();
            assert!(p.try_wait().unwrap().is_some());
        }
        // One after another they would take 4 × 0.4 s.
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(1400), "{took:?}");
        // Gone already: nothing to ask.
        assert!(!ps[0].ask_to_stop().unwrap());
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_at_the_deadline() {
        let mut p = slow_to_stop(None);
        assert!(p.ask_to_stop().unwrap());
        let t0 = Instant::now();
        p.wait_or_kill(t0 + Duration::from_millis(300)).unwrap();
        assert!(p.try_wait().unwrap().is_some());
        assert!(t0.elapsed() >= Duration::from_millis(300));
    }
}
