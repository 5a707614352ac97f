//! Files to blobs and blobs to files through `std::io`, with the blob hash
//! (§16.4) off the AEAD's thread (issue 11: 1 GiB at no less than 0.9x the
//! raw AEAD).
//!
//! The sans-IO [`Encryptor`](super::Encryptor) and
//! [`Decryptor`](super::Decryptor) do everything on the caller's thread, so
//! a blob costs its STREAM pass plus a SHA-256 pass over the whole blob:
//! with SHA-NI the two run at about the same speed here, and the file goes
//! at half the AEAD's rate. The hash cannot be dropped or cut into pieces
//! (§16.4: only a collision-resistant hash of every byte binds the blob to
//! the sender's signature), but it can run beside the AEAD. Each pipeline
//! has two stages over batches of [`BATCH`] chunks, in order:
//!
//! 1. the caller's thread reads each chunk of the batch straight into the
//!    batch's buffer and runs the AEAD on it while it is in cache (sealing:
//!    in place, after the zero padding; opening: from the sealed chunk into
//!    a plaintext buffer, then the padding check);
//! 2. an output thread hashes the sealed bytes (the blob's, in both
//!    directions) and writes the batch (the blob when sealing, the file's
//!    bytes when opening).
//!
//! Why two stages and not three (read, AEAD, write each on a thread, as
//! before): on a 2-core machine three busy threads share two cores, and
//! each chunk crossed cores twice. Now each batch crosses once, and one
//! hand-over moves [`BATCH`] chunks, which cuts the wake-ups by as much. The
//! caller does a copy (the read) and the AEAD, the output thread the hash
//! and a copy (the write): two about equal halves.
//!
//! Memory is constant: [`BUFFERS`] batches circulate over two bounded
//! channels, and plaintext buffers are wiped when dropped. The writer runs on
//! the output thread, hence `Send`. If that thread cannot be started nothing
//! is written (nothing is read either), and the error says so
//! ([`AttachmentIoError::Thread`]).

use std::io::{self, Read, Write};
use std::sync::mpsc::sync_channel;

use rand_core::CryptoRng;
use sha2::Digest;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{
    Descriptor, Fresh, HEADER_SIZE, SealedAttachment, blob_hasher, open_header, padding_is_zero,
};
use crate::error::{AttachmentError, AttachmentIoError};
use crate::stream::{CHUNK_SIZE, SEALED_CHUNK_SIZE, StreamDecryptor, StreamEncryptor, TAG_SIZE};

/// Chunks per hand-over between the two threads (256 KiB): fewer wake-ups
/// than one chunk per message, still small enough to stay in cache.
pub const BATCH: usize = 4;

/// Batches in circulation: one being filled, one being written, the rest
/// queued to absorb a slow read or write. Memory is about
/// `BUFFERS * BATCH * 64 KiB` when sealing and twice that when opening
/// (sealed and plaintext buffers), whatever the file's size.
pub const BUFFERS: usize = 4;

/// The chunks of batch `batch` of a stream of `chunks` chunks.
fn batch_chunks(batch: u64, chunks: u64) -> std::ops::Range<u64> {
    let start = batch * BATCH as u64;
    start..(start + BATCH as u64).min(chunks)
}

/// Sealed chunks of a blob, back to back: what the output thread hashes and
/// writes when sealing. Holds plaintext between the read and the AEAD,
/// hence wiped.
struct SealBatch {
    buf: Zeroizing<Vec<u8>>,
    len: usize,
}

