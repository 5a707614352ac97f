//! PIN → database key.
//!
//! ```text
//! a      = Argon2id v1.3 (password = PIN as UTF-8, salt = 16 bytes from the header,
//!                         m = m_cost KiB, t = t_cost, p = p_cost, no secret, no associated data,
//!                         output 32 bytes)
//! ikm    = a                        without a platform secret
//!        = a || platform_secret     with one (32 bytes)
//! db_key = HKDF-SHA256(salt = "ward/v1/store", ikm, info = "ward/v1/store/db-key", L = 32)
//! ```
//!
//! `db_key` is handed to SQLCipher as a raw key (`PRAGMA key = "x'<64 hex>'"`),
//! so SQLCipher runs no key derivation of its own over it.

use core::fmt;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::error::{Result, StoreError};

/// HKDF salt of the database key.
pub const DB_KEY_SALT: &[u8] = b"ward/v1/store";
/// HKDF info of the database key.
pub const DB_KEY_INFO: &[u8] = b"ward/v1/store/db-key";
/// Bytes of Argon2 salt kept in the header.
pub const SALT_BYTES: usize = 16;

/// The PIN that locks the store: at least [`Pin::MIN_CHARS`] characters
/// (digits, or any other characters), at most [`Pin::MAX_BYTES`] bytes of
/// UTF-8. Used as given: no Unicode normalisation, so an app that accepts
/// non-ASCII PINs must normalise them itself, the same way every time.
///
/// Zeroized on drop; `Debug` prints no byte of it.
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// The shortest PIN accepted, in characters.
    pub const MIN_CHARS: usize = 6;
    /// The longest PIN accepted, in bytes.
    pub const MAX_BYTES: usize = 1024;

    /// Takes ownership of `pin` (zeroized on drop, also on error).
    pub fn new(pin: String) -> Result<Self> {
        let pin = Zeroizing::new(pin);
        if pin.chars().count() < Self::MIN_CHARS {
            return Err(StoreError::PinTooShort {
                min: Self::MIN_CHARS,
            });
        }
        if pin.len() > Self::MAX_BYTES {
            return Err(StoreError::PinTooLong {
                max: Self::MAX_BYTES,
            });
        }
        Ok(Self(pin))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// 32 bytes kept by the platform (a keystore slot released by biometrics:
/// Android Keystore, iOS Keychain with Secure Enclave access control), mixed
/// into the database key. Without it, a copy of the disk cannot be
/// brute-forced over the PIN alone.
///
/// Zeroized on drop; `Debug` prints no byte of it.
pub struct PlatformSecret(Zeroizing<[u8; 32]>);

impl PlatformSecret {
    /// Takes 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies exactly 32 bytes from `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let mut arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::InvalidPlatformSecret)?;
        let s = Self::new(arr);
        arr.zeroize();
        Ok(s)
    }

    fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 32 bytes, for the platform-unlock slot's key derivation.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PlatformSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformSecret(<redacted>)")
    }
}

/// Argon2id cost parameters, stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub m_cost_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane.
    pub const DEFAULT: Self = Self {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };
    /// The lowest memory accepted: 8 MiB (tests and fixtures use it; apps
    /// should not go below the default).
    pub const MIN_M_COST_KIB: u32 = 8 * 1024;
    /// The highest memory accepted: 1 GiB. Also bounds what a corrupted or
    /// tampered header can make the device allocate.
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
    /// The most passes accepted.
    pub const MAX_T_COST: u32 = 64;
    /// The most lanes accepted.
    pub const MAX_P_COST: u32 = 16;

    /// Checks the ranges above.
    pub fn validate(&self) -> Result<()> {
        if self.m_cost_kib < Self::MIN_M_COST_KIB {
            return Err(StoreError::InvalidKdfParams("memory below 8 MiB"));
        }
        if self.m_cost_kib > Self::MAX_M_COST_KIB {
            return Err(StoreError::InvalidKdfParams("memory above 1 GiB"));
        }
        if self.t_cost == 0 || self.t_cost > Self::MAX_T_COST {
            return Err(StoreError::InvalidKdfParams("passes outside 1..=64"));
        }
        if self.p_cost == 0 || self.p_cost > Self::MAX_P_COST {
            return Err(StoreError::InvalidKdfParams("lanes outside 1..=16"));
        }
        if self.m_cost_kib < 8 * self.p_cost {
            return Err(StoreError::InvalidKdfParams("memory below 8 KiB per lane"));
        }
        Ok(())
    }

    /// Whether every parameter of `self` is at least that of `other`.
    pub fn at_least(&self, other: &Self) -> bool {
        self.m_cost_kib >= other.m_cost_kib
            && self.t_cost >= other.t_cost
            && self.p_cost >= other.p_cost
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The 32-byte SQLCipher key. Zeroized on drop; never printed.
pub(crate) struct DbKey(Zeroizing<[u8; 32]>);

impl DbKey {
    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key unwrapped from the platform-unlock slot.
    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    /// The 32 bytes, to wrap them into the platform-unlock slot.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// `x'<64 lowercase hex>'`, the raw-key literal SQLCipher takes.
    /// Zeroized when dropped.
    pub(crate) fn sqlcipher_literal(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(67));
        s.push_str("x'");
        for b in self.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s.push('\'');
        s
    }

    /// Constant-time equality.
    pub(crate) fn ct_eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.ct_eq(&*other.0))
    }
}

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbKey(<redacted>)")
    }
}

