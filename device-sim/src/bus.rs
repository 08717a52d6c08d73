//! A discrete-event bus: what is due when, on the simulated clock, with no I/O and no
//! randomness it was not given. Deliveries come out in the order of their due time,
//! then of their sequence number (the order they were put in), so the same inputs
//! always come out in the same order.
//!
//! [`Bus::send`] models a network path the way the local run's delay proxy does
//! (`launcher::delay`): a fixed latency plus uniform jitter (never below zero), and no
//! overtaking on one connection — a message never arrives before one sent earlier on
//! the same link in the same direction. [`Bus::at`] puts in a timer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// One direction of a path, in simulated ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OneWay {
    pub latency_ms: f64,
    /// Uniform ± around the latency, each message.
    pub jitter_ms: f64,
}

impl OneWay {
    /// A real one-way path (`launcher::delay::Path`) on a clock `speed` times real time.
    pub fn scaled(path: &launcher::delay::Path, speed: f64) -> Self {
        Self {
            latency_ms: path.latency.as_secs_f64() * 1000.0 * speed,
            jitter_ms: path.jitter.as_secs_f64() * 1000.0 * speed,
        }
    }
}

struct Entry<T> {
    due_ms: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.seq) == (other.due_ms, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ms, self.seq).cmp(&(other.due_ms, other.seq))
    }
}

/// What is due when; `L` names a link (a connection and its direction).
pub struct Bus<T, L> {
    queue: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
    /// Draws the jitter.
    rng: ChaCha8Rng,
    /// The latest due time on each link so far.
    last_on: HashMap<L, u64>,
}

impl<T, L: std::hash::Hash + Eq> Bus<T, L> {
    /// An empty bus drawing its jitter from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            queue: BinaryHeap::new(),
            seq: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            last_on: HashMap::new(),
        }
    }

    /// `item` is due at `due_ms` (a timer, or a delivery that takes no time).
    pub fn at(&mut self, due_ms: u64, item: T) {
        self.seq += 1;
        self.queue.push(Reverse(Entry {
            due_ms,
            seq: self.seq,
            item,
        }));
    }

    /// `item` sent at `now_ms` over `link`, one way of `path`: due after the path's
    /// latency and jitter, and not before what was sent earlier on the same link.
    /// Returns when it is due.
    pub fn send(&mut self, now_ms: u64, link: L, path: OneWay, item: T) -> u64 {
        let mut delay = path.latency_ms;
        if path.jitter_ms > 0.0 {
            delay += self.rng.random_range(-path.jitter_ms..=path.jitter_ms);
        }
        let mut due = now_ms + delay.max(0.0).round() as u64;
        if let Some(&last) = self.last_on.get(&link) {
            due = due.max(last);
        }
        self.last_on.insert(link, due);
        self.at(due, item);
        due
    }

    /// When the next item is due.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse(e)| e.due_ms)
    }

    /// The next item due no later than `until_ms`, with its due time.
    pub fn pop_until(&mut self, until_ms: u64) -> Option<(u64, T)> {
        if self.next_due()? > until_ms {
            return None;
        }
        self.queue.pop().map(|Reverse(e)| (e.due_ms, e.item))
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<L: std::hash::Hash + Eq>(bus: &mut Bus<&'static str, L>) -> Vec<(u64, &'static str)> {
        std::iter::from_fn(|| bus.pop_until(u64::MAX)).collect()
    }

    #[test]
    fn items_come_out_by_due_time_then_in_the_order_they_were_put_in() {
        let mut bus: Bus<&str, u8> = Bus::new(1);
        bus.at(30, "c");
        bus.at(10, "a");
        bus.at(30, "d");
        bus.at(10, "b");
        bus.at(20, "timer");
        assert_eq!(bus.next_due(), Some(10));
        assert_eq!(bus.pop_until(9), None, "nothing due yet");
        assert_eq!(bus.pop_until(10), Some((10, "a")));
        assert_eq!(bus.pop_until(10), Some((10, "b")));
        assert_eq!(bus.pop_until(10), None);
        assert_eq!(drain(&mut bus), [(20, "timer"), (30, "c"), (30, "d")]);
        assert!(bus.is_empty());
    }

    #[test]
    fn a_message_takes_the_paths_latency_and_its_jitter_never_below_zero() {
        let path = OneWay {
            latency_ms: 720.0,
            jitter_ms: 0.0,
        };
        let mut bus: Bus<&str, u32> = Bus::new(1);
        assert_eq!(bus.send(1000, 0, path, "up"), 1720);
        assert_eq!(bus.send(1000, 1, OneWay::default(), "direct"), 1000);
        assert_eq!(drain(&mut bus), [(1000, "direct"), (1720, "up")]);

        // Jitter: spread over [latency - jitter, latency + jitter], on separate links
        // (no overtaking to hold them back), clamped at zero.
        let jittery = OneWay {
            latency_ms: 100.0,
            jitter_ms: 40.0,
        };
        let dues: Vec<u64> = (0..2000)
            .map(|i| bus.send(0, i + 10, jittery, "x"))
            .collect();
        let (lo, hi) = (dues.iter().min().unwrap(), dues.iter().max().unwrap());
        assert!(
            (60..=65).contains(lo) && (135..=140).contains(hi),
            "{lo}..{hi}"
        );
        let mean = dues.iter().sum::<u64>() as f64 / dues.len() as f64;
        assert!((mean - 100.0).abs() < 3.0, "{mean}");
        let wide = OneWay {
            latency_ms: 5.0,
            jitter_ms: 50.0,
        };
        assert!((0..500).all(|i| bus.send(7, 5000 + i, wide, "x") >= 7));
    }

    #[test]
    fn on_one_link_nothing_overtakes_what_was_sent_before_it() {
        let jittery = OneWay {
            latency_ms: 100.0,
            jitter_ms: 90.0,
        };
        let mut bus: Bus<usize, &str> = Bus::new(3);
        for i in 0..500 {
            bus.send(i as u64, "fleet up", jittery, i);
        }
        let order: Vec<usize> = std::iter::from_fn(|| bus.pop_until(u64::MAX))
            .map(|(_, i)| i)
            .collect();
        assert_eq!(order, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn the_same_seed_draws_the_same_delays() {
        let jittery = OneWay {
            latency_ms: 100.0,
            jitter_ms: 30.0,
        };
        let dues = |seed| {
            let mut bus: Bus<(), usize> = Bus::new(seed);
            (0..50)
                .map(|i| bus.send(0, i, jittery, ()))
                .collect::<Vec<_>>()
        };
        assert_eq!(dues(5), dues(5));
        assert_ne!(dues(5), dues(6));
    }
}
