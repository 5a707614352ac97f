//! Tests that need the relay as its own process (the real `ward-relay`
//! binary). Issue 4, scenario 3: the relay is killed hard (SIGKILL) right
//! after `SendAck`s, then restarted on the same database: every
//! acknowledged message is delivered. Also: SIGTERM is a graceful stop, and
//! a reader that stops reading does not grow the relay's memory (its peak
//! RSS stays far below the bytes queued for it). Issue 9's crash loop: 12
//! SIGKILLs at random moments under load, every acked message delivered
//! once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use ward_core::auth::DEFAULT_INSTANCE;
use ward_core::testkit::{Clinician, Org};
use ward_net::handshake::{Audience, client};
use ward_proto::v1::{ClientFrame, Recipient, Send, ServerFrame, client_frame, server_frame};

mod common;
use common::TempDir;

fn temp_dir() -> TempDir {
    common::temp_dir("crash")
}

/// Starts the relay binary; returns it and its `ws://` URL.
async fn start(db: &Path, root_hex: &str) -> (Child, String) {
    start_with(db, root_hex, &[]).await
}

async fn start_with(db: &Path, root_hex: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward-relay"))
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(["--org-root", root_hex])
        .arg("--insecure-loopback")
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("ward-relay listening on ")
        .unwrap()
        .to_owned();
    (child, format!("ws://{addr}"))
}

type Conn = ward_net::Conn<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, who: &Clinician, user: &str) -> Conn {
    let mut c = ward_net::conn::connect(url, &ward_net::Limits::default())
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
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_send_ack_loses_no_acknowledged_message() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    let senders: Vec<Clinician> = (0..4)
        .map(|i| org.enroll(&mut rng, &format!("sender{i}")))
        .collect();
    let dir = temp_dir();
    let db = dir.0.join("relay.db");
    let root_hex = hex::encode(org.root_public().as_bytes());
    let bob_device = bob.device.public_key().as_bytes().to_vec();

    let (mut relay, url) = start(&db, &root_hex).await;
    // Bob logs in once, so that the relay knows his log before anyone
    // addresses him.
    drop(connect(&url, &bob, "bob").await);
    // Senders write concurrently (several messages per group commit) and
    // record every id the relay acknowledged.
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let mut c = connect(&url, s, &format!("sender{i}")).await;
        let acked = acked.clone();
        let to = Recipient {
            user_id: "bob".into(),
            device_id: bob_device.clone(),
        };
        tasks.push(tokio::spawn(async move {
            for n in 0u32.. {
                let mut id = [0u8; 16];
                getrandom::fill(&mut id).unwrap();
                let send = ClientFrame {
                    frame: Some(client_frame::Frame::Send(Send {
                        message_id: id.to_vec(),
                        recipients: vec![to.clone()],
                        payload: n.to_be_bytes().repeat(64),
                        blob_ids: Vec::new(),
                        room_id: Vec::new(),
                        room_log_len: 0,
                    })),
                };
                if c.send_msg(&send).await.is_err() {
                    return;
                }
                match c.recv_msg::<ServerFrame>().await {
                    Ok(Some(ServerFrame {
                        frame: Some(server_frame::Frame::SendAck(a)),
                    })) => {
                        assert_eq!(a.message_id, id.to_vec());
                        acked.lock().unwrap().push(a.message_id);
                    }
                    _ => return, // the relay died
                }
            }
        }));
    }
    // Kill the relay hard as soon as 200 sends are acknowledged, while more
    // are in flight.
    loop {
        if acked.lock().unwrap().len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    relay.kill().await.unwrap(); // SIGKILL
    for t in tasks {
        t.await.unwrap();
    }
    let acked: HashSet<Vec<u8>> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 200);

    // Restart on the same database: bob receives every acknowledged message.
    let (_relay, url) = start(&db, &root_hex).await;
    let mut b = connect(&url, &bob, "bob").await;
    let mut received = HashSet::new();
    let mut last_seq = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), b.recv_msg::<ServerFrame>()).await {
            Ok(Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Deliver(d)),
            }))) => {
                assert!(d.seq > last_seq, "in order");
                last_seq = d.seq;
                received.insert(d.message_id);
            }
            Err(_) => break, // nothing more
            other => panic!("unexpected: {other:?}"),
        }
    }
    let missing = acked.difference(&received).count();
    assert_eq!(missing, 0, "{missing} acknowledged messages lost");
}

