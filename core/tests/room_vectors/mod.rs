//! `vectors/ward-v2-room.json` (SECURITY.md §17): its generator and its
//! replay, a child module of `vectors.rs` sharing its deterministic inputs,
//! `ScriptRng` and JSON writer.
//!
//! Draw orders (ScriptRng enforces them): `room::create_room` 32 (room id),
//! then any new epoch 32 (seed), 24 (metadata nonce), 64 (`eseed`) per member
//! in ascending user id; a WholeHistory addition 64 per (new member, epoch);
//! `update_metadata` 24; `seal_to_room` 32, 16, 24, 64.

use std::collections::BTreeMap;

use ward_core::RoomError;
use ward_core::envelope::RoomSealRequest;
use ward_core::keys::RoomEpochKey;
use ward_core::proto::v1::{
    RoomKeyWrap, RoomLeave, RoomStatement, SignedRoomStatement, room_statement::Body as RBody,
};
use ward_core::room::{
    self, HistoryPolicy, RoomAuthor, RoomChange, RoomKeyring, RoomMetadata, VerifiedRoom,
};

use super::*;

const DAN: &str = "dan@chu-example";
const ZED: &str = "zed@chu-example";
const RT: u64 = T0 + 1000;

fn carol_details() -> InviteDetails {
    details(CAROL, "Carol Petit", "pharmacist", "30301234567")
}

fn dan_details() -> InviteDetails {
    details(DAN, "Dr Dan Moreau", "physician", "10107654321")
}

/// A one-device user: `name` keys its labels.
fn simple_log(d: &InviteDetails, name: &str, user_label: &str) -> Vec<SignedStatement> {
    let root = root();
    let (invite, delegation) = make_invite(&root, d, &format!("ward vector {name} delegation"));
    let e0 = chain::create_user(
        &root.public_key(),
        &invite,
        &delegation,
        &ukey(user_label).public_key(),
        &dev(&format!("ward vector {name} device signing")).public_key(),
        &denc(&format!("ward vector {name} device encryption")).public_key(),
        T0 + 40,
    )
    .unwrap();
    vec![e0]
}

const L_DAN_USER: &str = "ward vector dan user key";

struct People {
    logs: Vec<(&'static str, Vec<SignedStatement>)>,
    chains: BTreeMap<String, VerifiedUser>,
}

fn people() -> People {
    let root = root().public_key();
    let logs = vec![
        (ALICE, alice_log().entries),
        (BOB, bob_log().0),
        (CAROL, simple_log(&carol_details(), "carol", L_CAROL_USER)),
        (DAN, simple_log(&dan_details(), "dan", L_DAN_USER)),
    ];
    let chains = logs
        .iter()
        .map(|(u, l)| ((*u).to_owned(), chain::verify_log(&root, u, l).unwrap()))
        .collect();
    People { logs, chains }
}

/// Each member's signing device and user key now (alice: device 2, key 2).
fn device_of(user: &str) -> DeviceSigningKey {
    match user {
        ALICE => dev(L_ALICE_DEV2_SIG),
        BOB => dev(L_BOB_DEV_SIG),
        CAROL => dev("ward vector carol device signing"),
        DAN => dev("ward vector dan device signing"),
        _ => dev(L_STRANGER),
    }
}

fn user_key_label(user: &str) -> &'static str {
    match user {
        ALICE => L_ALICE_USER_2,
        BOB => L_BOB_USER,
        CAROL => L_CAROL_USER,
        _ => L_DAN_USER,
    }
}

fn metadata(name: &str) -> RoomMetadata {
    RoomMetadata {
        name: name.into(),
        case_reference: "CASE-2026-0042".into(),
        topic: "Mme R., 71, suspected AML: staging and first cycle".into(),
    }
}

/// One scripted draw: its label and bytes.
struct Draw {
    label: String,
    bytes: Vec<u8>,
}

fn d32(label: String) -> Draw {
    let bytes = seed(&label).to_vec();
    Draw { label, bytes }
}

fn d_short(label: String, n: usize) -> Draw {
    let bytes = short(&label, n);
    Draw { label, bytes }
}

fn d64(label: String) -> Draw {
    let bytes = stream(&label, 64);
    Draw { label, bytes }
}

fn epoch_draws(e: u64, members: &[&str]) -> Vec<Draw> {
    let mut d = vec![
        d32(format!("ward vector room epoch {e} seed")),
        d_short(format!("ward vector room epoch {e} metadata nonce"), 24),
    ];
    for m in members {
        d.push(d64(format!("ward vector room epoch {e} wrap {m}")));
    }
    d
}

