//! Patient-case rooms on the client (SECURITY.md §17.12): create, add,
//! remove, leave, list, send and receive, over `ward-core`'s membership log.
//!
//! * **Trust.** A room's log is verified here, against the verified user
//!   logs of its authors ([`super::directory`]), and every later fetch must
//!   extend what was verified: a shorter log is a rollback, another entry at
//!   a known position a fork. Either is recorded in the store
//!   ([`crate::store::Store::set_room_fault`]) and the room refused from then
//!   on, across restarts, since the verified entries are stored too.
//! * **Keys.** Each epoch's private key (a 32-byte seed) reaches this user
//!   as a wrap to its user key, accepted only if it opens to the key the log
//!   commits to ([`VerifiedRoom::accept_epoch_wrap`]); seeds live only in
//!   the encrypted store and in zeroizing memory.
//! * **Sending.** The log is refreshed first (the last verified one is
//!   used when the keyserver is unreachable); if a member left (rotation
//!   pending) or a member's user key changed (`stale_members`), this device
//!   starts a new epoch before sealing. The message wraps its resource key
//!   once, to the epoch key ([`seal_to_room`]); one relay `Send` lists every
//!   active device of every member.
//! * **Receiving.** [`ReceivedEnvelope::open_in_room`] with the refreshed
//!   log: the sender must have been a member during the epoch it names.

use std::collections::{BTreeSet, HashMap};

use prost::Message as _;
use tokio::sync::Mutex as AsyncMutex;
use ward_core::chain::VerifiedUser;
use ward_core::envelope::{
    ContentType, ReceivedEnvelope, RoomAddress, RoomSealRequest, room_conversation_id, seal_to_room,
};
use ward_core::keys::KeyId;
use ward_core::room::{
    HistoryPolicy, MAX_ROOM_LOG_ENTRIES, MAX_ROOM_STATEMENT_BYTES, RoomAuthor, RoomChange,
    RoomKeyring, RoomMetadata, VerifiedRoom, create_room, decode_signed_room_statement,
    room_entry_hash, verify_room_log,
};
use ward_core::wrap::unwrap_room_resource_key;
use ward_core::{ConversationId, ResourceId, RoomError, RoomId};
use ward_proto::decode_bounded;
use ward_proto::v1::{AppendRoom, ErrorCode, RoomStatement, RoomWrapFor, SignedRoomStatement};
use zeroize::Zeroizing;

use super::error::{ClientError, Result};
use super::events::Event;
use super::relay::Backoff;
use super::send::{OutboxPayload, RoomKeyUpload};
use super::{Client, Inner, now_secs};
use crate::store::Message;

/// Wraps per `AppendRoom` (the keyserver's limit).
const WRAPS_PER_REQUEST: usize = 1024;
/// User logs per `GetLogs`: under the keyserver's default item limit (256),
/// so that a room of up to 1,024 members is fetched in a few requests.
const LOGS_PER_REQUEST: usize = 128;

/// A room as this device verified it ([`Client::rooms`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room's id.
    pub id: RoomId,
    /// Its conversation id (`room_id[0..16]`): its messages in
    /// [`Client::history`], and what [`Client::send_text`] takes.
    pub conversation_id: ConversationId,
    /// Its metadata, if this user holds the key it is sealed under.
    pub metadata: Option<RoomMetadata>,
    /// The current members, ascending by user id.
    pub members: Vec<RoomMemberInfo>,
    /// The history policy fixed at creation.
    pub policy: HistoryPolicy,
    /// The current epoch.
    pub epoch: u64,
    /// Entries in the verified log.
    pub len: u64,
    /// A member left and no new epoch started yet.
    pub rotation_pending: bool,
    /// Whether this user is a current member.
    pub is_member: bool,
    /// A rollback or fork recorded for this room (then it is refused).
    pub fault: Option<String>,
}

/// One current member of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMemberInfo {
    /// Its user id.
    pub user_id: String,
    /// Whether it is an admin (may add and remove).
    pub admin: bool,
}

/// The verified rooms held in memory, behind one lock that also serialises
/// every room operation of this client (a refresh and an append never
/// interleave).
pub(crate) struct RoomBook {
    rooms: AsyncMutex<HashMap<RoomId, VerifiedRoom>>,
}

impl RoomBook {
    pub(crate) fn new() -> Self {
        Self {
            rooms: AsyncMutex::new(HashMap::new()),
        }
    }
}

type Book = HashMap<RoomId, VerifiedRoom>;

fn room_err(room: RoomId, error: RoomError) -> ClientError {
    ClientError::Room { room, error }
}

