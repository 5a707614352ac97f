//! Replays the committed `store_header` fuzz corpus (`fuzz/corpus/`) on
//! stable (fuzz/README.md).

// The helpers are test code too: a failed replay is the point.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;

#[test]
fn store_header() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/store_header");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for store_header");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| ward_sdk::fuzzing::store_header(&data)) {
            panic!("store_header: {} panics: {e:?}", f.display());
        }
    }
    for seed in ward_sdk::fuzzing::seeds() {
        ward_sdk::fuzzing::store_header(&seed);
    }
}
