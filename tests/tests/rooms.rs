//! Issue 10's rooms end to end: the real relay and keyserver on 127.0.0.1:0,
//! real SDK clients with their own encrypted stores (SECURITY.md §17).
// Helpers outside `#[test]` functions may fail the test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use ward_core::RoomId;
use ward_core::chain::{VerifiedUser, verify_log};
use ward_core::envelope::ReceivedEnvelope;
use ward_core::keys::RoomEpochKey;
use ward_core::room::{HistoryPolicy, VerifiedRoom, verify_room_log};
use ward_core::wrap::unwrap_room_resource_key;
use ward_core::{ResourceId, RoomError};
use ward_proto::v1::{
    AppendRoom, ErrorCode, RoomKeyWrap, RoomStatement, SignedRoomStatement, SignedStatement,
    WrappedKey, ks_request, ks_response, room_statement,
};
use ward_sdk::store::{Message, Store};
use ward_sdk::{Client, ClientError, Event};
use ward_tests::keyserver::{CallError, KsClient};
use ward_tests::proxy::ks_hook;
use ward_tests::relay::WAIT;
use ward_tests::world::{World, pin};

fn text(m: &Message) -> String {
    String::from_utf8(m.content.to_vec()).unwrap()
}

/// The next message; `Sent` and room-change events are skipped, anything
/// else fails the test.
async fn next_message(events: &mut Receiver<Event>) -> Message {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("event stream closed");
        match ev {
            Event::Message(m) => return m,
            Event::Sent { .. } | Event::RoomChanged { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Waits for the `Sent` event of `rid`.
async fn sent(events: &mut Receiver<Event>, rid: ResourceId) {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("timed out waiting for a SendAck")
            .expect("event stream closed");
        match ev {
            Event::Sent { resource_id } if resource_id == rid => return,
            Event::Sent { .. } | Event::RoomChanged { .. } | Event::Message(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// No message arrives within `d`.
async fn no_message(events: &mut Receiver<Event>, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(Event::Message(m))) => panic!("unexpected message {:?}", text(&m)),
            Ok(Some(_)) => {}
        }
    }
}

fn db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Every user log the keyserver stores, verified from the root.
fn ks_users(w: &World) -> BTreeMap<String, VerifiedUser> {
    let conn = db(&w.ks_db);
    let mut stmt = conn
        .prepare("SELECT user_id, statement, signature FROM log_entries ORDER BY user_id, seq")
        .unwrap();
    let mut logs: BTreeMap<String, Vec<SignedStatement>> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                SignedStatement {
                    statement: r.get(1)?,
                    signature: r.get(2)?,
                },
            ))
        })
        .unwrap();
    for row in rows {
        let (u, e) = row.unwrap();
        logs.entry(u).or_default().push(e);
    }
    logs.into_iter()
        .map(|(u, l)| {
            let v = verify_log(&w.org.root_public(), &u, &l).unwrap();
            (u, v)
        })
        .collect()
}

