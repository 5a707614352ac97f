//! The relay's end of the keyserver's relay link (SECURITY.md §10.8): the
//! relay dials the keyserver, proves its service key, and is sent every user
//! log that changes there. A revocation signed by the organisation root thus
//! reaches the relay at once, whether or not another device of that user is
//! online, and the revoked device is disconnected (`DEVICE_REVOKED`),
//! refused at its next login and its mailbox deleted.
//!
//! The keyserver is not trusted here either: each notice carries the user's
//! log as the keyserver stores it, and goes through the same verification as
//! a log a device presents ([`crate::logs::refresh`]): only entries that
//! extend the relay's own verified log, each checked from the organisation
//! root (sequence, link, author, signature), change anything. A forged,
//! unsigned, forked or older log is refused or ignored and logged.
//!
//! A device may log in presenting only the end of its log (SECURITY.md §9).
//! When the relay does not hold the rest, it asks the keyserver for the log
//! over the link ([`Fetcher`], a `LinkFetch` frame) and waits briefly for
//! the notice that answers it, which is verified like any other.
//!
//! The link reconnects with backoff. The relay keeps the keyserver's cursor
//! of the last batch it handled (in memory) and sends it on reconnecting, so
//! logs that changed while the link was down are sent then; after a relay
//! restart the cursor is 0 and every log is sent (and verified) once.
//!
//! Room logs come the same way, with their own cursor (SECURITY.md §17.10,
//! [`crate::rooms`]): verified against the user logs the relay holds, as
//! members verify them, rollbacks and forks refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use ward_core::auth::{Audience, MAX_CHALLENGE_BYTES, RELAY_LINK_PATH};
use ward_core::keys::RelayServiceKey;
use ward_net::tls::ClientTls;
use ward_net::{Conn, NetError};
use ward_proto::decode_bounded;
use ward_proto::v1::{
    AuthChallenge, AuthResult, ErrorCode, LinkFetch, LinkFrame, LinkSubscribe, SignedStatement,
    link_frame,
};
use zeroize::Zeroizing;

use crate::state::Shared;

