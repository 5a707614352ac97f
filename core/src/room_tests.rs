//! Tests of the room log, epoch keys, metadata and room messages.

use super::*;
use crate::envelope::{self, ContentType, RoomSealRequest};
use crate::error::{OpenError, SealError};
use crate::keys::ResourceKey;
use crate::testkit::{Clinician, KIT_TIME, Org};
use crate::wrap::{unwrap_resource_key, unwrap_room_resource_key};

struct World {
    users: Vec<Clinician>,
}

impl World {
    fn new(names: &[&str]) -> Self {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        Self {
            users: names.iter().map(|n| org.enroll(&mut rng, n)).collect(),
        }
    }

    fn user(&self, name: &str) -> &Clinician {
        self.users
            .iter()
            .find(|c| c.chain.user_id() == name)
            .unwrap()
    }

    fn author(&self, name: &str) -> RoomAuthor<'_> {
        let c = self.user(name);
        RoomAuthor {
            device: &c.device,
            chain: &c.chain,
        }
    }

    fn chains(&self) -> BTreeMap<String, VerifiedUser> {
        self.users
            .iter()
            .map(|c| (c.chain.user_id().to_owned(), c.chain.clone()))
            .collect()
    }
}

fn meta(name: &str) -> RoomMetadata {
    RoomMetadata {
        name: name.into(),
        case_reference: "CASE-2026-0042".into(),
        topic: "tumour board, bed 12".into(),
    }
}

/// Each member's keyring, filled from the wraps addressed to it.
fn take_wraps(
    room: &VerifiedRoom,
    w: &World,
    rings: &mut BTreeMap<String, RoomKeyring>,
    wraps: &[(String, RoomKeyWrap)],
) {
    for (user, wrap) in wraps {
        let key = room
            .accept_epoch_wrap(wrap, &w.user(user).user_key)
            .unwrap();
        rings
            .entry(user.clone())
            .or_default()
            .insert(wrap.epoch, key);
    }
}

/// Re-signs `entry`'s statement, changed by `edit`, with `device`.
fn resign(
    entry: &SignedRoomStatement,
    device: &DeviceSigningKey,
    edit: impl FnOnce(&mut RoomStatement),
) -> SignedRoomStatement {
    let mut st: RoomStatement = decode_bounded(&entry.statement, MAX_ROOM_STATEMENT_BYTES).unwrap();
    edit(&mut st);
    sign_raw(&st, device)
}

fn as_author(c: &Clinician) -> impl FnOnce(&mut RoomStatement) + '_ {
    move |st| {
        st.author_user_id = c.chain.user_id().to_owned();
        st.author_device = c.device.public_key().as_bytes().to_vec();
        st.author_chain_len = c.chain.len();
    }
}

