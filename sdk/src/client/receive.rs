//! The receive worker: one relay entry at a time, in the mailbox's order.
//!
//! For each `Deliver`: skip it if it is at or below the relay cursor and
//! carries a message already stored (a redelivery after a lost ack: acked
//! again, silently); parse the
//! envelope; check the relay's sender against the envelope's claimed
//! sender; fetch and verify the sender's log; fetch the wrapped key (waiting
//! a bounded time for one that has not reached the keyserver yet); unwrap;
//! open (signature, recipient, revocation); check conversation membership;
//! store the message and move the cursor in one transaction; only then ack
//! the relay and report the event.
//!
//! **Ack policy.** Every verdict about the entry itself is final and is
//! acked: a message (stored first), a duplicate, and every rejection
//! (malformed or undecryptable envelope, bad signature, not a recipient,
//! swapped sender, unverifiable sender log, wrapped key that does not
//! unwrap, key still missing after [`super::ClientConfig::key_wait`]): the
//! same bytes can never become valid, and keeping them would block the
//! mailbox, whose acks are cumulative. Only failures of this device or of
//! the network (the keyserver unreachable, the store failing) keep the
//! entry unacked: they are retried with backoff, and the mailbox waits.
//!
//! **Duplicates.** Deduplication keys on the *signed* ids, never on bytes:
//! the outer `Envelope` can be re-encoded by anyone without breaking the
//! signature (SECURITY.md §7.6). A message whose (verified sender, resource
//! id) is already stored arrived under a new relay sequence number, so it is
//! a replay: it is reported as [`Event::Rejected`] with
//! [`ClientError::Replay`], never as a message. (A benign redelivery reuses
//! its sequence number and is dropped silently by the cursor check.)
//!
//! **Sequence numbers** (SECURITY.md §15.3). One above `i64::MAX` is
//! refused ([`ClientError::RelaySeqOutOfRange`]), neither stored nor acked
//! nor retried. An entry at or below the cursor that is not a stored
//! message is processed like any other: a new message there means the
//! relay's numbering went back (its database was reset, or it had jumped
//! ahead): the cursor follows it down and [`Event::RelayCursorRegressed`]
//! says so. Nothing is dropped silently but a stored message's redelivery.

use std::sync::Arc;

use ward_core::RoomId;
use ward_core::envelope::{ContentType, ReceivedEnvelope};
use ward_core::keys::{KeyId, UserEncryptionKey};
use ward_core::wrap::{accept_grant, unwrap_resource_key};
use ward_proto::v1::{Deliver, ErrorCode};

use super::Inner;
use super::error::{ClientError, Result};
use super::events::Event;
use super::relay::Backoff;
use crate::store::Message;