/// The room's log as the keyserver stores it.
fn ks_room_log(w: &World, room: &RoomId) -> Vec<SignedRoomStatement> {
    let conn = db(&w.ks_db);
    let mut stmt = conn
        .prepare("SELECT statement, signature FROM room_entries WHERE room_id = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([room.as_bytes().as_slice()], |r| {
        Ok(SignedRoomStatement {
            statement: r.get(0)?,
            signature: r.get(1)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn ks_room(w: &World, room: &RoomId) -> VerifiedRoom {
    verify_room_log(Some(room), &ks_room_log(w, room), &ks_users(w)).unwrap()
}

/// Every epoch-key wrap the keyserver stores for `room`: (recipient, wrap).
fn ks_wraps(w: &World, room: &RoomId) -> Vec<(String, RoomKeyWrap)> {
    let conn = db(&w.ks_db);
    let mut stmt = conn
        .prepare(
            "SELECT recipient_user, epoch, epoch_key, recipient_key, enc, ciphertext
             FROM room_wraps WHERE room_id = ?1",
        )
        .unwrap();
    stmt.query_map([room.as_bytes().as_slice()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            RoomKeyWrap {
                room_id: room.as_bytes().to_vec(),
                epoch: r.get::<_, i64>(1)? as u64,
                epoch_key: r.get(2)?,
                recipient_key: r.get(3)?,
                enc: r.get(4)?,
                ciphertext: r.get(5)?,
            },
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Every room message key the keyserver stores: (epoch, key).
fn ks_room_keys(w: &World) -> Vec<(u64, WrappedKey)> {
    let conn = db(&w.ks_db);
    let mut stmt = conn
        .prepare("SELECT epoch, resource_id, recipient_key, enc, ciphertext FROM room_keys")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            WrappedKey {
                resource_id: r.get(1)?,
                recipient_key: r.get(2)?,
                enc: r.get(3)?,
                ciphertext: r.get(4)?,
            },
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Every payload the relay stores.
fn relay_payloads(w: &World) -> Vec<Vec<u8>> {
    let conn = db(&w.relay.db);
    let mut stmt = conn.prepare("SELECT payload FROM messages").unwrap();
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a device's store holds for a room, read with its PIN once the
/// client is locked: its user keys and its epoch keys.
struct Loot {
    user_keys: Vec<ward_core::keys::UserEncryptionKey>,
    epoch_keys: BTreeMap<u64, RoomEpochKey>,
    device: ward_core::keys::DeviceSigningKey,
}

fn loot(w: &World, user: &str, room: &RoomId) -> Loot {
    let s = Store::unlock(&w.store_path(user), &pin(), None).unwrap();
    let ring = s.room_keyring(room).unwrap();
    let epoch_keys = ring
        .epochs()
        .map(|e| {
            let seed = ring.get(e).unwrap().export_secret();
            (e, RoomEpochKey::import_secret(&*seed).unwrap())
        })
        .collect();
    let loot = Loot {
        user_keys: s.user_keys().unwrap(),
        epoch_keys,
        device: s.identity().unwrap().unwrap().device_signing,
    };
    s.lock();
    loot
}

const ALICE: &str = "alice@chu";
const BOB: &str = "bob@chu";
const CAROL: &str = "carol@chu";

/// Done-when 1a: a removed member, holding every key its device ever had
/// and every byte both servers hold, cannot decrypt a message sent after
/// its removal; the members who remain can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_read_what_follows_even_with_every_server_byte() {
    let w = World::new().await;
    let mut alice = w.enroll(ALICE, ALICE).await;
    let mut bob = w.enroll(BOB, BOB).await;
    let mut carol = w.enroll(CAROL, CAROL).await;
    let (mut ea, mut eb, mut ec) = (
        alice.events().unwrap(),
        bob.events().unwrap(),
        carol.events().unwrap(),
    );
    let room = alice
        .create_room(
            "Bed 12",
            "case-881",
            "post-op",
            &[BOB, CAROL],
            HistoryPolicy::FromJoin,
        )
        .await
        .unwrap();
    let before = alice
        .send_room_text(&room, "before the removal")
        .await
        .unwrap();
    sent(&mut ea, before).await;
    for events in [&mut eb, &mut ec] {
        let m = next_message(events).await;
        assert_eq!(text(&m), "before the removal");
        assert_eq!(
            m.conversation_id,
            ward_core::envelope::room_conversation_id(&room)
        );
    }
    // Members see the room, its metadata (sealed to them) and each other.
    let seen = carol.rooms().await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].metadata.as_ref().unwrap().case_reference,
        "case-881"
    );
    assert_eq!(seen[0].members.len(), 3);

    alice.remove_member(&room, CAROL).await.unwrap();
    // Bob stays offline so that the relay keeps the ciphertext for him.
    bob.lock().await;
    let after = alice
        .send_room_text(&room, "after the removal")
        .await
        .unwrap();
    sent(&mut ea, after).await;
    no_message(&mut ec, Duration::from_millis(500)).await;
    let carols_view = carol.room(&room).await.unwrap();
    assert!(!carols_view.is_member);
    // Her view ends with her removal, which starts epoch 1: she sees its
    // public key and member list, and holds no key of it.
    assert_eq!((carols_view.len, carols_view.epoch), (2, 1));
    assert_eq!(carol.room_epochs_held(&room).await.unwrap(), vec![0]);
    carol.lock().await;

    // Carol's loot: every key her device held, and both servers' bytes.
    let l = loot(&w, CAROL, &room);
    assert_eq!(l.epoch_keys.keys().copied().collect::<Vec<_>>(), vec![0]);
    let verified = ks_room(&w, &room);
    assert_eq!(verified.current_epoch(), 1);
    let wraps = ks_wraps(&w, &room);
    assert!(
        wraps.iter().all(|(u, w)| u != CAROL || w.epoch == 0),
        "the keyserver holds a later epoch's wrap to carol"
    );
    // Every wrap it stores, tried with every user key she had: only epoch 0 opens.
    let mut epoch_keys: Vec<RoomEpochKey> = l.epoch_keys.into_values().collect();
    for (_, wrap) in &wraps {
        for uk in &l.user_keys {
            if let Ok(k) = verified.accept_epoch_wrap(wrap, uk) {
                assert_eq!(wrap.epoch, 0);
                epoch_keys.push(k);
            }
        }
    }
    let mut after_found = false;
    for payload in relay_payloads(&w) {
        let env = ReceivedEnvelope::parse(&payload).unwrap();
        let addr = env.room().copied().expect("a room message");
        if addr.epoch < 1 {
            continue;
        }
        after_found |= env.resource_id() == after;
        for (_, key) in ks_room_keys(&w) {
            for ek in &epoch_keys {
                assert!(unwrap_room_resource_key(&key, &env.resource_id(), ek).is_err());
            }
        }
    }
    assert!(after_found, "the relay no longer holds the message");
    for f in w.server_files() {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, b"after the removal"), "{}", f.display());
        assert!(
            !contains(&bytes, b"case-881"),
            "{} holds the case reference",
            f.display()
        );
    }
    // Bob, who remains, reads it.
    let mut bob = w.unlock(BOB).await;
    let mut eb = bob.events().unwrap();
    assert_eq!(text(&next_message(&mut eb).await), "after the removal");
    // Every epoch-key wrap and room message key served was logged first.
    let log = ward_keyserver::storage::export_access_log(&w.ks_db, 0).unwrap();
    let read = |user: &str, kind| {
        log.iter()
            .filter(|r| r.user_id == user && r.kind == kind)
            .count()
    };
    use ward_keyserver::storage::AccessKind::{RoomKey, RoomWrap};
    assert_eq!(read(BOB, RoomWrap), 2, "epochs 0 and 1");
    assert_eq!(read(BOB, RoomKey), 2, "both messages");
    assert_eq!((read(CAROL, RoomWrap), read(CAROL, RoomKey)), (1, 1));
    bob.lock().await;
    alice.lock().await;
}

/// A room entry signed by `by` at the room's next position: a grant of the
/// admin role to itself, which only an admin may sign (M11).
fn non_admin_grant(
    w: &World,
    room: &RoomId,
    user: &str,
    device: &ward_core::keys::DeviceSigningKey,
) -> SignedRoomStatement {
    let log = ks_room_log(w, room);
    let users = ks_users(w);
    let st = RoomStatement {
        version: 2,
        room_id: room.as_bytes().to_vec(),
        seq: log.len() as u64,
        prev_hash: ward_core::room::room_entry_hash(log.last().unwrap()).to_vec(),
        timestamp: 1_900_000_000,
        author_user_id: user.into(),
        author_device: device.public_key().as_bytes().to_vec(),
        author_chain_len: users[user].len(),
        body: Some(room_statement::Body::GrantAdmin(
            ward_proto::v1::RoomGrantAdmin {
                user_id: user.into(),
            },
        )),
    };
    ward_core::room::sign_raw(&st, device)
}

fn room_error(e: ClientError) -> RoomError {
    match e {
        ClientError::Room { error, .. } => error,
        other => panic!("expected a room verification error, got {other:?}"),
    }
}

/// Done-when 1b: an entry signed by a non-admin is refused by the keyserver
/// and, fed by a malicious keyserver, by every member; a rollback and a fork
/// are detected, and the rollback is still refused after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_entries_rollbacks_and_forks_are_refused() {
    let w = World::with_keyserver_proxy().await;
    let alice = w.enroll(ALICE, ALICE).await;
    let bob = w.enroll(BOB, BOB).await;
    let carol = w.enroll(CAROL, CAROL).await;
    let room = alice
        .create_room(
            "Tumour board",
            "",
            "",
            &[BOB, CAROL],
            HistoryPolicy::WholeHistory,
        )
        .await
        .unwrap();
    for c in [&bob, &carol] {
        assert_eq!(c.members(&room).await.unwrap().len(), 3);
    }

    // Bob, no admin, signs a grant to himself with his own device.
    bob.lock().await;
    let bob_device = loot(&w, BOB, &room).device;
    let forged = non_admin_grant(&w, &room, BOB, &bob_device);
    let mut ks = KsClient::connect(&w.keyserver_url(), &w.org.root_public(), &bob_device, BOB)
        .await
        .unwrap();
    let refused = ks
        .call(ks_request::Body::AppendRoom(AppendRoom {
            room_id: room.as_bytes().to_vec(),
            entries: vec![forged.clone()],
            wraps: vec![],
        }))
        .await;
    match refused {
        Err(CallError::Refused(ErrorCode::InvalidStatement, detail)) => {
            assert!(detail.contains("admin"), "{detail}")
        }
        other => panic!("the keyserver accepted a non-admin's entry: {other:?}"),
    }
    let bob = w.unlock(BOB).await;

    // A keyserver that serves it anyway: every member refuses it.
    let proxy = w.ks_proxy.as_ref().unwrap();
    let f = forged.clone();
    proxy.set_hook(ks_hook(move |_, mut resp| {
        if let Some(ks_response::Body::RoomLog(page)) = &mut resp.body {
            page.entries.push(f.clone());
            page.len += 1;
        }
        vec![resp]
    }));
    for c in [&alice, &bob, &carol] {
        let e = room_error(c.members(&room).await.unwrap_err());
        assert!(matches!(e, RoomError::NotAdmin { seq: 1 }), "{e:?}");
    }
    proxy.clear_hook();
    for c in [&alice, &bob, &carol] {
        let m = c.members(&room).await.unwrap();
        assert!(m.iter().all(|m| m.admin == (m.user_id == ALICE)));
    }

    // A removal, then a keyserver that drops it (rollback) for Bob.
    alice.remove_member(&room, CAROL).await.unwrap();
    assert_eq!(bob.members(&room).await.unwrap().len(), 2);
    proxy.set_hook(ks_hook(move |_, mut resp| {
        if let Some(ks_response::Body::RoomLog(page)) = &mut resp.body {
            page.entries.retain(|e| {
                ward_proto::decode_bounded::<RoomStatement>(&e.statement, 1 << 20)
                    .is_ok_and(|st| st.seq < 1)
            });
            page.len = 1;
        }
        vec![resp]
    }));
    let e = room_error(bob.members(&room).await.unwrap_err());
    assert_eq!(
        e,
        RoomError::Rollback {
            known: 2,
            served: 1
        }
    );
    proxy.clear_hook();
    // Recorded: refused after a restart too, whatever is served then.
    bob.lock().await;
    let bob = w.unlock(BOB).await;
    assert!(matches!(
        bob.members(&room).await,
        Err(ClientError::RoomCompromised { .. })
    ));
    assert!(matches!(
        bob.send_room_text(&room, "to a rolled-back room").await,
        Err(ClientError::RoomCompromised { .. })
    ));

    // A fork for Alice: another entry at the position she verified.
    let f = forged.clone();
    proxy.set_hook(ks_hook(move |_, mut resp| {
        if let Some(ks_response::Body::RoomLog(page)) = &mut resp.body
            && page.from_seq == 1
            && !page.entries.is_empty()
        {
            page.entries[0] = f.clone();
        }
        vec![resp]
    }));
    let e = room_error(alice.members(&room).await.unwrap_err());
    assert_eq!(e, RoomError::Fork { seq: 1 });
    proxy.clear_hook();
    for c in [alice, bob, carol] {
        c.lock().await;
    }
}

/// Done-when 1c: a member added later reads history as the room's policy
/// says, and not more: under `WholeHistory` the earlier message reaches
/// carol's app (the adding admin forwards it, §17.13) and her keys open it;
/// under `FromJoin` nothing earlier is forwarded, and her keys would not
/// open it. (The message right after the whole-history addition keeps the
/// epoch: it reaches carol only because the relay waits for the room log
/// length the `Send` names, §17.10.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_policy_from_join_and_whole_history() {
    let w = World::new().await;
    let mut alice = w.enroll(ALICE, ALICE).await;
    let mut ea = alice.events().unwrap();
    let bob = w.enroll(BOB, BOB).await;
    bob.lock().await; // the relay keeps his copies
    let mut carol = w.enroll(CAROL, CAROL).await;
    let mut ec = carol.events().unwrap();
    let users = ks_users(&w);
    let mut rooms = Vec::new();
    for policy in [HistoryPolicy::FromJoin, HistoryPolicy::WholeHistory] {
        let room = alice
            .create_room("Ward 4", "", "", &[BOB], policy)
            .await
            .unwrap();
        let old = alice
            .send_room_text(&room, &format!("{policy:?}: before carol"))
            .await
            .unwrap();
        sent(&mut ea, old).await;
        alice.add_members(&room, &[CAROL]).await.unwrap();
        let new = alice
            .send_room_text(&room, &format!("{policy:?}: after carol"))
            .await
            .unwrap();
        sent(&mut ea, new).await;
        // The forwarded history is queued before the next message, so it
        // arrives first.
        if policy == HistoryPolicy::WholeHistory {
            let m = next_message(&mut ec).await;
            assert_eq!(text(&m), "WholeHistory: before carol");
            assert_eq!(
                m.sender_user_id, ALICE,
                "the original sender, not the forwarder"
            );
            assert_eq!(m.resource_id, old);
        }
        assert_eq!(
            text(&next_message(&mut ec).await),
            format!("{policy:?}: after carol")
        );
        let info = carol.room(&room).await.unwrap();
        let seen: Vec<String> = carol
            .history(info.conversation_id)
            .await
            .unwrap()
            .iter()
            .map(text)
            .collect();
        let mut expected = vec![format!("{policy:?}: after carol")];
        if policy == HistoryPolicy::WholeHistory {
            expected.insert(0, "WholeHistory: before carol".into());
        }
        assert_eq!(seen, expected, "carol's history, oldest first, no bundle");
        rooms.push((policy, room, old));
    }
    // Alice's own history lists her two messages and not the bundle.
    let (_, whole, _) = &rooms[1];
    let info = alice.room(whole).await.unwrap();
    assert_eq!(alice.history(info.conversation_id).await.unwrap().len(), 2);
    carol.lock().await;
    let payloads = relay_payloads(&w);
    let ids: Vec<(HistoryPolicy, RoomId)> = rooms.iter().map(|(p, r, _)| (*p, *r)).collect();
    for (policy, room, old) in rooms {
        let l = loot(&w, CAROL, &room);
        let held: Vec<u64> = l.epoch_keys.keys().copied().collect();
        let to_carol: BTreeSet<u64> = ks_wraps(&w, &room)
            .into_iter()
            .filter(|(u, _)| u == CAROL)
            .map(|(_, w)| w.epoch)
            .collect();
        let verified = ks_room(&w, &room);
        let envelope = payloads
            .iter()
            .map(|p| ReceivedEnvelope::parse(p).unwrap())
            .find(|e| e.resource_id() == old)
            .expect("the relay holds the old message for bob");
        let key = ks_room_keys(&w)
            .into_iter()
            .find(|(_, k)| k.resource_id == old.as_bytes())
            .unwrap()
            .1;
        let opened = l.epoch_keys.get(&0).map(|ek| {
            let rk = unwrap_room_resource_key(&key, &old, ek).unwrap();
            envelope
                .open_in_room(&users[ALICE], &verified, &rk)
                .unwrap()
        });
        match policy {
            HistoryPolicy::FromJoin => {
                assert_eq!(held, vec![1]);
                assert_eq!(to_carol, [1].into());
                assert!(opened.is_none());
            }
            HistoryPolicy::WholeHistory => {
                assert_eq!(held, vec![0]);
                assert_eq!(to_carol, [0].into());
                assert_eq!(&*opened.unwrap().content, b"WholeHistory: before carol");
            }
        }
    }
    alice.lock().await;
    // Only a WholeHistory room's messages are kept as signed for a forward
    // (a FromJoin room's would never be forwarded).
    let store = Store::unlock(&w.store_path(ALICE), &pin(), None).unwrap();
    for (policy, room) in ids {
        let kept = store.room_envelopes(&room, 1 << 20).unwrap().len();
        match policy {
            HistoryPolicy::FromJoin => assert_eq!(kept, 0),
            HistoryPolicy::WholeHistory => assert_eq!(kept, 2, "both of alice's messages"),
        }
    }
}

/// The envelope the relay holds with resource id `rid`.
fn held_envelope(w: &World, rid: ResourceId) -> Vec<u8> {
    relay_payloads(w)
        .into_iter()
        .find(|p| ReceivedEnvelope::parse(p).unwrap().resource_id() == rid)
        .expect("the relay holds it for a locked member")
}

/// `envelope` with another resource id in its signed header: it parses,
/// is not a message already stored, and its signature no longer verifies.
fn with_other_resource_id(envelope: &[u8]) -> Vec<u8> {
    use ward_proto::Message as _;
    let mut env = ward_proto::v1::Envelope::decode(envelope).unwrap();
    let mut header = ward_proto::v1::EnvelopeHeader::decode(&env.header[..]).unwrap();
    header.resource_id = vec![0xee; 16];
    env.header = header.encode_to_vec();
    env.encode_to_vec()
}

/// A forwarded history (§17.13) gives nobody more than the room's policy,
/// and a forwarder can neither forge nor alter a message: a non-member's
/// bundle is refused whole; a member's bundle with an envelope whose signed
/// header was changed stores nothing of it; under `FromJoin` a forwarded
/// earlier envelope does not open for a member added later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_history_can_be_neither_forged_nor_widened() {
    const DAVE: &str = "dave@chu";
    let w = World::new().await;
    let mut alice = w.enroll(ALICE, ALICE).await;
    let mut ea = alice.events().unwrap();
    let bob = w.enroll(BOB, BOB).await;
    bob.lock().await; // the relay keeps his copies: the envelopes to forward
    let mut carol = w.enroll(CAROL, CAROL).await;
    let mut ec = carol.events().unwrap();
    let dave = w.enroll(DAVE, DAVE).await;

    // Whole history: carol gets the earlier message from alice's forward.
    let whole = alice
        .create_room("Ward 4", "", "", &[BOB], HistoryPolicy::WholeHistory)
        .await
        .unwrap();
    let old = alice.send_room_text(&whole, "whole: before").await.unwrap();
    sent(&mut ea, old).await;
    alice.add_members(&whole, &[CAROL]).await.unwrap();
    assert_eq!(text(&next_message(&mut ec).await), "whole: before");
    let genuine = held_envelope(&w, old);

    // From join: nothing is forwarded, and a forward would not open.
    let join = alice
        .create_room("Ward 5", "", "", &[BOB], HistoryPolicy::FromJoin)
        .await
        .unwrap();
    let early = alice.send_room_text(&join, "join: before").await.unwrap();
    sent(&mut ea, early).await;
    alice.add_members(&join, &[CAROL]).await.unwrap();
    let early_env = held_envelope(&w, early);

    // A non-member (dave) forwards a genuine envelope: refused whole.
    dave.forward_room_history(&whole, &[CAROL], vec![genuine.clone()])
        .await
        .unwrap();
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            match ec.recv().await.unwrap() {
                Event::Rejected { reason, .. } => return reason,
                Event::Sent { .. } | Event::RoomChanged { .. } => {}
                other => panic!("unexpected event {other:?}"),
            }
        }
    })
    .await
    .expect("dave's bundle was not refused");
    assert!(matches!(ev, ClientError::NotARoomMember), "{ev:?}");

    // A member forwards an altered envelope and a From-join one: neither
    // is stored; the next real message is the next thing carol sees.
    alice
        .forward_room_history(&whole, &[CAROL], vec![with_other_resource_id(&genuine)])
        .await
        .unwrap();
    alice
        .forward_room_history(&join, &[CAROL], vec![early_env])
        .await
        .unwrap();
    for (room, t) in [(&whole, "whole: after"), (&join, "join: after")] {
        let rid = alice.send_room_text(room, t).await.unwrap();
        sent(&mut ea, rid).await;
        assert_eq!(text(&next_message(&mut ec).await), t);
    }
    for (room, expected) in [
        (&whole, vec!["whole: before", "whole: after"]),
        (&join, vec!["join: after"]),
    ] {
        let info = carol.room(room).await.unwrap();
        let seen: Vec<String> = carol
            .history(info.conversation_id)
            .await
            .unwrap()
            .iter()
            .map(text)
            .collect();
        assert_eq!(seen, expected);
    }

    // A member's own genuine envelopes whose message keys it never stored:
    // each is refused at once (`WrappedKeyMissing`), not waited for, so a
    // forwarder cannot stall the receiver for `key_wait` per envelope (four
    // of them would outlast `WAIT` here).
    alice.lock().await;
    let device = Store::unlock(&w.store_path(ALICE), &pin(), None)
        .unwrap()
        .identity()
        .unwrap()
        .unwrap()
        .device_signing;
    let (users, verified) = (ks_users(&w), ks_room(&w, &whole));
    let keyless: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let content = format!("keyless {i}");
            ward_core::envelope::seal_to_room(
                &mut rand::rng(),
                &device,
                &users[ALICE],
                &verified,
                &ward_core::envelope::RoomSealRequest {
                    content_type: ward_core::envelope::ContentType::Text,
                    content: content.as_bytes(),
                    timestamp_ms: 1,
                },
            )
            .unwrap()
            .envelope
        })
        .collect();
    let mut alice = w.unlock(ALICE).await;
    let mut ea = alice.events().unwrap();
    alice
        .forward_room_history(&whole, &[CAROL], keyless)
        .await
        .unwrap();
    let last = alice.send_room_text(&whole, "whole: last").await.unwrap();
    sent(&mut ea, last).await;
    assert_eq!(text(&next_message(&mut ec).await), "whole: last");
    for c in [alice, carol, dave] {
        c.lock().await;
    }
}

