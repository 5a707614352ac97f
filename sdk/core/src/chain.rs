//! Each user's hash-chained log of signed statements, and its verifier
//! (SECURITY.md §4).
//!
//! ```text
//! entry 0: UserCreation    signed by the invite's delegation key, prev = H(invite)
//! entry n: DeviceAddition  signed by an active device,             prev = H(entry n-1)
//!          DeviceRevocation signed by an active device or the root, prev = H(entry n-1)
//! ```
//!
//! [`verify_log`] checks a whole log from the pinned organisation root;
//! [`VerifiedUser::update`] checks that a newly served log extends the one
//! already verified, refusing rollbacks and forks.

use std::collections::BTreeMap;

use ward_proto::v1::{
    DeviceAddition, DeviceKeys, DeviceRevocation, SignedInvite, SignedStatement, Statement,
    UserCreation, statement::Body,
};
use ward_proto::{Message, PROTOCOL_VERSION, decode_bounded};

use crate::error::ChainError;
use crate::invite::{VerifiedInvite, verify_invite};
use crate::keys::{
    DelegationKey, DeviceSigningKey, EncryptionPublicKey, OrgRootKey, SigningPublicKey,
};
use crate::labels::{HASH_ENTRY, SIG_STATEMENT, framed, framed_hash};

/// Largest encoded `Statement`.
pub const MAX_STATEMENT_BYTES: usize = 4096;
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
    invite: VerifiedInvite,
    encryption_key: EncryptionPublicKey,
    past_encryption_keys: Vec<EncryptionPublicKey>,
    devices: BTreeMap<SigningPublicKey, DeviceRecord>,
    len: u64,
    head: [u8; 32],
    last_timestamp: u64,
}

