//! Relay-verified room fan-out (SECURITY.md §17.10).
//!
//! The keyserver's link sends every room log that grows (a `LinkNotice`
//! with `room_id` and `room_entries`). The relay does not trust it: it
//! verifies the log with `ward-core`'s room verifier against the user logs
//! it holds, exactly as members do, refuses rollbacks and forks, and keeps
//! the longest verified log per room, in memory and in `room_logs`. A room
//! `Send` names the room and no recipients: the relay queues the payload for
//! every active device of every current member but the sending device.
//! A sender can then neither add non-members' mailboxes nor leave members
//! out, and a removed member's devices get nothing sent after the removal.
//!
//! Stores are compare-and-swap on the stored length, like user logs
//! (`crate::logs`); the relay stores its own verified prefix followed by the
//! verified suffix, never bytes it did not verify.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tracing::{info, warn};
use ward_core::RoomError;
use ward_core::chain::VerifiedUser;
use ward_core::room::{RoomId, VerifiedRoom, verify_room_log};
use ward_proto::decode_bounded;
use ward_proto::v1::{ErrorCode, RoomStatement, SignedRoomStatement, room_statement};

use crate::state::Shared;
use crate::storage::{self, Mailbox};

/// Largest room statement (`MAX_ROOM_STATEMENT_BYTES`, §17.2).
const MAX_ROOM_STATEMENT_BYTES: usize = 262_144;

/// A room's log as the relay verified it.
#[derive(Debug)]
pub struct RelayRoom {
    /// The verified state: members, epochs.
    pub room: VerifiedRoom,
    /// The relay's own verified entries (what it stores).
    pub entries: Vec<SignedRoomStatement>,
}

/// Verified rooms by id, and the signal that a room notice was applied
/// (for `Send`s waiting on a room the link has not brought yet).
///
/// Bounded by [`MAX_CACHED_ROOMS`]: a room costs its log (a few KiB per
/// epoch, about 65 KiB for a 1,000-member room's creation), and a room not
/// cached is loaded from `room_logs` and verified again on its next `Send`
/// (well under a millisecond for 1,000 members, BENCHMARKS.md), so the
/// relay's memory does not grow with the organisation's room count.
pub struct RoomCache {
    rooms: Mutex<HashMap<[u8; 32], Arc<RelayRoom>>>,
    capacity: usize,
    applied: watch::Sender<u64>,
}

/// Rooms kept verified in memory by default.
pub const MAX_CACHED_ROOMS: usize = 10_000;

impl Default for RoomCache {
    fn default() -> Self {
        Self::with_capacity(MAX_CACHED_ROOMS)
    }
}

