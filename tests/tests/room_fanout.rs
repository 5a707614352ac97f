//! Relay-verified room fan-out (SECURITY.md §17.10) through the real relay:
//! room logs from a keyserver link (a fake one here, to send forged and
//! forked logs; the real one in `relay_fans_out_to_the_members_it_verified`),
//! raw wire clients sending `Send { room_id }`, and SDK clients.
// Helpers outside `#[test]` functions may fail the test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use tokio::sync::mpsc::Receiver;
use ward_core::chain::VerifiedUser;
use ward_core::room::{HistoryPolicy, RoomKeyring, VerifiedRoom, create_room};
use ward_core::testkit::{Org, room_metadata};
use ward_proto::Message as _;
use ward_proto::v1::{
    Envelope, EnvelopeHeader, ErrorCode, RoomRecipient, Send, client_frame, server_frame,
};
use ward_sdk::Event;
use ward_sdk::store::Message;
use ward_tests::link::{FakeKeyserver, link_to, service_key};
use ward_tests::relay::{Client, Relay, WAIT, message_id, to};
use ward_tests::world::{World, pin};

/// An envelope whose clear header names `room` at its current epoch (or at
/// `epoch`); the relay reads nothing else of it.
fn room_payload(room: &VerifiedRoom, epoch: Option<u64>, sender: &str) -> Vec<u8> {
    let header = EnvelopeHeader {
        version: 2,
        sender_user_id: sender.into(),
        room: Some(RoomRecipient {
            room_id: room.id().as_bytes().to_vec(),
            epoch: epoch.unwrap_or(room.current_epoch()),
            epoch_key: room.current_epoch_key().unwrap().id().as_bytes().to_vec(),
        }),
        ..EnvelopeHeader::default()
    };
    Envelope {
        header: header.encode_to_vec(),
        ciphertext: vec![7; 64],
        signature: vec![0; 64],
    }
    .encode_to_vec()
}

/// A room `Send` from a sender whose verified log is `room`'s.
async fn room_send(c: &mut Client, room: &VerifiedRoom, payload: Vec<u8>) -> [u8; 16] {
    let id = message_id();
    c.frame(client_frame::Frame::Send(Send {
        message_id: id.to_vec(),
        recipients: Vec::new(),
        payload,
        blob_ids: Vec::new(),
        room_id: room.id().as_bytes().to_vec(),
        room_log_len: room.len(),
    }))
    .await;
    id
}

async fn acked(c: &mut Client, id: [u8; 16]) {
    match c.next().await {
        server_frame::Frame::SendAck(a) => assert_eq!(a.message_id, id.to_vec()),
        other => panic!("expected SendAck, got {other:?}"),
    }
}

async fn refused(c: &mut Client, id: [u8; 16]) -> ErrorCode {
    let e = c.error().await;
    assert_eq!(e.message_id, id.to_vec());
    ErrorCode::try_from(e.code).unwrap()
}

