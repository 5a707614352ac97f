//! The organisation root secret at rest: a 144-byte file sealed under a
//! passphrase (SECURITY.md §10.7.1, vectors `vectors/ward-v2-root-store.json`).
//!
//! ```text
//! a   = Argon2id v1.3(password = passphrase as UTF-8, salt, m, t, p, tag length 32)
//! key = HKDF-SHA256(salt = none, ikm = a, info = "ward/v2/root-store/aead-key", L = 32)
//! ct  = XChaCha20-Poly1305(key, nonce, plaintext = the root's 32-byte Ed25519 seed,
//!                          aad = header, the file's first 96 bytes)
//! file = header || ct                                                   (96 + 48 bytes)
//! ```
//!
//! The header carries the root's public key in clear, so a tool can name
//! the organisation (and `ward up` can start) without the passphrase, and
//! it is authenticated as associated data: a rewritten public key or KDF
//! parameter makes the file fail to open, exactly like a wrong passphrase.
//! Pure: the caller passes the randomness and does the file I/O.

use core::fmt;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::{Zeroize as _, Zeroizing};

use crate::keys::{OrgRootKey, SigningPublicKey};
use crate::labels::ROOT_STORE_AEAD_KEY;

/// The file's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"WARDROOT";
/// The only format version.
pub const VERSION: u16 = 1;
/// KDF identifier: Argon2id v1.3, then HKDF-SHA256.
pub const KDF_ARGON2ID: u8 = 1;
/// AEAD identifier: XChaCha20-Poly1305.
pub const AEAD_XCHACHA20POLY1305: u8 = 1;
/// Bytes of the authenticated header.
pub const HEADER_BYTES: usize = 96;
/// Bytes of the whole file.
pub const FILE_BYTES: usize = HEADER_BYTES + 32 + TAG_BYTES;
/// Bytes of Argon2 salt.
pub const SALT_BYTES: usize = 16;
/// Bytes of XChaCha20 nonce.
pub const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Shortest passphrase, in characters (Unicode scalar values).
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Longest passphrase, in bytes.
pub const MAX_PASSPHRASE_BYTES: usize = 1024;

