//! The fog server's state on disk: its active reservations and the answers that made
//! them, so that a restart (crash, `kill -9`, rolling update) keeps every promise.
//!
//! One append-only journal per region, `{state_dir}/{region}.jsonl`: a JSON line per
//! reservation made (with the answer the vehicle got), per reservation ended. Appends
//! are plain writes, so a killed process loses nothing the kernel already has (only a
//! machine crash can lose the last lines: no fsync per request). At start the journal is
//! read back — a torn last line is skipped with a warning — expired reservations are
//! dropped, and the file is rewritten with only what is still active (write to a
//! temporary file, then rename). It is compacted the same way while running once it
//! holds many ended entries.
//!
//! The journal is locked (an advisory `flock` on `{state_dir}/{region}.lock`) while it is
//! open, so two processes sharing the state directory (a rolling replacement on one
//! volume) never write it at once: [`Store::open`] fails with [`Locked`] while another
//! process holds it.
//!
//! Stations are not stored: they come back from their retained status messages, and a
//! restored reservation takes its place again as soon as its station is known.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use protocol::Recommendation;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::planner::Reservation;

/// A reservation as kept: with the request id and the answer that made it, so that a
/// redelivered request gets the same answer after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub reservation: Reservation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Recommendation>,
}

/// One journal line: `{"op":"made",...Saved}` or `{"op":"ended","id":...}`.
///
/// Read by [`Record::parse`], not by a derived `Deserialize`: serde buffers an
/// internally tagged enum before it picks the variant, and that buffer turns every
/// number into a map when serde_json's `arbitrary_precision` is on — which the OCPP
/// gateway's `rust-ocpp` turns on for every crate built with it, so a derived reader
/// would lose every reservation with an answer in a workspace build.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// A reservation was made.
    Made(Box<Saved>),
    /// A reservation ended (arrived, cancelled, expired, replaced, station gone).
    Ended { id: String },
}

impl Record {
    /// Reads one journal line.
    pub fn parse(line: &str) -> serde_json::Result<Self> {
        use serde::de::Error as _;
        let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)?;
        let op = fields.remove("op");
        match op.as_ref().and_then(|op| op.as_str()) {
            Some("made") => Ok(Self::Made(Box::new(serde_json::from_value(
                serde_json::Value::Object(fields),
            )?))),
            Some("ended") => {
                #[derive(Deserialize)]
                struct Ended {
                    id: String,
                }
                let Ended { id } = serde_json::from_value(serde_json::Value::Object(fields))?;
                Ok(Self::Ended { id })
            }
            Some(other) => Err(serde_json::Error::custom(format!(
                "unknown op {other:?}, expected \"made\" or \"ended\""
            ))),
            None => Err(serde_json::Error::custom("no \"op\" string")),
        }
    }
}

/// What a journal held when it was opened.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Restored {
    /// Active reservations, oldest first.
    pub reservations: Vec<Saved>,
}

/// [`Store::open`] found the journal held by another process.
#[derive(Debug, thiserror::Error)]
#[error("the journal {0} is held by another process (another instance for this region?)")]
pub struct Locked(pub PathBuf);

/// An open journal.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    file: File,
    /// Holds the journal's lock while the store is open.
    _lock: File,
    /// Lines written since the last compaction.
    lines: usize,
    active: HashMap<String, Record>,
}

/// Compact when the journal has this many more lines than active reservations.
const COMPACT_SLACK: usize = 10_000;

impl Store {
    /// Opens (creating it and its directory if needed) the journal of `region` in
    /// `dir`, and returns what it holds that has not expired by `now_ms`. Fails with
    /// [`Locked`] while another process has it open.
    pub fn open(dir: &Path, region: &str, now_ms: u64) -> Result<(Self, Restored)> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let path = dir.join(format!("{region}.jsonl"));
        let lock_path = dir.join(format!("{region}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening the journal lock {}", lock_path.display()))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(Locked(path).into()),
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("locking the journal {}", lock_path.display()));
            }
        }
        let mut active: HashMap<String, Record> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        if path.exists() {
            let file = File::open(&path)
                .with_context(|| format!("opening the journal {}", path.display()))?;
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(path = %path.display(), line = n + 1, error = %e, "journal unreadable from here on");
                        break;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                match Record::parse(&line) {
                    Ok(Record::Made(saved)) => {
                        let id = saved.reservation.reservation_id.clone();
                        order.push(id.clone());
                        active.insert(id, Record::Made(saved));
                    }
                    Ok(Record::Ended { id }) => {
                        active.remove(&id);
                    }
                    Err(e) => {
                        warn!(path = %path.display(), line = n + 1, error = %e, "journal line skipped");
                    }
                }
            }
        }
        active.retain(|_, r| matches!(r, Record::Made(s) if s.reservation.expires_ms > now_ms));
        let mut restored = Restored::default();
        for id in order {
            if let Some(Record::Made(saved)) = active.get(&id) {
                if !restored
                    .reservations
                    .iter()
                    .any(|s| s.reservation.reservation_id == id)
                {
                    restored.reservations.push((**saved).clone());
                }
            }
        }
        let file = rewrite(&path, active.values())?;
        if !restored.reservations.is_empty() {
            info!(path = %path.display(), reservations = restored.reservations.len(), "reservations restored from the journal");
        }
        Ok((
            Self {
                path,
                file,
                _lock: lock,
                lines: active.len(),
                active,
            },
            restored,
        ))
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; compacts when the journal has grown large.
    pub fn append(&mut self, record: Record) {
        match &record {
            Record::Made(saved) => {
                self.active
                    .insert(saved.reservation.reservation_id.clone(), record.clone());
            }
            Record::Ended { id } => {
                self.active.remove(id);
            }
        }
        let mut line = serde_json::to_string(&record).unwrap_or_default();
        line.push('\n');
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            warn!(path = %self.path.display(), error = %e, "journal write failed");
        }
        self.lines += 1;
        if self.lines > self.active.len() + COMPACT_SLACK {
            self.compact();
        }
    }

    /// Rewrites the journal with only the active reservations.
    pub fn compact(&mut self) {
        match rewrite(&self.path, self.active.values()) {
            Ok(file) => {
                self.file = file;
                self.lines = self.active.len();
            }
            Err(e) => warn!(path = %self.path.display(), error = %e, "journal compaction failed"),
        }
    }
}

