//! ChaCha20-Poly1305 (RFC 8439 §2.8) and XChaCha20-Poly1305
//! (draft-irtf-cfrg-xchacha §2) run in one pass over memory.
//!
//! `chacha20poly1305` applies the keystream to the whole buffer and only then
//! runs Poly1305 over it: two passes, the second reading back from L2 or
//! memory what the first wrote. Here the same construction is run from its
//! two halves, `chacha20` and `poly1305`, [`PIECE`] bytes at a time:
//! keystream then Poly1305 (sealing), Poly1305 then keystream (opening),
//! while the piece is in L1. The bytes are exactly the crate's (the tests
//! compare them), and a STREAM chunk seals or opens about 15 to 25 % faster
//! than through the crate (measured here on 64 KiB chunks; BENCHMARKS.md).
//!
//! Opening decrypts as it authenticates, so a chunk whose tag fails has
//! been decrypted in its buffer: the keystream is then applied once more,
//! which restores the ciphertext exactly. Nothing unauthenticated is ever
//! returned, and a refused buffer is left as it was given, as with the
//! crate (stream.rs relies on both).

use chacha20::cipher::{StreamCipher, StreamCipherSeek};
use poly1305::Poly1305;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use zeroize::Zeroizing;

/// Bytes between a keystream application and its Poly1305: small enough to
/// stay in L1, a multiple of the 64-byte ChaCha20 block and of the 16-byte
/// Poly1305 block.
pub(crate) const PIECE: usize = 16 << 10;

/// The 64-byte ChaCha20 block; block 0 keys Poly1305, the message starts at 1.
const BLOCK: u64 = 64;

/// A misuse the types cannot rule out: more than ChaCha20's 32-bit block
/// counter covers, or a part after one that was not a multiple of 16 bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Misuse;

/// Seals a message given in parts, in place.
pub(crate) struct Sealer<C> {
    cipher: C,
    mac: Poly1305,
    aad_len: u64,
    len: u64,
    ragged: bool,
}

/// Poly1305 keyed from keystream block 0, the cipher moved to block 1, and
/// the associated data absorbed (RFC 8439 §2.8).
fn start<C: StreamCipher + StreamCipherSeek>(cipher: &mut C, aad: &[u8]) -> Poly1305 {
    let mut mac_key = Zeroizing::new([0u8; 32]);
    cipher.apply_keystream(&mut *mac_key);
    let mut mac = Poly1305::new((&*mac_key).into());
    cipher.seek(BLOCK);
    mac.update_padded(aad);
    mac
}

fn lengths(aad_len: u64, len: u64) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&aad_len.to_le_bytes());
    block[8..].copy_from_slice(&len.to_le_bytes());
    block
}

fn check_len(len: u64) -> Result<(), Misuse> {
    if len / BLOCK >= u64::from(u32::MAX) {
        Err(Misuse)
    } else {
        Ok(())
    }
}

impl<C: StreamCipher + StreamCipherSeek> Sealer<C> {
    /// A message under `cipher` (a fresh ChaCha20 or XChaCha20 at its
    /// nonce) with associated data `aad`.
    pub(crate) fn new(mut cipher: C, aad: &[u8]) -> Self {
        let mac = start(&mut cipher, aad);
        Self {
            cipher,
            mac,
            aad_len: aad.len() as u64,
            len: 0,
            ragged: false,
        }
    }

    /// Encrypts the next part of the message in place. Every part but the
    /// last must be a multiple of 16 bytes (Poly1305 pads only at the end).
    pub(crate) fn seal(&mut self, part: &mut [u8]) -> Result<(), Misuse> {
        if self.ragged {
            return Err(Misuse);
        }
        self.len += part.len() as u64;
        check_len(self.len)?;
        self.ragged = !part.len().is_multiple_of(16);
        for piece in part.chunks_mut(PIECE) {
            self.cipher.apply_keystream(piece);
            self.mac.update_padded(piece);
        }
        Ok(())
    }

    /// The tag.
    pub(crate) fn finish(mut self) -> [u8; 16] {
        self.mac.update_padded(&lengths(self.aad_len, self.len));
        self.mac.finalize().into()
    }
}

/// Seals `buf` in place in one call.
pub(crate) fn seal<C: StreamCipher + StreamCipherSeek>(
    cipher: C,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; 16], Misuse> {
    let mut sealer = Sealer::new(cipher, aad);
    sealer.seal(buf)?;
    Ok(sealer.finish())
}