/// "The existing n-user conversations become rooms": a conversation with
/// more than one other member is an unnamed room (one upload, one wrapped
/// key per message), found again by its members, never a named case room
/// with the same members; a 1:1 conversation stays a conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_conversation_is_a_room() {
    let w = World::new().await;
    let mut alice = w.enroll(ALICE, ALICE).await;
    let mut ea = alice.events().unwrap();
    let mut bob = w.enroll(BOB, BOB).await;
    let mut eb = bob.events().unwrap();
    let mut carol = w.enroll(CAROL, CAROL).await;
    let mut ec = carol.events().unwrap();
    let case = alice
        .create_room(
            "Bed 12",
            "case-881",
            "",
            &[BOB, CAROL],
            HistoryPolicy::FromJoin,
        )
        .await
        .unwrap();
    let conv = alice.conversation_with(&[BOB, CAROL]).await.unwrap();
    let case_conv = alice.room(&case).await.unwrap().conversation_id;
    assert_ne!(conv, case_conv, "a named case room is not picked");
    assert_eq!(alice.conversation_with(&[CAROL, BOB]).await.unwrap(), conv);
    assert_ne!(alice.conversation_with(&[BOB]).await.unwrap(), conv);
    let group = alice
        .rooms()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.conversation_id == conv)
        .expect("the group is a room");
    let mut members: Vec<(String, bool)> = group
        .members
        .iter()
        .map(|m| (m.user_id.clone(), m.admin))
        .collect();
    members.sort();
    assert_eq!(
        members,
        vec![
            (ALICE.into(), true),
            (BOB.into(), false),
            (CAROL.into(), false)
        ]
    );

    let sends = w.relay.count("sends");
    let keys = ks_room_keys(&w).len();
    let rid = alice.send_text(conv, "Rounds at 9").await.unwrap();
    sent(&mut ea, rid).await;
    assert_eq!(w.relay.count("sends"), sends + 1, "one upload");
    assert_eq!(ks_room_keys(&w).len(), keys + 1, "one wrapped key");
    for ev in [&mut eb, &mut ec] {
        let m = next_message(ev).await;
        assert_eq!(text(&m), "Rounds at 9");
        assert_eq!(m.conversation_id, conv);
    }
    // A reply goes to the same room.
    let reply = bob.conversation_with(&[ALICE, CAROL]).await.unwrap();
    assert_eq!(reply, conv);
    for c in [alice, bob, carol] {
        c.lock().await;
    }
}

