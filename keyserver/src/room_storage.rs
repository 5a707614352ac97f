//! Rooms at the keyserver (SECURITY.md §17.11): the membership logs, the
//! epoch-key wraps and the room messages' resource keys, and who may read
//! each. Every write runs in one `BEGIN IMMEDIATE` transaction with the
//! checks it depends on, as in [`crate::storage`].
//!
//! * A room entry is accepted only if `ward-core`'s verifier accepts it
//!   after the stored log ([`VerifiedRoom::apply`]), against the authors'
//!   stored and verified user logs, and only from its author's own device
//!   session (the author device must be the session's, active now).
//! * A wrap is accepted only to a member the epoch lists, with the key the
//!   epoch lists for it, or under `WHOLE_HISTORY` to a current member's
//!   current listed key: never to a removed member for a later epoch, and
//!   under `FROM_JOIN` never to a new member for an epoch before its joining.
//! * Reads: a current member reads the whole log; a former member reads it
//!   up to and including the entry that ended its membership. Anyone else
//!   gets `NOT_FOUND`, as for a room that does not exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use ward_core::RoomId;
use ward_core::chain::{VerifiedUser, verify_log};
use ward_core::keys::SigningPublicKey;
use ward_core::room::{
    HistoryPolicy, MAX_ROOM_STATEMENT_BYTES, VerifiedRoom, room_entry_hash, verify_room_log,
};
use ward_proto::decode_bounded;
use ward_proto::v1::{
    AppendRoom, ErrorCode, RoomAppended, RoomHead, RoomKeyWrap, RoomLogPage, RoomStatement,
    RoomWraps, SignedRoomStatement, WrappedKey, WrappedKeys,
};

use crate::access::AccessRow;
use crate::config::Quotas;
use crate::directory::VerifiedCache;
use crate::error::{RequestError, StorageError};
use crate::storage::{AccessKind, access_row, cutoff, load_log, require_active, stored_head};

/// Rooms whose verified state is kept in memory.
pub const DEFAULT_ROOM_CACHE: usize = 256;
/// Rooms one user may create.
pub const MAX_ROOMS_PER_CREATOR: i64 = 10_000;
/// Epoch-key wraps one user's devices may have stored, as sender.
pub const MAX_ROOM_WRAPS_PER_SENDER: i64 = 1_000_000;
/// Most wraps served in one `RoomWraps` reply (the caller asks again from
/// the next epoch).
pub const MAX_WRAPS_PER_REPLY: i64 = 2048;

/// Verified room states by room id, the stored log's length and head
/// checked on every use (the database stays the truth).
pub struct RoomCache {
    rooms: Mutex<HashMap<[u8; 32], VerifiedRoom>>,
    capacity: usize,
}

impl RoomCache {
    /// An empty cache of at most `capacity` rooms (0: caches nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn get(&self, id: &RoomId, len: u64, head: &[u8; 32]) -> Option<VerifiedRoom> {
        let rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        rooms
            .get(id.as_bytes())
            .filter(|r| r.len() == len && r.head() == head)
            .cloned()
    }

    fn put(&self, room: VerifiedRoom) {
        if self.capacity == 0 {
            return;
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if rooms.len() >= self.capacity && !rooms.contains_key(room.id().as_bytes()) {
            // Any room: a miss only costs one verification of a stored log.
            if let Some(k) = rooms.keys().next().copied() {
                rooms.remove(&k);
            }
        }
        rooms.insert(*room.id().as_bytes(), room);
    }
}

fn room_error(e: &ward_core::RoomError) -> RequestError {
    RequestError::new(
        ErrorCode::InvalidStatement,
        format!("room entry refused: {e}"),
    )
}

fn not_found() -> RequestError {
    RequestError::new(ErrorCode::NotFound, "no such room, or not readable by you")
}

fn decode_statement(entry: &SignedRoomStatement) -> Result<RoomStatement, RequestError> {
    decode_bounded(&entry.statement, MAX_ROOM_STATEMENT_BYTES)
        .map_err(|_| RequestError::new(ErrorCode::InvalidStatement, "undecodable room statement"))
}

