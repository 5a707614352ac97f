//! Statement acceptance: whether a signed statement may extend the
//! directory. Pure logic over `ward-core`'s verifiers; storage calls it
//! inside the transaction that then writes the result.
//!
//! The keyserver verifies everything it stores exactly as a client would
//! (`ward_core::chain`), plus the two checks only a server can make: an
//! invite's expiry against the server clock, and an invite's single use
//! (the latter in [`crate::storage`]).
//!
//! [`VerifiedCache`] keeps each user's verified state (length, head, the
//! `VerifiedUser`) so that an append verifies only the new entry: the stored
//! log is verified once per cache miss, not on every append.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use ward_core::ChainError;
use ward_core::chain::{DeviceRecord, MAX_STATEMENT_BYTES, VerifiedUser};
use ward_core::keys::{EncryptionPublicKey, SigningPublicKey};
use ward_proto::decode_bounded;
use ward_proto::v1::{ErrorCode, SignedStatement, Statement, statement::Body};

use crate::error::RequestError;

/// What kind of statement an entry claims to be (before verification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Entry 0.
    UserCreation,
    /// A device added by another device.
    DeviceAddition,
    /// A device revoked, by a device or the root.
    DeviceRevocation,
    /// A new user key, by a device.
    KeyRotation,
}

/// The routing fields of an unverified entry: which user, which position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The user whose log the entry claims to extend.
    pub user_id: String,
    /// The position it claims.
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// For a creation, the first device's signing key as written (unchecked).
    pub created_device: Option<Vec<u8>>,
}

/// Reads the routing fields of an entry. Nothing here is trusted until the
/// entry is verified against the chain.
pub fn route(entry: &SignedStatement) -> Result<Routing, RequestError> {
    let st: Statement = decode_bounded(&entry.statement, MAX_STATEMENT_BYTES)
        .map_err(|e| RequestError::new(ErrorCode::InvalidStatement, e.to_string()))?;
    let (kind, created_device) = match &st.body {
        Some(Body::UserCreation(c)) => (
            Kind::UserCreation,
            Some(
                c.device
                    .as_ref()
                    .map(|d| d.signing_public_key.clone())
                    .unwrap_or_default(),
            ),
        ),
        Some(Body::DeviceAddition(_)) => (Kind::DeviceAddition, None),
        Some(Body::DeviceRevocation(_)) => (Kind::DeviceRevocation, None),
        Some(Body::KeyRotation(_)) => (Kind::KeyRotation, None),
        None => {
            return Err(RequestError::new(
                ErrorCode::InvalidStatement,
                "statement without body",
            ));
        }
    };
    if !ward_core::ids::valid_user_id(&st.user_id) {
        return Err(RequestError::new(ErrorCode::InvalidStatement, "user id"));
    }
    Ok(Routing {
        user_id: st.user_id,
        seq: st.seq,
        kind,
        created_device,
    })
}

/// Maps a chain verification failure to the code a client sees.
pub fn chain_error(e: &ChainError) -> RequestError {
    let code = match e {
        ChainError::InviteExpired => ErrorCode::InviteExpired,
        ChainError::InviteReused => ErrorCode::InviteUsed,
        _ => ErrorCode::InvalidStatement,
    };
    RequestError::new(code, e.to_string())
}

/// Verifies a user creation against the pinned root and the server clock.
/// Single use of the invite is the caller's to enforce, with
/// `user.invite().hash`.
pub fn accept_creation(
    root: &SigningPublicKey,
    now: u64,
    entry: &SignedStatement,
) -> Result<VerifiedUser, RequestError> {
    let routing = route(entry)?;
    let user =
        VerifiedUser::from_creation(root, &routing.user_id, entry).map_err(|e| chain_error(&e))?;
    user.invite()
        .check_not_expired(now)
        .map_err(|e| chain_error(&e))?;
    Ok(user)
}

/// The directory change an accepted entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A device joined the user.
    DeviceAdded(DeviceRecord),
    /// A device was revoked. Signed by a device, it also rotated the user
    /// key; signed by the root, it did not, and the user is rotation
    /// pending until a [`Change::KeyRotated`].
    DeviceRevoked {
        /// The revoked device.
        device: SigningPublicKey,
        /// The user's new encryption key (`None` for a root revocation).
        new_user_key: Option<EncryptionPublicKey>,
    },
    /// A device rotated the user key.
    KeyRotated {
        /// The user's new encryption key.
        new_user_key: EncryptionPublicKey,
    },
}