/// Who signs a revocation.
pub enum Revoker<'a> {
    /// An active device of the same user.
    Device(&'a DeviceSigningKey),
    /// The organisation root, for a lost phone.
    Root(&'a OrgRootKey),
}

fn device_keys(
    keys: &Option<DeviceKeys>,
) -> Result<(SigningPublicKey, EncryptionPublicKey), ChainError> {
    let keys = keys
        .as_ref()
        .ok_or(ChainError::Malformed("missing device keys"))?;
    let s = SigningPublicKey::from_bytes(&keys.signing_public_key)
        .map_err(|_| ChainError::Malformed("device signing key"))?;
    let e = EncryptionPublicKey::from_bytes(&keys.encryption_public_key)
        .map_err(|_| ChainError::Malformed("device encryption key"))?;
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

/// `H(HASH_ENTRY, statement bytes)`: the hash the next entry chains to.
pub fn entry_hash(entry: &SignedStatement) -> [u8; 32] {
    framed_hash(HASH_ENTRY, &[&entry.statement])
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
    let st: Statement = decode_bounded(&entry.statement, MAX_STATEMENT_BYTES)?;
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
        let user_key = EncryptionPublicKey::from_bytes(&creation.user_encryption_public_key)
            .map_err(|_| ChainError::Malformed("user encryption key"))?;
        let (signing_key, encryption_key) = device_keys(&creation.device)?;
        let mut devices = BTreeMap::new();
        devices.insert(
            signing_key,
            DeviceRecord {
                signing_key,
                encryption_key,
                added_at: 0,
                revoked_at: None,
            },
        );
        Ok(Self {
            invite,
            encryption_key: user_key,
            past_encryption_keys: Vec::new(),
            devices,
            len: 1,
            head: entry_hash(entry),
            last_timestamp: st.timestamp,
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
        let author_is_device = self
            .devices
            .get(&author)
            .is_some_and(DeviceRecord::is_active);
        match &st.body {
            // A second creation in one log: an invite for this user id used again.
            Some(Body::UserCreation(_)) => return Err(ChainError::InviteReused),
            Some(Body::DeviceAddition(DeviceAddition { device })) => {
                if !author_is_device {
                    return Err(ChainError::UnauthorizedAuthor { seq });
                }
                check_signature(entry, &author, seq)?;
                let (signing_key, encryption_key) = device_keys(device)?;
                if self.devices.contains_key(&signing_key) {
                    return Err(ChainError::InvalidTransition {
                        seq,
                        reason: "device already in the log",
                    });
                }
                self.devices.insert(
                    signing_key,
                    DeviceRecord {
                        signing_key,
                        encryption_key,
                        added_at: seq,
                        revoked_at: None,
                    },
                );
            }
            Some(Body::DeviceRevocation(DeviceRevocation {
                device_id,
                new_user_encryption_public_key,
            })) => {
                if !author_is_device && author != *root {
                    return Err(ChainError::UnauthorizedAuthor { seq });
                }
                check_signature(entry, &author, seq)?;
                let target = SigningPublicKey::from_bytes(device_id)
                    .map_err(|_| ChainError::Malformed("device id"))?;
                let new_key = EncryptionPublicKey::from_bytes(new_user_encryption_public_key)
                    .map_err(|_| ChainError::Malformed("new user key"))?;
                if new_key == self.encryption_key || self.past_encryption_keys.contains(&new_key) {
                    return Err(ChainError::InvalidTransition {
                        seq,
                        reason: "user key not rotated",
                    });
                }
                match self.devices.get_mut(&target) {
                    Some(d) if d.is_active() => d.revoked_at = Some(seq),
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
                let old = core::mem::replace(&mut self.encryption_key, new_key);
                self.past_encryption_keys.push(old);
            }
            None => return Err(ChainError::Malformed("statement without body")),
        }
        self.len += 1;
        self.head = entry_hash(entry);
        self.last_timestamp = st.timestamp;
        Ok(())
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
        // The hash chain makes equal heads mean equal prefixes.
        let known_last = (self.len - 1) as usize;
        if entries.get(known_last).map(entry_hash) != Some(self.head) {
            return Err(ChainError::Fork { seq: self.len - 1 });
        }
        let mut next = self.clone();
        for entry in &entries[self.len as usize..] {
            next.apply(root, entry)?;
        }
        Ok(next)
    }

    /// Makes the next entry: `author` (an active device of this user) adds a device.
    pub fn add_device(
        &self,
        author: &DeviceSigningKey,
        signing: &SigningPublicKey,
        encryption: &EncryptionPublicKey,
        timestamp: u64,
    ) -> SignedStatement {
        let body = Body::DeviceAddition(DeviceAddition {
            device: Some(DeviceKeys {
                signing_public_key: signing.as_bytes().to_vec(),
                encryption_public_key: encryption.as_bytes().to_vec(),
            }),
        });
        let st = self.next_statement(author.public_key(), timestamp, body);
        sign_statement(&st, |m| author.sign(m))
    }

    /// Makes the next entry: revoke `device` and rotate the user key to `new_user_key`.
    pub fn revoke_device(
        &self,
        author: Revoker<'_>,
        device: &SigningPublicKey,
        new_user_key: &EncryptionPublicKey,
        timestamp: u64,
    ) -> SignedStatement {
        let body = Body::DeviceRevocation(DeviceRevocation {
            device_id: device.as_bytes().to_vec(),
            new_user_encryption_public_key: new_user_key.as_bytes().to_vec(),
        });
        match author {
            Revoker::Device(k) => {
                sign_statement(&self.next_statement(k.public_key(), timestamp, body), |m| {
                    k.sign(m)
                })
            }
            Revoker::Root(k) => {
                sign_statement(&self.next_statement(k.public_key(), timestamp, body), |m| {
                    k.sign(m)
                })
            }
        }
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
        self.devices.values()
    }

    /// One device by id.
    pub fn device(&self, id: &SigningPublicKey) -> Option<&DeviceRecord> {
        self.devices.get(id)
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
