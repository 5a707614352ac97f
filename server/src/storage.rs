//! SQLite storage: schema, migrations and the statements the writer and the
//! readers run. Every function here blocks: call them from the writer thread
//! or from `spawn_blocking`, never on the async runtime.
//!
//! Schema (version 6):
//!
//! | table | one row per | notes |
//! |---|---|---|
//! | `sends` | accepted message | client id, sender, time; the idempotency record, kept until retention |
//! | `messages` | stored ciphertext | keyed by `sends.id`; deleted once no `queue` row refers to it |
//! | `queue` | (recipient mailbox, seq) | `seq` from `mailboxes.next_seq`: monotonic per mailbox, never reused |
//! | `mailboxes` | recipient device | holds `next_seq`, so acks never make a seq come back, and `pending` (its queue entries) for the per-mailbox cap |
//! | `usage` | sending user | undelivered queue entries and payload bytes its devices have stored: the per-user quota |
//! | `logs` | user | longest verified user log seen (encoded `UserLog`) |
//! | `room_logs` | room | longest verified room log from the keyserver link (encoded `RoomLog`) |
//! | `seq_floor` | (one row) | the first seq of a new mailbox is `floor + 1`; raised by [`after_restore`] |
//! | `blobs` | attachment blob | owner device, declared size (the blob quota), complete; bytes are files (`crate::blobs`) |
//! | `blob_readers` | (blob, reader device) | recorded from the `Send` naming the blob; `fetched` once it said so |
//! | `push_tokens` | device that registered one | its push token (SECURITY.md §9.2); deleted with a revoked device's mailbox |
//!
//! Client message ids are random, so every index keyed by them costs one
//! random page write per message. Only `sends.message_id` is; the ciphertext
//! and queue entries refer to the internal, increasing `sends.id`, so their
//! pages fill in order.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use ward_proto::v1::{Deliver, RoomLog, SignedRoomStatement, SignedStatement, UserLog};
use ward_proto::{Message, decode_bounded};

use crate::error::StorageError;

/// The schema version this relay writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How far [`after_restore`] moves every mailbox's next sequence number: far
/// beyond any number of messages one device receives between a backup and
/// its restore.
pub const RESTORE_SEQ_GAP: i64 = 1 << 32;

