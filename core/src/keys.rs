//! Ward's key types.
//!
//! Four kinds of key pair, each its own type so that one cannot be used where
//! another is meant:
//!
//! | type | algorithm | held by |
//! |---|---|---|
//! | [`OrgRootKey`] | Ed25519 | the organisation's admin, offline |
//! | [`UserEncryptionKey`] | X25519 | every device of a user (granted to it) |
//! | [`DeviceSigningKey`] | Ed25519 | one device |
//! | [`DeviceEncryptionKey`] | X25519 | one device |
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

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EncryptionPublicKey([u8; 32]);

impl EncryptionPublicKey {
    /// Parses 32 bytes. Low-order points are caught when used: every DH
    /// result is checked to be non-zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidLength)?;
        Ok(Self(arr))
    }

    /// The 32 encoded bytes; also this key's id in wrapped keys and grants.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether the point has small order (the all-zero DH output for every
    /// secret). A clamped scalar is a multiple of the cofactor 8, so any
    /// point of order dividing 8 maps to zero.
    pub fn is_low_order(&self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(x25519_dalek::x25519([1u8; 32], self.0).ct_eq(&[0u8; 32]))
    }

    pub(crate) fn dalek(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Debug for EncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionPublicKey({})", hex(&self.0))
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

/// An X25519 static secret, shared by the encryption key types below. The
/// public key is computed once: every unwrap needs it (BENCHMARKS.md).
/// `StaticSecret` zeroizes itself on drop.
struct X25519Secret(x25519_dalek::StaticSecret, EncryptionPublicKey);

impl X25519Secret {
    fn new(secret: x25519_dalek::StaticSecret) -> Self {
        let public = EncryptionPublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self(secret, public)
    }

    fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::new(x25519_dalek::StaticSecret::random_from_rng(rng))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidLength)?;
        let s = x25519_dalek::StaticSecret::from(arr);
        arr.zeroize();
        Ok(Self::new(s))
    }

    fn public(&self) -> EncryptionPublicKey {
        self.1
    }
}

macro_rules! encryption_key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(X25519Secret);

        impl $name {
            /// A fresh key from `rng`.
            pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
                Self(X25519Secret::generate(rng))
            }

            /// Restores a key from the 32 bytes that [`Self::export_secret`] gave.
            pub fn import_secret(bytes: &[u8]) -> Result<Self, KeyError> {
                X25519Secret::from_bytes(bytes).map(Self)
            }

            /// The 32 secret bytes, for persistence in an encrypted store only.
            pub fn export_secret(&self) -> Zeroizing<[u8; 32]> {
                Zeroizing::new(self.0.0.to_bytes())
            }

            /// The public half.
            pub fn public_key(&self) -> EncryptionPublicKey {
                self.0.public()
            }

            pub(crate) fn secret(&self) -> &x25519_dalek::StaticSecret {
                &self.0.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(public: {})"), hex(self.public_key().as_bytes()))
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
