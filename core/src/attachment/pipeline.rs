//! Files to blobs and blobs to files through `std::io`, with the blob hash
//! (§16.4) on a second thread (issue 11: 1 GiB at no less than 0.9x the raw
//! AEAD).
//!
//! The sans-IO [`Encryptor`](super::Encryptor) and
//! [`Decryptor`](super::Decryptor) do everything on the caller's thread, so
//! a blob costs its STREAM pass plus a SHA-256 pass over the whole blob:
//! with SHA-NI the two run at about the same speed here, and the file goes
//! at half the AEAD's rate. The hash cannot be dropped or cut into pieces
//! (§16.4: only a collision-resistant hash of every byte binds the blob to
//! the sender's signature), but it can run beside the encryption: each
//! sealed chunk is handed to a scoped thread that hashes the chunks in
//! order while this thread reads, encrypts (or decrypts) and writes the
//! next ones. The file then goes at the rate of the slower pass.
//!
//! Memory is constant: [`BUFFERS`] sealed-chunk buffers circulate between
//! the two threads over bounded channels (the reader waits for the hash,
//! never the other way round), plus, when opening, one plaintext chunk. Only
//! ciphertext crosses to the hash thread; plaintext stays on the caller's
//! thread in buffers that are wiped when dropped. The reader and the writer
//! are used on the caller's thread only, so neither needs to be `Send`. If
//! the hash thread cannot be started, the hash runs on the caller's thread:
//! same bytes, the old speed.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{
    Descriptor, Fresh, HEADER_SIZE, SealedAttachment, blob_hasher, open_header, padding_is_zero,
};
use crate::error::{AttachmentError, AttachmentIoError};
use crate::stream::{SEALED_CHUNK_SIZE, StreamDecryptor, StreamEncryptor, TAG_SIZE};

/// Sealed-chunk buffers in circulation: one being filled or written, the
/// others queued for or inside the hash. Four keep both threads busy
/// through a slow read or write; memory is `4 * (64 KiB + 16)`.
pub const BUFFERS: usize = 4;

type Buf = Zeroizing<Vec<u8>>;

/// Reads a file of exactly `size` bytes from `reader`, writes its blob to
/// `writer` (header, then each sealed chunk) and returns what the
/// descriptor needs; the same blob, bytes and hash, as
/// [`Encryptor`](super::Encryptor) makes from the same RNG draws (the file
/// key, the salt, the blob id).
///
/// Refuses a reader that ends before `size` bytes or has more after them
/// ([`AttachmentError::SizeMismatch`]); what was written is then no blob to
/// upload.
pub fn seal_stream<R: CryptoRng + ?Sized>(
    rng: &mut R,
    size: u64,
    mut reader: impl Read,
    mut writer: impl Write,
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
    writer.write_all(&header)?;
    let mut prefix = blob_hasher();
    prefix.update(header);

    let blob_hash = std::thread::scope(|s| -> Result<[u8; 32], AttachmentIoError> {
        let mut hashing = Hashing::start(s, prefix);
        let mut read = 0u64;
        for index in 0..layout.chunks {
            let len = layout.chunk_len(index);
            let content = layout.content_len(index);
            let last = layout.is_last(index);
            let mut buf = hashing.buffer()?;
            buf.resize(len, 0);
            let n = read_full(&mut reader, &mut buf[..content])?;
            read += n as u64;
            if n < content {
                return Err(AttachmentError::SizeMismatch {
                    declared: size,
                    given: read,
                }
                .into());
            }
            if last {
                // The declared size must be the whole file: one byte more
                // and the blob would silently cut it.
                let extra = read_full(&mut reader, &mut [0u8; 1])?;
                if extra > 0 {
                    return Err(AttachmentError::SizeMismatch {
                        declared: size,
                        given: read + extra as u64,
                    }
                    .into());
                }
            }
            // The rest of the chunk is padding: zeros (the buffer may hold
            // an earlier chunk's ciphertext).
            buf[content..].fill(0);
            let tag = stream.seal_chunk(&mut buf[..len], last)?;
            buf.extend_from_slice(&tag);
            writer.write_all(&buf)?;
            hashing.hash(buf)?;
        }
        hashing.finish()
    })?;
    writer.flush()?;
    Ok(SealedAttachment {
        blob_id,
        key,
        layout,
        blob_hash,
    })
}