impl RoomCache {
    /// A cache of at most `capacity` rooms (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            applied: watch::channel(0).0,
        }
    }

    /// How many rooms are cached.
    pub fn len(&self) -> usize {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no room is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, id: &[u8; 32]) -> Option<Arc<RelayRoom>> {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Keeps `room` unless a longer one is cached (logs only grow).
    fn offer(&self, id: [u8; 32], room: Arc<RelayRoom>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if rooms
            .get(&id)
            .is_some_and(|r| r.room.len() > room.room.len())
        {
            return;
        }
        if rooms.len() >= self.capacity && !rooms.contains_key(&id) {
            // Full: one other room makes way (whichever the map yields
            // first; it is reloaded from disk when it is next used).
            if let Some(k) = rooms.keys().next().copied() {
                rooms.remove(&k);
            }
        }
        rooms.insert(id, room);
    }

    fn forget(&self, id: &[u8; 32]) {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Subscribes to applied room notices.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn notice_applied(&self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Why a room log from the link was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RoomLogError {
    /// The notice is not a room log (bad id, no entries).
    #[error("malformed room notice: {0}")]
    Malformed(&'static str),
    /// The log does not verify against the user logs the relay holds, or
    /// rolls back or forks the relay's verified log.
    #[error("room log refused: {0}")]
    Refused(#[from] RoomError),
    /// The relay failed (storage, a lost race too often): not the log's fault.
    #[error("the relay could not read or store a room log")]
    Internal,
}

/// Every user id a room log names (authors and members): the user logs
/// its verification needs. An undecodable statement names none; the
/// verifier refuses it.
pub(crate) fn named_users(entries: &[SignedRoomStatement]) -> BTreeSet<String> {
    use room_statement::Body;
    let mut users = BTreeSet::new();
    for e in entries {
        let Ok(st) = decode_bounded::<RoomStatement>(&e.statement, MAX_ROOM_STATEMENT_BYTES) else {
            continue;
        };
        users.insert(st.author_user_id.clone());
        let mut epoch = None;
        match st.body {
            Some(Body::Creation(c)) => epoch = c.epoch,
            Some(Body::Add(a)) => {
                users.extend(a.members.into_iter().map(|m| m.user_id));
                epoch = a.epoch;
            }
            Some(Body::Remove(r)) => {
                users.insert(r.user_id);
                epoch = r.epoch;
            }
            Some(Body::GrantAdmin(g)) => {
                users.insert(g.user_id);
            }
            Some(Body::RevokeAdmin(r)) => {
                users.insert(r.user_id);
            }
            Some(Body::Leave(l)) if !l.successor.is_empty() => {
                users.insert(l.successor);
            }
            Some(Body::Rotation(r)) => epoch = r.epoch,
            _ => {}
        }
        if let Some(ep) = epoch {
            users.extend(ep.members.into_iter().map(|m| m.user_id));
        }
    }
    users.retain(|u| ward_core::ids::valid_user_id(u));
    users
}

/// The relay's verified logs of `users` (those it holds; a missing one
/// makes the verification fail with a typed error naming the entry).
async fn resolver(
    shared: &Shared,
    users: BTreeSet<String>,
) -> Result<HashMap<String, VerifiedUser>, RoomLogError> {
    let mut out = HashMap::with_capacity(users.len());
    for u in users {
        match crate::logs::refresh(shared, &u, Vec::new()).await {
            Ok(v) => {
                out.insert(u, v);
            }
            Err(ErrorCode::UnknownUser) => {}
            Err(ErrorCode::Internal | ErrorCode::Conflict) => return Err(RoomLogError::Internal),
            // A stored user log that no longer verifies: treated as absent.
            Err(_) => {}
        }
    }
    Ok(out)
}

/// The relay's verified room, from the cache or (verified again) from disk.
pub async fn known(shared: &Shared, id: &[u8; 32]) -> Result<Option<Arc<RelayRoom>>, RoomLogError> {
    if let Some(r) = shared.rooms.get(id) {
        return Ok(Some(r));
    }
    let key = *id;
    let stored = shared
        .read(move |c| storage::load_room_log(c, &key))
        .await
        .map_err(|e| {
            warn!(error = %e, "reading a stored room log failed");
            RoomLogError::Internal
        })?;
    let Some(entries) = stored else {
        return Ok(None);
    };
    let users = resolver(shared, named_users(&entries)).await?;
    let room_id = RoomId(*id);
    let verified = tokio::task::spawn_blocking(move || {
        verify_room_log(Some(&room_id), &entries, &users).map(|room| RelayRoom { room, entries })
    })
    .await
    .map_err(|_| RoomLogError::Internal)?;
    match verified {
        Ok(r) => {
            let r = Arc::new(r);
            shared.rooms.offer(*id, r.clone());
            Ok(Some(r))
        }
        Err(e) => {
            // Tampered with, or a user log it needs is gone: the next notice
            // from the link must verify on its own and replaces it.
            warn!(error = %e, "a stored room log no longer verifies; ignoring it");
            Ok(None)
        }
    }
}

/// What applying a room log did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing new: the relay's log is as long.
    Unchanged,
    /// The relay's log grew to this many entries.
    Grew(u64),
}

/// Verifies a room log the link sent against the relay's and stores it if
/// it extends it.
pub async fn apply_notice(
    shared: &Shared,
    room_id: &[u8],
    entries: Vec<SignedRoomStatement>,
) -> Result<Applied, RoomLogError> {
    let id: [u8; 32] = room_id
        .try_into()
        .map_err(|_| RoomLogError::Malformed("room id must be 32 bytes"))?;
    if entries.is_empty() {
        return Err(RoomLogError::Malformed("no entries"));
    }
    let entries = Arc::new(entries);
    for _ in 0..4 {
        let known = known(shared, &id).await?;
        let users = resolver(shared, named_users(&entries)).await?;
        let prev_len = known.as_ref().map_or(0, |k| k.room.len());
        let presented = entries.clone();
        let verified =
            tokio::task::spawn_blocking(move || decide(&id, known.as_deref(), &presented, &users))
                .await
                .map_err(|_| RoomLogError::Internal)??;
        let Some(next) = verified else {
            return Ok(Applied::Unchanged);
        };
        let stored = shared
            .writer
            .store_room_log(id, prev_len, next.entries.clone())
            .await
            .map_err(|e| {
                warn!(error = %e, "storing a room log failed");
                RoomLogError::Internal
            })?;
        if !stored {
            shared.rooms.forget(&id);
            continue;
        }
        let len = next.room.len();
        shared.rooms.offer(id, Arc::new(next));
        shared.rooms.notice_applied();
        info!(len, "room log updated");
        return Ok(Applied::Grew(len));
    }
    Err(RoomLogError::Internal)
}

/// Judges a presented room log against the relay's (`known`): a room the
/// relay lacks is verified whole (entry 0 must be room `id`'s creation);
/// otherwise rollbacks and forks are refused and only the new entries are
/// verified. `None`: nothing new. The result keeps the relay's own prefix.
pub fn decide(
    id: &[u8; 32],
    known: Option<&RelayRoom>,
    presented: &[SignedRoomStatement],
    users: &HashMap<String, VerifiedUser>,
) -> Result<Option<RelayRoom>, RoomError> {
    match known {
        None => {
            let room = verify_room_log(Some(&RoomId(*id)), presented, users)?;
            Ok(Some(RelayRoom {
                room,
                entries: presented.to_vec(),
            }))
        }
        Some(k) => {
            let (room, suffix) = k.room.update_suffix(presented, users)?;
            if suffix.is_empty() {
                return Ok(None);
            }
            let mut own = k.entries.clone();
            own.extend_from_slice(suffix);
            Ok(Some(RelayRoom { room, entries: own }))
        }
    }
}

/// What a room `Send` names in the clear: the room and the epoch the
/// envelope header says its resource key is wrapped to (§17.6).
pub struct RoomSend<'a> {
    /// The room.
    pub room_id: [u8; 32],
    /// The header's epoch.
    pub epoch: u64,
    /// The header's `epoch_key` (key id of that epoch's public key).
    pub epoch_key: &'a [u8],
    /// `Send.room_log_len`: how long the sender's verified room log was when
    /// it sealed (0: no claim).
    pub log_len: u64,
}

/// The recipients of a room `Send` from `sender`: every active device of
/// every current member, but the sending device. Waits (at most half the
/// handshake timeout) for the link when the relay does not know the room
/// yet, the sender is not a member yet, the header names an epoch newer
/// than the relay's, or the sender's log is longer than the relay's: a client
/// that just created the room, was just added, just rotated or just added a
/// member (which may keep the epoch) is ahead of the link by a few
/// milliseconds, and fanning out to the relay's shorter log would skip the
/// new member. Still behind at the deadline: `UNAVAILABLE`, and the sender
/// retries; never a fan-out to fewer members than the sender sealed for.
pub async fn recipients(
    shared: &Shared,
    sender: &Mailbox,
    send: &RoomSend<'_>,
) -> Result<Vec<Mailbox>, (ErrorCode, &'static str)> {
    let mut applied = shared.rooms.subscribe();
    let deadline = tokio::time::Instant::now() + shared.config.limits.net.auth_timeout / 2;
    let room = loop {
        let room = known(shared, &send.room_id)
            .await
            .map_err(|_| (ErrorCode::Internal, "room log could not be read; retry"))?;
        let ahead = match &room {
            None => true,
            Some(r) => {
                !r.room.is_member(&sender.user_id)
                    || send.epoch > r.room.current_epoch()
                    || send.log_len > r.room.len()
            }
        };
        if !ahead {
            break room;
        }
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => continue,
            _ => break room,
        }
    };
    let behind = (
        ErrorCode::Unavailable,
        "the relay's room log is behind the sender's (the keyserver link is late); retry",
    );
    let Some(room) = room else {
        if send.log_len > 0 && shared.config.keyserver_link.is_some() {
            return Err(behind);
        }
        return Err((
            ErrorCode::NotFound,
            "unknown room: the relay has no verified log of it",
        ));
    };
    let room = &room.room;
    if send.log_len > room.len() {
        return Err(behind);
    }
    if !room.is_member(&sender.user_id) {
        return Err((ErrorCode::Forbidden, "not a member of the room"));
    }
    let current_key = room.current_epoch_key().map(|k| *k.id().as_bytes());
    if send.epoch != room.current_epoch()
        || current_key.as_ref().map(|k| &k[..]) != Some(send.epoch_key)
    {
        return Err((
            ErrorCode::Conflict,
            "the envelope is not sealed to the room's current epoch; refresh the room",
        ));
    }
    let mut out = Vec::new();
    for user in room.members().keys() {
        let devices = match crate::logs::active_devices(shared, user).await {
            Ok(d) => d,
            // Verified against this user's log when the room was: only a
            // stored log that vanished since lands here; nothing to queue.
            Err(ErrorCode::UnknownUser) => continue,
            Err(_) => return Err((ErrorCode::Internal, "a member's log could not be read")),
        };
        for device_id in devices {
            if *user == sender.user_id && device_id == sender.device_id {
                continue;
            }
            out.push(Mailbox {
                user_id: user.clone(),
                device_id,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "rooms_tests.rs"]
mod tests;
