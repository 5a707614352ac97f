//! `ward-relay`: runs the relay until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use ward_core::keys::SigningPublicKey;
use ward_relay::{Config, Limits};

/// Ward's relay: durable store-and-forward of ciphertext.
///
/// Every setting comes from a flag, else its environment variable, else the
/// `--config` TOML file (keys: the long flag names), else the default shown.
/// `ward-relay print-config` writes the effective settings as such a file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, env = "WARD_RELAY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// SQLite database file.
    #[arg(long, env = "WARD_RELAY_DB", default_value = "ward-relay.db")]
    db: PathBuf,
    /// The organisation root public key (Ed25519, 64 hex digits). Required to serve.
    #[arg(long, env = "WARD_RELAY_ORG_ROOT")]
    org_root: Option<String>,
    /// This relay's instance id (bound into the handshake; distinct per deployment).
    #[arg(long, env = "WARD_RELAY_INSTANCE", default_value = ward_core::auth::DEFAULT_INSTANCE)]
    instance: String,
    #[command(flatten)]
    tls: ward_ops::tls_args::TlsArgs,
    /// The keyserver to follow over its relay link (wss://host:port), which
    /// brings every revocation at once (SECURITY.md §10.8). Its --relay-key
    /// must list this relay's service key (`ward-relay service-key`). None:
    /// logs come from devices only.
    #[arg(long, env = "WARD_RELAY_KEYSERVER_URL")]
    keyserver_url: Option<String>,
    /// The keyserver's instance id (its challenge must name it).
    #[arg(long, env = "WARD_RELAY_KEYSERVER_INSTANCE", default_value = ward_core::auth::DEFAULT_INSTANCE)]
    keyserver_instance: String,
    /// PEM CA certificate(s) to trust for the keyserver's TLS certificate
    /// (a private CA); default: the public web roots.
    #[arg(long, env = "WARD_RELAY_KEYSERVER_CA", value_name = "FILE")]
    keyserver_ca: Option<PathBuf>,
    /// This relay's service key (Ed25519 seed, 64 hex digits), created
    /// owner-only (0600) on first start; default: beside --db, <db>.service-key.
    #[arg(long, env = "WARD_RELAY_SERVICE_KEY", value_name = "FILE")]
    service_key: Option<PathBuf>,
    /// Admin listener address (Prometheus /metrics, /healthz, /readyz), e.g.
    /// 127.0.0.1:9070; "off" for none. Keep it on loopback or an operations network.
    #[arg(long, default_value = "off")]
    admin_listen: String,
    /// Log line format on standard error (colour only on a terminal).
    #[arg(long, value_enum, default_value = "text")]
    log_format: ward_ops::logging::LogFormat,
    /// Largest frame accepted, in bytes.
    #[arg(long, env = "WARD_RELAY_MAX_FRAME_BYTES", default_value_t = DEF.net.max_frame_bytes)]
    max_frame_bytes: usize,
    /// Seconds an unauthenticated connection has to authenticate (TLS included).
    #[arg(long, env = "WARD_RELAY_AUTH_TIMEOUT_SECS", default_value_t = DEF.net.auth_timeout.as_secs())]
    auth_timeout_secs: u64,
    /// Most recipient devices per message.
    #[arg(long, env = "WARD_RELAY_MAX_RECIPIENTS", default_value_t = DEF.max_recipients)]
    max_recipients: usize,
    /// Most simultaneous connections (lowered at start to the file-descriptor
    /// limit minus 128, after raising the soft limit to the hard one).
    #[arg(long, env = "WARD_RELAY_MAX_CONNECTIONS", default_value_t = DEF.max_connections)]
    max_connections: usize,
    /// Sustained sends per second per device.
    #[arg(long, env = "WARD_RELAY_SEND_RATE", default_value_t = DEF.send_rate_per_sec)]
    send_rate: f64,
    /// Sends a device may burst above the rate.
    #[arg(long, env = "WARD_RELAY_SEND_BURST", default_value_t = DEF.send_burst)]
    send_burst: u32,
    /// Blob bytes per second per device, uploads and downloads together
    /// (0: no limit), with bursts of half a second's worth.
    #[arg(long, env = "WARD_RELAY_BLOB_RATE", default_value_t = DEF.blob_bytes_per_sec)]
    blob_rate: u64,
    /// Frames queued towards one connection.
    #[arg(long, env = "WARD_RELAY_OUTBOUND_QUEUE", default_value_t = DEF.outbound_queue)]
    outbound_queue: usize,
    /// Payload bytes queued towards one connection.
    #[arg(long, env = "WARD_RELAY_OUTBOUND_BYTES", default_value_t = DEF.outbound_bytes)]
    outbound_bytes: usize,
    /// Payload bytes queued towards all connections together.
    #[arg(long, env = "WARD_RELAY_GLOBAL_OUTBOUND_BYTES", default_value_t = DEF.global_outbound_bytes)]
    global_outbound_bytes: usize,
    /// Milliseconds a full outbound queue is tolerated before SLOW_CONSUMER.
    #[arg(long, env = "WARD_RELAY_SLOW_CONSUMER_MS", default_value_t = DEF.slow_consumer_timeout.as_millis() as u64)]
    slow_consumer_ms: u64,
    /// TCP keepalive idle seconds on accepted sockets (0: off).
    #[arg(long, env = "WARD_RELAY_TCP_KEEPALIVE_SECS", default_value_t = 60)]
    tcp_keepalive_secs: u64,
    /// Largest frame accepted before login, in bytes (an AuthResponse with its log).
    #[arg(long, env = "WARD_RELAY_MAX_PREAUTH_FRAME_BYTES", default_value_t = DEF.net.max_preauth_frame_bytes)]
    max_preauth_frame_bytes: usize,
    /// Most unauthenticated connections at once, from everyone.
    #[arg(long, env = "WARD_RELAY_MAX_UNAUTHENTICATED", default_value_t = DEF.max_unauthenticated)]
    max_unauthenticated: usize,
    /// Most unauthenticated connections at once from one IPv4 address or IPv6 /64.
    #[arg(long, env = "WARD_RELAY_MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = DEF.max_unauthenticated_per_address)]
    max_unauthenticated_per_address: usize,
    /// New connections per second one IPv4 address or IPv6 /64 may open
    /// (bursts of accept-burst-per-address); more are dropped at accept.
    #[arg(long, env = "WARD_RELAY_ACCEPT_RATE_PER_ADDRESS", default_value_t = DEF.accept_rate_per_address)]
    accept_rate_per_address: f64,
    /// Connections one source may open in a burst above that rate.
    #[arg(long, env = "WARD_RELAY_ACCEPT_BURST_PER_ADDRESS", default_value_t = DEF.accept_burst_per_address)]
    accept_burst_per_address: u32,
    /// Seconds without anything read (not even a pong) before an
    /// authenticated connection is closed.
    #[arg(long, env = "WARD_RELAY_IDLE_TIMEOUT_SECS", default_value_t = DEF.idle_timeout.as_secs())]
    idle_timeout_secs: u64,
    /// Seconds between WebSocket pings.
    #[arg(long, env = "WARD_RELAY_PING_INTERVAL_SECS", default_value_t = DEF.ping_interval.as_secs())]
    ping_interval_secs: u64,
    /// Undelivered queue entries a user's devices may have stored, all
    /// together; over it: QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_RELAY_MAX_USER_PENDING_ENTRIES", default_value_t = DEF.max_user_pending_entries)]
    max_user_pending_entries: u64,
    /// Undelivered payload bytes a user's devices may have stored; over it: QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_RELAY_MAX_USER_PENDING_BYTES", default_value_t = DEF.max_user_pending_bytes)]
    max_user_pending_bytes: u64,
    /// Undelivered entries one mailbox may hold; over it: QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_RELAY_MAX_MAILBOX_ENTRIES", default_value_t = DEF.max_mailbox_entries)]
    max_mailbox_entries: u64,
    /// Largest attachment blob accepted, in bytes (2 GiB by default).
    #[arg(long, env = "WARD_RELAY_MAX_BLOB_BYTES", default_value_t = DEF.max_blob_bytes)]
    max_blob_bytes: u64,
    /// Bytes of attachment blobs a user's devices may have stored or be
    /// uploading at once; over it: QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_RELAY_MAX_USER_BLOB_BYTES", default_value_t = DEF.max_user_blob_bytes)]
    max_user_blob_bytes: u64,
    /// Seconds a device-link rendezvous lives from its opening, waiting and
    /// piping together (SECURITY.md §9.3).
    #[arg(long, env = "WARD_RELAY_LINK_TTL_SECS", default_value_t = DEF.link_ttl.as_secs())]
    link_ttl_secs: u64,
    /// Most bytes through one device-link pipe, both ways together (256 MiB
    /// by default); over it: both sides closed TOO_BIG.
    #[arg(long, env = "WARD_RELAY_LINK_MAX_BYTES", default_value_t = DEF.link_max_bytes)]
    link_max_bytes: u64,
    /// Most device-link rendezvous waiting for their new device at once.
    #[arg(long, env = "WARD_RELAY_MAX_LINKS_WAITING", default_value_t = DEF.max_links_waiting)]
    max_links_waiting: usize,
    /// Directory of attachment blob files; default: beside --db, <db>.blobs.
    #[arg(long, env = "WARD_RELAY_BLOB_DIR", value_name = "DIR")]
    blob_dir: Option<PathBuf>,
    /// Hours an unfinished upload is kept without being resumed.
    #[arg(long, env = "WARD_RELAY_BLOB_ABANDON_HOURS", default_value_t = 24)]
    blob_abandon_hours: u64,
    /// Days an undelivered message is kept (and a blob not fetched by all its readers).
    #[arg(long, env = "WARD_RELAY_RETENTION_DAYS", default_value_t = 30)]
    retention_days: u64,
    /// Seconds between retention sweeps.
    #[arg(long, env = "WARD_RELAY_SWEEP_INTERVAL_SECS", default_value_t = 600)]
    sweep_interval_secs: u64,
    /// Memory for verified user logs, in MiB (least recently used users are
    /// evicted past it and verified again at their next login).
    #[arg(long, env = "WARD_RELAY_LOG_CACHE_MIB", default_value_t = 128)]
    log_cache_mib: usize,
    /// Push webhook (http://host[:port]/path) that wakes offline devices
    /// with their registered token and nothing else (SECURITY.md §9.2).
    /// None: tokens are stored, no device is woken.
    #[arg(long, env = "WARD_RELAY_PUSH_WEBHOOK", value_name = "URL")]
    push_webhook: Option<String>,
    /// Allow --push-webhook over plain http:// to a host that is not
    /// loopback (the token then crosses the network in clear).
    #[arg(long, env = "WARD_RELAY_PUSH_WEBHOOK_INSECURE")]
    push_webhook_insecure: bool,
    /// PEM CA certificate(s) to trust for an https:// --push-webhook (a
    /// private CA); default: the public web roots.
    #[arg(long, env = "WARD_RELAY_PUSH_WEBHOOK_CA", value_name = "FILE")]
    push_webhook_ca: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Print the effective configuration as a TOML file (`--config` reads it back).
    PrintConfig,
    /// Print this relay's service public key (for the keyserver's
    /// --relay-key), creating the key file if it does not exist.
    ServiceKey,
    /// Copy the database, consistently, while the relay runs (SQLite's
    /// online backup). Restore: stop the relay, put the copy in place of
    /// --db (removing its -wal and -shm files), start it. See OPERATIONS.md.
    Backup {
        /// The new backup file (never overwritten).
        to: PathBuf,
    },
    /// Restore a backup as --db (the relay stopped; --db and its -wal/-shm
    /// moved away first). Sequence numbers jump ahead, so that devices that
    /// saw later messages than the backup holds miss none of the new ones.
    Restore {
        /// The backup file.
        from: PathBuf,
    },
}

