//! A tampering WebSocket proxy: a malicious relay or keyserver, made of the
//! real server and a man in the middle that the test controls.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0`; for each client connection it
//! opens a connection to the real server and forwards binary frames both
//! ways. The authentication handshake (the server's `AuthChallenge` and
//! `AuthResult`, the device's `AuthResponse`) passes through untouched: the
//! device signs the real server's challenge, so the server authenticates
//! the real device, and the proxy learns who is connected ([`Peer`]) from
//! the `AuthResponse`. Every later frame goes through the hook the test
//! installed ([`Proxy::set_hook`]), which returns the frames to forward
//! instead: none (drop), a rewritten one, several (duplicate, or add
//! forged ones). [`Proxy::inject`] pushes a forged frame into a live
//! connection; it goes through the hook too (with [`Frame::injected`] set),
//! so a hook sees every frame in the order it is written.
//!
//! Typed hooks: [`relay_hook`] decodes `ServerFrame` / `ClientFrame` and
//! keeps each mailbox's sequence numbers consistent when frames are added
//! ([`SeqMap`]); [`ks_hook`] decodes `KsResponse`. Every frame forwarded
//! (after tampering) is recorded ([`Proxy::frames`]), so a test can check
//! what a client did or did not send.
// Test support: a failed setup step should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use ward_proto::Message as _;
use ward_proto::v1::{
    AuthResponse, ClientFrame, KsRequest, KsResponse, ServerFrame, client_frame, server_frame,
};

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the real server to the client.
    ToClient,
    /// From the client to the real server.
    ToServer,
}

/// An authenticated client connection, as its `AuthResponse` named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The proxy's connection number.
    pub conn: u64,
    /// The user id the device authenticated as.
    pub user_id: String,
    /// The device id (its signing public key).
    pub device_id: Vec<u8>,
}

/// What a hook is told about a frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The connection.
    pub peer: &'a Peer,
    /// Which way.
    pub dir: Dir,
    /// Pushed by [`Proxy::inject`], not read from either side.
    pub injected: bool,
}

