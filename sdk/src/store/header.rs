//! The unencrypted header file, `<database path>.header`.
//!
//! It holds what is needed to derive the key before anything can be
//! decrypted, and the failed-attempt counter. It holds no secret and nothing
//! derived from the PIN; the optional platform-unlock slot holds the
//! database key *encrypted* under a key derived from the platform secret
//! (see [`super::platform`]). Integers big-endian.
//!
//! Two versions, told apart by their length and their version field: a
//! store without a platform-unlock slot has a **version 1** header of 108
//! bytes; a store with one has a **version 2** header of 212 bytes, the
//! same first 76 bytes (version field `2`, flag bit 2 set) followed by the
//! slot. The SDK writes version 2 only while a slot exists and goes back to
//! version 1 when it is removed, so that a store that never enables the
//! slot keeps the header older SDKs read, and so do the committed fixtures.
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `WARDSTOR` (ASCII) |
//! | 8 | 2 | format version, `1` (no slot) or `2` (slot) |
//! | 10 | 1 | flags: bit 0 a platform secret is mixed in; bit 1 a KDF upgrade is pending; bit 2 a platform-unlock slot follows (set exactly in version 2); other bits 0 |
//! | 11 | 1 | KDF, `1` = Argon2id v1.3 then HKDF-SHA256 (see [`super::kdf`]) |
//! | 12 | 4 | Argon2 memory, KiB |
//! | 16 | 4 | Argon2 passes |
//! | 20 | 4 | Argon2 lanes |
//! | 24 | 16 | Argon2 salt |
//! | 40 | 4 | maximum failed attempts before the wipe |
//! | 44 | 4 | failed attempts so far (counted *before* each try) |
//! | 48 | 4 | pending upgrade: Argon2 memory, KiB (0 when none) |
//! | 52 | 4 | pending upgrade: Argon2 passes (0 when none) |
//! | 56 | 4 | pending upgrade: Argon2 lanes (0 when none) |
//! | 60 | 16 | pending upgrade: Argon2 salt (zeros when none) |
//! | 76 | 32 | version 1: SHA-256 of bytes 0..76 (corruption check, not authentication); end |
//!
//! Version 2 goes on at offset 76 (a pending upgrade and a slot never
//! coexist: starting a rekey drops the slot):
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 76 | 16 | slot salt (HKDF salt of the slot key) |
//! | 92 | 8 | slot expiry, Unix seconds (a slot at or past it is refused) |
//! | 100 | 4 | slot: maximum failed platform unlocks (at least 1) |
//! | 104 | 4 | slot: failed platform unlocks so far (counted *before* each try) |
//! | 108 | 24 | slot nonce (XChaCha20-Poly1305) |
//! | 132 | 48 | wrapped database key: 32 bytes of ciphertext, 16-byte tag |
//! | 180 | 32 | SHA-256 of bytes 0..180 (corruption check, not authentication) |
//!
//! The header is replaced atomically: written to `<path>.header.tmp`,
//! fsynced, renamed over the old one, then the directory is fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{Result, StoreError};
use super::kdf::{KdfParams, SALT_BYTES};

/// Magic bytes at offset 0.
pub const MAGIC: &[u8; 8] = b"WARDSTOR";
/// The header format version of a store without a platform-unlock slot
/// (what [`super::Store::create`] writes).
pub const FORMAT_VERSION: u16 = 1;
/// The header format version of a store with a platform-unlock slot.
pub const FORMAT_VERSION_PLATFORM_SLOT: u16 = 2;
/// Length of a version 1 header.
pub const HEADER_BYTES: usize = 108;
/// Length of a version 2 header.
pub const HEADER_V2_BYTES: usize = 212;
/// Bytes of the slot salt.
pub const SLOT_SALT_BYTES: usize = 16;
/// Bytes of the slot nonce.
pub const SLOT_NONCE_BYTES: usize = 24;
/// Bytes of the wrapped database key (ciphertext and tag).
pub const SLOT_WRAPPED_BYTES: usize = 48;
const KDF_ARGON2ID_HKDF: u8 = 1;
const FLAG_PLATFORM_SECRET: u8 = 0b001;
const FLAG_UPGRADE_PENDING: u8 = 0b010;
const FLAG_PLATFORM_SLOT: u8 = 0b100;
/// The fields common to both versions.
const COMMON_BYTES: usize = 76;
/// The checksummed bytes of a version 2 header.
const V2_BODY_BYTES: usize = 180;

