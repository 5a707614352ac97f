//! Typed access to what the SDK client keeps: its identity and keys, the
//! verified logs it has cached, conversations, messages, the outbox and the
//! relay cursor. Every value lives inside the encrypted database.

use core::fmt;

use ward_core::envelope::ContentType;
use ward_core::keys::{
    DeviceEncryptionKey, DeviceSigningKey, EncryptionPublicKey, KeyId, SigningPublicKey,
    UserEncryptionKey,
};
use ward_core::{ConversationId, ResourceId};
use zeroize::Zeroizing;

use super::error::{Result, StoreError};
use super::rusqlite::{OptionalExtension, Row, params};
use super::{Store, rusqlite};

/// This device's identity: whose it is and its two key pairs.
pub struct Identity {
    /// The user this device belongs to.
    pub user_id: String,
    /// The device's signing key (its public key is the device id).
    pub device_signing: DeviceSigningKey,
    /// The device's encryption key (the user key is granted to it).
    pub device_encryption: DeviceEncryptionKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key types print only their public halves.
        f.debug_struct("Identity")
            .field("user_id", &self.user_id)
            .field("device_signing", &self.device_signing)
            .field("device_encryption", &self.device_encryption)
            .finish()
    }
}

/// A conversation and its members (user ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Its id.
    pub id: ConversationId,
    /// Its members, sorted.
    pub members: Vec<String>,
}

/// A verified, decrypted message as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The resource id; with the sender's user id, the deduplication key.
    pub resource_id: ResourceId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The sender's user id.
    pub sender_user_id: String,
    /// The device that signed it.
    pub sender_device: SigningPublicKey,
    /// The sender's claimed time, unix milliseconds.
    pub timestamp_ms: u64,
    /// Text or file.
    pub content_type: ContentType,
    /// The plaintext (zeroized on drop).
    pub content: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("resource_id", &self.resource_id)
            .field("conversation_id", &self.conversation_id)
            .field("sender_user_id", &self.sender_user_id)
            .field("sender_device", &self.sender_device)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("content_type", &self.content_type)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            // An attachment shows its file, never its key.
            .field("attachment", &self.attachment())
            .finish()
    }
}

/// An outbox entry's id (increasing: the queue's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboxId(pub i64);

/// Where an outgoing message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Queued, not yet handed to the relay.
    Pending,
    /// Handed to the relay at least once, not yet confirmed; sending it
    /// again is safe (receivers deduplicate on the resource id).
    Sent,
}

impl OutboxState {
    pub(super) fn to_db(self) -> i64 {
        match self {
            Self::Pending => 0,
            Self::Sent => 1,
        }
    }

    fn from_db(v: i64) -> Result<Self> {
        match v {
            0 => Ok(Self::Pending),
            1 => Ok(Self::Sent),
            _ => Err(StoreError::InvalidData("outbox state")),
        }
    }
}

/// One queued outgoing message.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Its id.
    pub id: OutboxId,
    /// The conversation it goes to.
    pub conversation_id: ConversationId,
    /// What the client needs to (re)send it, opaque to the store.
    pub payload: Zeroizing<Vec<u8>>,
    /// Pending or sent.
    pub state: OutboxState,
    /// When it was queued, unix milliseconds.
    pub created_at_ms: u64,
}

impl fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxItem")
            .field("id", &self.id)
            .field("conversation_id", &self.conversation_id)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .field("state", &self.state)
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

fn content_type_to_db(t: ContentType) -> i64 {
    match t {
        ContentType::Text => 1,
        ContentType::File => 2,
        // An attachment descriptor (SECURITY.md §16.5); the value matches the wire enum.
        ContentType::Attachment => 3,
        // A forwarded room history (§17.13): kept for a reseal, never listed.
        ContentType::RoomHistory => 4,
    }
}

fn content_type_from_db(v: i64) -> Result<ContentType> {
    match v {
        1 => Ok(ContentType::Text),
        2 => Ok(ContentType::File),
        3 => Ok(ContentType::Attachment),
        4 => Ok(ContentType::RoomHistory),
        _ => Err(StoreError::InvalidData("content type")),
    }
}

pub(super) fn to_i64(v: u64, what: &'static str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::InvalidData(what))
}

pub(super) fn to_u64(v: i64, what: &'static str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::InvalidData(what))
}

pub(super) fn id16<T>(
    bytes: &[u8],
    parse: fn(&[u8]) -> Option<T>,
    what: &'static str,
) -> Result<T> {
    parse(bytes).ok_or(StoreError::InvalidData(what))
}

