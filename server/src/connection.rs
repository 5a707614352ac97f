//! One connection: WebSocket upgrade, device authentication, then the
//! session loop (inbound frames, deliveries, close signals).
//!
//! ```text
//!             +-------------------- session task -------------------+
//!  socket <-> | select! { close signal | shutdown | delivery ended | |
//!             |           outbound frame -> socket (timed)          |
//!             |           inbound frame -> writer -> reply (timed) }|
//!             +-----------------------------^-----------------------+
//!                      bounded queue (frames and bytes)
//!             +-------------------- delivery task ------------------+
//!             | backlog from the store after cursor; then the       |
//!             | writer's hints (committed entries) as they come;    |
//!             | store again on a dropped hint or a seq gap          |
//!             +-----------------------------------------------------+
//! ```
//! A reader that does not keep up fills the bounded queue; the delivery task
//! then gives up after `slow_consumer_timeout` and the connection closes with
//! `SLOW_CONSUMER`. Its entries stay stored: nothing is lost.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::timeout;
use tracing::{debug, info, warn};
use ward_core::ids::valid_user_id;
use ward_net::handshake::{self, Peer};
use ward_net::tls::ServerStream;
use ward_net::{Conn, close};
use ward_proto::v1::{
    Ack, ClientFrame, Deliver, ErrorCode, LogAccepted, PublishLog, PushRegistered, RegisterPush,
    RelayError, Send, SendAck, ServerFrame, client_frame, server_frame,
};

use crate::config::Limits;
use crate::logs;
use crate::registry::{CloseReason, Registration};
use crate::state::Shared;
use crate::storage::{self, Mailbox, NewMessage, Quota, SendOutcome};
use ward_net::rate::TokenBucket;

pub(crate) const GOING_AWAY: CloseReason = CloseReason {
    code: close::GOING_AWAY,
    reason: "relay shutting down",
};
const SLOW: CloseReason = CloseReason {
    code: close::SLOW_CONSUMER,
    reason: "not reading fast enough; messages kept",
};
const BUSY: CloseReason = CloseReason {
    code: close::SLOW_CONSUMER,
    reason: "relay busy; messages kept, reconnect",
};
const IDLE: CloseReason = CloseReason {
    code: close::NORMAL,
    reason: "idle",
};
const INTERNAL: CloseReason = CloseReason {
    code: close::INTERNAL_ERROR,
    reason: "internal error",
};

/// Resolves once the relay is shutting down.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the server is gone: stop as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves one accepted TCP connection to the end.
pub async fn serve(
    stream: ServerStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    ticket: ward_net::peers::Ticket,
) {
    let Some((conn, path)) = Box::pin(upgrade(stream, addr, &shared)).await else {
        return;
    };
    if path == crate::link::LINK_JOIN_PATH {
        // No handshake: a new device has no identity in any log yet
        // (SECURITY.md §9.3). The ticket stays with it until it is paired.
        return Box::pin(crate::link::join(conn, addr, shared, shutdown, ticket)).await;
    }
    // Boxed: the handshake's state (the presented log's verification among
    // them) is large and over once the device is in; inline, every idle
    // session's future would keep its size (issue 15).
    let Some((conn, mailbox)) =
        Box::pin(authenticate(conn, addr, &shared, &mut shutdown, ticket)).await
    else {
        return;
    };
    if path == crate::blob_session::BLOB_PATH {
        // Boxed: a blob connection's state is not every message session's.
        return Box::pin(blob_connection(conn, shared, mailbox, shutdown)).await;
    }
    if path == crate::link::LINK_PATH {
        return Box::pin(crate::link::open(conn, shared, mailbox, shutdown)).await;
    }
    session(conn, shared, mailbox, shutdown).await;
}

/// An authenticated connection on the blob path (§16.9), to its close.
async fn blob_connection(
    mut conn: Conn<ServerStream>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    shutdown: watch::Receiver<bool>,
) {
    let limits = shared.config.limits;
    let end = Box::pin(crate::blob_session::session(
        &mut conn,
        shared.clone(),
        mailbox,
        shutdown,
    ))
    .await;
    let end = end.unwrap_or(CloseReason {
        code: close::NORMAL,
        reason: "",
    });
    shared.metrics.closed(end.code);
    finish(conn, Some(end), limits.close_grace).await;
}

/// The WebSocket upgrade (every path has one): the connection and its
/// path, or `None` once the peer was answered.
async fn upgrade(
    stream: ServerStream,
    addr: SocketAddr,
    shared: &Arc<Shared>,
) -> Option<(Conn<ServerStream>, String)> {
    let limits = shared.config.limits;
    match timeout(
        limits.net.auth_timeout,
        ward_net::conn::accept_with_path(stream, &limits.net),
    )
    .await
    {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            debug!(%addr, error = %e, "websocket upgrade failed");
            None
        }
        Err(_) => {
            debug!(%addr, "websocket upgrade timed out");
            None
        }
    }
}

