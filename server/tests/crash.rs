//! Tests that need the relay as its own process (the real `ward-relay`
//! binary). Issue 4, scenario 3: the relay is killed hard (SIGKILL) right
//! after `SendAck`s, then restarted on the same database: every
//! acknowledged message is delivered. Also: SIGTERM is a graceful stop, and
//! a reader that stops reading does not grow the relay's memory (its peak
//! RSS stays far below the bytes queued for it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use ward_core::testkit::{Clinician, Org};
use ward_net::handshake::{RELAY, client};
use ward_proto::v1::{ClientFrame, Recipient, Send, ServerFrame, client_frame, server_frame};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let p = std::env::temp_dir().join(format!("ward-crash-{}", hex::encode(r)));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
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
    client(&mut c, &who.device, user, RELAY, &who.log)
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
