//! Attachments: a file encrypted as a blob for the relay, and the
//! descriptor that the signed, encrypted message carries (SECURITY.md §16).
//!
//! The sender draws a fresh file key `K`, a salt and a blob id; derives a
//! payload key and a key commitment from `K` and the salt (HKDF-SHA-256);
//! writes the blob header `salt || commitment`; pads the file with PADME
//! (zeros, inside the encryption) and seals it with STREAM
//! ([`crate::stream`]); and hashes the whole blob once. The descriptor
//! (blob id, `K`, sizes, hash, media type, file name, optional thumbnail)
//! becomes the content of an envelope of type
//! [`crate::envelope::ContentType::Attachment`], so the relay sees only a
//! random blob id and a padded size.
//!
//! The receiver checks the commitment (constant time) before decrypting
//! anything, opens each chunk at its position, refuses data past the size
//! the descriptor names and a stream that ends early, checks the padding,
//! and at the end compares the blob's hash with the descriptor's: a blob
//! other than the one the sender signed for is refused.
//!
//! [`Encryptor`] and [`Decryptor`] are sans-IO (bytes pushed in, bytes
//! appended out, all on the caller's thread). [`seal_stream`] and
//! [`open_stream`] take a reader and a writer instead: the caller's thread
//! reads and runs the AEAD, and the blob hash and the writing run on one
//! scoped thread beside it (`attachment/pipeline.rs`). Same bytes, about the
//! raw AEAD's speed when a second core is free, constant memory (a few MiB).
//!
//! ```
//! use ward_core::attachment::{Decryptor, Descriptor, Encryptor};
//! let mut rng = rand::rng();
//! let file = vec![42u8; 150_000];
//! let mut blob = Vec::new();
//! let mut enc = Encryptor::new(&mut rng, file.len() as u64)?;
//! for piece in file.chunks(10_000) {
//!     enc.push(piece, &mut blob)?;          // constant memory: one chunk buffered
//! }
//! let sealed = enc.finish(&mut blob)?;
//! let descriptor = sealed.describe("application/pdf", "discharge-letter.pdf", None)?;
//! let content = descriptor.encode();        // the envelope's content (ContentType::Attachment)
//!
//! // The recipient, from the opened envelope's content and the downloaded blob:
//! let descriptor = Descriptor::parse(&content)?;
//! let mut dec = Decryptor::new(&descriptor);
//! let mut out = Vec::new();
//! for piece in blob.chunks(7_000) {
//!     dec.push(piece, &mut out)?;
//! }
//! dec.finish()?;                            // only now is the file complete
//! assert_eq!(out, file);
//! # Ok::<(), ward_core::AttachmentError>(())
//! ```

use core::fmt;

use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use ward_proto::v1::AttachmentRef;
use ward_proto::{Message, decode_canonical};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::AttachmentError;
use crate::labels::{ATTACHMENT_KEY_COMMITMENT, ATTACHMENT_PAYLOAD_KEY, HASH_ATTACHMENT_BLOB};
use crate::padding::padme;
use crate::stream::{
    CHUNK_SIZE, MAX_CHUNKS, StreamDecryptor, StreamEncryptor, TAG_SIZE, open_chunk_at,
};

/// Bytes of the blob header: `salt (32) || key commitment (32)`.
pub const HEADER_SIZE: usize = 64;
/// Bytes of the salt at the start of the header.
pub const SALT_SIZE: usize = 32;
/// Bytes of a blob id.
pub const BLOB_ID_SIZE: usize = 32;
/// Largest file the format describes (1 TiB); relays cap far lower
/// (2 GiB by default, configurable).
pub const MAX_ATTACHMENT_BYTES: u64 = 1 << 40;
/// Largest inline thumbnail.
pub const MAX_THUMBNAIL_BYTES: usize = 64 << 10;
/// Largest encoded descriptor: the thumbnail and every other field at its
/// maximum fit well inside.
pub const MAX_DESCRIPTOR_BYTES: usize = 72 << 10;
/// Longest file name, in bytes of UTF-8.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Longest media type.
pub const MAX_MEDIA_TYPE_BYTES: usize = 127;

mod pipeline;
pub use pipeline::{open_stream, seal_stream};

const CHUNK: u64 = CHUNK_SIZE as u64;
const SEALED_OVERHEAD: u64 = TAG_SIZE as u64;

/// The 32-byte key of one attachment. Zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; 32]);

impl FileKey {
    /// A fresh key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Self(k)
    }

    /// Restores a key from 32 bytes.
    pub fn import_secret(bytes: &[u8]) -> Result<Self, AttachmentError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| AttachmentError::Malformed("key"))?;
        Ok(Self(arr))
    }

    /// The 32 secret bytes, for persistence in an encrypted store only.
    pub fn export_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

/// §16.3: `prk = HKDF-Extract(salt, K)`, then the payload key and the
/// commitment as two independent HKDF-Expand outputs, exactly as the
/// envelope derives its AEAD key and commitment (§7.3 S4).
struct Keys {
    payload: Zeroizing<[u8; 32]>,
    commitment: [u8; 32],
}

fn derive(key: &FileKey, salt: &[u8]) -> Keys {
    let hk = Hkdf::<Sha256>::new(Some(salt), &key.0);
    let mut payload = Zeroizing::new([0u8; 32]);
    let mut commitment = [0u8; 32];
    // 32 bytes is far below HKDF's 255 * 32 limit: these cannot fail.
    let ok = hk.expand(ATTACHMENT_PAYLOAD_KEY, &mut *payload).is_ok()
        && hk
            .expand(ATTACHMENT_KEY_COMMITMENT, &mut commitment)
            .is_ok();
    debug_assert!(ok);
    Keys {
        payload,
        commitment,
    }
}

/// The hash of §16.4, fed as the blob goes by.
fn blob_hasher() -> Sha256 {
    let mut h = Sha256::new();
    h.update(HASH_ATTACHMENT_BLOB);
    h.update([0u8]);
    h
}

/// `SHA-256("ward/v2/hash/attachment-blob" || 0x00 || blob)` (§16.4), over
/// a blob held in memory (the encryptor and decryptor compute it
/// incrementally).
pub fn blob_hash(blob: &[u8]) -> [u8; 32] {
    let mut h = blob_hasher();
    h.update(blob);
    h.finalize().into()
}

