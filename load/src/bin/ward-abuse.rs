//! `ward-abuse`: the pre-login attacks of issue 9, against a relay and a
//! keyserver started here on loopback, while a real client pair keeps
//! exchanging messages through the relay. Prints, per attack, both servers'
//! peak RSS (VmHWM) and the pair's send->ack latency.
//!
//! ```sh
//! cargo build --release -p ward-relay -p ward-keyserver -p ward-load
//! target/release/ward-abuse            # all three attacks, ~20 s each
//! ```
//! Attacks (from 127.0.0.2, so the real pair on 127.0.0.1 is another source):
//! * `flood`: 20 concurrent connections each sending a 20 MiB frame of
//!   `22 00` repeated as their `AuthResponse`, round after round (a refused
//!   one reconnects after 50 ms);
//! * `partial`: 100 sockets each declaring a 20 MiB frame and sending part of
//!   it, then holding it;
//! * `idle`: 2,000 connections that never send a byte.
//!
//! Every loop is bounded in count and in time, and every address is a
//! loopback one (refused otherwise).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use ward_core::testkit::{Clinician, Org};
use ward_proto::v1::{ClientFrame, Recipient, Send, ServerFrame, client_frame, server_frame};

type Error = Box<dyn std::error::Error + std::marker::Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Attack {
    Flood,
    Partial,
    Idle,
    All,
}

/// Pre-login abuse against a relay and a keyserver on loopback.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Which attack.
    #[arg(long, value_enum, default_value = "all")]
    attack: Attack,
    /// Seconds each attack lasts (at most 120).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Attacking connections (default per attack: flood 20, partial 100, idle 2000; at most 5000).
    #[arg(long)]
    connections: Option<usize>,
    /// Size the attack frames declare, in bytes.
    #[arg(long, default_value_t = 20 << 20)]
    frame_bytes: usize,
    /// Partial and idle connections reconnect when the server closes them
    /// (flood connections always do).
    #[arg(long)]
    churn: bool,
    /// Source address of the attack (must be loopback).
    #[arg(long, default_value = "127.0.0.2")]
    from: IpAddr,
    /// The relay binary (default: next to this binary).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The keyserver binary (default: next to this binary).
    #[arg(long)]
    keyserver_bin: Option<PathBuf>,
}

fn sibling(name: &str) -> Result<PathBuf, Error> {
    Ok(std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .join(name))
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn peak_rss_kib(child: &Child) -> Option<u64> {
    let pid = child.id()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn stop(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
}

struct Servers {
    relay: Child,
    keyserver: Child,
    relay_addr: SocketAddr,
    keyserver_addr: SocketAddr,
    dir: PathBuf,
}

async fn start(relay_bin: &Path, keyserver_bin: &Path, root: &str) -> Result<Servers, Error> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| format!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("ward-abuse-{}", hex::encode(r)));
    std::fs::create_dir_all(&dir)?;
    let mut relay = Command::new(relay_bin)
        .args(["--listen", "127.0.0.1:0", "--org-root", root, "--db"])
        .arg(dir.join("relay.db"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = relay.stdout.take().ok_or("no stdout")?;
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).lines().next_line(),
    )
    .await??
    .ok_or("relay exited")?;
    let relay_addr: SocketAddr = line.rsplit(' ').next().ok_or("no address")?.parse()?;
    let port = free_port()?;
    let keyserver_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let keyserver = Command::new(keyserver_bin)
        .args([
            "--listen",
            &keyserver_addr.to_string(),
            "--org-root",
            root,
            "--db",
        ])
        .arg(dir.join("keyserver.db"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(keyserver_addr).await.is_err() {
        if Instant::now() > deadline {
            return Err("keyserver did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Servers {
        relay,
        keyserver,
        relay_addr,
        keyserver_addr,
        dir,
    })
}

/// A TCP connection from `from` (loopback) to `to` (loopback).
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(from, 0))?;
    sock.connect(to).await
}

/// Upgrades to WebSocket and waits for the challenge; returns the raw stream.
async fn upgrade(tcp: TcpStream, to: SocketAddr) -> Result<TcpStream, Error> {
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{to}/"), tcp).await?;
    use futures_util::StreamExt;
    let _challenge = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
    Ok(ws.into_inner())
}

/// A masked client frame header declaring `len` bytes of binary payload.
fn frame_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&(len as u64).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]); // mask of zeros: the payload goes as is
    h
}

