//! SQLite storage: schema, migrations and every query.
//!
//! * WAL mode, `synchronous = FULL`: a reply is sent only after its
//!   transaction committed durably.
//! * Every write runs in one `BEGIN IMMEDIATE` transaction, which also holds
//!   the checks it depends on (device still active, invite unused, no
//!   conflicting key), so concurrent requests cannot interleave badly.
//! * Versioned migrations keyed on `PRAGMA user_version`.
//! * The functions here are blocking; the server calls them through
//!   [`Db::call`], which runs them on tokio's blocking pool with a pooled
//!   connection, never on the async workers.
//!
//! Schema (version 3):
//!
//! | table | rows | key |
//! |---|---|---|
//! | `users` | one per user: current encryption key id, rotation pending, log length | `user_id` |
//! | `log_entries` | each verified statement, exactly as signed, with its entry hash | `(user_id, seq)` |
//! | `used_invites` | hash of every invite used | `invite_hash` |
//! | `devices` | each device ever added, with its encryption key id and `active` flag | `(user_id, device_id)` |
//! | `user_keys` | every encryption key (by id) a user has had | `(user_id, user_key)` |
//! | `wrapped_keys` | resource keys wrapped to a user key, with sender and time | `(resource_id, recipient_user)` |
//! | `device_grants` | a user key wrapped to one of its devices | `(user_id, user_key, device_key)` |
//! | `access_log` | append-only (triggers refuse UPDATE and DELETE): each wrapped-key, grant, room-wrap and room-key read | `id` |
//! | `directory_index` | per user: normalised display name, profession and registry number, and entry 0's invite (`search.rs`) | `user_id` |
//! | `directory_words` | each normalised word of a user's display name | `(word, user_id)` |
//!
//! Version 4 adds the rooms' tables (`rooms`, `room_entries`, `room_access`,
//! `room_epochs`, `room_epoch_members`, `room_wraps`, `room_keys`), queried
//! by [`crate::room_storage`].
//!
//! Version 6 adds key transparency's append-only tables (triggers refuse
//! UPDATE and DELETE), written by [`crate::transparency`]:
//!
//! | table | rows | key |
//! |---|---|---|
//! | `kt_leaves` | each published leaf: user id, log length, head entry hash, epoch that published it | `idx` (unique `(user_id, log_len)`) |
//! | `kt_epochs` | each signed epoch: tree size, root, timestamp, directory-key signature | `epoch` |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use ward_core::chain::{MAX_LOG_ENTRIES, entry_hash, verify_log};
use ward_core::keys::SigningPublicKey;
use ward_proto::v1::{
    DeviceGrant, ErrorCode, SignedStatement, UserLog, WrappedKey, WrappedKeyFor, WrappedKeys,
};

use crate::access::{AccessLog, AccessRow};
use crate::config::Quotas;
use crate::directory::{self, Change, Kind, VerifiedCache};
use crate::error::{RequestError, StorageError};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 6;

