//! Entry point of the `store_header` fuzz target (feature `fuzzing`),
//! replayed on stable by `sdk/tests/fuzz_corpus.rs`.
//!
//! The header file is the one part of the device store read before any key
//! exists: whoever can write the phone's storage controls its bytes, and a
//! bad header must be `Corrupt`, never a panic or an oversized Argon2 run.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sha2::{Digest, Sha256};

use crate::store::header::{HEADER_BYTES, HEADER_V2_BYTES, Header, PlatformSlot};
use crate::store::kdf::KdfParams;

/// Target `store_header`. Mode 0: the bytes as read from disk. Mode 1: the
/// checksum is recomputed first, so the field checks behind it are reached.
/// A header that decodes encodes back to the same bytes, and its KDF
/// parameters are within the bounds that cap what unlocking allocates.
pub fn store_header(data: &[u8]) {
    let Some((mode, bytes)) = data.split_first() else {
        return;
    };
    let mut b = bytes.to_vec();
    // Either version: everything but the last 32 bytes is checksummed by them.
    if mode % 2 == 1 && (b.len() == HEADER_BYTES || b.len() == HEADER_V2_BYTES) {
        let body = b.len() - 32;
        let digest = Sha256::digest(&b[..body]);
        b[body..].copy_from_slice(&digest);
    }
    if let Ok(h) = Header::decode(&b) {
        assert_eq!(&h.encode()[..], &b[..], "header does not round-trip");
        for slot in std::iter::once(&h.kdf).chain(h.pending.as_ref()) {
            assert!(slot.params.validate().is_ok());
            assert!(slot.params.m_cost_kib <= KdfParams::MAX_M_COST_KIB);
        }
        assert!(h.max_attempts > 0);
        assert!(h.platform_slot.is_none() || h.pending.is_none());
        assert!(h.platform_slot.as_ref().is_none_or(|s| s.max_failures > 0));
    }
}

/// Valid headers to start from.
pub fn seeds() -> Vec<Vec<u8>> {
    use crate::store::header::KdfSlot;
    let slot = KdfSlot {
        params: KdfParams::DEFAULT,
        salt: [0x5a; crate::store::kdf::SALT_BYTES],
    };
    let plain = Header {
        kdf: slot,
        platform_secret: false,
        max_attempts: 10,
        failed_attempts: 2,
        pending: None,
        platform_slot: None,
    };
    let upgrading = Header {
        platform_secret: true,
        pending: Some(KdfSlot {
            params: KdfParams {
                m_cost_kib: KdfParams::MIN_M_COST_KIB,
                t_cost: 1,
                p_cost: 4,
            },
            salt: [0xa5; crate::store::kdf::SALT_BYTES],
        }),
        ..plain.clone()
    };
    let with_slot = Header {
        platform_slot: Some(PlatformSlot {
            salt: [0x3c; 16],
            expires_at: 1_790_000_000,
            max_failures: 3,
            failures: 1,
            nonce: [0xc3; 24],
            wrapped: [0x69; 48],
        }),
        ..plain.clone()
    };
    let mut out = Vec::new();
    for h in [plain, upgrading, with_slot] {
        for mode in [0u8, 1] {
            let mut v = vec![mode];
            v.extend_from_slice(&h.encode());
            out.push(v);
        }
    }
    out
}
