//! The single writer: one thread owns the write connection and commits
//! everything queued in one transaction per fsync (group commit).
//!
//! While batch N is being fsynced, commands keep arriving on the channel;
//! batch N+1 takes all of them (up to `max_batch`). Under load, one fsync
//! therefore carries many sends; when idle, a lone send commits at once, with
//! no added delay. Each command runs inside its own SAVEPOINT, so one failing
//! command does not abort the others. Callers are answered only after COMMIT
//! returned: a `SendAck` built from the answer is durable (WAL,
//! synchronous=FULL).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, trace};
use ward_proto::v1::SignedStatement;

use crate::error::StorageError;
use crate::registry::{Fresh, Registry};
use crate::storage::{self, Mailbox, NewMessage, Quotas, SendOutcome, Swept};

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

enum Command {
    Send {
        sender: Mailbox,
        msg: NewMessage,
        reply: Reply<SendOutcome>,
    },
    Ack {
        mailbox: Mailbox,
        up_to_seq: u64,
        reply: Reply<usize>,
    },
    StoreLog {
        user_id: String,
        prev_len: u64,
        entries: Vec<SignedStatement>,
        reply: Reply<bool>,
    },
    StoreRoomLog {
        room_id: [u8; 32],
        prev_len: u64,
        entries: Vec<ward_proto::v1::SignedRoomStatement>,
        reply: Reply<bool>,
    },
    Sweep {
        cutoff_ms: u64,
        limit: usize,
        reply: Reply<Swept>,
    },
    Prune {
        user_id: String,
        devices: Vec<[u8; 32]>,
        reply: Reply<usize>,
    },
    Blob {
        op: crate::blob_meta::BlobOp,
        reply: Reply<crate::blob_meta::BlobOutcome>,
    },
    SetPushToken {
        mailbox: Mailbox,
        token: Vec<u8>,
        reply: Reply<()>,
    },
    Stop,
}

enum Done {
    Send(Reply<SendOutcome>, Result<SendOutcome, StorageError>),
    Ack(Reply<usize>, Result<usize, StorageError>),
    StoreLog(Reply<bool>, Result<bool, StorageError>),
    Sweep(Reply<Swept>, Result<Swept, StorageError>),
    Prune(Reply<usize>, Result<usize, StorageError>),
    Blob(
        Reply<crate::blob_meta::BlobOutcome>,
        Result<crate::blob_meta::BlobOutcome, StorageError>,
    ),
    Unit(Reply<()>, Result<(), StorageError>),
}

impl Done {
    fn fail(self, why: &str) -> Self {
        let e = || StorageError::CommitFailed(why.to_owned());
        match self {
            Done::Send(r, _) => Done::Send(r, Err(e())),
            Done::Ack(r, _) => Done::Ack(r, Err(e())),
            Done::StoreLog(r, _) => Done::StoreLog(r, Err(e())),
            Done::Sweep(r, _) => Done::Sweep(r, Err(e())),
            Done::Prune(r, _) => Done::Prune(r, Err(e())),
            Done::Blob(r, _) => Done::Blob(r, Err(e())),
            Done::Unit(r, _) => Done::Unit(r, Err(e())),
        }
    }

    fn answer(self) {
        // A caller that went away no longer needs its answer.
        match self {
            Done::Send(r, v) => drop(r.send(v)),
            Done::Ack(r, v) => drop(r.send(v)),
            Done::StoreLog(r, v) => drop(r.send(v)),
            Done::Sweep(r, v) => drop(r.send(v)),
            Done::Prune(r, v) => drop(r.send(v)),
            Done::Blob(r, v) => drop(r.send(v)),
            Done::Unit(r, v) => drop(r.send(v)),
        }
    }
}

/// The handle async code uses to reach the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
    stats: Arc<Stats>,
}

/// Counters of the writer's work so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions committed (one fsync each).
    pub commits: AtomicU64,
    /// Commands carried by those transactions.
    pub commands: AtomicU64,
    /// Batch sizes and COMMIT (fsync) times, when observed.
    pub metrics: Option<crate::metrics::RelayMetrics>,
}

