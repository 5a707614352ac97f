//! The store's typed errors.

use std::io;

use super::platform::PinRequiredReason;
use super::rusqlite;

/// Everything the device store can refuse or fail with.
///
/// No variant carries a secret: PINs, keys and row contents never appear in
/// an error or its `Display`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The PIN is shorter than [`crate::store::Pin::MIN_CHARS`] characters.
    #[error("the PIN must have at least {min} characters")]
    PinTooShort {
        /// The minimum number of characters.
        min: usize,
    },
    /// The PIN is longer than [`crate::store::Pin::MAX_BYTES`] bytes.
    #[error("the PIN must have at most {max} bytes")]
    PinTooLong {
        /// The maximum number of bytes.
        max: usize,
    },
    /// A platform secret is not 32 bytes.
    #[error("a platform secret is exactly 32 bytes")]
    InvalidPlatformSecret,
    /// The PIN (or, for a store that mixes one in, the platform secret) is
    /// wrong (at unlock, or as the current PIN of `change_pin` /
    /// `upgrade_kdf`). The attempt was counted.
    #[error("wrong PIN ({attempts_left} attempts left before the store is wiped)")]
    WrongPin {
        /// Failed attempts left before the store wipes itself.
        attempts_left: u32,
    },
    /// Too many failed attempts: the store has been wiped (database, WAL,
    /// shared memory and header overwritten and removed). Enroll again.
    #[error("too many wrong PINs: the store has been wiped")]
    Wiped,
    /// This store was created with a platform secret and none was given.
    /// No attempt was counted.
    #[error("this store needs its platform secret (biometric unlock)")]
    PlatformSecretRequired,
    /// A platform secret was given to a store created without one.
    /// No attempt was counted.
    #[error("this store was created without a platform secret")]
    PlatformSecretNotExpected,
    /// The platform secret cannot open the store now: ask for the PIN (and
    /// unlock with [`crate::store::Store::unlock`]). The reason says why;
    /// only [`PinRequiredReason::WrongSecret`] leaves the slot usable.
    #[error("the PIN is required: {0}")]
    PinRequired(PinRequiredReason),
    /// `enable_platform_unlock` was refused: a validity of zero or above
    /// [`crate::store::Store::MAX_PLATFORM_UNLOCK_VALIDITY`], a KDF upgrade
    /// left pending, or a clock before 1970.
    #[error("the platform unlock cannot be enabled: {0}")]
    InvalidPlatformUnlock(&'static str),
    /// `create` found a store (its header or its database) at this path.
    #[error("a store already exists at this path")]
    AlreadyExists,
    /// The store was written by a v1 SDK: its device encryption and user
    /// keys are X25519 keys, which protocol v2 cannot use (SECURITY.md
    /// §14.9). Messages and conversations stay readable; the device must
    /// enroll again from a new invite after [`super::Store::reset_for_reenrollment`].
    #[error("this store holds protocol v1 keys: the device must enroll again")]
    ReenrollRequired,
    /// `set_identity` on a store that already holds one.
    #[error("this store already holds a device identity")]
    IdentityAlreadySet,
    /// No store at this path.
    #[error("no store at this path")]
    NotFound,
    /// The header file is malformed, of an unknown version, or fails its
    /// checksum; or the header exists without its database.
    #[error("the store is corrupt: {0}")]
    Corrupt(&'static str),
    /// The database was written by a newer version of the SDK.
    #[error("the store's schema version {found} is newer than this SDK supports ({supported})")]
    UnsupportedSchema {
        /// The database's `user_version`.
        found: i64,
        /// The newest version this SDK knows.
        supported: i64,
    },
    /// The Argon2 parameters are out of the accepted range.
    #[error("invalid key-derivation parameters: {0}")]
    InvalidKdfParams(&'static str),
    /// `upgrade_kdf` was asked to lower a parameter.
    #[error("key-derivation parameters can only be raised")]
    KdfDowngrade,
    /// The SQLite library linked into this build does not encrypt (it is
    /// not SQLCipher). The store refuses to write plaintext.
    #[error("the linked SQLite is not SQLCipher: refusing to store unencrypted data")]
    NoEncryption,
    /// The key derivation failed (out of memory, or parameters it refused).
    #[error("key derivation failed")]
    Kdf,
    /// A stored value could not be decoded (a key of the wrong length, an
    /// unknown enum value).
    #[error("a stored value is invalid: {0}")]
    InvalidData(&'static str),
    /// SQLite (SQLCipher) failed.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// The file system failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The store's result type.
pub type Result<T, E = StoreError> = core::result::Result<T, E>;
