//! The reservations waiting at a busy charger for a free connector, in the order the
//! fog planned them: by `start_ms` (the vehicle's planned start of charging), those
//! without one after those with one; ties, and those without one, in the order they
//! came. No I/O and no clock: the time is passed in.

/// A reservation waiting for a free connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub fog_id: String,
    pub id_tag: String,
    pub expires_ms: u64,
    pub start_ms: Option<u64>,
}

/// What [`WaitingQueue::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A reservation new to the queue.
    Added,
    /// One already waiting, changed: it moved to its new place (it keeps the place in
    /// the order of arrival it had, for ties).
    Updated,
    /// One already waiting, exactly as it was (a redelivery).
    Unchanged,
}

/// The waiting reservations of one charger, kept in the order they are served.
#[derive(Debug, Default)]
pub struct WaitingQueue {
    /// Sorted by [`Entry::key`].
    entries: Vec<Entry>,
    /// Reservations added so far: the next one's place in the order of arrival.
    arrivals: u64,
}

#[derive(Debug)]
struct Entry {
    arrival: u64,
    waiting: Waiting,
}

impl Entry {
    /// Planned ones first, by planned start; then by arrival.
    fn key(&self) -> (bool, u64, u64) {
        (
            self.waiting.start_ms.is_none(),
            self.waiting.start_ms.unwrap_or(0),
            self.arrival,
        )
    }
}

impl WaitingQueue {
    /// Adds a reservation, or updates the one waiting with its id.
    pub fn put(&mut self, waiting: Waiting) -> Put {
        let (arrival, put) = match self.position(&waiting.fog_id) {
            Some(i) if self.entries[i].waiting == waiting => return Put::Unchanged,
            Some(i) => (self.entries.remove(i).arrival, Put::Updated),
            None => {
                self.arrivals += 1;
                (self.arrivals, Put::Added)
            }
        };
        let entry = Entry { arrival, waiting };
        let key = entry.key();
        let at = self.entries.partition_point(|e| e.key() < key);
        self.entries.insert(at, entry);
        put
    }

    pub fn contains(&self, fog_id: &str) -> bool {
        self.position(fog_id).is_some()
    }

    /// Takes out the reservation with this id.
    pub fn remove(&mut self, fog_id: &str) -> Option<Waiting> {
        let i = self.position(fog_id)?;
        Some(self.entries.remove(i).waiting)
    }

    /// Takes out the first reservation (in serving order) for this id tag.
    pub fn remove_id_tag(&mut self, id_tag: &str) -> Option<Waiting> {
        let i = self
            .entries
            .iter()
            .position(|e| e.waiting.id_tag == id_tag)?;
        Some(self.entries.remove(i).waiting)
    }

