//! The keyserver binary: flags and environment into a [`Config`], then
//! [`ward_keyserver::run`] until SIGINT or SIGTERM. See the crate docs for
//! every setting.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use ward_core::keys::SigningPublicKey;
use ward_keyserver::{Config, KsLimits};

/// Ward's keyserver: verified directory and wrapped-key store.
///
/// Every setting comes from a flag, else its environment variable, else the
/// `--config` TOML file (keys: the long flag names), else the default shown.
/// `ward-keyserver print-config` writes the effective settings as such a file.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// TCP address to listen on.
    #[arg(long, env = "WARD_KEYSERVER_LISTEN", default_value = "127.0.0.1:7071")]
    listen: SocketAddr,
    /// SQLite database file (created if missing).
    #[arg(long, env = "WARD_KEYSERVER_DB", default_value = "keyserver.db")]
    db: PathBuf,
    /// The organisation root's Ed25519 public key, 64 hex digits. Required to serve.
    #[arg(long, env = "WARD_KEYSERVER_ORG_ROOT")]
    org_root: Option<String>,
    /// This keyserver's instance id (bound into the handshake; distinct per deployment).
    #[arg(long, env = "WARD_KEYSERVER_INSTANCE", default_value = ward_core::auth::DEFAULT_INSTANCE)]
    instance: String,
    /// A relay service public key (64 hex digits, printed by `ward-relay
    /// service-key`) allowed on the relay link, which tells relays of every
    /// log change at once (SECURITY.md §10.8). Repeatable; none: no relay link.
    #[arg(
        long = "relay-key",
        env = "WARD_KEYSERVER_RELAY_KEYS",
        value_delimiter = ','
    )]
    relay_keys: Vec<String>,
    #[command(flatten)]
    tls: ward_ops::tls_args::TlsArgs,
    /// Admin listener address (Prometheus /metrics, /healthz, /readyz), e.g.
    /// 127.0.0.1:9071; "off" for none. Keep it on loopback or an operations network.
    #[arg(long, default_value = "off")]
    admin_listen: String,
    /// Log line format on standard error (colour only on a terminal).
    #[arg(long, value_enum, default_value = "text")]
    log_format: ward_ops::logging::LogFormat,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "WARD_KEYSERVER_MAX_FRAME_BYTES", default_value_t = 4 << 20)]
    max_frame_bytes: usize,
    /// Seconds a new connection has to complete the handshake.
    #[arg(long, env = "WARD_KEYSERVER_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    auth_timeout_secs: u64,
    /// Most items (keys, resource ids, grants, user ids) in one request.
    #[arg(long, env = "WARD_KEYSERVER_MAX_ITEMS", default_value_t = 256)]
    max_items: usize,
    /// Sustained requests per second per device.
    #[arg(long, env = "WARD_KEYSERVER_RATE", default_value_t = 50)]
    rate: u32,
    /// Requests a device may send in a burst.
    #[arg(long, env = "WARD_KEYSERVER_BURST", default_value_t = 200)]
    burst: u32,
    /// Sustained directory searches per minute per device (on top of --rate).
    #[arg(long, env = "WARD_KEYSERVER_SEARCHES_PER_MINUTE", default_value_t = 60)]
    searches_per_minute: u32,
    /// Directory searches a device may send in a burst.
    #[arg(long, env = "WARD_KEYSERVER_SEARCH_BURST", default_value_t = 20)]
    search_burst: u32,
    /// Connections open at once (lowered at start to the file-descriptor
    /// limit minus 128, after raising the soft limit to the hard one).
    #[arg(long, env = "WARD_KEYSERVER_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Seconds of silence after which an authenticated connection is closed.
    #[arg(long, env = "WARD_KEYSERVER_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    idle_timeout_secs: u64,
    /// Sessions of devices not enrolled yet, open at once.
    #[arg(long, env = "WARD_KEYSERVER_MAX_ENROLLING", default_value_t = 1024)]
    max_enrolling: usize,
    /// Of those, most from one IPv4 address or IPv6 /64.
    #[arg(
        long,
        env = "WARD_KEYSERVER_MAX_ENROLLING_PER_ADDRESS",
        default_value_t = 32
    )]
    max_enrolling_per_address: usize,
    /// Seconds an unenrolled session has to enroll.
    #[arg(long, env = "WARD_KEYSERVER_ENROLL_TIMEOUT_SECS", default_value_t = 20)]
    enroll_timeout_secs: u64,
    /// Largest frame accepted before login, in bytes.
    #[arg(long, env = "WARD_KEYSERVER_MAX_PREAUTH_FRAME_BYTES", default_value_t = 16 << 10)]
    max_preauth_frame_bytes: usize,
    /// Most unauthenticated connections at once, from everyone.
    #[arg(
        long,
        env = "WARD_KEYSERVER_MAX_UNAUTHENTICATED",
        default_value_t = 1024
    )]
    max_unauthenticated: usize,
    /// New connections per second one IPv4 address or IPv6 /64 may open
    /// (bursts of 500); more are dropped at accept.
    #[arg(
        long,
        env = "WARD_KEYSERVER_ACCEPT_RATE_PER_ADDRESS",
        default_value_t = 50.0
    )]
    accept_rate_per_address: f64,
    /// Most unauthenticated connections at once from one IPv4 address or IPv6 /64.
    #[arg(
        long,
        env = "WARD_KEYSERVER_MAX_UNAUTHENTICATED_PER_ADDRESS",
        default_value_t = 64
    )]
    max_unauthenticated_per_address: usize,
    /// Wrapped keys one user's devices may have stored (as sender) within
    /// the retention; more are refused with QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_KEYSERVER_MAX_WRAPPED_KEYS_PER_USER", default_value_t = ward_keyserver::config::DEFAULT_WRAPPED_KEYS_PER_USER)]
    max_wrapped_keys_per_user: u64,
    /// Device grants stored per user; more are refused with QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_KEYSERVER_MAX_GRANTS_PER_USER", default_value_t = ward_keyserver::config::DEFAULT_GRANTS_PER_USER)]
    max_grants_per_user: u64,
    /// Days a wrapped key (and a grant of a past user key) is kept.
    #[arg(long, env = "WARD_KEYSERVER_KEY_RETENTION_DAYS", default_value_t = 60)]
    key_retention_days: u64,
    /// Key transparency: milliseconds between looks for grown logs; an
    /// epoch is published when one grew (SECURITY.md §18.4).
    #[arg(
        long,
        env = "WARD_KEYSERVER_KT_EPOCH_INTERVAL_MS",
        default_value_t = 2000
    )]
    kt_epoch_interval_ms: u64,
    /// Key transparency: longest time between epochs, in seconds; an idle
    /// directory publishes its unchanged tree with a new timestamp.
    #[arg(
        long,
        env = "WARD_KEYSERVER_KT_MAX_EPOCH_AGE_SECS",
        default_value_t = 60
    )]
    kt_max_epoch_age_secs: u64,
    /// The directory key's 32-byte Ed25519 seed (signs epochs); created,
    /// 0600, on first start if missing.
    #[arg(
        long,
        env = "WARD_KEYSERVER_DIRECTORY_KEY_FILE",
        default_value = "keyserver-directory.key"
    )]
    directory_key_file: PathBuf,
    /// The organisation root's signature over the directory key
    /// (`ward_core::transparency::certify_directory_key`), 128 hex digits;
    /// `ward up` writes it for its dev root. Without it epochs are served
    /// with an empty certificate, which clients refuse.
    #[arg(long, env = "WARD_KEYSERVER_DIRECTORY_CERTIFICATE_FILE")]
    directory_certificate_file: Option<PathBuf>,
    /// Sustained requests per second one IPv4 address or IPv6 /64 may send
    /// on the public /v2/kt path.
    #[arg(long, env = "WARD_KEYSERVER_KT_PUBLIC_RATE", default_value_t = 20)]
    kt_public_rate: u32,
    /// Requests a source may send there in a burst.
    #[arg(long, env = "WARD_KEYSERVER_KT_PUBLIC_BURST", default_value_t = 100)]
    kt_public_burst: u32,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Print the effective configuration as a TOML file (`--config` reads it back).
    PrintConfig,
    /// Copy the database, consistently, while the keyserver runs (SQLite's
    /// online backup). Restore: stop the keyserver, put the copy in place of
    /// --db (removing its -wal and -shm files), start it. See OPERATIONS.md.
    Backup {
        /// The new backup file (never overwritten).
        to: PathBuf,
    },
    /// Restore a backup as --db (the keyserver stopped; --db and its
    /// -wal/-shm moved away first).
    Restore {
        /// The backup file.
        from: PathBuf,
    },
}