/// Milliseconds since the Unix epoch, from the relay's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the writer thread on `conn`, without quotas. After each commit it
/// wakes the connected recipients through `registry`.
pub fn spawn(
    conn: Connection,
    max_batch: usize,
    queue: usize,
    registry: Arc<Registry>,
    metrics: Option<crate::metrics::RelayMetrics>,
) -> std::io::Result<(Writer, JoinHandle<()>)> {
    spawn_with(conn, max_batch, queue, registry, Quotas::UNLIMITED, metrics)
}

/// As [`spawn`], refusing sends that would pass `quotas`.
pub fn spawn_with(
    conn: Connection,
    max_batch: usize,
    queue: usize,
    registry: Arc<Registry>,
    quotas: Quotas,
    metrics: Option<crate::metrics::RelayMetrics>,
) -> std::io::Result<(Writer, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let stats = Arc::new(Stats {
        metrics,
        ..Stats::default()
    });
    let counters = stats.clone();
    let handle = std::thread::Builder::new()
        .name("ward-relay-writer".into())
        .spawn(move || writer_loop(conn, rx, max_batch.max(1), &registry, &counters, &quotas))?;
    Ok((Writer { tx, stats }, handle))
}

impl Writer {
    /// Commands waiting for the writer, without keeping the channel open
    /// (for a queue-depth gauge).
    pub fn queue_depth_fn(&self) -> impl Fn() -> f64 + Send + Sync + 'static {
        let weak = self.tx.downgrade();
        move || {
            weak.upgrade()
                .map(|s| (s.max_capacity() - s.capacity()) as f64)
                .unwrap_or(0.0)
        }
    }

    /// `(commits, commands)` so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.commands.load(Ordering::Relaxed),
        )
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StorageError::WriterGone)?;
        rx.await.map_err(|_| StorageError::WriterGone)?
    }

    /// Stores a message durably; returns once committed.
    pub async fn send(
        &self,
        sender: Mailbox,
        msg: NewMessage,
    ) -> Result<SendOutcome, StorageError> {
        self.call(|reply| Command::Send { sender, msg, reply })
            .await
    }

    /// Deletes `mailbox`'s entries up to `up_to_seq`; returns once committed.
    pub async fn ack(&self, mailbox: Mailbox, up_to_seq: u64) -> Result<usize, StorageError> {
        self.call(|reply| Command::Ack {
            mailbox,
            up_to_seq,
            reply,
        })
        .await
    }

    /// Replaces a user's log if it still has `prev_len` entries.
    pub async fn store_log(
        &self,
        user_id: String,
        prev_len: u64,
        entries: Vec<SignedStatement>,
    ) -> Result<bool, StorageError> {
        self.call(|reply| Command::StoreLog {
            user_id,
            prev_len,
            entries,
            reply,
        })
        .await
    }

    /// Replaces a room's log if it still has `prev_len` entries.
    pub async fn store_room_log(
        &self,
        room_id: [u8; 32],
        prev_len: u64,
        entries: Vec<ward_proto::v1::SignedRoomStatement>,
    ) -> Result<bool, StorageError> {
        self.call(|reply| Command::StoreRoomLog {
            room_id,
            prev_len,
            entries,
            reply,
        })
        .await
    }

    /// Expires up to `limit` of the oldest messages received before `cutoff_ms`.
    pub async fn sweep(&self, cutoff_ms: u64, limit: usize) -> Result<Swept, StorageError> {
        self.call(|reply| Command::Sweep {
            cutoff_ms,
            limit,
            reply,
        })
        .await
    }

    /// Deletes the mailboxes of revoked `devices` of `user_id` and their
    /// entries; returns the entries deleted.
    pub async fn prune(
        &self,
        user_id: String,
        devices: Vec<[u8; 32]>,
    ) -> Result<usize, StorageError> {
        self.call(|reply| Command::Prune {
            user_id,
            devices,
            reply,
        })
        .await
    }

    /// Changes the attachment blob records (`crate::blob_meta`); returns
    /// once committed.
    pub async fn blob(
        &self,
        op: crate::blob_meta::BlobOp,
    ) -> Result<crate::blob_meta::BlobOutcome, StorageError> {
        self.call(|reply| Command::Blob { op, reply }).await
    }

    /// Stores `mailbox`'s push token (empty: deletes it); returns once
    /// committed.
    pub async fn set_push_token(
        &self,
        mailbox: Mailbox,
        token: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.call(|reply| Command::SetPushToken {
            mailbox,
            token,
            reply,
        })
        .await
    }

    /// Asks the writer to commit what it holds and exit. Commands sent
    /// afterwards fail with [`StorageError::WriterGone`].
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    max_batch: usize,
    registry: &Registry,
    stats: &Stats,
    quotas: &Quotas,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut stop = false;
    let (mut commits, mut commands) = (0u64, 0u64);
    while !stop {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let n = batch.len();
        commits += 1;
        commands += n as u64;
        stats.commits.store(commits, Ordering::Relaxed);
        stats.commands.store(commands, Ordering::Relaxed);
        if let Some(m) = &stats.metrics {
            m.commit_batch.observe(n as f64);
        }
        let (done, fresh, saw_stop) = commit_batch(&conn, batch.drain(..), stats, quotas);
        stop = saw_stop;
        if let Some(m) = &stats.metrics {
            m.messages_in.add(fresh.len() as u64);
        }
        trace!(commands = n, "group commit");
        for d in done {
            d.answer();
        }
        if !fresh.is_empty() {
            registry.deliver_fresh(&fresh);
        }
    }
    rx.close();
    info!(
        commits,
        commands,
        per_commit = commands as f64 / commits.max(1) as f64,
        "writer stopped"
    );
}

