//! Typed errors, one enum per operation family.
//!
//! Decryption failures are deliberately coarse ([`WrapError::Undecryptable`],
//! [`OpenError::Undecryptable`]): a caller, and so an attacker probing a
//! client, learns that the bytes did not open, not why.

use ward_proto::DecodeError;

/// A key could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Keys are exactly 32 bytes.
    #[error("a key must be exactly 32 bytes")]
    InvalidLength,
    /// Not a valid, non-weak Ed25519 point.
    #[error("not a valid public key")]
    InvalidPublicKey,
}

/// Wrapping or unwrapping a key failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// A field has the wrong length.
    #[error("malformed wrapped key")]
    Malformed,
    /// The Diffie-Hellman result was all zero: the peer key is of low order.
    #[error("peer public key is of low order (non-contributory DH)")]
    NonContributory,
    /// The wrapped key names another recipient key.
    #[error("wrapped key is addressed to another key")]
    WrongRecipient,
    /// The wrapped key names another resource than the one asked for.
    #[error("wrapped key belongs to another resource")]
    WrongResource,
    /// The grant carries another user key than the verified chain's.
    #[error("grant is for another user key")]
    WrongUserKey,
    /// Authentication failed: wrong key, tampered bytes or swapped binding.
    #[error("wrapped key does not open")]
    Undecryptable,
}

/// Sealing an envelope failed. Seal refuses everything that §7.4's parse
/// and open rules would refuse at every recipient, before drawing randomness.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Content over [`crate::envelope::MAX_CONTENT_BYTES`].
    #[error("content of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Text content must be UTF-8.
    #[error("text content is not UTF-8")]
    InvalidText,
    /// Content of kind attachment that is not a valid descriptor
    /// (SECURITY.md §16.5): every receiver would refuse it (R10).
    #[error("attachment content is not a valid descriptor")]
    InvalidAttachment,
    /// The conversation id is not 16 bytes. [`crate::ConversationId`] is 16
    /// bytes by type, so ward-core cannot return it; an implementation taking
    /// the id as bytes must (SECURITY.md §7.3 S2).
    #[error("the conversation id must be 16 bytes")]
    InvalidConversation,
    /// No recipient: nobody could open it.
    #[error("an envelope needs at least one recipient")]
    NoRecipients,
    /// More than [`crate::envelope::MAX_RECIPIENTS`] recipient users.
    #[error("{0} recipients exceed the limit")]
    TooManyRecipients(usize),
    /// A recipient or sender user id that is not a valid user id (a verified
    /// chain cannot hold one; checked as parse rule P7/P11 would).
    #[error("invalid user id in the envelope header")]
    InvalidUserId,
    /// One user listed twice.
    #[error("recipient {0} is listed twice")]
    DuplicateRecipient(String),
    /// The signing device is not an active device of the sender's chain.
    #[error("the signing device is not active in the sender's chain")]
    DeviceNotActive,
    /// The resource key could not be wrapped to this recipient's user key
    /// (a key a verified chain cannot hold).
    #[error("cannot wrap to the user key of recipient {0}")]
    UnwrappableRecipient(String),
    /// A room message from a user who is not a current member (§17.6 RS1).
    #[error("the sender is not a member of the room")]
    NotARoomMember,
    /// The room's current epoch key may be held by a member who left: a
    /// remaining member must rotate it first (§17.6 RS2).
    #[error("the room's epoch key must be rotated first")]
    RoomRotationPending,
}

