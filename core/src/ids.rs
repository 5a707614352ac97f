//! Identifiers: users, resources, conversations.

use core::fmt;

use rand_core::CryptoRng;

/// Longest user id, in bytes of UTF-8.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Checks a user id: 1..=128 bytes of UTF-8 without control characters.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_USER_ID_BYTES && !id.chars().any(char::is_control)
}

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh random id.
            pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
                let mut id = [0u8; 16];
                rng.fill_bytes(&mut id);
                Self(id)
            }

            /// Parses exactly 16 bytes.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }

            /// The 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ")")
            }
        }
    };
}

id16!(
    /// Names one resource (a message, a file): its envelope and its wrapped keys.
    ResourceId
);
id16!(
    /// Names one conversation.
    ConversationId
);