const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "
    CREATE TABLE sends (
        id            INTEGER PRIMARY KEY,
        message_id    BLOB NOT NULL UNIQUE,  -- 16 bytes, client-chosen
        sender_user   TEXT NOT NULL,
        sender_device BLOB NOT NULL,
        created_at    INTEGER NOT NULL       -- unix ms, relay clock
    );
    CREATE INDEX sends_created ON sends(created_at);
    CREATE TABLE messages (
        id      INTEGER PRIMARY KEY,         -- sends.id
        payload BLOB NOT NULL                -- encoded Envelope, opaque
    );
    CREATE TABLE mailboxes (
        user_id   TEXT NOT NULL,
        device_id BLOB NOT NULL,
        next_seq  INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id)
    ) WITHOUT ROWID;
    CREATE TABLE queue (
        user_id   TEXT NOT NULL,
        device_id BLOB NOT NULL,
        seq       INTEGER NOT NULL,
        msg       INTEGER NOT NULL,          -- sends.id / messages.id
        PRIMARY KEY (user_id, device_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX queue_msg ON queue(msg);
    CREATE TABLE logs (
        user_id    TEXT PRIMARY KEY,
        len        INTEGER NOT NULL,
        entries    BLOB NOT NULL,            -- encoded UserLog
        updated_at INTEGER NOT NULL
    );
    ",
    // 1 -> 2: quotas. Counters kept by the writer beside the rows they count.
    "
    ALTER TABLE mailboxes ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
    UPDATE mailboxes SET pending = (SELECT count(*) FROM queue q
        WHERE q.user_id = mailboxes.user_id AND q.device_id = mailboxes.device_id);
    CREATE TABLE usage (
        user_id TEXT PRIMARY KEY,            -- the sending user
        entries INTEGER NOT NULL,            -- its undelivered queue entries
        bytes   INTEGER NOT NULL             -- its stored payload bytes
    );
    INSERT INTO usage (user_id, entries, bytes)
        SELECT s.sender_user, count(*), 0 FROM queue q JOIN sends s ON s.id = q.msg
        GROUP BY s.sender_user;
    UPDATE usage SET bytes = (SELECT coalesce(sum(length(m.payload)), 0)
        FROM messages m JOIN sends s ON s.id = m.id WHERE s.sender_user = usage.user_id);
    ",
    // 2 -> 3: sequence numbers survive a restore (see `after_restore`).
    "
    CREATE TABLE seq_floor (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        floor INTEGER NOT NULL
    );
    INSERT INTO seq_floor (id, floor) VALUES (1, 0);
    ",
    // 3 -> 4: attachment blobs (their bytes are files: `crate::blobs`); see
    // `crate::blob_meta`.
    "
    CREATE TABLE blobs (
        blob_id      BLOB PRIMARY KEY,       -- 32 bytes, sender-chosen
        owner_user   TEXT NOT NULL,
        owner_device BLOB NOT NULL,          -- the only device that may write it
        size         INTEGER NOT NULL,       -- declared blob size, counted in the quota
        complete     INTEGER NOT NULL DEFAULT 0,
        created_at   INTEGER NOT NULL,       -- unix ms: retention
        opened_at    INTEGER NOT NULL        -- unix ms of the last BlobOpen: abandonment
    ) WITHOUT ROWID;
    CREATE INDEX blobs_owner ON blobs(owner_user);
    CREATE TABLE blob_readers (
        blob_id   BLOB NOT NULL,
        user_id   TEXT NOT NULL,
        device_id BLOB NOT NULL,
        fetched   INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (blob_id, user_id, device_id)
    ) WITHOUT ROWID;
    ",
    // 4 -> 5: room logs from the keyserver link, verified (SECURITY.md
    // §17.10; `crate::rooms`): the relay computes a room message's
    // recipients from them.
    "
    CREATE TABLE room_logs (
        room_id    BLOB PRIMARY KEY,         -- 32 bytes
        len        INTEGER NOT NULL,
        entries    BLOB NOT NULL,            -- encoded RoomLog
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 5 -> 6: content-free push (SECURITY.md §9.2; `crate::push`): the
    // token each device registered, handed to the push gateway alone.
    "
    CREATE TABLE push_tokens (
        user_id   TEXT NOT NULL,
        device_id BLOB NOT NULL,
        token     BLOB NOT NULL,             -- 1..=1024 bytes, opaque
        PRIMARY KEY (user_id, device_id)
    ) WITHOUT ROWID;
    ",
];

/// Storage quotas the writer enforces on every `Send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Most undelivered queue entries per sending user.
    pub user_entries: u64,
    /// Most stored payload bytes per sending user.
    pub user_bytes: u64,
    /// Most undelivered entries per recipient mailbox.
    pub mailbox_entries: u64,
}

impl Quotas {
    /// No quota.
    pub const UNLIMITED: Quotas = Quotas {
        user_entries: u64::MAX,
        user_bytes: u64::MAX,
        mailbox_entries: u64::MAX,
    };
}

/// Which quota a refused `Send` would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// The sender's entries or bytes.
    User,
    /// A recipient mailbox's entries.
    Mailbox,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds `entries` and `bytes` (either may be negative) to `user`'s usage.
fn charge(conn: &Connection, user: &str, entries: i64, bytes: i64) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO usage (user_id, entries, bytes) VALUES (?1, max(?2, 0), max(?3, 0))
         ON CONFLICT (user_id) DO UPDATE SET entries = max(entries + ?2, 0),
         bytes = max(bytes + ?3, 0)",
    )?
    .execute(params![user, entries, bytes])?;
    Ok(())
}

