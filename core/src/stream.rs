//! STREAM: a file encrypted as a sequence of AEAD chunks (SECURITY.md §16.1).
//!
//! The construction of Hoang, Reyhanitabar, Rogaway and Vizár ("Online
//! Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO
//! 2015) as age uses it: the plaintext is cut into chunks of
//! [`CHUNK_SIZE`] bytes, and chunk `i` is sealed with ChaCha20-Poly1305
//! (RFC 8439) under one payload key with the 12-byte nonce
//! `u88_be(i) || flag`, where `flag` is `0x01` for the final chunk and `0x00`
//! for every other. A chunk therefore authenticates only at its own
//! position (reordering, dropping or duplicating fails), only as what it is
//! (a non-final chunk presented as the end, i.e. a truncation, fails, and so
//! does data after the final chunk), and only under its own file's key
//! (chunks swapped between files fail).
//!
//! This module is the chunk level: the caller says which chunk is the final
//! one (in Ward it knows, from the size the signed descriptor carries) and
//! the state machines enforce the counter and the length rules. Both seal
//! and open work in place or from one buffer into another, so no copy is
//! made beyond what the caller's I/O needs. [`crate::attachment`] builds the
//! byte-stream encryptor and decryptor, header and padding on top.

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use zeroize::Zeroize;

use crate::error::AttachmentError;

/// Plaintext bytes of every chunk but the final one (64 KiB, as age).
pub const CHUNK_SIZE: usize = 64 << 10;
/// The Poly1305 tag after each chunk.
pub const TAG_SIZE: usize = 16;
/// Bytes of a sealed non-final chunk.
pub const SEALED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;
/// Most chunks in one stream (256 TiB). The nonce's counter has 88 bits;
/// this bound keeps every size computation far inside `u64`.
pub const MAX_CHUNKS: u64 = 1 << 32;

/// The nonce of chunk `index`: `u88_be(index) || flag` (§16.1). The top three
/// counter bytes stay zero because `index < MAX_CHUNKS`.
pub fn chunk_nonce(index: u64, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// The length rule of §16.1: a non-final chunk is exactly [`CHUNK_SIZE`]
/// bytes; the final one is 1 to [`CHUNK_SIZE`] bytes, or empty only when it
/// is the only chunk (an empty file). One plaintext then has exactly one
/// chunking.
fn check_length(index: u64, len: usize, last: bool) -> Result<(), AttachmentError> {
    if index >= MAX_CHUNKS {
        return Err(AttachmentError::TooLarge(
            index.saturating_mul(CHUNK_SIZE as u64),
        ));
    }
    let ok = if last {
        len <= CHUNK_SIZE && (len > 0 || index == 0)
    } else {
        len == CHUNK_SIZE
    };
    if ok {
        Ok(())
    } else {
        Err(AttachmentError::ChunkSize { index })
    }
}

/// Seals chunks in order. Created from a payload key that is used for this
/// one stream only (§16.3 derives a fresh one per file).
pub struct StreamEncryptor {
    cipher: ChaCha20Poly1305,
    next: u64,
    ended: bool,
}

impl StreamEncryptor {
    /// A stream under `payload_key`, starting at chunk 0.
    pub fn new(payload_key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(payload_key.into()),
            next: 0,
            ended: false,
        }
    }

    /// The index the next chunk will get.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Whether the final chunk has been sealed.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    fn begin(&self, len: usize, last: bool) -> Result<[u8; 12], AttachmentError> {
        if self.ended {
            return Err(AttachmentError::AfterEnd);
        }
        check_length(self.next, len, last)?;
        Ok(chunk_nonce(self.next, last))
    }

    fn advance(&mut self, last: bool) {
        self.next += 1;
        self.ended = last;
    }

    /// Encrypts the next chunk in place and returns its tag, which follows
    /// the chunk in the stream.
    pub fn seal_chunk(
        &mut self,
        chunk: &mut [u8],
        last: bool,
    ) -> Result<[u8; TAG_SIZE], AttachmentError> {
        let nonce = self.begin(chunk.len(), last)?;
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce.into(), &[], chunk.into())
            .map_err(|_| AttachmentError::TooLarge(CHUNK_SIZE as u64))?;
        self.advance(last);
        Ok(tag.into())
    }

    /// Encrypts the next chunk from `input` into `output` (same length) and
    /// returns its tag: the keystream is applied on the way, so the
    /// plaintext is never copied.
    pub fn seal_chunk_to(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        last: bool,
    ) -> Result<[u8; TAG_SIZE], AttachmentError> {
        let nonce = self.begin(input.len(), last)?;
        let buf = chacha20poly1305::aead::inout::InOutBuf::new(input, output)
            .map_err(|_| AttachmentError::ChunkSize { index: self.next })?;
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce.into(), &[], buf)
            .map_err(|_| AttachmentError::TooLarge(CHUNK_SIZE as u64))?;
        self.advance(last);
        Ok(tag.into())
    }
}