/// Reads the blob `descriptor` names from `reader` and writes the file to
/// `writer`, checking what [`Decryptor`](super::Decryptor) checks: the key
/// commitment before anything is decrypted (B2), each chunk at its
/// position, the padding, that the blob ends exactly where the descriptor
/// says (B3, B5: the reader must reach its end there), and the blob hash
/// (B6).
///
/// Everything written is authentic and in order, a prefix of the file; the
/// file is *complete*, the exact one the sender signed for, only if this
/// returns `Ok`. On an error, discard what was written.
pub fn open_stream(
    descriptor: &Descriptor,
    mut reader: impl Read,
    mut writer: impl Write,
) -> Result<(), AttachmentIoError> {
    let layout = descriptor.layout;
    let mut header = [0u8; HEADER_SIZE];
    if read_full(&mut reader, &mut header)? < HEADER_SIZE {
        return Err(AttachmentError::Truncated.into());
    }
    let payload = open_header(&descriptor.key, &header)?;
    let mut stream = StreamDecryptor::new(&payload);
    drop(payload);
    let mut prefix = blob_hasher();
    prefix.update(header);
    let mut plain: Buf = Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_SIZE));

    let blob_hash = std::thread::scope(|s| -> Result<[u8; 32], AttachmentIoError> {
        let mut hashing = Hashing::start(s, prefix);
        for index in 0..layout.chunks {
            let len = layout.chunk_len(index);
            let content = layout.content_len(index);
            let last = layout.is_last(index);
            let mut buf = hashing.buffer()?;
            buf.resize(len + TAG_SIZE, 0);
            if read_full(&mut reader, &mut buf)? < len + TAG_SIZE {
                return Err(AttachmentError::Truncated.into());
            }
            if last && read_full(&mut reader, &mut [0u8; 1])? > 0 {
                // Refused before the final chunk is released.
                return Err(AttachmentError::TrailingData.into());
            }
            let (ct, tag) = buf.split_at(len);
            let tag: &[u8; TAG_SIZE] = tag
                .try_into()
                .map_err(|_| AttachmentError::ChunkSize { index })?;
            plain.resize(len, 0);
            stream.open_chunk_to(ct, &mut plain, tag, last)?;
            if !padding_is_zero(&plain[content..]) {
                return Err(AttachmentError::BadPadding.into());
            }
            writer.write_all(&plain[..content])?;
            hashing.hash(buf)?;
        }
        hashing.finish()
    })?;
    writer.flush()?;
    if !bool::from(blob_hash.ct_eq(descriptor.blob_hash())) {
        return Err(AttachmentError::HashMismatch.into());
    }
    Ok(())
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

/// The blob hash, fed sealed chunks in order: on a scoped thread, or on
/// the caller's if none could be started.
struct Hashing<'scope> {
    mode: Mode<'scope>,
    free: Vec<Buf>,
    made: usize,
}

enum Mode<'scope> {
    Thread {
        to_hash: SyncSender<Buf>,
        hashed: Receiver<Buf>,
        worker: ScopedJoinHandle<'scope, Sha256>,
    },
    Inline(Sha256),
}

impl<'scope> Hashing<'scope> {
    fn start<'env>(s: &'scope Scope<'scope, 'env>, hasher: Sha256) -> Self {
        let (to_hash, queue) = sync_channel::<Buf>(BUFFERS);
        // Room for every buffer there is: the worker never waits to give
        // one back, so dropping `to_hash` always ends it.
        let (give_back, hashed) = sync_channel::<Buf>(BUFFERS);
        let inline = hasher.clone();
        let spawned = std::thread::Builder::new()
            .name("ward-blob-hash".into())
            .spawn_scoped(s, move || {
                let mut hasher = hasher;
                for buf in queue {
                    hasher.update(&buf[..]);
                    if give_back.send(buf).is_err() {
                        break;
                    }
                }
                hasher
            });
        let mode = match spawned {
            Ok(worker) => Mode::Thread {
                to_hash,
                hashed,
                worker,
            },
            Err(_) => Mode::Inline(inline),
        };
        Self {
            mode,
            free: Vec::with_capacity(BUFFERS),
            made: 0,
        }
    }

    /// A buffer to fill: a new one until [`BUFFERS`] exist, then one the
    /// hash is done with (waiting for it if need be).
    fn buffer(&mut self) -> Result<Buf, AttachmentIoError> {
        if let Some(buf) = self.free.pop() {
            return Ok(buf);
        }
        if let Mode::Thread { hashed, .. } = &self.mode
            && self.made >= BUFFERS
        {
            return hashed.recv().map_err(|_| AttachmentIoError::HashThread);
        }
        self.made += 1;
        Ok(Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_SIZE)))
    }

    /// Hashes the next sealed chunk (ciphertext and tag) of the blob.
    fn hash(&mut self, buf: Buf) -> Result<(), AttachmentIoError> {
        match &mut self.mode {
            Mode::Thread { to_hash, .. } => {
                to_hash.send(buf).map_err(|_| AttachmentIoError::HashThread)
            }
            Mode::Inline(hasher) => {
                hasher.update(&buf[..]);
                self.free.push(buf);
                Ok(())
            }
        }
    }

    /// The hash of everything fed, once the worker has caught up.
    fn finish(self) -> Result<[u8; 32], AttachmentIoError> {
        let hasher = match self.mode {
            Mode::Thread {
                to_hash,
                hashed,
                worker,
            } => {
                drop(to_hash);
                let joined = worker.join();
                // Only now: the worker gives every buffer back until it ends.
                drop(hashed);
                joined.map_err(|_| AttachmentIoError::HashThread)?
            }
            Mode::Inline(hasher) => hasher,
        };
        Ok(hasher.finalize().into())
    }
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