/// The verified user logs of `users`, from the stored (verified) logs:
/// cached, else verified once. Users without a log are left out (the
/// verifier then says `UnknownAuthor`).
fn resolver(
    conn: &Connection,
    cache: &VerifiedCache,
    root: &SigningPublicKey,
    users: &BTreeSet<String>,
) -> Result<BTreeMap<String, VerifiedUser>, RequestError> {
    let mut out = BTreeMap::new();
    for u in users {
        let (len, head) = stored_head(conn, u)?;
        if len == 0 {
            continue;
        }
        let user = match cache.get(u, len, &head) {
            Some(user) => user,
            None => {
                let log = load_log(conn, u)?;
                cache.count_verified(log.len());
                let user = verify_log(root, u, &log).map_err(|e| {
                    StorageError::Corrupt(format!("stored log of {u:?} does not verify: {e}"))
                })?;
                cache.put(user.clone());
                user
            }
        };
        out.insert(u.clone(), user);
    }
    Ok(out)
}

pub(crate) fn load_room_log(
    conn: &Connection,
    room: &RoomId,
) -> Result<Vec<(SignedRoomStatement, String)>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT statement, signature, author_user FROM room_entries WHERE room_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![room.as_bytes().as_slice()], |r| {
        Ok((
            SignedRoomStatement {
                statement: r.get(0)?,
                signature: r.get(1)?,
            },
            r.get(2)?,
        ))
    })?;
    rows.collect()
}

/// The stored length and head of a room's log; `None` if no such room.
fn room_head(conn: &Connection, room: &RoomId) -> Result<Option<(u64, [u8; 32])>, RequestError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT log_len, head FROM rooms WHERE room_id = ?1",
            params![room.as_bytes().as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => Ok(None),
        Some((len, head)) => {
            let head: [u8; 32] = head
                .try_into()
                .map_err(|_| StorageError::Corrupt("room head".into()))?;
            Ok(Some((len.max(0) as u64, head)))
        }
    }
}

/// The verified state of a stored room log: cached, else verified once.
fn verified_room(
    conn: &Connection,
    rooms: &RoomCache,
    users: &VerifiedCache,
    root: &SigningPublicKey,
    room: &RoomId,
    (len, head): (u64, [u8; 32]),
) -> Result<VerifiedRoom, RequestError> {
    if let Some(r) = rooms.get(room, len, &head) {
        return Ok(r);
    }
    let stored = load_room_log(conn, room)?;
    let authors: BTreeSet<String> = stored.iter().map(|(_, a)| a.clone()).collect();
    let resolver = resolver(conn, users, root, &authors)?;
    let entries: Vec<SignedRoomStatement> = stored.into_iter().map(|(e, _)| e).collect();
    let verified = verify_room_log(Some(room), &entries, &resolver).map_err(|e| {
        StorageError::Corrupt(format!("stored log of room {room:?} does not verify: {e}"))
    })?;
    if verified.len() != len || verified.head() != &head {
        return Err(
            StorageError::Corrupt(format!("room {room:?}: head does not match its log")).into(),
        );
    }
    rooms.put(verified.clone());
    Ok(verified)
}

