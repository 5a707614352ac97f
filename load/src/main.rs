//! `ward-load`: drives N authenticated connections x M messages through a
//! relay over loopback, then the same client against a raw
//! tokio-tungstenite echo server (no auth, no storage), and prints both.
//!
//! ```sh
//! cargo build --release -p ward-relay -p ward-load
//! target/release/ward-load --connections 1000 --messages 100000 --size 1024
//! ```
//! The relay runs as a child process (`--relay-bin`, default: next to this
//! binary) on a temporary database, so that its peak RSS (VmHWM) can be read;
//! the echo server is this binary again (`ward-load echo-server`).
//!
//! Workload: connection i sends M/N messages to connection i+1, one at a time
//! (waits for each `SendAck`), and receives the M/N messages of connection
//! i-1, acking every 64. Send->ack latency is measured per message;
//! delivery latency from the send to the `Deliver` at the recipient.
//! With `--fanout K` a second run follows in which every `Send` lists K
//! recipients (connections i+1..=i+K), as a room message lists its members'
//! devices: one stored payload, K queue entries; it prints deliveries/s.
//! With `--rooms` as well, a third run sends the same messages as room
//! messages (`Send { room_id }`, K+1 members), which the relay fans out
//! from the room logs it verified, brought by a keyserver link that this
//! binary plays (`rooms.rs`).
//!
//! With `--idle N` (workload D of issue 15) it runs nothing of the above:
//! N authenticated connections that only answer pings, held for
//! `--hold-secs` while one pair keeps messaging, and the relay's resident
//! memory (VmRSS) per idle connection. N is bounded by the open-files
//! limit of each process (`ulimit -n`): the relay holds one descriptor per
//! connection and this client another.
#![forbid(unsafe_code)]

mod pairs;
mod rooms;

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use ward_core::testkit::{Clinician, Org};
use ward_proto::v1::{Ack, ClientFrame, Recipient, Send, ServerFrame, client_frame, server_frame};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Concurrent authenticated connections (one device each).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Messages in total (spread evenly over the connections).
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// The relay binary (default: `ward-relay` next to this binary).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Skip the echo baseline.
    #[arg(long)]
    no_echo: bool,
    /// Recipients per message, as a room message lists its members'
    /// devices: connection i sends to i+1..=i+fanout (SECURITY.md §17.12).
    /// With more than 1, the 1:1 run comes first, then the fan-out run.
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// With --fanout K: a third run of room messages, each `Send` naming a
    /// room of K+1 members that the relay fans out from the room log it
    /// verified (SECURITY.md §17.10; this tool plays its keyserver link).
    #[arg(long)]
    rooms: bool,
    /// Workload D instead: this many idle authenticated connections, while
    /// one pair keeps messaging; prints the relay's RSS per connection.
    #[arg(long)]
    idle: Option<usize>,
    /// Workloads A to C instead (issue 15): this many sender->receiver
    /// pairs, every message checked intact, once and in order.
    #[arg(long)]
    pairs: Option<usize>,
    /// Messages per pair (workloads A to C).
    #[arg(long, default_value_t = 100)]
    per_pair: u64,
    /// Sends each sender keeps outstanding, waiting for their acks (A, B).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Workload B: the receivers log in only once everything is stored.
    #[arg(long)]
    backlog: bool,
    /// Workload C: the senders together send this many msg/s on a schedule.
    #[arg(long)]
    rate: Option<u64>,
    /// How long workload D holds the idle connections, in seconds.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: a raw tokio-tungstenite echo server on 127.0.0.1:0.
    #[command(hide = true)]
    EchoServer,
}

type Error = Box<dyn std::error::Error + std::marker::Send + Sync>;
type Conn = ward_net::Conn<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Default)]
struct Stats {
    ack_us: Vec<u64>,
    deliver_us: Vec<u64>,
    errors: u64,
}

