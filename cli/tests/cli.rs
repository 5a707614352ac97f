//! The README's run command: `ward up` starts both services on a fresh data
//! folder, `ward admin invite` signs with the dev organisation it created,
//! and SIGTERM stops `ward up` cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests abort on failure

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ward_core::invite::verify_invite;
use ward_core::keys::SigningPublicKey;
use ward_proto::{Message, v1::SignedInvite};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn ward_up_serves_and_admin_invite_signs_with_its_organisation() {
    let data = std::env::temp_dir().join(format!("ward-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let ward = env!("CARGO_BIN_EXE_ward");

    // Invite before `up`: a clear error, not a panic.
    let early = Command::new(ward)
        .args(["admin", "invite", "--user-id", "x", "--name", "X"])
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("run `ward up` first"));

    let mut up = Command::new(ward)
        .args([
            "up",
            "--relay-listen",
            "127.0.0.1:0",
            "--keyserver-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut root = None;
    let mut relay = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(r) = line.trim().strip_prefix("org root") {
            root = Some(r.trim().to_owned());
        }
        if let Some(r) = line.trim().strip_prefix("relay") {
            relay = Some(r.trim().trim_start_matches("ws://").to_owned());
        }
        if line.starts_with("Stop with") {
            break;
        }
    }
    let root = SigningPublicKey::from_bytes(&unhex(&root.unwrap())).unwrap();
    // The relay accepts TCP connections.
    std::net::TcpStream::connect(relay.unwrap()).unwrap();

    let out = Command::new(ward)
        .args([
            "admin",
            "invite",
            "--user-id",
            "dr.martin",
            "--name",
            "Dr Claire Martin",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let invite_hex = text
        .lines()
        .find_map(|l| l.strip_prefix("invite:"))
        .unwrap()
        .trim();
    let signed = SignedInvite::decode(unhex(invite_hex).as_slice()).unwrap();
    let invite = verify_invite(&root, &signed).unwrap();
    assert_eq!(invite.details.user_id, "dr.martin");

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        up.wait().unwrap().success(),
        "ward up stops cleanly on SIGTERM"
    );
    assert!(data.join("relay.db").exists() && data.join("keyserver.db").exists());
    let _ = std::fs::remove_dir_all(&data);
}