pub(crate) async fn run(inner: Arc<Inner>, mut rx: tokio::sync::mpsc::Receiver<Deliver>) {
    while let Some(d) = rx.recv().await {
        let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
        // A failure of this device (the store): retry the same entry, never
        // skip it (a later ack would cover it).
        while let Err(e) = handle(&inner, &d).await {
            tracing::warn!(seq = d.seq, error = %e, "receive: could not record an entry; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

async fn handle(inner: &Inner, d: &Deliver) -> Result<()> {
    let seq = d.seq;
    if i64::try_from(seq).is_err() {
        // No relay numbers its entries this high, and the store cannot hold
        // it: a final verdict, never retried (that wedged the worker) and
        // never acked (a cumulative ack this high would cover every entry).
        tracing::warn!(seq, "receive: relay sequence number out of range");
        inner
            .emit(Event::Rejected {
                relay_seq: seq,
                relay_sender: d.sender_user_id.clone(),
                reason: ClientError::RelaySeqOutOfRange(seq),
            })
            .await;
        return Ok(());
    }
    let cursor = inner.store.run(|s| s.relay_cursor()).await?;
    let behind = cursor.filter(|&c| seq <= c);
    // At or below the cursor: a redelivery after a lost ack, if the entry
    // is a message already stored (dropped silently, acked again). Anything
    // else is handled like a new entry, never skipped: a relay that jumped
    // ahead (a huge `seq`) or whose database was reset (its numbers start
    // again below the cursor) must not make this device drop messages.
    if behind.is_some() && already_stored(inner, d).await? {
        tracing::debug!(seq, "receive: already handled; acking again");
        inner.ack(seq).await;
        return Ok(());
    }
    match process(inner, d).await? {
        Ok((message, keep)) => {
            let m = message.clone();
            let rewind = behind.is_some();
            // A message of a WholeHistory room is kept as signed, for a later
            // forward to new members (§17.13), in the same transaction.
            let envelope = keep.map(|room| (room, d.payload.clone()));
            let new = inner
                .store
                .run(move |s| {
                    let keep = envelope.as_ref().map(|(r, e)| (r, &e[..]));
                    s.record_delivery_at(seq, Some(&m), rewind, keep)
                })
                .await?;
            if let (Some(cursor), true) = (behind, new) {
                // A new message below the cursor: the relay's numbering went
                // back. Follow it (or every later entry would look handled)
                // and say so.
                tracing::warn!(cursor, seq, "receive: relay cursor regressed");
                inner.acked.send_replace(seq);
                inner
                    .emit(Event::RelayCursorRegressed { cursor, seq })
                    .await;
            } else {
                inner.ack(seq).await;
            }
            let event = if message.content_type == ContentType::RoomHistory {
                // Its messages were emitted one by one.
                return Ok(());
            } else if new {
                tracing::debug!(seq, resource = ?message.resource_id, "receive: message stored");
                Event::Message(message)
            } else {
                tracing::debug!(seq, resource = ?message.resource_id, "receive: replay");
                Event::Rejected {
                    relay_seq: seq,
                    relay_sender: d.sender_user_id.clone(),
                    reason: ClientError::Replay {
                        sender_user_id: message.sender_user_id.clone(),
                        resource_id: message.resource_id,
                    },
                }
            };
            inner.emit(event).await;
        }
        Err(reason) => {
            inner
                .store
                .run(move |s| s.record_delivery_at(seq, None, false, None))
                .await?;
            inner.ack(seq).await;
            tracing::debug!(seq, error = %reason, "receive: rejected");
            inner
                .emit(Event::Rejected {
                    relay_seq: seq,
                    relay_sender: d.sender_user_id.clone(),
                    reason,
                })
                .await;
        }
    }
    Ok(())
}

/// Whether `d` carries a message already in the history, by the
/// envelope's (unverified) sender and resource id: nothing new could be
/// lost by dropping it, whoever made it.
async fn already_stored(inner: &Inner, d: &Deliver) -> Result<bool> {
    let Ok(env) = ReceivedEnvelope::parse(&d.payload) else {
        return Ok(false);
    };
    let sender = env.claimed_sender().0.to_owned();
    let rid = env.resource_id();
    Ok(inner
        .store
        .run(move |s| s.message(&sender, &rid))
        .await?
        .is_some())
}

/// Repeats `call` while it fails transiently (network, timeout, rate limit).
macro_rules! retry_transient {
    ($inner:expr, $call:expr) => {{
        let mut backoff = Backoff::new($inner.config.reconnect_min, $inner.config.reconnect_max);
        loop {
            match $call.await {
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, "receive: keyserver unavailable; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => break other,
            }
        }
    }};
}

/// The outer error: this device failed (retry). The inner one: the
/// verdict on the entry (reject and ack). With the message, the room whose
/// history keeps its envelope, if any.
async fn process(inner: &Inner, d: &Deliver) -> Result<Result<(Message, Option<RoomId>)>> {
    let env = match ReceivedEnvelope::parse(&d.payload) {
        Ok(e) => e,
        Err(e) => return Ok(Err(e.into())),
    };
    let (claimed_user, claimed_device) = env.claimed_sender();
    if claimed_user != d.sender_user_id || claimed_device.as_bytes()[..] != d.sender_device_id[..] {
        return Ok(Err(ClientError::SenderMismatch));
    }
    let sender_id = claimed_user.to_owned();
    // A room message: opened against the room's verified log (§17.6).
    if let Some(addr) = env.room().copied() {
        let got = super::rooms::receive(inner, &env, &addr, &sender_id, super::rooms::KeyWait::Yes)
            .await?;
        return Ok(match got {
            Ok(m) => {
                let keep = super::rooms::keeps_history(inner, &addr.room_id)
                    .await
                    .then_some(addr.room_id);
                Ok((m, keep))
            }
            Err(e) => Err(e),
        });
    }
    // Not addressed to this user: it can never open here (R5 refuses it
    // after the signature check too); say so without waiting for a wrapped
    // key the keyserver will never serve us.
    if !env.recipients().contains(&inner.user_id) {
        return Ok(Err(ward_core::OpenError::NotARecipient.into()));
    }

    let sender = match retry_transient!(
        inner,
        inner.directory.refresh(
            &inner.store,
            &inner.keyserver,
            std::slice::from_ref(&sender_id)
        )
    ) {
        Ok(mut v) => match v.pop() {
            Some(k) => k.user,
            None => return Ok(Err(ClientError::UnknownUser(sender_id))),
        },
        Err(e @ (ClientError::Store(_) | ClientError::ReenrollRequired)) => return Err(e),
        Err(e) => return Ok(Err(e)),
    };

    // Signature, sender device and recipients need no key: refuse a forged
    // envelope now rather than after waiting for a key that never comes.
    if let Err(e) = env.verify(&sender, &inner.user_id) {
        return Ok(Err(e.into()));
    }

    // The wrapped key: the sender uploads it before sending, but a lagging
    // (or withholding) keyserver may not serve it yet.
    let rid = env.resource_id();
    let (deadline, mut backoff) = key_wait(inner);
    let wrapped = loop {
        let got = retry_transient!(
            inner,
            inner.keyserver.get_keys(vec![rid.as_bytes().to_vec()])
        );
        let keys = match got {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        // Whatever key is served is checked by the unwrap (resource id and
        // recipient bound in the HPKE aad).
        if let Some(k) = keys.keys.into_iter().next() {
            break k;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Err(ClientError::WrappedKeyMissing(rid)));
        }
        tracing::debug!(resource = ?rid, "receive: wrapped key not there yet");
        tokio::time::sleep(backoff.next_delay()).await;
    };
    // A wrapped key names its recipient user key by id (SECURITY.md §5).
    let Ok(recipient_key) = KeyId::from_bytes(&wrapped.recipient_key) else {
        return Ok(Err(ClientError::Wrap(ward_core::WrapError::Malformed)));
    };
    let held = inner
        .store
        .run(move |s| s.user_key_by_id(&recipient_key))
        .await?;
    let user_key = match held {
        Some(k) => k,
        // Wrapped to a user key this device was not granted yet (another of
        // its user's devices rotated it): fetch the grant.
        None => match fetch_grant(inner, recipient_key).await? {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        },
    };
    let key = match unwrap_resource_key(&wrapped, &rid, &user_key) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e.into())),
    };
    // Decrypts in the envelope's own buffer: no copy of a 10 MiB content.
    // A key that fails the signed key commitment is refused here
    // (`KeyCommitmentMismatch`), before any decryption.
    let opened = match env.open_in_place(&sender, &inner.user_id, &key) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e.into())),
    };
    // A room's history forwarded to this user: its envelopes are verified
    // one by one; the bundle itself files nothing (§17.13).
    if opened.content_type == ContentType::RoomHistory {
        return Ok(super::room_history::receive(inner, opened)
            .await?
            .map(|m| (m, None)));
    }

    // Membership: v1 does not bind it cryptographically; the local view
    // decides (SECURITY.md §7.6). A new conversation takes the envelope's
    // recipients as members.
    let cid = opened.conversation_id;
    let conv = inner.store.run(move |s| s.conversation(&cid)).await?;
    match conv {
        Some(c) if !c.members.contains(&opened.sender_user_id) => {
            return Ok(Err(ClientError::NotAMember));
        }
        Some(_) => {}
        None => {
            let mut members = opened.recipients.clone();
            members.sort();
            inner
                .store
                .run(move |s| s.put_conversation(&cid, &members))
                .await?;
        }
    }
    Ok(Ok((
        Message {
            resource_id: opened.resource_id,
            conversation_id: opened.conversation_id,
            sender_user_id: opened.sender_user_id,
            sender_device: opened.sender_device,
            timestamp_ms: opened.timestamp_ms,
            content_type: opened.content_type,
            content: opened.content,
        },
        None,
    )))
}

