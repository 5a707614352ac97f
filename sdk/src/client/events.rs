//! What the client reports to the application.

use ward_core::ResourceId;

use super::error::ClientError;
use crate::store::Message;

/// One event from [`super::Client::events`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A message that verified (sender chain, signature, recipient,
    /// revocation) and decrypted, now stored in the history. Also sent for
    /// messages this user sent from another of its devices.
    Message(Message),
    /// Something arrived that did not verify, or could not be opened: it
    /// is *not* a message and was not stored. The relay entry was acked
    /// (it can never become valid); see the crate docs for the policy.
    Rejected {
        /// The relay's sequence number of the entry.
        relay_seq: u64,
        /// The sender the relay named (authenticated by the relay only).
        relay_sender: String,
        /// Why.
        reason: ClientError,
    },
    /// A queued message was sealed again under a new resource id, because a
    /// member's key rotated before it left the device (see `send.rs`). Its
    /// `Sent` event and history entry carry the new id.
    Resealed {
        /// The id `send_text` returned.
        old: ResourceId,
        /// The id it now has.
        new: ResourceId,
    },
    /// This device was revoked (by the organisation root or another device
    /// of its user): a server refused it as revoked in its user's log, or
    /// its own verified log says so. Before this event the client closed
    /// the store (zeroizing its key) and **wiped it** (database, WAL and
    /// header destroyed); it stopped reconnecting, and every later call
    /// fails with `ClientError::Closed`. Drop the `Client` to release the
    /// device keys it still holds in memory (zeroized on drop). Sent once.
    DeviceRevoked,
    /// The relay could not be reached or refused the connection (network
    /// down, TLS not trusted, wrong URL). Sent once per outage, at the first
    /// failed attempt; the client keeps retrying with backoff and queued
    /// messages stay queued. A TLS failure (`ClientError::Net(NetError::Tls)`)
    /// will not fix itself: an app should say so at once. Only with
    /// `ClientConfig::connection_events`.
    RelayUnreachable {
        /// The failed attempt's error.
        reason: ClientError,
    },
    /// An outgoing message could not go out yet (a server unreachable or
    /// busy, a keyserver or TLS failure); it stays queued and is retried
    /// with backoff. Sent once per message, at its first failed attempt.
    /// Only with `ClientConfig::connection_events`.
    SendDelayed {
        /// The message.
        resource_id: ResourceId,
        /// The failed attempt's error.
        reason: ClientError,
    },
    /// A new message arrived under a relay sequence number at or below the
    /// last one this device handled: the relay's numbering went back (its
    /// database was reset or restored, or it had sent a number far ahead).
    /// The message was stored and reported as usual; the cursor now
    /// follows the relay. Worth telling an operator: messages acked before
    /// a reset and not yet delivered elsewhere may be gone at the relay.
    RelayCursorRegressed {
        /// The cursor before.
        cursor: u64,
        /// The sequence number that went below it (the new cursor).
        seq: u64,
    },
    /// A room's verified log grew (SECURITY.md §17.12): members were added
    /// or removed (or left), admins changed, or a new epoch started. Emitted
    /// once per refresh that found new entries, after they verified and
    /// were stored. This user's own removal is `removed` containing it.
    RoomChanged {
        /// The room.
        room_id: ward_core::RoomId,
        /// The log's length now.
        len: u64,
        /// Members now that were not before.
        added: Vec<String>,
        /// Members before that are not now (removed or left).
        removed: Vec<String>,
    },
    /// A room's log was served rolled back or forked, or with an entry that
    /// does not verify: nothing of it was accepted. A rollback or fork is
    /// recorded in the store and the room refused from then on.
    RoomRejected {
        /// The room.
        room_id: ward_core::RoomId,
        /// Why (`ClientError::Room` or `ClientError::RoomCompromised`).
        reason: ClientError,
    },
    /// The relay durably stored an outgoing message (its `SendAck`).
    Sent {
        /// The message.
        resource_id: ResourceId,
    },
    /// An attachment upload resumed after a restart was refused for good
    /// (the relay's quota or size cap, or the upload expired there): its
    /// message was never sent and the upload was dropped.
    AttachmentFailed {
        /// The conversation it was for.
        conversation_id: ward_core::ConversationId,
        /// Why.
        reason: ClientError,
    },
    /// The key-transparency monitor (SECURITY.md §18.8) found a device in
    /// this user's own log that this device did not add and did not know
    /// of: "a new device was linked to your account". If the user did not
    /// link it, revoke it at once (`Client::revoke_device`). Sent once per
    /// device, persisted across restarts.
    DeviceAdded {
        /// The new device's id (its signing key).
        device_id: ward_core::keys::SigningPublicKey,
        /// The device that signed its addition (another device of this
        /// user, or the organisation root).
        added_by: ward_core::keys::SigningPublicKey,
    },
    /// The key-transparency monitor found the directory misbehaving: an
    /// epoch that does not extend the one this device verified, a bad
    /// signature, leaves that do not match the epoch's root, or this user's
    /// own log shown in the directory with a head this device does not
    /// have. The monitor keeps its last good epoch and does not move past
    /// the bad one. Sent once per distinct problem while the client runs.
    TransparencyAlert {
        /// What was wrong.
        alert: super::kt::KtAlert,
    },
    /// An outgoing message was refused for good (a keyserver or relay
    /// refusal that retrying cannot fix); it stays in the local history but
    /// left the outbox.
    SendFailed {
        /// The message.
        resource_id: ResourceId,
        /// Why.
        reason: ClientError,
    },
}