const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    r#"
    CREATE TABLE users (
        user_id          TEXT PRIMARY KEY,
        current_key      BLOB NOT NULL,
        rotation_pending INTEGER NOT NULL DEFAULT 0,
        log_len          INTEGER NOT NULL,
        created_at       INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE log_entries (
        user_id     TEXT NOT NULL REFERENCES users(user_id),
        seq         INTEGER NOT NULL,
        statement   BLOB NOT NULL,
        signature   BLOB NOT NULL,
        entry_hash  BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (user_id, seq)
    ) STRICT;
    CREATE TABLE used_invites (
        invite_hash BLOB PRIMARY KEY,
        user_id     TEXT NOT NULL,
        used_at     INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE devices (
        user_id        TEXT NOT NULL REFERENCES users(user_id),
        device_id      BLOB NOT NULL,
        encryption_key BLOB NOT NULL,
        active         INTEGER NOT NULL,
        added_seq      INTEGER NOT NULL,
        revoked_seq    INTEGER,
        PRIMARY KEY (user_id, device_id)
    ) STRICT;
    CREATE TABLE user_keys (
        user_id   TEXT NOT NULL REFERENCES users(user_id),
        user_key  BLOB NOT NULL,
        since_seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, user_key)
    ) STRICT;
    CREATE TABLE wrapped_keys (
        resource_id    BLOB NOT NULL,
        recipient_user TEXT NOT NULL REFERENCES users(user_id),
        recipient_key  BLOB NOT NULL,
        enc            BLOB NOT NULL,
        ciphertext     BLOB NOT NULL,
        sender_user    TEXT NOT NULL,
        sender_device  BLOB NOT NULL,
        created_at     INTEGER NOT NULL,
        PRIMARY KEY (resource_id, recipient_user)
    ) STRICT;
    CREATE TABLE device_grants (
        user_id       TEXT NOT NULL REFERENCES users(user_id),
        user_key      BLOB NOT NULL,
        device_key    BLOB NOT NULL,
        enc           BLOB NOT NULL,
        ciphertext    BLOB NOT NULL,
        sender_device BLOB NOT NULL,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (user_id, user_key, device_key)
    ) STRICT;
    CREATE TABLE access_log (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        user_id     TEXT NOT NULL,
        device_id   BLOB NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('wrapped_key', 'device_grant')),
        resource_id BLOB NOT NULL
    ) STRICT;
    CREATE INDEX access_log_at ON access_log(at);
    CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
        BEGIN SELECT RAISE(ABORT, 'access log is append-only'); END;
    CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
        BEGIN SELECT RAISE(ABORT, 'access log is append-only'); END;
    "#,
    // 1 -> 2: quotas count a sender's keys and a user's grants; retention
    // deletes by age.
    r#"
    CREATE INDEX wrapped_keys_sender ON wrapped_keys(sender_user, created_at);
    CREATE INDEX wrapped_keys_created ON wrapped_keys(created_at);
    CREATE INDEX device_grants_created ON device_grants(created_at);
    "#,
    // 2 -> 3: the professional directory's search index (`search.rs`,
    // SECURITY.md §10.9). Filled for existing users at startup
    // (`search::backfill`): SQL cannot read the invite out of entry 0.
    r#"
    CREATE TABLE directory_index (
        user_id    TEXT PRIMARY KEY REFERENCES users(user_id),
        sort_key   TEXT NOT NULL,
        profession TEXT NOT NULL,
        registry   TEXT NOT NULL,
        invite     BLOB NOT NULL
    ) STRICT;
    CREATE INDEX directory_index_order ON directory_index(sort_key, user_id);
    CREATE INDEX directory_index_profession ON directory_index(profession, sort_key, user_id);
    CREATE INDEX directory_index_registry ON directory_index(registry);
    CREATE TABLE directory_words (
        word    TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        PRIMARY KEY (word, user_id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX directory_words_user ON directory_words(user_id, word);
    "#,
    // 3 -> 4: rooms (SECURITY.md §17.11, `room_storage.rs`); the access log
    // also records epoch-key wraps and room message keys served. Its kind
    // CHECK cannot be altered in place: the table is rebuilt, rows kept
    // (DROP TABLE fires no DELETE trigger; the triggers are recreated).
    r#"
    CREATE TABLE rooms (
        room_id    BLOB PRIMARY KEY,
        creator    TEXT NOT NULL,
        policy     INTEGER NOT NULL,
        log_len    INTEGER NOT NULL,
        head       BLOB NOT NULL,
        epoch      INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX rooms_creator ON rooms(creator);
    CREATE TABLE room_entries (
        room_id     BLOB NOT NULL REFERENCES rooms(room_id),
        seq         INTEGER NOT NULL,
        statement   BLOB NOT NULL,
        signature   BLOB NOT NULL,
        entry_hash  BLOB NOT NULL,
        author_user TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (room_id, seq)
    ) STRICT;
    CREATE TABLE room_access (
        room_id     BLOB NOT NULL REFERENCES rooms(room_id),
        user_id     TEXT NOT NULL,
        visible_len INTEGER,
        PRIMARY KEY (room_id, user_id)
    ) STRICT;
    CREATE INDEX room_access_user ON room_access(user_id);
    CREATE TABLE room_epochs (
        room_id   BLOB NOT NULL REFERENCES rooms(room_id),
        epoch     INTEGER NOT NULL,
        epoch_key BLOB NOT NULL,
        PRIMARY KEY (room_id, epoch)
    ) STRICT;
    CREATE TABLE room_epoch_members (
        room_id  BLOB NOT NULL REFERENCES rooms(room_id),
        epoch    INTEGER NOT NULL,
        user_id  TEXT NOT NULL,
        user_key BLOB NOT NULL,
        PRIMARY KEY (room_id, epoch, user_id)
    ) STRICT;
    CREATE TABLE room_wraps (
        room_id        BLOB NOT NULL REFERENCES rooms(room_id),
        epoch          INTEGER NOT NULL,
        recipient_user TEXT NOT NULL,
        recipient_key  BLOB NOT NULL,
        epoch_key      BLOB NOT NULL,
        enc            BLOB NOT NULL,
        ciphertext     BLOB NOT NULL,
        sender_user    TEXT NOT NULL,
        sender_device  BLOB NOT NULL,
        created_at     INTEGER NOT NULL,
        PRIMARY KEY (room_id, recipient_user, epoch, recipient_key)
    ) STRICT;
    CREATE INDEX room_wraps_sender ON room_wraps(sender_user);
    CREATE TABLE room_keys (
        resource_id   BLOB PRIMARY KEY,
        room_id       BLOB NOT NULL REFERENCES rooms(room_id),
        epoch         INTEGER NOT NULL,
        recipient_key BLOB NOT NULL,
        enc           BLOB NOT NULL,
        ciphertext    BLOB NOT NULL,
        sender_user   TEXT NOT NULL,
        sender_device BLOB NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX room_keys_sender ON room_keys(sender_user, created_at);
    CREATE INDEX room_keys_created ON room_keys(created_at);
    DROP TRIGGER access_log_no_update;
    DROP TRIGGER access_log_no_delete;
    CREATE TABLE access_log_v3 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        user_id     TEXT NOT NULL,
        device_id   BLOB NOT NULL,
        kind        TEXT NOT NULL
                    CHECK (kind IN ('wrapped_key', 'device_grant', 'room_wrap', 'room_key')),
        resource_id BLOB NOT NULL
    ) STRICT;
    INSERT INTO access_log_v3 (id, at, user_id, device_id, kind, resource_id)
        SELECT id, at, user_id, device_id, kind, resource_id FROM access_log;
    DROP TABLE access_log;
    ALTER TABLE access_log_v3 RENAME TO access_log;
    CREATE INDEX access_log_at ON access_log(at);
    CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
        BEGIN SELECT RAISE(ABORT, 'access log is append-only'); END;
    CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
        BEGIN SELECT RAISE(ABORT, 'access log is append-only'); END;
    "#,
    // 4 -> 5: the directory's normaliser lower-cases before it folds
    // (SECURITY.md §10.9), so words indexed before may differ: the index is
    // emptied here and rebuilt from every entry 0 at startup
    // (`search::backfill`), as when it was created.
    r#"
    DELETE FROM directory_words;
    DELETE FROM directory_index;
    "#,
    // 5 -> 6: key transparency (SECURITY.md §18.4). Both tables only grow:
    // a published leaf or epoch that changed would be a split view, so the
    // database refuses it as it refuses edits of the access log. `IF NOT
    // EXISTS`: a database set back to an older version re-runs this step.
    r#"
    CREATE TABLE IF NOT EXISTS kt_leaves (
        idx       INTEGER PRIMARY KEY,
        user_id   TEXT NOT NULL,
        log_len   INTEGER NOT NULL,
        head_hash BLOB NOT NULL,
        epoch     INTEGER NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX IF NOT EXISTS kt_leaves_user ON kt_leaves(user_id, log_len);
    CREATE TABLE IF NOT EXISTS kt_epochs (
        epoch     INTEGER PRIMARY KEY,
        tree_size INTEGER NOT NULL,
        root      BLOB NOT NULL,
        timestamp INTEGER NOT NULL,
        signature BLOB NOT NULL
    ) STRICT;
    CREATE TRIGGER IF NOT EXISTS kt_leaves_no_update BEFORE UPDATE ON kt_leaves
        BEGIN SELECT RAISE(ABORT, 'kt_leaves is append-only'); END;
    CREATE TRIGGER IF NOT EXISTS kt_leaves_no_delete BEFORE DELETE ON kt_leaves
        BEGIN SELECT RAISE(ABORT, 'kt_leaves is append-only'); END;
    CREATE TRIGGER IF NOT EXISTS kt_epochs_no_update BEFORE UPDATE ON kt_epochs
        BEGIN SELECT RAISE(ABORT, 'kt_epochs is append-only'); END;
    CREATE TRIGGER IF NOT EXISTS kt_epochs_no_delete BEFORE DELETE ON kt_epochs
        BEGIN SELECT RAISE(ABORT, 'kt_epochs is append-only'); END;
    "#,
];

/// Opens (creating if needed) the database at `path` and configures the
/// connection. Does not migrate.
pub fn open_connection(path: &Path) -> Result<Connection, StorageError> {
    create_private(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
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

/// Brings the schema to [`SCHEMA_VERSION`], one transaction per step.
pub fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StorageError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The database: a path and a small pool of open connections. Every query
/// goes through [`Db::call`].
pub struct Db {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    /// Verified user logs ([`directory::VerifiedCache`]).
    pub verified: VerifiedCache,
    /// The group-committing access-log writer.
    pub access: AccessLog,
    /// Verified room logs ([`crate::room_storage::RoomCache`]).
    pub rooms: crate::room_storage::RoomCache,
}

/// Connections kept open between calls.
const POOL_KEEP: usize = 8;

impl Db {
    /// Opens and migrates the database at `path` (blocking: call before
    /// serving, or from a blocking task).
    pub fn open(path: &Path) -> Result<Arc<Self>, StorageError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        let indexed = crate::search::backfill(&mut conn)?;
        if indexed > 0 {
            tracing::info!(users = indexed, "directory search index filled");
        }
        let access = AccessLog::start(path)?;
        Ok(Arc::new(Self {
            access,
            path: path.to_owned(),
            pool: Mutex::new(vec![conn]),
            verified: VerifiedCache::new(directory::DEFAULT_CACHE_BYTES),
            rooms: crate::room_storage::RoomCache::new(crate::room_storage::DEFAULT_ROOM_CACHE),
        }))
    }

    fn take(&self) -> Result<Connection, StorageError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => open_connection(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(conn);
        }
    }

    /// Runs `f` with a connection on the blocking pool.
    pub async fn call<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let db = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = db.take()?;
            let out = f(&mut conn);
            // A connection left inside a failed transaction rolls back on
            // drop of the `Transaction`; it is safe to reuse.
            db.give_back(conn);
            out
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) => Err(StorageError::Task(e.to_string()).into()),
        }
    }
}

