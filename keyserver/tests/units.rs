//! deploy/'s systemd units and example configuration for ward-keyserver
//! ([`ward_ops::deploy_check`]). The unit check is skipped when
//! systemd-analyze is not installed, unless WARD_REQUIRE_SYSTEMD_ANALYZE=1
//! (CI sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use ward_ops::deploy_check::{UnitCheck, example_config_loads, verify_units};

#[test]
fn the_keyserver_units_verify_and_are_hardened() {
    let bin = Path::new(env!("CARGO_BIN_EXE_ward-keyserver"));
    match verify_units("ward-keyserver", bin).unwrap() {
        UnitCheck::Skipped => {}
        UnitCheck::Passed { exposure } => eprintln!("ward-keyserver.service exposure {exposure}"),
    }
}

#[test]
fn the_example_configuration_loads_and_print_config_shows_every_default() {
    example_config_loads(
        Path::new(env!("CARGO_BIN_EXE_ward-keyserver")),
        "keyserver",
        "WARD_KEYSERVER_LISTEN",
    )
    .unwrap();
}
