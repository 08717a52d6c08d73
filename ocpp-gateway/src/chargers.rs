//! The chargers file: the registry a CSMS keeps (OCPP carries no location). TOML:
//!
//! ```toml
//! [[charger]]
//! id = "CP-001"          # the chargePointId in the URL
//! lat = -12.9714
//! lon = -38.5014
//! connectors = 2
//! power_kw = 50.0        # per connector
//! password = "$7$101$…"  # optional: security profile 1/2, a hash (`ocpp-gateway hash-password`)
//! ```
//!
//! Passwords are kept hashed (PBKDF2-SHA512, the Mosquitto `$7$` format); a plain
//! password in the file is refused.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// One charge point.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charger {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
    pub connectors: u32,
    pub power_kw: f64,
    /// `$7$…` hash of the charger's Basic-auth password; none: no auth (profile 0).
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    charger: Vec<Charger>,
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Toml { path: String, error: String },
    #[error("{path}: charger {id:?}: {why}")]
    Invalid {
        path: String,
        id: String,
        why: String,
    },
}

/// Every known charger, by charge point id.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    chargers: HashMap<String, Charger>,
}

/// What the handshake learns about a charge point id and its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Known, and the password (if it has one) matches.
    Known,
    /// Not in the registry.
    Unknown,
    /// Known, but the password is missing or wrong.
    BadPassword,
}

impl Registry {
    /// Reads and checks a chargers file.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the TOML text of a chargers file (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, RegistryError> {
        let file: File = toml::from_str(text).map_err(|e| RegistryError::Toml {
            path: path.into(),
            error: e.to_string(),
        })?;
        let mut chargers = HashMap::new();
        for c in file.charger {
            let invalid = |why: String| RegistryError::Invalid {
                path: path.into(),
                id: c.id.clone(),
                why,
            };
            protocol::validate_id("id", &c.id).map_err(|e| invalid(e.to_string()))?;
            if !((-90.0..=90.0).contains(&c.lat) && (-180.0..=180.0).contains(&c.lon)) {
                return Err(invalid("lat/lon out of range".into()));
            }
            if !(1..=protocol::validate::limits::MAX_CHARGERS).contains(&c.connectors) {
                return Err(invalid("connectors must be 1-1000".into()));
            }
            if !(c.power_kw.is_finite()
                && c.power_kw > 0.0
                && c.power_kw <= protocol::validate::limits::MAX_POWER_KW)
            {
                return Err(invalid("power_kw must be in (0, 5000]".into()));
            }
            if let Some(p) = &c.password {
                if !p.starts_with("$7$") || p.split('$').count() != 5 {
                    return Err(invalid(
                        "password must be a $7$ hash (make one with `ocpp-gateway hash-password`), not the password itself".into(),
                    ));
                }
            }
            if chargers.contains_key(&c.id) {
                return Err(invalid("listed twice".into()));
            }
            chargers.insert(c.id.clone(), c);
        }
        Ok(Self { chargers })
    }

    pub fn get(&self, id: &str) -> Option<&Charger> {
        self.chargers.get(id)
    }

    pub fn len(&self) -> usize {
        self.chargers.len()
    }

    /// The charge point ids in the file.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.chargers.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.chargers.is_empty()
    }

    /// Whether a charge point may connect with these Basic-auth credentials (`None`:
    /// no Authorization header, or one that is not Basic for this id).
    pub fn admit(&self, id: &str, password: Option<&str>) -> Admission {
        match self.chargers.get(id) {
            None => Admission::Unknown,
            Some(Charger { password: None, .. }) => Admission::Known,
            Some(Charger {
                password: Some(hash),
                ..
            }) => match password {
                Some(p) if topology::auth::verify_password(p, hash) => Admission::Known,
                _ => Admission::BadPassword,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(password: &str) -> String {
        format!(
            r#"
[[charger]]
id = "CP-001"
lat = -12.9714
lon = -38.5014
connectors = 2
power_kw = 50.0
password = "{password}"

[[charger]]
id = "CP-002"
lat = -12.97
lon = -38.50
connectors = 1
power_kw = 22.0
"#
        )
    }

    #[test]
    fn known_chargers_with_and_without_a_password() {
        let hash = topology::auth::hash_password("pw-1");
        let r = Registry::parse(&file(&hash), "chargers.toml").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.get("CP-001").unwrap().connectors, 2);
        assert_eq!(r.admit("CP-001", Some("pw-1")), Admission::Known);
        assert_eq!(r.admit("CP-001", Some("pw-2")), Admission::BadPassword);
        assert_eq!(r.admit("CP-001", None), Admission::BadPassword);
        assert_eq!(r.admit("CP-002", None), Admission::Known);
        assert_eq!(r.admit("CP-003", Some("pw-1")), Admission::Unknown);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let plain = Registry::parse(&file("pw-1"), "c.toml").unwrap_err();
        assert!(plain.to_string().contains("$7$ hash"), "{plain}");
        for (text, needle) in [
            (
                "[[charger]]\nid = \"a b\"\nlat = 0.0\nlon = 0.0\nconnectors = 1\npower_kw = 1.0",
                "valid id",
            ),
            (
                "[[charger]]\nid = \"a\"\nlat = 91.0\nlon = 0.0\nconnectors = 1\npower_kw = 1.0",
                "out of range",
            ),
            (
                "[[charger]]\nid = \"a\"\nlat = 0.0\nlon = 0.0\nconnectors = 0\npower_kw = 1.0",
                "connectors",
            ),
            (
                "[[charger]]\nid = \"a\"\nlat = 0.0\nlon = 0.0\nconnectors = 1\npower_kw = 0.0",
                "power_kw",
            ),
            (
                "[[charger]]\nid = \"a\"\nlat = 0.0\nlon = 0.0\nconnectors = 1\npower_kw = 1.0\ncolour = 1",
                "unknown field",
            ),
            (
                "[[charger]]\nid = \"a\"\nlat = 0.0\nlon = 0.0\nconnectors = 1\npower_kw = 1.0\n[[charger]]\nid = \"a\"\nlat = 0.0\nlon = 0.0\nconnectors = 1\npower_kw = 1.0",
                "twice",
            ),
            ("[[charger]\n", "c.toml"),
        ] {
            let e = Registry::parse(text, "c.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert!(Registry::parse("", "c.toml").unwrap().is_empty());
    }
}
