//! Patient-case rooms: a signed, hash-chained membership log, one X-Wing
//! key pair per epoch, and metadata sealed to the members (SECURITY.md §17).
//!
//! ```text
//! entry 0: creation        by the creator (admin), epoch 0,      prev = H(genesis, room id)
//! entry n: add             by an admin     (+ a new epoch iff the policy is FromJoin)
//!          remove          by an admin,    new epoch
//!          grant/revoke    by an admin
//!          leave           by the leaving member (keyless: the room is rotation pending)
//!          metadata update by an admin,    sealed under the current epoch
//!          rotation        by any member,  new epoch
//! ```
//!
//! Each entry is signed by a device of a member's user, at a cited length of
//! that user's verified log; the verifier passes those logs in through a
//! [`UserResolver`]: this module does no I/O. An entry that starts an epoch
//! commits to the epoch's public key and lists every member with the id of
//! the user key the epoch's private key is wrapped to ([`RoomKeyWrap`],
//! stored at the keyserver). A message to the room wraps its resource key
//! once, to the current epoch key (`envelope::seal_to_room`).
//!
//! [`verify_room_log`] checks a whole log; [`VerifiedRoom::update`] checks
//! that a served log extends the verified one (rollback and fork refused),
//! and [`VerifiedRoom::update_suffix`] / [`VerifiedRoom::apply_suffix`]
//! mirror the user log's (§4.7). Every producer (`create_room`,
//! `add_members`, …) verifies the entry it made against the state before
//! returning it, so it never hands out an entry that members would refuse.

use core::fmt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use ward_proto::v1::{
    HistoryPolicy as WireHistoryPolicy, RoomAdd, RoomCreation, RoomEpoch, RoomGrantAdmin,
    RoomKeyWrap, RoomLeave, RoomMember, RoomMetadata as WireMetadata, RoomMetadataUpdate,
    RoomRemove, RoomRevokeAdmin, RoomRotation, RoomStatement, SealedRoomMetadata,
    SignedRoomStatement, room_statement::Body,
};
use ward_proto::{Message, PROTOCOL_VERSION, decode_bounded, decode_canonical};
use zeroize::Zeroizing;

use crate::chain::VerifiedUser;
use crate::error::{RoomError, WrapError};
use crate::ids::valid_user_id;
use crate::keys::{
    DeviceSigningKey, EncryptionPublicKey, KeyId, RoomEpochKey, SigningPublicKey, UserEncryptionKey,
};
use crate::labels::{
    HASH_ROOM_ENTRY, HASH_ROOM_GENESIS, ROOM_EPOCH_WRAP_INFO, ROOM_METADATA_AAD, ROOM_METADATA_KEY,
    SIG_ROOM_STATEMENT, framed, framed_hash,
};
use crate::padding;
use crate::wrap::{self, CIPHERTEXT_BYTES, ENC_BYTES, KEY_ID_BYTES};

/// Largest encoded `RoomStatement`: an epoch lists every member (user id
/// and key id, under 170 bytes each), so 1024 members of 128-byte ids fit.
pub const MAX_ROOM_STATEMENT_BYTES: usize = 256 << 10;
/// Largest encoded standalone `SignedRoomStatement`.
pub const MAX_SIGNED_ROOM_STATEMENT_BYTES: usize = MAX_ROOM_STATEMENT_BYTES + 128;
/// Most entries a room log may hold.
pub const MAX_ROOM_LOG_ENTRIES: usize = 4096;
/// Most members of one room.
pub const MAX_ROOM_MEMBERS: usize = 1024;
/// Longest room name, in bytes of UTF-8.
pub const MAX_ROOM_NAME_BYTES: usize = 256;
/// Longest patient-case reference, in bytes of UTF-8.
pub const MAX_CASE_REFERENCE_BYTES: usize = 128;
/// Longest topic, in bytes of UTF-8.
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Largest sealed-metadata ciphertext: the padded encoding of the largest
/// metadata (1472 bytes) and the tag, rounded up.
pub const MAX_METADATA_CIPHERTEXT_BYTES: usize = 2048;
const MIN_METADATA_CIPHERTEXT_BYTES: usize = padding::MIN_PADDED_LEN + 16;
const NONCE_BYTES: usize = 24;

/// `InvalidTransition` reasons (normative, SECURITY.md §17.8).
pub mod reason {
    /// A creation after entry 0.
    pub const ALREADY_CREATED: &str = "room already created";
    /// The creation's epoch does not list its author.
    pub const CREATOR_NOT_MEMBER: &str = "creator not a member";
    /// An addition of a current member.
    pub const ALREADY_MEMBER: &str = "already a member";
    /// An addition past [`super::MAX_ROOM_MEMBERS`].
    pub const ROOM_FULL: &str = "room full";
    /// A removal, grant or revocation of a non-member.
    pub const NOT_MEMBER: &str = "not a member";
    /// An admin removing itself: that is a leave.
    pub const REMOVE_SELF: &str = "remove yourself with a leave";
    /// A grant to an admin, or a successor who is one.
    pub const ALREADY_ADMIN: &str = "already an admin";
    /// A revocation of a member who is not an admin.
    pub const NOT_ADMIN: &str = "not an admin";
    /// A leave naming a successor who is not another current member.
    pub const SUCCESSOR_NOT_MEMBER: &str = "successor not a member";
    /// A metadata update while a leaver may hold the current epoch key.
    pub const ROTATION_PENDING: &str = "rotation pending";
    /// An entry that must start an epoch carries none.
    pub const EPOCH_REQUIRED: &str = "epoch required";
    /// An entry that must not start an epoch carries one.
    pub const EPOCH_NOT_ALLOWED: &str = "epoch not allowed";
    /// `RoomEpoch.number` is not the next epoch number.
    pub const WRONG_EPOCH_NUMBER: &str = "wrong epoch number";
    /// The epoch public key equals an earlier epoch's.
    pub const EPOCH_KEY_REUSED: &str = "epoch key reused";
    /// The epoch's member list is not the membership after the entry.
    pub const EPOCH_MEMBERS_DIFFER: &str = "epoch members differ";
    /// A FromJoin addition names a new member's key differently in its
    /// list and in its epoch.
    pub const MEMBER_KEY_DIFFERS: &str = "member key differs";
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A room's id: 32 random bytes, all that the servers learn about a room
/// besides its members' user ids and sizes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub [u8; 32]);

impl RoomId {
    /// A fresh random id.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// Parses exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", hex(&self.0))
    }
}

/// What a member added later may read, fixed at the room's creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPolicy {
    /// From its joining on: an addition starts a new epoch, and the new
    /// member receives that epoch's key only.
    FromJoin,
    /// The whole history: the adder wraps every earlier epoch key to it
    /// (a case handed to the next team needs its past).
    WholeHistory,
}

impl HistoryPolicy {
    fn to_wire(self) -> i32 {
        match self {
            Self::FromJoin => WireHistoryPolicy::FromJoin as i32,
            Self::WholeHistory => WireHistoryPolicy::WholeHistory as i32,
        }
    }