#[test]
fn a_room_lives_through_every_entry_and_verifies_the_same_everywhere() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob", "carol", "dan"]);
    let chains = w.chains();
    let mut rings = BTreeMap::new();
    let mut log = Vec::new();

    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::WholeHistory,
        &[&w.user("bob").chain, &w.user("carol").chain],
        &meta("Oncology board"),
        KIT_TIME,
    )
    .unwrap();
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    assert_eq!(c.wraps.len(), 3);
    log.push(c.entry);
    let room = c.room;
    assert!(room.is_admin("alice") && !room.is_admin("bob"));
    assert_eq!(
        room.metadata(&rings["bob"]).unwrap(),
        meta("Oncology board")
    );

    let c = room
        .grant_admin(w.author("alice"), "bob", &chains, KIT_TIME + 1)
        .unwrap();
    log.push(c.entry);
    let room = c.room;

    // WholeHistory: no new epoch, dan receives every epoch key.
    let c = room
        .add_members(
            &mut rng,
            w.author("bob"),
            &[&w.user("dan").chain],
            &chains,
            &rings["bob"],
            KIT_TIME + 2,
        )
        .unwrap();
    assert!(c.epoch_key.is_none());
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    log.push(c.entry);
    let room = c.room;
    assert_eq!(room.current_epoch(), 0);

    let c = room
        .remove_member(
            &mut rng,
            w.author("bob"),
            "carol",
            &chains,
            &rings["bob"],
            KIT_TIME + 3,
        )
        .unwrap();
    assert_eq!(
        c.wraps.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        ["alice", "bob", "dan"]
    );
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    log.push(c.entry);
    let room = c.room;
    assert_eq!(room.current_epoch(), 1);
    assert!(!room.is_member("carol"));
    assert!(room.was_member_during("carol", 0) && !room.was_member_during("carol", 1));

    let c = room
        .update_metadata(
            &mut rng,
            w.author("alice"),
            &meta("Oncology, week 2"),
            &chains,
            &rings["alice"],
            KIT_TIME + 4,
        )
        .unwrap();
    log.push(c.entry);
    let room = c.room;
    assert_eq!(
        room.metadata(&rings["dan"]).unwrap(),
        meta("Oncology, week 2")
    );

    // Alice leaves naming no successor: bob is still an admin.
    let c = room
        .leave(w.author("alice"), None, &chains, KIT_TIME + 5)
        .unwrap();
    log.push(c.entry);
    let room = c.room;
    assert!(room.rotation_pending());
    let c = room
        .rotate(
            &mut rng,
            w.author("dan"),
            &chains,
            &rings["dan"],
            KIT_TIME + 6,
        )
        .unwrap();
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    log.push(c.entry);
    let room = c.room;
    assert!(!room.rotation_pending());
    assert_eq!(room.current_epoch(), 2);
    assert_eq!(
        room.metadata(&rings["bob"]).unwrap(),
        meta("Oncology, week 2")
    );

    // Anyone holding the member logs verifies the same state from scratch.
    let fresh = verify_room_log(Some(room.id()), &log, &chains).unwrap();
    assert_eq!(fresh, room);
    // A holder of a prefix updates to it, and gets exactly the new suffix.
    let early = verify_room_log(None, &log[..2], &chains).unwrap();
    let (updated, suffix) = early.update_suffix(&log, &chains).unwrap();
    assert_eq!(updated, room);
    assert_eq!(suffix, &log[2..]);
}

#[test]
fn a_removed_member_holding_every_key_cannot_open_the_next_epoch() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob", "carol"]);
    let chains = w.chains();
    let mut rings = BTreeMap::new();
    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::WholeHistory,
        &[&w.user("bob").chain, &w.user("carol").chain],
        &meta("Ward 3 nights"),
        KIT_TIME,
    )
    .unwrap();
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    let c = c
        .room
        .remove_member(
            &mut rng,
            w.author("alice"),
            "carol",
            &chains,
            &rings["alice"],
            KIT_TIME + 1,
        )
        .unwrap();
    // Everything the servers hold for epoch 1: every wrap and the message.
    let all_wraps = c.wraps.clone();
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    let room = c.room;
    let alice = w.user("alice");
    let sealed = envelope::seal_to_room(
        &mut rng,
        &alice.device,
        &alice.chain,
        &room,
        &RoomSealRequest {
            content_type: ContentType::Text,
            content: b"K+ 6.1 after the removal",
            timestamp_ms: KIT_TIME * 1000,
        },
    )
    .unwrap();
    assert_eq!(sealed.epoch, 1);

    let carol = w.user("carol");
    let carol_ring = &rings["carol"];
    assert_eq!(carol_ring.epochs().collect::<Vec<_>>(), [0]);
    // No epoch-1 wrap opens for carol, even readdressed to her key.
    for (_, wrap) in &all_wraps {
        assert_eq!(
            room.accept_epoch_wrap(wrap, &carol.user_key).err(),
            Some(RoomError::Wrap(WrapError::WrongRecipient))
        );
        let mut readdressed = wrap.clone();
        readdressed.recipient_key = carol.user_key.public_key().id().as_bytes().to_vec();
        assert_eq!(
            room.accept_epoch_wrap(&readdressed, &carol.user_key).err(),
            Some(RoomError::Wrap(WrapError::Undecryptable))
        );
    }
    // Her epoch-0 key and her user key do not open the message's key.
    let old = carol_ring.get(0).unwrap();
    assert_eq!(
        unwrap_room_resource_key(&sealed.wrapped_key, &sealed.resource_id, old).err(),
        Some(WrapError::WrongRecipient)
    );
    let mut forced = sealed.wrapped_key.clone();
    forced.recipient_key = old.public_key().id().as_bytes().to_vec();
    assert_eq!(
        unwrap_room_resource_key(&forced, &sealed.resource_id, old).err(),
        Some(WrapError::Undecryptable)
    );
    forced.recipient_key = carol.user_key.public_key().id().as_bytes().to_vec();
    assert_eq!(
        unwrap_resource_key(&forced, &sealed.resource_id, &carol.user_key).err(),
        Some(WrapError::Undecryptable)
    );
    // Bob, who stayed, reads it.
    let received = envelope::ReceivedEnvelope::parse(&sealed.envelope).unwrap();
    let key = unwrap_room_resource_key(
        &sealed.wrapped_key,
        &received.resource_id(),
        rings["bob"].get(1).unwrap(),
    )
    .unwrap();
    let opened = received.open_in_room(&alice.chain, &room, &key).unwrap();
    assert_eq!(&opened.content[..], b"K+ 6.1 after the removal");
    assert_eq!(opened.room.map(|r| r.epoch), Some(1));
    // The one-to-one path refuses a room message.
    assert_eq!(
        received.open(&alice.chain, "bob", &key).err(),
        Some(OpenError::NotARecipient)
    );
}

