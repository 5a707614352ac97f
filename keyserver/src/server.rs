//! The accept loop, one task per connection, revocation fan-out and
//! graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use ward_core::keys::SigningPublicKey;
use ward_net::handshake::{self, Peer};
use ward_net::peers::{Gate, Reason, RefusalLog, Source, Ticket};
use ward_net::tls::{Acceptor, ServerStream};
use ward_net::{Conn, close};
use ward_proto::decode_bounded;
use ward_proto::v1::{ErrorCode, KsRequest, KtRequest, KtResponse, kt_request, kt_response};

use crate::config::{Config, KsLimits};
use crate::error::{KeyserverError, RequestError};
use crate::handler::{self, Ctx, Session};
use crate::metrics::KsMetrics;
use crate::storage::{self, Db, DeviceStatus};

type DeviceKey = (String, [u8; 32]);

/// Open sessions by device, so that a revocation closes them at once.
#[derive(Default)]
struct Sessions {
    next_id: AtomicU64,
    by_device: Mutex<HashMap<DeviceKey, HashMap<u64, watch::Sender<bool>>>>,
}

/// One connection's entry in [`Sessions`]; removed on drop.
struct Registration {
    sessions: Arc<Sessions>,
    key: DeviceKey,
    id: u64,
    revoked: watch::Receiver<bool>,
}