    fn from_wire(v: i32) -> Option<Self> {
        match WireHistoryPolicy::try_from(v).ok()? {
            WireHistoryPolicy::FromJoin => Some(Self::FromJoin),
            WireHistoryPolicy::WholeHistory => Some(Self::WholeHistory),
            WireHistoryPolicy::Unspecified => None,
        }
    }
}

/// The room's metadata, readable by members only (sealed, §17.5).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RoomMetadata {
    /// The room's name (at most 256 bytes).
    pub name: String,
    /// The patient-case reference (at most 128 bytes).
    pub case_reference: String,
    /// The topic (at most 1024 bytes).
    pub topic: String,
}

impl fmt::Debug for RoomMetadata {
    // Names and case references are patient data: never in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomMetadata(<redacted>)")
    }
}

impl RoomMetadata {
    fn check(&self) -> Result<(), RoomError> {
        if self.name.len() > MAX_ROOM_NAME_BYTES
            || self.case_reference.len() > MAX_CASE_REFERENCE_BYTES
            || self.topic.len() > MAX_TOPIC_BYTES
        {
            return Err(RoomError::Malformed("room metadata too long"));
        }
        Ok(())
    }
}

/// Where a verifier finds the verified user logs of a room's authors and
/// members. The core does no I/O: the caller fetches and verifies (or
/// updates, §4.7) those logs and passes them in.
pub trait UserResolver {
    /// The verified log of `user_id`, if the caller holds one.
    fn verified_user(&self, user_id: &str) -> Option<&VerifiedUser>;
}

impl<S: BuildHasher> UserResolver for HashMap<String, VerifiedUser, S> {
    fn verified_user(&self, user_id: &str) -> Option<&VerifiedUser> {
        self.get(user_id)
    }
}

impl UserResolver for BTreeMap<String, VerifiedUser> {
    fn verified_user(&self, user_id: &str) -> Option<&VerifiedUser> {
        self.get(user_id)
    }
}

impl UserResolver for [&VerifiedUser] {
    fn verified_user(&self, user_id: &str) -> Option<&VerifiedUser> {
        self.iter().find(|u| u.user_id() == user_id).copied()
    }
}

impl UserResolver for [VerifiedUser] {
    fn verified_user(&self, user_id: &str) -> Option<&VerifiedUser> {
        self.iter().find(|u| u.user_id() == user_id)
    }
}

/// One current member as the verified log knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMemberRecord {
    /// Id of the user key the current epoch's private key is wrapped to
    /// (when it differs from the user's current key, the room is stale for
    /// this member: [`VerifiedRoom::stale_members`]).
    pub user_key: KeyId,
    /// Whether the member is an admin.
    pub admin: bool,
    /// The epoch current when this stint of membership began.
    pub joined_epoch: u64,
}

/// One epoch as the verified log committed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    /// The epoch's public key: room messages wrap their resource key to it.
    pub public_key: EncryptionPublicKey,
    /// The entry that started the epoch.
    pub started_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SealedMeta {
    epoch: u64,
    nonce: [u8; NONCE_BYTES],
    ciphertext: Vec<u8>,
}

/// The state of a room's log after verification: what members may trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRoom {
    id: RoomId,
    policy: HistoryPolicy,
    members: BTreeMap<String, RoomMemberRecord>,
    /// Ended stints of membership, `(first epoch, last epoch)` inclusive.
    past_stints: BTreeMap<String, Vec<(u64, u64)>>,
    epochs: Vec<EpochRecord>,
    metadata: SealedMeta,
    rotation_pending: bool,
    /// The longest user-log length each author has cited so far.
    author_chain_lens: BTreeMap<String, u64>,
    len: u64,
    head: [u8; 32],
    last_timestamp: u64,
}

/// The epoch private keys one member holds, by epoch number.
#[derive(Default)]
pub struct RoomKeyring {
    keys: BTreeMap<u64, RoomEpochKey>,
}

impl RoomKeyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `key` as the key of `epoch` (from a [`RoomChange`] or an
    /// accepted wrap, [`VerifiedRoom::accept_epoch_wrap`]).
    pub fn insert(&mut self, epoch: u64, key: RoomEpochKey) {
        self.keys.insert(epoch, key);
    }

    /// The key of `epoch`, if held.
    pub fn get(&self, epoch: u64) -> Option<&RoomEpochKey> {
        self.keys.get(&epoch)
    }

    /// The epochs held, ascending.
    pub fn epochs(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.keys().copied()
    }
}

impl fmt::Debug for RoomKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomKeyring")
            .field("epochs", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Who signs a room entry: a device and its user's verified log (whose
/// length the entry cites).
#[derive(Clone, Copy)]
pub struct RoomAuthor<'a> {
    /// The signing device: an active device of `chain`.
    pub device: &'a DeviceSigningKey,
    /// The author's own verified user log.
    pub chain: &'a VerifiedUser,
}

/// A new entry and everything that goes with it.
pub struct RoomChange {
    /// The signed entry: appended to the room's log at the keyserver.
    pub entry: SignedRoomStatement,
    /// The state after the entry (the producer verified it).
    pub room: VerifiedRoom,
    /// The new epoch's private key, if the entry started one: for the
    /// author's keyring.
    pub epoch_key: Option<RoomEpochKey>,
    /// `(member user id, wrap)` for the keyserver: the new epoch key to
    /// every member, or earlier epoch keys to new members (WholeHistory).
    pub wraps: Vec<(String, RoomKeyWrap)>,
}

impl fmt::Debug for RoomChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomChange")
            .field("seq", &(self.room.len - 1))
            .field("new_epoch", &self.epoch_key.is_some())
            .field("wraps", &self.wraps.len())
            .finish_non_exhaustive()
    }
}

/// `H(HASH_ROOM_ENTRY, statement, signature)`: the hash the next entry
/// chains to (covers the signature, as a user log's entry hash does, §4.2).
pub fn room_entry_hash(entry: &SignedRoomStatement) -> [u8; 32] {
    framed_hash(HASH_ROOM_ENTRY, &[&entry.statement, &entry.signature])
}

/// `prev_hash` of entry 0: `H(HASH_ROOM_GENESIS, room_id)`.
pub fn genesis_hash(room_id: &RoomId) -> [u8; 32] {
    framed_hash(HASH_ROOM_GENESIS, &[room_id.as_bytes()])
}

/// Decodes a standalone `SignedRoomStatement` from untrusted bytes.
pub fn decode_signed_room_statement(bytes: &[u8]) -> Result<SignedRoomStatement, RoomError> {
    Ok(decode_bounded(bytes, MAX_SIGNED_ROOM_STATEMENT_BYTES)?)
}

