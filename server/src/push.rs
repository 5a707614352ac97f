//! Content-free push (SECURITY.md §9.2): when an offline device's mailbox
//! gets something, the relay asks a push gateway to wake the device, giving
//! it the device's push token and nothing else.
//!
//! * [`Pusher`] holds each registered device's token and an *armed* flag.
//!   The writer, after each commit, reports every new entry of a mailbox
//!   that is not connected; an armed mailbox with a token is disarmed and
//!   one wake-up (the token) is queued. Connecting re-arms it. So an offline
//!   device gets one wake-up however many messages arrive, and a connected
//!   one gets none.
//! * The queue is bounded and filled with `try_send`: the writer never waits
//!   for a gateway. A full queue drops the wake-up (counted).
//! * One worker drains the queue into a [`PushGateway`], retrying failures
//!   with backoff; [`WebhookGateway`] is the one shipped (HTTP/1.1 POST of
//!   `{"token":"<hex>"}`), since APNs and FCM are reached through a
//!   deployment's own bridge.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tracing::{debug, warn};
use ward_ops::metrics::Counter;

use crate::storage::Mailbox;

/// Longest push token accepted (APNs tokens are 32 bytes, FCM's some 160).
pub const MAX_TOKEN_BYTES: usize = ward_proto::MAX_PUSH_TOKEN_BYTES;
/// Wake-ups waiting for the gateway; more are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Wake-ups being sent (or waiting to be retried) at once: a slow or
/// failing gateway holds at most this many, the rest wait in the queue.
pub const IN_FLIGHT: usize = 32;
/// The waits before the second, third and fourth attempt.
pub const DEFAULT_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(8),
];
/// One attempt (connect, request, status line) may take this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a gateway's answer read to find its status line.
const MAX_STATUS_LINE: usize = 8 << 10;

/// Why one wake-up attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The gateway could not be reached, or the connection failed.
    #[error("push gateway unreachable: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway answered with a status other than 2xx.
    #[error("push gateway answered HTTP {0}")]
    Status(u16),
    /// The gateway's answer was not HTTP/1.x.
    #[error("push gateway answer is not HTTP/1.x")]
    BadResponse,
    /// No answer within [`ATTEMPT_TIMEOUT`].
    #[error("push gateway did not answer in time")]
    Timeout,
    /// The webhook URL is unusable.
    #[error("push webhook URL: {0}")]
    Url(String),
    /// The TLS handshake with an `https://` webhook failed.
    #[error("push gateway TLS: {0}")]
    Tls(#[from] ward_net::tls::TlsError),
}

/// What [`PushGateway::wake`] returns.
pub type WakeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PushError>> + Send + 'a>>;

/// Something that can wake a device given its push token (APNs, FCM, or a
/// deployment's bridge to them). It is given the token and nothing else.
pub trait PushGateway: Send + Sync {
    /// One attempt to wake the device holding `token`.
    fn wake<'a>(&'a self, token: &'a [u8]) -> WakeFuture<'a>;
}

/// A webhook: `POST <path>` with `Content-Type: application/json` and the
/// body `{"token":"<lowercase hex>"}`, over HTTP/1.1, in TLS 1.3 for
/// `https://` (verified as `wss://` is, `ward_net::tls`). A 2xx status is
/// success.
#[derive(Debug, Clone)]
pub struct WebhookGateway {
    /// `host:port` to connect to.
    addr: String,
    /// The host alone (no brackets, no port): the TLS server name.
    hostname: String,
    /// The `Host` header.
    host: String,
    /// The request target (path and query), at least `/`.
    path: String,
    /// `Some` for `https://`.
    tls: Option<ward_net::tls::ClientTls>,
}