/// Why a root file could not be written or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootStoreError {
    /// Not a Ward root file (magic, or length).
    #[error("not a Ward encrypted root file ({0})")]
    NotARootFile(&'static str),
    /// A version or algorithm this build does not know.
    #[error("unsupported root file: {0}")]
    Unsupported(&'static str),
    /// KDF parameters outside the accepted range.
    #[error("root file KDF parameters refused: {0}")]
    BadParams(&'static str),
    /// The AEAD tag did not verify: a wrong passphrase, or an altered file.
    #[error("wrong passphrase (or the root file was altered)")]
    WrongPassphrase,
    /// The passphrase is too short or too long.
    #[error("passphrase refused: {0}")]
    WeakPassphrase(&'static str),
    /// The decrypted seed is not the key the header names (never happens
    /// unless the file was written by a broken tool).
    #[error("the root file's secret does not match its public key")]
    Mismatch,
    /// Argon2 failed (e.g. could not allocate its memory).
    #[error("key derivation failed")]
    Kdf,
}

/// A root passphrase. Zeroized on drop, never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Checks the length: at least [`MIN_PASSPHRASE_CHARS`] characters, at
    /// most [`MAX_PASSPHRASE_BYTES`] bytes; used as given (no normalisation).
    pub fn new(text: Zeroizing<String>) -> Result<Self, RootStoreError> {
        if text.chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(RootStoreError::WeakPassphrase(
                "at least 12 characters (a few words are easier to type than symbols)",
            ));
        }
        if text.len() > MAX_PASSPHRASE_BYTES {
            return Err(RootStoreError::WeakPassphrase("at most 1024 bytes"));
        }
        Ok(Self(text))
    }

    /// A passphrase as typed, without the length check: opening a file
    /// never refuses a passphrase for its length (the AEAD tag decides).
    pub fn unchecked(text: Zeroizing<String>) -> Self {
        Self(text)
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Argon2id costs, stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// 256 MiB, 3 passes, 1 lane: four times the device store's memory
    /// (§14.2). The root is unlocked a few times a year, by an admin at a
    /// desk, so a second per unlock buys a harder offline guess.
    pub const DEFAULT: Self = Self {
        m_cost_kib: 256 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// The accepted range: m 8 MiB..=1 GiB (and 8 KiB per lane), t 1..=64,
    /// p 1..=16. The upper bounds also cap what a tampered file can make
    /// the admin's machine allocate before the tag is checked.
    pub fn validate(&self) -> Result<(), RootStoreError> {
        if self.m_cost_kib < 8 * 1024 {
            return Err(RootStoreError::BadParams("memory below 8 MiB"));
        }
        if self.m_cost_kib > 1024 * 1024 {
            return Err(RootStoreError::BadParams("memory above 1 GiB"));
        }
        if !(1..=64).contains(&self.t_cost) {
            return Err(RootStoreError::BadParams("passes outside 1..=64"));
        }
        if !(1..=16).contains(&self.p_cost) {
            return Err(RootStoreError::BadParams("lanes outside 1..=16"));
        }
        if self.m_cost_kib < 8 * self.p_cost {
            return Err(RootStoreError::BadParams("memory below 8 KiB per lane"));
        }
        Ok(())
    }
}

/// What [`seal_with`] draws from the RNG, in this order: salt, then nonce.
pub struct SealRandom {
    /// Argon2 salt.
    pub salt: [u8; SALT_BYTES],
    /// XChaCha20 nonce.
    pub nonce: [u8; NONCE_BYTES],
}

/// The header fields, parsed (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Argon2id costs.
    pub params: KdfParams,
    /// Argon2 salt.
    pub salt: [u8; SALT_BYTES],
    /// XChaCha20 nonce.
    pub nonce: [u8; NONCE_BYTES],
    /// The root public key the file holds the secret of (unauthenticated
    /// until [`open`] succeeds).
    pub public_key: SigningPublicKey,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_be_bytes());
        h[10] = KDF_ARGON2ID;
        h[11] = AEAD_XCHACHA20POLY1305;
        h[12..16].copy_from_slice(&self.params.m_cost_kib.to_be_bytes());
        h[16..20].copy_from_slice(&self.params.t_cost.to_be_bytes());
        h[20..24].copy_from_slice(&self.params.p_cost.to_be_bytes());
        h[24..40].copy_from_slice(&self.salt);
        h[40..64].copy_from_slice(&self.nonce);
        h[64..96].copy_from_slice(self.public_key.as_bytes());
        h
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

/// Parses and checks the header of `file`, in this order: length, magic,
/// version, KDF and AEAD ids, KDF parameters, public key.
pub fn read_header(file: &[u8]) -> Result<Header, RootStoreError> {
    if file.len() < 8 || &file[0..8] != MAGIC {
        return Err(RootStoreError::NotARootFile("no WARDROOT magic"));
    }
    if file.len() != FILE_BYTES {
        return Err(RootStoreError::NotARootFile("not 144 bytes"));
    }
    if u16::from_be_bytes([file[8], file[9]]) != VERSION {
        return Err(RootStoreError::Unsupported("format version"));
    }
    if file[10] != KDF_ARGON2ID {
        return Err(RootStoreError::Unsupported("KDF identifier"));
    }
    if file[11] != AEAD_XCHACHA20POLY1305 {
        return Err(RootStoreError::Unsupported("AEAD identifier"));
    }
    let params = KdfParams {
        m_cost_kib: be32(file, 12),
        t_cost: be32(file, 16),
        p_cost: be32(file, 20),
    };
    params.validate()?;
    let mut salt = [0u8; SALT_BYTES];
    salt.copy_from_slice(&file[24..40]);
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&file[40..64]);
    let public_key = SigningPublicKey::from_bytes(&file[64..96])
        .map_err(|_| RootStoreError::NotARootFile("invalid public key"))?;
    Ok(Header {
        params,
        salt,
        nonce,
        public_key,
    })
}

/// Argon2id then HKDF: the AEAD key.
fn derive_key(
    passphrase: &Passphrase,
    salt: &[u8; SALT_BYTES],
    params: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>, RootStoreError> {
    params.validate()?;
    let a2 = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|_| RootStoreError::Kdf)?;
    let blocks_len = a2.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, a2);
    let mut blocks = Vec::new();
    blocks
        .try_reserve_exact(blocks_len)
        .map_err(|_| RootStoreError::Kdf)?;
    blocks.resize(blocks_len, Block::default());
    let mut a = Zeroizing::new([0u8; 32]);
    let result =
        argon.hash_password_into_with_memory(passphrase.as_bytes(), salt, &mut *a, &mut blocks);
    // The memory holds values derived from the passphrase: wipe it first.
    for b in blocks.iter_mut() {
        b.zeroize();
    }
    drop(blocks);
    result.map_err(|_| RootStoreError::Kdf)?;
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, &*a)
        .expand(ROOT_STORE_AEAD_KEY, &mut *key)
        .map_err(|_| RootStoreError::Kdf)?;
    Ok(key)
}