/// Opens `buf` in place if `tag` verifies (constant time); otherwise leaves
/// it as it was given and returns `Err`.
/// `cipher` makes the cipher at its nonce (twice on a bad tag: the
/// cipher types are not `Clone`).
pub(crate) fn open<C: StreamCipher + StreamCipherSeek>(
    cipher: impl Fn() -> C,
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; 16],
) -> Result<(), Misuse> {
    check_len(buf.len() as u64)?;
    let mut keystream = cipher();
    let mut mac = start(&mut keystream, aad);
    let cipher_at_1 = || {
        let mut c = cipher();
        c.seek(BLOCK);
        c
    };
    let cipher = &mut keystream;
    for piece in buf.chunks_mut(PIECE) {
        mac.update_padded(piece);
        cipher.apply_keystream(piece);
    }
    mac.update_padded(&lengths(aad.len() as u64, buf.len() as u64));
    if mac.verify(tag.into()).is_ok() {
        Ok(())
    } else {
        // Decrypted without authenticating: encrypt back, in place.
        cipher_at_1().apply_keystream(buf);
        Err(Misuse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::cipher::KeyIvInit;
    use chacha20::{ChaCha20, XChaCha20};
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};

    const LENS: [usize; 13] = [
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
        4 * PIECE,
        5 * PIECE + 33,
    ];

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn same_bytes_as_the_crate() {
        let key = [9u8; 32];
        let nonce: [u8; 24] = core::array::from_fn(|i| i as u8);
        let n12: [u8; 12] = core::array::from_fn(|i| 100 + i as u8);
        for len in LENS {
            for aad in [&b""[..], b"h", &[7u8; 300]] {
                let pt = message(len);
                let mut x = pt.clone();
                let xt = XChaCha20Poly1305::new((&key).into())
                    .encrypt_inout_detached((&nonce).into(), aad, (&mut x[..]).into())
                    .unwrap();
                let mut ours = pt.clone();
                let tag = seal(
                    XChaCha20::new((&key).into(), (&nonce).into()),
                    aad,
                    &mut ours,
                );
                assert_eq!((ours == x, tag), (true, Ok(xt.into())), "x {len}");

                let mut c = pt.clone();
                let ct = ChaCha20Poly1305::new((&key).into())
                    .encrypt_inout_detached((&n12).into(), aad, (&mut c[..]).into())
                    .unwrap();
                let mut ours = pt.clone();
                let tag = seal(ChaCha20::new((&key).into(), (&n12).into()), aad, &mut ours);
                assert_eq!((ours == c, tag), (true, Ok(ct.into())), "{len}");

                // Opened by us, as the crate would.
                let ct_tag: [u8; 16] = ct.into();
                open(
                    || ChaCha20::new((&key).into(), (&n12).into()),
                    aad,
                    &mut ours,
                    &ct_tag,
                )
                .unwrap();
                assert!(ours == pt, "{len}");
            }
        }
    }

    #[test]
    fn parts_seal_like_one_call() {
        let key = [3u8; 32];
        let nonce = [4u8; 12];
        let pt = message(3 * PIECE + 100);
        let mut whole = pt.clone();
        let tag = seal(
            ChaCha20::new((&key).into(), (&nonce).into()),
            b"a",
            &mut whole,
        )
        .unwrap();
        let mut parts = pt.clone();
        let mut sealer = Sealer::new(ChaCha20::new((&key).into(), (&nonce).into()), b"a");
        let (a, rest) = parts.split_at_mut(48);
        let (b, c) = rest.split_at_mut(2 * PIECE);
        sealer.seal(a).unwrap();
        sealer.seal(b).unwrap();
        sealer.seal(c).unwrap();
        // After a ragged part nothing more can be added.
        assert_eq!(sealer.seal(&mut [0u8; 16]), Err(Misuse));
        assert_eq!((parts == whole, sealer.finish()), (true, tag));
    }

    #[test]
    fn a_refused_buffer_is_left_as_given() {
        let key = [5u8; 32];
        let nonce = [6u8; 12];
        for len in LENS {
            let mut ct = message(len);
            let tag = seal(ChaCha20::new((&key).into(), (&nonce).into()), b"", &mut ct).unwrap();
            for bad in 0..3 {
                if bad == 1 && len == 0 {
                    continue;
                }
                let mut buf = ct.clone();
                let mut t = tag;
                match bad {
                    0 => t[15] ^= 1,
                    1 => buf[len / 2] ^= 1,
                    _ => {}
                }
                let given = buf.clone();
                let aad: &[u8] = if bad == 2 { b"x" } else { b"" };
                assert_eq!(
                    open(
                        || ChaCha20::new((&key).into(), (&nonce).into()),
                        aad,
                        &mut buf,
                        &t
                    ),
                    Err(Misuse),
                    "{len} {bad}"
                );
                assert!(buf == given, "{len} {bad}");
            }
        }
    }
}
