//! Room storage against the real SQLite schema, with entries from
//! `ward-core`'s producers (and hand-made ones they refuse to make).

use std::path::PathBuf;

use ward_core::room::{HistoryPolicy, RoomChange, RoomKeyring, create_room, wrap_epoch_key};
use ward_core::testkit::{Clinician, Org, room_metadata};
use ward_proto::v1::{RoomWrapFor, ks_request};

use super::*;
use crate::storage::{append, migrate, open_connection};

struct World {
    path: PathBuf,
    conn: Connection,
    rooms: RoomCache,
    users: VerifiedCache,
    org: Org,
    quotas: Quotas,
}

impl Drop for World {
    fn drop(&mut self) {
        for s in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{s}", self.path.display()));
        }
    }
}

fn world() -> World {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let path = std::env::temp_dir().join(format!("ward-ks-rooms-{}.db", hex::encode(bytes)));
    let mut conn = open_connection(&path).unwrap();
    migrate(&mut conn).unwrap();
    World {
        path,
        conn,
        rooms: RoomCache::new(16),
        users: VerifiedCache::new(1 << 20),
        org: Org::new(&mut rand::rng()),
        quotas: Quotas::default(),
    }
}

impl World {
    fn enroll(&mut self, user: &str) -> Clinician {
        let c = self.org.enroll(&mut rand::rng(), user);
        let root = self.org.root_public();
        for e in &c.log {
            append(&mut self.conn, &root, 1, e).unwrap();
        }
        c
    }

    fn submit(
        &mut self,
        by: &Clinician,
        change: &RoomChange,
    ) -> Result<RoomAppended, RequestError> {
        self.submit_raw(
            by,
            change.room.id(),
            vec![change.entry.clone()],
            wraps_of(change),
        )
    }

    fn submit_raw(
        &mut self,
        by: &Clinician,
        room: &RoomId,
        entries: Vec<SignedRoomStatement>,
        wraps: Vec<RoomWrapFor>,
    ) -> Result<RoomAppended, RequestError> {
        let req = AppendRoom {
            room_id: room.as_bytes().to_vec(),
            entries,
            wraps,
        };
        let body = ks_request::Body::AppendRoom(req.clone());
        crate::rooms::check(&crate::KsLimits::default(), &body)?;
        let root = self.org.root_public();
        append_room(
            &mut self.conn,
            &self.rooms,
            &self.users,
            &root,
            2,
            by.chain.user_id(),
            &by.device.public_key(),
            &req,
        )
    }

    fn readable(&mut self, who: &Clinician, room: &RoomId) -> Result<u64, RequestError> {
        get_room_log(
            &mut self.conn,
            who.chain.user_id(),
            &who.device.public_key(),
            room.as_bytes(),
            0,
            1 << 22,
        )
        .map(|p| {
            assert_eq!(p.entries.len() as u64, p.len);
            p.len
        })
    }
}

fn wraps_of(change: &RoomChange) -> Vec<RoomWrapFor> {
    change
        .wraps
        .iter()
        .map(|(u, w)| RoomWrapFor {
            recipient_user_id: u.clone(),
            wrap: Some(w.clone()),
        })
        .collect()
}