/// A secret column, read straight into a zeroizing buffer.
/// `key_suite` of key rows: 1 = protocol v1 X25519 (read-only, never used),
/// 2 = X-Wing seeds (SECURITY.md §14.9).
const KEY_SUITE_XWING: i64 = 2;

pub(super) fn secret(row: &Row<'_>, idx: usize) -> rusqlite::Result<Zeroizing<Vec<u8>>> {
    row.get::<_, Vec<u8>>(idx).map(Zeroizing::new)
}

type MessageRow = (
    Vec<u8>,
    Vec<u8>,
    String,
    Vec<u8>,
    i64,
    i64,
    Zeroizing<Vec<u8>>,
);

fn message_from_row(r: MessageRow) -> Result<Message> {
    let (rid, cid, sender_user_id, device, ts, ct, content) = r;
    Ok(Message {
        resource_id: id16(&rid, ResourceId::from_slice, "resource id")?,
        conversation_id: id16(&cid, ConversationId::from_slice, "conversation id")?,
        sender_user_id,
        sender_device: SigningPublicKey::from_bytes(&device)
            .map_err(|_| StoreError::InvalidData("sender device"))?,
        timestamp_ms: to_u64(ts, "timestamp")?,
        content_type: content_type_from_db(ct)?,
        content,
    })
}

/// Inside the caller's transaction: queues `payload` for sending and stores
/// `message`, the sender's own copy, in the history. Returns the outbox id.
pub(super) fn enqueue_with_message_in(
    conn: &rusqlite::Connection,
    payload: &[u8],
    created_at_ms: u64,
    message: &Message,
) -> Result<OutboxId> {
    conn.execute(
        "INSERT INTO outbox (conversation_id, payload, state, created_at_ms)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            &message.conversation_id.as_bytes()[..],
            payload,
            OutboxState::Pending.to_db(),
            to_i64(created_at_ms, "created_at")?,
        ],
    )?;
    let id = OutboxId(conn.last_insert_rowid());
    insert_message_in(conn, message)?;
    Ok(id)
}

/// `INSERT OR IGNORE` of one message; whether it was new.
pub(super) fn insert_message_in(conn: &rusqlite::Connection, m: &Message) -> Result<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO messages
             (sender_user_id, resource_id, conversation_id, sender_device,
              timestamp_ms, content_type, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            m.sender_user_id,
            &m.resource_id.as_bytes()[..],
            &m.conversation_id.as_bytes()[..],
            &m.sender_device.as_bytes()[..],
            to_i64(m.timestamp_ms, "timestamp")?,
            content_type_to_db(m.content_type),
            &m.content[..],
        ],
    )?;
    Ok(n == 1)
}

impl Store {
    // ---- identity ---------------------------------------------------------