/// Records what an applied entry changed: who may read the log, the new
/// epoch and the key its members are listed with.
fn record_entry(
    tx: &Connection,
    before: Option<&VerifiedRoom>,
    after: &VerifiedRoom,
) -> Result<(), rusqlite::Error> {
    let id = after.id().as_bytes().as_slice();
    let seq = after.len() - 1;
    let old: BTreeSet<&String> = before
        .map(|b| b.members().keys().collect())
        .unwrap_or_default();
    let new: BTreeSet<&String> = after.members().keys().collect();
    for gone in old.difference(&new) {
        // A former member reads the log up to the entry that ended its stint.
        tx.prepare_cached(
            "UPDATE room_access SET visible_len = ?3 WHERE room_id = ?1 AND user_id = ?2",
        )?
        .execute(params![id, gone, (seq + 1) as i64])?;
    }
    for came in new.difference(&old) {
        tx.prepare_cached(
            "INSERT INTO room_access (room_id, user_id, visible_len) VALUES (?1, ?2, NULL)
             ON CONFLICT (room_id, user_id) DO UPDATE SET visible_len = NULL",
        )?
        .execute(params![id, came])?;
    }
    let epochs_before = before.map_or(0, |b| b.epochs().len());
    if after.epochs().len() > epochs_before {
        let e = after.current_epoch();
        let key = after
            .current_epoch_key()
            .map(|k| k.id().as_bytes().to_vec())
            .unwrap_or_default();
        tx.prepare_cached(
            "INSERT INTO room_epochs (room_id, epoch, epoch_key) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![id, e as i64, key])?;
        // An entry that starts an epoch lists every member with the key the
        // epoch is wrapped to (§17.3, "Applying an epoch").
        for (user, m) in after.members() {
            tx.prepare_cached(
                "INSERT INTO room_epoch_members (room_id, epoch, user_id, user_key)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                id,
                e as i64,
                user,
                m.user_key.as_bytes().as_slice()
            ])?;
        }
    }
    tx.prepare_cached("UPDATE rooms SET log_len = ?2, head = ?3, epoch = ?4 WHERE room_id = ?1")?
        .execute(params![
            id,
            after.len() as i64,
            after.head().as_slice(),
            after.current_epoch() as i64
        ])?;
    Ok(())
}

/// Whether `wrap` (already shaped) may be stored for `user` (§17.11).
fn wrap_allowed(
    tx: &Connection,
    room: &VerifiedRoom,
    user: &str,
    wrap: &RoomKeyWrap,
) -> Result<Result<(), &'static str>, rusqlite::Error> {
    let committed = usize::try_from(wrap.epoch)
        .ok()
        .and_then(|e| room.epochs().get(e))
        .is_some_and(|e| e.public_key.id().as_bytes().as_slice() == wrap.epoch_key.as_slice());
    if !committed {
        return Ok(Err("no such epoch key in the room's log"));
    }
    let listed = tx
        .prepare_cached(
            "SELECT 1 FROM room_epoch_members
             WHERE room_id = ?1 AND epoch = ?2 AND user_id = ?3 AND user_key = ?4",
        )?
        .query_row(
            params![
                room.id().as_bytes().as_slice(),
                wrap.epoch as i64,
                user,
                wrap.recipient_key
            ],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if listed {
        return Ok(Ok(()));
    }
    // WHOLE_HISTORY: a member added later gets every earlier epoch, to the
    // key its addition lists (its current listed key).
    let history = room.policy() == HistoryPolicy::WholeHistory
        && room
            .members()
            .get(user)
            .is_some_and(|m| m.user_key.as_bytes().as_slice() == wrap.recipient_key.as_slice());
    if history {
        return Ok(Ok(()));
    }
    Ok(Err("not a member the epoch lists with that key"))
}