/// One Argon2 configuration: parameters and salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KdfSlot {
    pub params: KdfParams,
    pub salt: [u8; SALT_BYTES],
}

/// The platform-unlock slot (header version 2). `wrapped` is the database
/// key encrypted under the slot key; `Debug` prints none of its bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PlatformSlot {
    pub salt: [u8; SLOT_SALT_BYTES],
    /// Unix seconds.
    pub expires_at: u64,
    pub max_failures: u32,
    pub failures: u32,
    pub nonce: [u8; SLOT_NONCE_BYTES],
    pub wrapped: [u8; SLOT_WRAPPED_BYTES],
}

impl core::fmt::Debug for PlatformSlot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PlatformSlot")
            .field("expires_at", &self.expires_at)
            .field("max_failures", &self.max_failures)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// The decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub kdf: KdfSlot,
    pub platform_secret: bool,
    pub max_attempts: u32,
    pub failed_attempts: u32,
    /// Set between the two steps of a KDF upgrade: the database may already
    /// be keyed with this slot's key.
    pub pending: Option<KdfSlot>,
    /// The platform-unlock slot; present exactly in a version 2 header.
    pub platform_slot: Option<PlatformSlot>,
}

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn get_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut s = [0u8; N];
    s.copy_from_slice(&b[at..at + N]);
    s
}

fn get_salt(b: &[u8], at: usize) -> [u8; SALT_BYTES] {
    get_array(b, at)
}

impl Header {
    /// The 108 bytes (no slot) or the 212 bytes (a slot).
    pub fn encode(&self) -> Vec<u8> {
        let (len, version) = match self.platform_slot {
            None => (HEADER_BYTES, FORMAT_VERSION),
            Some(_) => (HEADER_V2_BYTES, FORMAT_VERSION_PLATFORM_SLOT),
        };
        let mut b = vec![0u8; len];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&version.to_be_bytes());
        let mut flags = 0;
        if self.platform_secret {
            flags |= FLAG_PLATFORM_SECRET;
        }
        if self.pending.is_some() {
            flags |= FLAG_UPGRADE_PENDING;
        }
        if self.platform_slot.is_some() {
            flags |= FLAG_PLATFORM_SLOT;
        }
        b[10] = flags;
        b[11] = KDF_ARGON2ID_HKDF;
        put_u32(&mut b, 12, self.kdf.params.m_cost_kib);
        put_u32(&mut b, 16, self.kdf.params.t_cost);
        put_u32(&mut b, 20, self.kdf.params.p_cost);
        b[24..40].copy_from_slice(&self.kdf.salt);
        put_u32(&mut b, 40, self.max_attempts);
        put_u32(&mut b, 44, self.failed_attempts);
        if let Some(p) = &self.pending {
            put_u32(&mut b, 48, p.params.m_cost_kib);
            put_u32(&mut b, 52, p.params.t_cost);
            put_u32(&mut b, 56, p.params.p_cost);
            b[60..76].copy_from_slice(&p.salt);
        }
        if let Some(slot) = &self.platform_slot {
            b[76..92].copy_from_slice(&slot.salt);
            b[92..100].copy_from_slice(&slot.expires_at.to_be_bytes());
            put_u32(&mut b, 100, slot.max_failures);
            put_u32(&mut b, 104, slot.failures);
            b[108..132].copy_from_slice(&slot.nonce);
            b[132..180].copy_from_slice(&slot.wrapped);
        }
        let body = len - 32;
        let digest = Sha256::digest(&b[..body]);
        b[body..].copy_from_slice(&digest);
        b
    }

    /// Parses and checks a version 1 or version 2 header.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (body, version) = match bytes.len() {
            HEADER_BYTES => (COMMON_BYTES, FORMAT_VERSION),
            HEADER_V2_BYTES => (V2_BODY_BYTES, FORMAT_VERSION_PLATFORM_SLOT),
            _ => return Err(StoreError::Corrupt("header length")),
        };
        let b = bytes;
        if &b[0..8] != MAGIC {
            return Err(StoreError::Corrupt("header magic"));
        }
        // The checksum covers everything before it, whatever the version.
        let digest = Sha256::digest(&b[..body]);
        if digest.as_slice() != &b[body..] {
            return Err(StoreError::Corrupt("header checksum"));
        }
        if u16::from_be_bytes([b[8], b[9]]) != version {
            return Err(StoreError::Corrupt("unknown header version"));
        }
        let flags = b[10];
        if flags & !(FLAG_PLATFORM_SECRET | FLAG_UPGRADE_PENDING | FLAG_PLATFORM_SLOT) != 0 {
            return Err(StoreError::Corrupt("unknown header flags"));
        }
        let has_slot = version == FORMAT_VERSION_PLATFORM_SLOT;
        if (flags & FLAG_PLATFORM_SLOT != 0) != has_slot {
            return Err(StoreError::Corrupt(
                "platform slot flag and header version disagree",
            ));
        }
        if b[11] != KDF_ARGON2ID_HKDF {
            return Err(StoreError::Corrupt("unknown KDF"));
        }
        let kdf = KdfSlot {
            params: KdfParams {
                m_cost_kib: get_u32(b, 12),
                t_cost: get_u32(b, 16),
                p_cost: get_u32(b, 20),
            },
            salt: get_salt(b, 24),
        };
        kdf.params.validate()?;
        let pending = if flags & FLAG_UPGRADE_PENDING != 0 {
            let slot = KdfSlot {
                params: KdfParams {
                    m_cost_kib: get_u32(b, 48),
                    t_cost: get_u32(b, 52),
                    p_cost: get_u32(b, 56),
                },
                salt: get_salt(b, 60),
            };
            slot.params.validate()?;
            Some(slot)
        } else {
            if b[48..76].iter().any(|&x| x != 0) {
                return Err(StoreError::Corrupt("pending slot without its flag"));
            }
            None
        };
        let max_attempts = get_u32(b, 40);
        if max_attempts == 0 {
            return Err(StoreError::Corrupt("zero maximum attempts"));
        }
        let platform_slot = if has_slot {
            if pending.is_some() {
                // Never written: a rekey drops the slot in the same write
                // that records the pending upgrade.
                return Err(StoreError::Corrupt("platform slot during a KDF upgrade"));
            }
            let max_failures = get_u32(b, 100);
            if max_failures == 0 {
                return Err(StoreError::Corrupt("zero maximum platform failures"));
            }
            Some(PlatformSlot {
                salt: get_array(b, 76),
                expires_at: get_u64(b, 92),
                max_failures,
                failures: get_u32(b, 104),
                nonce: get_array(b, 108),
                wrapped: get_array(b, 132),
            })
        } else {
            None
        };
        Ok(Self {
            kdf,
            platform_secret: flags & FLAG_PLATFORM_SECRET != 0,
            max_attempts,
            failed_attempts: get_u32(b, 44),
            pending,
            platform_slot,
        })
    }

    /// Reads the header at `path`; [`StoreError::NotFound`] if absent.
    pub fn read(path: &Path) -> Result<Self> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let mut buf = Vec::with_capacity(HEADER_V2_BYTES);
        f.take(HEADER_V2_BYTES as u64 + 1).read_to_end(&mut buf)?;
        Self::decode(&buf)
    }

    /// Replaces the header at `path` atomically and durably.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        let tmp = with_suffix(path, ".tmp");
        {
            let mut f =
                private(OpenOptions::new().write(true).create(true).truncate(true)).open(&tmp)?;
            // A leftover temporary file keeps its old mode: set it (the
            // header inherits it at the rename).
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(&self.encode())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        sync_dir(path)
    }
}