/// The device handshake on an upgraded connection: the authenticated
/// connection and its mailbox, or `None` once the peer was answered
/// (refused, timed out, or the relay is stopping).
async fn authenticate(
    mut conn: Conn<ServerStream>,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    ticket: ward_net::peers::Ticket,
) -> Option<(Conn<ServerStream>, Mailbox)> {
    let limits = shared.config.limits;
    let mut nonce = [0u8; 32];
    if getrandom::fill(&mut nonce).is_err() {
        warn!("no randomness for a challenge");
        shared.metrics.closed(INTERNAL.code);
        finish(conn, Some(INTERNAL), limits.close_grace).await;
        return None;
    }
    let check_shared = shared.clone();
    let audience =
        handshake::Audience::relay(shared.config.org_root, shared.config.instance.clone());
    let authenticated = {
        let auth = handshake::server(
            &mut conn,
            &audience,
            nonce,
            &limits.net,
            move |peer| async move { check(&check_shared, peer).await },
        );
        tokio::select! {
            r = auth => Some(r),
            _ = stopped(shutdown) => None,
        }
    };
    let peer = match authenticated {
        None => {
            shared.metrics.closed(GOING_AWAY.code);
            finish(conn, Some(GOING_AWAY), limits.close_grace).await;
            return None;
        }
        Some(Err(e)) => {
            debug!(%addr, error = %e, "handshake refused");
            let (code, reason) = ward_net::conn::close_code_for(&e);
            shared.metrics.closed(code);
            finish(conn, Some(CloseReason { code, reason }), limits.close_grace).await;
            return None;
        }
        Some(Ok(peer)) => peer,
    };
    // Logged in: no longer counted as unauthenticated, and full-size frames.
    drop(ticket);
    let conn = conn.authenticated().await;
    let mailbox = Mailbox {
        user_id: peer.user_id,
        device_id: *peer.device.as_bytes(),
    };
    debug!(%addr, user = %mailbox.user_id, "device authenticated");
    Some((conn, mailbox))
}

/// Refuses a connection over the limit with `TOO_MANY_CONNECTIONS`, holding
/// one of the few refusal places (`_place`) meanwhile.
pub async fn refuse_busy(stream: ServerStream, limits: Limits, _place: OwnedSemaphorePermit) {
    let grace = Duration::from_secs(1);
    if let Ok(Ok(conn)) = timeout(grace, ward_net::conn::accept(stream, &limits.net)).await {
        let reason = CloseReason {
            code: close::TOO_MANY_CONNECTIONS,
            reason: "too many connections",
        };
        finish(conn, Some(reason), grace).await;
    }
}

/// The device must be active in the relay's view of its user's log.
async fn check(shared: &Shared, mut peer: Peer) -> Result<Peer, ErrorCode> {
    let log = std::mem::take(&mut peer.log);
    let user = logs::refresh(shared, &peer.user_id, log).await?;
    prune_revoked(shared, &peer.user_id, &user).await;
    match user.device(&peer.device) {
        Some(d) if d.is_active() => Ok(peer),
        Some(_) => Err(ErrorCode::DeviceRevoked),
        None => Err(ErrorCode::Unauthenticated),
    }
}

/// Deletes the mailboxes of `user`'s devices that are not active in its
/// verified log (revoked, or addressed before the relay knew the log): their
/// entries can never be read. Once per log length.
pub(crate) async fn prune_revoked(
    shared: &Shared,
    user_id: &str,
    user: &ward_core::chain::VerifiedUser,
) {
    if !shared.needs_prune(user_id, user.len()) {
        return;
    }
    let u = user_id.to_owned();
    let Ok(stored) = shared.read(move |c| storage::mailbox_devices(c, &u)).await else {
        return;
    };
    let revoked: Vec<[u8; 32]> = stored
        .into_iter()
        .filter(|d| {
            ward_core::keys::SigningPublicKey::from_bytes(d)
                .ok()
                .and_then(|k| user.device(&k).map(|dev| dev.is_active()))
                != Some(true)
        })
        .collect();
    if revoked.is_empty() {
        return;
    }
    let pruned = shared
        .writer
        .prune(user_id.to_owned(), revoked.clone())
        .await;
    if pruned.is_ok() {
        // Their tokens went with their mailboxes.
        for d in revoked {
            shared.registry.pusher().remove(&Mailbox {
                user_id: user_id.to_owned(),
                device_id: d,
            });
        }
    }
    match pruned {
        Ok(n) if n > 0 => info!(
            user = user_id,
            entries = n,
            "revoked devices' mailboxes pruned"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "pruning revoked mailboxes failed"),
    }
}

