//! Each user's hash-chained log of signed statements, and its verifier
//! (SECURITY.md §4).
//!
//! ```text
//! entry 0: UserCreation    signed by the invite's delegation key, prev = H(invite)
//! entry n: DeviceAddition  signed by an active device (and the new one), prev = H(entry n-1)
//!          DeviceRevocation signed by an active device or the root, prev = H(entry n-1)
//!          KeyRotation     signed by an active device,             prev = H(entry n-1)
//! ```
//!
//! `H(entry)` covers the statement *and* its signature, so a served prefix
//! checked through its hash links is the verified one byte for byte.
//!
//! [`verify_log`] checks a whole log from the pinned organisation root;
//! [`VerifiedUser::update`] checks that a newly served log extends the one
//! already verified, refusing rollbacks and forks, and
//! [`VerifiedUser::update_suffix`] also returns the verified new entries, so
//! a caller appends those to its own entries and never stores served bytes
//! it did not verify. [`VerifiedUser::apply_suffix`] verifies new entries
//! alone, for a server that keeps its own verified log.

use std::collections::BTreeMap;

use ward_proto::v1::{
    DeviceAddition, DeviceKeys, DeviceRevocation, KeyRotation, SignedInvite, SignedStatement,
    Statement, UserCreation, statement::Body,
};
use ward_proto::{Message, PROTOCOL_VERSION, decode_bounded, decode_canonical};

use crate::error::ChainError;
use crate::invite::{VerifiedInvite, verify_invite};
use crate::keys::{
    DelegationKey, DeviceSigningKey, EncryptionPublicKey, OrgRootKey, SigningPublicKey,
};
use crate::labels::{HASH_ENTRY, SIG_DEVICE_POSSESSION, SIG_STATEMENT, framed, framed_hash};

/// `KeyInUse` reason: the new device key is the organisation root.
pub const KEY_IS_ROOT: &str = "device key is the organisation root";
/// `KeyInUse` reason: the new device key is the invite's delegation key.
pub const KEY_IS_DELEGATION: &str = "device key is the invite's delegation key";

/// Largest encoded `Statement`: a user creation holds an invite (up to
/// 1024 bytes) and two 1216-byte X-Wing keys, about 3.6 KB (SECURITY.md §4.2).
pub const MAX_STATEMENT_BYTES: usize = 8192;
/// Largest encoded standalone `SignedStatement` (an `append` request, a
/// stored entry): the statement, a 64-byte signature and their tags.
pub const MAX_SIGNED_STATEMENT_BYTES: usize = MAX_STATEMENT_BYTES + 128;

/// Decodes a standalone `SignedStatement` from untrusted bytes: over
/// [`MAX_SIGNED_STATEMENT_BYTES`] is `Decode(TooLarge)`, not protobuf is
/// `Decode(Malformed)` (SECURITY.md §3.1).
pub fn decode_signed_statement(bytes: &[u8]) -> Result<SignedStatement, ChainError> {
    Ok(decode_bounded(bytes, MAX_SIGNED_STATEMENT_BYTES)?)
}

/// Most entries a log may hold (devices added and revoked over a career).
pub const MAX_LOG_ENTRIES: usize = 4096;

/// One device as the chain knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Signing key; also the device id.
    pub signing_key: SigningPublicKey,
    /// Encryption key; the user key is granted to it.
    pub encryption_key: EncryptionPublicKey,
    /// The entry that added it.
    pub added_at: u64,
    /// The entry that revoked it, if any.
    pub revoked_at: Option<u64>,
}

impl DeviceRecord {
    /// Whether the device may still sign.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// The state of a user's log after verification: what clients may trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedUser {
    /// The pinned root the log was verified from (bound into possession proofs).
    root: SigningPublicKey,
    invite: VerifiedInvite,
    encryption_key: EncryptionPublicKey,
    past_encryption_keys: Vec<EncryptionPublicKey>,
    /// Boxed: a B-tree node holds room for 11 values, and a record (its
    /// X-Wing key) is 1.3 KB, so an unboxed one-device user took a 15 KB
    /// node; the relay caches one of these per user (issue 15).
    devices: BTreeMap<SigningPublicKey, Box<DeviceRecord>>,
    len: u64,
    head: [u8; 32],
    last_timestamp: u64,
    rotation_pending: bool,
}

/// Parses an X-Wing encryption key for the chain: a wrong length, an ML-KEM
/// part that fails FIPS 203's modulus check or a low-order X25519 part is
/// refused, since nothing could ever be wrapped to it (SECURITY.md §3.5).
fn encryption_key(bytes: &[u8], what: &'static str) -> Result<EncryptionPublicKey, ChainError> {
    EncryptionPublicKey::from_bytes(bytes).map_err(|_| ChainError::Malformed(what))
}

fn user_key(bytes: &[u8]) -> Result<EncryptionPublicKey, ChainError> {
    encryption_key(bytes, "user encryption key")
}

fn device_keys(
    keys: &Option<DeviceKeys>,
) -> Result<(SigningPublicKey, EncryptionPublicKey), ChainError> {
    let keys = keys
        .as_ref()
        .ok_or(ChainError::Malformed("missing device keys"))?;
    let s = SigningPublicKey::from_bytes(&keys.signing_public_key)
        .map_err(|_| ChainError::Malformed("device signing key"))?;
    let e = encryption_key(&keys.encryption_public_key, "device encryption key")?;
    Ok((s, e))
}

fn sign_statement(statement: &Statement, sign: impl FnOnce(&[u8]) -> [u8; 64]) -> SignedStatement {
    let bytes = statement.encode_to_vec();
    let signature = sign(&framed(SIG_STATEMENT, &[&bytes])).to_vec();
    SignedStatement {
        statement: bytes,
        signature,
    }
}

/// `H(HASH_ENTRY, statement bytes, signature)`: the hash the next entry
/// chains to. It covers the signature, so a served log whose known prefix
/// carries other signature bytes (zeroed, say) no longer links to the known
/// head: a fork, not a silent replacement (SECURITY.md §4.2, §4.7).
pub fn entry_hash(entry: &SignedStatement) -> [u8; 32] {
    framed_hash(HASH_ENTRY, &[&entry.statement, &entry.signature])
}

/// What a new device signs to prove it holds its signing key and consents
/// to be a device of `user_id` in the organisation of `root`
/// (SECURITY.md §4.4).
fn possession_message(
    root: &SigningPublicKey,
    user_id: &str,
    signing: &[u8],
    encryption: &[u8],
) -> Vec<u8> {
    framed(
        SIG_DEVICE_POSSESSION,
        &[root.as_bytes(), user_id.as_bytes(), signing, encryption],
    )
}

