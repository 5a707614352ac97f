//! The relay's configuration: storage, trust root and limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ward_core::keys::SigningPublicKey;

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite database file (created if missing; `-wal`/`-shm` beside it).
    pub db_path: PathBuf,
    /// Where attachment blobs are kept as files (created if missing);
    /// default `<db_path>.blobs` (SECURITY.md §16.9, OPERATIONS.md).
    pub blob_dir: PathBuf,
    /// An unfinished upload not resumed for this long is deleted.
    pub blob_abandon_after: Duration,
    /// The pinned organisation root: every device's log is verified from it.
    pub org_root: SigningPublicKey,
    /// This relay's instance id, bound into every handshake (SECURITY.md §8).
    pub instance: String,
    /// Connection and traffic limits.
    pub limits: Limits,
    /// How long an undelivered entry is kept.
    pub retention: Duration,
    /// How often the retention sweeper runs.
    pub sweep_interval: Duration,
    /// How long graceful shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// Most commands the writer commits in one transaction (one fsync).
    pub max_batch: usize,
    /// TLS on the listener, or plain TCP on loopback only (the default,
    /// for tests and `ward up --insecure-loopback`); see `ward_net::tls`.
    pub tls: ward_net::tls::Acceptor,
    /// Where the relay's metrics and readiness go (the admin listener
    /// serves the same registry).
    pub metrics: ward_ops::metrics::Registry,
    /// Bytes of verified user logs kept in memory ([`crate::logs`]).
    pub log_cache_bytes: usize,
    /// Counters of the log verifier (keep a clone to read them).
    pub log_stats: Arc<crate::logs::LogStats>,
    /// The keyserver's relay link, which brings every log change (a
    /// revocation) at once (SECURITY.md §10.8); `None`: the relay learns
    /// logs from devices only (§9).
    pub keyserver_link: Option<crate::keyserver_link::KeyserverLink>,
    /// The push gateway (SECURITY.md §9.2); `None`: tokens are stored but
    /// no device is woken.
    pub push: Option<PushConfig>,
}

/// Where wake-ups go (SECURITY.md §9.2).
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The webhook, `http://host[:port][/path]`.
    pub webhook: String,
    /// Allow plain `http://` to a host that is not loopback.
    pub allow_plain_remote: bool,
    /// Whom an `https://` webhook's certificate must chain to (default:
    /// the public web roots).
    pub tls: ward_net::tls::ClientTls,
    /// The waits before each retry of a failed wake-up.
    pub retry_delays: Vec<Duration>,
}

