//! deploy/systemd's units for ward-keyserver pass `systemd-analyze verify` (with
//! no warning: an unknown or misspelt directive is only a warning there)
//! and score "OK" or better in `systemd-analyze security --offline`.
//! Skipped when systemd-analyze is not installed, unless
//! WARD_REQUIRE_SYSTEMD_ANALYZE=1 (CI sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const UNITS: &[&str] = &[
    "ward-keyserver.service",
    "ward-keyserver-backup.service",
    "ward-keyserver-backup.timer",
];

#[test]
fn the_keyserver_units_verify_and_are_hardened() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("WARD_REQUIRE_SYSTEMD_ANALYZE").is_none(),
            "systemd-analyze is required but not installed"
        );
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = std::env::temp_dir().join(format!("ward-units-keyserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The units name the installed binary; verify checks that it exists.
    let bin = env!("CARGO_BIN_EXE_ward-keyserver");
    let mut paths = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        let path = dir.join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/ward-keyserver", bin)).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&paths[0])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let level: f64 = text
        .split("Overall exposure level for ward-keyserver.service:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(level <= 2.0, "exposure {level}: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_configuration_loads_and_print_config_shows_every_default() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/keyserver.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_ward-keyserver"))
        .arg("--config")
        .arg(&file)
        .args(["--max-connections", "77", "print-config"])
        .env_remove("WARD_KEYSERVER_LISTEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("listen = \"0.0.0.0:"),
        "the file's value: {text}"
    );
    assert!(
        text.contains("max-connections = 77\n"),
        "the flag wins: {text}"
    );
    assert!(text.contains("tls-cert = \"/etc/ward/tls/keyserver.pem\""));
    // An unknown key is refused, naming it.
    let bad = std::env::temp_dir().join(format!("ward-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "max-conections = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ward-keyserver"))
        .arg("--config")
        .arg(&bad)
        .arg("print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-conections"));
    let _ = std::fs::remove_file(&bad);
}