/// The new device's proof of possession, made on the new device and carried
/// to the approving device with its public keys: `Sign(device,
/// frame(SIG_DEVICE_POSSESSION, root, user_id, signing key, encryption key))`.
pub fn possession_proof(
    root: &SigningPublicKey,
    user_id: &str,
    device: &DeviceSigningKey,
    encryption: &EncryptionPublicKey,
) -> [u8; 64] {
    device.sign(&possession_message(
        root,
        user_id,
        device.public_key().as_bytes(),
        encryption.as_bytes(),
    ))
}

/// Checks a new device's proof of possession (as [`possession_proof`]
/// makes it) before its keys are shown for approval: the approving device
/// refuses a device that cannot sign for its own keys, as the log would.
pub fn verify_possession_proof(
    root: &SigningPublicKey,
    user_id: &str,
    signing: &SigningPublicKey,
    encryption: &EncryptionPublicKey,
    proof: &[u8],
) -> bool {
    signing.verify(
        &possession_message(root, user_id, signing.as_bytes(), encryption.as_bytes()),
        proof,
    )
}

/// Makes entry 0 of a new user's log, signed by the invite's delegation key.
/// Checks the invite against the pinned root and the delegation key first.
pub fn create_user(
    root: &SigningPublicKey,
    invite: &SignedInvite,
    delegation: &DelegationKey,
    user_key: &EncryptionPublicKey,
    device_signing: &SigningPublicKey,
    device_encryption: &EncryptionPublicKey,
    timestamp: u64,
) -> Result<SignedStatement, ChainError> {
    let verified_invite = verify_invite(root, invite)?;
    if verified_invite.delegation_key != delegation.public_key() {
        return Err(ChainError::UnauthorizedAuthor { seq: 0 });
    }
    let statement = Statement {
        version: PROTOCOL_VERSION,
        user_id: verified_invite.details.user_id.clone(),
        seq: 0,
        prev_hash: verified_invite.hash.to_vec(),
        timestamp,
        author: delegation.public_key().as_bytes().to_vec(),
        body: Some(Body::UserCreation(UserCreation {
            invite: Some(invite.clone()),
            user_encryption_public_key: user_key.as_bytes().to_vec(),
            device: Some(DeviceKeys {
                signing_public_key: device_signing.as_bytes().to_vec(),
                encryption_public_key: device_encryption.as_bytes().to_vec(),
            }),
        })),
    };
    Ok(sign_statement(&statement, |m| delegation.sign(m)))
}

/// Parses and checks one entry's signature and framing; returns the statement.
fn open_entry(entry: &SignedStatement) -> Result<Statement, ChainError> {
    if entry.statement.len() > MAX_STATEMENT_BYTES {
        return Err(ChainError::Malformed("statement too large"));
    }
    let st: Statement = decode_canonical(&entry.statement, MAX_STATEMENT_BYTES)?;
    if st.version != PROTOCOL_VERSION {
        return Err(ChainError::UnsupportedVersion(st.version));
    }
    Ok(st)
}

fn check_signature(
    entry: &SignedStatement,
    author: &SigningPublicKey,
    seq: u64,
) -> Result<(), ChainError> {
    if author.verify(
        &framed(SIG_STATEMENT, &[&entry.statement]),
        &entry.signature,
    ) {
        Ok(())
    } else {
        Err(ChainError::BadSignature { seq })
    }
}

impl VerifiedUser {
    /// Verifies entry 0 (the user creation) against the pinned root.
    pub fn from_creation(
        root: &SigningPublicKey,
        expected_user_id: &str,
        entry: &SignedStatement,
    ) -> Result<Self, ChainError> {
        let st = open_entry(entry)?;
        if st.seq != 0 {
            return Err(ChainError::BadSequence {
                expected: 0,
                found: st.seq,
            });
        }
        let Some(Body::UserCreation(creation)) = &st.body else {
            return Err(ChainError::Malformed("entry 0 must be a user creation"));
        };
        let signed_invite = creation
            .invite
            .as_ref()
            .ok_or(ChainError::Malformed("missing invite"))?;
        let invite = verify_invite(root, signed_invite)?;
        if st.user_id != expected_user_id || invite.details.user_id != st.user_id {
            return Err(ChainError::WrongUser { seq: 0 });
        }
        let author = SigningPublicKey::from_bytes(&st.author)
            .map_err(|_| ChainError::Malformed("author"))?;
        if author != invite.delegation_key {
            return Err(ChainError::UnauthorizedAuthor { seq: 0 });
        }
        check_signature(entry, &author, 0)?;
        if st.prev_hash != invite.hash {
            return Err(ChainError::BrokenChain { seq: 0 });
        }
        if st.timestamp > invite.details.expires_at {
            return Err(ChainError::InviteExpired);
        }
        let user_key = user_key(&creation.user_encryption_public_key)?;
        let (signing_key, encryption_key) = device_keys(&creation.device)?;
        if signing_key == *root {
            return Err(ChainError::KeyInUse {
                seq: 0,
                reason: KEY_IS_ROOT,
            });
        }
        if signing_key == invite.delegation_key {
            return Err(ChainError::KeyInUse {
                seq: 0,
                reason: KEY_IS_DELEGATION,
            });
        }
        let mut devices = BTreeMap::new();
        devices.insert(
            signing_key,
            Box::new(DeviceRecord {
                signing_key,
                encryption_key,
                added_at: 0,
                revoked_at: None,
            }),
        );
        Ok(Self {
            root: *root,
            invite,
            encryption_key: user_key,
            past_encryption_keys: Vec::new(),
            devices,
            len: 1,
            head: entry_hash(entry),
            last_timestamp: st.timestamp,
            rotation_pending: false,
        })
    }