impl PushConfig {
    /// A webhook with the default retries ([`crate::push::DEFAULT_RETRY_DELAYS`]).
    pub fn webhook(url: impl Into<String>) -> Self {
        Self {
            webhook: url.into(),
            allow_plain_remote: false,
            tls: ward_net::tls::ClientTls::web_roots(),
            retry_delays: crate::push::DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }
}

/// Limits. Each violation closes the connection with a reason code.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Frame size and authentication timeout, enforced by ward-net.
    pub net: ward_net::Limits,
    /// Most recipient devices in one `Send` (the wire walker already refuses
    /// more than 4,096 before decoding, `ward_proto::caps`).
    pub max_recipients: usize,
    /// Most simultaneous connections (authenticated or not).
    pub max_connections: usize,
    /// Sustained `Send` frames per second per device (token bucket rate).
    pub send_rate_per_sec: f64,
    /// `Send` frames a device may burst above the rate (bucket size).
    pub send_burst: u32,
    /// Blob bytes per second per device, uploads and downloads together
    /// (a token bucket of [`Self::blob_burst_bytes`]): one device cannot
    /// take the relay's disk or network from the others, for instance by
    /// reading its own blob in a loop. 0: no limit.
    pub blob_bytes_per_sec: u64,
    /// Blob bytes a device may move at once above that rate.
    pub blob_burst_bytes: u32,
    /// Frames queued towards one connection before it counts as slow.
    pub outbound_queue: usize,
    /// Bytes of payload queued towards one connection before it counts as
    /// slow. With `delivery_batch`, this bounds a connection's memory.
    pub outbound_bytes: usize,
    /// Bytes of payload queued towards all connections together. When it is
    /// used up, deliveries wait (they are not counted as slow) until slow
    /// readers are cut off or fast ones drain.
    pub global_outbound_bytes: usize,
    /// How long the outbound queue may stay full (or a write may block)
    /// before the connection is closed with `SLOW_CONSUMER`.
    pub slow_consumer_timeout: Duration,
    /// How long a closing connection may take to flush its close frame
    /// and see the peer's close.
    pub close_grace: Duration,
    /// TCP keepalive idle time on accepted sockets (probes every 10 s after
    /// it), so that a phone that vanished without closing (lift, dead
    /// battery, NAT timeout) is noticed and its connection freed. `None`
    /// leaves the system default (usually off).
    pub tcp_keepalive: Option<Duration>,
    /// Most deliveries read from the store per batch (also capped at
    /// 256 KiB of payload, but at least one).
    pub delivery_batch: usize,
    /// Most unauthenticated connections (upgrading or in the handshake) at
    /// once, from everyone; with `net.max_preauth_frame_bytes` this bounds
    /// what they may hold.
    pub max_unauthenticated: usize,
    /// Most unauthenticated connections at once from one source address
    /// (IPv4 address or IPv6 /64). Authenticated ones are not counted: many
    /// phones may share one NAT address.
    pub max_unauthenticated_per_address: usize,
    /// New connections per second one source address may open (token
    /// bucket); more are dropped at accept, before any work.
    pub accept_rate_per_address: f64,
    /// Connections a source may open in a burst above that rate.
    pub accept_burst_per_address: u32,
    /// An authenticated connection from which nothing (not even a pong) was
    /// read for this long is closed.
    pub idle_timeout: Duration,
    /// How often the relay pings an authenticated connection.
    pub ping_interval: Duration,
    /// Most undelivered queue entries (one per recipient device) a user's
    /// devices may have stored at once, all its devices together; over it a
    /// `Send` gets `QUOTA_EXCEEDED`.
    pub max_user_pending_entries: u64,
    /// Most bytes of undelivered payload a user's devices may have stored
    /// at once (each message counted once).
    pub max_user_pending_bytes: u64,
    /// Most undelivered entries one mailbox (recipient device) may hold;
    /// over it a `Send` to it gets `QUOTA_EXCEEDED`.
    pub max_mailbox_entries: u64,
    /// Largest attachment blob accepted, in bytes (its declared size at
    /// `BlobOpen`); over it: `TOO_LARGE`.
    pub max_blob_bytes: u64,
    /// Most bytes of blobs a user's devices may have stored or be uploading
    /// at once, until they are deleted; over it `BlobOpen` gets
    /// `QUOTA_EXCEEDED`.
    pub max_user_blob_bytes: u64,
    /// How long a device-link rendezvous lives from its `LinkOpen`, waiting
    /// and piping together (SECURITY.md §9.3); then both sides are closed.
    pub link_ttl: Duration,
    /// Most `data` bytes through one link pipe, both directions together;
    /// over it both sides are closed with `TOO_BIG`.
    pub link_max_bytes: u64,
    /// Most rendezvous waiting for a joiner at once, from everyone; over it
    /// a `LinkOpen` is closed with `TOO_MANY_CONNECTIONS`.
    pub max_links_waiting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// The defaults, as a constant (so that `--help` can show them).
    pub const DEFAULT: Self = Self {
        net: ward_net::Limits::DEFAULT,
        max_recipients: 1024,
        max_connections: 10_000,
        send_rate_per_sec: 100.0,
        send_burst: 200,
        blob_bytes_per_sec: 64 << 20,
        blob_burst_bytes: 32 << 20,
        outbound_queue: 64,
        outbound_bytes: 4 << 20,
        global_outbound_bytes: 512 << 20,
        slow_consumer_timeout: Duration::from_secs(10),
        close_grace: Duration::from_secs(5),
        tcp_keepalive: Some(Duration::from_secs(60)),
        delivery_batch: 64,
        max_unauthenticated: 1024,
        max_unauthenticated_per_address: 64,
        accept_rate_per_address: 50.0,
        accept_burst_per_address: 500,
        idle_timeout: Duration::from_secs(120),
        ping_interval: Duration::from_secs(30),
        max_user_pending_entries: 100_000,
        max_user_pending_bytes: 1 << 30,
        max_mailbox_entries: 20_000,
        max_blob_bytes: crate::blobs::DEFAULT_MAX_BLOB_BYTES,
        max_user_blob_bytes: 10 << 30,
        link_ttl: Duration::from_secs(600),
        link_max_bytes: 256 << 20,
        max_links_waiting: 1_000,
    };
}

/// 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// An unfinished upload is deleted after a day without a `BlobOpen`.
pub const DEFAULT_BLOB_ABANDON: Duration = Duration::from_secs(86_400);

/// `<db_path>.blobs`: beside the database, so that one directory holds the
/// relay's state.
pub fn default_blob_dir(db_path: &std::path::Path) -> PathBuf {
    let mut p = db_path.as_os_str().to_owned();
    p.push(".blobs");
    PathBuf::from(p)
}

impl Config {
    /// A configuration with default limits and retention.
    pub fn new(db_path: impl Into<PathBuf>, org_root: SigningPublicKey) -> Self {
        let db_path: PathBuf = db_path.into();
        Self {
            blob_dir: default_blob_dir(&db_path),
            blob_abandon_after: DEFAULT_BLOB_ABANDON,
            db_path,
            org_root,
            instance: ward_core::auth::DEFAULT_INSTANCE.to_owned(),
            limits: Limits::default(),
            retention: DEFAULT_RETENTION,
            sweep_interval: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(10),
            max_batch: 1024,
            tls: ward_net::tls::Acceptor::InsecureLoopback,
            metrics: ward_ops::metrics::Registry::new(),
            log_cache_bytes: crate::logs::DEFAULT_LOG_CACHE_BYTES,
            log_stats: Arc::default(),
            keyserver_link: None,
            push: None,
        }
    }
}
