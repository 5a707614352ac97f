//! The one place the SDK calls ward-core's attachment encryptor and
//! decryptor (SECURITY.md §16), so that a faster implementation (pipelined,
//! hashing on a second thread) can be swapped in here alone.
//!
//! Both directions run in constant memory: a buffer of [`IO_BUFFER`] bytes
//! of input and what the core appends for it. They are synchronous: call
//! them from a blocking thread.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use ward_core::attachment::{Decryptor, Descriptor, Encryptor, Layout, SealedAttachment};
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
pub(crate) fn encrypt_to_spool(
    src: &Path,
    spool: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SealedAttachment> {
    let mut input = File::open(src).map_err(ClientError::File)?;
    let size = input.metadata().map_err(ClientError::File)?.len();
    let mut enc = Encryptor::new(&mut rand::rng(), size)?;
    let mut out = create_private(spool)?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; IO_BUFFER]);
    let mut sealed = Vec::with_capacity(IO_BUFFER + 4096);
    let mut done = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(ClientError::File)?;
        if n == 0 {
            break;
        }
        // A file that grows while read is refused (SizeMismatch), not cut.
        enc.push(&buf[..n], &mut sealed)?;
        out.write_all(&sealed).map_err(ClientError::File)?;
        sealed.clear();
        done += n as u64;
        progress(done, size);
    }
    let att = enc.finish(&mut sealed)?;
    out.write_all(&sealed).map_err(ClientError::File)?;
    out.sync_all().map_err(ClientError::File)?;
    Ok(att)
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
