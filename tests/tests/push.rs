//! Content-free push (issue 13, SECURITY.md §9.2), against the real relay
//! and a local push gateway: a loopback HTTP/1.1 listener that records each
//! request and answers with the statuses it is scripted to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use ward_core::testkit::{Clinician, Org};
use ward_net::close;
use ward_net::tls::Acceptor;
use ward_net::tls::dev_ca::{DevPki, LOOPBACK_NAMES};
use ward_proto::v1::{ErrorCode, RegisterPush, client_frame, server_frame};
use ward_relay::PushConfig;
use ward_tests::relay::{Client, Relay, WAIT, closed, message_id, seal, to};

/// After the last expected request, how long "no more" is awaited.
const QUIET: Duration = Duration::from_millis(300);

/// One request as the gateway received it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Every byte of it, head and body.
    raw: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A local push gateway.
struct Gateway {
    url: String,
    requests: mpsc::UnboundedReceiver<Request>,
}

impl Gateway {
    /// Answers the scripted statuses in turn, then 200.
    async fn start(script: &[u16]) -> Self {
        Self::start_on(script, Acceptor::InsecureLoopback).await
    }

    /// As [`Gateway::start`], in TLS when `acceptor` says so.
    async fn start_on(script: &[u16], acceptor: Acceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match acceptor {
            Acceptor::Tls(_) => format!("https://localhost:{port}/v1/wake"),
            Acceptor::InsecureLoopback => format!("http://127.0.0.1:{port}/v1/wake"),
        };
        let (tx, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tx, script, acceptor) = (tx.clone(), script.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(mut tcp) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(req) = read_request(&mut tcp).await else {
                        return;
                    };
                    let status = script.lock().unwrap().pop_front().unwrap_or(200);
                    let _ = tx.send(req);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Self { url, requests }
    }

    /// The next request, within [`WAIT`].
    async fn next(&mut self) -> Request {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("no request reached the gateway in time")
            .unwrap()
    }

    /// Panics if a request arrives within [`QUIET`].
    async fn quiet(&mut self) {
        if let Ok(Some(r)) = tokio::time::timeout(QUIET, self.requests.recv()).await {
            panic!("unexpected push request: {r:?}");
        }
    }
}

async fn read_request(tcp: &mut (impl AsyncRead + Unpin)) -> Option<Request> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, path) = (start.next()?.to_owned(), start.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + 4 + len {
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body: raw[head_end + 4..head_end + 4 + len].to_vec(),
        raw,
    })
}

async fn start_relay(
    root: ward_core::keys::SigningPublicKey,
    gateway: &Gateway,
    retry_delays: Vec<Duration>,
) -> (Relay, ward_ops::metrics::Registry) {
    start_relay_trusting(root, gateway, retry_delays, None).await
}

async fn start_relay_trusting(
    root: ward_core::keys::SigningPublicKey,
    gateway: &Gateway,
    retry_delays: Vec<Duration>,
    tls: Option<ward_net::tls::ClientTls>,
) -> (Relay, ward_ops::metrics::Registry) {
    let metrics = ward_ops::metrics::Registry::new();
    let (m, url) = (metrics.clone(), gateway.url.clone());
    let relay = Relay::start_with(root, move |c| {
        let mut push = PushConfig::webhook(url);
        push.retry_delays = retry_delays;
        if let Some(tls) = tls {
            push.tls = tls;
        }
        c.push = Some(push);
        c.metrics = m;
    })
    .await;
    (relay, metrics)
}

/// Registers `token` and waits for the relay's answer.
async fn register(c: &mut Client, token: &[u8]) {
    c.frame(client_frame::Frame::RegisterPush(RegisterPush {
        token: token.to_vec(),
    }))
    .await;
    match c.next().await {
        server_frame::Frame::PushRegistered(_) => {}
        other => panic!("expected PushRegistered, got {other:?}"),
    }
}