struct Report {
    name: &'static str,
    elapsed: Duration,
    messages: usize,
    /// Deliveries: messages times recipients.
    deliveries: usize,
    stats: Stats,
    peak_rss_kib: Option<u64>,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

impl Report {
    fn print(&mut self) {
        self.stats.ack_us.sort_unstable();
        self.stats.deliver_us.sort_unstable();
        let rate = self.messages as f64 / self.elapsed.as_secs_f64();
        let a = &self.stats.ack_us;
        let d = &self.stats.deliver_us;
        println!("== {}", self.name);
        println!(
            "messages {}  in {:.2} s  = {:.0} msg/s  (errors {})",
            self.messages,
            self.elapsed.as_secs_f64(),
            rate,
            self.stats.errors
        );
        if self.deliveries != self.messages {
            println!(
                "deliveries {}  = {:.0} deliveries/s",
                self.deliveries,
                self.deliveries as f64 / self.elapsed.as_secs_f64()
            );
        }
        println!(
            "send->ack ms     p50 {:.2}  p99 {:.2}  max {:.2}",
            pct(a, 0.5),
            pct(a, 0.99),
            pct(a, 1.0)
        );
        if !d.is_empty() {
            println!(
                "send->deliver ms p50 {:.2}  p99 {:.2}  max {:.2}",
                pct(d, 0.5),
                pct(d, 0.99),
                pct(d, 1.0)
            );
        }
        match self.peak_rss_kib {
            Some(k) => println!("server peak RSS  {:.1} MiB", k as f64 / 1024.0),
            None => println!("server peak RSS  n/a"),
        }
    }
}

/// Starts `bin args...` and returns it with the address it prints on its first line.
async fn start_child(bin: &std::path::Path, args: &[String]) -> Result<(Child, String), Error> {
    let mut child = Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,ward_relay::writer=info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .ok_or("child exited")?;
    let addr = line
        .rsplit(' ')
        .next()
        .ok_or("no address printed")?
        .to_owned();
    Ok((child, addr))
}

fn peak_rss_kib(child: &Child) -> Option<u64> {
    status_kib(child, "VmHWM:")
}

/// A `/proc/<pid>/status` figure in KiB (`VmHWM:` the peak, `VmRSS:` now).
fn status_kib(child: &Child, field: &str) -> Option<u64> {
    let pid = child.id()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// SIGTERM (graceful stop), then wait.
async fn stop_child(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}

async fn echo_server() -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if m.is_binary() && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn now_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// One relay connection's workload.
async fn relay_worker(
    mut conn: Conn,
    to: rooms::Target,
    n_send: usize,
    n_expect: usize,
    size: usize,
    start: Instant,
) -> Stats {
    let mut st = Stats::default();
    let (mut sent, mut received, mut last_seq) = (0usize, 0usize, 0u64);
    let mut outstanding: Option<(Vec<u8>, u64)> = None;
    loop {
        if outstanding.is_none() && sent < n_send {
            let mut id = vec![0u8; 16];
            let _ = getrandom::fill(&mut id);
            let t = now_us(start);
            let frame = ClientFrame {
                frame: Some(client_frame::Frame::Send(to.send(id.clone(), t, size))),
            };
            if conn.send_msg(&frame).await.is_err() {
                st.errors += 1;
                return st;
            }
            outstanding = Some((id, t));
            sent += 1;
        }
        if outstanding.is_none() && received >= n_expect {
            break;
        }
        let frame = match conn.recv_msg::<ServerFrame>().await {
            Ok(Some(ServerFrame { frame: Some(f) })) => f,
            _ => {
                st.errors += 1;
                return st;
            }
        };
        match frame {
            server_frame::Frame::SendAck(a) => {
                if let Some((id, t)) = outstanding.take() {
                    if a.message_id == id {
                        st.ack_us.push(now_us(start).saturating_sub(t));
                    } else {
                        st.errors += 1;
                        outstanding = Some((id, t));
                    }
                }
            }
            server_frame::Frame::Deliver(d) => {
                match rooms::sent_at(&d.payload, matches!(to, rooms::Target::Room { .. })) {
                    Some(t) => st.deliver_us.push(now_us(start).saturating_sub(t)),
                    None => st.errors += 1,
                }
                received += 1;
                last_seq = d.seq;
                if received % 64 == 0 {
                    let _ = conn.send_msg(&ack(last_seq)).await;
                }
            }
            _ => st.errors += 1,
        }
    }
    let _ = conn.send_msg(&ack(last_seq)).await;
    conn.close(ward_net::close::NORMAL, "done").await;
    st
}

fn ack(seq: u64) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Ack(Ack {
            up_to_seq: seq,
            device_id: Vec::new(),
        })),
    }
}

