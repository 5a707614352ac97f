//! What the relay records about attachment blobs (SECURITY.md §16.9), in
//! SQLite beside the mailboxes: who owns each blob (the only device that may
//! write it), its declared size (the per-user blob quota), whether it is
//! complete, and its readers (the recipient devices of the `Send` that named
//! it) with whether each fetched it to the end. The bytes themselves are
//! files behind [`crate::blobs::BlobStore`]; the two are kept consistent by
//! order: a row is written before its file and removed after it, so a file
//! without a row is an orphan (after a database restore) that the sweeper
//! deletes.
//!
//! Writes go through the group-committing writer ([`BlobOp`]); the checks a
//! download needs are reads ([`reader_may_read`]).

use rusqlite::{Connection, OptionalExtension, params};

use crate::blobs::BlobId;
use crate::error::StorageError;
use crate::storage::Mailbox;

/// Most blob ids one `Send` may name.
pub const MAX_SEND_BLOBS: usize = 16;

/// A blob's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// The uploading device.
    pub owner: Mailbox,
    /// Declared size.
    pub size: u64,
    /// All pieces stored.
    pub complete: bool,
}

/// A change to the blob records, run by the writer in its transaction.
#[derive(Debug)]
pub enum BlobOp {
    /// Start or resume the upload of `id`, `size` bytes, by `owner`, if the
    /// owner's user stays within `quota` bytes of blobs.
    Open {
        /// The blob.
        id: BlobId,
        /// The authenticated device.
        owner: Mailbox,
        /// Declared blob size.
        size: u64,
        /// The per-user blob quota, in bytes.
        quota: u64,
    },
    /// The last piece of `id` is stored.
    Complete {
        /// The blob.
        id: BlobId,
    },
    /// The recipients of a `Send` by a device of `owner_user` become
    /// readers of every blob in `ids`, which must all be complete blobs of
    /// that user; otherwise nothing is recorded.
    AddReaders {
        /// The sending user.
        owner_user: String,
        /// The blobs the `Send` names.
        ids: Vec<BlobId>,
        /// The `Send`'s recipient devices.
        readers: Vec<Mailbox>,
    },
    /// `reader` fetched `id` to the end.
    Fetched {
        /// The blob.
        id: BlobId,
        /// The reading device.
        reader: Mailbox,
    },
    /// The file of `id` is gone: drop its records.
    Forget {
        /// The blob.
        id: BlobId,
    },
}

/// What a [`BlobOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    /// `Open`: a new upload was recorded.
    Opened,
    /// `Open`: the same device's upload of the same size exists: resume it.
    Resumed,
    /// `Open`: the id belongs to someone else or another size;
    /// `AddReaders`: a blob is missing, not complete or not the sender's;
    /// `Fetched`: the device is not a reader. Said the same way for all, so
    /// that no answer tells whether a blob exists.
    Refused,
    /// `Open`: the user's blobs would exceed the quota.
    OverQuota {
        /// The user's blob bytes stored or reserved now.
        used: u64,
    },
    /// `Complete`, `AddReaders`, `Forget`: done.
    Done,
    /// `Fetched`: recorded; `all` when every reader has now fetched it (the
    /// caller deletes the blob).
    FetchedBy {
        /// Every reader fetched it.
        all: bool,
    },
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Runs `op` (inside the writer's transaction) at time `now` (unix ms).
pub fn run(conn: &Connection, op: &BlobOp, now: u64) -> Result<BlobOutcome, StorageError> {
    match op {
        BlobOp::Open {
            id,
            owner,
            size,
            quota,
        } => {
            if let Some(row) = row(conn, id)? {
                if row.owner != *owner || row.size != *size || row.complete {
                    return Ok(if row.owner == *owner && row.size == *size {
                        BlobOutcome::Resumed
                    } else {
                        BlobOutcome::Refused
                    });
                }
                conn.prepare_cached("UPDATE blobs SET opened_at = ?2 WHERE blob_id = ?1")?
                    .execute(params![&id[..], to_i64(now)])?;
                return Ok(BlobOutcome::Resumed);
            }
            let used = user_bytes(conn, &owner.user_id)?;
            if used.saturating_add(*size) > *quota {
                return Ok(BlobOutcome::OverQuota { used });
            }
            conn.prepare_cached(
                "INSERT INTO blobs (blob_id, owner_user, owner_device, size, complete,
                 created_at, opened_at) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
            )?
            .execute(params![
                &id[..],
                owner.user_id,
                &owner.device_id[..],
                to_i64(*size),
                to_i64(now)
            ])?;
            Ok(BlobOutcome::Opened)
        }
        BlobOp::Complete { id } => {
            conn.prepare_cached("UPDATE blobs SET complete = 1 WHERE blob_id = ?1")?
                .execute(params![&id[..]])?;
            Ok(BlobOutcome::Done)
        }
        BlobOp::AddReaders {
            owner_user,
            ids,
            readers,
        } => {
            for id in ids {
                match row(conn, id)? {
                    Some(r) if r.complete && r.owner.user_id == *owner_user => {}
                    _ => return Ok(BlobOutcome::Refused),
                }
            }
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO blob_readers (blob_id, user_id, device_id, fetched)
                 VALUES (?1, ?2, ?3, 0)",
            )?;
            for id in ids {
                for r in readers {
                    insert.execute(params![&id[..], r.user_id, &r.device_id[..]])?;
                }
            }
            Ok(BlobOutcome::Done)
        }
        BlobOp::Fetched { id, reader } => {
            let n = conn
                .prepare_cached(
                    "UPDATE blob_readers SET fetched = 1
                     WHERE blob_id = ?1 AND user_id = ?2 AND device_id = ?3",
                )?
                .execute(params![&id[..], reader.user_id, &reader.device_id[..]])?;
            if n == 0 {
                return Ok(BlobOutcome::Refused);
            }
            let left: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM blob_readers WHERE blob_id = ?1 AND fetched = 0",
                )?
                .query_row(params![&id[..]], |r| r.get(0))?;
            Ok(BlobOutcome::FetchedBy { all: left == 0 })
        }
        BlobOp::Forget { id } => {
            conn.prepare_cached("DELETE FROM blob_readers WHERE blob_id = ?1")?
                .execute(params![&id[..]])?;
            conn.prepare_cached("DELETE FROM blobs WHERE blob_id = ?1")?
                .execute(params![&id[..]])?;
            Ok(BlobOutcome::Done)
        }
    }
}