const DEF: Limits = Limits::DEFAULT;

fn service_key_path(args: &Args) -> PathBuf {
    args.service_key.clone().unwrap_or_else(|| {
        let mut p = args.db.clone().into_os_string();
        p.push(".service-key");
        PathBuf::from(p)
    })
}

fn keyserver_link(
    args: &Args,
) -> Result<Option<ward_relay::keyserver_link::KeyserverLink>, String> {
    let Some(url) = &args.keyserver_url else {
        return Ok(None);
    };
    let key = ward_relay::keyserver_link::load_or_create_service_key(&service_key_path(args))
        .map_err(|e| e.to_string())?;
    let mut link =
        ward_relay::keyserver_link::KeyserverLink::new(url.clone(), std::sync::Arc::new(key));
    link.instance = args.keyserver_instance.clone();
    if let Some(ca) = &args.keyserver_ca {
        link.tls = ward_net::tls::ClientTls::pinned_ca_file(ca)
            .map_err(|e| format!("--keyserver-ca: {e}"))?;
    }
    Ok(Some(link))
}

fn config(args: &Args) -> Result<Config, String> {
    let root = args
        .org_root
        .as_deref()
        .ok_or("--org-root (or WARD_RELAY_ORG_ROOT, or org-root in --config) is required")?;
    let root = hex::decode(root.trim()).map_err(|e| format!("--org-root: {e}"))?;
    let root = SigningPublicKey::from_bytes(&root).map_err(|e| format!("--org-root: {e}"))?;
    let mut config = Config::new(&args.db, root);
    config.instance = args.instance.clone();
    let d = Limits::default();
    let mut net = d.net;
    net.max_frame_bytes = args.max_frame_bytes;
    net.auth_timeout = Duration::from_secs(args.auth_timeout_secs);
    net.max_preauth_frame_bytes = args.max_preauth_frame_bytes;
    config.limits = Limits {
        net,
        max_recipients: args.max_recipients,
        max_connections: args.max_connections,
        send_rate_per_sec: args.send_rate,
        send_burst: args.send_burst,
        blob_bytes_per_sec: args.blob_rate,
        blob_burst_bytes: u32::try_from(args.blob_rate / 2).unwrap_or(u32::MAX),
        outbound_queue: args.outbound_queue,
        outbound_bytes: args.outbound_bytes,
        global_outbound_bytes: args.global_outbound_bytes,
        slow_consumer_timeout: Duration::from_millis(args.slow_consumer_ms),
        tcp_keepalive: match args.tcp_keepalive_secs {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
        max_unauthenticated: args.max_unauthenticated,
        max_unauthenticated_per_address: args.max_unauthenticated_per_address,
        accept_rate_per_address: args.accept_rate_per_address,
        accept_burst_per_address: args.accept_burst_per_address,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        ping_interval: Duration::from_secs(args.ping_interval_secs.max(1)),
        max_user_pending_entries: args.max_user_pending_entries,
        max_user_pending_bytes: args.max_user_pending_bytes,
        max_mailbox_entries: args.max_mailbox_entries,
        max_blob_bytes: args.max_blob_bytes,
        max_user_blob_bytes: args.max_user_blob_bytes,
        link_ttl: Duration::from_secs(args.link_ttl_secs.max(1)),
        link_max_bytes: args.link_max_bytes,
        max_links_waiting: args.max_links_waiting,
        ..d
    };
    if let Some(dir) = &args.blob_dir {
        config.blob_dir = dir.clone();
    }
    config.blob_abandon_after = Duration::from_secs(args.blob_abandon_hours.saturating_mul(3600));
    config.retention = Duration::from_secs(args.retention_days.saturating_mul(86_400));
    config.sweep_interval = Duration::from_secs(args.sweep_interval_secs.max(1));
    config.log_cache_bytes = args.log_cache_mib.saturating_mul(1 << 20);
    config.keyserver_link = keyserver_link(args)?;
    if let Some(url) = &args.push_webhook {
        let mut push = ward_relay::PushConfig::webhook(url.clone());
        push.allow_plain_remote = args.push_webhook_insecure;
        if let Some(ca) = &args.push_webhook_ca {
            push.tls = ward_net::tls::ClientTls::pinned_ca_file(ca)
                .map_err(|e| format!("--push-webhook-ca: {e}"))?;
        }
        // Refused here, before serving, rather than at the first wake-up.
        ward_relay::push::WebhookGateway::new(
            &push.webhook,
            push.allow_plain_remote,
            push.tls.clone(),
        )
        .map_err(|e| format!("--push-webhook: {e}"))?;
        config.push = Some(push);
    }
    Ok(config)
}

const ENV_PREFIX: &str = "WARD_RELAY";

#[tokio::main]
async fn main() -> ExitCode {
    let (args, matches) = match ward_ops::layered::parse_into::<Args>(ENV_PREFIX) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ward-relay: {e}");
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
        Some(Cmd::ServiceKey) => {
            let path = service_key_path(&args);
            return match ward_relay::keyserver_link::load_or_create_service_key(&path) {
                Ok(k) => {
                    println!("{}", hex::encode(k.public_key().as_bytes()));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ward-relay: {e}");
                    ExitCode::from(1)
                }
            };
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
                    eprintln!("ward-relay: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Cmd::Restore { from }) => {
            let restored = ward_ops::backup::restore(from, &args.db)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    let mut db = ward_relay::storage::open(&args.db).map_err(|e| e.to_string())?;
                    ward_relay::storage::after_restore(&mut db).map_err(|e| e.to_string())
                });
            return match restored {
                Ok(()) => {
                    println!(
                        "restored {} from {}; start the relay",
                        args.db.display(),
                        from.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ward-relay: restore: {e}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }
    ward_ops::logging::init(args.log_format, "info");
    let mut config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ward-relay: {e}");
            return ExitCode::from(2);
        }
    };
    config.tls = match args.tls.acceptor() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ward-relay: {e}");
            return ExitCode::from(2);
        }
    };
    // Installed before anything says it is ready (see ward_net::signal).
    let stop = match ward_net::signal::stop() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ward-relay: cannot listen for signals: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ward-relay: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
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
                    "ward-relay: cannot listen on {} for the admin listener: {e}",
                    args.admin_listen
                );
                return ExitCode::from(1);
            }
        }
    }
    if let Ok(addr) = listener.local_addr() {
        if let Some(w) = ward_ops::instance::default_instance_warning(
            "ward-relay",
            &config.instance,
            ward_core::auth::DEFAULT_INSTANCE,
            addr,
        ) {
            tracing::warn!("{w}");
        }
        // Scripts and tests read the bound port from this line.
        tracing::info!(tls = config.tls.is_tls(), "serving");
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ward-relay listening on {addr}");
        let _ = out.flush();
    }
    match ward_relay::run(listener, config, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-relay: {e}");
            ExitCode::from(1)
        }
    }
}
