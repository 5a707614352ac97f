//! What the relay's integration tests share: a temporary directory removed
//! on drop (each test's database and blob folder).
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ward-<prefix>-<random>` under the system's temp dir, created.
pub fn temp_dir(prefix: &str) -> TempDir {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let p = std::env::temp_dir().join(format!("ward-{prefix}-{}", hex::encode(r)));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}
