//! The `fog-server` command line as people type it.

use clap::Parser as _;
use fog_server::Config;
use fog_server::config::Bounds;

#[test]
fn bounds_south_of_the_equator_and_west_of_greenwich_follow_a_space() {
    let c = Config::try_parse_from([
        "fog-server",
        "--region",
        "north",
        "--bounds",
        "-12.30,-39.10,-12.10,-38.80",
    ])
    .unwrap();
    let want = Bounds {
        min_lat: -12.30,
        min_lon: -39.10,
        max_lat: -12.10,
        max_lon: -38.80,
    };
    assert_eq!(c.bounds, Some(want));
    // The `=` form keeps working.
    let c = Config::try_parse_from([
        "fog-server",
        "--region",
        "north",
        "--bounds=-12.30,-39.10,-12.10,-38.80",
    ])
    .unwrap();
    assert_eq!(c.bounds, Some(want));
}

#[test]
fn bounds_that_are_not_four_numbers_are_refused_with_the_expected_shape() {
    let e = Config::try_parse_from(["fog-server", "--region", "north", "--bounds", "-12.3,-39.1"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("min_lat,min_lon,max_lat,max_lon"), "{e}");
}