/// Sends the close frame (if any) within `grace`, half-closes the socket and
/// waits for the peer to finish, so that the close frame is not lost to a
/// reset.
pub(crate) async fn finish(
    mut conn: Conn<ServerStream>,
    reason: Option<CloseReason>,
    grace: Duration,
) {
    if let Some(r) = reason {
        let _ = timeout(grace, conn.close(r.code, r.reason)).await;
    }
    let mut ws = conn.into_inner();
    let tcp = ws.get_mut();
    let _ = timeout(grace, async {
        let _ = tcp.shutdown().await;
        // On the heap: an array here made every connection's future 4 KiB
        // larger for its whole life, not just while closing (issue 15).
        let mut buf = vec![0u8; 4096];
        // A peer that keeps sending (the rest of a 20 MiB frame refused from
        // its header) is not drained for the whole grace: past a few KiB it
        // is not closing, so the socket is dropped.
        let mut drained = 0usize;
        while let Ok(n) = tcp.read(&mut buf).await {
            drained += n;
            if n == 0 || drained > MAX_DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Most bytes read from a closing peer while waiting for its close.
const MAX_DRAIN_BYTES: usize = 64 << 10;

/// A frame and the budget it holds (this connection's, and the global one)
/// until it is written.
/// A frame for the socket and the budgets it holds. Boxed: the channel
/// allocates its first 32 slots up front, 4.6 KB of unboxed frames per idle
/// connection (issue 15).
type Outbound = (
    Box<ServerFrame>,
    (OwnedSemaphorePermit, OwnedSemaphorePermit),
);

/// Payload read from the store per delivery batch (at least one entry).
const BATCH_BYTES: usize = 256 << 10;

enum DeliveryEnd {
    Slow,
    /// The global budget stayed used up for `slow_consumer_timeout`.
    Busy,
    Storage,
    Gone,
}

/// What handling one inbound frame asks of the session.
struct Outcome {
    reply: Option<ServerFrame>,
    close: Option<CloseReason>,
}

impl Outcome {
    fn reply(frame: server_frame::Frame) -> Self {
        Self {
            reply: Some(ServerFrame { frame: Some(frame) }),
            close: None,
        }
    }

    fn none() -> Self {
        Self {
            reply: None,
            close: None,
        }
    }

    fn error(code: ErrorCode, message_id: Vec<u8>, detail: &str) -> Self {
        Self::reply(server_frame::Frame::Error(RelayError {
            code: code as i32,
            message_id,
            detail: detail.to_owned(),
        }))
    }

    fn closing(mut self, code: u16, reason: &'static str) -> Self {
        self.close = Some(CloseReason { code, reason });
        self
    }
}

struct Session {
    shared: Arc<Shared>,
    mailbox: Mailbox,
    bucket: TokenBucket,
    /// The highest seq this connection has handed to the socket: an `Ack`
    /// never deletes past it (SECURITY.md §9), so a cumulative ack from a
    /// client's past (a cursor from before a relay reset, numbered from 1
    /// again) cannot delete entries it has not received.
    delivered: Arc<AtomicU64>,
}

async fn session(
    mut conn: Conn<ServerStream>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = shared.config.limits;
    let Registration {
        id: reg_id,
        notify,
        close: mut close_rx,
        hints,
        overflow,
    } = shared.registry.register(mailbox.clone());
    // A revocation stored between the handshake's check and this
    // registration found nothing to close: look again, now that any later
    // one will find this connection.
    if let Err(reason) = Box::pin(still_active(&shared, &mailbox)).await {
        shared.registry.unregister(&mailbox, reg_id);
        shared.metrics.closed(reason.code);
        finish(conn, Some(reason), limits.close_grace).await;
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(limits.outbound_queue.max(1));
    let budget = Arc::new(Semaphore::new(budget_permits(&limits)));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut delivery = tokio::spawn(deliver(
        shared.clone(),
        mailbox.clone(),
        Wake {
            notify,
            hints,
            overflow,
        },
        out_tx,
        budget,
        delivered.clone(),
    ));
    let mut s = Session {
        shared: shared.clone(),
        mailbox: mailbox.clone(),
        bucket: shared.buckets.take(&mailbox),
        delivered,
    };
    let write_timeout = limits.slow_consumer_timeout;
    // Pings keep NAT mappings open and make a vanished peer show: a peer
    // from which nothing was read for `idle_timeout` is closed.
    let mut ping = tokio::time::interval(limits.ping_interval.max(Duration::from_millis(10)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let end: Option<CloseReason> = loop {
        tokio::select! {
            biased;
            _ = ping.tick() => {
                if conn.last_seen().elapsed() >= limits.idle_timeout {
                    break Some(IDLE);
                }
                match timeout(write_timeout, conn.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => break Some(SLOW),
                }
            }
            changed = close_rx.changed() => {
                let reason = match changed {
                    Ok(()) => *close_rx.borrow(),
                    Err(_) => None,
                };
                break Some(reason.unwrap_or(CloseReason { code: close::NORMAL, reason: "" }));
            }
            _ = stopped(&mut shutdown) => break Some(GOING_AWAY),
            ended = &mut delivery => {
                break match ended {
                    Ok(DeliveryEnd::Slow) => Some(SLOW),
                    Ok(DeliveryEnd::Busy) => Some(BUSY),
                    Ok(DeliveryEnd::Storage) | Err(_) => Some(INTERNAL),
                    Ok(DeliveryEnd::Gone) => None,
                };
            }
            Some((frame, permit)) = out_rx.recv() => {
                match timeout(write_timeout, conn.send_msg(&*frame)).await {
                    Ok(Ok(())) => {
                        shared.metrics.messages_out.inc();
                        drop(permit)
                    }
                    Ok(Err(_)) => break None,
                    Err(_) => break Some(SLOW),
                }
            }
            inbound = conn.recv_msg::<ClientFrame>() => {
                let outcome = match inbound {
                    // Boxed: its state (a send's storage and log calls)
                    // would otherwise be part of every idle session's.
                    Ok(Some(frame)) => Box::pin(s.handle(frame)).await,
                    Ok(None) => break None,
                    Err(e) => {
                        let (code, reason) = ward_net::conn::close_code_for(&e);
                        debug!(user = %mailbox.user_id, error = %e, "connection failed");
                        break Some(CloseReason { code, reason });
                    }
                };
                if let Some(reply) = outcome.reply {
                    match timeout(write_timeout, conn.send_msg(&reply)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break None,
                        Err(_) => break Some(SLOW),
                    }
                }
                if let Some(close) = outcome.close {
                    break Some(close);
                }
            }
        }
    };
    delivery.abort();
    // Release the queued frames' budget now, not after the close handshake.
    drop(out_rx);
    shared.registry.unregister(&mailbox, reg_id);
    shared.buckets.park(mailbox.clone(), s.bucket);
    wake_if_unread(&shared, &mailbox).await;
    if let Some(r) = end
        && r.code != close::NORMAL
        && r.code != close::GOING_AWAY
    {
        info!(user = %mailbox.user_id, code = r.code, reason = r.reason, "closing connection");
    }
    // Also answer a peer that closed first, so its close handshake completes.
    let end = end.unwrap_or(CloseReason {
        code: close::NORMAL,
        reason: "",
    });
    shared.metrics.closed(end.code);
    finish(conn, Some(end), limits.close_grace).await;
}

/// A device that leaves with entries it has not acked (a connection that
/// died, whose deliveries went nowhere, or a client that stopped reading)
/// is offline with something waiting: that is a transition too
/// (SECURITY.md §9.2). Without this, what arrived while a dead connection
/// was still registered would wait for the next message or connection.
async fn wake_if_unread(shared: &Shared, mailbox: &Mailbox) {
    if !shared.registry.pusher().is_armed(mailbox) {
        return;
    }
    let mb = mailbox.clone();
    if let Ok(unread) = shared
        .read(move |c| storage::backlog_sizes(c, &mb, 0, 1, 1))
        .await
        && !unread.is_empty()
    {
        shared.registry.waiting_offline(mailbox);
    }
}

async fn still_active(shared: &Shared, mailbox: &Mailbox) -> Result<(), CloseReason> {
    let user = logs::refresh(shared, &mailbox.user_id, Vec::new())
        .await
        .map_err(|_| INTERNAL)?;
    let device =
        ward_core::keys::SigningPublicKey::from_bytes(&mailbox.device_id).map_err(|_| INTERNAL)?;
    match user.device(&device) {
        Some(d) if d.is_active() => Ok(()),
        _ => Err(CloseReason {
            code: close::DEVICE_REVOKED,
            reason: "device revoked",
        }),
    }
}

fn budget_permits(limits: &Limits) -> usize {
    limits.outbound_bytes.clamp(1, u32::MAX as usize)
}

/// How the writer reaches a delivery task.
struct Wake {
    notify: Arc<Notify>,
    hints: mpsc::Receiver<Box<Deliver>>,
    overflow: Arc<AtomicBool>,
}

/// Where delivered frames go, and the budgets they draw on.
struct Sink {
    shared: Arc<Shared>,
    out: mpsc::Sender<Outbound>,
    budget: Arc<Semaphore>,
    /// The session's `delivered` (highest seq queued for the socket).
    delivered: Arc<AtomicU64>,
    /// Permits of this connection's budget, and of the global one.
    own_max: usize,
    global_max: usize,
    wait: Duration,
}

impl Sink {
    /// What a payload of `len` bytes costs against the global budget: its
    /// real size (a delivery over the whole budget takes all of it).
    fn global_cost(&self, len: usize) -> usize {
        len.clamp(1, self.global_max)
    }

    /// Takes `cost` of the global budget, waiting at most `wait`: the
    /// memory that deliveries hold is bounded by the budget, not by how many
    /// connections wait for it.
    async fn reserve(&self, cost: usize) -> Result<OwnedSemaphorePermit, DeliveryEnd> {
        let cost = u32::try_from(cost.clamp(1, self.global_max)).unwrap_or(u32::MAX);
        match timeout(
            self.wait,
            self.shared.outbound.clone().acquire_many_owned(cost),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(DeliveryEnd::Gone),
            Err(_) => Err(DeliveryEnd::Busy),
        }
    }

    /// Queues one delivery for the socket, holding its budgets (the global
    /// one already taken, `global`) until written.
    async fn push(&self, d: Deliver, global: OwnedSemaphorePermit) -> Result<(), DeliveryEnd> {
        let cost = u32::try_from(d.payload.len().clamp(1, self.own_max)).unwrap_or(u32::MAX);
        let own = match timeout(self.wait, self.budget.clone().acquire_many_owned(cost)).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(DeliveryEnd::Gone),
            Err(_) => return Err(DeliveryEnd::Slow),
        };
        // Before it is queued: the client can ack it only once written.
        self.delivered.fetch_max(d.seq, Ordering::SeqCst);
        let frame = Box::new(ServerFrame {
            frame: Some(server_frame::Frame::Deliver(d)),
        });
        match self
            .out
            .send_timeout((frame, (own, global)), self.wait)
            .await
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(DeliveryEnd::Slow),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(DeliveryEnd::Gone),
        }
    }
}

/// Feeds the mailbox's entries, in seq order, into the bounded queue: the
/// backlog from the store first, then the writer's hints as they come,
/// falling back to the store whenever a hint was dropped or seqs have a gap.
/// A store batch is sized first, and its global budget taken, before its
/// payloads are read.
async fn deliver(
    shared: Arc<Shared>,
    mailbox: Mailbox,
    mut wake: Wake,
    out: mpsc::Sender<Outbound>,
    budget: Arc<Semaphore>,
    delivered: Arc<AtomicU64>,
) -> DeliveryEnd {
    let limits = shared.config.limits;
    let sink = Sink {
        own_max: budget_permits(&limits),
        global_max: crate::state::global_permits(&shared.config),
        wait: limits.slow_consumer_timeout,
        shared: shared.clone(),
        out,
        budget,
        delivered,
    };
    let mut cursor = 0u64;
    let mut need_read = true;
    loop {
        if wake.overflow.swap(false, Ordering::SeqCst) {
            need_read = true;
        }
        if !need_read {
            while let Ok(d) = wake.hints.try_recv() {
                if d.seq <= cursor {
                    continue; // already delivered from the store
                }
                if d.seq != cursor + 1 {
                    need_read = true; // a gap: the store has what is missing
                    break;
                }
                cursor = d.seq;
                let global = match sink.reserve(sink.global_cost(d.payload.len())).await {
                    Ok(g) => g,
                    Err(end) => return end,
                };
                if let Err(end) = sink.push(*d, global).await {
                    return end;
                }
            }
        }
        if need_read {
            // Every hint queued now is committed, so the read covers it.
            while wake.hints.try_recv().is_ok() {}
            need_read = false;
            loop {
                let mb = mailbox.clone();
                let n = limits.delivery_batch.max(1);
                let sizes = match shared
                    .read(move |c| storage::backlog_sizes(c, &mb, cursor, n, BATCH_BYTES))
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "reading a mailbox failed");
                        return DeliveryEnd::Storage;
                    }
                };
                let Some(&(last_seq, _)) = sizes.last() else {
                    break;
                };
                let total = sizes
                    .iter()
                    .map(|(_, len)| sink.global_cost(*len))
                    .fold(0usize, usize::saturating_add);
                let mut reserved = match sink.reserve(total).await {
                    Ok(r) => r,
                    Err(end) => return end,
                };
                let mb = mailbox.clone();
                let batch = match shared
                    .read(move |c| storage::backlog(c, &mb, cursor, sizes.len(), usize::MAX))
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, "reading a mailbox failed");
                        return DeliveryEnd::Storage;
                    }
                };
                for d in batch {
                    if d.seq > last_seq {
                        break; // not sized: read with the next batch
                    }
                    cursor = d.seq;
                    let cost = sink.global_cost(d.payload.len());
                    let global = match reserved.split(cost.min(reserved.num_permits())) {
                        Some(g) if g.num_permits() >= cost => g,
                        // Grew since it was sized (it cannot: stored
                        // payloads do not change), or the rest: top up.
                        other => {
                            drop(other);
                            match sink.reserve(cost).await {
                                Ok(g) => g,
                                Err(end) => return end,
                            }
                        }
                    };
                    if let Err(end) = sink.push(d, global).await {
                        return end;
                    }
                }
            }
            continue;
        }
        wake.notify.notified().await;
    }
}