#[test]
fn only_admins_add_and_removed_members_sign_nothing() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob", "carol", "eve"]);
    let chains = w.chains();
    let mut rings = BTreeMap::new();
    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::WholeHistory,
        &[&w.user("bob").chain, &w.user("carol").chain],
        &meta("ICU"),
        KIT_TIME,
    )
    .unwrap();
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    let room = c.room;
    // The producer refuses a non-admin's addition...
    assert_eq!(
        room.add_members(
            &mut rng,
            w.author("bob"),
            &[&w.user("eve").chain],
            &chains,
            &rings["bob"],
            KIT_TIME
        )
        .err(),
        Some(RoomError::NotAdmin { seq: 1 })
    );
    // ...and so does every verifier, given one signed anyway.
    let by_alice = room
        .add_members(
            &mut rng,
            w.author("alice"),
            &[&w.user("eve").chain],
            &chains,
            &rings["alice"],
            KIT_TIME,
        )
        .unwrap();
    let bob = w.user("bob");
    let forged = resign(&by_alice.entry, &bob.device, as_author(bob));
    assert_eq!(
        room.clone().apply(&forged, &chains),
        Err(RoomError::NotAdmin { seq: 1 })
    );
    // A non-member's entry, validly signed by its own device.
    let eve = w.user("eve");
    let by_eve = resign(&by_alice.entry, &eve.device, as_author(eve));
    assert_eq!(
        room.clone().apply(&by_eve, &chains),
        Err(RoomError::NotAMember { seq: 1 })
    );
    // Signed by a device that is not the author's (bob's, claimed for alice).
    let wrong_device = resign(&by_alice.entry, &bob.device, |st| {
        st.author_device = bob.device.public_key().as_bytes().to_vec();
    });
    assert_eq!(
        room.clone().apply(&wrong_device, &chains),
        Err(RoomError::UnauthorizedDevice { seq: 1 })
    );
    // A removed member's rotation.
    let removed = room
        .remove_member(
            &mut rng,
            w.author("alice"),
            "carol",
            &chains,
            &rings["alice"],
            KIT_TIME + 1,
        )
        .unwrap();
    let next = removed.room;
    let rot = next.rotate(
        &mut rng,
        w.author("alice"),
        &chains,
        &rings["alice"],
        KIT_TIME + 2,
    );
    // alice lacks the epoch-1 key in this ring (not taken): metadata needs it.
    assert_eq!(rot.err(), Some(RoomError::MissingEpochKey(1)));
    take_wraps(&next, &w, &mut rings, &removed.wraps);
    let rot = next
        .rotate(
            &mut rng,
            w.author("alice"),
            &chains,
            &rings["alice"],
            KIT_TIME + 2,
        )
        .unwrap();
    let carol = w.user("carol");
    let by_carol = resign(&rot.entry, &carol.device, as_author(carol));
    assert_eq!(
        next.clone().apply(&by_carol, &chains),
        Err(RoomError::NotAMember { seq: 2 })
    );
    // A forged signature.
    let mut bad = rot.entry.clone();
    bad.signature[0] ^= 1;
    assert_eq!(
        next.clone().apply(&bad, &chains),
        Err(RoomError::BadSignature { seq: 2 })
    );
}