fn open_entry(entry: &SignedRoomStatement) -> Result<RoomStatement, RoomError> {
    if entry.statement.len() > MAX_ROOM_STATEMENT_BYTES {
        return Err(RoomError::Malformed("room statement too large"));
    }
    let st: RoomStatement = decode_canonical(&entry.statement, MAX_ROOM_STATEMENT_BYTES)?;
    if st.version != PROTOCOL_VERSION {
        return Err(RoomError::UnsupportedVersion(st.version));
    }
    Ok(st)
}

/// Parses a member list: at most [`MAX_ROOM_MEMBERS`], valid user ids,
/// 32-byte key ids, strictly ascending by user id (bytes), so no member is
/// listed twice and every encoder agrees on the order.
fn parse_members(list: &[RoomMember]) -> Result<Vec<(String, KeyId)>, RoomError> {
    if list.len() > MAX_ROOM_MEMBERS {
        return Err(RoomError::Malformed("too many members"));
    }
    let mut out: Vec<(String, KeyId)> = Vec::with_capacity(list.len());
    for m in list {
        if !valid_user_id(&m.user_id) {
            return Err(RoomError::Malformed("member user id"));
        }
        let key = KeyId::from_bytes(&m.user_key).map_err(|_| RoomError::Malformed("member key"))?;
        if out
            .last()
            .is_some_and(|(prev, _)| prev.as_bytes() >= m.user_id.as_bytes())
        {
            return Err(RoomError::Malformed("members not in order"));
        }
        out.push((m.user_id.clone(), key));
    }
    Ok(out)
}

fn parse_metadata(m: &Option<SealedRoomMetadata>) -> Result<SealedMeta, RoomError> {
    let m = m.as_ref().ok_or(RoomError::Malformed("room metadata"))?;
    let nonce: [u8; NONCE_BYTES] = m
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| RoomError::Malformed("room metadata"))?;
    if m.ciphertext.len() < MIN_METADATA_CIPHERTEXT_BYTES
        || m.ciphertext.len() > MAX_METADATA_CIPHERTEXT_BYTES
    {
        return Err(RoomError::Malformed("room metadata"));
    }
    Ok(SealedMeta {
        epoch: 0,
        nonce,
        ciphertext: m.ciphertext.clone(),
    })
}

/// An epoch as an entry carries it, checked (E1-E6 of §17.3).
struct NewEpoch {
    public_key: EncryptionPublicKey,
    members: Vec<(String, KeyId)>,
    metadata: SealedMeta,
}

fn check_signature(
    entry: &SignedRoomStatement,
    author: &SigningPublicKey,
    seq: u64,
) -> Result<(), RoomError> {
    if author.verify(
        &framed(SIG_ROOM_STATEMENT, &[&entry.statement]),
        &entry.signature,
    ) {
        Ok(())
    } else {
        Err(RoomError::BadSignature { seq })
    }
}

/// M6-M8: the author's fields, its device at the cited log length, the
/// signature. Returns the author's user id and the cited length.
fn check_author<R: UserResolver + ?Sized>(
    st: &RoomStatement,
    entry: &SignedRoomStatement,
    resolver: &R,
    previous_len: Option<u64>,
    seq: u64,
) -> Result<(), RoomError> {
    if !valid_user_id(&st.author_user_id) {
        return Err(RoomError::Malformed("author user id"));
    }
    let device = SigningPublicKey::from_bytes(&st.author_device)
        .map_err(|_| RoomError::Malformed("author device"))?;
    let cited = st.author_chain_len;
    if cited == 0 {
        return Err(RoomError::Malformed("author chain length"));
    }
    let chain = resolver
        .verified_user(&st.author_user_id)
        .filter(|c| c.user_id() == st.author_user_id)
        .ok_or(RoomError::UnknownAuthor { seq })?;
    if chain.len() < cited {
        return Err(RoomError::AuthorChainBehind { seq });
    }
    if previous_len.is_some_and(|p| cited < p) {
        return Err(RoomError::AuthorChainRolledBack { seq });
    }
    // Active at the cited length: added by an entry before it, and not
    // revoked by one before it. A device revoked later still signed this
    // entry validly; a device revoked already did not.
    let active = chain
        .device(&device)
        .is_some_and(|d| d.added_at < cited && d.revoked_at.is_none_or(|r| r >= cited));
    if !active {
        return Err(RoomError::UnauthorizedDevice { seq });
    }
    check_signature(entry, &device, seq)
}

impl VerifiedRoom {
    /// Verifies entry 0 (the creation) of the room `expected` (or of
    /// whatever room it names, if `None`: a client that learned the id from
    /// the same server gains nothing from checking it against itself).
    pub fn from_creation<R: UserResolver + ?Sized>(
        expected: Option<&RoomId>,
        entry: &SignedRoomStatement,
        resolver: &R,
    ) -> Result<Self, RoomError> {
        let st = open_entry(entry)?;
        if st.seq != 0 {
            return Err(RoomError::BadSequence {
                expected: 0,
                found: st.seq,
            });
        }
        let id = RoomId::from_slice(&st.room_id).ok_or(RoomError::Malformed("room id"))?;
        if expected.is_some_and(|e| *e != id) {
            return Err(RoomError::WrongRoom { seq: 0 });
        }
        if st.prev_hash != genesis_hash(&id) {
            return Err(RoomError::BrokenChain { seq: 0 });
        }
        check_author(&st, entry, resolver, None, 0)?;
        let Some(Body::Creation(RoomCreation { history, epoch })) = &st.body else {
            return Err(RoomError::Malformed("entry 0 must be a room creation"));
        };
        let policy =
            HistoryPolicy::from_wire(*history).ok_or(RoomError::Malformed("history policy"))?;
        let mut room = Self {
            id,
            policy,
            members: BTreeMap::new(),
            past_stints: BTreeMap::new(),
            epochs: Vec::new(),
            metadata: SealedMeta {
                epoch: 0,
                nonce: [0; NONCE_BYTES],
                ciphertext: Vec::new(),
            },
            rotation_pending: false,
            author_chain_lens: BTreeMap::new(),
            len: 0,
            head: genesis_hash(&id),
            last_timestamp: st.timestamp,
        };
        let epoch = room.check_epoch(epoch, None, 0)?;
        if !epoch.members.iter().any(|(u, _)| *u == st.author_user_id) {
            return Err(RoomError::InvalidTransition {
                seq: 0,
                reason: reason::CREATOR_NOT_MEMBER,
            });
        }
        room.start_epoch(epoch, 0);
        if let Some(m) = room.members.get_mut(&st.author_user_id) {
            m.admin = true;
        }
        room.finish(entry, &st);
        Ok(room)
    }