/// Appends room entries and stores wraps, all or nothing (SECURITY.md
/// §17.11). Returns the log's length after it and the wraps accepted.
#[allow(clippy::too_many_arguments)]
pub fn append_room(
    conn: &mut Connection,
    rooms: &RoomCache,
    users: &VerifiedCache,
    root: &SigningPublicKey,
    now: u64,
    caller_user: &str,
    caller_device: &SigningPublicKey,
    req: &AppendRoom,
) -> Result<RoomAppended, RequestError> {
    let id = RoomId::from_slice(&req.room_id).ok_or_else(|| RequestError::malformed("room id"))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    require_active(&tx, caller_user, caller_device)?;
    let stored = room_head(&tx, &id)?;
    let mut state = match stored {
        Some(h) => Some(verified_room(&tx, rooms, users, root, &id, h)?),
        None => None,
    };
    let len = stored.map_or(0, |(l, _)| l);
    // Entries already stored identically are a retry; a different one at a
    // taken position is a conflict.
    let mut new = Vec::new();
    for (i, entry) in req.entries.iter().enumerate() {
        let st = decode_statement(entry)?;
        if st.seq < len {
            let existing: Option<(Vec<u8>, Vec<u8>)> = tx
                .query_row(
                    "SELECT statement, signature FROM room_entries WHERE room_id = ?1 AND seq = ?2",
                    params![id.as_bytes().as_slice(), st.seq as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if existing.is_some_and(|(s, g)| s == entry.statement && g == entry.signature) {
                continue;
            }
            return Err(RequestError::new(
                ErrorCode::Conflict,
                format!(
                    "entry {i}: position {} is taken; fetch the log and retry",
                    st.seq
                ),
            ));
        }
        // Entries are appended by their author's own session: the keyserver
        // then knows the signing device is active now, not only at the
        // user-log length the entry cites (§17.9).
        if st.author_user_id != caller_user || st.author_device != caller_device.as_bytes() {
            return Err(RequestError::forbidden(format!(
                "entry {i}: a room entry is appended by the device that signed it"
            )));
        }
        new.push((entry, st));
    }
    let resolve: BTreeSet<String> = [caller_user.to_owned()].into();
    let resolver = resolver(&tx, users, root, &resolve)?;
    for (entry, st) in &new {
        let next = match &state {
            None => {
                let created = VerifiedRoom::from_creation(Some(&id), entry, &resolver)
                    .map_err(|e| room_error(&e))?;
                let created_by_caller: i64 = tx
                    .prepare_cached("SELECT count(*) FROM rooms WHERE creator = ?1")?
                    .query_row(params![caller_user], |r| r.get(0))?;
                if created_by_caller >= MAX_ROOMS_PER_CREATOR {
                    return Err(RequestError::new(
                        ErrorCode::QuotaExceeded,
                        format!("at most {MAX_ROOMS_PER_CREATOR} rooms per creator"),
                    ));
                }
                let policy = match created.policy() {
                    HistoryPolicy::FromJoin => 1,
                    HistoryPolicy::WholeHistory => 2,
                };
                tx.execute(
                    "INSERT INTO rooms (room_id, creator, policy, log_len, head, epoch, created_at)
                     VALUES (?1, ?2, ?3, 0, ?4, 0, ?5)",
                    params![
                        id.as_bytes().as_slice(),
                        caller_user,
                        policy,
                        created.head().as_slice(),
                        now as i64
                    ],
                )?;
                created
            }
            Some(s) => {
                let mut n = s.clone();
                n.apply(entry, &resolver).map_err(|e| room_error(&e))?;
                n
            }
        };
        // Keys an entry lists for members must be their current user keys
        // here: a wrap to an older key could be opened by a revoked device.
        for (user, m) in next.members() {
            let listed_before = state
                .as_ref()
                .and_then(|s| s.members().get(user))
                .is_some_and(|b| b.user_key == m.user_key);
            if listed_before {
                continue;
            }
            let current: Option<Vec<u8>> = tx
                .prepare_cached("SELECT current_key FROM users WHERE user_id = ?1")?
                .query_row(params![user], |r| r.get(0))
                .optional()?;
            if current.as_deref() != Some(m.user_key.as_bytes().as_slice()) {
                return Err(RequestError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{user:?} is listed with a key that is not its current one; refresh its log"
                    ),
                ));
            }
        }
        tx.prepare_cached(
            "INSERT INTO room_entries (room_id, seq, statement, signature, entry_hash, author_user, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            id.as_bytes().as_slice(),
            st.seq as i64,
            entry.statement,
            entry.signature,
            room_entry_hash(entry).as_slice(),
            caller_user,
            now as i64
        ])?;
        record_entry(&tx, state.as_ref(), &next)?;
        state = Some(next);
    }
    let Some(state) = state else {
        return Err(not_found());
    };
    let mut count = 0u32;
    if !req.wraps.is_empty() {
        if !state.is_member(caller_user) {
            return Err(RequestError::forbidden(
                "only a current member stores wraps",
            ));
        }
        let mut inserted = 0i64;
        for (i, w) in req.wraps.iter().enumerate() {
            let wrap = w
                .wrap
                .as_ref()
                .ok_or_else(|| RequestError::malformed(format!("wrap {i}: missing")))?;
            if wrap.room_id != id.as_bytes() {
                return Err(RequestError::malformed(format!("wrap {i}: another room")));
            }
            if let Err(why) = wrap_allowed(&tx, &state, &w.recipient_user_id, wrap)? {
                return Err(RequestError::forbidden(format!("wrap {i}: {why}")));
            }
            let existing: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = tx
                .prepare_cached(
                    "SELECT epoch_key, enc, ciphertext FROM room_wraps
                     WHERE room_id = ?1 AND recipient_user = ?2 AND epoch = ?3 AND recipient_key = ?4",
                )?
                .query_row(
                    params![
                        id.as_bytes().as_slice(),
                        w.recipient_user_id,
                        wrap.epoch as i64,
                        wrap.recipient_key
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match existing {
                Some((k, e, c)) if k == wrap.epoch_key && e == wrap.enc && c == wrap.ciphertext => {
                }
                // Another wrap of the same epoch key to the same key is as
                // good (HPKE is randomised); the first one stays.
                Some(_) => {}
                None => {
                    tx.prepare_cached(
                        "INSERT INTO room_wraps (room_id, epoch, recipient_user, recipient_key, epoch_key,
                                                 enc, ciphertext, sender_user, sender_device, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?
                    .execute(params![
                        id.as_bytes().as_slice(),
                        wrap.epoch as i64,
                        w.recipient_user_id,
                        wrap.recipient_key,
                        wrap.epoch_key,
                        wrap.enc,
                        wrap.ciphertext,
                        caller_user,
                        caller_device.as_bytes().as_slice(),
                        now as i64
                    ])?;
                    inserted += 1;
                }
            }
            count += 1;
        }
        let stored: i64 = tx
            .prepare_cached("SELECT count(*) FROM room_wraps WHERE sender_user = ?1")?
            .query_row(params![caller_user], |r| r.get(0))?;
        if stored > MAX_ROOM_WRAPS_PER_SENDER {
            return Err(RequestError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "room-wrap quota: {} stored, at most {MAX_ROOM_WRAPS_PER_SENDER} per user",
                    stored - inserted
                ),
            ));
        }
    }
    tx.commit()?;
    let len = state.len();
    rooms.put(state);
    Ok(RoomAppended { len, wraps: count })
}

