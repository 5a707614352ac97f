//! The keyserver's configuration: what the binary reads from flags and
//! environment, and what tests build directly.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ward_core::keys::{DirectoryKey, SigningPublicKey};

/// Where the keyserver reads the time (unix seconds). Tests may pin it.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    /// A clock that calls `f`.
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A clock stopped at `t`.
    pub fn fixed(t: u64) -> Self {
        Self::from_fn(move || t)
    }

    /// The current time in unix seconds.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(now = {})", self.now())
    }
}

/// Bounds on what one peer may ask of the keyserver.
#[derive(Debug, Clone, Copy)]
pub struct KsLimits {
    /// Frame size and handshake time (shared with the relay).
    pub net: ward_net::Limits,
    /// Most items in one request: wrapped keys put, resource ids asked,
    /// grants put, user ids whose logs are asked.
    pub max_items_per_request: usize,
    /// Sustained requests per second per device (token bucket refill rate).
    pub requests_per_second: u32,
    /// Requests a device may send in a burst (token bucket size).
    pub request_burst: u32,
    /// Connections open at once, authenticated or not; more are closed with
    /// `TOO_MANY_CONNECTIONS`.
    pub max_connections: usize,
    /// Time given to open connections to close at shutdown.
    pub shutdown_grace: Duration,
    /// An authenticated connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Sessions of devices whose user does not exist yet (they may only
    /// enroll) open at once; more are refused with `RATE_LIMITED`.
    pub max_enrolling: usize,
    /// Of those, most open at once from one source address (IPv4 address or
    /// IPv6 /64): a flood of self-signed fresh keys from one address fills
    /// its own share, and a real `ward enroll` from elsewhere still gets in.
    pub max_enrolling_per_address: usize,
    /// Time such a session has to enroll before it is closed.
    pub enroll_timeout: Duration,
    /// Most unauthenticated connections (upgrading or in the handshake) at
    /// once, from everyone.
    pub max_unauthenticated: usize,
    /// Most unauthenticated connections at once from one source address.
    pub max_unauthenticated_per_address: usize,
    /// New connections per second one source address may open (token
    /// bucket); more are dropped at accept, before any work.
    pub accept_rate_per_address: f64,
    /// Connections a source may open in a burst above that rate.
    pub accept_burst_per_address: u32,
    /// How often each open connection re-reads its device's status from the
    /// database (a backstop for revocations written by another process; a
    /// revocation made through this process closes connections at once).
    pub revocation_recheck: Duration,
    /// Per-user storage quotas and retention (SECURITY.md §10.2).
    pub quotas: Quotas,
    /// Directory searches per minute per device, sustained (SECURITY.md
    /// §10.9); counted apart from, and on top of, `requests_per_second`.
    pub searches_per_minute: u32,
    /// Directory searches a device may send in a burst.
    pub search_burst: u32,
}

/// What one user may keep stored, and for how long (SECURITY.md §10.2).
/// Over a quota, a put is refused with `QUOTA_EXCEEDED` and stores nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Wrapped keys a user's devices may have stored (as sender) within
    /// the retention.
    pub wrapped_keys_per_user: u64,
    /// Device grants stored for one user (its keys to its devices).
    pub grants_per_user: u64,
    /// Age after which a wrapped key is deleted, and a grant of a user key
    /// that is no longer current (nothing newer can be wrapped to it).
    /// Longer than the relay's message retention (30 days), so that every
    /// message the relay still holds finds its key.
    pub retention: Duration,
}

/// Default wrapped keys per user: a clinician sending 500 messages a day to
/// 3 colleagues stays under a third of it over the default retention.
pub const DEFAULT_WRAPPED_KEYS_PER_USER: u64 = 250_000;
/// Default grants per user: far above keys x devices of any career.
pub const DEFAULT_GRANTS_PER_USER: u64 = 4096;
/// Default retention of wrapped keys: 60 days.
pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(60 * 86_400);

impl Default for Quotas {
    fn default() -> Self {
        Self {
            wrapped_keys_per_user: DEFAULT_WRAPPED_KEYS_PER_USER,
            grants_per_user: DEFAULT_GRANTS_PER_USER,
            retention: DEFAULT_KEY_RETENTION,
        }
    }
}

