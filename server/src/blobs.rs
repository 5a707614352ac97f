//! The relay's attachment blob store (SECURITY.md §16.9): an interface an
//! object store can implement, and the files-on-disk implementation.
//!
//! A blob is uploaded in **pieces** by index, resumably: piece 0 is the
//! 64-byte blob header and sealed chunk 0, piece `i > 0` is sealed chunk `i`
//! (`ward_core::attachment::Layout`). The relay never decrypts; it knows
//! the piece boundaries from the declared blob size alone, since chunk
//! lengths are public (§16.2), and accepts a piece only at the next index
//! with exactly the length that index must have. A broken upload resumes at
//! [`BlobStore::next_piece`]; a stored piece is never sent again. Once the
//! last piece is stored the blob is sealed (immutable) and only then
//! readable, by byte range. Authorisation (the uploading device writes,
//! recipient devices read), quotas and deletion after the last fetch sit
//! above this interface (`crate::blob_meta`, `crate::blob_session`).
//!
//! On disk: `<id>.part` while uploading (with `<id>.meta` holding the owner
//! and size), renamed to `<id>.blob` when complete. Each piece is fsynced
//! before it is acknowledged; after a crash a partly written tail piece is
//! cut off on resume, so the stored length is always a piece boundary.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ward_core::attachment::{BLOB_ID_SIZE, HEADER_SIZE};
use ward_core::stream::{MAX_CHUNKS, SEALED_CHUNK_SIZE, TAG_SIZE};

/// Default cap on one blob: 2 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 2 << 30;
/// Smallest blob: a header and one empty final chunk (an empty file).
pub const MIN_BLOB_BYTES: u64 = (HEADER_SIZE + TAG_SIZE) as u64;

/// A blob's name: 32 random bytes chosen by the sender.
pub type BlobId = [u8; BLOB_ID_SIZE];