/// The authors of a log's entries: the verifier needs their verified user
/// logs (M7), and nobody else's (a 1,000-member room is verified with the
/// logs of its few admins and rotating members).
fn authors(entries: &[SignedRoomStatement]) -> BTreeSet<String> {
    entries
        .iter()
        .filter_map(|e| {
            decode_bounded::<RoomStatement>(&e.statement, MAX_ROOM_STATEMENT_BYTES).ok()
        })
        .map(|st| st.author_user_id)
        .collect()
}

/// Verified user logs of `users`: fetched and verified, or those already
/// held when the keyserver is unreachable.
async fn users(inner: &Inner, users: &BTreeSet<String>) -> Result<HashMap<String, VerifiedUser>> {
    let ids: Vec<String> = users.iter().cloned().collect();
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(LOGS_PER_REQUEST) {
        let known = inner
            .directory
            .refresh_or_cached(&inner.store, &inner.keyserver, chunk)
            .await?;
        out.extend(
            known
                .into_iter()
                .map(|k| (k.user.user_id().to_owned(), k.user)),
        );
    }
    Ok(out)
}

/// The verified state of a room held in memory or in the store.
async fn load(inner: &Inner, book: &mut Book, id: &RoomId) -> Result<Option<VerifiedRoom>> {
    if let Some(r) = book.get(id) {
        return Ok(Some(r.clone()));
    }
    let rid = *id;
    let raw = inner.store.run(move |s| s.room_entries(&rid)).await?;
    if raw.is_empty() {
        return Ok(None);
    }
    let entries = raw
        .iter()
        .map(|b| decode_signed_room_statement(b))
        .collect::<core::result::Result<Vec<_>, _>>()
        .map_err(|e| room_err(*id, e))?;
    let resolver = users(inner, &authors(&entries)).await?;
    // Our own store verified it before storing; verifying again catches a
    // changed organisation root (as for user logs).
    let room = verify_room_log(Some(id), &entries, &resolver).map_err(|e| room_err(*id, e))?;
    book.insert(*id, room.clone());
    Ok(Some(room))
}

async fn fault(inner: &Inner, id: &RoomId, error: RoomError) -> ClientError {
    let rid = *id;
    let text = error.to_string();
    if let Err(e) = inner
        .store
        .run(move |s| s.set_room_fault(&rid, &text))
        .await
    {
        tracing::warn!(error = %e, "room: could not record a fault");
    }
    tracing::warn!(room = ?id, error = %error, "room log rolled back or forked");
    inner
        .emit(Event::RoomRejected {
            room_id: *id,
            reason: room_err(*id, error.clone()),
        })
        .await;
    room_err(*id, error)
}

async fn check_fault(inner: &Inner, id: &RoomId) -> Result<()> {
    let rid = *id;
    match inner.store.run(move |s| s.room_fault(&rid)).await? {
        Some(fault) => Err(ClientError::RoomCompromised { room: *id, fault }),
        None => Ok(()),
    }
}

/// The room watcher (`ClientConfig::room_refresh_interval`): asks the
/// keyserver which rooms this user is a current member of and at what
/// length, and refreshes every room whose length grew, that this device
/// does not know yet, or that it holds as a member but the keyserver no
/// longer lists (a removal: the refresh verifies it and reports it). Each
/// refresh verifies as any other does and emits `Event::RoomChanged`.
pub(crate) async fn watch(inner: std::sync::Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.config.room_refresh_interval).await;
        if super::revoked::is_revoked(&inner) {
            return;
        }
        if let Err(e) = watch_round(&inner).await {
            tracing::debug!(error = %e, "room check failed; retrying later");
        }
    }
}

async fn watch_round(inner: &Inner) -> Result<()> {
    let heads = inner.keyserver.list_rooms().await?;
    let listed: HashMap<RoomId, u64> = heads
        .iter()
        .filter_map(|h| RoomId::from_slice(&h.room_id).map(|id| (id, h.len)))
        .collect();
    let held = inner.store.run(|s| s.room_ids()).await?;
    let mut book = inner.rooms.rooms.lock().await;
    let mut stale = Vec::new();
    for (id, len) in &listed {
        let known = match load(inner, &mut book, id).await {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(room = ?id, error = %e, "room check: held state unreadable");
                continue;
            }
        };
        if known.is_none_or(|r| r.len() < *len) {
            stale.push(*id);
        }
    }
    for id in held.iter().filter(|id| !listed.contains_key(id)) {
        if let Ok(Some(r)) = load(inner, &mut book, id).await
            && r.is_member(&inner.user_id)
        {
            stale.push(*id);
        }
    }
    for id in stale {
        // A fault is recorded and reported by refresh itself; an error here
        // only waits for the next round.
        if let Err(e) = refresh(inner, &mut book, &id).await {
            tracing::debug!(room = ?id, error = %e, "room check: refresh failed");
        }
    }
    Ok(())
}