const ENV_PREFIX: &str = "WARD_KEYSERVER";

fn config(args: &Args) -> Result<Config, String> {
    let root = args
        .org_root
        .as_deref()
        .ok_or("--org-root (or WARD_KEYSERVER_ORG_ROOT, or org-root in --config) is required")?;
    let root = hex::decode(root.trim()).map_err(|e| format!("--org-root: {e}"))?;
    let org_root = SigningPublicKey::from_bytes(&root).map_err(|e| format!("--org-root: {e}"))?;
    let mut config = Config::new(&args.db, org_root);
    config.instance = args.instance.clone();
    for k in &args.relay_keys {
        let bytes = hex::decode(k.trim()).map_err(|e| format!("--relay-key: {e}"))?;
        config
            .relay_keys
            .push(SigningPublicKey::from_bytes(&bytes).map_err(|e| format!("--relay-key: {e}"))?);
    }
    let defaults = KsLimits::default();
    config.limits = KsLimits {
        net: ward_net::Limits {
            max_frame_bytes: args.max_frame_bytes,
            auth_timeout: Duration::from_secs(args.auth_timeout_secs),
            max_preauth_frame_bytes: args.max_preauth_frame_bytes,
        },
        max_items_per_request: args.max_items,
        requests_per_second: args.rate,
        request_burst: args.burst,
        searches_per_minute: args.searches_per_minute,
        search_burst: args.search_burst,
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_enrolling: args.max_enrolling,
        max_enrolling_per_address: args.max_enrolling_per_address,
        enroll_timeout: Duration::from_secs(args.enroll_timeout_secs),
        max_unauthenticated: args.max_unauthenticated,
        max_unauthenticated_per_address: args.max_unauthenticated_per_address,
        accept_rate_per_address: args.accept_rate_per_address,
        quotas: ward_keyserver::Quotas {
            wrapped_keys_per_user: args.max_wrapped_keys_per_user,
            grants_per_user: args.max_grants_per_user,
            retention: Duration::from_secs(args.key_retention_days.saturating_mul(86_400)),
        },
        ..defaults
    };
    config.kt.epoch_interval = Duration::from_millis(args.kt_epoch_interval_ms.max(10));
    config.kt.max_epoch_age = Duration::from_secs(args.kt_max_epoch_age_secs.max(1));
    config.kt.public_rate = args.kt_public_rate;
    config.kt.public_burst = args.kt_public_burst;
    if let Some(path) = &args.directory_certificate_file {
        config.kt.certificate = Some(read_certificate(path)?);
    }
    Ok(config)
}