/// The record of blob `id`, if any.
pub fn row(conn: &Connection, id: &BlobId) -> Result<Option<BlobRow>, StorageError> {
    let r = conn
        .prepare_cached(
            "SELECT owner_user, owner_device, size, complete FROM blobs WHERE blob_id = ?1",
        )?
        .query_row(params![&id[..]], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    let Some((user_id, device, size, complete)) = r else {
        return Ok(None);
    };
    let device_id =
        <[u8; 32]>::try_from(device.as_slice()).map_err(|_| StorageError::Corrupt("blob owner"))?;
    Ok(Some(BlobRow {
        owner: Mailbox { user_id, device_id },
        size: u64::try_from(size).map_err(|_| StorageError::Corrupt("blob size"))?,
        complete: complete != 0,
    }))
}

/// Bytes of blobs `user` has stored or is uploading.
pub fn user_bytes(conn: &Connection, user: &str) -> Result<u64, StorageError> {
    let n: i64 = conn
        .prepare_cached("SELECT coalesce(sum(size), 0) FROM blobs WHERE owner_user = ?1")?
        .query_row(params![user], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Whether `reader` may download `id`: a complete blob whose `Send` named
/// that device. Returns the blob's size if so.
pub fn reader_may_read(
    conn: &Connection,
    id: &BlobId,
    reader: &Mailbox,
) -> Result<Option<u64>, StorageError> {
    let size: Option<i64> = conn
        .prepare_cached(
            "SELECT b.size FROM blobs b JOIN blob_readers r ON r.blob_id = b.blob_id
             WHERE b.blob_id = ?1 AND b.complete = 1 AND r.user_id = ?2 AND r.device_id = ?3",
        )?
        .query_row(
            params![&id[..], reader.user_id, &reader.device_id[..]],
            |r| r.get(0),
        )
        .optional()?;
    Ok(size.and_then(|s| u64::try_from(s).ok()))
}

/// Blobs to delete now, at most `limit`: complete ones created before
/// `retention_cutoff`, unfinished uploads last opened before
/// `abandon_cutoff`, and complete ones every reader fetched (left by a
/// crash between the last fetch and the deletion).
pub fn expired(
    conn: &Connection,
    retention_cutoff: u64,
    abandon_cutoff: u64,
    limit: usize,
) -> Result<Vec<BlobId>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT blob_id FROM blobs b WHERE
           (complete = 1 AND created_at < ?1)
        OR (complete = 0 AND opened_at < ?2)
        OR (complete = 1 AND EXISTS (SELECT 1 FROM blob_readers r WHERE r.blob_id = b.blob_id)
            AND NOT EXISTS (SELECT 1 FROM blob_readers r WHERE r.blob_id = b.blob_id AND r.fetched = 0))
        LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            to_i64(retention_cutoff),
            to_i64(abandon_cutoff),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        |r| r.get::<_, Vec<u8>>(0),
    )?;
    let mut out = Vec::new();
    for r in rows {
        if let Ok(id) = BlobId::try_from(r?.as_slice()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Which of `ids` have no record (files to delete).
pub fn unrecorded(conn: &Connection, ids: &[BlobId]) -> Result<Vec<BlobId>, StorageError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM blobs WHERE blob_id = ?1")?;
    let mut out = Vec::new();
    for id in ids {
        if !stmt.exists(params![&id[..]])? {
            out.push(*id);
        }
    }
    Ok(out)
}

/// `(blobs, bytes)` recorded, for the metrics.
pub fn totals(conn: &Connection) -> Result<(u64, u64), StorageError> {
    let (n, b): (i64, i64) = conn
        .prepare_cached("SELECT count(*), coalesce(sum(size), 0) FROM blobs")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((u64::try_from(n).unwrap_or(0), u64::try_from(b).unwrap_or(0)))
}