/// The relay verifies the room logs its keyserver link brings as members
/// do: a forged removal and a forked log are refused (the link stays up and
/// the next honest log is applied); the relay then queues a room message
/// once per device of every current member but the sender's, refuses a
/// non-member and a removed member (`FORBIDDEN`, nothing queued) and an
/// envelope sealed to an epoch that is no longer current (`CONFLICT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_fans_out_to_the_room_log_it_verified_and_refuses_forged_ones() {
    let rng = &mut rand::rng();
    let org = Org::new(rng);
    let fake = FakeKeyserver::start(org.root_public()).await;
    let relay = Relay::start_with(org.root_public(), |c| {
        c.keyserver_link = Some(link_to(&fake.url(), service_key()));
        // A room of three devices must not be capped by this limit.
        c.limits.max_recipients = 1;
    })
    .await;
    let mut link = fake.accept().await;
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|u| org.enroll(rng, u));
    for u in [&a, &b, &c, &d] {
        link.notice(u.chain.user_id(), u.log.clone()).await;
    }
    let users: HashMap<String, VerifiedUser> = [&a, &b, &c, &d]
        .into_iter()
        .map(|u| (u.chain.user_id().to_owned(), u.chain.clone()))
        .collect();
    let created = create_room(
        rng,
        a.room_author(),
        HistoryPolicy::FromJoin,
        &[&b.chain, &c.chain],
        &room_metadata(),
        10,
    )
    .unwrap();
    let id = *created.room.id().as_bytes();
    let mut keyring = RoomKeyring::new();
    keyring.insert(0, created.epoch_key.unwrap());
    let removal = created
        .room
        .remove_member(rng, a.room_author(), "c", &users, &keyring, 11)
        .unwrap();
    let fork = created
        .room
        .add_members(rng, a.room_author(), &[&d.chain], &users, &keyring, 11)
        .unwrap();
    link.room_notice(&id, vec![created.entry.clone()]).await;

    // Epoch 0: a's one upload reaches b and c, once each.
    let (mut ma, mut mb, mut mc) = (
        Client::of(&relay.url(), &a, "a").await,
        Client::of(&relay.url(), &b, "b").await,
        Client::of(&relay.url(), &c, "c").await,
    );
    let sends = relay.count("sends");
    let first = room_send(
        &mut ma,
        &created.room,
        room_payload(&created.room, None, "a"),
    )
    .await;
    acked(&mut ma, first).await;
    assert_eq!(relay.count("sends"), sends + 1, "one stored message");
    for m in [&mut mb, &mut mc] {
        let got = m.deliver().await;
        assert_eq!(got.message_id, first.to_vec());
        m.ack(got.seq).await;
    }

    // A room envelope with a recipient list of its own is refused: the
    // list would be the sender's, not the room's.
    let listed = message_id();
    ma.send(
        listed,
        vec![to(&d, "d")],
        room_payload(&created.room, None, "a"),
    )
    .await;
    assert_eq!(refused(&mut ma, listed).await, ErrorCode::Malformed);

    // A forged removal (a flipped signature) is refused...
    let mut forged = removal.entry.clone();
    forged.signature[0] ^= 1;
    link.room_notice(&id, vec![created.entry.clone(), forged])
        .await;
    // ... and the honest one, after it, applied: the link survived.
    link.room_notice(&id, vec![created.entry.clone(), removal.entry.clone()])
        .await;
    let after = &removal.room;
    // An envelope sealed to epoch 0 is refused once epoch 1 is current
    // (the link applies the removal in order; a retries until it has).
    let stale = loop {
        let id0 = room_send(
            &mut ma,
            &created.room,
            room_payload(&created.room, None, "a"),
        )
        .await;
        match ma.next().await {
            server_frame::Frame::SendAck(_) => {
                // Before the removal was applied: b and c take it.
                for m in [&mut mb, &mut mc] {
                    let got = m.deliver().await;
                    m.ack(got.seq).await;
                }
                continue;
            }
            server_frame::Frame::Error(e) => {
                assert_eq!(e.message_id, id0.to_vec());
                break ErrorCode::try_from(e.code).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(stale, ErrorCode::Conflict);

    // A fork of the relay's log (d added instead of c removed) and a
    // rollback (the removal dropped) are refused.
    link.room_notice(&id, vec![created.entry.clone(), fork.entry])
        .await;
    link.room_notice(&id, vec![created.entry.clone()]).await;
    // d, whom the fork adds, is no member: refused, nothing stored.
    let mut md = Client::of(&relay.url(), &d, "d").await;
    let queued = relay.count("queue");
    let sends = relay.count("sends");
    let by_d = room_send(&mut md, after, room_payload(after, None, "d")).await;
    assert_eq!(refused(&mut md, by_d).await, ErrorCode::Forbidden);
    // Nothing stored or queued for it. (The queue may shrink meanwhile: b
    // and c's acks of earlier deliveries land while the relay waits, up to
    // half its handshake timeout, for a room notice that would make d a
    // member.)
    assert_eq!(relay.count("sends"), sends);
    assert!(relay.count("queue") <= queued, "a queue entry was added");
    // c, removed, cannot send to the room.
    let sends = relay.count("sends");
    let by_c = room_send(&mut mc, after, room_payload(after, None, "c")).await;
    assert_eq!(refused(&mut mc, by_c).await, ErrorCode::Forbidden);
    assert_eq!(relay.count("sends"), sends);
    // Epoch 1 reaches b, and queues nothing for c.
    let queued_c = count_queue(&relay, "c");
    let second = room_send(&mut ma, after, room_payload(after, None, "a")).await;
    acked(&mut ma, second).await;
    assert_eq!(mb.deliver().await.message_id, second.to_vec());
    assert_eq!(
        count_queue(&relay, "c"),
        queued_c,
        "nothing for the removed c"
    );
    assert!(
        mc.next_within(std::time::Duration::from_millis(300))
            .await
            .is_none()
    );
}

/// A member added by an entry that keeps the epoch (`WHOLE_HISTORY`) and a
/// message sent right after it, before the link brought the addition to the
/// relay: the `Send` names the sender's log length, so the relay waits for
/// the addition and the new member gets the message (it used to be fanned
/// out to the relay's shorter log and skip them, silently). A link that
/// never brings it: `UNAVAILABLE`, nothing stored, and the sender retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_just_before_a_message_is_not_skipped() {
    let rng = &mut rand::rng();
    let org = Org::new(rng);
    let fake = FakeKeyserver::start(org.root_public()).await;
    let relay = Relay::start_with(org.root_public(), |c| {
        c.keyserver_link = Some(link_to(&fake.url(), service_key()));
        // Waits for the link last half of this: a short wait for the
        // refusal below.
        c.limits.net.auth_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let mut link = fake.accept().await;
    let [a, b, c] = ["a", "b", "c"].map(|u| org.enroll(rng, u));
    for u in [&a, &b, &c] {
        link.notice(u.chain.user_id(), u.log.clone()).await;
    }
    let users: HashMap<String, VerifiedUser> = [&a, &b, &c]
        .into_iter()
        .map(|u| (u.chain.user_id().to_owned(), u.chain.clone()))
        .collect();
    let created = create_room(
        rng,
        a.room_author(),
        HistoryPolicy::WholeHistory,
        &[&b.chain],
        &room_metadata(),
        10,
    )
    .unwrap();
    let id = *created.room.id().as_bytes();
    let mut keyring = RoomKeyring::new();
    keyring.insert(0, created.epoch_key.unwrap());
    let added = created
        .room
        .add_members(rng, a.room_author(), &[&c.chain], &users, &keyring, 11)
        .unwrap();
    assert_eq!(
        added.room.current_epoch(),
        created.room.current_epoch(),
        "a whole-history addition keeps the epoch: the header cannot tell"
    );
    link.room_notice(&id, vec![created.entry.clone()]).await;
    let (mut ma, mut mb, mut mc) = (
        Client::of(&relay.url(), &a, "a").await,
        Client::of(&relay.url(), &b, "b").await,
        Client::of(&relay.url(), &c, "c").await,
    );
    // The relay holds the creation only; a has seen the addition.
    let first = room_send(&mut ma, &added.room, room_payload(&added.room, None, "a")).await;
    assert!(
        ma.next_within(std::time::Duration::from_millis(200))
            .await
            .is_none(),
        "the relay waits for the log the sender sealed under"
    );
    link.room_notice(&id, vec![created.entry.clone(), added.entry.clone()])
        .await;
    acked(&mut ma, first).await;
    for m in [&mut mb, &mut mc] {
        let got = m.deliver().await;
        assert_eq!(got.message_id, first.to_vec(), "the new member included");
        m.ack(got.seq).await;
    }

    // A log the link never brings (a third entry): refused after the wait,
    // retryable, nothing stored.
    let claimed = added
        .room
        .grant_admin(a.room_author(), "b", &users, 12)
        .unwrap()
        .room;
    let sends = relay.count("sends");
    let ahead = room_send(&mut ma, &claimed, room_payload(&claimed, None, "a")).await;
    assert_eq!(refused(&mut ma, ahead).await, ErrorCode::Unavailable);
    assert_eq!(relay.count("sends"), sends);
    assert!(
        mb.next_within(std::time::Duration::from_millis(200))
            .await
            .is_none()
    );
}

fn count_queue(relay: &Relay, user: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        &relay.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT count(*) FROM queue WHERE user_id = ?1",
        [user],
        |r| r.get(0),
    )
    .unwrap()
}

fn text(m: &Message) -> String {
    String::from_utf8(m.content.to_vec()).unwrap()
}

async fn next_text(events: &mut Receiver<Event>) -> String {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("event stream closed");
        if let Event::Message(m) = ev {
            return text(&m);
        }
    }
}

/// Through the real keyserver's link and SDK clients: a room message goes
/// up once (the `Send` names the room, no recipients) and reaches every
/// member device exactly once, the sender's other device and a member's
/// device added after the room was created included; after a removal the
/// removed member's device gets no queue entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_fans_out_to_the_members_it_verified() {
    let w = World::new().await;
    let alice = w.enroll("alice@chu", "alice-phone").await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let mut carol = w.enroll("carol@chu", "carol-phone").await;
    let pending = ward_sdk::Client::pair_new_device(w.config("alice-tablet"), "alice@chu", pin())
        .await
        .unwrap();
    alice.approve_device(&pending.device_keys()).await.unwrap();
    let mut alice2 = pending.complete().await.unwrap();
    let room = alice
        .create_room(
            "Ward 4",
            "",
            "",
            &["bob@chu", "carol@chu"],
            HistoryPolicy::FromJoin,
        )
        .await
        .unwrap();
    // Bob's tablet, added after the room was created.
    let pending = ward_sdk::Client::pair_new_device(w.config("bob-tablet"), "bob@chu", pin())
        .await
        .unwrap();
    bob.approve_device(&pending.device_keys()).await.unwrap();
    let mut bob2 = pending.complete().await.unwrap();
    let mut evs: Vec<Receiver<Event>> = [&mut alice2, &mut bob, &mut bob2, &mut carol]
        .into_iter()
        .map(|c| c.events().unwrap())
        .collect();
    let sends = w.relay.count("sends");
    alice.send_room_text(&room, "one").await.unwrap();
    alice.send_room_text(&room, "sentinel").await.unwrap();
    for ev in &mut evs {
        assert_eq!(next_text(ev).await, "one");
        assert_eq!(next_text(ev).await, "sentinel", "no second copy of one");
    }
    assert_eq!(w.relay.count("sends"), sends + 2, "one upload per message");

    // Carol is removed while offline: the next message queues nothing for her.
    carol.lock().await;
    evs.pop();
    alice.remove_member(&room, "carol@chu").await.unwrap();
    let rid = alice.send_room_text(&room, "two").await.unwrap();
    for ev in &mut evs {
        assert_eq!(next_text(ev).await, "two");
    }
    let conn = rusqlite::Connection::open_with_flags(
        &w.relay.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let for_carol: i64 = conn
        .query_row(
            "SELECT count(*) FROM queue q JOIN sends s ON s.id = q.msg
             WHERE s.message_id = ?1 AND q.user_id = 'carol@chu'",
            [rid.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(for_carol, 0);
    let stored: i64 = conn
        .query_row(
            "SELECT count(*) FROM sends WHERE message_id = ?1",
            [rid.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 1);
    for c in [alice, alice2, bob, bob2] {
        c.lock().await;
    }
}
