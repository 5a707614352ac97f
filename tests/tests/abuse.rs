//! Issue 9 (servers that hold under abuse), items 1, 3 and 5: each finding
//! against the real relay and keyserver on `127.0.0.1:0`. Attackers connect
//! from 127.0.0.2 (another loopback address, so another source) where the
//! per-address limits matter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use ward_core::keys::DeviceSigningKey;
use ward_core::testkit::Org;
use ward_net::close;
use ward_proto::v1::{ErrorCode, Recipient};
use ward_tests::keyserver::{TestKeyserver, temp_db_path, test_config};
use ward_tests::relay::{Client, Relay, WAIT, message_id, seal, to};

const ATTACKER: &str = "127.0.0.2";

async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    sock.connect(to).await.unwrap()
}

/// A WebSocket from `from` that has read the challenge and not answered.
async fn unauthenticated(
    from: &str,
    to: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let tcp = tcp_from(from, to).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{to}/"), tcp)
        .await
        .unwrap();
    let challenge = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(challenge, Some(Ok(WsMessage::Binary(_)))));
    ws
}

async fn close_code(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Option<u16> {
    let read = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(WsMessage::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(WAIT, read).await.expect("not closed")
}

fn empty_entries(n: usize) -> Vec<u8> {
    [0x22u8, 0x00].repeat(n)
}

/// Item 1: before login only small frames are taken, and a frame of
/// repeated empty `log` entries is refused before it is decoded.
#[tokio::test]
async fn pre_login_frames_are_small_and_repeated_fields_bounded() {
    let org = Org::new(&mut rand::rng());
    let relay = Relay::start(org.root_public()).await;
    // 1 MiB as the AuthResponse: over the pre-auth limit (256 KiB), refused
    // from its header with TOO_BIG (today: buffered and decoded).
    let mut ws = unauthenticated("127.0.0.1", relay.addr).await;
    let _ = ws
        .send(WsMessage::Binary(empty_entries(512 << 10).into()))
        .await;
    assert_eq!(close_code(&mut ws).await, Some(close::TOO_BIG));
    // Within the size limit, but 100,000 empty entries: refused by the
    // walker (malformed), not decoded into 100,000 statements.
    let mut ws = unauthenticated("127.0.0.1", relay.addr).await;
    ws.send(WsMessage::Binary(empty_entries(100_000).into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(close::PROTOCOL_ERROR));

    // The keyserver too (its pre-auth limit is 16 KiB).
    let db = temp_db_path("abuse-ks-frames");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let mut ws = unauthenticated("127.0.0.1", ks.addr).await;
    let _ = ws
        .send(WsMessage::Binary(empty_entries(32 << 10).into()))
        .await;
    assert_eq!(close_code(&mut ws).await, Some(close::TOO_BIG));
}

/// Item 5: a bad or wrong-version upgrade gets an HTTP status, not a
/// closed socket.
#[tokio::test]
async fn bad_upgrades_get_400_or_426() {
    let org = Org::new(&mut rand::rng());
    let relay = Relay::start(org.root_public()).await;
    let db = temp_db_path("abuse-ks-http");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    for addr in [relay.addr, ks.addr] {
        for (req, status) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], "426"),
            (&b"BREW /pot HTTP/1.1\r\n\r\n"[..], "400"),
        ] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(req).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(WAIT, c.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
        }
    }
}

