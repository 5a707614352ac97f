//! A room's history for members added under `WholeHistory` (SECURITY.md
//! §17.13). The relay queued each earlier message only for the members of
//! its time and deletes it once they fetched it, so a new member holds the
//! earlier epoch keys but no ciphertext to use them on. The adding admin's
//! device forwards the room messages it keeps, exactly as their senders
//! signed them, inside one ordinary user-addressed envelope per bundle
//! (content type `RoomHistory`). The new member verifies and opens each
//! forwarded envelope as if the relay had delivered it (R1–R4, RM1–RM3,
//! key commitment), with the epoch keys its wraps give it: the forwarder
//! can drop messages but neither alter nor forge one, and nobody reads
//! more than the room's policy gives it.

use prost::Message as _;
use ward_core::RoomId;
use ward_core::envelope::{ContentType, OpenedMessage, ReceivedEnvelope, room_conversation_id};
use ward_proto::v1::RoomHistory;
use zeroize::Zeroizing;

use super::Inner;
use super::error::{ClientError, Result};
use super::events::Event;
use super::send::{now_ms, seal_for};
use crate::store::Message;

/// The most history forwarded to a new member: the newest messages that
/// fit (a longer history is cut at its oldest end).
pub(crate) const MAX_HISTORY_BYTES: usize = 32 * 1024 * 1024;

/// The envelopes per bundle, by size: a bundle stays well under the
/// relay's frame limit and the envelope limit (16 MiB).
const BUNDLE_BYTES: usize = 4 * 1024 * 1024;

/// Message keys asked for in one `get_room_keys`: under the keyserver's
/// default item limit (256).
const KEYS_PER_REQUEST: usize = 128;

/// Most envelopes a received bundle may hold (a 4 MiB bundle of the
/// smallest room messages holds about 3,000).
const MAX_BUNDLE_ENVELOPES: usize = 8192;

/// Queues the room's kept history for the users `added` (just added under
/// `WholeHistory`), in bundles sealed to them and to this user (whose
/// other devices drop what they already hold). Nothing to forward: nothing
/// queued.
pub(crate) async fn forward(inner: &Inner, room: RoomId, added: &[String]) -> Result<usize> {
    if added.is_empty() {
        return Ok(0);
    }
    let envelopes = inner
        .store
        .run(move |s| s.room_envelopes(&room, MAX_HISTORY_BYTES))
        .await?;
    queue(inner, room, added, envelopes).await
}

/// Queues `envelopes` (kept room envelopes, oldest first) for `to` and this
/// user, in bundles of at most [`BUNDLE_BYTES`]. Returns the bundle count.
pub(crate) async fn queue(
    inner: &Inner,
    room: RoomId,
    to: &[String],
    envelopes: Vec<Vec<u8>>,
) -> Result<usize> {
    if envelopes.is_empty() {
        return Ok(0);
    }
    let mut users = vec![inner.user_id.clone()];
    users.extend(to.iter().cloned());
    let known = inner
        .directory
        .refresh_or_cached(&inner.store, &inner.keyserver, &users)
        .await?;
    let conversation_id = room_conversation_id(&room);
    let mut bundles: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut size = 0usize;
    for e in envelopes {
        if size + e.len() > BUNDLE_BYTES && bundles.last().is_some_and(|b| !b.is_empty()) {
            bundles.push(Vec::new());
            size = 0;
        }
        size += e.len();
        if let Some(b) = bundles.last_mut() {
            b.push(e);
        }
    }
    let count = bundles.len();
    for envelopes in bundles {
        let content = Zeroizing::new(
            RoomHistory {
                room_id: room.as_bytes().to_vec(),
                envelopes,
            }
            .encode_to_vec(),
        );
        let timestamp_ms = now_ms();
        let (rid, payload) = seal_for(
            inner,
            &known,
            conversation_id,
            ContentType::RoomHistory,
            &content,
            timestamp_ms,
            Vec::new(),
        )?;
        // The sender's copy is what a reseal seals again; `history` never
        // lists it.
        let message = Message {
            resource_id: rid,
            conversation_id,
            sender_user_id: inner.user_id.clone(),
            sender_device: inner.device.public_key(),
            timestamp_ms,
            content_type: ContentType::RoomHistory,
            content,
        };
        inner
            .store
            .run(move |s| s.outbox_enqueue_with_message(&payload, timestamp_ms, &message))
            .await?;
    }
    inner.outbox_notify.notify_one();
    tracing::info!(room = ?room, bundles = count, users = to.len(), "room history queued");
    Ok(count)
}

