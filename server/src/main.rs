//! `ward-relay`: runs the relay until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ward_core::keys::SigningPublicKey;
use ward_relay::{Config, Limits};

/// Ward's relay: durable store-and-forward of ciphertext.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, env = "WARD_RELAY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// SQLite database file.
    #[arg(long, env = "WARD_RELAY_DB", default_value = "ward-relay.db")]
    db: PathBuf,
    /// The organisation root public key (Ed25519, 64 hex digits).
    #[arg(long, env = "WARD_RELAY_ORG_ROOT")]
    org_root: String,
    /// This relay's instance id (bound into the handshake; distinct per deployment).
    #[arg(long, env = "WARD_RELAY_INSTANCE", default_value = ward_core::auth::DEFAULT_INSTANCE)]
    instance: String,
    /// Largest frame accepted, in bytes.
    #[arg(long, env = "WARD_RELAY_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Seconds an unauthenticated connection has to authenticate.
    #[arg(long, env = "WARD_RELAY_AUTH_TIMEOUT_SECS")]
    auth_timeout_secs: Option<u64>,
    /// Most recipient devices per message.
    #[arg(long, env = "WARD_RELAY_MAX_RECIPIENTS")]
    max_recipients: Option<usize>,
    /// Most simultaneous connections (default 10000; lowered at start to the
    /// file-descriptor limit minus 128, after raising the soft limit to the
    /// hard one).
    #[arg(long, env = "WARD_RELAY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Sustained sends per second per device.
    #[arg(long, env = "WARD_RELAY_SEND_RATE")]
    send_rate: Option<f64>,
    /// Sends a device may burst above the rate.
    #[arg(long, env = "WARD_RELAY_SEND_BURST")]
    send_burst: Option<u32>,
    /// Frames queued towards one connection.
    #[arg(long, env = "WARD_RELAY_OUTBOUND_QUEUE")]
    outbound_queue: Option<usize>,
    /// Payload bytes queued towards one connection.
    #[arg(long, env = "WARD_RELAY_OUTBOUND_BYTES")]
    outbound_bytes: Option<usize>,
    /// Payload bytes queued towards all connections together.
    #[arg(long, env = "WARD_RELAY_GLOBAL_OUTBOUND_BYTES")]
    global_outbound_bytes: Option<usize>,
    /// Milliseconds a full outbound queue is tolerated before SLOW_CONSUMER.
    #[arg(long, env = "WARD_RELAY_SLOW_CONSUMER_MS")]
    slow_consumer_ms: Option<u64>,
    /// TCP keepalive idle seconds on accepted sockets (0: off).
    #[arg(long, env = "WARD_RELAY_TCP_KEEPALIVE_SECS")]
    tcp_keepalive_secs: Option<u64>,
    /// Largest frame accepted before login, in bytes (default 262144: an
    /// AuthResponse with its log).
    #[arg(long, env = "WARD_RELAY_MAX_PREAUTH_FRAME_BYTES")]
    max_preauth_frame_bytes: Option<usize>,
    /// Most unauthenticated connections at once, from everyone (default 1024).
    #[arg(long, env = "WARD_RELAY_MAX_UNAUTHENTICATED")]
    max_unauthenticated: Option<usize>,
    /// Most unauthenticated connections at once from one IPv4 address or
    /// IPv6 /64 (default 64).
    #[arg(long, env = "WARD_RELAY_MAX_UNAUTHENTICATED_PER_ADDRESS")]
    max_unauthenticated_per_address: Option<usize>,
    /// New connections per second one IPv4 address or IPv6 /64 may open
    /// (default 50, bursts of 500); more are dropped at accept.
    #[arg(long, env = "WARD_RELAY_ACCEPT_RATE_PER_ADDRESS")]
    accept_rate_per_address: Option<f64>,
    /// Seconds without anything read (not even a pong) before an
    /// authenticated connection is closed (default 120).
    #[arg(long, env = "WARD_RELAY_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<u64>,
    /// Seconds between WebSocket pings (default 30).
    #[arg(long, env = "WARD_RELAY_PING_INTERVAL_SECS")]
    ping_interval_secs: Option<u64>,
    /// Undelivered queue entries a user's devices may have stored, all
    /// together (default 100000); over it: QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_RELAY_MAX_USER_PENDING_ENTRIES")]
    max_user_pending_entries: Option<u64>,
    /// Undelivered payload bytes a user's devices may have stored (default
    /// 1073741824); over it: QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_RELAY_MAX_USER_PENDING_BYTES")]
    max_user_pending_bytes: Option<u64>,
    /// Undelivered entries one mailbox may hold (default 20000); over it:
    /// QUOTA_EXCEEDED.
    #[arg(long, env = "WARD_RELAY_MAX_MAILBOX_ENTRIES")]
    max_mailbox_entries: Option<u64>,
    /// Days an undelivered message is kept.
    #[arg(long, env = "WARD_RELAY_RETENTION_DAYS", default_value_t = 30)]
    retention_days: u64,
    /// Seconds between retention sweeps.
    #[arg(long, env = "WARD_RELAY_SWEEP_INTERVAL_SECS", default_value_t = 600)]
    sweep_interval_secs: u64,
    /// Memory for verified user logs, in MiB (least recently used users are
    /// evicted past it and verified again at their next login).
    #[arg(long, env = "WARD_RELAY_LOG_CACHE_MIB", default_value_t = 64)]
    log_cache_mib: usize,
}

