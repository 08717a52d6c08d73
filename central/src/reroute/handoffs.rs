//! Handoffs waiting for their reply: the message loop hands each reply to the reroute
//! task that waits for it, without waiting itself.

use std::collections::HashMap;
use std::sync::Mutex;

use protocol::fog::HandoffReply;
use tokio::sync::oneshot;

/// Handoffs waiting for their reply, keyed by `handoff_id`.
#[derive(Debug, Default)]
pub struct Handoffs {
    waiting: Mutex<HashMap<String, Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    region: String,
    tx: oneshot::Sender<HandoffReply>,
}

/// What became of a handoff reply handed to [`Handoffs::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Nobody waits for this id (a late reply, after its timeout, or an unknown id).
    Unmatched,
    /// The reply came from another region than the one asked; not delivered.
    WrongRegion {
        expected: String,
    },
}

impl Handoffs {
    pub(super) fn register(
        &self,
        handoff_id: &str,
        region: &str,
    ) -> oneshot::Receiver<HandoffReply> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            handoff_id.to_owned(),
            Waiter {
                region: region.to_owned(),
                tx,
            },
        );
        rx
    }

    pub(super) fn forget(&self, handoff_id: &str) {
        self.lock().remove(handoff_id);
    }

    /// Hands a reply received on `regions/{topic_region}/up/handoff-reply` to the
    /// task waiting for it. Never blocks.
    pub fn deliver(&self, topic_region: &str, reply: HandoffReply) -> Delivery {
        let mut waiting = self.lock();
        match waiting.get(&reply.handoff_id) {
            None => Delivery::Unmatched,
            Some(w) if w.region != topic_region || reply.region != topic_region => {
                Delivery::WrongRegion {
                    expected: w.region.clone(),
                }
            }
            Some(_) => {
                if let Some(w) = waiting.remove(&reply.handoff_id) {
                    // The receiver is gone only if its task ended; nothing to do then.
                    let _ = w.tx.send(reply);
                }
                Delivery::Delivered
            }
        }
    }

    /// How many handoffs wait for a reply now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_replies_go_to_the_waiter_of_the_same_region_only() {
        let h = Handoffs::default();
        let mut rx = h.register("h-1", "b");
        let reply = |region: &str| HandoffReply {
            v: 1,
            handoff_id: "h-1".into(),
            region: region.into(),
            accepted: false,
            recommendation: None,
            reason: None,
        };
        assert_eq!(
            h.deliver("c", reply("c")),
            Delivery::WrongRegion {
                expected: "b".into()
            }
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(h.deliver("b", reply("b")), Delivery::Delivered);
        assert_eq!(rx.try_recv().unwrap().region, "b");
        assert_eq!(h.deliver("b", reply("b")), Delivery::Unmatched);
        assert!(h.is_empty());
    }
}
