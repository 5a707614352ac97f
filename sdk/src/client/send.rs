//! Sending: seal to every member's verified chain, queue durably, then
//! upload the wrapped keys and hand the envelope to the relay.
//!
//! 1. The members' logs are fetched and verified ([`super::directory`]); a
//!    log that does not verify, rolls back or forks fails the send: the
//!    sender never wraps to a key its verified chain does not hold. When the
//!    keyserver is unreachable, the verified logs already held are used.
//! 2. [`ward_core::envelope::seal`] wraps the resource key once per member
//!    *user*, the sender's own user included (its other devices read it).
//! 3. The sealed envelope, wrapped keys and recipient devices go into the
//!    outbox, and the plaintext into the local history, in one store
//!    transaction. From here the message survives the app dying: nothing
//!    with an effect outside this device has happened yet.
//! 4. The outbox worker, oldest first: `put_keys` at the keyserver (keys
//!    before ciphertext), then one relay `Send` addressed to every active
//!    device of every member except this one, with the resource id as the
//!    relay's message id; on `SendAck` the entry leaves the outbox.
//!    Re-sending after a crash or a lost ack is safe: both servers are
//!    idempotent on these ids, and receivers deduplicate.

use std::sync::Arc;

use prost::Message as _;
use tokio::sync::{oneshot, watch};
use ward_core::chain::VerifiedUser;
use ward_core::envelope::{ContentType, SealRequest, seal};
use ward_core::{ConversationId, ResourceId};
use ward_proto::v1::{ErrorCode, Recipient, Send, WrappedKeyFor};
use zeroize::Zeroizing;

use super::Inner;
use super::directory::Known;
use super::error::{ClientError, Result};
use super::events::Event;
use super::relay::{Backoff, RelayCmd};
use crate::store::{Message, OutboxItem};

/// What an outbox entry holds (encrypted at rest with the rest of the store).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OutboxPayload {
    /// The resource id: the relay message id.
    #[prost(bytes = "vec", tag = "1")]
    pub resource_id: Vec<u8>,
    /// The encoded envelope.
    #[prost(bytes = "vec", tag = "2")]
    pub envelope: Vec<u8>,
    /// The wrapped keys, one per member user.
    #[prost(message, repeated, tag = "3")]
    pub keys: Vec<WrappedKeyFor>,
    /// The relay recipients: every active device of every member but this one.
    #[prost(message, repeated, tag = "4")]
    pub recipients: Vec<Recipient>,
    /// The blobs an attachment descriptor names (`Send.blob_ids`, §16.9).
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub blob_ids: Vec<Vec<u8>>,
    /// A room message's one wrapped key (then `keys` is empty), for
    /// `put_room_key` (SECURITY.md §17.11).
    #[prost(message, optional, tag = "6")]
    pub room_key: Option<RoomKeyUpload>,
}

/// A room message's resource key wrapped to its epoch key.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RoomKeyUpload {
    /// The room.
    #[prost(bytes = "vec", tag = "1")]
    pub room_id: Vec<u8>,
    /// The epoch it is sealed to.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// The wrapped key.
    #[prost(message, optional, tag = "3")]
    pub key: Option<ward_proto::v1::WrappedKey>,
    /// How many entries the room log it was sealed under had
    /// (`Send.room_log_len`, §17.10); 0 in entries written before it.
    #[prost(uint64, tag = "4")]
    pub log_len: u64,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seals `content` for every member in `known` and builds the outbox entry