/// SIGTERM is a graceful stop: connected devices get GOING_AWAY and the
/// process exits successfully.
#[tokio::test]
async fn sigterm_closes_connections_with_going_away_and_exits_cleanly() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    let dir = temp_dir();
    let (mut relay, url) = start(
        &dir.0.join("relay.db"),
        &hex::encode(org.root_public().as_bytes()),
    )
    .await;
    let c = connect(&url, &bob, "bob").await;
    let pid = relay.id().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let mut ws = c.into_inner();
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(code, Some(ward_net::close::GOING_AWAY));
    drop(ws);
    let exit = tokio::time::timeout(Duration::from_secs(10), relay.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

fn peak_rss_mib(child: &Child) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

/// Issue 4, scenario 5 (memory): 300 MiB queued for a device that never
/// reads; the relay's peak RSS stays far below that, and the device is cut
/// off with SLOW_CONSUMER while the messages stay stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_does_not_grow_relay_memory() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let dir = temp_dir();
    let (relay, url) = start_with(
        &dir.0.join("relay.db"),
        &hex::encode(org.root_public().as_bytes()),
        &[
            "--outbound-bytes",
            "262144",
            "--outbound-queue",
            "4",
            "--slow-consumer-ms",
            "500",
            "--send-burst",
            "100000",
            "--send-rate",
            "100000",
        ],
    )
    .await;
    let bob_conn = connect(&url, &bob, "bob").await; // never reads
    let mut a = connect(&url, &alice, "alice").await;
    const N: usize = 600;
    const SIZE: usize = 512 << 10;
    let to = Recipient {
        user_id: "bob".into(),
        device_id: bob.device.public_key().as_bytes().to_vec(),
    };
    for i in 0..N {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).unwrap();
        a.send_msg(&ClientFrame {
            frame: Some(client_frame::Frame::Send(Send {
                message_id: id.to_vec(),
                recipients: vec![to.clone()],
                payload: vec![i as u8; SIZE],
                blob_ids: Vec::new(),
                room_id: Vec::new(),
                room_log_len: 0,
            })),
        })
        .await
        .unwrap();
        match a.recv_msg::<ServerFrame>().await.unwrap() {
            Some(ServerFrame {
                frame: Some(server_frame::Frame::SendAck(_)),
            }) => {}
            other => panic!("expected SendAck, got {other:?}"),
        }
    }
    let queued_mib = (N * SIZE) as f64 / (1 << 20) as f64;
    let peak = peak_rss_mib(&relay);
    eprintln!(
        "relay peak RSS {peak:.1} MiB with {queued_mib:.0} MiB queued for a reader that never reads"
    );
    assert!(peak < 110.0, "relay peak RSS {peak:.1} MiB");
    // Bob was cut off; reading now, he finds the close code after what was buffered.
    let mut ws = bob_conn.into_inner();
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        use futures_util::StreamExt;
        while let Some(m) = ws.next().await {
            match m {
                Ok(tokio_tungstenite::tungstenite::Message::Close(f)) => {
                    return f.map(|f| u16::from(f.code));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap();
    // The close frame may be lost if the relay gave up flushing it first.
    assert!(
        matches!(code, Some(ward_net::close::SLOW_CONSUMER) | None),
        "{code:?}"
    );
    drop(ws);
    // Everything is still stored.
    let mut b = connect(&url, &bob, "bob").await;
    let d = tokio::time::timeout(Duration::from_secs(10), b.recv_msg::<ServerFrame>())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        d,
        Some(ServerFrame {
            frame: Some(server_frame::Frame::Deliver(ref d)),
        }) if d.seq == 1 && d.payload.len() == SIZE
    ));
}

/// A client that survives relay crashes: `None` when the relay is gone.
async fn try_connect(url: &str, who: &Clinician, user: &str) -> Option<Conn> {
    let mut c = ward_net::conn::connect(url, &ward_net::Limits::default())
        .await
        .ok()?;
    client(
        &mut c,
        &who.device,
        user,
        &Audience::relay(*who.chain.org_root(), DEFAULT_INSTANCE),
        &who.log,
    )
    .await
    .ok()?;
    Some(c)
}

/// A sender across crashes: the id it is sending (resent after a crash
/// with the same id, as an outbox does) and every id the relay acked, in
/// order.
#[derive(Default)]
struct SenderLog {
    pending: Option<Vec<u8>>,
    acked: Vec<Vec<u8>>,
}

/// A receiver across crashes: its cursor (the highest seq handled) and
/// every message id received under a new seq, in order.
#[derive(Default)]
struct ReceiverLog {
    cursor: u64,
    received: Vec<Vec<u8>>,
}