/// How much of a room's log `user` may read: `None` if nothing.
fn readable_len(conn: &Connection, room: &RoomId, user: &str) -> Result<Option<u64>, RequestError> {
    let row: Option<(Option<i64>, i64)> = conn
        .query_row(
            "SELECT a.visible_len, r.log_len FROM room_access a JOIN rooms r ON r.room_id = a.room_id
             WHERE a.room_id = ?1 AND a.user_id = ?2",
            params![room.as_bytes().as_slice(), user],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map(|(visible, len)| visible.unwrap_or(len).min(len).max(0) as u64))
}

/// Entries of the room's log from `from_seq`, as many as fit `max_bytes`
/// (at least one), for a user who may read them.
pub fn get_room_log(
    conn: &mut Connection,
    caller_user: &str,
    caller_device: &SigningPublicKey,
    room_id: &[u8],
    from_seq: u64,
    max_bytes: usize,
) -> Result<RoomLogPage, RequestError> {
    let id = RoomId::from_slice(room_id).ok_or_else(|| RequestError::malformed("room id"))?;
    let tx = conn.transaction()?;
    require_active(&tx, caller_user, caller_device)?;
    let len = readable_len(&tx, &id, caller_user)?.ok_or_else(not_found)?;
    let mut page = RoomLogPage {
        from_seq,
        len,
        entries: Vec::new(),
    };
    let mut total = 0usize;
    let mut stmt = tx.prepare_cached(
        "SELECT statement, signature FROM room_entries
         WHERE room_id = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq",
    )?;
    let rows = stmt.query_map(
        params![
            id.as_bytes().as_slice(),
            i64::try_from(from_seq).unwrap_or(i64::MAX),
            len as i64
        ],
        |r| {
            Ok(SignedRoomStatement {
                statement: r.get(0)?,
                signature: r.get(1)?,
            })
        },
    )?;
    for row in rows {
        let e = row?;
        total = total.saturating_add(e.statement.len() + e.signature.len() + 16);
        if total > max_bytes && !page.entries.is_empty() {
            break;
        }
        page.entries.push(e);
    }
    Ok(page)
}