/// (naming `blob_ids` to the relay, for an attachment).
pub(crate) fn seal_for(
    inner: &Inner,
    known: &[Known],
    conversation_id: ConversationId,
    content_type: ContentType,
    content: &[u8],
    timestamp_ms: u64,
    blob_ids: Vec<Vec<u8>>,
) -> Result<(ResourceId, Zeroizing<Vec<u8>>)> {
    let own = known
        .iter()
        .find(|k| k.user.user_id() == inner.user_id)
        .ok_or(ClientError::NotEnrolled)?;
    let sealed = {
        let users: Vec<&VerifiedUser> = known.iter().map(|k| &k.user).collect();
        seal(
            &mut rand::rng(),
            &inner.device,
            &own.user,
            &SealRequest {
                conversation_id,
                recipients: &users,
                content_type,
                content,
                timestamp_ms,
            },
        )?
    };
    let me = inner.device.public_key();
    let recipients: Vec<Recipient> = known
        .iter()
        .flat_map(|k| {
            k.user
                .devices()
                .filter(|d| d.is_active() && d.signing_key != me)
                .map(|d| Recipient {
                    user_id: k.user.user_id().to_owned(),
                    device_id: d.signing_key.as_bytes().to_vec(),
                })
        })
        .collect();
    let rid = sealed.resource_id;
    let payload = Zeroizing::new(
        OutboxPayload {
            resource_id: rid.as_bytes().to_vec(),
            envelope: sealed.envelope,
            keys: sealed
                .wrapped_keys
                .into_iter()
                .map(|(recipient_user_id, key)| WrappedKeyFor {
                    recipient_user_id,
                    key: Some(key),
                })
                .collect(),
            recipients,
            blob_ids,
            room_key: None,
        }
        .encode_to_vec(),
    );
    #[cfg(feature = "testkit")]
    inner.record_resource_key(*sealed.resource_key.export_secret());
    drop(sealed.resource_key);
    Ok((rid, payload))
}

/// Checks that this user may send to `conversation` (a room's membership
/// is checked again when sealing, after a refresh).
pub(crate) async fn check_sendable(inner: &Inner, conversation_id: ConversationId) -> Result<()> {
    if room_of(inner, conversation_id).await?.is_none() {
        members(inner, conversation_id).await?;
    }
    Ok(())
}

/// The room a conversation id belongs to, if it is a room's.
pub(crate) async fn room_of(
    inner: &Inner,
    conversation_id: ConversationId,
) -> Result<Option<ward_core::RoomId>> {
    inner
        .store
        .run(move |s| s.room_by_conversation(&conversation_id))
        .await
}

pub(crate) async fn members(inner: &Inner, conversation_id: ConversationId) -> Result<Vec<String>> {
    let conv = inner
        .store
        .run(move |s| s.conversation(&conversation_id))
        .await?
        .ok_or(ClientError::UnknownConversation)?;
    if !conv.members.contains(&inner.user_id) {
        return Err(ClientError::NotAMember);
    }
    Ok(conv.members)
}

pub(crate) async fn send(
    inner: &Inner,
    conversation_id: ConversationId,
    content_type: ContentType,
    content: Zeroizing<Vec<u8>>,
) -> Result<ResourceId> {
    let timestamp_ms = now_ms();
    let (rid, payload) = if let Some(room) = room_of(inner, conversation_id).await? {
        super::rooms::seal_message(
            inner,
            &room,
            content_type,
            &content,
            timestamp_ms,
            Vec::new(),
        )
        .await?
    } else {
        let members = members(inner, conversation_id).await?;
        let known = inner
            .directory
            .refresh_or_cached(&inner.store, &inner.keyserver, &members)
            .await?;
        seal_for(
            inner,
            &known,
            conversation_id,
            content_type,
            &content,
            timestamp_ms,
            Vec::new(),
        )?
    };
    let message = Message {
        resource_id: rid,
        conversation_id,
        sender_user_id: inner.user_id.clone(),
        sender_device: inner.device.public_key(),
        timestamp_ms,
        content_type,
        content,
    };
    inner
        .store
        .run(move |s| s.outbox_enqueue_with_message(&payload, timestamp_ms, &message))
        .await?;
    tracing::debug!(resource = ?rid, "send: queued");
    inner.outbox_notify.notify_one();
    Ok(rid)
}

