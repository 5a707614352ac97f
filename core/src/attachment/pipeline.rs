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
//! has three stages over chunks, in order:
//!
//! 1. an input thread reads the next chunk into a buffer (the file's bytes
//!    and zero padding when sealing; the sealed chunk, which it hashes,
//!    when opening);
//! 2. the caller's thread runs the AEAD in place in that buffer (seal, or
//!    open and the padding check);
//! 3. an output thread writes the buffer (hashing the sealed chunk first
//!    when sealing; the file's bytes when opening).
//!
//! The caller's thread does nothing but the AEAD, so the file goes at the
//! STREAM rate as long as the two I/O threads (a copy each, and the hash on
//! one of them) keep up on the other core. Memory is constant: [`BUFFERS`]
//! chunk buffers circulate over three bounded channels, and are wiped when
//! dropped (a buffer holds plaintext between the file and the AEAD). The
//! reader and the writer run on the I/O threads, hence `Send`. If a thread
//! cannot be started nothing is written (some input may have been read), and
//! the error says so ([`AttachmentIoError::Thread`]).

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rand_core::CryptoRng;
use sha2::Digest;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{
    Descriptor, Fresh, HEADER_SIZE, SealedAttachment, blob_hasher, open_header, padding_is_zero,
};
use crate::error::{AttachmentError, AttachmentIoError};
use crate::stream::{SEALED_CHUNK_SIZE, StreamDecryptor, StreamEncryptor, TAG_SIZE};

/// Chunk buffers in circulation: one being read, one in the AEAD, one being
/// written, the rest queued to absorb a slow read or write. Memory is
/// `6 * (64 KiB + 16)`, whatever the file's size.
pub const BUFFERS: usize = 6;

type Buf = Zeroizing<Vec<u8>>;

