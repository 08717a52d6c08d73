//! One active instance per role: a retained lease on the broker.
//!
//! A server that must run alone (a region's fog server: one client id, one journal)
//! announces itself with a retained `{"v": 1, "holder": "<instance>", "online": true}`
//! ([`protocol::fog::Lease`]) on its lease topic, refreshed every [`REFRESH`]; its last will and the last thing it
//! publishes when it stops is the same with `"online": false`.
//!
//! A new instance first watches the topic with a client of its own
//! ([`Lease::wait_until_free`]). While another holder's lease is live it stands by —
//! it does not connect with the role's client id, so the two never take the session
//! from each other — and it takes over once that lease is released (a clean stop, or
//! the will of a crash) or has not been refreshed for [`EXPIRY`] (a retained lease left
//! behind by a holder that never came back). That makes a rolling replacement (the new
//! instance started before the old one stops) a hand-over instead of a fight over the
//! client id.
//!
//! Whether a retained lease exists is known without a timeout: the watcher subscribes,
//! then publishes to a probe topic of its own that it also subscribes to. The broker
//! sends a subscription's retained message before it handles the next packet of the
//! same connection, so when the probe comes back the retained lease, if any, has
//! arrived.

use std::time::Duration;

use protocol::fog::Lease as LeaseMessage;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Link, LinkSettings, Will};

/// How often the holder publishes its lease again.
pub const REFRESH: Duration = Duration::from_secs(5);
/// A lease not refreshed for this long is taken to be left behind.
pub const EXPIRY: Duration = Duration::from_secs(15);

/// This instance's claim on a lease topic.
#[derive(Debug, Clone)]
pub struct Lease {
    pub topic: String,
    /// This instance's name in the lease.
    pub holder: String,
}

impl Lease {
    /// A lease on `topic` for this process (see [`instance_name`]).
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            holder: instance_name(),
        }
    }

    fn payload(&self, online: bool) -> Vec<u8> {
        protocol::encode(&LeaseMessage {
            v: protocol::PROTOCOL_VERSION,
            holder: self.holder.clone(),
            online,
        })
    }

    /// The retained announcement: this instance holds the lease.
    pub fn online(&self) -> Vec<u8> {
        self.payload(true)
    }

    /// The release, as a last will (retained, QoS 1).
    pub fn released(&self) -> Will {
        Will {
            topic: self.topic.clone(),
            payload: self.payload(false),
            qos: 1,
            retain: true,
        }
    }

    /// Waits until no other instance holds the lease, watching with a client of its own
    /// (`base` with another client id and a clean session). Calls `standing_by` with
    /// the holder once if it has to wait. `Ok(false)` if `shutdown` came first.
    pub async fn wait_until_free(
        &self,
        base: &LinkSettings,
        shutdown: &CancellationToken,
        standing_by: impl FnOnce(&str),
    ) -> anyhow::Result<bool> {
        let probe = format!("{}/probe/{}", self.topic, self.holder);
        let settings = LinkSettings {
            client_id: format!("{}-watch-{}", base.client_id, std::process::id()),
            persistent: false,
            will: None,
            ..base.clone()
        };
        let subscriptions = vec![(self.topic.clone(), 1), (probe.clone(), 1)];
        let mut link = match Link::connect(&settings, subscriptions, shutdown).await {
            Ok(link) => link,
            Err(_) if shutdown.is_cancelled() => return Ok(false),
            Err(e) => return Err(e),
        };
        link.publish(&probe, b"", 1, false);
        let mut watch = Watch::new(&self.holder);
        let mut standing_by = Some(standing_by);
        let free = loop {
            let expires = watch.expires();
            let msg = tokio::select! {
                m = link.next(shutdown) => m,
                _ = tokio::time::sleep_until(expires.unwrap_or_else(Instant::now)), if expires.is_some() => {
                    warn!(topic = %self.topic, holder = ?watch.holder, after = ?EXPIRY, "lease not refreshed: taking it over");
                    break true;
                }
            };
            let Some(msg) = msg else {
                break false; // shut down
            };
            if msg.topic() == probe {
                watch.probed = true;
            } else {
                watch.read(msg.payload());
            }
            match watch.holder.as_deref() {
                None if watch.probed => break true,
                Some(holder) if watch.probed => {
                    if let Some(f) = standing_by.take() {
                        info!(topic = %self.topic, %holder, "another instance holds the lease: standing by");
                        f(holder);
                    }
                }
                _ => {}
            }
        };
        link.disconnect().await;
        Ok(free)
    }
}

/// What a watcher knows of the lease.
struct Watch<'a> {
    me: &'a str,
    /// Another instance whose lease is live.
    holder: Option<String>,
    /// When that lease was last heard.
    heard: Instant,
    /// The probe came back: any retained lease has been read.
    probed: bool,
}

impl<'a> Watch<'a> {
    fn new(me: &'a str) -> Self {
        Self {
            me,
            holder: None,
            heard: Instant::now(),
            probed: false,
        }
    }

    fn expires(&self) -> Option<Instant> {
        self.holder.as_ref().map(|_| self.heard + EXPIRY)
    }

    /// A message on the lease topic (empty: the retained lease was cleared).
    fn read(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            self.holder = None;
            return;
        }
        match protocol::decode::<LeaseMessage>(payload) {
            Ok(m) if m.online && m.holder != self.me => {
                self.holder = Some(m.holder);
                self.heard = Instant::now();
            }
            // A release frees the lease; one from an older holder than the live one
            // (a late will) does not.
            Ok(m) if !m.online => {
                if self.holder.as_deref().is_none_or(|h| h == m.holder) {
                    self.holder = None;
                }
            }
            Ok(_) => {} // our own
            Err(e) => warn!(error = %e, "unreadable lease message ignored"),
        }
    }
}

/// This process's name in a lease: the host name (a container's id), the process id
/// and the start time, so that a restarted process is a new holder.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "host".to_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    // An id (letters, digits, `-`, `_`; at most 64 bytes) whatever the host is called.
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    format!("{host}-{}-{started}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(holder: &str, online: bool) -> Vec<u8> {
        protocol::encode(&LeaseMessage {
            v: 1,
            holder: holder.into(),
            online,
        })
    }

    #[test]
    fn a_live_lease_of_another_holder_is_waited_for_until_released() {
        let mut w = Watch::new("me");
        w.read(&msg("old", true));
        assert_eq!(w.holder.as_deref(), Some("old"));
        assert!(w.expires().is_some());
        w.read(&msg("old", false));
        assert_eq!(w.holder, None);
        assert!(w.expires().is_none());
    }

    #[test]
    fn a_late_release_of_an_older_holder_does_not_free_a_live_lease() {
        let mut w = Watch::new("me");
        w.read(&msg("second", true));
        w.read(&msg("first", false));
        assert_eq!(w.holder.as_deref(), Some("second"));
    }

    #[test]
    fn our_own_lease_a_cleared_one_and_garbage_hold_nothing() {
        let mut w = Watch::new("me");
        w.read(&msg("me", true));
        assert_eq!(w.holder, None);
        w.read(&msg("old", true));
        w.read(b"");
        assert_eq!(w.holder, None);
        w.read(&msg("old", true));
        w.read(b"{not json");
        w.read(&msg("bad holder!", true));
        assert_eq!(w.holder.as_deref(), Some("old"), "garbage changes nothing");
    }

    #[test]
    fn an_instance_name_names_the_process_and_is_a_valid_holder() {
        let a = instance_name();
        assert!(a.contains(&std::process::id().to_string()), "{a}");
        protocol::validate_id("holder", &a).unwrap();
    }
}