impl Sessions {
    fn register(self: &Arc<Self>, user_id: &str, device: &SigningPublicKey) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (user_id.to_owned(), *device.as_bytes());
        let (tx, rx) = watch::channel(false);
        self.by_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .insert(id, tx);
        Registration {
            sessions: Arc::clone(self),
            key,
            id,
            revoked: rx,
        }
    }

    fn revoke(&self, user_id: &str, device: &SigningPublicKey) {
        let key = (user_id.to_owned(), *device.as_bytes());
        let map = self.by_device.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = map.get(&key) {
            for tx in conns.values() {
                let _ = tx.send(true);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self
            .sessions
            .by_device
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = map.get_mut(&self.key) {
            conns.remove(&self.id);
            if conns.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

/// Per-device request budgets, shared by all of a device's connections.
struct RateLimiter(ward_net::rate::SharedBuckets<[u8; 32]>);

impl RateLimiter {
    fn new(limits: &KsLimits) -> Self {
        Self(ward_net::rate::SharedBuckets::new(
            f64::from(limits.requests_per_second.max(1)),
            limits.request_burst.max(1),
        ))
    }

    fn allow(&self, device: &SigningPublicKey) -> bool {
        self.0.allow(device.as_bytes())
    }
}

struct State {
    ctx: Ctx,
    tls: Acceptor,
    metrics: KsMetrics,
    sessions: Arc<Sessions>,
    rate: RateLimiter,
    connections: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    /// Unenrolled sessions, per source address and in total.
    enrolling: Arc<Gate>,
    /// Unauthenticated connections, per source address and in total.
    unauthenticated: Arc<Gate>,
    refusal_log: RefusalLog,
    /// This keyserver as a handshake audience (service, instance, root).
    audience: handshake::Audience,
    /// The relay link (SECURITY.md §10.8) and its change signal.
    link: crate::relay_link::LinkState,
    log_changed: watch::Sender<u64>,
    /// Public `/v2/kt` request budgets, per source address.
    kt_rate: ward_net::rate::SharedBuckets<Source>,
    kt_metrics: crate::metrics::KtMetrics,
}

/// The public key-transparency path (SECURITY.md §18.4): no handshake.
pub const KT_PATH: &str = "/v2/kt";

/// A public `/v2/kt` connection silent this long is closed.
const KT_IDLE: Duration = Duration::from_secs(30);

/// Connections over the cap that are being closed with a code at once.
const REFUSALS_IN_FLIGHT: usize = 64;
/// Time an over-the-cap peer gets to complete the WebSocket upgrade.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// At most one log line per this interval about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A connection's place: served (counted as unauthenticated until login),
/// or only told it is refused.
enum Slot {
    Served(OwnedSemaphorePermit, Ticket),
    Refused(OwnedSemaphorePermit),
}

/// Serves the keyserver on `listener` until `shutdown` completes, then
/// closes every connection (`GOING_AWAY`), waits for them up to
/// `limits.shutdown_grace`, and returns. Opens and migrates the database
/// first; fails if it cannot.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KeyserverError> {
    if config.limits.max_items_per_request == 0 || config.limits.net.max_frame_bytes < 1024 {
        return Err(KeyserverError::Config(
            "limits too small to serve anything".into(),
        ));
    }
    if let Ok(addr) = listener.local_addr() {
        config
            .tls
            .check(addr)
            .map_err(|e| KeyserverError::Config(e.to_string()))?;
    }
    let path = config.db_path.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&path))
        .await
        .map_err(|e| KeyserverError::Config(format!("database task: {e}")))??;
    // Raise the descriptor limit, and lower the cap to what it allows.
    let soft = ward_net::fdlimit::raise();
    let max_connections =
        ward_net::fdlimit::connection_cap(config.limits.max_connections.max(1), soft);
    if max_connections < config.limits.max_connections {
        tracing::warn!(
            max_connections,
            fd_limit = soft,
            "connection cap lowered to fit the file-descriptor limit"
        );
    }
    let kt_metrics = crate::metrics::KtMetrics::new(&config.metrics);
    let directory =
        crate::transparency::open(&db, &config.kt, &config.org_root, kt_metrics.clone()).await?;
    let (log_changed, changes) = watch::channel(0u64);
    let link = crate::relay_link::LinkState {
        db: Arc::clone(&db),
        audience: handshake::Audience::keyserver(config.org_root, config.instance.clone()),
        allowed: config.relay_keys.clone(),
        changes,
        limits: config.limits.net,
        metrics: crate::relay_link::LinkMetrics::new(&config.metrics),
    };
    let state = Arc::new(State {
        kt_rate: ward_net::rate::SharedBuckets::new(
            f64::from(config.kt.public_rate.max(1)),
            config.kt.public_burst.max(1),
        ),
        kt_metrics,
        link,
        log_changed,
        tls: config.tls.clone(),
        metrics: KsMetrics::new(&config.metrics),
        rate: RateLimiter::new(&config.limits),
        connections: Arc::new(Semaphore::new(max_connections)),
        refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
        sessions: Arc::new(Sessions::default()),
        enrolling: Gate::new(
            config.limits.max_enrolling_per_address,
            config.limits.max_enrolling,
        ),
        unauthenticated: Gate::with_rate(
            config.limits.max_unauthenticated_per_address,
            config.limits.max_unauthenticated,
            config.limits.accept_rate_per_address,
            config.limits.accept_burst_per_address,
        ),
        refusal_log: RefusalLog::new(REFUSAL_LOG_INTERVAL),
        audience: handshake::Audience::keyserver(config.org_root, config.instance.clone()),
        ctx: Ctx {
            db: Arc::clone(&db),
            kt: Arc::clone(&directory),
            root: config.org_root,
            clock: config.clock.clone(),
            search: crate::search::Limiter::new(
                config.limits.searches_per_minute,
                config.limits.search_burst,
            ),
            limits: config.limits,
        },
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "keyserver listening");
    }
    // The database is open and migrated: ready.
    let ready = config.metrics.clone();
    ready.set_ready(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let publisher = tokio::spawn(crate::transparency::publisher(
        directory,
        db,
        config.clock.clone(),
        config.kt.clone(),
        stop_rx.clone(),
    ));
    let mut tasks = JoinSet::new();
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let admitted = match Arc::clone(&state.connections).try_acquire_owned() {
                        Ok(p) => state
                            .unauthenticated
                            .admit(addr.ip())
                            .map(|t| (p, t))
                            .map_err(Reason::from),
                        Err(_) => Err(Reason::TooMany),
                    };
                    let slot = match admitted {
                        Ok((p, t)) => Slot::Served(p, t),
                        Err(Reason::Rate) => {
                            state.refusal_log.refused("keyserver", Reason::Rate);
                            continue;
                        }
                        // Refused: a few are told why (close code), the rest
                        // are dropped at once.
                        Err(why) => match Arc::clone(&state.refusals).try_acquire_owned() {
                            Ok(p) => {
                                state.refusal_log.refused("keyserver", why);
                                Slot::Refused(p)
                            }
                            Err(_) => {
                                state.refusal_log.refused("keyserver", Reason::Dropped);
                                continue;
                            }
                        },
                    };
                    tasks.spawn(connection(stream, addr, Arc::clone(&state), stop_rx.clone(), slot));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    ready.set_ready(false);
    tracing::info!("keyserver shutting down");
    drop(listener);
    let _ = stop_tx.send(true);
    // A publication in flight commits or rolls back as a whole.
    let _ = publisher.await;
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(state.ctx.limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    // Closing the last SQLite connections checkpoints the WAL: blocking work.
    let _ = tokio::task::spawn_blocking(move || drop(state)).await;
    Ok(())
}

fn nonce() -> Option<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).ok()?;
    Some(n)
}

async fn connection(
    stream: TcpStream,
    addr: std::net::SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) {
    let limits = state.ctx.limits.net;
    let upgrade_time = match slot {
        Slot::Served(..) => limits.auth_timeout,
        Slot::Refused(_) => REFUSAL_TIMEOUT.min(limits.auth_timeout),
    };
    let _open = state.metrics.connections.track();
    let Some(stream) = state.tls.accept_within(stream, upgrade_time).await else {
        state.metrics.handshake_failures.inc();
        return;
    };
    let (mut conn, path) = match tokio::time::timeout(
        upgrade_time,
        ward_net::conn::accept_with_path(stream, &limits),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
        Err(_) => return,
    };
    let (_permit, ticket) = match slot {
        Slot::Served(p, t) => (p, t),
        Slot::Refused(_p) => {
            conn.close(close::TOO_MANY_CONNECTIONS, "too many connections")
                .await;
            return;
        }
    };
    let Some(nonce) = nonce() else {
        conn.close(close::INTERNAL_ERROR, "internal error").await;
        return;
    };
    if path == crate::relay_link::RELAY_LINK_PATH {
        crate::relay_link::serve(conn, &state.link, nonce, &mut stop, ticket).await;
        return;
    }
    if path == KT_PATH {
        // Counted as unauthenticated for its whole life: the per-address
        // cap on those bounds a source's open public connections.
        serve_kt(&mut conn, &state, &mut stop, addr).await;
        drop(ticket);
        return;
    }

    let mut registration = None;
    let mut enrolled = false;
    let mut root_session = false;
    let mut enrolling_permit = None;
    let auth = {
        let slot = &mut registration;
        let enrolled = &mut enrolled;
        let root_session = &mut root_session;
        let enrolling_permit = &mut enrolling_permit;
        let state = &state;
        tokio::select! {
            r = handshake::server(&mut conn, &state.audience, nonce, &limits, |peer: Peer| async move {
                // Register before reading the directory: a revocation
                // committed after this read still reaches the session.
                *slot = Some(state.sessions.register(&peer.user_id, &peer.device));
                // The organisation root itself (SECURITY.md §10.7): no directory entry.
                if crate::admin::is_root_session(&state.ctx.root, &peer.user_id, &peer.device)? {
                    *root_session = true;
                    return Ok(peer);
                }
                let (user, device) = (peer.user_id.clone(), peer.device);
                let status = state
                    .ctx
                    .db
                    .call(move |c| storage::device_status(c, &user, &device).map_err(RequestError::from))
                    .await;
                match status {
                    Ok(DeviceStatus::Active) => {
                        *enrolled = true;
                        Ok(peer)
                    }
                    // An enrolment: only with a valid, unused invite of
                    // this user, whose delegation key signed this very
                    // handshake (SECURITY.md §8, E1-E5), so that a stranger
                    // cannot hold enrolling places. Then bounded in number
                    // and in time (see `serve`).
                    Ok(DeviceStatus::NoSuchUser) => {
                        let invite = ward_core::auth::verify_enrolment(
                            &state.audience,
                            &state.audience.challenge(nonce),
                            &peer.user_id,
                            &peer.device,
                            &peer.invite,
                            &peer.invite_signature,
                        )
                        .map_err(|e| {
                            tracing::debug!(error = %e, "enrolment refused");
                            ErrorCode::Unauthenticated
                        })?;
                        if invite.check_not_expired(state.ctx.clock.now()).is_err() {
                            return Err(ErrorCode::InviteExpired);
                        }
                        let hash = invite.hash;
                        let used = state
                            .ctx
                            .db
                            .call(move |c| storage::invite_used(c, &hash).map_err(RequestError::from))
                            .await;
                        match used {
                            Ok(false) => {}
                            Ok(true) => return Err(ErrorCode::InviteUsed),
                            Err(_) => return Err(ErrorCode::Internal),
                        }
                        match state.enrolling.admit(addr.ip()) {
                            Ok(p) => {
                                *enrolling_permit = Some(p);
                                Ok(peer)
                            }
                            Err(_) => Err(ErrorCode::RateLimited),
                        }
                    }
                    Ok(DeviceStatus::Revoked) => Err(ErrorCode::DeviceRevoked),
                    Ok(DeviceStatus::Unknown) => Err(ErrorCode::Unauthenticated),
                    Err(_) => Err(ErrorCode::Internal),
                }
            }) => Some(r),
            _ = stop.changed() => None,
        }
    };
    let peer = match auth {
        None => {
            conn.close(close::GOING_AWAY, "shutting down").await;
            return;
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "handshake refused");
            conn.close_for(&e).await;
            return;
        }
        Some(Ok(peer)) => peer,
    };
    // Logged in: no longer counted as unauthenticated, and full-size frames.
    drop(ticket);
    let mut conn = conn.authenticated().await;
    let Some(mut registration) = registration else {
        conn.close(close::INTERNAL_ERROR, "internal error").await;
        return;
    };
    let mut session = Session {
        user_id: peer.user_id,
        device: peer.device,
        enrolled,
    };
    serve(
        &mut conn,
        &state,
        &mut session,
        &mut registration,
        &mut stop,
        enrolling_permit,
        root_session,
    )
    .await;
}

