//! The one place the SDK calls ward-core's attachment encryptor and
//! decryptor (SECURITY.md §16), so that a faster implementation (pipelined,
//! hashing on a second thread) can be swapped in here alone.
//!
//! Both directions run in constant memory. They are synchronous: call them
//! from a blocking thread. Sending goes through the core's pipeline
//! (`attachment::seal_stream`); receiving through the push decryptor, since
//! the blob arrives from the network in pieces.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use ward_core::AttachmentIoError;
use ward_core::attachment::{Decryptor, Descriptor, Layout, SealedAttachment};
use ward_core::stream::SEALED_CHUNK_SIZE;

use super::error::{ClientError, Result};

/// Bytes read from the source file per step (16 chunks).
pub(crate) const IO_BUFFER: usize = 16 * ward_core::stream::CHUNK_SIZE;

/// `(offset, length)` of upload piece `index` (§16.9): piece 0 is the
/// header and sealed chunk 0, piece `i > 0` sealed chunk `i`.
pub(crate) fn piece_range(layout: &Layout, index: u64) -> Option<(u64, u64)> {
    let (off, len) = layout.chunk_range(index)?;
    Some(if index == 0 {
        (0, off + len)
    } else {
        (off, len)
    })
}

/// The end of the last whole piece at or below `len` bytes of the blob,
/// and how many pieces that is.
pub(crate) fn whole_pieces(layout: &Layout, len: u64) -> (u64, u64) {
    let header = ward_core::attachment::HEADER_SIZE as u64;
    let sealed = SEALED_CHUNK_SIZE as u64;
    if len < header {
        return (0, 0);
    }
    let mut n = ((len - header) / sealed).min(layout.chunks);
    // The last piece may be shorter than a full one.
    if n + 1 == layout.chunks
        && let Some((off, l)) = piece_range(layout, n)
        && off + l <= len
    {
        n += 1;
    }
    let end = match n {
        0 => 0,
        n => piece_range(layout, n - 1).map_or(0, |(o, l)| o + l),
    };
    (end, n)
}

/// Encrypts the file at `src` into a new spool file at `spool` (created
/// owner-only, never overwritten), fsynced; reports plaintext bytes read.
///
/// Through ward-core's pipeline (`attachment::seal_stream`): reading and
/// the AEAD run on this thread, the blob hash and writing beside it, so a
/// device with a free core encrypts at about the raw AEAD's speed, in
/// constant memory. `progress` is called from this thread, as it reads.
pub(crate) fn encrypt_to_spool(
    src: &Path,
    spool: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<SealedAttachment> {
    let input = File::open(src).map_err(ClientError::File)?;
    let size = input.metadata().map_err(ClientError::File)?.len();
    let mut out = create_private(spool)?;
    let reader = Counting {
        inner: input,
        done: 0,
        size,
        progress,
    };
    // A file that grows or shrinks while read is refused (SizeMismatch), not cut.
    let att = ward_core::attachment::seal_stream(&mut rand::rng(), size, reader, &mut out)
        .map_err(pipeline_error)?;
    out.sync_all().map_err(ClientError::File)?;
    Ok(att)
}

/// The pipeline's error as the client's.
fn pipeline_error(e: AttachmentIoError) -> ClientError {
    match e {
        AttachmentIoError::Attachment(e) => ClientError::Attachment(e),
        AttachmentIoError::Io(e) => ClientError::File(e),
        AttachmentIoError::Thread => ClientError::File(std::io::Error::other(
            "the encryption pipeline could not start a thread",
        )),
    }
}

/// The file being sent, counting what is read of it.
struct Counting<'a> {
    inner: File,
    done: u64,
    size: u64,
    progress: &'a (dyn Fn(u64, u64) + Sync),
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done, self.size);
        Ok(n)
    }
}

/// A file created empty for writing, readable by its owner only.
pub(crate) fn create_private(path: &Path) -> Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).read(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(ClientError::File)
}

/// Checks a blob as it arrives (B1-B6) and releases the file's bytes.
pub(crate) struct BlobDecryptor(Decryptor);

impl BlobDecryptor {
    pub(crate) fn new(d: &Descriptor) -> Self {
        Self(Decryptor::new(d))
    }

    /// Takes the next bytes of the blob; appends the file bytes of every
    /// chunk that completes and authenticates.
    pub(crate) fn push(&mut self, blob: &[u8], out: &mut Vec<u8>) -> Result<()> {
        Ok(self.0.push(blob, out)?)
    }

    /// The whole blob arrived: B5 and B6.
    pub(crate) fn finish(self) -> Result<()> {
        Ok(self.0.finish()?)
    }
}