/// Verifies the next entry of a user's log against its verified state and
/// returns the new state and what changed. `user` is unchanged on error.
pub fn accept_next(
    root: &SigningPublicKey,
    user: &VerifiedUser,
    entry: &SignedStatement,
) -> Result<(VerifiedUser, Change), RequestError> {
    let st: Statement = decode_bounded(&entry.statement, MAX_STATEMENT_BYTES)
        .map_err(|e| RequestError::new(ErrorCode::InvalidStatement, e.to_string()))?;
    let mut next = user.clone();
    next.apply(root, entry).map_err(|e| chain_error(&e))?;
    let change = match &st.body {
        Some(Body::DeviceAddition(a)) => {
            let id = a
                .device
                .as_ref()
                .and_then(|d| SigningPublicKey::from_bytes(&d.signing_public_key).ok())
                .and_then(|k| next.device(&k).cloned())
                .ok_or_else(|| RequestError::new(ErrorCode::Internal, "added device not found"))?;
            Change::DeviceAdded(id)
        }
        Some(Body::DeviceRevocation(r)) => {
            let device = SigningPublicKey::from_bytes(&r.device_id)
                .map_err(|_| RequestError::new(ErrorCode::Internal, "revoked device id"))?;
            Change::DeviceRevoked {
                device,
                new_user_key: (next.encryption_key() != user.encryption_key())
                    .then_some(*next.encryption_key()),
            }
        }
        Some(Body::KeyRotation(_)) => Change::KeyRotated {
            new_user_key: *next.encryption_key(),
        },
        // `apply` refuses both.
        Some(Body::UserCreation(_)) | None => {
            return Err(RequestError::new(
                ErrorCode::InvalidStatement,
                "not a device change",
            ));
        }
    };
    Ok((next, change))
}

/// Bytes counted per log entry of a cached user (its device record, past
/// keys, the map's share): a bound on memory, not an exact measure.
const ENTRY_COST: usize = 512;

/// Default budget of the verified cache: 64 MiB, about 130,000 entries.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

struct Slot {
    user: VerifiedUser,
    tick: u64,
}

#[derive(Default)]
struct Lru {
    slots: HashMap<String, Slot>,
    by_age: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
}

fn cost(user: &VerifiedUser) -> usize {
    (user.len() as usize).saturating_mul(ENTRY_COST)
}

/// Verified users, least recently used evicted past a byte budget. The
/// database stays the truth: a cached state is used only if its length and
/// head match the stored log's (another process may have appended).
pub struct VerifiedCache {
    lru: Mutex<Lru>,
    budget: usize,
    entries_verified: AtomicU64,
}