/// Reads a file of exactly `size` bytes from `file`, writes its blob to
/// `blob` (header, then each sealed chunk) and returns what the descriptor
/// needs: the same blob, bytes and hash, as [`Encryptor`](super::Encryptor)
/// makes from the same RNG draws (the file key, the salt, the blob id).
///
/// Refuses a reader that ends before `size` bytes or has more after them
/// ([`AttachmentError::SizeMismatch`]); what was written is then no blob to
/// upload. The reader runs on the caller's thread, the writer on another.
pub fn seal_stream<R: CryptoRng + ?Sized>(
    rng: &mut R,
    size: u64,
    mut file: impl Read,
    mut blob: impl Write + Send,
) -> Result<SealedAttachment, AttachmentIoError> {
    let Fresh {
        layout,
        key,
        blob_id,
        header,
        payload,
    } = Fresh::draw(rng, size)?;
    let mut stream = StreamEncryptor::new(&payload);
    drop(payload);
    let mut hasher = blob_hasher();
    hasher.update(header);
    let mut read = 0u64;
    let mut header_written = false;

    run(
        layout.chunks,
        || SealBatch {
            buf: Zeroizing::new(vec![0u8; BATCH * SEALED_CHUNK_SIZE]),
            len: 0,
        },
        |batch, b| {
            b.len = 0;
            for index in batch_chunks(batch, layout.chunks) {
                let len = layout.chunk_len(index);
                let content = layout.content_len(index);
                let chunk = &mut b.buf[b.len..b.len + len + TAG_SIZE];
                let n = read_full(&mut file, &mut chunk[..content])?;
                read += n as u64;
                if n < content {
                    return Err(size_mismatch(size, read));
                }
                // The declared size must be the whole file: one byte more
                // and the blob would silently cut it.
                if layout.is_last(index) && read_full(&mut file, &mut [0u8; 1])? > 0 {
                    return Err(size_mismatch(size, read + 1));
                }
                // Padding is zeros (a recycled buffer holds older ciphertext).
                chunk[content..len].fill(0);
                let (body, tag) = chunk.split_at_mut(len);
                tag.copy_from_slice(&stream.seal_chunk(body, layout.is_last(index))?);
                b.len += len + TAG_SIZE;
            }
            Ok(())
        },
        // A failed seal leaves no blob to upload: nothing of it need be
        // written.
        |_| false,
        |b| {
            if !header_written {
                blob.write_all(&header)?;
                header_written = true;
            }
            hasher.update(&b.buf[..b.len]);
            blob.write_all(&b.buf[..b.len])?;
            Ok(())
        },
    )?;
    blob.flush()?;
    Ok(SealedAttachment {
        blob_id,
        key,
        layout,
        blob_hash: hasher.finalize().into(),
    })
}

/// A batch being opened: the sealed chunks as read (hashed by the output
/// thread) and the file's bytes of those that authenticated (written by it).
struct OpenBatch {
    sealed: Vec<u8>,
    sealed_len: usize,
    plain: Zeroizing<Vec<u8>>,
    plain_len: usize,
}

/// Reads the blob `descriptor` names from `blob` and writes the file to
/// `file`, checking what [`Decryptor`](super::Decryptor) checks: the key
/// commitment before anything is decrypted (B2), each chunk at its
/// position, the padding, that the blob ends exactly where the descriptor
/// says (B3, B5: the reader must reach its end there; data past it is
/// refused before the final chunk is opened), and the blob hash (B6).
///
/// Everything written is authentic and in order, a prefix of the file: a
/// chunk reaches `file` only once its tag verified at its position and its
/// padding checked, and when a chunk fails, the chunks before it in its
/// batch are written and nothing after. The file is *complete*, the exact
/// one the sender signed for, only if this returns `Ok` (the hash is known
/// only at the end). On an error, discard what was written. The reader runs
/// on the caller's thread, the writer on another.
pub fn open_stream(
    descriptor: &Descriptor,
    mut blob: impl Read,
    mut file: impl Write + Send,
) -> Result<(), AttachmentIoError> {
    let layout = descriptor.layout;
    let mut header = [0u8; HEADER_SIZE];
    if read_full(&mut blob, &mut header)? < HEADER_SIZE {
        return Err(AttachmentError::Truncated.into());
    }
    let payload = open_header(&descriptor.key, &header)?;
    let mut stream = StreamDecryptor::new(&payload);
    drop(payload);
    let mut hasher = blob_hasher();
    hasher.update(header);

    run(
        layout.chunks,
        || OpenBatch {
            sealed: vec![0u8; BATCH * SEALED_CHUNK_SIZE],
            sealed_len: 0,
            plain: Zeroizing::new(vec![0u8; BATCH * CHUNK_SIZE]),
            plain_len: 0,
        },
        |batch, b| {
            b.sealed_len = 0;
            b.plain_len = 0;
            for index in batch_chunks(batch, layout.chunks) {
                let len = layout.chunk_len(index);
                let content = layout.content_len(index);
                let sealed = &mut b.sealed[b.sealed_len..b.sealed_len + len + TAG_SIZE];
                if read_full(&mut blob, sealed)? < len + TAG_SIZE {
                    return Err(AttachmentError::Truncated.into());
                }
                if layout.is_last(index) && read_full(&mut blob, &mut [0u8; 1])? > 0 {
                    return Err(AttachmentError::TrailingData.into());
                }
                let (ct, tag) = sealed.split_at(len);
                let tag: &[u8; TAG_SIZE] = tag
                    .try_into()
                    .map_err(|_| AttachmentError::ChunkSize { index })?;
                // Written after the chunks already in the batch; only
                // `plain_len` bytes of it are ever handed on, so what a
                // failed chunk leaves past them is never written.
                let out = &mut b.plain[b.plain_len..b.plain_len + len];
                stream.open_chunk_to(ct, out, tag, layout.is_last(index))?;
                if !padding_is_zero(&out[content..]) {
                    return Err(AttachmentError::BadPadding.into());
                }
                b.sealed_len += len + TAG_SIZE;
                b.plain_len += content;
            }
            Ok(())
        },
        // The chunks before a failing one are authentic: written, as the
        // chunk-by-chunk decryptor would have.
        |b| b.plain_len > 0,
        |b| {
            hasher.update(&b.sealed[..b.sealed_len]);
            file.write_all(&b.plain[..b.plain_len])?;
            Ok(())
        },
    )?;
    file.flush()?;
    let blob_hash: [u8; 32] = hasher.finalize().into();
    if !bool::from(blob_hash.ct_eq(descriptor.blob_hash())) {
        return Err(AttachmentError::HashMismatch.into());
    }
    Ok(())
}

