//! Ward's key types.
//!
//! Four kinds of key pair, each its own type so that one cannot be used where
//! another is meant:
//!
//! | type | algorithm | held by |
//! |---|---|---|
//! | [`OrgRootKey`] | Ed25519 | the organisation's admin, offline |
//! | [`UserEncryptionKey`] | X-Wing (X25519 + ML-KEM-768) | every device of a user (granted to it) |
//! | [`DeviceSigningKey`] | Ed25519 | one device |
//! | [`DeviceEncryptionKey`] | X-Wing (X25519 + ML-KEM-768) | one device |
//!
//! plus [`DelegationKey`] (Ed25519, one-time, handed out with an invite) and
//! [`ResourceKey`] (32 symmetric bytes per message or file).
//!
//! Secrets zeroize on drop, print only their public half through `Debug`, and
//! leave the process only through an explicit `export_secret`.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::KeyError;
use crate::labels::{HASH_KEY_ID, framed_hash};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Ed25519 public key that has been checked to be a valid point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SigningPublicKey([u8; 32]);

impl SigningPublicKey {
    /// Parses 32 bytes, rejecting non-canonical and small-order (weak) points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidLength)?;
        let vk = VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::InvalidPublicKey)?;
        // Decompression accepts a few non-canonical encodings (y >= p, or a
        // "negative" zero x); RFC 8032 §5.1.3 rejects them, and so do we, so
        // that every implementation agrees on which logs verify.
        if vk.is_weak() || vk.to_edwards().compress().to_bytes() != arr {
            return Err(KeyError::InvalidPublicKey);
        }
        Ok(Self(arr))
    }

    /// The 32 encoded bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Strict Ed25519 verification of `sig` over `msg`.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        match VerifyingKey::from_bytes(&self.0) {
            Ok(vk) => vk.verify_strict(msg, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

impl fmt::Debug for SigningPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningPublicKey({})", hex(&self.0))
    }
}

/// Bytes of an X-Wing encapsulation (public) key: ML-KEM-768's 1184, then X25519's 32.
pub const ENCRYPTION_PUBLIC_KEY_BYTES: usize = x_wing::ENCAPSULATION_KEY_SIZE;
/// Bytes of an X-Wing decapsulation (private) key: a 32-byte seed.
pub const ENCRYPTION_SECRET_KEY_BYTES: usize = x_wing::DECAPSULATION_KEY_SIZE;
/// Offset of the X25519 part in an encryption public key.
const X25519_OFFSET: usize = ENCRYPTION_PUBLIC_KEY_BYTES - 32;

/// The 32-byte id of an encryption public key: `H(HASH_KEY_ID, pk)`. Wrapped
/// keys and grants name their keys by id, not by their 1216 bytes (§5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 32]);

impl KeyId {
    /// Parses 32 bytes (any value: an id is only ever compared).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| KeyError::InvalidLength)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex(&self.0))
    }
}

/// An X-Wing encapsulation key (X25519 + ML-KEM-768, draft-connolly-cfrg-xwing-kem-06),
/// checked when parsed: a value of this type can always be wrapped to. Its id
/// is computed once, since every wrap, grant and lookup uses it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EncryptionPublicKey {
    bytes: [u8; ENCRYPTION_PUBLIC_KEY_BYTES],
    id: KeyId,
}