/// The unnamed room (what [`Client::create_conversation`] makes for more
/// than one other member) whose current members are exactly `members`, as
/// this device last verified it. Named rooms (a patient case) are never
/// picked: "send to Dr X and Dr Y" must not land in a case's room.
pub(crate) async fn unnamed_room_with(
    inner: &Inner,
    members: &BTreeSet<String>,
) -> Result<Option<RoomId>> {
    let mut book = inner.rooms.rooms.lock().await;
    let ids = inner.store.run(|s| s.room_ids()).await?;
    for id in ids {
        let Ok(Some(room)) = load(inner, &mut book, &id).await else {
            continue;
        };
        if room.members().len() != members.len()
            || !room.members().keys().all(|m| members.contains(m))
        {
            continue;
        }
        let ring = keyring(inner, &room).await?;
        if room
            .metadata(&ring)
            .is_ok_and(|m| m.name.is_empty() && m.case_reference.is_empty() && m.topic.is_empty())
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Whether this device keeps `id`'s messages as signed, for a history
/// forward (§17.13): only a `WholeHistory` room's are ever forwarded. The
/// room's verified state is in memory after the message that asks.
pub(crate) async fn keeps_history(inner: &Inner, id: &RoomId) -> bool {
    let mut book = inner.rooms.rooms.lock().await;
    matches!(
        load(inner, &mut book, id).await,
        Ok(Some(r)) if r.policy() == HistoryPolicy::WholeHistory
    )
}

/// The room's verified state, refreshed from the keyserver (the history
/// receiver's membership check, §17.13).
pub(crate) async fn refreshed(inner: &Inner, id: &RoomId) -> Result<VerifiedRoom> {
    let mut book = inner.rooms.rooms.lock().await;
    refresh(inner, &mut book, id).await
}

/// Fetches the room's log from the keyserver and verifies what is new
/// (see the module docs), stores it, reports membership changes, and
/// fetches the epoch-key wraps this user lacks.
async fn refresh(inner: &Inner, book: &mut Book, id: &RoomId) -> Result<VerifiedRoom> {
    check_fault(inner, id).await?;
    let known = load(inner, book, id).await?;
    let known_len = known.as_ref().map_or(0, VerifiedRoom::len);
    let from = known_len.saturating_sub(1);
    let room_bytes = id.as_bytes().to_vec();
    let first = match inner.keyserver.get_room_log(room_bytes.clone(), from).await {
        Err(ClientError::Keyserver {
            code: ErrorCode::NotFound,
            ..
        }) => return Err(ClientError::UnknownRoom),
        other => other?,
    };
    let served_len = first.len;
    let mut served = first.entries;
    if let Some(k) = &known {
        if served_len < k.len() {
            let e = RoomError::Rollback {
                known: k.len(),
                served: served_len,
            };
            return Err(fault(inner, id, e).await);
        }
        if served.first().map(room_entry_hash) != Some(*k.head()) {
            return Err(fault(inner, id, RoomError::Fork { seq: k.len() - 1 }).await);
        }
        served.remove(0);
    }
    // Further pages, until the length the keyserver announced.
    while known_len + (served.len() as u64) < served_len {
        if served.len() > MAX_ROOM_LOG_ENTRIES {
            return Err(room_err(*id, RoomError::Malformed("log too long")));
        }
        let next = known_len + served.len() as u64;
        let page = inner
            .keyserver
            .get_room_log(room_bytes.clone(), next)
            .await?;
        if page.entries.is_empty() {
            return Err(ClientError::Protocol("empty room log page"));
        }
        served.extend(page.entries);
    }
    let mut room = match known {
        Some(k) if served.is_empty() => k,
        known => {
            let resolver = users(inner, &authors(&served)).await?;
            let verified = match &known {
                Some(k) => k.apply_suffix(&served, &resolver),
                None => verify_room_log(Some(id), &served, &resolver),
            };
            let next = match verified {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(room = ?id, error = %e, "room: served entries refused");
                    inner
                        .emit(Event::RoomRejected {
                            room_id: *id,
                            reason: room_err(*id, e.clone()),
                        })
                        .await;
                    return Err(room_err(*id, e));
                }
            };
            let raw: Vec<Vec<u8>> = served.iter().map(|e| e.encode_to_vec()).collect();
            let (rid, conv) = (*id, room_conversation_id(id));
            inner
                .store
                .run(move |s| s.append_room_entries(&rid, &conv, known_len, &raw))
                .await?;
            report(inner, known.as_ref(), &next).await;
            next
        }
    };
    book.insert(*id, room.clone());
    fetch_wraps(inner, &room, None).await?;
    room = book.get(id).cloned().unwrap_or(room);
    Ok(room)
}

/// Emits [`Event::RoomChanged`] for what changed between two states.
async fn report(inner: &Inner, before: Option<&VerifiedRoom>, after: &VerifiedRoom) {
    let old: BTreeSet<&String> = before
        .map(|b| b.members().keys().collect())
        .unwrap_or_default();
    let new: BTreeSet<&String> = after.members().keys().collect();
    inner
        .emit(Event::RoomChanged {
            room_id: *after.id(),
            len: after.len(),
            added: new.difference(&old).map(|u| (*u).clone()).collect(),
            removed: old.difference(&new).map(|u| (*u).clone()).collect(),
        })
        .await;
}

/// Fetches and accepts this user's wraps of the epochs it lacks (from
/// `from_epoch`, or after the newest held), and keeps the keys.
async fn fetch_wraps(inner: &Inner, room: &VerifiedRoom, from_epoch: Option<u64>) -> Result<()> {
    let id = *room.id();
    let ring = keyring(inner, room).await?;
    let current = room.current_epoch();
    if from_epoch.is_none() && ring.get(current).is_some() {
        return Ok(());
    }
    let mut from = from_epoch.unwrap_or_else(|| ring.epochs().last().map_or(0, |e| e + 1));
    loop {
        let wraps = inner
            .keyserver
            .get_room_wraps(id.as_bytes().to_vec(), from)
            .await?;
        let Some(last) = wraps.last().map(|w| w.epoch) else {
            return Ok(());
        };
        for w in wraps {
            if ring.get(w.epoch).is_some() {
                continue;
            }
            let Ok(kid) = KeyId::from_bytes(&w.recipient_key) else {
                continue;
            };
            let Some(user_key) = inner.store.run(move |s| s.user_key_by_id(&kid)).await? else {
                tracing::debug!(
                    epoch = w.epoch,
                    "room: wrap to a user key this device lacks"
                );
                continue;
            };
            match room.accept_epoch_wrap(&w, &user_key) {
                Ok(key) => {
                    let epoch = w.epoch;
                    inner
                        .store
                        .run(move |s| s.add_room_epoch_key(&id, epoch, &key))
                        .await?;
                }
                Err(e) => tracing::warn!(epoch = w.epoch, error = %e, "room: wrap refused"),
            }
        }
        if last >= current || last < from {
            return Ok(());
        }
        from = last + 1;
    }
}

/// Keeps a change this device made: the new epoch key first (a crash after
/// the append must not lose it), then the entry and its wraps at the
/// keyserver, then the entry in the store.
async fn commit(
    inner: &Inner,
    book: &mut Book,
    before: Option<&VerifiedRoom>,
    change: RoomChange,
) -> Result<VerifiedRoom> {
    let RoomChange {
        entry,
        room,
        epoch_key,
        wraps,
    } = change;
    let id = *room.id();
    let conv = room_conversation_id(&id);
    let epoch = room.current_epoch();
    inner
        .store
        .run(move |s| {
            s.put_room(&id, &conv)?;
            match epoch_key {
                Some(k) => s.add_room_epoch_key(&id, epoch, &k),
                None => Ok(()),
            }
        })
        .await?;
    let mut wraps: Vec<RoomWrapFor> = wraps
        .into_iter()
        .map(|(recipient_user_id, wrap)| RoomWrapFor {
            recipient_user_id,
            wrap: Some(wrap),
        })
        .collect();
    let rest = wraps.split_off(wraps.len().min(WRAPS_PER_REQUEST));
    let appended = inner
        .keyserver
        .append_room(AppendRoom {
            room_id: id.as_bytes().to_vec(),
            entries: vec![entry.clone()],
            wraps,
        })
        .await?;
    for chunk in rest.chunks(WRAPS_PER_REQUEST) {
        inner
            .keyserver
            .append_room(AppendRoom {
                room_id: id.as_bytes().to_vec(),
                entries: Vec::new(),
                wraps: chunk.to_vec(),
            })
            .await?;
    }
    if appended.len != room.len() {
        // Someone else's entry came first: refresh and let the caller retry.
        return Err(ClientError::Keyserver {
            code: ErrorCode::Conflict,
            detail: "the room's log moved on; refresh and retry".into(),
        });
    }
    let raw = vec![entry.encode_to_vec()];
    let from = room.len() - 1;
    inner
        .store
        .run(move |s| s.append_room_entries(&id, &conv, from, &raw))
        .await?;
    report(inner, before, &room).await;
    book.insert(id, room.clone());
    Ok(room)
}

/// What a producer needs: this user's own verified log and the verified
/// logs of the room's members (and `extra` users), freshly fetched.
async fn producer_ctx(
    inner: &Inner,
    room: Option<&VerifiedRoom>,
    extra: &[String],
) -> Result<(VerifiedUser, HashMap<String, VerifiedUser>)> {
    let mut ids: BTreeSet<String> = room
        .map(|r| r.members().keys().cloned().collect())
        .unwrap_or_default();
    ids.extend(extra.iter().cloned());
    ids.insert(inner.user_id.clone());
    let list: Vec<String> = ids.into_iter().collect();
    let mut map: HashMap<String, VerifiedUser> = HashMap::with_capacity(list.len());
    for chunk in list.chunks(LOGS_PER_REQUEST) {
        let known = inner
            .directory
            .refresh(&inner.store, &inner.keyserver, chunk)
            .await?;
        map.extend(
            known
                .into_iter()
                .map(|k| (k.user.user_id().to_owned(), k.user)),
        );
    }
    let own = map
        .get(&inner.user_id)
        .cloned()
        .ok_or(ClientError::NotEnrolled)?;
    Ok((own, map))
}

/// The epoch keys held for `room` that are the keys its verified log
/// commits to: a key kept before an append the keyserver then refused (a
/// concurrent admin's entry took the epoch) is left out, and replaced once
/// the real epoch's wrap arrives.
async fn keyring(inner: &Inner, room: &VerifiedRoom) -> Result<RoomKeyring> {
    let rid = *room.id();
    let held = inner.store.run(move |s| s.room_keyring(&rid)).await?;
    let mut ring = RoomKeyring::new();
    for e in held.epochs() {
        let committed = usize::try_from(e).ok().and_then(|i| room.epochs().get(i));
        if let (Some(key), Some(c)) = (held.get(e), committed)
            && key.public_key() == c.public_key
        {
            // Seeds move between keyrings only through the encrypted store's
            // zeroizing export.
            let seed = key.export_secret();
            ring.insert(e, ward_core::keys::RoomEpochKey::import_secret(&*seed)?);
        }
    }
    Ok(ring)
}

/// A fresh epoch for the same members, made and committed by this device.
async fn rotate(inner: &Inner, book: &mut Book, room: &VerifiedRoom) -> Result<VerifiedRoom> {
    let (own, resolver) = producer_ctx(inner, Some(room), &[]).await?;
    let ring = keyring(inner, room).await?;
    let change = {
        let author = RoomAuthor {
            device: &inner.device,
            chain: &own,
        };
        room.rotate(&mut rand::rng(), author, &resolver, &ring, now_secs())
            .map_err(|e| room_err(*room.id(), e))?
    };
    tracing::info!(room = ?room.id(), epoch = change.room.current_epoch(), "room: rotated");
    commit(inner, book, Some(room), change).await
}

/// The room, refreshed when the keyserver answers, else as last verified.
async fn current(inner: &Inner, book: &mut Book, id: &RoomId) -> Result<VerifiedRoom> {
    match refresh(inner, book, id).await {
        Err(e) if e.is_transient() => {
            check_fault(inner, id).await?;
            load(inner, book, id).await?.ok_or(e)
        }
        other => other,
    }
}

fn info(room: &VerifiedRoom, me: &str, ring: &RoomKeyring, fault: Option<String>) -> RoomInfo {
    RoomInfo {
        id: *room.id(),
        conversation_id: room_conversation_id(room.id()),
        metadata: room.metadata(ring).ok(),
        members: room
            .members()
            .iter()
            .map(|(u, m)| RoomMemberInfo {
                user_id: u.clone(),
                admin: m.admin,
            })
            .collect(),
        policy: room.policy(),
        epoch: room.current_epoch(),
        len: room.len(),
        rotation_pending: room.rotation_pending(),
        is_member: room.is_member(me),
        fault,
    }
}

/// Seals a room message and builds its outbox entry (`send.rs` queues it):
/// refresh, rotate if needed, one wrap to the epoch key, one relay `Send`
/// naming the room (the relay fans it out to every active device of every
/// member but this one, §17.10).
pub(crate) async fn seal_message(
    inner: &Inner,
    id: &RoomId,
    content_type: ContentType,
    content: &[u8],
    timestamp_ms: u64,
    blob_ids: Vec<Vec<u8>>,
) -> Result<(ResourceId, Zeroizing<Vec<u8>>)> {
    let mut book = inner.rooms.rooms.lock().await;
    let mut room = current(inner, &mut book, id).await?;
    if !room.is_member(&inner.user_id) {
        return Err(ClientError::NotARoomMember);
    }
    let mut members = users(inner, &room.members().keys().cloned().collect()).await?;
    if room.rotation_pending() || !room.stale_members(&members).is_empty() {
        // A leaver holds the current epoch key; a stale member's old user
        // key may be held by a revoked device (§17.3 "Staleness").
        room = rotate(inner, &mut book, &room).await?;
        members = users(inner, &room.members().keys().cloned().collect()).await?;
    }
    let own = members
        .get(&inner.user_id)
        .ok_or(ClientError::NotEnrolled)?;
    let sealed = seal_to_room(
        &mut rand::rng(),
        &inner.device,
        own,
        &room,
        &RoomSealRequest {
            content_type,
            content,
            timestamp_ms,
        },
    )?;
    let rid = sealed.resource_id;
    let payload = Zeroizing::new(
        OutboxPayload {
            resource_id: rid.as_bytes().to_vec(),
            envelope: sealed.envelope,
            keys: Vec::new(),
            // The relay computes a room message's recipients from the room
            // log it verified (SECURITY.md §17.10): the `Send` names the
            // room only.
            recipients: Vec::new(),
            // An attachment's blobs: the relay makes the room's member
            // devices their readers (§16.9, §17.10).
            blob_ids,
            room_key: Some(RoomKeyUpload {
                room_id: id.as_bytes().to_vec(),
                epoch: sealed.epoch,
                key: Some(sealed.wrapped_key),
                log_len: room.len(),
            }),
        }
        .encode_to_vec(),
    );
    #[cfg(feature = "testkit")]
    inner.record_resource_key(*sealed.resource_key.export_secret());
    drop(sealed.resource_key);
    Ok((rid, payload))
}

async fn retry_transient<T, F, Fut>(inner: &Inner, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: core::future::Future<Output = Result<T>>,
{
    let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
    loop {
        match f().await {
            Err(e) if e.is_transient() => tokio::time::sleep(backoff.next_delay()).await,
            other => return other,
        }
    }
}

/// A failure of this device (retried by the caller) or a verdict on the
/// message (rejected and acked), as in `receive.rs`.
fn verdict<T>(r: Result<T>) -> Result<Result<T>> {
    match r {
        Err(e @ (ClientError::Store(_) | ClientError::ReenrollRequired | ClientError::Closed)) => {
            Err(e)
        }
        other => Ok(other),
    }
}

/// Opens a room message (the receive worker's room path).
pub(crate) async fn receive(
    inner: &Inner,
    env: &ReceivedEnvelope,
    addr: &RoomAddress,
    sender_id: &str,
    key: KeyWait,
) -> Result<Result<Message>> {
    let id = addr.room_id;
    let room = {
        let mut book = inner.rooms.rooms.lock().await;
        if let Err(e) = verdict(check_fault(inner, &id).await)? {
            return Ok(Err(e));
        }
        // The verified state suffices when it knows the message's epoch and
        // the sender in it; otherwise the log is refreshed (a new room, a
        // new epoch, a new member), as RM2 asks.
        let held = load(inner, &mut book, &id).await;
        let held = match verdict(held)? {
            Ok(h) => h.filter(|r| {
                addr.epoch <= r.current_epoch() && r.was_member_during(sender_id, addr.epoch)
            }),
            Err(e) => return Ok(Err(e)),
        };
        let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
        let room = loop {
            if let Some(h) = &held {
                break Ok(h.clone());
            }
            match refresh(inner, &mut book, &id).await {
                Err(e) if e.is_transient() => tokio::time::sleep(backoff.next_delay()).await,
                other => break other,
            }
        };
        match verdict(room)? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        }
    };
    let sender_ids = [sender_id.to_owned()];
    let sender = retry_transient(inner, || {
        inner
            .directory
            .refresh(&inner.store, &inner.keyserver, &sender_ids)
    })
    .await;
    let sender = match verdict(sender)? {
        Ok(mut v) => match v.pop() {
            Some(k) => k.user,
            None => return Ok(Err(ClientError::UnknownUser(sender_id.to_owned()))),
        },
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = env.verify_in_room(&sender, &room) {
        return Ok(Err(e.into()));
    }
    let mut ring = keyring(inner, &room).await?;
    if ring.get(addr.epoch).is_none() {
        // A wrap that arrived after the last refresh (or an older epoch).
        if let Err(e) = verdict(fetch_wraps(inner, &room, Some(addr.epoch)).await)? {
            return Ok(Err(e));
        }
        ring = keyring(inner, &room).await?;
    }
    let Some(epoch_key) = ring.get(addr.epoch) else {
        return Ok(Err(ClientError::NoEpochKey(addr.epoch)));
    };
    let rid = env.resource_id();
    let (deadline, mut backoff) = super::receive::key_wait(inner);
    let wrapped = if let KeyWait::Prefetched(k) = key {
        match k {
            Some(k) => k,
            None => return Ok(Err(ClientError::WrappedKeyMissing(rid))),
        }
    } else {
        loop {
            let got = retry_transient(inner, || {
                inner
                    .keyserver
                    .get_room_keys(id.as_bytes().to_vec(), vec![rid.as_bytes().to_vec()])
            })
            .await;
            let keys = match verdict(got)? {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(k) = keys.keys.into_iter().next() {
                break k;
            }
            if key == KeyWait::No || tokio::time::Instant::now() >= deadline {
                return Ok(Err(ClientError::WrappedKeyMissing(rid)));
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    };
    let key = match unwrap_room_resource_key(&wrapped, &rid, epoch_key) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e.into())),
    };
    let opened = match env.open_in_room(&sender, &room, &key) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e.into())),
    };
    Ok(Ok(Message {
        resource_id: opened.resource_id,
        // The room's own conversation id, whatever the sender put in its
        // header: a room's messages are never filed under another id.
        conversation_id: room_conversation_id(&id),
        sender_user_id: opened.sender_user_id,
        sender_device: opened.sender_device,
        timestamp_ms: opened.timestamp_ms,
        content_type: opened.content_type,
        content: opened.content,
    }))
}