#[test]
fn rollback_and_fork_are_detected() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob", "carol"]);
    let chains = w.chains();
    let mut rings = BTreeMap::new();
    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::FromJoin,
        &[&w.user("bob").chain, &w.user("carol").chain],
        &meta("A"),
        KIT_TIME,
    )
    .unwrap();
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    let mut log = vec![c.entry.clone()];
    let removal = c
        .room
        .remove_member(
            &mut rng,
            w.author("alice"),
            "carol",
            &chains,
            &rings["alice"],
            KIT_TIME + 1,
        )
        .unwrap();
    log.push(removal.entry.clone());
    let known = removal.room;
    // A keyserver drops the removal: carol would still get epoch 0 messages.
    assert_eq!(
        known.update(&log[..1], &chains),
        Err(RoomError::Rollback {
            known: 2,
            served: 1
        })
    );
    // Another member is shown a log where the removal is a grant instead.
    let other = c
        .room
        .grant_admin(w.author("alice"), "carol", &chains, KIT_TIME + 1)
        .unwrap();
    assert_eq!(
        known.update(&[c.entry.clone(), other.entry.clone()], &chains),
        Err(RoomError::Fork { seq: 1 })
    );
    // The fork extended beyond the known head is still a fork.
    let more = other
        .room
        .grant_admin(w.author("alice"), "bob", &chains, KIT_TIME + 2)
        .unwrap();
    assert_eq!(
        known.update(&[c.entry.clone(), other.entry, more.entry], &chains),
        Err(RoomError::Fork { seq: 1 })
    );
    // Zeroed signatures on the known prefix are a fork, not a replacement.
    let mut zeroed = log.clone();
    zeroed[0].signature = vec![0; 64];
    assert_eq!(
        known.update(&zeroed, &chains),
        Err(RoomError::Fork { seq: 1 })
    );
    assert_eq!(known.update(&log, &chains), Ok(known.clone()));
}

#[test]
fn from_join_members_get_only_the_epoch_their_addition_starts() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob", "dan"]);
    let chains = w.chains();
    let mut rings = BTreeMap::new();
    let c0 = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::FromJoin,
        &[&w.user("bob").chain],
        &meta("Rota"),
        KIT_TIME,
    )
    .unwrap();
    take_wraps(&c0.room, &w, &mut rings, &c0.wraps);
    let c = c0
        .room
        .add_members(
            &mut rng,
            w.author("alice"),
            &[&w.user("dan").chain],
            &chains,
            &rings["alice"],
            KIT_TIME + 1,
        )
        .unwrap();
    assert!(c.wraps.iter().all(|(_, wr)| wr.epoch == 1));
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    let room = c.room;
    assert_eq!(rings["dan"].epochs().collect::<Vec<_>>(), [1]);
    assert!(!room.was_member_during("dan", 0));
    assert_eq!(room.metadata(&rings["dan"]).unwrap(), meta("Rota"));
    for (_, wr) in &c0.wraps {
        assert!(room.accept_epoch_wrap(wr, &w.user("dan").user_key).is_err());
    }
    // An addition without a new epoch is refused under FromJoin.
    let alice = w.user("alice");
    let no_epoch = resign(&c.entry, &alice.device, |st| {
        if let Some(Body::Add(a)) = &mut st.body {
            a.epoch = None;
        }
    });
    assert_eq!(
        c0.room.clone().apply(&no_epoch, &chains),
        Err(RoomError::InvalidTransition {
            seq: 1,
            reason: reason::EPOCH_REQUIRED
        })
    );
    // An epoch whose members leave out the new one.
    let short = resign(&c.entry, &alice.device, |st| {
        if let Some(Body::Add(RoomAdd { epoch: Some(e), .. })) = &mut st.body {
            e.members.retain(|m| m.user_id != "dan");
        }
    });
    assert_eq!(
        c0.room.clone().apply(&short, &chains),
        Err(RoomError::InvalidTransition {
            seq: 1,
            reason: reason::EPOCH_MEMBERS_DIFFER
        })
    );
}