    /// Stores this device's identity. Once only: a second call fails with
    /// [`StoreError::IdentityAlreadySet`] (a device never changes owner;
    /// wipe the store instead).
    pub fn set_identity(&self, identity: &Identity) -> Result<()> {
        let sign = identity.device_signing.export_secret();
        let enc = identity.device_encryption.export_secret();
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO identity
                 (id, user_id, device_signing_secret, device_encryption_secret, key_suite)
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![identity.user_id, &sign[..], &enc[..], KEY_SUITE_XWING],
        )?;
        if n == 0 {
            return Err(StoreError::IdentityAlreadySet);
        }
        Ok(())
    }

    /// This device's identity, if enrolled. A store migrated from schema 1
    /// holds v1 keys: [`StoreError::ReenrollRequired`].
    pub fn identity(&self) -> Result<Option<Identity>> {
        let row = self
            .conn
            .query_row(
                "SELECT user_id, device_signing_secret, device_encryption_secret, key_suite
                 FROM identity WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        secret(r, 1)?,
                        secret(r, 2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((user_id, sign, enc, suite)) = row else {
            return Ok(None);
        };
        if suite != KEY_SUITE_XWING {
            return Err(StoreError::ReenrollRequired);
        }
        Ok(Some(Identity {
            user_id,
            device_signing: DeviceSigningKey::import_secret(&sign)
                .map_err(|_| StoreError::InvalidData("device signing key"))?,
            device_encryption: DeviceEncryptionKey::import_secret(&enc)
                .map_err(|_| StoreError::InvalidData("device encryption key"))?,
        }))
    }

    // ---- user encryption keys ----------------------------------------------

    /// Keeps a user encryption key (current or past: old messages stay
    /// readable after a rotation), under its key id. Adding one twice is a
    /// no-op.
    pub fn add_user_key(&self, key: &UserEncryptionKey) -> Result<()> {
        let secret = key.export_secret();
        self.conn.execute(
            "INSERT OR IGNORE INTO user_keys (public_key, secret, key_suite) VALUES (?1, ?2, ?3)",
            params![
                &key.public_key().id().as_bytes()[..],
                &secret[..],
                KEY_SUITE_XWING
            ],
        )?;
        Ok(())
    }

    /// The user encryption key whose public half is `public`.
    pub fn user_key(&self, public: &EncryptionPublicKey) -> Result<Option<UserEncryptionKey>> {
        self.user_key_by_id(&public.id())
    }

    /// The user encryption key with id `id` (as named by a wrapped key).
    /// v1 keys are never returned.
    pub fn user_key_by_id(&self, id: &KeyId) -> Result<Option<UserEncryptionKey>> {
        let s = self
            .conn
            .query_row(
                "SELECT secret FROM user_keys WHERE public_key = ?1 AND key_suite = ?2",
                params![&id.as_bytes()[..], KEY_SUITE_XWING],
                |r| secret(r, 0),
            )
            .optional()?;
        let Some(s) = s else { return Ok(None) };
        let key = UserEncryptionKey::import_secret(&s)
            .map_err(|_| StoreError::InvalidData("user encryption key"))?;
        if key.public_key().id() != *id {
            return Err(StoreError::InvalidData(
                "user key does not match its public key",
            ));
        }
        Ok(Some(key))
    }

    /// Whether the store still holds v1 (X25519) key material, from before
    /// the migration to schema 2: such a device must enroll again.
    pub fn holds_v1_keys(&self) -> Result<bool> {
        let n: i64 = self.conn.query_row(
            "SELECT (SELECT count(*) FROM identity WHERE key_suite != ?1)
                  + (SELECT count(*) FROM user_keys WHERE key_suite != ?1)",
            [KEY_SUITE_XWING],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Prepares a store migrated from v1 for a fresh enrollment (SECURITY.md
    /// §14.9): deletes the v1 identity and user keys, the cached logs (v1
    /// statements, which no v2 verifier accepts), the outbox (v1 envelopes,
    /// which no v2 relay accepts) and the relay cursor (the new device has a
    /// new mailbox). Conversations and messages stay. One transaction.
    /// Does nothing, and returns `false`, on a store without v1 keys.
    pub fn reset_for_reenrollment(&mut self) -> Result<bool> {
        if !self.holds_v1_keys()? {
            return Ok(false);
        }
        self.clear_identity()?;
        Ok(true)
    }

    /// Undoes an enrolment into an existing store that the keyserver
    /// refused (`Client::reenroll`): deletes the identity, user keys,
    /// verified logs, outbox and relay cursor it wrote, keeping
    /// conversations and messages, so that the next attempt starts from the
    /// same reset state. One transaction.
    pub fn clear_identity(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM identity; DELETE FROM user_keys; DELETE FROM verified_logs;
             DELETE FROM outbox; DELETE FROM relay_cursor; DELETE FROM kt_state;",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every user encryption key held (v1 keys excluded).
    pub fn user_keys(&self) -> Result<Vec<UserEncryptionKey>> {
        let mut stmt = self
            .conn
            .prepare("SELECT secret FROM user_keys WHERE key_suite = 2 ORDER BY rowid")?;
        let secrets = stmt
            .query_map([], |r| secret(r, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        secrets
            .iter()
            .map(|s| {
                UserEncryptionKey::import_secret(s)
                    .map_err(|_| StoreError::InvalidData("user encryption key"))
            })
            .collect()
    }

    // ---- verified logs -------------------------------------------------------

    /// Replaces the cached log of `user_id` (encoded `SignedStatement`s, in
    /// order), to be stored only after it verified.
    pub fn set_verified_log<S: AsRef<[u8]>>(&mut self, user_id: &str, entries: &[S]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM verified_logs WHERE user_id = ?1", [user_id])?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO verified_logs (user_id, idx, statement) VALUES (?1, ?2, ?3)",
            )?;
            for (i, e) in entries.iter().enumerate() {
                let idx = i64::try_from(i).map_err(|_| StoreError::InvalidData("log length"))?;
                stmt.execute(params![user_id, idx, e.as_ref()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The cached log of `user_id`, `None` if none is cached.
    pub fn verified_log(&self, user_id: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT statement FROM verified_logs WHERE user_id = ?1 ORDER BY idx")?;
        let entries = stmt
            .query_map([user_id], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(if entries.is_empty() {
            None
        } else {
            Some(entries)
        })
    }

    // ---- conversations ----------------------------------------------------

    /// Creates the conversation or replaces its member list.
    pub fn put_conversation(&mut self, id: &ConversationId, members: &[String]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO conversations (id) VALUES (?1)",
            [&id.as_bytes()[..]],
        )?;
        tx.execute(
            "DELETE FROM conversation_members WHERE conversation_id = ?1",
            [&id.as_bytes()[..]],
        )?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR IGNORE INTO conversation_members (conversation_id, user_id)
                 VALUES (?1, ?2)",
            )?;
            for m in members {
                stmt.execute(params![&id.as_bytes()[..], m])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Takes a batch of history from another device of this user (a link,
    /// SECURITY.md §4.9): creates the conversations it names with members
    /// (members of one already here are left as they are) and stores its messages
    /// unless already stored, all in one transaction. Returns how many
    /// messages were new.
    pub fn import_history(
        &mut self,
        conversations: &[Conversation],
        messages: &[Message],
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        // A room's conversation comes without members (its log names
        // them): only its messages are kept.
        for c in conversations.iter().filter(|c| !c.members.is_empty()) {
            let added = tx.execute(
                "INSERT OR IGNORE INTO conversations (id) VALUES (?1)",
                [&c.id.as_bytes()[..]],
            )?;
            if added == 1 {
                let mut stmt = tx.prepare(
                    "INSERT OR IGNORE INTO conversation_members (conversation_id, user_id)
                     VALUES (?1, ?2)",
                )?;
                for m in &c.members {
                    stmt.execute(params![&c.id.as_bytes()[..], m])?;
                }
            }
        }
        let mut new = 0;
        for m in messages {
            if insert_message_in(&tx, m)? {
                new += 1;
            }
        }
        tx.commit()?;
        Ok(new)
    }

    /// One conversation.
    pub fn conversation(&self, id: &ConversationId) -> Result<Option<Conversation>> {
        let known = self
            .conn
            .query_row(
                "SELECT 1 FROM conversations WHERE id = ?1",
                [&id.as_bytes()[..]],
                |_| Ok(()),
            )
            .optional()?;
        if known.is_none() {
            return Ok(None);
        }
        let mut stmt = self.conn.prepare(
            "SELECT user_id FROM conversation_members WHERE conversation_id = ?1 ORDER BY user_id",
        )?;
        let members = stmt
            .query_map([&id.as_bytes()[..]], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(Conversation { id: *id, members }))
    }

    /// Every conversation, by id.
    pub fn conversations(&self) -> Result<Vec<Conversation>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM conversations ORDER BY id")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id = id16(&id, ConversationId::from_slice, "conversation id")?;
            if let Some(c) = self.conversation(&id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    // ---- messages -------------------------------------------------------------

    /// Stores a message unless one with the same (sender user id, resource
    /// id) is already stored. Returns whether it was new. Durable when it
    /// returns (synchronous = FULL): ack the relay after this.
    pub fn insert_message(&self, m: &Message) -> Result<bool> {
        insert_message_in(&self.conn, m)
    }

    /// A conversation's messages, oldest first (by the sender's timestamp,
    /// then by arrival).
    pub fn messages(&self, conversation: &ConversationId) -> Result<Vec<Message>> {
        let mut stmt = self.conn.prepare(
            "SELECT resource_id, conversation_id, sender_user_id, sender_device,
                    timestamp_ms, content_type, content
             FROM messages WHERE conversation_id = ?1 AND content_type != 4
             ORDER BY timestamp_ms, local_seq",
        )?;
        let rows = stmt
            .query_map([&conversation.as_bytes()[..]], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    secret(r, 6)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<MessageRow>>>()?;
        rows.into_iter().map(message_from_row).collect()
    }

    /// One message by its deduplication key.
    pub fn message(
        &self,
        sender_user_id: &str,
        resource_id: &ResourceId,
    ) -> Result<Option<Message>> {
        let row: Option<MessageRow> = self
            .conn
            .query_row(
                "SELECT resource_id, conversation_id, sender_user_id, sender_device,
                        timestamp_ms, content_type, content
                 FROM messages WHERE sender_user_id = ?1 AND resource_id = ?2",
                params![sender_user_id, &resource_id.as_bytes()[..]],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        secret(r, 6)?,
                    ))
                },
            )
            .optional()?;
        row.map(message_from_row).transpose()
    }

    // ---- outbox ---------------------------------------------------------------

    /// Queues an outgoing message; durable when it returns.
    pub fn outbox_enqueue(
        &self,
        conversation: &ConversationId,
        payload: &[u8],
        created_at_ms: u64,
    ) -> Result<OutboxId> {
        self.conn.execute(
            "INSERT INTO outbox (conversation_id, payload, state, created_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                &conversation.as_bytes()[..],
                payload,
                OutboxState::Pending.to_db(),
                to_i64(created_at_ms, "created_at")?,
            ],
        )?;
        Ok(OutboxId(self.conn.last_insert_rowid()))
    }

    /// The oldest queued entry, whatever its state.
    pub fn outbox_peek(&self) -> Result<Option<OutboxItem>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, conversation_id, payload, state, created_at_ms
                 FROM outbox ORDER BY id LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        secret(r, 2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, cid, payload, state, created)) = row else {
            return Ok(None);
        };
        Ok(Some(OutboxItem {
            id: OutboxId(id),
            conversation_id: id16(&cid, ConversationId::from_slice, "conversation id")?,
            payload,
            state: OutboxState::from_db(state)?,
            created_at_ms: to_u64(created, "created_at")?,
        }))
    }

    /// Every queued entry, oldest first (what `ward outbox` lists).
    pub fn outbox_items(&self) -> Result<Vec<OutboxItem>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, conversation_id, payload, state, created_at_ms FROM outbox ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    secret(r, 2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, cid, payload, state, created)| {
                Ok(OutboxItem {
                    id: OutboxId(id),
                    conversation_id: id16(&cid, ConversationId::from_slice, "conversation id")?,
                    payload,
                    state: OutboxState::from_db(state)?,
                    created_at_ms: to_u64(created, "created_at")?,
                })
            })
            .collect()
    }

    /// How many entries are queued.
    pub fn outbox_len(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        to_u64(n, "count")
    }

    /// Marks an entry as handed to the relay. Returns whether it existed.
    pub fn outbox_mark_sent(&self, id: OutboxId) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE outbox SET state = ?1 WHERE id = ?2",
            params![OutboxState::Sent.to_db(), id.0],
        )?;
        Ok(n == 1)
    }

    /// Removes an entry (delivery confirmed). Returns whether it existed.
    pub fn outbox_remove(&self, id: OutboxId) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id.0])?;
        Ok(n == 1)
    }

    /// Queues an outgoing message and stores it in the local history, in one
    /// transaction: either both are durable or neither (the sending device's
    /// own copy never goes missing while its delivery is queued, nor the
    /// reverse). Returns the outbox id.
    pub fn outbox_enqueue_with_message(
        &mut self,
        payload: &[u8],
        created_at_ms: u64,
        message: &Message,
    ) -> Result<OutboxId> {
        let tx = self.conn.transaction()?;
        let id = enqueue_with_message_in(&tx, payload, created_at_ms, message)?;
        tx.commit()?;
        Ok(id)
    }

    /// Replaces a queued entry's payload after it was sealed again under a
    /// new resource id, and renames the sender's history copy to match, in
    /// one transaction. The entry goes back to pending.
    pub fn outbox_reseal(
        &mut self,
        id: OutboxId,
        payload: &[u8],
        sender_user_id: &str,
        old: &ResourceId,
        new: &ResourceId,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE outbox SET payload = ?1, state = ?2 WHERE id = ?3",
            params![payload, OutboxState::Pending.to_db(), id.0],
        )?;
        if n != 1 {
            return Err(StoreError::InvalidData("no such outbox entry"));
        }
        tx.execute(
            "UPDATE messages SET resource_id = ?1 WHERE sender_user_id = ?2 AND resource_id = ?3",
            params![&new.as_bytes()[..], sender_user_id, &old.as_bytes()[..]],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records that the relay entry `seq` has been dealt with: stores
    /// `message` if given (unless already stored) and moves the relay
    /// cursor to `seq`, in one transaction. Returns whether the message was
    /// new. Durable when it returns: ack the relay after this.
    pub fn record_delivery(&mut self, seq: u64, message: Option<&Message>) -> Result<bool> {
        self.record_delivery_at(seq, message, false, None)
    }

    /// [`Store::record_delivery`]; with `rewind`, the cursor is set to `seq`
    /// even if it was higher (the relay's numbering went back), but only if
    /// the message was new. A `seq` above `i64::MAX` is refused with
    /// [`StoreError::InvalidData`] before anything is written. With
    /// `keep`, the message's signed room envelope is kept for a history
    /// forward (§17.13) in the same transaction.
    pub fn record_delivery_at(
        &mut self,
        seq: u64,
        message: Option<&Message>,
        rewind: bool,
        keep: Option<(&ward_core::RoomId, &[u8])>,
    ) -> Result<bool> {
        let seq = to_i64(seq, "relay cursor")?;
        let tx = self.conn.transaction()?;
        let new = match message {
            Some(m) => insert_message_in(&tx, m)?,
            None => false,
        };
        if let (Some(m), Some((room, envelope))) = (message, keep) {
            super::rooms::put_room_envelope_in(
                &tx,
                room,
                &m.sender_user_id,
                &m.resource_id,
                m.timestamp_ms,
                envelope,
            )?;
        }
        let sql = if rewind && new {
            "INSERT INTO relay_cursor (id, last_acked_seq) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET last_acked_seq = excluded.last_acked_seq"
        } else {
            "INSERT INTO relay_cursor (id, last_acked_seq) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET last_acked_seq = max(last_acked_seq, excluded.last_acked_seq)"
        };
        tx.execute(sql, [seq])?;
        tx.commit()?;
        Ok(new)
    }

    // ---- relay cursor -----------------------------------------------------------

    /// The last relay sequence number acked, if any.
    pub fn relay_cursor(&self) -> Result<Option<u64>> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT last_acked_seq FROM relay_cursor WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        v.map(|v| to_u64(v, "relay cursor")).transpose()
    }

    /// Records the last relay sequence number acked.
    pub fn set_relay_cursor(&self, seq: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO relay_cursor (id, last_acked_seq) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET last_acked_seq = excluded.last_acked_seq",
            [to_i64(seq, "relay cursor")?],
        )?;
        Ok(())
    }
}