    /// Verifies the next entry and applies it. On error `self` is unchanged.
    pub fn apply(
        &mut self,
        root: &SigningPublicKey,
        entry: &SignedStatement,
    ) -> Result<(), ChainError> {
        let seq = self.len;
        let st = open_entry(entry)?;
        if st.seq != seq {
            return Err(ChainError::BadSequence {
                expected: seq,
                found: st.seq,
            });
        }
        if st.user_id != self.user_id() {
            return Err(ChainError::WrongUser { seq });
        }
        if st.prev_hash != self.head {
            return Err(ChainError::BrokenChain { seq });
        }
        if st.timestamp < self.last_timestamp {
            return Err(ChainError::TimeWentBackwards { seq });
        }
        let author = SigningPublicKey::from_bytes(&st.author)
            .map_err(|_| ChainError::Malformed("author"))?;
        let author_is_device = self.devices.get(&author).is_some_and(|d| d.is_active());
        match &st.body {
            // A second creation in one log: an invite for this user id used
            // again. Reported as reuse only if the entry is genuinely signed
            // under a root-signed invite; anything else is a bad signature.
            Some(Body::UserCreation(creation)) => {
                let invite = creation
                    .invite
                    .as_ref()
                    .ok_or(ChainError::Malformed("missing invite"))?;
                let invite = verify_invite(root, invite)?;
                if author != invite.delegation_key {
                    return Err(ChainError::UnauthorizedAuthor { seq });
                }
                check_signature(entry, &author, seq)?;
                return Err(ChainError::InviteReused);
            }
            Some(Body::DeviceAddition(DeviceAddition {
                device,
                device_signature,
            })) => {
                if !author_is_device {
                    return Err(ChainError::UnauthorizedAuthor { seq });
                }
                check_signature(entry, &author, seq)?;
                let (signing_key, encryption_key) = device_keys(device)?;
                self.check_key_unused(root, &signing_key, &encryption_key, seq)?;
                // Parsed above, so present: its exact bytes are what was signed.
                let keys = device
                    .as_ref()
                    .ok_or(ChainError::Malformed("missing device keys"))?;
                let message = possession_message(
                    root,
                    self.user_id(),
                    &keys.signing_public_key,
                    &keys.encryption_public_key,
                );
                if !signing_key.verify(&message, device_signature) {
                    return Err(ChainError::MissingPossessionProof { seq });
                }
                self.devices.insert(
                    signing_key,
                    Box::new(DeviceRecord {
                        signing_key,
                        encryption_key,
                        added_at: seq,
                        revoked_at: None,
                    }),
                );
            }
            Some(Body::DeviceRevocation(DeviceRevocation {
                device_id,
                new_user_encryption_public_key,
            })) => {
                let by_root = !author_is_device && author == *root;
                if !author_is_device && !by_root {
                    return Err(ChainError::UnauthorizedAuthor { seq });
                }
                check_signature(entry, &author, seq)?;
                let target = SigningPublicKey::from_bytes(device_id)
                    .map_err(|_| ChainError::Malformed("device id"))?;
                // Target checks first, then the key (SECURITY.md §4.6, A7).
                match self.devices.get(&target) {
                    Some(d) if d.is_active() => {}
                    Some(_) => {
                        return Err(ChainError::InvalidTransition {
                            seq,
                            reason: "device already revoked",
                        });
                    }
                    None => {
                        return Err(ChainError::InvalidTransition {
                            seq,
                            reason: "unknown device",
                        });
                    }
                }
                // No device being revoked, and never the root, chooses the
                // next user key: a self-revocation and a root revocation are
                // keyless and leave rotation pending; a device revoking
                // another one rotates the key in the same entry.
                let keyless = new_user_encryption_public_key.is_empty();
                let new_key = if by_root {
                    if !keyless {
                        return Err(ChainError::InvalidTransition {
                            seq,
                            reason: "the root may not choose a user key",
                        });
                    }
                    None
                } else if target == author {
                    if !keyless {
                        return Err(ChainError::InvalidTransition {
                            seq,
                            reason: "a revoked device may not choose a user key",
                        });
                    }
                    None
                } else {
                    Some(self.check_new_key(new_user_encryption_public_key, seq)?)
                };
                if let Some(d) = self.devices.get_mut(&target) {
                    d.revoked_at = Some(seq);
                }
                match new_key {
                    Some(k) => self.rotate(k),
                    None => self.rotation_pending = true,
                }
            }
            Some(Body::KeyRotation(KeyRotation {
                new_user_encryption_public_key,
            })) => {
                if !author_is_device {
                    return Err(ChainError::UnauthorizedAuthor { seq });
                }
                check_signature(entry, &author, seq)?;
                let new_key = self.check_new_key(new_user_encryption_public_key, seq)?;
                self.rotate(new_key);
            }
            None => return Err(ChainError::Malformed("statement without body")),
        }
        self.len += 1;
        self.head = entry_hash(entry);
        self.last_timestamp = st.timestamp;
        Ok(())
    }

    /// A new device's keys must not be in use: not the root, not the
    /// invite's delegation key, not any device of this user, past or present.
    fn check_key_unused(
        &self,
        root: &SigningPublicKey,
        signing: &SigningPublicKey,
        encryption: &EncryptionPublicKey,
        seq: u64,
    ) -> Result<(), ChainError> {
        let reason = if signing == root {
            KEY_IS_ROOT
        } else if *signing == self.invite.delegation_key {
            KEY_IS_DELEGATION
        } else if self.devices.contains_key(signing) {
            "device already in the log"
        } else if self
            .devices
            .values()
            .any(|d| d.encryption_key == *encryption)
        {
            "device encryption key already in the log"
        } else {
            return Ok(());
        };
        Err(ChainError::KeyInUse { seq, reason })
    }

    fn check_new_key(&self, bytes: &[u8], seq: u64) -> Result<EncryptionPublicKey, ChainError> {
        let new_key = user_key(bytes)?;
        if new_key == self.encryption_key || self.past_encryption_keys.contains(&new_key) {
            return Err(ChainError::InvalidTransition {
                seq,
                reason: "user key not rotated",
            });
        }
        Ok(new_key)
    }

    fn rotate(&mut self, new_key: EncryptionPublicKey) {
        let old = core::mem::replace(&mut self.encryption_key, new_key);
        self.past_encryption_keys.push(old);
        self.rotation_pending = false;
    }

    /// Verifies a log served anew against this verified state: it must be at
    /// least as long ([`ChainError::Rollback`]) and contain the known log as
    /// its prefix ([`ChainError::Fork`]); new entries are verified and applied.
    pub fn update(
        &self,
        root: &SigningPublicKey,
        entries: &[SignedStatement],
    ) -> Result<Self, ChainError> {
        if entries.len() > MAX_LOG_ENTRIES {
            return Err(ChainError::Malformed("log too long"));
        }
        let served = entries.len() as u64;
        if served < self.len {
            return Err(ChainError::Rollback {
                known: self.len,
                served,
            });
        }
        // The served entry at the known head must hash to the known head, and
        // each served entry before it must be the one its successor's
        // prev_hash names: then the served prefix is the known log, statement
        // for statement. (Comparing the head alone let a served log carry
        // arbitrary entries before it.)
        let known_last = (self.len - 1) as usize;
        let linked = |pair: &[SignedStatement]| {
            decode_bounded::<Statement>(&pair[1].statement, MAX_STATEMENT_BYTES)
                .is_ok_and(|st| st.prev_hash == entry_hash(&pair[0]))
        };
        if entries.get(known_last).map(entry_hash) != Some(self.head)
            || !entries[..=known_last].windows(2).all(linked)
        {
            return Err(ChainError::Fork { seq: self.len - 1 });
        }
        self.apply_suffix(root, &entries[self.len as usize..])
    }