/// The epoch-key wraps of a room addressed to the caller's user, epochs
/// `>= from_epoch`, with their access records (committed before serving).
pub fn get_room_wraps(
    conn: &mut Connection,
    caller_user: &str,
    caller_device: &SigningPublicKey,
    now: u64,
    room_id: &[u8],
    from_epoch: u64,
) -> Result<(RoomWraps, Vec<AccessRow>), RequestError> {
    let id = RoomId::from_slice(room_id).ok_or_else(|| RequestError::malformed("room id"))?;
    let tx = conn.transaction()?;
    require_active(&tx, caller_user, caller_device)?;
    let mut stmt = tx.prepare_cached(
        "SELECT epoch, epoch_key, recipient_key, enc, ciphertext FROM room_wraps
         WHERE room_id = ?1 AND recipient_user = ?2 AND epoch >= ?3 ORDER BY epoch LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![
            id.as_bytes().as_slice(),
            caller_user,
            i64::try_from(from_epoch).unwrap_or(i64::MAX),
            MAX_WRAPS_PER_REPLY
        ],
        |r| {
            Ok(RoomKeyWrap {
                room_id: id.as_bytes().to_vec(),
                epoch: r.get::<_, i64>(0)?.max(0) as u64,
                epoch_key: r.get(1)?,
                recipient_key: r.get(2)?,
                enc: r.get(3)?,
                ciphertext: r.get(4)?,
            })
        },
    )?;
    let mut out = RoomWraps::default();
    let mut access = Vec::new();
    for row in rows {
        let w = row?;
        let mut object = id.as_bytes().to_vec();
        object.extend_from_slice(&w.epoch.to_be_bytes());
        access.push(access_row(
            now,
            caller_user,
            caller_device,
            AccessKind::RoomWrap,
            &object,
        ));
        out.wraps.push(w);
    }
    Ok((out, access))
}

/// Stores a room message's resource key, wrapped once to the room's
/// current epoch key, from a current member (SECURITY.md §17.11).
#[allow(clippy::too_many_arguments)]
pub fn put_room_key(
    conn: &mut Connection,
    caller_user: &str,
    caller_device: &SigningPublicKey,
    now: u64,
    quotas: &Quotas,
    room_id: &[u8],
    epoch: u64,
    key: &WrappedKey,
) -> Result<u32, RequestError> {
    let id = RoomId::from_slice(room_id).ok_or_else(|| RequestError::malformed("room id"))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    require_active(&tx, caller_user, caller_device)?;
    let member = tx
        .query_row(
            "SELECT 1 FROM room_access WHERE room_id = ?1 AND user_id = ?2 AND visible_len IS NULL",
            params![id.as_bytes().as_slice(), caller_user],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !member {
        return Err(not_found());
    }
    let current: (i64, Vec<u8>) = tx.query_row(
        "SELECT r.epoch, e.epoch_key FROM rooms r JOIN room_epochs e
           ON e.room_id = r.room_id AND e.epoch = r.epoch WHERE r.room_id = ?1",
        params![id.as_bytes().as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if current.0 != epoch as i64 || current.1 != key.recipient_key {
        // Sealed before a rotation the sender had not seen: it reseals.
        return Err(RequestError::new(
            ErrorCode::Conflict,
            "not the room's current epoch key; refresh the room's log",
        ));
    }
    // An identical key from the same device is a retry; anything else
    // under this resource id is a conflict.
    let same: Option<bool> = tx
        .query_row(
            "SELECT room_id = ?2 AND enc = ?3 AND ciphertext = ?4 AND sender_user = ?5
                    AND sender_device = ?6
             FROM room_keys WHERE resource_id = ?1",
            params![
                key.resource_id,
                id.as_bytes().as_slice(),
                key.enc,
                key.ciphertext,
                caller_user,
                caller_device.as_bytes().as_slice()
            ],
            |r| r.get(0),
        )
        .optional()?;
    match same {
        Some(true) => return Ok(1),
        Some(false) => {
            return Err(RequestError::new(
                ErrorCode::Conflict,
                "another key is stored for this resource",
            ));
        }
        None => {}
    }
    let cutoff = cutoff(now, quotas);
    tx.prepare_cached("DELETE FROM room_keys WHERE sender_user = ?1 AND created_at < ?2")?
        .execute(params![caller_user, cutoff])?;
    // And a bounded number of anyone's, oldest first, as for wrapped keys.
    tx.prepare_cached(
        "DELETE FROM room_keys WHERE rowid IN
         (SELECT rowid FROM room_keys WHERE created_at < ?1 ORDER BY created_at LIMIT 256)",
    )?
    .execute(params![cutoff])?;
    let stored: i64 = tx
        .prepare_cached("SELECT count(*) FROM room_keys WHERE sender_user = ?1")?
        .query_row(params![caller_user], |r| r.get(0))?;
    if stored.max(0) as u64 >= quotas.wrapped_keys_per_user {
        return Err(RequestError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "room-key quota: {stored} stored, at most {} per user within the retention",
                quotas.wrapped_keys_per_user
            ),
        ));
    }
    tx.execute(
        "INSERT INTO room_keys (resource_id, room_id, epoch, recipient_key, enc, ciphertext,
                                sender_user, sender_device, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            key.resource_id,
            id.as_bytes().as_slice(),
            epoch as i64,
            key.recipient_key,
            key.enc,
            key.ciphertext,
            caller_user,
            caller_device.as_bytes().as_slice(),
            now as i64
        ],
    )?;
    tx.commit()?;
    Ok(1)
}