    /// E1-E6: checks an epoch an entry carries. `expected` is the member set
    /// after the entry (`None` at creation, where the list defines it).
    fn check_epoch(
        &self,
        epoch: &Option<RoomEpoch>,
        expected: Option<&BTreeSet<&str>>,
        seq: u64,
    ) -> Result<NewEpoch, RoomError> {
        let invalid = |reason| RoomError::InvalidTransition { seq, reason };
        let epoch = epoch.as_ref().ok_or(invalid(reason::EPOCH_REQUIRED))?;
        if epoch.number != self.epochs.len() as u64 {
            return Err(invalid(reason::WRONG_EPOCH_NUMBER));
        }
        let public_key = EncryptionPublicKey::from_bytes(&epoch.public_key)
            .map_err(|_| RoomError::Malformed("epoch public key"))?;
        if self.epochs.iter().any(|e| e.public_key == public_key) {
            return Err(invalid(reason::EPOCH_KEY_REUSED));
        }
        let members = parse_members(&epoch.members)?;
        if members.is_empty() {
            return Err(RoomError::Malformed("no members"));
        }
        if let Some(expected) = expected
            && (members.len() != expected.len()
                || !members.iter().all(|(u, _)| expected.contains(u.as_str())))
        {
            return Err(invalid(reason::EPOCH_MEMBERS_DIFFER));
        }
        let mut metadata = parse_metadata(&epoch.metadata)?;
        metadata.epoch = epoch.number;
        Ok(NewEpoch {
            public_key,
            members,
            metadata,
        })
    }

    /// Starts the epoch `e`: its key, every member's key id, its metadata.
    fn start_epoch(&mut self, e: NewEpoch, seq: u64) {
        let number = self.epochs.len() as u64;
        self.epochs.push(EpochRecord {
            public_key: e.public_key,
            started_at: seq,
        });
        for (user, key) in e.members {
            let joined_epoch = number;
            self.members
                .entry(user)
                .and_modify(|m| m.user_key = key)
                .or_insert(RoomMemberRecord {
                    user_key: key,
                    admin: false,
                    joined_epoch,
                });
        }
        self.metadata = e.metadata;
        self.rotation_pending = false;
    }

    fn end_stint(&mut self, user: &str) {
        let last = self.current_epoch();
        if let Some(m) = self.members.remove(user) {
            self.past_stints
                .entry(user.to_owned())
                .or_default()
                .push((m.joined_epoch, last));
        }
    }

    fn finish(&mut self, entry: &SignedRoomStatement, st: &RoomStatement) {
        self.author_chain_lens
            .insert(st.author_user_id.clone(), st.author_chain_len);
        self.len += 1;
        self.head = room_entry_hash(entry);
        self.last_timestamp = st.timestamp;
    }

    fn admins(&self) -> usize {
        self.members.values().filter(|m| m.admin).count()
    }

    fn member_set(&self) -> BTreeSet<&str> {
        self.members.keys().map(String::as_str).collect()
    }

    /// Verifies the next entry and applies it. On error `self` is unchanged.
    pub fn apply<R: UserResolver + ?Sized>(
        &mut self,
        entry: &SignedRoomStatement,
        resolver: &R,
    ) -> Result<(), RoomError> {
        let mut next = self.clone();
        next.apply_unchecked(entry, resolver)?;
        *self = next;
        Ok(())
    }

    fn apply_unchecked<R: UserResolver + ?Sized>(
        &mut self,
        entry: &SignedRoomStatement,
        resolver: &R,
    ) -> Result<(), RoomError> {
        let seq = self.len;
        let st = open_entry(entry)?;
        if st.seq != seq {
            return Err(RoomError::BadSequence {
                expected: seq,
                found: st.seq,
            });
        }
        if st.room_id != self.id.as_bytes() {
            return Err(RoomError::WrongRoom { seq });
        }
        if st.prev_hash != self.head {
            return Err(RoomError::BrokenChain { seq });
        }
        if st.timestamp < self.last_timestamp {
            return Err(RoomError::TimeWentBackwards { seq });
        }
        let previous = self.author_chain_lens.get(&st.author_user_id).copied();
        check_author(&st, entry, resolver, previous, seq)?;
        let body = st
            .body
            .as_ref()
            .ok_or(RoomError::Malformed("statement without body"))?;
        if matches!(body, Body::Creation(_)) {
            return Err(RoomError::InvalidTransition {
                seq,
                reason: reason::ALREADY_CREATED,
            });
        }
        let author = st.author_user_id.as_str();
        let author_admin = match self.members.get(author) {
            Some(m) => m.admin,
            None => return Err(RoomError::NotAMember { seq }),
        };
        let admin_only = matches!(
            body,
            Body::Add(_)
                | Body::Remove(_)
                | Body::GrantAdmin(_)
                | Body::RevokeAdmin(_)
                | Body::MetadataUpdate(_)
        );
        if admin_only && !author_admin {
            return Err(RoomError::NotAdmin { seq });
        }
        let invalid = |reason| RoomError::InvalidTransition { seq, reason };
        match body {
            Body::Creation(_) => {}
            Body::Add(RoomAdd { members, epoch }) => {
                let new = parse_members(members)?;
                if new.is_empty() {
                    return Err(RoomError::Malformed("no members"));
                }
                if new.iter().any(|(u, _)| self.members.contains_key(u)) {
                    return Err(invalid(reason::ALREADY_MEMBER));
                }
                if self.members.len() + new.len() > MAX_ROOM_MEMBERS {
                    return Err(invalid(reason::ROOM_FULL));
                }
                match self.policy {
                    HistoryPolicy::FromJoin => {
                        let mut after = self.member_set();
                        after.extend(new.iter().map(|(u, _)| u.as_str()));
                        let e = self.check_epoch(epoch, Some(&after), seq)?;
                        let differs = new
                            .iter()
                            .any(|(u, k)| !e.members.iter().any(|(eu, ek)| eu == u && ek == k));
                        if differs {
                            return Err(invalid(reason::MEMBER_KEY_DIFFERS));
                        }
                        self.start_epoch(e, seq);
                    }
                    HistoryPolicy::WholeHistory => {
                        if epoch.is_some() {
                            return Err(invalid(reason::EPOCH_NOT_ALLOWED));
                        }
                        let joined_epoch = self.current_epoch();
                        for (user, key) in new {
                            self.members.insert(
                                user,
                                RoomMemberRecord {
                                    user_key: key,
                                    admin: false,
                                    joined_epoch,
                                },
                            );
                        }
                    }
                }
            }
            Body::Remove(RoomRemove { user_id, epoch }) => {
                if !self.members.contains_key(user_id) {
                    return Err(invalid(reason::NOT_MEMBER));
                }
                if user_id == author {
                    return Err(invalid(reason::REMOVE_SELF));
                }
                let mut after = self.member_set();
                after.remove(user_id.as_str());
                let e = self.check_epoch(epoch, Some(&after), seq)?;
                self.end_stint(user_id);
                self.start_epoch(e, seq);
            }
            Body::GrantAdmin(RoomGrantAdmin { user_id }) => match self.members.get_mut(user_id) {
                None => return Err(invalid(reason::NOT_MEMBER)),
                Some(m) if m.admin => return Err(invalid(reason::ALREADY_ADMIN)),
                Some(m) => m.admin = true,
            },
            Body::RevokeAdmin(RoomRevokeAdmin { user_id }) => {
                let admins = self.admins();
                match self.members.get_mut(user_id) {
                    None => return Err(invalid(reason::NOT_MEMBER)),
                    Some(m) if !m.admin => return Err(invalid(reason::NOT_ADMIN)),
                    Some(_) if admins == 1 => return Err(RoomError::LastAdmin { seq }),
                    Some(m) => m.admin = false,
                }
            }
            Body::Leave(RoomLeave { successor }) => {
                if successor.is_empty() {
                    if author_admin && self.admins() == 1 && self.members.len() > 1 {
                        return Err(RoomError::LastAdmin { seq });
                    }
                } else {
                    if !author_admin {
                        return Err(RoomError::NotAdmin { seq });
                    }
                    match self.members.get_mut(successor) {
                        Some(_) if successor == author => {
                            return Err(invalid(reason::SUCCESSOR_NOT_MEMBER));
                        }
                        None => return Err(invalid(reason::SUCCESSOR_NOT_MEMBER)),
                        Some(m) if m.admin => return Err(invalid(reason::ALREADY_ADMIN)),
                        Some(m) => m.admin = true,
                    }
                }
                self.end_stint(author);
                // The leaver holds the current epoch key and must not choose
                // the next one: a remaining member rotates (keyless, like a
                // self-revocation, §4.5).
                self.rotation_pending = true;
            }
            Body::MetadataUpdate(RoomMetadataUpdate { metadata }) => {
                if self.rotation_pending {
                    return Err(invalid(reason::ROTATION_PENDING));
                }
                let mut m = parse_metadata(metadata)?;
                m.epoch = self.current_epoch();
                self.metadata = m;
            }
            Body::Rotation(RoomRotation { epoch }) => {
                let after = self.member_set();
                let e = self.check_epoch(epoch, Some(&after), seq)?;
                self.start_epoch(e, seq);
            }
        }
        self.finish(entry, &st);
        Ok(())
    }

