//! The relay's room-log decisions and their storage (SECURITY.md §17.10),
//! with entries from `ward-core`'s producers.

use ward_core::room::{HistoryPolicy, RoomKeyring, create_room};
use ward_core::testkit::{Org, room_metadata};

use super::*;

struct Fixture {
    id: [u8; 32],
    /// Creation (a, b, c), then the removal of c.
    log: Vec<SignedRoomStatement>,
    users: HashMap<String, VerifiedUser>,
    /// Another room log of the same id's length 2: a fork (a adds d instead).
    fork: Vec<SignedRoomStatement>,
}

fn fixture() -> Fixture {
    let rng = &mut rand::rng();
    let org = Org::new(rng);
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|u| org.enroll(rng, u));
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
    let mut keyring = RoomKeyring::new();
    keyring.insert(0, created.epoch_key.unwrap());
    let removed = created
        .room
        .remove_member(rng, a.room_author(), "c", &users, &keyring, 11)
        .unwrap();
    let added = created
        .room
        .add_members(rng, a.room_author(), &[&d.chain], &users, &keyring, 11)
        .unwrap();
    Fixture {
        id: *created.room.id().as_bytes(),
        log: vec![created.entry.clone(), removed.entry],
        users,
        fork: vec![created.entry, added.entry],
    }
}

#[test]
fn a_room_log_is_verified_whole_then_only_its_new_entries() {
    let f = fixture();
    let first = decide(&f.id, None, &f.log[..1], &f.users).unwrap().unwrap();
    assert!(first.room.is_member("c"));
    let next = decide(&f.id, Some(&first), &f.log, &f.users)
        .unwrap()
        .unwrap();
    assert!(!next.room.is_member("c"), "the removal is applied");
    assert!(next.room.is_member("a") && next.room.is_member("b"));
    assert_eq!(next.room.current_epoch(), 1);
    assert_eq!(next.entries, f.log);
    // The same log again: nothing new.
    assert!(
        decide(&f.id, Some(&next), &f.log, &f.users)
            .unwrap()
            .is_none()
    );
}

#[test]
fn rollbacks_forks_forgeries_and_other_rooms_are_refused() {
    let f = fixture();
    let held = decide(&f.id, None, &f.log, &f.users).unwrap().unwrap();
    // A rollback that drops the removal.
    assert!(matches!(
        decide(&f.id, Some(&held), &f.log[..1], &f.users),
        Err(RoomError::Rollback { .. })
    ));
    // A fork: another entry 1.
    assert!(matches!(
        decide(&f.id, Some(&held), &f.fork, &f.users),
        Err(RoomError::Fork { .. })
    ));
    // A forged signature, on a room the relay does not hold yet.
    let mut forged = f.log.clone();
    forged[1].signature[0] ^= 1;
    assert!(decide(&f.id, None, &forged, &f.users).is_err());
    // Another room's log under this id.
    assert!(decide(&[7; 32], None, &f.log, &f.users).is_err());
    // Without the members' user logs nothing verifies.
    assert!(decide(&f.id, None, &f.log, &HashMap::new()).is_err());
}

#[test]
fn the_log_names_its_authors_and_members() {
    let f = fixture();
    let named = named_users(&f.fork);
    assert_eq!(named.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
}

#[test]
fn room_logs_are_stored_compare_and_swap_on_their_length() {
    let f = fixture();
    let mut c = rusqlite::Connection::open_in_memory().unwrap();
    storage::migrate(&mut c).unwrap();
    assert_eq!(storage::load_room_log(&c, &f.id).unwrap(), None);
    assert!(storage::store_room_log(&c, &f.id, 0, &f.log[..1], 5).unwrap());
    // A writer that read no log loses the race.
    assert!(!storage::store_room_log(&c, &f.id, 0, &f.log, 6).unwrap());
    assert!(storage::store_room_log(&c, &f.id, 1, &f.log, 6).unwrap());
    assert_eq!(storage::load_room_log(&c, &f.id).unwrap().unwrap(), f.log);
    // Another room is apart.
    assert_eq!(storage::load_room_log(&c, &[9; 32]).unwrap(), None);
}

/// The cache holds at most its capacity: a new room makes one other way,
/// a longer log of a cached room replaces it, a shorter one does not.
#[test]
fn the_room_cache_is_bounded() {
    let cache = RoomCache::with_capacity(2);
    let f = fixture();
    let short = decide(&f.id, None, &f.log[..1], &f.users).unwrap().unwrap();
    let long = decide(&f.id, None, &f.log, &f.users).unwrap().unwrap();
    let (short, long) = (Arc::new(short), Arc::new(long));
    cache.offer(f.id, long.clone());
    cache.offer(f.id, short.clone());
    assert_eq!(cache.get(&f.id).unwrap().room.len(), 2, "logs only grow");
    for i in 0..5u8 {
        cache.offer([i; 32], short.clone());
        assert!(cache.len() <= 2, "{} rooms cached", cache.len());
        assert!(cache.get(&[i; 32]).is_some(), "the newest room is cached");
    }
    assert_eq!(cache.len(), 2);
}