async fn serve(
    conn: &mut Conn<ServerStream>,
    state: &State,
    session: &mut Session,
    registration: &mut Registration,
    stop: &mut watch::Receiver<bool>,
    mut enrolling_permit: Option<Ticket>,
    root_session: bool,
) {
    let limits = &state.ctx.limits;
    let max = limits.net.max_frame_bytes;
    let mut recheck = tokio::time::interval(limits.revocation_recheck);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.reset();
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    let enroll_deadline = tokio::time::sleep(limits.enroll_timeout);
    tokio::pin!(enroll_deadline);
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => {
                conn.close(close::GOING_AWAY, "shutting down").await;
                return;
            }
            _ = registration.revoked.changed() => {
                conn.close(close::DEVICE_REVOKED, "device revoked").await;
                return;
            }
            _ = recheck.tick() => {
                if session.enrolled && !still_active(state, session).await {
                    conn.close(close::DEVICE_REVOKED, "device revoked").await;
                    return;
                }
                continue;
            }
            _ = &mut enroll_deadline, if !session.enrolled && !root_session => {
                conn.close(close::AUTH_TIMEOUT, "enrollment not completed in time").await;
                return;
            }
            _ = &mut idle => {
                conn.close(close::NORMAL, "idle").await;
                return;
            }
            frame = conn.recv() => frame,
        };
        idle.as_mut()
            .reset(tokio::time::Instant::now() + limits.idle_timeout);
        let bytes = match frame {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "closing connection");
                conn.close_for(&e).await;
                return;
            }
        };
        let Ok(req) = decode_bounded::<KsRequest>(&bytes, max) else {
            conn.close(close::PROTOCOL_ERROR, "undecodable request")
                .await;
            return;
        };
        let kind = KsMetrics::kind(&req);
        let outcome = if state.rate.allow(&session.device) {
            if root_session {
                crate::admin::handle(&state.ctx, req).await
            } else {
                handler::handle(&state.ctx, session, req).await
            }
        } else {
            handler::Outcome {
                response: handler::error_response(
                    req.request_id,
                    &RequestError::new(ErrorCode::RateLimited, "slow down"),
                ),
                revoked: None,
                enrolled: false,
            }
        };
        if outcome.enrolled {
            session.enrolled = true;
            drop(enrolling_permit.take());
        }
        state.metrics.observe(kind, &outcome.response);
        if matches!(
            outcome.response.body,
            Some(
                ward_proto::v1::ks_response::Body::Appended(_)
                    | ward_proto::v1::ks_response::Body::RoomAppended(_)
            )
        ) {
            // Tell the relay links (SECURITY.md §10.8).
            state.log_changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        let sent = conn.send_msg(&outcome.response).await;
        if let Some((user, device)) = &outcome.revoked {
            state.sessions.revoke(user, device);
        }
        if sent.is_err() {
            return;
        }
    }
}