    /// Verifies a log served anew against this verified state: at least as
    /// long ([`RoomError::Rollback`]), the known log as its prefix through
    /// the `prev_hash` links ([`RoomError::Fork`]); new entries verified.
    pub fn update<R: UserResolver + ?Sized>(
        &self,
        entries: &[SignedRoomStatement],
        resolver: &R,
    ) -> Result<Self, RoomError> {
        if entries.len() > MAX_ROOM_LOG_ENTRIES {
            return Err(RoomError::Malformed("log too long"));
        }
        let served = entries.len() as u64;
        if served < self.len {
            return Err(RoomError::Rollback {
                known: self.len,
                served,
            });
        }
        let known_last = (self.len - 1) as usize;
        let linked = |pair: &[SignedRoomStatement]| {
            decode_bounded::<RoomStatement>(&pair[1].statement, MAX_ROOM_STATEMENT_BYTES)
                .is_ok_and(|st| st.prev_hash == room_entry_hash(&pair[0]))
        };
        if entries.get(known_last).map(room_entry_hash) != Some(self.head)
            || !entries[..=known_last].windows(2).all(linked)
        {
            return Err(RoomError::Fork { seq: self.len - 1 });
        }
        self.apply_suffix(&entries[self.len as usize..], resolver)
    }

    /// [`Self::update`], also returning the verified new entries: a holder
    /// appends those to its own and keeps its own prefix.
    pub fn update_suffix<'a, R: UserResolver + ?Sized>(
        &self,
        entries: &'a [SignedRoomStatement],
        resolver: &R,
    ) -> Result<(Self, &'a [SignedRoomStatement]), RoomError> {
        let next = self.update(entries, resolver)?;
        Ok((next, &entries[self.len as usize..]))
    }

    /// Verifies `suffix`, the entries that follow this state, and returns
    /// the state after them (MU4 alone, for a holder of its own log).
    pub fn apply_suffix<R: UserResolver + ?Sized>(
        &self,
        suffix: &[SignedRoomStatement],
        resolver: &R,
    ) -> Result<Self, RoomError> {
        if self.len as usize + suffix.len() > MAX_ROOM_LOG_ENTRIES {
            return Err(RoomError::Malformed("log too long"));
        }
        let mut next = self.clone();
        for entry in suffix {
            next.apply_unchecked(entry, resolver)?;
        }
        Ok(next)
    }

    /// The room's id.
    pub fn id(&self) -> &RoomId {
        &self.id
    }

    /// The history policy fixed at creation.
    pub fn policy(&self) -> HistoryPolicy {
        self.policy
    }

    /// The current members, by user id.
    pub fn members(&self) -> &BTreeMap<String, RoomMemberRecord> {
        &self.members
    }

    /// Whether `user_id` is a current member.
    pub fn is_member(&self, user_id: &str) -> bool {
        self.members.contains_key(user_id)
    }

    /// Whether `user_id` is a current admin.
    pub fn is_admin(&self, user_id: &str) -> bool {
        self.members.get(user_id).is_some_and(|m| m.admin)
    }

    /// Whether `user_id` was a member at some point of `epoch` (a sender
    /// of a room message in that epoch must have been, §17.6 RM3).
    pub fn was_member_during(&self, user_id: &str, epoch: u64) -> bool {
        if epoch > self.current_epoch() {
            return false;
        }
        self.members
            .get(user_id)
            .is_some_and(|m| m.joined_epoch <= epoch)
            || self
                .past_stints
                .get(user_id)
                .is_some_and(|s| s.iter().any(|&(a, b)| a <= epoch && epoch <= b))
    }

    /// Every epoch, oldest first.
    pub fn epochs(&self) -> &[EpochRecord] {
        &self.epochs
    }

    /// The current epoch's number.
    pub fn current_epoch(&self) -> u64 {
        self.epochs.len().saturating_sub(1) as u64
    }

    /// The current epoch's public key: room messages wrap to it.
    pub fn current_epoch_key(&self) -> Option<&EncryptionPublicKey> {
        self.epochs.last().map(|e| &e.public_key)
    }

    /// True after a leave until a remaining member starts a new epoch: the
    /// leaver holds the current epoch key, so nobody may seal to it.
    pub fn rotation_pending(&self) -> bool {
        self.rotation_pending
    }

    /// Members whose verified user key is no longer the one the current
    /// epoch is wrapped to (a device revocation or key rotation, §4.5):
    /// the room must rotate, since a revoked device may hold the old user
    /// key. Members whose log the resolver lacks are listed too.
    pub fn stale_members<R: UserResolver + ?Sized>(&self, resolver: &R) -> Vec<String> {
        self.members
            .iter()
            .filter(|(u, m)| {
                resolver
                    .verified_user(u)
                    .is_none_or(|c| c.encryption_key().id() != m.user_key)
            })
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Number of entries verified.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: a verified room log has at least its creation.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Hash of the last entry.
    pub fn head(&self) -> &[u8; 32] {
        &self.head
    }

    /// The timestamp of the last entry.
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// Decrypts the room's current metadata with the epoch key it is
    /// sealed under (from `keyring`).
    pub fn metadata(&self, keyring: &RoomKeyring) -> Result<RoomMetadata, RoomError> {
        let key = keyring
            .get(self.metadata.epoch)
            .ok_or(RoomError::MissingEpochKey(self.metadata.epoch))?;
        open_metadata(&self.id, self.metadata.epoch, key, &self.metadata)
    }

    /// The epoch of the current metadata.
    pub fn metadata_epoch(&self) -> u64 {
        self.metadata.epoch
    }

    /// Accepts a wrap of an epoch private key (EK1-EK7, §17.4): it must be
    /// for this room, name an epoch key the log commits to, be addressed to
    /// `user_key`, open, and yield the committed key pair.
    pub fn accept_epoch_wrap(
        &self,
        wrap: &RoomKeyWrap,
        user_key: &UserEncryptionKey,
    ) -> Result<RoomEpochKey, RoomError> {
        if wrap.room_id.len() != 32
            || wrap.epoch_key.len() != KEY_ID_BYTES
            || wrap.recipient_key.len() != KEY_ID_BYTES
        {
            return Err(WrapError::Malformed.into());
        }
        if wrap.room_id != self.id.as_bytes() {
            return Err(WrapError::WrongResource.into());
        }
        let committed = usize::try_from(wrap.epoch)
            .ok()
            .and_then(|e| self.epochs.get(e))
            .map(|e| e.public_key)
            .filter(|pk| pk.id().as_bytes() == wrap.epoch_key.as_slice())
            .ok_or(RoomError::EpochKeyMismatch)?;
        let me = user_key.public_key().id();
        if wrap.recipient_key != me.as_bytes() {
            return Err(WrapError::WrongRecipient.into());
        }
        if wrap.enc.len() != ENC_BYTES || wrap.ciphertext.len() != CIPHERTEXT_BYTES {
            return Err(WrapError::Malformed.into());
        }
        let aad = epoch_wrap_aad(&self.id, wrap.epoch, &committed.id(), &me);
        let seed = wrap::open_from(
            user_key.secret(),
            &wrap.enc,
            &wrap.ciphertext,
            ROOM_EPOCH_WRAP_INFO,
            &aad,
        )?;
        let key = RoomEpochKey::import_secret(&*seed).map_err(|_| WrapError::Undecryptable)?;
        if key.public_key() != committed {
            return Err(WrapError::Undecryptable.into());
        }
        Ok(key)
    }
}