/// An `Envelope` read for its header only: prost skips the other fields
/// without copying them, so reading the header of every `Send` costs no
/// copy of its ciphertext.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvelopeHeaderOnly {
    #[prost(bytes = "vec", tag = "1")]
    header: Vec<u8>,
}

impl ward_proto::Bounded for EnvelopeHeaderOnly {
    // The fields it reads are the Envelope's.
    fn schema() -> &'static ward_proto::bounded::Schema {
        <ward_proto::v1::Envelope as ward_proto::Bounded>::schema()
    }
}

/// The room an envelope's header names (§17.6), if the payload is an
/// envelope with a room header.
fn room_header(payload: &[u8]) -> Option<ward_proto::v1::RoomRecipient> {
    let env: EnvelopeHeaderOnly = ward_proto::decode_bounded(payload, payload.len()).ok()?;
    let header: ward_proto::v1::EnvelopeHeader =
        ward_proto::decode_bounded(&env.header, env.header.len()).ok()?;
    header.room
}

impl Session {
    /// Every recipient of a user whose log the relay holds must be an active
    /// device in it. A user the relay has no log for yet (never connected)
    /// is accepted: the sender's quota and the mailbox cap bound what such
    /// mailboxes hold, their devices are checked once the user's log
    /// arrives (others pruned), and empty ones are pruned by the sweeper.
    async fn check_recipients(
        &self,
        recipients: &[Mailbox],
    ) -> Result<(), (ErrorCode, &'static str)> {
        let mut by_user: std::collections::BTreeMap<&str, Vec<&[u8; 32]>> = Default::default();
        for r in recipients {
            by_user.entry(&r.user_id).or_default().push(&r.device_id);
        }
        for (user, devices) in by_user {
            let verified = match logs::refresh(&self.shared, user, Vec::new()).await {
                Ok(v) => v,
                Err(ErrorCode::UnknownUser) => continue,
                Err(code) => return Err((code, "recipient's log could not be verified")),
            };
            for d in devices {
                let key = ward_core::keys::SigningPublicKey::from_bytes(d)
                    .map_err(|_| (ErrorCode::Malformed, "invalid recipient device id"))?;
                match verified.device(&key) {
                    Some(dev) if dev.is_active() => {}
                    Some(_) => return Err((ErrorCode::DeviceRevoked, "recipient device revoked")),
                    None => return Err((ErrorCode::NotFound, "recipient device not in its log")),
                }
            }
        }
        Ok(())
    }