/// The public `/v2/kt` path: `KtRequest` / `KtResponse` frames, no
/// handshake, pre-login frame size, rate limited per source address. A
/// request it cannot serve gets a typed error; the connection stays open.
async fn serve_kt(
    conn: &mut Conn<ServerStream>,
    state: &State,
    stop: &mut watch::Receiver<bool>,
    addr: std::net::SocketAddr,
) {
    let source = Source::from(addr.ip());
    let max = state.ctx.limits.net.max_preauth_frame_bytes;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => {
                conn.close(close::GOING_AWAY, "shutting down").await;
                return;
            }
            r = tokio::time::timeout(KT_IDLE, conn.recv()) => match r {
                Ok(f) => f,
                Err(_) => {
                    conn.close(close::NORMAL, "idle").await;
                    return;
                }
            },
        };
        let bytes = match frame {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "closing public kt connection");
                conn.close_for(&e).await;
                return;
            }
        };
        let response = kt_public(state, &source, &bytes, max).await;
        if let Some(kt_response::Body::Error(e)) = &response.body {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            state.kt_metrics.public_requests.inc(code.as_str_name());
        }
        if conn.send_msg(&response).await.is_err() {
            return;
        }
    }
}

async fn kt_public(state: &State, source: &Source, bytes: &[u8], max: usize) -> KtResponse {
    use crate::transparency::{Answer, Query};
    let refuse = |request_id: u64, e: RequestError| KtResponse {
        request_id,
        body: Some(kt_response::Body::Error(e.to_proto())),
    };
    // Counted whatever the frame holds: garbage costs the sender its budget too.
    let allowed = state.kt_rate.allow(source);
    let slow_down = || RequestError::new(ErrorCode::RateLimited, "slow down");
    let req = match decode_bounded::<KtRequest>(bytes, max) {
        Ok(r) => r,
        Err(_) if !allowed => return refuse(0, slow_down()),
        Err(ward_proto::DecodeError::TooLarge { .. }) => {
            return refuse(
                0,
                RequestError::new(ErrorCode::TooLarge, "request too large"),
            );
        }
        Err(_) => return refuse(0, RequestError::malformed("undecodable KtRequest")),
    };
    let id = req.request_id;
    if !allowed {
        return refuse(id, slow_down());
    }
    let query = match req.body {
        Some(kt_request::Body::GetEpoch(g)) => Query::Epoch(g),
        Some(kt_request::Body::GetInclusion(g)) => Query::Inclusion(g),
        Some(kt_request::Body::GetLeaves(g)) => Query::Leaves(g),
        None => return refuse(id, RequestError::malformed("request without body")),
    };
    state.kt_metrics.public_requests.inc(match &query {
        Query::Epoch(_) => "get_epoch",
        Query::Inclusion(_) => "get_inclusion",
        Query::Leaves(_) => "get_leaves",
    });
    match state.ctx.kt.answer(&state.ctx.db, query).await {
        Ok(a) => KtResponse {
            request_id: id,
            body: Some(match a {
                Answer::Epoch(p) => kt_response::Body::EpochProof(p),
                Answer::Inclusion(p) => kt_response::Body::InclusionProof(p),
                Answer::Leaves(l) => kt_response::Body::Leaves(l),
            }),
        },
        Err(e) => refuse(id, e),
    }
}

/// Whether the session's device is still active (a database error counts
/// as active: the per-request check inside each transaction still holds).
async fn still_active(state: &State, session: &Session) -> bool {
    let (user, device) = (session.user_id.clone(), session.device);
    let status = state
        .ctx
        .db
        .call(move |c| storage::device_status(c, &user, &device).map_err(RequestError::from))
        .await;
    !matches!(
        status,
        Ok(DeviceStatus::Revoked | DeviceStatus::Unknown | DeviceStatus::NoSuchUser)
    )
}