/// Seals `root` under `passphrase` with fresh salt and nonce from `rng`.
pub fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    root: &OrgRootKey,
    passphrase: &Passphrase,
    params: KdfParams,
) -> Result<[u8; FILE_BYTES], RootStoreError> {
    let mut random = SealRandom {
        salt: [0; SALT_BYTES],
        nonce: [0; NONCE_BYTES],
    };
    rng.fill_bytes(&mut random.salt);
    rng.fill_bytes(&mut random.nonce);
    seal_with(root, passphrase, params, &random)
}

/// [`seal`] with the salt and nonce given (vectors, tests).
pub fn seal_with(
    root: &OrgRootKey,
    passphrase: &Passphrase,
    params: KdfParams,
    random: &SealRandom,
) -> Result<[u8; FILE_BYTES], RootStoreError> {
    let header = Header {
        params,
        salt: random.salt,
        nonce: random.nonce,
        public_key: root.public_key(),
    }
    .encode();
    let key = derive_key(passphrase, &random.salt, &params)?;
    let mut seed = root.export_secret();
    let tag = XChaCha20Poly1305::new(&(*key).into())
        .encrypt_inout_detached(&random.nonce.into(), &header, (&mut seed[..]).into())
        .map_err(|_| RootStoreError::Kdf)?;
    // `seed` now holds ciphertext; it is zeroized on drop all the same.
    let mut file = [0u8; FILE_BYTES];
    file[..HEADER_BYTES].copy_from_slice(&header);
    file[HEADER_BYTES..HEADER_BYTES + 32].copy_from_slice(&seed[..]);
    file[HEADER_BYTES + 32..].copy_from_slice(&tag);
    Ok(file)
}