/// Sends until the relay dies; each message to every receiver.
async fn send_until_killed(mut c: Conn, log: Arc<Mutex<SenderLog>>, to: Vec<Recipient>) {
    loop {
        let id = {
            let mut l = log.lock().unwrap();
            l.pending
                .get_or_insert_with(|| {
                    let mut id = [0u8; 16];
                    getrandom::fill(&mut id).unwrap();
                    id.to_vec()
                })
                .clone()
        };
        let send = ClientFrame {
            frame: Some(client_frame::Frame::Send(Send {
                message_id: id.clone(),
                recipients: to.clone(),
                payload: id.repeat(4),
                blob_ids: Vec::new(),
                room_id: Vec::new(),
                room_log_len: 0,
            })),
        };
        if c.send_msg(&send).await.is_err() {
            return;
        }
        loop {
            match c.recv_msg::<ServerFrame>().await {
                Ok(Some(ServerFrame {
                    frame: Some(server_frame::Frame::SendAck(a)),
                })) => {
                    assert_eq!(a.message_id, id);
                    let mut l = log.lock().unwrap();
                    l.pending = None;
                    l.acked.push(id);
                    break;
                }
                Ok(Some(ServerFrame {
                    frame: Some(server_frame::Frame::Deliver(_)),
                })) => continue,
                Ok(Some(other)) => panic!("sender got {other:?}"),
                _ => return, // the relay died
            }
        }
    }
}

/// Receives (and acks each entry) until the relay dies, or until nothing
/// arrives for `quiet`.
async fn receive_until(mut c: Conn, log: Arc<Mutex<ReceiverLog>>, quiet: Duration) {
    loop {
        let frame = match tokio::time::timeout(quiet, c.recv_msg::<ServerFrame>()).await {
            Err(_) => return,
            Ok(Ok(Some(f))) => f,
            Ok(_) => return, // the relay died
        };
        let Some(server_frame::Frame::Deliver(d)) = frame.frame else {
            panic!("receiver got {frame:?}");
        };
        {
            let mut l = log.lock().unwrap();
            // At or below the cursor: a redelivery (an ack lost in the crash).
            if d.seq > l.cursor {
                l.cursor = d.seq;
                assert_eq!(d.payload, d.message_id.repeat(4), "payload intact");
                l.received.push(d.message_id.clone());
            }
        }
        let ack = ClientFrame {
            frame: Some(client_frame::Frame::Ack(ward_proto::v1::Ack {
                up_to_seq: d.seq,
                device_id: Vec::new(),
            })),
        };
        if c.send_msg(&ack).await.is_err() {
            return;
        }
    }
}