fn read_certificate(path: &std::path::Path) -> Result<[u8; 64], String> {
    ward_keyserver::transparency::read_certificate(path)
        .map_err(|e| format!("--directory-certificate-file: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, matches) = match ward_ops::layered::parse_into::<Args>(ENV_PREFIX) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ward-keyserver: {e}");
            return ExitCode::from(2);
        }
    };
    match &args.command {
        Some(Cmd::PrintConfig) => {
            print!(
                "{}",
                ward_ops::layered::render(&Args::command(), &matches, ENV_PREFIX)
            );
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Backup { to }) => {
            return match ward_ops::backup::online(&args.db, to) {
                Ok(s) => {
                    println!(
                        "backed up {} to {} ({} bytes)",
                        args.db.display(),
                        to.display(),
                        s.bytes
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ward-keyserver: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Restore { from }) => {
            return match ward_ops::backup::restore(from, &args.db) {
                Ok(_) => {
                    println!(
                        "restored {} from {}; start the keyserver",
                        args.db.display(),
                        from.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ward-keyserver: restore: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    ward_ops::logging::init(args.log_format, "info");
    let mut config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ward-keyserver: {e}");
            return ExitCode::from(2);
        }
    };
    config.tls = match args.tls.acceptor() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ward-keyserver: {e}");
            return ExitCode::from(2);
        }
    };
    // Installed before anything says it is ready (see ward_net::signal).
    let stop = match ward_net::signal::stop() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ward-keyserver: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ward-keyserver: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if args.admin_listen != "off" {
        match ward_ops::admin::spawn(
            &args.admin_listen,
            config.metrics.clone(),
            std::future::pending(),
        )
        .await
        {
            Ok(addr) => tracing::info!(%addr, "admin listener: /metrics, /healthz, /readyz"),
            Err(e) => {
                eprintln!(
                    "ward-keyserver: cannot listen on {} for the admin listener: {e}",
                    args.admin_listen
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if let Ok(addr) = listener.local_addr()
        && let Some(w) = ward_ops::instance::default_instance_warning(
            "ward-keyserver",
            &config.instance,
            ward_core::auth::DEFAULT_INSTANCE,
            addr,
        )
    {
        tracing::warn!("{w}");
    }
    // Last before serving: a run that fails earlier (flags, TLS, listening)
    // creates no key file.
    match ward_keyserver::transparency::load_or_create_key(&args.directory_key_file) {
        Ok((k, _)) => {
            tracing::info!(
                directory_key = %hex::encode(k.public_key().as_bytes()),
                "key transparency directory key loaded"
            );
            config.kt.directory_key = Some(std::sync::Arc::new(k));
        }
        Err(e) => {
            eprintln!("ward-keyserver: --directory-key-file: {e}");
            return ExitCode::from(2);
        }
    }
    match ward_keyserver::run(listener, config, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-keyserver: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_a_config() {
        let mut rng = rand::rng();
        let root = ward_core::keys::OrgRootKey::generate(&mut rng).public_key();
        let hex_root = hex::encode(root.as_bytes());
        let args = Args::try_parse_from([
            "ward-keyserver",
            "--org-root",
            &hex_root,
            "--db",
            "/tmp/x.db",
            "--max-items",
            "10",
            "--idle-timeout-secs",
            "7",
        ])
        .unwrap();
        let c = config(&args).unwrap();
        assert_eq!(c.org_root, root);
        assert_eq!(c.db_path, PathBuf::from("/tmp/x.db"));
        assert_eq!(c.limits.max_items_per_request, 10);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(7));
        assert_eq!(c.limits.request_burst, 200);

        let bad = Args::try_parse_from(["ward-keyserver", "--org-root", "abcd"]).unwrap();
        assert!(config(&bad).is_err());
        assert!(Args::try_parse_from(["ward-keyserver", "--listen", "nowhere"]).is_err());
    }
}
