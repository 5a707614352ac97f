//! Device linking (SECURITY.md §4.9): the sans-IO core of adding a device by
//! scanning a code shown on one the user already has.
//!
//! The existing device draws a 32-byte link secret and shows it, with the
//! user id, as a [`LinkCode`] (a QR payload). Everything else derives from
//! the secret: the rendezvous id under which the relay pairs the two
//! devices, and one ChaCha20-Poly1305 key per direction for the sealed
//! [`LinkMessage`]s that the relay forwards without reading. A relay (or
//! anyone else without the secret) can neither read nor forge nor reorder
//! them: each direction counts its messages in the nonce.
//!
//! On top, a short authentication string ([`Sas`], six digits) that both
//! screens show: it covers the new device's keys and a nonce from each side,
//! the new device's committed before it sees the other's, so that even
//! someone who photographed the code cannot stand in for the new device
//! without the digits differing (no grinding: the last nonce to be chosen
//! is bound by a commitment made before the other was known).
//!
//! ```text
//! new device (Joiner)                       existing device (Approver)
//!   LinkHello {keys, proof, H(n_new)}  ->
//!                                      <-   LinkNonce {n_existing}
//!   LinkReveal {n_new}                 ->
//!        both show SAS(rendezvous, hello, n_existing, n_new)
//!                                      <-   LinkApproved | LinkRefused
//!                                      <-   LinkHistory * k
//!                                      <-   LinkDone {messages}
//! ```

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use prost::Message as _;
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use ward_proto::v1::{
    LinkApproved, LinkDone, LinkHello, LinkHistory, LinkMessage, LinkNonce, LinkRefused,
    LinkReveal, link_message::Body,
};

use crate::chain::verify_possession_proof;
use crate::ids::valid_user_id;
use crate::keys::{EncryptionPublicKey, SigningPublicKey};
use crate::labels::{
    HASH_LINK_NONCE, HASH_LINK_SAS, LINK_KEY_TO_EXISTING, LINK_KEY_TO_NEW, LINK_RENDEZVOUS,
    LINK_SALT, framed_hash,
};

/// Bytes of a link secret.
pub const LINK_SECRET_BYTES: usize = 32;
/// Bytes of each side's SAS nonce.
pub const LINK_NONCE_BYTES: usize = 32;
/// What a link code starts with: the format's name and version.
pub const CODE_PREFIX: &str = "ward-link:1:";
/// Largest sealed link message opened (a history batch holds at most one
/// message of up to the envelope limit, or many small ones).
pub const MAX_LINK_MESSAGE_BYTES: usize = 24 << 20;
/// AEAD tag bytes at the end of every sealed link message.
pub const LINK_TAG_BYTES: usize = 16;

