//! The device-link rendezvous (SECURITY.md §9.3): an existing device opens
//! a rendezvous on [`LINK_PATH`] after the device handshake, a new device
//! (which has no identity in any log yet) joins it on [`LINK_JOIN_PATH`]
//! without one, and the relay then forwards `data` both ways, opaque to it
//! (the link messages inside are sealed end to end, §4.9).
//!
//! ```text
//!  opener task:  handshake -> LinkOpen -> LinkWaiting -> wait ----+-> pipe (both conns) -> close both
//!                                                                 |
//!  joiner task:  upgrade -> LinkJoin -> take the waiting entry ---+ (hands its conn over,
//!                                                                   waits for the pipe's end)
//! ```
//! The opener's task owns both connections once paired, so that forwarding
//! one frame is one awaited write to the other socket: a side that does not
//! read stops the other from being read (backpressure), and no frame is
//! queued in the relay beyond the one being written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::time::timeout;
use tracing::debug;
use ward_net::tls::ServerStream;
use ward_net::{Conn, NetError, close};
use ward_proto::v1::{
    LinkClientFrame, LinkPeerJoined, LinkServerFrame, LinkWaiting, link_client_frame,
    link_server_frame,
};

use crate::connection::{GOING_AWAY, finish, stopped};
use crate::registry::CloseReason;
use crate::state::Shared;
use crate::storage::Mailbox;

/// Where an existing device opens a rendezvous (after the device handshake).
pub const LINK_PATH: &str = "/v2/link";
/// Where a new device joins one (no handshake).
pub const LINK_JOIN_PATH: &str = "/v2/link/join";

/// Length of a rendezvous id (HKDF of the link secret, §4.9).
const RENDEZVOUS_BYTES: usize = 32;

/// A rendezvous id.
type Rendezvous = [u8; RENDEZVOUS_BYTES];

const MALFORMED: CloseReason = CloseReason {
    code: close::PROTOCOL_ERROR,
    reason: "malformed link frame",
};
const DUPLICATE: CloseReason = CloseReason {
    code: close::PROTOCOL_ERROR,
    reason: "rendezvous already open",
};
const DEVICE_BUSY: CloseReason = CloseReason {
    code: close::FORBIDDEN,
    reason: "a link is already open on this device",
};
const FULL: CloseReason = CloseReason {
    code: close::TOO_MANY_CONNECTIONS,
    reason: "too many links waiting",
};
const NO_SUCH_LINK: CloseReason = CloseReason {
    code: close::FORBIDDEN,
    reason: "no such link",
};
const FIRST_FRAME_TIMEOUT: CloseReason = CloseReason {
    code: close::AUTH_TIMEOUT,
    reason: "no link frame in time",
};
const EXPIRED: CloseReason = CloseReason {
    code: close::NORMAL,
    reason: "link expired",
};
const PEER_CLOSED: CloseReason = CloseReason {
    code: close::NORMAL,
    reason: "peer closed",
};
const TOO_MUCH: CloseReason = CloseReason {
    code: close::TOO_BIG,
    reason: "link byte limit reached",
};
const IDLE: CloseReason = CloseReason {
    code: close::NORMAL,
    reason: "idle",
};
const SLOW: CloseReason = CloseReason {
    code: close::SLOW_CONSUMER,
    reason: "not reading fast enough",
};
const INTERNAL: CloseReason = CloseReason {
    code: close::INTERNAL_ERROR,
    reason: "internal error",
};
/// The answer to a peer that closed first (its close handshake completes).
const ANSWER: CloseReason = CloseReason {
    code: close::NORMAL,
    reason: "",
};

/// The joiner's side, handed to the opener's task at pairing.
struct Joiner {
    conn: Conn<ServerStream>,
    addr: SocketAddr,
    /// Dropped when the pipe is over and the joiner's socket finished: the
    /// joiner's task (which holds its connection permit) ends then.
    _done: oneshot::Sender<()>,
}