    /// [`Self::update`], also returning the verified new entries (the served
    /// log past the known length). A caller that keeps the entries it
    /// verified appends these to its own and keeps its own prefix: it never
    /// stores served bytes it did not verify (SECURITY.md §4.7).
    pub fn update_suffix<'a>(
        &self,
        root: &SigningPublicKey,
        entries: &'a [SignedStatement],
    ) -> Result<(Self, &'a [SignedStatement]), ChainError> {
        let next = self.update(root, entries)?;
        Ok((next, &entries[self.len as usize..]))
    }

    /// Verifies `suffix`, the entries that follow this verified state, and
    /// returns the state after them (U4 of SECURITY.md §4.7 alone). For a
    /// holder of its own verified log (a server): it appends exactly these
    /// entries to what it holds. A log of more than [`MAX_LOG_ENTRIES`] in
    /// all is refused; on error nothing changes.
    pub fn apply_suffix(
        &self,
        root: &SigningPublicKey,
        suffix: &[SignedStatement],
    ) -> Result<Self, ChainError> {
        if self.len as usize + suffix.len() > MAX_LOG_ENTRIES {
            return Err(ChainError::Malformed("log too long"));
        }
        let mut next = self.clone();
        for entry in suffix {
            next.apply(root, entry)?;
        }
        Ok(next)
    }

    /// Makes the next entry: `author` (an active device of this user) adds
    /// `device`, whose key is at hand (tests, one process holding both):
    /// the proof of possession is made here.
    pub fn add_device(
        &self,
        author: &DeviceSigningKey,
        device: &DeviceSigningKey,
        encryption: &EncryptionPublicKey,
        timestamp: u64,
    ) -> SignedStatement {
        let proof = possession_proof(&self.root, self.user_id(), device, encryption);
        self.add_device_with_proof(author, &device.public_key(), encryption, &proof, timestamp)
    }

    /// Makes the next entry: `author` (an active device of this user) adds
    /// the device whose public keys and [`possession_proof`] it received
    /// from the new device.
    pub fn add_device_with_proof(
        &self,
        author: &DeviceSigningKey,
        signing: &SigningPublicKey,
        encryption: &EncryptionPublicKey,
        proof: &[u8],
        timestamp: u64,
    ) -> SignedStatement {
        let body = Body::DeviceAddition(DeviceAddition {
            device: Some(DeviceKeys {
                signing_public_key: signing.as_bytes().to_vec(),
                encryption_public_key: encryption.as_bytes().to_vec(),
            }),
            device_signature: proof.to_vec(),
        });
        let st = self.next_statement(author.public_key(), timestamp, body);
        sign_statement(&st, |m| author.sign(m))
    }

    /// Makes the next entry: `author`, an active device, revokes itself
    /// (a retired device). Keyless, like the root's: a device being revoked
    /// never chooses the next user key, so the user is rotation pending
    /// until a remaining device rotates it.
    pub fn revoke_self(&self, author: &DeviceSigningKey, timestamp: u64) -> SignedStatement {
        let body = Body::DeviceRevocation(DeviceRevocation {
            device_id: author.public_key().as_bytes().to_vec(),
            new_user_encryption_public_key: Vec::new(),
        });
        let st = self.next_statement(author.public_key(), timestamp, body);
        sign_statement(&st, |m| author.sign(m))
    }

    /// Makes the next entry: `author`, an active device, revokes another
    /// `device` and rotates the user key to `new_user_key` (for itself,
    /// use [`Self::revoke_self`]).
    pub fn revoke_device(
        &self,
        author: &DeviceSigningKey,
        device: &SigningPublicKey,
        new_user_key: &EncryptionPublicKey,
        timestamp: u64,
    ) -> SignedStatement {
        let body = Body::DeviceRevocation(DeviceRevocation {
            device_id: device.as_bytes().to_vec(),
            new_user_encryption_public_key: new_user_key.as_bytes().to_vec(),
        });
        let st = self.next_statement(author.public_key(), timestamp, body);
        sign_statement(&st, |m| author.sign(m))
    }

    /// Makes the next entry: the organisation root revokes `device` (a lost
    /// phone). It carries no new user key: one of the user's remaining
    /// devices must follow with [`Self::rotate_user_key`]
    /// ([`Self::rotation_pending`] says so until then).
    pub fn revoke_device_as_root(
        &self,
        root: &OrgRootKey,
        device: &SigningPublicKey,
        timestamp: u64,
    ) -> SignedStatement {
        let body = Body::DeviceRevocation(DeviceRevocation {
            device_id: device.as_bytes().to_vec(),
            new_user_encryption_public_key: Vec::new(),
        });
        let st = self.next_statement(root.public_key(), timestamp, body);
        sign_statement(&st, |m| root.sign(m))
    }

    /// Makes the next entry: `author`, an active device, rotates the user key.
    pub fn rotate_user_key(
        &self,
        author: &DeviceSigningKey,
        new_user_key: &EncryptionPublicKey,
        timestamp: u64,
    ) -> SignedStatement {
        let body = Body::KeyRotation(KeyRotation {
            new_user_encryption_public_key: new_user_key.as_bytes().to_vec(),
        });
        let st = self.next_statement(author.public_key(), timestamp, body);
        sign_statement(&st, |m| author.sign(m))
    }

    /// True after a root-signed revocation or a self-revocation until a
    /// device rotates the user key: the revoked device may still hold the
    /// current user key, so a client should warn before sending to this user.
    pub fn rotation_pending(&self) -> bool {
        self.rotation_pending
    }

    fn next_statement(&self, author: SigningPublicKey, timestamp: u64, body: Body) -> Statement {
        Statement {
            version: PROTOCOL_VERSION,
            user_id: self.user_id().to_owned(),
            seq: self.len,
            prev_hash: self.head.to_vec(),
            timestamp: timestamp.max(self.last_timestamp),
            author: author.as_bytes().to_vec(),
            body: Some(body),
        }
    }

    /// The organisation root this log was verified from.
    pub fn org_root(&self) -> &SigningPublicKey {
        &self.root
    }

    /// The user id.
    pub fn user_id(&self) -> &str {
        &self.invite.details.user_id
    }

    /// The verified invite the user enrolled with (name, profession, registry number).
    pub fn invite(&self) -> &VerifiedInvite {
        &self.invite
    }

    /// The user's current encryption key: wrap resource keys to this one only.
    pub fn encryption_key(&self) -> &EncryptionPublicKey {
        &self.encryption_key
    }

    /// Keys the user had before revocations rotated them, oldest first.
    pub fn past_encryption_keys(&self) -> &[EncryptionPublicKey] {
        &self.past_encryption_keys
    }

    /// Every device ever added, revoked ones included.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceRecord> {
        self.devices.values().map(|d| &**d)
    }

    /// One device by id.
    pub fn device(&self, id: &SigningPublicKey) -> Option<&DeviceRecord> {
        self.devices.get(id).map(|d| &**d)
    }

    /// Number of entries verified.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: a verified log has at least its creation entry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Hash of the last entry.
    pub fn head(&self) -> &[u8; 32] {
        &self.head
    }

    /// The timestamp of the last entry (the next may not be earlier).
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }
}

