//! The PIN-locked, encrypted device store.
//!
//! One SQLCipher database per device (`path`), and beside it a small
//! unencrypted header (`<path>.header`) with the key-derivation parameters
//! and the failed-attempt counter. The database key is derived from the
//! mandatory PIN with Argon2id, optionally mixed with a 32-byte platform
//! secret (a biometric keystore slot); see [`kdf`] for the exact
//! construction and [`header`] for the header's bytes. SECURITY.md §14
//! states what this protects against, and what it does not.
//!
//! ```no_run
//! use ward_sdk::store::{CreateOptions, Pin, Store};
//!
//! let path = std::path::Path::new("ward.db");
//! let pin = Pin::new("493817".to_owned())?;
//! let store = Store::create(path, &pin, None, CreateOptions::default())?;
//! store.set_relay_cursor(41)?;
//! store.lock();
//!
//! let store = Store::unlock(path, &pin, None)?;
//! assert_eq!(store.relay_cursor()?, Some(41));
//! # Ok::<(), ward_sdk::store::StoreError>(())
//! ```
//!
//! # Blocking
//!
//! The store is synchronous (rusqlite), and `create`, `unlock`,
//! `upgrade_kdf` and `change_pin` deliberately take a noticeable fraction of
//! a second (Argon2id). The async client calls it through
//! `tokio::task::spawn_blocking`, never directly on an executor thread.
//! `Store` is `Send` but not `Sync`: share it behind a mutex.
//!
//! # Attempts and wiping
//!
//! Each unlock counts a failed attempt in the header *before* deriving the
//! key (so killing the app mid-derivation does not give a free try), and a
//! successful unlock resets the counter. When the count reaches
//! `max_attempts`, the database, its WAL, shared-memory and journal files and
//! the header are overwritten with zeros, fsynced and removed, and unlock
//! returns [`StoreError::Wiped`]. The counter lives in a plain file: an
//! attacker holding a copy of the disk can reset it and guess offline, which
//! only a platform secret prevents.
//!
//! # Platform unlock
//!
//! [`Store::enable_platform_unlock`] wraps the database key of an unlocked
//! store under a 32-byte secret the platform keystore releases after a
//! biometric check, for a limited time ([`platform`], header version 2);
//! [`Store::unlock_with_platform_secret`] then opens the store without the
//! PIN. Every refusal is [`StoreError::PinRequired`]: no slot, expired, too
//! many wrong secrets (3, counted before each try like the PIN's; the slot
//! is then deleted, the store is not), or a wrong secret. A PIN change or a
//! KDF upgrade changes the database key and drops the slot.

mod db;
mod error;
pub mod header;
pub mod kdf;
pub mod platform;
mod records;
mod rooms;
mod uploads;

use core::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use rusqlite_sqlcipher as rusqlite;

pub use db::SCHEMA_VERSION;
pub use error::{Result, StoreError};
pub use header::{FORMAT_VERSION, FORMAT_VERSION_PLATFORM_SLOT};
pub use kdf::{KdfParams, Pin, PlatformSecret};
pub use platform::PinRequiredReason;
pub use records::{Conversation, Identity, KtState, Message, OutboxId, OutboxItem, OutboxState};
pub use uploads::Upload;

use header::{Header, KdfSlot, sync_dir, with_suffix};
use kdf::{DbKey, SALT_BYTES, derive_db_key};
use rusqlite::Connection;

/// Settings chosen when a store is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// Argon2id cost; raise later with [`Store::upgrade_kdf`].
    pub kdf: KdfParams,
    /// Failed unlocks before the store wipes itself (at least 1).
    pub max_attempts: u32,
}

impl CreateOptions {
    /// The default maximum of failed attempts.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            kdf: KdfParams::DEFAULT,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// An unlocked store. Dropping it (or [`Store::lock`]) closes the database
/// and zeroizes the key held here.
pub struct Store {
    conn: Connection,
    key: DbKey,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Store(<unlocked>)")
    }
}

fn header_path(path: &Path) -> PathBuf {
    with_suffix(path, ".header")
}