/// The keyserver refused the wrapped keys with `CONFLICT`: a member's key
/// changed (a rotation) since the entry was sealed, typically while
/// offline. Nothing of it left the device (`put_keys` is all or none and
/// comes first), so it is sealed again, from freshly verified logs, under
/// a new resource id, replacing the outbox entry and the history copy in
/// one transaction.
/// Whether a server refused the envelope as sealed to keys that are no
/// longer current, so that sealing it again can succeed: the keyserver's
/// CONFLICT, or the relay's on a room message (not the room's current epoch:
/// a removal or rotation this device had not seen, SECURITY.md §17.10).
fn sealed_to_a_stale_epoch(e: &ClientError, room: bool) -> bool {
    match e {
        ClientError::Keyserver {
            code: ErrorCode::Conflict,
            ..
        } => true,
        ClientError::Relay {
            code: ErrorCode::Conflict,
            ..
        } => room,
        _ => false,
    }
}

async fn reseal(
    inner: &Inner,
    item: &OutboxItem,
    old: ResourceId,
    blob_ids: Vec<Vec<u8>>,
) -> Result<ResourceId> {
    let me = inner.user_id.clone();
    let original = inner
        .store
        .run(move |s| s.message(&me, &old))
        .await?
        .ok_or(ClientError::Protocol(
            "outbox entry without its history copy",
        ))?;
    let (rid, payload) = match room_of(inner, original.conversation_id).await? {
        // A rotation the sender had not seen: sealed again to the new epoch.
        Some(room) if original.content_type != ContentType::RoomHistory => {
            super::rooms::seal_message(
                inner,
                &room,
                original.content_type,
                &original.content,
                original.timestamp_ms,
                blob_ids,
            )
            .await?
        }
        _ => {
            // A forwarded room history (§17.13) is a user-addressed message
            // filed under the room's id: sealed again to the users its
            // wrapped keys named; any other message, to its conversation.
            let users: Vec<String> = if original.content_type == ContentType::RoomHistory {
                OutboxPayload::decode(&item.payload[..])
                    .map_err(|_| ClientError::Protocol("undecodable outbox entry"))?
                    .keys
                    .into_iter()
                    .map(|k| k.recipient_user_id)
                    .collect()
            } else {
                members(inner, original.conversation_id).await?
            };
            let known = inner
                .directory
                .refresh(&inner.store, &inner.keyserver, &users)
                .await?;
            seal_for(
                inner,
                &known,
                original.conversation_id,
                original.content_type,
                &original.content,
                original.timestamp_ms,
                blob_ids,
            )?
        }
    };
    let id = item.id;
    let me = inner.user_id.clone();
    inner
        .store
        .run(move |s| s.outbox_reseal(id, &payload, &me, &old, &rid))
        .await?;
    tracing::debug!(old = ?old, new = ?rid, "send: resealed after a key rotation");
    Ok(rid)
}

