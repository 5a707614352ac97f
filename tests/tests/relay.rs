//! The relay's acceptance scenarios (issue 4), against the real relay on
//! `127.0.0.1:0`. The crash scenario (SIGKILL) is in `server/tests/crash.rs`,
//! where the relay binary is at hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use ward_core::envelope::ReceivedEnvelope;
use ward_core::testkit::Org;
use ward_net::close;
use ward_proto::v1::{Ack, ErrorCode, Recipient, client_frame, server_frame};
use ward_tests::relay::{Client, Relay, WAIT, closed, message_id, raw, seal, to};

/// 1. A sends to B while B is offline; B connects later and receives the
/// messages in order; B's ack deletes them from the store.
#[tokio::test]
async fn offline_recipient_gets_backlog_in_order_and_ack_deletes_it() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let mut relay = Relay::start(org.root_public()).await;
    let url = relay.url();

    let mut a = Client::of(&url, &alice, "alice").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let id = message_id();
        let payload = seal(&alice, &[&alice.chain, &bob.chain], &format!("obs {i}"));
        a.send_acked(id, vec![to(&bob, "bob")], payload.clone())
            .await;
        sent.push((id, payload));
    }
    // Acked means stored: one ciphertext and one queue entry per message.
    assert_eq!(relay.count("messages"), 5);
    assert_eq!(relay.count("queue"), 5);

    let mut b = Client::of(&url, &bob, "bob").await;
    let mut last = 0;
    for (i, (id, payload)) in sent.iter().enumerate() {
        let d = b.deliver().await;
        assert_eq!(d.seq, i as u64 + 1, "in order, seq monotonic");
        assert_eq!(&d.message_id, id);
        assert_eq!(&d.payload, payload, "ciphertext relayed byte for byte");
        assert_eq!(d.sender_user_id, "alice");
        assert_eq!(
            d.sender_device_id,
            alice.device.public_key().as_bytes().to_vec()
        );
        let env = ReceivedEnvelope::parse(&d.payload).unwrap();
        assert_eq!(env.claimed_sender().0, "alice");
        last = d.seq;
    }
    assert!(b.next_within(Duration::from_millis(200)).await.is_none());
    b.ack(last).await;
    relay.wait_count("queue", 0).await;
    relay.wait_count("messages", 0).await;

    // A second connection finds the mailbox empty; new messages are pushed
    // at once, with sequence numbers that continue after the acked ones.
    drop(b);
    let mut b2 = Client::of(&url, &bob, "bob").await;
    assert!(b2.next_within(Duration::from_millis(300)).await.is_none());
    let id = message_id();
    a.send_acked(id, vec![to(&bob, "bob")], vec![1, 2, 3]).await;
    let d = b2.deliver().await;
    assert_eq!((d.seq, d.message_id), (6, id.to_vec()));

    // Graceful shutdown closes connected devices with GOING_AWAY.
    let stopping = tokio::spawn(closed(b2.conn));
    relay.stop().await.unwrap();
    assert_eq!(stopping.await.unwrap(), Some(close::GOING_AWAY));
}

/// 2. A resend with the same message id is acknowledged again and stored
/// and delivered once; another sender cannot reuse the id.
#[tokio::test]
async fn resend_with_same_id_is_acked_but_not_duplicated() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let relay = Relay::start(org.root_public()).await;
    let url = relay.url();

    let mut a = Client::of(&url, &alice, "alice").await;
    let mut b = Client::of(&url, &bob, "bob").await;
    let id = message_id();
    let payload = seal(&alice, &[&bob.chain], "K+ 6.1");
    for _ in 0..3 {
        a.send_acked(id, vec![to(&bob, "bob")], payload.clone())
            .await;
    }
    let d = b.deliver().await;
    assert_eq!(d.message_id, id.to_vec());
    assert!(b.next_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(relay.count("messages"), 1);
    assert_eq!(relay.count("queue"), 1);

    // Still a duplicate once delivered and acked (the ciphertext is gone).
    b.ack(d.seq).await;
    relay.wait_count("messages", 0).await;
    a.send_acked(id, vec![to(&bob, "bob")], payload.clone())
        .await;
    assert!(b.next_within(Duration::from_millis(300)).await.is_none());

    // The same id from another sender is a conflict, not an ack.
    b.send(id, vec![to(&alice, "alice")], vec![9]).await;
    let e = b.error().await;
    assert_eq!(e.code, ErrorCode::Conflict as i32);
    assert_eq!(e.message_id, id.to_vec());
}