/// Opens a root file: header checks ([`read_header`]), then the key
/// derivation, then the tag (`WrongPassphrase`), then the seed against the
/// header's public key (`Mismatch`).
pub fn open(file: &[u8], passphrase: &Passphrase) -> Result<OrgRootKey, RootStoreError> {
    let header = read_header(file)?;
    let key = derive_key(passphrase, &header.salt, &header.params)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&file[HEADER_BYTES..HEADER_BYTES + 32]);
    let mut tag = [0u8; TAG_BYTES];
    tag.copy_from_slice(&file[HEADER_BYTES + 32..]);
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt_inout_detached(
            &header.nonce.into(),
            &file[..HEADER_BYTES],
            (&mut seed[..]).into(),
            &tag.into(),
        )
        .map_err(|_| RootStoreError::WrongPassphrase)?;
    let root = OrgRootKey::import_secret(&seed[..]).map_err(|_| RootStoreError::Mismatch)?;
    if root.public_key() != header.public_key {
        return Err(RootStoreError::Mismatch);
    }
    Ok(root)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// The smallest accepted costs: tests and vectors stay fast.
    const FAST: KdfParams = KdfParams {
        m_cost_kib: 8 * 1024,
        t_cost: 1,
        p_cost: 1,
    };

    fn pass(s: &str) -> Passphrase {
        Passphrase::unchecked(Zeroizing::new(s.to_owned()))
    }

    fn sha256(label: &str) -> [u8; 32] {
        Sha256::digest(label.as_bytes()).into()
    }

    fn fixed_random(label: &str) -> SealRandom {
        let mut salt = [0u8; SALT_BYTES];
        salt.copy_from_slice(&sha256(&format!("{label} salt"))[..SALT_BYTES]);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&sha256(&format!("{label} nonce"))[..NONCE_BYTES]);
        SealRandom { salt, nonce }
    }

    #[test]
    fn seals_and_opens_and_refuses_a_wrong_passphrase() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        let file = seal(&mut rng, &root, &pass("correct horse battery"), FAST).unwrap();
        let opened = open(&file, &pass("correct horse battery")).unwrap();
        assert_eq!(opened.public_key(), root.public_key());
        assert_eq!(read_header(&file).unwrap().public_key, root.public_key());
        assert!(matches!(
            open(&file, &pass("correct horse battery ")),
            Err(RootStoreError::WrongPassphrase)
        ));
        // The seed is not in the file.
        assert!(!file.windows(32).any(|w| w == &root.export_secret()[..]));
    }

    #[test]
    fn every_header_byte_is_authenticated() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        let p = pass("correct horse battery");
        let file = seal(&mut rng, &root, &p, FAST).unwrap();
        for i in 0..FILE_BYTES {
            let mut bad = file;
            bad[i] ^= 0x01;
            assert!(open(&bad, &p).is_err(), "byte {i} flipped still opens");
        }
        // Another organisation's public key in the header: the tag fails.
        let mut other = file;
        other[64..96].copy_from_slice(OrgRootKey::generate(&mut rng).public_key().as_bytes());
        assert!(matches!(
            open(&other, &p),
            Err(RootStoreError::WrongPassphrase)
        ));
    }

    #[test]
    fn passphrases_are_bounded_and_never_printed() {
        assert!(matches!(
            Passphrase::new(Zeroizing::new("short pass".into())),
            Err(RootStoreError::WeakPassphrase(_))
        ));
        let ok = Passphrase::new(Zeroizing::new("twelve chars".into())).unwrap();
        assert!(!format!("{ok:?}").contains("twelve"));
        assert!(Passphrase::new(Zeroizing::new("x".repeat(1025))).is_err());
        assert!(KdfParams::DEFAULT.validate().is_ok());
        for bad in [
            KdfParams {
                m_cost_kib: 8 * 1024 - 1,
                ..FAST
            },
            KdfParams {
                m_cost_kib: 1024 * 1024 + 1,
                ..FAST
            },
            KdfParams { t_cost: 0, ..FAST },
            KdfParams { t_cost: 65, ..FAST },
            KdfParams { p_cost: 17, ..FAST },
        ] {
            assert!(matches!(bad.validate(), Err(RootStoreError::BadParams(_))));
        }
    }

    fn h(b: &[u8]) -> String {
        hex::encode(b)
    }

    /// `vectors/ward-v2-root-store.json`: regenerate with
    /// `WARD_WRITE_VECTORS=1 cargo test -p ward-core --lib root_store`.
    #[test]
    fn vectors() {
        let root_label = "ward/v2/root-store vector root";
        let root = OrgRootKey::import_secret(&sha256(root_label)).unwrap();
        let passphrase = "correct horse battery staple";
        let random = fixed_random("ward/v2/root-store vector 1");
        let file = seal_with(&root, &pass(passphrase), FAST, &random).unwrap();
        assert_eq!(
            open(&file, &pass(passphrase)).unwrap().public_key(),
            root.public_key()
        );
        let key = derive_key(&pass(passphrase), &random.salt, &FAST).unwrap();
        let mut argon_out = [0u8; 32];
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(FAST.m_cost_kib, FAST.t_cost, FAST.p_cost, Some(32)).unwrap(),
        )
        .hash_password_into(passphrase.as_bytes(), &random.salt, &mut argon_out)
        .unwrap();

        // Files that MUST NOT open, with the error variant.
        let mut negatives = Vec::new();
        let mut case = |name: &str, bytes: Vec<u8>, with: &str, error: &str| {
            let got = open(&bytes, &pass(with)).err();
            let name_of = |e: &RootStoreError| match e {
                RootStoreError::NotARootFile(_) => "NotARootFile",
                RootStoreError::Unsupported(_) => "Unsupported",
                RootStoreError::BadParams(_) => "BadParams",
                RootStoreError::WrongPassphrase => "WrongPassphrase",
                RootStoreError::WeakPassphrase(_) => "WeakPassphrase",
                RootStoreError::Mismatch => "Mismatch",
                RootStoreError::Kdf => "Kdf",
            };
            assert_eq!(got.as_ref().map(name_of), Some(error), "{name}");
            negatives.push(serde_json::json!({
                "name": name,
                "file": h(&bytes),
                "passphrase": with,
                "error": format!("RootStoreError::{error}"),
            }));
        };
        case(
            "wrong_passphrase",
            file.to_vec(),
            "correct horse battery stapler",
            "WrongPassphrase",
        );
        let flip = |at: usize| {
            let mut f = file;
            f[at] ^= 0x01;
            f.to_vec()
        };
        case("magic", flip(0), passphrase, "NotARootFile");
        case(
            "truncated",
            file[..FILE_BYTES - 1].to_vec(),
            passphrase,
            "NotARootFile",
        );
        case("version_2", flip(9), passphrase, "Unsupported");
        case("kdf_id", flip(10), passphrase, "Unsupported");
        case("aead_id", flip(11), passphrase, "Unsupported");
        let mut huge = file;
        huge[12..16].copy_from_slice(&(2 * 1024 * 1024u32).to_be_bytes());
        case("memory_2_gib", huge.to_vec(), passphrase, "BadParams");
        case("salt_altered", flip(24), passphrase, "WrongPassphrase");
        case("nonce_altered", flip(40), passphrase, "WrongPassphrase");
        let mut other = file;
        other[64..96].copy_from_slice(
            OrgRootKey::import_secret(&sha256("ward/v2/root-store vector other root"))
                .unwrap()
                .public_key()
                .as_bytes(),
        );
        case(
            "public_key_replaced",
            other.to_vec(),
            passphrase,
            "WrongPassphrase",
        );
        case(
            "ciphertext_altered",
            flip(HEADER_BYTES),
            passphrase,
            "WrongPassphrase",
        );
        case(
            "tag_altered",
            flip(FILE_BYTES - 1),
            passphrase,
            "WrongPassphrase",
        );

        let doc = serde_json::json!({
            "description": "Ward organisation root at rest (SECURITY.md §10.7.1). header = \"WARDROOT\" || u16_be(1) || 0x01 (Argon2id v1.3) || 0x01 (XChaCha20-Poly1305) || u32_be(m KiB) || u32_be(t) || u32_be(p) || salt(16) || nonce(24) || root public key(32); a = Argon2id(password = passphrase as UTF-8, salt, m, t, p, no secret, no associated data, 32 bytes); key = HKDF-SHA256(no salt, ikm = a, info = label, L = 32); file = header || XChaCha20-Poly1305(key, nonce, plaintext = root seed, aad = header) (ciphertext 32 || tag 16). root_seed = SHA-256(root_seed_label); salt = first 16 bytes of SHA-256(salt_label); nonce = first 24 bytes of SHA-256(nonce_label).",
            "version": 1,
            "hkdf_info": String::from_utf8_lossy(ROOT_STORE_AEAD_KEY),
            "root_seed_label": root_label,
            "root_seed": h(&root.export_secret()[..]),
            "root_public_key": h(root.public_key().as_bytes()),
            "passphrase": passphrase,
            "argon2id": { "m_cost_kib": FAST.m_cost_kib, "t_cost": FAST.t_cost, "p_cost": FAST.p_cost },
            "salt_label": "ward/v2/root-store vector 1 salt",
            "salt": h(&random.salt),
            "nonce_label": "ward/v2/root-store vector 1 nonce",
            "nonce": h(&random.nonce),
            "argon2id_output": h(&argon_out),
            "aead_key": h(&key[..]),
            "header": h(&file[..HEADER_BYTES]),
            "file": h(&file),
            "negative": negatives,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../vectors/ward-v2-root-store.json"
        );
        if std::env::var_os("WARD_WRITE_VECTORS").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            committed, text,
            "vectors/ward-v2-root-store.json differs from the format"
        );
    }
}
