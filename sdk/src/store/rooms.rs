//! Rooms in the device store (SECURITY.md §17.12): each room this device
//! verified, the exact entries it verified (so a shorter or forked log is
//! refused after a restart too), a fault once one was seen, and the epoch
//! seeds it holds. Seeds are secrets: read into zeroizing buffers, and never
//! outside this encrypted database.

use ward_core::keys::RoomEpochKey;
use ward_core::room::RoomKeyring;
use ward_core::{ConversationId, RoomId};
use zeroize::Zeroizing;

use super::Store;
use super::error::{Result, StoreError};
use super::rusqlite::{OptionalExtension, params};

fn seq_i64(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| StoreError::InvalidData("room sequence number"))
}

impl Store {
    /// Keeps a room message as its sender signed it (idempotent on the
    /// sender and resource id), so that it can be forwarded to members
    /// added later under `WholeHistory` (§17.13). It is ciphertext only
    /// readable with the room's epoch keys; the store encrypts it again.
    pub fn put_room_envelope(
        &self,
        room: &RoomId,
        sender_user_id: &str,
        resource_id: &ward_core::ResourceId,
        timestamp_ms: u64,
        envelope: &[u8],
    ) -> Result<()> {
        put_room_envelope_in(
            &self.conn,
            room,
            sender_user_id,
            resource_id,
            timestamp_ms,
            envelope,
        )
    }