struct Waiter {
    id: u64,
    expires: Instant,
    join: oneshot::Sender<Joiner>,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<Rendezvous, Waiter>,
    /// Devices with a link open (waiting or piping), and that link's id.
    devices: HashMap<Mailbox, u64>,
}

/// The rendezvous waiting for a joiner, and the devices with a link open.
#[derive(Default)]
pub struct Links {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An open link's place in [`Links`]: dropping it removes the waiting entry
/// (if no joiner took it) and frees the device, however the opener's task
/// ends (close, error, expiry, shutdown, even a panic), so that nothing
/// leaks.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
    rendezvous: Rendezvous,
    device: Mailbox,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut inner = self.shared.links.lock();
        if inner.waiting.get(&self.rendezvous).map(|w| w.id) == Some(self.id) {
            inner.waiting.remove(&self.rendezvous);
        }
        if inner.devices.get(&self.device) == Some(&self.id) {
            inner.devices.remove(&self.device);
        }
        set_gauge(&self.shared, &inner);
    }
}

fn set_gauge(shared: &Shared, inner: &Inner) {
    shared
        .metrics
        .links_waiting
        .set(i64::try_from(inner.waiting.len()).unwrap_or(i64::MAX));
}

/// Registers `rendezvous` for `device`, or the refusal to close with.
fn register(
    shared: &Arc<Shared>,
    rendezvous: Rendezvous,
    device: &Mailbox,
    expires: Instant,
) -> Result<(Registered, oneshot::Receiver<Joiner>), CloseReason> {
    let limits = shared.config.limits;
    let mut inner = shared.links.lock();
    if inner.waiting.contains_key(&rendezvous) {
        return Err(DUPLICATE);
    }
    // One link per device: a replaced waiting link would let a device keep
    // any number of rendezvous alive through reconnects, and a user who
    // opened a second link on the same device means the first one no more
    // (refused rather than replaced, so the app tells them).
    if inner.devices.contains_key(device) {
        return Err(DEVICE_BUSY);
    }
    if inner.waiting.len() >= limits.max_links_waiting {
        return Err(FULL);
    }
    let id = shared.links.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    inner.waiting.insert(
        rendezvous,
        Waiter {
            id,
            expires,
            join: tx,
        },
    );
    inner.devices.insert(device.clone(), id);
    set_gauge(shared, &inner);
    drop(inner);
    Ok((
        Registered {
            shared: shared.clone(),
            id,
            rendezvous,
            device: device.clone(),
        },
        rx,
    ))
}