/// A longer history (more messages than one `get_room_keys` asks for, 128)
/// reaches the member added under `WholeHistory` whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_reaches_the_new_member_whole() {
    const N: usize = 130;
    let w = World::new().await;
    let mut alice = w.enroll(ALICE, ALICE).await;
    let mut ea = alice.events().unwrap();
    let bob = w.enroll(BOB, BOB).await;
    bob.lock().await;
    let mut carol = w.enroll(CAROL, CAROL).await;
    let mut ec = carol.events().unwrap();
    let room = alice
        .create_room(
            "Oncology board",
            "",
            "",
            &[BOB],
            HistoryPolicy::WholeHistory,
        )
        .await
        .unwrap();
    let mut last = None;
    for i in 0..N {
        last = Some(
            alice
                .send_room_text(&room, &format!("note {i:03}"))
                .await
                .unwrap(),
        );
    }
    sent(&mut ea, last.unwrap()).await;
    // Every message is acked (kept for the forward) before the addition.
    while alice.outbox_len().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 130 sends spent alice's keyserver request budget: the addition may be
    // refused as `RateLimited`, a transient error an app retries.
    loop {
        match alice.add_members(&room, &[CAROL]).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    let mut got = Vec::with_capacity(N);
    for _ in 0..N {
        got.push(text(&next_message(&mut ec).await));
    }
    let expected: Vec<String> = (0..N).map(|i| format!("note {i:03}")).collect();
    assert_eq!(got, expected);
    for c in [alice, carol] {
        c.lock().await;
    }
}