/// Sends one message from `a` to `b` and checks it arrives: the relay still
/// serves others.
async fn still_works(a: &mut Client, b: &mut Client, bob: &ward_core::testkit::Clinician) {
    let id = message_id();
    a.send_acked(id, vec![to(bob, "bob")], b"still here".to_vec())
        .await;
    let d = b.deliver().await;
    assert_eq!(d.message_id, id.to_vec());
    b.ack(d.seq).await;
}

/// 4. Refusals, each while another client keeps working: unauthenticated,
/// malformed, oversized and text frames, another device's mailbox, too many
/// recipients.
#[tokio::test]
async fn refusals_do_not_disturb_other_clients() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let mallory = org.enroll(&mut rng, "mallory");
    let outsider = Org::new(&mut rng).enroll(&mut rng, "eve");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.net.max_frame_bytes = 64 << 10;
        // Long enough for a real handshake on a loaded 2-core CI machine.
        c.limits.net.auth_timeout = Duration::from_millis(2000);
        c.limits.max_recipients = 4;
    })
    .await;
    let url = relay.url();
    let mut a = Client::of(&url, &alice, "alice").await;
    let mut b = Client::of(&url, &bob, "bob").await;
    still_works(&mut a, &mut b, &bob).await;

    // Unauthenticated: a service frame instead of the handshake answer.
    let mut c = raw(&url).await;
    let _challenge = c.recv().await.unwrap().unwrap();
    c.send_msg(&ward_proto::v1::ClientFrame {
        frame: Some(client_frame::Frame::Ack(Ack {
            up_to_seq: 1,
            device_id: vec![],
        })),
    })
    .await
    .unwrap();
    assert_eq!(closed(c).await, Some(close::AUTH_FAILED));
    still_works(&mut a, &mut b, &bob).await;

    // Unauthenticated: silence until the auth timeout.
    let c = raw(&url).await;
    assert_eq!(closed(c).await, Some(close::AUTH_TIMEOUT));

    // A device of another organisation, and a device claiming another
    // user's id, are refused.
    let err = Client::connect(
        &url,
        &org.root_public(),
        &outsider.device,
        "eve",
        &outsider.log,
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            ward_net::NetError::Refused(ErrorCode::InvalidStatement)
        ),
        "{err:?}"
    );
    let err = Client::connect(
        &url,
        &org.root_public(),
        &mallory.device,
        "alice",
        &alice.log,
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, ward_net::NetError::Refused(ErrorCode::Unauthenticated)),
        "{err:?}"
    );
    let err = Client::connect(&url, &org.root_public(), &mallory.device, "mallory", &[])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ward_net::NetError::Refused(ErrorCode::UnknownUser)),
        "{err:?}"
    );
    still_works(&mut a, &mut b, &bob).await;

    // Malformed frame after authentication.
    let mut m = Client::of(&url, &mallory, "mallory").await;
    let mut ws = m.conn.into_inner();
    ws.send(WsMessage::Binary(vec![0xff; 16].into()))
        .await
        .unwrap();
    m.conn = ward_net::Conn::from_ws(ws, &ward_net::Limits::default());
    assert_eq!(m.closed().await, Some(close::PROTOCOL_ERROR));
    still_works(&mut a, &mut b, &bob).await;

    // Oversized frame.
    let m = Client::of(&url, &mallory, "mallory").await;
    let mut ws = m.conn.into_inner();
    let _ = ws
        .send(WsMessage::Binary(vec![0u8; 100 << 10].into()))
        .await;
    let m = ward_net::Conn::from_ws(ws, &ward_net::Limits::default());
    assert_eq!(closed(m).await, Some(close::TOO_BIG));
    still_works(&mut a, &mut b, &bob).await;

    // Text frame.
    let m = Client::of(&url, &mallory, "mallory").await;
    let mut ws = m.conn.into_inner();
    ws.send(WsMessage::Text("hello".into())).await.unwrap();
    let m = ward_net::Conn::from_ws(ws, &ward_net::Limits::default());
    assert_eq!(closed(m).await, Some(close::UNSUPPORTED_DATA));
    still_works(&mut a, &mut b, &bob).await;

    // Another device's mailbox: mallory tries to ack bob's entries away.
    let pending = message_id();
    a.send_acked(pending, vec![to(&bob, "bob")], vec![4]).await;
    let mut m = Client::of(&url, &mallory, "mallory").await;
    m.frame(client_frame::Frame::Ack(Ack {
        up_to_seq: u64::MAX,
        device_id: bob.device.public_key().as_bytes().to_vec(),
    }))
    .await;
    assert_eq!(m.error().await.code, ErrorCode::Forbidden as i32);
    assert_eq!(m.closed().await, Some(close::FORBIDDEN));
    let d = b.deliver().await;
    assert_eq!(d.message_id, pending.to_vec(), "bob's entry survived");
    b.ack(d.seq).await;
    still_works(&mut a, &mut b, &bob).await;

    // Too many recipients.
    let mut m = Client::of(&url, &mallory, "mallory").await;
    let many: Vec<Recipient> = (0..5u8)
        .map(|i| Recipient {
            user_id: format!("u{i}"),
            device_id: vec![i; 32],
        })
        .collect();
    m.send(message_id(), many, vec![1]).await;
    assert_eq!(m.error().await.code, ErrorCode::TooLarge as i32);
    assert_eq!(m.closed().await, Some(close::TOO_BIG));
    still_works(&mut a, &mut b, &bob).await;
}