fn run<T>(draws: &[Draw], f: impl FnOnce(&mut ScriptRng) -> T) -> T {
    let bytes: Vec<&[u8]> = draws.iter().map(|d| d.bytes.as_slice()).collect();
    let mut rng = ScriptRng::new(&bytes);
    let out = f(&mut rng);
    rng.done();
    out
}

fn draws_json(draws: &[Draw]) -> J {
    J::A(
        draws
            .iter()
            .map(|d| o(vec![("label", s(&d.label)), ("bytes", h(&d.bytes))]))
            .collect(),
    )
}

fn entry_json(e: &SignedRoomStatement) -> J {
    o(vec![
        ("statement", h(&e.statement)),
        ("signature", h(&e.signature)),
    ])
}

fn wrap_json(user: &str, w: &RoomKeyWrap, eseed_label: &str) -> J {
    o(vec![
        ("user_id", s(user)),
        ("eseed_label", s(eseed_label)),
        ("eseed", h(stream(eseed_label, 64))),
        ("room_id", h(&w.room_id)),
        ("epoch", J::N(w.epoch)),
        ("epoch_key", h(&w.epoch_key)),
        ("recipient_key", h(&w.recipient_key)),
        ("enc", h(&w.enc)),
        ("ciphertext", h(&w.ciphertext)),
        ("encoded", h(w.encode_to_vec())),
    ])
}

fn author<'a>(p: &'a People, user: &str, device: &'a DeviceSigningKey) -> RoomAuthor<'a> {
    RoomAuthor {
        device,
        chain: &p.chains[user],
    }
}

/// The log, built by the producers: entries, the states after each, every
/// change (for its wraps), and every draw.
struct RoomStory {
    entries: Vec<SignedRoomStatement>,
    states: Vec<VerifiedRoom>,
    changes: Vec<(String, Vec<Draw>, RoomChange)>,
    rings: BTreeMap<String, RoomKeyring>,
}

fn story(p: &People) -> RoomStory {
    let mut rings: BTreeMap<String, RoomKeyring> = BTreeMap::new();
    let mut changes: Vec<(String, Vec<Draw>, RoomChange)> = Vec::new();
    let take = |c: &RoomChange, rings: &mut BTreeMap<String, RoomKeyring>| {
        for (u, w) in &c.wraps {
            let k = c
                .room
                .accept_epoch_wrap(w, &ukey(user_key_label(u)))
                .unwrap();
            rings.entry(u.clone()).or_default().insert(w.epoch, k);
        }
    };
    let (a, b, d) = (device_of(ALICE), device_of(BOB), device_of(DAN));

    // 0: alice creates a WholeHistory room with bob and carol.
    let mut draws = vec![d32("ward vector room id".into())];
    draws.extend(epoch_draws(0, &[ALICE, BOB, CAROL]));
    let c = run(&draws, |rng| {
        room::create_room(
            rng,
            author(p, ALICE, &a),
            HistoryPolicy::WholeHistory,
            &[&p.chains[BOB], &p.chains[CAROL]],
            &metadata("Tumour board, haematology"),
            RT,
        )
        .unwrap()
    });
    take(&c, &mut rings);
    changes.push(("create".into(), draws, c));

    // 1: alice makes bob an admin.
    let last = &changes[changes.len() - 1].2.room;
    let c = last
        .grant_admin(author(p, ALICE, &a), BOB, &p.chains, RT + 10)
        .unwrap();
    changes.push(("grant_admin".into(), Vec::new(), c));

    // 2: bob adds dan; WholeHistory: dan gets epoch 0.
    let last = changes[changes.len() - 1].2.room.clone();
    let draws = vec![d64(format!("ward vector room history wrap {DAN} epoch 0"))];
    let c = run(&draws, |rng| {
        last.add_members(
            rng,
            author(p, BOB, &b),
            &[&p.chains[DAN]],
            &p.chains,
            &rings[BOB],
            RT + 20,
        )
        .unwrap()
    });
    take(&c, &mut rings);
    changes.push(("add".into(), draws, c));

    // 3: bob removes carol: epoch 1 to alice, bob, dan.
    let last = changes[changes.len() - 1].2.room.clone();
    let draws = epoch_draws(1, &[ALICE, BOB, DAN]);
    let c = run(&draws, |rng| {
        last.remove_member(
            rng,
            author(p, BOB, &b),
            CAROL,
            &p.chains,
            &rings[BOB],
            RT + 30,
        )
        .unwrap()
    });
    take(&c, &mut rings);
    changes.push(("remove".into(), draws, c));

    // 4: alice renames the room (sealed under epoch 1).
    let last = changes[changes.len() - 1].2.room.clone();
    let draws = vec![d_short("ward vector room metadata update nonce".into(), 24)];
    let c = run(&draws, |rng| {
        last.update_metadata(
            rng,
            author(p, ALICE, &a),
            &metadata("Tumour board, haematology (cycle 1)"),
            &p.chains,
            &rings[ALICE],
            RT + 40,
        )
        .unwrap()
    });
    changes.push(("metadata_update".into(), draws, c));

    // 5: alice leaves; bob stays admin. The room is rotation pending.
    let last = changes[changes.len() - 1].2.room.clone();
    let c = last
        .leave(author(p, ALICE, &a), None, &p.chains, RT + 50)
        .unwrap();
    changes.push(("leave".into(), Vec::new(), c));

    // 6: dan rotates: epoch 2 to bob and dan.
    let last = changes[changes.len() - 1].2.room.clone();
    let draws = epoch_draws(2, &[BOB, DAN]);
    let c = run(&draws, |rng| {
        last.rotate(rng, author(p, DAN, &d), &p.chains, &rings[DAN], RT + 60)
            .unwrap()
    });
    take(&c, &mut rings);
    changes.push(("rotation".into(), draws, c));

    let entries: Vec<SignedRoomStatement> = changes.iter().map(|c| c.2.entry.clone()).collect();
    let states = changes.iter().map(|c| c.2.room.clone()).collect();
    RoomStory {
        entries,
        states,
        changes,
        rings,
    }
}