/// The next `RoomChanged`: (room, added, removed); other events skipped.
async fn room_changed(events: &mut Receiver<Event>) -> (RoomId, Vec<String>, Vec<String>) {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("no RoomChanged in time")
            .unwrap();
        if let Event::RoomChanged {
            room_id,
            added,
            removed,
            ..
        } = ev
        {
            return (room_id, added, removed);
        }
    }
}

/// The room watcher (`room_refresh_interval`): a member learns that it was
/// added to a room, and then removed from it, without any message in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_learn_of_additions_and_removals_without_messages() {
    let w = World::new().await;
    let alice = w.enroll(ALICE, ALICE).await;
    let mut config = w.config(BOB);
    config.room_refresh_interval = Duration::from_millis(200);
    let mut bob = w.enroll_with(BOB, config).await;
    let mut eb = bob.events().unwrap();
    let _carol = w.enroll(CAROL, CAROL).await;
    let room = alice
        .create_room(
            "Night shift",
            "",
            "",
            &[BOB, CAROL],
            HistoryPolicy::FromJoin,
        )
        .await
        .unwrap();
    let (id, added, _) = room_changed(&mut eb).await;
    assert_eq!(id, room);
    assert!(added.iter().any(|u| u == BOB), "{added:?}");
    alice.remove_member(&room, BOB).await.unwrap();
    let (id, _, removed) = room_changed(&mut eb).await;
    assert_eq!(id, room);
    assert_eq!(removed, vec![BOB.to_owned()]);
    let info = bob.room(&room).await.unwrap();
    assert!(!info.is_member, "bob's view shows the removal");
    for c in [alice, bob] {
        c.lock().await;
    }
}

