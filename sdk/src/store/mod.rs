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

mod db;
mod error;
pub mod header;
pub mod kdf;
mod records;
mod rooms;
mod uploads;

use core::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) use rusqlite_sqlcipher as rusqlite;

pub use db::SCHEMA_VERSION;
pub use error::{Result, StoreError};
pub use header::FORMAT_VERSION;
pub use kdf::{KdfParams, Pin, PlatformSecret};
pub use records::{Conversation, Identity, Message, OutboxId, OutboxItem, OutboxState};
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