/// Where everything sits in a blob for a file of `plaintext` bytes (§16.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the file.
    pub plaintext: u64,
    /// Bytes the stream encrypts: `PADME(plaintext)`, the file then zeros.
    pub padded: u64,
    /// Chunks in the stream: `max(1, ceil(padded / CHUNK_SIZE))`.
    pub chunks: u64,
    /// Bytes of the blob: `HEADER_SIZE + padded + 16 * chunks`.
    pub blob: u64,
}

impl Layout {
    /// The layout of a file of `plaintext` bytes.
    pub fn new(plaintext: u64) -> Result<Self, AttachmentError> {
        if plaintext > MAX_ATTACHMENT_BYTES {
            return Err(AttachmentError::TooLarge(plaintext));
        }
        let len = usize::try_from(plaintext).map_err(|_| AttachmentError::TooLarge(plaintext))?;
        let padded = padme(len) as u64;
        let chunks = padded.div_ceil(CHUNK).max(1);
        debug_assert!(chunks <= MAX_CHUNKS);
        Ok(Self {
            plaintext,
            padded,
            chunks,
            blob: HEADER_SIZE as u64 + padded + SEALED_OVERHEAD * chunks,
        })
    }

    /// Stream plaintext bytes in chunk `index` (content and padding).
    pub fn chunk_len(&self, index: u64) -> usize {
        if index + 1 < self.chunks {
            CHUNK_SIZE
        } else {
            // padded - (chunks - 1) * CHUNK is at most CHUNK_SIZE.
            (self.padded - (self.chunks - 1) * CHUNK) as usize
        }
    }

    /// File bytes in chunk `index`; the rest of the chunk is zero padding.
    pub fn content_len(&self, index: u64) -> usize {
        let before = index.saturating_mul(CHUNK);
        let left = self.plaintext.saturating_sub(before);
        (left.min(self.chunk_len(index) as u64)) as usize
    }

    /// `(offset, length)` of sealed chunk `index` in the blob, for a ranged
    /// download; `None` past the last chunk.
    pub fn chunk_range(&self, index: u64) -> Option<(u64, u64)> {
        (index < self.chunks).then(|| {
            (
                HEADER_SIZE as u64 + index * (CHUNK + SEALED_OVERHEAD),
                self.chunk_len(index) as u64 + SEALED_OVERHEAD,
            )
        })
    }

    fn is_last(&self, index: u64) -> bool {
        index + 1 == self.chunks
    }
}

/// An inline preview image.
pub struct Thumbnail {
    /// `image/...`.
    pub media_type: String,
    /// At most [`MAX_THUMBNAIL_BYTES`].
    pub bytes: Zeroizing<Vec<u8>>,
}

/// A validated attachment descriptor (§16.5): what a message of kind
/// attachment carries. Built by [`SealedAttachment::describe`] or
/// [`Descriptor::parse`]; holds the file key, so it never prints it.
pub struct Descriptor {
    blob_id: [u8; BLOB_ID_SIZE],
    key: FileKey,
    layout: Layout,
    blob_hash: [u8; 32],
    media_type: String,
    file_name: String,
    thumbnail: Option<Thumbnail>,
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Descriptor")
            .field("plaintext_size", &self.layout.plaintext)
            .field("blob_size", &self.layout.blob)
            .field("media_type", &self.media_type)
            .field("thumbnail", &self.thumbnail.is_some())
            .finish_non_exhaustive()
    }
}

/// RFC 6838 §4.2 restricted-name: a letter or digit, then letters, digits
/// and `! # $ & - ^ _ . +`.
fn restricted_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
}

/// `type "/" subtype`, no parameters, at most [`MAX_MEDIA_TYPE_BYTES`].
pub fn valid_media_type(s: &str) -> bool {
    s.len() <= MAX_MEDIA_TYPE_BYTES
        && s.split_once('/')
            .is_some_and(|(t, sub)| restricted_name(t) && restricted_name(sub))
}

/// A name a receiver can save under without leaving its folder: 1..=255
/// bytes of UTF-8, no path separator, no control character, not `.` or `..`.
pub fn valid_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_FILE_NAME_BYTES
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Whether an inline thumbnail passes D9 (§16.5): at most
/// [`MAX_THUMBNAIL_BYTES`] of an `image/...` media type (none: both empty).
/// Senders check it before encrypting a large file for nothing.
pub fn valid_thumbnail(bytes: &[u8], media_type: &str) -> bool {
    check_thumbnail(bytes, media_type).is_ok()
}

fn check_thumbnail(bytes: &[u8], media_type: &str) -> Result<(), AttachmentError> {
    let ok = if bytes.is_empty() {
        media_type.is_empty()
    } else {
        bytes.len() <= MAX_THUMBNAIL_BYTES
            && valid_media_type(media_type)
            && media_type.starts_with("image/")
    };
    if ok {
        Ok(())
    } else {
        Err(AttachmentError::Malformed("thumbnail"))
    }
}