/// Issue 9, crash loop: the relay is killed with SIGKILL at random moments
/// under load, 12 times, and restarted on the same database. Senders resend
/// what was not acked (same id) and record every acked id; receivers ack
/// as they go. At the end every acked message has reached every receiver
/// exactly once, and each sender's messages in the order they were acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_under_load_delivers_every_acked_message_once_in_order() {
    use rand::RngExt;
    const CYCLES: usize = 12;
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let senders: Arc<Vec<(String, Clinician)>> = Arc::new(
        (0..3)
            .map(|i| {
                let id = format!("sender{i}");
                let c = org.enroll(&mut rng, &id);
                (id, c)
            })
            .collect(),
    );
    let receivers: Arc<Vec<(String, Clinician)>> = Arc::new(
        ["bob", "carol"]
            .iter()
            .map(|id| (id.to_string(), org.enroll(&mut rng, id)))
            .collect(),
    );
    let to: Vec<Recipient> = receivers
        .iter()
        .map(|(id, c)| Recipient {
            user_id: id.clone(),
            device_id: c.device.public_key().as_bytes().to_vec(),
        })
        .collect();
    let dir = temp_dir();
    let db = dir.0.join("relay.db");
    let root_hex = hex::encode(org.root_public().as_bytes());
    let flags = ["--send-rate", "100000", "--send-burst", "100000"];
    let sent: Vec<Arc<Mutex<SenderLog>>> = senders.iter().map(|_| Arc::default()).collect();
    let got: Vec<Arc<Mutex<ReceiverLog>>> = receivers.iter().map(|_| Arc::default()).collect();

    // The receivers log in once first, so that the relay knows their logs
    // before anyone addresses them.
    {
        let (mut relay, url) = start_with(&db, &root_hex, &flags).await;
        for (id, who) in receivers.iter() {
            drop(connect(&url, who, id).await);
        }
        relay.kill().await.unwrap();
    }
    for cycle in 0..CYCLES {
        let (mut relay, url) = start_with(&db, &root_hex, &flags).await;
        let mut tasks = Vec::new();
        let (up_tx, mut up) = tokio::sync::mpsc::unbounded_channel::<()>();
        for (i, log) in sent.iter().enumerate() {
            let (url, senders, log, to) = (url.clone(), senders.clone(), log.clone(), to.clone());
            let up = up_tx.clone();
            tasks.push(tokio::spawn(async move {
                let (id, who) = &senders[i];
                let c = try_connect(&url, who, id).await;
                let _ = up.send(());
                if let Some(c) = c {
                    send_until_killed(c, log, to).await;
                }
            }));
        }
        for (i, log) in got.iter().enumerate() {
            let (url, receivers, log) = (url.clone(), receivers.clone(), log.clone());
            let up = up_tx.clone();
            tasks.push(tokio::spawn(async move {
                let (id, who) = &receivers[i];
                let c = try_connect(&url, who, id).await;
                let _ = up.send(());
                if let Some(c) = c {
                    receive_until(c, log, Duration::from_secs(60)).await;
                }
            }));
        }
        // A random moment: in one cycle of four while the devices log in,
        // otherwise under load, once every device is connected.
        let logins = if cycle % 4 == 3 { 1 } else { tasks.len() };
        for _ in 0..logins {
            tokio::time::timeout(Duration::from_secs(30), up.recv())
                .await
                .unwrap();
        }
        let wait = rng.random_range(10..300);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        relay.kill().await.unwrap(); // SIGKILL
        for t in tasks {
            t.await.unwrap();
        }
    }

    // A last run, not killed: the senders finish their pending message, the
    // receivers drain their mailboxes.
    let (_relay, url) = start_with(&db, &root_hex, &flags).await;
    for ((id, who), log) in senders.iter().zip(&sent) {
        if log.lock().unwrap().pending.is_none() {
            continue;
        }
        let mut c = connect(&url, who, id).await;
        let id = log.lock().unwrap().pending.clone().unwrap();
        c.send_msg(&ClientFrame {
            frame: Some(client_frame::Frame::Send(Send {
                message_id: id.clone(),
                recipients: to.clone(),
                payload: id.repeat(4),
                blob_ids: Vec::new(),
                room_id: Vec::new(),
                room_log_len: 0,
            })),
        })
        .await
        .unwrap();
        match c.recv_msg::<ServerFrame>().await.unwrap() {
            Some(ServerFrame {
                frame: Some(server_frame::Frame::SendAck(a)),
            }) if a.message_id == id => {}
            other => panic!("expected the SendAck, got {other:?}"),
        }
        let mut l = log.lock().unwrap();
        l.pending = None;
        l.acked.push(id);
    }
    for ((id, who), log) in receivers.iter().zip(&got) {
        let c = connect(&url, who, id).await;
        receive_until(c, log.clone(), Duration::from_secs(2)).await;
    }

    let total: usize = sent.iter().map(|s| s.lock().unwrap().acked.len()).sum();
    assert!(
        total >= 100,
        "only {total} messages acked over {CYCLES} cycles"
    );
    for ((rid, _), log) in receivers.iter().zip(&got) {
        let received = &log.lock().unwrap().received;
        let unique: HashSet<&Vec<u8>> = received.iter().collect();
        assert_eq!(unique.len(), received.len(), "{rid} received a duplicate");
        for ((sid, _), s) in senders.iter().zip(&sent) {
            let acked = &s.lock().unwrap().acked;
            let from_sender: Vec<&Vec<u8>> =
                received.iter().filter(|id| acked.contains(id)).collect();
            let expected: Vec<&Vec<u8>> = acked.iter().collect();
            assert_eq!(
                from_sender.len(),
                expected.len(),
                "{rid} lost {} of {sid}'s acked messages",
                expected.len() - from_sender.len()
            );
            assert_eq!(
                from_sender, expected,
                "{rid} got {sid}'s messages out of order"
            );
        }
        // Nothing arrived that no sender had acked.
        let acked: HashSet<Vec<u8>> = sent
            .iter()
            .flat_map(|s| s.lock().unwrap().acked.clone())
            .collect();
        assert!(
            received.iter().all(|id| acked.contains(id)),
            "{rid} received a message never acked"
        );
    }
    eprintln!("crash loop: {CYCLES} SIGKILLs, {total} acked messages, all delivered once in order");
}