/// Closes `c` and waits for the relay's answering close: by then the relay
/// has unregistered the device, so it counts as offline.
async fn disconnect(mut c: Client) {
    c.conn.close(close::NORMAL, "bye").await;
    let _ = closed(c.conn).await;
}

fn metric(metrics: &ward_ops::metrics::Registry, name: &str) -> f64 {
    let text = metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The request is exactly a wake-up for `token`: `POST`, JSON, the body
/// `{"token":"<hex>"}`, and no header but the four the webhook sends.
fn assert_wake_up(r: &Request, token: &[u8]) {
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/wake"));
    assert_eq!(
        String::from_utf8(r.body.clone()).unwrap(),
        format!("{{\"token\":\"{}\"}}", hex::encode(token))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), Some(&*r.body.len().to_string()));
    let mut names: Vec<String> = r.headers.iter().map(|(n, _)| n.to_lowercase()).collect();
    names.sort();
    assert_eq!(
        names,
        ["connection", "content-length", "content-type", "host"],
        "no other header"
    );
}

/// Nothing of the messages is in the request: not the sender (user id or
/// device key, raw or hex), not any of the payload, not its size.
fn assert_content_free(r: &Request, sender: &Clinician, sender_id: &str, payloads: &[Vec<u8>]) {
    let text = String::from_utf8_lossy(&r.raw).to_lowercase();
    assert!(!text.contains(sender_id), "sender user id leaked");
    let key = sender.device.public_key().as_bytes().to_vec();
    assert!(!contains(&r.raw, &key) && !text.contains(&hex::encode(&key)));
    for p in payloads {
        for w in p.chunks(16).filter(|w| w.len() == 16) {
            assert!(!contains(&r.raw, w), "payload bytes leaked");
            assert!(
                !text.contains(&hex::encode(w)),
                "payload bytes leaked as hex"
            );
        }
        // The size: the only numbers are the body's length and the
        // gateway's port (in Host), checked apart.
        let without_host: String = text
            .split("\r\n")
            .filter(|l| !l.starts_with("host:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert!(!without_host.contains(&p.len().to_string()), "size leaked");
    }
}

/// Issue 13's acceptance test: one wake-up per transition of an offline
/// mailbox, with no content, sender or size in it; none while connected.
#[tokio::test]
async fn one_content_free_wake_up_per_offline_transition() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let mut gateway = Gateway::start(&[]).await;
    let (relay, metrics) = start_relay(org.root_public(), &gateway, vec![]).await;
    let url = relay.url();
    let token = [0x5au8, 0x01, 0xfe, 0x00, 0x7c, 0x33, 0x90, 0x12];

    let mut b = Client::of(&url, &bob, "bob").await;
    register(&mut b, &token).await;
    assert_eq!(relay.count("push_tokens"), 1, "durable before answered");
    disconnect(b).await;

    // (1) Three messages to offline Bob: one wake-up.
    let mut a = Client::of(&url, &alice, "alice").await;
    let mut payloads = Vec::new();
    for i in 0..3 {
        let p = seal(&alice, &[&alice.chain, &bob.chain], &format!("obs {i}"));
        a.send_acked(message_id(), vec![to(&bob, "bob")], p.clone())
            .await;
        payloads.push(p);
    }
    let r = gateway.next().await;
    assert_wake_up(&r, &token);
    assert_content_free(&r, &alice, "alice", &payloads);
    gateway.quiet().await;

    // (2) Bob connects, drains and acks, leaves; two more: one more wake-up.
    let mut b = Client::of(&url, &bob, "bob").await;
    let mut last = 0;
    for _ in 0..3 {
        last = b.deliver().await.seq;
    }
    b.ack(last).await;
    relay.wait_count("queue", 0).await;
    disconnect(b).await;
    gateway.quiet().await;
    let mut more = Vec::new();
    for i in 0..2 {
        let p = seal(&alice, &[&alice.chain, &bob.chain], &format!("later {i}"));
        a.send_acked(message_id(), vec![to(&bob, "bob")], p.clone())
            .await;
        more.push(p);
    }
    let r = gateway.next().await;
    assert_wake_up(&r, &token);
    assert_content_free(&r, &alice, "alice", &more);
    gateway.quiet().await;

    // (3) While Bob is connected, messages wake nothing.
    let mut b = Client::of(&url, &bob, "bob").await;
    for _ in 0..2 {
        b.deliver().await; // the backlog of (2)
    }
    for i in 0..3 {
        let p = seal(&alice, &[&alice.chain, &bob.chain], &format!("online {i}"));
        a.send_acked(message_id(), vec![to(&bob, "bob")], p).await;
        b.deliver().await;
    }
    gateway.quiet().await;

    // Unregistered (an empty token): nothing more, ever.
    register(&mut b, &[]).await;
    assert_eq!(relay.count("push_tokens"), 0);
    disconnect(b).await;
    a.send_acked(message_id(), vec![to(&bob, "bob")], vec![1, 2, 3])
        .await;
    gateway.quiet().await;

    assert_eq!(metric(&metrics, "ward_relay_push_sent_total"), 2.0);
    assert_eq!(metric(&metrics, "ward_relay_push_failed_total"), 0.0);
    assert_eq!(metric(&metrics, "ward_relay_push_dropped_total"), 0.0);
}

/// A device that leaves with entries it has not acked (here: read but not
/// acked, as after a connection that died) is woken once as it goes.
#[tokio::test]
async fn leaving_with_unacked_entries_wakes_once() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let mut gateway = Gateway::start(&[]).await;
    let (relay, _) = start_relay(org.root_public(), &gateway, vec![]).await;
    let url = relay.url();
    let mut b = Client::of(&url, &bob, "bob").await;
    register(&mut b, b"tok").await;
    let mut a = Client::of(&url, &alice, "alice").await;
    a.send_acked(message_id(), vec![to(&bob, "bob")], vec![1; 10])
        .await;
    b.deliver().await;
    gateway.quiet().await;
    // A newer connection of Bob's replaces this one: the one that ends
    // leaves the entry unacked, but Bob is still connected: no wake-up.
    let mut b2 = Client::of(&url, &bob, "bob").await;
    assert_eq!(b.closed().await, Some(close::NORMAL));
    b2.deliver().await;
    gateway.quiet().await;
    disconnect(b2).await;
    assert_wake_up(&gateway.next().await, b"tok");
    // Already woken: more messages add nothing until Bob connects again.
    a.send_acked(message_id(), vec![to(&bob, "bob")], vec![2; 10])
        .await;
    gateway.quiet().await;
}