/// One echo connection's workload: the echoed frame stands for the ack.
async fn echo_worker(mut conn: Conn, n_send: usize, size: usize, start: Instant) -> Stats {
    let mut st = Stats::default();
    let frame = ClientFrame {
        frame: Some(client_frame::Frame::Send(Send {
            message_id: vec![1; 16],
            recipients: vec![Recipient {
                user_id: "echo".into(),
                device_id: vec![2; 32],
            }],
            payload: vec![0u8; size],
            blob_ids: Vec::new(),
            room_id: Vec::new(),
            room_log_len: 0,
        })),
    };
    for _ in 0..n_send {
        let t = now_us(start);
        if conn.send_msg(&frame).await.is_err() {
            st.errors += 1;
            return st;
        }
        match conn.recv().await {
            Ok(Some(_)) => st.ack_us.push(now_us(start).saturating_sub(t)),
            _ => {
                st.errors += 1;
                return st;
            }
        }
    }
    conn.close(ward_net::close::NORMAL, "done").await;
    st
}

fn merge(all: Vec<Stats>) -> Stats {
    let mut m = Stats::default();
    for s in all {
        m.ack_us.extend(s.ack_us);
        m.deliver_us.extend(s.deliver_us);
        m.errors += s.errors;
    }
    m
}

async fn run_relay(
    args: &Args,
    org_root: String,
    users: &[Clinician],
    relay_bin: &std::path::Path,
    fanout: usize,
    rooms: bool,
) -> Result<Report, Error> {
    let n = users.len();
    let fanout = fanout.clamp(1, n.saturating_sub(1).max(1));
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| format!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("ward-load-{}", hex::encode(r)));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("relay.db");
    let mut relay_args = relay_args(&db, org_root, n);
    let mut room_link = None;
    if rooms {
        let fake = rooms::FakeKeyserver::start(*users[0].chain.org_root()).await?;
        let admin = format!("127.0.0.1:{}", rooms::free_port()?);
        relay_args.extend([
            "--keyserver-url".into(),
            fake.url()?,
            "--admin-listen".into(),
            admin.clone(),
        ]);
        room_link = Some((fake, rooms::rooms(users, fanout)?, admin));
    }
    let (child, addr) = start_child(relay_bin, &relay_args).await?;
    let (mut room_targets, mut serving) = (Vec::new().into_iter(), None);
    if let Some((fake, created, admin)) = room_link {
        serving = Some(fake.serve(users, &created).await?);
        rooms::wait_applied(&admin, (users.len() + created.len()) as u64).await?;
        room_targets = created
            .into_iter()
            .map(|c| c.target)
            .collect::<Vec<_>>()
            .into_iter();
    }
    let url = format!("ws://{addr}");
    let conns = connect_all(&url, users, 0).await?;
    let per = args.messages / n;
    let start = Instant::now();
    let mut workers = Vec::with_capacity(n);
    for (i, conn) in conns.into_iter().enumerate() {
        let to = match room_targets.next() {
            Some(room) => room,
            None => rooms::Target::Devices(
                (1..=fanout)
                    .map(|k| {
                        let next = (i + k) % n;
                        Recipient {
                            user_id: format!("load{next}"),
                            device_id: users[next].device.public_key().as_bytes().to_vec(),
                        }
                    })
                    .collect(),
            ),
        };
        workers.push(tokio::spawn(relay_worker(
            conn,
            to,
            per,
            per * fanout,
            args.size,
            start,
        )));
    }
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.push(w.await?);
    }
    let elapsed = start.elapsed();
    let peak = peak_rss_kib(&child);
    stop_child(child).await;
    if let Some(link) = serving {
        link.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        name: if rooms {
            "ward-relay, room fan-out (Send names the room; the relay fans out to the room log it verified)"
        } else if fanout > 1 {
            "ward-relay, fan-out (one Send to several devices, as a room message)"
        } else {
            "ward-relay (auth, SQLite WAL synchronous=FULL, group commit)"
        },
        elapsed,
        messages: per * n,
        deliveries: per * n * fanout,
        stats: merge(all),
        peak_rss_kib: peak,
    })
}