/// Opens chunks in order. Each chunk is released (decrypted) only once its
/// tag verifies at its position; after the final chunk nothing more opens.
pub struct StreamDecryptor {
    cipher: ChaCha20Poly1305,
    next: u64,
    ended: bool,
}

impl StreamDecryptor {
    /// A stream under `payload_key`, starting at chunk 0.
    pub fn new(payload_key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(payload_key.into()),
            next: 0,
            ended: false,
        }
    }

    /// The index the next chunk must have.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Whether the final chunk has been opened.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Decrypts the next chunk in place (`chunk` without its tag). On any
    /// error `chunk` holds no plaintext and the stream does not advance.
    pub fn open_chunk(
        &mut self,
        chunk: &mut [u8],
        tag: &[u8; TAG_SIZE],
        last: bool,
    ) -> Result<(), AttachmentError> {
        if self.ended {
            return Err(AttachmentError::AfterEnd);
        }
        open_at(&self.cipher, self.next, chunk, tag, last)?;
        self.next += 1;
        self.ended = last;
        Ok(())
    }

    /// Decrypts the next chunk from `input` into `output` (same length).
    /// On any error `output` holds no plaintext.
    pub fn open_chunk_to(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        tag: &[u8; TAG_SIZE],
        last: bool,
    ) -> Result<(), AttachmentError> {
        if self.ended {
            return Err(AttachmentError::AfterEnd);
        }
        check_length(self.next, input.len(), last)?;
        let nonce = chunk_nonce(self.next, last);
        let buf = chacha20poly1305::aead::inout::InOutBuf::new(input, &mut *output)
            .map_err(|_| AttachmentError::ChunkSize { index: self.next })?;
        if self
            .cipher
            .decrypt_inout_detached(&nonce.into(), &[], buf, tag.into())
            .is_err()
        {
            // Diagnose on a copy: `output` must not receive plaintext.
            let mut copy = input.to_vec();
            let err = diagnose(&self.cipher, self.next, &mut copy, tag, last);
            copy.zeroize();
            return Err(err);
        }
        self.next += 1;
        self.ended = last;
        Ok(())
    }
}

/// Opens chunk `index` on its own, in place: the ranged and resumed
/// download path (§16.6). `last` must be whether `index` is the final chunk
/// of the stream (the caller knows from the descriptor's size).
pub fn open_chunk_at(
    payload_key: &[u8; 32],
    index: u64,
    chunk: &mut [u8],
    tag: &[u8; TAG_SIZE],
    last: bool,
) -> Result<(), AttachmentError> {
    open_at(
        &ChaCha20Poly1305::new(payload_key.into()),
        index,
        chunk,
        tag,
        last,
    )
}

fn open_at(
    cipher: &ChaCha20Poly1305,
    index: u64,
    chunk: &mut [u8],
    tag: &[u8; TAG_SIZE],
    last: bool,
) -> Result<(), AttachmentError> {
    check_length(index, chunk.len(), last)?;
    let nonce = chunk_nonce(index, last);
    // chacha20poly1305 verifies the tag before it applies the keystream: on
    // failure `chunk` is still the ciphertext.
    if cipher
        .decrypt_inout_detached(&nonce.into(), &[], (&mut *chunk).into(), tag.into())
        .is_err()
    {
        return Err(diagnose(cipher, index, chunk, tag, last));
    }
    Ok(())
}