/// A revoked device's token is deleted with its mailbox: it is never woken
/// again (here it never had a mailbox, only a token).
#[tokio::test]
async fn a_revoked_device_loses_its_token() {
    use ward_core::keys::{DeviceEncryptionKey, DeviceSigningKey};
    use ward_core::testkit::KIT_TIME;

    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    let tablet = DeviceSigningKey::generate(&mut rng);
    let tablet_enc = DeviceEncryptionKey::generate(&mut rng);
    let add = bob
        .chain
        .add_device(&bob.device, &tablet, &tablet_enc.public_key(), KIT_TIME);
    let mut log2 = bob.log.clone();
    log2.push(add);
    let chain2 = bob.chain.update(&org.root_public(), &log2).unwrap();
    let revoke = chain2.revoke_device_as_root(&org.root, &bob.device.public_key(), KIT_TIME + 60);
    let mut log3 = log2.clone();
    log3.push(revoke);

    let mut gateway = Gateway::start(&[]).await;
    let (relay, _) = start_relay(org.root_public(), &gateway, vec![]).await;
    let url = relay.url();
    let mut phone = Client::of(&url, &bob, "bob").await;
    register(&mut phone, b"phone").await;
    disconnect(phone).await;
    let mut t = Client::connect(&url, &org.root_public(), &tablet, "bob", &log2)
        .await
        .unwrap();
    register(&mut t, b"tablet").await;
    assert_eq!(relay.count("push_tokens"), 2);
    t.frame(client_frame::Frame::PublishLog(
        ward_proto::v1::PublishLog { entries: log3 },
    ))
    .await;
    match t.next().await {
        server_frame::Frame::LogAccepted(a) => assert_eq!(a.len, 3),
        other => panic!("expected LogAccepted, got {other:?}"),
    }
    relay.wait_count("push_tokens", 1).await;
    gateway.quiet().await;
}

