//! Online backups with SQLite's backup API: a consistent copy of a database
//! while its server keeps writing (WAL mode: the copy reads one snapshot and
//! never blocks the writer), written beside the target and renamed into
//! place only once complete and checked.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

/// Why a backup failed (the target is then left untouched).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// SQLite refused (no such database, disk full...).
    #[error("backup of {0}: {1}")]
    Sqlite(PathBuf, rusqlite::Error),
    /// The copy did not pass `PRAGMA quick_check`.
    #[error("the backup of {0} failed its integrity check: {1}")]
    Check(PathBuf, String),
    /// Writing or renaming the file failed.
    #[error("backup file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The target exists (backups never overwrite one another).
    #[error("{0} exists: choose a new file name")]
    Exists(PathBuf),
}

/// What was copied.
#[derive(Debug, Clone, Copy)]
pub struct BackupStats {
    /// Database pages copied.
    pub pages: i32,
    /// Bytes of the backup file.
    pub bytes: u64,
}

/// Copies the database at `source` to the new file `target`, consistent as
/// of one instant, while other connections keep reading and writing it.
pub fn online(source: &Path, target: &Path) -> Result<BackupStats, BackupError> {
    if target.exists() {
        return Err(BackupError::Exists(target.to_owned()));
    }
    let sq = |e| BackupError::Sqlite(source.to_owned(), e);
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq)?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sq)?;
    let partial = target.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut dst = Connection::open(&partial).map_err(sq)?;
    let pages = {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sq)?;
        // All pages in one step: one read transaction, one snapshot. Steps
        // of a few pages would restart whenever the server commits.
        backup.step(-1).map_err(sq)?;
        backup.progress().pagecount
    };
    let check: String = dst
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sq)?;
    if check != "ok" {
        return Err(BackupError::Check(source.to_owned(), check));
    }
    // A self-contained file: fold any WAL of the copy into it.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sq)?;
    drop(dst);
    let io = |e| BackupError::Io(target.to_owned(), e);
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&partial, target).map_err(io)?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    let bytes = std::fs::metadata(target).map_err(io)?.len();
    Ok(BackupStats { pages, bytes })
}

/// Puts the backup `backup` in place as the database `target`, which must
/// not exist, nor its `-wal` / `-shm` files (a WAL left beside a restored
/// database would be replayed into it): move the old files away first. The
/// copy goes through the backup API too, so a damaged backup is refused
/// before anything is in place. The server must be stopped.
pub fn restore(backup: &Path, target: &Path) -> Result<BackupStats, BackupError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = target.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            return Err(BackupError::Exists(p));
        }
    }
    online(backup, target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_backup_taken_while_another_connection_writes_is_a_consistent_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let w = Connection::open(&db).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.execute("CREATE TABLE t (n INTEGER)", []).unwrap();
        for n in 0..1000 {
            w.execute("INSERT INTO t VALUES (?1)", [n]).unwrap();
        }
        let target = dir.path().join("b.db");
        let stats = online(&db, &target).unwrap();
        assert!(stats.pages > 0 && stats.bytes > 0);
        w.execute("INSERT INTO t VALUES (1000)", []).unwrap();
        let b = Connection::open(&target).unwrap();
        let n: i64 = b
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1000, "the copy is the snapshot, not later writes");
        assert!(matches!(online(&db, &target), Err(BackupError::Exists(_))));
        assert!(online(&dir.path().join("missing.db"), &dir.path().join("x.db")).is_err());
    }
}
