//! State shared by every connection: configuration, the writer, the readers
//! and the registry of connected devices.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::StorageError;
use crate::registry::Registry;
use crate::storage::Mailbox;
use crate::writer::Writer;
use ward_net::rate::Buckets;

/// Most reads running at once (each holds one pooled SQLite connection).
const MAX_READERS: usize = 8;

/// Read-only connections reused across `spawn_blocking` reads.
pub struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            pool: Mutex::new(Vec::new()),
            permits: Semaphore::new(MAX_READERS),
        }
    }

    fn take(&self) -> Result<Connection, StorageError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(c) => Ok(c),
            None => {
                let c = Connection::open(&self.path)?;
                c.busy_timeout(std::time::Duration::from_secs(30))?;
                c.pragma_update(None, "query_only", "ON")?;
                Ok(c)
            }
        }
    }

    fn put(&self, conn: Connection) {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

/// Permits of the global outbound budget (one per byte, at most `u32::MAX`).
pub fn global_permits(config: &Config) -> usize {
    config
        .limits
        .global_outbound_bytes
        .clamp(1, u32::MAX as usize)
}

/// Everything a connection task needs.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The single writer.
    pub writer: Writer,
    /// Connected devices.
    pub registry: Arc<Registry>,
    /// Send-rate buckets of devices between connections.
    pub buckets: Buckets<Mailbox>,
    /// Blob byte budgets of devices between their blob connections.
    pub blob_bytes: Buckets<Mailbox>,
    /// Payload bytes that may be queued towards all connections together.
    pub outbound: Arc<Semaphore>,
    /// Verified user logs ([`crate::logs`]).
    pub logs: crate::logs::LogCache,
    /// Verified room logs ([`crate::rooms`], SECURITY.md §17.10).
    pub rooms: crate::rooms::RoomCache,
    readers: Arc<Readers>,
    /// Log length at which each user's revoked mailboxes were last pruned.
    pruned: Mutex<std::collections::HashMap<String, u64>>,
    /// Prometheus series.
    pub metrics: crate::metrics::RelayMetrics,
    /// Attachment blob files (SECURITY.md §16.9).
    pub blobs: Arc<dyn crate::blobs::BlobStore>,
    /// Logs asked of the keyserver's link at a login (SECURITY.md §9).
    pub link_fetch: crate::keyserver_link::Fetcher,
    /// Device-link rendezvous waiting, and devices with a link open
    /// (SECURITY.md §9.3).
    pub links: crate::link::Links,
}

impl Shared {
    /// Bundles the state.
    pub fn new(
        config: Config,
        writer: Writer,
        registry: Arc<Registry>,
        metrics: crate::metrics::RelayMetrics,
        blobs: Arc<dyn crate::blobs::BlobStore>,
    ) -> Self {
        let readers = Arc::new(Readers::new(config.db_path.clone()));
        let buckets = Buckets::new(config.limits.send_rate_per_sec, config.limits.send_burst);
        let blob_bytes = Buckets::new(
            config.limits.blob_bytes_per_sec as f64,
            config.limits.blob_burst_bytes,
        );
        let outbound = Arc::new(Semaphore::new(global_permits(&config)));
        let logs = crate::logs::LogCache::new(config.log_cache_bytes, config.log_stats.clone());
        let link_fetch = crate::keyserver_link::Fetcher::new(config.keyserver_link.is_some());
        Self {
            link_fetch,
            links: crate::link::Links::default(),
            logs,
            rooms: crate::rooms::RoomCache::default(),
            config,
            writer,
            registry,
            buckets,
            blob_bytes,
            outbound,
            readers,
            pruned: Mutex::new(std::collections::HashMap::new()),
            metrics,
            blobs,
        }
    }

    /// Whether `user_id`'s revoked mailboxes have not been pruned at a log
    /// of `len` entries yet (and notes that they now will be).
    pub fn needs_prune(&self, user_id: &str, len: u64) -> bool {
        let mut pruned = self.pruned.lock().unwrap_or_else(PoisonError::into_inner);
        if pruned.get(user_id).is_some_and(|l| *l >= len) {
            return false;
        }
        if pruned.len() >= 100_000 {
            pruned.clear(); // bounded; pruning again is harmless
        }
        pruned.insert(user_id.to_owned(), len);
        true
    }

    /// Runs `f` on a pooled read connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let _permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(|_| StorageError::WriterGone)?;
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let r = f(&conn);
            readers.put(conn);
            r
        })
        .await
        .map_err(|e| StorageError::Join(e.to_string()))?
    }
}
