//! Great-circle geometry. Distances are on a sphere of [`EARTH_RADIUS_KM`] (the mean
//! radius `geo` uses); the station index stores points as 3-D unit vectors, whose
//! Euclidean (chord) distance grows monotonically with great-circle distance, so an
//! R-tree's nearest-neighbour order is great-circle order everywhere, poles and
//! antimeridian included.

use geo::{Distance, Haversine, Point};

/// Mean Earth radius in km (IUGG), as used by `geo::Haversine`.
pub const EARTH_RADIUS_KM: f64 = 6_371.008_8;

/// Great-circle distance in km between two WGS84 positions (degrees).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Haversine.distance(Point::new(lon1, lat1), Point::new(lon2, lat2)) / 1000.0
}

/// The position as a point on the unit sphere (x towards 0°N 0°E, z towards the north pole).
pub fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (lat, lon) = (lat.to_radians(), lon.to_radians());
    let (slat, clat) = lat.sin_cos();
    let (slon, clon) = lon.sin_cos();
    [clat * clon, clat * slon, slat]
}

/// Squared chord length (unit sphere) between two unit vectors.
pub fn chord2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

/// Great-circle km for a chord length on the unit sphere.
pub fn chord_to_km(chord: f64) -> f64 {
    2.0 * EARTH_RADIUS_KM * (chord / 2.0).clamp(0.0, 1.0).asin()
}

/// Chord length on the unit sphere for a great-circle distance in km.
pub fn km_to_chord(km: f64) -> f64 {
    let half_angle = (km / (2.0 * EARTH_RADIUS_KM)).min(std::f64::consts::FRAC_PI_2);
    2.0 * half_angle.sin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chord_and_haversine_agree() {
        let cases = [
            (0.0, 0.0, 0.0, 1.0),
            (-12.27, -38.97, -12.25, -38.95),
            (89.9, 10.0, 89.9, -170.0),
            (10.0, 179.9, 10.0, -179.9),
            (0.0, 0.0, 0.0, 180.0),
        ];
        for (a, b, c, d) in cases {
            let hav = haversine_km(a, b, c, d);
            let chord = chord2(&unit_vector(a, b), &unit_vector(c, d)).sqrt();
            let via_chord = chord_to_km(chord);
            assert!(
                (hav - via_chord).abs() < 1e-6 * hav.max(1.0),
                "{hav} vs {via_chord}"
            );
            assert!((km_to_chord(hav) - chord).abs() < 1e-9);
        }
    }
}
