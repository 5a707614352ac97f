//! Sealing and opening envelopes (SECURITY.md §7).
//!
//! Seal: a fresh [`ResourceKey`] `K`; from it, by HKDF, the AEAD key and a
//! *key commitment* that goes into the signed header (XChaCha20-Poly1305 is
//! not key-committing: without it one ciphertext can open to two plaintexts
//! under two keys); XChaCha20-Poly1305 over the padded content, in place in
//! the envelope buffer, with the encoded header as associated data; one
//! SHA-256 pass over the ciphertext; an Ed25519 signature by the sender
//! device over the header and that digest; and `K` wrapped once per
//! recipient *user*, to the key of that user's verified chain.
//!
//! Open: parse, check the sender against its verified chain, verify the
//! signature (hashing the ciphertext once), check this user is a recipient,
//! check the key commitment in constant time, then decrypt and unpad.
//!
//! ```
//! use ward_core::envelope::{self, SealRequest};
//! # use ward_core::testkit::Org;
//! # let mut rng = rand::rng();
//! # let org = Org::new(&mut rng);
//! # let alice = org.enroll(&mut rng, "alice");
//! # let bob = org.enroll(&mut rng, "bob");
//! let sealed = envelope::seal(&mut rng, &alice.device, &alice.chain, &SealRequest {
//!     conversation_id: ward_core::ConversationId([1; 16]),
//!     recipients: &[&alice.chain, &bob.chain],
//!     content_type: envelope::ContentType::Text,
//!     content: b"Patient in bed 12: potassium 6.1, please review",
//!     timestamp_ms: 1_790_000_000_000,
//! })?;
//! // sealed.envelope goes to the relay, sealed.wrapped_keys to the keyserver.
//!
//! let received = envelope::ReceivedEnvelope::parse(&sealed.envelope)?;
//! let (bob_wrapped) = &sealed.wrapped_keys[1].1;
//! let key = ward_core::wrap::unwrap_resource_key(bob_wrapped, &received.resource_id(), &bob.user_key)?;
//! let message = received.open(&alice.chain, "bob", &key)?;
//! assert_eq!(&message.content[..], b"Patient in bed 12: potassium 6.1, please review");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use std::sync::OnceLock;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use ward_proto::v1::{Envelope, EnvelopeHeader, RoomRecipient, WrappedKey};
use ward_proto::{Message, PROTOCOL_VERSION, decode_bounded, decode_canonical};
use zeroize::{Zeroize, Zeroizing};

use crate::chain::VerifiedUser;
use crate::error::{OpenError, SealError};
use crate::ids::{ConversationId, ResourceId, valid_user_id};
use crate::keys::{DeviceSigningKey, KeyId, ResourceKey, SigningPublicKey};
use crate::labels::{
    ENVELOPE_AEAD_KEY, ENVELOPE_KEY_COMMITMENT, HASH_CIPHERTEXT, SIG_ENVELOPE, framed, framed_hash,
};
use crate::padding;
use crate::room::{RoomId, VerifiedRoom};
use crate::wrap::wrap_resource_key;

/// Largest content one envelope carries (16 MiB); larger files are chunked.
pub const MAX_CONTENT_BYTES: usize = 16 << 20;
/// Most recipient users per envelope.
pub const MAX_RECIPIENTS: usize = 256;
/// Largest encoded header.
pub const MAX_HEADER_BYTES: usize = 40 << 10;
/// Largest encoded envelope: header, padded content, tag and signature.
pub const MAX_ENVELOPE_BYTES: usize = 20 << 20;
/// Length of the key commitment in the header.
pub const KEY_COMMITMENT_BYTES: usize = 32;

const TAG_BYTES: usize = 16;
const SIGNATURE_BYTES: usize = 64;

/// What the content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// UTF-8 text.
    Text,
    /// Opaque bytes (a document, a photo).
    File,
    /// An attachment descriptor (SECURITY.md §16.5): the encoded
    /// `AttachmentRef` of a file sent as a separate blob. Seal and open
    /// check it (S1, R10) with [`crate::attachment::Descriptor::parse`].
    Attachment,
    /// A room's earlier messages forwarded to a new member (SECURITY.md
    /// §17.13): an encoded `RoomHistory`, whose envelopes the receiver
    /// verifies one by one. Never shown as a message of its own.
    RoomHistory,
}

impl ContentType {
    /// The `ward.v1.ContentType` value (also what a linked device's history
    /// carries, §4.9).
    pub fn to_wire(self) -> i32 {
        match self {
            Self::Text => ward_proto::v1::ContentType::Text as i32,
            Self::File => ward_proto::v1::ContentType::File as i32,
            Self::Attachment => ward_proto::v1::ContentType::Attachment as i32,
            Self::RoomHistory => ward_proto::v1::ContentType::RoomHistory as i32,
        }
    }

    /// From a `ward.v1.ContentType` value; `None` for unspecified or unknown.
    pub fn from_wire(v: i32) -> Option<Self> {
        match ward_proto::v1::ContentType::try_from(v).ok()? {
            ward_proto::v1::ContentType::Text => Some(Self::Text),
            ward_proto::v1::ContentType::File => Some(Self::File),
            ward_proto::v1::ContentType::Attachment => Some(Self::Attachment),
            ward_proto::v1::ContentType::RoomHistory => Some(Self::RoomHistory),
            ward_proto::v1::ContentType::Unspecified => None,
        }
    }
}

/// What to seal.
pub struct SealRequest<'a> {
    /// The conversation the message belongs to.
    pub conversation_id: ConversationId,
    /// Every user who may read it, as verified chains; include the sender's
    /// own chain so its other devices can read what it sent.
    pub recipients: &'a [&'a VerifiedUser],
    /// What the content is.
    pub content_type: ContentType,
    /// The plaintext.
    pub content: &'a [u8],
    /// Unix milliseconds, from the caller's clock.
    pub timestamp_ms: u64,
}

/// A sealed envelope and its wrapped keys.
pub struct Sealed {
    /// The resource's id.
    pub resource_id: ResourceId,
    /// The encoded `Envelope`: for the relay.
    pub envelope: Vec<u8>,
    /// `(recipient user id, wrapped key)` for each recipient: for the keyserver.
    pub wrapped_keys: Vec<(String, WrappedKey)>,
    /// The resource key, for the sender's own store.
    pub resource_key: ResourceKey,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("resource_id", &self.resource_id)
            .field("envelope_len", &self.envelope.len())
            .field("recipients", &self.wrapped_keys.len())
            .finish_non_exhaustive()
    }
}