/// The grant of the key with id `key_id` to this device, accepted only if it
/// is a user key of this user's freshly verified log ([`accept_grant`] then
/// checks the grant opens to exactly that key), and kept in the store.
async fn fetch_grant(inner: &Inner, key_id: KeyId) -> Result<Result<UserEncryptionKey>> {
    let me = [inner.user_id.clone()];
    let own = match retry_transient!(
        inner,
        inner.directory.refresh(&inner.store, &inner.keyserver, &me)
    ) {
        Ok(mut v) => match v.pop() {
            Some(k) => k.user,
            None => return Ok(Err(ClientError::NoUserKey)),
        },
        Err(e @ (ClientError::Store(_) | ClientError::ReenrollRequired)) => return Err(e),
        Err(e) => return Ok(Err(e)),
    };
    let Some(key) = std::iter::once(own.encryption_key())
        .chain(own.past_encryption_keys())
        .find(|k| k.id() == key_id)
        .copied()
    else {
        return Ok(Err(ClientError::NoUserKey));
    };
    // The rotating device appends the rotation, then stores the grants: a
    // sender may be quicker than the second step. Wait as for a wrapped key.
    let (deadline, mut backoff) = key_wait(inner);
    let grant = loop {
        match retry_transient!(inner, inner.keyserver.get_grant(key_id.as_bytes().to_vec())) {
            Ok(g) => break g,
            Err(ClientError::Keyserver {
                code: ErrorCode::NotFound,
                ..
            }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(ClientError::Keyserver {
                code: ErrorCode::NotFound,
                ..
            }) => return Ok(Err(ClientError::NoUserKey)),
            Err(e) => return Ok(Err(e)),
        }
    };
    let user_key = match accept_grant(&grant, &inner.device_encryption, &key) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e.into())),
    };
    let stored =
        UserEncryptionKey::import_secret(&*user_key.export_secret()).map_err(ClientError::Key)?;
    inner.store.run(move |s| s.add_user_key(&stored)).await?;
    tracing::debug!("receive: accepted the grant of a new user key");
    Ok(Ok(user_key))
}

/// The deadline and backoff for waiting on something a sender or rotating
/// device uploads just before we need it (a wrapped key, a grant): short
/// steps, bounded by `key_wait`.
pub(crate) fn key_wait(inner: &Inner) -> (tokio::time::Instant, Backoff) {
    let deadline = tokio::time::Instant::now() + inner.config.key_wait;
    let backoff = Backoff::new(
        inner
            .config
            .reconnect_min
            .min(std::time::Duration::from_millis(50)),
        inner
            .config
            .reconnect_max
            .min(std::time::Duration::from_secs(2)),
    );
    (deadline, backoff)
}
