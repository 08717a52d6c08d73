//! Reroute ids seen lately, so a repeated request (a QoS 1 redelivery, a retry)
//! never starts a second reroute. Time on the shared clock, passed in.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// How long a reroute id is remembered (for duplicates), real time.
pub const MEMORY_TTL: Duration = Duration::from_secs(600);

/// Most reroute ids remembered at once.
pub const MEMORY_CAP: usize = 10_000;

/// Reroute ids seen lately (per origin region), so a repeated request starts nothing.
#[derive(Debug)]
pub struct Memory {
    entries: HashMap<(String, String), Option<Vec<u8>>>,
    order: VecDeque<((String, String), u64)>,
    /// How long an id is remembered, clock ms.
    ttl_ms: u64,
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
    /// A memory that keeps ids for `ttl_ms` on the clock its times are read on.
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            ttl_ms,
        }
    }

    /// Looks `(origin, reroute_id)` up at `now_ms`, remembering it as running when new.
    pub fn admit(&mut self, origin: &str, reroute_id: &str, now_ms: u64) -> Seen {
        self.forget_old(now_ms);
        let key = (origin.to_owned(), reroute_id.to_owned());
        match self.entries.get(&key) {
            Some(None) => Seen::Running,
            Some(Some(reply)) => Seen::Done(reply.clone()),
            None => {
                while self.order.len() >= MEMORY_CAP {
                    self.pop_oldest();
                }
                self.entries.insert(key.clone(), None);
                self.order.push_back((key, now_ms));
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

    /// Forgets the ids seen more than the TTL before `now_ms`.
    pub fn forget_old(&mut self, now_ms: u64) {
        while let Some((_, at)) = self.order.front() {
            if now_ms.saturating_sub(*at) <= self.ttl_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            self.entries.remove(&key);
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
        let ttl = MEMORY_TTL.as_millis() as u64;
        let mut m = Memory::new(ttl);
        let t = 1_000_000;
        assert_eq!(m.admit("a", "r1", t), Seen::New);
        assert_eq!(m.admit("a", "r1", t), Seen::Running);
        assert_eq!(m.admit("b", "r1", t), Seen::New, "ids are per origin");
        m.finish("a", "r1", b"reply".to_vec());
        assert_eq!(m.admit("a", "r1", t + ttl), Seen::Done(b"reply".to_vec()));
        // Forgotten after the TTL.
        m.forget_old(t + ttl + 1);
        assert!(m.is_empty());
        assert_eq!(m.admit("a", "r1", t + ttl + 1), Seen::New);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn memory_holds_at_most_its_cap_forgetting_the_oldest() {
        let mut m = Memory::new(u64::MAX);
        for i in 0..MEMORY_CAP + 5 {
            assert_eq!(m.admit("a", &format!("r{i}"), i as u64), Seen::New);
        }
        assert_eq!(m.len(), MEMORY_CAP);
        assert_eq!(m.admit("a", "r0", 0), Seen::New, "the oldest went first");
        assert_eq!(
            m.admit("a", &format!("r{}", MEMORY_CAP + 4), 0),
            Seen::Running
        );
    }
}