impl EncryptionPublicKey {
    /// Parses 1216 bytes (SECURITY.md §3.5), rejecting, in this order: another
    /// length (`InvalidLength`); an ML-KEM-768 part that fails FIPS 203's
    /// §7.2 modulus check (`InvalidPublicKey`); an X25519 part of low order
    /// (`InvalidPublicKey`), to which nothing could be wrapped securely.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; ENCRYPTION_PUBLIC_KEY_BYTES] =
            bytes.try_into().map_err(|_| KeyError::InvalidLength)?;
        if x_wing::EncapsulationKey::try_from(bytes).is_err() {
            return Err(KeyError::InvalidPublicKey);
        }
        let key = Self::from_checked(arr);
        if key.x25519_is_low_order() {
            return Err(KeyError::InvalidPublicKey);
        }
        Ok(key)
    }

    fn from_checked(bytes: [u8; ENCRYPTION_PUBLIC_KEY_BYTES]) -> Self {
        let id = KeyId(framed_hash(HASH_KEY_ID, &[&bytes]));
        Self { bytes, id }
    }

    /// Builds a key from bytes without any check, so tests can show that
    /// verifiers refuse bad keys. Never in production builds.
    #[cfg(any(test, feature = "testkit"))]
    #[doc(hidden)]
    pub fn from_bytes_unchecked(bytes: [u8; ENCRYPTION_PUBLIC_KEY_BYTES]) -> Self {
        Self::from_checked(bytes)
    }

    /// The 1216 encoded bytes (ML-KEM-768 encapsulation key, then X25519 u-coordinate).
    pub fn as_bytes(&self) -> &[u8; ENCRYPTION_PUBLIC_KEY_BYTES] {
        &self.bytes
    }

    /// This key's id, as named in wrapped keys and grants.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Whether the X25519 part has small order: never for a key that
    /// [`Self::from_bytes`] accepted (kept from v1's API for callers that
    /// checked it themselves).
    pub fn is_low_order(&self) -> bool {
        self.x25519_is_low_order()
    }

    /// Whether the X25519 part has small order. A clamped scalar is a
    /// multiple of the cofactor 8, so any point of order dividing 8 maps to
    /// zero whatever the scalar.
    fn x25519_is_low_order(&self) -> bool {
        use subtle::ConstantTimeEq;
        let mut u = [0u8; 32];
        u.copy_from_slice(&self.bytes[X25519_OFFSET..]);
        bool::from(x25519_dalek::x25519([1u8; 32], u).ct_eq(&[0u8; 32]))
    }

    pub(crate) fn xwing(&self) -> Result<x_wing::EncapsulationKey, KeyError> {
        x_wing::EncapsulationKey::try_from(&self.bytes[..]).map_err(|_| KeyError::InvalidPublicKey)
    }
}

impl fmt::Debug for EncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 1216 bytes would drown a log line: the id names the key.
        write!(f, "EncryptionPublicKey(id: {})", hex(self.id.as_bytes()))
    }
}

/// An Ed25519 signing key, shared by the signing key types below.
#[derive(ZeroizeOnDrop)]
struct Ed25519Secret(SigningKey);

impl Ed25519Secret {
    fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self(SigningKey::generate(rng))
    }

    fn from_seed(seed: &[u8]) -> Result<Self, KeyError> {
        let mut arr: [u8; 32] = seed.try_into().map_err(|_| KeyError::InvalidLength)?;
        let key = SigningKey::from_bytes(&arr);
        arr.zeroize();
        Ok(Self(key))
    }

    fn public(&self) -> SigningPublicKey {
        SigningPublicKey(self.0.verifying_key().to_bytes())
    }

    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    fn export(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }
}

macro_rules! signing_key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(Ed25519Secret);

        impl $name {
            /// A fresh key from `rng`.
            pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
                Self(Ed25519Secret::generate(rng))
            }

            /// Restores a key from the 32-byte seed that [`Self::export_secret`] gave.
            pub fn import_secret(seed: &[u8]) -> Result<Self, KeyError> {
                Ed25519Secret::from_seed(seed).map(Self)
            }

            /// The 32-byte secret seed, for persistence in an encrypted store only.
            pub fn export_secret(&self) -> Zeroizing<[u8; 32]> {
                self.0.export()
            }

            /// The public half.
            pub fn public_key(&self) -> SigningPublicKey {
                self.0.public()
            }

            pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
                self.0.sign(msg)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(public: {})"), hex(self.public_key().as_bytes()))
            }
        }
    };
}

signing_key_type!(
    /// The organisation root: signs invites and may revoke any device.
    OrgRootKey
);
signing_key_type!(
    /// A device's signing key. Its public key is the device id.
    DeviceSigningKey
);
signing_key_type!(
    /// The one-time key an invite delegates: it signs the user creation.
    DelegationKey
);
signing_key_type!(
    /// The keyserver's directory key: signs the key-transparency epochs
    /// (SECURITY.md §18.3), certified by the organisation root.
    DirectoryKey
);
signing_key_type!(
    /// An auditor's witness key: countersigns epochs it verified (§18.5).
    WitnessKey
);
signing_key_type!(
    /// A relay's service key: it authenticates the relay to the keyserver's
    /// relay link (SECURITY.md §10.8) and signs nothing else.
    RelayServiceKey
);

