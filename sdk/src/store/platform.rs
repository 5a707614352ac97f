//! The platform-unlock slot: the database key wrapped under a 32-byte
//! secret that the platform keystore releases after a biometric check, so
//! that the PIN is needed only when the slot is absent, expired or spent
//! (SECURITY.md §14.10).
//!
//! ```text
//! slot_key = HKDF-SHA256(salt = slot salt (16 bytes, fresh at each enable),
//!                        ikm = platform secret (32 bytes),
//!                        info = "ward/v1/store/platform-slot", L = 32)
//! aad      = Argon2 salt (header bytes 24..40) || slot salt || expires_at (u64 BE)
//!            || max failures (u32 BE)          (header bytes 76..104: 44 bytes in all)
//! wrapped  = XChaCha20-Poly1305(slot_key, nonce (24 bytes, random), aad, db_key)
//!            = 32 bytes of ciphertext || 16-byte tag
//! ```
//!
//! The failure counter is left out of the AAD on purpose: it changes at
//! every try, and re-encrypting at each one would need the secret. The
//! expiry and the maximum are in it, so that whoever can only write the
//! header file cannot extend the slot's life or its budget of tries.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::error::{Result, StoreError};
use super::header::{PlatformSlot, SLOT_NONCE_BYTES, SLOT_SALT_BYTES};
use super::kdf::{DbKey, PlatformSecret, SALT_BYTES};

/// HKDF info of the slot key.
pub const SLOT_INFO: &[u8] = b"ward/v1/store/platform-slot";
/// Failed platform unlocks before the slot is deleted, by default.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// Bytes of associated data.
pub(crate) const AAD_BYTES: usize = SALT_BYTES + SLOT_SALT_BYTES + 8 + 4;
const TAG_BYTES: usize = 16;

/// Why the platform secret cannot open the store: in every case the app
/// asks for the PIN ([`StoreError::PinRequired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinRequiredReason {
    /// No slot: never enabled, disabled, dropped by a PIN change or a KDF
    /// upgrade, or deleted after its last failure or its expiry.
    NoSlot,
    /// The slot's validity has passed (it is deleted now).
    Expired,
    /// This wrong secret was the slot's last allowed failure: the slot is
    /// deleted.
    TooManyFailures,
    /// The secret does not open the slot; the failure was counted and the
    /// slot still allows `attempts_left` more.
    WrongSecret {
        /// Failed platform unlocks left before the slot is deleted.
        attempts_left: u32,
    },
}

impl core::fmt::Display for PinRequiredReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSlot => f.write_str("no platform unlock is enabled"),
            Self::Expired => f.write_str("the platform unlock has expired"),
            Self::TooManyFailures => f.write_str("too many failed platform unlocks"),
            Self::WrongSecret { attempts_left } => write!(
                f,
                "wrong platform secret ({attempts_left} attempts left before the PIN is required)"
            ),
        }
    }
}

/// The associated data (see the module documentation).
pub(crate) fn aad(
    argon2_salt: &[u8; SALT_BYTES],
    salt: &[u8; SLOT_SALT_BYTES],
    expires_at: u64,
    max_failures: u32,
) -> [u8; AAD_BYTES] {
    let mut a = [0u8; AAD_BYTES];
    a[..16].copy_from_slice(argon2_salt);
    a[16..32].copy_from_slice(salt);
    a[32..40].copy_from_slice(&expires_at.to_be_bytes());
    a[40..44].copy_from_slice(&max_failures.to_be_bytes());
    a
}

/// HKDF-SHA256 of the platform secret under the slot salt.
pub(crate) fn slot_key(
    secret: &PlatformSecret,
    salt: &[u8; SLOT_SALT_BYTES],
) -> Result<Zeroizing<[u8; 32]>> {
    let hk = Hkdf::<Sha256>::new(Some(salt), secret.expose());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(SLOT_INFO, &mut *key)
        .map_err(|_| StoreError::Kdf)?;
    Ok(key)
}

/// Wraps `db_key` into a fresh slot with a failure count of 0. `salt` and
/// `nonce` are random (fixed only in the test vector).
pub(crate) fn wrap(
    secret: &PlatformSecret,
    db_key: &DbKey,
    argon2_salt: &[u8; SALT_BYTES],
    expires_at: u64,
    max_failures: u32,
    salt: [u8; SLOT_SALT_BYTES],
    nonce: [u8; SLOT_NONCE_BYTES],
) -> Result<PlatformSlot> {
    let key = slot_key(secret, &salt)?;
    let aad = aad(argon2_salt, &salt, expires_at, max_failures);
    let mut buf = Zeroizing::new(*db_key.expose());
    let tag = XChaCha20Poly1305::new(&(*key).into())
        .encrypt_inout_detached(&nonce.into(), &aad, (&mut buf[..]).into())
        .map_err(|_| StoreError::Kdf)?;
    // `buf` now holds ciphertext; zeroized on drop all the same.
    let mut wrapped = [0u8; 32 + TAG_BYTES];
    wrapped[..32].copy_from_slice(&buf[..]);
    wrapped[32..].copy_from_slice(&tag);
    Ok(PlatformSlot {
        salt,
        expires_at,
        max_failures,
        failures: 0,
        nonce,
        wrapped,
    })
}