impl Default for KsLimits {
    fn default() -> Self {
        Self {
            net: ward_net::Limits {
                // 256 wrapped keys of ~1.2 KB (X-Wing, SECURITY.md §5) fit in
                // 1 MiB, but the logs of 256 recipients (a user creation alone
                // is ~3 KB) do not: 4 MiB.
                max_frame_bytes: 4 << 20,
                auth_timeout: Duration::from_secs(10),
                // An AuthResponse without a log (the keyserver has its own).
                max_preauth_frame_bytes: 16 << 10,
            },
            max_items_per_request: 256,
            requests_per_second: 50,
            request_burst: 200,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_enrolling: 1024,
            max_enrolling_per_address: 32,
            // An enrolment is one append right after the handshake.
            enroll_timeout: Duration::from_secs(20),
            max_unauthenticated: 1024,
            max_unauthenticated_per_address: 64,
            accept_rate_per_address: 50.0,
            accept_burst_per_address: 500,
            revocation_recheck: Duration::from_secs(30),
            quotas: Quotas::default(),
            // Search as you type: a burst for one name, then one a second.
            searches_per_minute: 60,
            search_burst: 20,
        }
    }
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite database file (created if missing). Its `-wal` and `-shm`
    /// files live beside it.
    pub db_path: PathBuf,
    /// The organisation root's public key: every invite must be signed by it.
    pub org_root: SigningPublicKey,
    /// This keyserver's instance id, bound into every handshake (SECURITY.md §8).
    pub instance: String,
    /// Request and connection limits.
    pub limits: KsLimits,
    /// The server clock, used for invite expiry and access-log times.
    pub clock: Clock,
    /// TLS on the listener, or plain TCP on loopback only (the default,
    /// for tests and `--insecure-loopback`); see `ward_net::tls`.
    pub tls: ward_net::tls::Acceptor,
    /// Where the keyserver's metrics and readiness go (the admin listener
    /// serves the same registry).
    pub metrics: ward_ops::metrics::Registry,
    /// Relay service keys allowed on the relay link (SECURITY.md §10.8);
    /// empty: every relay is refused there.
    pub relay_keys: Vec<SigningPublicKey>,
    /// Key transparency: publication schedule, directory key, public path
    /// limits (SECURITY.md §18.4).
    pub kt: KtConfig,
}

/// Key-transparency settings (SECURITY.md §18.4).
#[derive(Debug, Clone)]
pub struct KtConfig {
    /// How often the publisher looks for grown logs and, if any, publishes
    /// an epoch with their new heads.
    pub epoch_interval: Duration,
    /// Longest time without an epoch: an idle directory still publishes
    /// (same tree, new timestamp), so that a client can tell it is alive.
    pub max_epoch_age: Duration,
    /// The key that signs epochs. `None`: a fresh key for this process only
    /// (a test or a throwaway server; the binary always loads one from
    /// `directory_key_file`), since clients pin what the root certifies.
    pub directory_key: Option<Arc<DirectoryKey>>,
    /// The organisation root's signature over the directory key
    /// (`ward_core::transparency::certify_directory_key`). `None`: epochs
    /// are still published, and served with an empty certificate, which
    /// clients refuse.
    pub certificate: Option<[u8; 64]>,
    /// Sustained requests per second one source address may send on the
    /// public `/v2/kt` path (token bucket refill rate).
    pub public_rate: u32,
    /// Requests a source address may send there in a burst.
    pub public_burst: u32,
}

/// Default epoch interval: 2 s.
pub const DEFAULT_KT_EPOCH_INTERVAL: Duration = Duration::from_secs(2);
/// Default longest time between epochs: 60 s.
pub const DEFAULT_KT_MAX_EPOCH_AGE: Duration = Duration::from_secs(60);

impl Default for KtConfig {
    fn default() -> Self {
        Self {
            epoch_interval: DEFAULT_KT_EPOCH_INTERVAL,
            max_epoch_age: DEFAULT_KT_MAX_EPOCH_AGE,
            directory_key: None,
            certificate: None,
            // An auditor catching up pages 1024 leaves a request.
            public_rate: 20,
            public_burst: 100,
        }
    }
}

impl Config {
    /// A configuration with default limits and the system clock.
    pub fn new(db_path: impl Into<PathBuf>, org_root: SigningPublicKey) -> Self {
        Self {
            db_path: db_path.into(),
            org_root,
            instance: ward_core::auth::DEFAULT_INSTANCE.to_owned(),
            limits: KsLimits::default(),
            clock: Clock::system(),
            tls: ward_net::tls::Acceptor::InsecureLoopback,
            metrics: ward_ops::metrics::Registry::new(),
            relay_keys: Vec::new(),
            kt: KtConfig::default(),
        }
    }
}