/// Where [`receive`] gets the message key, and whether it waits for one
/// the keyserver does not serve yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyWait {
    /// Fetched, waiting up to `key_wait`: a message just delivered, whose
    /// key may lag.
    Yes,
    /// Fetched, not waited for: an earlier message, whose key was stored
    /// before it was first sent (a forwarder must not stall this device
    /// with envelopes whose keys never come).
    No,
    /// Fetched by the caller with others in one request (a forwarded
    /// history, §17.13); `None`: the keyserver served none.
    Prefetched(Option<ward_proto::v1::WrappedKey>),
}

/// Rooms: create, change membership, list, send (SECURITY.md §17.12).
impl Client {
    /// Creates a room with `members` (user ids; this user is added as its
    /// only admin) and the metadata given, sealed to the members. The
    /// members' logs are fetched and verified now: the keyserver must be
    /// reachable. Returns the room's id; its conversation id is
    /// `RoomInfo::conversation_id`.
    pub async fn create_room(
        &self,
        name: &str,
        case_reference: &str,
        topic: &str,
        members: &[&str],
        policy: HistoryPolicy,
    ) -> Result<RoomId> {
        let inner = &self.inner;
        let mut book = inner.rooms.rooms.lock().await;
        let others: Vec<String> = members
            .iter()
            .filter(|m| **m != inner.user_id)
            .map(|m| (*m).to_owned())
            .collect();
        let (own, users) = producer_ctx(inner, None, &others).await?;
        let chains: Vec<&VerifiedUser> = others.iter().filter_map(|u| users.get(u)).collect();
        let metadata = RoomMetadata {
            name: name.to_owned(),
            case_reference: case_reference.to_owned(),
            topic: topic.to_owned(),
        };
        let change = create_room(
            &mut rand::rng(),
            RoomAuthor {
                device: &inner.device,
                chain: &own,
            },
            policy,
            &chains,
            &metadata,
            now_secs(),
        )
        .map_err(|e| room_err(RoomId([0; 32]), e))?;
        let id = *change.room.id();
        commit(inner, &mut book, None, change).await?;
        tracing::info!(room = ?id, members = chains.len() + 1, "room created");
        Ok(id)
    }