/// The AEAD key and the key commitment, both derived from the resource key
/// (§7.3 S4): `prk = HKDF-Extract(salt = resource id, ikm = K)`, then one
/// HKDF-Expand each. The commitment is collision-resistant in `K` (HMAC-SHA-256
/// of a fixed message under distinct keys), so no second key matches it;
/// being an independent PRF output, it reveals nothing about the AEAD key.
struct DerivedKeys {
    aead_key: Zeroizing<[u8; 32]>,
    commitment: [u8; KEY_COMMITMENT_BYTES],
}

fn derive_keys(key: &ResourceKey, resource_id: &ResourceId) -> DerivedKeys {
    let hk = Hkdf::<Sha256>::new(Some(resource_id.as_bytes()), key.as_bytes());
    let mut aead_key = Zeroizing::new([0u8; 32]);
    let mut commitment = [0u8; KEY_COMMITMENT_BYTES];
    // 32 bytes is far below HKDF's 255 * 32 limit: these cannot fail.
    let ok = hk.expand(ENVELOPE_AEAD_KEY, &mut *aead_key).is_ok()
        && hk.expand(ENVELOPE_KEY_COMMITMENT, &mut commitment).is_ok();
    debug_assert!(ok);
    DerivedKeys {
        aead_key,
        commitment,
    }
}

/// The one hash pass over the ciphertext that the signature commits to.
pub(crate) fn ciphertext_digest(ciphertext: &[u8]) -> [u8; 32] {
    framed_hash(HASH_CIPHERTEXT, &[ciphertext])
}

/// The signed transcript: `frame(SIG_ENVELOPE, header, digest)`. Ed25519
/// then hashes only the header and 32 bytes, not the ciphertext (twice).
pub(crate) fn signature_input(header: &[u8], digest: &[u8; 32]) -> Vec<u8> {
    framed(SIG_ENVELOPE, &[header, digest])
}

/// Appends the protobuf key and length of a length-delimited field.
fn put_len_field(out: &mut Vec<u8>, field: u32, len: usize) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(len as u64, out);
}

/// Checks a request against every rule a recipient would apply to the
/// envelope it makes (§7.3 S1-S3), so seal never makes one that all refuse.
fn check_request(
    device: &DeviceSigningKey,
    sender: &VerifiedUser,
    req: &SealRequest<'_>,
) -> Result<Vec<String>, SealError> {
    if req.content.len() > MAX_CONTENT_BYTES {
        return Err(SealError::TooLarge(req.content.len()));
    }
    if req.content_type == ContentType::Text && core::str::from_utf8(req.content).is_err() {
        return Err(SealError::InvalidText);
    }
    if req.content_type == ContentType::Attachment
        && crate::attachment::Descriptor::parse(req.content).is_err()
    {
        return Err(SealError::InvalidAttachment);
    }
    // S2: the conversation id is 16 bytes by type (`ConversationId`).
    if req.recipients.is_empty() {
        return Err(SealError::NoRecipients);
    }
    if req.recipients.len() > MAX_RECIPIENTS {
        return Err(SealError::TooManyRecipients(req.recipients.len()));
    }
    if !valid_user_id(sender.user_id())
        || !req.recipients.iter().all(|r| valid_user_id(r.user_id()))
    {
        return Err(SealError::InvalidUserId);
    }
    let mut recipient_ids: Vec<String> = Vec::with_capacity(req.recipients.len());
    for r in req.recipients {
        let id = r.user_id();
        if recipient_ids.iter().any(|known| known == id) {
            return Err(SealError::DuplicateRecipient(id.to_owned()));
        }
        recipient_ids.push(id.to_owned());
    }
    if !sender
        .device(&device.public_key())
        .is_some_and(|d| d.is_active())
    {
        return Err(SealError::DeviceNotActive);
    }
    Ok(recipient_ids)
}

/// Seals `req.content` from `device`, a device of `sender`.
///
/// Draws from `rng`, in order: the resource key (32 bytes), the resource id
/// (16), the nonce (24), then what one wrap draws (§6.3) per recipient.
///
/// The content is copied once, into the envelope buffer, and encrypted
/// there; the ciphertext is hashed once; the buffer is the envelope.
pub fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    device: &DeviceSigningKey,
    sender: &VerifiedUser,
    req: &SealRequest<'_>,
) -> Result<Sealed, SealError> {
    let recipient_ids = check_request(device, sender, req)?;
    let n = req.recipients.len();
    let (resource_id, envelope, resource_key) = seal_body(
        rng,
        device,
        sender,
        Addressing {
            conversation_id: req.conversation_id,
            recipient_user_ids: recipient_ids,
            room: None,
        },
        req.content_type,
        req.content,
        req.timestamp_ms,
    )
    .map_err(|e| match e {
        SealError::TooManyRecipients(_) => SealError::TooManyRecipients(n),
        e => e,
    })?;

    let mut wrapped_keys = Vec::with_capacity(req.recipients.len());
    for r in req.recipients {
        // Verified chains hold only keys that were parsed; a key that cannot
        // be wrapped to is refused here rather than skipped.
        let w = wrap_resource_key(rng, &resource_key, &resource_id, r.encryption_key())
            .map_err(|_| SealError::UnwrappableRecipient(r.user_id().to_owned()))?;
        wrapped_keys.push((r.user_id().to_owned(), w));
    }
    Ok(Sealed {
        resource_id,
        envelope,
        wrapped_keys,
        resource_key,
    })
}

/// Who an envelope is for: users (each wrapped to), or a room epoch.
struct Addressing {
    conversation_id: ConversationId,
    recipient_user_ids: Vec<String>,
    room: Option<RoomRecipient>,
}