/// The key-transparency monitor's state (`client/kt.rs`): opaque encoded
/// values, checked by the monitor, not by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtState {
    /// The directory key certificate (`DirectoryKeyCertificate`, encoded).
    pub certificate: Vec<u8>,
    /// The latest epoch verified (`SignedEpoch`, encoded).
    pub epoch: Vec<u8>,
    /// Leaves of the directory scanned so far.
    pub scanned: u64,
    /// The roots of the perfect subtrees covering the scanned leaves,
    /// largest first, 32 bytes each.
    pub frontier: Vec<u8>,
    /// The device ids this device knows of its own user, 32 bytes each.
    pub known_devices: Vec<u8>,
}

impl Store {
    /// The key-transparency monitor's state, if it ever verified an epoch.
    pub fn kt_state(&self) -> Result<Option<KtState>> {
        let row = self
            .conn
            .query_row(
                "SELECT certificate, epoch, scanned, frontier, known_devices
                 FROM kt_state WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(certificate, epoch, scanned, frontier, known_devices)| {
            Ok(KtState {
                certificate,
                epoch,
                scanned: to_u64(scanned, "kt scanned leaves")?,
                frontier,
                known_devices,
            })
        })
        .transpose()
    }

    /// Replaces the key-transparency monitor's state (one statement: a
    /// crash keeps the old state or the new one, never a mix).
    pub fn set_kt_state(&self, state: &KtState) -> Result<()> {
        self.conn.execute(
            "INSERT INTO kt_state (id, certificate, epoch, scanned, frontier, known_devices)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET certificate = excluded.certificate,
               epoch = excluded.epoch, scanned = excluded.scanned,
               frontier = excluded.frontier, known_devices = excluded.known_devices",
            params![
                state.certificate,
                state.epoch,
                to_i64(state.scanned, "kt scanned leaves")?,
                state.frontier,
                state.known_devices
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CreateOptions, KdfParams, Pin};
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            kdf: KdfParams {
                m_cost_kib: 8 * 1024,
                t_cost: 1,
                p_cost: 1,
            },
            max_attempts: 10,
        };
        let pin = Pin::new("123456".into()).unwrap();
        let s = Store::create(&dir.path().join("s.db"), &pin, None, opts).unwrap();
        (dir, s)
    }

