//! The SQLCipher connection: keying, the checks that it really encrypts, and
//! the versioned schema migrations (`PRAGMA user_version`).

use std::path::Path;

use zeroize::Zeroizing;

use super::error::{Result, StoreError};
use super::kdf::DbKey;
use super::rusqlite::{Connection, ErrorCode, OpenFlags};

/// The schema version this SDK writes: the last migration's number.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only:
/// never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r"
    CREATE TABLE identity (
        id                       INTEGER PRIMARY KEY CHECK (id = 1),
        user_id                  TEXT NOT NULL,
        device_signing_secret    BLOB NOT NULL,
        device_encryption_secret BLOB NOT NULL
    ) STRICT;
    CREATE TABLE user_keys (
        public_key BLOB PRIMARY KEY,
        secret     BLOB NOT NULL
    ) STRICT;
    CREATE TABLE verified_logs (
        user_id   TEXT NOT NULL,
        idx       INTEGER NOT NULL,
        statement BLOB NOT NULL,
        PRIMARY KEY (user_id, idx)
    ) STRICT;
    CREATE TABLE conversations (
        id BLOB PRIMARY KEY
    ) STRICT;
    CREATE TABLE conversation_members (
        conversation_id BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        user_id         TEXT NOT NULL,
        PRIMARY KEY (conversation_id, user_id)
    ) STRICT;
    CREATE TABLE messages (
        local_seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        sender_user_id  TEXT NOT NULL,
        resource_id     BLOB NOT NULL,
        conversation_id BLOB NOT NULL,
        sender_device   BLOB NOT NULL,
        timestamp_ms    INTEGER NOT NULL,
        content_type    INTEGER NOT NULL,
        content         BLOB NOT NULL,
        UNIQUE (sender_user_id, resource_id)
    ) STRICT;
    CREATE INDEX messages_by_conversation ON messages (conversation_id, timestamp_ms, local_seq);
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id BLOB NOT NULL,
        payload         BLOB NOT NULL,
        state           INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE relay_cursor (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        last_acked_seq INTEGER NOT NULL
    ) STRICT;
    ",
    // 2: protocol v2's encryption keys are X-Wing (SECURITY.md §14.9). Key
    // rows of schema 1 hold X25519 secrets, and any 32 bytes would also pass
    // for an X-Wing seed: mark them `key_suite = 1` so they are never read as
    // one. Rows written from now on are `key_suite = 2`, and `user_keys` is
    // keyed by the key id (§5) instead of the public key.
    r"
    ALTER TABLE identity ADD COLUMN key_suite INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE user_keys ADD COLUMN key_suite INTEGER NOT NULL DEFAULT 1;
    ",
    // 3: attachment uploads in progress (SECURITY.md §16.9): the blob is
    // encrypted to a spool file first, and its descriptor (which holds the
    // file key: it stays in this encrypted database) waits here until the
    // relay stored every piece; then it moves to the outbox as a message.
    r"
    CREATE TABLE uploads (
        blob_id         BLOB PRIMARY KEY,
        conversation_id BLOB NOT NULL,
        descriptor      BLOB NOT NULL,
        spool_path      TEXT NOT NULL,
        blob_size       INTEGER NOT NULL,
        next_piece      INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL
    ) STRICT;
    ",
    // 4: rooms (SECURITY.md §17.12). The entries this device verified, so
    // that rollback and fork detection survive a restart; a fault, once a
    // rollback or fork was seen; the epoch seeds (secrets, only ever in this
    // encrypted store), by room and epoch.
    r"
    CREATE TABLE rooms (
        room_id         BLOB PRIMARY KEY,
        conversation_id BLOB NOT NULL UNIQUE,
        fault           TEXT
    ) STRICT;
    CREATE TABLE room_entries (
        room_id BLOB NOT NULL REFERENCES rooms (room_id) ON DELETE CASCADE,
        seq     INTEGER NOT NULL,
        entry   BLOB NOT NULL,
        PRIMARY KEY (room_id, seq)
    ) STRICT;
    CREATE TABLE room_epoch_keys (
        room_id BLOB NOT NULL,
        epoch   INTEGER NOT NULL,
        seed    BLOB NOT NULL,
        PRIMARY KEY (room_id, epoch)
    ) STRICT;
    ",
    // 5: room messages as their senders signed them, for forwarding a
    // room's history to members added under WHOLE_HISTORY (§17.13).
    r"
    CREATE TABLE room_envelopes (
        room_id        BLOB NOT NULL,
        sender_user_id TEXT NOT NULL,
        resource_id    BLOB NOT NULL,
        timestamp_ms   INTEGER NOT NULL,
        envelope       BLOB NOT NULL,
        PRIMARY KEY (sender_user_id, resource_id)
    ) STRICT;
    CREATE INDEX room_envelopes_by_room ON room_envelopes (room_id, timestamp_ms);
    ",
    // 6: the key-transparency monitor's state (`client/kt.rs`, SECURITY.md
    // §18.8): one row, so that a restart resumes from the last epoch this
    // device verified instead of trusting the next one on its signature.
    r"
    CREATE TABLE kt_state (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        certificate   BLOB NOT NULL,
        epoch         BLOB NOT NULL,
        scanned       INTEGER NOT NULL,
        frontier      BLOB NOT NULL,
        known_devices BLOB NOT NULL
    ) STRICT;
    ",
];