/// Writes `records` to a temporary file, renames it over `path`, and returns `path`
/// opened for appending.
fn rewrite<'a>(path: &Path, records: impl Iterator<Item = &'a Record>) -> Result<File> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut out = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        for r in records {
            let mut line = serde_json::to_string(r)?;
            line.push('\n');
            out.write_all(line.as_bytes())?;
        }
        out.sync_all().ok();
    }
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {} for appending", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(id: &str, expires_ms: u64) -> Reservation {
        Reservation {
            reservation_id: id.into(),
            vehicle_id: format!("car-{id}"),
            station_id: "s-1".into(),
            slot: 0,
            arrival_ms: 1_000,
            charge_s: 600,
            expires_ms,
            start_ms: 1_000,
            key_ms: 1_000,
            seq: 0,
            trip: None,
        }
    }

    fn made(id: &str, expires_ms: u64) -> Record {
        Record::Made(Box::new(Saved {
            reservation: reservation(id, expires_ms),
            request_id: Some(format!("r-{id}")),
            answer: Some(answer(id)),
        }))
    }

    /// An answer as the fog gives it, with fractional numbers.
    fn answer(id: &str) -> Recommendation {
        serde_json::from_value(serde_json::json!({
            "v": 1, "request_id": format!("r-{id}"), "status": "assigned",
            "station": {"station_id": "s-1", "region": "north", "lat": 52.1234567, "lon": 4.7654321},
            "distance_km": 3.25, "eta_s": 300, "wait_s": 0, "charge_s": 600,
            "reservation_id": id, "expires_ms": 10_000
        }))
        .unwrap()
    }

    #[test]
    fn every_line_reads_back_as_written() {
        for record in [made("a", 10_000), Record::Ended { id: "a".into() }] {
            let line = serde_json::to_string(&record).unwrap();
            assert_eq!(Record::parse(&line).unwrap(), record, "{line}");
        }
        for (line, says) in [
            (r#"{"id":"a"}"#, "no \"op\""),
            (r#"{"op":"booked","id":"a"}"#, "unknown op \"booked\""),
            (r#"{"op":"ended"}"#, "missing field `id`"),
        ] {
            let e = Record::parse(line).unwrap_err().to_string();
            assert!(e.contains(says), "{line}: {e}");
        }
    }

    #[test]
    fn active_reservations_come_back_and_ended_or_expired_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, restored) = Store::open(dir.path(), "north", 0).unwrap();
            assert!(restored.reservations.is_empty());
            store.append(made("a", 10_000));
            store.append(made("b", 10_000));
            store.append(made("c", 2_000));
            store.append(Record::Ended { id: "b".into() });
            // Dropped without any shutdown step, as a killed process would be.
        }
        let (_, restored) = Store::open(dir.path(), "north", 5_000).unwrap();
        let ids: Vec<&str> = restored
            .reservations
            .iter()
            .map(|s| s.reservation.reservation_id.as_str())
            .collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(restored.reservations[0].request_id.as_deref(), Some("r-a"));
        // The journal was compacted to the one active reservation.
        let text = fs::read_to_string(dir.path().join("north.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn an_open_journal_is_locked_until_its_store_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Store::open(dir.path(), "north", 0).unwrap();
        let e = Store::open(dir.path(), "north", 0).unwrap_err();
        assert!(e.downcast_ref::<Locked>().is_some(), "{e:#}");
        assert!(e.to_string().contains("held by another process"), "{e}");
        // Another region's journal in the same directory is its own.
        Store::open(dir.path(), "south", 0).unwrap();
        drop(first);
        Store::open(dir.path(), "north", 0).unwrap();
    }

    #[test]
    fn a_torn_or_foreign_line_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("north.jsonl");
        let good = serde_json::to_string(&made("a", 10_000)).unwrap();
        fs::write(
            &path,
            format!("{good}\nnot json\n{{\"op\":\"made\",\"reserv"),
        )
        .unwrap();
        let (_, restored) = Store::open(dir.path(), "north", 0).unwrap();
        assert_eq!(restored.reservations.len(), 1);
    }

    #[test]
    fn the_journal_is_compacted_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), "north", 0).unwrap();
        for i in 0..(COMPACT_SLACK + 10) {
            let id = format!("x{i}");
            store.append(made(&id, 10_000));
            store.append(Record::Ended { id });
        }
        store.append(made("kept", 10_000));
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(
            text.lines().count() < COMPACT_SLACK,
            "{}",
            text.lines().count()
        );
        drop(store);
        let (_, restored) = Store::open(dir.path(), "north", 0).unwrap();
        assert_eq!(restored.reservations.len(), 1);
    }
}