/// Takes the waiting entry of `rendezvous` (single use: a second joiner
/// finds nothing), unless it expired.
fn take(shared: &Shared, rendezvous: &Rendezvous) -> Option<oneshot::Sender<Joiner>> {
    let mut inner = shared.links.lock();
    let waiter = inner.waiting.remove(rendezvous)?;
    set_gauge(shared, &inner);
    // Its opener closes it at `expires`; a joiner in between finds it gone
    // all the same.
    (waiter.expires > Instant::now()).then_some(waiter.join)
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The first frame of either path, within `auth_timeout`; `Err` is the close
/// to send (`None`: the peer is gone or closed, answer it).
async fn first_frame(
    conn: &mut Conn<ServerStream>,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<link_client_frame::Frame, Option<CloseReason>> {
    let limits = shared.config.limits;
    let got = tokio::select! {
        r = timeout(limits.net.auth_timeout, conn.recv_msg::<LinkClientFrame>()) => r,
        () = stopped(shutdown) => return Err(Some(GOING_AWAY)),
    };
    match got {
        Err(_) => Err(Some(FIRST_FRAME_TIMEOUT)),
        Ok(Ok(Some(LinkClientFrame { frame: Some(f) }))) => Ok(f),
        Ok(Ok(Some(_))) => Err(Some(MALFORMED)),
        Ok(Ok(None)) => Err(None),
        Ok(Err(e)) => Err(failure(&e)),
    }
}

/// The close for a failed read: `None` when the peer closed (answered with
/// a plain close), the matching code otherwise.
fn failure(e: &NetError) -> Option<CloseReason> {
    let (code, reason) = ward_net::conn::close_code_for(e);
    (code != close::NORMAL).then_some(CloseReason { code, reason })
}

async fn close_one(shared: &Shared, conn: Conn<ServerStream>, reason: Option<CloseReason>) {
    let reason = reason.unwrap_or(ANSWER);
    shared.metrics.closed(reason.code);
    finish(conn, Some(reason), shared.config.limits.close_grace).await;
}

/// An authenticated connection on [`LINK_PATH`], to its close: the opener.
pub(crate) async fn open(
    mut conn: Conn<ServerStream>,
    shared: Arc<Shared>,
    device: Mailbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = shared.config.limits;
    let rendezvous = match first_frame(&mut conn, &shared, &mut shutdown).await {
        Ok(link_client_frame::Frame::Open(o)) => match Rendezvous::try_from(o.rendezvous) {
            Ok(r) => r,
            Err(_) => return close_one(&shared, conn, Some(MALFORMED)).await,
        },
        Ok(_) => return close_one(&shared, conn, Some(MALFORMED)).await,
        Err(reason) => return close_one(&shared, conn, reason).await,
    };
    let opened = Instant::now();
    let deadline = opened + limits.link_ttl;
    let (registered, mut joined) = match register(&shared, rendezvous, &device, deadline) {
        Ok(r) => r,
        Err(reason) => {
            debug!(user = %device.user_id, reason = reason.reason, "link refused");
            return close_one(&shared, conn, Some(reason)).await;
        }
    };
    let expires_at = unix_secs(SystemTime::now() + limits.link_ttl);
    let waiting = LinkServerFrame {
        frame: Some(link_server_frame::Frame::Waiting(LinkWaiting {
            expires_at,
        })),
    };
    match timeout(limits.slow_consumer_timeout, conn.send_msg(&waiting)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return close_one(&shared, conn, None).await,
        Err(_) => return close_one(&shared, conn, Some(SLOW)).await,
    }
    debug!(user = %device.user_id, "link waiting");
    let expiry = tokio::time::sleep_until(deadline.into());
    tokio::pin!(expiry);
    let mut ping = pinger(&shared);
    // Waiting: the relay pings as on every authenticated connection, and a
    // pong counts as traffic, so a device that waits (reading) is never
    // idle; only a vanished one is closed before the TTL.
    let waited = loop {
        tokio::select! {
            biased;
            // Before the expiry: a joiner that took the entry in time is
            // paired (and told "link expired" by the pipe, not dropped).
            j = &mut joined => break match j {
                Ok(j) => Ok(j),
                // The entry is only ever taken to be sent: unreachable, but
                // not worth a panic.
                Err(_) => Err(Some(INTERNAL)),
            },
            () = &mut expiry => break Err(Some(EXPIRED)),
            () = stopped(&mut shutdown) => break Err(Some(GOING_AWAY)),
            _ = ping.tick() => {
                if let Err(reason) = keep_alive(&shared, &mut conn).await {
                    break Err(reason);
                }
            }
            inbound = conn.recv_msg::<LinkClientFrame>() => {
                break Err(match inbound {
                    // Data before the joiner is there has nowhere to go.
                    Ok(Some(_)) => Some(MALFORMED),
                    Ok(None) => None,
                    Err(e) => failure(&e),
                });
            }
        }
    };
    let joiner = match waited {
        Ok(j) => j,
        Err(reason) => {
            // Freed before the close handshake (up to `close_grace`): once
            // the device reads the close, it may open again at once.
            drop(registered);
            return close_one(&shared, conn, reason).await;
        }
    };
    shared.metrics.links_joined.inc();
    debug!(user = %device.user_id, joiner = %joiner.addr, "link joined");
    let Joiner {
        conn: mut other,
        addr: _,
        _done: done,
    } = joiner;
    let ends = pipe(&shared, &mut conn, &mut other, expiry, &mut shutdown).await;
    drop(registered);
    let grace = limits.close_grace;
    for r in [ends.0, ends.1] {
        shared.metrics.closed(r.unwrap_or(ANSWER).code);
    }
    tokio::join!(
        finish(conn, Some(ends.0.unwrap_or(ANSWER)), grace),
        finish(other, Some(ends.1.unwrap_or(ANSWER)), grace),
    );
    drop(done);
}

fn pinger(shared: &Shared) -> tokio::time::Interval {
    let limits = shared.config.limits;
    let mut ping = tokio::time::interval(limits.ping_interval.max(Duration::from_millis(10)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    ping
}

/// The idle check and ping of one side, as the message session does them.
async fn keep_alive(
    shared: &Shared,
    conn: &mut Conn<ServerStream>,
) -> Result<(), Option<CloseReason>> {
    let limits = shared.config.limits;
    if conn.last_seen().elapsed() >= limits.idle_timeout {
        return Err(Some(IDLE));
    }
    match timeout(limits.slow_consumer_timeout, conn.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(SLOW)),
    }
}

/// What to do after a frame from one side.
enum Step {
    Go,
    /// Close: the reason for the side that sent, and for the other.
    End(Option<CloseReason>, Option<CloseReason>),
}

/// Forwards `data` both ways until one side ends, the TTL (`expiry`) or the
/// byte cap is reached, or the relay stops: the closes for `a` and `b`.
async fn pipe(
    shared: &Shared,
    a: &mut Conn<ServerStream>,
    b: &mut Conn<ServerStream>,
    mut expiry: std::pin::Pin<&mut tokio::time::Sleep>,
    shutdown: &mut watch::Receiver<bool>,
) -> (Option<CloseReason>, Option<CloseReason>) {
    let limits = shared.config.limits;
    let joined = LinkServerFrame {
        frame: Some(link_server_frame::Frame::PeerJoined(LinkPeerJoined {})),
    };
    match timeout(limits.slow_consumer_timeout, a.send_msg(&joined)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return (None, Some(PEER_CLOSED)),
        Err(_) => return (Some(SLOW), Some(PEER_CLOSED)),
    }
    match timeout(limits.slow_consumer_timeout, b.send_msg(&joined)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return (Some(PEER_CLOSED), None),
        Err(_) => return (Some(PEER_CLOSED), Some(SLOW)),
    }
    let mut ping = pinger(shared);
    let mut total: u64 = 0;
    loop {
        tokio::select! {
            biased;
            () = &mut expiry => return (Some(EXPIRED), Some(EXPIRED)),
            () = stopped(shutdown) => return (Some(GOING_AWAY), Some(GOING_AWAY)),
            _ = ping.tick() => {
                if let Err(r) = keep_alive(shared, a).await {
                    return (r, Some(PEER_CLOSED));
                }
                if let Err(r) = keep_alive(shared, b).await {
                    return (Some(PEER_CLOSED), r);
                }
            }
            inbound = a.recv_msg::<LinkClientFrame>() => {
                if let Step::End(from, to) = forward(shared, inbound, b, &mut total).await {
                    return (from, to);
                }
            }
            inbound = b.recv_msg::<LinkClientFrame>() => {
                if let Step::End(from, to) = forward(shared, inbound, a, &mut total).await {
                    return (to, from);
                }
            }
        }
    }
}

/// One frame read from a side: its data written to `to` (awaited: the
/// backpressure), or the end of the pipe.
async fn forward(
    shared: &Shared,
    inbound: Result<Option<LinkClientFrame>, NetError>,
    to: &mut Conn<ServerStream>,
    total: &mut u64,
) -> Step {
    let limits = shared.config.limits;
    let data = match inbound {
        Ok(Some(LinkClientFrame {
            frame: Some(link_client_frame::Frame::Data(d)),
        })) => d,
        Ok(Some(_)) => return Step::End(Some(MALFORMED), Some(MALFORMED)),
        Ok(None) => return Step::End(None, Some(PEER_CLOSED)),
        Err(e) => {
            return match failure(&e) {
                None => Step::End(None, Some(PEER_CLOSED)),
                // Its transport failed (a reset, a broken frame): nothing
                // the other side did or should act on.
                Some(r) if matches!(e, NetError::WebSocket(_)) && r.code != close::TOO_BIG => {
                    Step::End(Some(r), Some(PEER_CLOSED))
                }
                // A frame over the cap, a text frame, an undecodable one:
                // the link is broken for both, and both are told why.
                Some(r) => Step::End(Some(r), Some(r)),
            };
        }
    };
    *total = total.saturating_add(data.len() as u64);
    if *total > limits.link_max_bytes {
        return Step::End(Some(TOO_MUCH), Some(TOO_MUCH));
    }
    let frame = LinkServerFrame {
        frame: Some(link_server_frame::Frame::Data(data)),
    };
    match timeout(limits.slow_consumer_timeout, to.send_msg(&frame)).await {
        Ok(Ok(())) => Step::Go,
        Ok(Err(_)) => Step::End(Some(PEER_CLOSED), None),
        Err(_) => Step::End(Some(PEER_CLOSED), Some(SLOW)),
    }
}

/// A connection on [`LINK_JOIN_PATH`], upgraded but not authenticated (a
/// new device has no identity in any log yet), to its close: the joiner.
pub(crate) async fn join(
    mut conn: Conn<ServerStream>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    ticket: ward_net::peers::Ticket,
) {
    // The first frame arrives under the pre-auth frame cap and the ticket:
    // until it names a waiting rendezvous this is any unauthenticated peer.
    let rendezvous = match first_frame(&mut conn, &shared, &mut shutdown).await {
        Ok(link_client_frame::Frame::Join(j)) => Rendezvous::try_from(j.rendezvous).ok(),
        Ok(_) => None,
        Err(reason) => {
            shared.metrics.link_joins_refused.inc();
            return close_one(&shared, conn, reason).await;
        }
    };
    let Some(rendezvous) = rendezvous else {
        shared.metrics.link_joins_refused.inc();
        return close_one(&shared, conn, Some(MALFORMED)).await;
    };
    let Some(tx) = take(&shared, &rendezvous) else {
        debug!(%addr, "link join refused: no such link");
        shared.metrics.link_joins_refused.inc();
        return close_one(&shared, conn, Some(NO_SUCH_LINK)).await;
    };
    // Paired: the ticket goes now, not at the end. The joiner proved it
    // holds a rendezvous that an authenticated device opened; from here it
    // is bounded as that device's link is (one per device, `link_ttl`,
    // `link_max_bytes`) and counts in `max_connections`. Kept for up to
    // `link_ttl`, it would take one of its address's few unauthenticated
    // places all that time: phones being linked behind one clinic NAT would
    // lock that address's logins out.
    drop(ticket);
    // Full-size frames from now on (history batches). The new device sends
    // nothing after its `LinkJoin` before it reads `LinkPeerJoined`, so
    // rebuilding the WebSocket loses no buffered frame.
    let conn = conn.authenticated().await;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let joiner = Joiner {
        conn,
        addr,
        _done: done_tx,
    };
    if let Err(j) = tx.send(joiner) {
        // Its opener ended between the lookup and now.
        shared.metrics.link_joins_refused.inc();
        return close_one(&shared, j.conn, Some(NO_SUCH_LINK)).await;
    }
    // The opener's task runs the pipe and finishes this socket; this task
    // (with the connection permit the accept loop gave it) lasts as long.
    let _ = done_rx.await;
}