    fn message(rid: u8, ts: u64, text: &str) -> Message {
        let dev = DeviceSigningKey::generate(&mut rand::rng());
        Message {
            resource_id: ResourceId([rid; 16]),
            conversation_id: ConversationId([9; 16]),
            sender_user_id: "alice@x".into(),
            sender_device: dev.public_key(),
            timestamp_ms: ts,
            content_type: ContentType::Text,
            content: Zeroizing::new(text.as_bytes().to_vec()),
        }
    }

    /// The room envelopes kept for a history forward (§17.13): the newest
    /// that fit, oldest first, once each; a forwarded bundle's copy is kept
    /// (a reseal needs it) but never listed.
    #[test]
    fn room_envelopes_are_the_newest_that_fit_and_bundles_are_not_listed() {
        let (_d, s) = store();
        let room = ward_core::RoomId([4; 32]);
        for (rid, ts) in [(1u8, 30u64), (2, 10), (3, 20)] {
            let m = message(rid, ts, "x");
            s.put_room_envelope(&room, &m.sender_user_id, &m.resource_id, ts, &[rid; 100])
                .unwrap();
            // Once only, whatever is offered again under the same key.
            s.put_room_envelope(&room, &m.sender_user_id, &m.resource_id, ts, &[0; 100])
                .unwrap();
        }
        s.put_room_envelope(
            &ward_core::RoomId([5; 32]),
            "bob@x",
            &ResourceId([7; 16]),
            5,
            &[7; 10],
        )
        .unwrap();
        let all = s.room_envelopes(&room, 1000).unwrap();
        assert_eq!(all, vec![vec![2u8; 100], vec![3; 100], vec![1; 100]]);
        let newest = s.room_envelopes(&room, 250).unwrap();
        assert_eq!(newest, vec![vec![3u8; 100], vec![1; 100]]);

        s.insert_message(&message(1, 1, "hello")).unwrap();
        let mut bundle = message(2, 2, "");
        bundle.content_type = ContentType::RoomHistory;
        s.insert_message(&bundle).unwrap();
        let listed = s.messages(&ConversationId([9; 16])).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(&listed[0].content[..], b"hello");
        let kept = s.message("alice@x", &ResourceId([2; 16])).unwrap().unwrap();
        assert_eq!(kept.content_type, ContentType::RoomHistory);
    }