/// Where a device stands in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// An active device of the user.
    Active,
    /// A device of the user, revoked.
    Revoked,
    /// The user exists, the device is not one of its devices.
    Unknown,
    /// No such user (yet).
    NoSuchUser,
}

/// The directory's view of `device` of `user_id`.
pub fn device_status(
    conn: &Connection,
    user_id: &str,
    device: &SigningPublicKey,
) -> Result<DeviceStatus, rusqlite::Error> {
    let active: Option<i64> = conn
        .query_row(
            "SELECT active FROM devices WHERE user_id = ?1 AND device_id = ?2",
            params![user_id, device.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match active {
        Some(1) => DeviceStatus::Active,
        Some(_) => DeviceStatus::Revoked,
        None if user_exists(conn, user_id)? => DeviceStatus::Unknown,
        None => DeviceStatus::NoSuchUser,
    })
}

/// Whether the invite of hash `invite_hash` has enrolled a user already.
pub fn invite_used(conn: &Connection, invite_hash: &[u8; 32]) -> Result<bool, rusqlite::Error> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM used_invites WHERE invite_hash = ?1",
            params![invite_hash.as_slice()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn user_exists(conn: &Connection, user_id: &str) -> Result<bool, rusqlite::Error> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM users WHERE user_id = ?1",
            params![user_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Refuses a request from a device that is no longer active (checked inside
/// the request's own transaction, so a revocation committed before is seen).
pub(crate) fn require_active(
    conn: &Connection,
    user_id: &str,
    device: &SigningPublicKey,
) -> Result<(), RequestError> {
    match device_status(conn, user_id, device)? {
        DeviceStatus::Active => Ok(()),
        DeviceStatus::Revoked => Err(RequestError::new(
            ErrorCode::DeviceRevoked,
            "device revoked",
        )),
        DeviceStatus::Unknown | DeviceStatus::NoSuchUser => Err(RequestError::new(
            ErrorCode::Unauthenticated,
            "not an active device",
        )),
    }
}

/// A user's log, in order.
pub fn load_log(conn: &Connection, user_id: &str) -> Result<Vec<SignedStatement>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT statement, signature FROM log_entries WHERE user_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![user_id], |r| {
        Ok(SignedStatement {
            statement: r.get(0)?,
            signature: r.get(1)?,
        })
    })?;
    rows.collect()
}

/// The logs of the users asked for that exist. Refuses with `TOO_LARGE`
/// once the logs gathered exceed `max_bytes` (the reply could not be sent).
pub fn get_logs(
    conn: &mut Connection,
    caller_user: &str,
    caller_device: &SigningPublicKey,
    user_ids: &[String],
    max_bytes: usize,
) -> Result<BTreeMap<String, UserLog>, RequestError> {
    let tx = conn.transaction()?;
    require_active(&tx, caller_user, caller_device)?;
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for id in user_ids {
        if out.contains_key(id) {
            continue;
        }
        let entries = load_log(&tx, id)?;
        total = entries.iter().fold(total, |t, e| {
            t.saturating_add(e.statement.len() + e.signature.len())
        });
        if total > max_bytes {
            return Err(RequestError::new(
                ErrorCode::TooLarge,
                "logs too large for one reply: ask for fewer users",
            ));
        }
        if !entries.is_empty() {
            out.insert(id.clone(), UserLog { entries });
        }
    }
    Ok(out)
}

/// What an accepted append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The entry's position in its user's log.
    pub seq: u64,
    /// The user whose log grew.
    pub user_id: String,
    /// What changed in the directory; `None` for a creation or an
    /// idempotent retry of an entry already stored.
    pub change: Option<Change>,
}

fn insert_entry(
    tx: &Connection,
    user_id: &str,
    seq: u64,
    entry: &SignedStatement,
    now: u64,
) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO log_entries (user_id, seq, statement, signature, entry_hash, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            user_id,
            seq as i64,
            entry.statement,
            entry.signature,
            entry_hash(entry).as_slice(),
            now as i64
        ],
    )?;
    Ok(())
}

/// What a verified entry will write.
// One short-lived plan per append: the 1.2 KB X-Wing key in `Change` is not
// worth a box.
#[allow(clippy::large_enum_variant)]
enum Plan {
    Create(Box<ward_core::chain::VerifiedUser>),
    Next { seq: u64, change: Change },
}

