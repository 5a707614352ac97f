//! The publisher's rules at the storage level (SECURITY.md §18.4): leaves
//! in user_id order, one leaf per grown log at its final length, nothing
//! published without a change unless forced, the tree rebuilt at load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use rusqlite::{Connection, params};
use ward_core::keys::DirectoryKey;
use ward_core::transparency::{MerkleTree, leaf_data, leaf_hash};
use ward_keyserver::storage::{migrate, open_connection};
use ward_keyserver::transparency::Directory;

fn append(conn: &Connection, user: &str, seq: i64, hash: u8) {
    if seq == 0 {
        conn.execute(
            "INSERT INTO users (user_id, current_key, rotation_pending, log_len, created_at)
             VALUES (?1, x'00', 0, 1, 0)",
            params![user],
        )
        .unwrap();
    } else {
        conn.execute(
            "UPDATE users SET log_len = ?2 WHERE user_id = ?1",
            params![user, seq + 1],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO log_entries (user_id, seq, statement, signature, entry_hash, received_at)
         VALUES (?1, ?2, x'00', x'00', ?3, 0)",
        params![user, seq, [hash; 32].as_slice()],
    )
    .unwrap();
}

#[test]
fn leaves_follow_user_order_and_final_lengths() {
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    let db = std::env::temp_dir().join(format!("ward-ks-kt-storage-{}.db", hex::encode(suffix)));
    let mut conn = open_connection(&db).unwrap();
    migrate(&mut conn).unwrap();
    let key = Arc::new(DirectoryKey::generate(&mut rand::rng()));
    let dir = Directory::load(&conn, Arc::clone(&key), None, None).unwrap();

    // A fresh directory publishes even with nothing in it.
    let e1 = dir.publish(&mut conn, 10, false).unwrap().unwrap();
    assert_eq!((e1.epoch.epoch, e1.epoch.tree_size), (1, 0));
    assert!(e1.epoch.verify(&key.public_key(), &e1.signature));

    // Enrolled in the order c, a, b; b's log grows twice before the epoch.
    append(&conn, "dr.c", 0, 3);
    append(&conn, "dr.a", 0, 1);
    append(&conn, "dr.b", 0, 2);
    append(&conn, "dr.b", 1, 22);
    let e2 = dir.publish(&mut conn, 20, false).unwrap().unwrap();
    assert_eq!((e2.epoch.epoch, e2.epoch.tree_size), (2, 3));
    let mut tree = MerkleTree::new();
    for (user, len, h) in [("dr.a", 1, 1u8), ("dr.b", 2, 22), ("dr.c", 1, 3)] {
        tree.push(leaf_hash(&leaf_data(user, len, &[h; 32])));
    }
    assert_eq!(tree.root_at(3).unwrap(), e2.epoch.root);

    // Nothing grew: nothing published, unless forced (same tree).
    assert!(dir.publish(&mut conn, 30, false).unwrap().is_none());
    let e3 = dir.publish(&mut conn, 5, true).unwrap().unwrap();
    assert_eq!((e3.epoch.epoch, e3.epoch.tree_size), (3, 3));
    assert_eq!(e3.epoch.root, e2.epoch.root);
    // A clock gone backwards never makes an epoch older than the previous one.
    assert_eq!(e3.epoch.timestamp, 20);

    // Reloaded: the same tree, and only logs grown since get new leaves.
    drop(dir);
    let dir = Directory::load(&conn, key, None, None).unwrap();
    assert_eq!(dir.latest(), Some(e3));
    append(&conn, "dr.a", 1, 11);
    let e4 = dir.publish(&mut conn, 40, false).unwrap().unwrap();
    tree.push(leaf_hash(&leaf_data("dr.a", 2, &[11; 32])));
    assert_eq!(
        (e4.epoch.tree_size, e4.epoch.root),
        (4, tree.root_at(4).unwrap())
    );
    drop(conn);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}