    async fn handle(&mut self, frame: ClientFrame) -> Outcome {
        match frame.frame {
            Some(client_frame::Frame::Send(send)) => self.send(send).await,
            Some(client_frame::Frame::Ack(ack)) => self.ack(ack).await,
            Some(client_frame::Frame::PublishLog(p)) => self.publish_log(p).await,
            Some(client_frame::Frame::RegisterPush(r)) => self.register_push(r).await,
            Some(
                client_frame::Frame::BlobOpen(_)
                | client_frame::Frame::BlobPiece(_)
                | client_frame::Frame::BlobStatus(_)
                | client_frame::Frame::BlobRead(_)
                | client_frame::Frame::BlobFetched(_),
            ) => Outcome::error(
                ErrorCode::Malformed,
                Vec::new(),
                "blob frames go to a blob connection (/v2/blobs)",
            )
            .closing(close::PROTOCOL_ERROR, "malformed frame"),
            None => Outcome::error(ErrorCode::Malformed, Vec::new(), "empty frame")
                .closing(close::PROTOCOL_ERROR, "malformed frame"),
        }
    }

    async fn send(&mut self, send: Send) -> Outcome {
        let limits = self.shared.config.limits;
        if !self.bucket.try_take() {
            return Outcome::error(
                ErrorCode::RateLimited,
                send.message_id,
                "send rate exceeded",
            )
            .closing(close::RATE_LIMITED, "send rate exceeded");
        }
        let Ok(message_id) = <[u8; 16]>::try_from(send.message_id.as_slice()) else {
            return Outcome::error(
                ErrorCode::Malformed,
                send.message_id,
                "message id must be 16 bytes",
            )
            .closing(close::PROTOCOL_ERROR, "malformed frame");
        };
        if !send.room_id.is_empty() {
            return self.send_to_room(message_id, send).await;
        }
        if send.room_log_len != 0 {
            return Outcome::error(
                ErrorCode::Malformed,
                send.message_id,
                "room_log_len without room_id",
            )
            .closing(close::PROTOCOL_ERROR, "malformed frame");
        }
        if send.recipients.len() > limits.max_recipients {
            return Outcome::error(ErrorCode::TooLarge, send.message_id, "too many recipients")
                .closing(close::TOO_BIG, "too many recipients");
        }
        let mut seen = HashSet::with_capacity(send.recipients.len());
        let mut recipients = Vec::with_capacity(send.recipients.len());
        for r in send.recipients {
            let Ok(device_id) = <[u8; 32]>::try_from(r.device_id.as_slice()) else {
                return Outcome::error(
                    ErrorCode::Malformed,
                    send.message_id,
                    "device id must be 32 bytes",
                )
                .closing(close::PROTOCOL_ERROR, "malformed frame");
            };
            if !valid_user_id(&r.user_id) {
                return Outcome::error(ErrorCode::Malformed, send.message_id, "invalid user id")
                    .closing(close::PROTOCOL_ERROR, "malformed frame");
            }
            let m = Mailbox {
                user_id: r.user_id,
                device_id,
            };
            if seen.insert(m.clone()) {
                recipients.push(m);
            }
        }
        if recipients.is_empty() || send.payload.is_empty() {
            return Outcome::error(
                ErrorCode::Malformed,
                send.message_id,
                "no recipient or no payload",
            )
            .closing(close::PROTOCOL_ERROR, "malformed frame");
        }
        // A room envelope goes through the room's fan-out, whose recipients
        // the relay verified: a listed one would let a sender add
        // non-members or leave members out (§17.10).
        if room_header(&send.payload).is_some() {
            return Outcome::error(
                ErrorCode::Malformed,
                message_id.to_vec(),
                "a room message names its room (Send.room_id), not its recipients",
            );
        }
        if let Err((code, detail)) = self.check_recipients(&recipients).await {
            return Outcome::error(code, message_id.to_vec(), detail);
        }
        self.store(message_id, recipients, send.payload, send.blob_ids)
            .await
    }