impl Descriptor {
    /// Parses and checks a descriptor (§16.5 D1-D9), e.g. the content of an
    /// opened envelope of kind attachment.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttachmentError> {
        let mut r: AttachmentRef = decode_canonical(bytes, MAX_DESCRIPTOR_BYTES)?;
        let blob_id: [u8; BLOB_ID_SIZE] = r
            .blob_id
            .as_slice()
            .try_into()
            .map_err(|_| AttachmentError::Malformed("blob id"))?;
        let key = FileKey::import_secret(&r.key)?;
        r.key.zeroize();
        let layout = Layout::new(r.plaintext_size)?;
        if r.blob_size != layout.blob {
            return Err(AttachmentError::Malformed("blob size"));
        }
        let blob_hash: [u8; 32] = r
            .blob_hash
            .as_slice()
            .try_into()
            .map_err(|_| AttachmentError::Malformed("blob hash"))?;
        if !valid_media_type(&r.media_type) {
            return Err(AttachmentError::Malformed("media type"));
        }
        if !valid_file_name(&r.file_name) {
            return Err(AttachmentError::Malformed("file name"));
        }
        check_thumbnail(&r.thumbnail, &r.thumbnail_media_type)?;
        let thumbnail = (!r.thumbnail.is_empty()).then(|| Thumbnail {
            media_type: core::mem::take(&mut r.thumbnail_media_type),
            bytes: Zeroizing::new(core::mem::take(&mut r.thumbnail)),
        });
        Ok(Self {
            blob_id,
            key,
            layout,
            blob_hash,
            media_type: r.media_type,
            file_name: r.file_name,
            thumbnail,
        })
    }

    /// The canonical encoding: the content of the envelope that carries it.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let (thumbnail, thumbnail_media_type) = match &self.thumbnail {
            Some(t) => (t.bytes.to_vec(), t.media_type.clone()),
            None => (Vec::new(), String::new()),
        };
        let mut r = AttachmentRef {
            blob_id: self.blob_id.to_vec(),
            key: self.key.0.to_vec(),
            plaintext_size: self.layout.plaintext,
            blob_size: self.layout.blob,
            blob_hash: self.blob_hash.to_vec(),
            media_type: self.media_type.clone(),
            file_name: self.file_name.clone(),
            thumbnail,
            thumbnail_media_type,
        };
        let out = Zeroizing::new(r.encode_to_vec());
        r.key.zeroize();
        r.thumbnail.zeroize();
        out
    }

    /// The relay's name for the blob.
    pub fn blob_id(&self) -> &[u8; BLOB_ID_SIZE] {
        &self.blob_id
    }

    /// The file key.
    pub fn key(&self) -> &FileKey {
        &self.key
    }

    /// Sizes and offsets in the blob.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The hash the whole blob must have.
    pub fn blob_hash(&self) -> &[u8; 32] {
        &self.blob_hash
    }

    /// The sender's media type (a claim: sniffing it is the viewer's job).
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The sender's file name, checked safe to save under (D8).
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// The inline preview, if any.
    pub fn thumbnail(&self) -> Option<&Thumbnail> {
        self.thumbnail.as_ref()
    }
}

/// What the encryptor leaves once the blob is complete: everything of the
/// descriptor but what the application names.
pub struct SealedAttachment {
    /// The blob id drawn for this blob.
    pub blob_id: [u8; BLOB_ID_SIZE],
    /// The file key.
    pub key: FileKey,
    /// Sizes of the file and the blob.
    pub layout: Layout,
    /// §16.4 hash of the blob.
    pub blob_hash: [u8; 32],
}

impl fmt::Debug for SealedAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedAttachment")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl SealedAttachment {
    /// The descriptor for this blob, with the application's media type,
    /// file name and optional thumbnail `(media type, bytes)`, checked as a
    /// receiver will check it (D7-D9), so no sender makes one all refuse.
    pub fn describe(
        &self,
        media_type: &str,
        file_name: &str,
        thumbnail: Option<(&str, &[u8])>,
    ) -> Result<Descriptor, AttachmentError> {
        if !valid_media_type(media_type) {
            return Err(AttachmentError::Malformed("media type"));
        }
        if !valid_file_name(file_name) {
            return Err(AttachmentError::Malformed("file name"));
        }
        let (tm, tb) = thumbnail.unwrap_or(("", &[]));
        check_thumbnail(tb, tm)?;
        Ok(Descriptor {
            blob_id: self.blob_id,
            key: self.key.clone(),
            layout: self.layout,
            blob_hash: self.blob_hash,
            media_type: media_type.to_owned(),
            file_name: file_name.to_owned(),
            thumbnail: thumbnail.map(|(m, b)| Thumbnail {
                media_type: m.to_owned(),
                bytes: Zeroizing::new(b.to_vec()),
            }),
        })
    }
}

/// What a new blob draws and derives before its first byte (§16.3): shared
/// by [`Encryptor`] and [`seal_stream`], so both draw from the RNG alike.
struct Fresh {
    layout: Layout,
    key: FileKey,
    blob_id: [u8; BLOB_ID_SIZE],
    header: [u8; HEADER_SIZE],
    payload: Zeroizing<[u8; 32]>,
}

impl Fresh {
    /// Draws from `rng`, in order: the file key (32 bytes), the salt (32),
    /// the blob id (32).
    fn draw<R: CryptoRng + ?Sized>(
        rng: &mut R,
        plaintext_size: u64,
    ) -> Result<Self, AttachmentError> {
        let layout = Layout::new(plaintext_size)?;
        let key = FileKey::generate(rng);
        let mut salt = [0u8; SALT_SIZE];
        rng.fill_bytes(&mut salt);
        let mut blob_id = [0u8; BLOB_ID_SIZE];
        rng.fill_bytes(&mut blob_id);
        let keys = derive(&key, &salt);
        let mut header = [0u8; HEADER_SIZE];
        header[..SALT_SIZE].copy_from_slice(&salt);
        header[SALT_SIZE..].copy_from_slice(&keys.commitment);
        Ok(Self {
            layout,
            key,
            blob_id,
            header,
            payload: keys.payload,
        })
    }
}

/// Encrypts a file of a size known in advance (it fixes the padding and
/// which chunk is final), pushed in pieces of any length. Holds at most one
/// chunk of plaintext; a piece that covers whole chunks is encrypted
/// straight from the caller's buffer into the output.
pub struct Encryptor {
    stream: StreamEncryptor,
    blob_id: [u8; BLOB_ID_SIZE],
    key: FileKey,
    header: [u8; HEADER_SIZE],
    header_written: bool,
    layout: Layout,
    pushed: u64,
    pending: Zeroizing<Vec<u8>>,
    hasher: Sha256,
}