/// Opening an envelope failed. Nothing of its content may be shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a well-formed envelope (bad encoding, field lengths, limits).
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// Envelope too large, or not protobuf.
    #[error("undecodable envelope: {0}")]
    Decode(#[from] DecodeError),
    /// A protocol version this implementation does not speak.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u32),
    /// The header names a sender other than the verified chain it is checked against.
    #[error("envelope sender does not match the verified sender")]
    SenderMismatch,
    /// The signing device is not in the sender's verified chain.
    #[error("sender device is unknown to the sender's chain")]
    UnknownSenderDevice,
    /// The signing device was revoked.
    #[error("sender device has been revoked")]
    SenderDeviceRevoked,
    /// The signature does not verify.
    #[error("bad envelope signature")]
    BadSignature,
    /// The envelope is not addressed to this user.
    #[error("envelope is not addressed to this user")]
    NotARecipient,
    /// The resource key does not match the header's signed key commitment:
    /// the sender (or whoever supplied the wrapped key) tried to make one
    /// envelope open to different plaintexts for different recipients.
    /// Checked before any decryption (SECURITY.md §7.4 R6).
    #[error("resource key does not match the envelope's key commitment")]
    KeyCommitmentMismatch,
    /// Decryption or padding failed; deliberately coarse.
    #[error("envelope does not decrypt")]
    Undecryptable,
    /// A room message names an epoch, or an epoch key, that the room's
    /// verified log does not have (§17.6 RM2): refresh the room's log.
    #[error("room message names an unknown epoch key")]
    UnknownEpoch,
    /// A room message from a user who was not a member during its epoch
    /// (§17.6 RM3).
    #[error("room message sender was not a member during its epoch")]
    SenderNotInRoom,
}

/// A user's log, or an invite, does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Bad encoding, missing field or wrong field length, at `seq` if known.
    #[error("malformed statement: {0}")]
    Malformed(&'static str),
    /// Too large, or not protobuf.
    #[error("undecodable statement: {0}")]
    Decode(#[from] DecodeError),
    /// A protocol version this implementation does not speak.
    #[error("unsupported statement version {0}")]
    UnsupportedVersion(u32),
    /// An empty log: every user starts with a user creation.
    #[error("empty log")]
    EmptyLog,
    /// The invite is not signed by the pinned organisation root.
    #[error("invite is not signed by the organisation root")]
    ForgedInvite,
    /// The invite had expired when the user creation was made.
    #[error("invite has expired")]
    InviteExpired,
    /// The invite was used before: a second user creation.
    #[error("invite was already used")]
    InviteReused,
    /// A statement is signed by a key that may not sign it, or the signature is bad.
    #[error("bad signature on entry {seq}")]
    BadSignature {
        /// Position in the log.
        seq: u64,
    },
    /// The signer is not an active device of the user (nor the root, where allowed).
    #[error("entry {seq} is signed by a key that may not sign it")]
    UnauthorizedAuthor {
        /// Position in the log.
        seq: u64,
    },
    /// A statement names another user than the log's.
    #[error("entry {seq} belongs to another user")]
    WrongUser {
        /// Position in the log.
        seq: u64,
    },
    /// `seq` does not follow the previous entry.
    #[error("entry at position {expected} carries seq {found}")]
    BadSequence {
        /// The position.
        expected: u64,
        /// The seq written in the entry.
        found: u64,
    },
    /// `prev_hash` does not match the previous entry.
    #[error("entry {seq} does not chain to its predecessor")]
    BrokenChain {
        /// Position in the log.
        seq: u64,
    },
    /// Timestamps must not go backwards.
    #[error("entry {seq} is dated before its predecessor")]
    TimeWentBackwards {
        /// Position in the log.
        seq: u64,
    },
    /// A statement that makes no sense at this point (e.g. revoking an unknown device).
    #[error("entry {seq}: {reason}")]
    InvalidTransition {
        /// Position in the log.
        seq: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The served log is shorter than one already verified.
    #[error("log rolled back from {known} to {served} entries")]
    Rollback {
        /// Entries known.
        known: u64,
        /// Entries served.
        served: u64,
    },
    /// The served log does not extend the one already verified.
    #[error("log forked at or before entry {seq}")]
    Fork {
        /// Last entry known.
        seq: u64,
    },
    /// A device addition without the new device's own valid signature over
    /// its keys (proof of possession, SECURITY.md §4.4).
    #[error("entry {seq} adds a device that did not sign its own keys")]
    MissingPossessionProof {
        /// Position in the log.
        seq: u64,
    },
    /// A device key that is already in use elsewhere: the organisation
    /// root, the invite's delegation key, or a device of this user, past or
    /// present (SECURITY.md §4.4). `reason` is one of the normative strings
    /// of §4.8.
    #[error("entry {seq}: {reason}")]
    KeyInUse {
        /// Position in the log.
        seq: u64,
        /// Which key it collides with.
        reason: &'static str,
    },
}

/// The authentication handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong field lengths or an invalid key.
    #[error("malformed authentication response")]
    Malformed,
    /// The signature does not verify.
    #[error("bad authentication signature")]
    BadSignature,
    /// The device refuses to sign: the challenge is for another service or
    /// instance, or malformed.
    #[error("unexpected challenge")]
    UnexpectedChallenge,
    /// The peer speaks another protocol version (SECURITY.md §1.1): a
    /// device refuses a challenge of another version, a server a response
    /// of another version (0: a v1 device, which does not send one).
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})", PROTOCOL_VERSION = ward_proto::PROTOCOL_VERSION)]
    UnsupportedVersion(u32),
    /// A device of a user that does not exist yet presented no invite
    /// (SECURITY.md §8, E1): it may not open an enrolling session.
    #[error("no invite presented for an enrolment")]
    NoInvite,
    /// The invite presented with an enrolment does not verify from the
    /// root, or is for another user (E2–E4).
    #[error("invalid enrolment invite: {0}")]
    Invite(ChainError),
    /// The invite's delegation key did not sign this handshake (E5).
    #[error("the invite's delegation key did not sign this handshake")]
    BadInviteSignature,
}