/// Verifies a whole room log (entry 0 against `expected`, if given).
pub fn verify_room_log<R: UserResolver + ?Sized>(
    expected: Option<&RoomId>,
    entries: &[SignedRoomStatement],
    resolver: &R,
) -> Result<VerifiedRoom, RoomError> {
    if entries.len() > MAX_ROOM_LOG_ENTRIES {
        return Err(RoomError::Malformed("log too long"));
    }
    let (first, rest) = entries.split_first().ok_or(RoomError::EmptyLog)?;
    let room = VerifiedRoom::from_creation(expected, first, resolver)?;
    room.apply_suffix(rest, resolver)
}

// ------------------------------------------------------------ key material

/// `room_id || u64_be(epoch) || key_id(epoch pk) || key_id(member key)`: 104 bytes.
fn epoch_wrap_aad(room: &RoomId, epoch: u64, epoch_key: &KeyId, member: &KeyId) -> [u8; 104] {
    let mut aad = [0u8; 104];
    aad[..32].copy_from_slice(room.as_bytes());
    aad[32..40].copy_from_slice(&epoch.to_be_bytes());
    aad[40..72].copy_from_slice(epoch_key.as_bytes());
    aad[72..].copy_from_slice(member.as_bytes());
    aad
}

/// Wraps the private key of `epoch` (its 32-byte seed) to a member's user
/// key (§17.4). Draws 64 bytes (`eseed`).
pub fn wrap_epoch_key<R: CryptoRng + ?Sized>(
    rng: &mut R,
    room: &RoomId,
    epoch: u64,
    epoch_key: &RoomEpochKey,
    member_key: &EncryptionPublicKey,
) -> Result<RoomKeyWrap, RoomError> {
    let (ek, mk) = (epoch_key.public_key().id(), member_key.id());
    let aad = epoch_wrap_aad(room, epoch, &ek, &mk);
    let (enc, ciphertext) = wrap::seal_to(
        rng,
        member_key,
        ROOM_EPOCH_WRAP_INFO,
        &aad,
        &epoch_key.export_secret(),
    )?;
    Ok(RoomKeyWrap {
        room_id: room.as_bytes().to_vec(),
        epoch,
        epoch_key: ek.as_bytes().to_vec(),
        recipient_key: mk.as_bytes().to_vec(),
        enc,
        ciphertext,
    })
}

/// The metadata key of an epoch: `HKDF-Expand(HKDF-Extract(salt = room_id,
/// ikm = epoch seed), ROOM_METADATA_KEY, 32)` (§17.5).
fn metadata_key(room: &RoomId, epoch_key: &RoomEpochKey) -> Zeroizing<[u8; 32]> {
    let seed = epoch_key.export_secret();
    let hk = Hkdf::<Sha256>::new(Some(room.as_bytes()), &*seed);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF's limit: this cannot fail.
    let _ = hk.expand(ROOM_METADATA_KEY, &mut *key);
    key
}

fn metadata_aad(room: &RoomId, epoch: u64) -> Vec<u8> {
    framed(ROOM_METADATA_AAD, &[room.as_bytes(), &epoch.to_be_bytes()])
}