/// After a chunk failed to open as `last`, tries the other flag to name the
/// failure (only on the error path, so it costs nothing when all is well):
/// a chunk that opens as final where a non-final one was expected is the
/// true end with data after it; one that opens as non-final where the end
/// was expected means the stream was cut. Anything else is a chunk that does
/// not belong here. `chunk` is wiped if the probe decrypted it.
fn diagnose(
    cipher: &ChaCha20Poly1305,
    index: u64,
    chunk: &mut [u8],
    tag: &[u8; TAG_SIZE],
    last: bool,
) -> AttachmentError {
    let other = !last;
    if check_length(index, chunk.len(), other).is_err() {
        return AttachmentError::ChunkAuthFailed { index };
    }
    let nonce = chunk_nonce(index, other);
    match cipher.decrypt_inout_detached(&nonce.into(), &[], (&mut *chunk).into(), tag.into()) {
        Ok(()) => {
            chunk.zeroize();
            if other {
                AttachmentError::TrailingData
            } else {
                AttachmentError::Truncated
            }
        }
        Err(_) => AttachmentError::ChunkAuthFailed { index },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    /// Seals `chunks` (the last one final) into `(ciphertext, tag)` pairs.
    fn seal_all(key: &[u8; 32], chunks: &[Vec<u8>]) -> Vec<(Vec<u8>, [u8; TAG_SIZE])> {
        let mut enc = StreamEncryptor::new(key);
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut buf = c.clone();
                let tag = enc.seal_chunk(&mut buf, i + 1 == chunks.len()).unwrap();
                (buf, tag)
            })
            .collect()
    }

    fn three_chunks() -> Vec<Vec<u8>> {
        vec![vec![1; CHUNK_SIZE], vec![2; CHUNK_SIZE], vec![3; 100]]
    }

    #[test]
    fn nonce_is_counter_then_flag() {
        assert_eq!(chunk_nonce(0, false), [0; 12]);
        assert_eq!(
            chunk_nonce(0x0102_0304, true),
            [0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 1]
        );
        assert_eq!(chunk_nonce(u64::MAX, false)[..3], [0, 0, 0]);
    }

    #[test]
    fn chunks_open_in_order_and_only_in_order() {
        let chunks = three_chunks();
        let sealed = seal_all(&KEY, &chunks);
        let mut dec = StreamDecryptor::new(&KEY);
        for (i, (ct, tag)) in sealed.iter().enumerate() {
            let mut buf = ct.clone();
            dec.open_chunk(&mut buf, tag, i == 2).unwrap();
            assert_eq!(buf, chunks[i]);
        }
        assert!(dec.is_ended());
        // Nothing opens after the end, not even the final chunk again.
        let (ct, tag) = &sealed[2];
        let mut again = ct.clone();
        assert_eq!(
            dec.open_chunk(&mut again, tag, true),
            Err(AttachmentError::AfterEnd)
        );

        // Reordered: chunk 1 at position 0.
        let mut dec = StreamDecryptor::new(&KEY);
        let mut buf = sealed[1].0.clone();
        assert_eq!(
            dec.open_chunk(&mut buf, &sealed[1].1, false),
            Err(AttachmentError::ChunkAuthFailed { index: 0 })
        );
        assert_eq!(buf, sealed[1].0, "a refused chunk is left as ciphertext");
        assert_eq!(dec.next_index(), 0, "a refused chunk does not advance");
    }

    #[test]
    fn truncation_and_trailing_data_are_named() {
        let sealed = seal_all(&KEY, &three_chunks());
        // Chunk 1 presented as the end: it was sealed as non-final.
        let mut buf = sealed[1].0.clone();
        assert_eq!(
            open_chunk_at(&KEY, 1, &mut buf, &sealed[1].1, true),
            Err(AttachmentError::Truncated)
        );
        // A full final chunk, but the caller expected more after it.
        let full = seal_all(&KEY, &[vec![1; CHUNK_SIZE], vec![2; CHUNK_SIZE]]);
        let mut buf = full[1].0.clone();
        assert_eq!(
            open_chunk_at(&KEY, 1, &mut buf, &full[1].1, false),
            Err(AttachmentError::TrailingData)
        );
        assert_ne!(buf, vec![2; CHUNK_SIZE], "the probe's plaintext is wiped");
    }

    #[test]
    fn chunks_of_another_file_do_not_open() {
        let ours = seal_all(&KEY, &three_chunks());
        let theirs = seal_all(&[8; 32], &three_chunks());
        let mut buf = theirs[1].0.clone();
        assert_eq!(
            open_chunk_at(&KEY, 1, &mut buf, &theirs[1].1, false),
            Err(AttachmentError::ChunkAuthFailed { index: 1 })
        );
        let mut buf = ours[1].0.clone();
        open_chunk_at(&KEY, 1, &mut buf, &ours[1].1, false).unwrap();
    }

    #[test]
    fn length_rules() {
        let mut enc = StreamEncryptor::new(&KEY);
        // A short non-final chunk.
        assert_eq!(
            enc.seal_chunk(&mut [0; 10], false),
            Err(AttachmentError::ChunkSize { index: 0 })
        );
        // A final chunk over the chunk size.
        assert_eq!(
            enc.seal_chunk(&mut vec![0; CHUNK_SIZE + 1], true),
            Err(AttachmentError::ChunkSize { index: 0 })
        );
        enc.seal_chunk(&mut vec![0; CHUNK_SIZE], false).unwrap();
        // An empty final chunk after another: the file would have two
        // chunkings, so it is refused.
        assert_eq!(
            enc.seal_chunk(&mut [], true),
            Err(AttachmentError::ChunkSize { index: 1 })
        );
        enc.seal_chunk(&mut [0; 5], true).unwrap();
        assert_eq!(
            enc.seal_chunk(&mut [0; 5], true),
            Err(AttachmentError::AfterEnd)
        );

        // The empty file: one empty final chunk, which is just a tag.
        let sealed = seal_all(&KEY, &[Vec::new()]);
        assert!(sealed[0].0.is_empty());
        let mut dec = StreamDecryptor::new(&KEY);
        dec.open_chunk(&mut [], &sealed[0].1, true).unwrap();

        // A short chunk where a non-final one must be is refused before the AEAD.
        let mut dec = StreamDecryptor::new(&KEY);
        assert_eq!(
            dec.open_chunk(&mut [0; 10], &[0; 16], false),
            Err(AttachmentError::ChunkSize { index: 0 })
        );
    }

    #[test]
    fn out_of_place_matches_in_place() {
        let chunks = three_chunks();
        let sealed = seal_all(&KEY, &chunks);
        let mut enc = StreamEncryptor::new(&KEY);
        let mut dec = StreamDecryptor::new(&KEY);
        for (i, c) in chunks.iter().enumerate() {
            let last = i == 2;
            let mut ct = vec![0; c.len()];
            let tag = enc.seal_chunk_to(c, &mut ct, last).unwrap();
            assert_eq!((&ct, &tag), (&sealed[i].0, &sealed[i].1));
            let mut pt = vec![0; c.len()];
            dec.open_chunk_to(&ct, &mut pt, &tag, last).unwrap();
            assert_eq!(&pt, c);
        }
        // A failed out-of-place open writes nothing into the output.
        let mut dec = StreamDecryptor::new(&KEY);
        let mut out = vec![0xaa; CHUNK_SIZE];
        let mut bad_tag = sealed[0].1;
        bad_tag[0] ^= 1;
        assert_eq!(
            dec.open_chunk_to(&sealed[0].0, &mut out, &bad_tag, false),
            Err(AttachmentError::ChunkAuthFailed { index: 0 })
        );
        assert_eq!(out, vec![0xaa; CHUNK_SIZE]);
    }
}
