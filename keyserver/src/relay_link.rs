//! The relay link (SECURITY.md §10.8): relays dial `/v2/relay-link`,
//! authenticate with their service key, and are sent every user log that
//! changes, so that a revocation reaches the relay at once, whether or not
//! another device of that user is online.
//!
//! ```text
//! keyserver -> relay  AuthChallenge { version 2, "ward-keyserver", instance, nonce }
//! relay -> keyserver  AuthResponse  { user_id "", device_id: service key, signature, log [], version 2 }
//! keyserver -> relay  AuthResult    { ok }            (UNAUTHENTICATED and close 4001 if not allowed)
//! relay -> keyserver  LinkSubscribe { cursor }
//! keyserver -> relay  LinkFrame { notice: LinkNotice { user_id, entries } }*  LinkFrame { synced: { cursor } }
//!                     ... again after every change
//! relay -> keyserver  LinkFetch { user_ids }    (any time: logs the relay lacks at a login)
//! keyserver -> relay  LinkFrame { notice: LinkNotice { user_id, entries } }*   (cursor unchanged)
//! ```
//!
//! The keyserver's claims are never trusted by the relay: a notice carries
//! the user's whole stored log, and the relay verifies what is new in it
//! from the organisation root before acting. The link therefore needs no
//! secret shared between the two services: the relay proves its service
//! key, and the keyserver is authenticated by TLS to its name plus the
//! instance binding of the challenge the relay signs.
//!
//! The cursor is the highest `rowid` of `log_entries` (entries are never
//! deleted and written one transaction at a time, so rowids grow with
//! commit order). A relay that reconnects with its last cursor is sent every
//! log that changed meanwhile; one that starts with 0 is sent every log.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;
use tokio::sync::watch;
use ward_core::keys::SigningPublicKey;
use ward_core::room::RoomId;
use ward_net::handshake::Audience;
use ward_net::tls::ServerStream;
use ward_net::{Conn, NetError, close};
use ward_proto::v1::{
    LinkFetch, LinkFrame, LinkNotice, LinkSubscribe, LinkSynced, SignedRoomStatement,
    SignedStatement, link_frame,
};

use crate::error::RequestError;
use crate::storage::{self, Db};

/// The request path of the relay link on the keyserver's listener.
pub use ward_core::auth::RELAY_LINK_PATH;

/// Users whose logs go in one read transaction (and one `LinkSynced`).
const USERS_PER_BATCH: i64 = 64;
/// Most users one `LinkFetch` may name.
pub const MAX_FETCH_USERS: usize = 64;
/// Largest `LinkFetch` frame (64 user ids of at most 128 bytes, and tags).
const MAX_FETCH_BYTES: usize = 16 << 10;
/// How often the link re-reads the cursor even without a local append: a
/// backstop for entries written by another process sharing the database.
const POLL: Duration = Duration::from_secs(2);
/// WebSocket ping interval on an idle link (keeps NATs and the relay's read
/// timeout satisfied).
const PING: Duration = Duration::from_secs(30);

/// The link's Prometheus series.
#[derive(Clone, Debug)]
pub struct LinkMetrics {
    /// Relays connected (authenticated) now.
    pub connected: ward_ops::metrics::Gauge,
    /// Log notices sent to relays.
    pub notices: ward_ops::metrics::Counter,
    /// Link handshakes refused (bad signature, key not allowed).
    pub refused: ward_ops::metrics::Counter,
}

impl LinkMetrics {
    /// Registers the series on `r`.
    pub fn new(r: &ward_ops::metrics::Registry) -> Self {
        Self {
            connected: r.gauge(
                "ward_keyserver_relay_links",
                "Relays connected to the relay link (SECURITY.md 10.8).",
            ),
            notices: r.counter(
                "ward_keyserver_relay_link_notices_total",
                "User logs sent to relays over the relay link.",
            ),
            refused: r.counter(
                "ward_keyserver_relay_link_refused_total",
                "Relay link handshakes refused (bad signature or service key not allowed).",
            ),
        }
    }
}