    #[test]
    fn identity_is_set_once() {
        let (_d, s) = store();
        assert!(s.identity().unwrap().is_none());
        let mut rng = rand::rng();
        let id = Identity {
            user_id: "alice@x".into(),
            device_signing: DeviceSigningKey::generate(&mut rng),
            device_encryption: DeviceEncryptionKey::generate(&mut rng),
        };
        s.set_identity(&id).unwrap();
        let back = s.identity().unwrap().unwrap();
        assert_eq!(back.user_id, "alice@x");
        assert_eq!(
            back.device_signing.public_key(),
            id.device_signing.public_key()
        );
        assert_eq!(
            back.device_encryption.public_key(),
            id.device_encryption.public_key()
        );
        assert!(matches!(
            s.set_identity(&id),
            Err(StoreError::IdentityAlreadySet)
        ));
    }

    #[test]
    fn user_keys_by_public_key() {
        let (_d, s) = store();
        let mut rng = rand::rng();
        let (k1, k2) = (
            UserEncryptionKey::generate(&mut rng),
            UserEncryptionKey::generate(&mut rng),
        );
        s.add_user_key(&k1).unwrap();
        s.add_user_key(&k1).unwrap();
        s.add_user_key(&k2).unwrap();
        let got = s.user_key(&k2.public_key()).unwrap().unwrap();
        assert_eq!(got.public_key(), k2.public_key());
        let other = UserEncryptionKey::generate(&mut rng).public_key();
        assert!(s.user_key(&other).unwrap().is_none());
        let all: Vec<_> = s
            .user_keys()
            .unwrap()
            .iter()
            .map(|k| k.public_key())
            .collect();
        assert_eq!(all, vec![k1.public_key(), k2.public_key()]);
    }