impl Encryptor {
    /// Starts a blob for a file of `plaintext_size` bytes. Draws from `rng`,
    /// in order: the file key (32 bytes), the salt (32), the blob id (32).
    pub fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        plaintext_size: u64,
    ) -> Result<Self, AttachmentError> {
        let Fresh {
            layout,
            key,
            blob_id,
            header,
            payload,
        } = Fresh::draw(rng, plaintext_size)?;
        Ok(Self {
            stream: StreamEncryptor::new(&payload),
            blob_id,
            key,
            header,
            header_written: false,
            layout,
            pushed: 0,
            pending: Zeroizing::new(Vec::with_capacity(CHUNK_SIZE + TAG_SIZE)),
            hasher: blob_hasher(),
        })
    }

    /// The blob's layout (its size is known before any byte is encrypted).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.hasher.update(bytes);
        out.extend_from_slice(bytes);
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            let header = self.header;
            self.emit(out, &header);
            self.header_written = true;
        }
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let tag = self.stream.seal_chunk(&mut self.pending, last)?;
        self.hasher.update(&*self.pending);
        self.hasher.update(tag);
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(&tag);
        self.pending.clear();
        Ok(())
    }

    /// Encrypts the next `input` bytes of the file, appending every chunk it
    /// completes (and the header, first) to `out`. The final chunk is
    /// written by [`Self::finish`].
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        if self.stream.is_ended() {
            return Err(AttachmentError::AfterEnd);
        }
        let given = self.pushed.saturating_add(input.len() as u64);
        if given > self.layout.plaintext {
            return Err(AttachmentError::SizeMismatch {
                declared: self.layout.plaintext,
                given,
            });
        }
        self.pushed = given;
        self.write_header(out);
        while !input.is_empty() {
            let index = self.stream.next_index();
            if self.layout.is_last(index) {
                // Held until finish: it takes the padding and the final flag.
                self.pending.extend_from_slice(input);
                break;
            }
            let len = self.layout.chunk_len(index);
            if self.pending.is_empty() && input.len() >= len {
                let (chunk, rest) = input.split_at(len);
                let start = out.len();
                out.resize(start + len, 0);
                let tag = self.stream.seal_chunk_to(chunk, &mut out[start..], false)?;
                out.extend_from_slice(&tag);
                self.hasher.update(&out[start..]);
                input = rest;
                continue;
            }
            let take = (len - self.pending.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.pending.extend_from_slice(head);
            input = rest;
            if self.pending.len() == len {
                self.seal_pending(false, out)?;
            }
        }
        Ok(())
    }

    /// Pads, writes the remaining chunks (the final one flagged) to `out`,
    /// and returns what the descriptor needs. Refuses unless exactly the
    /// declared number of bytes was pushed.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<SealedAttachment, AttachmentError> {
        if self.pushed != self.layout.plaintext {
            return Err(AttachmentError::SizeMismatch {
                declared: self.layout.plaintext,
                given: self.pushed,
            });
        }
        self.write_header(out);
        while !self.stream.is_ended() {
            let index = self.stream.next_index();
            let len = self.layout.chunk_len(index);
            self.pending.resize(len, 0);
            self.seal_pending(self.layout.is_last(index), out)?;
        }
        Ok(SealedAttachment {
            blob_id: self.blob_id,
            key: self.key.clone(),
            layout: self.layout,
            blob_hash: self.hasher.clone().finalize().into(),
        })
    }
}

/// Checks the blob header against the file key (§16.6 B1, B2) and returns
/// the payload key.
fn open_header(key: &FileKey, header: &[u8]) -> Result<Zeroizing<[u8; 32]>, AttachmentError> {
    if header.len() != HEADER_SIZE {
        return Err(AttachmentError::Truncated);
    }
    let keys = derive(key, &header[..SALT_SIZE]);
    if !bool::from(keys.commitment.ct_eq(&header[SALT_SIZE..])) {
        return Err(AttachmentError::KeyCommitmentMismatch);
    }
    Ok(keys.payload)
}

/// Decrypts a blob pushed in pieces of any length, appending the file's
/// bytes to the output as each chunk authenticates. Holds at most one
/// sealed chunk; a piece that covers a whole chunk is decrypted straight
/// from the caller's buffer into the output.
///
/// What it releases before [`Self::finish`] is authentic under the signed
/// key, in order, and a prefix of the file; the file is *complete* (the
/// exact blob the sender signed for, not cut short) only once `finish`
/// succeeds. After any error it refuses everything.
pub struct Decryptor {
    key: FileKey,
    layout: Layout,
    expected_hash: [u8; 32],
    stream: Option<StreamDecryptor>,
    header: Vec<u8>,
    pending: Zeroizing<Vec<u8>>,
    received: u64,
    hasher: Sha256,
    failed: Option<AttachmentError>,
}

impl Decryptor {
    /// A decryptor for the blob `descriptor` names.
    pub fn new(descriptor: &Descriptor) -> Self {
        Self {
            key: descriptor.key.clone(),
            layout: descriptor.layout,
            expected_hash: descriptor.blob_hash,
            stream: None,
            header: Vec::with_capacity(HEADER_SIZE),
            pending: Zeroizing::new(Vec::with_capacity(CHUNK_SIZE + TAG_SIZE)),
            received: 0,
            hasher: blob_hasher(),
            failed: None,
        }
    }

    /// Bytes of the blob received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes the next `input` bytes of the blob; appends to `out` the file
    /// bytes of every chunk that completes and authenticates.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.push_inner(input, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.pending.zeroize();
        }
        r
    }

    fn push_inner(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        // B3: nothing past the blob size the signed descriptor names.
        let total = self.received.saturating_add(input.len() as u64);
        if total > self.layout.blob {
            return Err(AttachmentError::TrailingData);
        }
        self.received = total;
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => {
                let take = (HEADER_SIZE - self.header.len()).min(input.len());
                let (head, rest) = input.split_at(take);
                self.header.extend_from_slice(head);
                input = rest;
                if self.header.len() < HEADER_SIZE {
                    return Ok(());
                }
                self.hasher.update(&self.header);
                let payload = open_header(&self.key, &self.header)?;
                StreamDecryptor::new(&payload)
            }
        };
        let r = self.chunks(&mut stream, input, out);
        self.stream = Some(stream);
        r
    }

    fn chunks(
        &mut self,
        stream: &mut StreamDecryptor,
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AttachmentError> {
        while !input.is_empty() {
            let index = stream.next_index();
            let len = self.layout.chunk_len(index);
            let sealed = len + TAG_SIZE;
            let content = self.layout.content_len(index);
            let last = self.layout.is_last(index);
            if self.pending.is_empty() && input.len() >= sealed {
                let (chunk, rest) = input.split_at(sealed);
                self.hasher.update(chunk);
                let (ct, tag) = chunk.split_at(len);
                let tag: &[u8; TAG_SIZE] = tag
                    .try_into()
                    .map_err(|_| AttachmentError::ChunkSize { index })?;
                let start = out.len();
                out.resize(start + len, 0);
                if let Err(e) = stream.open_chunk_to(ct, &mut out[start..], tag, last) {
                    out.truncate(start);
                    return Err(e);
                }
                release(out, start, content)?;
                input = rest;
                continue;
            }
            let take = (sealed - self.pending.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.pending.extend_from_slice(head);
            input = rest;
            if self.pending.len() == sealed {
                self.hasher.update(&*self.pending);
                let (ct, tag) = self.pending.split_at_mut(len);
                let tag: [u8; TAG_SIZE] = (&*tag)
                    .try_into()
                    .map_err(|_| AttachmentError::ChunkSize { index })?;
                stream.open_chunk(ct, &tag, last)?;
                let start = out.len();
                out.extend_from_slice(ct);
                self.pending.zeroize();
                release(out, start, content)?;
            }
        }
        Ok(())
    }

    /// Ends the download: refuses a blob shorter than the descriptor says
    /// (B5) and one whose hash differs (B6).
    pub fn finish(self) -> Result<(), AttachmentError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.received < self.layout.blob || !self.stream.as_ref().is_some_and(|s| s.is_ended()) {
            return Err(AttachmentError::Truncated);
        }
        let hash: [u8; 32] = self.hasher.finalize().into();
        if !bool::from(hash.ct_eq(&self.expected_hash)) {
            return Err(AttachmentError::HashMismatch);
        }
        Ok(())
    }
}