/// Done-when 1d: a 100-member room through the real servers, one device per
/// member: every member device receives each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_member_room_delivers_each_message_once_to_every_device() {
    const MEMBERS: usize = 100;
    let w = World::new().await;
    let mut clients: Vec<Client> = Vec::with_capacity(MEMBERS);
    let t0 = std::time::Instant::now();
    // Ten at a time: an enrolment mostly waits on the servers.
    let ids: Vec<String> = (0..MEMBERS).map(|i| format!("m{i:03}@chu")).collect();
    for chunk in ids.chunks(10) {
        let w = &w;
        clients.extend(
            futures_util::future::join_all(
                chunk.iter().map(|id| async move { w.enroll(id, id).await }),
            )
            .await,
        );
    }
    eprintln!("enrolled {MEMBERS} in {:?}", t0.elapsed());
    let mut events: Vec<Receiver<Event>> =
        clients.iter_mut().map(|c| c.events().unwrap()).collect();
    let others: Vec<String> = (1..MEMBERS).map(|i| format!("m{i:03}@chu")).collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    let room = clients[0]
        .create_room("On-call rota", "", "", &others, HistoryPolicy::FromJoin)
        .await
        .unwrap();
    eprintln!("room created at {:?}", t0.elapsed());
    let texts = ["first", "second", "third", "sentinel"];
    let sends = w.relay.count("sends");
    for t in texts {
        let rid = clients[0].send_room_text(&room, t).await.unwrap();
        sent(&mut events[0], rid).await;
    }
    // In mailbox order: three distinct messages, then the sentinel, so no
    // copy of an earlier one arrived in between.
    for ev in events.iter_mut().skip(1) {
        let mut got = Vec::new();
        for _ in 0..texts.len() {
            got.push(text(&next_message(ev).await));
        }
        assert_eq!(got, texts);
    }
    eprintln!("all delivered at {:?}", t0.elapsed());
    // One upload per message: the `Send` names the room and the relay fans
    // it out to the 99 other members (SECURITY.md §17.10).
    assert_eq!(w.relay.count("sends"), sends + texts.len() as i64);
    assert_eq!(
        ks_wraps(&w, &room).len(),
        MEMBERS,
        "one epoch-0 wrap per member"
    );
    assert_eq!(
        ks_room_keys(&w).len(),
        texts.len(),
        "one wrapped key per message"
    );
    for c in clients {
        c.lock().await;
    }
}