/// Times an append re-verifies because its user's log grew meanwhile.
const APPEND_ATTEMPTS: usize = 3;

/// [`append_with`] without a cache (a tool writing to the database): the
/// stored log is verified in full.
pub fn append(
    conn: &mut Connection,
    root: &SigningPublicKey,
    now: u64,
    entry: &SignedStatement,
) -> Result<Appended, RequestError> {
    append_with(conn, &VerifiedCache::new(0), root, now, entry)
}

/// The stored length and head of `user_id`'s log (0 and zeros: none).
pub(crate) fn stored_head(
    conn: &Connection,
    user_id: &str,
) -> Result<(u64, [u8; 32]), rusqlite::Error> {
    let len: Option<i64> = conn
        .query_row(
            "SELECT log_len FROM users WHERE user_id = ?1",
            params![user_id],
            |r| r.get(0),
        )
        .optional()?;
    let len = len.unwrap_or(0).max(0) as u64;
    if len == 0 {
        return Ok((0, [0; 32]));
    }
    let hash: Vec<u8> = conn.query_row(
        "SELECT entry_hash FROM log_entries WHERE user_id = ?1 AND seq = ?2",
        params![user_id, (len - 1) as i64],
        |r| r.get(0),
    )?;
    Ok((len, hash.try_into().unwrap_or([0; 32])))
}

/// The stored entry at `seq` of `user_id`'s log, if any.
fn stored_entry(
    conn: &Connection,
    user_id: &str,
    seq: u64,
) -> Result<Option<SignedStatement>, rusqlite::Error> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(None);
    };
    conn.query_row(
        "SELECT statement, signature FROM log_entries WHERE user_id = ?1 AND seq = ?2",
        params![user_id, seq],
        |r| {
            Ok(SignedStatement {
                statement: r.get(0)?,
                signature: r.get(1)?,
            })
        },
    )
    .optional()
}

/// The verified state of a stored log of `len` entries ending in `head`:
/// cached, else the stored log verified once (and cached). The entry's
/// claimed author must be an active device of the user, or the root, before
/// a whole log is verified for it.
fn verified_state(
    conn: &Connection,
    cache: &VerifiedCache,
    root: &SigningPublicKey,
    user_id: &str,
    (len, head): (u64, [u8; 32]),
    entry: &SignedStatement,
) -> Result<ward_core::chain::VerifiedUser, RequestError> {
    if let Some(user) = cache.get(user_id, len, &head) {
        return Ok(user);
    }
    let author = directory::claimed_author(entry)
        .ok_or_else(|| RequestError::new(ErrorCode::InvalidStatement, "author"))?;
    if author != *root && device_status(conn, user_id, &author)? != DeviceStatus::Active {
        return Err(RequestError::new(
            ErrorCode::InvalidStatement,
            "the author is not an active device of this user",
        ));
    }
    let log = load_log(conn, user_id)?;
    // Everything stored was verified on the way in; verifying once per cache
    // miss catches a tampered database.
    cache.count_verified(log.len());
    let verified = verify_log(root, user_id, &log).map_err(|e| {
        StorageError::Corrupt(format!("stored log of {user_id:?} does not verify: {e}"))
    })?;
    if verified.len() != len || verified.head() != &head {
        // Read outside a transaction: the log grew meanwhile.
        return Err(RequestError::new(
            ErrorCode::Conflict,
            "the log changed concurrently; fetch it and retry",
        ));
    }
    Ok(verified)
}

