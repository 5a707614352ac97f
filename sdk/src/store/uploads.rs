//! Attachment uploads in progress (SECURITY.md §16.9): what survives the
//! app dying between `send_file` and the relay storing the last piece.
//!
//! The row holds the encoded descriptor (with the file key: it never leaves
//! this encrypted database but inside a sealed envelope), the spool file of
//! ciphertext being uploaded, and the last piece index the relay
//! acknowledged (a hint for progress; the relay's `BlobState` is the truth
//! on resume). When the upload completes, [`Store::upload_finish`] moves it
//! to the outbox as a message, in one transaction.

use std::path::PathBuf;

use super::rusqlite::{self, OptionalExtension, params};
use ward_core::ConversationId;
use zeroize::Zeroizing;

use super::records::{enqueue_with_message_in, id16, secret, to_i64, to_u64};
use super::{Message, OutboxId, Result, Store, StoreError};

/// An upload waiting for the relay.
#[derive(Clone)]
pub struct Upload {
    /// The blob id (32 bytes).
    pub blob_id: [u8; 32],
    /// Where the descriptor's message goes.
    pub conversation_id: ConversationId,
    /// The encoded descriptor (`AttachmentRef`): holds the file key.
    pub descriptor: Zeroizing<Vec<u8>>,
    /// The ciphertext being uploaded.
    pub spool_path: PathBuf,
    /// The blob's size.
    pub blob_size: u64,
    /// Pieces the relay acknowledged, as last recorded.
    pub next_piece: u64,
    /// When `send_file` started it, unix milliseconds.
    pub created_at_ms: u64,
}

// The descriptor holds the file key: never printed.
impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("conversation_id", &self.conversation_id)
            .field("blob_size", &self.blob_size)
            .field("next_piece", &self.next_piece)
            .finish_non_exhaustive()
    }
}

type UploadRow = (Vec<u8>, Vec<u8>, Zeroizing<Vec<u8>>, String, i64, i64, i64);

fn upload_from_row(r: UploadRow) -> Result<Upload> {
    let (id, cid, descriptor, spool, size, next, created) = r;
    Ok(Upload {
        blob_id: <[u8; 32]>::try_from(id.as_slice())
            .map_err(|_| StoreError::InvalidData("blob id"))?,
        conversation_id: id16(&cid, ConversationId::from_slice, "conversation id")?,
        descriptor,
        spool_path: PathBuf::from(spool),
        blob_size: to_u64(size, "blob size")?,
        next_piece: to_u64(next, "next piece")?,
        created_at_ms: to_u64(created, "created_at")?,
    })
}

impl Store {
    /// Records an upload about to start; durable when it returns.
    pub fn upload_put(&self, u: &Upload) -> Result<()> {
        let spool = u
            .spool_path
            .to_str()
            .ok_or(StoreError::InvalidData("spool path"))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO uploads (blob_id, conversation_id, descriptor, spool_path,
             blob_size, next_piece, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                &u.blob_id[..],
                &u.conversation_id.as_bytes()[..],
                &u.descriptor[..],
                spool,
                to_i64(u.blob_size, "blob size")?,
                to_i64(u.next_piece, "next piece")?,
                to_i64(u.created_at_ms, "created_at")?,
            ],
        )?;
        Ok(())
    }

    /// Notes the relay's acknowledgement of pieces up to `next_piece`.
    pub fn upload_progress(&self, blob_id: &[u8; 32], next_piece: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE uploads SET next_piece = ?2 WHERE blob_id = ?1",
            params![&blob_id[..], to_i64(next_piece, "next piece")?],
        )?;
        Ok(())
    }

    /// Every upload in progress, oldest first.
    pub fn uploads(&self) -> Result<Vec<Upload>> {
        let mut stmt = self.conn.prepare(
            "SELECT blob_id, conversation_id, descriptor, spool_path, blob_size, next_piece,
             created_at_ms FROM uploads ORDER BY created_at_ms",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    secret(r, 2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<UploadRow>>>()?;
        rows.into_iter().map(upload_from_row).collect()
    }

    /// One upload in progress.
    pub fn upload(&self, blob_id: &[u8; 32]) -> Result<Option<Upload>> {
        let row = self
            .conn
            .query_row(
                "SELECT blob_id, conversation_id, descriptor, spool_path, blob_size, next_piece,
                 created_at_ms FROM uploads WHERE blob_id = ?1",
                params![&blob_id[..]],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        secret(r, 2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()?;
        row.map(upload_from_row).transpose()
    }

    /// Drops an upload (given up).
    pub fn upload_remove(&self, blob_id: &[u8; 32]) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM uploads WHERE blob_id = ?1",
            params![&blob_id[..]],
        )?;
        Ok(n == 1)
    }

    /// The upload of `blob_id` is complete at the relay: queues the sealed
    /// descriptor message (`payload`), stores it in the history and drops
    /// the upload, in one transaction (a crash never sends it twice, nor
    /// loses it). Returns the outbox id.
    pub fn upload_finish(
        &mut self,
        blob_id: &[u8; 32],
        payload: &[u8],
        created_at_ms: u64,
        message: &Message,
    ) -> Result<OutboxId> {
        let tx = self.conn.transaction()?;
        let id = enqueue_with_message_in(&tx, payload, created_at_ms, message)?;
        tx.execute(
            "DELETE FROM uploads WHERE blob_id = ?1",
            params![&blob_id[..]],
        )?;
        tx.commit()?;
        Ok(id)
    }
}