    #[test]
    fn logs_are_replaced_whole() {
        let (_d, mut s) = store();
        assert!(s.verified_log("bob").unwrap().is_none());
        s.set_verified_log("bob", &[b"e0".to_vec(), b"e1".to_vec()])
            .unwrap();
        s.set_verified_log("bob", &[b"f0"]).unwrap();
        assert_eq!(
            s.verified_log("bob").unwrap().unwrap(),
            vec![b"f0".to_vec()]
        );
    }

    #[test]
    fn conversations_and_members() {
        let (_d, mut s) = store();
        let c = ConversationId([1; 16]);
        s.put_conversation(&c, &["bob".into(), "alice".into()])
            .unwrap();
        s.put_conversation(&c, &["carol".into(), "alice".into()])
            .unwrap();
        let got = s.conversation(&c).unwrap().unwrap();
        assert_eq!(got.members, vec!["alice".to_string(), "carol".into()]);
        assert!(s.conversation(&ConversationId([2; 16])).unwrap().is_none());
        assert_eq!(s.conversations().unwrap(), vec![got]);
    }

    #[test]
    fn messages_deduplicate_and_order() {
        let (_d, s) = store();
        let m2 = message(2, 2000, "second");
        let m1 = message(1, 1000, "first");
        assert!(s.insert_message(&m2).unwrap());
        assert!(s.insert_message(&m1).unwrap());
        assert!(!s.insert_message(&m1).unwrap(), "duplicate");
        // Same resource id from another sender is another message.
        let mut other = message(1, 3000, "other sender");
        other.sender_user_id = "bob@x".into();
        assert!(s.insert_message(&other).unwrap());
        let got = s.messages(&ConversationId([9; 16])).unwrap();
        assert_eq!(got, vec![m1.clone(), m2, other]);
        assert_eq!(
            s.message("alice@x", &ResourceId([1; 16])).unwrap(),
            Some(m1.clone())
        );
        assert!(!format!("{m1:?}").contains("first"));
    }