/// S4-S9 (§7.3): draws the resource key, resource id and nonce, builds the
/// header, encrypts the padded content in the envelope buffer, hashes the
/// ciphertext once and signs.
fn seal_body<R: CryptoRng + ?Sized>(
    rng: &mut R,
    device: &DeviceSigningKey,
    sender: &VerifiedUser,
    to: Addressing,
    content_type: ContentType,
    content: &[u8],
    timestamp_ms: u64,
) -> Result<(ResourceId, Vec<u8>, ResourceKey), SealError> {
    let resource_key = ResourceKey::generate(rng);
    let resource_id = ResourceId::random(rng);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let keys = derive_keys(&resource_key, &resource_id);

    let header = EnvelopeHeader {
        version: PROTOCOL_VERSION,
        resource_id: resource_id.as_bytes().to_vec(),
        conversation_id: to.conversation_id.as_bytes().to_vec(),
        sender_user_id: sender.user_id().to_owned(),
        sender_device_id: device.public_key().as_bytes().to_vec(),
        timestamp_ms,
        content_type: content_type.to_wire(),
        nonce: nonce.to_vec(),
        recipient_user_ids: to.recipient_user_ids,
        key_commitment: keys.commitment.to_vec(),
        room: to.room,
    }
    .encode_to_vec();
    // 256 ids of 128 bytes fit in 40 KiB; keep seal and parse (P2) in step.
    if header.len() > MAX_HEADER_BYTES {
        return Err(SealError::TooManyRecipients(0));
    }

    // The envelope, encoded as prost would (fields 1, 2, 3), in one buffer:
    // the padded plaintext is written at its final place and encrypted there.
    let ct_len = padding::padded_len(content.len()) + TAG_BYTES;
    let mut buf = Zeroizing::new(Vec::with_capacity(
        header.len() + ct_len + SIGNATURE_BYTES + 3 * 11,
    ));
    put_len_field(&mut buf, 1, header.len());
    buf.extend_from_slice(&header);
    put_len_field(&mut buf, 2, ct_len);
    let ct_start = buf.len();
    padding::pad_into(&mut buf, content);
    let cipher = XChaCha20Poly1305::new(&(*keys.aead_key).into());
    let tag = cipher
        .encrypt_inout_detached(&nonce.into(), &header, (&mut buf[ct_start..]).into())
        .map_err(|_| SealError::TooLarge(content.len()))?;
    buf.extend_from_slice(&tag);
    // From here `buf` holds only ciphertext: it leaves the Zeroizing guard.
    let digest = ciphertext_digest(&buf[ct_start..]);
    let signature = device.sign(&signature_input(&header, &digest));
    put_len_field(&mut buf, 3, SIGNATURE_BYTES);
    buf.extend_from_slice(&signature);
    let envelope = core::mem::take(&mut *buf);
    Ok((resource_id, envelope, resource_key))
}

/// What to seal to a room.
pub struct RoomSealRequest<'a> {
    /// What the content is.
    pub content_type: ContentType,
    /// The plaintext.
    pub content: &'a [u8],
    /// Unix milliseconds, from the caller's clock.
    pub timestamp_ms: u64,
}

/// A sealed room message: one envelope, one wrapped key (to the epoch key).
pub struct RoomSealed {
    /// The resource's id.
    pub resource_id: ResourceId,
    /// The encoded `Envelope`: for the relay.
    pub envelope: Vec<u8>,
    /// The resource key wrapped to the room's current epoch key: for the
    /// keyserver, once, whatever the room's size.
    pub wrapped_key: WrappedKey,
    /// The epoch it is sealed to.
    pub epoch: u64,
    /// The resource key, for the sender's own store.
    pub resource_key: ResourceKey,
}

impl fmt::Debug for RoomSealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomSealed")
            .field("resource_id", &self.resource_id)
            .field("envelope_len", &self.envelope.len())
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// The conversation id of a room's messages: the room id's first 16 bytes
/// (§17.6), so that existing per-conversation code keys rooms apart.
pub fn room_conversation_id(room: &RoomId) -> ConversationId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&room.as_bytes()[..16]);
    ConversationId(id)
}

/// Seals `req.content` from `device` to the room's current epoch (§17.6):
/// the header names the room, the epoch and the epoch key's id instead of
/// recipients, and the resource key is wrapped once, to the epoch key.
///
/// Refuses, before drawing randomness: S1 and the device check of S3, a
/// sender who is not a current member (`NotARoomMember`, RS1), a room
/// whose epoch key a leaver still holds (`RoomRotationPending`, RS2).
/// Draws 32 (resource key), 16 (resource id), 24 (nonce), 64 (`eseed`).
pub fn seal_to_room<R: CryptoRng + ?Sized>(
    rng: &mut R,
    device: &DeviceSigningKey,
    sender: &VerifiedUser,
    room: &VerifiedRoom,
    req: &RoomSealRequest<'_>,
) -> Result<RoomSealed, SealError> {
    if req.content.len() > MAX_CONTENT_BYTES {
        return Err(SealError::TooLarge(req.content.len()));
    }
    if req.content_type == ContentType::Text && core::str::from_utf8(req.content).is_err() {
        return Err(SealError::InvalidText);
    }
    // S1 as for a user-addressed envelope: receivers refuse (R10) a
    // descriptor they could not act on.
    if req.content_type == ContentType::Attachment
        && crate::attachment::Descriptor::parse(req.content).is_err()
    {
        return Err(SealError::InvalidAttachment);
    }
    if !valid_user_id(sender.user_id()) {
        return Err(SealError::InvalidUserId);
    }
    if !sender
        .device(&device.public_key())
        .is_some_and(|d| d.is_active())
    {
        return Err(SealError::DeviceNotActive);
    }
    if !room.is_member(sender.user_id()) {
        return Err(SealError::NotARoomMember);
    }
    if room.rotation_pending() {
        return Err(SealError::RoomRotationPending);
    }
    let epoch = room.current_epoch();
    let epoch_key = *room
        .current_epoch_key()
        .ok_or(SealError::RoomRotationPending)?;
    let (resource_id, envelope, resource_key) = seal_body(
        rng,
        device,
        sender,
        Addressing {
            conversation_id: room_conversation_id(room.id()),
            recipient_user_ids: Vec::new(),
            room: Some(RoomRecipient {
                room_id: room.id().as_bytes().to_vec(),
                epoch,
                epoch_key: epoch_key.id().as_bytes().to_vec(),
            }),
        },
        req.content_type,
        req.content,
        req.timestamp_ms,
    )?;
    let wrapped_key = wrap_resource_key(rng, &resource_key, &resource_id, &epoch_key)
        .map_err(|_| SealError::UnwrappableRecipient(format!("room epoch {epoch}")))?;
    Ok(RoomSealed {
        resource_id,
        envelope,
        wrapped_key,
        epoch,
        resource_key,
    })
}

/// An envelope parsed from untrusted bytes, not yet verified. Its claimed
/// sender and resource id serve only to fetch the sender's chain and the
/// wrapped key.
#[derive(Debug, Clone)]
pub struct ReceivedEnvelope {
    header_bytes: Vec<u8>,
    ciphertext: Vec<u8>,
    signature: [u8; SIGNATURE_BYTES],
    /// The ciphertext digest, computed at the first verification: opening
    /// hashes the ciphertext once, however often it is verified.
    digest: OnceLock<[u8; 32]>,
    resource_id: ResourceId,
    conversation_id: ConversationId,
    sender_user_id: String,
    sender_device: SigningPublicKey,
    timestamp_ms: u64,
    content_type: ContentType,
    nonce: [u8; 24],
    recipients: Vec<String>,
    key_commitment: [u8; KEY_COMMITMENT_BYTES],
    /// A room message: the room, the epoch and its key's id (§17.6).
    room: Option<RoomAddress>,
}