/// Verifies `entry` against the stored directory and, if it is accepted,
/// stores it and updates the derived tables, in one transaction.
///
/// Only the new entry is verified (its sequence, link, author and
/// signature), against the user's verified state from `cache` (the stored
/// log is verified in full only on a cache miss). The write transaction then
/// confirms the log has not grown since (a log only grows, so an equal
/// length means an equal log) or verifies again.
pub fn append_with(
    conn: &mut Connection,
    cache: &VerifiedCache,
    root: &SigningPublicKey,
    now: u64,
    entry: &SignedStatement,
) -> Result<Appended, RequestError> {
    let routing = directory::route(entry)?;
    for _ in 0..APPEND_ATTEMPTS {
        let stored = stored_head(conn, &routing.user_id)?;
        // A retry of an entry already stored is acknowledged again.
        if routing.seq < stored.0
            && let Some(existing) = stored_entry(conn, &routing.user_id, routing.seq)?
        {
            if existing == *entry {
                return Ok(Appended {
                    seq: routing.seq,
                    user_id: routing.user_id,
                    change: None,
                });
            }
            // A different creation for an existing user falls through: it
            // is refused below as a used invite or an existing user.
            if routing.kind != Kind::UserCreation {
                return Err(RequestError::new(
                    ErrorCode::Conflict,
                    "log position already taken",
                ));
            }
        }
        if stored.0 as usize >= MAX_LOG_ENTRIES {
            return Err(RequestError::new(
                ErrorCode::InvalidStatement,
                "log is full",
            ));
        }
        let (plan, next) = if routing.kind == Kind::UserCreation {
            cache.count_verified(1);
            let user = directory::accept_creation(root, now, entry)?;
            (Plan::Create(Box::new(user.clone())), user)
        } else {
            if stored.0 == 0 {
                return Err(RequestError::new(ErrorCode::UnknownUser, "no such user"));
            }
            let verified = match verified_state(conn, cache, root, &routing.user_id, stored, entry)
            {
                Err(e) if e.code == ErrorCode::Conflict => continue,
                other => other?,
            };
            cache.count_verified(1);
            let (next, change) = directory::accept_next(root, &verified, entry)?;
            let seq = verified.len();
            (Plan::Next { seq, change }, next)
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if stored_head(&tx, &routing.user_id)? != stored {
            // The log grew meanwhile: verify again against the new one.
            continue;
        }
        let appended = write_plan(&tx, &routing.user_id, now, entry, plan)?;
        tx.commit()?;
        cache.put(next);
        return Ok(appended);
    }
    Err(RequestError::new(
        ErrorCode::Conflict,
        "the log changed concurrently; fetch it and retry",
    ))
}

/// Makes `key` the user's current key (clearing rotation pending) and
/// records it among the user's keys.
fn set_user_key(
    tx: &Connection,
    user_id: &str,
    key: &ward_core::keys::EncryptionPublicKey,
    seq: u64,
) -> Result<(), rusqlite::Error> {
    // Keys are stored as their ids: wrapped keys and grants name them so (§5).
    let key = key.id();
    let key = key.as_bytes().as_slice();
    tx.execute(
        "UPDATE users SET current_key = ?2, rotation_pending = 0 WHERE user_id = ?1",
        params![user_id, key],
    )?;
    tx.execute(
        "INSERT INTO user_keys (user_id, user_key, since_seq) VALUES (?1, ?2, ?3)",
        params![user_id, key, seq as i64],
    )?;
    Ok(())
}

fn write_plan(
    tx: &Connection,
    user_id: &str,
    now: u64,
    entry: &SignedStatement,
    plan: Plan,
) -> Result<Appended, RequestError> {
    let user_id = user_id.to_owned();
    let appended = match plan {
        Plan::Create(user) => {
            let hash = user.invite().hash;
            let used: Option<String> = tx
                .query_row(
                    "SELECT user_id FROM used_invites WHERE invite_hash = ?1",
                    params![hash.as_slice()],
                    |r| r.get(0),
                )
                .optional()?;
            if used.is_some() {
                return Err(RequestError::new(
                    ErrorCode::InviteUsed,
                    "invite already used",
                ));
            }
            if user_exists(tx, &user_id)? {
                return Err(RequestError::new(
                    ErrorCode::Conflict,
                    "user already exists",
                ));
            }
            let key = user.encryption_key().id();
            let key = key.as_bytes().as_slice();
            tx.execute(
                "INSERT INTO users (user_id, current_key, log_len, created_at) VALUES (?1, ?2, 1, ?3)",
                params![user_id, key, now as i64],
            )?;
            insert_entry(tx, &user_id, 0, entry, now)?;
            crate::search::index_user(tx, &user_id, entry)?;
            tx.execute(
                "INSERT INTO used_invites (invite_hash, user_id, used_at) VALUES (?1, ?2, ?3)",
                params![hash.as_slice(), user_id, now as i64],
            )?;
            tx.execute(
                "INSERT INTO user_keys (user_id, user_key, since_seq) VALUES (?1, ?2, 0)",
                params![user_id, key],
            )?;
            for d in user.devices() {
                tx.execute(
                    "INSERT INTO devices (user_id, device_id, encryption_key, active, added_seq)
                     VALUES (?1, ?2, ?3, 1, 0)",
                    params![
                        user_id,
                        d.signing_key.as_bytes().as_slice(),
                        d.encryption_key.id().as_bytes().as_slice()
                    ],
                )?;
            }
            Appended {
                seq: 0,
                user_id,
                change: None,
            }
        }
        Plan::Next { seq, change } => {
            insert_entry(tx, &user_id, seq, entry, now)?;
            tx.execute(
                "UPDATE users SET log_len = ?2 WHERE user_id = ?1",
                params![user_id, (seq + 1) as i64],
            )?;
            match &change {
                Change::DeviceAdded(d) => {
                    tx.execute(
                        "INSERT INTO devices (user_id, device_id, encryption_key, active, added_seq)
                         VALUES (?1, ?2, ?3, 1, ?4)",
                        params![
                            user_id,
                            d.signing_key.as_bytes().as_slice(),
                            d.encryption_key.id().as_bytes().as_slice(),
                            seq as i64
                        ],
                    )?;
                }
                Change::DeviceRevoked {
                    device,
                    new_user_key,
                } => {
                    tx.execute(
                        "UPDATE devices SET active = 0, revoked_seq = ?3
                         WHERE user_id = ?1 AND device_id = ?2",
                        params![user_id, device.as_bytes().as_slice(), seq as i64],
                    )?;
                    // Grants addressed to it are never served again.
                    tx.execute(
                        "DELETE FROM device_grants WHERE user_id = ?1
                         AND device_key = (SELECT encryption_key FROM devices
                                           WHERE user_id = ?1 AND device_id = ?2)
                         AND NOT EXISTS (SELECT 1 FROM devices WHERE user_id = ?1
                                         AND encryption_key = device_grants.device_key
                                         AND active = 1)",
                        params![user_id, device.as_bytes().as_slice()],
                    )?;
                    match new_user_key {
                        Some(key) => set_user_key(tx, &user_id, key, seq)?,
                        // A root revocation: the key stays, rotation pending.
                        None => {
                            tx.execute(
                                "UPDATE users SET rotation_pending = 1 WHERE user_id = ?1",
                                params![user_id],
                            )?;
                        }
                    }
                }
                Change::KeyRotated { new_user_key } => {
                    set_user_key(tx, &user_id, new_user_key, seq)?;
                }
            }
            Appended {
                seq,
                user_id,
                change: Some(change),
            }
        }
    };
    Ok(appended)
}

/// Stores wrapped keys from an authenticated sender, all or none. A key
/// already stored identically is accepted again; a different key for the
/// same (resource, recipient) is a `CONFLICT` and never overwrites. Keys
/// must be wrapped to the recipient's *current* key (a stale key could be
/// one a revoked device still holds), and a resource's keys all come from
/// one sender device (the first that stored keys under it). Returns how
/// many entries were accepted.
///
/// Expired keys (older than the retention) are deleted first: the sender's
/// own, and a bounded number of anyone's. The keys the sender's user then
/// has stored, plus the new ones, must fit `quotas.wrapped_keys_per_user`
/// (else `QUOTA_EXCEEDED`, nothing stored).
pub fn put_wrapped_keys(
    conn: &mut Connection,
    sender_user: &str,
    sender_device: &SigningPublicKey,
    now: u64,
    quotas: &Quotas,
    keys: &[WrappedKeyFor],
) -> Result<u32, RequestError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    require_active(&tx, sender_user, sender_device)?;
    let cutoff = cutoff(now, quotas);
    tx.prepare_cached("DELETE FROM wrapped_keys WHERE sender_user = ?1 AND created_at < ?2")?
        .execute(params![sender_user, cutoff])?;
    prune_expired(&tx, cutoff)?;
    let stored: i64 = tx
        .prepare_cached("SELECT count(*) FROM wrapped_keys WHERE sender_user = ?1")?
        .query_row(params![sender_user], |r| r.get(0))?;
    let mut inserted = 0u64;
    let mut count = 0u32;
    for (i, k) in keys.iter().enumerate() {
        let w = k
            .key
            .as_ref()
            .ok_or_else(|| RequestError::malformed(format!("entry {i}: missing key")))?;
        let existing: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = tx
            .query_row(
                "SELECT recipient_key, enc, ciphertext FROM wrapped_keys
                 WHERE resource_id = ?1 AND recipient_user = ?2",
                params![w.resource_id, k.recipient_user_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((rk, enc, ct)) = existing {
            if rk == w.recipient_key && enc == w.enc && ct == w.ciphertext {
                count += 1;
                continue;
            }
            return Err(RequestError::new(
                ErrorCode::Conflict,
                format!("entry {i}: another key is stored for this resource and recipient"),
            ));
        }
        let current: Option<Vec<u8>> = tx
            .query_row(
                "SELECT current_key FROM users WHERE user_id = ?1",
                params![k.recipient_user_id],
                |r| r.get(0),
            )
            .optional()?;
        match current {
            None => {
                return Err(RequestError::new(
                    ErrorCode::UnknownUser,
                    format!("entry {i}: unknown recipient user"),
                ));
            }
            Some(c) if c != w.recipient_key => {
                return Err(RequestError::new(
                    ErrorCode::Conflict,
                    format!("entry {i}: not the recipient's current key; refresh its log"),
                ));
            }
            Some(_) => {}
        }
        let other_sender = tx
            .query_row(
                "SELECT 1 FROM wrapped_keys
                 WHERE resource_id = ?1 AND (sender_user != ?2 OR sender_device != ?3) LIMIT 1",
                params![
                    w.resource_id,
                    sender_user,
                    sender_device.as_bytes().as_slice()
                ],
                |_| Ok(()),
            )
            .optional()?;
        if other_sender.is_some() {
            return Err(RequestError::forbidden(format!(
                "entry {i}: resource id belongs to another sender device"
            )));
        }
        tx.execute(
            "INSERT INTO wrapped_keys (resource_id, recipient_user, recipient_key, enc, ciphertext,
                                       sender_user, sender_device, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                w.resource_id,
                k.recipient_user_id,
                w.recipient_key,
                w.enc,
                w.ciphertext,
                sender_user,
                sender_device.as_bytes().as_slice(),
                now as i64
            ],
        )?;
        inserted += 1;
        count += 1;
    }
    let total = (stored.max(0) as u64).saturating_add(inserted);
    if total > quotas.wrapped_keys_per_user {
        return Err(RequestError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "wrapped-key quota: {stored} stored, at most {} per user within the retention",
                quotas.wrapped_keys_per_user
            ),
        ));
    }
    tx.commit()?;
    Ok(count)
}

