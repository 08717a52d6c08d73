//! Who may do what on the brokers: users with roles, the Mosquitto ACL files that
//! follow from them, and the password file (hashed with `mosquitto_passwd`).
//!
//! | role | broker | may |
//! | --- | --- | --- |
//! | `fog` (`fog-{region}`) | its region's | read and write `ev/{region}/#` and `fog/#` |
//! | `fleet` (`fleet-{region}`) | its region's | write any vehicle's `request`, `reservation`, `telemetry`; read any vehicle's `recommendation` — a fleet operator's gateway, such as `device-sim` |
//! | `station` (user = station id) | its region's | write only its own `ev/{region}/stations/{id}/status` and `…/reservation-events`, read its own `…/reservations` (a station that takes reservations) |
//! | `ocpp` (`ocpp-{region}`) | its region's | write its presence and its region's station statuses and reservation events, read what the fog sends its stations (`…/reservations`) — the region's OCPP gateway |
//! | `stations` (`stations-{region}`, only when asked for: [`Credentials::add_station_gateways`]) | its region's | write its presence and its region's station statuses and reservation events, read what the fog sends its stations — one connection speaking for many plain stations (device-sim's `--station-connections per-region`) |
//! | `vehicle` (user = vehicle id) | every region's | write only its own `request`, `reservation`, `telemetry`; read only its own `recommendation` |
//! | `bridge` (`bridge-{region}`) | central | read and write `regions/{region}/#` (the regional broker's bridge logs in with it) |
//! | `central` | central | read and write `regions/#` |
//! | `health` | every broker | read `$SYS/broker/uptime` only (container health checks) |
//!
//! Explicit `user` blocks, no `pattern` lines: a pattern applies to every user, so it
//! would let a station publish requests as a vehicle of the same name.

use std::fmt::Write as _;
use std::path::Path;

use protocol::fog;
use protocol::incoming::BRIDGE_STATE_FILTER;
use protocol::topics::{self, StationChannel, VehicleChannel, filters};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::{Topology, TopologyError};

/// What the `health` user may read: the broker's uptime (the container health checks
/// subscribe to it).
pub const HEALTH_TOPIC: &str = "$SYS/broker/uptime";

/// What a user is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    Fog {
        region: String,
    },
    Fleet {
        region: String,
    },
    Station {
        region: String,
    },
    /// The region's OCPP gateway: speaks for the charge points connected to it.
    Ocpp {
        region: String,
    },
    /// One connection that speaks for many of its region's plain stations (their
    /// statuses name it as their gateway; its presence's last will takes them offline).
    Stations {
        region: String,
    },
    Vehicle,
    Bridge {
        region: String,
    },
    Central,
    /// Health checks: may connect and read the broker's uptime, nothing else.
    Health,
}

/// A user and its password (plain: the password file stores only a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub password: String,
    #[serde(flatten)]
    pub role: Role,
}

/// Every user of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(rename = "user", default)]
    pub users: Vec<User>,
}

impl Credentials {
    /// Servers, bridges and a fleet gateway per region with fresh random passwords, plus
    /// the given stations (`(region, id)`) and vehicles.
    pub fn generate(t: &Topology, stations: &[(String, String)], vehicles: &[String]) -> Self {
        let mut users = vec![
            User {
                name: "central".into(),
                password: random_password(),
                role: Role::Central,
            },
            User {
                name: "health".into(),
                password: random_password(),
                role: Role::Health,
            },
        ];
        for r in &t.regions {
            let region = r.id.clone();
            for (name, role) in [
                (
                    format!("fog-{region}"),
                    Role::Fog {
                        region: region.clone(),
                    },
                ),
                (
                    format!("fleet-{region}"),
                    Role::Fleet {
                        region: region.clone(),
                    },
                ),
                (
                    format!("ocpp-{region}"),
                    Role::Ocpp {
                        region: region.clone(),
                    },
                ),
                (
                    format!("bridge-{region}"),
                    Role::Bridge {
                        region: region.clone(),
                    },
                ),
            ] {
                users.push(User {
                    name,
                    password: random_password(),
                    role,
                });
            }
        }
        for (region, id) in stations {
            users.push(User {
                name: id.clone(),
                password: random_password(),
                role: Role::Station {
                    region: region.clone(),
                },
            });
        }
        for id in vehicles {
            users.push(User {
                name: id.clone(),
                password: random_password(),
                role: Role::Vehicle,
            });
        }
        Self { users }
    }