/// The room a room message names (P11a, §17.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomAddress {
    /// The room.
    pub room_id: RoomId,
    /// The epoch whose key the resource key is wrapped to.
    pub epoch: u64,
    /// The id of that epoch's public key.
    pub epoch_key: KeyId,
}

impl ReceivedEnvelope {
    /// Parses an encoded `Envelope`, enforcing every length and limit.
    pub fn parse(bytes: &[u8]) -> Result<Self, OpenError> {
        let env: Envelope = decode_bounded(bytes, MAX_ENVELOPE_BYTES)?;
        if env.header.len() > MAX_HEADER_BYTES {
            return Err(OpenError::Malformed("header too large"));
        }
        let h: EnvelopeHeader = decode_canonical(&env.header, MAX_HEADER_BYTES)?;
        if h.version != PROTOCOL_VERSION {
            return Err(OpenError::UnsupportedVersion(h.version));
        }
        let resource_id =
            ResourceId::from_slice(&h.resource_id).ok_or(OpenError::Malformed("resource id"))?;
        let conversation_id = ConversationId::from_slice(&h.conversation_id)
            .ok_or(OpenError::Malformed("conversation id"))?;
        if !valid_user_id(&h.sender_user_id) {
            return Err(OpenError::Malformed("sender user id"));
        }
        let sender_device = SigningPublicKey::from_bytes(&h.sender_device_id)
            .map_err(|_| OpenError::Malformed("sender device"))?;
        let content_type =
            ContentType::from_wire(h.content_type).ok_or(OpenError::Malformed("content type"))?;
        let nonce: [u8; 24] = h
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| OpenError::Malformed("nonce"))?;
        // P11: users, or (P11a, §17.6) a room and no users.
        let room = match &h.room {
            None => None,
            Some(r) => {
                if !h.recipient_user_ids.is_empty() {
                    return Err(OpenError::Malformed("recipients"));
                }
                let room_id = RoomId::from_slice(&r.room_id).ok_or(OpenError::Malformed("room"))?;
                let epoch_key =
                    KeyId::from_bytes(&r.epoch_key).map_err(|_| OpenError::Malformed("room"))?;
                Some(RoomAddress {
                    room_id,
                    epoch: r.epoch,
                    epoch_key,
                })
            }
        };
        if (room.is_none() && h.recipient_user_ids.is_empty())
            || h.recipient_user_ids.len() > MAX_RECIPIENTS
            || !h.recipient_user_ids.iter().all(|r| valid_user_id(r))
        {
            return Err(OpenError::Malformed("recipients"));
        }
        let mut sorted: Vec<&String> = h.recipient_user_ids.iter().collect();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(OpenError::Malformed("duplicate recipient"));
        }
        let key_commitment: [u8; KEY_COMMITMENT_BYTES] = h
            .key_commitment
            .as_slice()
            .try_into()
            .map_err(|_| OpenError::Malformed("key commitment"))?;
        let signature: [u8; SIGNATURE_BYTES] = env
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| OpenError::Malformed("signature length"))?;
        if env.ciphertext.len() < padding::MIN_PADDED_LEN + TAG_BYTES {
            return Err(OpenError::Malformed("ciphertext too short"));
        }
        Ok(Self {
            header_bytes: env.header,
            ciphertext: env.ciphertext,
            signature,
            digest: OnceLock::new(),
            resource_id,
            conversation_id,
            sender_user_id: h.sender_user_id,
            sender_device,
            timestamp_ms: h.timestamp_ms,
            content_type,
            nonce,
            recipients: h.recipient_user_ids,
            key_commitment,
            room,
        })
    }

    /// The resource id (unverified until [`Self::open`]): which wrapped key
    /// to fetch. With the verified sender, also the deduplication key: the
    /// signature covers it, while the outer `Envelope` bytes can be
    /// re-encoded by anyone without breaking the signature (§7.6).
    pub fn resource_id(&self) -> ResourceId {
        self.resource_id
    }

    /// The claimed sender (unverified until [`Self::open`]): whose chain to fetch.
    pub fn claimed_sender(&self) -> (&str, &SigningPublicKey) {
        (&self.sender_user_id, &self.sender_device)
    }

    /// The (unverified) recipients listed in the header.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// Checks everything that needs no key: the sender against its verified
    /// chain, the device's status, the signature, and that `me` is a
    /// recipient. A receiver calls it before waiting for the wrapped key, so
    /// a forged envelope is refused at once; [`Self::open`] checks it again
    /// (without hashing the ciphertext again).
    pub fn verify(&self, sender: &VerifiedUser, me: &str) -> Result<(), OpenError> {
        self.verify_sender(sender)?;
        if !self.recipients.iter().any(|r| r == me) {
            return Err(OpenError::NotARecipient);
        }
        Ok(())
    }

    /// The room a room message names (unverified until
    /// [`Self::verify_in_room`]): which room log and epoch key to use.
    pub fn room(&self) -> Option<&RoomAddress> {
        self.room.as_ref()
    }

    /// The key-free checks of a room message (§17.6): R1-R4, then RM1 the
    /// header names this verified room (`NotARecipient`), RM2 an epoch of
    /// it with the committed key id (`UnknownEpoch`), RM3 the sender was a
    /// member during that epoch (`SenderNotInRoom`).
    pub fn verify_in_room(
        &self,
        sender: &VerifiedUser,
        room: &VerifiedRoom,
    ) -> Result<(), OpenError> {
        self.verify_sender(sender)?;
        let addr = self
            .room
            .as_ref()
            .filter(|a| a.room_id == *room.id())
            .ok_or(OpenError::NotARecipient)?;
        let committed = usize::try_from(addr.epoch)
            .ok()
            .and_then(|e| room.epochs().get(e))
            .is_some_and(|e| e.public_key.id() == addr.epoch_key);
        if !committed {
            return Err(OpenError::UnknownEpoch);
        }
        if !room.was_member_during(&self.sender_user_id, addr.epoch) {
            return Err(OpenError::SenderNotInRoom);
        }
        Ok(())
    }

    /// Verifies a room message against the sender's verified chain and the
    /// room's verified log, and decrypts it with the resource key unwrapped
    /// with the epoch key ([`crate::wrap::unwrap_room_resource_key`]).
    pub fn open_in_room(
        &self,
        sender: &VerifiedUser,
        room: &VerifiedRoom,
        key: &ResourceKey,
    ) -> Result<OpenedMessage, OpenError> {
        self.verify_in_room(sender, room)?;
        let aead_key = self.aead_key(key)?;
        let content = self.decrypt(&aead_key, Zeroizing::new(self.ciphertext.clone()))?;
        Ok(self.message(content))
    }

    /// R1-R4: the sender against its verified chain, and the signature.
    fn verify_sender(&self, sender: &VerifiedUser) -> Result<(), OpenError> {
        if sender.user_id() != self.sender_user_id {
            return Err(OpenError::SenderMismatch);
        }
        let device = sender
            .device(&self.sender_device)
            .ok_or(OpenError::UnknownSenderDevice)?;
        if !device.is_active() {
            return Err(OpenError::SenderDeviceRevoked);
        }
        let digest = self
            .digest
            .get_or_init(|| ciphertext_digest(&self.ciphertext));
        if !self.sender_device.verify(
            &signature_input(&self.header_bytes, digest),
            &self.signature,
        ) {
            return Err(OpenError::BadSignature);
        }
        Ok(())
    }

    /// R6: the AEAD key, once `key` matches the signed commitment (compared
    /// in constant time: the commitment is public, but the check must not
    /// time how much of a candidate key's output matched).
    fn aead_key(&self, key: &ResourceKey) -> Result<Zeroizing<[u8; 32]>, OpenError> {
        let keys = derive_keys(key, &self.resource_id);
        if !bool::from(keys.commitment.ct_eq(&self.key_commitment)) {
            return Err(OpenError::KeyCommitmentMismatch);
        }
        Ok(keys.aead_key)
    }

    /// R7-R9: decrypts `buf` (the ciphertext and tag) in place, unpads, and
    /// builds the message around the plaintext left in `buf`.
    fn decrypt(
        &self,
        aead_key: &[u8; 32],
        mut buf: Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let split = buf
            .len()
            .checked_sub(TAG_BYTES)
            .ok_or(OpenError::Undecryptable)?;
        let cipher = XChaCha20Poly1305::new(&(*aead_key).into());
        let (body, tag) = buf.split_at_mut(split);
        let tag: [u8; TAG_BYTES] = (&*tag).try_into().map_err(|_| OpenError::Undecryptable)?;
        cipher
            .decrypt_inout_detached(
                &self.nonce.into(),
                &self.header_bytes,
                body.into(),
                &tag.into(),
            )
            .map_err(|_| OpenError::Undecryptable)?;
        let len = padding::unpad(&buf[..split]).ok_or(OpenError::Undecryptable)?;
        // The sender signed it, so this is the sender's fault, not an oracle.
        if self.content_type == ContentType::Text && core::str::from_utf8(&buf[..len]).is_err() {
            return Err(OpenError::Malformed("text content is not UTF-8"));
        }
        // R10, likewise on signed content: a message of kind attachment that
        // a receiver could not act on is refused whole, before it is stored.
        if self.content_type == ContentType::Attachment
            && crate::attachment::Descriptor::parse(&buf[..len]).is_err()
        {
            return Err(OpenError::Malformed("attachment descriptor"));
        }
        // Zero the padding and tag before dropping them from the length.
        buf[len..].zeroize();
        buf.truncate(len);
        Ok(buf)
    }

    fn message(&self, content: Zeroizing<Vec<u8>>) -> OpenedMessage {
        OpenedMessage {
            resource_id: self.resource_id,
            conversation_id: self.conversation_id,
            sender_user_id: self.sender_user_id.clone(),
            sender_device: self.sender_device,
            timestamp_ms: self.timestamp_ms,
            content_type: self.content_type,
            recipients: self.recipients.clone(),
            room: self.room,
            content,
        }
    }

    /// Verifies the envelope against the sender's verified chain and decrypts
    /// it for `me` (this user's id) with the unwrapped resource key. Copies
    /// the ciphertext once, to decrypt it; [`Self::open_in_place`] does not.
    pub fn open(
        &self,
        sender: &VerifiedUser,
        me: &str,
        key: &ResourceKey,
    ) -> Result<OpenedMessage, OpenError> {
        self.verify(sender, me)?;
        let aead_key = self.aead_key(key)?;
        let content = self.decrypt(&aead_key, Zeroizing::new(self.ciphertext.clone()))?;
        Ok(self.message(content))
    }

    /// As [`Self::open`], decrypting in the envelope's own buffer: the
    /// content is the ciphertext's buffer, truncated. No copy of the content.
    pub fn open_in_place(
        mut self,
        sender: &VerifiedUser,
        me: &str,
        key: &ResourceKey,
    ) -> Result<OpenedMessage, OpenError> {
        self.verify(sender, me)?;
        let aead_key = self.aead_key(key)?;
        let buf = Zeroizing::new(core::mem::take(&mut self.ciphertext));
        let content = self.decrypt(&aead_key, buf)?;
        Ok(self.message(content))
    }
}

