//! The README's run command: `ward up` starts both services on a fresh data
//! folder, `ward admin invite` signs with the dev organisation it created,
//! and SIGTERM stops `ward up` cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests abort on failure

use std::io::{BufRead, BufReader, Read};
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
            relay = Some(r.trim().trim_start_matches("wss://").to_owned());
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

/// Runs `cmd` to completion within `limit`, or kills it and fails.
fn run_within(mut cmd: Command, limit: std::time::Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(id.to_string())
                .status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

#[test]
fn ward_demo_exchanges_both_ways_in_seconds_and_stores_no_plaintext() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.arg("demo");
    let started = std::time::Instant::now();
    let out = run_within(cmd, std::time::Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert!(
        stdout.contains("nurse.dubois received and verified:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dr.martin received and verified:"),
        "{stdout}"
    );
    assert!(stdout.contains("K+ 6.1 mmol/L"), "{stdout}");
    assert!(stdout.contains("sinus rhythm 78/min"), "{stdout}");
    assert!(stdout.contains("Both messages received, verified and decrypted."));
    assert!(stdout.contains("demo stores use a fast KDF"));
    assert!(stdout.contains("48-byte HPKE ciphertext"), "{stdout}");
    assert!(stdout.contains("WrappedKey"), "access log rows: {stdout}");
    let no_plaintext = stdout
        .lines()
        .find(|l| l.starts_with("No plaintext found"))
        .unwrap_or_else(|| panic!("no 'No plaintext found' line: {stdout}"));
    assert!(no_plaintext.contains("relay.db-wal") && no_plaintext.contains("keyserver.db-wal"));
}

#[test]
fn every_command_has_help() {
    let ward = env!("CARGO_BIN_EXE_ward");
    for args in [
        &["--help"][..],
        &["up", "--help"],
        &["enroll", "--help"],
        &["send", "--help"],
        &["download", "--help"],
        &["listen", "--help"],
        &["rotate-key", "--help"],
        &["conversations", "--help"],
        &["history", "--help"],
        &["outbox", "--help"],
        &["demo", "--help"],
        &["admin", "--help"],
        &["admin", "init", "--help"],
        &["admin", "encrypt-root", "--help"],
        &["admin", "invite", "--help"],
        &["admin", "revoke", "--help"],
        &["admin", "audit-export", "--help"],
        &["room", "--help"],
        &["room", "create", "--help"],
        &["room", "add", "--help"],
        &["room", "remove", "--help"],
        &["room", "leave", "--help"],
        &["room", "list", "--help"],
        &["room", "members", "--help"],
    ] {
        let out = Command::new(ward).args(args).output().unwrap();
        assert!(out.status.success(), "ward {args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}

/// `ward up` on free ports over a fresh data folder; killed on drop.
struct Up {
    child: std::process::Child,
    data: std::path::PathBuf,
    relay: String,
    keyserver: String,
}

impl Up {
    fn start(name: &str) -> Self {
        Self::start_after(name, |_| {})
    }

    /// Like [`Up::start`], running `prepare` on the fresh data folder first.
    fn start_after(name: &str, prepare: impl FnOnce(&std::path::Path)) -> Self {
        let data = std::env::temp_dir().join(format!("ward-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        prepare(&data);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
            .args([
                "up",
                "--relay-listen",
                "127.0.0.1:0",
                "--keyserver-listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut relay = None;
        let mut keyserver = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let t = line.trim();
            if let Some(r) = t.strip_prefix("relay") {
                relay = Some(r.trim().to_owned());
            }
            if let Some(k) = t.strip_prefix("keyserver") {
                keyserver = Some(k.trim().to_owned());
            }
            if line.starts_with("Stop with") {
                break;
            }
        }
        Self {
            child,
            data,
            relay: relay.unwrap(),
            keyserver: keyserver.unwrap(),
        }
    }

    /// `ward ARGS` against these servers and this data folder, PIN from WARD_PIN.
    fn ward(&self, args: &[&str]) -> std::process::Output {
        self.ward_via(args, &self.relay)
    }

    fn ward_via(&self, args: &[&str], relay: &str) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
        cmd.args(args)
            .env("WARD_DATA", &self.data)
            .env("WARD_RELAY_URL", relay)
            .env("WARD_KEYSERVER_URL", &self.keyserver)
            .env("WARD_PIN", "ward-pin-493817");
        run_within(cmd, std::time::Duration::from_secs(60))
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_via(args, &self.relay)
    }

    /// As [`Self::ok`] with the relay unreachable: any client run resumes
    /// the outbox, so a check of what is still queued must not reach it.
    fn ok_offline(&self, args: &[&str]) -> String {
        self.ok_via(args, "ws://127.0.0.1:9")
    }

    fn ok_via(&self, args: &[&str], relay: &str) -> String {
        let out = self.ward_via(args, relay);
        assert!(
            out.status.success(),
            "ward {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Invites and enrolls `user`; returns its device id (hex).
    fn enroll(&self, user: &str, name: &str) -> String {
        let inv = self.ok(&["admin", "invite", "--user-id", user, "--name", name]);
        let field = |p: &str| {
            inv.lines()
                .find_map(|l| l.strip_prefix(p))
                .unwrap()
                .trim()
                .to_owned()
        };
        // One way through the flags, the other through the saved invite
        // file (the secret then never reaches the process list).
        let out = if user.starts_with("dr.") {
            self.ok(&[
                "enroll",
                "--invite",
                &field("invite:"),
                "--delegation",
                &field("delegation:"),
            ])
        } else {
            let file = self.data.join(format!("{user}.invite"));
            std::fs::write(&file, &inv).unwrap();
            self.ok(&["enroll", "--invite-file", file.to_str().unwrap()])
        };
        out.lines()
            .find_map(|l| l.trim().strip_prefix("device"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[test]
fn enroll_send_listen_audit_and_revoke_through_the_real_binaries() {
    let up = Up::start("flow");
    let martin = up.enroll("dr.martin", "Dr Claire Martin");
    let dubois = up.enroll("nurse.dubois", "Luc Dubois");
    assert!(up.data.join("clients/dr.martin.db").exists());

    // Dubois is offline while Martin sends; the relay keeps it.
    let sent = up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "Bed 4: please check the IV line",
    ]);
    assert!(sent.starts_with("Sent to nurse.dubois"), "{sent}");
    let heard = up.ok(&[
        "listen",
        "--as",
        "nurse.dubois",
        "--count",
        "1",
        "--timeout-secs",
        "30",
    ]);
    let line = heard.lines().next().unwrap();
    assert!(
        line.contains("dr.martin") && line.ends_with("Bed 4: please check the IV line"),
        "{heard}"
    );
    // The reply reuses the conversation.
    let conv = line
        .split("conv ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let reply = up.ok(&["send", "--as", "nurse.dubois", "--to", "dr.martin", "Done"]);
    assert!(reply.contains(&format!("conversation {conv}")), "{reply}");
    let heard = up.ok(&[
        "listen",
        "--as",
        "dr.martin",
        "--count",
        "1",
        "--timeout-secs",
        "30",
    ]);
    assert!(
        heard.contains("nurse.dubois") && heard.contains("Done"),
        "{heard}"
    );

    // The audit export lists both reads of wrapped keys, by device.
    let csv = up.ok(&["admin", "audit-export"]);
    assert!(csv.starts_with("time_unix,time_utc,user_id,device_id,kind,resource_id"));
    assert!(
        csv.lines()
            .any(|l| l.contains(&format!("nurse.dubois,{dubois},wrapped_key"))),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.contains(&format!("dr.martin,{martin},wrapped_key")))
    );
    let json = up.ok(&["admin", "audit-export", "--format", "json"]);
    assert!(
        json.contains(&format!("\"device_id\": \"{dubois}\"")),
        "{json}"
    );

    // Errors a person can act on.
    let wrong = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
        cmd.args(["listen", "--as", "dr.martin", "--count", "1"])
            .env("WARD_DATA", &up.data)
            .env("WARD_PIN", "not-the-pin");
        run_within(cmd, std::time::Duration::from_secs(30))
    };
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong PIN: 9 attempts left"));
    let no_pin = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
        cmd.args(["send", "--as", "dr.martin", "--to", "nurse.dubois", "x"])
            .env("WARD_DATA", &up.data)
            .env_remove("WARD_PIN");
        run_within(cmd, std::time::Duration::from_secs(30))
    };
    assert!(String::from_utf8_lossy(&no_pin.stderr).contains("Set WARD_PIN, or pass --pin-stdin"));
    // --pin-stdin: the first line of standard input, WARD_PIN unset.
    let piped = {
        use std::io::Write as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
            .args([
                "send",
                "--pin-stdin",
                "--as",
                "dr.martin",
                "--to",
                "nurse.dubois",
                "Thanks",
            ])
            .env("WARD_DATA", &up.data)
            .env("WARD_RELAY_URL", &up.relay)
            .env("WARD_KEYSERVER_URL", &up.keyserver)
            .env_remove("WARD_PIN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"ward-pin-493817\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let unknown = up.ward(&["send", "--as", "dr.martin", "--to", "nobody.here", "x"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown user nobody.here"));

    // A lost phone: revoked by the (dev) root over a root session. It is
    // listening at the time, its user's only device: the relay learns the
    // revocation from the keyserver's relay link at once, and `ward listen`
    // says so, wiped, and fails (issue 12, done-when 5).
    let roux = up.enroll("pharm.roux", "Paul Roux");
    let roux_store = up.data.join("clients").join("pharm.roux.db");
    assert!(roux_store.exists());
    let mut listening = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["listen", "--as", "pharm.roux"])
        .env("WARD_DATA", &up.data)
        .env("WARD_RELAY_URL", &up.relay)
        .env("WARD_KEYSERVER_URL", &up.keyserver)
        .env("WARD_PIN", "ward-pin-493817")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut listen_err = BufReader::new(listening.stderr.take().unwrap());
    let mut first = String::new();
    listen_err.read_line(&mut first).unwrap();
    assert!(first.contains("Listening as pharm.roux"), "{first}");
    let revoked = up.ok(&[
        "admin",
        "revoke",
        "--user-id",
        "pharm.roux",
        "--device-id",
        &roux,
    ]);
    assert!(revoked.contains("Revoked device"), "{revoked}");
    assert!(
        revoked.contains("no clinician's device was used"),
        "{revoked}"
    );
    let told = std::time::Instant::now();
    let status = loop {
        if let Some(s) = listening.try_wait().unwrap() {
            break s;
        }
        assert!(
            told.elapsed() < std::time::Duration::from_secs(10),
            "ward listen on the revoked device is still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut rest = String::new();
    listen_err.read_to_string(&mut rest).unwrap();
    assert!(!status.success());
    assert!(
        rest.contains("this device was revoked by its organisation")
            && rest.contains("its local data has been wiped"),
        "{rest}"
    );
    assert!(!roux_store.exists(), "the revoked device's store is wiped");
    let refused = up.ward(&["send", "--as", "pharm.roux", "--to", "dr.martin", "x"]);
    assert!(!refused.status.success());
}

#[test]
fn conversations_history_and_outbox_show_what_the_device_holds() {
    let up = Up::start("history");
    up.enroll("dr.martin", "Dr Claire Martin");
    up.enroll("nurse.dubois", "Luc Dubois");
    let none = up.ward(&["conversations", "--as", "dr.martin"]);
    assert!(none.status.success() && none.stdout.is_empty());
    assert!(String::from_utf8_lossy(&none.stderr).contains("No conversation yet"));
    up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "Bed 4: IV line",
    ]);

    let convs = up.ok(&["conversations", "--as", "dr.martin"]);
    let line = convs.lines().next().unwrap();
    assert!(
        line.contains("dr.martin,nurse.dubois") && line.contains("1 message "),
        "{convs}"
    );
    let conv = line.split_whitespace().next().unwrap().to_owned();

    // A send while the relay cannot be reached stays in the outbox, and
    // history marks it; the keyserver (for the recipients' keys) is up.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.args([
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "--wait-secs",
        "1",
        "Second dose at 14:00",
    ])
    .env("WARD_DATA", &up.data)
    .env("WARD_RELAY_URL", "ws://127.0.0.1:9")
    .env("WARD_KEYSERVER_URL", &up.keyserver)
    .env("WARD_PIN", "ward-pin-493817");
    let queued = run_within(cmd, std::time::Duration::from_secs(60));
    assert!(!queued.status.success());
    assert!(String::from_utf8_lossy(&queued.stderr).contains("stays queued"));
    let outbox = up.ok_offline(&["outbox", "--as", "dr.martin"]);
    assert_eq!(outbox.lines().count(), 1, "{outbox}");
    assert!(
        outbox.contains(&format!("conv {conv}"))
            && outbox.contains("not yet sent")
            && outbox.contains("Second dose at 14:00"),
        "{outbox}"
    );
    let history = up.ok_offline(&["history", "--as", "dr.martin", "--conversation", &conv]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(lines[0].ends_with("Bed 4: IV line"), "{history}");
    assert!(
        lines[1].ends_with("Second dose at 14:00  (queued)"),
        "{history}"
    );
    let last = up.ok(&[
        "history",
        "--as",
        "dr.martin",
        "--with",
        "nurse.dubois",
        "--limit",
        "1",
    ]);
    assert_eq!(last.lines().count(), 1);
    assert!(last.contains("Second dose"), "{last}");

    // With the relay back, the next command sends it and the outbox empties.
    up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "Thanks",
    ]);
    let outbox = up.ok(&["outbox", "--as", "dr.martin"]);
    assert!(outbox.contains("The outbox is empty"), "{outbox}");
    let heard = up.ok(&[
        "listen",
        "--as",
        "nurse.dubois",
        "--count",
        "3",
        "--timeout-secs",
        "30",
    ]);
    assert!(heard.contains("Second dose at 14:00"), "{heard}");
    let theirs = up.ok(&["history", "--as", "nurse.dubois"]);
    assert_eq!(theirs.lines().count(), 3, "{theirs}");
    let missing = up.ward(&["history", "--as", "dr.martin", "--conversation", "ffffffff"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no conversation ffffffff"));
}

/// The README's room walkthrough on `ward up`: create, list, members, send
/// to the room, listen, remove, and the removed member hears nothing more.
#[test]
fn rooms_from_the_readme_walkthrough() {
    let up = Up::start("rooms");
    up.enroll("dr.martin", "Dr Claire Martin");
    up.enroll("nurse.dubois", "Luc Dubois");
    up.enroll("dr.okafor", "Dr Ada Okafor");
    let created = up.ok(&[
        "room",
        "create",
        "--as",
        "dr.martin",
        "--name",
        "Bed 12",
        "--case",
        "case-881",
        "--topic",
        "post-op",
        "--members",
        "nurse.dubois,dr.okafor",
    ]);
    let id = created.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(id.len(), 64, "{created}");
    let short = &id[..8];
    let list = up.ok(&["room", "list", "--as", "nurse.dubois"]);
    assert!(
        list.contains(short)
            && list.contains("Bed 12")
            && list.contains("case-881")
            && list.contains("3 members")
            && list.contains("member"),
        "{list}"
    );
    let members = up.ok(&["room", "members", short, "--as", "dr.okafor"]);
    assert_eq!(
        members.lines().collect::<Vec<_>>(),
        ["dr.martin  (admin)", "dr.okafor", "nurse.dubois"]
    );
    up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--room",
        short,
        "Vitals every 2 h",
    ]);
    for who in ["nurse.dubois", "dr.okafor"] {
        let heard = up.ok(&[
            "listen",
            "--as",
            who,
            "--count",
            "1",
            "--timeout-secs",
            "30",
        ]);
        assert!(
            heard.contains("Vitals every 2 h") && heard.contains(&format!("conv {short}")),
            "{heard}"
        );
    }
    let refused = up.ward(&[
        "room",
        "remove",
        short,
        "--member",
        "dr.martin",
        "--as",
        "dr.okafor",
    ]);
    assert!(!refused.status.success());
    up.ok(&[
        "room",
        "remove",
        short,
        "--member",
        "dr.okafor",
        "--as",
        "dr.martin",
    ]);
    up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--room",
        short,
        "Discharge tomorrow",
    ]);
    let heard = up.ok(&[
        "listen",
        "--as",
        "nurse.dubois",
        "--count",
        "1",
        "--timeout-secs",
        "30",
    ]);
    assert!(heard.contains("Discharge tomorrow"), "{heard}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.args([
        "listen",
        "--as",
        "dr.okafor",
        "--count",
        "1",
        "--timeout-secs",
        "3",
    ])
    .env("WARD_DATA", &up.data)
    .env("WARD_RELAY_URL", &up.relay)
    .env("WARD_KEYSERVER_URL", &up.keyserver)
    .env("WARD_PIN", "ward-pin-493817");
    let removed = run_within(cmd, std::time::Duration::from_secs(60));
    assert!(
        !removed.status.success(),
        "the removed member heard something"
    );
    assert!(!String::from_utf8_lossy(&removed.stdout).contains("Discharge"));
    let history = up.ok(&["history", "--as", "nurse.dubois", "--conversation", short]);
    assert_eq!(history.lines().count(), 2, "{history}");
    let list = up.ok(&["room", "list", "--as", "dr.okafor"]);
    assert!(list.contains("former member"), "{list}");

    // `--history whole`: a member added later hears the earlier messages
    // (`ward room add` forwards them before it exits, SECURITY.md §17.13).
    let created = up.ok(&[
        "room",
        "create",
        "--as",
        "dr.martin",
        "--name",
        "Handover",
        "--members",
        "nurse.dubois",
        "--history",
        "whole",
    ]);
    let whole = created.split_whitespace().nth(1).unwrap()[..8].to_owned();
    up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--room",
        &whole,
        "Allergic to penicillin",
    ]);
    let added = up.ok(&[
        "room",
        "add",
        &whole,
        "--members",
        "dr.okafor",
        "--as",
        "dr.martin",
    ]);
    assert!(added.contains("Forwarded the room's history"), "{added}");
    let heard = up.ok(&[
        "listen",
        "--as",
        "dr.okafor",
        "--count",
        "1",
        "--timeout-secs",
        "30",
    ]);
    assert!(
        heard.contains("Allergic to penicillin") && heard.contains(&format!("conv {whole}")),
        "{heard}"
    );

    // A photo to the room, with its preview inline.
    let photo = up.data.join("wound.jpg");
    std::fs::write(&photo, vec![7u8; 100_000]).unwrap();
    let thumb = up.data.join("wound-small.png");
    std::fs::write(&thumb, vec![9u8; 3_000]).unwrap();
    up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--room",
        &whole,
        "--file",
        photo.to_str().unwrap(),
        "--thumbnail",
        thumb.to_str().unwrap(),
    ]);
    let heard = up.ok(&[
        "listen",
        "--as",
        "dr.okafor",
        "--count",
        "1",
        "--timeout-secs",
        "30",
    ]);
    assert!(
        heard.contains("[attachment wound.jpg, image/jpeg, 97.7 KiB, image/png thumbnail;"),
        "{heard}"
    );

    // `ward device list`: one device, this one; it cannot revoke itself here.
    let devices = up.ok(&["device", "list", "--as", "dr.martin"]);
    let line = devices.lines().next().unwrap();
    assert!(line.ends_with("active  (this device)"), "{devices}");
    assert_eq!(devices.lines().count(), 1, "{devices}");
    let own = &line[..8];
    let refused = up.ward(&["device", "revoke", own, "--as", "dr.martin"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("that is this device"));
    let unknown = up.ward(&["device", "revoke", "ffffffffff", "--as", "dr.martin"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no device ffffffffff"));
}

#[test]
fn send_file_history_and_download_through_the_real_binaries() {
    let up = Up::start("files");
    up.enroll("dr.martin", "Dr Claire Martin");
    up.enroll("nurse.dubois", "Luc Dubois");
    let letter = up.data.join("discharge-letter.pdf");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&letter, &content).unwrap();
    let out = up.ward(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "--file",
        letter.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("Sent discharge-letter.pdf (application/pdf"),
        "{stdout}"
    );
    // Not a terminal: plain progress lines, ending at 100%.
    assert!(
        stderr.contains("uploading") && stderr.contains("100%"),
        "{stderr}"
    );

    let heard = up.ok(&[
        "listen",
        "--as",
        "nurse.dubois",
        "--count",
        "1",
        "--timeout-secs",
        "30",
    ]);
    assert!(
        heard.contains("[attachment discharge-letter.pdf, application/pdf, 293.0 KiB; "),
        "{heard}"
    );
    let history = up.ok(&["history", "--as", "nurse.dubois"]);
    let id = history
        .split("download ")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap()
        .to_owned();
    let folder = up.data.join("inbox");
    std::fs::create_dir_all(&folder).unwrap();
    let saved = up.ok(&[
        "download",
        "--as",
        "nurse.dubois",
        &id,
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert!(saved.contains("Saved"), "{saved}");
    assert_eq!(
        std::fs::read(folder.join("discharge-letter.pdf")).unwrap(),
        content
    );
    // Never overwritten.
    let again = up.ward(&[
        "download",
        "--as",
        "nurse.dubois",
        &id,
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwritten"));
}

#[test]
fn admin_init_creates_the_encrypted_root_once() {
    let data = std::env::temp_dir().join(format!("ward-cli-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let ward = env!("CARGO_BIN_EXE_ward");
    let init = || {
        Command::new(ward)
            .args(["admin", "init", "--data"])
            .arg(&data)
            .env("WARD_ROOT_PASSPHRASE", "ward cli init passphrase")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let first = init();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first = String::from_utf8(first.stdout).unwrap();
    assert!(
        first.starts_with("Created the organisation root"),
        "{first}"
    );
    let again = String::from_utf8(init().stdout).unwrap();
    assert!(again.contains("already exists"), "{again}");
    let root = |s: &str| {
        s.lines()
            .find(|l| l.contains("org root"))
            .unwrap()
            .to_owned()
    };
    assert_eq!(root(&first), root(&again));
    assert!(data.join("org-root.pub").exists());
    // The sealed file: 144 bytes, owner-only, no plain key beside it.
    let sealed = std::fs::read(data.join("org-root.enc")).unwrap();
    assert_eq!(sealed.len(), 144);
    assert!(sealed.starts_with(b"WARDROOT"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("org-root.enc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!data.join("dev-org-root.key").exists());
    let _ = std::fs::remove_dir_all(&data);
}

/// A device store written by the v1 SDK (the committed fixture of
/// `sdk/tests/fixtures`, PIN 271828): `ward listen` on it does not start, and
/// says what to do (a new invite, move the store aside, enroll again),
/// rather than a bare store error.
#[test]
fn a_v1_device_store_asks_for_a_new_invite() {
    let data = std::env::temp_dir().join(format!("ward-cli-v1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let ward = env!("CARGO_BIN_EXE_ward");
    // Any organisation: the store is refused before the root is used.
    let root = ward_core::keys::OrgRootKey::import_secret(&[7; 32])
        .unwrap()
        .public_key();
    let root_hex: String = root.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let clients = data.join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/tests/fixtures");
    for (from, to) in [
        ("store-v1.db", "fixture@ward.db"),
        ("store-v1.db.header", "fixture@ward.db.header"),
    ] {
        std::fs::copy(format!("{fixtures}/{from}"), clients.join(to)).unwrap();
    }
    let mut cmd = Command::new(ward);
    cmd.args(["listen", "--as", "fixture@ward", "--timeout-secs", "5"])
        .arg("--data")
        .arg(&data)
        .args(["--org-root", &root_hex])
        // Nothing listens there: the verdict comes before any connection.
        .args([
            "--relay",
            "ws://127.0.0.1:9",
            "--keyserver",
            "ws://127.0.0.1:9",
        ])
        .env("WARD_PIN", "271828");
    let out = run_within(cmd, std::time::Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for needed in [
        "written by Ward protocol v1",
        "new invite",
        "move the store aside",
        "ward enroll --invite-file",
    ] {
        assert!(err.contains(needed), "missing {needed:?} in: {err}");
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// `ward ARGS` in `data` with `stdin` written to standard input, the
/// passphrase variable unset unless `env` sets it.
fn ward_piped(
    data: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> std::process::Output {
    use std::io::Write as _;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.args(args)
        .env("WARD_DATA", data)
        .env_remove("WARD_ROOT_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_encrypted_root_signs_invites_and_revokes_with_its_passphrase_only() {
    const PASS: &str = "a root passphrase for ward";
    // `ward admin init` before `ward up`: a passphrase is required, a short
    // one refused with nothing written, then the root is sealed.
    let up = Up::start_after("sealed", |data| {
        let none = ward_piped(data, &["admin", "init"], &[], "");
        assert!(!none.status.success());
        assert!(
            text(&none).contains("no root passphrase: standard input is not a terminal"),
            "{}",
            text(&none)
        );
        let short = ward_piped(
            data,
            &["admin", "init", "--passphrase-stdin"],
            &[],
            "too short\n",
        );
        assert!(!short.status.success());
        assert!(
            text(&short).contains("at least 12 characters"),
            "{}",
            text(&short)
        );
        assert!(!data.join("org-root.enc").exists());
        let made = ward_piped(
            data,
            &["admin", "init", "--passphrase-stdin"],
            &[],
            &format!("{PASS}\n"),
        );
        assert!(made.status.success(), "{}", text(&made));
    });
    // `ward up` serves that organisation from its public key alone.
    let public = std::fs::read_to_string(up.data.join("org-root.pub")).unwrap();
    assert!(!up.data.join("dev-org-root.key").exists());

    // Invites: the passphrase from standard input, or from the variable.
    let invite = |user: &str, env: &[(&str, &str)], stdin: &str| {
        let file = up.data.join(format!("{user}.invite"));
        let out = ward_piped(
            &up.data,
            &[
                "admin",
                "invite",
                "--user-id",
                user,
                "--name",
                user,
                "--out",
                file.to_str().unwrap(),
            ],
            env,
            stdin,
        );
        (out, file)
    };
    let (wrong, wrong_file) = invite(
        "dr.wrong",
        &[("WARD_ROOT_PASSPHRASE", "not the passphrase")],
        "",
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("wrong passphrase for the organisation root"),
        "{}",
        text(&wrong)
    );
    assert!(
        !wrong_file.exists(),
        "nothing is signed with a wrong passphrase"
    );
    let (no_pass, _) = invite("dr.none", &[], "");
    assert!(text(&no_pass).contains("Set WARD_ROOT_PASSPHRASE, or pass --passphrase-stdin"));
    let (ok, file) = invite("dr.leroy", &[("WARD_ROOT_PASSPHRASE", PASS)], "");
    assert!(ok.status.success(), "{}", text(&ok));
    let enrolled = up.ok(&["enroll", "--invite-file", file.to_str().unwrap()]);
    let device = enrolled
        .lines()
        .find_map(|l| l.trim().strip_prefix("device"))
        .unwrap()
        .trim()
        .to_owned();

    // Revocation: the root unlocked from standard input, no device store
    // of any clinician opened (no PIN is given).
    let revoke = |stdin: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
        cmd.args([
            "admin",
            "revoke",
            "--passphrase-stdin",
            "--user-id",
            "dr.leroy",
            "--device-id",
            &device,
        ])
        .env("WARD_DATA", &up.data)
        .env("WARD_KEYSERVER_URL", &up.keyserver)
        .env_remove("WARD_PIN")
        .env_remove("WARD_ROOT_PASSPHRASE");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    };
    let bad = revoke("not the passphrase\n");
    assert!(!bad.status.success());
    assert!(text(&bad).contains("wrong passphrase"), "{}", text(&bad));
    let done = revoke(&format!("{PASS}\n"));
    assert!(done.status.success(), "{}", text(&done));
    assert!(text(&done).contains("Revoked device"), "{}", text(&done));
    assert!(text(&done).contains("no clinician's device was used"));
    let refused = up.ward(&["send", "--as", "dr.leroy", "--to", "dr.leroy", "x"]);
    assert!(!refused.status.success());
    let again = revoke(&format!("{PASS}\n"));
    assert!(text(&again).contains("already revoked"), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(up.data.join("org-root.pub")).unwrap(),
        public
    );
}

#[test]
fn encrypt_root_seals_the_dev_key_and_deletes_it() {
    let up = Up::start("encrypt-root");
    let plain = up.data.join("dev-org-root.key");
    assert!(plain.exists());
    // Signing with the plain dev key says so.
    let dev = up.ward(&["admin", "invite", "--user-id", "dr.a", "--name", "A"]);
    assert!(text(&dev).contains("plain dev root key"), "{}", text(&dev));

    let sealed = ward_piped(
        &up.data,
        &["admin", "encrypt-root", "--passphrase-stdin"],
        &[],
        "sealing the dev root\n",
    );
    assert!(sealed.status.success(), "{}", text(&sealed));
    assert!(text(&sealed).contains("Sealed the organisation root"));
    assert!(!plain.exists());
    assert!(up.data.join("org-root.enc").exists());
    // Twice is refused, nothing changed.
    let twice = ward_piped(
        &up.data,
        &["admin", "encrypt-root", "--passphrase-stdin"],
        &[],
        "sealing the dev root\n",
    );
    assert!(!twice.status.success());
    // From now on the passphrase is needed, and the organisation is the same.
    let none = ward_piped(
        &up.data,
        &["admin", "invite", "--user-id", "dr.b", "--name", "B"],
        &[],
        "",
    );
    assert!(!none.status.success());
    let ok = ward_piped(
        &up.data,
        &[
            "admin",
            "invite",
            "--passphrase-stdin",
            "--user-id",
            "dr.b",
            "--name",
            "B",
        ],
        &[],
        "sealing the dev root\n",
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let invite = String::from_utf8(ok.stdout).unwrap();
    let line = invite
        .lines()
        .find_map(|l| l.strip_prefix("invite:"))
        .unwrap()
        .trim()
        .to_owned();
    let signed = SignedInvite::decode(unhex(&line).as_slice()).unwrap();
    let public = std::fs::read_to_string(up.data.join("org-root.pub")).unwrap();
    let root = SigningPublicKey::from_bytes(&unhex(public.trim())).unwrap();
    assert!(verify_invite(&root, &signed).is_ok());
    // The keyserver still serves: the enrolment from that invite works.
    let file = up.data.join("dr.b.invite");
    std::fs::write(&file, &invite).unwrap();
    up.ok(&["enroll", "--invite-file", file.to_str().unwrap()]);
}

/// The first-contact items of issue 12, as a new user meets them.
#[test]
fn first_contact_ports_found_invite_file_private_reuse_named_and_rfc3339_times() {
    let up = Up::start("first");
    // `ward up` ran on random ports: the other commands find them without
    // --relay / --keyserver (it wrote <data>/endpoints).
    let bare = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
        cmd.args(args)
            .env("WARD_DATA", &up.data)
            .env_remove("WARD_RELAY_URL")
            .env_remove("WARD_KEYSERVER_URL")
            .env("WARD_PIN", "ward-pin-493817");
        run_within(cmd, std::time::Duration::from_secs(60))
    };
    let ok = |args: &[&str]| {
        let out = bare(args);
        assert!(
            out.status.success(),
            "ward {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // No device store yet: the hint names the safe form.
    let out = bare(&["listen", "--timeout-secs", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--invite-file"),
        "{err}"
    );

    // The invite file is the owner's only, and its expiry is RFC 3339.
    let file = up.data.join("martin.invite");
    let said = ok(&[
        "admin",
        "invite",
        "--user-id",
        "dr.martin",
        "--name",
        "Dr Martin",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(said.contains("enroll --invite-file"), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let expires = text
        .split("expires ")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    assert!(
        expires.len() == 20 && expires.as_bytes()[10] == b'T' && expires.ends_with('Z'),
        "{expires}"
    );
    ok(&["enroll", "--invite-file", file.to_str().unwrap()]);
    let dubois = up.data.join("dubois.invite");
    ok(&[
        "admin",
        "invite",
        "--user-id",
        "nurse.dubois",
        "--name",
        "Luc Dubois",
        "--out",
        dubois.to_str().unwrap(),
    ]);
    ok(&["enroll", "--invite-file", dubois.to_str().unwrap()]);

    // The same invite again, for another device: said so.
    let other = up.data.join("elsewhere.db");
    let out = bare(&[
        "enroll",
        "--invite-file",
        file.to_str().unwrap(),
        "--store",
        other.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("invite already used"),
        "{err}"
    );

    ok(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "over TLS, found by itself",
    ]);
    let heard = ok(&[
        "listen",
        "--as",
        "nurse.dubois",
        "--count",
        "1",
        "--timeout-secs",
        "30",
    ]);
    let line = heard.lines().next().unwrap();
    // 2026-12-02T03:00:09Z  dr.martin  conv ...
    assert_eq!(line.as_bytes()[10], b'T', "{line}");
    assert!(line.ends_with("over TLS, found by itself"), "{line}");

    // A relay URL that is not TLS: said at once, not after 30 s.
    let plain = up.relay.replace("wss://", "ws://");
    let started = std::time::Instant::now();
    let out = bare(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "x",
        "--relay",
        &plain,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("use wss://"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The keyserver refusing (here: plain text to its TLS port) is named too.
    let plain_ks = up.keyserver.replace("wss://", "ws://");
    let out = bare(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.dubois",
        "y",
        "--keyserver",
        &plain_ks,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("requires TLS"),
        "{err}"
    );

    // No relay at all: listen says so within seconds, and keeps trying.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("wss://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = bare(&[
        "listen",
        "--as",
        "nurse.dubois",
        "--timeout-secs",
        "3",
        "--relay",
        &dead,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay is not reachable") && err.contains("still trying"),
        "{err}"
    );
}

#[test]
fn ward_up_print_config_shows_its_settings_from_flags_file_and_defaults() {
    let dir = std::env::temp_dir().join(format!("ward-up-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("up.toml");
    std::fs::write(
        &file,
        "relay-admin-listen = \"127.0.0.1:9070\"\nrelay-listen = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["up", "--print-config", "--config"])
        .arg(&file)
        .args(["--relay-listen", "127.0.0.1:2"])
        .env_remove("WARD_RELAY_LISTEN")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("relay-listen = \"127.0.0.1:2\""),
        "flag over file: {text}"
    );
    assert!(
        text.contains("relay-admin-listen = \"127.0.0.1:9070\""),
        "file: {text}"
    );
    assert!(
        text.contains("keyserver-listen = \"127.0.0.1:7071\""),
        "default: {text}"
    );
    assert!(
        !dir.join("ward-data").exists(),
        "print-config starts nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_init_reads_the_passphrase_from_a_terminal_without_echo() {
    // `script` (util-linux) gives the command a pseudo-terminal.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no script(1) on this machine");
        return;
    }
    use std::io::{Read as _, Write as _};
    let data = std::env::temp_dir().join(format!("ward-cli-tty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let command = format!(
        "{} admin init --data {}",
        env!("CARGO_BIN_EXE_ward"),
        data.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("WARD_ROOT_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |what: &str| {
        while !seen.contains(what) {
            let chunk = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no {what:?} in {seen:?}"));
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        seen.clone()
    };
    let mut stdin = child.stdin.take().unwrap();
    // The prompt is printed once echo is off: typing after it is never shown.
    wait_for("New passphrase for the organisation root");
    stdin.write_all(b"typed at a terminal\n").unwrap();
    wait_for("Repeat the passphrase");
    stdin.write_all(b"typed at a terminal\n").unwrap();
    let out = wait_for("org root");
    assert!(child.wait().unwrap().success(), "{out}");
    assert!(out.contains("Created the organisation root"), "{out}");
    assert!(
        !out.contains("typed at a terminal"),
        "the passphrase was echoed: {out}"
    );
    assert_eq!(std::fs::read(data.join("org-root.enc")).unwrap().len(), 144);
    let _ = std::fs::remove_dir_all(&data);
}

/// A long-running `ward` with its stdin and stdout piped: lines read on a
/// thread, so that a step that never comes fails the test instead of
/// hanging it.
struct Interactive {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Interactive {
    fn spawn(up: &Up, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
            .args(args)
            .env("WARD_DATA", &up.data)
            .env("WARD_RELAY_URL", &up.relay)
            .env("WARD_KEYSERVER_URL", &up.keyserver)
            .env("WARD_PIN", "ward-pin-493817")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (trimmed) that `pick` accepts, within a minute.
    fn until(&mut self, pick: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pick(line.trim()) {
                        return line.trim().to_owned();
                    }
                }
                Err(_) => panic!("no such line; so far: {:#?}", self.seen),
            }
        }
    }

    fn write(&mut self, text: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the exit; the rest of its output.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Issue 13, done-when 3: linking a second device through the CLI on
/// `ward up`. The phone shows a code, the tablet takes it (from standard
/// input, never argv), both print the same six digits, the phone's user
/// types "y"; the tablet then holds the history and is listed.
#[test]
fn ward_device_approve_and_link_add_a_device_with_its_history() {
    let up = Up::start("link");
    up.enroll("nurse.okafor", "Nurse Okafor");
    up.enroll("dr.martin", "Dr Claire Martin");
    up.ok(&[
        "send",
        "--as",
        "nurse.okafor",
        "--to",
        "dr.martin",
        "WARD-CLI-LINK-1",
    ]);

    let is_digits = |l: &str| {
        l.len() == 7
            && l.as_bytes()[3] == b' '
            && l.bytes()
                .enumerate()
                .all(|(i, b)| i == 3 || b.is_ascii_digit())
    };
    let mut phone = Interactive::spawn(&up, &["device", "approve", "--as", "nurse.okafor"]);
    let code = phone.until(|l| l.starts_with("ward-link:1:"));
    assert!(code.ends_with(":nurse.okafor"));
    let tablet_store = up.data.join("tablet.db");
    let mut tablet = Interactive::spawn(
        &up,
        &["device", "link", "--store", tablet_store.to_str().unwrap()],
    );
    tablet.write(&format!("{code}\n"));
    let tablet_digits = tablet.until(is_digits);
    let phone_digits = phone.until(is_digits);
    assert_eq!(phone_digits, tablet_digits, "both show the same digits");
    phone.write("y\n");
    let (status, out) = phone.finish();
    assert!(status.success(), "{out}");
    assert!(out.contains("Approved: device"), "{out}");
    assert!(out.contains("1 messages of history sent"), "{out}");
    let (status, out) = tablet.finish();
    assert!(status.success(), "{out}");
    assert!(
        out.contains("Linked: this is now a device of nurse.okafor")
            && out.contains("with 1 messages of history"),
        "{out}"
    );

    let listed = up.ok(&["device", "list", "--as", "nurse.okafor"]);
    assert_eq!(listed.matches("active").count(), 2, "{listed}");
    // The tablet reads what is sent to its user from now on.
    up.ok(&[
        "send",
        "--as",
        "dr.martin",
        "--to",
        "nurse.okafor",
        "WARD-CLI-LINK-2",
    ]);
    let history = up.ok(&[
        "history",
        "--store",
        tablet_store.to_str().unwrap(),
        "--with",
        "dr.martin",
    ]);
    assert!(history.contains("WARD-CLI-LINK-1"), "{history}");

    // A refusal: "n" on the phone, and the tablet says so and keeps nothing.
    let mut phone = Interactive::spawn(&up, &["device", "approve", "--as", "nurse.okafor"]);
    let code = phone.until(|l| l.starts_with("ward-link:1:"));
    let other_store = up.data.join("other.db");
    let mut other = Interactive::spawn(
        &up,
        &["device", "link", "--store", other_store.to_str().unwrap()],
    );
    other.write(&format!("{code}\n"));
    other.until(is_digits);
    phone.until(is_digits);
    phone.write("n\n");
    let (status, out) = phone.finish();
    assert!(status.success() && out.contains("Refused"), "{out}");
    let (status, _) = other.finish();
    assert!(!status.success());
    assert!(!other_store.exists());

    // --resume: nothing to resume without a store; an approved device's
    // store finishes (again) from its log and grants.
    let out = up.ward(&[
        "device",
        "link",
        "--resume",
        "--store",
        other_store.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nothing to resume"), "{}", text(&out));
    let out = up.ok(&[
        "device",
        "link",
        "--resume",
        "--store",
        tablet_store.to_str().unwrap(),
    ]);
    assert!(
        out.contains("Linked: this is now a device of nurse.okafor"),
        "{out}"
    );
}

/// Issue 14: `ward audit` follows the directory's epochs over the public
/// path (no account), resumes from its state, and catches a keyserver that
/// shows it an old epoch other than the one it verified (here: the state
/// holds an epoch signed by the real directory key over another tree, as
/// if the keyserver had shown that one before and rewritten it since).
#[test]
fn ward_audit_follows_epochs_and_catches_a_rewritten_one() {
    use ward_core::keys::DirectoryKey;
    use ward_core::transparency::{
        DirectoryCertificate, Epoch, MerkleTree, SignedEpoch, leaf_data, leaf_hash,
    };
    let up = Up::start("audit");
    up.enroll("nurse.okafor", "Nurse Okafor");
    let state = up.data.join("audit.state");
    let state_arg = state.to_str().unwrap();
    let wait_epoch = || std::thread::sleep(std::time::Duration::from_millis(2500));
    wait_epoch();
    let out = up.ok(&["audit", "--state", state_arg]);
    assert!(out.starts_with("ok: epoch "), "{out}");
    up.enroll("dr.martin", "Dr Claire Martin");
    wait_epoch();
    let out = up.ok(&["audit", "--state", state_arg]);
    assert!(
        out.starts_with("ok: epoch ") && !out.contains("; 0 new epochs"),
        "{out}"
    );

    // The rewritten history: the held epoch's number, another tree.
    let saved = std::fs::read_to_string(&state).unwrap();
    let mut lines = saved.lines();
    assert_eq!(lines.next(), Some("ward-audit-state 1"));
    let cert =
        ward_proto::v1::DirectoryKeyCertificate::decode(&unhex(lines.next().unwrap())[..]).unwrap();
    let held = ward_proto::v1::SignedEpoch::decode(&unhex(lines.next().unwrap())[..]).unwrap();
    let held = SignedEpoch::from_proto(&held).unwrap().head;
    let key = DirectoryKey::import_secret(
        &std::fs::read(up.data.join("keyserver-directory.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        DirectoryCertificate::from_proto(&cert)
            .unwrap()
            .directory_key,
        key.public_key()
    );
    let mut tree = MerkleTree::new();
    let mut leaves = String::new();
    for i in 0..held.tree_size {
        // A device the victim never approved, in the history shown to it.
        let l = leaf_hash(&leaf_data("nurse.okafor", 2 + i, &[0xee; 32]));
        tree.push(l);
        leaves.push_str(&format!("{}\n", hex(&l)));
    }
    let forged = SignedEpoch::sign(
        Epoch {
            root: tree.root_at(held.tree_size).unwrap(),
            ..held
        },
        &key,
    );
    std::fs::write(
        &state,
        format!(
            "ward-audit-state 1\n{}\n{}\n{leaves}",
            hex(&cert.encode_to_vec()),
            hex(&forged.to_proto().encode_to_vec())
        ),
    )
    .unwrap();
    let out = up.ward(&["audit", "--state", state_arg]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("ALERT") && said.contains("equivocation"),
        "{said}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