/// What the link needs of the keyserver.
pub struct LinkState {
    /// The database.
    pub db: Arc<Db>,
    /// This keyserver as a handshake audience.
    pub audience: Audience,
    /// The relay service keys allowed to connect.
    pub allowed: Vec<SigningPublicKey>,
    /// Bumped after every append this process committed.
    pub changes: watch::Receiver<u64>,
    /// Handshake time and frame limits.
    pub limits: ward_net::Limits,
    /// Series.
    pub metrics: LinkMetrics,
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the relay sent a frame that is not a valid LinkFetch")]
    Unexpected,
}

/// Serves one relay link on an upgraded connection until the relay leaves,
/// `stop` fires, or an error; closes the connection with a code.
pub async fn serve(
    mut conn: Conn<ServerStream>,
    state: &LinkState,
    nonce: [u8; 32],
    stop: &mut watch::Receiver<bool>,
    unauthenticated: ward_net::peers::Ticket,
) {
    let relay = tokio::select! {
        r = tokio::time::timeout(state.limits.auth_timeout, handshake(&mut conn, state, nonce)) => match r {
            Ok(Ok(key)) => key,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "relay link refused");
                state.metrics.refused.inc();
                conn.close_for(&e).await;
                return;
            }
            Err(_) => {
                conn.close(close::AUTH_TIMEOUT, "handshake timeout").await;
                return;
            }
        },
        _ = stop.changed() => {
            conn.close(close::GOING_AWAY, "shutting down").await;
            return;
        }
    };
    // Authenticated: no longer counted against the unauthenticated caps.
    drop(unauthenticated);
    let mut conn = conn.authenticated().await;
    let _connected = state.metrics.connected.track();
    tracing::info!(relay = %hex(relay.as_bytes()), "relay link up");
    match stream(&mut conn, state, stop).await {
        Ok(()) => conn.close(close::GOING_AWAY, "shutting down").await,
        Err(LinkError::Net(e)) => {
            tracing::info!(error = %e, "relay link down");
            conn.close_for(&e).await;
        }
        Err(LinkError::Unexpected) => {
            conn.close(close::PROTOCOL_ERROR, "unexpected frame").await;
        }
        Err(LinkError::Storage(e)) => {
            tracing::warn!(error = %e, "relay link: reading the logs failed");
            conn.close(close::INTERNAL_ERROR, "internal error").await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The challenge-response; the relay's key must be allowed.
async fn handshake(
    conn: &mut Conn<ServerStream>,
    state: &LinkState,
    nonce: [u8; 32],
) -> Result<SigningPublicKey, NetError> {
    ward_net::handshake::link_server(conn, &state.audience, nonce, |k| state.allowed.contains(k))
        .await
}

/// One batch of changed logs after `cursor`, and the cursor it brings the
/// relay to (`None`: nothing changed).
type Batch = (Vec<(String, Vec<SignedStatement>)>, u64);

fn changed_since(
    conn: &mut rusqlite::Connection,
    cursor: u64,
) -> Result<Option<Batch>, RequestError> {
    let tx = conn.transaction()?;
    // Users ordered by their latest entry: once the batch's last user is
    // sent, every entry up to its latest rowid belongs to a user sent here
    // or to one whose whole log comes in a later batch (its latest entry is
    // newer). Notices carry whole logs, so nothing in between is lost.
    let users: Vec<(String, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT user_id, MAX(rowid) AS last FROM log_entries WHERE rowid > ?1
             GROUP BY user_id ORDER BY last LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![cursor as i64, USERS_PER_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let Some(&(_, last)) = users.last() else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(users.len());
    for (user, _) in users {
        let log = storage::load_log(&tx, &user)?;
        out.push((user, log));
    }
    Ok(Some((out, u64::try_from(last).unwrap_or(0))))
}

/// One batch of changed room logs after `room_cursor` (room id, whole
/// log), and the cursor it brings the relay to (`None`: nothing changed).
type RoomBatch = (Vec<(Vec<u8>, Vec<SignedRoomStatement>)>, u64);

/// [`changed_since`] for room logs (SECURITY.md §17.10): rooms ordered by
/// their latest entry's rowid, each sent with its whole log.
fn rooms_changed_since(
    conn: &mut rusqlite::Connection,
    room_cursor: u64,
) -> Result<Option<RoomBatch>, RequestError> {
    let tx = conn.transaction()?;
    let rooms: Vec<(Vec<u8>, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT room_id, MAX(rowid) AS last FROM room_entries WHERE rowid > ?1
             GROUP BY room_id ORDER BY last LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![room_cursor as i64, USERS_PER_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let Some(&(_, last)) = rooms.last() else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(rooms.len());
    for (id, _) in rooms {
        let Some(room) = RoomId::from_slice(&id) else {
            continue;
        };
        let log = crate::room_storage::load_room_log(&tx, &room)?
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        out.push((id, log));
    }
    Ok(Some((out, u64::try_from(last).unwrap_or(0))))
}

async fn stream(
    conn: &mut Conn<ServerStream>,
    state: &LinkState,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let sub: LinkSubscribe = tokio::time::timeout(state.limits.auth_timeout, conn.recv_msg())
        .await
        .map_err(|_| NetError::Timeout)??
        .ok_or(NetError::Closed(None, String::new()))?;
    let mut cursor = sub.cursor;
    let mut room_cursor = sub.room_cursor;
    let mut changes = state.changes.clone();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(PING);
    ping.reset();
    let max = conn.max_frame_bytes();
    loop {
        // Send everything after the cursor, batch by batch.
        loop {
            let db = state.db.clone();
            let batch = db
                .call(move |c| changed_since(c, cursor))
                .await
                .map_err(|e| LinkError::Storage(e.to_string()))?;
            let Some((logs, next)) = batch else { break };
            for (user_id, entries) in logs {
                let size: usize = entries
                    .iter()
                    .map(|e| e.statement.len() + e.signature.len() + 8)
                    .sum();
                if size + user_id.len() + 64 > max {
                    // The relay cannot take it; it still learns the log from
                    // the user's devices (SECURITY.md §9).
                    tracing::warn!(user = %user_id, "relay link: log too large for one frame; skipped");
                    continue;
                }
                let frame = LinkFrame {
                    frame: Some(link_frame::Frame::Notice(LinkNotice {
                        user_id,
                        entries,
                        ..LinkNotice::default()
                    })),
                };
                conn.send_msg(&frame).await?;
                state.metrics.notices.inc();
            }
            cursor = next;
            conn.send_msg(&LinkFrame {
                frame: Some(link_frame::Frame::Synced(LinkSynced {
                    cursor,
                    room_cursor,
                })),
            })
            .await?;
        }
        // Then the room logs, once the user logs are sent: a room entry is
        // verified against its authors' and members' user logs, which were
        // stored before it, so the relay holds them when the room comes.
        loop {
            let db = state.db.clone();
            let batch = db
                .call(move |c| rooms_changed_since(c, room_cursor))
                .await
                .map_err(|e| LinkError::Storage(e.to_string()))?;
            let Some((rooms, next)) = batch else { break };
            for (room_id, room_entries) in rooms {
                let size: usize = room_entries
                    .iter()
                    .map(|e| e.statement.len() + e.signature.len() + 8)
                    .sum();
                if size + 64 > max {
                    tracing::warn!("relay link: room log too large for one frame; skipped");
                    continue;
                }
                let frame = LinkFrame {
                    frame: Some(link_frame::Frame::Notice(LinkNotice {
                        room_id,
                        room_entries,
                        ..LinkNotice::default()
                    })),
                };
                conn.send_msg(&frame).await?;
                state.metrics.notices.inc();
            }
            room_cursor = next;
            conn.send_msg(&LinkFrame {
                frame: Some(link_frame::Frame::Synced(LinkSynced {
                    cursor,
                    room_cursor,
                })),
            })
            .await?;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            r = changes.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            _ = poll.tick() => {}
            _ = ping.tick() => conn.ping().await?,
            frame = conn.recv() => match frame? {
                // After its subscription a relay only asks for logs.
                Some(bytes) => fetch(conn, state, &bytes).await?,
                None => return Ok(()),
            },
        }
    }
}

/// Answers a `LinkFetch`: a notice with the whole stored log of each named
/// user that exists (the same notice a change would bring; the relay
/// verifies it the same way). Anything else from the relay ends the link.
async fn fetch(
    conn: &mut Conn<ServerStream>,
    state: &LinkState,
    bytes: &[u8],
) -> Result<(), LinkError> {
    let req: LinkFetch =
        ward_proto::decode_bounded(bytes, MAX_FETCH_BYTES).map_err(|_| LinkError::Unexpected)?;
    if req.user_ids.is_empty()
        || req.user_ids.len() > MAX_FETCH_USERS
        || !req
            .user_ids
            .iter()
            .all(|u| ward_core::ids::valid_user_id(u))
    {
        return Err(LinkError::Unexpected);
    }
    let mut users = req.user_ids;
    users.sort();
    users.dedup();
    let logs = state
        .db
        .call(move |c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(users.len());
            for u in users {
                let log = storage::load_log(&tx, &u)?;
                if !log.is_empty() {
                    out.push((u, log));
                }
            }
            Ok::<_, RequestError>(out)
        })
        .await
        .map_err(|e| LinkError::Storage(e.to_string()))?;
    let max = conn.max_frame_bytes();
    for (user_id, entries) in logs {
        let size: usize = entries
            .iter()
            .map(|e| e.statement.len() + e.signature.len() + 8)
            .sum();
        if size + user_id.len() + 64 > max {
            tracing::warn!(user = %user_id, "relay link: log too large for one frame; skipped");
            continue;
        }
        let frame = LinkFrame {
            frame: Some(link_frame::Frame::Notice(LinkNotice {
                user_id,
                entries,
                ..LinkNotice::default()
            })),
        };
        conn.send_msg(&frame).await?;
        state.metrics.notices.inc();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::testkit::{KIT_TIME, Org};

    /// Batch after batch from a cursor, every user whose log changed after
    /// it arrives with its whole log, and a user that changes again between
    /// batches comes again with its newer log: nothing is lost.
    #[test]
    fn batches_from_a_cursor_cover_every_change_once_and_in_whole() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).unwrap();
        let path = std::env::temp_dir().join(format!(
            "ward-ks-link-{}-{}.db",
            std::process::id(),
            u64::from_le_bytes(tag)
        ));
        let mut conn = storage::open_connection(&path).unwrap();
        storage::migrate(&mut conn).unwrap();
        let n = USERS_PER_BATCH as usize + 6;
        let mut users = Vec::new();
        for i in 0..n {
            let c = org.enroll(&mut rng, &format!("u{i}"));
            storage::append(&mut conn, &root, KIT_TIME, &c.log[0]).unwrap();
            users.push(c);
        }
        let mut seen = std::collections::BTreeMap::new();
        let first = changed_since(&mut conn, 0).unwrap().unwrap();
        assert_eq!(first.0.len(), USERS_PER_BATCH as usize);
        for (u, log) in first.0 {
            seen.insert(u, log.len());
        }
        // u0 (sent in the first batch) changes before the second.
        let mut u0 = users.swap_remove(0);
        let key = ward_core::keys::UserEncryptionKey::generate(&mut rng).public_key();
        let e = u0.chain.rotate_user_key(&u0.device, &key, KIT_TIME);
        storage::append(&mut conn, &root, KIT_TIME, &e).unwrap();
        u0.chain.apply(&root, &e).unwrap();
        let mut cursor = first.1;
        while let Some((logs, next)) = changed_since(&mut conn, cursor).unwrap() {
            assert!(next > cursor);
            for (u, log) in logs {
                seen.insert(u, log.len());
            }
            cursor = next;
        }
        assert_eq!(seen.len(), n, "every user");
        assert_eq!(seen["u0"], 2, "u0 again, with its whole newer log");
        assert!(changed_since(&mut conn, cursor).unwrap().is_none());
        drop(conn);
        for s in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{s}", path.display()));
        }
    }
}