/// Where the relay finds the keyserver's relay link, and how it proves
/// itself there.
#[derive(Clone, Debug)]
pub struct KeyserverLink {
    /// The keyserver's base URL (`wss://host:port`); the link's path
    /// (`/v2/relay-link`) is appended.
    pub url: String,
    /// The keyserver's instance id (its challenge must name it).
    pub instance: String,
    /// Whom the relay trusts for the keyserver's TLS certificate.
    pub tls: ClientTls,
    /// This relay's service key (its public half is configured on the
    /// keyserver with `--relay-key`).
    pub service_key: Arc<RelayServiceKey>,
    /// First reconnect delay (doubled up to `reconnect_max`, with jitter).
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl KeyserverLink {
    /// A link to `url` with the default instance, web-PKI trust and
    /// backoff (0.5 s to 30 s).
    pub fn new(url: impl Into<String>, service_key: Arc<RelayServiceKey>) -> Self {
        Self {
            url: url.into(),
            instance: ward_core::auth::DEFAULT_INSTANCE.to_owned(),
            tls: ClientTls::default(),
            service_key,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// Largest frame the relay takes on the link: one user's whole log (the
/// keyserver skips a log that does not fit).
const MAX_LINK_FRAME_BYTES: usize = 16 << 20;
/// Largest `AuthResult`.
const MAX_RESULT_BYTES: usize = 64;
/// Nothing (not even a ping, sent every 30 s) from the keyserver for this
/// long: the link is considered dead and dialled again.
const READ_TIMEOUT: Duration = Duration::from_secs(90);

/// Users asked for in one `LinkFetch` (the keyserver's cap).
const FETCH_BATCH: usize = 64;
/// Fetches queued while the link is busy or down; more are dropped (the
/// login they serve is refused `UNKNOWN_USER`, and the device presents its
/// whole log next).
const FETCH_QUEUE: usize = 256;
/// A user asked for is not asked for again within this time: logins forged
/// in a loop (any key can sign its own handshake) cost the keyserver one
/// log read per user and interval, not one per attempt.
const FETCH_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// The relay's requests for logs it lacks, to the link task; and the
/// signal, for the logins waiting on them, that a notice was applied.
pub struct Fetcher {
    enabled: bool,
    tx: mpsc::Sender<String>,
    rx: Mutex<Option<mpsc::Receiver<String>>>,
    applied: watch::Sender<u64>,
    recent: Mutex<HashMap<String, Instant>>,
}

impl Fetcher {
    /// A fetcher; `enabled` when the relay follows a keyserver link.
    pub fn new(enabled: bool) -> Self {
        let (tx, rx) = mpsc::channel(FETCH_QUEUE);
        Self {
            enabled,
            tx,
            rx: Mutex::new(Some(rx)),
            applied: watch::channel(0).0,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Whether logs can be fetched at all (a link is configured).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Subscribes to applied notices (before [`Self::request`], so that
    /// none is missed).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Queues a request for `user_id`'s log, unless one was queued
    /// recently or the queue is full.
    pub fn request(&self, user_id: &str) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent
            .get(user_id)
            .is_some_and(|at| now.duration_since(*at) < FETCH_AGAIN_AFTER)
        {
            return;
        }
        if recent.len() >= 4096 {
            recent.retain(|_, at| now.duration_since(*at) < FETCH_AGAIN_AFTER);
        }
        if self.tx.try_send(user_id.to_owned()).is_ok() {
            recent.insert(user_id.to_owned(), now);
        }
    }

    fn notice_applied(&self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn take_requests(&self) -> Option<mpsc::Receiver<String>> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Errors of the service key file.
#[derive(Debug, thiserror::Error)]
pub enum ServiceKeyError {
    /// Reading or creating the file failed.
    #[error("service key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error("service key {0}: not 64 hex digits")]
    Format(String),
    /// No randomness from the operating system.
    #[error("no randomness for a new service key")]
    Random,
}

/// Reads the relay's service key from `path` (64 hex digits, the Ed25519
/// seed), creating it owner-only (0600) with a fresh key if it does not
/// exist. The secret never leaves the file and this process.
pub fn load_or_create_service_key(path: &Path) -> Result<RelayServiceKey, ServiceKeyError> {
    let io = |source| ServiceKeyError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ServiceKeyError::Format(path.display().to_string()))?;
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), &mut seed[..])
                .map_err(|_| ServiceKeyError::Format(path.display().to_string()))?;
            RelayServiceKey::import_secret(&seed[..])
                .map_err(|_| ServiceKeyError::Format(path.display().to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut seed[..]).map_err(|_| ServiceKeyError::Random)?;
            let key =
                RelayServiceKey::import_secret(&seed[..]).map_err(|_| ServiceKeyError::Random)?;
            let text = Zeroizing::new(format!("{}\n", hex::encode(&seed[..])));
            write_private(path, text.as_bytes()).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// Creates `path` (never overwriting) readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The link's Prometheus series.
#[derive(Clone, Debug)]
pub struct LinkMetrics {
    connected: ward_ops::metrics::Gauge,
    notices: ward_ops::metrics::Counter,
    refused: ward_ops::metrics::Counter,
}

impl LinkMetrics {
    fn new(r: &ward_ops::metrics::Registry) -> Self {
        Self {
            connected: r.gauge(
                "ward_relay_keyserver_link_connected",
                "1 while the keyserver's relay link is up (SECURITY.md 10.8).",
            ),
            notices: r.counter(
                "ward_relay_keyserver_link_notices_total",
                "User logs received over the keyserver link and verified.",
            ),
            refused: r.counter(
                "ward_relay_keyserver_link_notices_refused_total",
                "Logs from the keyserver link that did not verify or forked (not acted upon).",
            ),
        }
    }
}

/// Why a link session ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Auth(#[from] ward_core::AuthError),
    #[error("the relay could not store a log; dialling again from the last cursor")]
    Internal,
    #[error("undecodable frame from the keyserver")]
    Protocol,
    #[error("nothing from the keyserver for {0:?}")]
    Silent(Duration),
}

/// Runs the link until `stop` fires: dial, authenticate, follow the
/// notices; on failure wait (backoff with jitter) and dial again.
pub(crate) async fn run(shared: Arc<Shared>, link: KeyserverLink, mut stop: watch::Receiver<bool>) {
    let metrics = LinkMetrics::new(&shared.config.metrics);
    // One link task per relay: it owns the fetch requests.
    let Some(mut fetches) = shared.link_fetch.take_requests() else {
        warn!("keyserver link: started twice; this one stops");
        return;
    };
    let mut cursor = (0u64, 0u64);
    let mut delay = link.reconnect_min;
    loop {
        let began = tokio::time::Instant::now();
        let outcome = tokio::select! {
            r = session(&shared, &link, &mut cursor, &metrics, &mut fetches) => r,
            _ = stop.changed() => return,
        };
        metrics.connected.set(0);
        match outcome {
            Err(LinkError::Net(NetError::Refused(code))) => {
                warn!(
                    ?code,
                    "keyserver link refused: is this relay's service key allowed there (--relay-key)?"
                );
            }
            Err(e) => info!(error = %e, "keyserver link down"),
            Ok(()) => info!("keyserver link closed"),
        }
        // A link that stayed up a while starts the backoff again.
        if began.elapsed() > link.reconnect_max {
            delay = link.reconnect_min;
        }
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(2);
        let wait = Duration::from_millis(ms / 2 + jitter(ms / 2));
        delay = (delay * 2).min(link.reconnect_max);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

fn jitter(max: u64) -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() || max == 0 {
        return 0;
    }
    u64::from_le_bytes(b) % (max + 1)
}

async fn session(
    shared: &Shared,
    link: &KeyserverLink,
    cursor: &mut (u64, u64),
    metrics: &LinkMetrics,
    fetches: &mut mpsc::Receiver<String>,
) -> Result<(), LinkError> {
    let url = format!("{}{RELAY_LINK_PATH}", link.url.trim_end_matches('/'));
    let limits = ward_net::Limits {
        max_frame_bytes: MAX_LINK_FRAME_BYTES,
        ..ward_net::Limits::DEFAULT
    };
    let audience = Audience::keyserver(shared.config.org_root, link.instance.clone());
    let mut conn = tokio::time::timeout(limits.auth_timeout, async {
        let mut conn = ward_net::tls::connect(&url, &limits, &link.tls).await?;
        handshake(&mut conn, &link.service_key, &audience).await?;
        Ok::<_, LinkError>(conn)
    })
    .await
    .map_err(|_| NetError::Timeout)??;
    conn.send_msg(&LinkSubscribe {
        cursor: cursor.0,
        room_cursor: cursor.1,
    })
    .await?;
    metrics.connected.set(1);
    info!(
        cursor = cursor.0,
        room_cursor = cursor.1,
        "keyserver link up"
    );
    loop {
        let read = tokio::time::timeout(READ_TIMEOUT, conn.recv());
        let bytes = tokio::select! {
            r = read => match r {
                Err(_) => return Err(LinkError::Silent(READ_TIMEOUT)),
                Ok(r) => match r? {
                    Some(b) => b,
                    None => return Ok(()),
                },
            },
            Some(first) = fetches.recv() => {
                let mut user_ids = vec![first];
                while user_ids.len() < FETCH_BATCH {
                    match fetches.try_recv() {
                        Ok(u) => user_ids.push(u),
                        Err(_) => break,
                    }
                }
                conn.send_msg(&LinkFetch { user_ids }).await?;
                continue;
            }
        };
        let frame: LinkFrame =
            decode_bounded(&bytes, MAX_LINK_FRAME_BYTES).map_err(|_| LinkError::Protocol)?;
        match frame.frame {
            Some(link_frame::Frame::Notice(n)) if !n.room_id.is_empty() => {
                if apply_room(shared, &n.room_id, n.room_entries).await? {
                    metrics.notices.inc();
                } else {
                    metrics.refused.inc();
                }
            }
            Some(link_frame::Frame::Notice(n)) => {
                if apply(shared, &n.user_id, n.entries).await? {
                    metrics.notices.inc();
                } else {
                    metrics.refused.inc();
                }
            }
            // Every notice before it was applied (they are handled in
            // order): resume from here next time.
            Some(link_frame::Frame::Synced(s)) => *cursor = (s.cursor, s.room_cursor),
            None => return Err(LinkError::Protocol),
        }
    }
}

/// The relay's side of the challenge-response: the challenge must be from
/// the keyserver it dialled (service and instance; the root is bound into
/// the signature), then it signs with its service key.
async fn handshake<S>(
    conn: &mut Conn<S>,
    key: &RelayServiceKey,
    audience: &Audience,
) -> Result<(), LinkError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let bytes = conn
        .recv()
        .await?
        .ok_or(NetError::Closed(None, String::new()))?;
    let challenge: AuthChallenge =
        decode_bounded(&bytes, MAX_CHALLENGE_BYTES).map_err(|_| LinkError::Protocol)?;
    if challenge.service != audience.service || challenge.instance != audience.instance {
        return Err(NetError::WrongService(format!(
            "{}/{}",
            challenge.service, challenge.instance
        ))
        .into());
    }
    let response = ward_core::auth::respond_link(key, audience, &challenge)?;
    conn.send_msg(&response).await?;
    let bytes = conn
        .recv()
        .await?
        .ok_or(NetError::Closed(None, String::new()))?;
    let result: AuthResult =
        decode_bounded(&bytes, MAX_RESULT_BYTES).map_err(|_| LinkError::Protocol)?;
    if result.ok {
        Ok(())
    } else {
        Err(
            NetError::Refused(ErrorCode::try_from(result.error).unwrap_or(ErrorCode::Unspecified))
                .into(),
        )
    }
}

/// Verifies one notice like a presented log and acts on what it revokes
/// (disconnect, then prune the mailboxes). `Ok(false)`: refused, nothing
/// changed; `Err`: the relay itself failed (the session ends without
/// moving the cursor, so the notice comes again).
async fn apply(
    shared: &Shared,
    user_id: &str,
    entries: Vec<SignedStatement>,
) -> Result<bool, LinkError> {
    if entries.is_empty() || !ward_core::ids::valid_user_id(user_id) {
        warn!("keyserver link: a notice without a log or with an invalid user id; ignored");
        return Ok(false);
    }
    match crate::logs::refresh(shared, user_id, entries).await {
        Ok(user) => {
            crate::connection::prune_revoked(shared, user_id, &user).await;
            shared.link_fetch.notice_applied();
            Ok(true)
        }
        Err(ErrorCode::Internal | ErrorCode::Conflict) => Err(LinkError::Internal),
        Err(code) => {
            warn!(
                user = user_id,
                ?code,
                "keyserver link: a log that does not verify against the relay's; not acted upon"
            );
            Ok(false)
        }
    }
}

/// Verifies one room notice (SECURITY.md §17.10). `Ok(false)`: refused
/// (forged, forked, rolled back: logged, nothing changed); `Err`: the
/// relay failed, the notice comes again.
async fn apply_room(
    shared: &Shared,
    room_id: &[u8],
    entries: Vec<ward_proto::v1::SignedRoomStatement>,
) -> Result<bool, LinkError> {
    match crate::rooms::apply_notice(shared, room_id, entries).await {
        Ok(_) => Ok(true),
        Err(crate::rooms::RoomLogError::Internal) => Err(LinkError::Internal),
        Err(e) => {
            warn!(
                room = %hex::encode(room_id),
                error = %e,
                "keyserver link: a room log that does not verify against the relay's; not acted upon"
            );
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_key_is_created_owner_only_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("ward-relay-sk-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("relay.db.service-key");
        let _ = std::fs::remove_file(&path);
        let created = load_or_create_service_key(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_create_service_key(&path).unwrap();
        assert_eq!(created.public_key(), again.public_key());
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(
            load_or_create_service_key(&path),
            Err(ServiceKeyError::Format(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