/// Unix seconds before which wrapped keys (and grants of past user keys)
/// have expired.
pub(crate) fn cutoff(now: u64, quotas: &Quotas) -> i64 {
    now.saturating_sub(quotas.retention.as_secs()) as i64
}

/// Expired rows deleted per write, from anyone (the oldest first): writes
/// are what fills the disk, so pruning keeps pace with them.
const PRUNE_PER_WRITE: i64 = 256;

/// Deletes up to [`PRUNE_PER_WRITE`] expired wrapped keys and as many
/// expired grants: those older than `cutoff` of a user key that is no
/// longer current (nothing new can be wrapped to it, and every key wrapped
/// to it is older still, so already deleted).
pub fn prune_expired(tx: &Connection, cutoff: i64) -> Result<usize, rusqlite::Error> {
    let keys = tx
        .prepare_cached(
            "DELETE FROM wrapped_keys WHERE rowid IN
             (SELECT rowid FROM wrapped_keys WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
        )?
        .execute(params![cutoff, PRUNE_PER_WRITE])?;
    let grants = tx
        .prepare_cached(
            "DELETE FROM device_grants WHERE rowid IN
             (SELECT g.rowid FROM device_grants g JOIN users u ON u.user_id = g.user_id
              WHERE g.created_at < ?1 AND g.user_key != u.current_key
              ORDER BY g.created_at LIMIT ?2)",
        )?
        .execute(params![cutoff, PRUNE_PER_WRITE])?;
    Ok(keys + grants)
}

/// Returns the keys of `resource_ids` wrapped for the caller's user, and
/// the access record of each one returned. A read transaction (no write
/// lock, no fsync): the caller commits the records through the
/// group-committing [`crate::access::AccessLog`] before it serves the keys.
pub fn get_wrapped_keys(
    conn: &mut Connection,
    user_id: &str,
    device: &SigningPublicKey,
    now: u64,
    resource_ids: &[Vec<u8>],
) -> Result<(WrappedKeys, Vec<AccessRow>), RequestError> {
    let tx = conn.transaction()?;
    require_active(&tx, user_id, device)?;
    let mut out = WrappedKeys::default();
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for rid in resource_ids {
        if !seen.insert(rid.clone()) {
            continue;
        }
        let found: Option<WrappedKey> = tx
            .prepare_cached(
                "SELECT recipient_key, enc, ciphertext FROM wrapped_keys
                 WHERE resource_id = ?1 AND recipient_user = ?2",
            )?
            .query_row(params![rid, user_id], |r| {
                Ok(WrappedKey {
                    resource_id: rid.clone(),
                    recipient_key: r.get(0)?,
                    enc: r.get(1)?,
                    ciphertext: r.get(2)?,
                })
            })
            .optional()?;
        match found {
            Some(k) => {
                rows.push(access_row(
                    now,
                    user_id,
                    device,
                    AccessKind::WrappedKey,
                    rid,
                ));
                out.keys.push(k);
            }
            None => out.missing.push(rid.clone()),
        }
    }
    tx.commit()?;
    Ok((out, rows))
}

pub(crate) fn access_row(
    now: u64,
    user_id: &str,
    device: &SigningPublicKey,
    kind: AccessKind,
    object: &[u8],
) -> AccessRow {
    AccessRow {
        at: now,
        user_id: user_id.to_owned(),
        device_id: *device.as_bytes(),
        kind,
        object: object.to_vec(),
    }
}

/// Stores grants of the caller's user key to its own active devices, all or
/// none. The user key must be one of the user's keys (current or past), the
/// device key the encryption key of one of its active devices.
///
/// Expired grants are pruned first; the user's grants then stored must fit
/// `quotas.grants_per_user` (else `QUOTA_EXCEEDED`, nothing stored).
pub fn put_grants(
    conn: &mut Connection,
    user_id: &str,
    device: &SigningPublicKey,
    now: u64,
    quotas: &Quotas,
    grants: &[DeviceGrant],
) -> Result<u32, RequestError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    require_active(&tx, user_id, device)?;
    prune_expired(&tx, cutoff(now, quotas))?;
    let mut count = 0u32;
    for (i, g) in grants.iter().enumerate() {
        let known_key = tx
            .query_row(
                "SELECT 1 FROM user_keys WHERE user_id = ?1 AND user_key = ?2",
                params![user_id, g.user_key],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !known_key {
            return Err(RequestError::forbidden(format!(
                "grant {i}: not a key of this user"
            )));
        }
        let device_ok = tx
            .query_row(
                "SELECT 1 FROM devices WHERE user_id = ?1 AND encryption_key = ?2 AND active = 1",
                params![user_id, g.device_key],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !device_ok {
            return Err(RequestError::forbidden(format!(
                "grant {i}: not an active device of this user"
            )));
        }
        let existing: Option<(Vec<u8>, Vec<u8>)> = tx
            .query_row(
                "SELECT enc, ciphertext FROM device_grants
                 WHERE user_id = ?1 AND user_key = ?2 AND device_key = ?3",
                params![user_id, g.user_key, g.device_key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match existing {
            Some((enc, ct)) if enc == g.enc && ct == g.ciphertext => {}
            Some(_) => {
                return Err(RequestError::new(
                    ErrorCode::Conflict,
                    format!("grant {i}: another grant is stored for this key and device"),
                ));
            }
            None => {
                tx.execute(
                    "INSERT INTO device_grants (user_id, user_key, device_key, enc, ciphertext,
                                                sender_device, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        user_id,
                        g.user_key,
                        g.device_key,
                        g.enc,
                        g.ciphertext,
                        device.as_bytes().as_slice(),
                        now as i64
                    ],
                )?;
            }
        }
        count += 1;
    }
    let stored: i64 = tx
        .prepare_cached("SELECT count(*) FROM device_grants WHERE user_id = ?1")?
        .query_row(params![user_id], |r| r.get(0))?;
    if stored.max(0) as u64 > quotas.grants_per_user {
        return Err(RequestError::new(
            ErrorCode::QuotaExceeded,
            format!("grant quota: at most {} per user", quotas.grants_per_user),
        ));
    }
    tx.commit()?;
    Ok(count)
}

/// The grant of `user_key` (empty: the user's current key) addressed to the
/// caller device's own encryption key, with its access record (committed by
/// the caller before it serves the grant; see [`get_wrapped_keys`]).
pub fn get_grant(
    conn: &mut Connection,
    user_id: &str,
    device: &SigningPublicKey,
    now: u64,
    user_key: &[u8],
) -> Result<(DeviceGrant, AccessRow), RequestError> {
    let tx = conn.transaction()?;
    require_active(&tx, user_id, device)?;
    let device_key: Vec<u8> = tx.query_row(
        "SELECT encryption_key FROM devices WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device.as_bytes().as_slice()],
        |r| r.get(0),
    )?;
    let user_key: Vec<u8> = if user_key.is_empty() {
        tx.query_row(
            "SELECT current_key FROM users WHERE user_id = ?1",
            params![user_id],
            |r| r.get(0),
        )?
    } else {
        user_key.to_vec()
    };
    let grant = tx
        .query_row(
            "SELECT enc, ciphertext FROM device_grants
             WHERE user_id = ?1 AND user_key = ?2 AND device_key = ?3",
            params![user_id, user_key, device_key],
            |r| {
                Ok(DeviceGrant {
                    user_key: user_key.clone(),
                    device_key: device_key.clone(),
                    enc: r.get(0)?,
                    ciphertext: r.get(1)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| RequestError::new(ErrorCode::NotFound, "no grant for this device"))?;
    tx.commit()?;
    let row = access_row(now, user_id, device, AccessKind::DeviceGrant, &user_key);
    Ok((grant, row))
}

/// What was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// A wrapped resource key; the record's `resource_id` is the resource id.
    WrappedKey,
    /// A device grant; the record's `resource_id` is the user public key
    /// whose private half the grant holds.
    DeviceGrant,
    /// A room epoch-key wrap; the record's `resource_id` is
    /// `room_id || u64_be(epoch)` (40 bytes).
    RoomWrap,
    /// A room message's resource key (wrapped to its epoch key); the
    /// record's `resource_id` is the resource id.
    RoomKey,
}

impl AccessKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AccessKind::WrappedKey => "wrapped_key",
            AccessKind::DeviceGrant => "device_grant",
            AccessKind::RoomWrap => "room_wrap",
            AccessKind::RoomKey => "room_key",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "wrapped_key" => Some(AccessKind::WrappedKey),
            "device_grant" => Some(AccessKind::DeviceGrant),
            "room_wrap" => Some(AccessKind::RoomWrap),
            "room_key" => Some(AccessKind::RoomKey),
            _ => None,
        }
    }
}

/// One read of a wrapped key or a grant, as the access log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// Position in the log (strictly increasing).
    pub id: i64,
    /// Unix seconds, server clock.
    pub at: u64,
    /// The reader's user.
    pub user_id: String,
    /// The reading device (Ed25519 public key).
    pub device_id: Vec<u8>,
    /// What was read.
    pub kind: AccessKind,
    /// The resource whose key was read; for a grant, the user public key.
    pub resource_id: Vec<u8>,
}

/// Every access-log record at or after `since` (unix seconds), oldest first.
pub fn access_log_since(conn: &Connection, since: u64) -> Result<Vec<AccessRecord>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT id, at, user_id, device_id, kind, resource_id FROM access_log
         WHERE at >= ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![since as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Vec<u8>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, at, user_id, device_id, kind, resource_id) = row?;
        let kind = AccessKind::parse(&kind)
            .ok_or_else(|| StorageError::Corrupt(format!("access log kind {kind:?}")))?;
        out.push(AccessRecord {
            id,
            at: at.max(0) as u64,
            user_id,
            device_id,
            kind,
            resource_id,
        });
    }
    Ok(out)
}