    #[test]
    fn outbox_items_lists_every_entry_in_order() {
        let (_d, s) = store();
        assert!(s.outbox_items().unwrap().is_empty());
        let a = s
            .outbox_enqueue(&ConversationId([1; 16]), b"a", 10)
            .unwrap();
        let b = s
            .outbox_enqueue(&ConversationId([2; 16]), b"b", 20)
            .unwrap();
        assert!(s.outbox_mark_sent(a).unwrap());
        let items = s.outbox_items().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].id, items[0].state), (a, OutboxState::Sent));
        assert_eq!((items[1].id, items[1].state), (b, OutboxState::Pending));
        assert_eq!(items[1].conversation_id, ConversationId([2; 16]));
        assert_eq!(&items[1].payload[..], b"b");
        assert!(s.outbox_remove(a).unwrap());
        assert_eq!(s.outbox_items().unwrap().len(), 1);
    }

    #[test]
    fn outbox_queue() {
        let (_d, s) = store();
        let c = ConversationId([4; 16]);
        assert!(s.outbox_peek().unwrap().is_none());
        let a = s.outbox_enqueue(&c, b"A", 10).unwrap();
        let b = s.outbox_enqueue(&c, b"B", 11).unwrap();
        let head = s.outbox_peek().unwrap().unwrap();
        assert_eq!(
            (head.id, &head.payload[..], head.state),
            (a, &b"A"[..], OutboxState::Pending)
        );
        assert!(s.outbox_mark_sent(a).unwrap());
        assert_eq!(s.outbox_peek().unwrap().unwrap().state, OutboxState::Sent);
        assert!(s.outbox_remove(a).unwrap());
        assert!(!s.outbox_remove(a).unwrap());
        let head = s.outbox_peek().unwrap().unwrap();
        assert_eq!((head.id, head.created_at_ms), (b, 11));
        assert_eq!(s.outbox_len().unwrap(), 1);
    }

    #[test]
    fn relay_cursor() {
        let (_d, s) = store();
        assert_eq!(s.relay_cursor().unwrap(), None);
        s.set_relay_cursor(5).unwrap();
        s.set_relay_cursor(7).unwrap();
        assert_eq!(s.relay_cursor().unwrap(), Some(7));
        assert!(matches!(
            s.set_relay_cursor(u64::MAX),
            Err(StoreError::InvalidData(_))
        ));
    }

    #[test]
    fn kt_state_is_replaced_whole() {
        let (_d, s) = store();
        assert_eq!(s.kt_state().unwrap(), None);
        let first = KtState {
            certificate: vec![1; 96],
            epoch: vec![2; 120],
            scanned: 3,
            frontier: vec![3; 64],
            known_devices: vec![4; 32],
        };
        s.set_kt_state(&first).unwrap();
        assert_eq!(s.kt_state().unwrap(), Some(first));
        let second = KtState {
            certificate: vec![5; 96],
            epoch: vec![6; 120],
            scanned: 4,
            frontier: vec![7; 32],
            known_devices: Vec::new(),
        };
        s.set_kt_state(&second).unwrap();
        assert_eq!(s.kt_state().unwrap(), Some(second));
    }
}