/// A verified, decrypted message.
pub struct OpenedMessage {
    /// The resource id: with the sender, the deduplication key.
    pub resource_id: ResourceId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The sender, verified against its chain.
    pub sender_user_id: String,
    /// The device that signed.
    pub sender_device: SigningPublicKey,
    /// The sender's claimed time (unix ms).
    pub timestamp_ms: u64,
    /// What the content is.
    pub content_type: ContentType,
    /// Every user it was sealed for (empty for a room message).
    pub recipients: Vec<String>,
    /// For a room message: the room and epoch it was sealed to.
    pub room: Option<RoomAddress>,
    /// The plaintext.
    pub content: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for OpenedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedMessage")
            .field("resource_id", &self.resource_id)
            .field("sender_user_id", &self.sender_user_id)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;

    use super::*;
    use crate::error::WrapError;
    use crate::testkit::{Clinician, Org};
    use crate::wrap::unwrap_resource_key;

    struct Fixture {
        alice: Clinician,
        others: Vec<Clinician>,
    }

    // Enrolled once: each enrollment signs and verifies several statements.
    static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        Fixture {
            alice: org.enroll(&mut rng, "alice"),
            others: ["bob", "carol", "dave"]
                .iter()
                .map(|id| org.enroll(&mut rng, id))
                .collect(),
        }
    });

    fn request<'a>(
        recipients: &'a [&'a VerifiedUser],
        content_type: ContentType,
        content: &'a [u8],
    ) -> SealRequest<'a> {
        SealRequest {
            conversation_id: ConversationId([7; 16]),
            recipients,
            content_type,
            content,
            timestamp_ms: 1_795_910_400_000,
        }
    }

    fn seal_from_alice(
        recipients: &[&VerifiedUser],
        content_type: ContentType,
        content: &[u8],
    ) -> Sealed {
        let f = &*FIXTURE;
        seal(
            &mut rand::rng(),
            &f.alice.device,
            &f.alice.chain,
            &request(recipients, content_type, content),
        )
        .unwrap()
    }

    /// Unwraps `who`'s key and opens `sealed` as `who`.
    fn open_as(sealed: &Sealed, who: &Clinician) -> Result<OpenedMessage, OpenError> {
        let received = ReceivedEnvelope::parse(&sealed.envelope)?;
        let (_, wrapped) = sealed
            .wrapped_keys
            .iter()
            .find(|(id, _)| id == who.chain.user_id())
            .unwrap();
        let key = unwrap_resource_key(wrapped, &received.resource_id(), &who.user_key).unwrap();
        received.open(&FIXTURE.alice.chain, who.chain.user_id(), &key)
    }

    #[test]
    fn text_and_file_round_trip_for_every_recipient() {
        let f = &*FIXTURE;
        let bob = &f.others[0];
        let recipients = [&f.alice.chain, &bob.chain];
        let text = "Patient in bed 12: potassium 6.1 mmol/L, à revoir".as_bytes();
        let file: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        for (content_type, content) in [(ContentType::Text, text), (ContentType::File, &file)] {
            let sealed = seal_from_alice(&recipients, content_type, content);
            assert_eq!(sealed.wrapped_keys.len(), 2);
            for who in [&f.alice, bob] {
                let m = open_as(&sealed, who).unwrap();
                assert_eq!(&m.content[..], content);
                assert_eq!(m.content_type, content_type);
                assert_eq!(m.resource_id, sealed.resource_id);
                assert_eq!(m.conversation_id, ConversationId([7; 16]));
                assert_eq!(m.sender_user_id, "alice");
                assert_eq!(m.sender_device, f.alice.device.public_key());
                assert_eq!(m.timestamp_ms, 1_795_910_400_000);
                assert_eq!(m.recipients, ["alice", "bob"]);
            }
            // The sender keeps the resource key; it opens too.
            let received = ReceivedEnvelope::parse(&sealed.envelope).unwrap();
            assert_eq!(received.resource_id(), sealed.resource_id);
            assert_eq!(
                received.claimed_sender(),
                ("alice", &f.alice.device.public_key())
            );
            let m = received
                .open(&f.alice.chain, "alice", &sealed.resource_key)
                .unwrap();
            assert_eq!(&m.content[..], content);
            // The ciphertext is the padded length plus the tag.
            let env = Envelope::decode(sealed.envelope.as_slice()).unwrap();
            assert_eq!(
                env.ciphertext.len(),
                padding::padded_len(content.len()) + TAG_BYTES
            );
        }
    }

    #[test]
    fn a_recipient_cannot_use_another_recipients_wrapped_key() {
        let f = &*FIXTURE;
        let bob = &f.others[0];
        let sealed = seal_from_alice(&[&f.alice.chain, &bob.chain], ContentType::Text, b"hi");
        let alices = &sealed.wrapped_keys[0].1;
        assert_eq!(
            unwrap_resource_key(alices, &sealed.resource_id, &bob.user_key).err(),
            Some(WrapError::WrongRecipient)
        );
    }

    #[test]
    fn replaying_an_envelope_opens_it_identically() {
        // Opening is a pure function of the bytes: a replayed envelope opens
        // again, identically. Deduplication (on the resource id, which the
        // signature covers) is the SDK's job, not the core's.
        let f = &*FIXTURE;
        let bob = &f.others[0];
        let sealed = seal_from_alice(&[&bob.chain], ContentType::Text, b"same twice");
        let first = open_as(&sealed, bob).unwrap();
        let second = open_as(&sealed, bob).unwrap();
        assert_eq!(&first.content[..], &second.content[..]);
        assert_eq!(first.resource_id, second.resource_id);
        assert_eq!(first.timestamp_ms, second.timestamp_ms);
    }

    #[test]
    fn seal_refuses_bad_requests() {
        let f = &*FIXTURE;
        let dev = &f.alice.device;
        let me = &f.alice.chain;
        let mut rng = rand::rng();
        let none: [&VerifiedUser; 0] = [];
        assert_eq!(
            seal(&mut rng, dev, me, &request(&none, ContentType::Text, b"x")).err(),
            Some(SealError::NoRecipients)
        );
        let twice = [me, &f.others[0].chain, me];
        assert_eq!(
            seal(&mut rng, dev, me, &request(&twice, ContentType::Text, b"x")).err(),
            Some(SealError::DuplicateRecipient("alice".into()))
        );
        let many = vec![me; MAX_RECIPIENTS + 1];
        assert_eq!(
            seal(&mut rng, dev, me, &request(&many, ContentType::Text, b"x")).err(),
            Some(SealError::TooManyRecipients(MAX_RECIPIENTS + 1))
        );
        assert_eq!(
            seal(
                &mut rng,
                dev,
                me,
                &request(&[me], ContentType::Text, b"\xff")
            )
            .err(),
            Some(SealError::InvalidText)
        );
        // Bob's device signing for alice's chain.
        assert_eq!(
            seal(
                &mut rng,
                &f.others[0].device,
                me,
                &request(&[me], ContentType::Text, b"x")
            )
            .err(),
            Some(SealError::DeviceNotActive)
        );
        let big = vec![0u8; MAX_CONTENT_BYTES + 1];
        assert_eq!(
            seal(&mut rng, dev, me, &request(&[me], ContentType::File, &big)).err(),
            Some(SealError::TooLarge(MAX_CONTENT_BYTES + 1))
        );
    }

    /// Re-encodes `sealed` after `edit` changed its decoded header or its
    /// envelope. If the edit left `env.header` as it was, the header is
    /// re-encoded from the (possibly edited) decoded header; otherwise the
    /// edit's raw header bytes stand. The signature is not redone: parse does
    /// not check it.
    fn edited(sealed: &Sealed, edit: impl FnOnce(&mut EnvelopeHeader, &mut Envelope)) -> Vec<u8> {
        let mut env = Envelope::decode(sealed.envelope.as_slice()).unwrap();
        let mut h = EnvelopeHeader::decode(env.header.as_slice()).unwrap();
        edit(&mut h, &mut env);
        if env.header == Envelope::decode(sealed.envelope.as_slice()).unwrap().header {
            env.header = h.encode_to_vec();
        }
        env.encode_to_vec()
    }

    fn parse_err(bytes: &[u8]) -> OpenError {
        ReceivedEnvelope::parse(bytes).unwrap_err()
    }

    #[test]
    fn parse_enforces_every_limit() {
        let f = &*FIXTURE;
        let sealed = seal_from_alice(&[&f.others[0].chain], ContentType::Text, b"limits");
        let e = |edit: fn(&mut EnvelopeHeader, &mut Envelope)| parse_err(&edited(&sealed, edit));
        assert!(ReceivedEnvelope::parse(&edited(&sealed, |_, _| {})).is_ok());

        assert_eq!(
            e(|h, _| h.version = PROTOCOL_VERSION + 1),
            OpenError::UnsupportedVersion(PROTOCOL_VERSION + 1)
        );
        assert_eq!(e(|h, _| h.version = 0), OpenError::UnsupportedVersion(0));
        assert_eq!(
            e(|h, _| h.nonce.truncate(23)),
            OpenError::Malformed("nonce")
        );
        assert_eq!(e(|h, _| h.nonce.push(0)), OpenError::Malformed("nonce"));
        assert_eq!(e(|h, _| h.nonce.clear()), OpenError::Malformed("nonce"));
        assert_eq!(
            e(|h, _| h.content_type = 0),
            OpenError::Malformed("content type")
        );
        assert_eq!(
            e(|h, _| h.content_type = 5),
            OpenError::Malformed("content type")
        );
        assert_eq!(
            e(|h, _| h.content_type = -1),
            OpenError::Malformed("content type")
        );
        assert_eq!(
            e(|h, _| h.recipient_user_ids.clear()),
            OpenError::Malformed("recipients")
        );
        assert_eq!(
            e(|h, _| h.recipient_user_ids = vec!["r".into(); MAX_RECIPIENTS + 1]),
            OpenError::Malformed("recipients")
        );
        assert!(
            ReceivedEnvelope::parse(&edited(&sealed, |h, _| {
                h.recipient_user_ids = (0..MAX_RECIPIENTS).map(|i| format!("r{i}")).collect();
            }))
            .is_ok()
        );
        assert_eq!(
            e(|h, _| h.recipient_user_ids = vec!["r".into(), "s".into(), "r".into()]),
            OpenError::Malformed("duplicate recipient")
        );
        assert_eq!(
            e(|h, _| h.recipient_user_ids.push(String::new())),
            OpenError::Malformed("recipients")
        );
        assert_eq!(
            e(|h, _| h.recipient_user_ids.push("a\nb".into())),
            OpenError::Malformed("recipients")
        );
        assert_eq!(
            e(|h, _| h.resource_id.truncate(15)),
            OpenError::Malformed("resource id")
        );
        assert_eq!(
            e(|h, _| h.conversation_id.push(0)),
            OpenError::Malformed("conversation id")
        );
        assert_eq!(
            e(|h, _| h.sender_user_id = "x".repeat(129)),
            OpenError::Malformed("sender user id")
        );
        assert_eq!(
            e(|h, _| h.sender_device_id.truncate(31)),
            OpenError::Malformed("sender device")
        );
        // The identity point is a weak (small-order) Ed25519 key.
        assert_eq!(
            e(|h, _| {
                h.sender_device_id = vec![0; 32];
                h.sender_device_id[0] = 1;
            }),
            OpenError::Malformed("sender device")
        );
        assert_eq!(
            e(|h, _| h.key_commitment.pop().map_or((), drop)),
            OpenError::Malformed("key commitment")
        );
        assert_eq!(
            e(|h, _| h.key_commitment.clear()),
            OpenError::Malformed("key commitment")
        );
        assert_eq!(
            e(|h, _| h.key_commitment.push(0)),
            OpenError::Malformed("key commitment")
        );
        assert_eq!(
            e(|_, env| env.signature.truncate(63)),
            OpenError::Malformed("signature length")
        );
        // Ciphertext shorter than the smallest padded content and its tag.
        assert_eq!(
            e(|_, env| env
                .ciphertext
                .truncate(padding::MIN_PADDED_LEN + TAG_BYTES - 1)),
            OpenError::Malformed("ciphertext too short")
        );
        assert_eq!(
            e(|_, env| env.ciphertext.clear()),
            OpenError::Malformed("ciphertext too short")
        );
        // Sizes and encodings.
        assert_eq!(
            e(|_, env| env.header = vec![0x0a; MAX_HEADER_BYTES + 1]),
            OpenError::Malformed("header too large")
        );
        assert_eq!(
            e(|_, env| env.header = vec![0xff; 8]),
            OpenError::Decode(ward_proto::DecodeError::Malformed)
        );
        assert_eq!(
            parse_err(&[0xff; 8]),
            OpenError::Decode(ward_proto::DecodeError::Malformed)
        );
        assert_eq!(
            parse_err(&vec![0; MAX_ENVELOPE_BYTES + 1]),
            OpenError::Decode(ward_proto::DecodeError::TooLarge {
                len: MAX_ENVELOPE_BYTES + 1,
                max: MAX_ENVELOPE_BYTES
            })
        );
    }

    #[test]
    fn open_checks_sender_signature_and_recipients() {
        let f = &*FIXTURE;
        let bob = &f.others[0];
        let carol = &f.others[1];
        let sealed = seal_from_alice(&[&bob.chain], ContentType::Text, b"for bob");
        let received = ReceivedEnvelope::parse(&sealed.envelope).unwrap();
        let key = &sealed.resource_key;
        assert_eq!(
            received.open(&bob.chain, "bob", key).err().unwrap(),
            OpenError::SenderMismatch
        );
        assert_eq!(
            received.open(&f.alice.chain, "carol", key).err().unwrap(),
            OpenError::NotARecipient
        );
        // Any other key fails the commitment, before any decryption.
        let wrong = ResourceKey::import_secret(&[9; 32]).unwrap();
        assert_eq!(
            received.open(&f.alice.chain, "bob", &wrong).err().unwrap(),
            OpenError::KeyCommitmentMismatch
        );
        // Signed by carol's device while claiming alice's: unknown to alice's chain.
        let mut claimed = edited(&sealed, |h, _| {
            h.sender_device_id = carol.device.public_key().as_bytes().to_vec();
        });
        let mut env = Envelope::decode(claimed.as_slice()).unwrap();
        env.signature = carol
            .device
            .sign(&signature_input(
                &env.header,
                &ciphertext_digest(&env.ciphertext),
            ))
            .to_vec();
        claimed = env.encode_to_vec();
        assert_eq!(
            ReceivedEnvelope::parse(&claimed)
                .unwrap()
                .open(&f.alice.chain, "bob", key)
                .err()
                .unwrap(),
            OpenError::UnknownSenderDevice
        );
        // A bit of the header (inside the resource id, so that it still
        // parses), of the ciphertext or of the signature.
        for which in 0..3 {
            let bytes = edited(&sealed, |_, env| match which {
                0 => env.header[5] ^= 1,
                1 => env.ciphertext[0] ^= 1,
                _ => env.signature[0] ^= 1,
            });
            let r = ReceivedEnvelope::parse(&bytes).unwrap();
            assert_eq!(
                r.open(&f.alice.chain, "bob", key).err(),
                Some(OpenError::BadSignature),
                "{which}"
            );
        }
    }

    #[test]
    fn the_envelope_buffer_is_what_prost_encodes() {
        // Seal writes the `Envelope` by hand, to encrypt in place; it must be
        // byte for byte the canonical encoding.
        let f = &*FIXTURE;
        for len in [0usize, 300, 70_000] {
            let content = vec![0x5a; len];
            let sealed = seal_from_alice(&[&f.others[0].chain], ContentType::File, &content);
            let env = Envelope::decode(sealed.envelope.as_slice()).unwrap();
            assert_eq!(env.encode_to_vec(), sealed.envelope, "{len}");
            assert_eq!(env.signature.len(), SIGNATURE_BYTES);
            // One allocation, sized up front: a reallocation would have
            // doubled the capacity (and left a copy of the plaintext behind).
            assert!(
                sealed.envelope.capacity() - sealed.envelope.len() < 40,
                "{len}"
            );
        }
    }

    #[test]
    fn open_in_place_gives_what_open_gives() {
        let f = &*FIXTURE;
        let bob = &f.others[0];
        let content: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let sealed = seal_from_alice(&[&bob.chain], ContentType::File, &content);
        let received = ReceivedEnvelope::parse(&sealed.envelope).unwrap();
        let a = received
            .open(&f.alice.chain, "bob", &sealed.resource_key)
            .unwrap();
        let b = received
            .clone()
            .open_in_place(&f.alice.chain, "bob", &sealed.resource_key)
            .unwrap();
        assert_eq!(&a.content[..], &content[..]);
        assert_eq!(&b.content[..], &content[..]);
        let wrong = ResourceKey::import_secret(&[3; 32]).unwrap();
        assert_eq!(
            received.open_in_place(&f.alice.chain, "bob", &wrong).err(),
            Some(OpenError::KeyCommitmentMismatch)
        );
    }

    /// What a malicious sender would do without the commitment check: one
    /// envelope whose header commits to `committed`, encrypted under the
    /// AEAD key of `used`, properly signed.
    fn forged(committed: &ResourceKey, used: &ResourceKey, content: &[u8]) -> Vec<u8> {
        let f = &*FIXTURE;
        let rid = ResourceId([4; 16]);
        let nonce = [5u8; 24];
        let header = EnvelopeHeader {
            version: PROTOCOL_VERSION,
            resource_id: rid.as_bytes().to_vec(),
            conversation_id: vec![7; 16],
            sender_user_id: "alice".into(),
            sender_device_id: f.alice.device.public_key().as_bytes().to_vec(),
            timestamp_ms: 1,
            content_type: ContentType::File.to_wire(),
            nonce: nonce.to_vec(),
            recipient_user_ids: vec!["bob".into(), "carol".into()],
            key_commitment: derive_keys(committed, &rid).commitment.to_vec(),
            room: None,
        }
        .encode_to_vec();
        let mut ct = padding::pad(content).to_vec();
        let aead_key = derive_keys(used, &rid).aead_key;
        let tag = XChaCha20Poly1305::new(&(*aead_key).into())
            .encrypt_inout_detached(&nonce.into(), &header, ct.as_mut_slice().into())
            .unwrap();
        ct.extend_from_slice(&tag);
        let signature = f
            .alice
            .device
            .sign(&signature_input(&header, &ciphertext_digest(&ct)))
            .to_vec();
        Envelope {
            header,
            ciphertext: ct,
            signature,
        }
        .encode_to_vec()
    }

    #[test]
    fn a_key_that_does_not_match_the_commitment_is_refused_before_decrypting() {
        let f = &*FIXTURE;
        let k1 = ResourceKey::import_secret(&[1; 32]).unwrap();
        let k2 = ResourceKey::import_secret(&[2; 32]).unwrap();
        // Honest: commitment and AEAD key from the same K.
        let honest = ReceivedEnvelope::parse(&forged(&k1, &k1, b"potassium 6.1")).unwrap();
        assert_eq!(
            &honest.open(&f.alice.chain, "bob", &k1).unwrap().content[..],
            b"potassium 6.1"
        );
        // Bob is handed K2 (the key the ciphertext really uses), carol K1:
        // bob's key fails the commitment, carol's fails the AEAD. Nobody
        // sees a plaintext, let alone two different ones.
        let evil = ReceivedEnvelope::parse(&forged(&k1, &k2, b"potassium 3.9")).unwrap();
        assert_eq!(
            evil.open(&f.alice.chain, "bob", &k2).err(),
            Some(OpenError::KeyCommitmentMismatch)
        );
        assert_eq!(
            evil.open(&f.alice.chain, "carol", &k1).err(),
            Some(OpenError::Undecryptable)
        );
    }

    #[test]
    fn the_commitment_depends_on_the_key_and_the_resource() {
        let k1 = ResourceKey::import_secret(&[1; 32]).unwrap();
        let k2 = ResourceKey::import_secret(&[2; 32]).unwrap();
        let (r1, r2) = (ResourceId([1; 16]), ResourceId([2; 16]));
        let c = |k, r| derive_keys(k, r).commitment;
        assert_ne!(c(&k1, &r1), c(&k2, &r1));
        assert_ne!(c(&k1, &r1), c(&k1, &r2));
        // The commitment is not the AEAD key.
        assert_ne!(c(&k1, &r1), *derive_keys(&k1, &r1).aead_key);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn seal_open_round_trips(
            content in proptest::collection::vec(any::<u8>(), 0..20_000),
            n in 1usize..4,
            file in any::<bool>(),
        ) {
            let f = &*FIXTURE;
            let mut recipients: Vec<&VerifiedUser> = vec![&f.alice.chain];
            recipients.extend(f.others.iter().take(n - 1).map(|c| &c.chain));
            let (content_type, content) = if file {
                (ContentType::File, content)
            } else {
                (ContentType::Text, String::from_utf8_lossy(&content).into_owned().into_bytes())
            };
            let sealed = seal_from_alice(&recipients, content_type, &content);
            prop_assert_eq!(sealed.wrapped_keys.len(), n);
            let env = Envelope::decode(sealed.envelope.as_slice()).unwrap();
            prop_assert_eq!(
                env.ciphertext.len(),
                padding::padded_len(content.len()) + TAG_BYTES
            );
            for who in std::iter::once(&f.alice).chain(f.others.iter().take(n - 1)) {
                let m = open_as(&sealed, who).unwrap();
                prop_assert_eq!(&m.content[..], &content[..]);
                prop_assert_eq!(m.content_type, content_type);
                prop_assert_eq!(m.recipients.len(), n);
            }
            // Those left out are not recipients.
            for who in f.others.iter().skip(n - 1) {
                let received = ReceivedEnvelope::parse(&sealed.envelope).unwrap();
                prop_assert_eq!(
                    received.open(&f.alice.chain, who.chain.user_id(), &sealed.resource_key).err(),
                    Some(OpenError::NotARecipient)
                );
            }
        }
    }
}