/// One flood connection: a full frame of `22 00` repeated, as fast as the
/// server takes it. Returns when the server closes or time is up.
async fn flood_once(from: IpAddr, to: SocketAddr, len: usize, until: Instant) -> Result<(), Error> {
    let tcp = connect_from(from, to).await?;
    let mut raw = upgrade(tcp, to).await?;
    raw.write_all(&frame_header(len)).await?;
    let chunk: Vec<u8> = [0x22u8, 0x00].repeat(32 << 10);
    let mut sent = 0;
    while sent < len && Instant::now() < until {
        let n = chunk.len().min(len - sent);
        raw.write_all(&chunk[..n]).await?;
        sent += n;
    }
    Ok(())
}

/// One partial-frame connection: declares `len`, sends up to half of it,
/// then holds the socket until `until`.
async fn partial_once(
    from: IpAddr,
    to: SocketAddr,
    len: usize,
    until: Instant,
) -> Result<(), Error> {
    let tcp = connect_from(from, to).await?;
    let mut raw = upgrade(tcp, to).await?;
    raw.write_all(&frame_header(len)).await?;
    let chunk = vec![0x22u8; 64 << 10];
    let mut sent = 0;
    while sent < len / 2 && Instant::now() < until {
        match tokio::time::timeout_at(until.into(), raw.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    hold(&mut raw, until).await
}

/// Holds `tcp` until `until`; an error if the server closes it first.
async fn hold(tcp: &mut TcpStream, until: Instant) -> Result<(), Error> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until.into()) => return Ok(()),
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Err("closed by the server".into()),
                Ok(_) => {}
            },
        }
    }
}

async fn idle_once(from: IpAddr, to: SocketAddr, until: Instant) -> Result<(), Error> {
    let mut tcp = connect_from(from, to).await?;
    hold(&mut tcp, until).await
}