/// Why a blob operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The declared size is over the store's cap.
    #[error("blob of {size} bytes exceeds the cap of {max}")]
    TooLarge {
        /// Declared size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// The declared size is not the size of any blob (§16.2).
    #[error("{0} is not a valid blob size")]
    InvalidSize(u64),
    /// The blob id is in use by another upload or blob, with another owner
    /// or size.
    #[error("blob id already in use")]
    Exists,
    /// No such blob (or upload).
    #[error("no such blob")]
    NotFound,
    /// A piece at another index than the next one.
    #[error("expected piece {expected}, got {got}")]
    OutOfOrder {
        /// The next index the store expects.
        expected: u64,
        /// The index given.
        got: u64,
    },
    /// A piece of the wrong length for its index.
    #[error("piece {index} must be {expected} bytes, got {got}")]
    PieceLength {
        /// The piece index.
        index: u64,
        /// Its length by the layout.
        expected: u64,
        /// The length given.
        got: u64,
    },
    /// A read of an upload not yet complete.
    #[error("blob is not complete yet")]
    Incomplete,
    /// A byte range outside the blob.
    #[error("range outside the blob")]
    Range,
    /// The upload belongs to another user.
    #[error("blob belongs to another user")]
    NotOwner,
    /// The file system failed.
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadState {
    /// The index of the next piece to send; equal to `pieces` when complete.
    pub next_piece: u64,
    /// Pieces in the blob.
    pub pieces: u64,
    /// Whether the blob is complete (sealed, readable).
    pub complete: bool,
}

/// Piece boundaries of a blob of `size` bytes, from its size alone: `N`
/// chunks, all sealed chunks full but the last (§16.2). `None` if no file
/// has a blob of that size.
pub fn pieces(size: u64) -> Option<u64> {
    let body = size.checked_sub(HEADER_SIZE as u64)?;
    let sealed = SEALED_CHUNK_SIZE as u64;
    let n = body.div_ceil(sealed).max(1);
    // The last sealed chunk holds 1..=CHUNK_SIZE bytes and its tag, or only
    // a tag when it is the only chunk (the empty file).
    let last = body.checked_sub((n - 1) * sealed)?;
    let ok = if n == 1 {
        last >= TAG_SIZE as u64
    } else {
        last > TAG_SIZE as u64
    };
    (ok && n <= MAX_CHUNKS).then_some(n)
}

/// `(offset, length)` of piece `index` of a blob of `size` bytes.
fn piece_range(size: u64, index: u64) -> (u64, u64) {
    let sealed = SEALED_CHUNK_SIZE as u64;
    let start = if index == 0 {
        0
    } else {
        HEADER_SIZE as u64 + index * sealed
    };
    let end = (HEADER_SIZE as u64 + (index + 1) * sealed).min(size);
    (start, end - start)
}

/// A store of attachment blobs. Synchronous (the relay calls it from a
/// blocking task); an S3-compatible store maps `begin` and `put_piece` to
/// a multipart upload and `read_range` to a ranged GET.
pub trait BlobStore: Send + Sync {
    /// Starts the upload of blob `id` of `size` bytes for `owner`, or, if
    /// the same owner already started it with the same size, resumes it.
    fn begin(&self, id: &BlobId, owner: &str, size: u64) -> Result<UploadState, BlobError>;

    /// Stores piece `index`, which must be the next one, with exactly the
    /// length its index has; durable when this returns.
    fn put_piece(
        &self,
        id: &BlobId,
        owner: &str,
        index: u64,
        bytes: &[u8],
    ) -> Result<UploadState, BlobError>;

    /// Where the upload of `id` stands.
    fn state(&self, id: &BlobId) -> Result<UploadState, BlobError>;

    /// Bytes `offset .. offset + len` of a complete blob.
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError>;

    /// Removes the blob or upload; `NotFound` if there is none.
    fn delete(&self, id: &BlobId) -> Result<(), BlobError>;

    /// Every blob or upload the store holds (for the sweeper to find files
    /// no record refers to, e.g. after a database restore).
    fn ids(&self) -> Result<Vec<BlobId>, BlobError>;
}

/// Blobs as files in one directory.
pub struct FsBlobStore {
    dir: PathBuf,
    max_blob_bytes: u64,
    /// Serialises writers: pieces of one upload must not interleave, and a
    /// begin must not race another for the same id.
    lock: Mutex<()>,
}

struct Meta {
    owner: String,
    size: u64,
}

impl FsBlobStore {
    /// A store in `dir` (created if missing), refusing blobs over
    /// `max_blob_bytes` ([`DEFAULT_MAX_BLOB_BYTES`] by default).
    pub fn open(dir: impl AsRef<Path>, max_blob_bytes: u64) -> Result<Self, BlobError> {
        fs::create_dir_all(dir.as_ref())?;
        Ok(Self {
            dir: dir.as_ref().to_owned(),
            max_blob_bytes,
            lock: Mutex::new(()),
        })
    }

    fn path(&self, id: &BlobId, ext: &str) -> PathBuf {
        let name: String = id.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.{ext}"))
    }

    fn read_meta(&self, id: &BlobId) -> Result<Option<Meta>, BlobError> {
        let text = match fs::read_to_string(self.path(id, "meta")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (size, owner) = text.split_once(' ').ok_or(BlobError::NotFound)?;
        let size = size.parse().map_err(|_| BlobError::NotFound)?;
        Ok(Some(Meta {
            owner: owner.to_owned(),
            size,
        }))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no partial state in memory:
        // the files are the state, so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of an upload in progress, after cutting a torn tail piece.
    fn part_state(&self, id: &BlobId, size: u64) -> Result<UploadState, BlobError> {
        let n = pieces(size).ok_or(BlobError::InvalidSize(size))?;
        let file = OpenOptions::new().write(true).open(self.path(id, "part"))?;
        let len = file.metadata()?.len();
        let mut done = 0;
        while done < n {
            let (start, plen) = piece_range(size, done);
            if start + plen > len {
                break;
            }
            done += 1;
        }
        let boundary = if done == 0 {
            0
        } else {
            let (s, l) = piece_range(size, done - 1);
            s + l
        };
        if len != boundary {
            file.set_len(boundary)?;
            file.sync_all()?;
        }
        Ok(UploadState {
            next_piece: done,
            pieces: n,
            complete: false,
        })
    }

    fn sync_dir(&self) -> Result<(), BlobError> {
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

impl BlobStore for FsBlobStore {
    fn begin(&self, id: &BlobId, owner: &str, size: u64) -> Result<UploadState, BlobError> {
        if size > self.max_blob_bytes {
            return Err(BlobError::TooLarge {
                size,
                max: self.max_blob_bytes,
            });
        }
        let n = pieces(size).ok_or(BlobError::InvalidSize(size))?;
        let _g = self.guard();
        if let Some(meta) = self.read_meta(id)? {
            if meta.owner != owner || meta.size != size {
                return Err(BlobError::Exists);
            }
            if self.path(id, "blob").exists() {
                return Ok(UploadState {
                    next_piece: n,
                    pieces: n,
                    complete: true,
                });
            }
            return self.part_state(id, size);
        }
        // `create_new` makes a concurrent or stale upload of the id an error
        // rather than a silent truncation.
        let mut meta = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(id, "meta"))?;
        meta.write_all(format!("{size} {owner}").as_bytes())?;
        meta.sync_all()?;
        File::create(self.path(id, "part"))?.sync_all()?;
        self.sync_dir()?;
        Ok(UploadState {
            next_piece: 0,
            pieces: n,
            complete: false,
        })
    }

    fn put_piece(
        &self,
        id: &BlobId,
        owner: &str,
        index: u64,
        bytes: &[u8],
    ) -> Result<UploadState, BlobError> {
        let _g = self.guard();
        let meta = self.read_meta(id)?.ok_or(BlobError::NotFound)?;
        if meta.owner != owner {
            return Err(BlobError::NotOwner);
        }
        let mut state = match self.path(id, "blob").exists() {
            true => {
                return Err(BlobError::OutOfOrder {
                    expected: pieces(meta.size).unwrap_or(0),
                    got: index,
                });
            }
            false => self.part_state(id, meta.size)?,
        };
        if index != state.next_piece {
            return Err(BlobError::OutOfOrder {
                expected: state.next_piece,
                got: index,
            });
        }
        let (start, len) = piece_range(meta.size, index);
        if bytes.len() as u64 != len {
            return Err(BlobError::PieceLength {
                index,
                expected: len,
                got: bytes.len() as u64,
            });
        }
        let part = self.path(id, "part");
        let mut file = OpenOptions::new().write(true).open(&part)?;
        file.seek(SeekFrom::Start(start))?;
        file.write_all(bytes)?;
        file.sync_data()?;
        state.next_piece += 1;
        if state.next_piece == state.pieces {
            drop(file);
            fs::rename(&part, self.path(id, "blob"))?;
            self.sync_dir()?;
            state.complete = true;
        }
        Ok(state)
    }

    fn state(&self, id: &BlobId) -> Result<UploadState, BlobError> {
        let _g = self.guard();
        let meta = self.read_meta(id)?.ok_or(BlobError::NotFound)?;
        if self.path(id, "blob").exists() {
            let n = pieces(meta.size).ok_or(BlobError::InvalidSize(meta.size))?;
            return Ok(UploadState {
                next_piece: n,
                pieces: n,
                complete: true,
            });
        }
        self.part_state(id, meta.size)
    }

    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let mut file = match File::open(self.path(id, "blob")) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if self.path(id, "part").exists() {
                    BlobError::Incomplete
                } else {
                    BlobError::NotFound
                });
            }
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        let end = offset.checked_add(len).ok_or(BlobError::Range)?;
        if end > size {
            return Err(BlobError::Range);
        }
        let len = usize::try_from(len).map_err(|_| BlobError::Range)?;
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn delete(&self, id: &BlobId) -> Result<(), BlobError> {
        let _g = self.guard();
        let mut found = false;
        for ext in ["blob", "part", "meta"] {
            match fs::remove_file(self.path(id, ext)) {
                Ok(()) => found = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !found {
            return Err(BlobError::NotFound);
        }
        self.sync_dir()
    }

    fn ids(&self) -> Result<Vec<BlobId>, BlobError> {
        let mut out = std::collections::BTreeSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some((stem, _)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            if stem.len() != 2 * BLOB_ID_SIZE {
                continue;
            }
            let mut id = [0u8; BLOB_ID_SIZE];
            let ok = (0..BLOB_ID_SIZE).all(|i| {
                u8::from_str_radix(&stem[2 * i..2 * i + 2], 16)
                    .map(|b| id[i] = b)
                    .is_ok()
            });
            if ok {
                out.insert(id);
            }
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use ward_core::attachment::{Decryptor, Descriptor, Encryptor, Layout};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let mut name = [0u8; 8];
            getrandom::fill(&mut name).unwrap();
            let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
            let p = std::env::temp_dir().join(format!("ward-blobs-{hex}"));
            fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A real encrypted blob of a `len`-byte file and its descriptor.
    fn blob(len: usize) -> (Vec<u8>, Vec<u8>, Descriptor) {
        let content: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let mut enc = Encryptor::new(&mut rand::rng(), len as u64).unwrap();
        let mut blob = Vec::new();
        enc.push(&content, &mut blob).unwrap();
        let d = enc
            .finish(&mut blob)
            .unwrap()
            .describe("application/pdf", "scan.pdf", None)
            .unwrap();
        (content, blob, d)
    }

    fn piece(blob: &[u8], i: u64) -> &[u8] {
        let (s, l) = piece_range(blob.len() as u64, i);
        &blob[s as usize..(s + l) as usize]
    }

    #[test]
    fn piece_counts_follow_the_layout() {
        for n in [
            0u64,
            1,
            1000,
            65_535,
            65_536,
            65_537,
            131_072,
            161_072,
            (4 << 20) + 1,
        ] {
            let l = Layout::new(n).unwrap();
            assert_eq!(pieces(l.blob), Some(l.chunks), "{n}");
            // Piece i > 0 is exactly chunk i of the layout; piece 0 adds the header.
            for i in 1..l.chunks {
                let (off, len) = l.chunk_range(i).unwrap();
                assert_eq!(piece_range(l.blob, i), (off, len));
            }
        }
        // Sizes no file has: below the minimum, and a final chunk of only a tag
        // after other chunks.
        assert_eq!(pieces(MIN_BLOB_BYTES - 1), None);
        assert_eq!(pieces(64 + 65_552 + 16), None);
    }

    #[test]
    fn an_upload_broken_off_resumes_without_resending_and_then_reads_back() {
        let dir = TempDir::new();
        let store = FsBlobStore::open(&dir.0, DEFAULT_MAX_BLOB_BYTES).unwrap();
        let (content, blob, d) = blob(5 * 65_536 + 1234);
        let id = *d.blob_id();
        let size = blob.len() as u64;
        let st = store.begin(&id, "dr.martin", size).unwrap();
        assert_eq!((st.next_piece, st.pieces), (0, 6));
        for i in 0..3 {
            store
                .put_piece(&id, "dr.martin", i, piece(&blob, i))
                .unwrap();
        }
        // The app dies mid-piece: half of piece 3 reached the disk.
        {
            let mut f = OpenOptions::new()
                .append(true)
                .open(store.path(&id, "part"))
                .unwrap();
            f.write_all(&piece(&blob, 3)[..1000]).unwrap();
        }
        drop(store);
        // A new process, the same directory: the upload resumes at piece 3.
        let store = FsBlobStore::open(&dir.0, DEFAULT_MAX_BLOB_BYTES).unwrap();
        assert_eq!(store.begin(&id, "dr.martin", size).unwrap().next_piece, 3);
        assert!(matches!(
            store.put_piece(&id, "dr.martin", 2, piece(&blob, 2)),
            Err(BlobError::OutOfOrder {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            store.read_range(&id, 0, 10),
            Err(BlobError::Incomplete)
        ));
        for i in 3..6 {
            let st = store
                .put_piece(&id, "dr.martin", i, piece(&blob, i))
                .unwrap();
            assert_eq!(st.complete, i == 5);
        }
        assert_eq!(store.read_range(&id, 0, size).unwrap(), blob);
        // A ranged, resumed download: the second half read after the first,
        // each chunk decrypting as it comes.
        let mut dec = Decryptor::new(&d);
        let mut out = Vec::new();
        let half = size / 2;
        dec.push(&store.read_range(&id, 0, half).unwrap(), &mut out)
            .unwrap();
        dec.push(&store.read_range(&id, half, size - half).unwrap(), &mut out)
            .unwrap();
        dec.finish().unwrap();
        assert!(out == content);
        assert!(matches!(
            store.read_range(&id, size - 1, 2),
            Err(BlobError::Range)
        ));
        // Complete blobs are immutable.
        assert!(
            store
                .put_piece(&id, "dr.martin", 5, piece(&blob, 5))
                .is_err()
        );
    }

    #[test]
    fn the_store_refuses_what_it_must() {
        let dir = TempDir::new();
        let store = FsBlobStore::open(&dir.0, 200_000).unwrap();
        let (_, blob, d) = blob(150_000);
        let id = *d.blob_id();
        let size = blob.len() as u64;
        assert!(matches!(
            store.begin(&[9; 32], "a", 300_000),
            Err(BlobError::TooLarge { max: 200_000, .. })
        ));
        assert!(matches!(
            store.begin(&[9; 32], "a", 65),
            Err(BlobError::InvalidSize(65))
        ));
        store.begin(&id, "a", size).unwrap();
        // Another user, or another size, cannot take over the id.
        assert!(matches!(
            store.begin(&id, "b", size),
            Err(BlobError::Exists)
        ));
        assert!(matches!(
            store.begin(&id, "a", size + 1),
            Err(BlobError::Exists)
        ));
        assert!(matches!(
            store.put_piece(&id, "b", 0, piece(&blob, 0)),
            Err(BlobError::NotOwner)
        ));
        // A piece of the wrong length, or out of order.
        assert!(matches!(
            store.put_piece(&id, "a", 0, &piece(&blob, 0)[1..]),
            Err(BlobError::PieceLength { index: 0, .. })
        ));
        assert!(matches!(
            store.put_piece(&id, "a", 1, piece(&blob, 1)),
            Err(BlobError::OutOfOrder {
                expected: 0,
                got: 1
            })
        ));
        assert!(matches!(
            store.read_range(&[8; 32], 0, 1),
            Err(BlobError::NotFound)
        ));
        assert_eq!(store.ids().unwrap(), vec![id]);
        // Deletion removes every file of the blob.
        store.delete(&id).unwrap();
        assert!(matches!(store.state(&id), Err(BlobError::NotFound)));
        assert!(matches!(store.delete(&id), Err(BlobError::NotFound)));
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0);
    }

    #[test]
    fn the_store_holds_no_plaintext() {
        let dir = TempDir::new();
        let store = FsBlobStore::open(&dir.0, DEFAULT_MAX_BLOB_BYTES).unwrap();
        let marker = b"PATIENT DUPONT JEAN 1956-03-02 ";
        let content: Vec<u8> = marker.iter().copied().cycle().take(200_000).collect();
        let mut enc = Encryptor::new(&mut rand::rng(), content.len() as u64).unwrap();
        let mut blob = Vec::new();
        enc.push(&content, &mut blob).unwrap();
        let sealed = enc.finish(&mut blob).unwrap();
        let id = sealed.blob_id;
        store.begin(&id, "a", blob.len() as u64).unwrap();
        for i in 0..pieces(blob.len() as u64).unwrap() {
            store.put_piece(&id, "a", i, piece(&blob, i)).unwrap();
        }
        for entry in fs::read_dir(&dir.0).unwrap() {
            let bytes = fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(16).any(|w| w == &marker[..16]));
        }
    }
}