/// Derives the database key (see the module documentation). Slow on
/// purpose: about as long as the Argon2 parameters say.
pub(crate) fn derive_db_key(
    pin: &Pin,
    salt: &[u8; SALT_BYTES],
    params: &KdfParams,
    platform_secret: Option<&PlatformSecret>,
) -> Result<DbKey> {
    let a = argon2id(pin, salt, params)?;
    mix(&a, platform_secret)
}

/// Step 1: Argon2id(PIN, salt), 32 bytes.
fn argon2id(pin: &Pin, salt: &[u8; SALT_BYTES], params: &KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    params.validate()?;
    let a2params = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|_| StoreError::Kdf)?;
    let blocks_len = a2params.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, a2params);
    let mut blocks = Vec::new();
    blocks
        .try_reserve_exact(blocks_len)
        .map_err(|_| StoreError::Kdf)?;
    blocks.resize(blocks_len, Block::default());
    let mut out = Zeroizing::new([0u8; 32]);
    let result = argon.hash_password_into_with_memory(pin.as_bytes(), salt, &mut *out, &mut blocks);
    // The memory holds values derived from the PIN: wipe it before freeing.
    for b in blocks.iter_mut() {
        b.zeroize();
    }
    drop(blocks);
    result.map_err(|_| StoreError::Kdf)?;
    Ok(out)
}