fn size_mismatch(declared: u64, given: u64) -> AttachmentIoError {
    AttachmentError::SizeMismatch { declared, given }.into()
}

/// Runs `fill` over the batches of `chunks` chunks on the caller's thread
/// and `output` over each filled batch, in order, on a thread of its own.
/// Batches are made by `new` until [`BUFFERS`] exist, then reused as the
/// output thread gives them back. When `fill` fails, its batch still goes
/// to `output` if `partial` says it holds something worth writing; then
/// both stop. Returns the first error that caused a stop (a stage's own,
/// not the other's hang-up).
fn run<B: Send>(
    chunks: u64,
    new: impl Fn() -> B,
    mut fill: impl FnMut(u64, &mut B) -> Result<(), AttachmentIoError>,
    partial: impl Fn(&B) -> bool,
    mut output: impl FnMut(&B) -> Result<(), AttachmentIoError> + Send,
) -> Result<(), AttachmentIoError> {
    let batches = chunks.div_ceil(BATCH as u64);
    let (to_output, filled) = sync_channel::<B>(BUFFERS);
    // Room for every batch there is: giving one back never waits.
    let (give_back, free) = sync_channel::<B>(BUFFERS);

    std::thread::scope(|s| {
        let writer = std::thread::Builder::new()
            .name("ward-attach-out".into())
            .spawn_scoped(s, move || -> Result<(), AttachmentIoError> {
                for b in filled {
                    output(&b)?;
                    // Fails only once the caller has stopped.
                    drop(give_back.send(b));
                }
                Ok(())
            })
            .map_err(|_| AttachmentIoError::Thread)?;
        let mut made = 0;
        let produced = (|| {
            for batch in 0..batches {
                let mut b = if made < BUFFERS {
                    made += 1;
                    new()
                } else {
                    // A hang-up: the output stage stopped, and says why.
                    free.recv().map_err(|_| AttachmentIoError::Thread)?
                };
                if let Err(e) = fill(batch, &mut b) {
                    if partial(&b) {
                        drop(to_output.send(b));
                    }
                    return Err(e);
                }
                to_output.send(b).map_err(|_| AttachmentIoError::Thread)?;
            }
            Ok(())
        })();
        drop(to_output);
        let written = writer.join().unwrap_or(Err(AttachmentIoError::Thread));
        first_cause([produced, written])
    })
}

/// The error that stopped the pipeline: a stage's own, before the hang-up
/// it caused in the other (reported as [`AttachmentIoError::Thread`]).
fn first_cause(results: [Result<(), AttachmentIoError>; 2]) -> Result<(), AttachmentIoError> {
    let mut hang_up = None;
    for r in results {
        match r {
            Ok(()) => {}
            Err(AttachmentIoError::Thread) => hang_up = Some(AttachmentIoError::Thread),
            Err(e) => return Err(e),
        }
    }
    hang_up.map_or(Ok(()), Err)
}