/// The relay's command line for `n` load connections, all from 127.0.0.1.
fn relay_args(db: &std::path::Path, org_root: String, n: usize) -> Vec<String> {
    vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        db.display().to_string(),
        "--org-root".into(),
        org_root,
        // Loopback, as before TLS: the figures stay comparable with the
        // raw echo server's (TLS cost is not measured here).
        "--insecure-loopback".into(),
        "--max-connections".into(),
        (n + 16).to_string(),
        "--send-rate".into(),
        "1000000".into(),
        "--send-burst".into(),
        "1000000".into(),
        // Every load connection comes from 127.0.0.1: lift the per-source
        // limits meant for attackers.
        "--accept-rate-per-address".into(),
        "1000000".into(),
        "--max-unauthenticated-per-address".into(),
        (n + 16).to_string(),
        "--max-unauthenticated".into(),
        (n + 16).to_string(),
    ]
}

/// Connects and authenticates every user (64 handshakes at a time); user
/// `i` is `load{first + i}`.
async fn connect_all(url: &str, users: &[Clinician], first: usize) -> Result<Vec<Conn>, Error> {
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        let (url, gate) = (url.to_owned(), gate.clone());
        let device =
            ward_core::keys::DeviceSigningKey::import_secret(&u.device.export_secret()[..])?;
        let log = u.log.clone();
        let audience = ward_net::handshake::Audience::relay(
            *u.chain.org_root(),
            ward_core::auth::DEFAULT_INSTANCE,
        );
        let user_id = format!("load{}", first + i);
        connecting.push(tokio::spawn(async move {
            let _p = gate.acquire().await;
            let mut c = ward_net::conn::connect(&url, &ward_net::Limits::default()).await?;
            ward_net::handshake::client(&mut c, &device, &user_id, &audience, &log).await?;
            Ok::<Conn, ward_net::NetError>(c)
        }));
    }
    let mut conns = Vec::with_capacity(users.len());
    for c in connecting {
        conns.push(c.await??);
    }
    Ok(conns)
}