#[test]
fn only_verified_entries_and_policy_conforming_wraps_are_stored() {
    let mut w = world();
    let (a, b, c, d) = (w.enroll("a"), w.enroll("b"), w.enroll("c"), w.enroll("d"));
    let users = [
        a.chain.clone(),
        b.chain.clone(),
        c.chain.clone(),
        d.chain.clone(),
    ];
    let rng = &mut rand::rng();
    let mut keyring = RoomKeyring::new();

    let created = create_room(
        rng,
        a.room_author(),
        HistoryPolicy::FromJoin,
        &[&b.chain],
        &room_metadata(),
        10,
    )
    .unwrap();
    let id = *created.room.id();
    keyring.insert(
        0,
        RoomEpochKeyCopy::copy(created.epoch_key.as_ref().unwrap()),
    );
    assert_eq!(
        w.submit(&a, &created).unwrap(),
        RoomAppended { len: 1, wraps: 2 }
    );
    // A retry is acknowledged again.
    assert_eq!(w.submit(&a, &created).unwrap().len, 1);

    // b is no admin: its addition verifies nowhere, and not here.
    let by_b = created
        .room
        .add_members(rng, b.room_author(), &[&c.chain], &users[..], &keyring, 11)
        .unwrap_err();
    assert!(matches!(by_b, ward_core::RoomError::NotAdmin { .. }));
    let forged = ward_proto::v1::RoomStatement {
        version: 2,
        room_id: id.as_bytes().to_vec(),
        seq: 1,
        prev_hash: created.room.head().to_vec(),
        timestamp: 11,
        author_user_id: "b".into(),
        author_device: b.device.public_key().as_bytes().to_vec(),
        author_chain_len: b.chain.len(),
        body: Some(ward_proto::v1::room_statement::Body::GrantAdmin(
            ward_proto::v1::RoomGrantAdmin {
                user_id: "b".into(),
            },
        )),
    };
    let entry = ward_core::room::sign_raw(&forged, &b.device);
    let refused = w.submit_raw(&b, &id, vec![entry], vec![]).unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidStatement, "{refused:?}");

    // FROM_JOIN: c's addition starts epoch 1; a wrap of epoch 0 to c is refused.
    let added = created
        .room
        .add_members(rng, a.room_author(), &[&c.chain], &users[..], &keyring, 12)
        .unwrap();
    keyring.insert(1, RoomEpochKeyCopy::copy(added.epoch_key.as_ref().unwrap()));
    // Submitted by someone else's session: refused, although it verifies.
    assert_eq!(w.submit(&b, &added).unwrap_err().code, ErrorCode::Forbidden);
    assert_eq!(
        w.submit(&a, &added).unwrap(),
        RoomAppended { len: 2, wraps: 3 }
    );
    let epoch0 = keyring.get(0).unwrap();
    let early = wrap_epoch_key(rng, &id, 0, epoch0, c.chain.encryption_key()).unwrap();
    let early = vec![RoomWrapFor {
        recipient_user_id: "c".into(),
        wrap: Some(early),
    }];
    assert_eq!(
        w.submit_raw(&a, &id, vec![], early).unwrap_err().code,
        ErrorCode::Forbidden
    );

    // b removed: epoch 2, wrapped to a and c only; a wrap of it to b is refused.
    let removed = added
        .room
        .remove_member(rng, a.room_author(), "b", &users[..], &keyring, 13)
        .unwrap();
    keyring.insert(
        2,
        RoomEpochKeyCopy::copy(removed.epoch_key.as_ref().unwrap()),
    );
    assert_eq!(
        w.submit(&a, &removed).unwrap(),
        RoomAppended { len: 3, wraps: 2 }
    );
    let late = wrap_epoch_key(
        rng,
        &id,
        2,
        keyring.get(2).unwrap(),
        b.chain.encryption_key(),
    )
    .unwrap();
    let late = vec![RoomWrapFor {
        recipient_user_id: "b".into(),
        wrap: Some(late),
    }];
    assert_eq!(
        w.submit_raw(&a, &id, vec![], late).unwrap_err().code,
        ErrorCode::Forbidden
    );

    // Readers: b up to its removal, a and c everything, d nothing.
    let rotated = removed
        .room
        .rotate(rng, c.room_author(), &users[..], &keyring, 14)
        .unwrap();
    assert_eq!(w.submit(&c, &rotated).unwrap().len, 4);
    assert_eq!(w.readable(&a, &id).unwrap(), 4);
    assert_eq!(w.readable(&c, &id).unwrap(), 4);
    assert_eq!(w.readable(&b, &id).unwrap(), 3);
    assert_eq!(w.readable(&d, &id).unwrap_err().code, ErrorCode::NotFound);

    // b's wraps are epochs 0 and 1 only; c's are 1, 2 and 3.
    let epochs = |w: &mut World, who: &Clinician| {
        let (wraps, rows) = get_room_wraps(
            &mut w.conn,
            who.chain.user_id(),
            &who.device.public_key(),
            3,
            id.as_bytes(),
            0,
        )
        .unwrap();
        assert_eq!(rows.len(), wraps.wraps.len());
        wraps.wraps.iter().map(|w| w.epoch).collect::<Vec<_>>()
    };
    assert_eq!(epochs(&mut w, &b), vec![0, 1]);
    assert_eq!(epochs(&mut w, &c), vec![1, 2, 3]);
    let listed = list_rooms(&mut w.conn, "b", &b.device.public_key()).unwrap();
    assert!(listed.is_empty());
    let listed = list_rooms(&mut w.conn, "c", &c.device.public_key()).unwrap();
    assert_eq!(
        listed,
        vec![RoomHead {
            room_id: id.as_bytes().to_vec(),
            len: 4
        }]
    );

    // A stale cache is never trusted: a fresh cache verifies the stored log.
    w.rooms = RoomCache::new(0);
    let removal_again = w.submit(&a, &removed).unwrap();
    assert_eq!(removal_again.len, 4);
}

#[test]
fn room_message_keys_go_to_current_epoch_readers_only() {
    let mut w = world();
    let (a, b, d) = (w.enroll("a"), w.enroll("b"), w.enroll("d"));
    let rng = &mut rand::rng();
    let created = create_room(
        rng,
        a.room_author(),
        HistoryPolicy::WholeHistory,
        &[&b.chain],
        &room_metadata(),
        10,
    )
    .unwrap();
    let id = *created.room.id();
    w.submit(&a, &created).unwrap();
    let epoch_pk = *created.room.current_epoch_key().unwrap();
    let rid = ward_core::ResourceId::random(rng);
    let key = ward_core::keys::ResourceKey::generate(rng);
    let wrapped = ward_core::wrap::wrap_resource_key(rng, &key, &rid, &epoch_pk).unwrap();
    let put = |w: &mut World, who: &Clinician, epoch: u64| {
        put_room_key(
            &mut w.conn,
            who.chain.user_id(),
            &who.device.public_key(),
            5,
            &w.quotas.clone(),
            id.as_bytes(),
            epoch,
            &wrapped,
        )
    };
    assert_eq!(put(&mut w, &d, 0).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(put(&mut w, &a, 1).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(put(&mut w, &a, 0).unwrap(), 1);
    assert_eq!(put(&mut w, &a, 0).unwrap(), 1);
    assert_eq!(put(&mut w, &b, 0).unwrap_err().code, ErrorCode::Conflict);
    let get = |w: &mut World, who: &Clinician| {
        get_room_keys(
            &mut w.conn,
            who.chain.user_id(),
            &who.device.public_key(),
            6,
            id.as_bytes(),
            &[rid.as_bytes().to_vec()],
        )
        .unwrap()
    };
    let (keys, rows) = get(&mut w, &b);
    assert_eq!((keys.keys.len(), rows.len()), (1, 1));
    let (keys, rows) = get(&mut w, &d);
    assert_eq!((keys.keys.len(), keys.missing.len(), rows.len()), (0, 1, 0));
}

/// Epoch keys are not `Clone` (secrets): tests copy them through their seed.
struct RoomEpochKeyCopy;
impl RoomEpochKeyCopy {
    fn copy(k: &ward_core::keys::RoomEpochKey) -> ward_core::keys::RoomEpochKey {
        ward_core::keys::RoomEpochKey::import_secret(&*k.export_secret()).unwrap()
    }
}