/// Verifies a whole log for `user_id` from the pinned organisation root.
pub fn verify_log(
    root: &SigningPublicKey,
    user_id: &str,
    entries: &[SignedStatement],
) -> Result<VerifiedUser, ChainError> {
    if entries.len() > MAX_LOG_ENTRIES {
        return Err(ChainError::Malformed("log too long"));
    }
    let (first, rest) = entries.split_first().ok_or(ChainError::EmptyLog)?;
    let mut user = VerifiedUser::from_creation(root, user_id, first)?;
    for entry in rest {
        user.apply(root, entry)?;
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invite::{InviteDetails, create_invite};
    use crate::keys::{DeviceEncryptionKey, UserEncryptionKey};
    use crate::testkit::{KIT_TIME, Org};

    /// An enrolled user whose delegation key is kept, for crafting entry 0.
    struct Enrolled {
        invite: SignedInvite,
        delegation: DelegationKey,
        user_key: UserEncryptionKey,
        device: DeviceSigningKey,
        log: Vec<SignedStatement>,
        state: VerifiedUser,
    }

    fn details(user_id: &str) -> InviteDetails {
        InviteDetails {
            user_id: user_id.into(),
            display_name: "Dr Test".into(),
            profession: "physician".into(),
            registry_number: "10001234567".into(),
            expires_at: KIT_TIME + 86_400,
        }
    }

    fn enroll(org: &Org, user_id: &str) -> Enrolled {
        let mut rng = rand::rng();
        let (invite, delegation) = create_invite(&mut rng, &org.root, &details(user_id)).unwrap();
        let user_key = UserEncryptionKey::generate(&mut rng);
        let device = DeviceSigningKey::generate(&mut rng);
        let device_key = DeviceEncryptionKey::generate(&mut rng);
        let entry = create_user(
            &org.root_public(),
            &invite,
            &delegation,
            &user_key.public_key(),
            &device.public_key(),
            &device_key.public_key(),
            KIT_TIME,
        )
        .unwrap();
        let log = vec![entry];
        let state = verify_log(&org.root_public(), user_id, &log).unwrap();
        Enrolled {
            invite,
            delegation,
            user_key,
            device,
            log,
            state,
        }
    }

    fn new_device() -> (DeviceSigningKey, EncryptionPublicKey) {
        let mut rng = rand::rng();
        (
            DeviceSigningKey::generate(&mut rng),
            DeviceEncryptionKey::generate(&mut rng).public_key(),
        )
    }

    fn new_user_key() -> EncryptionPublicKey {
        UserEncryptionKey::generate(&mut rand::rng()).public_key()
    }

    fn decode(entry: &SignedStatement) -> Statement {
        Statement::decode(entry.statement.as_slice()).unwrap()
    }

    /// Applies `entry` to a copy of `state`, returning the new state.
    fn applied(
        state: &VerifiedUser,
        root: &SigningPublicKey,
        entry: &SignedStatement,
    ) -> Result<VerifiedUser, ChainError> {
        let mut next = state.clone();
        next.apply(root, entry).map(|()| next)
    }

    /// Adds a fresh device, authored by `author`; returns the entry and state.
    fn add(
        state: &VerifiedUser,
        root: &SigningPublicKey,
        author: &DeviceSigningKey,
        timestamp: u64,
    ) -> (DeviceSigningKey, SignedStatement, VerifiedUser) {
        let (dev, enc) = new_device();
        let entry = state.add_device(author, &dev, &enc, timestamp);
        let next = applied(state, root, &entry).unwrap();
        (dev, entry, next)
    }

    #[test]
    fn verify_log_applies_additions_and_revocations_by_device_and_by_root() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let k1 = a.user_key.public_key();
        let (dev2, e1, s1) = add(&a.state, &root, &a.device, KIT_TIME + 10);
        // Device 2 revokes device 1 (a device revocation) ...
        let k2 = new_user_key();
        let e2 = s1.revoke_device(&dev2, &a.device.public_key(), &k2, KIT_TIME + 20);
        let s2 = applied(&s1, &root, &e2).unwrap();
        let (dev3, e3, s3) = add(&s2, &root, &dev2, KIT_TIME + 30);
        // ... and the root revokes device 2 (a lost phone), without choosing a key ...
        let e4 = s3.revoke_device_as_root(&org.root, &dev2.public_key(), KIT_TIME + 40);
        let s4 = applied(&s3, &root, &e4).unwrap();
        assert!(s4.rotation_pending());
        assert_eq!(s4.encryption_key(), &k2);
        // ... so device 3 rotates the user key.
        let k3 = new_user_key();
        let e5 = s4.rotate_user_key(&dev3, &k3, KIT_TIME + 50);
        let s5 = applied(&s4, &root, &e5).unwrap();
        assert!(!s5.rotation_pending());

        let log = [a.log[0].clone(), e1, e2, e3, e4, e5.clone()];
        let user = verify_log(&root, "alice", &log).unwrap();
        assert_eq!(user, s5);
        assert_eq!(user.len(), 6);
        assert_eq!(user.head(), &entry_hash(&e5));
        assert_eq!(user.encryption_key(), &k3);
        assert_eq!(user.past_encryption_keys(), &[k1, k2]);
        let d1 = user.device(&a.device.public_key()).unwrap();
        assert_eq!((d1.added_at, d1.revoked_at), (0, Some(2)));
        let d2 = user.device(&dev2.public_key()).unwrap();
        assert_eq!((d2.added_at, d2.revoked_at), (1, Some(4)));
        let d3 = user.device(&dev3.public_key()).unwrap();
        assert_eq!((d3.added_at, d3.revoked_at), (3, None));
        assert!(d3.is_active() && !d1.is_active() && !d2.is_active());
        assert_eq!(user.devices().count(), 3);
        assert_eq!(user.user_id(), "alice");
        assert_eq!(user.invite().details, details("alice"));
    }

    #[test]
    fn additions_by_anyone_but_an_active_device_are_unauthorized() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (dev2, _, s1) = add(&a.state, &root, &a.device, KIT_TIME);
        let e2 = s1.revoke_device(&dev2, &a.device.public_key(), &new_user_key(), KIT_TIME);
        let s2 = applied(&s1, &root, &e2).unwrap();

        // The revoked device 1 adds a device.
        let (dev, enc) = new_device();
        let by_revoked = s2.add_device(&a.device, &dev, &enc, KIT_TIME);
        let mut after = s2.clone();
        assert_eq!(
            after.apply(&root, &by_revoked),
            Err(ChainError::UnauthorizedAuthor { seq: 3 })
        );
        assert_eq!(after, s2, "a refused entry leaves the state unchanged");

        // A key that never was a device of alice.
        let stranger = DeviceSigningKey::generate(&mut rand::rng());
        let by_stranger = s2.add_device(&stranger, &dev, &enc, KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &by_stranger),
            Err(ChainError::UnauthorizedAuthor { seq: 3 })
        );
        // Another user's active device.
        let b = enroll(&org, "bob");
        let by_bob = s2.add_device(&b.device, &dev, &enc, KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &by_bob),
            Err(ChainError::UnauthorizedAuthor { seq: 3 })
        );
        // The root may revoke but not add.
        let mut st = decode(&by_stranger);
        st.author = root.as_bytes().to_vec();
        let by_root = sign_statement(&st, |m| org.root.sign(m));
        assert_eq!(
            applied(&s2, &root, &by_root),
            Err(ChainError::UnauthorizedAuthor { seq: 3 })
        );
        // A stranger may not revoke either.
        let revoke = s2.revoke_device(&stranger, &dev2.public_key(), &new_user_key(), KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &revoke),
            Err(ChainError::UnauthorizedAuthor { seq: 3 })
        );
        // The author field names an active device, but another key signed.
        let mut st = decode(&by_stranger);
        st.author = dev2.public_key().as_bytes().to_vec();
        let forged = sign_statement(&st, |m| stranger.sign(m));
        assert_eq!(
            applied(&s2, &root, &forged),
            Err(ChainError::BadSignature { seq: 3 })
        );
    }

    #[test]
    fn entry_zero_must_be_signed_by_the_invite_delegation_key() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let other = DelegationKey::generate(&mut rand::rng());
        let (dev, enc) = new_device();
        assert_eq!(
            create_user(
                &root,
                &a.invite,
                &other,
                &new_user_key(),
                &dev.public_key(),
                &enc,
                KIT_TIME
            ),
            Err(ChainError::UnauthorizedAuthor { seq: 0 })
        );
        let mut st = decode(&a.log[0]);
        st.author = other.public_key().as_bytes().to_vec();
        let e0 = sign_statement(&st, |m| other.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[e0]),
            Err(ChainError::UnauthorizedAuthor { seq: 0 })
        );
        assert_eq!(verify_log(&root, "alice", &[]), Err(ChainError::EmptyLog));
        // Entry 0 that is not a creation.
        let (_, e1, _) = add(&a.state, &root, &a.device, KIT_TIME);
        let mut st = decode(&e1);
        st.seq = 0;
        let not_creation = sign_statement(&st, |m| a.device.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[not_creation]),
            Err(ChainError::Malformed("entry 0 must be a user creation"))
        );
    }

    #[test]
    fn a_second_user_creation_is_a_reused_invite() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let mut st = decode(&a.log[0]);
        st.seq = 1;
        st.prev_hash = a.state.head().to_vec();
        let again = sign_statement(&st, |m| a.delegation.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[a.log[0].clone(), again]),
            Err(ChainError::InviteReused)
        );
    }

    #[test]
    fn bad_sequence_numbers_are_refused() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (_, e1, _) = add(&a.state, &root, &a.device, KIT_TIME);
        for seq in [0, 2, u64::MAX] {
            let mut st = decode(&e1);
            st.seq = seq;
            let e = sign_statement(&st, |m| a.device.sign(m));
            assert_eq!(
                verify_log(&root, "alice", &[a.log[0].clone(), e]),
                Err(ChainError::BadSequence {
                    expected: 1,
                    found: seq
                })
            );
        }
        // Entry 0 carrying seq 1.
        let mut st = decode(&a.log[0]);
        st.seq = 1;
        let e0 = sign_statement(&st, |m| a.delegation.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[e0]),
            Err(ChainError::BadSequence {
                expected: 0,
                found: 1
            })
        );
        // The same valid entry twice.
        assert_eq!(
            verify_log(&root, "alice", &[a.log[0].clone(), e1.clone(), e1]),
            Err(ChainError::BadSequence {
                expected: 2,
                found: 1
            })
        );
    }

    #[test]
    fn a_broken_prev_hash_is_refused() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (_, e1, _) = add(&a.state, &root, &a.device, KIT_TIME);
        let mut st = decode(&e1);
        st.prev_hash = vec![0; 32];
        let e = sign_statement(&st, |m| a.device.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[a.log[0].clone(), e]),
            Err(ChainError::BrokenChain { seq: 1 })
        );
        // Entry 0 must chain to the invite.
        let mut st = decode(&a.log[0]);
        st.prev_hash = vec![0; 32];
        let e0 = sign_statement(&st, |m| a.delegation.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[e0]),
            Err(ChainError::BrokenChain { seq: 0 })
        );
    }

    #[test]
    fn entries_for_another_user_are_refused() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        // The log served for "bob" is alice's.
        assert_eq!(
            verify_log(&root, "bob", &a.log),
            Err(ChainError::WrongUser { seq: 0 })
        );
        let (_, e1, _) = add(&a.state, &root, &a.device, KIT_TIME);
        let mut st = decode(&e1);
        st.user_id = "bob".into();
        let e = sign_statement(&st, |m| a.device.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[a.log[0].clone(), e]),
            Err(ChainError::WrongUser { seq: 1 })
        );
        // Entry 0 naming another user than its invite.
        let mut st = decode(&a.log[0]);
        st.user_id = "bob".into();
        let e0 = sign_statement(&st, |m| a.delegation.sign(m));
        assert_eq!(
            verify_log(&root, "bob", &[e0]),
            Err(ChainError::WrongUser { seq: 0 })
        );
    }

    #[test]
    fn time_may_not_go_backwards() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (_, e1, s1) = add(&a.state, &root, &a.device, KIT_TIME + 100);
        let mut st = decode(&e1);
        st.timestamp = KIT_TIME - 1;
        let e = sign_statement(&st, |m| a.device.sign(m));
        assert_eq!(
            verify_log(&root, "alice", &[a.log[0].clone(), e]),
            Err(ChainError::TimeWentBackwards { seq: 1 })
        );
        // Equal timestamps are fine; the builders never date an entry earlier.
        let (_, e2, _) = add(&s1, &root, &a.device, KIT_TIME + 100);
        assert!(verify_log(&root, "alice", &[a.log[0].clone(), e1.clone(), e2]).is_ok());
        let (_, e2, _) = add(&s1, &root, &a.device, KIT_TIME);
        assert_eq!(decode(&e2).timestamp, KIT_TIME + 100);
    }

    #[test]
    fn revoking_an_unknown_or_revoked_device_is_refused() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (dev2, _, s1) = add(&a.state, &root, &a.device, KIT_TIME);
        let (stranger, _) = new_device();
        let e = s1.revoke_device(&dev2, &stranger.public_key(), &new_user_key(), KIT_TIME);
        assert_eq!(
            applied(&s1, &root, &e),
            Err(ChainError::InvalidTransition {
                seq: 2,
                reason: "unknown device"
            })
        );
        let e2 = s1.revoke_device_as_root(&org.root, &a.device.public_key(), KIT_TIME);
        let s2 = applied(&s1, &root, &e2).unwrap();
        let again = s2.revoke_device_as_root(&org.root, &a.device.public_key(), KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &again),
            Err(ChainError::InvalidTransition {
                seq: 3,
                reason: "device already revoked"
            })
        );
        // A device added twice.
        let d = s2.device(&dev2.public_key()).unwrap();
        let twice = s2.add_device(&dev2, &dev2, &d.encryption_key, KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &twice),
            Err(ChainError::KeyInUse {
                seq: 3,
                reason: "device already in the log"
            })
        );
        // Nor can a revoked device come back.
        let back = s2.add_device(&dev2, &a.device, &new_user_key(), KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &back),
            Err(ChainError::KeyInUse {
                seq: 3,
                reason: "device already in the log"
            })
        );
    }

    #[test]
    fn the_root_revokes_but_never_chooses_a_user_key() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (dev2, _, s1) = add(&a.state, &root, &a.device, KIT_TIME);
        // A root-signed revocation that carries a key of the root's choosing.
        let st = Statement {
            version: PROTOCOL_VERSION,
            user_id: "alice".into(),
            seq: 2,
            prev_hash: s1.head().to_vec(),
            timestamp: KIT_TIME,
            author: org.root.public_key().as_bytes().to_vec(),
            body: Some(Body::DeviceRevocation(DeviceRevocation {
                device_id: a.device.public_key().as_bytes().to_vec(),
                new_user_encryption_public_key: new_user_key().as_bytes().to_vec(),
            })),
        };
        let chosen = sign_statement(&st, |m| org.root.sign(m));
        assert_eq!(
            applied(&s1, &root, &chosen),
            Err(ChainError::InvalidTransition {
                seq: 2,
                reason: "the root may not choose a user key"
            })
        );
        // Only an active device may rotate.
        let e2 = s1.revoke_device_as_root(&org.root, &a.device.public_key(), KIT_TIME);
        let s2 = applied(&s1, &root, &e2).unwrap();
        let by_revoked = s2.rotate_user_key(&a.device, &new_user_key(), KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &by_revoked),
            Err(ChainError::UnauthorizedAuthor { seq: 3 })
        );
        // A low-order key is refused: nothing could be wrapped to it.
        let mut low = *new_user_key().as_bytes();
        low[1184..].fill(0); // the X25519 part: u = 0
        let low = EncryptionPublicKey::from_bytes_unchecked(low);
        let bad = s2.rotate_user_key(&dev2, &low, KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &bad),
            Err(ChainError::Malformed("user encryption key"))
        );
        let good = s2.rotate_user_key(&dev2, &new_user_key(), KIT_TIME);
        assert!(!applied(&s2, &root, &good).unwrap().rotation_pending());
    }

    #[test]
    fn a_revocation_must_rotate_to_a_new_user_key() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (dev2, _, s1) = add(&a.state, &root, &a.device, KIT_TIME);
        let (dev3, _, s2) = add(&s1, &root, &dev2, KIT_TIME);
        let same = s2.revoke_device(&dev2, &a.device.public_key(), s2.encryption_key(), KIT_TIME);
        let mut after = s2.clone();
        assert_eq!(
            after.apply(&root, &same),
            Err(ChainError::InvalidTransition {
                seq: 3,
                reason: "user key not rotated"
            })
        );
        assert_eq!(after, s2, "the device is not revoked by a refused entry");
        // Rotating back to a key used before is refused too.
        let e3 = s2.revoke_device(&dev3, &a.device.public_key(), &new_user_key(), KIT_TIME);
        let s3 = applied(&s2, &root, &e3).unwrap();
        let back = s3.revoke_device(
            &dev3,
            &dev2.public_key(),
            &a.user_key.public_key(),
            KIT_TIME,
        );
        assert_eq!(
            applied(&s3, &root, &back),
            Err(ChainError::InvalidTransition {
                seq: 4,
                reason: "user key not rotated"
            })
        );
    }

    #[test]
    fn update_refuses_rollback_and_fork_and_accepts_an_extension() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (_, e1, s1) = add(&a.state, &root, &a.device, KIT_TIME);
        let (_, e2, s2) = add(&s1, &root, &a.device, KIT_TIME + 1);
        let known = verify_log(&root, "alice", &[a.log[0].clone(), e1.clone()]).unwrap();
        assert_eq!(known, s1);

        // Rolled back.
        assert_eq!(
            known.update(&root, &a.log),
            Err(ChainError::Rollback {
                known: 2,
                served: 1
            })
        );
        assert_eq!(
            known.update(&root, &[]),
            Err(ChainError::Rollback {
                known: 2,
                served: 0
            })
        );
        // Forked: another, validly signed entry 1, alone or extended.
        let (_, fork1, fork_state) = add(&a.state, &root, &a.device, KIT_TIME);
        let (_, fork2, _) = add(&fork_state, &root, &a.device, KIT_TIME);
        assert_eq!(
            known.update(&root, &[a.log[0].clone(), fork1.clone()]),
            Err(ChainError::Fork { seq: 1 })
        );
        assert_eq!(
            known.update(&root, &[a.log[0].clone(), fork1, fork2]),
            Err(ChainError::Fork { seq: 1 })
        );
        // The same log again, and a valid extension.
        assert_eq!(
            known.update(&root, &[a.log[0].clone(), e1.clone()]),
            Ok(s1.clone())
        );
        let full = [a.log[0].clone(), e1.clone(), e2.clone()];
        assert_eq!(known.update(&root, &full), Ok(s2.clone()));
        assert_eq!(
            known.update(&root, &full).unwrap(),
            verify_log(&root, "alice", &full).unwrap()
        );
        // An extension whose new entry is bad: refused, whatever precedes it.
        let mut bad = e2.clone();
        bad.signature[0] ^= 1;
        assert_eq!(
            known.update(&root, &[a.log[0].clone(), e1.clone(), bad]),
            Err(ChainError::BadSignature { seq: 2 })
        );
        // A served log whose known head is right but whose earlier entries are
        // not the known ones: the served log does not contain the known log as
        // its prefix.
        let mut other0 = a.log[0].clone();
        other0.statement.push(0);
        assert_eq!(
            known.update(&root, &[other0, e1.clone(), e2.clone()]),
            Err(ChainError::Fork { seq: 1 })
        );
        let garbage = SignedStatement {
            statement: vec![1, 2, 3],
            signature: vec![],
        };
        assert_eq!(
            s2.update(&root, &[a.log[0].clone(), garbage, e2]),
            Err(ChainError::Fork { seq: 2 })
        );
    }
    #[test]
    fn a_self_revocation_is_keyless_and_leaves_rotation_pending() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (dev2, _, s1) = add(&a.state, &root, &a.device, KIT_TIME);
        // Device 2 (a thief, say) revokes itself and picks the next user key.
        let carrying = s1.revoke_device(&dev2, &dev2.public_key(), &new_user_key(), KIT_TIME);
        assert_eq!(
            applied(&s1, &root, &carrying),
            Err(ChainError::InvalidTransition {
                seq: 2,
                reason: "a revoked device may not choose a user key"
            })
        );
        let keyless = s1.revoke_self(&dev2, KIT_TIME);
        let s2 = applied(&s1, &root, &keyless).unwrap();
        assert!(s2.rotation_pending());
        assert_eq!(s2.encryption_key(), s1.encryption_key());
        assert!(!s2.device(&dev2.public_key()).unwrap().is_active());
        // The revoked device cannot rotate; a remaining one can.
        let by_revoked = s2.rotate_user_key(&dev2, &new_user_key(), KIT_TIME);
        assert_eq!(
            applied(&s2, &root, &by_revoked),
            Err(ChainError::UnauthorizedAuthor { seq: 3 })
        );
        let rotated = s2.rotate_user_key(&a.device, &new_user_key(), KIT_TIME);
        assert!(!applied(&s2, &root, &rotated).unwrap().rotation_pending());
        // Revoking an unknown device reports the target before the key.
        let (stranger, _) = new_device();
        let mut low = *new_user_key().as_bytes();
        low[1184..].fill(0); // the X25519 part: u = 0
        let low = EncryptionPublicKey::from_bytes_unchecked(low);
        let e = s1.revoke_device(&dev2, &stranger.public_key(), &low, KIT_TIME);
        assert_eq!(
            applied(&s1, &root, &e),
            Err(ChainError::InvalidTransition {
                seq: 2,
                reason: "unknown device"
            })
        );
    }

    #[test]
    fn an_addition_needs_the_new_devices_signature_and_an_unused_key() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (dev, enc) = new_device();
        // No proof, a proof by another key, a proof for another user.
        let none = a
            .state
            .add_device_with_proof(&a.device, &dev.public_key(), &enc, &[], KIT_TIME);
        let wrong_key = possession_proof(&root, "alice", &a.device, &enc);
        let by_other =
            a.state
                .add_device_with_proof(&a.device, &dev.public_key(), &enc, &wrong_key, KIT_TIME);
        let for_bob = possession_proof(&root, "bob", &dev, &enc);
        let other_user =
            a.state
                .add_device_with_proof(&a.device, &dev.public_key(), &enc, &for_bob, KIT_TIME);
        for e in [none, by_other, other_user] {
            assert_eq!(
                applied(&a.state, &root, &e),
                Err(ChainError::MissingPossessionProof { seq: 1 })
            );
        }
        // The root's key, the delegation key, a device's key again (even
        // with the proper proof, where its holder signs it).
        let (_, enc2) = new_device();
        let root_proof = org.root.sign(&possession_message(
            &root,
            "alice",
            root.as_bytes(),
            enc2.as_bytes(),
        ));
        let as_root = a
            .state
            .add_device_with_proof(&a.device, &root, &enc2, &root_proof, KIT_TIME);
        assert_eq!(
            applied(&a.state, &root, &as_root),
            Err(ChainError::KeyInUse {
                seq: 1,
                reason: KEY_IS_ROOT
            })
        );
        let as_delegation = a.state.add_device_with_proof(
            &a.device,
            &a.delegation.public_key(),
            &enc2,
            &[],
            KIT_TIME,
        );
        assert_eq!(
            applied(&a.state, &root, &as_delegation),
            Err(ChainError::KeyInUse {
                seq: 1,
                reason: KEY_IS_DELEGATION
            })
        );
        let first_enc = a
            .state
            .device(&a.device.public_key())
            .unwrap()
            .encryption_key;
        let same_enc = a.state.add_device(&a.device, &dev, &first_enc, KIT_TIME);
        assert_eq!(
            applied(&a.state, &root, &same_enc),
            Err(ChainError::KeyInUse {
                seq: 1,
                reason: "device encryption key already in the log"
            })
        );
        // With its own proof, the device is added.
        let good = a.state.add_device(&a.device, &dev, &enc, KIT_TIME);
        assert!(applied(&a.state, &root, &good).is_ok());
    }

    #[test]
    fn a_served_prefix_with_other_signature_bytes_is_a_fork() {
        let org = Org::new(&mut rand::rng());
        let root = org.root_public();
        let a = enroll(&org, "alice");
        let (_, e1, s1) = add(&a.state, &root, &a.device, KIT_TIME);
        let (_, e2, s2) = add(&s1, &root, &a.device, KIT_TIME);
        let known = [a.log[0].clone(), e1.clone()];
        let mut zeroed = vec![a.log[0].clone(), e1.clone(), e2.clone()];
        for e in &mut zeroed[..2] {
            e.signature = vec![0; 64];
        }
        assert_eq!(s1.update(&root, &zeroed), Err(ChainError::Fork { seq: 1 }));
        // Only entry 0's signature zeroed: caught through entry 1's link.
        let mut first = vec![a.log[0].clone(), e1.clone()];
        first[0].signature = vec![0; 64];
        assert_eq!(s1.update(&root, &first), Err(ChainError::Fork { seq: 1 }));
        // The verified suffix comes back, to append to the caller's own entries.
        let full = [known[0].clone(), known[1].clone(), e2.clone()];
        let (next, suffix) = s1.update_suffix(&root, &full).unwrap();
        assert_eq!((next, suffix), (s2.clone(), &full[2..]));
        // A server that keeps its own log verifies the suffix alone.
        assert_eq!(
            s1.apply_suffix(&root, std::slice::from_ref(&e2)),
            Ok(s2.clone())
        );
        assert_eq!(
            s1.apply_suffix(&root, &[e1]),
            Err(ChainError::BadSequence {
                expected: 2,
                found: 1
            })
        );
        let many = vec![e2; MAX_LOG_ENTRIES];
        assert_eq!(
            s1.apply_suffix(&root, &many),
            Err(ChainError::Malformed("log too long"))
        );
    }
}