/// `n` plain WebSocket connections to `url` (the echo server: no
/// handshake), 64 at a time.
async fn connect_plain(url: &str, n: usize) -> Result<Vec<Conn>, Error> {
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::with_capacity(n);
    for _ in 0..n {
        let (url, gate) = (url.to_owned(), gate.clone());
        connecting.push(tokio::spawn(async move {
            let _p = gate.acquire().await;
            ward_net::conn::connect(&url, &ward_net::Limits::default()).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for c in connecting {
        conns.push(c.await??);
    }
    Ok(conns)
}

/// Workload D: `idle` authenticated connections that only answer pings,
/// then one pair (users 0 and 1) messaging for `hold` while they stay
/// connected. The relay's VmRSS is read with the pair alone, and again with
/// every idle connection open.
async fn run_idle(
    args: &Args,
    org_root: String,
    users: &[Clinician],
    relay_bin: &std::path::Path,
) -> Result<(), Error> {
    let idle = users.len().saturating_sub(2);
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| format!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("ward-load-{}", hex::encode(r)));
    std::fs::create_dir_all(&dir)?;
    let args_v = relay_args(&dir.join("relay.db"), org_root, users.len());
    let (child, addr) = start_child(relay_bin, &args_v).await?;
    let url = format!("ws://{addr}");
    let mut pair = connect_all(&url, &users[..2], 0).await?.into_iter();
    let (a, b) = match (pair.next(), pair.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("pair did not connect".into()),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = status_kib(&child, "VmRSS:").ok_or("no relay RSS")?;
    let t0 = Instant::now();
    let conns = connect_all(&url, &users[2..], 2).await?;
    let connected_in = t0.elapsed();
    // Each idle connection reads, so that pings are answered (the relay
    // closes a peer it has heard nothing from for its idle timeout).
    let holders: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut frames = 0u64;
                while let Ok(Some(_)) = c.recv().await {
                    frames += 1;
                }
                frames
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = status_kib(&child, "VmRSS:").ok_or("no relay RSS")?;
    // The pair messages while the idle connections are held.
    let to = |i: usize| Recipient {
        user_id: format!("load{i}"),
        device_id: users[i].device.public_key().as_bytes().to_vec(),
    };
    let start = Instant::now();
    let hold = Duration::from_secs(args.hold_secs);
    let mut stats = pair_worker(a, b, to(1), args.size, start, hold).await;
    let elapsed = start.elapsed();
    let held = status_kib(&child, "VmRSS:").ok_or("no relay RSS")?;
    let peak = peak_rss_kib(&child);
    let dropped = holders.iter().filter(|h| h.is_finished()).count();
    for h in holders {
        h.abort();
    }
    stop_child(child).await;
    let _ = std::fs::remove_dir_all(&dir);
    stats.ack_us.sort_unstable();
    let sent = stats.ack_us.len();
    println!(
        "== workload D: {idle} idle authenticated connections (connected in {:.1} s)",
        connected_in.as_secs_f64()
    );
    println!(
        "relay VmRSS: {:.1} MiB with the pair alone, {:.1} MiB with every idle connection, {:.1} MiB after the hold (peak {:.1} MiB)",
        base as f64 / 1024.0,
        loaded as f64 / 1024.0,
        held as f64 / 1024.0,
        peak.unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "per idle connection: {:.1} KiB",
        loaded.saturating_sub(base) as f64 / idle.max(1) as f64
    );
    println!(
        "pair during the hold: {sent} messages in {:.1} s ({:.0} msg/s), send->ack p50 {:.2} p99 {:.2} ms, errors {}; idle connections closed: {dropped}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        pct(&stats.ack_us, 0.5),
        pct(&stats.ack_us, 0.99),
        stats.errors
    );
    if !args.no_echo {
        idle_echo(idle).await?;
    }
    Ok(())
}

/// One message at a time from `a` to `b` until `hold` has passed: each one
/// must be acked, then delivered to `b` intact, once and in order (an error
/// otherwise).
async fn pair_worker(
    mut a: Conn,
    mut b: Conn,
    to: Recipient,
    size: usize,
    start: Instant,
    hold: Duration,
) -> Stats {
    let mut st = Stats::default();
    let mut last_seq = 0;
    let mut n = 0u64;
    while start.elapsed() < hold {
        let mut id = vec![0u8; 16];
        let _ = getrandom::fill(&mut id);
        let mut payload = vec![0u8; size.max(16)];
        payload[..8].copy_from_slice(&n.to_be_bytes());
        let t = now_us(start);
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Send(Send {
                message_id: id.clone(),
                recipients: vec![to.clone()],
                payload: payload.clone(),
                blob_ids: Vec::new(),
                room_id: Vec::new(),
                room_log_len: 0,
            })),
        };
        if a.send_msg(&frame).await.is_err() {
            st.errors += 1;
            return st;
        }
        match a.recv_msg::<ServerFrame>().await {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::SendAck(ack)),
            })) if ack.message_id == id => st.ack_us.push(now_us(start).saturating_sub(t)),
            _ => {
                st.errors += 1;
                return st;
            }
        }
        match b.recv_msg::<ServerFrame>().await {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Deliver(d)),
            })) if d.message_id == id && d.payload == payload && d.seq > last_seq => {
                st.deliver_us.push(now_us(start).saturating_sub(t));
                last_seq = d.seq;
            }
            _ => {
                st.errors += 1;
                return st;
            }
        }
        if n % 64 == 63 && b.send_msg(&ack(last_seq)).await.is_err() {
            st.errors += 1;
            return st;
        }
        n += 1;
    }
    let _ = b.send_msg(&ack(last_seq)).await;
    st
}