impl VerifiedCache {
    /// An empty cache of `budget` bytes (0: caches nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            lru: Mutex::new(Lru::default()),
            budget,
            entries_verified: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached state of `user_id` if it is the stored log of `len`
    /// entries ending in `head`.
    pub fn get(&self, user_id: &str, len: u64, head: &[u8; 32]) -> Option<VerifiedUser> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let slot = lru.slots.get_mut(user_id)?;
        if slot.user.len() != len || slot.user.head() != head {
            return None;
        }
        let old = std::mem::replace(&mut slot.tick, tick);
        let user = slot.user.clone();
        lru.by_age.remove(&old);
        lru.by_age.insert(tick, user_id.to_owned());
        Some(user)
    }

    /// Caches `user` (replacing what is cached for its id), then evicts
    /// down to the budget.
    pub fn put(&self, user: VerifiedUser) {
        let mut lru = self.lock();
        let id = user.user_id().to_owned();
        if let Some(old) = lru.slots.remove(&id) {
            lru.by_age.remove(&old.tick);
            lru.bytes -= cost(&old.user);
        }
        if cost(&user) > self.budget {
            return;
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.bytes += cost(&user);
        lru.by_age.insert(tick, id.clone());
        lru.slots.insert(id, Slot { user, tick });
        while lru.bytes > self.budget {
            let Some((_, oldest)) = lru.by_age.pop_first() else {
                break;
            };
            if let Some(slot) = lru.slots.remove(&oldest) {
                lru.bytes -= cost(&slot.user);
            }
        }
    }

    /// Counts `n` entries whose signature was checked.
    pub fn count_verified(&self, n: usize) {
        self.entries_verified.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Log entries whose signature was checked, in total.
    pub fn entries_verified(&self) -> u64 {
        self.entries_verified.load(Ordering::Relaxed)
    }

    /// Bytes held, as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// The author of an unverified entry, if it decodes: checked against the
/// directory's active devices (or the root) before a stored log is
/// verified on a cache miss.
pub fn claimed_author(entry: &SignedStatement) -> Option<SigningPublicKey> {
    let st: Statement = decode_bounded(&entry.statement, MAX_STATEMENT_BYTES).ok()?;
    SigningPublicKey::from_bytes(&st.author).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::chain::create_user;
    use ward_core::invite::{InviteDetails, create_invite};
    use ward_core::keys::*;
    use ward_core::testkit::{KIT_TIME, Org};

    fn creation(org: &Org, expires_at: u64, ts: u64) -> SignedStatement {
        let mut rng = rand::rng();
        let details = InviteDetails {
            user_id: "u".into(),
            display_name: String::new(),
            profession: String::new(),
            registry_number: String::new(),
            expires_at,
        };
        let (inv, del) = create_invite(&mut rng, &org.root, &details).unwrap();
        create_user(
            &org.root_public(),
            &inv,
            &del,
            &UserEncryptionKey::generate(&mut rng).public_key(),
            &DeviceSigningKey::generate(&mut rng).public_key(),
            &DeviceEncryptionKey::generate(&mut rng).public_key(),
            ts,
        )
        .unwrap()
    }

    #[test]
    fn creation_is_checked_against_root_and_server_clock() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let entry = creation(&org, KIT_TIME + 10, KIT_TIME);
        assert!(accept_creation(&root, KIT_TIME, &entry).is_ok());
        // Made in time, presented too late.
        assert_eq!(
            accept_creation(&root, KIT_TIME + 11, &entry)
                .unwrap_err()
                .code,
            ErrorCode::InviteExpired
        );
        // Another organisation's invite.
        let other = Org::new(&mut rng);
        assert_eq!(
            accept_creation(&other.root_public(), KIT_TIME, &entry)
                .unwrap_err()
                .code,
            ErrorCode::InvalidStatement
        );
        // Garbage.
        let junk = SignedStatement {
            statement: vec![0xff; 10],
            signature: vec![],
        };
        assert_eq!(
            accept_creation(&root, KIT_TIME, &junk).unwrap_err().code,
            ErrorCode::InvalidStatement
        );
    }

    #[test]
    fn device_changes_are_checked_against_the_chain() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let a = org.enroll(&mut rng, "a");
        let phone = DeviceSigningKey::generate(&mut rng);
        let phone_enc = DeviceEncryptionKey::generate(&mut rng);
        let add = a.chain.add_device(
            &a.device,
            &phone.public_key(),
            &phone_enc.public_key(),
            KIT_TIME,
        );
        let (after, change) = accept_next(&root, &a.chain, &add).unwrap();
        assert!(matches!(change, Change::DeviceAdded(d) if d.signing_key == phone.public_key()));

        // An outsider cannot add a device.
        let outsider = DeviceSigningKey::generate(&mut rng);
        let bad = a
            .chain
            .add_device(&outsider, &phone.public_key(), &phone_enc.public_key(), 1);
        assert_eq!(
            accept_next(&root, &a.chain, &bad).unwrap_err().code,
            ErrorCode::InvalidStatement
        );

        let new_key = UserEncryptionKey::generate(&mut rng).public_key();
        let rev = after.revoke_device(&a.device, &phone.public_key(), &new_key, KIT_TIME);
        let (_, change) = accept_next(&root, &after, &rev).unwrap();
        assert_eq!(
            change,
            Change::DeviceRevoked {
                device: phone.public_key(),
                new_user_key: Some(new_key)
            }
        );
        // The root revokes without choosing a key; a device rotates it later.
        let rev = after.revoke_device_as_root(&org.root, &phone.public_key(), KIT_TIME);
        let (pending, change) = accept_next(&root, &after, &rev).unwrap();
        assert_eq!(
            change,
            Change::DeviceRevoked {
                device: phone.public_key(),
                new_user_key: None
            }
        );
        assert!(pending.rotation_pending());
        let rot = pending.rotate_user_key(&a.device, &new_key, KIT_TIME);
        let (done, change) = accept_next(&root, &pending, &rot).unwrap();
        assert_eq!(
            change,
            Change::KeyRotated {
                new_user_key: new_key
            }
        );
        assert!(!done.rotation_pending());
    }
}