/// (4) A gateway that fails twice gets the wake-up on the third attempt;
/// one that keeps failing is given up after the last retry.
#[tokio::test]
async fn failed_wake_ups_are_retried_then_given_up() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let carol = org.enroll(&mut rng, "carol");
    // Bob's wake-up: 500, 500, 200. Carol's: 500, 503, 500.
    let mut gateway = Gateway::start(&[500, 500, 200, 500, 503, 500]).await;
    let delays = vec![Duration::from_millis(50), Duration::from_millis(100)];
    let (relay, metrics) = start_relay(org.root_public(), &gateway, delays).await;
    let url = relay.url();

    let mut b = Client::of(&url, &bob, "bob").await;
    register(&mut b, b"bob-token").await;
    disconnect(b).await;
    let mut a = Client::of(&url, &alice, "alice").await;
    a.send_acked(message_id(), vec![to(&bob, "bob")], vec![9; 40])
        .await;
    for _ in 0..3 {
        assert_wake_up(&gateway.next().await, b"bob-token");
    }
    gateway.quiet().await;
    assert_eq!(metric(&metrics, "ward_relay_push_sent_total"), 1.0);

    let mut c = Client::of(&url, &carol, "carol").await;
    register(&mut c, b"carol-token").await;
    disconnect(c).await;
    a.send_acked(message_id(), vec![to(&carol, "carol")], vec![8; 40])
        .await;
    for _ in 0..3 {
        assert_wake_up(&gateway.next().await, b"carol-token");
    }
    gateway.quiet().await;
    assert_eq!(metric(&metrics, "ward_relay_push_failed_total"), 1.0);
    assert_eq!(metric(&metrics, "ward_relay_push_sent_total"), 1.0);
}

/// An `https://` webhook gets the same request in TLS, verified against
/// the configured CA; one whose certificate does not chain to it is never
/// sent the token (the handshake fails first) and is given up.
#[tokio::test]
async fn an_https_webhook_is_verified() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let pki = DevPki::mint("push test CA", LOOPBACK_NAMES).unwrap();
    let mut gateway = Gateway::start_on(&[], Acceptor::Tls(pki.server().unwrap())).await;
    assert!(gateway.url.starts_with("https://"));
    for (trust, woken) in [(Some(pki.client().unwrap()), true), (None, false)] {
        let delays = vec![Duration::from_millis(20)];
        let (relay, metrics) =
            start_relay_trusting(org.root_public(), &gateway, delays, trust).await;
        let url = relay.url();
        let mut b = Client::of(&url, &bob, "bob").await;
        register(&mut b, b"tls-token").await;
        disconnect(b).await;
        let mut a = Client::of(&url, &alice, "alice").await;
        a.send_acked(message_id(), vec![to(&bob, "bob")], vec![5; 20])
            .await;
        if woken {
            assert_wake_up(&gateway.next().await, b"tls-token");
            gateway.quiet().await;
            assert_eq!(metric(&metrics, "ward_relay_push_sent_total"), 1.0);
        } else {
            // The web roots do not know the test CA.
            let deadline = tokio::time::Instant::now() + WAIT;
            while metric(&metrics, "ward_relay_push_failed_total") < 1.0 {
                assert!(tokio::time::Instant::now() < deadline, "not given up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            gateway.quiet().await;
            assert_eq!(metric(&metrics, "ward_relay_push_sent_total"), 0.0);
        }
    }
}

/// (5) A token over 1,024 bytes is MALFORMED, and the connection stays
/// usable: a valid token is registered on it next.
#[tokio::test]
async fn an_oversized_token_is_malformed_and_the_connection_stays_open() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    let gateway = Gateway::start(&[]).await;
    let (relay, _) = start_relay(org.root_public(), &gateway, vec![]).await;
    let mut b = Client::of(&relay.url(), &bob, "bob").await;

    b.frame(client_frame::Frame::RegisterPush(RegisterPush {
        token: vec![1; 1025],
    }))
    .await;
    assert_eq!(b.error().await.code, ErrorCode::Malformed as i32);
    assert_eq!(relay.count("push_tokens"), 0);

    register(&mut b, &[2; 1024]).await;
    assert_eq!(relay.count("push_tokens"), 1);
}

