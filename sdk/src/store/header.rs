//! The unencrypted header file, `<database path>.header`.
//!
//! It holds what is needed to derive the key before anything can be
//! decrypted, and the failed-attempt counter. It holds no secret and nothing
//! derived from the PIN. 108 bytes, integers big-endian:
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `WARDSTOR` (ASCII) |
//! | 8 | 2 | format version, `1` |
//! | 10 | 1 | flags: bit 0 a platform secret is mixed in; bit 1 a KDF upgrade is pending; other bits 0 |
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
//! | 76 | 32 | SHA-256 of bytes 0..76 (corruption check, not authentication) |
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
/// The header format version this SDK writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Total header length.
pub const HEADER_BYTES: usize = 108;
const KDF_ARGON2ID_HKDF: u8 = 1;
const FLAG_PLATFORM_SECRET: u8 = 0b01;
const FLAG_UPGRADE_PENDING: u8 = 0b10;
const BODY_BYTES: usize = 76;

/// One Argon2 configuration: parameters and salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KdfSlot {
    pub params: KdfParams,
    pub salt: [u8; SALT_BYTES],
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
}

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn get_u32(b: &[u8; HEADER_BYTES], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get_salt(b: &[u8; HEADER_BYTES], at: usize) -> [u8; SALT_BYTES] {
    let mut s = [0u8; SALT_BYTES];
    s.copy_from_slice(&b[at..at + SALT_BYTES]);
    s
}

impl Header {
    /// The 108 bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        let mut flags = 0;
        if self.platform_secret {
            flags |= FLAG_PLATFORM_SECRET;
        }
        if self.pending.is_some() {
            flags |= FLAG_UPGRADE_PENDING;
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
        let digest = Sha256::digest(&b[..BODY_BYTES]);
        b[BODY_BYTES..].copy_from_slice(&digest);
        b
    }

    /// Parses and checks the 108 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let b: &[u8; HEADER_BYTES] = bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt("header length"))?;
        if &b[0..8] != MAGIC {
            return Err(StoreError::Corrupt("header magic"));
        }
        let digest = Sha256::digest(&b[..BODY_BYTES]);
        if digest.as_slice() != &b[BODY_BYTES..] {
            return Err(StoreError::Corrupt("header checksum"));
        }
        if u16::from_be_bytes([b[8], b[9]]) != FORMAT_VERSION {
            return Err(StoreError::Corrupt("unknown header version"));
        }
        let flags = b[10];
        if flags & !(FLAG_PLATFORM_SECRET | FLAG_UPGRADE_PENDING) != 0 {
            return Err(StoreError::Corrupt("unknown header flags"));
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
        Ok(Self {
            kdf,
            platform_secret: flags & FLAG_PLATFORM_SECRET != 0,
            max_attempts,
            failed_attempts: get_u32(b, 44),
            pending,
        })
    }

    /// Reads the header at `path`; [`StoreError::NotFound`] if absent.
    pub fn read(path: &Path) -> Result<Self> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let mut buf = Vec::with_capacity(HEADER_BYTES);
        f.take(HEADER_BYTES as u64 + 1).read_to_end(&mut buf)?;
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
            let mut b = good;
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
    }
}
