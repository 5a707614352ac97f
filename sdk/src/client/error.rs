//! The client's typed errors.

use ward_core::{ChainError, KeyError, OpenError, ResourceId, SealError, WrapError};
use ward_net::NetError;
use ward_proto::v1::ErrorCode;

use crate::store::StoreError;

/// Everything the client can refuse or fail with.
///
/// No variant carries a plaintext, a key or a PIN: only ids, codes and
/// fixed reasons.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The device store failed or refused (a wrong PIN is
    /// [`StoreError::WrongPin`], with the attempts left). Never
    /// [`StoreError::ReenrollRequired`], which is
    /// [`ClientError::ReenrollRequired`].
    #[error("store: {0}")]
    Store(StoreError),
    /// The device store was written by a protocol v1 SDK: it unlocked (the
    /// PIN was right, its messages are still there), but its device and user
    /// keys are X25519 keys that protocol v2 cannot use (SECURITY.md §1.1,
    /// §14.9), and no v2 server accepts a v1 device. Nothing this device
    /// holds can become valid again: the clinician needs a **new invite**
    /// from the organisation's admin (v1 invites do not verify under v2),
    /// and this device must enroll again with
    /// [`crate::Client::enroll`], which creates a *new* store: move this one
    /// aside first (its v1 history stays readable through
    /// [`crate::store::Store`], which is also where
    /// [`crate::store::Store::reset_for_reenrollment`] strips the v1 keys).
    /// Not transient: retrying the unlock gives the same answer.
    #[error(
        "this device store holds protocol v1 keys, which this version cannot use: the device \
         must enroll again, from a new invite"
    )]
    ReenrollRequired,
    /// `reenroll` on a store whose device is enrolled under protocol v2:
    /// nothing to do (unlock it instead); the store was not changed.
    #[error("this device is already enrolled: unlock it instead")]
    AlreadyEnrolled,
    /// A connection to the relay or the keyserver failed.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// A request got no answer in time.
    #[error("the server did not answer in time")]
    Timeout,
    /// The keyserver answered with a typed error.
    #[error("keyserver refused: {code:?} ({detail})")]
    Keyserver {
        /// Its error code.
        code: ErrorCode,
        /// Its human-readable detail (never secret).
        detail: String,
    },
    /// The relay answered with a typed error.
    #[error("relay refused: {code:?} ({detail})")]
    Relay {
        /// Its error code.
        code: ErrorCode,
        /// Its human-readable detail (never payload bytes).
        detail: String,
    },
    /// A push token over the relay's limit of 1,024 bytes (SECURITY.md §9.2).
    #[error("push token of {0} bytes: at most 1024")]
    PushTokenTooLong(usize),
    /// A server answered with a frame that does not fit the request.
    #[error("unexpected reply from the server: {0}")]
    Protocol(&'static str),
    /// A user's log, as served by the keyserver, does not verify, or does not
    /// extend the log this device verified before (rollback, fork): a
    /// keyserver substituting a key lands here, and nothing is wrapped to it.
    #[error("the log of {user_id} does not verify: {error}")]
    Chain {
        /// Whose log.
        user_id: String,
        /// Why.
        error: ChainError,
    },
    /// A log verified, but its head is not in the keyserver's directory as
    /// the directory's proofs show it (SECURITY.md §18.9): the keyserver
    /// may be showing this device a log others are not shown. The log was
    /// not accepted, as for a log that does not verify; an
    /// [`crate::Event::TransparencyAlert`] with the same alert was raised.
    #[error("the key-transparency directory refutes a log: {0}")]
    Transparency(super::kt::KtAlert),
    /// A directory search result carries a root-signed invite that is not
    /// the invite of that user's verified log entry 0 (another invite for
    /// the same user id, or one naming another user): the keyserver lied
    /// about who this is, and the page is refused.
    #[error("the directory's entry for {user_id} is not the invite of that user's log")]
    DirectoryMismatch {
        /// The user the entry claimed to be.
        user_id: String,
    },
    /// The keyserver knows no such user (and this device never verified one).
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// The invite given to `enroll` does not verify against the pinned
    /// root, has expired, or does not match the delegation key.
    #[error("invalid invite: {0}")]
    InvalidInvite(ChainError),
    /// An invite file (`ward admin invite --out`) lacks its `invite:` or
    /// `delegation:` line, or one is not hex.
    #[error("invalid invite file: {0}")]
    InvalidInviteFile(&'static str),
    /// A key given to the client has the wrong length or form.
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    /// Sealing refused (content too large, not UTF-8, device not active).
    #[error("seal: {0}")]
    Seal(#[from] SealError),
    /// The envelope did not verify or decrypt (bit flip, wrong recipient,
    /// unknown or revoked sender device, bad signature).
    #[error("open: {0}")]
    Open(#[from] OpenError),
    /// The wrapped key or device grant did not unwrap (another resource's
    /// key, another recipient's, a planted grant).
    #[error("unwrap: {0}")]
    Wrap(#[from] WrapError),
    /// The relay's authenticated sender differs from the envelope's
    /// claimed sender (swapped sender ids).
    #[error("the relay's sender does not match the envelope's sender")]
    SenderMismatch,
    /// An envelope already stored (same verified sender and resource id)
    /// arrived again under a new relay sequence number: a replay.
    #[error("replayed message {resource_id:?} from {sender_user_id}")]
    Replay {
        /// The verified sender.
        sender_user_id: String,
        /// The resource id.
        resource_id: ResourceId,
    },
    /// The relay numbered an entry above `i64::MAX`: no relay does, and the
    /// store cannot record it. Refused, not acked.
    #[error("relay sequence number {0} out of range")]
    RelaySeqOutOfRange(u64),
    /// The keyserver had no wrapped key for this device's user within the
    /// configured wait.
    #[error("the wrapped key of {0:?} never reached the keyserver")]
    WrappedKeyMissing(ResourceId),
    /// The message is wrapped to a user key this device does not hold.
    #[error("the message is wrapped to a user key this device does not hold")]
    NoUserKey,
    /// The message's sender is not a member of the conversation as this
    /// device knows it.
    #[error("the sender is not a member of the conversation")]
    NotAMember,
    /// This device is not (or no longer) an active device in its user's
    /// verified log.
    #[error("this device is not an active device of its user's log")]
    DeviceNotInLog,
    /// The store holds no enrolled identity, or pairing was not completed.
    #[error("this store holds no enrolled device")]
    NotEnrolled,
    /// No such conversation in the store.
    #[error("unknown conversation")]
    UnknownConversation,
    /// A room's log, as served, does not verify or does not extend the one
    /// this device verified (SECURITY.md §17.3, §17.12).
    #[error("the log of room {room:?} does not verify: {error}")]
    Room {
        /// The room.
        room: ward_core::RoomId,
        /// Why.
        error: ward_core::RoomError,
    },
    /// A rollback or fork of this room's log was detected (now or before a
    /// restart): the room is refused until the operator investigates.
    #[error("room {room:?} was rolled back or forked by the keyserver: {fault}")]
    RoomCompromised {
        /// The room.
        room: ward_core::RoomId,
        /// The fault first recorded.
        fault: String,
    },
    /// No such room, or this user may not read it.
    #[error("unknown room")]
    UnknownRoom,
    /// This user is not a current member of the room.
    #[error("not a member of the room")]
    NotARoomMember,
    /// The epoch key a room message is sealed to is not held by this user
    /// (sealed after its removal, or before its joining under FROM_JOIN).
    #[error("no key for epoch {0} of the room")]
    NoEpochKey(u64),
    /// The client has been locked or dropped.
    #[error("the client is closed")]
    Closed,
    /// An attachment failed: a downloaded blob refused by the checks of
    /// SECURITY.md §16.6 (`KeyCommitmentMismatch`: another message's blob or
    /// a wrong key; `ChunkAuthFailed`: a chunk tampered, reordered or from
    /// another file; `Truncated`; `TrailingData`; `BadPadding`;
    /// `HashMismatch`: not the blob the signed message names), or a file that
    /// cannot be sent (too large, changed size while read, a bad name or
    /// media type). Nothing of a refused download is kept.
    #[error("attachment: {0}")]
    Attachment(#[from] ward_core::AttachmentError),
    /// Reading or writing a local file (the file to send, the download's
    /// destination, a spool file) failed.
    #[error("file: {0}")]
    File(std::io::Error),
    /// The message is not an attachment.
    #[error("the message is not an attachment")]
    NotAnAttachment,
    /// The download's destination exists: it is never overwritten.
    #[error("{0} exists; not overwritten")]
    FileExists(std::path::PathBuf),
    /// Linking a device failed in its protocol (SECURITY.md §4.9):
    /// `BadCode` (not a link code), `Tampered` (a message did not open under
    /// the code's keys: the relay or someone else altered, swapped or
    /// reordered it), `CommitmentMismatch`, `BadOffer`, `Truncated`. Before
    /// the approval nothing was added; after it, the new device is in the
    /// log with the history batches that arrived (each authenticated), and
    /// [`crate::PendingDevice::resume`] + `complete` finish it.
    #[error("device link: {0}")]
    Link(#[from] ward_core::link::LinkError),
    /// The relay knows no link under this code: it expired, was used, or
    /// the existing device stopped waiting. Show a new code and scan again.
    #[error("no such link at the relay: it expired or was already used")]
    NoSuchLink,
    /// The other device ended the link before it was done (or the relay
    /// closed it: expired, too large).
    #[error("the link was closed before it was done")]
    LinkClosed,
    /// The existing device's user refused this device (the codes differed).
    #[error("the existing device refused the link")]
    LinkRefused,
}

/// Store errors become [`ClientError::Store`], except the one an app must act
/// on differently from a store failure: a v1 store is
/// [`ClientError::ReenrollRequired`], at the top level, so that an app
/// matches it without knowing the store's error type.
impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ReenrollRequired => Self::ReenrollRequired,
            e => Self::Store(e),
        }
    }
}

impl ClientError {
    /// Whether retrying later may succeed (the network, a timeout, a
    /// server under load): the message concerned stays queued / unacked.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Net(e) => {
                !self.is_device_revoked()
                    && !matches!(e, NetError::Refused(ErrorCode::Unauthenticated))
            }
            Self::Timeout => true,
            Self::Keyserver { code, .. } => {
                matches!(code, ErrorCode::RateLimited | ErrorCode::Internal)
            }
            // The relay's quota frees as recipients read, and a relay whose
            // room log is behind catches up over its keyserver link: the
            // message stays queued and is retried with the outbox's backoff.
            Self::Relay { code, .. } => matches!(
                code,
                ErrorCode::RateLimited
                    | ErrorCode::Internal
                    | ErrorCode::QuotaExceeded
                    | ErrorCode::Unavailable
            ),
            _ => false,
        }
    }
}

impl ClientError {
    /// Whether a server refused this device because its user's log revokes
    /// it: the device can neither send nor receive any more.
    pub fn is_device_revoked(&self) -> bool {
        match self {
            Self::Net(NetError::Refused(code)) => *code == ErrorCode::DeviceRevoked,
            Self::Net(NetError::Closed(Some(code), _)) => *code == ward_net::close::DEVICE_REVOKED,
            Self::Keyserver { code, .. } | Self::Relay { code, .. } => {
                *code == ErrorCode::DeviceRevoked
            }
            _ => false,
        }
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = core::result::Result<T, E>;
