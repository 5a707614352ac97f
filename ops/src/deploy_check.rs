//! Checks of what `deploy/` ships, shared by both servers' tests: their
//! systemd units verify and are hardened, and their example configuration
//! loads. Errors are text for the test to show; nothing here runs in a
//! server.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What [`verify_units`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnitCheck {
    /// `systemd-analyze` is not installed (and `WARD_REQUIRE_SYSTEMD_ANALYZE`
    /// is not set).
    Skipped,
    /// `systemd-analyze verify` printed nothing, and `security --offline`
    /// rated the service at this exposure (0 best, 10 worst).
    Passed {
        /// The overall exposure level.
        exposure: f64,
    },
}

/// The most exposure a Ward service unit may have ("OK" or better).
pub const MAX_EXPOSURE: f64 = 2.0;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Verifies `deploy/systemd/<service>.service` and its backup service and
/// timer with `systemd-analyze verify` (no output at all: an unknown or
/// misspelt directive is only a warning there), and scores the service with
/// `systemd-analyze security --offline`. The units name the installed
/// binary, `/usr/local/bin/<service>`, and verify checks that it exists, so
/// it is replaced with `bin`.
pub fn verify_units(service: &str, bin: &Path) -> Result<UnitCheck, String> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("WARD_REQUIRE_SYSTEMD_ANALYZE").is_some() {
            return Err("systemd-analyze is required but not installed".into());
        }
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return Ok(UnitCheck::Skipped);
    }
    let src = deploy_dir().join("systemd");
    let dir = std::env::temp_dir().join(format!("ward-units-{service}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let installed = format!("/usr/local/bin/{service}");
    let mut paths = Vec::new();
    for unit in [
        format!("{service}.service"),
        format!("{service}-backup.service"),
        format!("{service}-backup.timer"),
    ] {
        let text = std::fs::read_to_string(src.join(&unit)).map_err(|e| format!("{unit}: {e}"))?;
        let path = dir.join(&unit);
        std::fs::write(&path, text.replace(&installed, &bin.to_string_lossy()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        paths.push(path);
    }
    let result = check_units(service, &paths);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn check_units(service: &str, paths: &[PathBuf]) -> Result<UnitCheck, String> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(paths)
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(format!("systemd-analyze verify: {stderr}"));
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&paths[0])
        .output()
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let exposure: f64 = text
        .split(&format!("Overall exposure level for {service}.service:"))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no exposure level in {text}"))?;
    if exposure > MAX_EXPOSURE {
        return Err(format!("exposure {exposure} > {MAX_EXPOSURE}: {text}"));
    }
    Ok(UnitCheck::Passed { exposure })
}

/// Runs `bin --config deploy/config/<name>.toml --max-connections 77
/// print-config` and checks that the file's values, the flag's (which
/// wins) and the TLS paths show; then that an unknown key is refused by
/// name. `listen_env` is the server's listen variable, unset for the run.
pub fn example_config_loads(bin: &Path, name: &str, listen_env: &str) -> Result<(), String> {
    let file = deploy_dir().join(format!("config/{name}.toml"));
    let out = Command::new(bin)
        .arg("--config")
        .arg(&file)
        .args(["--max-connections", "77", "print-config"])
        .env_remove(listen_env)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for (want, why) in [
        ("listen = \"0.0.0.0:", "the file's value"),
        ("max-connections = 77\n", "the flag wins"),
        (
            &format!("tls-cert = \"/etc/ward/tls/{name}.pem\"") as &str,
            "the TLS path",
        ),
    ] {
        if !text.contains(want) {
            return Err(format!("{why}: no {want:?} in {text}"));
        }
    }
    let bad = std::env::temp_dir().join(format!("ward-bad-{name}-{}.toml", std::process::id()));
    std::fs::write(&bad, "max-conections = 5\n").map_err(|e| e.to_string())?;
    let out = Command::new(bin)
        .arg("--config")
        .arg(&bad)
        .arg("print-config")
        .output()
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&bad);
    let out = out?;
    if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("max-conections") {
        return Err("an unknown key was not refused by name".into());
    }
    Ok(())
}