/// Per-device send rate: a burst over the bucket is closed with RATE_LIMITED,
/// and reconnecting does not refill the bucket.
#[tokio::test]
async fn send_rate_is_limited_per_device() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.send_rate_per_sec = 1.0;
        c.limits.send_burst = 3;
    })
    .await;
    let url = relay.url();
    let mut a = Client::of(&url, &alice, "alice").await;
    for _ in 0..3 {
        a.send_acked(message_id(), vec![to(&bob, "bob")], vec![1])
            .await;
    }
    a.send(message_id(), vec![to(&bob, "bob")], vec![1]).await;
    assert_eq!(a.error().await.code, ErrorCode::RateLimited as i32);
    assert_eq!(a.closed().await, Some(close::RATE_LIMITED));

    // Reconnecting does not refill the bucket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut a = Client::of(&url, &alice, "alice").await;
    a.send(message_id(), vec![to(&bob, "bob")], vec![1]).await;
    assert_eq!(a.error().await.code, ErrorCode::RateLimited as i32);
}

/// 5. A client that stops reading does not delay delivery to the others; it
/// is disconnected with SLOW_CONSUMER and its messages stay stored.
#[tokio::test]
async fn slow_reader_is_cut_off_without_delaying_others() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let carol = org.enroll(&mut rng, "carol");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.outbound_queue = 4;
        c.limits.outbound_bytes = 256 << 10;
        c.limits.slow_consumer_timeout = Duration::from_millis(300);
        c.limits.close_grace = Duration::from_secs(10);
        c.limits.send_burst = 1000;
    })
    .await;
    let url = relay.url();
    let mut a = Client::of(&url, &alice, "alice").await;
    let mut slow = Client::of(&url, &bob, "bob").await; // never reads until the end
    let mut c = Client::of(&url, &carol, "carol").await;

    // 20 MiB for bob: far more than socket buffers and the relay's queue.
    const BIG: usize = 256 << 10;
    const N: usize = 80;
    for i in 0..N {
        a.send_acked(message_id(), vec![to(&bob, "bob")], vec![i as u8; BIG])
            .await;
        if i % 10 == 0 {
            // Carol's messages arrive promptly all along.
            let id = message_id();
            let started = std::time::Instant::now();
            a.send_acked(id, vec![to(&carol, "carol")], vec![7; 100])
                .await;
            let d = c.deliver().await;
            assert_eq!(d.message_id, id.to_vec());
            assert!(started.elapsed() < Duration::from_secs(2), "carol delayed");
            c.ack(d.seq).await;
        }
    }
    // Give the relay time to notice; then the slow reader finally reads: it
    // gets what was buffered, then SLOW_CONSUMER.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = message_id();
    a.send_acked(id, vec![to(&carol, "carol")], vec![8]).await;
    let d = c.deliver().await;
    assert_eq!(d.message_id, id.to_vec());
    c.ack(d.seq).await;
    let mut delivered = 0usize;
    let code = loop {
        match tokio::time::timeout(WAIT, slow.conn.recv_msg::<ward_proto::v1::ServerFrame>()).await
        {
            Ok(Ok(Some(f))) => {
                assert!(matches!(f.frame, Some(server_frame::Frame::Deliver(_))));
                delivered += 1;
            }
            Ok(Err(ward_net::NetError::Closed(code, _))) => break code,
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert_eq!(code, Some(close::SLOW_CONSUMER));
    assert!(delivered < N, "cut off before everything was pushed");

    // Nothing was lost: reconnecting, bob gets all of it, in order.
    relay.wait_count("queue", N as i64).await;
    let mut b = Client::of(&url, &bob, "bob").await;
    for i in 0..N {
        let d = b.deliver().await;
        assert_eq!(d.seq, i as u64 + 1);
        assert_eq!(d.payload.len(), BIG);
        assert_eq!(d.payload[0], i as u8);
    }
}

/// A root-signed revocation presented by another device of the user reaches
/// the relay: the revoked device is disconnected and refused afterwards.
#[tokio::test]
async fn revoked_device_is_disconnected_and_refused() {
    use ward_core::keys::{DeviceEncryptionKey, DeviceSigningKey};
    use ward_core::testkit::KIT_TIME;

    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    // Bob adds a second device (his tablet), then the root revokes the phone.
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

    let relay = Relay::start(org.root_public()).await;
    let url = relay.url();
    let phone = Client::of(&url, &bob, "bob").await;
    let phone_closed = tokio::spawn(closed(phone.conn));
    // The tablet presents the older log 2 (accepted), then publishes log 3.
    let mut t = Client::connect(&url, &org.root_public(), &tablet, "bob", &log2)
        .await
        .unwrap();
    t.frame(client_frame::Frame::PublishLog(
        ward_proto::v1::PublishLog {
            entries: log3.clone(),
        },
    ))
    .await;
    match t.next().await {
        server_frame::Frame::LogAccepted(a) => assert_eq!(a.len, 3),
        other => panic!("expected LogAccepted, got {other:?}"),
    }
    assert_eq!(phone_closed.await.unwrap(), Some(close::DEVICE_REVOKED));
    // The phone, presenting its old log, is refused: the relay keeps log 3.
    let err = Client::connect(&url, &org.root_public(), &bob.device, "bob", &bob.log)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ward_net::NetError::Refused(ErrorCode::DeviceRevoked)),
        "{err:?}"
    );
    // A forked log is refused.
    let fork = chain2.revoke_device_as_root(&org.root, &tablet.public_key(), KIT_TIME + 120);
    let mut forked = log2.clone();
    forked.push(fork);
    t.frame(client_frame::Frame::PublishLog(
        ward_proto::v1::PublishLog { entries: forked },
    ))
    .await;
    assert_eq!(t.error().await.code, ErrorCode::InvalidStatement as i32);
}