/// `PRAGMA <name> = "x'<hex>'"` in a buffer that is zeroized on drop.
fn key_pragma(name: &str, key: &DbKey) -> Zeroizing<String> {
    let lit = key.sqlcipher_literal();
    let mut sql = Zeroizing::new(String::with_capacity(name.len() + lit.len() + 16));
    sql.push_str("PRAGMA ");
    sql.push_str(name);
    sql.push_str(" = \"");
    sql.push_str(&lit);
    sql.push_str("\";");
    sql
}

/// Fails closed unless the linked SQLite is SQLCipher: on plain SQLite,
/// `PRAGMA key` is silently ignored and everything would be written in
/// clear.
fn require_sqlcipher(conn: &Connection) -> Result<()> {
    let version: Option<String> = conn
        .query_row("PRAGMA cipher_version", [], |r| r.get(0))
        .ok();
    match version {
        Some(v) if !v.is_empty() => Ok(()),
        _ => Err(StoreError::NoEncryption),
    }
}

/// Opens (or, with `create`, creates) the database at `path` under `key`.
/// `Ok(None)` when the key does not decrypt it: a wrong PIN or platform
/// secret (SQLCipher cannot tell that from a damaged first page).
pub(crate) fn open(path: &Path, key: &DbKey, create: bool) -> Result<Option<Connection>> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
        super::header::create_private(path)?;
    }
    let conn = match Connection::open_with_flags(path, flags) {
        Ok(c) => c,
        Err(e) if !create && e.sqlite_error_code() == Some(ErrorCode::CannotOpen) => {
            return Err(StoreError::Corrupt("the database file is missing"));
        }
        Err(e) => return Err(e.into()),
    };
    require_sqlcipher(&conn)?;
    // SQLCipher logs a failed page HMAC (a wrong PIN) to stderr; the typed
    // error says it already.
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    conn.execute_batch(&key_pragma("key", key))?;
    // Pin SQLCipher 4's defaults (AES-256-CBC, HMAC-SHA512, 4096-byte pages)
    // so a later SQLCipher major version still opens this file.
    conn.execute_batch("PRAGMA cipher_compatibility = 4;")?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => {}
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    configure(&conn)?;
    migrate(&conn)?;
    Ok(Some(conn))
}

/// Durability and hygiene settings, every time the database is opened.
fn configure(conn: &Connection) -> Result<()> {
    // WAL: readers never block the writer. Its frames are encrypted like
    // the database pages.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt("the database refused WAL mode"));
    }
    // FULL: a commit survives a power loss, so that acking the relay after
    // storing a message cannot lose it. secure_delete: freed pages are
    // zeroed (inside the encryption). temp_store: sorts and temporary tables
    // stay in memory, never in a temporary file.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(())
}

/// Applies the missing migrations, each in its own transaction with its
/// `user_version` bump.
fn migrate(conn: &Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let start = usize::try_from(found).map_err(|_| StoreError::Corrupt("negative schema"))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let version = i + 1;
        let batch = format!("BEGIN IMMEDIATE; {sql} PRAGMA user_version = {version}; COMMIT;");
        if let Err(e) = conn.execute_batch(&batch) {
            let _ = conn.execute_batch("ROLLBACK;");
            return Err(e.into());
        }
    }
    Ok(())
}

/// Re-encrypts every page under `new_key` (one transaction).
pub(crate) fn rekey(conn: &Connection, new_key: &DbKey) -> Result<()> {
    conn.execute_batch(&key_pragma("rekey", new_key))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::kdf::{KdfParams, Pin, derive_db_key};

    fn key(pin: &str) -> DbKey {
        let params = KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
        };
        derive_db_key(&Pin::new(pin.into()).unwrap(), &[3; 16], &params, None).unwrap()
    }

    #[test]
    fn migrates_to_the_latest_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let k = key("123456");
        let conn = open(&path, &k, true).unwrap().unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        drop(conn);
        assert!(open(&path, &k, false).unwrap().is_some());
        assert!(open(&path, &key("654321"), false).unwrap().is_none());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let k = key("123456");
        let conn = open(&path, &k, true).unwrap().unwrap();
        conn.execute_batch("PRAGMA user_version = 99;").unwrap();
        drop(conn);
        assert!(matches!(
            open(&path, &k, false),
            Err(StoreError::UnsupportedSchema { found: 99, .. })
        ));
    }

    #[test]
    fn rekey_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (old, new) = (key("123456"), key("abcdef"));
        let conn = open(&path, &old, true).unwrap().unwrap();
        conn.execute_batch("INSERT INTO conversations (id) VALUES (x'01');")
            .unwrap();
        rekey(&conn, &new).unwrap();
        drop(conn);
        assert!(open(&path, &old, false).unwrap().is_none());
        let conn = open(&path, &new, false).unwrap().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM conversations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn the_key_pragma_is_the_raw_key_form() {
        let k = key("123456");
        let sql = key_pragma("key", &k);
        assert!(sql.starts_with("PRAGMA key = \"x'"));
        assert!(sql.ends_with("'\";"));
        assert_eq!(sql.len(), "PRAGMA key = \"x''\";".len() + 64);
    }
}