fn sender_of(conn: &Connection, id: i64) -> Result<Option<String>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT sender_user FROM sends WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?)
}

/// Deletes the ciphertext `id` if no entry refers to it any more, and
/// credits its bytes back to `sender`.
fn drop_if_orphan(conn: &Connection, id: i64, sender: Option<&str>) -> Result<bool, StorageError> {
    let len: Option<i64> = conn
        .prepare_cached(
            "DELETE FROM messages WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM queue WHERE msg = ?1) RETURNING length(payload)",
        )?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    if let (Some(len), Some(sender)) = (len, sender) {
        charge(conn, sender, 0, -len)?;
    }
    Ok(len.is_some())
}

/// Credits the queue entries of messages `ids` (one per entry, repeats
/// allowed) back to their senders, then drops the orphaned ciphertexts.
fn release_entries(conn: &Connection, ids: &[i64]) -> Result<(), StorageError> {
    let mut per_msg: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for id in ids {
        *per_msg.entry(*id).or_default() += 1;
    }
    for (id, n) in per_msg {
        let sender = sender_of(conn, id)?;
        if let Some(s) = &sender {
            charge(conn, s, -n, 0)?;
        }
        drop_if_orphan(conn, id, sender.as_deref())?;
    }
    Ok(())
}

/// One device's mailbox: the authenticated (user, device) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The user the device belongs to.
    pub user_id: String,
    /// The device's signing public key.
    pub device_id: [u8; 32],
}

/// A validated `Send`.
pub struct NewMessage {
    /// Client-chosen id.
    pub message_id: [u8; 16],
    /// Distinct recipient mailboxes.
    pub recipients: Vec<Mailbox>,
    /// The encoded envelope. Never logged.
    pub payload: Vec<u8>,
}

// Never print the payload (ciphertext or not, it stays out of logs).
impl std::fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMessage")
            .field("recipients", &self.recipients.len())
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What storing a `Send` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored now, with the queue entry (mailbox, seq) of each recipient.
    Stored(Vec<(Mailbox, u64)>),
    /// The same sender sent this id before: nothing new stored.
    Duplicate,
    /// Another sender used this id: refused.
    Conflict,
    /// Storing it would pass a quota: refused, nothing stored.
    OverQuota(Quota),
}