/// Workload D's baseline: as many idle connections to the raw echo server
/// (tokio-tungstenite's defaults, no auth), and its VmRSS per connection.
async fn idle_echo(idle: usize) -> Result<(), Error> {
    let me = std::env::current_exe()?;
    let (child, addr) = start_child(&me, &["echo-server".to_owned()]).await?;
    let url = format!("ws://{addr}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = status_kib(&child, "VmRSS:").ok_or("no echo RSS")?;
    let conns = connect_plain(&url, idle).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = status_kib(&child, "VmRSS:").ok_or("no echo RSS")?;
    println!(
        "== baseline: {idle} idle connections to the raw tokio-tungstenite echo server: {:.1} MiB, {:.1} KiB per connection",
        loaded as f64 / 1024.0,
        loaded.saturating_sub(base) as f64 / idle.max(1) as f64
    );
    drop(conns);
    stop_child(child).await;
    Ok(())
}

async fn run_echo(args: &Args) -> Result<Report, Error> {
    let me = std::env::current_exe()?;
    let (child, addr) = start_child(&me, &["echo-server".to_owned()]).await?;
    let url = format!("ws://{addr}");
    let n = args.connections.max(1);
    let conns = connect_plain(&url, n).await?;
    let per = args.messages / n;
    let start = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(echo_worker(c, per, args.size, start)))
        .collect();
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.push(w.await?);
    }
    let elapsed = start.elapsed();
    let peak = peak_rss_kib(&child);
    stop_child(child).await;
    Ok(Report {
        name: "raw tokio-tungstenite echo (no auth, no storage)",
        elapsed,
        messages: per * n,
        deliveries: per * n,
        stats: merge(all),
        peak_rss_kib: peak,
    })
}

async fn main_load(args: Args) -> Result<(), Error> {
    if let Some(Cmd::EchoServer) = args.cmd {
        return echo_server().await;
    }
    let n = match (args.idle, args.pairs) {
        (Some(idle), _) => idle + 2,
        (None, Some(p)) => 2 * p.max(1),
        (None, None) => args.connections.max(1),
    };
    let relay_bin = match &args.relay_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no exe dir")?
            .join("ward-relay"),
    };
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let users: Vec<Clinician> = (0..n)
        .map(|i| org.enroll(&mut rng, &format!("load{i}")))
        .collect();
    if args.pairs.is_some() {
        // pairs::run says what it runs.
    } else if let Some(idle) = args.idle {
        println!(
            "workload D: {idle} idle connections and one messaging pair, {} s (loopback, {} CPUs)",
            args.hold_secs,
            std::thread::available_parallelism()
                .map(|p| p.get())
                .unwrap_or(0)
        );
    } else {
        println!(
            "{} connections, {} messages of {} bytes (loopback, {} CPUs)",
            n,
            (args.messages / n) * n,
            args.size,
            std::thread::available_parallelism()
                .map(|p| p.get())
                .unwrap_or(0)
        );
    }
    let root = hex::encode(org.root_public().as_bytes());
    if args.idle.is_some() {
        return run_idle(&args, root, &users, &relay_bin).await;
    }
    if args.pairs.is_some() {
        return pairs::run(&args, root, &users, &relay_bin).await;
    }
    let mut relay = run_relay(&args, root.clone(), &users, &relay_bin, 1, false).await?;
    relay.print();
    if args.fanout > 1 {
        let mut fan =
            run_relay(&args, root.clone(), &users, &relay_bin, args.fanout, false).await?;
        fan.print();
        let one = relay.deliveries as f64 / relay.elapsed.as_secs_f64();
        let many = fan.deliveries as f64 / fan.elapsed.as_secs_f64();
        println!(
            "== ratio fan-out/1:1 deliveries per second: {:.2}",
            many / one
        );
        if args.rooms {
            let mut room = run_relay(&args, root, &users, &relay_bin, args.fanout, true).await?;
            room.print();
            let rooms = room.deliveries as f64 / room.elapsed.as_secs_f64();
            println!(
                "== ratio room/list fan-out deliveries per second: {:.2}",
                rooms / many
            );
        }
    }
    if !args.no_echo {
        let mut echo = run_echo(&args).await?;
        echo.print();
        let rr = relay.messages as f64 / relay.elapsed.as_secs_f64();
        let er = echo.messages as f64 / echo.elapsed.as_secs_f64();
        println!("== ratio relay/echo throughput: {:.2}", rr / er);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ward-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_load(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-load: {e}");
            ExitCode::FAILURE
        }
    }
}