/// Item 5: idle unauthenticated connections from one address fill that
/// address's share only; a real client from another address logs in.
#[tokio::test]
async fn one_address_cannot_take_the_slots_of_others() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.max_connections = 16;
        c.limits.max_unauthenticated_per_address = 4;
        c.limits.net.auth_timeout = Duration::from_secs(30);
    })
    .await;
    // 40 idle sockets from the attacker: only 4 are kept.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tcp_from(ATTACKER, relay.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The real client gets in, and can send.
    let mut a = Client::of(&relay.url(), &alice, "alice").await;
    a.send_acked(message_id(), vec![to(&alice, "alice")], vec![1; 10])
        .await;

    let db = temp_db_path("abuse-ks-slots");
    let mut config = test_config(&org, &db);
    config.limits.max_connections = 16;
    config.limits.max_unauthenticated_per_address = 4;
    let ks = TestKeyserver::start(config).await;
    for _ in 0..40 {
        idle.push(tcp_from(ATTACKER, ks.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ward_tests::keyserver::enroll(&ks.url(), &alice).await;
    drop(idle);
}

/// Item 5: a flood of self-signed fresh keys (users that do not exist, so
/// they could only enroll) gets no enrolling session at all: without a
/// valid invite of the user, signed over the handshake by its delegation
/// key (SECURITY.md §8, E1–E5), the keyserver refuses at the handshake. So
/// a clinician behind the same NAT address enrolls at once.
#[tokio::test]
async fn an_enrolment_flood_does_not_stop_a_real_enrolment() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let mallory = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let db = temp_db_path("abuse-ks-enroll");
    let mut config = test_config(&org, &db);
    config.limits.max_enrolling = 16;
    config.limits.max_enrolling_per_address = 4;
    let ks = TestKeyserver::start(config).await;
    let url = format!("ws://{}", ks.addr);
    let audience = ward_net::handshake::Audience::keyserver(
        org.root_public(),
        ward_core::auth::DEFAULT_INSTANCE,
    );
    let mut flood = Vec::new();
    for i in 0..40 {
        let key = DeviceSigningKey::generate(&mut rng);
        let tcp = tcp_from(ATTACKER, ks.addr).await;
        let (ws, _) = tokio_tungstenite::client_async(&url, tcp).await.unwrap();
        let mut conn = ward_net::Conn::from_ws(ws, &ward_net::Limits::default());
        let user = format!("nobody{i}");
        // Half without an invite, half with one another root signed.
        let r = if i % 2 == 0 {
            ward_net::handshake::client(&mut conn, &key, &user, &audience, &[]).await
        } else {
            let forged = mallory.enroll(&mut rng, &user);
            ward_net::handshake::client_enrolling(
                &mut conn,
                &key,
                &user,
                &audience,
                &forged.delegation,
                &forged.invite,
            )
            .await
        };
        match r {
            Err(ward_net::NetError::Refused(ErrorCode::Unauthenticated)) => {}
            Err(e) => panic!("expected UNAUTHENTICATED, got {e}"),
            Ok(()) => panic!("attempt {i} got an enrolling session without a valid invite"),
        }
        flood.push(conn);
    }
    // A real enrolment from the attacker's own address goes through.
    let tcp = tcp_from(ATTACKER, ks.addr).await;
    let (ws, _) = tokio_tungstenite::client_async(&url, tcp).await.unwrap();
    let mut conn = ward_net::Conn::from_ws(ws, &ward_net::Limits::default());
    ward_net::handshake::client_enrolling(
        &mut conn,
        &alice.device,
        "alice",
        &audience,
        &alice.delegation,
        &alice.invite,
    )
    .await
    .unwrap();
    conn.send_msg(&ward_proto::v1::KsRequest {
        request_id: 1,
        body: Some(ward_proto::v1::ks_request::Body::Append(
            alice.log[0].clone(),
        )),
    })
    .await
    .unwrap();
    let r: ward_proto::v1::KsResponse = conn.recv_msg().await.unwrap().unwrap();
    assert!(
        matches!(r.body, Some(ward_proto::v1::ks_response::Body::Appended(ref a)) if a.seq == 0),
        "{r:?}"
    );
    drop(flood);
}

/// Item 5: a connection that answers nothing (no frame, no pong) is closed
/// after the idle timeout; the relay pings the others.
#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.idle_timeout = Duration::from_millis(1500);
        c.limits.ping_interval = Duration::from_millis(300);
    })
    .await;
    let a = Client::of(&relay.url(), &alice, "alice").await;
    // Not reading: pings go unanswered.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(a.closed().await, Some(close::NORMAL));

    // One that reads (and so answers pings) stays.
    let mut b = Client::of(&relay.url(), &alice, "alice").await;
    assert!(b.next_within(Duration::from_millis(3000)).await.is_none());
    b.send_acked(message_id(), vec![to(&alice, "alice")], vec![1; 10])
        .await;
}