/// A received bundle, already opened and verified as the forwarder's
/// message: each envelope is verified and opened on its own, stored and
/// emitted as an `Event::Message` if new. The outer error: this device
/// failed (retried); the inner one: the verdict on the bundle.
pub(crate) async fn receive(inner: &Inner, opened: OpenedMessage) -> Result<Result<Message>> {
    let Ok(history) = RoomHistory::decode(&opened.content[..]) else {
        return Ok(Err(ClientError::Protocol("room history does not decode")));
    };
    let Some(room) = RoomId::from_slice(&history.room_id) else {
        return Ok(Err(ClientError::Protocol("room history without a room id")));
    };
    if history.envelopes.len() > MAX_BUNDLE_ENVELOPES {
        return Ok(Err(ClientError::Protocol("room history too long")));
    }
    // Only a member forwards a room's history (as this device verifies the
    // room): anyone else's bundle is refused whole.
    match super::rooms::refreshed(inner, &room).await {
        Ok(r) if r.is_member(&opened.sender_user_id) => {}
        Ok(_) => return Ok(Err(ClientError::NotARoomMember)),
        Err(e @ (ClientError::Store(_) | ClientError::ReenrollRequired | ClientError::Closed)) => {
            return Err(e);
        }
        Err(e) => return Ok(Err(e)),
    }
    let (mut stored, mut refused) = (0usize, 0usize);
    // Parsed first, so that the message keys come in a few requests (the
    // keyserver's item limit) instead of one per envelope.
    let mut todo = Vec::with_capacity(history.envelopes.len());
    for raw in history.envelopes {
        let Ok(env) = ReceivedEnvelope::parse(&raw) else {
            refused += 1;
            continue;
        };
        let Some(addr) = env.room().copied().filter(|a| a.room_id == room) else {
            refused += 1;
            continue;
        };
        let sender = env.claimed_sender().0.to_owned();
        let (s2, rid) = (sender.clone(), env.resource_id());
        if inner
            .store
            .run(move |s| s.message(&s2, &rid))
            .await?
            .is_some()
        {
            continue; // already here (delivered by the relay, or an earlier bundle)
        }
        todo.push((env, addr, sender, raw));
    }
    let mut keys = std::collections::HashMap::new();
    for chunk in todo.chunks(KEYS_PER_REQUEST) {
        let rids = chunk
            .iter()
            .map(|(e, ..)| e.resource_id().as_bytes().to_vec())
            .collect();
        match inner
            .keyserver
            .get_room_keys(room.as_bytes().to_vec(), rids)
            .await
        {
            Ok(got) => keys.extend(got.keys.into_iter().map(|k| (k.resource_id.clone(), k))),
            Err(e @ (ClientError::Store(_) | ClientError::Closed)) => return Err(e),
            // What could not be fetched is missing below, and skipped.
            Err(e) => tracing::debug!(room = ?room, error = %e, "room history: keys not fetched"),
        }
    }
    for (env, addr, sender, raw) in todo {
        let key = keys.remove(env.resource_id().as_bytes().as_slice());
        let got = super::rooms::receive(
            inner,
            &env,
            &addr,
            &sender,
            super::rooms::KeyWait::Prefetched(key),
        );
        let m = match got.await? {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(room = ?room, error = %e, "room history: an envelope refused");
                refused += 1;
                continue;
            }
        };
        let m2 = m.clone();
        if inner
            .store
            .run(move |s| s.insert_room_message(&m2, &room, &raw))
            .await?
        {
            stored += 1;
            inner.emit(Event::Message(m)).await;
        }
    }
    tracing::info!(room = ?room, stored, refused, "room history received");
    Ok(Ok(Message {
        resource_id: opened.resource_id,
        conversation_id: room_conversation_id(&room),
        sender_user_id: opened.sender_user_id,
        sender_device: opened.sender_device,
        timestamp_ms: opened.timestamp_ms,
        content_type: ContentType::RoomHistory,
        // Only its deduplication key matters once its messages are stored.
        content: Zeroizing::new(Vec::new()),
    }))
}
