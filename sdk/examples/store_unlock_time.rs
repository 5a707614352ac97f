//! Measures how long creating and unlocking a store takes with the default
//! Argon2id parameters (64 MiB, 3 passes, 1 lane) on this machine.
//!
//! ```sh
//! cargo run -p ward-sdk --release --example store_unlock_time
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ward_sdk::store::{CreateOptions, KdfParams, Pin, Store};

fn main() {
    let dir = std::env::temp_dir().join(format!("ward-unlock-time-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.db");
    let pin = Pin::new("493817".to_owned()).unwrap();
    let t = Instant::now();
    let store = Store::create(&path, &pin, None, CreateOptions::default()).unwrap();
    println!(
        "create (default {:?}): {:?}",
        KdfParams::DEFAULT,
        t.elapsed()
    );
    store.lock();
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let store = Store::unlock(&path, &pin, None).unwrap();
        runs.push(t.elapsed());
        store.lock();
    }
    runs.sort();
    println!(
        "unlock, 5 runs: min {:?}, median {:?}, max {:?}",
        runs[0], runs[2], runs[4]
    );
    Store::wipe(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