/// Fills `buf` from `reader` unless it ends first; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::{Encryptor, Layout};
    use crate::stream::CHUNK_SIZE;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const C: usize = CHUNK_SIZE;

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ 0xa5).collect()
    }

    fn seal(content: &[u8], seed: u64) -> (Vec<u8>, Descriptor) {
        let mut blob = Vec::new();
        let sealed = seal_stream(
            &mut StdRng::seed_from_u64(seed),
            content.len() as u64,
            content,
            &mut blob,
        )
        .unwrap();
        let d = sealed
            .describe("application/pdf", "letter.pdf", None)
            .unwrap();
        (blob, d)
    }

    fn open(d: &Descriptor, blob: &[u8]) -> (Vec<u8>, Result<(), AttachmentError>) {
        let mut out = Vec::new();
        let r = open_stream(d, blob, &mut out).map_err(|e| match e {
            AttachmentIoError::Attachment(e) => e,
            e => panic!("not a format error: {e}"),
        });
        (out, r)
    }

    /// Hands out at most `step` bytes per read, and an `Interrupted` error
    /// before every other read: a socket or a pipe, not a slice.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_same_blob_as_the_encryptor_from_the_same_draws() {
        for len in [0, 1, 1000, C - 1, C, C + 1, 3 * C + 5, (4 << 20) + 1] {
            let content = file(len);
            let (blob, d) = seal(&content, len as u64);
            let mut enc =
                Encryptor::new(&mut StdRng::seed_from_u64(len as u64), len as u64).unwrap();
            let mut expected = Vec::new();
            enc.push(&content, &mut expected).unwrap();
            let sealed = enc.finish(&mut expected).unwrap();
            assert!(blob == expected, "len {len}");
            assert_eq!(d.blob_hash(), &sealed.blob_hash, "len {len}");
            assert_eq!(d.layout(), &Layout::new(len as u64).unwrap());

            let (out, r) = open(&d, &blob);
            assert_eq!((out == content, r), (true, Ok(())), "len {len}");
        }
    }

    #[test]
    fn short_reads_and_interruptions_change_nothing() {
        let content = file(2 * C + 300);
        let (blob, d) = seal(&content, 1);
        let mut again = Vec::new();
        seal_stream(
            &mut StdRng::seed_from_u64(1),
            content.len() as u64,
            Trickle {
                data: &content,
                step: 4097,
                interrupt: false,
            },
            &mut again,
        )
        .unwrap();
        assert!(again == blob);
        let mut out = Vec::new();
        open_stream(
            &d,
            Trickle {
                data: &blob,
                step: 999,
                interrupt: false,
            },
            &mut out,
        )
        .unwrap();
        assert!(out == content);
    }

    #[test]
    fn a_reader_of_another_size_than_declared_is_refused() {
        let content = file(C + 10);
        let mut sink = Vec::new();
        let short = seal_stream(
            &mut rand::rng(),
            content.len() as u64 + 1,
            &content[..],
            &mut sink,
        );
        assert!(matches!(
            short,
            Err(AttachmentIoError::Attachment(AttachmentError::SizeMismatch {
                declared,
                given
            })) if declared == C as u64 + 11 && given == C as u64 + 10
        ));
        let long = seal_stream(
            &mut rand::rng(),
            content.len() as u64 - 1,
            &content[..],
            &mut sink,
        );
        assert!(matches!(
            long,
            Err(AttachmentIoError::Attachment(
                AttachmentError::SizeMismatch { .. }
            ))
        ));
    }

    #[test]
    fn truncated_trailing_tampered_and_foreign_blobs_are_refused() {
        let content = file(2 * C + 30_000);
        let (blob, d) = seal(&content, 7);
        let sealed_chunk = C + TAG_SIZE;
        // Cut anywhere: inside the header, at a chunk boundary, one byte short.
        for n in [
            0,
            10,
            HEADER_SIZE,
            HEADER_SIZE + 5,
            HEADER_SIZE + sealed_chunk,
            blob.len() - 1,
        ] {
            let (out, r) = open(&d, &blob[..n]);
            assert_eq!(r, Err(AttachmentError::Truncated), "{n}");
            assert!(content.starts_with(&out), "what was written is a prefix");
        }
        // One byte past the end: refused before the final chunk is written.
        let mut extra = blob.clone();
        extra.push(0);
        let (out, r) = open(&d, &extra);
        assert_eq!(r, Err(AttachmentError::TrailingData));
        assert_eq!(out.len(), 2 * C);
        // A flipped bit in the second chunk: the first is written, no more.
        let mut bad = blob.clone();
        bad[HEADER_SIZE + sealed_chunk + 3] ^= 1;
        let (out, r) = open(&d, &bad);
        assert_eq!(r, Err(AttachmentError::ChunkAuthFailed { index: 1 }));
        assert!(out == content[..C]);
        // Another attachment's blob: its header commits to another key, and
        // nothing is decrypted.
        let (theirs, d_theirs) = seal(&content, 8);
        let (out, r) = open(&d, &theirs);
        assert_eq!(
            (out.len(), r),
            (0, Err(AttachmentError::KeyCommitmentMismatch))
        );
        // Our key with their hash: every chunk authenticates, the hash does not.
        let mut r = ward_proto::decode_canonical::<ward_proto::v1::AttachmentRef>(
            &d.encode(),
            crate::attachment::MAX_DESCRIPTOR_BYTES,
        )
        .unwrap();
        r.blob_hash = d_theirs.blob_hash().to_vec();
        let wrong = Descriptor::parse(&ward_proto::Message::encode_to_vec(&r)).unwrap();
        let (out, res) = open(&wrong, &blob);
        assert_eq!(res, Err(AttachmentError::HashMismatch));
        assert!(out == content, "only the end refuses");
    }

    /// A batch holds several chunks: a failure in the middle of one still
    /// writes exactly the chunks before it, all authentic, and nothing of
    /// the failing chunk or after it.
    #[test]
    fn a_failure_inside_a_batch_writes_exactly_the_chunks_before_it() {
        let chunks = 2 * BATCH + 3;
        let content = file(chunks * C - 1000);
        let (blob, d) = seal(&content, 11);
        let sealed_chunk = C + TAG_SIZE;
        for bad_chunk in [0, 1, BATCH - 1, BATCH, BATCH + 2, chunks - 1] {
            let mut bad = blob.clone();
            bad[HEADER_SIZE + bad_chunk * sealed_chunk + 17] ^= 0x80;
            let (out, r) = open(&d, &bad);
            assert_eq!(
                r,
                Err(AttachmentError::ChunkAuthFailed {
                    index: bad_chunk as u64
                })
            );
            assert!(out == content[..bad_chunk * C], "chunk {bad_chunk}");
            // Cut in the middle of that chunk: the same prefix, truncated.
            let cut = HEADER_SIZE + bad_chunk * sealed_chunk + 100;
            let (out, r) = open(&d, &blob[..cut]);
            assert_eq!(r, Err(AttachmentError::Truncated));
            assert!(out == content[..bad_chunk * C], "cut in {bad_chunk}");
        }
    }

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk gone"))
        }
    }

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn io_errors_surface_as_io_errors() {
        // Three batches: the failing writers below fail on the second.
        let content = file((2 * BATCH + 1) * C);
        let (blob, d) = seal(&content, 3);
        assert!(matches!(
            seal_stream(&mut rand::rng(), 10, Failing, Vec::new()),
            Err(AttachmentIoError::Io(_))
        ));
        assert!(matches!(
            seal_stream(
                &mut rand::rng(),
                content.len() as u64,
                &content[..],
                Failing
            ),
            Err(AttachmentIoError::Io(_))
        ));
        assert!(matches!(
            open_stream(&d, Failing, Vec::new()),
            Err(AttachmentIoError::Io(_))
        ));
        assert!(matches!(
            open_stream(&d, &blob[..], Failing),
            Err(AttachmentIoError::Io(_))
        ));
        // A writer that fails after the first batch: the pipeline stops and
        // the caller's thread ends with it (the scope would otherwise hang).
        struct After(usize);
        impl Write for After {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("quota"));
                }
                self.0 -= 1;
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            seal_stream(
                &mut rand::rng(),
                content.len() as u64,
                &content[..],
                After(2)
            ),
            Err(AttachmentIoError::Io(_))
        ));
        assert!(matches!(
            open_stream(&d, &blob[..], After(1)),
            Err(AttachmentIoError::Io(_))
        ));
    }
}