/// Every file of the store at `path`, the header last.
fn store_files(path: &Path) -> [PathBuf; 6] {
    let header = header_path(path);
    [
        path.to_path_buf(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
        with_suffix(path, "-journal"),
        with_suffix(&header, ".tmp"),
        header,
    ]
}

/// Overwrites `path` with zeros, fsyncs and removes it. Absent: nothing to do.
///
/// On flash storage and copy-on-write file systems the overwrite may land
/// elsewhere than the old data; the old blocks are encrypted anyway, and
/// the header (the salt) is the part whose loss makes them undecryptable.
fn shred(path: &Path) -> Result<()> {
    let mut f = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    let zeros = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn random_salt() -> Result<[u8; SALT_BYTES]> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?;
    Ok(salt)
}

fn check_platform_secret(header: &Header, given: Option<&PlatformSecret>) -> Result<()> {
    match (header.platform_secret, given.is_some()) {
        (true, false) => Err(StoreError::PlatformSecretRequired),
        (false, true) => Err(StoreError::PlatformSecretNotExpected),
        _ => Ok(()),
    }
}

impl Store {
    /// Creates a new store at `path` (the database; the header goes to
    /// `<path>.header`), locked by `pin` and, if given, `platform_secret`
    /// (which every unlock must then give too). Fails with
    /// [`StoreError::AlreadyExists`] if either file exists.
    pub fn create(
        path: &Path,
        pin: &Pin,
        platform_secret: Option<&PlatformSecret>,
        options: CreateOptions,
    ) -> Result<Self> {
        Self::create_with_salt(path, pin, platform_secret, options, random_salt()?)
    }

    /// [`Store::create`] with a chosen Argon2 salt: only for the committed
    /// fixture and the test vectors. A fixed salt lets one precomputation
    /// attack every store that shares it.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub fn create_with_fixed_salt(
        path: &Path,
        pin: &Pin,
        platform_secret: Option<&PlatformSecret>,
        options: CreateOptions,
        salt: [u8; 16],
    ) -> Result<Self> {
        Self::create_with_salt(path, pin, platform_secret, options, salt)
    }

    fn create_with_salt(
        path: &Path,
        pin: &Pin,
        platform_secret: Option<&PlatformSecret>,
        options: CreateOptions,
        salt: [u8; SALT_BYTES],
    ) -> Result<Self> {
        options.kdf.validate()?;
        if options.max_attempts == 0 {
            return Err(StoreError::InvalidKdfParams(
                "max_attempts must be at least 1",
            ));
        }
        if Self::exists(path) {
            return Err(StoreError::AlreadyExists);
        }
        let header = Header {
            kdf: KdfSlot {
                params: options.kdf,
                salt,
            },
            platform_secret: platform_secret.is_some(),
            max_attempts: options.max_attempts,
            failed_attempts: 0,
            pending: None,
            platform_slot: None,
        };
        let key = derive_db_key(pin, &salt, &options.kdf, platform_secret)?;
        // The header first: a database must never exist without the salt
        // that derives its key.
        let hpath = header_path(path);
        header.write_atomic(&hpath)?;
        let conn = match db::open(path, &key, true) {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                let _ = Self::wipe(path);
                return Err(StoreError::Corrupt("a fresh database refused its key"));
            }
            Err(e) => {
                let _ = Self::wipe(path);
                return Err(e);
            }
        };
        sync_dir(path)?;
        Ok(Self {
            conn,
            key,
            path: path.to_path_buf(),
        })
    }

    /// Opens the store at `path`.
    ///
    /// - [`StoreError::WrongPin`] with the attempts left, the attempt counted;
    /// - [`StoreError::Wiped`] when that was the last attempt (the store is
    ///   gone: enroll again);
    /// - [`StoreError::PlatformSecretRequired`] /
    ///   [`StoreError::PlatformSecretNotExpected`] when the secret's presence
    ///   does not match how the store was created (not counted);
    /// - [`StoreError::NotFound`] when there is no store.
    pub fn unlock(
        path: &Path,
        pin: &Pin,
        platform_secret: Option<&PlatformSecret>,
    ) -> Result<Self> {
        let hpath = header_path(path);
        let mut header = Header::read(&hpath)?;
        if header.failed_attempts >= header.max_attempts {
            // A wipe that was interrupted: finish it.
            Self::wipe(path)?;
            return Err(StoreError::Wiped);
        }
        check_platform_secret(&header, platform_secret)?;
        if !path.exists() {
            return Err(StoreError::Corrupt("the database file is missing"));
        }

        // Count the attempt before spending the time on it.
        header.failed_attempts = header.failed_attempts.saturating_add(1);
        header.write_atomic(&hpath)?;

        let mut opened = None;
        let mut slots = vec![header.kdf];
        // A KDF upgrade was interrupted: the database may be under either key.
        slots.extend(header.pending);
        for slot in slots {
            let key = derive_db_key(pin, &slot.salt, &slot.params, platform_secret)?;
            if let Some(conn) = db::open(path, &key, false)? {
                opened = Some((conn, key, slot));
                break;
            }
        }
        match opened {
            Some((conn, key, slot)) => {
                header.kdf = slot;
                header.pending = None;
                header.failed_attempts = 0;
                // The PIN proves more than the platform secret: the slot
                // gets its full budget of tries back. An expired one is
                // removed now rather than left on disk until the next try.
                let now = now_secs().unwrap_or(u64::MAX);
                if let Some(s) = header.platform_slot.as_mut() {
                    s.failures = 0;
                }
                if header
                    .platform_slot
                    .as_ref()
                    .is_some_and(|s| now >= s.expires_at)
                {
                    header.platform_slot = None;
                }
                header.write_atomic(&hpath)?;
                Ok(Self {
                    conn,
                    key,
                    path: path.to_path_buf(),
                })
            }
            None if header.failed_attempts >= header.max_attempts => {
                Self::wipe(path)?;
                Err(StoreError::Wiped)
            }
            None => Err(StoreError::WrongPin {
                attempts_left: header.max_attempts - header.failed_attempts,
            }),
        }
    }

    /// Closes the database and zeroizes the key. The same as dropping the
    /// store; a close error (the WAL could not be checkpointed) loses
    /// nothing committed and is ignored.
    pub fn lock(self) {
        let Self { conn, key, path: _ } = self;
        let _ = conn.close();
        drop(key);
    }

    /// Whether a store (its header or its database) exists at `path`.
    pub fn exists(path: &Path) -> bool {
        header_path(path).exists() || path.exists()
    }

    /// Destroys the store at `path`: every file overwritten with zeros,
    /// fsynced and removed, the header last. For sign-out and for a store
    /// left half-created. No store there: nothing to do.
    pub fn wipe(path: &Path) -> Result<()> {
        for f in store_files(path) {
            shred(&f)?;
        }
        sync_dir(path)
    }

    /// Re-derives the key with stronger Argon2id parameters and a fresh
    /// salt, and re-encrypts the database under it. `pin` and
    /// `platform_secret` must be those that unlocked it: a wrong PIN counts
    /// as a failed attempt ([`StoreError::WrongPin`], or
    /// [`StoreError::Wiped`] at the limit: drop the store then). Parameters can only be
    /// raised ([`StoreError::KdfDowngrade`]). Crash-safe: the header keeps
    /// the new parameters as "pending" until the re-encryption is done, and
    /// unlock tries both.
    pub fn upgrade_kdf(
        &mut self,
        pin: &Pin,
        platform_secret: Option<&PlatformSecret>,
        params: KdfParams,
    ) -> Result<()> {
        params.validate()?;
        let current = Header::read(&header_path(&self.path))?;
        if !params.at_least(&current.kdf.params) {
            return Err(StoreError::KdfDowngrade);
        }
        self.rekey(pin, pin, platform_secret, params)
    }

    /// Changes the PIN (same platform secret, same Argon2id parameters, a
    /// fresh salt). `current` must be the PIN that unlocked the store: a
    /// wrong one counts as a failed attempt, as in [`Store::upgrade_kdf`].
    pub fn change_pin(
        &mut self,
        current: &Pin,
        new: &Pin,
        platform_secret: Option<&PlatformSecret>,
    ) -> Result<()> {
        let header = Header::read(&header_path(&self.path))?;
        self.rekey(current, new, platform_secret, header.kdf.params)
    }

    fn rekey(
        &mut self,
        current: &Pin,
        new: &Pin,
        platform_secret: Option<&PlatformSecret>,
        params: KdfParams,
    ) -> Result<()> {
        let hpath = header_path(&self.path);
        let mut header = Header::read(&hpath)?;
        check_platform_secret(&header, platform_secret)?;
        // A PIN check is an attempt, as at unlock: counted before the
        // derivation, so that someone holding an unlocked phone cannot
        // search for the PIN here without reaching the wipe.
        header.failed_attempts = header.failed_attempts.saturating_add(1);
        header.write_atomic(&hpath)?;
        let check = derive_db_key(
            current,
            &header.kdf.salt,
            &header.kdf.params,
            platform_secret,
        )?;
        if !check.ct_eq(&self.key) {
            if header.failed_attempts >= header.max_attempts {
                Self::wipe(&self.path)?;
                return Err(StoreError::Wiped);
            }
            return Err(StoreError::WrongPin {
                attempts_left: header.max_attempts - header.failed_attempts,
            });
        }
        header.failed_attempts = 0;
        let slot = KdfSlot {
            params,
            salt: random_salt()?,
        };
        let new_key = derive_db_key(new, &slot.salt, &slot.params, platform_secret)?;
        header.pending = Some(slot);
        // The database key changes and the slot wraps the old one; it
        // cannot be re-wrapped without the platform secret, which a rekey
        // is not given. Dropped in the write that starts the rekey, so that
        // no header ever holds a slot beside a pending upgrade (the app
        // enables it again, after a biometric check, if it wants it).
        header.platform_slot = None;
        header.write_atomic(&hpath)?;
        db::rekey(&self.conn, &new_key)?;
        header.kdf = slot;
        header.pending = None;
        header.write_atomic(&hpath)?;
        self.key = new_key;
        Ok(())
    }

    /// The current Argon2id parameters (to decide whether to upgrade).
    pub fn kdf_params(&self) -> Result<KdfParams> {
        Ok(Header::read(&header_path(&self.path))?.kdf.params)
    }

    /// The longest validity [`Store::enable_platform_unlock`] accepts: 30
    /// days. The slot is a shortcut between PIN entries, not a replacement
    /// for the PIN.
    pub const MAX_PLATFORM_UNLOCK_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

    /// Enables the platform unlock (SECURITY.md §14.10): wraps this store's
    /// database key under a key derived from `secret` (32 bytes the
    /// platform keystore releases after a biometric check), valid for
    /// `valid_for` from now (whole seconds, at least 1, at most
    /// [`Self::MAX_PLATFORM_UNLOCK_VALIDITY`]), allowing
    /// [`platform::DEFAULT_MAX_FAILURES`] wrong secrets. Replaces any slot
    /// there was. Writes a version 2 header.
    pub fn enable_platform_unlock(
        &self,
        secret: &PlatformSecret,
        valid_for: Duration,
    ) -> Result<()> {
        let now = now_secs().ok_or(StoreError::InvalidPlatformUnlock(
            "the clock is before 1970",
        ))?;
        self.enable_platform_unlock_at(secret, valid_for, now)
    }

    fn enable_platform_unlock_at(
        &self,
        secret: &PlatformSecret,
        valid_for: Duration,
        now: u64,
    ) -> Result<()> {
        if valid_for.as_secs() == 0 {
            return Err(StoreError::InvalidPlatformUnlock(
                "the validity must be at least one second",
            ));
        }
        if valid_for > Self::MAX_PLATFORM_UNLOCK_VALIDITY {
            return Err(StoreError::InvalidPlatformUnlock(
                "the validity must be at most 30 days",
            ));
        }
        let hpath = header_path(&self.path);
        let mut header = Header::read(&hpath)?;
        if header.pending.is_some() {
            // `self.key` may or may not be the key the database ends up
            // under: unlocking again settles it.
            return Err(StoreError::InvalidPlatformUnlock(
                "a KDF upgrade is pending: lock and unlock with the PIN first",
            ));
        }
        let mut salt = [0u8; header::SLOT_SALT_BYTES];
        let mut nonce = [0u8; header::SLOT_NONCE_BYTES];
        fill_random(&mut salt)?;
        fill_random(&mut nonce)?;
        header.platform_slot = Some(platform::wrap(
            secret,
            &self.key,
            &header.kdf.salt,
            now.saturating_add(valid_for.as_secs()),
            platform::DEFAULT_MAX_FAILURES,
            salt,
            nonce,
        )?);
        header.write_atomic(&hpath)
    }

    /// Removes the platform-unlock slot, if any (the header goes back to
    /// version 1). From then on only the PIN unlocks.
    pub fn disable_platform_unlock(&self) -> Result<()> {
        let hpath = header_path(&self.path);
        let mut header = Header::read(&hpath)?;
        if header.platform_slot.take().is_some() {
            header.write_atomic(&hpath)?;
        }
        Ok(())
    }

    /// When the platform-unlock slot expires (Unix seconds), or `None`
    /// without one.
    pub fn platform_unlock_expires_at(&self) -> Result<Option<u64>> {
        Ok(Header::read(&header_path(&self.path))?
            .platform_slot
            .map(|s| s.expires_at))
    }

    /// Opens the store at `path` with the platform secret instead of the
    /// PIN, while its slot is valid. Every refusal is
    /// [`StoreError::PinRequired`]:
    ///
    /// - [`PinRequiredReason::NoSlot`]: none enabled (or it was removed);
    /// - [`PinRequiredReason::Expired`]: past its validity (removed now);
    /// - [`PinRequiredReason::WrongSecret`]: counted, in the header,
    ///   *before* the try (as the PIN's attempts are, §14.4);
    /// - [`PinRequiredReason::TooManyFailures`]: that was the last allowed
    ///   wrong secret, the slot is removed.
    ///
    /// A success resets the slot's failures and leaves the PIN's failed
    /// attempts as they are (the platform secret says nothing about the
    /// PIN). [`StoreError::Wiped`] / [`StoreError::NotFound`] as for
    /// [`Store::unlock`].
    pub fn unlock_with_platform_secret(path: &Path, secret: &PlatformSecret) -> Result<Self> {
        // A clock that cannot be read fails closed: the slot counts as expired.
        Self::unlock_with_platform_secret_at(path, secret, now_secs().unwrap_or(u64::MAX))
    }

    fn unlock_with_platform_secret_at(
        path: &Path,
        secret: &PlatformSecret,
        now: u64,
    ) -> Result<Self> {
        let hpath = header_path(path);
        let mut header = Header::read(&hpath)?;
        if header.failed_attempts >= header.max_attempts {
            Self::wipe(path)?;
            return Err(StoreError::Wiped);
        }
        if !path.exists() {
            return Err(StoreError::Corrupt("the database file is missing"));
        }
        let Some(slot) = header.platform_slot.as_mut() else {
            return Err(StoreError::PinRequired(PinRequiredReason::NoSlot));
        };
        let refused = if slot.failures >= slot.max_failures {
            // A removal that was interrupted: finish it.
            Some(PinRequiredReason::TooManyFailures)
        } else if now >= slot.expires_at {
            Some(PinRequiredReason::Expired)
        } else {
            None
        };
        if let Some(reason) = refused {
            header.platform_slot = None;
            header.write_atomic(&hpath)?;
            return Err(StoreError::PinRequired(reason));
        }
        // Count the try before making it: killing the app after the
        // unwrap gives no free guess.
        slot.failures = slot.failures.saturating_add(1);
        let slot = slot.clone();
        header.write_atomic(&hpath)?;
        let (failures, max) = (slot.failures, slot.max_failures);
        let Some(key) = platform::unwrap(secret, &header.kdf.salt, &slot)? else {
            if failures >= max {
                header.platform_slot = None;
                header.write_atomic(&hpath)?;
                return Err(StoreError::PinRequired(PinRequiredReason::TooManyFailures));
            }
            return Err(StoreError::PinRequired(PinRequiredReason::WrongSecret {
                attempts_left: max - failures,
            }));
        };
        match db::open(path, &key, false)? {
            Some(conn) => {
                if let Some(s) = header.platform_slot.as_mut() {
                    s.failures = 0;
                }
                header.write_atomic(&hpath)?;
                Ok(Self {
                    conn,
                    key,
                    path: path.to_path_buf(),
                })
            }
            None => {
                // The tag verified, so this is the key the slot was made
                // with, yet the database is under another one (a header
                // restored from elsewhere): the slot is useless, drop it.
                header.platform_slot = None;
                header.write_atomic(&hpath)?;
                Err(StoreError::PinRequired(PinRequiredReason::NoSlot))
            }
        }
    }
}

