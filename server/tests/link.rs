//! The device-link rendezvous (SECURITY.md §9.3, issue 13), through the real
//! relay on 127.0.0.1:0: an existing device opens a rendezvous on
//! `/v2/link` after its handshake, a new device joins on `/v2/link/join`
//! without one, and the relay forwards `data` between them byte for byte;
//! every refusal and limit with the close code and reason a client sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ward_core::auth::DEFAULT_INSTANCE;
use ward_core::testkit::{Clinician, Org};
use ward_net::close;
use ward_net::handshake::{Audience, client};
use ward_proto::Message as _;
use ward_proto::v1::{
    ClientFrame, LinkClientFrame, LinkJoin, LinkOpen, LinkServerFrame, Recipient, Send,
    ServerFrame, client_frame, link_client_frame::Frame as C, link_server_frame::Frame as S,
    server_frame,
};
use ward_relay::{Config, LINK_JOIN_PATH, LINK_PATH, Limits};

mod common;
use common::TempDir;

fn temp_dir() -> TempDir {
    common::temp_dir("link")
}

struct Relay {
    url: String,
    metrics: ward_ops::metrics::Registry,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ward_relay::RelayError>>,
    _dir: TempDir,
}

async fn start(org: &Org, limits: impl FnOnce(&mut Limits)) -> Relay {
    let dir = temp_dir();
    let mut config = Config::new(dir.0.join("relay.db"), org.root_public());
    config.shutdown_grace = Duration::from_secs(2);
    config.limits.close_grace = Duration::from_secs(1);
    limits(&mut config.limits);
    let metrics = config.metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ward_relay::run(listener, config, async move {
        let _ = stopped.await;
    }));
    Relay {
        url,
        metrics,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

impl Relay {
    /// The value of an unlabelled series.
    fn metric(&self, name: &str) -> f64 {
        let text = self.metrics.render();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Waits (briefly) until `name` reads `want`: the relay updates its
    /// series as its tasks end, just after the client saw the close.
    async fn metric_becomes(&self, name: &str, want: f64) {
        for _ in 0..200 {
            if self.metric(name) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.metric(name), want, "{name}");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// What a client sees next.
#[derive(Debug, PartialEq)]
enum Ev {
    Frame(S),
    /// A binary frame that is no `LinkServerFrame` (the `AuthChallenge`).
    Other,
    Closed(u16, String),
    Gone,
}

/// One side of a link, on the raw WebSocket: the close code and reason are
/// what this test checks, and `ward_net::Conn` folds a normal close into
/// `Ok(None)`.
struct Side(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Side {
    async fn send(&mut self, frame: C) {
        let bytes = LinkClientFrame { frame: Some(frame) }.encode_to_vec();
        self.0.send(Message::Binary(bytes.into())).await.unwrap();
    }

    async fn next(&mut self) -> Ev {
        tokio::time::timeout(Duration::from_secs(10), self.next_now())
            .await
            .expect("nothing from the relay within 10 s")
    }

    async fn next_now(&mut self) -> Ev {
        loop {
            match self.0.next().await {
                Some(Ok(Message::Binary(b))) => {
                    return match LinkServerFrame::decode(&b[..]) {
                        Ok(LinkServerFrame { frame: Some(f) }) => Ev::Frame(f),
                        _ => Ev::Other,
                    };
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ev::Closed(f.code.into(), f.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Ev::Closed(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ev::Gone,
            }
        }
    }

    async fn closed(&mut self) -> (u16, String) {
        match self.next().await {
            Ev::Closed(code, reason) => (code, reason),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    async fn data(&mut self) -> Vec<u8> {
        match self.next().await {
            Ev::Frame(S::Data(d)) => d,
            other => panic!("expected data, got {other:?}"),
        }
    }
}

/// An authenticated connection of `who` on `path`.
async fn device(relay: &Relay, path: &str, who: &Clinician, user: &str) -> Side {
    let mut c = ward_net::conn::connect(&format!("{}{path}", relay.url), &Limits::DEFAULT.net)
        .await
        .unwrap();
    client(
        &mut c,
        &who.device,
        user,
        &Audience::relay(*who.chain.org_root(), DEFAULT_INSTANCE),
        &who.log,
    )
    .await
    .unwrap();
    Side(c.into_inner())
}

/// `who` opens `rendezvous`: the `expires_at` of its `LinkWaiting`.
async fn open(relay: &Relay, who: &Clinician, user: &str, rendezvous: [u8; 32]) -> (Side, u64) {
    let mut s = device(relay, LINK_PATH, who, user).await;
    s.send(C::Open(LinkOpen {
        rendezvous: rendezvous.to_vec(),
    }))
    .await;
    match s.next().await {
        Ev::Frame(S::Waiting(w)) => (s, w.expires_at),
        other => panic!("expected LinkWaiting, got {other:?}"),
    }
}

/// A new device's connection on the join path (no handshake), its
/// `LinkJoin` sent.
async fn join(relay: &Relay, rendezvous: &[u8]) -> Side {
    let c = ward_net::conn::connect(
        &format!("{}{LINK_JOIN_PATH}", relay.url),
        &Limits::DEFAULT.net,
    )
    .await
    .unwrap();
    let mut s = Side(c.into_inner());
    s.send(C::Join(LinkJoin {
        rendezvous: rendezvous.to_vec(),
    }))
    .await;
    s
}

async fn paired(relay: &Relay, who: &Clinician, user: &str, rendezvous: [u8; 32]) -> (Side, Side) {
    let (mut a, _) = open(relay, who, user, rendezvous).await;
    let mut b = join(relay, &rendezvous).await;
    assert_eq!(a.next().await, Ev::Frame(S::PeerJoined(Default::default())));
    assert_eq!(b.next().await, Ev::Frame(S::PeerJoined(Default::default())));
    (a, b)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn forbidden(reason: &str) -> (u16, String) {
    (close::FORBIDDEN, reason.to_owned())
}

/// A message from `from` to `to` through the relay's message path (`/`):
/// stored, acknowledged and delivered.
async fn message_path_works(relay: &Relay, from: (&Clinician, &str), to: (&Clinician, &str)) {
    let mut tx = ward_net::conn::connect(&relay.url, &Limits::DEFAULT.net)
        .await
        .unwrap();
    let audience = Audience::relay(*from.0.chain.org_root(), DEFAULT_INSTANCE);
    client(&mut tx, &from.0.device, from.1, &audience, &from.0.log)
        .await
        .unwrap();
    let mut rx = ward_net::conn::connect(&relay.url, &Limits::DEFAULT.net)
        .await
        .unwrap();
    client(&mut rx, &to.0.device, to.1, &audience, &to.0.log)
        .await
        .unwrap();
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).unwrap();
    let send = ClientFrame {
        frame: Some(client_frame::Frame::Send(Send {
            message_id: id.to_vec(),
            recipients: vec![Recipient {
                user_id: to.1.to_owned(),
                device_id: to.0.device.public_key().as_bytes().to_vec(),
            }],
            payload: b"still here".to_vec(),
            blob_ids: Vec::new(),
            room_id: Vec::new(),
            room_log_len: 0,
        })),
    };
    tx.send_msg(&send).await.unwrap();
    match tx.recv_msg::<ServerFrame>().await.unwrap().unwrap().frame {
        Some(server_frame::Frame::SendAck(a)) => assert_eq!(a.message_id, id),
        other => panic!("expected SendAck, got {other:?}"),
    }
    match rx.recv_msg::<ServerFrame>().await.unwrap().unwrap().frame {
        Some(server_frame::Frame::Deliver(d)) => assert_eq!(d.payload, b"still here"),
        other => panic!("expected Deliver, got {other:?}"),
    }
}

/// The link a user relies on: both sides get `LinkPeerJoined`, then every
/// `data` frame arrives at the other side with the same bytes, in order,
/// both ways (the joiner's larger than the pre-auth frame cap, which the
/// join lifts); the message path serves other devices meanwhile; the
/// rendezvous was single use; the relay's shutdown closes both
/// `GOING_AWAY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_join_and_data_both_ways_byte_exact() {
    // The paths clients are built against.
    assert_eq!((LINK_PATH, LINK_JOIN_PATH), ("/v2/link", "/v2/link/join"));
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let carol = org.enroll(&mut rng, "carol");
    let relay = start(&org, |_| {}).await;
    let r = [7u8; 32];

    let (mut a, expires_at) = open(&relay, &alice, "alice", r).await;
    // The default TTL, 600 s, from now.
    let now = now_secs();
    assert!(
        (now + 598..=now + 601).contains(&expires_at),
        "{expires_at} vs {now}"
    );
    assert_eq!(relay.metric("ward_relay_links_waiting"), 1.0);
    let mut b = join(&relay, &r).await;
    assert_eq!(a.next().await, Ev::Frame(S::PeerJoined(Default::default())));
    assert_eq!(b.next().await, Ev::Frame(S::PeerJoined(Default::default())));
    assert_eq!(relay.metric("ward_relay_links_waiting"), 0.0);
    assert_eq!(relay.metric("ward_relay_links_joined_total"), 1.0);

    // Existing -> new, several frames, in order (one empty).
    let sent: Vec<Vec<u8>> = (0..5u8)
        .map(|i| (0..(i as usize * 1000)).map(|j| (j as u8) ^ i).collect())
        .collect();
    for d in &sent {
        a.send(C::Data(d.clone())).await;
    }
    for d in &sent {
        assert_eq!(&b.data().await, d);
    }
    // New -> existing, one of them over the 256 KiB pre-auth frame cap.
    let big: Vec<u8> = (0..(300u32 << 10)).map(|i| (i % 251) as u8).collect();
    for d in [b"hello".to_vec(), big.clone(), b"bye".to_vec()] {
        b.send(C::Data(d.clone())).await;
        assert_eq!(a.data().await, d);
    }

    // A second joiner of the same rendezvous finds nothing: single use.
    let mut late = join(&relay, &r).await;
    assert_eq!(late.closed().await, forbidden("no such link"));
    relay
        .metric_becomes("ward_relay_link_joins_refused_total", 1.0)
        .await;

    // The message path serves other devices while the pipe runs.
    message_path_works(&relay, (&bob, "bob"), (&carol, "carol")).await;
    a.send(C::Data(b"after".to_vec())).await;
    assert_eq!(b.data().await, b"after");

    // Shutdown: both sides told GOING_AWAY.
    let reading = tokio::spawn(async move { (a.closed().await, b.closed().await) });
    relay.stop().await;
    let (ca, cb) = reading.await.unwrap();
    let going_away = (close::GOING_AWAY, "relay shutting down".to_owned());
    assert_eq!(ca, going_away);
    assert_eq!(cb, going_away);
}

/// A rendezvous nobody opened, and one that was already joined, are
/// refused alike; a malformed join too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rendezvous_and_second_joiner_are_refused() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let relay = start(&org, |_| {}).await;

    let mut j = join(&relay, &[1u8; 32]).await;
    assert_eq!(j.closed().await, forbidden("no such link"));

    let r = [2u8; 32];
    let (_a, _b) = paired(&relay, &alice, "alice", r).await;
    let mut second = join(&relay, &r).await;
    assert_eq!(second.closed().await, forbidden("no such link"));

    // 31 bytes, and an open on the join path: not a join.
    let mut short = join(&relay, &[2u8; 31]).await;
    assert_eq!(
        short.closed().await,
        (close::PROTOCOL_ERROR, "malformed link frame".to_owned())
    );
    let c = ward_net::conn::connect(
        &format!("{}{LINK_JOIN_PATH}", relay.url),
        &Limits::DEFAULT.net,
    )
    .await
    .unwrap();
    let mut wrong = Side(c.into_inner());
    wrong
        .send(C::Open(LinkOpen {
            rendezvous: r.to_vec(),
        }))
        .await;
    assert_eq!(
        wrong.closed().await,
        (close::PROTOCOL_ERROR, "malformed link frame".to_owned())
    );
    relay
        .metric_becomes("ward_relay_link_joins_refused_total", 4.0)
        .await;
    relay.stop().await;
}

/// A waiting rendezvous ends at its TTL: the opener is closed "link
/// expired", the entry is gone (the gauge, and a join after it is
/// refused), and the device may open again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_expires_at_the_ttl_and_leaves_nothing() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let relay = start(&org, |l| l.link_ttl = Duration::from_secs(1)).await;
    let r = [3u8; 32];

    let started = std::time::Instant::now();
    let (mut a, expires_at) = open(&relay, &alice, "alice", r).await;
    assert!(expires_at <= now_secs() + 2);
    assert_eq!(a.closed().await, (close::NORMAL, "link expired".to_owned()));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    relay.metric_becomes("ward_relay_links_waiting", 0.0).await;
    let mut j = join(&relay, &r).await;
    assert_eq!(j.closed().await, forbidden("no such link"));
    // The device's link is over: it may open again (the same id too).
    let (_again, _) = open(&relay, &alice, "alice", r).await;
    relay.stop().await;
}

/// An opener that closes while waiting takes its entry with it; one that
/// closes while piping closes the joiner "peer closed", and the other way
/// round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_that_closes_closes_the_other_and_frees_the_entry() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let relay = start(&org, |_| {}).await;

    // Waiting, then gone: nothing left to join.
    let r = [4u8; 32];
    let (mut a, _) = open(&relay, &alice, "alice", r).await;
    a.0.close(None).await.unwrap();
    assert!(matches!(
        a.next().await,
        Ev::Closed(close::NORMAL, _) | Ev::Gone
    ));
    relay.metric_becomes("ward_relay_links_waiting", 0.0).await;
    let mut j = join(&relay, &r).await;
    assert_eq!(j.closed().await, forbidden("no such link"));

    // Piping: the opener closes, the joiner is told.
    let r = [5u8; 32];
    let (mut a, mut b) = paired(&relay, &alice, "alice", r).await;
    a.0.close(None).await.unwrap();
    assert_eq!(b.closed().await, (close::NORMAL, "peer closed".to_owned()));
    drop(a);

    // Piping: the joiner closes, the opener is told; the device is free
    // again afterwards.
    let r = [6u8; 32];
    let (mut a, mut b) = paired(&relay, &alice, "alice", r).await;
    b.0.close(None).await.unwrap();
    assert_eq!(a.closed().await, (close::NORMAL, "peer closed".to_owned()));
    let (_a, _) = open(&relay, &alice, "alice", [8u8; 32]).await;
    relay.stop().await;
}

/// The refusals of `LinkOpen`: a second link of the same device (also while
/// its first one pipes), an id already waiting, a malformed id, more than
/// `max_links_waiting` in all, and an opener that did not authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refusals() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let carol = org.enroll(&mut rng, "carol");
    let relay = start(&org, |l| l.max_links_waiting = 2).await;

    let (_a1, _) = open(&relay, &alice, "alice", [10u8; 32]).await;
    let mut a2 = device(&relay, LINK_PATH, &alice, "alice").await;
    a2.send(C::Open(LinkOpen {
        rendezvous: vec![11u8; 32],
    }))
    .await;
    assert_eq!(
        a2.closed().await,
        forbidden("a link is already open on this device")
    );

    let mut dup = device(&relay, LINK_PATH, &bob, "bob").await;
    dup.send(C::Open(LinkOpen {
        rendezvous: vec![10u8; 32],
    }))
    .await;
    assert_eq!(
        dup.closed().await,
        (close::PROTOCOL_ERROR, "rendezvous already open".to_owned())
    );
    let mut short = device(&relay, LINK_PATH, &bob, "bob").await;
    short
        .send(C::Open(LinkOpen {
            rendezvous: vec![12u8; 33],
        }))
        .await;
    assert_eq!(
        short.closed().await,
        (close::PROTOCOL_ERROR, "malformed link frame".to_owned())
    );
    let mut data_first = device(&relay, LINK_PATH, &bob, "bob").await;
    data_first.send(C::Data(b"x".to_vec())).await;
    assert_eq!(
        data_first.closed().await,
        (close::PROTOCOL_ERROR, "malformed link frame".to_owned())
    );

    let (_b1, _) = open(&relay, &bob, "bob", [13u8; 32]).await;
    let mut full = device(&relay, LINK_PATH, &carol, "carol").await;
    full.send(C::Open(LinkOpen {
        rendezvous: vec![14u8; 32],
    }))
    .await;
    assert_eq!(
        full.closed().await,
        (
            close::TOO_MANY_CONNECTIONS,
            "too many links waiting".to_owned()
        )
    );

    // Without the handshake: the relay's challenge comes first, and a
    // LinkOpen in place of the AuthResponse is refused; nothing waits.
    let c = ward_net::conn::connect(&format!("{}{LINK_PATH}", relay.url), &Limits::DEFAULT.net)
        .await
        .unwrap();
    let mut anon = Side(c.into_inner());
    anon.send(C::Open(LinkOpen {
        rendezvous: vec![15u8; 32],
    }))
    .await;
    let (code, _) = loop {
        match anon.next().await {
            Ev::Frame(S::Waiting(_)) => panic!("a link opened without authentication"),
            // The challenge.
            Ev::Frame(_) | Ev::Other => continue,
            Ev::Closed(code, reason) => break (code, reason),
            Ev::Gone => panic!("no close code"),
        }
    };
    assert!(
        code == close::AUTH_FAILED || code == close::PROTOCOL_ERROR,
        "{code}"
    );
    let mut j = join(&relay, &[15u8; 32]).await;
    assert_eq!(j.closed().await, forbidden("no such link"));

    // While alice's first link pipes, a second is still refused.
    let mut j = join(&relay, &[10u8; 32]).await;
    assert_eq!(j.next().await, Ev::Frame(S::PeerJoined(Default::default())));
    let mut a3 = device(&relay, LINK_PATH, &alice, "alice").await;
    a3.send(C::Open(LinkOpen {
        rendezvous: vec![16u8; 32],
    }))
    .await;
    assert_eq!(
        a3.closed().await,
        forbidden("a link is already open on this device")
    );
    relay.stop().await;
}

/// Over `link_max_bytes` (both directions counted): both sides closed
/// `TOO_BIG`, the frame that crossed it not forwarded. A frame that is not
/// `data` after pairing closes both `PROTOCOL_ERROR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_limits_close_both_sides() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let relay = start(&org, |l| l.link_max_bytes = 1000).await;

    let (mut a, mut b) = paired(&relay, &alice, "alice", [20u8; 32]).await;
    a.send(C::Data(vec![1; 600])).await;
    assert_eq!(b.data().await, vec![1; 600]);
    b.send(C::Data(vec![2; 400])).await;
    assert_eq!(a.data().await, vec![2; 400]);
    b.send(C::Data(vec![3; 1])).await;
    let too_big = (close::TOO_BIG, "link byte limit reached".to_owned());
    assert_eq!(a.closed().await, too_big);
    assert_eq!(b.closed().await, too_big);

    let (mut a, mut b) = paired(&relay, &alice, "alice", [21u8; 32]).await;
    b.send(C::Join(LinkJoin {
        rendezvous: vec![21u8; 32],
    }))
    .await;
    let malformed = (close::PROTOCOL_ERROR, "malformed link frame".to_owned());
    assert_eq!(a.closed().await, malformed);
    assert_eq!(b.closed().await, malformed);
    relay.stop().await;
}

/// A waiting opener that answers the relay's pings is not cut by the idle
/// timeout before the TTL; the whole rendezvous, waiting and piping, ends
/// at the TTL from the open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_opener_outlives_the_idle_timeout_and_the_pipe_ends_at_the_ttl() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let relay = start(&org, |l| {
        l.idle_timeout = Duration::from_millis(600);
        l.ping_interval = Duration::from_millis(100);
        l.link_ttl = Duration::from_secs(2);
    })
    .await;
    let r = [30u8; 32];
    let started = std::time::Instant::now();
    let (mut a, _) = open(&relay, &alice, "alice", r).await;
    // Reading (so answering pings) for twice the idle timeout: nothing.
    let quiet = tokio::time::timeout(Duration::from_millis(1200), a.next_now()).await;
    assert!(quiet.is_err(), "closed while waiting: {quiet:?}");
    let mut b = join(&relay, &r).await;
    assert_eq!(a.next().await, Ev::Frame(S::PeerJoined(Default::default())));
    assert_eq!(b.next().await, Ev::Frame(S::PeerJoined(Default::default())));
    b.send(C::Data(b"hi".to_vec())).await;
    assert_eq!(a.data().await, b"hi");
    let expired = (close::NORMAL, "link expired".to_owned());
    let (ca, cb) = tokio::join!(a.closed(), b.closed());
    assert_eq!(ca, expired);
    assert_eq!(cb, expired);
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(1900) && lived < Duration::from_secs(4),
        "{lived:?}"
    );
    relay.stop().await;
}
