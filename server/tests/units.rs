//! deploy/'s systemd units and example configuration for ward-relay
//! ([`ward_ops::deploy_check`]). The unit check is skipped when
//! systemd-analyze is not installed, unless WARD_REQUIRE_SYSTEMD_ANALYZE=1
//! (CI sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use ward_ops::deploy_check::{UnitCheck, example_config_loads, verify_units};

#[test]
fn the_relay_units_verify_and_are_hardened() {
    let bin = Path::new(env!("CARGO_BIN_EXE_ward-relay"));
    match verify_units("ward-relay", bin).unwrap() {
        UnitCheck::Skipped => {}
        UnitCheck::Passed { exposure } => eprintln!("ward-relay.service exposure {exposure}"),
    }
}

#[test]
fn the_example_configuration_loads_and_print_config_shows_every_default() {
    example_config_loads(
        Path::new(env!("CARGO_BIN_EXE_ward-relay")),
        "relay",
        "WARD_RELAY_LISTEN",
    )
    .unwrap();
}

#[test]
fn help_shows_the_limits_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_ward-relay"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, default) in [
        ("--max-recipients", "1024"),
        ("--max-connections", "10000"),
        ("--send-burst", "200"),
        ("--outbound-queue", "64"),
        ("--slow-consumer-ms", "10000"),
        ("--admin-listen", "off"),
    ] {
        let at = help
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} in {help}"));
        let next = help[at..].find("[default: ").unwrap() + at;
        assert!(
            help[next..].starts_with(&format!("[default: {default}]")),
            "{flag}: {}",
            &help[at..next + 30]
        );
    }
}