/// An X-Wing decapsulation key, shared by the encryption key types below:
/// its 32-byte seed (the only form X-Wing keys are stored or granted in),
/// the crate's key (which refuses a non-contributory X25519 part, §6.2) and
/// the public key, computed once since every unwrap needs its id. The seed
/// and the crate's key zeroize on drop.
struct XWingSecret {
    seed: Zeroizing<[u8; ENCRYPTION_SECRET_KEY_BYTES]>,
    key: x_wing::DecapsulationKeyRejectNonContrib,
    public: EncryptionPublicKey,
}

impl XWingSecret {
    fn from_seed(seed: Zeroizing<[u8; ENCRYPTION_SECRET_KEY_BYTES]>) -> Self {
        use x_wing::{Decapsulator, KeyExport, KeyInit};
        // By reference: no unzeroized copy of the seed is left on the stack.
        let key = x_wing::DecapsulationKeyRejectNonContrib::new((&*seed).into());
        // Derived from a seed, the key is well formed: no check needed.
        let mut pk = [0u8; ENCRYPTION_PUBLIC_KEY_BYTES];
        pk.copy_from_slice(&key.encapsulation_key().to_bytes());
        let public = EncryptionPublicKey::from_checked(pk);
        Self { seed, key, public }
    }

    fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; ENCRYPTION_SECRET_KEY_BYTES]);
        rng.fill_bytes(&mut *seed);
        Self::from_seed(seed)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let seed: [u8; ENCRYPTION_SECRET_KEY_BYTES] =
            bytes.try_into().map_err(|_| KeyError::InvalidLength)?;
        Ok(Self::from_seed(Zeroizing::new(seed)))
    }
}

macro_rules! encryption_key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(XWingSecret);

        impl $name {
            /// A fresh key from `rng`: 32 bytes, the X-Wing seed.
            pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
                Self(XWingSecret::generate(rng))
            }

            /// Restores a key from the 32-byte seed that [`Self::export_secret`] gave.
            pub fn import_secret(bytes: &[u8]) -> Result<Self, KeyError> {
                XWingSecret::from_bytes(bytes).map(Self)
            }

            /// The 32-byte X-Wing seed, for persistence in an encrypted store
            /// (or a grant) only.
            pub fn export_secret(&self) -> Zeroizing<[u8; ENCRYPTION_SECRET_KEY_BYTES]> {
                Zeroizing::new(*self.0.seed)
            }

            /// The public half.
            pub fn public_key(&self) -> EncryptionPublicKey {
                self.0.public
            }

            pub(crate) fn secret(&self) -> &x_wing::DecapsulationKeyRejectNonContrib {
                &self.0.key
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(public id: {})"), hex(self.0.public.id().as_bytes()))
            }
        }
    };
}

encryption_key_type!(
    /// A user's encryption key: resource keys are wrapped to it. Every device
    /// of the user holds it, granted through a [`crate::wrap::grant_user_key`].
    UserEncryptionKey
);
encryption_key_type!(
    /// A device's encryption key: the user key is granted to it.
    DeviceEncryptionKey
);
encryption_key_type!(
    /// One epoch's room key (SECURITY.md §17.4): messages to the room wrap
    /// their resource key to its public half, which the room's log commits
    /// to; its private half is wrapped to each member's user key.
    RoomEpochKey
);

/// The 32-byte symmetric key of one resource (a message, a file).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ResourceKey([u8; 32]);