    /// Drops the reservations whose expiry is not after `now_ms`; returns them.
    pub fn lapse(&mut self, now_ms: u64) -> Vec<Waiting> {
        let (lapsed, kept) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.waiting.expires_ms <= now_ms);
        self.entries = kept;
        lapsed.into_iter().map(|e| e.waiting).collect()
    }

    /// Takes out the reservation to serve next, if any.
    pub fn pop_next(&mut self) -> Option<Waiting> {
        (!self.entries.is_empty()).then(|| self.entries.remove(0).waiting)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Empties the queue; returns its reservations in serving order.
    pub fn drain(&mut self) -> Vec<Waiting> {
        self.entries.drain(..).map(|e| e.waiting).collect()
    }

    /// The reservations in serving order.
    pub fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.entries.iter().map(|e| &e.waiting)
    }

    fn position(&self, fog_id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.waiting.fog_id == fog_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, start_ms: Option<u64>) -> Waiting {
        Waiting {
            fog_id: id.into(),
            id_tag: format!("tag-{id}"),
            expires_ms: 10_000,
            start_ms,
        }
    }

    fn order(q: &WaitingQueue) -> Vec<&str> {
        q.iter().map(|w| w.fog_id.as_str()).collect()
    }

    fn served(mut q: WaitingQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop_next())
            .map(|w| w.fog_id)
            .collect()
    }

    #[test]
    fn served_by_planned_start_then_those_without_one_in_the_order_they_came() {
        let mut q = WaitingQueue::default();
        for (id, start) in [
            ("a", Some(3_000)),
            ("n1", None),
            ("b", Some(1_000)),
            ("c", Some(2_000)),
            ("n2", None),
            ("b2", Some(1_000)),
        ] {
            assert_eq!(q.put(w(id, start)), Put::Added);
        }
        assert_eq!(q.len(), 6);
        assert_eq!(served(q), ["b", "b2", "c", "a", "n1", "n2"]);
    }

    #[test]
    fn an_update_moves_a_reservation_to_its_new_place() {
        let mut q = WaitingQueue::default();
        q.put(w("a", Some(1_000)));
        q.put(w("b", Some(2_000)));
        q.put(w("c", None));
        assert_eq!(order(&q), ["a", "b", "c"]);
        // Re-planned ahead of a.
        assert_eq!(q.put(w("b", Some(500))), Put::Updated);
        assert_eq!(order(&q), ["b", "a", "c"]);
        // Given a start: ahead of those without one.
        assert_eq!(q.put(w("c", Some(800))), Put::Updated);
        assert_eq!(order(&q), ["b", "c", "a"]);
        // Losing its start: behind every planned one.
        assert_eq!(q.put(w("b", None)), Put::Updated);
        assert_eq!(order(&q), ["c", "a", "b"]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn an_updated_reservation_keeps_its_arrival_for_ties() {
        let mut q = WaitingQueue::default();
        q.put(w("first", Some(5_000)));
        q.put(w("second", Some(1_000)));
        // first moves to the same start as second: it came earlier, so it goes first.
        q.put(w("first", Some(1_000)));
        assert_eq!(order(&q), ["first", "second"]);
    }

    #[test]
    fn a_new_expiry_is_an_update_and_an_identical_repeat_changes_nothing() {
        let mut q = WaitingQueue::default();
        q.put(w("a", Some(1_000)));
        q.put(w("b", Some(2_000)));
        assert_eq!(q.put(w("a", Some(1_000))), Put::Unchanged);
        let later = Waiting {
            expires_ms: 20_000,
            ..w("a", Some(1_000))
        };
        assert_eq!(q.put(later.clone()), Put::Updated);
        assert_eq!(order(&q), ["a", "b"]);
        assert_eq!(q.remove("a"), Some(later));
        assert!(!q.contains("a"));
        assert_eq!(q.remove("a"), None);
    }

    #[test]
    fn lapse_drops_those_expired_by_now_and_keeps_the_order() {
        let mut q = WaitingQueue::default();
        for (id, start, expires_ms) in [
            ("a", Some(3_000), 5_000),
            ("b", Some(1_000), 4_000),
            ("c", None, 9_000),
            ("d", Some(2_000), 9_000),
        ] {
            q.put(Waiting {
                expires_ms,
                ..w(id, start)
            });
        }
        let lapsed: Vec<String> = q.lapse(5_000).into_iter().map(|w| w.fog_id).collect();
        assert_eq!(lapsed, ["b", "a"]);
        assert!(q.lapse(5_000).is_empty());
        assert_eq!(served(q), ["d", "c"]);
    }

    #[test]
    fn a_vehicle_plugging_in_takes_its_reservation_out_by_id_tag() {
        let mut q = WaitingQueue::default();
        q.put(w("a", Some(2_000)));
        q.put(w("b", Some(1_000)));
        assert_eq!(q.remove_id_tag("tag-a").map(|w| w.fog_id), Some("a".into()));
        assert_eq!(q.remove_id_tag("tag-a"), None);
        assert_eq!(
            q.drain().into_iter().map(|w| w.fog_id).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(q.is_empty());
    }
}