/// Seals `metadata` under the metadata key of `epoch` (§17.5). Draws 24
/// bytes (the nonce).
pub fn seal_metadata<R: CryptoRng + ?Sized>(
    rng: &mut R,
    room: &RoomId,
    epoch: u64,
    epoch_key: &RoomEpochKey,
    metadata: &RoomMetadata,
) -> Result<SealedRoomMetadata, RoomError> {
    metadata.check()?;
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    let encoded = Zeroizing::new(
        WireMetadata {
            name: metadata.name.clone(),
            case_reference: metadata.case_reference.clone(),
            topic: metadata.topic.clone(),
        }
        .encode_to_vec(),
    );
    let mut padded = Zeroizing::new(Vec::new());
    padding::pad_into(&mut padded, &encoded);
    let key = metadata_key(room, epoch_key);
    let aad = metadata_aad(room, epoch);
    let ciphertext = XChaCha20Poly1305::new(&(*key).into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &padded,
                aad: &aad,
            },
        )
        .map_err(|_| RoomError::Malformed("room metadata"))?;
    Ok(SealedRoomMetadata {
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

fn open_metadata(
    room: &RoomId,
    epoch: u64,
    epoch_key: &RoomEpochKey,
    sealed: &SealedMeta,
) -> Result<RoomMetadata, RoomError> {
    let key = metadata_key(room, epoch_key);
    let aad = metadata_aad(room, epoch);
    let padded = Zeroizing::new(
        XChaCha20Poly1305::new(&(*key).into())
            .decrypt(
                &sealed.nonce.into(),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| WrapError::Undecryptable)?,
    );
    let len = padding::unpad(&padded).ok_or(WrapError::Undecryptable)?;
    let m: WireMetadata = decode_bounded(&padded[..len], MAX_METADATA_CIPHERTEXT_BYTES)?;
    let m = RoomMetadata {
        name: m.name,
        case_reference: m.case_reference,
        topic: m.topic,
    };
    m.check()?;
    Ok(m)
}

// ------------------------------------------------------------ producers

fn sign_room_statement(st: &RoomStatement, device: &DeviceSigningKey) -> SignedRoomStatement {
    let bytes = st.encode_to_vec();
    let signature = device.sign(&framed(SIG_ROOM_STATEMENT, &[&bytes])).to_vec();
    SignedRoomStatement {
        statement: bytes,
        signature,
    }
}

/// A fresh epoch for `members` (user id → current user key), ascending:
/// draws the seed (32), the metadata nonce (24), then one wrap (64) per
/// member in order.
struct Fresh {
    wire: RoomEpoch,
    key: RoomEpochKey,
    wraps: Vec<(String, RoomKeyWrap)>,
}

fn fresh_epoch<R: CryptoRng + ?Sized>(
    rng: &mut R,
    room: &RoomId,
    number: u64,
    members: &BTreeMap<String, EncryptionPublicKey>,
    metadata: &RoomMetadata,
) -> Result<Fresh, RoomError> {
    let key = RoomEpochKey::generate(rng);
    let sealed = seal_metadata(rng, room, number, &key, metadata)?;
    let mut wraps = Vec::with_capacity(members.len());
    for (user, pk) in members {
        wraps.push((user.clone(), wrap_epoch_key(rng, room, number, &key, pk)?));
    }
    let wire = RoomEpoch {
        number,
        public_key: key.public_key().as_bytes().to_vec(),
        members: members
            .iter()
            .map(|(u, pk)| RoomMember {
                user_id: u.clone(),
                user_key: pk.id().as_bytes().to_vec(),
            })
            .collect(),
        metadata: Some(sealed),
    };
    Ok(Fresh { wire, key, wraps })
}

fn current_keys<'a, R: UserResolver + ?Sized>(
    users: impl Iterator<Item = &'a str>,
    resolver: &R,
) -> Result<BTreeMap<String, EncryptionPublicKey>, RoomError> {
    users
        .map(|u| {
            resolver
                .verified_user(u)
                .map(|c| (u.to_owned(), *c.encryption_key()))
                .ok_or_else(|| RoomError::UnknownMember(u.to_owned()))
        })
        .collect()
}

/// A resolver that also knows the author's own log.
struct WithAuthor<'a, R: ?Sized> {
    author: &'a VerifiedUser,
    rest: &'a R,
}

impl<R: UserResolver + ?Sized> UserResolver for WithAuthor<'_, R> {
    fn verified_user(&self, user_id: &str) -> Option<&VerifiedUser> {
        if self.author.user_id() == user_id {
            Some(self.author)
        } else {
            self.rest.verified_user(user_id)
        }
    }
}

/// Creates a room: entry 0, by `author` (who becomes its only admin), with
/// `members` (the author's own user is added if absent), epoch 0 and its
/// wraps to every member. Draws the room id (32), then as a fresh epoch.
pub fn create_room<R: CryptoRng + ?Sized>(
    rng: &mut R,
    author: RoomAuthor<'_>,
    policy: HistoryPolicy,
    members: &[&VerifiedUser],
    metadata: &RoomMetadata,
    timestamp: u64,
) -> Result<RoomChange, RoomError> {
    let id = RoomId::random(rng);
    let resolver = WithAuthor {
        author: author.chain,
        rest: members,
    };
    let users = members
        .iter()
        .map(|m| m.user_id())
        .chain([author.chain.user_id()]);
    let keys = current_keys(users, &resolver)?;
    let fresh = fresh_epoch(rng, &id, 0, &keys, metadata)?;
    let st = RoomStatement {
        version: PROTOCOL_VERSION,
        room_id: id.as_bytes().to_vec(),
        seq: 0,
        prev_hash: genesis_hash(&id).to_vec(),
        timestamp,
        author_user_id: author.chain.user_id().to_owned(),
        author_device: author.device.public_key().as_bytes().to_vec(),
        author_chain_len: author.chain.len(),
        body: Some(Body::Creation(RoomCreation {
            history: policy.to_wire(),
            epoch: Some(fresh.wire),
        })),
    };
    let entry = sign_room_statement(&st, author.device);
    let room = VerifiedRoom::from_creation(Some(&id), &entry, &resolver)?;
    Ok(RoomChange {
        entry,
        room,
        epoch_key: Some(fresh.key),
        wraps: fresh.wraps,
    })
}

impl VerifiedRoom {
    fn next_statement(&self, author: RoomAuthor<'_>, timestamp: u64, body: Body) -> RoomStatement {
        RoomStatement {
            version: PROTOCOL_VERSION,
            room_id: self.id.as_bytes().to_vec(),
            seq: self.len,
            prev_hash: self.head.to_vec(),
            timestamp: timestamp.max(self.last_timestamp),
            author_user_id: author.chain.user_id().to_owned(),
            author_device: author.device.public_key().as_bytes().to_vec(),
            author_chain_len: author.chain.len(),
            body: Some(body),
        }
    }

    fn finish_change<R: UserResolver + ?Sized>(
        &self,
        author: RoomAuthor<'_>,
        st: RoomStatement,
        resolver: &R,
        epoch_key: Option<RoomEpochKey>,
        wraps: Vec<(String, RoomKeyWrap)>,
    ) -> Result<RoomChange, RoomError> {
        let entry = sign_room_statement(&st, author.device);
        let resolver = WithAuthor {
            author: author.chain,
            rest: resolver,
        };
        let mut room = self.clone();
        room.apply_unchecked(&entry, &resolver)?;
        Ok(RoomChange {
            entry,
            room,
            epoch_key,
            wraps,
        })
    }

    /// A fresh epoch for the members after this entry, re-sealing the
    /// current metadata (decrypted with `keyring`).
    fn next_epoch<R: CryptoRng + ?Sized, U: UserResolver + ?Sized>(
        &self,
        rng: &mut R,
        members: BTreeSet<&str>,
        resolver: &U,
        keyring: &RoomKeyring,
    ) -> Result<Fresh, RoomError> {
        let metadata = self.metadata(keyring)?;
        let keys = current_keys(members.into_iter(), resolver)?;
        fresh_epoch(rng, &self.id, self.epochs.len() as u64, &keys, &metadata)
    }