    /// Stores a room message and keeps its signed envelope for a forward,
    /// in one transaction (one fsync). Returns whether the message was new.
    pub fn insert_room_message(
        &mut self,
        m: &super::Message,
        room: &RoomId,
        envelope: &[u8],
    ) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let new = super::records::insert_message_in(&tx, m)?;
        put_room_envelope_in(
            &tx,
            room,
            &m.sender_user_id,
            &m.resource_id,
            m.timestamp_ms,
            envelope,
        )?;
        tx.commit()?;
        Ok(new)
    }

    /// Removes a delivered outbox entry and keeps the room envelope it
    /// sent, with its history copy's time, in one transaction (one fsync).
    /// Returns whether the entry existed.
    pub fn outbox_remove_keeping(
        &mut self,
        id: super::OutboxId,
        room: &RoomId,
        sender_user_id: &str,
        resource_id: &ward_core::ResourceId,
        envelope: &[u8],
    ) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let ts: Option<i64> = tx
            .query_row(
                "SELECT timestamp_ms FROM messages WHERE sender_user_id = ?1 AND resource_id = ?2",
                params![sender_user_id, &resource_id.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(ts) = ts {
            let ts = u64::try_from(ts).map_err(|_| StoreError::InvalidData("timestamp"))?;
            put_room_envelope_in(&tx, room, sender_user_id, resource_id, ts, envelope)?;
        }
        let n = tx.execute("DELETE FROM outbox WHERE id = ?1", [id.0])?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// The newest room envelopes that fit in `max_bytes` together, oldest
    /// first (by the sender's timestamp, then by arrival).
    pub fn room_envelopes(&self, room: &RoomId, max_bytes: usize) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self.conn.prepare(
            "SELECT envelope FROM room_envelopes WHERE room_id = ?1
             ORDER BY timestamp_ms DESC, rowid DESC",
        )?;
        let mut rows = stmt.query([&room.as_bytes()[..]])?;
        let (mut out, mut total) = (Vec::new(), 0usize);
        while let Some(r) = rows.next()? {
            let e: Vec<u8> = r.get(0)?;
            total = total.saturating_add(e.len());
            if total > max_bytes {
                break;
            }
            out.push(e);
        }
        out.reverse();
        Ok(out)
    }

    /// Records a room (idempotent) under its conversation id.
    pub fn put_room(&self, room: &RoomId, conversation: &ConversationId) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO rooms (room_id, conversation_id) VALUES (?1, ?2)",
            params![&room.as_bytes()[..], &conversation.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Every room recorded, in the order they were recorded.
    pub fn room_ids(&self) -> Result<Vec<RoomId>> {
        let mut stmt = self
            .conn
            .prepare("SELECT room_id FROM rooms ORDER BY rowid")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<super::rusqlite::Result<Vec<_>>>()?;
        ids.iter()
            .map(|b| RoomId::from_slice(b).ok_or(StoreError::InvalidData("room id")))
            .collect()
    }

    /// Every room's conversation id, in the order the rooms were recorded.
    pub fn room_conversation_ids(&self) -> Result<Vec<ConversationId>> {
        let mut stmt = self
            .conn
            .prepare("SELECT conversation_id FROM rooms ORDER BY rowid")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<super::rusqlite::Result<Vec<_>>>()?;
        ids.iter()
            .map(|b| {
                ConversationId::from_slice(b).ok_or(StoreError::InvalidData("conversation id"))
            })
            .collect()
    }

    /// The room whose conversation id is `conversation`, if any.
    pub fn room_by_conversation(&self, conversation: &ConversationId) -> Result<Option<RoomId>> {
        let id: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT room_id FROM rooms WHERE conversation_id = ?1",
                [&conversation.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?;
        id.map(|b| RoomId::from_slice(&b).ok_or(StoreError::InvalidData("room id")))
            .transpose()
    }

    /// The verified entries of a room (encoded `SignedRoomStatement`s), in order.
    pub fn room_entries(&self, room: &RoomId) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT entry FROM room_entries WHERE room_id = ?1 ORDER BY seq")?;
        let rows = stmt
            .query_map([&room.as_bytes()[..]], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<super::rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Appends verified entries from position `from` (the verified prefix
    /// stays as it is: only a verified suffix is ever added, §4.7).
    pub fn append_room_entries<S: AsRef<[u8]>>(
        &mut self,
        room: &RoomId,
        conversation: &ConversationId,
        from: u64,
        entries: &[S],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO rooms (room_id, conversation_id) VALUES (?1, ?2)",
            params![&room.as_bytes()[..], &conversation.as_bytes()[..]],
        )?;
        {
            let mut stmt =
                tx.prepare("INSERT INTO room_entries (room_id, seq, entry) VALUES (?1, ?2, ?3)")?;
            for (i, e) in entries.iter().enumerate() {
                let seq = seq_i64(from.saturating_add(i as u64))?;
                stmt.execute(params![&room.as_bytes()[..], seq, e.as_ref()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks a room as faulty (a rollback or fork was detected): kept
    /// across restarts; the first fault recorded stays.
    pub fn set_room_fault(&self, room: &RoomId, fault: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE rooms SET fault = ?2 WHERE room_id = ?1 AND fault IS NULL",
            params![&room.as_bytes()[..], fault],
        )?;
        Ok(())
    }

    /// The fault recorded for a room, if any.
    pub fn room_fault(&self, room: &RoomId) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT fault FROM rooms WHERE room_id = ?1",
                [&room.as_bytes()[..]],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Keeps the private key of `epoch` of `room` (its 32-byte seed),
    /// replacing one held before (the caller checked it against the log).
    pub fn add_room_epoch_key(&self, room: &RoomId, epoch: u64, key: &RoomEpochKey) -> Result<()> {
        let seed = key.export_secret();
        self.conn.execute(
            "INSERT OR REPLACE INTO room_epoch_keys (room_id, epoch, seed) VALUES (?1, ?2, ?3)",
            params![&room.as_bytes()[..], seq_i64(epoch)?, &seed[..]],
        )?;
        Ok(())
    }

    /// Every epoch key held for `room`.
    pub fn room_keyring(&self, room: &RoomId) -> Result<RoomKeyring> {
        let mut stmt = self
            .conn
            .prepare("SELECT epoch, seed FROM room_epoch_keys WHERE room_id = ?1 ORDER BY epoch")?;
        let rows = stmt
            .query_map([&room.as_bytes()[..]], |r| {
                Ok((r.get::<_, i64>(0)?, Zeroizing::new(r.get::<_, Vec<u8>>(1)?)))
            })?
            .collect::<super::rusqlite::Result<Vec<_>>>()?;
        let mut ring = RoomKeyring::new();
        for (epoch, seed) in rows {
            let epoch = u64::try_from(epoch).map_err(|_| StoreError::InvalidData("room epoch"))?;
            let key = RoomEpochKey::import_secret(&seed)
                .map_err(|_| StoreError::InvalidData("room epoch key"))?;
            ring.insert(epoch, key);
        }
        Ok(ring)
    }
}

pub(super) fn put_room_envelope_in(
    conn: &super::rusqlite::Connection,
    room: &RoomId,
    sender_user_id: &str,
    resource_id: &ward_core::ResourceId,
    timestamp_ms: u64,
    envelope: &[u8],
) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO room_envelopes
             (room_id, sender_user_id, resource_id, timestamp_ms, envelope)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            &room.as_bytes()[..],
            sender_user_id,
            &resource_id.as_bytes()[..],
            i64::try_from(timestamp_ms).map_err(|_| StoreError::InvalidData("timestamp"))?,
            envelope
        ],
    )?;
    Ok(())
}