#[test]
fn the_last_admin_cannot_leave_or_step_down_without_a_successor() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob"]);
    let chains = w.chains();
    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::FromJoin,
        &[&w.user("bob").chain],
        &meta("B"),
        KIT_TIME,
    )
    .unwrap();
    let room = c.room;
    assert_eq!(
        room.leave(w.author("alice"), None, &chains, KIT_TIME).err(),
        Some(RoomError::LastAdmin { seq: 1 })
    );
    assert_eq!(
        room.revoke_admin(w.author("alice"), "alice", &chains, KIT_TIME)
            .err(),
        Some(RoomError::LastAdmin { seq: 1 })
    );
    assert_eq!(
        room.leave(w.author("bob"), Some("alice"), &chains, KIT_TIME)
            .err(),
        Some(RoomError::NotAdmin { seq: 1 })
    );
    let left = room
        .leave(w.author("alice"), Some("bob"), &chains, KIT_TIME)
        .unwrap()
        .room;
    assert!(left.is_admin("bob") && !left.is_member("alice"));
    // Nobody seals to the epoch key the leaver holds.
    let bob = w.user("bob");
    let req = RoomSealRequest {
        content_type: ContentType::Text,
        content: b"x",
        timestamp_ms: 0,
    };
    assert_eq!(
        envelope::seal_to_room(&mut rng, &bob.device, &bob.chain, &left, &req).err(),
        Some(SealError::RoomRotationPending)
    );
    let alice = w.user("alice");
    assert_eq!(
        envelope::seal_to_room(&mut rng, &alice.device, &alice.chain, &left, &req).err(),
        Some(SealError::NotARoomMember)
    );
    // S1 as on the user path: an attachment whose descriptor receivers
    // would refuse (R10) is not sealed, before the membership checks.
    let bad = RoomSealRequest {
        content_type: ContentType::Attachment,
        content: b"not a descriptor",
        timestamp_ms: 0,
    };
    assert_eq!(
        envelope::seal_to_room(&mut rng, &bob.device, &bob.chain, &left, &bad).err(),
        Some(SealError::InvalidAttachment)
    );
}