    /// An admin adds `new` members. FromJoin: a new epoch, wrapped to every
    /// member (`resolver` gives the current members' logs). WholeHistory:
    /// no new epoch; every epoch key in `keyring` (all must be held) is
    /// wrapped to each new member, for each member every epoch in order.
    pub fn add_members<R: CryptoRng + ?Sized, U: UserResolver + ?Sized>(
        &self,
        rng: &mut R,
        author: RoomAuthor<'_>,
        new: &[&VerifiedUser],
        resolver: &U,
        keyring: &RoomKeyring,
        timestamp: u64,
    ) -> Result<RoomChange, RoomError> {
        let mut added: BTreeMap<String, EncryptionPublicKey> = BTreeMap::new();
        for u in new {
            added.insert(u.user_id().to_owned(), *u.encryption_key());
        }
        let members = added
            .iter()
            .map(|(u, pk)| RoomMember {
                user_id: u.clone(),
                user_key: pk.id().as_bytes().to_vec(),
            })
            .collect();
        let both = WithNew {
            new,
            rest: resolver,
        };
        match self.policy {
            HistoryPolicy::FromJoin => {
                let mut after = self.member_set();
                after.extend(added.keys().map(String::as_str));
                let fresh = self.next_epoch(rng, after, &both, keyring)?;
                let body = Body::Add(RoomAdd {
                    members,
                    epoch: Some(fresh.wire),
                });
                let st = self.next_statement(author, timestamp, body);
                self.finish_change(author, st, &both, Some(fresh.key), fresh.wraps)
            }
            HistoryPolicy::WholeHistory => {
                let mut wraps = Vec::with_capacity(added.len() * self.epochs.len());
                for (user, pk) in &added {
                    for e in 0..self.epochs.len() as u64 {
                        let key = keyring.get(e).ok_or(RoomError::MissingEpochKey(e))?;
                        wraps.push((user.clone(), wrap_epoch_key(rng, &self.id, e, key, pk)?));
                    }
                }
                let body = Body::Add(RoomAdd {
                    members,
                    epoch: None,
                });
                let st = self.next_statement(author, timestamp, body);
                self.finish_change(author, st, &both, None, wraps)
            }
        }
    }

    /// An admin removes `user_id`: a new epoch, wrapped to every remaining
    /// member and not to the removed one.
    pub fn remove_member<R: CryptoRng + ?Sized, U: UserResolver + ?Sized>(
        &self,
        rng: &mut R,
        author: RoomAuthor<'_>,
        user_id: &str,
        resolver: &U,
        keyring: &RoomKeyring,
        timestamp: u64,
    ) -> Result<RoomChange, RoomError> {
        let mut after = self.member_set();
        after.remove(user_id);
        let fresh = self.next_epoch(rng, after, resolver, keyring)?;
        let body = Body::Remove(RoomRemove {
            user_id: user_id.to_owned(),
            epoch: Some(fresh.wire),
        });
        let st = self.next_statement(author, timestamp, body);
        self.finish_change(author, st, resolver, Some(fresh.key), fresh.wraps)
    }

    /// Any member starts a new epoch for the same members: after a leave,
    /// or when [`Self::stale_members`] is not empty.
    pub fn rotate<R: CryptoRng + ?Sized, U: UserResolver + ?Sized>(
        &self,
        rng: &mut R,
        author: RoomAuthor<'_>,
        resolver: &U,
        keyring: &RoomKeyring,
        timestamp: u64,
    ) -> Result<RoomChange, RoomError> {
        let fresh = self.next_epoch(rng, self.member_set(), resolver, keyring)?;
        let body = Body::Rotation(RoomRotation {
            epoch: Some(fresh.wire),
        });
        let st = self.next_statement(author, timestamp, body);
        self.finish_change(author, st, resolver, Some(fresh.key), fresh.wraps)
    }

    /// An admin makes `user_id` an admin.
    pub fn grant_admin<U: UserResolver + ?Sized>(
        &self,
        author: RoomAuthor<'_>,
        user_id: &str,
        resolver: &U,
        timestamp: u64,
    ) -> Result<RoomChange, RoomError> {
        let body = Body::GrantAdmin(RoomGrantAdmin {
            user_id: user_id.to_owned(),
        });
        let st = self.next_statement(author, timestamp, body);
        self.finish_change(author, st, resolver, None, Vec::new())
    }

    /// An admin revokes `user_id`'s admin role (its own included, unless it
    /// is the last admin).
    pub fn revoke_admin<U: UserResolver + ?Sized>(
        &self,
        author: RoomAuthor<'_>,
        user_id: &str,
        resolver: &U,
        timestamp: u64,
    ) -> Result<RoomChange, RoomError> {
        let body = Body::RevokeAdmin(RoomRevokeAdmin {
            user_id: user_id.to_owned(),
        });
        let st = self.next_statement(author, timestamp, body);
        self.finish_change(author, st, resolver, None, Vec::new())
    }

    /// The author leaves; the last admin names a `successor`. Keyless: the
    /// room is rotation pending until a remaining member calls
    /// [`Self::rotate`].
    pub fn leave<U: UserResolver + ?Sized>(
        &self,
        author: RoomAuthor<'_>,
        successor: Option<&str>,
        resolver: &U,
        timestamp: u64,
    ) -> Result<RoomChange, RoomError> {
        let body = Body::Leave(RoomLeave {
            successor: successor.unwrap_or_default().to_owned(),
        });
        let st = self.next_statement(author, timestamp, body);
        self.finish_change(author, st, resolver, None, Vec::new())
    }

    /// An admin replaces the metadata, sealed under the current epoch.
    pub fn update_metadata<R: CryptoRng + ?Sized, U: UserResolver + ?Sized>(
        &self,
        rng: &mut R,
        author: RoomAuthor<'_>,
        metadata: &RoomMetadata,
        resolver: &U,
        keyring: &RoomKeyring,
        timestamp: u64,
    ) -> Result<RoomChange, RoomError> {
        let e = self.current_epoch();
        let key = keyring.get(e).ok_or(RoomError::MissingEpochKey(e))?;
        let sealed = seal_metadata(rng, &self.id, e, key, metadata)?;
        let body = Body::MetadataUpdate(RoomMetadataUpdate {
            metadata: Some(sealed),
        });
        let st = self.next_statement(author, timestamp, body);
        self.finish_change(author, st, resolver, None, Vec::new())
    }
}

/// A resolver that also knows the members being added.
struct WithNew<'a, R: ?Sized> {
    new: &'a [&'a VerifiedUser],
    rest: &'a R,
}

impl<R: UserResolver + ?Sized> UserResolver for WithNew<'_, R> {
    fn verified_user(&self, user_id: &str) -> Option<&VerifiedUser> {
        self.new
            .verified_user(user_id)
            .or_else(|| self.rest.verified_user(user_id))
    }
}

/// Produces a signed room entry from an arbitrary statement, for tests and
/// vectors that need entries the producers refuse to make.
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub fn sign_raw(st: &RoomStatement, device: &DeviceSigningKey) -> SignedRoomStatement {
    sign_room_statement(st, device)
}

#[cfg(test)]
#[path = "room_tests.rs"]
mod tests;