/// Without a gateway, tokens are stored and nothing is sent (nothing to
/// send to); the frame is answered as usual.
#[tokio::test]
async fn without_a_gateway_tokens_are_kept() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    let relay = Relay::start(org.root_public()).await;
    let mut b = Client::of(&relay.url(), &bob, "bob").await;
    register(&mut b, b"t").await;
    assert_eq!(relay.count("push_tokens"), 1);
}

/// The SDK registers its token on the relay connection (and again on
/// every connection); an offline SDK device is woken once by a message.
#[tokio::test]
async fn the_sdk_registers_its_token_and_is_woken_offline() {
    let mut gateway = Gateway::start(&[]).await;
    let url = gateway.url.clone();
    let w = ward_tests::world::World::with_relay(move |c| c.push = Some(PushConfig::webhook(url)))
        .await;
    let bob = w.enroll("bob", "bob-phone").await;
    assert!(matches!(
        bob.register_push(&[0; 1025]).await,
        Err(ward_sdk::ClientError::PushTokenTooLong(1025))
    ));
    bob.register_push(b"sdk-token").await.unwrap();
    w.relay.wait_count("push_tokens", 1).await;
    bob.lock().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while w.metric("ward_relay_connections") > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let alice = w.enroll("alice", "alice-laptop").await;
    let conv = alice.conversation_with(&["bob"]).await.unwrap();
    alice.send_text(conv, "bed 4: potassium 6.1").await.unwrap();
    let r = gateway.next().await;
    assert_wake_up(&r, b"sdk-token");
    let text = String::from_utf8_lossy(&r.raw).to_lowercase();
    assert!(!text.contains("alice") && !text.contains("potassium"));
    gateway.quiet().await;
    assert_eq!(w.metric("ward_relay_push_sent_total"), 1.0);
}

/// Tokens are durable: a relay restarted on the same database wakes a
/// device that registered before the restart (every token starts armed).
#[tokio::test]
async fn tokens_survive_a_restart() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let dir = ward_tests::relay::TempDir::new("push-restart");
    let db = dir.path().join("relay.db");
    let mut gateway = Gateway::start(&[]).await;
    let on_db = |db: std::path::PathBuf, url: String| {
        move |c: &mut ward_relay::Config| {
            c.blob_dir = ward_relay::config::default_blob_dir(&db);
            c.db_path = db;
            c.push = Some(PushConfig::webhook(url));
        }
    };
    let mut first =
        Relay::start_with(org.root_public(), on_db(db.clone(), gateway.url.clone())).await;
    let mut b = Client::of(&first.url(), &bob, "bob").await;
    register(&mut b, b"kept").await;
    disconnect(b).await;
    first.stop().await.unwrap();

    let second = Relay::start_with(org.root_public(), on_db(db, gateway.url.clone())).await;
    let mut a = Client::of(&second.url(), &alice, "alice").await;
    a.send_acked(message_id(), vec![to(&bob, "bob")], vec![3; 30])
        .await;
    assert_wake_up(&gateway.next().await, b"kept");
    gateway.quiet().await;
}