#[test]
fn epoch_wraps_are_checked_against_the_log() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob"]);
    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::FromJoin,
        &[&w.user("bob").chain],
        &meta("C"),
        KIT_TIME,
    )
    .unwrap();
    let room = c.room;
    let bob = w.user("bob");
    let (_, good) = c.wraps.iter().find(|(u, _)| u == "bob").unwrap();
    assert!(room.accept_epoch_wrap(good, &bob.user_key).is_ok());
    // A keyserver plants an epoch key of its own, with every id right.
    let planted = RoomEpochKey::generate(&mut rng);
    let mut forged =
        wrap_epoch_key(&mut rng, room.id(), 0, &planted, &bob.user_key.public_key()).unwrap();
    forged.epoch_key = good.epoch_key.clone();
    assert_eq!(
        room.accept_epoch_wrap(&forged, &bob.user_key).err(),
        Some(RoomError::Wrap(WrapError::Undecryptable))
    );
    // EK7: sealed with the committed ids in the aad, so it opens, but the
    // seed inside is not the committed key's.
    let aad = epoch_wrap_aad(
        room.id(),
        0,
        &room.epochs()[0].public_key.id(),
        &bob.user_key.public_key().id(),
    );
    let (enc, ciphertext) = wrap::seal_to(
        &mut rng,
        &bob.user_key.public_key(),
        ROOM_EPOCH_WRAP_INFO,
        &aad,
        &planted.export_secret(),
    )
    .unwrap();
    assert!(
        wrap::open_from(
            bob.user_key.secret(),
            &enc,
            &ciphertext,
            ROOM_EPOCH_WRAP_INFO,
            &aad
        )
        .is_ok()
    );
    let opens_but_wrong = RoomKeyWrap {
        enc,
        ciphertext,
        ..good.clone()
    };
    assert_eq!(
        room.accept_epoch_wrap(&opens_but_wrong, &bob.user_key)
            .err(),
        Some(RoomError::Wrap(WrapError::Undecryptable))
    );
    // ...or names it honestly: not the key the log commits to.
    let honest =
        wrap_epoch_key(&mut rng, room.id(), 0, &planted, &bob.user_key.public_key()).unwrap();
    assert_eq!(
        room.accept_epoch_wrap(&honest, &bob.user_key).err(),
        Some(RoomError::EpochKeyMismatch)
    );
    let mut later = good.clone();
    later.epoch = 1;
    assert_eq!(
        room.accept_epoch_wrap(&later, &bob.user_key).err(),
        Some(RoomError::EpochKeyMismatch)
    );
    let mut other_room = good.clone();
    other_room.room_id = vec![9; 32];
    assert_eq!(
        room.accept_epoch_wrap(&other_room, &bob.user_key).err(),
        Some(RoomError::Wrap(WrapError::WrongResource))
    );
    // An entry committing to an epoch key equal to an earlier one.
    let alice = w.user("alice");
    let chains = w.chains();
    let mut ring = RoomKeyring::new();
    ring.insert(0, c.epoch_key.unwrap());
    let rot = room
        .rotate(&mut rng, w.author("alice"), &chains, &ring, KIT_TIME)
        .unwrap();
    let reused = resign(&rot.entry, &alice.device, |st| {
        if let Some(Body::Rotation(RoomRotation { epoch: Some(e) })) = &mut st.body {
            e.public_key = room.epochs()[0].public_key.as_bytes().to_vec();
        }
    });
    assert_eq!(
        room.clone().apply(&reused, &chains),
        Err(RoomError::InvalidTransition {
            seq: 1,
            reason: reason::EPOCH_KEY_REUSED
        })
    );
}

#[test]
fn a_user_key_rotation_makes_the_room_stale_and_old_entries_stay_valid() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let mut bob = org.enroll(&mut rng, "bob");
    let c = create_room(
        &mut rng,
        RoomAuthor {
            device: &bob.device,
            chain: &bob.chain,
        },
        HistoryPolicy::FromJoin,
        &[&alice.chain],
        &meta("D"),
        KIT_TIME,
    )
    .unwrap();
    let log = vec![c.entry.clone()];
    // Bob adds a device, then revokes the first one (rotating his key).
    let second = DeviceSigningKey::generate(&mut rng);
    let second_enc = crate::keys::DeviceEncryptionKey::generate(&mut rng).public_key();
    let add = bob
        .chain
        .add_device(&bob.device, &second, &second_enc, KIT_TIME + 1);
    bob.chain.apply(&org.root_public(), &add).unwrap();
    let new_key = UserEncryptionKey::generate(&mut rng);
    let rev = bob.chain.revoke_device(
        &second,
        &bob.device.public_key(),
        &new_key.public_key(),
        KIT_TIME + 2,
    );
    bob.chain.apply(&org.root_public(), &rev).unwrap();
    let chains: BTreeMap<String, VerifiedUser> = [alice.chain.clone(), bob.chain.clone()]
        .into_iter()
        .map(|c| (c.user_id().to_owned(), c))
        .collect();
    // The creation, signed by the now revoked device at length 1, verifies.
    let room = verify_room_log(None, &log, &chains).unwrap();
    assert_eq!(room.stale_members(&chains), ["bob"]);
    // The revoked device cannot sign anew at the current length.
    let mut ring = RoomKeyring::new();
    ring.insert(0, c.epoch_key.unwrap());
    let rot = room
        .rotate(
            &mut rng,
            RoomAuthor {
                device: &second,
                chain: &bob.chain,
            },
            &chains,
            &ring,
            KIT_TIME + 3,
        )
        .unwrap();
    assert!(rot.room.stale_members(&chains).is_empty());
    let stolen = resign(&rot.entry, &bob.device, |st| {
        st.author_device = bob.device.public_key().as_bytes().to_vec();
    });
    assert_eq!(
        room.clone().apply(&stolen, &chains),
        Err(RoomError::UnauthorizedDevice { seq: 1 })
    );
    // ...nor cite an older length than bob's last entry did.
    let next = rot.room;
    let ring2 = {
        let mut r = RoomKeyring::new();
        r.insert(1, rot.epoch_key.unwrap());
        r
    };
    let rot2 = next
        .rotate(
            &mut rng,
            RoomAuthor {
                device: &second,
                chain: &bob.chain,
            },
            &chains,
            &ring2,
            KIT_TIME + 4,
        )
        .unwrap();
    let backwards = resign(&rot2.entry, &bob.device, |st| {
        st.author_device = bob.device.public_key().as_bytes().to_vec();
        st.author_chain_len = 1;
    });
    assert_eq!(
        next.clone().apply(&backwards, &chains),
        Err(RoomError::AuthorChainRolledBack { seq: 2 })
    );
    // A verifier holding an older log of bob must refresh it first.
    let old: BTreeMap<String, VerifiedUser> =
        [alice.chain.clone(), verify_log_prefix(&org, &bob, 1)]
            .into_iter()
            .map(|c| (c.user_id().to_owned(), c))
            .collect();
    assert_eq!(
        room.clone().apply(&rot.entry, &old),
        Err(RoomError::AuthorChainBehind { seq: 1 })
    );
}

