//! Epoch publication at 10,000 and 100,000 users, at the storage level
//! (BENCHMARKS.md "Key transparency"). Ignored by default; run with
//! `cargo test --release -p ward-keyserver --test kt_bench -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Instant;

use rusqlite::params;
use ward_core::keys::DirectoryKey;
use ward_keyserver::storage::{migrate, open_connection};
use ward_keyserver::transparency::Directory;

fn run(users: usize) {
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    let db = std::env::temp_dir().join(format!("ward-ks-kt-bench-{}.db", hex::encode(suffix)));
    let mut conn = open_connection(&db).unwrap();
    migrate(&mut conn).unwrap();
    // Users with a one-entry log each (the entry's bytes do not matter to
    // the publisher: it reads log lengths and entry hashes only).
    {
        let tx = conn.transaction().unwrap();
        for i in 0..users {
            let user = format!("dr.{i:07}");
            tx.execute(
                "INSERT INTO users (user_id, current_key, rotation_pending, log_len, created_at)
                 VALUES (?1, x'00', 0, 1, 0)",
                params![user],
            )
            .unwrap();
            let mut h = [0u8; 32];
            rand::fill(&mut h);
            tx.execute(
                "INSERT INTO log_entries (user_id, seq, statement, signature, entry_hash, received_at)
                 VALUES (?1, 0, x'00', x'00', ?2, 0)",
                params![user, h.as_slice()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let key = Arc::new(DirectoryKey::generate(&mut rand::rng()));
    let dir = Directory::load(&conn, Arc::clone(&key), None, None).unwrap();
    let t = Instant::now();
    let first = dir.publish(&mut conn, 1, false).unwrap().unwrap();
    let first_s = t.elapsed().as_secs_f64();
    assert_eq!(first.epoch.tree_size, users as u64);

    // 1% of the users add a device between two epochs.
    let changed = (users / 100).max(1);
    {
        let tx = conn.transaction().unwrap();
        for i in 0..changed {
            let user = format!("dr.{:07}", i * 100);
            let mut h = [0u8; 32];
            rand::fill(&mut h);
            tx.execute(
                "INSERT INTO log_entries (user_id, seq, statement, signature, entry_hash, received_at)
                 VALUES (?1, 1, x'00', x'00', ?2, 0)",
                params![user, h.as_slice()],
            )
            .unwrap();
            tx.execute(
                "UPDATE users SET log_len = 2 WHERE user_id = ?1",
                params![user],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let t = Instant::now();
    let second = dir.publish(&mut conn, 2, false).unwrap().unwrap();
    let second_s = t.elapsed().as_secs_f64();
    assert_eq!(second.epoch.tree_size, (users + changed) as u64);

    let t = Instant::now();
    assert!(dir.publish(&mut conn, 3, false).unwrap().is_none());
    let idle_check_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dir.publish(&mut conn, 3, true).unwrap().unwrap();
    let forced_s = t.elapsed().as_secs_f64();

    drop(dir);
    let t = Instant::now();
    let reloaded = Directory::load(&conn, key, None, None).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    assert_eq!(reloaded.latest().unwrap().epoch.epoch, 3);
    println!(
        "kt publication, {users} users: first epoch (all {users} leaves) {:.1} ms; \
         {changed} changed users {:.1} ms; nothing changed (check only) {:.2} ms; \
         idle epoch (same tree) {:.2} ms; rebuild at start {:.1} ms",
        first_s * 1e3,
        second_s * 1e3,
        idle_check_s * 1e3,
        forced_s * 1e3,
        load_s * 1e3
    );
    drop(conn);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

#[test]
#[ignore = "measurement: prints epoch publication times (BENCHMARKS.md)"]
fn epoch_publication_at_10k_and_100k_users() {
    run(10_000);
    run(100_000);
}