    /// A room `Send` (SECURITY.md §17.10): no recipients listed; the relay
    /// computes them from the room log it verified. The room's own member
    /// limit (§17.1) bounds them, not `max_recipients`.
    async fn send_to_room(&mut self, message_id: [u8; 16], send: Send) -> Outcome {
        let malformed = |detail| {
            Outcome::error(ErrorCode::Malformed, message_id.to_vec(), detail)
                .closing(close::PROTOCOL_ERROR, "malformed frame")
        };
        let Ok(room_id) = <[u8; 32]>::try_from(send.room_id.as_slice()) else {
            return malformed("room id must be 32 bytes");
        };
        if !send.recipients.is_empty() || send.payload.is_empty() {
            return malformed("a room message lists no recipients and carries a payload");
        }
        // The header is in the clear (§17.6): it must be this room's, and
        // sealed to the epoch the relay holds as current.
        let Some(room) = room_header(&send.payload) else {
            return malformed("a room message's envelope must name its room");
        };
        if room.room_id != room_id {
            return malformed("the envelope names another room");
        }
        let target = crate::rooms::RoomSend {
            room_id,
            epoch: room.epoch,
            epoch_key: &room.epoch_key,
            log_len: send.room_log_len,
        };
        let recipients = match crate::rooms::recipients(&self.shared, &self.mailbox, &target).await
        {
            Ok(r) => r,
            Err((code, detail)) => return Outcome::error(code, message_id.to_vec(), detail),
        };
        if recipients.is_empty() {
            // A room whose only member is this device: nothing to queue,
            // and nothing lost.
            return Outcome::reply(server_frame::Frame::SendAck(SendAck {
                message_id: message_id.to_vec(),
            }));
        }
        self.store(message_id, recipients, send.payload, send.blob_ids)
            .await
    }