/// Runs `attack` against `to` with `n` connections until `until`; returns
/// (attempts, failures).
async fn run_attack(
    attack: Attack,
    churn: bool,
    from: IpAddr,
    to: SocketAddr,
    n: usize,
    len: usize,
    until: Instant,
) -> (u64, u64) {
    let attempts = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (attempts, failures) = (attempts.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            // Flood connections retry, in a loop bounded by time (and by a
            // count, in case every attempt fails at once).
            for _ in 0..100_000 {
                if Instant::now() >= until {
                    break;
                }
                attempts.fetch_add(1, Ordering::Relaxed);
                let r = match attack {
                    Attack::Flood => flood_once(from, to, len, until).await,
                    Attack::Partial => partial_once(from, to, len, until).await,
                    _ => idle_once(from, to, until).await,
                };
                if r.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                // Partial and idle hold their socket once; with --churn they
                // reconnect when closed.
                if attack != Attack::Flood && (r.is_ok() || !churn) {
                    break;
                }
                // Refused floods retry after 50 ms: up to 400 connections a
                // second from 20 workers, without the tool itself taking
                // the machine's CPU from the servers it measures.
                let pause = if attack == Attack::Flood { 50 } else { 200 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        attempts.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    )
}

type Conn = ward_net::Conn<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn login(url: &str, c: &Clinician, user: &str) -> Result<Conn, Error> {
    let mut conn = ward_net::conn::connect(url, &ward_net::Limits::default()).await?;
    ward_net::handshake::client(
        &mut conn,
        &c.device,
        user,
        &ward_net::handshake::Audience::relay(
            *c.chain.org_root(),
            ward_core::auth::DEFAULT_INSTANCE,
        ),
        &c.log,
    )
    .await?;
    Ok(conn)
}

/// The real pair: alice sends to bob one message at a time (waiting for
/// each `SendAck`); bob reads and acks. Returns send->ack latencies (µs)
/// and errors.
async fn pair(
    url: String,
    alice: Clinician,
    bob: Clinician,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<u64>, u64), Error> {
    let mut a = login(&url, &alice, "alice").await?;
    let mut b = login(&url, &bob, "bob").await?;
    let to = Recipient {
        user_id: "bob".into(),
        device_id: bob.device.public_key().as_bytes().to_vec(),
    };
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(ServerFrame {
            frame: Some(server_frame::Frame::Deliver(d)),
        })) = b.recv_msg::<ServerFrame>().await
        {
            n += 1;
            if n.is_multiple_of(16) {
                let ack = ClientFrame {
                    frame: Some(client_frame::Frame::Ack(ward_proto::v1::Ack {
                        up_to_seq: d.seq,
                        device_id: Vec::new(),
                    })),
                };
                let _ = b.send_msg(&ack).await;
            }
        }
    });
    let mut lat = Vec::new();
    let mut errors = 0;
    // Bounded: at most 1M messages, and it stops with the attack.
    for _ in 0..1_000_000u32 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut id = vec![0u8; 16];
        getrandom::fill(&mut id).map_err(|e| format!("{e}"))?;
        let t = Instant::now();
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Send(Send {
                message_id: id.clone(),
                recipients: vec![to.clone()],
                payload: vec![7u8; 1024],
                blob_ids: Vec::new(),
                room_id: Vec::new(),
                room_log_len: 0,
            })),
        };
        a.send_msg(&frame).await?;
        match tokio::time::timeout(Duration::from_secs(30), a.recv_msg::<ServerFrame>()).await {
            Ok(Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::SendAck(ack)),
            }))) if ack.message_id == id => lat.push(t.elapsed().as_micros() as u64),
            _ => errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.close(ward_net::close::NORMAL, "done").await;
    reader.abort();
    Ok((lat, errors))
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn phase(
    args: &Args,
    attack: Attack,
    org: &Org,
    relay_bin: &Path,
    keyserver_bin: &Path,
) -> Result<(), Error> {
    let mut rng = rand::rng();
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let root = hex::encode(org.root_public().as_bytes());
    let servers = start(relay_bin, keyserver_bin, &root).await?;
    let base_relay = peak_rss_kib(&servers.relay);
    let base_ks = peak_rss_kib(&servers.keyserver);
    let stop_pair = Arc::new(AtomicBool::new(false));
    let pair_task = tokio::spawn(pair(
        format!("ws://{}", servers.relay_addr),
        alice,
        bob,
        stop_pair.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = args
        .connections
        .unwrap_or(match attack {
            Attack::Flood => 20,
            Attack::Partial => 100,
            _ => 2000,
        })
        .min(5000);
    let until = Instant::now() + Duration::from_secs(args.seconds.min(120));
    let len = args.frame_bytes;
    let (relay_att, ks_att) = tokio::join!(
        run_attack(
            attack,
            args.churn,
            args.from,
            servers.relay_addr,
            n,
            len,
            until
        ),
        run_attack(
            attack,
            args.churn,
            args.from,
            servers.keyserver_addr,
            n,
            len,
            until
        ),
    );
    // The pair keeps going for the whole phase, even if the servers shut
    // the attack out early.
    tokio::time::sleep_until(until.into()).await;
    stop_pair.store(true, Ordering::Relaxed);
    let (mut lat, errors) = pair_task.await??;
    lat.sort_unstable();
    let mib = |k: Option<u64>| k.map_or(f64::NAN, |k| k as f64 / 1024.0);
    println!(
        "== {attack:?}: {n} connections from {} for {} s",
        args.from, args.seconds
    );
    println!(
        "relay      peak RSS {:.1} MiB (idle {:.1})  attempts {} closed/refused by the server {}",
        mib(peak_rss_kib(&servers.relay)),
        mib(base_relay),
        relay_att.0,
        relay_att.1
    );
    println!(
        "keyserver  peak RSS {:.1} MiB (idle {:.1})  attempts {} closed/refused by the server {}",
        mib(peak_rss_kib(&servers.keyserver)),
        mib(base_ks),
        ks_att.0,
        ks_att.1
    );
    println!(
        "real pair  {} sends, {} errors, send->ack ms p50 {:.2} p99 {:.2} max {:.2}",
        lat.len(),
        errors,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    stop(servers.relay).await;
    stop(servers.keyserver).await;
    let _ = std::fs::remove_dir_all(&servers.dir);
    Ok(())
}

async fn main_abuse(args: Args) -> Result<(), Error> {
    if !args.from.is_loopback() {
        return Err("--from must be a loopback address".into());
    }
    // 2,000 sockets here, and as many in each server.
    ward_net::fdlimit::raise();
    let relay_bin = args
        .relay_bin
        .clone()
        .map_or_else(|| sibling("ward-relay"), Ok)?;
    let keyserver_bin = args
        .keyserver_bin
        .clone()
        .map_or_else(|| sibling("ward-keyserver"), Ok)?;
    let org = Org::new(&mut rand::rng());
    let attacks = match args.attack {
        Attack::All => vec![Attack::Flood, Attack::Partial, Attack::Idle],
        a => vec![a],
    };
    for a in attacks {
        phase(&args, a, &org, &relay_bin, &keyserver_bin).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ward-abuse: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_abuse(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-abuse: {e}");
            ExitCode::FAILURE
        }
    }
}