/// Room message keys by resource id, served only to a user holding a wrap
/// of the key's epoch: exactly the readers of the message.
pub fn get_room_keys(
    conn: &mut Connection,
    caller_user: &str,
    caller_device: &SigningPublicKey,
    now: u64,
    room_id: &[u8],
    resource_ids: &[Vec<u8>],
) -> Result<(WrappedKeys, Vec<AccessRow>), RequestError> {
    let id = RoomId::from_slice(room_id).ok_or_else(|| RequestError::malformed("room id"))?;
    let tx = conn.transaction()?;
    require_active(&tx, caller_user, caller_device)?;
    let mut out = WrappedKeys::default();
    let mut access = Vec::new();
    let mut seen = BTreeSet::new();
    for rid in resource_ids {
        if !seen.insert(rid.clone()) {
            continue;
        }
        let found: Option<WrappedKey> = tx
            .prepare_cached(
                "SELECT k.recipient_key, k.enc, k.ciphertext FROM room_keys k
                 WHERE k.resource_id = ?1 AND k.room_id = ?2 AND EXISTS (
                   SELECT 1 FROM room_wraps w WHERE w.room_id = k.room_id AND w.epoch = k.epoch
                   AND w.recipient_user = ?3)",
            )?
            .query_row(params![rid, id.as_bytes().as_slice(), caller_user], |r| {
                Ok(WrappedKey {
                    resource_id: rid.clone(),
                    recipient_key: r.get(0)?,
                    enc: r.get(1)?,
                    ciphertext: r.get(2)?,
                })
            })
            .optional()?;
        match found {
            Some(k) => {
                access.push(access_row(
                    now,
                    caller_user,
                    caller_device,
                    AccessKind::RoomKey,
                    rid,
                ));
                out.keys.push(k);
            }
            None => out.missing.push(rid.clone()),
        }
    }
    Ok((out, access))
}

/// The rooms `caller_user` is a current member of, with their lengths.
pub fn list_rooms(
    conn: &mut Connection,
    caller_user: &str,
    caller_device: &SigningPublicKey,
) -> Result<Vec<RoomHead>, RequestError> {
    let tx = conn.transaction()?;
    require_active(&tx, caller_user, caller_device)?;
    let mut stmt = tx.prepare_cached(
        "SELECT r.room_id, r.log_len FROM room_access a JOIN rooms r ON r.room_id = a.room_id
         WHERE a.user_id = ?1 AND a.visible_len IS NULL ORDER BY r.created_at, r.room_id LIMIT 4096",
    )?;
    let rows = stmt.query_map(params![caller_user], |r| {
        Ok(RoomHead {
            room_id: r.get(0)?,
            len: r.get::<_, i64>(1)?.max(0) as u64,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
#[path = "room_storage_tests.rs"]
mod tests;