    /// Records blob readers, then stores one payload and a queue entry per
    /// recipient.
    async fn store(
        &mut self,
        message_id: [u8; 16],
        recipients: Vec<Mailbox>,
        payload: Vec<u8>,
        blob_ids: Vec<Vec<u8>>,
    ) -> Outcome {
        if !blob_ids.is_empty()
            && let Err(out) = self.add_readers(&message_id, blob_ids, &recipients).await
        {
            return out;
        }
        let msg = NewMessage {
            message_id,
            recipients,
            payload,
        };
        match self.shared.writer.send(self.mailbox.clone(), msg).await {
            Ok(SendOutcome::Stored(_) | SendOutcome::Duplicate) => {
                Outcome::reply(server_frame::Frame::SendAck(SendAck {
                    message_id: message_id.to_vec(),
                }))
            }
            Ok(SendOutcome::OverQuota(q)) => Outcome::error(
                ErrorCode::QuotaExceeded,
                message_id.to_vec(),
                match q {
                    Quota::User => "your undelivered messages fill your quota; retry later",
                    Quota::Mailbox => "a recipient's mailbox is full; retry later",
                },
            ),
            Ok(SendOutcome::Conflict) => Outcome::error(
                ErrorCode::Conflict,
                message_id.to_vec(),
                "message id already used by another sender",
            ),
            Err(e) => {
                warn!(error = %e, "storing a message failed");
                Outcome::error(
                    ErrorCode::Internal,
                    message_id.to_vec(),
                    "not stored; retry",
                )
            }
        }
    }

