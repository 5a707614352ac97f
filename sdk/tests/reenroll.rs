//! A device store written by the v1 SDK, opened through the client API: the
//! app gets one typed error it can act on (`ClientError::ReenrollRequired`),
//! not a store failure to show as "try again" (SECURITY.md §14.9).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ward_sdk::store::{Pin, Store, StoreError};
use ward_sdk::{Client, ClientConfig, ClientError};

/// The v1 fixture's PIN (`tests/store.rs`, SECURITY.md §14.9).
const FIXTURE_PIN: &str = "271828";

/// A copy of `tests/fixtures/store-v1.db` and its header: unlocking migrates
/// the copy, never the committed fixture.
fn v1_store() -> (tempfile::TempDir, PathBuf) {
    let fixtures = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    std::fs::copy(fixtures.join("store-v1.db"), &path).unwrap();
    std::fs::copy(
        fixtures.join("store-v1.db.header"),
        dir.path().join("device.db.header"),
    )
    .unwrap();
    (dir, path)
}

fn config(path: PathBuf) -> ClientConfig {
    let root = ward_sdk::core::keys::OrgRootKey::generate(&mut rand::rng()).public_key();
    // Nothing listens there: the refusal must come before any connection.
    ClientConfig::new(path, "ws://127.0.0.1:9", "ws://127.0.0.1:9", root)
}

#[tokio::test]
async fn a_v1_store_unlocks_to_a_typed_reenroll_error() {
    let (_dir, path) = v1_store();
    // A wrong PIN is still a wrong PIN: the v1 verdict needs the store open.
    assert!(matches!(
        Client::unlock(config(path.clone()), Pin::new("000000".into()).unwrap()).await,
        Err(ClientError::Store(StoreError::WrongPin {
            attempts_left: 9
        }))
    ));
    for _ in 0..2 {
        match Client::unlock(config(path.clone()), Pin::new(FIXTURE_PIN.into()).unwrap()).await {
            Err(e @ ClientError::ReenrollRequired) => {
                assert!(!e.is_transient(), "retrying cannot help");
                assert!(!e.is_device_revoked());
                assert!(e.to_string().contains("new invite"), "{e}");
            }
            Err(e) => panic!("expected ReenrollRequired, got {e:?}"),
            Ok(_) => panic!("a v1 store started a v2 client"),
        }
    }
    // The right PIN reset the attempt counter, and the store was not wiped
    // or emptied: the history is still there for the app to keep.
    let store = Store::unlock(&path, &Pin::new(FIXTURE_PIN.into()).unwrap(), None).unwrap();
    assert!(store.holds_v1_keys().unwrap());
    assert!(!store.conversations().unwrap().is_empty());
}
