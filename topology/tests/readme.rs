//! The README's "Several regions and central, by hand" section, run as written (see
//! `by_hand`): the topology file, the topology binary and the brokers run for real on
//! free ports, and each region's bridge must carry `fog/up/…` to central and
//! `regions/{region}/down/…` back. The servers' command lines are checked against the
//! topology the section writes; `testkit/tests/readme_by_hand.rs` runs them too.

mod by_hand;

use by_hand::{Kind, Local, Section, replace_port};

#[test]
fn ports_are_replaced_where_they_are_ports() {
    assert_eq!(
        replace_port("port = 1885 }\ntcp://h:1885 :18850 port = 1885", 1885, 4000),
        "port = 4000 }\ntcp://h:4000 :18850 port = 4000"
    );
}

#[test]
fn the_readme_by_hand_section_runs_as_written() {
    let section = Section::from_readme();
    section.check_servers();
    let tmp = tempfile::tempdir().unwrap();
    let local = Local::new(&section, tmp.path());
    by_hand::run_setup(&section, &local, |args| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_topology"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "topology {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let brokers = section.of(Kind::Broker);
    assert_eq!(
        brokers.len(),
        1 + section.topology.regions.len(),
        "one mosquitto per broker: {brokers:?}"
    );
    let mut running: Vec<_> = brokers
        .iter()
        .map(|c| by_hand::start_broker(&local.apply(c), tmp.path()))
        .collect();
    by_hand::check_bridges(&section, &local, &mut running);
    // Stopped, each broker saves its state where the section says: `{state-dir}/{broker}/`
    // (as root only with `user root` in its config).
    let state = by_hand::flag_of(&section, "--state-dir").expect("the section gives --state-dir");
    let state = std::path::PathBuf::from(local.apply(&state));
    for b in &mut running {
        b.alive();
        b.stop();
    }
    let brokers =
        std::iter::once("central").chain(section.topology.regions.iter().map(|r| r.id.as_str()));
    for b in brokers {
        let db = state.join(b).join("mosquitto.db");
        assert!(db.is_file(), "no {}", db.display());
    }
}