/// Opens (creating if needed) the database with the relay's settings.
pub fn open(path: &Path) -> Result<Connection, StorageError> {
    create_private(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 64 MiB of page cache: index pages stay hot between commits.
    conn.pragma_update(None, "cache_size", -65_536)?;
    // Room for every statement the writer runs, so none is re-parsed.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates `path` empty, readable and writable by its owner only (0600,
/// whatever the umask), unless it exists. SQLite gives its `-wal` and
/// `-shm` files the database file's permissions.
pub fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`]; each step in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew(version));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Makes a database restored from a backup safe to serve: devices have seen
/// (and acked) sequence numbers the backup never issued, and a client skips
/// a `seq` at or below its cursor as already handled. So every mailbox's
/// next number, and the first number of mailboxes created from now on, jump
/// [`RESTORE_SEQ_GAP`] ahead. Entries already in the backup keep their
/// numbers: a device that handled them after the backup skips them, one
/// that did not gets them. Run once per restore, before serving.
pub fn after_restore(conn: &mut Connection) -> Result<(), StorageError> {
    migrate(conn)?;
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE mailboxes SET next_seq = next_seq + ?1",
        [RESTORE_SEQ_GAP],
    )?;
    // A mailbox created after the backup is unknown to it: its numbers
    // started at floor + 1 and stayed below floor + 1 + RESTORE_SEQ_GAP.
    tx.execute("UPDATE seq_floor SET floor = floor + ?1", [RESTORE_SEQ_GAP])?;
    tx.commit()?;
    Ok(())
}

/// Stores one message and its queue entries, idempotently on `message_id`,
/// unless it would pass one of `quotas`.
pub fn insert_message(
    conn: &Connection,
    sender: &Mailbox,
    msg: &NewMessage,
    now_ms: u64,
    quotas: &Quotas,
) -> Result<SendOutcome, StorageError> {
    let existing: Option<(String, Vec<u8>)> = conn
        .prepare_cached("SELECT sender_user, sender_device FROM sends WHERE message_id = ?1")?
        .query_row(params![&msg.message_id[..]], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((user, device)) = existing {
        return Ok(if user == sender.user_id && device == sender.device_id {
            SendOutcome::Duplicate
        } else {
            SendOutcome::Conflict
        });
    }
    let (used_entries, used_bytes): (i64, i64) = conn
        .prepare_cached("SELECT entries, bytes FROM usage WHERE user_id = ?1")?
        .query_row(params![sender.user_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0));
    let n = msg.recipients.len() as i64;
    let len = msg.payload.len() as i64;
    if used_entries.saturating_add(n) > to_i64(quotas.user_entries)
        || used_bytes.saturating_add(len) > to_i64(quotas.user_bytes)
    {
        return Ok(SendOutcome::OverQuota(Quota::User));
    }
    {
        let mut pending = conn.prepare_cached(
            "SELECT pending FROM mailboxes WHERE user_id = ?1 AND device_id = ?2",
        )?;
        for r in &msg.recipients {
            let p: i64 = pending
                .query_row(params![r.user_id, &r.device_id[..]], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            if p.saturating_add(1) > to_i64(quotas.mailbox_entries) {
                return Ok(SendOutcome::OverQuota(Quota::Mailbox));
            }
        }
    }
    charge(conn, &sender.user_id, n, len)?;
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO sends (message_id, sender_user, sender_device, created_at)
             VALUES (?1, ?2, ?3, ?4) RETURNING id",
        )?
        .query_row(
            params![
                &msg.message_id[..],
                sender.user_id,
                &sender.device_id[..],
                now_ms as i64
            ],
            |r| r.get(0),
        )?;
    conn.prepare_cached("INSERT INTO messages (id, payload) VALUES (?1, ?2)")?
        .execute(params![id, msg.payload])?;
    let mut next_seq = conn.prepare_cached(
        "INSERT INTO mailboxes (user_id, device_id, next_seq, pending)
         VALUES (?1, ?2, (SELECT floor FROM seq_floor WHERE id = 1) + 2, 1)
         ON CONFLICT (user_id, device_id) DO UPDATE SET next_seq = next_seq + 1,
         pending = pending + 1
         RETURNING next_seq - 1",
    )?;
    let mut enqueue = conn.prepare_cached(
        "INSERT INTO queue (user_id, device_id, seq, msg) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut entries = Vec::with_capacity(msg.recipients.len());
    for r in &msg.recipients {
        let seq: i64 =
            next_seq.query_row(params![r.user_id, &r.device_id[..]], |row| row.get(0))?;
        enqueue.execute(params![r.user_id, &r.device_id[..], seq, id])?;
        entries.push((r.clone(), seq as u64));
    }
    Ok(SendOutcome::Stored(entries))
}

/// Deletes `mailbox`'s entries up to and including `up_to_seq`, then the
/// ciphertexts no entry refers to any more. Returns the entries deleted.
pub fn ack(conn: &Connection, mailbox: &Mailbox, up_to_seq: u64) -> Result<usize, StorageError> {
    let up_to = i64::try_from(up_to_seq).unwrap_or(i64::MAX);
    let ids: Vec<i64> = conn
        .prepare_cached(
            "DELETE FROM queue WHERE user_id = ?1 AND device_id = ?2 AND seq <= ?3
             RETURNING msg",
        )?
        .query_map(
            params![mailbox.user_id, &mailbox.device_id[..], up_to],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    if !ids.is_empty() {
        conn.prepare_cached(
            "UPDATE mailboxes SET pending = max(pending - ?3, 0)
             WHERE user_id = ?1 AND device_id = ?2",
        )?
        .execute(params![
            mailbox.user_id,
            &mailbox.device_id[..],
            ids.len() as i64
        ])?;
        release_entries(conn, &ids)?;
    }
    Ok(ids.len())
}

/// The devices of `user_id` that have a mailbox or a push token (what
/// [`prune_devices`] deletes).
pub fn mailbox_devices(conn: &Connection, user_id: &str) -> Result<Vec<[u8; 32]>, StorageError> {
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT device_id FROM mailboxes WHERE user_id = ?1
             UNION SELECT device_id FROM push_tokens WHERE user_id = ?1",
        )?
        .query_map(params![user_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        .collect())
}

/// Deletes the mailboxes of `devices` of `user_id` (revoked: they can never
/// connect again) with their entries, credits those back to their senders,
/// and drops the orphaned ciphertexts. Returns the entries deleted.
pub fn prune_devices(
    conn: &Connection,
    user_id: &str,
    devices: &[[u8; 32]],
) -> Result<usize, StorageError> {
    let mut deleted = 0;
    for d in devices {
        let ids: Vec<i64> = conn
            .prepare_cached(
                "DELETE FROM queue WHERE user_id = ?1 AND device_id = ?2 RETURNING msg",
            )?
            .query_map(params![user_id, &d[..]], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        conn.prepare_cached("DELETE FROM mailboxes WHERE user_id = ?1 AND device_id = ?2")?
            .execute(params![user_id, &d[..]])?;
        // A revoked device is never woken again.
        conn.prepare_cached("DELETE FROM push_tokens WHERE user_id = ?1 AND device_id = ?2")?
            .execute(params![user_id, &d[..]])?;
        release_entries(conn, &ids)?;
        deleted += ids.len();
    }
    Ok(deleted)
}

/// Stores `mailbox`'s push token, or deletes it when `token` is empty.
pub fn set_push_token(
    conn: &Connection,
    mailbox: &Mailbox,
    token: &[u8],
) -> Result<(), StorageError> {
    if token.is_empty() {
        conn.prepare_cached("DELETE FROM push_tokens WHERE user_id = ?1 AND device_id = ?2")?
            .execute(params![mailbox.user_id, &mailbox.device_id[..]])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO push_tokens (user_id, device_id, token) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, device_id) DO UPDATE SET token = excluded.token",
        )?
        .execute(params![mailbox.user_id, &mailbox.device_id[..], token])?;
    }
    Ok(())
}

/// Every stored push token, for the pusher at start.
pub fn push_tokens(conn: &Connection) -> Result<Vec<(Mailbox, Vec<u8>)>, StorageError> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = conn
        .prepare_cached("SELECT user_id, device_id, token FROM push_tokens")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(user_id, d, token)| {
            let device_id = <[u8; 32]>::try_from(d.as_slice()).ok()?;
            Some((Mailbox { user_id, device_id }, token))
        })
        .collect())
}

/// What a retention sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Messages (idempotency records) expired.
    pub sends: usize,
    /// Queue entries expired.
    pub entries: usize,
    /// Ciphertexts expired.
    pub messages: usize,
    /// Empty mailboxes of users the relay has no log for (never connected,
    /// so no cursor can regress) deleted.
    pub mailboxes: usize,
}

/// Removes up to `limit` of the oldest messages received before
/// `cutoff_ms`, with their entries and ciphertext. Bounded so that one
/// sweep step never holds the writer long; repeat while `sends == limit`.
pub fn sweep(conn: &Connection, cutoff_ms: u64, limit: usize) -> Result<Swept, StorageError> {
    let cutoff = i64::try_from(cutoff_ms).unwrap_or(i64::MAX);
    let ids: Vec<i64> = conn
        .prepare_cached("SELECT id FROM sends WHERE created_at < ?1 ORDER BY created_at LIMIT ?2")?
        .query_map(params![cutoff, limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut swept = Swept::default();
    let mut entries =
        conn.prepare_cached("DELETE FROM queue WHERE msg = ?1 RETURNING user_id, device_id")?;
    let mut messages =
        conn.prepare_cached("DELETE FROM messages WHERE id = ?1 RETURNING length(payload)")?;
    let mut sends = conn.prepare_cached("DELETE FROM sends WHERE id = ?1 RETURNING sender_user")?;
    let mut pending = conn.prepare_cached(
        "UPDATE mailboxes SET pending = max(pending - 1, 0) WHERE user_id = ?1 AND device_id = ?2",
    )?;
    for id in ids {
        let mailboxes: Vec<(String, Vec<u8>)> = entries
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (u, d) in &mailboxes {
            pending.execute(params![u, d])?;
        }
        let len: Option<i64> = messages.query_row(params![id], |r| r.get(0)).optional()?;
        let sender: Option<String> = sends.query_row(params![id], |r| r.get(0)).optional()?;
        if let Some(s) = &sender {
            charge(conn, s, -(mailboxes.len() as i64), -len.unwrap_or(0))?;
            swept.sends += 1;
        }
        swept.entries += mailboxes.len();
        swept.messages += usize::from(len.is_some());
    }
    swept.mailboxes = conn
        .prepare_cached(
            "DELETE FROM mailboxes WHERE (user_id, device_id) IN (
                SELECT m.user_id, m.device_id FROM mailboxes m
                WHERE m.pending = 0 AND NOT EXISTS (SELECT 1 FROM logs l WHERE l.user_id = m.user_id)
                LIMIT ?1)",
        )?
        .execute(params![limit as i64])?;
    Ok(swept)
}

/// Replaces `user_id`'s stored log if it still has `prev_len` entries
/// (0: none stored). Returns false if another writer got there first.
pub fn store_log(
    conn: &Connection,
    user_id: &str,
    prev_len: u64,
    entries: &[SignedStatement],
    now_ms: u64,
) -> Result<bool, StorageError> {
    let current: Option<i64> = conn
        .prepare_cached("SELECT len FROM logs WHERE user_id = ?1")?
        .query_row(params![user_id], |r| r.get(0))
        .optional()?;
    if current.unwrap_or(0) as u64 != prev_len {
        return Ok(false);
    }
    let blob = UserLog {
        entries: entries.to_vec(),
    }
    .encode_to_vec();
    conn.prepare_cached(
        "INSERT INTO logs (user_id, len, entries, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id) DO UPDATE SET len = excluded.len, entries = excluded.entries,
         updated_at = excluded.updated_at",
    )?
    .execute(params![user_id, entries.len() as i64, blob, now_ms as i64])?;
    Ok(true)
}

/// Replaces a room's stored log if it still has `prev_len` entries (0:
/// none stored). Returns false if another writer got there first.
pub fn store_room_log(
    conn: &Connection,
    room_id: &[u8; 32],
    prev_len: u64,
    entries: &[SignedRoomStatement],
    now_ms: u64,
) -> Result<bool, StorageError> {
    let current: Option<i64> = conn
        .prepare_cached("SELECT len FROM room_logs WHERE room_id = ?1")?
        .query_row(params![room_id.as_slice()], |r| r.get(0))
        .optional()?;
    if current.unwrap_or(0) as u64 != prev_len {
        return Ok(false);
    }
    let blob = RoomLog {
        entries: entries.to_vec(),
    }
    .encode_to_vec();
    conn.prepare_cached(
        "INSERT INTO room_logs (room_id, len, entries, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (room_id) DO UPDATE SET len = excluded.len, entries = excluded.entries,
         updated_at = excluded.updated_at",
    )?
    .execute(params![
        room_id.as_slice(),
        entries.len() as i64,
        blob,
        now_ms as i64
    ])?;
    Ok(true)
}

/// The stored log of a room, if any.
pub fn load_room_log(
    conn: &Connection,
    room_id: &[u8; 32],
) -> Result<Option<Vec<SignedRoomStatement>>, StorageError> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT entries FROM room_logs WHERE room_id = ?1")?
        .query_row(params![room_id.as_slice()], |r| r.get(0))
        .optional()?;
    match blob {
        None => Ok(None),
        Some(b) => {
            let log: RoomLog = decode_bounded(&b, usize::MAX)
                .map_err(|_| StorageError::Corrupt("stored room log"))?;
            Ok(Some(log.entries))
        }
    }
}

/// The stored log of `user_id`, if any.
pub fn load_log(
    conn: &Connection,
    user_id: &str,
) -> Result<Option<Vec<SignedStatement>>, StorageError> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT entries FROM logs WHERE user_id = ?1")?
        .query_row(params![user_id], |r| r.get(0))
        .optional()?;
    match blob {
        None => Ok(None),
        Some(b) => {
            let log: UserLog =
                decode_bounded(&b, usize::MAX).map_err(|_| StorageError::Corrupt("stored log"))?;
            Ok(Some(log.entries))
        }
    }
}

/// The (seq, payload length) of up to `limit` entries of `mailbox` after
/// `after_seq`, in seq order, stopping once `max_bytes` are counted (but at
/// least one entry). Lengths come from the record headers: no payload is read.
pub fn backlog_sizes(
    conn: &Connection,
    mailbox: &Mailbox,
    after_seq: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<(u64, usize)>, StorageError> {
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT q.seq, length(m.payload) FROM queue q JOIN messages m ON m.id = q.msg
         WHERE q.user_id = ?1 AND q.device_id = ?2 AND q.seq > ?3
         ORDER BY q.seq LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![mailbox.user_id, &mailbox.device_id[..], after, limit as i64],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as usize)),
    )?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let (seq, len) = row?;
        bytes = bytes.saturating_add(len);
        out.push((seq, len));
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

/// Up to `limit` entries of `mailbox` after `after_seq`, in seq order,
/// stopping once `max_bytes` of payload are read (but at least one entry).
pub fn backlog(
    conn: &Connection,
    mailbox: &Mailbox,
    after_seq: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Deliver>, StorageError> {
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT q.seq, s.message_id, s.sender_user, s.sender_device, m.payload, s.created_at
         FROM queue q JOIN messages m ON m.id = q.msg JOIN sends s ON s.id = q.msg
         WHERE q.user_id = ?1 AND q.device_id = ?2 AND q.seq > ?3
         ORDER BY q.seq LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![mailbox.user_id, &mailbox.device_id[..], after, limit as i64],
        |r| {
            Ok(Deliver {
                seq: r.get::<_, i64>(0)? as u64,
                message_id: r.get(1)?,
                sender_user_id: r.get(2)?,
                sender_device_id: r.get(3)?,
                payload: r.get(4)?,
                received_at_ms: r.get::<_, i64>(5)? as u64,
            })
        },
    )?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let d = row?;
        bytes = bytes.saturating_add(d.payload.len());
        out.push(d);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(user: &str, d: u8) -> Mailbox {
        Mailbox {
            user_id: user.into(),
            device_id: [d; 32],
        }
    }

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        c
    }

    #[test]
    fn send_ack_and_orphan_deletion() {
        let c = db();
        let a = mailbox("alice", 1);
        let b1 = mailbox("bob", 2);
        let b2 = mailbox("bob", 3);
        let msg = |id: u8| NewMessage {
            message_id: [id; 16],
            recipients: vec![b1.clone(), b2.clone()],
            payload: vec![id; 10],
        };
        assert!(matches!(
            insert_message(&c, &a, &msg(1), 5, &Quotas::UNLIMITED).unwrap(),
            SendOutcome::Stored(_)
        ));
        assert_eq!(
            insert_message(&c, &a, &msg(1), 6, &Quotas::UNLIMITED).unwrap(),
            SendOutcome::Duplicate
        );
        assert_eq!(
            insert_message(&c, &b1, &msg(1), 6, &Quotas::UNLIMITED).unwrap(),
            SendOutcome::Conflict
        );
        insert_message(&c, &a, &msg(2), 7, &Quotas::UNLIMITED).unwrap();
        let got = backlog(&c, &b1, 0, 10, usize::MAX).unwrap();
        assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(got[1].payload, vec![2; 10]);
        assert_eq!(backlog(&c, &b1, 1, 10, 1).unwrap().len(), 1);

        assert_eq!(ack(&c, &b1, 2).unwrap(), 2);
        let count = |t: &str| -> i64 {
            c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        // b2 still holds both: ciphertexts stay.
        assert_eq!(count("messages"), 2);
        assert_eq!(ack(&c, &b2, 1).unwrap(), 1);
        assert_eq!(count("messages"), 1);
        assert_eq!(ack(&c, &b2, u64::MAX).unwrap(), 1);
        assert_eq!(count("messages"), 0);
        // Seqs are never reused after acks.
        insert_message(&c, &a, &msg(3), 8, &Quotas::UNLIMITED).unwrap();
        assert_eq!(backlog(&c, &b1, 0, 10, usize::MAX).unwrap()[0].seq, 3);
        // Still a duplicate after its ciphertext was delivered and deleted.
        assert_eq!(
            insert_message(&c, &a, &msg(1), 9, &Quotas::UNLIMITED).unwrap(),
            SendOutcome::Duplicate
        );
    }

    #[test]
    fn sweep_expires_old_entries() {
        let c = db();
        let a = mailbox("alice", 1);
        let b = mailbox("bob", 2);
        for (id, t) in [(1u8, 100u64), (2, 200)] {
            let m = NewMessage {
                message_id: [id; 16],
                recipients: vec![b.clone()],
                payload: vec![0; 4],
            };
            insert_message(&c, &a, &m, t, &Quotas::UNLIMITED).unwrap();
        }
        assert_eq!(
            sweep(&c, 150, 100).unwrap(),
            Swept {
                sends: 1,
                entries: 1,
                messages: 1,
                mailboxes: 0,
            }
        );
        let left = backlog(&c, &b, 0, 10, usize::MAX).unwrap();
        // Bounded steps: two messages old enough, one per step.
        for (id, t) in [(3u8, 300u64), (4, 301)] {
            let m = NewMessage {
                message_id: [id; 16],
                recipients: vec![b.clone()],
                payload: vec![0; 4],
            };
            insert_message(&c, &a, &m, t, &Quotas::UNLIMITED).unwrap();
        }
        assert_eq!(sweep(&c, 1000, 1).unwrap().sends, 1);
        assert_eq!(sweep(&c, 1000, 1).unwrap().sends, 1);
        assert_eq!(sweep(&c, 1000, 1).unwrap().sends, 1);
        assert_eq!(sweep(&c, 1000, 1).unwrap().sends, 0);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message_id, vec![2; 16]);
    }

    #[test]
    fn log_compare_and_swap() {
        let c = db();
        let e = SignedStatement {
            statement: vec![1],
            signature: vec![2],
        };
        assert!(store_log(&c, "u", 0, std::slice::from_ref(&e), 1).unwrap());
        assert!(!store_log(&c, "u", 0, std::slice::from_ref(&e), 1).unwrap());
        assert!(store_log(&c, "u", 1, &[e.clone(), e.clone()], 1).unwrap());
        assert_eq!(load_log(&c, "u").unwrap().unwrap().len(), 2);
        assert!(load_log(&c, "v").unwrap().is_none());
    }

    /// Issue 9, item 7: the database and its WAL and shared-memory files
    /// are created readable by the relay's user only (0644 on main).
    #[cfg(unix)]
    #[test]
    fn the_database_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("ward-relay-perm-{}", hex::encode(r)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.db");
        let mut c = open(&path).unwrap();
        migrate(&mut c).unwrap();
        for f in ["relay.db", "relay.db-wal", "relay.db-shm"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f} is {mode:o}");
        }
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
