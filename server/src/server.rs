//! The accept loop, the retention sweeper and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::connection;
use crate::error::RelayError;
use crate::metrics::RelayMetrics;
use crate::registry::Registry;
use crate::state::Shared;
use crate::storage::{self, Swept};
use crate::writer::{self, now_ms};
use ward_net::peers::Reason;

/// Commands waiting for the writer before senders wait in turn.
const WRITER_QUEUE: usize = 8192;
/// Refused connections being told why at once (as the keyserver); more are
/// dropped without a close frame.
const REFUSALS_IN_FLIGHT: usize = 64;
/// At most one log line per this interval about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Runs the relay on `listener` until `shutdown` resolves, then stops
/// accepting, closes every connection with `GOING_AWAY` (waiting up to
/// `config.shutdown_grace`), commits what the writer holds and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    if let Ok(addr) = listener.local_addr() {
        config
            .tls
            .check(addr)
            .map_err(|e| RelayError::Config(e.to_string()))?;
    }
    let mut db = storage::open(&config.db_path)?;
    storage::migrate(&mut db)?;
    let metrics = RelayMetrics::new(&config.metrics);
    let (pusher, push_worker) = start_push(&config, &db, &metrics)?;
    let registry = Arc::new(Registry::with_pusher(pusher));
    let quotas = storage::Quotas {
        user_entries: config.limits.max_user_pending_entries,
        user_bytes: config.limits.max_user_pending_bytes,
        mailbox_entries: config.limits.max_mailbox_entries,
    };
    let (writer, writer_thread) = writer::spawn_with(
        db,
        config.max_batch,
        WRITER_QUEUE,
        registry.clone(),
        quotas,
        Some(metrics.clone()),
    )?;
    config.metrics.gauge_fn(
        "ward_relay_writer_queue_depth",
        "Commands waiting for the writer (group commit).",
        writer.queue_depth_fn(),
    );
    let ready = config.metrics.clone();
    // Raise the descriptor limit, and lower the cap to what it allows.
    let soft = ward_net::fdlimit::raise();
    let max_connections = ward_net::fdlimit::connection_cap(
        config.limits.max_connections.clamp(1, u32::MAX as usize),
        soft,
    );
    if max_connections < config.limits.max_connections {
        warn!(
            max_connections,
            fd_limit = soft,
            "connection cap lowered to fit the file-descriptor limit"
        );
    }
    let gate = ward_net::peers::Gate::with_rate(
        config.limits.max_unauthenticated_per_address,
        config.limits.max_unauthenticated,
        config.limits.accept_rate_per_address,
        config.limits.accept_burst_per_address,
    );
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let refusal_log = ward_net::peers::RefusalLog::new(REFUSAL_LOG_INTERVAL);
    let grace = config.shutdown_grace;
    // The blob store's cap is the configured one: `BlobOpen` checks it first.
    let blobs: Arc<dyn crate::blobs::BlobStore> = Arc::new(
        crate::blobs::FsBlobStore::open(&config.blob_dir, config.limits.max_blob_bytes)
            .map_err(|e| RelayError::Config(format!("blob directory: {e}")))?,
    );
    let shared = Arc::new(Shared::new(
        config,
        writer.clone(),
        registry,
        metrics,
        blobs,
    ));
    crate::blob_session::refresh_totals(&shared).await;
    let (outbound, budget) = (
        shared.outbound.clone(),
        crate::state::global_permits(&shared.config),
    );
    shared.config.metrics.gauge_fn(
        "ward_relay_outbound_bytes_queued",
        "Payload bytes queued towards all connections (bounded by global-outbound-bytes).",
        move || budget.saturating_sub(outbound.available_permits()) as f64,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn(sweep_loop(shared.clone(), stop_rx.clone()));
    let link = shared.config.keyserver_link.clone().map(|l| {
        tokio::spawn(crate::keyserver_link::run(
            shared.clone(),
            l,
            stop_rx.clone(),
        ))
    });
    let permits = Arc::new(Semaphore::new(max_connections));
    info!(addr = ?listener.local_addr().ok(), "relay listening");
    // The database is open and migrated, the writer runs: ready.
    ready.set_ready(true);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(idle) = shared.config.limits.tcp_keepalive {
                        set_keepalive(&stream, idle);
                    }
                    let tls = shared.config.tls.clone();
                    let handshake_time = shared.config.limits.net.auth_timeout;
                    let admitted = match permits.clone().try_acquire_owned() {
                        Ok(permit) => gate
                            .admit(addr.ip())
                            .map(|ticket| (permit, ticket))
                            .map_err(Reason::from),
                        Err(_) => Err(Reason::TooMany),
                    };
                    match admitted {
                        Ok((permit, ticket)) => {
                            let shared = shared.clone();
                            let stop = stop_rx.clone();
                            tokio::spawn(async move {
                                shared.metrics.accepted.inc();
                                let _open = shared.metrics.connections.track();
                                // The TLS handshake runs under the ticket: it
                                // counts as unauthenticated.
                                // Boxed, like the handshake in `serve`: the TLS
                                // handshake's state is over once it is done.
                                match Box::pin(tls.accept_within(stream, handshake_time)).await {
                                    Some(stream) => {
                                        connection::serve(stream, addr, shared.clone(), stop, ticket)
                                            .await
                                    }
                                    None => shared.metrics.handshake_failures.inc(),
                                }
                                drop(permit);
                            });
                        }
                        Err(Reason::Rate) => {
                            drop(stream);
                            refusal_log.refused("relay", Reason::Rate);
                        }
                        Err(why) => {
                            // A few are told why (close code); past that they
                            // are dropped at once: refusing must cost little.
                            let why = match refusals.clone().try_acquire_owned() {
                                Ok(p) => {
                                    let limits = shared.config.limits;
                                    shared.metrics.closed(ward_net::close::TOO_MANY_CONNECTIONS);
                                    tokio::spawn(async move {
                                        let grace = Duration::from_secs(1);
                                        if let Some(stream) = tls.accept_within(stream, grace).await {
                                            connection::refuse_busy(stream, limits, p).await;
                                        }
                                    });
                                    why
                                }
                                Err(_) => Reason::Dropped,
                            };
                            refusal_log.refused("relay", why);
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    ready.set_ready(false);
    info!("shutting down: no new connections");
    drop(listener);
    let _ = stop_tx.send(true);
    if timeout(grace, permits.acquire_many(max_connections as u32))
        .await
        .is_err()
    {
        warn!("connections still open after the shutdown grace period");
    }
    let _ = sweeper.await;
    if let Some(link) = link {
        let _ = link.await;
    }
    writer.stop().await;
    match tokio::task::spawn_blocking(move || writer_thread.join()).await {
        Ok(Ok(())) => info!("writer flushed; relay stopped"),
        _ => error!("writer thread failed"),
    }
    // Wake-ups not yet sent are lost: the devices see their mailbox at
    // their next connection anyway.
    if let Some(w) = push_worker {
        w.abort();
    }
    Ok(())
}

/// The pusher, with the stored tokens, and the worker feeding the
/// configured gateway (none: tokens are kept, nothing is sent).
fn start_push(
    config: &Config,
    db: &rusqlite::Connection,
    metrics: &RelayMetrics,
) -> Result<(crate::push::Pusher, Option<tokio::task::JoinHandle<()>>), RelayError> {
    use crate::push::{Pusher, WebhookGateway, WorkerMetrics, worker};
    let tokens = storage::push_tokens(db)?;
    let Some(push) = &config.push else {
        info!(
            tokens = tokens.len(),
            "no push gateway configured: push tokens are stored, no device is woken"
        );
        return Ok((Pusher::new(tokens, None, None), None));
    };
    let gateway = WebhookGateway::new(&push.webhook, push.allow_plain_remote, push.tls.clone())
        .map_err(|e| RelayError::Config(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(crate::push::QUEUE);
    let task = tokio::spawn(worker(
        Arc::new(gateway),
        rx,
        push.retry_delays.clone(),
        WorkerMetrics {
            sent: metrics.push_sent.clone(),
            failed: metrics.push_failed.clone(),
        },
    ));
    info!(tokens = tokens.len(), "push webhook configured");
    Ok((
        Pusher::new(tokens, Some(tx), Some(metrics.push_dropped.clone())),
        Some(task),
    ))
}

fn set_keepalive(stream: &tokio::net::TcpStream, idle: Duration) {
    let params = socket2::TcpKeepalive::new().with_time(idle);
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
    let params = params.with_interval(Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&params) {
        warn!(error = %e, "could not enable TCP keepalive");
    }
}

/// Messages expired per writer command: other commands get the writer
/// between steps, so a large expiry never stalls sends.
const SWEEP_STEP: usize = 1000;

async fn sweep(shared: &Shared, stop: &watch::Receiver<bool>) {
    let retention = u64::try_from(shared.config.retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms().saturating_sub(retention);
    let mut total = Swept::default();
    loop {
        match shared.writer.sweep(cutoff, SWEEP_STEP).await {
            Ok(s) => {
                total.sends += s.sends;
                total.entries += s.entries;
                total.messages += s.messages;
                total.mailboxes += s.mailboxes;
                if (s.sends < SWEEP_STEP && s.mailboxes < SWEEP_STEP) || *stop.borrow() {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "retention sweep failed");
                break;
            }
        }
    }
    if total.sends > 0 || total.mailboxes > 0 {
        info!(
            messages = total.sends,
            entries = total.entries,
            mailboxes = total.mailboxes,
            "retention sweep expired undelivered messages"
        );
    }
}

async fn sweep_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick =
        tokio::time::interval(shared.config.sweep_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                sweep(&shared, &stop).await;
                crate::blob_session::sweep(&shared).await;
            }
            _ = stop.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_tcp_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        set_keepalive(&stream, Duration::from_secs(60));
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
    }
}