    /// The recipients of a `Send` naming blobs become their readers, before
    /// the message is stored: once a recipient has the descriptor, it may
    /// download. Every blob must be a complete one of the sender's user.
    async fn add_readers(
        &self,
        message_id: &[u8; 16],
        blob_ids: Vec<Vec<u8>>,
        recipients: &[Mailbox],
    ) -> Result<(), Outcome> {
        use crate::blob_meta::{BlobOp, BlobOutcome, MAX_SEND_BLOBS};
        if blob_ids.len() > MAX_SEND_BLOBS {
            return Err(Outcome::error(
                ErrorCode::TooLarge,
                message_id.to_vec(),
                "too many blobs in one message",
            ));
        }
        let mut ids = Vec::with_capacity(blob_ids.len());
        for b in blob_ids {
            let Ok(id) = crate::blobs::BlobId::try_from(b.as_slice()) else {
                return Err(Outcome::error(
                    ErrorCode::Malformed,
                    message_id.to_vec(),
                    "blob id must be 32 bytes",
                )
                .closing(close::PROTOCOL_ERROR, "malformed frame"));
            };
            ids.push(id);
        }
        let op = BlobOp::AddReaders {
            owner_user: self.mailbox.user_id.clone(),
            ids,
            readers: recipients.to_vec(),
        };
        match self.shared.writer.blob(op).await {
            Ok(BlobOutcome::Done) => Ok(()),
            Ok(_) => Err(Outcome::error(
                ErrorCode::BlobRefused,
                message_id.to_vec(),
                "a named blob is not a complete upload of yours",
            )),
            Err(e) => {
                warn!(error = %e, "recording blob readers failed");
                Err(Outcome::error(
                    ErrorCode::Internal,
                    message_id.to_vec(),
                    "not stored; retry",
                ))
            }
        }
    }

    async fn ack(&mut self, ack: Ack) -> Outcome {
        if !ack.device_id.is_empty() && ack.device_id[..] != self.mailbox.device_id[..] {
            return Outcome::error(ErrorCode::Forbidden, Vec::new(), "not your mailbox")
                .closing(close::FORBIDDEN, "another device's mailbox");
        }
        // Only what this connection delivered: entries above it stay, and
        // are delivered (and acked) in their turn.
        let up_to = ack.up_to_seq.min(self.delivered.load(Ordering::SeqCst));
        if up_to == 0 {
            return Outcome::none();
        }
        match self.shared.writer.ack(self.mailbox.clone(), up_to).await {
            Ok(_) => Outcome::none(),
            Err(e) => {
                warn!(error = %e, "ack failed");
                Outcome::error(ErrorCode::Internal, Vec::new(), "ack not applied; retry")
            }
        }
    }

    /// Stores (or, empty, deletes) this device's push token (SECURITY.md
    /// §9.2), answering once it is durable.
    async fn register_push(&mut self, r: RegisterPush) -> Outcome {
        // A write per frame: it draws on the same budget as sends.
        if !self.bucket.try_take() {
            return Outcome::error(ErrorCode::RateLimited, Vec::new(), "rate exceeded")
                .closing(close::RATE_LIMITED, "rate exceeded");
        }
        if r.token.len() > crate::push::MAX_TOKEN_BYTES {
            return Outcome::error(
                ErrorCode::Malformed,
                Vec::new(),
                "push token over 1024 bytes",
            );
        }
        let token_len = r.token.len();
        match self
            .shared
            .writer
            .set_push_token(self.mailbox.clone(), r.token.clone())
            .await
        {
            Ok(()) => {
                self.shared
                    .registry
                    .pusher()
                    .set(self.mailbox.clone(), r.token);
                debug!(user = %self.mailbox.user_id, token_len, "push token registered");
                Outcome::reply(server_frame::Frame::PushRegistered(PushRegistered {}))
            }
            Err(e) => {
                warn!(error = %e, "storing a push token failed");
                Outcome::error(
                    ErrorCode::Internal,
                    Vec::new(),
                    "push token not stored; retry",
                )
            }
        }
    }

    async fn publish_log(&mut self, p: PublishLog) -> Outcome {
        // Verifying a long log costs CPU: it draws on the same budget as sends.
        if !self.bucket.try_take() {
            return Outcome::error(ErrorCode::RateLimited, Vec::new(), "rate exceeded")
                .closing(close::RATE_LIMITED, "rate exceeded");
        }
        match logs::refresh(&self.shared, &self.mailbox.user_id, p.entries).await {
            Ok(user) => {
                prune_revoked(&self.shared, &self.mailbox.user_id, &user).await;
                Outcome::reply(server_frame::Frame::LogAccepted(LogAccepted {
                    len: user.len(),
                }))
            }
            Err(code) => Outcome::error(code, Vec::new(), "log refused"),
        }
    }
}