/// The outbox worker: drains the queue in order whenever the relay is
/// connected; transient failures are retried with backoff (the entry stays
/// first in the queue), permanent refusals leave the queue as
/// [`Event::SendFailed`].
pub(crate) async fn run_outbox(inner: Arc<Inner>, mut connected: watch::Receiver<bool>) {
    const MAX_RESEALS: u32 = 3;
    let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
    let mut reseals = 0;
    // The message whose first failed attempt was reported (`SendDelayed`).
    let mut delayed: Option<ResourceId> = None;
    loop {
        let item = match inner.store.run(|s| s.outbox_peek()).await {
            Ok(Some(item)) => item,
            Ok(None) => {
                inner.outbox_notify.notified().await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox: store failed");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let id = item.id;
        let Ok(payload) = OutboxPayload::decode(&item.payload[..]) else {
            tracing::warn!("outbox: undecodable entry dropped");
            let _ = inner.store.run(move |s| s.outbox_remove(id)).await;
            continue;
        };
        let Some(rid) = ResourceId::from_slice(&payload.resource_id) else {
            tracing::warn!("outbox: entry without a resource id dropped");
            let _ = inner.store.run(move |s| s.outbox_remove(id)).await;
            continue;
        };
        let blob_ids = payload.blob_ids.clone();
        let room = payload.room_key.is_some();
        // A WholeHistory room's message is kept as signed once acked, for a
        // later history forward (§17.13).
        let mut kept = None;
        if let Some(r) = payload
            .room_key
            .as_ref()
            .and_then(|k| ward_core::RoomId::from_slice(&k.room_id))
            && super::rooms::keeps_history(&inner, &r).await
        {
            kept = Some((r, payload.envelope.clone()));
        }
        let outcome = match deliver(&inner, &item, payload, &mut connected).await {
            Err(e) if reseals < MAX_RESEALS && sealed_to_a_stale_epoch(&e, room) => {
                reseals += 1;
                match reseal(&inner, &item, rid, blob_ids).await {
                    Ok(new) => {
                        inner.emit(Event::Resealed { old: rid, new }).await;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        reseals = 0;
        match outcome {
            Ok(()) => {
                let me = inner.user_id.clone();
                let removed = inner
                    .store
                    .run(move |s| match &kept {
                        // One transaction: the entry leaves, its envelope stays.
                        Some((room, envelope)) => {
                            s.outbox_remove_keeping(id, room, &me, &rid, envelope)
                        }
                        None => s.outbox_remove(id),
                    })
                    .await;
                if let Err(e) = removed {
                    tracing::warn!(error = %e, "outbox: could not remove a sent entry");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                tracing::debug!(resource = ?rid, "send: acknowledged by the relay");
                backoff.reset();
                inner.emit(Event::Sent { resource_id: rid }).await;
            }
            Err(ClientError::Closed) => return,
            Err(e) if e.is_transient() => {
                tracing::debug!(resource = ?rid, error = %e, "send: will retry");
                if delayed != Some(rid) {
                    delayed = Some(rid);
                    inner.emit_now(Event::SendDelayed {
                        resource_id: rid,
                        reason: e,
                    });
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                tracing::warn!(resource = ?rid, error = %e, "send: refused for good");
                let _ = inner.store.run(move |s| s.outbox_remove(id)).await;
                inner
                    .emit(Event::SendFailed {
                        resource_id: rid,
                        reason: e,
                    })
                    .await;
            }
        }
    }
}

/// `put_keys` (a `CONFLICT` from it means a member's key rotated: the
/// caller reseals), then the relay `Send` and its `SendAck`.
async fn deliver(
    inner: &Inner,
    item: &OutboxItem,
    payload: OutboxPayload,
    connected: &mut watch::Receiver<bool>,
) -> Result<()> {
    // A room message names its room; the relay computes the recipients
    // (§17.10). Outbox entries written before that list them: the room
    // still decides, so the list is not sent.
    let (room_id, room_log_len) = payload
        .room_key
        .as_ref()
        .map(|k| (k.room_id.clone(), k.log_len))
        .unwrap_or_default();
    // Keys first: a recipient must find its key once the envelope arrives.
    match payload.room_key {
        Some(RoomKeyUpload {
            room_id,
            epoch,
            key: Some(key),
            ..
        }) => {
            inner.keyserver.put_room_key(room_id, epoch, key).await?;
        }
        Some(_) => return Err(ClientError::Protocol("room message without its key")),
        None => {
            inner.keyserver.put_keys(payload.keys).await?;
        }
    }
    if room_id.is_empty() && payload.recipients.is_empty() {
        return Ok(()); // a note to self from a user's only device
    }
    let recipients = if room_id.is_empty() {
        payload.recipients
    } else {
        Vec::new()
    };
    connected
        .wait_for(|c| *c)
        .await
        .map_err(|_| ClientError::Closed)?;
    let id = item.id;
    inner.store.run(move |s| s.outbox_mark_sent(id)).await?;
    let (reply, answered) = oneshot::channel();
    inner
        .relay_cmds
        .send(RelayCmd::Send(
            Send {
                message_id: payload.resource_id,
                recipients,
                payload: payload.envelope,
                blob_ids: payload.blob_ids,
                room_id,
                room_log_len,
            },
            reply,
        ))
        .await
        .map_err(|_| ClientError::Closed)?;
    match tokio::time::timeout(inner.config.request_timeout, answered).await {
        Err(_) => Err(ClientError::Timeout),
        // The connection ended before the answer: resend on the next one.
        Ok(Err(_)) => Err(ClientError::Net(ward_net::NetError::Closed(
            None,
            String::new(),
        ))),
        Ok(Ok(r)) => r,
    }
}