/// A raw hook: the frames to forward instead of `bytes`.
pub type Hook = Box<dyn FnMut(&Frame<'_>, Vec<u8>) -> Vec<Vec<u8>> + Send>;

type Injector = mpsc::UnboundedSender<(Dir, Vec<u8>)>;

#[derive(Default)]
struct Shared {
    hook: Mutex<Option<Hook>>,
    conns: Mutex<HashMap<u64, (Peer, Injector)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    log: Mutex<Vec<(Peer, Dir, Vec<u8>)>>,
    next_conn: AtomicU64,
}

impl Shared {
    fn apply(&self, frame: &Frame<'_>, bytes: Vec<u8>) -> Vec<Vec<u8>> {
        let out = match self.hook.lock().unwrap().as_mut() {
            Some(hook) => hook(frame, bytes),
            None => vec![bytes],
        };
        let mut log = self.log.lock().unwrap();
        for f in &out {
            log.push((frame.peer.clone(), frame.dir, f.clone()));
        }
        out
    }
}

/// A tampering proxy in front of one real server.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` (a `ws://` URL), forwarding everything
    /// unchanged until a hook is installed.
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let task = tokio::spawn(serve(s.clone(), upstream.clone(), tcp));
                s.tasks.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            shared,
            accept,
        }
    }

    /// `ws://` URL of the proxy: give it to the client instead of the
    /// server's.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Installs `hook` (replacing any previous one) for every frame after
    /// the handshake, on every connection, current and future.
    pub fn set_hook(&self, hook: impl FnMut(&Frame<'_>, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static) {
        *self.shared.hook.lock().unwrap() = Some(Box::new(hook));
    }

    /// Removes the hook: the proxy forwards everything unchanged again.
    pub fn clear_hook(&self) {
        *self.shared.hook.lock().unwrap() = None;
    }

    /// The authenticated connections now open.
    pub fn peers(&self) -> Vec<Peer> {
        let conns = self.shared.conns.lock().unwrap();
        let mut v: Vec<Peer> = conns.values().map(|(p, _)| p.clone()).collect();
        v.sort_by_key(|p| p.conn);
        v
    }

    /// Pushes a forged frame into every open connection of `device_id`,
    /// through the hook (with [`Frame::injected`]); returns how many
    /// connections took it.
    pub fn inject(&self, device_id: &[u8], dir: Dir, bytes: Vec<u8>) -> usize {
        let conns = self.shared.conns.lock().unwrap();
        conns
            .values()
            .filter(|(p, _)| p.device_id == device_id)
            .filter(|(_, tx)| tx.send((dir, bytes.clone())).is_ok())
            .count()
    }

    /// How many frames were forwarded so far (a mark for [`Self::frames`]).
    pub fn mark(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    /// The frames forwarded (after tampering) since `mark`, going `dir`.
    pub fn frames(&self, since: usize, dir: Dir) -> Vec<(Peer, Vec<u8>)> {
        let log = self.shared.log.lock().unwrap();
        log[since.min(log.len())..]
            .iter()
            .filter(|(_, d, _)| *d == dir)
            .map(|(p, _, b)| (p.clone(), b.clone()))
            .collect()
    }

    /// The relay frames `user_id`'s devices sent since `mark`.
    pub fn client_frames(&self, since: usize, user_id: &str) -> Vec<client_frame::Frame> {
        self.frames(since, Dir::ToServer)
            .into_iter()
            .filter(|(p, _)| p.user_id == user_id)
            .filter_map(|(_, b)| ClientFrame::decode(&b[..]).ok()?.frame)
            .collect()
    }

    /// The keyserver requests `user_id`'s devices sent since `mark`.
    pub fn ks_requests(&self, since: usize, user_id: &str) -> Vec<KsRequest> {
        self.frames(since, Dir::ToServer)
            .into_iter()
            .filter(|(p, _)| p.user_id == user_id)
            .filter_map(|(_, b)| KsRequest::decode(&b[..]).ok())
            .collect()
    }
}

/// One client connection: the handshake passes through, then every frame
/// goes through the hook.
async fn serve(shared: Arc<Shared>, upstream: String, tcp: tokio::net::TcpStream) {
    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let Ok((server, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await else {
        return; // the client sees its connection dropped
    };
    let (mut c_tx, mut c_rx) = client.split();
    let (mut s_tx, mut s_rx) = server.split();
    let (inj_tx, mut inj_rx) = mpsc::unbounded_channel::<(Dir, Vec<u8>)>();
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut peer = Peer {
        conn: id,
        user_id: String::new(),
        device_id: Vec::new(),
    };
    // Handshake frames: challenge and result to the client, response to the
    // server.
    let (mut to_client, mut to_server) = (0usize, 0usize);
    loop {
        let (dir, bytes, injected) = tokio::select! {
            m = s_rx.next() => match m {
                Some(Ok(WsMessage::Binary(b))) => {
                    to_client += 1;
                    if to_client <= 2 {
                        if c_tx.send(WsMessage::Binary(b)).await.is_err() { break; }
                        continue;
                    }
                    (Dir::ToClient, b.to_vec(), false)
                }
                Some(Ok(WsMessage::Close(f))) => {
                    let _ = c_tx.send(WsMessage::Close(f)).await;
                    break;
                }
                Some(Ok(WsMessage::Text(t))) => {
                    if c_tx.send(WsMessage::Text(t)).await.is_err() { break; }
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            },
            m = c_rx.next() => match m {
                Some(Ok(WsMessage::Binary(b))) => {
                    to_server += 1;
                    if to_server <= 1 {
                        if let Ok(r) = AuthResponse::decode(&b[..]) {
                            peer.user_id = r.user_id;
                            peer.device_id = r.device_id;
                            shared
                                .conns
                                .lock()
                                .unwrap()
                                .insert(id, (peer.clone(), inj_tx.clone()));
                        }
                        if s_tx.send(WsMessage::Binary(b)).await.is_err() { break; }
                        continue;
                    }
                    (Dir::ToServer, b.to_vec(), false)
                }
                Some(Ok(WsMessage::Close(f))) => {
                    let _ = s_tx.send(WsMessage::Close(f)).await;
                    break;
                }
                Some(Ok(WsMessage::Text(t))) => {
                    if s_tx.send(WsMessage::Text(t)).await.is_err() { break; }
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            },
            Some((dir, bytes)) = inj_rx.recv() => (dir, bytes, true),
        };
        let frame = Frame {
            peer: &peer,
            dir,
            injected,
        };
        let out = shared.apply(&frame, bytes);
        let mut failed = false;
        for f in out {
            let m = WsMessage::Binary(f.into());
            let sent = match dir {
                Dir::ToClient => c_tx.send(m).await,
                Dir::ToServer => s_tx.send(m).await,
            };
            if sent.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break;
        }
    }
    shared.conns.lock().unwrap().remove(&id);
    let _ = c_tx.close().await;
    let _ = s_tx.close().await;
}

/// One mailbox's sequence numbers as the client sees them, when a relay
/// adds entries of its own: every `Deliver` written to the client gets the
/// next number (a redelivered real entry keeps the number it had), and the
/// client's cumulative `Ack` is mapped back to the highest real entry it
/// covers. A forged entry thus takes the mailbox's next sequence number, and
/// the real entries after it still arrive. Install the hook before the
/// device's first delivery: a map started later does not know the client's
/// cursor, and a forged entry it numbers may fall below it (dropped as
/// already handled).
#[derive(Debug, Default)]
pub struct SeqMap {
    last: u64,
    by_relay: HashMap<u64, u64>,
    by_client: BTreeMap<u64, u64>,
}

impl SeqMap {
    /// The client-side seq of an outgoing `Deliver` whose relay seq is
    /// `relay_seq` (0: forged, not a relay entry).
    pub fn outgoing(&mut self, relay_seq: u64) -> u64 {
        if relay_seq != 0
            && let Some(c) = self.by_relay.get(&relay_seq)
        {
            return *c;
        }
        let c = if relay_seq == 0 {
            self.last + 1
        } else {
            (self.last + 1).max(relay_seq)
        };
        self.last = c;
        if relay_seq != 0 {
            self.by_relay.insert(relay_seq, c);
        }
        self.by_client.insert(c, relay_seq);
        c
    }

    /// The relay seq a client's `Ack { up_to_seq }` stands for; `None`
    /// when it covers no real entry.
    pub fn ack(&self, up_to_seq: u64) -> Option<u64> {
        self.by_client
            .range(..=up_to_seq)
            .map(|(_, r)| *r)
            .filter(|r| *r != 0)
            .max()
    }
}

/// A typed relay hook: `tamper` sees every `ServerFrame` the relay sends a
/// client after the handshake (frames pushed by [`Proxy::inject`] skip it),
/// and returns the frames to send instead. Then each outgoing `Deliver` is
/// renumbered with the device's [`SeqMap`] (a `Deliver` with `seq == 0` is
/// a forged entry), and the device's `Ack`s are mapped back. Other client
/// frames pass unchanged.
pub fn relay_hook(
    mut tamper: impl FnMut(&Peer, ServerFrame) -> Vec<ServerFrame> + Send + 'static,
) -> impl FnMut(&Frame<'_>, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static {
    let mut seqs: HashMap<Vec<u8>, SeqMap> = HashMap::new();
    move |f, bytes| {
        let map = seqs.entry(f.peer.device_id.clone()).or_default();
        match f.dir {
            Dir::ToClient => {
                let Ok(frame) = ServerFrame::decode(&bytes[..]) else {
                    return vec![bytes];
                };
                let out = if f.injected {
                    vec![frame]
                } else {
                    tamper(f.peer, frame)
                };
                out.into_iter()
                    .map(|mut frame| {
                        if let Some(server_frame::Frame::Deliver(d)) = frame.frame.as_mut() {
                            d.seq = map.outgoing(d.seq);
                        }
                        frame.encode_to_vec()
                    })
                    .collect()
            }
            Dir::ToServer => {
                let Ok(mut frame) = ClientFrame::decode(&bytes[..]) else {
                    return vec![bytes];
                };
                if let Some(client_frame::Frame::Ack(a)) = frame.frame.as_mut() {
                    match map.ack(a.up_to_seq) {
                        Some(r) => a.up_to_seq = r,
                        None => return Vec::new(),
                    }
                }
                vec![frame.encode_to_vec()]
            }
        }
    }
}

/// A typed keyserver hook: `tamper` sees every `KsResponse` after the
/// handshake and returns the responses to send instead. Requests pass
/// unchanged.
pub fn ks_hook(
    mut tamper: impl FnMut(&Peer, KsResponse) -> Vec<KsResponse> + Send + 'static,
) -> impl FnMut(&Frame<'_>, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static {
    move |f, bytes| {
        if f.dir == Dir::ToServer || f.injected {
            return vec![bytes];
        }
        let Ok(resp) = KsResponse::decode(&bytes[..]) else {
            return vec![bytes];
        };
        tamper(f.peer, resp)
            .into_iter()
            .map(|r| r.encode_to_vec())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::SeqMap;

    #[test]
    fn a_forged_entry_takes_the_next_seq_and_acks_map_back() {
        let mut m = SeqMap::default();
        assert_eq!(m.outgoing(1), 1);
        assert_eq!(m.outgoing(2), 2);
        assert_eq!(m.outgoing(0), 3); // forged
        assert_eq!(m.outgoing(3), 4);
        assert_eq!(m.outgoing(3), 4); // redelivered: same number
        assert_eq!(m.ack(3), Some(2));
        assert_eq!(m.ack(4), Some(3));
        assert_eq!(m.ack(0), None);
    }
}
