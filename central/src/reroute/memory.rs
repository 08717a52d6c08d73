//! Reroute ids seen lately, so a repeated request (a QoS 1 redelivery, a retry)
//! never starts a second reroute.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a reroute id is remembered (for duplicates).
pub const MEMORY_TTL: Duration = Duration::from_secs(600);

/// Most reroute ids remembered at once.
pub const MEMORY_CAP: usize = 10_000;
/// Reroute ids seen lately (per origin region), so a repeated request starts nothing.
#[derive(Debug, Default)]
pub struct Memory {
    entries: HashMap<(String, String), Option<Vec<u8>>>,
    order: VecDeque<((String, String), Instant)>,
}

/// What [`Memory::admit`] knows about a reroute id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: go ahead (it is now remembered as running).
    New,
    /// A reroute with this id is running.
    Running,
    /// A reroute with this id finished with this reply payload.
    Done(Vec<u8>),
}

impl Memory {
    /// Looks `(origin, reroute_id)` up, remembering it as running when new.
    pub fn admit(&mut self, origin: &str, reroute_id: &str, now: Instant) -> Seen {
        while let Some((key, at)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) > MEMORY_TTL;
            if !(expired || self.order.len() >= MEMORY_CAP) {
                break;
            }
            self.entries.remove(key);
            self.order.pop_front();
        }
        let key = (origin.to_owned(), reroute_id.to_owned());
        match self.entries.get(&key) {
            Some(None) => Seen::Running,
            Some(Some(reply)) => Seen::Done(reply.clone()),
            None => {
                self.entries.insert(key.clone(), None);
                self.order.push_back((key, now));
                Seen::New
            }
        }
    }

    /// Records the reply of a finished reroute.
    pub fn finish(&mut self, origin: &str, reroute_id: &str, reply: Vec<u8>) {
        if let Some(entry) = self
            .entries
            .get_mut(&(origin.to_owned(), reroute_id.to_owned()))
        {
            *entry = Some(reply);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_admits_an_id_once_and_replays_its_reply() {
        let mut m = Memory::default();
        let t = Instant::now();
        assert_eq!(m.admit("a", "r1", t), Seen::New);
        assert_eq!(m.admit("a", "r1", t), Seen::Running);
        assert_eq!(m.admit("b", "r1", t), Seen::New, "ids are per origin");
        m.finish("a", "r1", b"reply".to_vec());
        assert_eq!(m.admit("a", "r1", t), Seen::Done(b"reply".to_vec()));
        // Forgotten after the TTL.
        let later = t + MEMORY_TTL + Duration::from_secs(1);
        assert_eq!(m.admit("c", "r9", later), Seen::New);
        assert_eq!(m.len(), 1);
    }
}