/// Undelivered entries expire after the retention period, ciphertext included.
#[tokio::test]
async fn retention_sweeper_expires_undelivered_entries() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.retention = Duration::from_millis(300);
        c.sweep_interval = Duration::from_millis(50);
    })
    .await;
    let mut a = Client::of(&relay.url(), &alice, "alice").await;
    a.send_acked(message_id(), vec![to(&bob, "bob")], vec![1; 10])
        .await;
    assert_eq!(relay.count("queue"), 1);
    relay.wait_count("queue", 0).await;
    relay.wait_count("messages", 0).await;
    let mut b = Client::of(&relay.url(), &bob, "bob").await;
    assert!(b.next_within(Duration::from_millis(300)).await.is_none());
}

/// Connections over the cap are closed with TOO_MANY_CONNECTIONS; a second
/// connection of the same device replaces the first.
#[tokio::test]
async fn connection_cap_and_one_connection_per_device() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let relay = Relay::start_with(org.root_public(), |c| c.limits.max_connections = 2).await;
    let url = relay.url();
    let mut a = Client::of(&url, &alice, "alice").await;
    let b = Client::of(&url, &bob, "bob").await;
    assert_eq!(
        closed(raw(&url).await).await,
        Some(close::TOO_MANY_CONNECTIONS)
    );

    // Bob reconnects (after the old connection is gone, to stay under the cap
    // of 2): the newer connection gets the mailbox.
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b2 = Client::of(&url, &bob, "bob").await;
    let id = message_id();
    a.send_acked(id, vec![to(&bob, "bob")], vec![5]).await;
    assert_eq!(b2.deliver().await.message_id, id.to_vec());

    // A second connection of the same device closes the first one.
    let relay2 = Relay::start(org.root_public()).await;
    let first = Client::of(&relay2.url(), &bob, "bob").await;
    let first_closed = tokio::spawn(closed(first.conn));
    let _second = Client::of(&relay2.url(), &bob, "bob").await;
    assert_eq!(first_closed.await.unwrap(), Some(close::NORMAL));
}