fn commit_batch(
    conn: &Connection,
    batch: impl Iterator<Item = Command>,
    stats: &Stats,
    quotas: &Quotas,
) -> (Vec<Done>, Vec<Fresh>, bool) {
    let mut done = Vec::new();
    let mut fresh = Vec::new();
    let mut stop = false;
    // If BEGIN fails, running the commands would autocommit each one (a
    // SAVEPOINT outside a transaction opens its own): refuse them all instead.
    let begun = run_cached(conn, "BEGIN IMMEDIATE");
    let now = now_ms();
    for cmd in batch {
        if let Err(e) = &begun {
            let why = e.to_string();
            let fail = || StorageError::CommitFailed(why.clone());
            match cmd {
                Command::Stop => stop = true,
                Command::Send { reply, .. } => done.push(Done::Send(reply, Err(fail()))),
                Command::Ack { reply, .. } => done.push(Done::Ack(reply, Err(fail()))),
                Command::StoreLog { reply, .. } | Command::StoreRoomLog { reply, .. } => {
                    done.push(Done::StoreLog(reply, Err(fail())))
                }
                Command::Sweep { reply, .. } => done.push(Done::Sweep(reply, Err(fail()))),
                Command::Prune { reply, .. } => done.push(Done::Prune(reply, Err(fail()))),
                Command::Blob { reply, .. } => done.push(Done::Blob(reply, Err(fail()))),
                Command::SetPushToken { reply, .. } => done.push(Done::Unit(reply, Err(fail()))),
            }
            continue;
        }
        let item = match cmd {
            Command::Stop => {
                stop = true;
                continue;
            }
            Command::Send { sender, msg, reply } => {
                let r = in_savepoint(conn, || {
                    storage::insert_message(conn, &sender, &msg, now, quotas)
                });
                if let Ok(SendOutcome::Stored(entries)) = &r {
                    fresh.push(Fresh {
                        message_id: msg.message_id,
                        sender,
                        payload: msg.payload,
                        received_at_ms: now,
                        entries: entries.clone(),
                    });
                }
                Done::Send(reply, r)
            }
            Command::Ack {
                mailbox,
                up_to_seq,
                reply,
            } => Done::Ack(
                reply,
                in_savepoint(conn, || storage::ack(conn, &mailbox, up_to_seq)),
            ),
            Command::StoreLog {
                user_id,
                prev_len,
                entries,
                reply,
            } => Done::StoreLog(
                reply,
                in_savepoint(conn, || {
                    storage::store_log(conn, &user_id, prev_len, &entries, now)
                }),
            ),
            Command::StoreRoomLog {
                room_id,
                prev_len,
                entries,
                reply,
            } => Done::StoreLog(
                reply,
                in_savepoint(conn, || {
                    storage::store_room_log(conn, &room_id, prev_len, &entries, now)
                }),
            ),
            Command::Sweep {
                cutoff_ms,
                limit,
                reply,
            } => Done::Sweep(
                reply,
                in_savepoint(conn, || storage::sweep(conn, cutoff_ms, limit)),
            ),
            Command::Prune {
                user_id,
                devices,
                reply,
            } => Done::Prune(
                reply,
                in_savepoint(conn, || storage::prune_devices(conn, &user_id, &devices)),
            ),
            Command::Blob { op, reply } => Done::Blob(
                reply,
                in_savepoint(conn, || crate::blob_meta::run(conn, &op, now)),
            ),
            Command::SetPushToken {
                mailbox,
                token,
                reply,
            } => Done::Unit(
                reply,
                in_savepoint(conn, || storage::set_push_token(conn, &mailbox, &token)),
            ),
        };
        done.push(item);
    }
    if begun.is_err() {
        error!("could not begin a transaction; batch refused");
        return (done, Vec::new(), stop);
    }
    let started = std::time::Instant::now();
    let committed = run_cached(conn, "COMMIT");
    if let Some(m) = &stats.metrics {
        m.fsync_seconds.observe(started.elapsed().as_secs_f64());
    }
    if let Err(e) = committed {
        error!(error = %e, "group commit failed; batch refused");
        let _ = conn.execute_batch("ROLLBACK");
        let why = e.to_string();
        done = done.into_iter().map(|d| d.fail(&why)).collect();
        fresh.clear();
    }
    (done, fresh, stop)
}