/// Reads a file of exactly `size` bytes from `file`, writes its blob to
/// `blob` (header, then each sealed chunk) and returns what the descriptor
/// needs: the same blob, bytes and hash, as [`Encryptor`](super::Encryptor)
/// makes from the same RNG draws (the file key, the salt, the blob id).
///
/// Refuses a reader that ends before `size` bytes or has more after them
/// ([`AttachmentError::SizeMismatch`]); what was written is then no blob to
/// upload.
pub fn seal_stream<R: CryptoRng + ?Sized>(
    rng: &mut R,
    size: u64,
    mut file: impl Read + Send,
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
    let mut header_written = false;
    let mut read = 0u64;

    run(
        layout.chunks,
        |index, buf| {
            let len = layout.chunk_len(index);
            let content = layout.content_len(index);
            buf.resize(len, 0);
            let n = read_full(&mut file, &mut buf[..content])?;
            read += n as u64;
            if n < content {
                return Err(size_mismatch(size, read));
            }
            // The declared size must be the whole file: one byte more and
            // the blob would silently cut it.
            if layout.is_last(index) && read_full(&mut file, &mut [0u8; 1])? > 0 {
                return Err(size_mismatch(size, read + 1));
            }
            // Padding is zeros (a recycled buffer holds older ciphertext).
            buf[content..].fill(0);
            Ok(())
        },
        |index, buf| {
            let tag = stream.seal_chunk(&mut buf[..], layout.is_last(index))?;
            buf.extend_from_slice(&tag);
            Ok(())
        },
        |_, buf| {
            if !header_written {
                hasher.update(header);
                blob.write_all(&header)?;
                header_written = true;
            }
            hasher.update(&buf[..]);
            blob.write_all(buf)?;
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

/// Reads the blob `descriptor` names from `blob` and writes the file to
/// `file`, checking what [`Decryptor`](super::Decryptor) checks: the key
/// commitment before anything is decrypted (B2), each chunk at its
/// position, the padding, that the blob ends exactly where the descriptor
/// says (B3, B5: the reader must reach its end there; data past it is
/// refused before the final chunk is opened), and the blob hash (B6).
///
/// Everything written is authentic and in order, a prefix of the file; the
/// file is *complete*, the exact one the sender signed for, only if this
/// returns `Ok`. On an error, discard what was written.
pub fn open_stream(
    descriptor: &Descriptor,
    mut blob: impl Read + Send,
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
        |index, buf| {
            let sealed = layout.chunk_len(index) + TAG_SIZE;
            buf.resize(sealed, 0);
            if read_full(&mut blob, buf)? < sealed {
                return Err(AttachmentError::Truncated.into());
            }
            if layout.is_last(index) && read_full(&mut blob, &mut [0u8; 1])? > 0 {
                return Err(AttachmentError::TrailingData.into());
            }
            hasher.update(&buf[..]);
            Ok(())
        },
        |index, buf| {
            let len = layout.chunk_len(index);
            let (ct, tag) = buf.split_at_mut(len);
            let tag: &[u8; TAG_SIZE] = (&*tag)
                .try_into()
                .map_err(|_| AttachmentError::ChunkSize { index })?;
            stream.open_chunk(ct, tag, layout.is_last(index))?;
            if !padding_is_zero(&ct[layout.content_len(index)..]) {
                return Err(AttachmentError::BadPadding.into());
            }
            Ok(())
        },
        |index, buf| {
            file.write_all(&buf[..layout.content_len(index)])?;
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

type Stage<'a> = dyn FnMut(u64, &mut Buf) -> Result<(), AttachmentIoError> + 'a;

/// Runs `input`, `crypt` and `output` over chunks `0..chunks`, each chunk
/// through all three in order, the first and last on threads of their own
/// and `crypt` on the caller's. Stops at the first error and returns it
/// (the one that caused it, not a neighbour's hang-up).
fn run<'a>(
    chunks: u64,
    mut input: impl FnMut(u64, &mut Buf) -> Result<(), AttachmentIoError> + Send + 'a,
    mut crypt: impl FnMut(u64, &mut Buf) -> Result<(), AttachmentIoError>,
    mut output: impl FnMut(u64, &Buf) -> Result<(), AttachmentIoError> + Send + 'a,
) -> Result<(), AttachmentIoError> {
    let (to_crypt, filled) = sync_channel::<(u64, Buf)>(BUFFERS);
    let (to_output, done) = sync_channel::<(u64, Buf)>(BUFFERS);
    // Room for every buffer there is: giving one back never waits.
    let (give_back, free) = sync_channel::<Buf>(BUFFERS);

    std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("ward-attach-in".into())
            .spawn_scoped(s, move || feed(chunks, &mut input, to_crypt, free))
            .map_err(|_| AttachmentIoError::Thread)?;
        let writer = std::thread::Builder::new()
            .name("ward-attach-out".into())
            .spawn_scoped(s, move || -> Result<(), AttachmentIoError> {
                for (index, buf) in done {
                    output(index, &buf)?;
                    // Fails only once the input stage has ended.
                    drop(give_back.send(buf));
                }
                Ok(())
            });
        let crypted = match writer {
            Ok(_) => (|| {
                for index in 0..chunks {
                    // A hang-up: the input stage stopped, and says why.
                    let (i, mut buf) = filled.recv().map_err(|_| AttachmentIoError::Thread)?;
                    debug_assert_eq!(i, index);
                    crypt(index, &mut buf)?;
                    to_output
                        .send((index, buf))
                        .map_err(|_| AttachmentIoError::Thread)?;
                }
                Ok(())
            })(),
            Err(_) => Err(AttachmentIoError::Thread),
        };
        drop((filled, to_output));
        let read = reader.join().unwrap_or(Err(AttachmentIoError::Thread));
        let written = match writer {
            Ok(w) => w.join().unwrap_or(Err(AttachmentIoError::Thread)),
            Err(_) => Err(AttachmentIoError::Thread),
        };
        first_cause([read, crypted, written])
    })
}

/// The input stage: fills buffers (new ones until [`BUFFERS`] exist, then
/// those the output stage gives back) and hands them on in order.
fn feed(
    chunks: u64,
    input: &mut Stage<'_>,
    to_crypt: SyncSender<(u64, Buf)>,
    free: Receiver<Buf>,
) -> Result<(), AttachmentIoError> {
    let mut made = 0;
    for index in 0..chunks {
        let mut buf = if made < BUFFERS {
            made += 1;
            Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_SIZE))
        } else {
            free.recv().map_err(|_| AttachmentIoError::Thread)?
        };
        input(index, &mut buf)?;
        to_crypt
            .send((index, buf))
            .map_err(|_| AttachmentIoError::Thread)?;
    }
    Ok(())
}

/// The error that stopped the pipeline: a stage's own, before the hang-ups
/// it caused in the others (reported as [`AttachmentIoError::Thread`]).
fn first_cause(results: [Result<(), AttachmentIoError>; 3]) -> Result<(), AttachmentIoError> {
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
        let content = file(3 * C);
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
        // A writer that fails after the first chunk: the pipeline stops and
        // the hash thread ends with it (the scope would otherwise hang).
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