/// The global outbound budget: a slow reader that holds all of it only
/// delays others until it is cut off; nothing deadlocks.
#[tokio::test]
async fn global_outbound_budget_held_by_a_slow_reader_is_released() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let carol = org.enroll(&mut rng, "carol");
    let relay = Relay::start_with(org.root_public(), |c| {
        c.limits.outbound_bytes = 256 << 10;
        c.limits.global_outbound_bytes = 256 << 10;
        c.limits.slow_consumer_timeout = Duration::from_millis(300);
        c.limits.close_grace = Duration::from_secs(1);
        c.limits.send_burst = 1000;
    })
    .await;
    let url = relay.url();
    let mut a = Client::of(&url, &alice, "alice").await;
    let slow = Client::of(&url, &bob, "bob").await; // never reads
    let mut c = Client::of(&url, &carol, "carol").await;
    for i in 0..80u8 {
        a.send_acked(message_id(), vec![to(&bob, "bob")], vec![i; 256 << 10])
            .await;
    }
    let id = message_id();
    a.send_acked(id, vec![to(&carol, "carol")], vec![1; 100])
        .await;
    assert_eq!(c.deliver().await.message_id, id.to_vec());
    drop(slow);
}

/// Stress: devices send to each other concurrently while connecting and
/// dropping at random. Every acknowledged message reaches its recipient,
/// seqs only grow within a connection, and once everything is acked the
/// store is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_loses_nothing_and_keeps_order() {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use rand::RngExt;

    const USERS: usize = 6;
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let users: Arc<Vec<_>> = Arc::new(
        (0..USERS)
            .map(|i| org.enroll(&mut rng, &format!("u{i}")))
            .collect(),
    );
    let relay = Relay::start_with(org.root_public(), |c| c.limits.send_burst = 10_000).await;
    let url = relay.url();
    // recipient -> ids acked by the relay; recipient -> ids received.
    let acked: Arc<Mutex<HashMap<usize, HashSet<Vec<u8>>>>> = Arc::default();
    let received: Arc<Mutex<HashMap<usize, HashSet<Vec<u8>>>>> = Arc::default();

    let mut tasks = Vec::new();
    for me in 0..USERS {
        let (users, url, acked, received) =
            (users.clone(), url.clone(), acked.clone(), received.clone());
        // Per round: the recipients of each send, and whether to ack at the end.
        let plan: Vec<(Vec<usize>, bool)> = (0..6)
            .map(|_| {
                let n = rng.random_range(1..8);
                let to: Vec<usize> = (0..n).map(|_| rng.random_range(0..USERS)).collect();
                (to, rng.random_bool(0.5))
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for (sends, ack_at_end) in plan {
                let mut c = Client::of(&url, &users[me], &format!("u{me}")).await;
                let mut last_seq = 0;
                for to_user in sends {
                    let id = message_id();
                    c.send(
                        id,
                        vec![to(&users[to_user], &format!("u{to_user}"))],
                        vec![7; 32],
                    )
                    .await;
                    // Read until our SendAck, recording deliveries on the way.
                    loop {
                        match c.next().await {
                            server_frame::Frame::SendAck(a) if a.message_id == id.to_vec() => {
                                acked
                                    .lock()
                                    .unwrap()
                                    .entry(to_user)
                                    .or_default()
                                    .insert(a.message_id);
                                break;
                            }
                            server_frame::Frame::Deliver(d) => {
                                assert!(d.seq > last_seq, "seq went back within a connection");
                                last_seq = d.seq;
                                received
                                    .lock()
                                    .unwrap()
                                    .entry(me)
                                    .or_default()
                                    .insert(d.message_id);
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                // Sometimes ack what we saw, sometimes just vanish.
                if ack_at_end && last_seq > 0 {
                    c.ack(last_seq).await;
                }
                drop(c);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Everyone drains the rest and acks it.
    for (me, user) in users.iter().enumerate() {
        let mut c = Client::of(&url, user, &format!("u{me}")).await;
        let mut last_seq = 0;
        while let Some(f) = c.next_within(Duration::from_millis(300)).await {
            let server_frame::Frame::Deliver(d) = f else {
                panic!("unexpected {f:?}");
            };
            assert!(d.seq > last_seq);
            last_seq = d.seq;
            received
                .lock()
                .unwrap()
                .entry(me)
                .or_default()
                .insert(d.message_id);
        }
        if last_seq > 0 {
            c.ack(last_seq).await;
        }
    }
    let acked = acked.lock().unwrap().clone();
    let received = received.lock().unwrap().clone();
    let mut total = 0;
    for (user, ids) in &acked {
        let got = received.get(user).cloned().unwrap_or_default();
        let missing = ids.difference(&got).count();
        assert_eq!(
            missing, 0,
            "u{user} is missing {missing} acknowledged messages"
        );
        total += ids.len();
    }
    assert!(total > 20, "only {total} messages exercised");
    relay.wait_count("queue", 0).await;
    relay.wait_count("messages", 0).await;
}

/// More refusals: malformed sends, an empty frame, another user's log.
#[tokio::test]
async fn malformed_service_frames_are_refused() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let relay = Relay::start(org.root_public()).await;
    let url = relay.url();
    let mut b = Client::of(&url, &bob, "bob").await;

    // A message id that is not 16 bytes.
    let mut a = Client::of(&url, &alice, "alice").await;
    a.frame(client_frame::Frame::Send(ward_proto::v1::Send {
        message_id: vec![1; 15],
        recipients: vec![to(&bob, "bob")],
        payload: vec![1],
        blob_ids: Vec::new(),
        room_id: Vec::new(),
        room_log_len: 0,
    }))
    .await;
    assert_eq!(a.error().await.code, ErrorCode::Malformed as i32);
    assert_eq!(a.closed().await, Some(close::PROTOCOL_ERROR));

    // A recipient device id that is not 32 bytes; no recipient; no payload.
    for (recipients, payload) in [
        (
            vec![Recipient {
                user_id: "bob".into(),
                device_id: vec![1; 31],
            }],
            vec![1],
        ),
        (vec![], vec![1]),
        (vec![to(&bob, "bob")], vec![]),
    ] {
        let mut a = Client::of(&url, &alice, "alice").await;
        a.send(message_id(), recipients, payload).await;
        assert_eq!(a.error().await.code, ErrorCode::Malformed as i32);
        assert_eq!(a.closed().await, Some(close::PROTOCOL_ERROR));
    }

    // A frame with nothing in it.
    let mut a = Client::of(&url, &alice, "alice").await;
    a.conn
        .send_msg(&ward_proto::v1::ClientFrame { frame: None })
        .await
        .unwrap();
    assert_eq!(a.error().await.code, ErrorCode::Malformed as i32);
    assert_eq!(a.closed().await, Some(close::PROTOCOL_ERROR));

    // Publishing another user's log is refused; the connection stays usable.
    let mut a = Client::of(&url, &alice, "alice").await;
    a.frame(client_frame::Frame::PublishLog(
        ward_proto::v1::PublishLog {
            entries: bob.log.clone(),
        },
    ))
    .await;
    assert_eq!(a.error().await.code, ErrorCode::InvalidStatement as i32);
    // Naming its own mailbox in an Ack is fine.
    let id = message_id();
    a.send_acked(id, vec![to(&alice, "alice"), to(&bob, "bob")], vec![3])
        .await;
    let d = a.deliver().await;
    a.frame(client_frame::Frame::Ack(Ack {
        up_to_seq: d.seq,
        device_id: alice.device.public_key().as_bytes().to_vec(),
    }))
    .await;
    assert_eq!(b.deliver().await.message_id, id.to_vec());
    b.ack(1).await;
    relay.wait_count("messages", 0).await;
}

/// Graceful shutdown while sends are in flight: every acknowledged message
/// is in the store afterwards, and `run` returns Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_acknowledged_sends() {
    use std::sync::{Arc, Mutex};

    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    let senders: Vec<_> = (0..4)
        .map(|i| org.enroll(&mut rng, &format!("s{i}")))
        .collect();
    let mut relay = Relay::start_with(org.root_public(), |c| c.limits.send_burst = 100_000).await;
    let url = relay.url();
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let mut c = Client::of(&url, s, &format!("s{i}")).await;
        let acked = acked.clone();
        let to_bob = to(&bob, "bob");
        tasks.push(tokio::spawn(async move {
            loop {
                let id = message_id();
                c.send(id, vec![to_bob.clone()], vec![1; 64]).await;
                match tokio::time::timeout(WAIT, c.conn.recv_msg::<ward_proto::v1::ServerFrame>())
                    .await
                {
                    Ok(Ok(Some(ward_proto::v1::ServerFrame {
                        frame: Some(server_frame::Frame::SendAck(a)),
                    }))) => acked.lock().unwrap().push(a.message_id),
                    _ => return, // closed by the shutdown
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.stop().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let c = rusqlite::Connection::open(&relay.db).unwrap();
    for id in &acked {
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM sends WHERE message_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "an acknowledged message is missing after shutdown");
    }
}