fn verify_log_prefix(org: &Org, c: &Clinician, len: usize) -> VerifiedUser {
    crate::chain::verify_log(&org.root_public(), c.chain.user_id(), &c.log[..len]).unwrap()
}

#[test]
fn room_messages_check_the_epoch_and_the_sender() {
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob", "carol"]);
    let chains = w.chains();
    let mut rings = BTreeMap::new();
    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::WholeHistory,
        &[&w.user("bob").chain, &w.user("carol").chain],
        &meta("E"),
        KIT_TIME,
    )
    .unwrap();
    take_wraps(&c.room, &w, &mut rings, &c.wraps);
    let epoch0 = c.room.clone();
    let carol = w.user("carol");
    let req = RoomSealRequest {
        content_type: ContentType::Text,
        content: b"before",
        timestamp_ms: 1,
    };
    let old = envelope::seal_to_room(&mut rng, &carol.device, &carol.chain, &epoch0, &req).unwrap();
    let removed = epoch0
        .remove_member(
            &mut rng,
            w.author("alice"),
            "carol",
            &chains,
            &rings["alice"],
            KIT_TIME + 1,
        )
        .unwrap()
        .room;
    // Carol's message from epoch 0 still opens after her removal: history.
    let received = envelope::ReceivedEnvelope::parse(&old.envelope).unwrap();
    let key = unwrap_room_resource_key(
        &old.wrapped_key,
        &old.resource_id,
        rings["bob"].get(0).unwrap(),
    )
    .unwrap();
    assert!(received.open_in_room(&carol.chain, &removed, &key).is_ok());
    // A message naming an epoch the reader's log does not have.
    let ahead = envelope::seal_to_room(
        &mut rng,
        &w.user("alice").device,
        &w.user("alice").chain,
        &removed,
        &req,
    )
    .unwrap();
    let r = envelope::ReceivedEnvelope::parse(&ahead.envelope).unwrap();
    assert_eq!(
        r.verify_in_room(&w.user("alice").chain, &epoch0),
        Err(OpenError::UnknownEpoch)
    );
    assert!(r.verify_in_room(&w.user("alice").chain, &removed).is_ok());
    // Another room.
    let other = create_room(
        &mut rng,
        w.author("bob"),
        HistoryPolicy::FromJoin,
        &[],
        &meta("F"),
        KIT_TIME,
    )
    .unwrap()
    .room;
    assert_eq!(
        r.verify_in_room(&w.user("alice").chain, &other),
        Err(OpenError::NotARecipient)
    );
    // Wrong content key: the commitment refuses it before decrypting.
    let wrong = ResourceKey::generate(&mut rng);
    assert_eq!(
        received.open_in_room(&carol.chain, &removed, &wrong).err(),
        Some(OpenError::KeyCommitmentMismatch)
    );
}

