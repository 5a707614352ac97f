//! Sealing and opening envelopes (SECURITY.md §7).
//!
//! Seal: a fresh [`ResourceKey`], XChaCha20-Poly1305 over the padded content
//! with the encoded header as associated data, an Ed25519 signature by the
//! sender device over the header and ciphertext, and the resource key wrapped
//! once per recipient *user*, to the key of that user's verified chain.
//!
//! Open: parse, check the sender against its verified chain, verify the
//! signature, check this user is a recipient, decrypt, unpad.
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

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use rand_core::CryptoRng;
use ward_proto::v1::{Envelope, EnvelopeHeader, WrappedKey};
use ward_proto::{Message, PROTOCOL_VERSION, decode_bounded};
use zeroize::Zeroizing;

use crate::chain::VerifiedUser;
use crate::error::{OpenError, SealError};
use crate::ids::{ConversationId, ResourceId, valid_user_id};
use crate::keys::{DeviceSigningKey, ResourceKey, SigningPublicKey};
use crate::labels::{SIG_ENVELOPE, framed};
use crate::padding;
use crate::wrap::wrap_resource_key;

/// Largest content one envelope carries (16 MiB); larger files are chunked.
pub const MAX_CONTENT_BYTES: usize = 16 << 20;
/// Most recipient users per envelope.
pub const MAX_RECIPIENTS: usize = 256;
/// Largest encoded header.
pub const MAX_HEADER_BYTES: usize = 40 << 10;
/// Largest encoded envelope: header, padded content, tag and signature.
pub const MAX_ENVELOPE_BYTES: usize = 20 << 20;

const TAG_BYTES: usize = 16;

/// What the content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// UTF-8 text.
    Text,
    /// Opaque bytes (a document, a photo).
    File,
}

impl ContentType {
    fn to_wire(self) -> i32 {
        match self {
            Self::Text => ward_proto::v1::ContentType::Text as i32,
            Self::File => ward_proto::v1::ContentType::File as i32,
        }
    }