/// `options` creating files readable and writable by their owner only
/// (0600 on Unix, whatever the umask).
pub(crate) fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Creates `path` empty with owner-only permissions unless it exists.
/// SQLite then keeps them, and gives its `-wal`, `-shm` and `-journal`
/// files the database file's permissions.
pub(crate) fn create_private(path: &Path) -> Result<()> {
    match private(OpenOptions::new().write(true).create_new(true)).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Fsyncs the directory holding `path`, so that a rename or a removal in it
/// survives a power loss. Not possible (nor needed) on Windows.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kdf: KdfSlot {
                params: KdfParams::DEFAULT,
                salt: [0x11; 16],
            },
            platform_secret: true,
            max_attempts: 10,
            failed_attempts: 3,
            pending: None,
            platform_slot: None,
        }
    }

    fn with_slot() -> Header {
        Header {
            platform_slot: Some(PlatformSlot {
                salt: [0x33; 16],
                expires_at: 0x0102_0304_0506_0708,
                max_failures: 3,
                failures: 1,
                nonce: [0x44; 24],
                wrapped: [0x55; 48],
            }),
            ..sample()
        }
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let mut p = sample();
        p.pending = Some(KdfSlot {
            params: KdfParams {
                m_cost_kib: 128 * 1024,
                t_cost: 4,
                p_cost: 1,
            },
            salt: [0x22; 16],
        });
        assert_eq!(Header::decode(&p.encode()).unwrap(), p);
        let v2 = with_slot();
        assert_eq!(Header::decode(&v2.encode()).unwrap(), v2);
    }

    #[test]
    fn v2_layout_is_as_documented() {
        let b = with_slot().encode();
        assert_eq!(b.len(), HEADER_V2_BYTES);
        // The common part is v1's, but for the version and flag bit 2.
        let mut v1 = sample().encode();
        assert_eq!(&b[8..11], &[0, 2, 0b101]);
        v1[8..11].copy_from_slice(&[0, 2, 0b101]);
        assert_eq!(&b[..76], &v1[..76]);
        assert_eq!(&b[76..92], &[0x33; 16]);
        assert_eq!(&b[92..100], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[100..108], &[0, 0, 0, 3, 0, 0, 0, 1]);
        assert_eq!(&b[108..132], &[0x44; 24]);
        assert_eq!(&b[132..180], &[0x55; 48]);
        assert_eq!(&b[180..], Sha256::digest(&b[..180]).as_slice());
    }

    #[test]
    fn v2_corruption_and_inconsistency_are_caught() {
        let good = with_slot().encode();
        for i in 0..HEADER_V2_BYTES {
            let mut b = good.clone();
            b[i] ^= 1;
            assert!(
                matches!(Header::decode(&b), Err(StoreError::Corrupt(_))),
                "byte {i}"
            );
        }
        assert!(Header::decode(&good[..HEADER_V2_BYTES - 1]).is_err());
        // Each inconsistency, with a valid checksum.
        let resum = |mut b: Vec<u8>| {
            let n = b.len() - 32;
            let d = Sha256::digest(&b[..n]);
            b[n..].copy_from_slice(&d);
            b
        };
        let mut no_flag = good.clone();
        no_flag[10] &= !FLAG_PLATFORM_SLOT;
        let mut v1_with_flag = sample().encode();
        v1_with_flag[10] |= FLAG_PLATFORM_SLOT;
        let mut v1_says_2 = sample().encode();
        v1_says_2[9] = 2;
        let mut zero_max = good.clone();
        zero_max[100..104].copy_from_slice(&[0; 4]);
        let mut upgrading = good.clone();
        upgrading[10] |= FLAG_UPGRADE_PENDING;
        upgrading[48..76].copy_from_slice(&sample_pending_bytes());
        for b in [no_flag, v1_with_flag, v1_says_2, zero_max, upgrading] {
            assert!(matches!(
                Header::decode(&resum(b)),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    fn sample_pending_bytes() -> [u8; 28] {
        let mut p = [0u8; 28];
        p[..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1]);
        p[12..].copy_from_slice(&[0x22; 16]);
        p
    }

    #[test]
    fn a_slot_prints_none_of_its_bytes() {
        let h = with_slot();
        let d = format!("{h:?}");
        // 0x55 is 85, 0x44 is 68, 0x33 is 51 as Debug prints bytes.
        for needle in ["85, 85", "68, 68", "51, 51", "wrapped", "nonce"] {
            assert!(!d.contains(needle), "{needle} in {d}");
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let b = sample().encode();
        assert_eq!(&b[0..8], b"WARDSTOR");
        assert_eq!(&b[8..12], &[0, 1, 0b01, 1]);
        assert_eq!(&b[12..24], &[0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1]);
        assert_eq!(&b[24..40], &[0x11; 16]);
        assert_eq!(&b[40..48], &[0, 0, 0, 10, 0, 0, 0, 3]);
        assert_eq!(&b[48..76], &[0; 28]);
    }

    #[test]
    fn corruption_is_caught() {
        let good = sample().encode();
        for i in 0..HEADER_BYTES {
            let mut b = good.clone();
            b[i] ^= 1;
            assert!(
                matches!(Header::decode(&b), Err(StoreError::Corrupt(_))),
                "byte {i}"
            );
        }
        assert!(Header::decode(&good[..107]).is_err());
    }

    #[test]
    fn atomic_write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db.header");
        assert!(matches!(Header::read(&path), Err(StoreError::NotFound)));
        let h = sample();
        h.write_atomic(&path).unwrap();
        assert_eq!(Header::read(&path).unwrap(), h);
        assert!(!with_suffix(&path, ".tmp").exists());
        // v1 -> v2 -> v1 in place.
        let v2 = with_slot();
        v2.write_atomic(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), HEADER_V2_BYTES);
        assert_eq!(Header::read(&path).unwrap(), v2);
        h.write_atomic(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), HEADER_BYTES);
    }
}