/// A leave, and a member's user-key rotation, each make the next sender
/// start a new epoch first: the leaver holds no key of it, and the new
/// epoch is wrapped to the rotated member's new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_or_a_key_rotation_starts_a_new_epoch_before_the_next_message() {
    let w = World::new().await;
    let mut alice = w.enroll(ALICE, ALICE).await;
    let mut bob = w.enroll(BOB, BOB).await;
    let mut carol = w.enroll(CAROL, CAROL).await;
    let (mut ea, mut eb, mut ec) = (
        alice.events().unwrap(),
        bob.events().unwrap(),
        carol.events().unwrap(),
    );
    let room = alice
        .create_room(
            "Night shift",
            "",
            "",
            &[BOB, CAROL],
            HistoryPolicy::FromJoin,
        )
        .await
        .unwrap();
    // Alice, the only admin, leaves: Bob (first by user id) becomes admin.
    alice.leave(&room).await.unwrap();
    let info = bob.room(&room).await.unwrap();
    assert!(info.rotation_pending);
    assert!(info.members.iter().any(|m| m.user_id == BOB && m.admin));
    let rid = carol
        .send_room_text(&room, "after alice left")
        .await
        .unwrap();
    sent(&mut ec, rid).await;
    assert_eq!(text(&next_message(&mut eb).await), "after alice left");
    no_message(&mut ea, Duration::from_millis(300)).await;
    let verified = ks_room(&w, &room);
    assert_eq!(verified.current_epoch(), 1);
    assert!(!verified.rotation_pending());
    assert_eq!(alice.room_epochs_held(&room).await.unwrap(), vec![0]);

    // Bob rotates his user key: Carol's next message starts epoch 2,
    // wrapped to Bob's new key, and Bob reads it.
    bob.rotate_user_key().await.unwrap();
    let rid = carol
        .send_room_text(&room, "after bob's rotation")
        .await
        .unwrap();
    sent(&mut ec, rid).await;
    assert_eq!(text(&next_message(&mut eb).await), "after bob's rotation");
    let verified = ks_room(&w, &room);
    assert_eq!(verified.current_epoch(), 2);
    let users = ks_users(&w);
    assert!(verified.stale_members(&users).is_empty());
    for c in [alice, bob, carol] {
        c.lock().await;
    }
}