/// Runs a parameterless statement, prepared once per connection (the
/// transaction statements run for every command).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    run_cached(conn, "SAVEPOINT cmd")?;
    match f() {
        Ok(v) => {
            run_cached(conn, "RELEASE cmd")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd");
            Err(e)
        }
    }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sends_share_commits_and_are_answered_after_commit() {
        let dir = std::env::temp_dir().join(format!("ward-writer-{}", now_ms()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.db");
        let mut conn = storage::open(&path).unwrap();
        storage::migrate(&mut conn).unwrap();
        let (writer, thread) =
            spawn(conn, 1024, 4096, Arc::new(Registry::default()), None).unwrap();
        let sends = (0..200u8).map(|i| {
            let w = writer.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let msg = NewMessage {
                    message_id: [i; 16],
                    recipients: vec![mailbox("bob", 2)],
                    payload: vec![i; 100],
                };
                let outcome = w.send(mailbox("alice", 1), msg).await.unwrap();
                // Answered only after commit: another connection sees it now.
                let visible: i64 = tokio::task::spawn_blocking(move || {
                    rusqlite::Connection::open(&path)
                        .unwrap()
                        .query_row(
                            "SELECT count(*) FROM sends WHERE message_id = ?1",
                            [&[i; 16][..]],
                            |r| r.get(0),
                        )
                        .unwrap()
                })
                .await
                .unwrap();
                assert_eq!(visible, 1);
                outcome
            })
        });
        let sends: Vec<_> = sends.collect();
        for s in sends {
            assert!(matches!(s.await.unwrap(), SendOutcome::Stored(_)));
        }
        let reader = rusqlite::Connection::open(&path).unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 200);
        let (commits, commands) = writer.stats();
        assert_eq!(commands, 200);
        assert!(commits < 200, "{commits} commits for 200 concurrent sends");
        writer.stop().await;
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