    fn from_wire(v: i32) -> Option<Self> {
        match ward_proto::v1::ContentType::try_from(v).ok()? {
            ward_proto::v1::ContentType::Text => Some(Self::Text),
            ward_proto::v1::ContentType::File => Some(Self::File),
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

fn signature_input(header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    framed(SIG_ENVELOPE, &[header, ciphertext])
}

/// Seals `req.content` from `device`, a device of `sender`.
///
/// Draws from `rng`, in order: the resource key (32 bytes), the resource id
/// (16), the nonce (24), then 32 bytes per recipient for its wrap.
pub fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    device: &DeviceSigningKey,
    sender: &VerifiedUser,
    req: &SealRequest<'_>,
) -> Result<Sealed, SealError> {
    if req.content.len() > MAX_CONTENT_BYTES {
        return Err(SealError::TooLarge(req.content.len()));
    }
    if req.recipients.is_empty() || req.recipients.len() > MAX_RECIPIENTS {
        return Err(SealError::InvalidRecipients);
    }
    let mut recipient_ids: Vec<String> = Vec::with_capacity(req.recipients.len());
    for r in req.recipients {
        if recipient_ids.iter().any(|id| id == r.user_id()) {
            return Err(SealError::InvalidRecipients);
        }
        recipient_ids.push(r.user_id().to_owned());
    }
    let resource_key = ResourceKey::generate(rng);
    let resource_id = ResourceId::random(rng);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);

    let header = EnvelopeHeader {
        version: PROTOCOL_VERSION,
        resource_id: resource_id.as_bytes().to_vec(),
        conversation_id: req.conversation_id.as_bytes().to_vec(),
        sender_user_id: sender.user_id().to_owned(),
        sender_device_id: device.public_key().as_bytes().to_vec(),
        timestamp_ms: req.timestamp_ms,
        content_type: req.content_type.to_wire(),
        nonce: nonce.to_vec(),
        recipient_user_ids: recipient_ids,
    }
    .encode_to_vec();

    let padded = padding::pad(req.content);
    let cipher = XChaCha20Poly1305::new(&(*resource_key.as_bytes()).into());
    let ciphertext = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &padded,
                aad: &header,
            },
        )
        .map_err(|_| SealError::TooLarge(req.content.len()))?;
    let signature = device.sign(&signature_input(&header, &ciphertext)).to_vec();
    let envelope = Envelope {
        header,
        ciphertext,
        signature,
    }
    .encode_to_vec();

    let mut wrapped_keys = Vec::with_capacity(req.recipients.len());
    for r in req.recipients {
        // Verified chains hold only keys that were parsed; a low-order key in
        // a chain is refused here rather than wrapped to.
        let w = wrap_resource_key(rng, &resource_key, &resource_id, r.encryption_key())
            .map_err(|_| SealError::InvalidRecipients)?;
        wrapped_keys.push((r.user_id().to_owned(), w));
    }
    Ok(Sealed {
        resource_id,
        envelope,
        wrapped_keys,
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
    signature: Vec<u8>,
    resource_id: ResourceId,
    conversation_id: ConversationId,
    sender_user_id: String,
    sender_device: SigningPublicKey,
    timestamp_ms: u64,
    content_type: ContentType,
    nonce: [u8; 24],
    recipients: Vec<String>,
}

impl ReceivedEnvelope {
    /// Parses an encoded `Envelope`, enforcing every length and limit.
    pub fn parse(bytes: &[u8]) -> Result<Self, OpenError> {
        let env: Envelope = decode_bounded(bytes, MAX_ENVELOPE_BYTES)?;
        if env.header.len() > MAX_HEADER_BYTES {
            return Err(OpenError::Malformed("header too large"));
        }
        let h: EnvelopeHeader = decode_bounded(&env.header, MAX_HEADER_BYTES)?;
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
        if h.recipient_user_ids.is_empty()
            || h.recipient_user_ids.len() > MAX_RECIPIENTS
            || !h.recipient_user_ids.iter().all(|r| valid_user_id(r))
        {
            return Err(OpenError::Malformed("recipients"));
        }
        if env.signature.len() != 64 {
            return Err(OpenError::Malformed("signature length"));
        }
        if env.ciphertext.len() < padding::MIN_PADDED_LEN + TAG_BYTES {
            return Err(OpenError::Malformed("ciphertext too short"));
        }
        Ok(Self {
            header_bytes: env.header,
            ciphertext: env.ciphertext,
            signature: env.signature,
            resource_id,
            conversation_id,
            sender_user_id: h.sender_user_id,
            sender_device,
            timestamp_ms: h.timestamp_ms,
            content_type,
            nonce,
            recipients: h.recipient_user_ids,
        })
    }

    /// The resource id (unverified until [`Self::open`]): which wrapped key to fetch.
    pub fn resource_id(&self) -> ResourceId {
        self.resource_id
    }

    /// The claimed sender (unverified until [`Self::open`]): whose chain to fetch.
    pub fn claimed_sender(&self) -> (&str, &SigningPublicKey) {
        (&self.sender_user_id, &self.sender_device)
    }

    /// Verifies the envelope against the sender's verified chain and decrypts
    /// it for `me` (this user's id) with the unwrapped resource key.
    pub fn open(
        &self,
        sender: &VerifiedUser,
        me: &str,
        key: &ResourceKey,
    ) -> Result<OpenedMessage, OpenError> {
        if sender.user_id() != self.sender_user_id {
            return Err(OpenError::SenderMismatch);
        }
        let device = sender
            .device(&self.sender_device)
            .ok_or(OpenError::UnknownSenderDevice)?;
        if !device.is_active() {
            return Err(OpenError::SenderDeviceRevoked);
        }
        if !self.sender_device.verify(
            &signature_input(&self.header_bytes, &self.ciphertext),
            &self.signature,
        ) {
            return Err(OpenError::BadSignature);
        }
        if !self.recipients.iter().any(|r| r == me) {
            return Err(OpenError::NotARecipient);
        }
        let cipher = XChaCha20Poly1305::new(&(*key.as_bytes()).into());
        let padded = cipher
            .decrypt(
                &self.nonce.into(),
                Payload {
                    msg: &self.ciphertext,
                    aad: &self.header_bytes,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Undecryptable)?;
        let range = padding::unpad(&padded).ok_or(OpenError::Undecryptable)?;
        Ok(OpenedMessage {
            resource_id: self.resource_id,
            conversation_id: self.conversation_id,
            sender_user_id: self.sender_user_id.clone(),
            sender_device: self.sender_device,
            timestamp_ms: self.timestamp_ms,
            content_type: self.content_type,
            recipients: self.recipients.clone(),
            content: Zeroizing::new(padded[range].to_vec()),
        })
    }
}

/// A verified, decrypted message.
pub struct OpenedMessage {
    /// The resource id: deduplicate on it.
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
    /// Every user it was sealed for.
    pub recipients: Vec<String>,
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
