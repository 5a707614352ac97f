//! Criterion benches for patient-case rooms (SECURITY.md §17), each beside
//! the operation it replaces so that the figures read as ratios from one run:
//!
//! | bench | against |
//! |---|---|
//! | `room/seal_1KiB/room_500` (one wrap, to the epoch key) | `room/seal_1KiB/one_to_one` (two wraps: the peer and the sender's own user) and `room/seal_1KiB/users_256` (the most users one envelope may list, one wrap each) |
//! | `room/remove/{500,1000}` (new epoch: one wrap per remaining member) | — (bytes printed: entry and wraps) |
//! | `room/remove/verify/{500,1000}` (a member or the keyserver verifies the removal) and `room/remove/accept_wrap/{500,1000}` (a member opens its wrap) | the removal itself |
//!
//! Bytes uploaded are printed once per case on stderr (`bytes …`).
//!
//! Run with: `cargo bench -p ward-core --bench room -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ward_core::ConversationId;
use ward_core::chain::VerifiedUser;
use ward_core::envelope::{self, ContentType, RoomSealRequest, SealRequest};
use ward_core::proto::Message;
use ward_core::room::{self, HistoryPolicy, RoomAuthor, RoomKeyring, RoomMetadata};
use ward_core::testkit::{Clinician, KIT_TIME, Org};

/// Unwraps in a bench: a failure is a bug, and aborting the run is intended.
#[allow(clippy::panic)]
fn must<T, E: Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("bench setup failed: {e:?}"),
    }
}

fn people(n: usize) -> Vec<Clinician> {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    (0..n)
        .map(|i| org.enroll(&mut rng, &format!("clinician-{i:04}@chu-example")))
        .collect()
}

fn metadata() -> RoomMetadata {
    RoomMetadata {
        name: "Regional on-call rota".into(),
        case_reference: "CASE-2026-0042".into(),
        topic: "night shifts, December".into(),
    }
}

struct Room {
    people: Vec<Clinician>,
    chains: BTreeMap<String, VerifiedUser>,
    room: room::VerifiedRoom,
    ring: RoomKeyring,
}

fn room_of(n: usize) -> Room {
    let mut rng = rand::rng();
    let people = people(n);
    let chains: BTreeMap<String, VerifiedUser> = people
        .iter()
        .map(|c| (c.chain.user_id().to_owned(), c.chain.clone()))
        .collect();
    let others: Vec<&VerifiedUser> = people[1..].iter().map(|c| &c.chain).collect();
    let created = must(room::create_room(
        &mut rng,
        RoomAuthor {
            device: &people[0].device,
            chain: &people[0].chain,
        },
        HistoryPolicy::FromJoin,
        &others,
        &metadata(),
        KIT_TIME,
    ));
    let mut ring = RoomKeyring::new();
    if let Some(k) = created.epoch_key {
        ring.insert(0, k);
    }
    Room {
        people,
        chains,
        room: created.room,
        ring,
    }
}

fn bench_seal(c: &mut Criterion) {
    let mut rng = rand::rng();
    let content = vec![0x42u8; 1 << 10];
    let r = room_of(500);
    let me = &r.people[0];
    let peer = &r.people[1];
    let mut g = c.benchmark_group("room/seal_1KiB");
    g.sample_size(30);

    let one = SealRequest {
        conversation_id: ConversationId([1; 16]),
        recipients: &[&me.chain, &peer.chain],
        content_type: ContentType::File,
        content: &content,
        timestamp_ms: KIT_TIME * 1000,
    };
    let sealed = must(envelope::seal(&mut rng, &me.device, &me.chain, &one));
    let wrapped: usize = sealed
        .wrapped_keys
        .iter()
        .map(|(_, w)| w.encoded_len())
        .sum();
    eprintln!(
        "bytes one_to_one: envelope {} + wrapped keys {} = {}",
        sealed.envelope.len(),
        wrapped,
        sealed.envelope.len() + wrapped
    );
    g.bench_function("one_to_one", |b| {
        b.iter(|| {
            must(envelope::seal(
                &mut rng,
                &me.device,
                &me.chain,
                black_box(&one),
            ))
        })
    });

    let to_room = RoomSealRequest {
        content_type: ContentType::File,
        content: &content,
        timestamp_ms: KIT_TIME * 1000,
    };
    let sealed = must(envelope::seal_to_room(
        &mut rng, &me.device, &me.chain, &r.room, &to_room,
    ));
    eprintln!(
        "bytes room_500: envelope {} + wrapped key {} = {}",
        sealed.envelope.len(),
        sealed.wrapped_key.encoded_len(),
        sealed.envelope.len() + sealed.wrapped_key.encoded_len()
    );
    g.bench_function("room_500", |b| {
        b.iter(|| {
            must(envelope::seal_to_room(
                &mut rng,
                &me.device,
                &me.chain,
                &r.room,
                black_box(&to_room),
            ))
        })
    });

    // Without rooms, the nearest a sender could get: 256 users, one wrap each.
    let many: Vec<&VerifiedUser> = r.people[..256].iter().map(|c| &c.chain).collect();
    let wide = SealRequest {
        recipients: &many,
        ..one
    };
    g.bench_function("users_256", |b| {
        b.iter(|| {
            must(envelope::seal(
                &mut rng,
                &me.device,
                &me.chain,
                black_box(&wide),
            ))
        })
    });
    g.finish();
}

fn bench_remove(c: &mut Criterion) {
    let mut rng = rand::rng();
    let mut g = c.benchmark_group("room/remove");
    g.sample_size(10);
    for n in [500usize, 1000] {
        let r = room_of(n);
        let admin = RoomAuthor {
            device: &r.people[0].device,
            chain: &r.people[0].chain,
        };
        let target = r.people[n - 1].chain.user_id().to_owned();
        let change = must(
            r.room
                .remove_member(&mut rng, admin, &target, &r.chains, &r.ring, KIT_TIME),
        );
        let entry = change.entry.encoded_len();
        let wraps: usize = change.wraps.iter().map(|(_, w)| w.encoded_len()).sum();
        eprintln!(
            "bytes remove_{n}: entry {entry} + {} wraps {wraps} = {}",
            change.wraps.len(),
            entry + wraps
        );
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                must(r.room.remove_member(
                    &mut rng,
                    admin,
                    black_box(&target),
                    &r.chains,
                    &r.ring,
                    KIT_TIME,
                ))
            })
        });
        // What every remaining member's device and the keyserver do with
        // it: verify the entry against the verified state (M1-M12), and a
        // member accepts its wrap of the new epoch (EK1-EK7).
        g.bench_with_input(BenchmarkId::new("verify", n), &n, |b, _| {
            b.iter(|| {
                let mut next = r.room.clone();
                must(next.apply(black_box(&change.entry), &r.chains));
                next
            })
        });
        let member = &r.people[1];
        let wrap = &change
            .wraps
            .iter()
            .find(|(u, _)| u == member.chain.user_id())
            .map(|(_, w)| w.clone());
        let wrap = must(wrap.clone().ok_or("no wrap to member 1"));
        g.bench_with_input(BenchmarkId::new("accept_wrap", n), &n, |b, _| {
            b.iter(|| {
                must(
                    change
                        .room
                        .accept_epoch_wrap(black_box(&wrap), &member.user_key),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_seal, bench_remove);
criterion_main!(benches);