    /// Reads users from a TOML file of `[[user]]` entries (`name`, `password`, `role`,
    /// and `region` for the roles that have one).
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| TopologyError::Parse(e.to_string()))
    }

    /// The users as TOML, as [`load`](Self::load) reads them.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The password of `name`, if it is a user.
    pub fn password(&self, name: &str) -> Option<&str> {
        self.user(name).map(|u| u.password.as_str())
    }

    /// The users a broker must know: central's broker knows central and the bridges;
    /// a regional broker knows its fog, its fleet gateway, its stations and every
    /// vehicle (they roam).
    fn on_broker(&self, region: Option<&str>) -> impl Iterator<Item = &User> {
        self.users.iter().filter(move |u| match (&u.role, region) {
            (Role::Central | Role::Bridge { .. }, None) => true,
            (Role::Vehicle, Some(_)) | (Role::Health, _) => true,
            (
                Role::Fog { region: r }
                | Role::Fleet { region: r }
                | Role::Station { region: r }
                | Role::Ocpp { region: r }
                | Role::Stations { region: r },
                Some(b),
            ) => r == b,
            _ => false,
        })
    }

    /// The ACL file of the central broker (`region` = None) or of a regional broker.
    pub fn acl(&self, region: Option<&str>) -> String {
        let mut out = String::from(
            "# Generated by the topology tool from the deployment's users: see topology/src/auth.rs.\n",
        );
        for u in self.on_broker(region) {
            let _ = writeln!(out, "\nuser {}", u.name);
            let r = region.unwrap_or_default();
            let (w, rd) = (
                |t: String| format!("write {t}"),
                |t: String| format!("read {t}"),
            );
            let n = u.name.as_str();
            // A gateway for many stations (OCPP, or the simulator's shared connection).
            let gateway = || {
                vec![
                    w(topics::gateway_status(r, n)),
                    w(filters::station_status(r)),
                    w(filters::stations(r, StationChannel::ReservationEvents)),
                    rd(filters::stations(r, StationChannel::Reservations)),
                ]
            };
            let rules: Vec<String> = match &u.role {
                Role::Central => vec![format!("readwrite {}", fog::filters::REGIONS_ALL)],
                Role::Health => vec![rd(HEALTH_TOPIC.into())],
                Role::Bridge { region } => {
                    vec![format!("readwrite {}", fog::filters::region(region))]
                }
                Role::Fog { .. } => vec![
                    format!("readwrite {}", filters::region_devices(r)),
                    format!("readwrite {}", fog::filters::FOG_ALL),
                    rd(BRIDGE_STATE_FILTER.into()),
                ],
                Role::Fleet { .. } => vec![
                    w(filters::vehicles(r, VehicleChannel::Request)),
                    w(filters::vehicles(r, VehicleChannel::Reservation)),
                    w(filters::vehicles(r, VehicleChannel::Telemetry)),
                    rd(filters::vehicles(r, VehicleChannel::Recommendation)),
                ],
                Role::Station { .. } => vec![
                    w(topics::station_status(r, n)),
                    w(topics::station_reservation_events(r, n)),
                    rd(topics::station_reservations(r, n)),
                ],
                Role::Ocpp { .. } | Role::Stations { .. } => gateway(),
                Role::Vehicle => vec![
                    w(topics::request(r, n)),
                    w(topics::reservation(r, n)),
                    w(topics::telemetry(r, n)),
                    rd(topics::recommendation(r, n)),
                ],
            };
            for rule in rules {
                let _ = writeln!(out, "topic {rule}");
            }
        }
        out
    }

    /// The password file of the central broker (`region` = None) or of a regional
    /// broker: `name:$7$101$salt$hash` lines, PBKDF2-SHA512 with 101 rounds and a
    /// 12-byte random salt, as `mosquitto_passwd` writes them.
    pub fn password_file(&self, region: Option<&str>) -> String {
        let mut out = String::new();
        for u in self.on_broker(region) {
            let _ = writeln!(out, "{}:{}", u.name, hash_password(&u.password));
        }
        out
    }

    /// Writes [`password_file`](Self::password_file) to `path`.
    pub fn write_password_file(
        &self,
        region: Option<&str>,
        path: &Path,
    ) -> Result<(), TopologyError> {
        std::fs::write(path, self.password_file(region)).map_err(|e| TopologyError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Adds a station gateway user per region of `t`, `stations-{region}` (see
    /// [`station_gateway`]), unless there is one.
    pub fn add_station_gateways(&mut self, t: &Topology) {
        for r in &t.regions {
            let name = station_gateway(&r.id);
            if self.user(&name).is_none() {
                self.users.push(User {
                    name,
                    password: random_password(),
                    role: Role::Stations {
                        region: r.id.clone(),
                    },
                });
            }
        }
    }

    /// Adds the users of `other` this set does not have (by name); existing users keep
    /// their passwords.
    pub fn merge_missing(&mut self, other: Credentials) {
        for u in other.users {
            if self.user(&u.name).is_none() {
                self.users.push(u);
            }
        }
    }
}

/// The user (and gateway id) of the connection that speaks for the plain stations of
/// `region` when they share one: `stations-{region}`.
pub fn station_gateway(region: &str) -> String {
    format!("stations-{region}")
}

/// A Mosquitto 2 password hash (`$7$`): PBKDF2-HMAC-SHA512, 101 rounds, 12-byte salt,
/// salt and hash in standard base64.
pub fn hash_password(password: &str) -> String {
    use base64::Engine as _;
    const ROUNDS: u32 = 101;
    let salt: [u8; 12] = rand::random();
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), &salt, ROUNDS, &mut hash);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7${ROUNDS}${}${}", b64.encode(salt), b64.encode(hash))
}