#[test]
fn metadata_is_sealed_padded_and_bound_to_room_and_epoch() {
    let mut rng = rand::rng();
    let key = RoomEpochKey::generate(&mut rng);
    let room = RoomId::random(&mut rng);
    let sealed = seal_metadata(&mut rng, &room, 3, &key, &meta("short")).unwrap();
    let long = seal_metadata(
        &mut rng,
        &room,
        3,
        &key,
        &meta("a somewhat longer room name"),
    )
    .unwrap();
    assert_eq!(sealed.ciphertext.len(), long.ciphertext.len());
    let as_state = |s: &SealedRoomMetadata| parse_metadata(&Some(s.clone())).unwrap();
    assert_eq!(
        open_metadata(&room, 3, &key, &as_state(&sealed)).unwrap(),
        meta("short")
    );
    assert!(open_metadata(&room, 4, &key, &as_state(&sealed)).is_err());
    assert!(open_metadata(&RoomId([1; 32]), 3, &key, &as_state(&sealed)).is_err());
    let max = RoomMetadata {
        name: "n".repeat(MAX_ROOM_NAME_BYTES),
        case_reference: "c".repeat(MAX_CASE_REFERENCE_BYTES),
        topic: "t".repeat(MAX_TOPIC_BYTES),
    };
    let big = seal_metadata(&mut rng, &room, 0, &key, &max).unwrap();
    assert!(big.ciphertext.len() <= MAX_METADATA_CIPHERTEXT_BYTES);
    let mut over = max.clone();
    over.name.push('x');
    assert!(seal_metadata(&mut rng, &room, 0, &key, &over).is_err());
    assert!(!format!("{max:?}").contains("nnn"));
}

#[test]
fn a_room_header_names_a_room_and_no_users() {
    use ward_proto::v1::{Envelope, EnvelopeHeader};
    let mut rng = rand::rng();
    let w = World::new(&["alice", "bob"]);
    let c = create_room(
        &mut rng,
        w.author("alice"),
        HistoryPolicy::FromJoin,
        &[&w.user("bob").chain],
        &meta("G"),
        KIT_TIME,
    )
    .unwrap();
    let alice = w.user("alice");
    let req = RoomSealRequest {
        content_type: ContentType::File,
        content: &[1, 2, 3],
        timestamp_ms: 5,
    };
    let sealed =
        envelope::seal_to_room(&mut rng, &alice.device, &alice.chain, &c.room, &req).unwrap();
    let parsed = envelope::ReceivedEnvelope::parse(&sealed.envelope).unwrap();
    assert!(parsed.recipients().is_empty());
    let addr = parsed.room().unwrap();
    assert_eq!(addr.room_id, *c.room.id());
    assert_eq!(addr.epoch_key, c.room.epochs()[0].public_key.id());
    assert_eq!(sealed.wrapped_key.recipient_key, addr.epoch_key.as_bytes());
    let reparse = |edit: &dyn Fn(&mut EnvelopeHeader)| {
        let mut env: Envelope = decode_bounded(&sealed.envelope, 1 << 20).unwrap();
        let mut h: EnvelopeHeader = decode_bounded(&env.header, 1 << 16).unwrap();
        edit(&mut h);
        env.header = h.encode_to_vec();
        envelope::ReceivedEnvelope::parse(&env.encode_to_vec()).err()
    };
    assert_eq!(
        reparse(&|h| h.recipient_user_ids = vec!["bob".into()]),
        Some(OpenError::Malformed("recipients"))
    );
    assert_eq!(
        reparse(&|h| h.room.as_mut().unwrap().room_id.pop().map(|_| ()).unwrap()),
        Some(OpenError::Malformed("room"))
    );
    assert_eq!(
        reparse(&|h| h.room.as_mut().unwrap().epoch_key.clear()),
        Some(OpenError::Malformed("room"))
    );
    assert_eq!(
        reparse(&|h| h.room = None),
        Some(OpenError::Malformed("recipients"))
    );
}