fn config(args: &Args) -> Result<Config, String> {
    let root = hex::decode(args.org_root.trim()).map_err(|e| format!("--org-root: {e}"))?;
    let root = SigningPublicKey::from_bytes(&root).map_err(|e| format!("--org-root: {e}"))?;
    let mut config = Config::new(&args.db, root);
    config.instance = args.instance.clone();
    let d = Limits::default();
    let mut net = d.net;
    if let Some(v) = args.max_frame_bytes {
        net.max_frame_bytes = v;
    }
    if let Some(v) = args.auth_timeout_secs {
        net.auth_timeout = Duration::from_secs(v);
    }
    if let Some(v) = args.max_preauth_frame_bytes {
        net.max_preauth_frame_bytes = v;
    }
    config.limits = Limits {
        net,
        max_recipients: args.max_recipients.unwrap_or(d.max_recipients),
        max_connections: args.max_connections.unwrap_or(d.max_connections),
        send_rate_per_sec: args.send_rate.unwrap_or(d.send_rate_per_sec),
        send_burst: args.send_burst.unwrap_or(d.send_burst),
        outbound_queue: args.outbound_queue.unwrap_or(d.outbound_queue),
        outbound_bytes: args.outbound_bytes.unwrap_or(d.outbound_bytes),
        global_outbound_bytes: args
            .global_outbound_bytes
            .unwrap_or(d.global_outbound_bytes),
        slow_consumer_timeout: args
            .slow_consumer_ms
            .map(Duration::from_millis)
            .unwrap_or(d.slow_consumer_timeout),
        tcp_keepalive: match args.tcp_keepalive_secs {
            None => d.tcp_keepalive,
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
        },
        max_unauthenticated: args.max_unauthenticated.unwrap_or(d.max_unauthenticated),
        max_unauthenticated_per_address: args
            .max_unauthenticated_per_address
            .unwrap_or(d.max_unauthenticated_per_address),
        accept_rate_per_address: args
            .accept_rate_per_address
            .unwrap_or(d.accept_rate_per_address),
        idle_timeout: args
            .idle_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(d.idle_timeout),
        ping_interval: args
            .ping_interval_secs
            .map(Duration::from_secs)
            .unwrap_or(d.ping_interval),
        max_user_pending_entries: args
            .max_user_pending_entries
            .unwrap_or(d.max_user_pending_entries),
        max_user_pending_bytes: args
            .max_user_pending_bytes
            .unwrap_or(d.max_user_pending_bytes),
        max_mailbox_entries: args.max_mailbox_entries.unwrap_or(d.max_mailbox_entries),
        ..d
    };
    config.retention = Duration::from_secs(args.retention_days.saturating_mul(86_400));
    config.sweep_interval = Duration::from_secs(args.sweep_interval_secs.max(1));
    config.log_cache_bytes = args.log_cache_mib.saturating_mul(1 << 20);
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
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
    if let Ok(addr) = listener.local_addr() {
        // Scripts and tests read the bound port from this line.
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