    /// Adds members (an admin only): under `FromJoin` a new epoch they
    /// read from; under `WholeHistory` every earlier epoch key wrapped to
    /// them too, and the room messages this device keeps forwarded to them
    /// (SECURITY.md §17.13; queued in the outbox, sent like any message).
    pub async fn add_members(&self, room: &RoomId, members: &[&str]) -> Result<()> {
        let inner = &self.inner;
        let mut book = inner.rooms.rooms.lock().await;
        let current = refresh(inner, &mut book, room).await?;
        let new: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        let (own, users) = producer_ctx(inner, Some(&current), &new).await?;
        let chains: Vec<&VerifiedUser> = new.iter().filter_map(|u| users.get(u)).collect();
        let ring = keyring(inner, &current).await?;
        let change = current
            .add_members(
                &mut rand::rng(),
                RoomAuthor {
                    device: &inner.device,
                    chain: &own,
                },
                &chains,
                &users,
                &ring,
                now_secs(),
            )
            .map_err(|e| room_err(*room, e))?;
        commit(inner, &mut book, Some(&current), change).await?;
        drop(book);
        if current.policy() == HistoryPolicy::WholeHistory {
            let added: Vec<String> = new.into_iter().filter(|u| !current.is_member(u)).collect();
            // The new members' logs were verified just above (and are
            // cached if the keyserver went away since), so what fails here
            // is this device's store; the addition stands.
            if let Err(e) = super::room_history::forward(inner, *room, &added).await {
                tracing::warn!(room = ?room, error = %e, "room history not forwarded");
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes a member (an admin only): a new epoch, wrapped to the
    /// members who remain; the removed member's devices cannot read it.
    pub async fn remove_member(&self, room: &RoomId, user_id: &str) -> Result<()> {
        let inner = &self.inner;
        let mut book = inner.rooms.rooms.lock().await;
        let current = refresh(inner, &mut book, room).await?;
        let (own, users) = producer_ctx(inner, Some(&current), &[]).await?;
        let ring = keyring(inner, &current).await?;
        let change = current
            .remove_member(
                &mut rand::rng(),
                RoomAuthor {
                    device: &inner.device,
                    chain: &own,
                },
                user_id,
                &users,
                &ring,
                now_secs(),
            )
            .map_err(|e| room_err(*room, e))?;
        commit(inner, &mut book, Some(&current), change).await?;
        Ok(())
    }

    /// Leaves the room. The last admin hands the role to the first other
    /// member (by user id). Keyless: the next member to send starts a new
    /// epoch this user cannot read.
    pub async fn leave(&self, room: &RoomId) -> Result<()> {
        let inner = &self.inner;
        let mut book = inner.rooms.rooms.lock().await;
        let current = refresh(inner, &mut book, room).await?;
        let me = inner.user_id.as_str();
        let sole_admin =
            current.is_admin(me) && current.members().iter().all(|(u, m)| u == me || !m.admin);
        let successor = if sole_admin {
            current.members().keys().find(|u| *u != me).cloned()
        } else {
            None
        };
        let (own, users) = producer_ctx(inner, Some(&current), &[]).await?;
        let change = current
            .leave(
                RoomAuthor {
                    device: &inner.device,
                    chain: &own,
                },
                successor.as_deref(),
                &users,
                now_secs(),
            )
            .map_err(|e| room_err(*room, e))?;
        commit(inner, &mut book, Some(&current), change).await?;
        Ok(())
    }

    /// Every room this device knows, and those the keyserver lists this
    /// user in (fetched and verified when it answers), oldest first.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>> {
        let inner = &self.inner;
        let mut book = inner.rooms.rooms.lock().await;
        let mut ids = inner.store.run(|s| s.room_ids()).await?;
        match inner.keyserver.list_rooms().await {
            Ok(heads) => {
                for h in heads {
                    if let Some(id) = RoomId::from_slice(&h.room_id)
                        && !ids.contains(&id)
                    {
                        ids.push(id);
                    }
                }
            }
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e),
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let room = match current(inner, &mut book, &id).await {
                Ok(r) => r,
                Err(ClientError::RoomCompromised { .. } | ClientError::UnknownRoom) => {
                    match load(inner, &mut book, &id).await? {
                        Some(r) => r,
                        None => continue,
                    }
                }
                Err(e) => return Err(e),
            };
            let ring = keyring(inner, &room).await?;
            let fault = inner.store.run(move |s| s.room_fault(&id)).await?;
            out.push(info(&room, &inner.user_id, &ring, fault));
        }
        Ok(out)
    }

    /// One room, refreshed when the keyserver answers.
    pub async fn room(&self, room: &RoomId) -> Result<RoomInfo> {
        let inner = &self.inner;
        let mut book = inner.rooms.rooms.lock().await;
        let r = current(inner, &mut book, room).await?;
        let ring = keyring(inner, &r).await?;
        Ok(info(&r, &inner.user_id, &ring, None))
    }

    /// The current members of a room, refreshed when the keyserver answers.
    pub async fn members(&self, room: &RoomId) -> Result<Vec<RoomMemberInfo>> {
        Ok(self.room(room).await?.members)
    }

    /// Sends `text` to a room: [`Client::send_text`] with its conversation id.
    pub async fn send_room_text(&self, room: &RoomId, text: &str) -> Result<ResourceId> {
        let conv = room_conversation_id(room);
        let rid = *room;
        self.inner
            .store
            .run(move |s| s.put_room(&rid, &conv))
            .await?;
        self.send_text(conv, text).await
    }

    /// Test hook: the epoch ids this device holds keys of, per room.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub async fn room_epochs_held(&self, room: &RoomId) -> Result<Vec<u64>> {
        let id = *room;
        let ring = self.inner.store.run(move |s| s.room_keyring(&id)).await?;
        Ok(ring.epochs().collect())
    }

    /// Test hook: every epoch seed this device holds for `room`, as a
    /// removed member keeps them.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub async fn room_epoch_seeds(
        &self,
        room: &RoomId,
    ) -> Result<std::collections::BTreeMap<u64, [u8; 32]>> {
        let id = *room;
        let ring = self.inner.store.run(move |s| s.room_keyring(&id)).await?;
        Ok(ring
            .epochs()
            .filter_map(|e| ring.get(e).map(|k| (e, *k.export_secret())))
            .collect())
    }
}