/// A room's membership log, an epoch-key wrap or room metadata does not
/// verify (SECURITY.md §17). `reason` strings are normative (§17.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// Bad encoding, missing field, wrong length or over a limit.
    #[error("malformed room statement: {0}")]
    Malformed(&'static str),
    /// Too large, or not protobuf, or not canonical.
    #[error("undecodable room statement: {0}")]
    Decode(#[from] DecodeError),
    /// A protocol version this implementation does not speak.
    #[error("unsupported room statement version {0}")]
    UnsupportedVersion(u32),
    /// An empty log: every room starts with its creation.
    #[error("empty room log")]
    EmptyLog,
    /// The entry names another room.
    #[error("entry {seq} belongs to another room")]
    WrongRoom {
        /// Position in the log.
        seq: u64,
    },
    /// `seq` does not follow the previous entry.
    #[error("entry at position {expected} carries seq {found}")]
    BadSequence {
        /// The position.
        expected: u64,
        /// The seq written in the entry.
        found: u64,
    },
    /// `prev_hash` does not match the previous entry (or the genesis hash).
    #[error("entry {seq} does not chain to its predecessor")]
    BrokenChain {
        /// Position in the log.
        seq: u64,
    },
    /// Timestamps must not go backwards.
    #[error("entry {seq} is dated before its predecessor")]
    TimeWentBackwards {
        /// Position in the log.
        seq: u64,
    },
    /// The verifier has no verified log for the author's user: it must
    /// fetch and verify it, then try again.
    #[error("entry {seq}: the author's user log is unknown")]
    UnknownAuthor {
        /// Position in the log.
        seq: u64,
    },
    /// The entry cites a longer user log of its author than the verifier
    /// holds: refresh that log (§4.7), then try again.
    #[error("entry {seq}: the author's user log is behind the entry")]
    AuthorChainBehind {
        /// Position in the log.
        seq: u64,
    },
    /// The entry cites a shorter user log of its author than an earlier
    /// entry of the same author did.
    #[error("entry {seq}: the author's user log went backwards")]
    AuthorChainRolledBack {
        /// Position in the log.
        seq: u64,
    },
    /// The signing device was not an active device of its user at the
    /// cited log length.
    #[error("entry {seq} is signed by a device that was not active")]
    UnauthorizedDevice {
        /// Position in the log.
        seq: u64,
    },
    /// The signature does not verify.
    #[error("bad signature on room entry {seq}")]
    BadSignature {
        /// Position in the log.
        seq: u64,
    },
    /// The author is not a member of the room (never was, removed, or left).
    #[error("entry {seq} is signed by a non-member")]
    NotAMember {
        /// Position in the log.
        seq: u64,
    },
    /// Only an admin may sign this entry.
    #[error("entry {seq} needs an admin")]
    NotAdmin {
        /// Position in the log.
        seq: u64,
    },
    /// The entry would leave members without any admin.
    #[error("entry {seq} would leave the room without an admin")]
    LastAdmin {
        /// Position in the log.
        seq: u64,
    },
    /// The entry makes no sense in the current state.
    #[error("entry {seq}: {reason}")]
    InvalidTransition {
        /// Position in the log.
        seq: u64,
        /// What is wrong (a normative string of §17.8).
        reason: &'static str,
    },
    /// The served log is shorter than one already verified.
    #[error("room log rolled back from {known} to {served} entries")]
    Rollback {
        /// Entries known.
        known: u64,
        /// Entries served.
        served: u64,
    },
    /// The served log does not extend the one already verified.
    #[error("room log forked at or before entry {seq}")]
    Fork {
        /// Last entry known.
        seq: u64,
    },
    /// A wrap names an epoch the verified log does not have, or another
    /// epoch public key than the one the log commits to.
    #[error("the wrap names an epoch key the room's log does not commit to")]
    EpochKeyMismatch,
    /// A wrap or metadata did not open (its `WrapError`, or `Undecryptable`).
    #[error("room key wrap: {0}")]
    Wrap(#[from] WrapError),
    /// Producing an entry needs the verified log of this member.
    #[error("no verified log for member {0}")]
    UnknownMember(String),
    /// Producing an entry needs this epoch's private key, which is not held.
    #[error("epoch {0} key is not held")]
    MissingEpochKey(u64),
}

/// An attachment (SECURITY.md §16) could not be described, encrypted or
/// decrypted. Nothing a decryptor has not released before the error may be
/// used, and a download is complete only once its `finish` succeeds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    /// A descriptor or blob header field is out of bounds (§16.5 D1-D9).
    #[error("malformed attachment: {0}")]
    Malformed(&'static str),
    /// The descriptor is too large or not canonical protobuf.
    #[error("undecodable attachment descriptor: {0}")]
    Decode(#[from] DecodeError),
    /// The file is larger than [`crate::attachment::MAX_ATTACHMENT_BYTES`].
    #[error("attachment of {0} bytes exceeds the limit")]
    TooLarge(u64),
    /// The encryptor was given more or fewer bytes than the size it was
    /// created for.
    #[error("attachment declared as {declared} bytes but {given} were given")]
    SizeMismatch {
        /// The size the encryptor was created with.
        declared: u64,
        /// Bytes pushed so far (more than declared), or in total (fewer).
        given: u64,
    },
    /// The file key does not match the blob header's key commitment: the
    /// blob belongs to another attachment (a message pointing at another
    /// message's blob, a relay serving the wrong one), or the key is wrong.
    /// Checked in constant time before any chunk is decrypted (§16.6 B2).
    #[error("file key does not match the blob's key commitment")]
    KeyCommitmentMismatch,
    /// A chunk does not authenticate at its position: tampered, reordered,
    /// or taken from another file (§16.6 B4).
    #[error("chunk {index} does not authenticate at its position")]
    ChunkAuthFailed {
        /// The chunk's position in the stream.
        index: u64,
    },
    /// A chunk of the wrong length for its position: a non-final chunk
    /// shorter (or longer) than [`crate::stream::CHUNK_SIZE`], or an empty
    /// final chunk after others.
    #[error("chunk {index} has the wrong length for its position")]
    ChunkSize {
        /// The chunk's position in the stream.
        index: u64,
    },
    /// The stream ended before its final chunk: chunks were dropped from
    /// the end, or the download stopped early.
    #[error("attachment is truncated")]
    Truncated,
    /// Bytes after the final chunk.
    #[error("data after the end of the attachment")]
    TrailingData,
    /// A chunk pushed after the final one, or use after an error: nothing
    /// more is ever released.
    #[error("attachment stream already ended")]
    AfterEnd,
    /// The padding after the content is not all zero (a sender's fault:
    /// the chunk authenticated).
    #[error("attachment padding is not zero")]
    BadPadding,
    /// The blob's SHA-256 differs from the descriptor's: not the blob the
    /// signed message names (§16.6 B6).
    #[error("blob does not match the descriptor's hash")]
    HashMismatch,
}

/// A file could not be streamed to a blob or a blob to a file
/// ([`crate::attachment::seal_stream`], [`crate::attachment::open_stream`]).
/// What was written before the error is not a usable blob or file.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentIoError {
    /// The format refused the bytes (a tampered, truncated or foreign blob,
    /// a file of another size than declared).
    #[error(transparent)]
    Attachment(#[from] AttachmentError),
    /// The reader or the writer failed.
    #[error("attachment I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A thread of the pipeline could not be started (nothing was written
    /// then), or stopped without saying why.
    #[error("an attachment pipeline thread could not start or stopped")]
    Thread,
}