/// Whether `password` matches a hash made by [`hash_password`] (or `mosquitto_passwd`:
/// `$7$rounds$salt$hash`, PBKDF2-HMAC-SHA512). A malformed hash matches nothing. The
/// comparison takes the same time wherever the first difference is.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut parts = hash.split('$');
    let (Some(""), Some("7"), Some(rounds), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(rounds), Ok(salt), Ok(expected)) = (
        rounds.parse::<u32>(),
        b64.decode(salt),
        b64.decode(expected),
    ) else {
        return false;
    };
    if rounds == 0 || rounds > 1_000_000 || expected.len() != 64 {
        return false;
    }
    let mut got = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), &salt, rounds, &mut got);
    got.iter()
        .zip(&expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// 24 random characters of `[A-Za-z0-9]`.
pub fn random_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ocpp_gateway_speaks_for_its_region_stations_only() {
        let t = crate::Topology::demo_city();
        let creds = Credentials::generate(&t, &[], &[]);
        let region = &t.regions[0].id;
        assert!(creds.user(&format!("ocpp-{region}")).is_some());
        let acl = creds.acl(Some(region));
        let block: Vec<&str> = acl
            .split("\n\n")
            .find(|b| b.starts_with(&format!("user ocpp-{region}\n")))
            .expect("an ACL block for the gateway")
            .lines()
            .skip(1)
            .collect();
        assert_eq!(
            block,
            [
                format!("topic write ev/{region}/gateways/ocpp-{region}/status"),
                format!("topic write ev/{region}/stations/+/status"),
                format!("topic write ev/{region}/stations/+/reservation-events"),
                format!("topic read ev/{region}/stations/+/reservations"),
            ]
        );
        // Not on the central broker, nor on another region's.
        assert!(!creds.acl(None).contains("ocpp-"));
        let other = &t.regions[1].id;
        assert!(!creds.acl(Some(other)).contains(&format!("ocpp-{region}")));
    }

    #[test]
    fn a_station_gateway_speaks_for_its_region_stations_statuses_only_and_only_when_asked_for() {
        let t = crate::Topology::demo_city();
        let mut creds = Credentials::generate(&t, &[], &[]);
        assert!(!creds.users.iter().any(|u| u.name.starts_with("stations-")));
        creds.add_station_gateways(&t);
        let before = creds.users.len();
        creds.add_station_gateways(&t);
        assert_eq!(creds.users.len(), before, "added once");
        let region = &t.regions[0].id;
        let name = station_gateway(region);
        let acl = creds.acl(Some(region));
        let block: Vec<&str> = acl
            .split("\n\n")
            .find(|b| b.starts_with(&format!("user {name}\n")))
            .expect("an ACL block for the station gateway")
            .lines()
            .skip(1)
            .collect();
        assert_eq!(
            block,
            [
                format!("topic write ev/{region}/gateways/{name}/status"),
                format!("topic write ev/{region}/stations/+/status"),
                format!("topic write ev/{region}/stations/+/reservation-events"),
                format!("topic read ev/{region}/stations/+/reservations"),
            ]
        );
        assert!(!creds.acl(None).contains("stations-"));
        let other = &t.regions[1].id;
        assert!(!creds.acl(Some(other)).contains(&name));
        assert!(
            creds
                .password_file(Some(region))
                .contains(&format!("{name}:"))
        );
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("s3cret");
        assert!(verify_password("s3cret", &hash));
        assert!(!verify_password("s3cret ", &hash));
        assert!(!verify_password("", &hash));
        for bad in [
            "",
            "s3cret",
            "$7$",
            "$7$x$y$z",
            "$6$101$AAAA$BBBB",
            &hash[..hash.len() - 4],
        ] {
            assert!(!verify_password("s3cret", bad), "{bad}");
        }
    }
}