/// The database key in `slot`, or `None` when `secret` (or the slot's
/// authenticated fields) do not match: the tag decides, nothing is compared
/// by hand.
pub(crate) fn unwrap(
    secret: &PlatformSecret,
    argon2_salt: &[u8; SALT_BYTES],
    slot: &PlatformSlot,
) -> Result<Option<DbKey>> {
    let key = slot_key(secret, &slot.salt)?;
    let aad = aad(argon2_salt, &slot.salt, slot.expires_at, slot.max_failures);
    let mut buf = Zeroizing::new([0u8; 32]);
    buf.copy_from_slice(&slot.wrapped[..32]);
    let mut tag = [0u8; TAG_BYTES];
    tag.copy_from_slice(&slot.wrapped[32..]);
    let opened = XChaCha20Poly1305::new(&(*key).into()).decrypt_inout_detached(
        &slot.nonce.into(),
        &aad,
        (&mut buf[..]).into(),
        &tag.into(),
    );
    Ok(opened.ok().map(|()| DbKey::from_bytes(buf)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::header::{Header, KdfSlot};
    use crate::store::kdf::KdfParams;

    fn h(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sha256(label: &str) -> [u8; 32] {
        use sha2::Digest;
        Sha256::digest(label.as_bytes()).into()
    }

    /// The `platform_slot` object of `vectors/ward-v1-store.json` (written
    /// by `kdf::tests::vectors`): the slot over `db_key`, the store's
    /// database key under Argon2 `params` and `argon2_salt`.
    pub(crate) fn vector(
        db_key: &DbKey,
        argon2_salt: [u8; SALT_BYTES],
        params: KdfParams,
        case: usize,
    ) -> serde_json::Value {
        let secret = PlatformSecret::new(sha256("ward/v1/store platform-slot vector secret"));
        let salt: [u8; SLOT_SALT_BYTES] = sha256("ward/v1/store platform-slot vector salt")
            [..SLOT_SALT_BYTES]
            .try_into()
            .unwrap();
        let mut nonce = [0u8; SLOT_NONCE_BYTES];
        nonce.copy_from_slice(&sha256("ward/v1/store platform-slot vector nonce")[..24]);
        let expires_at = 1_790_000_000;
        let slot = wrap(
            &secret,
            db_key,
            &argon2_salt,
            expires_at,
            DEFAULT_MAX_FAILURES,
            salt,
            nonce,
        )
        .unwrap();
        let header = Header {
            kdf: KdfSlot {
                params,
                salt: argon2_salt,
            },
            platform_secret: false,
            max_attempts: 10,
            failed_attempts: 0,
            pending: None,
            platform_slot: Some(slot.clone()),
        };
        let bytes = header.encode();
        let v1 = Header {
            platform_slot: None,
            ..header.clone()
        }
        .encode();
        // The round trip and the refusal of another secret, here too.
        let back = unwrap(&secret, &argon2_salt, &slot).unwrap().unwrap();
        assert!(back.ct_eq(db_key));
        assert!(
            unwrap(&PlatformSecret::new([0; 32]), &argon2_salt, &slot)
                .unwrap()
                .is_none()
        );
        let key = slot_key(&secret, &salt).unwrap();
        serde_json::json!({
            "description": "Platform-unlock slot over the db_key of cases[db_key_case] (SECURITY.md §14.10). slot_key = HKDF-SHA256(salt = slot_salt, ikm = platform_secret, info = \"ward/v1/store/platform-slot\", L = 32); aad = argon2 salt || slot_salt || expires_at (u64 BE) || max_failures (u32 BE) = header[24..40] || header[76..104]; wrapped = XChaCha20-Poly1305(slot_key, nonce, aad, db_key) = ciphertext || tag; header = the 212-byte version 2 header of that store (max_attempts 10, no failure), header_v1 the same store's 108-byte header without the slot. platform_secret = SHA-256(platform_secret_label), slot_salt = the first 16 bytes of SHA-256(slot_salt_label), nonce = the first 24 bytes of SHA-256(nonce_label).",
            "hkdf_info": String::from_utf8_lossy(SLOT_INFO),
            "db_key_case": case,
            "db_key": h(db_key.expose()),
            "argon2_salt": h(&argon2_salt),
            "platform_secret_label": "ward/v1/store platform-slot vector secret",
            "platform_secret": h(secret.expose()),
            "slot_salt_label": "ward/v1/store platform-slot vector salt",
            "slot_salt": h(&salt),
            "nonce_label": "ward/v1/store platform-slot vector nonce",
            "nonce": h(&nonce),
            "expires_at": expires_at,
            "max_failures": DEFAULT_MAX_FAILURES,
            "slot_key": h(&*key),
            "aad": h(&aad(&argon2_salt, &salt, expires_at, DEFAULT_MAX_FAILURES)),
            "wrapped": h(&slot.wrapped),
            "header": h(&bytes),
            "header_v1": h(&v1),
        })
    }
}
