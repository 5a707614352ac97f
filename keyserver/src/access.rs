//! The access log, group-committed.
//!
//! Every wrapped key and grant served is recorded before it is served
//! ("logged before served", SECURITY.md §10.3). Recording each read in its
//! own `BEGIN IMMEDIATE` transaction cost one fsync per read and held the
//! write lock: any device could make every read a write. Reads now run in
//! read transactions; their access records go to one writer thread, which
//! commits whatever records are waiting in one transaction (one fsync) and
//! answers each request only after that commit. The reply is sent after the
//! answer, so nothing is served unlogged. Pattern: the relay's writer
//! (`server/src/writer.rs`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::error::StorageError;
use crate::storage::{AccessKind, open_connection};

/// One read to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    /// Unix seconds, server clock.
    pub at: u64,
    /// The reader's user.
    pub user_id: String,
    /// The reading device.
    pub device_id: [u8; 32],
    /// What was read.
    pub kind: AccessKind,
    /// The resource id, or for a grant the user public key.
    pub object: Vec<u8>,
}

struct Job {
    rows: Vec<AccessRow>,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Most requests committed together.
const MAX_BATCH: usize = 1024;
/// Requests waiting for the writer before callers wait in turn.
const QUEUE: usize = 4096;

/// Counters of the access-log writer.
#[derive(Debug, Default)]
pub struct AccessStats {
    commits: AtomicU64,
    requests: AtomicU64,
}

impl AccessStats {
    /// Transactions committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
    /// Requests whose records were committed.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// The handle requests record through.
pub struct AccessLog {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<AccessStats>,
}

impl AccessLog {
    /// Starts the writer on its own connection to the database at `path`.
    pub fn start(path: &Path) -> Result<Self, StorageError> {
        let conn = open_connection(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(AccessStats::default());
        let s = stats.clone();
        let thread = std::thread::Builder::new()
            .name("ward-ks-access-log".into())
            .spawn(move || writer(conn, rx, &s))
            .map_err(|e| StorageError::Task(e.to_string()))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Records `rows` durably; returns once they are committed.
    pub async fn record(&self, rows: Vec<AccessRow>) -> Result<(), StorageError> {
        if rows.is_empty() {
            return Ok(());
        }
        let gone = || StorageError::Task("access-log writer stopped".into());
        let (reply, answer) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Job { rows, reply })
            .await
            .map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(StorageError::Task)
    }

    /// The writer's counters.
    pub fn stats(&self) -> &AccessStats {
        &self.stats
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it answered what it holds.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer(conn: Connection, mut rx: mpsc::Receiver<Job>, stats: &AccessStats) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let result = commit(&conn, &batch).map_err(|e| {
            tracing::error!(error = %e, "access-log commit failed: nothing of this batch is served");
            e.to_string()
        });
        if result.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .requests
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        for job in batch.drain(..) {
            let _ = job.reply.send(result.clone());
        }
    }
}

fn commit(conn: &Connection, batch: &[Job]) -> Result<(), rusqlite::Error> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO access_log (at, user_id, device_id, kind, resource_id)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for row in batch.iter().flat_map(|j| &j.rows) {
            insert.execute(params![
                row.at as i64,
                row.user_id,
                row.device_id.as_slice(),
                row.kind.as_str(),
                row.object
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Db, access_log_since};

    /// Reads waiting while the database is busy are committed together, and
    /// none is answered before its record is durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_reads_share_one_commit_and_are_answered_after_it() {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let path = std::env::temp_dir().join(format!("ward-ks-access-{}.db", hex::encode(r)));
        let db = Db::open(&path).unwrap();
        // Another writer holds the lock: the access-log writer must wait.
        let blocker = open_connection(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut reads = Vec::new();
        for i in 0..64u8 {
            let db = db.clone();
            reads.push(tokio::spawn(async move {
                let row = AccessRow {
                    at: 1,
                    user_id: "u".into(),
                    device_id: [i; 32],
                    kind: AccessKind::WrappedKey,
                    object: vec![i; 16],
                };
                db.access.record(vec![row]).await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            reads.iter().all(|r| !r.is_finished()),
            "nothing is answered before its record is committed"
        );
        blocker.execute_batch("COMMIT").unwrap();
        for r in reads {
            r.await.unwrap().unwrap();
        }
        let stats = db.access.stats();
        assert_eq!(stats.requests(), 64);
        assert!(stats.commits() <= 2, "{} commits", stats.commits());
        let conn = open_connection(&path).unwrap();
        assert_eq!(access_log_since(&conn, 0).unwrap().len(), 64);
        drop(conn);
        drop(db);
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