/// Unix seconds now; `None` for a clock before 1970.
fn now_secs() -> Option<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn fill_random(out: &mut [u8]) -> Result<()> {
    getrandom::fill(out).map_err(|e| StoreError::Io(io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        m_cost_kib: 8 * 1024,
        t_cost: 1,
        p_cost: 1,
    };
    const STRONGER: KdfParams = KdfParams {
        m_cost_kib: 8 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    fn pin() -> Pin {
        Pin::new("123456".into()).unwrap()
    }

    /// Leaves the store as a crash in the middle of `upgrade_kdf` would:
    /// pending slot written, database rekeyed (or not), final header not.
    fn interrupted_upgrade(rekeyed: bool) -> (tempfile::TempDir, PathBuf, KdfSlot) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = Store::create(
            &path,
            &pin(),
            None,
            CreateOptions {
                kdf: FAST,
                max_attempts: 10,
            },
        )
        .unwrap();
        s.set_relay_cursor(5).unwrap();
        let hp = header_path(&path);
        let mut h = Header::read(&hp).unwrap();
        let slot = KdfSlot {
            params: STRONGER,
            salt: [9; 16],
        };
        h.pending = Some(slot);
        h.write_atomic(&hp).unwrap();
        if rekeyed {
            let k = derive_db_key(&pin(), &slot.salt, &slot.params, None).unwrap();
            db::rekey(&s.conn, &k).unwrap();
        }
        s.lock();
        (dir, path, slot)
    }

    #[test]
    fn an_interrupted_upgrade_after_the_rekey_completes_on_unlock() {
        let (_d, path, slot) = interrupted_upgrade(true);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(5));
        let h = Header::read(&header_path(&path)).unwrap();
        assert_eq!((h.kdf, h.pending, h.failed_attempts), (slot, None, 0));
    }

    #[test]
    fn an_interrupted_upgrade_before_the_rekey_is_dropped_on_unlock() {
        let (_d, path, _) = interrupted_upgrade(false);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(5));
        let h = Header::read(&header_path(&path)).unwrap();
        assert_eq!((h.kdf.params, h.pending), (FAST, None));
    }

    #[test]
    fn an_interrupted_wipe_is_finished_on_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Store::create(
            &path,
            &pin(),
            None,
            CreateOptions {
                kdf: FAST,
                max_attempts: 2,
            },
        )
        .unwrap()
        .lock();
        // The counter reached the maximum but the files are still there.
        let hp = header_path(&path);
        let mut h = Header::read(&hp).unwrap();
        h.failed_attempts = 2;
        h.write_atomic(&hp).unwrap();
        assert!(matches!(
            Store::unlock(&path, &pin(), None),
            Err(StoreError::Wiped)
        ));
        assert!(!Store::exists(&path));
    }

    #[test]
    fn the_attempt_is_counted_before_the_derivation() {
        // A process killed during the derivation (here: a database that
        // fails to open for another reason) keeps the attempt counted.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Store::create(
            &path,
            &pin(),
            None,
            CreateOptions {
                kdf: FAST,
                max_attempts: 10,
            },
        )
        .unwrap()
        .lock();
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap(); // SQLite cannot open it
        assert!(Store::unlock(&path, &pin(), None).is_err());
        let hp = header_path(&path);
        assert_eq!(Header::read(&hp).unwrap().failed_attempts, 1);
    }

    fn secret(b: u8) -> PlatformSecret {
        PlatformSecret::new([b; 32])
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A FAST store with relay cursor 7, locked.
    fn store_at(ps: Option<&PlatformSecret>, max_attempts: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = Store::create(
            &path,
            &pin(),
            ps,
            CreateOptions {
                kdf: FAST,
                max_attempts,
            },
        )
        .unwrap();
        s.set_relay_cursor(7).unwrap();
        s.lock();
        (dir, path)
    }

    fn header_len(path: &Path) -> usize {
        std::fs::read(header_path(path)).unwrap().len()
    }

    fn slot_of(path: &Path) -> Option<header::PlatformSlot> {
        Header::read(&header_path(path)).unwrap().platform_slot
    }

    fn pin_required(r: Result<Store>) -> PinRequiredReason {
        match r {
            Err(StoreError::PinRequired(reason)) => reason,
            other => panic!("expected PinRequired, got {other:?}"),
        }
    }

    fn enable(path: &Path, ps: Option<&PlatformSecret>, slot_secret: &PlatformSecret) {
        let s = Store::unlock(path, &pin(), ps).unwrap();
        s.enable_platform_unlock(slot_secret, 12 * HOUR).unwrap();
        s.lock();
    }

    #[test]
    fn a_v1_header_store_opens_and_stays_v1_without_a_slot() {
        let (_d, path) = store_at(None, 10);
        assert_eq!(header_len(&path), header::HEADER_BYTES);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(7));
        assert_eq!(s.platform_unlock_expires_at().unwrap(), None);
        s.lock();
        assert_eq!(header_len(&path), header::HEADER_BYTES);
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(1))),
            PinRequiredReason::NoSlot
        );
    }

    #[test]
    fn the_platform_secret_unlocks_without_the_pin() {
        let (_d, path) = store_at(None, 10);
        enable(&path, None, &secret(1));
        assert_eq!(header_len(&path), header::HEADER_V2_BYTES);
        let s = Store::unlock_with_platform_secret(&path, &secret(1)).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(7));
        let exp = s.platform_unlock_expires_at().unwrap().unwrap();
        let now = now_secs().unwrap();
        assert!(exp > now + 11 * 3600 && exp <= now + 12 * 3600);
        s.lock();
        // Again: a success leaves the slot in place.
        Store::unlock_with_platform_secret(&path, &secret(1))
            .unwrap()
            .lock();
    }

    #[test]
    fn wrong_secrets_are_counted_before_the_try_then_the_slot_is_deleted() {
        let (_d, path) = store_at(None, 10);
        enable(&path, None, &secret(1));
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(2))),
            PinRequiredReason::WrongSecret { attempts_left: 2 }
        );
        assert_eq!(slot_of(&path).unwrap().failures, 1);
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(2))),
            PinRequiredReason::WrongSecret { attempts_left: 1 }
        );
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(2))),
            PinRequiredReason::TooManyFailures
        );
        // Gone: the right secret is refused too, and the header is v1 again.
        assert!(slot_of(&path).is_none());
        assert_eq!(header_len(&path), header::HEADER_BYTES);
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(1))),
            PinRequiredReason::NoSlot
        );
        // Slot failures are not PIN failures.
        assert_eq!(
            Header::read(&header_path(&path)).unwrap().failed_attempts,
            0
        );
        let s = Store::unlock(&path, &pin(), None).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(7));
    }

    #[test]
    fn the_slot_try_is_counted_even_when_the_process_dies_after_it() {
        let (_d, path) = store_at(None, 10);
        enable(&path, None, &secret(1));
        // The database fails to open after the unwrap (as a kill would
        // leave it): the try stays counted.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(Store::unlock_with_platform_secret(&path, &secret(1)).is_err());
        assert_eq!(slot_of(&path).unwrap().failures, 1);
    }

    #[test]
    fn a_success_resets_the_slot_failures_and_so_does_the_pin() {
        let (_d, path) = store_at(None, 10);
        enable(&path, None, &secret(1));
        let _ = Store::unlock_with_platform_secret(&path, &secret(2));
        Store::unlock_with_platform_secret(&path, &secret(1))
            .unwrap()
            .lock();
        assert_eq!(slot_of(&path).unwrap().failures, 0);
        let _ = Store::unlock_with_platform_secret(&path, &secret(2));
        let _ = Store::unlock_with_platform_secret(&path, &secret(2));
        Store::unlock(&path, &pin(), None).unwrap().lock();
        // The PIN kept the slot and gave it its three tries back.
        assert_eq!(slot_of(&path).unwrap().failures, 0);
        for left in [2, 1] {
            assert_eq!(
                pin_required(Store::unlock_with_platform_secret(&path, &secret(2))),
                PinRequiredReason::WrongSecret {
                    attempts_left: left
                }
            );
        }
        Store::unlock_with_platform_secret(&path, &secret(1))
            .unwrap()
            .lock();
    }

    #[test]
    fn an_expired_slot_is_refused_and_removed() {
        let (_d, path) = store_at(None, 10);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        s.enable_platform_unlock_at(&secret(1), Duration::from_secs(10), 1_000)
            .unwrap();
        s.lock();
        Store::unlock_with_platform_secret_at(&path, &secret(1), 1_009)
            .unwrap()
            .lock();
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret_at(
                &path,
                &secret(1),
                1_010
            )),
            PinRequiredReason::Expired
        );
        assert!(slot_of(&path).is_none());
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret_at(
                &path,
                &secret(1),
                1_009
            )),
            PinRequiredReason::NoSlot
        );
    }

    #[test]
    fn an_expired_slot_is_removed_at_the_next_pin_unlock() {
        let (_d, path) = store_at(None, 10);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        // Expired long ago by the real clock.
        s.enable_platform_unlock_at(&secret(1), HOUR, 1_000)
            .unwrap();
        s.lock();
        Store::unlock(&path, &pin(), None).unwrap().lock();
        assert!(slot_of(&path).is_none());
    }

    #[test]
    fn the_expiry_and_the_budget_are_authenticated() {
        let (_d, path) = store_at(None, 10);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        s.enable_platform_unlock_at(&secret(1), Duration::from_secs(10), 1_000)
            .unwrap();
        s.lock();
        let hp = header_path(&path);
        for edit in [
            |s: &mut header::PlatformSlot| s.expires_at = u64::MAX,
            |s: &mut header::PlatformSlot| s.max_failures = 1_000,
        ] {
            let original = Header::read(&hp).unwrap();
            let mut h = original.clone();
            edit(h.platform_slot.as_mut().unwrap());
            h.write_atomic(&hp).unwrap();
            assert!(matches!(
                pin_required(Store::unlock_with_platform_secret_at(
                    &path,
                    &secret(1),
                    1_005
                )),
                PinRequiredReason::WrongSecret { .. }
            ));
            original.write_atomic(&hp).unwrap();
        }
    }

    #[test]
    fn disable_and_replace() {
        let (_d, path) = store_at(None, 10);
        enable(&path, None, &secret(1));
        enable(&path, None, &secret(3));
        assert!(matches!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(1))),
            PinRequiredReason::WrongSecret { attempts_left: 2 }
        ));
        let s = Store::unlock_with_platform_secret(&path, &secret(3)).unwrap();
        s.disable_platform_unlock().unwrap();
        assert_eq!(s.platform_unlock_expires_at().unwrap(), None);
        s.disable_platform_unlock().unwrap();
        s.lock();
        assert_eq!(header_len(&path), header::HEADER_BYTES);
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(3))),
            PinRequiredReason::NoSlot
        );
    }

    #[test]
    fn validities_out_of_range_are_refused() {
        let (_d, path) = store_at(None, 10);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        for v in [
            Duration::ZERO,
            Duration::from_millis(999),
            Store::MAX_PLATFORM_UNLOCK_VALIDITY + Duration::from_secs(1),
        ] {
            assert!(matches!(
                s.enable_platform_unlock(&secret(1), v),
                Err(StoreError::InvalidPlatformUnlock(_))
            ));
        }
        s.enable_platform_unlock(&secret(1), Store::MAX_PLATFORM_UNLOCK_VALIDITY)
            .unwrap();
    }

    #[test]
    fn a_pin_change_or_a_kdf_upgrade_drops_the_slot() {
        let (_d, path) = store_at(None, 10);
        let new_pin = Pin::new("654321".into()).unwrap();
        enable(&path, None, &secret(1));
        let mut s = Store::unlock_with_platform_secret(&path, &secret(1)).unwrap();
        s.change_pin(&pin(), &new_pin, None).unwrap();
        s.lock();
        assert!(slot_of(&path).is_none());
        assert_eq!(
            pin_required(Store::unlock_with_platform_secret(&path, &secret(1))),
            PinRequiredReason::NoSlot
        );
        let mut s = Store::unlock(&path, &new_pin, None).unwrap();
        s.enable_platform_unlock(&secret(1), HOUR).unwrap();
        // A wrong current PIN keeps the slot (only the PIN attempt counts).
        assert!(matches!(
            s.upgrade_kdf(&pin(), None, STRONGER),
            Err(StoreError::WrongPin { .. })
        ));
        assert!(slot_of(&path).is_some());
        s.upgrade_kdf(&new_pin, None, STRONGER).unwrap();
        // The slot wrapped the old key: gone.
        assert!(slot_of(&path).is_none());
        s.enable_platform_unlock(&secret(1), HOUR).unwrap();
        s.lock();
        let s = Store::unlock_with_platform_secret(&path, &secret(1)).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(7));
    }

    #[test]
    fn a_store_that_mixes_in_a_platform_secret_can_have_a_slot() {
        // The slot wraps the final database key, whatever went into it.
        let mixed = secret(9);
        let (_d, path) = store_at(Some(&mixed), 10);
        enable(&path, Some(&mixed), &mixed);
        let s = Store::unlock_with_platform_secret(&path, &mixed).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(7));
        // Another slot secret than the mixed-in one works as well.
        s.enable_platform_unlock(&secret(4), HOUR).unwrap();
        s.lock();
        Store::unlock_with_platform_secret(&path, &secret(4))
            .unwrap()
            .lock();
        // The PIN path still wants both.
        assert!(matches!(
            Store::unlock(&path, &pin(), None),
            Err(StoreError::PlatformSecretRequired)
        ));
        Store::unlock(&path, &pin(), Some(&mixed)).unwrap().lock();
        assert!(slot_of(&path).is_some());
    }

    #[test]
    fn a_pin_wipe_removes_the_slot_with_the_rest() {
        let (_d, path) = store_at(None, 2);
        enable(&path, None, &secret(1));
        let wrong = Pin::new("000000".into()).unwrap();
        assert!(matches!(
            Store::unlock(&path, &wrong, None),
            Err(StoreError::WrongPin { attempts_left: 1 })
        ));
        // The slot survives a wrong PIN.
        assert!(slot_of(&path).is_some());
        assert!(matches!(
            Store::unlock(&path, &wrong, None),
            Err(StoreError::Wiped)
        ));
        assert!(!Store::exists(&path));
        assert!(matches!(
            Store::unlock_with_platform_secret(&path, &secret(1)),
            Err(StoreError::NotFound)
        ));
    }

    #[test]
    fn an_interrupted_wipe_is_finished_by_the_platform_unlock_too() {
        let (_d, path) = store_at(None, 2);
        enable(&path, None, &secret(1));
        let hp = header_path(&path);
        let mut h = Header::read(&hp).unwrap();
        h.failed_attempts = 2;
        h.write_atomic(&hp).unwrap();
        assert!(matches!(
            Store::unlock_with_platform_secret(&path, &secret(1)),
            Err(StoreError::Wiped)
        ));
        assert!(!Store::exists(&path));
    }

    #[test]
    fn the_slot_leaks_no_key_in_debug() {
        let (_d, path) = store_at(None, 10);
        let s = Store::unlock(&path, &pin(), None).unwrap();
        s.enable_platform_unlock(&secret(1), HOUR).unwrap();
        let key_hex = s.key.sqlcipher_literal();
        let h = Header::read(&header_path(&path)).unwrap();
        let slot = h.platform_slot.clone().unwrap();
        // Four bytes of each, as Debug would print them inside a slice.
        let inner = |b: &[u8]| {
            let d = format!("{:?}", &b[..4]);
            d[1..d.len() - 1].to_owned()
        };
        let (w, n) = (inner(&slot.wrapped), inner(&slot.nonce));
        for d in [format!("{h:?}"), format!("{slot:?}"), format!("{s:?}")] {
            assert!(!d.contains(&key_hex[2..10]), "{d}");
            assert!(!d.contains(&w) && !d.contains(&n), "{d}");
        }
        let e = format!(
            "{:?} {}",
            StoreError::PinRequired(PinRequiredReason::WrongSecret { attempts_left: 2 }),
            StoreError::PinRequired(PinRequiredReason::Expired)
        );
        assert!(!e.contains(&key_hex[2..10]));
    }

    #[test]
    fn shred_overwrites_then_removes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![0xaa; 200_000]).unwrap();
        shred(&p).unwrap();
        assert!(!p.exists());
        shred(&p).unwrap();
    }
}