/// Why a link step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The text is not a link code.
    #[error("not a Ward link code ({0})")]
    BadCode(&'static str),
    /// A sealed message did not open under this link's key at its place:
    /// forged, altered, reordered, replayed, or from another link.
    #[error("the link was tampered with: a message did not open under this link's key")]
    Tampered,
    /// A message opened but is not the one this step expects.
    #[error("unexpected link message: {0}")]
    Unexpected(&'static str),
    /// The new device's keys or proof of possession do not hold.
    #[error("the new device's offer is invalid: {0}")]
    BadOffer(&'static str),
    /// The revealed nonce is not the one the hello committed to.
    #[error("the new device's nonce does not match its commitment")]
    CommitmentMismatch,
    /// The history ended with a count that differs from what arrived.
    #[error("history truncated: {got} messages arrived, {announced} announced")]
    Truncated {
        /// Messages received.
        got: u64,
        /// Messages the existing device said it sent.
        announced: u64,
    },
    /// Protobuf inside a sealed message did not decode.
    #[error("undecodable link message: {0}")]
    Decode(String),
}

/// The secret a link code carries. Zeroized on drop, never printed.
pub struct LinkSecret(Zeroizing<[u8; LINK_SECRET_BYTES]>);

impl core::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

impl LinkSecret {
    /// A fresh secret from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut s = Zeroizing::new([0u8; LINK_SECRET_BYTES]);
        rng.fill_bytes(&mut s[..]);
        Self(s)
    }

    /// A secret from its bytes (vectors, and a parsed code).
    pub fn from_bytes(bytes: [u8; LINK_SECRET_BYTES]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The rendezvous id the relay pairs the two devices under.
    pub fn rendezvous(&self) -> [u8; 32] {
        Schedule::derive(self).rendezvous
    }
}

/// What the existing device shows and the new one scans: the user id and
/// the link secret, as `ward-link:1:<64 hex digits>:<user id>` (the user id
/// last, as is: it may hold any printable character).
#[derive(Debug)]
pub struct LinkCode {
    /// The user the new device joins.
    pub user_id: String,
    /// The link secret.
    pub secret: LinkSecret,
}

impl LinkCode {
    /// The code's text. Holds the secret: show it, never log it.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(
            CODE_PREFIX.len() + 65 + self.user_id.len(),
        ));
        s.push_str(CODE_PREFIX);
        for b in self.secret.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s.push(':');
        s.push_str(&self.user_id);
        s
    }

    /// Parses a code (surrounding whitespace ignored; hex in either case).
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let rest = text
            .trim()
            .strip_prefix(CODE_PREFIX)
            .ok_or(LinkError::BadCode("it must start with ward-link:1:"))?;
        let (hex, user_id) = rest
            .split_at_checked(2 * LINK_SECRET_BYTES)
            .ok_or(LinkError::BadCode("the secret is 64 hex digits"))?;
        let user_id = user_id
            .strip_prefix(':')
            .ok_or(LinkError::BadCode("the secret is 64 hex digits, then ':'"))?;
        if !valid_user_id(user_id) {
            return Err(LinkError::BadCode("not a valid user id"));
        }
        let mut secret = Zeroizing::new([0u8; LINK_SECRET_BYTES]);
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
                return Err(LinkError::BadCode("the secret is 64 hex digits"));
            };
            secret[i] = (hi << 4) | lo;
        }
        Ok(Self {
            user_id: user_id.to_owned(),
            secret: LinkSecret(secret),
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The short authentication string both devices show: six decimal digits,
/// `"123 456"`. Not a secret; the user compares the two screens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sas(String);

impl Sas {
    /// The digits as shown, `"123 456"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Display for Sas {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `SAS = u32_be(first 4 bytes of H(HASH_LINK_SAS, rendezvous, hello,
/// n_existing, n_new))` mod 10^6, as `ddd ddd`.
pub fn sas(
    rendezvous: &[u8; 32],
    hello: &[u8],
    nonce_existing: &[u8; LINK_NONCE_BYTES],
    nonce_new: &[u8; LINK_NONCE_BYTES],
) -> Sas {
    let h = framed_hash(
        HASH_LINK_SAS,
        &[rendezvous, hello, nonce_existing, nonce_new],
    );
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 1_000_000;
    Sas(format!("{:03} {:03}", n / 1000, n % 1000))
}

/// The new device's commitment to its nonce: `H(HASH_LINK_NONCE, n_new)`.
pub fn nonce_commitment(nonce_new: &[u8; LINK_NONCE_BYTES]) -> [u8; 32] {
    framed_hash(HASH_LINK_NONCE, &[nonce_new])
}

/// The keys derived from a link secret.
struct Schedule {
    rendezvous: [u8; 32],
    to_existing: Zeroizing<[u8; 32]>,
    to_new: Zeroizing<[u8; 32]>,
}

impl Schedule {
    /// `prk = HKDF-Extract(salt = LINK_SALT, ikm = secret)`, then one
    /// HKDF-Expand per label, 32 bytes each.
    fn derive(secret: &LinkSecret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(LINK_SALT), &secret.0[..]);
        let expand = |info: &[u8]| {
            let mut out = Zeroizing::new([0u8; 32]);
            // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
            let _ = hk.expand(info, &mut out[..]);
            out
        };
        Self {
            rendezvous: *expand(LINK_RENDEZVOUS),
            to_existing: expand(LINK_KEY_TO_EXISTING),
            to_new: expand(LINK_KEY_TO_NEW),
        }
    }
}

/// One side's sealing and opening: ChaCha20-Poly1305, nonce
/// `0x00000000 || u64_be(index)` (index counts the messages of that
/// direction from 0), associated data the rendezvous id.
struct Channel {
    rendezvous: [u8; 32],
    seal: ChaCha20Poly1305,
    open: ChaCha20Poly1305,
    sent: u64,
    received: u64,
}

fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

impl Channel {
    fn new(schedule: &Schedule, existing: bool) -> Self {
        let (seal, open) = if existing {
            (&schedule.to_new, &schedule.to_existing)
        } else {
            (&schedule.to_existing, &schedule.to_new)
        };
        Self {
            rendezvous: schedule.rendezvous,
            seal: ChaCha20Poly1305::new((&**seal).into()),
            open: ChaCha20Poly1305::new((&**open).into()),
            sent: 0,
            received: 0,
        }
    }

    fn seal_bytes(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let n = nonce(self.sent);
        self.sent += 1;
        // ChaCha20-Poly1305 refuses only plaintexts over 256 GiB.
        self.seal
            .encrypt(
                &n.into(),
                Payload {
                    msg: plaintext,
                    aad: &self.rendezvous,
                },
            )
            .unwrap_or_default()
    }

    fn seal(&mut self, body: Body) -> Vec<u8> {
        let plain = Zeroizing::new(LinkMessage { body: Some(body) }.encode_to_vec());
        self.seal_bytes(&plain)
    }

    fn open_bytes(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, LinkError> {
        if sealed.len() > MAX_LINK_MESSAGE_BYTES + LINK_TAG_BYTES {
            return Err(LinkError::Decode("sealed link message too large".into()));
        }
        let plain = self
            .open
            .decrypt(
                &nonce(self.received).into(),
                Payload {
                    msg: sealed,
                    aad: &self.rendezvous,
                },
            )
            .map_err(|_| LinkError::Tampered)?;
        self.received += 1;
        Ok(Zeroizing::new(plain))
    }

    fn open(&mut self, sealed: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Body), LinkError> {
        let plain = self.open_bytes(sealed)?;
        let msg: LinkMessage = ward_proto::decode_bounded(&plain, MAX_LINK_MESSAGE_BYTES)
            .map_err(|e| LinkError::Decode(e.to_string()))?;
        let body = msg.body.ok_or(LinkError::Unexpected("an empty message"))?;
        Ok((plain, body))
    }
}

/// The new device's keys, as it offers them to the existing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOffer {
    /// Its signing (device id) key.
    pub signing: SigningPublicKey,
    /// Its encryption key.
    pub encryption: EncryptionPublicKey,
    /// Its proof of possession ([`crate::chain::possession_proof`]).
    pub proof: [u8; 64],
}

fn take32(b: &[u8], what: &'static str) -> Result<[u8; 32], LinkError> {
    b.try_into().map_err(|_| LinkError::BadOffer(what))
}

/// The new device's side of a link.
pub struct Joiner {
    channel: Channel,
    hello: Vec<u8>,
    nonce: Zeroizing<[u8; LINK_NONCE_BYTES]>,
    state: JoinerState,
    messages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinerState {
    AwaitNonce,
    AwaitDecision,
    History,
    Ended,
}

/// What the existing device said, as the new device reads it.
#[derive(Debug)]
pub enum JoinerEvent {
    /// The user approved: the device is in the user's log and its grants
    /// are at the keyserver. History follows.
    Approved,
    /// The user refused.
    Refused,
    /// A batch of history.
    History(LinkHistory),
    /// The end of the history: every announced message arrived.
    Done {
        /// Messages in all batches.
        messages: u64,
    },
}

impl Joiner {
    /// Starts a link from a scanned code: the joiner and its first sealed
    /// message (the hello), to send once the relay paired the devices.
    pub fn start<R: CryptoRng + ?Sized>(
        code: &LinkCode,
        offer: &DeviceOffer,
        rng: &mut R,
    ) -> (Self, Vec<u8>) {
        let mut n = [0u8; LINK_NONCE_BYTES];
        rng.fill_bytes(&mut n);
        Self::start_with(&code.secret, offer, n)
    }

    /// [`Self::start`] with the nonce given (vectors).
    pub fn start_with(
        secret: &LinkSecret,
        offer: &DeviceOffer,
        nonce_new: [u8; LINK_NONCE_BYTES],
    ) -> (Self, Vec<u8>) {
        let nonce = Zeroizing::new(nonce_new);
        let hello = LinkHello {
            device_signing_key: offer.signing.as_bytes().to_vec(),
            device_encryption_key: offer.encryption.as_bytes().to_vec(),
            possession_proof: offer.proof.to_vec(),
            nonce_commitment: nonce_commitment(&nonce).to_vec(),
        };
        let hello = LinkMessage {
            body: Some(Body::Hello(hello)),
        }
        .encode_to_vec();
        let mut channel = Channel::new(&Schedule::derive(secret), false);
        let sealed = channel.seal_bytes(&hello);
        (
            Self {
                channel,
                hello,
                nonce,
                state: JoinerState::AwaitNonce,
                messages: 0,
            },
            sealed,
        )
    }

    /// The rendezvous id to join at the relay.
    pub fn rendezvous(&self) -> [u8; 32] {
        self.channel.rendezvous
    }

    /// Takes the existing device's nonce: the reveal to send, and the SAS
    /// to show.
    pub fn on_nonce(&mut self, sealed: &[u8]) -> Result<(Vec<u8>, Sas), LinkError> {
        if self.state != JoinerState::AwaitNonce {
            return Err(LinkError::Unexpected("a nonce after the nonce"));
        }
        let (_, body) = self.channel.open(sealed)?;
        let Body::Nonce(LinkNonce { nonce }) = body else {
            return Err(LinkError::Unexpected(
                "expected the existing device's nonce",
            ));
        };
        let existing: [u8; 32] = nonce
            .as_slice()
            .try_into()
            .map_err(|_| LinkError::Unexpected("a nonce is 32 bytes"))?;
        let sas = sas(
            &self.channel.rendezvous,
            &self.hello,
            &existing,
            &self.nonce,
        );
        let reveal = self.channel.seal(Body::Reveal(LinkReveal {
            nonce: self.nonce.to_vec(),
        }));
        self.state = JoinerState::AwaitDecision;
        Ok((reveal, sas))
    }

    /// Takes the next message after the reveal: the decision, then history
    /// batches, then the end (checked against what arrived).
    pub fn next(&mut self, sealed: &[u8]) -> Result<JoinerEvent, LinkError> {
        let state = self.state;
        let (_, body) = match state {
            JoinerState::AwaitDecision | JoinerState::History => self.channel.open(sealed)?,
            JoinerState::AwaitNonce => return Err(LinkError::Unexpected("expected the nonce")),
            JoinerState::Ended => return Err(LinkError::Unexpected("a message after the end")),
        };
        match (state, body) {
            (JoinerState::AwaitDecision, Body::Approved(LinkApproved {})) => {
                self.state = JoinerState::History;
                Ok(JoinerEvent::Approved)
            }
            (JoinerState::AwaitDecision, Body::Refused(LinkRefused {})) => {
                self.state = JoinerState::Ended;
                Ok(JoinerEvent::Refused)
            }
            (JoinerState::History, Body::History(h)) => {
                self.messages += h.messages.len() as u64;
                Ok(JoinerEvent::History(h))
            }
            (JoinerState::History, Body::Done(LinkDone { messages })) => {
                self.state = JoinerState::Ended;
                if messages != self.messages {
                    return Err(LinkError::Truncated {
                        got: self.messages,
                        announced: messages,
                    });
                }
                Ok(JoinerEvent::Done { messages })
            }
            (JoinerState::AwaitDecision, _) => {
                Err(LinkError::Unexpected("expected an approval or a refusal"))
            }
            _ => Err(LinkError::Unexpected("expected history or its end")),
        }
    }
}

/// The existing device's side of a link.
pub struct Approver {
    channel: Channel,
    state: ApproverState,
    hello: Vec<u8>,
    commitment: [u8; 32],
    nonce: [u8; LINK_NONCE_BYTES],
    messages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApproverState {
    AwaitHello,
    AwaitReveal,
    Compared,
    History,
    Ended,
}

impl Approver {
    /// A link for `secret` (which the existing device drew and shows).
    pub fn new(secret: &LinkSecret) -> Self {
        Self {
            channel: Channel::new(&Schedule::derive(secret), true),
            state: ApproverState::AwaitHello,
            hello: Vec::new(),
            commitment: [0; 32],
            nonce: [0; LINK_NONCE_BYTES],
            messages: 0,
        }
    }

    /// The rendezvous id to open at the relay.
    pub fn rendezvous(&self) -> [u8; 32] {
        self.channel.rendezvous
    }

    /// Takes the new device's hello: its offer, checked against the pinned
    /// `root` and this `user_id` (proof of possession), and the nonce
    /// message to send.
    pub fn on_hello<R: CryptoRng + ?Sized>(
        &mut self,
        sealed: &[u8],
        root: &SigningPublicKey,
        user_id: &str,
        rng: &mut R,
    ) -> Result<(DeviceOffer, Vec<u8>), LinkError> {
        let mut n = [0u8; LINK_NONCE_BYTES];
        rng.fill_bytes(&mut n);
        self.on_hello_with(sealed, root, user_id, n)
    }

    /// [`Self::on_hello`] with the nonce given (vectors).
    pub fn on_hello_with(
        &mut self,
        sealed: &[u8],
        root: &SigningPublicKey,
        user_id: &str,
        nonce_existing: [u8; LINK_NONCE_BYTES],
    ) -> Result<(DeviceOffer, Vec<u8>), LinkError> {
        if self.state != ApproverState::AwaitHello {
            return Err(LinkError::Unexpected("a second hello"));
        }
        let (plain, body) = self.channel.open(sealed)?;
        let Body::Hello(h) = body else {
            return Err(LinkError::Unexpected("expected the new device's hello"));
        };
        let signing = SigningPublicKey::from_bytes(&h.device_signing_key)
            .map_err(|_| LinkError::BadOffer("device signing key"))?;
        let encryption = EncryptionPublicKey::from_bytes(&h.device_encryption_key)
            .map_err(|_| LinkError::BadOffer("device encryption key"))?;
        let proof: [u8; 64] = h
            .possession_proof
            .as_slice()
            .try_into()
            .map_err(|_| LinkError::BadOffer("proof of possession is 64 bytes"))?;
        if !verify_possession_proof(root, user_id, &signing, &encryption, &proof) {
            return Err(LinkError::BadOffer(
                "proof of possession does not verify for this user",
            ));
        }
        self.commitment = take32(&h.nonce_commitment, "nonce commitment is 32 bytes")?;
        self.hello = plain.to_vec();
        self.nonce = nonce_existing;
        let reply = self.channel.seal(Body::Nonce(LinkNonce {
            nonce: nonce_existing.to_vec(),
        }));
        self.state = ApproverState::AwaitReveal;
        Ok((
            DeviceOffer {
                signing,
                encryption,
                proof,
            },
            reply,
        ))
    }

    /// Takes the new device's reveal: the SAS to show for comparison.
    pub fn on_reveal(&mut self, sealed: &[u8]) -> Result<Sas, LinkError> {
        if self.state != ApproverState::AwaitReveal {
            return Err(LinkError::Unexpected("a reveal out of place"));
        }
        let (_, body) = self.channel.open(sealed)?;
        let Body::Reveal(LinkReveal { nonce }) = body else {
            return Err(LinkError::Unexpected("expected the new device's reveal"));
        };
        let new: [u8; 32] = nonce
            .as_slice()
            .try_into()
            .map_err(|_| LinkError::CommitmentMismatch)?;
        if !bool::from(nonce_commitment(&new).ct_eq(&self.commitment)) {
            return Err(LinkError::CommitmentMismatch);
        }
        self.state = ApproverState::Compared;
        Ok(sas(
            &self.channel.rendezvous,
            &self.hello,
            &self.nonce,
            &new,
        ))
    }

    /// The approval to send, once the device is in the log and granted.
    pub fn approve(&mut self) -> Result<Vec<u8>, LinkError> {
        self.decide(Body::Approved(LinkApproved {}), ApproverState::History)
    }

    /// The refusal to send (the codes differed, or the user said no).
    pub fn refuse(&mut self) -> Result<Vec<u8>, LinkError> {
        self.decide(Body::Refused(LinkRefused {}), ApproverState::Ended)
    }

    fn decide(&mut self, body: Body, next: ApproverState) -> Result<Vec<u8>, LinkError> {
        if self.state != ApproverState::Compared {
            return Err(LinkError::Unexpected("a decision before the comparison"));
        }
        self.state = next;
        Ok(self.channel.seal(body))
    }

    /// A history batch to send, after the approval.
    pub fn history(&mut self, batch: LinkHistory) -> Result<Vec<u8>, LinkError> {
        if self.state != ApproverState::History {
            return Err(LinkError::Unexpected("history before the approval"));
        }
        self.messages += batch.messages.len() as u64;
        let mut msg = LinkMessage {
            body: Some(Body::History(batch)),
        };
        let plain = Zeroizing::new(msg.encode_to_vec());
        // The history is plaintext health data: no copy outlives the seal.
        if let Some(Body::History(h)) = &mut msg.body {
            for m in &mut h.messages {
                m.content.zeroize();
            }
        }
        Ok(self.channel.seal_bytes(&plain))
    }

    /// The end of the history, with the count of messages sent.
    pub fn done(&mut self) -> Result<Vec<u8>, LinkError> {
        if self.state != ApproverState::History {
            return Err(LinkError::Unexpected("the end before the approval"));
        }
        self.state = ApproverState::Ended;
        Ok(self.channel.seal(Body::Done(LinkDone {
            messages: self.messages,
        })))
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
