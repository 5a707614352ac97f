//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`)
//! through the target's entry point on stable: the inputs that once crashed
//! a target, and the coverage the fuzzer found, stay tested without nightly.
//! A panic here is a regression of a fuzz finding (fuzz/README.md).

// The helpers are test code too: a failed replay is the point.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;

use ward_core::fuzzing;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // The corpus is committed: an empty one means it was lost, not passed.
    assert!(!files.is_empty(), "no corpus for {target}");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| entry(&data)) {
            panic!("{target}: {} panics: {e:?}", f.display());
        }
    }
}

#[test]
fn frames() {
    replay("frames", fuzzing::frames);
}

#[test]
fn statement() {
    replay("statement", fuzzing::statement);
}

#[test]
fn log() {
    replay("log", fuzzing::log);
}

#[test]
fn invite() {
    replay("invite", fuzzing::invite);
}

#[test]
fn envelope() {
    replay("envelope", fuzzing::envelope);
}

#[test]
fn wrap() {
    replay("wrap", fuzzing::wrap);
}

#[test]
fn auth() {
    replay("auth", fuzzing::auth);
}

#[test]
fn keys() {
    replay("keys", fuzzing::keys);
}

#[test]
fn room() {
    replay("room", fuzzing::room);
}

/// The seeds the fuzzer starts from pass their target (the fixture builds
/// them right), so a corpus is never seeded with inputs that stop early.
#[test]
fn seeds_run() {
    let seeds = fuzzing::seeds();
    assert!(seeds.len() > 30);
    for (target, data) in seeds {
        let entry: fn(&[u8]) = match target {
            "frames" => fuzzing::frames,
            "statement" => fuzzing::statement,
            "log" => fuzzing::log,
            "invite" => fuzzing::invite,
            "envelope" => fuzzing::envelope,
            "wrap" => fuzzing::wrap,
            "auth" => fuzzing::auth,
            "keys" => fuzzing::keys,
            "room" => fuzzing::room,
            other => panic!("seed for unknown target {other}"),
        };
        entry(&data);
    }
}

/// The room seeds reach past the checks: the fixture's log verifies and its
/// wraps open for their members, so mutations start from valid inputs.
#[test]
fn room_fixture_is_valid() {
    let f = fuzzing::fixture();
    let r = fuzzing::room_fixture();
    let v = ward_core::room::verify_room_log(None, &r.entries, &r.users).unwrap();
    assert_eq!(v.head(), r.room.head());
    assert!(!v.is_member(fuzzing::BOB));
    r.room
        .accept_epoch_wrap(&r.wrap_for_alice, &f.alice.user_key)
        .unwrap();
    r.room
        .accept_epoch_wrap(&r.wrap_for_bob, &f.bob.user_key)
        .unwrap();
    assert!(
        r.room
            .accept_epoch_wrap(&r.wrap_for_bob, &f.alice.user_key)
            .is_err()
    );
}