/// B4: the bytes after a chunk's content are zeros. Not constant time: the
/// padding is no secret (its length is in the signed descriptor).
fn padding_is_zero(padding: &[u8]) -> bool {
    padding.iter().all(|&b| b == 0)
}

/// Keeps the file bytes of a chunk just decrypted at `out[start..]`: its
/// first `content` bytes, once the padding after them is checked to be zero
/// (B4). On bad padding nothing of the chunk stays in `out`.
fn release(out: &mut Vec<u8>, start: usize, content: usize) -> Result<(), AttachmentError> {
    let keep = start + content;
    let padding_ok = out.get(keep..).is_some_and(padding_is_zero);
    if !padding_ok {
        if let Some(chunk) = out.get_mut(start..) {
            chunk.zeroize();
        }
        out.truncate(start);
        return Err(AttachmentError::BadPadding);
    }
    out.truncate(keep);
    Ok(())
}

/// Decrypts chunks of a blob one at a time, in any order: ranged and
/// resumed downloads (§16.6). It cannot check the blob hash; whoever
/// assembles the whole blob from ranges checks it over the stored
/// ciphertext ([`blob_hash`]) before calling the file complete.
pub struct RangedDecryptor {
    payload: Zeroizing<[u8; 32]>,
    layout: Layout,
}

impl RangedDecryptor {
    /// Checks the blob's header (its first [`HEADER_SIZE`] bytes) against
    /// the descriptor's key.
    pub fn new(descriptor: &Descriptor, header: &[u8]) -> Result<Self, AttachmentError> {
        Ok(Self {
            payload: open_header(&descriptor.key, header)?,
            layout: descriptor.layout,
        })
    }