impl WebhookGateway {
    /// Parses `http://host[:port][/path]` or `https://…`. Plain `http://` to
    /// a host that is not loopback is refused unless `allow_plain_remote`
    /// (the token would cross a network in clear). `https://` servers are
    /// verified against `tls` (the web roots, or a pinned CA).
    pub fn new(
        url: &str,
        allow_plain_remote: bool,
        tls: ward_net::tls::ClientTls,
    ) -> Result<Self, PushError> {
        let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("https://") {
            (r, Some(tls), 443)
        } else if let Some(r) = url.strip_prefix("http://") {
            (r, None, 80)
        } else {
            return Err(PushError::Url("must start with http:// or https://".into()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(PushError::Url("no host, or user information in it".into()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| PushError::Url("unclosed IPv6 address".into()))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port: u16 = match port {
            Some(p) => p
                .parse()
                .map_err(|_| PushError::Url(format!("bad port {p:?}")))?,
            None => default_port,
        };
        if host.is_empty() {
            return Err(PushError::Url("no host".into()));
        }
        if tls.is_none() && !allow_plain_remote && !ward_net::tls::is_loopback_host(host) {
            return Err(PushError::Url(format!(
                "plain http:// to {host}, which is not loopback (--push-webhook-insecure allows it)"
            )));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(PushError::Url(
                "control characters or spaces in the path".into(),
            ));
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            host: authority.to_owned(),
            hostname: host.to_owned(),
            addr,
            path: path.to_owned(),
            tls,
        })
    }

    /// The request for `token`, byte for byte.
    pub fn request(&self, token: &[u8]) -> Vec<u8> {
        let body = format!("{{\"token\":\"{}\"}}", hex::encode(token));
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.path,
            self.host,
            body.len(),
            body
        )
        .into_bytes()
    }

    async fn post(&self, token: &[u8]) -> Result<(), PushError> {
        let tcp = TcpStream::connect(&self.addr).await?;
        let request = self.request(token);
        match &self.tls {
            Some(tls) => exchange(tls.connect_stream(&self.hostname, tcp).await?, &request).await,
            None => exchange(tcp, &request).await,
        }
    }
}

/// Writes `request` and reads the answer's status line.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &[u8],
) -> Result<(), PushError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_STATUS_LINE {
            return Err(PushError::BadResponse);
        }
        head.extend_from_slice(&buf[..n]);
    }
    match status_code(&head) {
        Some(s) if (200..300).contains(&s) => Ok(()),
        Some(s) => Err(PushError::Status(s)),
        None => Err(PushError::BadResponse),
    }
}

/// The status code of an `HTTP/1.x NNN ...` status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

impl PushGateway for WebhookGateway {
    fn wake<'a>(&'a self, token: &'a [u8]) -> WakeFuture<'a> {
        Box::pin(async move {
            match timeout(ATTEMPT_TIMEOUT, self.post(token)).await {
                Ok(r) => r,
                Err(_) => Err(PushError::Timeout),
            }
        })
    }
}

struct Slot {
    token: Vec<u8>,
    /// Whether the next entry of this (offline) mailbox queues a wake-up.
    armed: bool,
}

/// The registered tokens and the coalescing state; see the module docs.
/// Its lock is never held across an `.await`, and taken after the
/// registry's (never the other way round).
#[derive(Default)]
pub struct Pusher {
    slots: Mutex<HashMap<Mailbox, Slot>>,
    /// `None`: no gateway configured (tokens are kept, nothing is sent).
    jobs: Option<mpsc::Sender<Vec<u8>>>,
    dropped: Option<Counter>,
}

impl Pusher {
    /// A pusher holding the stored `tokens`, each armed, queueing wake-ups
    /// on `jobs` (if a gateway is configured) and counting drops.
    pub fn new(
        tokens: Vec<(Mailbox, Vec<u8>)>,
        jobs: Option<mpsc::Sender<Vec<u8>>>,
        dropped: Option<Counter>,
    ) -> Self {
        let slots = tokens
            .into_iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(m, token)| (m, Slot { token, armed: true }))
            .collect();
        Self {
            slots: Mutex::new(slots),
            jobs,
            dropped,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Mailbox, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `mailbox`'s token once it is durable (empty: removes it).
    /// Armed: the device registers while connected, so the first entry
    /// after it goes offline wakes it.
    pub fn set(&self, mailbox: Mailbox, token: Vec<u8>) {
        let mut slots = self.slots();
        if token.is_empty() {
            slots.remove(&mailbox);
        } else {
            slots.insert(mailbox, Slot { token, armed: true });
        }
    }

    /// Forgets `mailbox`'s token (its device was revoked).
    pub fn remove(&self, mailbox: &Mailbox) {
        self.slots().remove(mailbox);
    }

    /// The device connected: it sees its mailbox, so its next time offline
    /// with something new deserves a wake-up again.
    pub fn arm(&self, mailbox: &Mailbox) {
        if let Some(s) = self.slots().get_mut(mailbox) {
            s.armed = true;
        }
    }

    /// Whether an entry of `mailbox` now would queue a wake-up (a gateway,
    /// a token, armed).
    pub fn is_armed(&self, mailbox: &Mailbox) -> bool {
        self.jobs.is_some() && self.slots().get(mailbox).is_some_and(|s| s.armed)
    }

    /// A new entry was committed for `mailbox`, which is not connected.
    /// Never blocks: called by the writer thread.
    pub fn offline_entry(&self, mailbox: &Mailbox) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let token = {
            let mut slots = self.slots();
            match slots.get_mut(mailbox) {
                Some(s) if s.armed => {
                    s.armed = false;
                    s.token.clone()
                }
                _ => return,
            }
        };
        if jobs.try_send(token).is_err() {
            if let Some(d) = &self.dropped {
                d.inc();
            }
            // Not a warning per drop: this runs on the writer thread, and
            // ward_relay_push_dropped_total is what to alert on.
            debug!("push queue full: a wake-up was dropped");
        }
    }