/// Item 3: recipients must be active devices of the logs the relay holds;
/// per-user and per-mailbox quotas refuse with a typed error.
#[tokio::test]
async fn relay_storage_is_bounded_per_user_and_per_mailbox() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let carol = org.enroll(&mut rng, "carol");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.max_user_pending_entries = 3;
        c.limits.max_user_pending_bytes = 1 << 20;
        c.limits.max_mailbox_entries = 2;
    })
    .await;
    let url = relay.url();
    // Bob and carol connect once, so that the relay holds their logs.
    drop(Client::of(&url, &bob, "bob").await);
    drop(Client::of(&url, &carol, "carol").await);
    let mut a = Client::of(&url, &alice, "alice").await;
    let payload = seal(&alice, &[&alice.chain, &bob.chain], "hello");

    // A device no log mentions: refused, nothing stored.
    let id = message_id();
    a.send(
        id,
        vec![Recipient {
            user_id: "bob".into(),
            device_id: vec![9; 32],
        }],
        payload.clone(),
    )
    .await;
    let e = a.error().await;
    assert_eq!(e.code, ErrorCode::NotFound as i32);
    assert_eq!(relay.count("mailboxes"), 0);

    // Bob's mailbox holds 2; the third is over the mailbox cap.
    for _ in 0..2 {
        a.send_acked(message_id(), vec![to(&bob, "bob")], payload.clone())
            .await;
    }
    a.send(message_id(), vec![to(&bob, "bob")], payload.clone())
        .await;
    assert_eq!(a.error().await.code, ErrorCode::QuotaExceeded as i32);
    // Alice has 2 of her 3 entries: one more to carol, then she is full.
    a.send_acked(message_id(), vec![to(&carol, "carol")], payload.clone())
        .await;
    a.send(message_id(), vec![to(&carol, "carol")], payload.clone())
        .await;
    assert_eq!(a.error().await.code, ErrorCode::QuotaExceeded as i32);
    assert_eq!(relay.count("queue"), 3);

    // Delivery frees the quota.
    let mut b = Client::of(&url, &bob, "bob").await;
    let first = b.deliver().await;
    let second = b.deliver().await;
    assert_eq!((first.seq, second.seq), (1, 2));
    b.ack(second.seq).await;
    relay.wait_count("queue", 1).await;
    a.send_acked(message_id(), vec![to(&bob, "bob")], payload.clone())
        .await;
}

/// Item 3: mailboxes no verified log backs are pruned: a revoked device's
/// (with its entries, crediting the sender's quota), and those addressed to
/// a user before the relay knew its log, once the log shows them unknown.
#[tokio::test]
async fn mailboxes_of_revoked_and_unknown_devices_are_pruned() {
    use ward_core::keys::{DeviceEncryptionKey, DeviceSigningKey};
    use ward_core::testkit::KIT_TIME;
    use ward_proto::v1::{PublishLog, client_frame, server_frame};

    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let carol = org.enroll(&mut rng, "carol");
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

    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.max_user_pending_entries = 3;
    })
    .await;
    let url = relay.url();
    drop(
        Client::connect(&url, &org.root_public(), &tablet, "bob", &log2)
            .await
            .unwrap(),
    );
    let mut a = Client::of(&url, &alice, "alice").await;
    let payload = seal(&alice, &[&alice.chain, &bob.chain], "hello");
    for _ in 0..2 {
        a.send_acked(message_id(), vec![to(&bob, "bob")], payload.clone())
            .await;
    }
    // Carol never connected: a device of hers is accepted unchecked.
    a.send_acked(
        message_id(),
        vec![Recipient {
            user_id: "carol".into(),
            device_id: vec![7; 32],
        }],
        payload.clone(),
    )
    .await;
    assert_eq!(relay.count("mailboxes"), 2);
    // Alice's quota is full.
    a.send(message_id(), vec![to(&bob, "bob")], payload.clone())
        .await;
    assert_eq!(a.error().await.code, ErrorCode::QuotaExceeded as i32);

    // The root revokes bob's phone: its mailbox goes, with both entries.
    let mut t = Client::connect(&url, &org.root_public(), &tablet, "bob", &log2)
        .await
        .unwrap();
    t.frame(client_frame::Frame::PublishLog(PublishLog {
        entries: log3,
    }))
    .await;
    assert!(matches!(
        t.next().await,
        server_frame::Frame::LogAccepted(_)
    ));
    relay.wait_count("queue", 1).await;
    // Carol connects: her log has no device [7; 32], so that mailbox goes.
    drop(Client::of(&url, &carol, "carol").await);
    relay.wait_count("mailboxes", 0).await;
    relay.wait_count("messages", 0).await;
    // Alice's quota is credited back.
    a.send_acked(message_id(), vec![to(&carol, "carol")], payload)
        .await;
}