fn decode_st(e: &SignedRoomStatement) -> RoomStatement {
    ward_core::proto::decode_bounded(&e.statement, room::MAX_ROOM_STATEMENT_BYTES).unwrap()
}

/// `entry` with its statement changed by `edit`, re-signed by `device`.
fn resign(
    e: &SignedRoomStatement,
    device: &DeviceSigningKey,
    edit: impl FnOnce(&mut RoomStatement),
) -> SignedRoomStatement {
    let mut st = decode_st(e);
    edit(&mut st);
    room::sign_raw(&st, device)
}

fn as_user(user: &'static str, chain_len: u64) -> impl FnOnce(&mut RoomStatement) {
    move |st| {
        st.author_user_id = user.to_owned();
        st.author_device = device_of(user).public_key().as_bytes().to_vec();
        st.author_chain_len = chain_len;
    }
}

fn at(seq: u64, prev: &VerifiedRoom) -> impl Fn(&mut RoomStatement) + '_ {
    move |st| {
        st.seq = seq;
        st.prev_hash = prev.head().to_vec();
    }
}

/// (variant, fields, reason) of a RoomError, as the vectors write it.
fn room_err(e: &RoomError) -> (String, Vec<(&'static str, u64)>, Option<String>) {
    let (name, fields, reason): (&str, Vec<(&'static str, u64)>, Option<String>) = match e {
        RoomError::Malformed(r) => ("Malformed", vec![], Some((*r).to_owned())),
        RoomError::Decode(d) => ("Decode", vec![], Some(format!("{d:?}"))),
        RoomError::UnsupportedVersion(v) => {
            ("UnsupportedVersion", vec![("version", u64::from(*v))], None)
        }
        RoomError::EmptyLog => ("EmptyLog", vec![], None),
        RoomError::WrongRoom { seq } => ("WrongRoom", vec![("seq", *seq)], None),
        RoomError::BadSequence { expected, found } => (
            "BadSequence",
            vec![("expected", *expected), ("found", *found)],
            None,
        ),
        RoomError::BrokenChain { seq } => ("BrokenChain", vec![("seq", *seq)], None),
        RoomError::TimeWentBackwards { seq } => ("TimeWentBackwards", vec![("seq", *seq)], None),
        RoomError::UnknownAuthor { seq } => ("UnknownAuthor", vec![("seq", *seq)], None),
        RoomError::AuthorChainBehind { seq } => ("AuthorChainBehind", vec![("seq", *seq)], None),
        RoomError::AuthorChainRolledBack { seq } => {
            ("AuthorChainRolledBack", vec![("seq", *seq)], None)
        }
        RoomError::UnauthorizedDevice { seq } => ("UnauthorizedDevice", vec![("seq", *seq)], None),
        RoomError::BadSignature { seq } => ("BadSignature", vec![("seq", *seq)], None),
        RoomError::NotAMember { seq } => ("NotAMember", vec![("seq", *seq)], None),
        RoomError::NotAdmin { seq } => ("NotAdmin", vec![("seq", *seq)], None),
        RoomError::LastAdmin { seq } => ("LastAdmin", vec![("seq", *seq)], None),
        RoomError::InvalidTransition { seq, reason } => (
            "InvalidTransition",
            vec![("seq", *seq)],
            Some((*reason).to_owned()),
        ),
        RoomError::Rollback { known, served } => (
            "Rollback",
            vec![("known", *known), ("served", *served)],
            None,
        ),
        RoomError::Fork { seq } => ("Fork", vec![("seq", *seq)], None),
        RoomError::EpochKeyMismatch => ("EpochKeyMismatch", vec![], None),
        RoomError::Wrap(w) => ("Wrap", vec![], Some(format!("{w:?}"))),
        other => panic!("not a verifier error: {other:?}"),
    };
    (format!("RoomError::{name}"), fields, reason)
}

struct Case {
    name: &'static str,
    description: &'static str,
    operation: &'static str,
    /// Entries of the story's log verified first.
    prefix: usize,
    /// apply: one entry; update: the served log; verify: a whole log.
    entries: Vec<SignedRoomStatement>,
    wrap: Option<(&'static str, RoomKeyWrap)>,
}

fn run_case(p: &People, story: &RoomStory, c: &Case) -> RoomError {
    let state = |n: usize| story.states[n - 1].clone();
    match c.operation {
        "apply" => {
            let mut s = state(c.prefix);
            let e = s.apply(&c.entries[0], &p.chains).unwrap_err();
            assert_eq!(s, state(c.prefix), "{}: state changed on error", c.name);
            e
        }
        "update" => state(c.prefix).update(&c.entries, &p.chains).unwrap_err(),
        "verify" => room::verify_room_log(None, &c.entries, &p.chains).unwrap_err(),
        "accept_wrap" => {
            let (user, w) = c.wrap.as_ref().unwrap();
            state(c.prefix)
                .accept_epoch_wrap(w, &ukey(user_key_label(user)))
                .err()
                .unwrap()
        }
        other => panic!("unknown operation {other}"),
    }
}

fn cases(p: &People, story: &RoomStory) -> Vec<Case> {
    let e = &story.entries;
    let st = |n: usize| &story.states[n - 1];
    let apply = |name, description, prefix, entry| Case {
        name,
        description,
        operation: "apply",
        prefix,
        entries: vec![entry],
        wrap: None,
    };
    let (alice_dev, bob_dev, carol_dev) = (device_of(ALICE), device_of(BOB), device_of(CAROL));
    let alice_len = p.chains[ALICE].len();
    let mut out = vec![
        apply(
            "add_by_non_admin",
            "entry 1: bob, a member but not yet an admin, adds dan (entry 2 moved to seq 1)",
            1,
            resign(&e[2], &bob_dev, at(1, st(1))),
        ),
        apply(
            "removed_member_signs",
            "entry 4: carol, removed at entry 3, signs the metadata update",
            4,
            resign(&e[4], &carol_dev, as_user(CAROL, 1)),
        ),
        apply(
            "revoked_device_signs",
            "entry 1: alice's device 1, revoked at entry 2 of her log, signs the grant citing her log's length 4",
            1,
            resign(&e[1], &dev(L_ALICE_DEV1_SIG), |st| {
                st.author_device = dev(L_ALICE_DEV1_SIG).public_key().as_bytes().to_vec();
            }),
        ),
        apply(
            "device_of_another_user",
            "entry 1: signed by bob's device, claimed as alice's",
            1,
            resign(&e[1], &bob_dev, |st| {
                st.author_device = bob_dev.public_key().as_bytes().to_vec();
            }),
        ),
        apply(
            "unknown_author",
            "entry 1: an author whose user log the verifier does not hold",
            1,
            resign(&e[1], &dev(L_STRANGER), |st| {
                st.author_user_id = ZED.into();
                st.author_device = dev(L_STRANGER).public_key().as_bytes().to_vec();
            }),
        ),
        apply(
            "author_chain_behind",
            "entry 1: cites alice's log at length 5; the verifier holds 4 entries",
            1,
            resign(&e[1], &alice_dev, |st| st.author_chain_len = alice_len + 1),
        ),
        apply(
            "author_chain_rolled_back",
            "entry 4: alice cites her log at length 3 after citing 4",
            4,
            resign(&e[4], &dev(L_ALICE_DEV2_SIG), |st| st.author_chain_len = 3),
        ),
        apply(
            "bad_signature",
            "entry 1 with one signature bit flipped",
            1,
            {
                let mut x = e[1].clone();
                x.signature[0] ^= 1;
                x
            },
        ),
        apply(
            "broken_chain",
            "entry 1 whose prev_hash is zero",
            1,
            resign(&e[1], &alice_dev, |st| st.prev_hash = vec![0; 32]),
        ),
        apply(
            "time_went_backwards",
            "entry 1 dated before entry 0",
            1,
            resign(&e[1], &alice_dev, |st| st.timestamp = RT - 1),
        ),
        apply(
            "wrong_room",
            "entry 1 naming another room id",
            1,
            resign(&e[1], &alice_dev, |st| st.room_id = vec![7; 32]),
        ),
        apply(
            "bad_sequence",
            "entry 2 applied after entry 0 only",
            1,
            e[2].clone(),
        ),
        apply(
            "non_canonical",
            "entry 1 with an unknown field 99 appended, re-signed",
            1,
            {
                let mut bytes = e[1].statement.clone();
                bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
                let sig = SigningKey::from_bytes(&seed(L_ALICE_DEV2_SIG))
                    .sign(&framed(labels::SIG_ROOM_STATEMENT, &[&bytes]))
                    .to_bytes();
                SignedRoomStatement {
                    statement: bytes,
                    signature: sig.to_vec(),
                }
            },
        ),
        apply(
            "second_creation",
            "entry 1: a creation, re-signed at seq 1",
            1,
            resign(&e[0], &alice_dev, at(1, st(1))),
        ),
        apply(
            "wrong_epoch_number",
            "entry 3: the removal's epoch numbered 5",
            3,
            resign(&e[3], &bob_dev, |st| {
                if let Some(RBody::Remove(r)) = &mut st.body {
                    r.epoch.as_mut().unwrap().number = 5;
                }
            }),
        ),
        apply(
            "epoch_key_reused",
            "entry 3: the removal commits to epoch 0's public key again (carol holds it)",
            3,
            resign(&e[3], &bob_dev, |s| {
                if let Some(RBody::Remove(r)) = &mut s.body {
                    r.epoch.as_mut().unwrap().public_key =
                        st(1).epochs()[0].public_key.as_bytes().to_vec();
                }
            }),
        ),
        apply(
            "epoch_members_differ",
            "entry 3: the removal's epoch still lists carol",
            3,
            resign(&e[3], &bob_dev, |s| {
                if let Some(RBody::Remove(r)) = &mut s.body {
                    let ep = r.epoch.as_mut().unwrap();
                    let old = decode_st(&e[0]);
                    let Some(RBody::Creation(c)) = old.body else {
                        unreachable!()
                    };
                    let carol = c.epoch.unwrap().members[2].clone();
                    ep.members.insert(2, carol);
                }
            }),
        ),
        apply(
            "remove_without_epoch",
            "entry 3: a removal that starts no epoch",
            3,
            resign(&e[3], &bob_dev, |s| {
                if let Some(RBody::Remove(r)) = &mut s.body {
                    r.epoch = None;
                }
            }),
        ),
        apply(
            "whole_history_add_with_epoch",
            "entry 2: a WholeHistory addition carrying an epoch (the removal's, renumbered)",
            2,
            resign(&e[2], &bob_dev, |s| {
                let rm = decode_st(&e[3]);
                let Some(RBody::Remove(r)) = rm.body else {
                    unreachable!()
                };
                if let Some(RBody::Add(a)) = &mut s.body {
                    a.epoch = r.epoch;
                }
            }),
        ),
        apply(
            "remove_self",
            "entry 3: bob removes himself",
            3,
            resign(&e[3], &bob_dev, |s| {
                if let Some(RBody::Remove(r)) = &mut s.body {
                    r.user_id = BOB.into();
                }
            }),
        ),
        apply(
            "last_admin_leaves",
            "entry 1: alice, the only admin, leaves without naming a successor",
            1,
            resign(&e[1], &alice_dev, |s| {
                s.body = Some(RBody::Leave(RoomLeave {
                    successor: String::new(),
                }))
            }),
        ),
        apply(
            "metadata_update_while_rotation_pending",
            "entry 6: bob updates the metadata right after alice left",
            6,
            resign(&e[4], &bob_dev, |s| {
                as_user(BOB, 1)(s);
                at(6, st(6))(s);
                s.timestamp = RT + 60;
            }),
        ),
        Case {
            name: "rollback",
            description: "a member that verified 4 entries is served 3 (the removal dropped)",
            operation: "update",
            prefix: 4,
            entries: e[..3].to_vec(),
            wrap: None,
        },
        Case {
            name: "fork",
            description: "a member that verified 4 entries is served a log whose entry 3 is another validly signed entry (bob grants dan admin)",
            operation: "update",
            prefix: 4,
            entries: {
                let mut f = e[..3].to_vec();
                let g = st(3)
                    .grant_admin(author(p, BOB, &bob_dev), DAN, &p.chains, RT + 30)
                    .unwrap();
                f.push(g.entry);
                f
            },
            wrap: None,
        },
        Case {
            name: "fork_zeroed_signature",
            description: "the known prefix served with entry 0's signature zeroed",
            operation: "update",
            prefix: 4,
            entries: {
                let mut f = e.clone();
                f[0].signature = vec![0; 64];
                f
            },
            wrap: None,
        },
        Case {
            name: "creator_not_member",
            description: "entry 0 whose epoch lists bob and carol but not alice, its author",
            operation: "verify",
            prefix: 0,
            entries: vec![resign(&e[0], &alice_dev, |s| {
                if let Some(RBody::Creation(c)) = &mut s.body {
                    c.epoch.as_mut().unwrap().members.remove(0);
                }
            })],
            wrap: None,
        },
        Case {
            name: "empty_log",
            description: "no entry",
            operation: "verify",
            prefix: 0,
            entries: Vec::new(),
            wrap: None,
        },
    ];
    // Epoch-key wraps, against the final state.
    let n = e.len();
    let wraps_of = |i: usize| &story.changes[i].2.wraps;
    let (_, bob_e1) = wraps_of(3).iter().find(|(u, _)| u == BOB).unwrap().clone();
    let mut mismatched = bob_e1.clone();
    mismatched.epoch_key = st(1).epochs()[0].public_key.id().as_bytes().to_vec();
    let planted = {
        let k = RoomEpochKey::import_secret(&seed("ward vector room planted epoch key")).unwrap();
        let draws = [d64("ward vector room planted wrap".into())];
        let mut w = run(&draws, |rng| {
            room::wrap_epoch_key(rng, st(n).id(), 1, &k, &ukey(L_BOB_USER).public_key()).unwrap()
        });
        w.epoch_key = bob_e1.epoch_key.clone();
        w
    };
    let wrap_case = |name, description, user, w| Case {
        name,
        description,
        operation: "accept_wrap",
        prefix: n,
        entries: Vec::new(),
        wrap: Some((user, w)),
    };
    out.push(wrap_case(
        "wrap_epoch_key_mismatch",
        "bob's epoch-1 wrap naming epoch 0's key id",
        BOB,
        mismatched,
    ));
    out.push(wrap_case(
        "wrap_planted_epoch_key",
        "a keyserver seals its own epoch seed to bob (seed: SHA-256(\"ward vector room planted epoch key\"), eseed label \"ward vector room planted wrap\"), then rewrites epoch_key to the committed epoch-1 key id",
        BOB,
        planted,
    ));
    out.push(wrap_case(
        "wrap_to_removed_member",
        "carol, removed, offered bob's epoch-1 wrap",
        CAROL,
        bob_e1.clone(),
    ));
    let mut readdressed = bob_e1;
    readdressed.recipient_key = ukey(L_CAROL_USER).public_key().id().as_bytes().to_vec();
    out.push(wrap_case(
        "wrap_readdressed_to_removed_member",
        "bob's epoch-1 wrap with recipient_key rewritten to carol's key",
        CAROL,
        readdressed,
    ));
    out
}

fn state_json(r: &VerifiedRoom) -> J {
    o(vec![
        ("room_id", h(r.id().as_bytes())),
        (
            "policy",
            s(match r.policy() {
                HistoryPolicy::FromJoin => "FROM_JOIN",
                HistoryPolicy::WholeHistory => "WHOLE_HISTORY",
            }),
        ),
        ("len", J::N(r.len())),
        ("head", h(r.head())),
        ("last_timestamp", J::N(r.last_timestamp())),
        ("rotation_pending", J::B(r.rotation_pending())),
        ("current_epoch", J::N(r.current_epoch())),
        ("metadata_epoch", J::N(r.metadata_epoch())),
        (
            "members",
            J::A(
                r.members()
                    .iter()
                    .map(|(u, m)| {
                        o(vec![
                            ("user_id", s(u)),
                            ("admin", J::B(m.admin)),
                            ("user_key", h(m.user_key.as_bytes())),
                            ("joined_epoch", J::N(m.joined_epoch)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "epochs",
            J::A(
                r.epochs()
                    .iter()
                    .map(|e| {
                        o(vec![
                            ("key_id", h(e.public_key.id().as_bytes())),
                            ("started_at", J::N(e.started_at)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

pub(super) fn gen_room() -> J {
    let p = people();
    let story = story(&p);
    let n = story.entries.len();
    let fin = &story.states[n - 1];
    assert_eq!(
        room::verify_room_log(Some(fin.id()), &story.entries, &p.chains).unwrap(),
        *fin
    );
    let users = J::A(
        p.logs
            .iter()
            .map(|(u, l)| {
                o(vec![
                    ("user_id", s(u)),
                    ("log", log_json(l)),
                    ("user_key_label", s(user_key_label(u))),
                    ("user_key_secret", h(seed(user_key_label(u)))),
                ])
            })
            .collect(),
    );
    let mut log = Vec::new();
    let mut wraps = Vec::new();
    let mut epochs = Vec::new();
    let mut metas = Vec::new();
    for (i, (op, draws, c)) in story.changes.iter().enumerate() {
        log.push(o(vec![
            ("operation", s(op)),
            ("entry", entry_json(&c.entry)),
            ("entry_hash", h(room::room_entry_hash(&c.entry))),
            ("draws", draws_json(draws)),
        ]));
        if let Some(k) = &c.epoch_key {
            let number = c.room.current_epoch();
            let label = format!("ward vector room epoch {number} seed");
            epochs.push(o(vec![
                ("number", J::N(number)),
                ("seed_label", s(&label)),
                ("seed", h(*k.export_secret())),
                ("public_key", h(k.public_key().as_bytes())),
                ("key_id", h(k.public_key().id().as_bytes())),
                ("started_at", J::N(i as u64)),
            ]));
        }
        for (u, w) in &c.wraps {
            let label = if c.epoch_key.is_some() {
                format!("ward vector room epoch {} wrap {u}", w.epoch)
            } else {
                format!("ward vector room history wrap {u} epoch {}", w.epoch)
            };
            let mut j = wrap_json(u, w, &label);
            if let J::O(pairs) = &mut j {
                pairs.insert(0, ("entry".into(), J::N(i as u64)));
            }
            wraps.push(j);
        }
        // The metadata each entry carries (creation, epochs, update).
        let epoch = c.room.metadata_epoch();
        let changed = i == 0 || c.epoch_key.is_some() || op == "metadata_update";
        if changed {
            let ring = &story.rings[BOB];
            let m = c.room.metadata(ring).unwrap();
            let key = ring.get(epoch).unwrap();
            let prk = Hkdf::<Sha256>::new(Some(c.room.id().as_bytes()), &*key.export_secret());
            let mut mk = [0u8; 32];
            prk.expand(labels::ROOM_METADATA_KEY, &mut mk).unwrap();
            metas.push(o(vec![
                ("entry", J::N(i as u64)),
                ("epoch", J::N(epoch)),
                ("name", s(&m.name)),
                ("case_reference", s(&m.case_reference)),
                ("topic", s(&m.topic)),
                ("metadata_key", h(mk)),
                (
                    "aad",
                    h(framed(
                        labels::ROOM_METADATA_AAD,
                        &[c.room.id().as_bytes(), &epoch.to_be_bytes()],
                    )),
                ),
            ]));
        }
    }
    // A room message from dan at epoch 2, and bob's unwrap.
    let msg_draws = vec![
        d32("ward vector room message resource key".into()),
        d_short("ward vector room message resource id".into(), 16),
        d_short("ward vector room message nonce".into(), 24),
        d64("ward vector room message eseed".into()),
    ];
    let content = "Cycle 1 starts Monday: please check the platelets on Sunday.";
    let dan_dev = device_of(DAN);
    let sealed = run(&msg_draws, |rng| {
        envelope::seal_to_room(
            rng,
            &dan_dev,
            &p.chains[DAN],
            fin,
            &RoomSealRequest {
                content_type: ContentType::Text,
                content: content.as_bytes(),
                timestamp_ms: (RT + 70) * 1000,
            },
        )
        .unwrap()
    });
    let message = o(vec![
        ("sender", s(DAN)),
        ("content", s(content)),
        ("timestamp_ms", J::N((RT + 70) * 1000)),
        ("draws", draws_json(&msg_draws)),
        ("epoch", J::N(sealed.epoch)),
        ("envelope", h(&sealed.envelope)),
        ("wrapped_key", h(sealed.wrapped_key.encode_to_vec())),
    ]);
    let cs = cases(&p, &story);
    let case_json = J::A(
        cs.iter()
            .map(|c| {
                let (error, fields, reason) = room_err(&run_case(&p, &story, c));
                let mut pairs = vec![
                    ("name", s(c.name)),
                    ("description", s(c.description)),
                    ("operation", s(c.operation)),
                    ("prefix", J::N(c.prefix as u64)),
                ];
                if c.operation == "apply" {
                    pairs.push(("entry", entry_json(&c.entries[0])));
                } else if c.operation != "accept_wrap" {
                    pairs.push(("entries", J::A(c.entries.iter().map(entry_json).collect())));
                }
                if let Some((u, w)) = &c.wrap {
                    pairs.push(("user_id", s(u)));
                    pairs.push(("wrap", h(w.encode_to_vec())));
                }
                pairs.push(("error", s(&error)));
                pairs.push((
                    "error_fields",
                    J::O(
                        fields
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), J::N(v)))
                            .collect(),
                    ),
                ));
                if let Some(r) = reason {
                    pairs.push(("error_reason", J::S(r)));
                }
                o(pairs)
            })
            .collect(),
    );
    file(
        "Patient-case rooms (SECURITY.md §17): four members' user logs; a room log built by the producers \
         (creation WHOLE_HISTORY, grant, addition with history wraps, removal, metadata update, leave, \
         rotation) with each entry's RNG draws and entry hash; every epoch key and wrap (with eseed); the \
         metadata key and aad of each sealed metadata; a room message and its one wrapped key; the final \
         state; and room_cases that must fail, each with its exact error. prefix = how many log entries are \
         verified before the case runs.",
        vec![
            ("org_root_public", h(root().public_key().as_bytes())),
            ("users", users),
            ("genesis_hash", h(room::genesis_hash(fin.id()))),
            ("log", J::A(log)),
            ("epochs", J::A(epochs)),
            ("wraps", J::A(wraps)),
            ("metadata", J::A(metas)),
            ("message", message),
            ("final_state", state_json(fin)),
            ("room_cases", case_json),
        ],
    )
}

/// The replay: the committed JSON only, through the public API.
pub(super) fn replay_room(v: &Value) {
    let root = SigningPublicKey::from_bytes(&hx(&v["org_root_public"])).unwrap();
    let mut chains = BTreeMap::new();
    let mut user_keys = BTreeMap::new();
    for u in v["users"].as_array().unwrap() {
        let id = st(&u["user_id"]).to_owned();
        let log: Vec<SignedStatement> = u["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| SignedStatement {
                statement: hx(&e["statement"]),
                signature: hx(&e["signature"]),
            })
            .collect();
        chains.insert(id.clone(), chain::verify_log(&root, &id, &log).unwrap());
        user_keys.insert(
            id,
            UserEncryptionKey::import_secret(&hx(&u["user_key_secret"])).unwrap(),
        );
    }
    let rentry = |e: &Value| SignedRoomStatement {
        statement: hx(&e["statement"]),
        signature: hx(&e["signature"]),
    };
    let entries: Vec<SignedRoomStatement> = v["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| rentry(&l["entry"]))
        .collect();
    let mut states = Vec::new();
    for (i, l) in v["log"].as_array().unwrap().iter().enumerate() {
        assert_eq!(hx(&l["entry_hash"]), room::room_entry_hash(&entries[i]));
        states.push(room::verify_room_log(None, &entries[..=i], &chains).unwrap());
    }
    let fin = states.last().unwrap();
    let mine: Value = serde_json::from_str(&to_text(&state_json(fin))).unwrap();
    assert_eq!(mine, v["final_state"]);
    // Every wrap opens for its member to the committed epoch key.
    let mut ring = RoomKeyring::new();
    for w in v["wraps"].as_array().unwrap() {
        let wrap = RoomKeyWrap::decode(hx(&w["encoded"]).as_slice()).unwrap();
        let k = fin
            .accept_epoch_wrap(&wrap, &user_keys[st(&w["user_id"])])
            .unwrap();
        if st(&w["user_id"]) == BOB {
            ring.insert(wrap.epoch, k);
        }
    }
    let m = fin.metadata(&ring).unwrap();
    let last_meta = v["metadata"].as_array().unwrap().last().unwrap();
    assert_eq!(m.name, st(&last_meta["name"]));
    // The room message opens for bob.
    let msg = &v["message"];
    let env = ReceivedEnvelope::parse(&hx(&msg["envelope"])).unwrap();
    let wk = WrappedKey::decode(hx(&msg["wrapped_key"]).as_slice()).unwrap();
    let key = wrap::unwrap_room_resource_key(
        &wk,
        &env.resource_id(),
        ring.get(num(&msg["epoch"])).unwrap(),
    )
    .unwrap();
    let opened = env.open_in_room(&chains[DAN], fin, &key).unwrap();
    assert_eq!(&opened.content[..], st(&msg["content"]).as_bytes());
    // Every case fails as written.
    for c in v["room_cases"].as_array().unwrap() {
        let prefix = num(&c["prefix"]) as usize;
        let state = || states[prefix - 1].clone();
        let got = match st(&c["operation"]) {
            "apply" => state().apply(&rentry(&c["entry"]), &chains).unwrap_err(),
            "update" => {
                let served: Vec<_> = c["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(rentry)
                    .collect();
                state().update(&served, &chains).unwrap_err()
            }
            "verify" => {
                let served: Vec<_> = c["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(rentry)
                    .collect();
                room::verify_room_log(None, &served, &chains).unwrap_err()
            }
            "accept_wrap" => {
                let wrap = RoomKeyWrap::decode(hx(&c["wrap"]).as_slice()).unwrap();
                state()
                    .accept_epoch_wrap(&wrap, &user_keys[st(&c["user_id"])])
                    .unwrap_err()
            }
            other => panic!("unknown operation {other}"),
        };
        let (name, fields, reason) = room_err(&got);
        assert_eq!(name, st(&c["error"]), "{}", c["name"]);
        for (k, val) in fields {
            assert_eq!(num(&c["error_fields"][k]), val, "{}", c["name"]);
        }
        assert_eq!(
            reason.as_deref(),
            c["error_reason"].as_str(),
            "{}",
            c["name"]
        );
    }
}