/// Exports the access log of the database at `path` (read-only; safe while
/// the keyserver runs): every record at or after `since`, oldest first.
pub fn export_access_log(path: &Path, since: u64) -> Result<Vec<AccessRecord>, StorageError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        return Err(StorageError::Corrupt(format!(
            "schema version {version}, expected {SCHEMA_VERSION}"
        )));
    }
    access_log_since(&conn, since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> PathBuf {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        std::env::temp_dir().join(format!("ward-ks-{name}-{}.db", hex::encode(bytes)))
    }

    #[test]
    fn the_rooms_migration_keeps_the_access_log_and_its_guards() {
        let path = temp_db("migrate-rooms");
        let mut conn = open_connection(&path).unwrap();
        // A database of the schema before rooms, with a read logged.
        for (i, sql) in MIGRATIONS.iter().enumerate().take(3) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        conn.execute(
            "INSERT INTO access_log (at, user_id, device_id, kind, resource_id)
             VALUES (7, 'u', x'00', 'device_grant', x'01')",
            [],
        )
        .unwrap();
        assert!(
            conn.execute(
                "INSERT INTO access_log (at, user_id, device_id, kind, resource_id)
                 VALUES (8, 'u', x'00', 'room_wrap', x'01')",
                [],
            )
            .is_err()
        );
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO access_log (at, user_id, device_id, kind, resource_id)
             VALUES (8, 'u', x'00', 'room_wrap', x'02'), (9, 'u', x'00', 'room_key', x'03')",
            [],
        )
        .unwrap();
        let log = export_access_log(&path, 0).unwrap();
        let kinds: Vec<_> = log.iter().map(|r| (r.id, r.kind)).collect();
        assert_eq!(
            kinds,
            [
                (1, AccessKind::DeviceGrant),
                (2, AccessKind::RoomWrap),
                (3, AccessKind::RoomKey)
            ]
        );
        assert!(conn.execute("DELETE FROM access_log", []).is_err());
        assert!(conn.execute("UPDATE access_log SET at = 2", []).is_err());
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn migrations_are_idempotent_and_the_access_log_is_append_only() {
        let path = temp_db("migrate");
        let mut conn = open_connection(&path).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        conn.execute(
            "INSERT INTO access_log (at, user_id, device_id, kind, resource_id)
             VALUES (1, 'u', x'00', 'wrapped_key', x'01')",
            [],
        )
        .unwrap();
        assert!(conn.execute("DELETE FROM access_log", []).is_err());
        assert!(conn.execute("UPDATE access_log SET at = 2", []).is_err());
        let log = export_access_log(&path, 0).unwrap();
        assert_eq!(log.len(), 1);
        assert!(export_access_log(&path, 2).unwrap().is_empty());

        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(StorageError::TooNew { .. })
        ));
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn logs_are_deduplicated_and_bounded() {
        let mut rng = rand::rng();
        let org = ward_core::testkit::Org::new(&mut rng);
        let a = org.enroll(&mut rng, "a");
        let path = temp_db("logs");
        let mut conn = open_connection(&path).unwrap();
        migrate(&mut conn).unwrap();
        let root = org.root_public();
        let now = ward_core::testkit::KIT_TIME;
        assert_eq!(append(&mut conn, &root, now, &a.log[0]).unwrap().seq, 0);
        let dev = a.device.public_key();
        let ids = vec!["a".to_string(); 3];
        let logs = get_logs(&mut conn, "a", &dev, &ids, 1 << 20).unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs["a"].entries, a.log);
        let err = get_logs(&mut conn, "a", &dev, &ids, 100).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        // A stranger's device gets nothing.
        let other = ward_core::keys::DeviceSigningKey::generate(&mut rng).public_key();
        let err = get_logs(&mut conn, "a", &other, &ids, 1 << 20).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated);
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    /// Issue 9, item 2: an append verifies the new entry only; the stored
    /// log is verified once per cache miss, and not at all for an entry
    /// whose author is no active device of the user.
    #[test]
    fn appends_verify_only_the_new_entry() {
        let mut rng = rand::rng();
        let org = ward_core::testkit::Org::new(&mut rng);
        let mut a = org.enroll(&mut rng, "a");
        let path = temp_db("cache");
        let mut conn = open_connection(&path).unwrap();
        migrate(&mut conn).unwrap();
        let root = org.root_public();
        let now = ward_core::testkit::KIT_TIME;
        let cache = VerifiedCache::new(1 << 20);
        append_with(&mut conn, &cache, &root, now, &a.log[0]).unwrap();
        let rotate = |a: &mut ward_core::testkit::Clinician| {
            let key = ward_core::keys::UserEncryptionKey::generate(&mut rand::rng()).public_key();
            let e = a.chain.rotate_user_key(&a.device, &key, now);
            a.chain.apply(&root, &e).unwrap();
            e
        };
        for _ in 0..20 {
            let e = rotate(&mut a);
            append_with(&mut conn, &cache, &root, now, &e).unwrap();
        }
        assert_eq!(cache.entries_verified(), 21, "each entry once");
        // A fresh cache (a restart): the stored log once, then the entry.
        let cache = VerifiedCache::new(1 << 20);
        let e = rotate(&mut a);
        append_with(&mut conn, &cache, &root, now, &e).unwrap();
        assert_eq!(cache.entries_verified(), 22);
        let e = rotate(&mut a);
        append_with(&mut conn, &cache, &root, now, &e).unwrap();
        assert_eq!(cache.entries_verified(), 23);
        // An entry by a stranger, on a cache miss: refused before the
        // stored log is verified.
        let cache = VerifiedCache::new(1 << 20);
        let stranger = ward_core::keys::DeviceSigningKey::generate(&mut rng);
        let key = ward_core::keys::UserEncryptionKey::generate(&mut rng).public_key();
        let bad = a.chain.rotate_user_key(&stranger, &key, now);
        let err = append_with(&mut conn, &cache, &root, now, &bad).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidStatement);
        assert_eq!(cache.entries_verified(), 0);
        // An append written by another process is seen: the cached state no
        // longer matches the stored head, and is verified again.
        let cache = VerifiedCache::new(1 << 20);
        let e = rotate(&mut a);
        append_with(&mut conn, &cache, &root, now, &e).unwrap();
        let e = rotate(&mut a);
        append(&mut conn, &root, now, &e).unwrap();
        let e = rotate(&mut a);
        append_with(&mut conn, &cache, &root, now, &e).unwrap();
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    /// Issue 9, item 7: the database and its WAL and shared-memory files
    /// are created readable by the keyserver's user only (0644 on main).
    #[cfg(unix)]
    #[test]
    fn the_database_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_db("perm");
        let db = Db::open(&path).unwrap();
        for ext in ["", "-wal", "-shm"] {
            let f = format!("{}{ext}", path.display());
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f} is {mode:o}");
        }
        drop(db);
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