impl ResourceKey {
    /// A fresh key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Self(k)
    }

    /// Restores a key from 32 bytes.
    pub fn import_secret(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidLength)?;
        Ok(Self(arr))
    }

    /// The 32 secret bytes, for persistence in an encrypted store only.
    pub fn export_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResourceKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaks(debug: &str, secret: &[u8]) -> bool {
        let hex_form = hex(secret);
        let dec_form = format!("{secret:?}");
        let inner = dec_form.trim_start_matches('[').trim_end_matches(']');
        debug.contains(&hex_form) || debug.contains(inner)
    }

    #[test]
    fn no_secret_type_debug_shows_its_bytes() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        assert!(!leaks(&format!("{root:?}"), &*root.export_secret()));
        let dev = DeviceSigningKey::generate(&mut rng);
        assert!(!leaks(&format!("{dev:?}"), &*dev.export_secret()));
        let del = DelegationKey::generate(&mut rng);
        assert!(!leaks(&format!("{del:?}"), &*del.export_secret()));
        let user = UserEncryptionKey::generate(&mut rng);
        assert!(!leaks(&format!("{user:?}"), &*user.export_secret()));
        let denc = DeviceEncryptionKey::generate(&mut rng);
        assert!(!leaks(&format!("{denc:?}"), &*denc.export_secret()));
        let rk = ResourceKey::generate(&mut rng);
        assert!(!leaks(&format!("{rk:?}"), &*rk.export_secret()));
        // The public half is shown, so the check above is meaningful.
        assert!(format!("{root:?}").contains(&hex(root.public_key().as_bytes())));
    }

    #[test]
    fn export_import_round_trips() {
        let mut rng = rand::rng();
        let dev = DeviceSigningKey::generate(&mut rng);
        let back = DeviceSigningKey::import_secret(&*dev.export_secret()).unwrap();
        assert_eq!(dev.public_key(), back.public_key());
        let user = UserEncryptionKey::generate(&mut rng);
        let back = UserEncryptionKey::import_secret(&*user.export_secret()).unwrap();
        assert_eq!(user.public_key(), back.public_key());
        assert_eq!(
            UserEncryptionKey::import_secret(&[0; 31]).err(),
            Some(KeyError::InvalidLength)
        );
    }

    #[test]
    fn encryption_keys_are_checked_when_parsed() {
        let mut rng = rand::rng();
        let good = UserEncryptionKey::generate(&mut rng).public_key();
        assert_eq!(EncryptionPublicKey::from_bytes(good.as_bytes()), Ok(good));
        let parse = |b: &[u8]| EncryptionPublicKey::from_bytes(b).err();
        assert_eq!(
            parse(&good.as_bytes()[..1215]),
            Some(KeyError::InvalidLength)
        );
        // A v1 (X25519-only) key is not a v2 key.
        assert_eq!(parse(&[9u8; 32]), Some(KeyError::InvalidLength));
        // ML-KEM's first coefficient set to 4095 >= q = 3329: FIPS 203 §7.2.
        let mut bad = *good.as_bytes();
        bad[0] = 0xff;
        bad[1] |= 0x0f;
        assert_eq!(parse(&bad), Some(KeyError::InvalidPublicKey));
        // The X25519 part of low order: u = 0, u = 1.
        for u0 in [0u8, 1] {
            let mut low = *good.as_bytes();
            low[1184..].fill(0);
            low[1184] = u0;
            assert_eq!(parse(&low), Some(KeyError::InvalidPublicKey));
        }
        // Ids differ with the key, and are what Debug shows.
        let other = DeviceEncryptionKey::generate(&mut rng).public_key();
        assert_ne!(good.id(), other.id());
        assert!(format!("{good:?}").contains(&hex(good.id().as_bytes())));
    }

    #[test]
    fn non_canonical_signing_keys_are_refused() {
        // Encodings of y = p + k (k small) decompress in dalek to the point
        // with y = k; find the ones that are valid, non-weak points.
        let mut found = 0;
        for k in 0u8..19 {
            for sign in [0u8, 0x80] {
                let mut enc = [0xffu8; 32];
                enc[0] = 0xed + k;
                enc[31] = 0x7f | sign;
                if let Ok(vk) = VerifyingKey::from_bytes(&enc)
                    && !vk.is_weak()
                {
                    found += 1;
                    assert_eq!(
                        SigningPublicKey::from_bytes(&enc),
                        Err(KeyError::InvalidPublicKey)
                    );
                }
            }
        }
        assert!(
            found > 0,
            "dalek accepted no non-canonical encoding to test"
        );
        let mut rng = rand::rng();
        let good = DeviceSigningKey::generate(&mut rng).public_key();
        assert_eq!(SigningPublicKey::from_bytes(good.as_bytes()), Ok(good));
    }

    #[test]
    fn weak_signing_keys_are_refused() {
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            SigningPublicKey::from_bytes(&identity),
            Err(KeyError::InvalidPublicKey)
        );
    }
}