/// Step 2: HKDF-SHA256 over the Argon2 output and the platform secret.
fn mix(a: &[u8; 32], platform_secret: Option<&PlatformSecret>) -> Result<DbKey> {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(a);
    let ikm_len = match platform_secret {
        Some(s) => {
            ikm[32..].copy_from_slice(s.as_bytes());
            64
        }
        None => 32,
    };
    let hk = Hkdf::<Sha256>::new(Some(DB_KEY_SALT), &ikm[..ikm_len]);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(DB_KEY_INFO, &mut *key)
        .map_err(|_| StoreError::Kdf)?;
    Ok(DbKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        m_cost_kib: 8 * 1024,
        t_cost: 1,
        p_cost: 1,
    };

    fn pin(s: &str) -> Pin {
        Pin::new(s.to_owned()).unwrap()
    }

    #[test]
    fn short_pins_are_refused() {
        assert!(matches!(
            Pin::new("12345".into()),
            Err(StoreError::PinTooShort { min: 6 })
        ));
        assert!(Pin::new("123456".into()).is_ok());
        // Characters, not bytes.
        assert!(matches!(
            Pin::new("ééééé".into()),
            Err(StoreError::PinTooShort { .. })
        ));
        assert!(matches!(
            Pin::new("1".repeat(1025)),
            Err(StoreError::PinTooLong { .. })
        ));
    }

    #[test]
    fn debug_prints_no_secret() {
        let p = pin("271828");
        assert!(!format!("{p:?}").contains("271828"));
        let s = PlatformSecret::new([0xab; 32]);
        let d = format!("{s:?}");
        assert!(!d.contains("ab") && !d.contains("171"), "{d}");
        let k = derive_db_key(&p, &[7; 16], &FAST, None).unwrap();
        let hex = k.sqlcipher_literal();
        assert!(!format!("{k:?}").contains(&hex[2..10]));
    }

    #[test]
    fn the_key_depends_on_every_input() {
        let base = derive_db_key(&pin("123456"), &[1; 16], &FAST, None).unwrap();
        let same = derive_db_key(&pin("123456"), &[1; 16], &FAST, None).unwrap();
        assert!(base.ct_eq(&same));
        let others = [
            derive_db_key(&pin("123457"), &[1; 16], &FAST, None).unwrap(),
            derive_db_key(&pin("123456"), &[2; 16], &FAST, None).unwrap(),
            derive_db_key(
                &pin("123456"),
                &[1; 16],
                &KdfParams { t_cost: 2, ..FAST },
                None,
            )
            .unwrap(),
            derive_db_key(
                &pin("123456"),
                &[1; 16],
                &FAST,
                Some(&PlatformSecret::new([0; 32])),
            )
            .unwrap(),
        ];
        for o in &others {
            assert!(!base.ct_eq(o));
        }
    }

    #[test]
    fn literal_is_raw_key_hex() {
        let k = derive_db_key(&pin("123456"), &[1; 16], &FAST, None).unwrap();
        let lit = k.sqlcipher_literal();
        let hex: String = k.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(*lit, format!("x'{hex}'"));
    }

    fn h(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sha256(label: &str) -> [u8; 32] {
        use sha2::Digest;
        Sha256::digest(label.as_bytes()).into()
    }

    /// `vectors/ward-v1-store.json`: regenerate with
    /// `WARD_WRITE_VECTORS=1 cargo test -p ward-sdk --lib vectors`.
    #[test]
    fn vectors() {
        let cases = [
            (
                "493817",
                "ward/v1/store vector 1 salt",
                None,
                KdfParams::DEFAULT,
            ),
            (
                "493817",
                "ward/v1/store vector 2 salt",
                Some("ward/v1/store vector 2 platform secret"),
                KdfParams::DEFAULT,
            ),
            (
                "correct horse battery staple",
                "ward/v1/store vector 3 salt",
                None,
                KdfParams {
                    m_cost_kib: 8 * 1024,
                    t_cost: 1,
                    p_cost: 1,
                },
            ),
        ];
        let mut out = Vec::new();
        let mut slot = None;
        for (i, (pin_str, salt_label, ps_label, params)) in cases.into_iter().enumerate() {
            let mut salt = [0u8; SALT_BYTES];
            salt.copy_from_slice(&sha256(salt_label)[..SALT_BYTES]);
            let ps = ps_label.map(|l| PlatformSecret::new(sha256(l)));
            let a = argon2id(&pin(pin_str), &salt, &params).unwrap();
            let key = mix(&a, ps.as_ref()).unwrap();
            let whole = derive_db_key(&pin(pin_str), &salt, &params, ps.as_ref()).unwrap();
            assert!(key.ct_eq(&whole));
            if i == 2 {
                // The slot vector wraps the key of the cheapest case.
                slot = Some(crate::store::platform::tests::vector(&key, salt, params, i));
            }
            out.push(serde_json::json!({
                "pin": pin_str,
                "pin_utf8": h(pin_str.as_bytes()),
                "salt_label": salt_label,
                "salt": h(&salt),
                "argon2id": {
                    "version": 19,
                    "m_cost_kib": params.m_cost_kib,
                    "t_cost": params.t_cost,
                    "p_cost": params.p_cost,
                    "output_len": 32,
                },
                "platform_secret_label": ps_label,
                "platform_secret": ps.as_ref().map(|s| h(s.as_bytes())),
                "argon2id_output": h(&*a),
                "hkdf_ikm": match &ps {
                    Some(s) => format!("{}{}", h(&*a), h(s.as_bytes())),
                    None => h(&*a),
                },
                "db_key": h(key.as_bytes()),
                "sqlcipher_key_pragma": format!("PRAGMA key = \"{}\";", &*key.sqlcipher_literal()),
            }));
        }
        let doc = serde_json::json!({
            "description": "Ward device store: PIN -> database key. a = Argon2id v1.3(password = PIN as UTF-8, salt, m, t, p, no secret, no associated data, 32 bytes); ikm = a, or a || platform_secret (32 bytes) when one is used; db_key = HKDF-SHA256(salt = \"ward/v1/store\", ikm, info = \"ward/v1/store/db-key\", L = 32); SQLCipher 4 takes db_key as a raw key. salt = the first 16 bytes of SHA-256(salt_label); platform_secret = SHA-256(platform_secret_label).",
            "version": 1,
            "hkdf_salt": String::from_utf8_lossy(DB_KEY_SALT),
            "hkdf_info": String::from_utf8_lossy(DB_KEY_INFO),
            "cases": out,
            "platform_slot": slot,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/ward-v1-store.json");
        if std::env::var_os("WARD_WRITE_VECTORS").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            committed, text,
            "vectors/ward-v1-store.json differs from the derivation"
        );
    }

    #[test]
    fn params_are_bounded() {
        assert!(KdfParams::DEFAULT.validate().is_ok());
        assert!(
            KdfParams {
                m_cost_kib: 1024,
                ..FAST
            }
            .validate()
            .is_err()
        );
        assert!(
            KdfParams {
                m_cost_kib: 1024 * 1024 + 1,
                ..FAST
            }
            .validate()
            .is_err()
        );
        assert!(KdfParams { t_cost: 0, ..FAST }.validate().is_err());
        assert!(KdfParams { t_cost: 65, ..FAST }.validate().is_err());
        assert!(KdfParams { p_cost: 0, ..FAST }.validate().is_err());
        assert!(KdfParams { p_cost: 17, ..FAST }.validate().is_err());
    }
}
