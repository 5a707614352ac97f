//! The envelope's XChaCha20-Poly1305 (SECURITY.md §7.3 S6) fused with the
//! ciphertext digest it signs (S7), so that a large seal touches its buffer
//! once instead of three times.
//!
//! `chacha20poly1305` encrypts the whole buffer and only then runs Poly1305
//! over it, and the digest was one more pass after that: on a 10 MiB seal
//! each pass streamed the buffer from memory again (issue 8 measured the
//! seal at 2.03x the bare AEAD). The AEAD now runs in one pass
//! ([`crate::onepass`]: the same bytes, piece by piece in L1), and the digest
//! takes each piece as it is sealed.
//!
//! The digest is SHA-256 of the ciphertext, a chain that no second core can
//! split; but it can *follow* the encryption. From
//! [`PARALLEL_MIN_BYTES`] on, a scoped thread hashes each batch of pieces as
//! soon as it is sealed, so the seal takes about as long as the slower of the
//! two passes instead of their sum. Only ciphertext is handed to that thread.
//! Should the thread not start (or stop), the digest is taken over the
//! finished ciphertext on the caller's thread instead: the result is the same
//! either way.

use std::sync::mpsc;

use chacha20::XChaCha20;
use chacha20::cipher::KeyIvInit;
use sha2::{Digest, Sha256};

use crate::onepass::{Misuse, PIECE, Sealer};

/// Bytes handed to the hash thread at a time: few enough messages that the
/// channel costs nothing against the hashing (80 for 10 MiB).
const BATCH: usize = 128 << 10;

/// From this length on the digest runs on a second thread. Below it, a
/// thread's start (tens of microseconds) is not worth it: a 1 KiB or 64 KiB
/// seal stays on the caller's thread.
pub(crate) const PARALLEL_MIN_BYTES: usize = 1 << 20;

/// Benches compare the seal with and without its digest thread in one run
/// (`testkit::seal_digest_thread`); everywhere else it is always on.
#[cfg(feature = "testkit")]
pub(crate) static DIGEST_THREAD: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

fn digest_thread() -> bool {
    #[cfg(feature = "testkit")]
    return DIGEST_THREAD.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "testkit"))]
    true
}

/// XChaCha20-Poly1305 of `buf` in place under `key` and `nonce` with `aad`,
/// returning the tag and `digest` fed with the ciphertext (not the tag).
pub(crate) fn seal_and_hash(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
    digest: Sha256,
) -> Result<([u8; 16], Sha256), Misuse> {
    let mut sealer = Sealer::new(XChaCha20::new(key.into(), nonce.into()), aad);
    let digest = if buf.len() >= PARALLEL_MIN_BYTES && digest_thread() {
        hashed_alongside(&mut sealer, buf, digest)?
    } else {
        let mut digest = digest;
        for piece in buf.chunks_mut(PIECE) {
            sealer.seal(piece)?;
            digest.update(&*piece);
        }
        digest
    };
    Ok((sealer.finish(), digest))
}

/// Seals `buf` batch by batch while a scoped thread hashes each sealed
/// batch. Falls back to hashing on this thread if the thread cannot start
/// or goes away.
fn hashed_alongside(
    sealer: &mut Sealer<XChaCha20>,
    buf: &mut [u8],
    digest: Sha256,
) -> Result<Sha256, Misuse> {
    let fallback = digest.clone();
    let hashed = std::thread::scope(|s| {
        // Unbounded on purpose: a message is a borrowed slice of `buf` (no
        // copy), at most 16 MiB / BATCH of them, and the encryption never
        // waits for the hash thread to be scheduled, only joins it at the end.
        let (tx, rx) = mpsc::channel::<&[u8]>();
        let worker = std::thread::Builder::new()
            .name("ward-seal-digest".into())
            .spawn_scoped(s, move || {
                let mut digest = digest;
                for batch in rx {
                    digest.update(batch);
                }
                digest
            });
        let mut sent_all = worker.is_ok();
        for batch in buf.chunks_mut(BATCH) {
            sealer.seal(batch)?;
            // Sealed: from here the batch is only read, by the hash thread.
            let sealed: &[u8] = batch;
            if sent_all && tx.send(sealed).is_err() {
                sent_all = false;
            }
        }
        drop(tx);
        Ok(match worker.map(|w| w.join()) {
            Ok(Ok(digest)) if sent_all => Some(digest),
            _ => None,
        })
    })?;
    Ok(hashed.unwrap_or_else(|| {
        let mut digest = fallback;
        digest.update(&*buf);
        digest
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::XChaCha20Poly1305;
    use chacha20poly1305::aead::{AeadInOut, KeyInit};

    fn reference(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], pt: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let mut ct = pt.to_vec();
        let tag = XChaCha20Poly1305::new(key.into())
            .encrypt_inout_detached(nonce.into(), aad, (&mut ct[..]).into())
            .unwrap();
        (ct, tag.into())
    }

    #[test]
    fn same_bytes_as_the_crate_at_every_boundary() {
        let key = [9u8; 32];
        let nonce: [u8; 24] = core::array::from_fn(|i| i as u8);
        let lens = [
            0,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            3 * PIECE + 7,
            BATCH + 16,
            PARALLEL_MIN_BYTES - 1,
            PARALLEL_MIN_BYTES,
            PARALLEL_MIN_BYTES + BATCH / 2 + 3,
        ];
        for len in lens {
            for aad in [&b""[..], b"h", &[7u8; 300]] {
                let pt: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let (ct, tag) = reference(&key, &nonce, aad, &pt);
                let mut buf = pt.clone();
                let (our_tag, digest) =
                    seal_and_hash(&key, &nonce, aad, &mut buf, Sha256::new_with_prefix(b"p"))
                        .unwrap();
                assert_eq!((buf == ct, our_tag), (true, tag), "len {len}");
                let expected: [u8; 32] = Sha256::new_with_prefix(b"p")
                    .chain_update(&ct)
                    .finalize()
                    .into();
                assert_eq!(<[u8; 32]>::from(digest.finalize()), expected, "len {len}");
            }
        }
    }

    #[test]
    fn the_crate_opens_what_we_seal() {
        let key = [1u8; 32];
        let nonce = [2u8; 24];
        let pt = vec![0x5a; PARALLEL_MIN_BYTES + 5];
        let mut buf = pt.clone();
        let (tag, _) = seal_and_hash(&key, &nonce, b"hdr", &mut buf, Sha256::new()).unwrap();
        XChaCha20Poly1305::new((&key).into())
            .decrypt_inout_detached((&nonce).into(), b"hdr", (&mut buf[..]).into(), &tag.into())
            .unwrap();
        assert!(buf == pt);
    }
}