    /// Registered tokens.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether no token is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters the worker updates.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Wake-ups the gateway accepted.
    pub sent: Counter,
    /// Wake-ups given up after every attempt failed.
    pub failed: Counter,
}

/// Drains `jobs` into `gateway`: each wake-up is tried at once, then after
/// each of `retry_delays`, then counted as failed. Returns when `jobs`
/// closes.
pub async fn worker(
    gateway: Arc<dyn PushGateway>,
    mut jobs: mpsc::Receiver<Vec<u8>>,
    retry_delays: Vec<Duration>,
    metrics: WorkerMetrics,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let retry_delays: Arc<[Duration]> = retry_delays.into();
    loop {
        // A place first: while the gateway is slow, wake-ups wait in the
        // bounded queue (and further ones are dropped), not in tasks.
        let Ok(place) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(token) = jobs.recv().await else {
            return;
        };
        let (gateway, delays, metrics) = (gateway.clone(), retry_delays.clone(), metrics.clone());
        tokio::spawn(async move {
            let _place = place;
            let mut attempt = 0usize;
            loop {
                match gateway.wake(&token).await {
                    Ok(()) => {
                        metrics.sent.inc();
                        debug!(token_len = token.len(), attempt, "push wake-up sent");
                        return;
                    }
                    Err(e) => match delays.get(attempt) {
                        Some(d) => {
                            debug!(error = %e, attempt, "push wake-up failed; retrying");
                            tokio::time::sleep(*d).await;
                            attempt += 1;
                        }
                        None => {
                            metrics.failed.inc();
                            warn!(error = %e, token_len = token.len(), "push wake-up failed; given up");
                            return;
                        }
                    },
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(d: u8) -> Mailbox {
        Mailbox {
            user_id: "u".into(),
            device_id: [d; 32],
        }
    }

    fn gw(url: &str, insecure: bool) -> Result<WebhookGateway, PushError> {
        WebhookGateway::new(url, insecure, ward_net::tls::ClientTls::web_roots())
    }

    #[test]
    fn urls() {
        let g = gw("http://127.0.0.1:8080/wake?x=1", false).unwrap();
        assert_eq!(
            g.request(&[0xab, 0x01]),
            b"POST /wake?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"token\":\"ab01\"}"
        );
        let g = gw("http://[::1]:9", false).unwrap();
        assert_eq!((g.addr.as_str(), g.path.as_str()), ("[::1]:9", "/"));
        let g = gw("http://localhost", false).unwrap();
        assert_eq!(g.addr, "localhost:80");
        assert!(gw("http://push.example.org/x", false).is_err());
        assert!(gw("http://push.example.org/x", true).is_ok());
        let g = gw("https://push.example.org/x", false).unwrap();
        assert_eq!(
            (g.addr.as_str(), g.hostname.as_str()),
            ("push.example.org:443", "push.example.org")
        );
        assert!(g.tls.is_some());
        assert!(gw("ftp://localhost/", true).is_err());
        assert!(gw("http://localhost:x/", true).is_err());
        assert!(gw("http://u@localhost/", true).is_err());
        assert!(gw("http://localhost/a b", true).is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500 x\r\n"), Some(500));
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000\r\n"), None);
    }

    #[test]
    fn one_wake_up_until_rearmed_and_a_full_queue_drops() {
        let (tx, mut rx) = mpsc::channel(1);
        let pusher = Pusher::new(vec![(mailbox(1), vec![7])], Some(tx), None);
        pusher.offline_entry(&mailbox(1));
        pusher.offline_entry(&mailbox(1));
        pusher.offline_entry(&mailbox(2)); // no token
        assert_eq!(rx.try_recv().unwrap(), vec![7]);
        assert!(rx.try_recv().is_err(), "coalesced");
        pusher.arm(&mailbox(1));
        pusher.offline_entry(&mailbox(1));
        assert_eq!(rx.try_recv().unwrap(), vec![7]);
        // Full queue: dropped, not blocking.
        pusher.set(mailbox(3), vec![3]);
        pusher.set(mailbox(4), vec![4]);
        pusher.offline_entry(&mailbox(3));
        pusher.offline_entry(&mailbox(4));
        assert_eq!(rx.try_recv().unwrap(), vec![3]);
        assert!(rx.try_recv().is_err());
        // Unregistered and removed tokens wake nothing.
        pusher.set(mailbox(3), Vec::new());
        pusher.remove(&mailbox(1));
        pusher.arm(&mailbox(1));
        pusher.offline_entry(&mailbox(1));
        pusher.offline_entry(&mailbox(3));
        assert!(rx.try_recv().is_err());
        assert_eq!(pusher.len(), 1);
    }
}