    /// Sizes and offsets in the blob ([`Layout::chunk_range`] says which
    /// bytes to request for a chunk).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Decrypts sealed chunk `index` in place (chunk then tag, as stored)
    /// and truncates `sealed` to the file bytes it holds.
    pub fn open_chunk(&self, index: u64, sealed: &mut Vec<u8>) -> Result<(), AttachmentError> {
        if index >= self.layout.chunks {
            return Err(AttachmentError::TrailingData);
        }
        let len = self.layout.chunk_len(index);
        if sealed.len() != len + TAG_SIZE {
            return Err(AttachmentError::ChunkSize { index });
        }
        let (ct, tag) = sealed.split_at_mut(len);
        let tag: [u8; TAG_SIZE] = (&*tag)
            .try_into()
            .map_err(|_| AttachmentError::ChunkSize { index })?;
        open_chunk_at(&self.payload, index, ct, &tag, self.layout.is_last(index))?;
        sealed.truncate(len);
        release(sealed, 0, self.layout.content_len(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::SEALED_CHUNK_SIZE;

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ 0x5a).collect()
    }

    /// Encrypts `content` pushed in pieces of `piece` bytes.
    fn encrypt(content: &[u8], piece: usize) -> (Vec<u8>, Descriptor) {
        let mut enc = Encryptor::new(&mut rand::rng(), content.len() as u64).unwrap();
        let mut blob = Vec::new();
        for p in content.chunks(piece.max(1)) {
            enc.push(p, &mut blob).unwrap();
        }
        let sealed = enc.finish(&mut blob).unwrap();
        let d = sealed
            .describe("image/jpeg", "wound-day3.jpg", None)
            .unwrap();
        (blob, d)
    }

    /// Decrypts `blob` pushed in pieces of `piece` bytes: the bytes released
    /// before the first error, and the verdict.
    fn decrypt(
        d: &Descriptor,
        blob: &[u8],
        piece: usize,
    ) -> (Vec<u8>, Result<(), AttachmentError>) {
        let mut dec = Decryptor::new(d);
        let mut out = Vec::new();
        for p in blob.chunks(piece.max(1)) {
            if let Err(e) = dec.push(p, &mut out) {
                return (out, Err(e));
            }
        }
        (out, dec.finish())
    }

    fn verdict(d: &Descriptor, blob: &[u8]) -> Result<(), AttachmentError> {
        decrypt(d, blob, blob.len()).1
    }

    /// The sealed chunks of `blob`, after its header.
    fn chunks_of(blob: &[u8]) -> Vec<Vec<u8>> {
        blob[HEADER_SIZE..]
            .chunks(SEALED_CHUNK_SIZE)
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn assemble(header: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut b = header.to_vec();
        for c in chunks {
            b.extend_from_slice(c);
        }
        b
    }

    const C: usize = CHUNK_SIZE;

    #[test]
    fn layout_pads_with_padme_and_counts_chunks() {
        let l = Layout::new(0).unwrap();
        assert_eq!((l.padded, l.chunks, l.blob), (0, 1, 64 + 16));
        let l = Layout::new(1000).unwrap();
        assert_eq!((l.padded, l.chunks, l.blob), (1024, 1, 64 + 1024 + 16));
        let l = Layout::new(C as u64).unwrap();
        assert_eq!((l.padded, l.chunks), (C as u64, 1));
        let l = Layout::new(C as u64 + 1).unwrap();
        assert_eq!((l.padded, l.chunks), (C as u64 + 2048, 2));
        let l = Layout::new(2 * C as u64 + 30_000).unwrap();
        assert_eq!((l.padded, l.chunks), (163_840, 3));
        assert_eq!(l.chunk_len(2), 163_840 - 2 * C);
        assert_eq!(l.content_len(2), 30_000);
        assert_eq!(
            l.chunk_range(1),
            Some((64 + SEALED_CHUNK_SIZE as u64, SEALED_CHUNK_SIZE as u64))
        );
        assert_eq!(l.chunk_range(3), None);
        // Above 4 MiB PADME's step passes the chunk size: padding can fill
        // whole chunks, which are then all zeros and still sealed.
        let l = Layout::new((4 << 20) + 1).unwrap();
        assert_eq!(l.padded, (4 << 20) + (128 << 10));
        assert_eq!(l.content_len(l.chunks - 1), 0);
        assert_eq!(l.content_len(64), 1);
        assert_eq!(
            Layout::new(MAX_ATTACHMENT_BYTES + 1),
            Err(AttachmentError::TooLarge(MAX_ATTACHMENT_BYTES + 1))
        );
    }

    #[test]
    fn every_size_round_trips_whatever_the_pieces() {
        // Unoptimised ChaCha20 is slow: the 4 MiB file (padding spanning
        // whole chunks) gets one piece size.
        for len in [
            0,
            1,
            1000,
            C - 1,
            C,
            C + 1,
            2 * C,
            2 * C + 30_000,
            (4 << 20) + 1,
        ] {
            let content = file(len);
            let pieces: &[usize] = if len > 4 * C {
                &[C + 16]
            } else {
                &[7_000, C, 3 * C + 5]
            };
            for &piece in pieces {
                let (blob, d) = encrypt(&content, piece);
                assert_eq!(blob.len() as u64, d.layout().blob, "len {len}");
                assert_eq!(&blob_hash(&blob), d.blob_hash());
                for dpiece in [1_000, SEALED_CHUNK_SIZE + 1, blob.len()] {
                    let (out, r) = decrypt(&d, &blob, dpiece);
                    assert_eq!(r, Ok(()), "len {len} piece {piece} dpiece {dpiece}");
                    assert!(out == content, "len {len} piece {piece} dpiece {dpiece}");
                }
            }
        }
        // Byte by byte, on a small multi-chunk file.
        let content = file(C + 10);
        let (blob, d) = encrypt(&content, 1);
        let (out, r) = decrypt(&d, &blob, 1);
        assert_eq!((out == content, r), (true, Ok(())));
    }

    #[test]
    fn an_empty_file_is_one_empty_final_chunk() {
        let (blob, d) = encrypt(&[], 1);
        assert_eq!(blob.len(), HEADER_SIZE + TAG_SIZE);
        assert_eq!(decrypt(&d, &blob, 1), (Vec::new(), Ok(())));
        // Without its one chunk the header alone is a truncation.
        assert_eq!(
            verdict(&d, &blob[..HEADER_SIZE]),
            Err(AttachmentError::Truncated)
        );
    }

    #[test]
    fn truncation_reordering_dropping_and_trailing_data_are_refused() {
        let content = file(2 * C + 30_000);
        let (blob, d) = encrypt(&content, C);
        let header = &blob[..HEADER_SIZE];
        let ch = chunks_of(&blob);
        assert_eq!(ch.len(), 3);

        // Last chunk dropped: the first two are released, then finish refuses.
        let cut = assemble(header, &ch[..2]);
        let (out, r) = decrypt(&d, &cut, 4096);
        assert_eq!(r, Err(AttachmentError::Truncated));
        assert!(out == content[..2 * C], "what was released is a prefix");
        // Cut anywhere, even inside the header.
        for n in [0, 10, HEADER_SIZE, HEADER_SIZE + 5, blob.len() - 1] {
            assert_eq!(
                verdict(&d, &blob[..n]),
                Err(AttachmentError::Truncated),
                "{n}"
            );
        }
        // Reordered.
        let swapped = assemble(header, &[ch[1].clone(), ch[0].clone(), ch[2].clone()]);
        let (out, r) = decrypt(&d, &swapped, 1000);
        assert_eq!(r, Err(AttachmentError::ChunkAuthFailed { index: 0 }));
        assert!(out.is_empty(), "nothing of a refused chunk is released");
        // A middle chunk dropped, the final one moved up: it is short where a
        // full chunk must be, so it fails at its new position.
        let dropped = assemble(header, &[ch[0].clone(), ch[2].clone()]);
        assert_eq!(verdict(&d, &dropped), Err(AttachmentError::Truncated));
        let (_, r) = decrypt(
            &d,
            &assemble(header, &[ch[0].clone(), ch[2].clone(), ch[2].clone()]),
            10_000,
        );
        assert_eq!(r, Err(AttachmentError::ChunkAuthFailed { index: 1 }));
        // A chunk duplicated.
        let dup = assemble(header, &[ch[0].clone(), ch[0].clone(), ch[2].clone()]);
        assert_eq!(
            verdict(&d, &dup),
            Err(AttachmentError::ChunkAuthFailed { index: 1 })
        );
        // Trailing data, one byte or a whole chunk.
        let mut extra = blob.clone();
        extra.push(0);
        assert_eq!(verdict(&d, &extra), Err(AttachmentError::TrailingData));
        let (out, r) = decrypt(&d, &extra, SEALED_CHUNK_SIZE);
        assert_eq!(r, Err(AttachmentError::TrailingData));
        // The push that carried the extra byte was refused whole.
        assert!(content.starts_with(&out) && out.len() < content.len());
        // A flipped bit anywhere in a chunk or tag.
        for pos in [HEADER_SIZE, HEADER_SIZE + C + 3, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[pos] ^= 1;
            assert!(matches!(
                verdict(&d, &bad),
                Err(AttachmentError::ChunkAuthFailed { .. })
            ));
        }
    }

    #[test]
    fn chunks_and_blobs_of_another_file_are_refused() {
        let content = file(2 * C + 30_000);
        let (ours, d) = encrypt(&content, C);
        let (theirs, d_theirs) = encrypt(&content, C);
        // Another message's blob: its header commits to another key.
        assert_eq!(
            verdict(&d, &theirs),
            Err(AttachmentError::KeyCommitmentMismatch)
        );
        // Their chunk 1 in our stream.
        let mut mixed = chunks_of(&ours);
        mixed[1] = chunks_of(&theirs)[1].clone();
        let mixed = assemble(&ours[..HEADER_SIZE], &mixed);
        assert_eq!(
            verdict(&d, &mixed),
            Err(AttachmentError::ChunkAuthFailed { index: 1 })
        );
        // Our header on their chunks: the payload key is ours, the chunks are not.
        let grafted = assemble(&ours[..HEADER_SIZE], &chunks_of(&theirs));
        assert_eq!(
            verdict(&d, &grafted),
            Err(AttachmentError::ChunkAuthFailed { index: 0 })
        );
        // A flipped commitment bit.
        let mut flipped = ours.clone();
        flipped[SALT_SIZE] ^= 0x80;
        assert_eq!(
            verdict(&d, &flipped),
            Err(AttachmentError::KeyCommitmentMismatch)
        );
        // A flipped salt bit changes the derived commitment too.
        let mut salted = ours.clone();
        salted[0] ^= 1;
        assert_eq!(
            verdict(&d, &salted),
            Err(AttachmentError::KeyCommitmentMismatch)
        );
        // A descriptor naming our key with their hash: every chunk opens,
        // but the blob is not the one the signed message names.
        let mut r: AttachmentRef = decode_canonical(&d.encode(), MAX_DESCRIPTOR_BYTES).unwrap();
        r.blob_hash = d_theirs.blob_hash().to_vec();
        let wrong_hash = Descriptor::parse(&r.encode_to_vec()).unwrap();
        let (out, res) = decrypt(&wrong_hash, &ours, SEALED_CHUNK_SIZE);
        assert_eq!(res, Err(AttachmentError::HashMismatch));
        assert!(
            out == content,
            "the chunks were authentic; only finish refuses"
        );
    }

    #[test]
    fn a_decryptor_that_failed_stays_failed() {
        let (blob, d) = encrypt(&file(C + 1), C);
        let mut dec = Decryptor::new(&d);
        let mut bad = blob.clone();
        bad[HEADER_SIZE] ^= 1;
        let mut out = Vec::new();
        assert!(dec.push(&bad, &mut out).is_err());
        assert_eq!(
            dec.push(&blob[blob.len() - 10..], &mut out),
            Err(AttachmentError::ChunkAuthFailed { index: 0 })
        );
        assert!(out.is_empty());
        assert!(dec.finish().is_err());
    }

    #[test]
    fn non_zero_padding_is_refused() {
        // Built by hand: a 1000-byte file whose padding (to 1024) is not zero.
        let key = FileKey([3; 32]);
        let salt = [4u8; SALT_SIZE];
        let keys = derive(&key, &salt);
        let mut chunk = file(1024);
        let tag = StreamEncryptor::new(&keys.payload)
            .seal_chunk(&mut chunk, true)
            .unwrap();
        let mut blob = salt.to_vec();
        blob.extend_from_slice(&keys.commitment);
        blob.extend_from_slice(&chunk);
        blob.extend_from_slice(&tag);
        let sealed = SealedAttachment {
            blob_id: [1; 32],
            key,
            layout: Layout::new(1000).unwrap(),
            blob_hash: blob_hash(&blob),
        };
        let d = sealed.describe("text/plain", "a.txt", None).unwrap();
        assert_eq!(
            decrypt(&d, &blob, 100),
            (Vec::new(), Err(AttachmentError::BadPadding))
        );
        let r = RangedDecryptor::new(&d, &blob[..HEADER_SIZE]).unwrap();
        let mut c = blob[HEADER_SIZE..].to_vec();
        assert_eq!(r.open_chunk(0, &mut c), Err(AttachmentError::BadPadding));
    }

    #[test]
    fn ranged_decryption_opens_each_chunk_alone() {
        let content = file(3 * C);
        let (blob, d) = encrypt(&content, C);
        let r = RangedDecryptor::new(&d, &blob[..HEADER_SIZE]).unwrap();
        let layout = *r.layout();
        assert_eq!(layout.chunks, 3);
        // Backwards, as a resumed download might.
        for i in (0..3u64).rev() {
            let (off, len) = layout.chunk_range(i).unwrap();
            let mut c = blob[off as usize..(off + len) as usize].to_vec();
            r.open_chunk(i, &mut c).unwrap();
            let at = i as usize * C;
            assert!(c == content[at..at + layout.content_len(i)]);
        }
        // A chunk asked for at another index, the final chunk as a middle
        // one, a middle one as the final one: all refused.
        let (off, len) = layout.chunk_range(0).unwrap();
        let first = blob[off as usize..(off + len) as usize].to_vec();
        assert_eq!(
            r.open_chunk(1, &mut first.clone()),
            Err(AttachmentError::ChunkAuthFailed { index: 1 })
        );
        let (off2, len2) = layout.chunk_range(2).unwrap();
        let last = blob[off2 as usize..(off2 + len2) as usize].to_vec();
        assert_eq!(
            r.open_chunk(1, &mut last.clone()),
            Err(AttachmentError::ChunkAuthFailed { index: 1 })
        );
        assert_eq!(
            r.open_chunk(2, &mut first.clone()),
            Err(AttachmentError::ChunkAuthFailed { index: 2 })
        );
        assert_eq!(
            r.open_chunk(3, &mut first.clone()),
            Err(AttachmentError::TrailingData)
        );
        assert_eq!(
            r.open_chunk(0, &mut first[..100].to_vec()),
            Err(AttachmentError::ChunkSize { index: 0 })
        );
        // The header of another blob does not pass.
        let (other, _) = encrypt(&content, C);
        assert_eq!(
            RangedDecryptor::new(&d, &other[..HEADER_SIZE]).err(),
            Some(AttachmentError::KeyCommitmentMismatch)
        );
    }

    #[test]
    fn the_encryptor_holds_the_declared_size() {
        let mut enc = Encryptor::new(&mut rand::rng(), 10).unwrap();
        let mut out = Vec::new();
        enc.push(&[0; 6], &mut out).unwrap();
        assert_eq!(
            enc.push(&[0; 5], &mut out),
            Err(AttachmentError::SizeMismatch {
                declared: 10,
                given: 11
            })
        );
        assert_eq!(
            enc.finish(&mut out).err(),
            Some(AttachmentError::SizeMismatch {
                declared: 10,
                given: 6
            })
        );
        assert_eq!(
            Encryptor::new(&mut rand::rng(), MAX_ATTACHMENT_BYTES + 1)
                .err()
                .map(|e| e.to_string()),
            Some(AttachmentError::TooLarge(MAX_ATTACHMENT_BYTES + 1).to_string())
        );
    }

    fn sealed_small() -> SealedAttachment {
        let mut enc = Encryptor::new(&mut rand::rng(), 3).unwrap();
        let mut blob = Vec::new();
        enc.push(b"ECG", &mut blob).unwrap();
        enc.finish(&mut blob).unwrap()
    }

    #[test]
    fn descriptors_round_trip_and_never_print_the_key() {
        let s = sealed_small();
        let thumb = vec![9u8; 2000];
        let d = s
            .describe(
                "image/png",
                "ECG 12-lead, bed 4.png",
                Some(("image/png", &thumb)),
            )
            .unwrap();
        let bytes = d.encode();
        let back = Descriptor::parse(&bytes).unwrap();
        assert_eq!(back.blob_id(), &s.blob_id);
        assert_eq!(back.key().export_secret(), s.key.export_secret());
        assert_eq!(back.layout(), &s.layout);
        assert_eq!(back.file_name(), "ECG 12-lead, bed 4.png");
        assert_eq!(back.thumbnail().map(|t| t.bytes.to_vec()), Some(thumb));
        let key_hex: String = s.key.0.iter().map(|b| format!("{b:02x}")).collect();
        let printed = format!("{back:?} {s:?} {:?}", s.key);
        assert!(!printed.contains(&key_hex) && !printed.contains(&format!("{:?}", s.key.0)));
    }

    #[test]
    fn descriptor_rules() {
        let s = sealed_small();
        let good: AttachmentRef = decode_canonical(
            &s.describe("text/plain", "n.txt", None).unwrap().encode(),
            MAX_DESCRIPTOR_BYTES,
        )
        .unwrap();
        let bad = |edit: &dyn Fn(&mut AttachmentRef)| {
            let mut r = good.clone();
            edit(&mut r);
            Descriptor::parse(&r.encode_to_vec()).err()
        };
        let m = |w| Some(AttachmentError::Malformed(w));
        assert_eq!(bad(&|r| r.blob_id.pop().map_or((), drop)), m("blob id"));
        assert_eq!(bad(&|r| r.key.push(0)), m("key"));
        assert_eq!(bad(&|r| r.blob_size += 1), m("blob size"));
        assert_eq!(
            bad(&|r| r.plaintext_size = MAX_ATTACHMENT_BYTES + 1),
            Some(AttachmentError::TooLarge(MAX_ATTACHMENT_BYTES + 1))
        );
        assert_eq!(bad(&|r| r.blob_hash.clear()), m("blob hash"));
        for mt in [
            "",
            "text",
            "text/",
            "/plain",
            "text/plain; charset=utf-8",
            "te xt/plain",
            ".a/b",
        ] {
            assert_eq!(
                bad(&|r| r.media_type = mt.into()),
                m("media type"),
                "{mt:?}"
            );
        }
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "..\\evil.exe",
            "a\0b",
            "line\nbreak",
            &"x".repeat(256),
        ] {
            assert_eq!(
                bad(&|r| r.file_name = name.into()),
                m("file name"),
                "{name:?}"
            );
        }
        assert_eq!(bad(&|r| r.thumbnail = vec![1]), m("thumbnail"));
        assert_eq!(
            bad(&|r| r.thumbnail_media_type = "image/png".into()),
            m("thumbnail")
        );
        assert_eq!(
            bad(&|r| {
                r.thumbnail = vec![1];
                r.thumbnail_media_type = "application/pdf".into();
            }),
            m("thumbnail")
        );
        assert_eq!(
            bad(&|r| {
                r.thumbnail = vec![1; MAX_THUMBNAIL_BYTES + 1];
                r.thumbnail_media_type = "image/png".into();
            }),
            m("thumbnail")
        );
        // Non-canonical bytes (an unknown field appended).
        let mut extra = good.encode_to_vec();
        extra.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert_eq!(
            Descriptor::parse(&extra).err(),
            Some(AttachmentError::Decode(
                ward_proto::DecodeError::NonCanonical
            ))
        );
        // Names a receiver can save under.
        assert!(valid_file_name("Lettre de sortie — M. Dupont.pdf"));
        assert!(valid_media_type(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        ));
        // describe refuses what parse would refuse.
        assert_eq!(s.describe("text/plain", "../x", None).err(), m("file name"));
    }

    #[test]
    fn an_attachment_message_carries_the_descriptor_inside_the_envelope() {
        use crate::envelope::{self, ContentType, ReceivedEnvelope, SealRequest};
        use crate::testkit::Org;
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let alice = org.enroll(&mut rng, "alice");
        let bob = org.enroll(&mut rng, "bob");
        let content = file(C + 5);
        let (blob, d) = encrypt(&content, C);
        let req = |content: &'static [u8]| SealRequest {
            conversation_id: crate::ConversationId([1; 16]),
            recipients: &[],
            content_type: ContentType::Attachment,
            content,
            timestamp_ms: 1,
        };
        let desc = d.encode();
        let recipients = [&alice.chain, &bob.chain];
        let sealed = envelope::seal(
            &mut rng,
            &alice.device,
            &alice.chain,
            &SealRequest {
                recipients: &recipients,
                content: &desc,
                ..req(b"")
            },
        )
        .unwrap();
        let received = ReceivedEnvelope::parse(&sealed.envelope).unwrap();
        let key = crate::wrap::unwrap_resource_key(
            &sealed.wrapped_keys[1].1,
            &received.resource_id(),
            &bob.user_key,
        )
        .unwrap();
        let opened = received.open(&alice.chain, "bob", &key).unwrap();
        assert_eq!(opened.content_type, ContentType::Attachment);
        let back = Descriptor::parse(&opened.content).unwrap();
        let (out, r) = decrypt(&back, &blob, 5000);
        assert_eq!((out == content, r), (true, Ok(())));
        // Seal refuses content of kind attachment that is not a descriptor.
        assert_eq!(
            envelope::seal(
                &mut rng,
                &alice.device,
                &alice.chain,
                &SealRequest {
                    recipients: &recipients,
                    ..req(b"not a descriptor")
                },
            )
            .err(),
            Some(crate::SealError::InvalidAttachment)
        );
    }
}
