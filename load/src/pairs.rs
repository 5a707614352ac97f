//! Workloads A, B and C of issue 15: P sender→receiver pairs, every message
//! checked to arrive intact, exactly once and in order.
//!
//! - **A** (`--pairs P --per-pair M --window W`): each sender keeps up to W
//!   sends outstanding (waiting for their `SendAck`s), its receiver online.
//! - **B** (`--backlog`): the receivers are offline while the senders store
//!   everything (the store rate); then they log in and drain (the time from
//!   the first login to the last message).
//! - **C** (`--rate R`): the senders together send R msg/s on a schedule,
//!   whatever the acks, for latency without queueing.
//!
//! A payload is `sender index (u32) | counter (u64) | send time in µs
//! (u64) | filler`, the filler a function of the counter, so a receiver can
//! tell a corrupted, duplicated, missing or reordered message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ward_core::testkit::Clinician;
use ward_proto::v1::{ClientFrame, Recipient, Send, ServerFrame, client_frame, server_frame};

use crate::{
    Args, Conn, Error, Stats, ack, connect_all, connect_plain, merge, now_us, pct, peak_rss_kib,
    relay_args, start_child, stop_child,
};

const HEADER: usize = 4 + 8 + 8;

fn payload(sender: u32, counter: u64, t_us: u64, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size.max(HEADER)];
    p[..4].copy_from_slice(&sender.to_be_bytes());
    p[4..12].copy_from_slice(&counter.to_be_bytes());
    p[12..20].copy_from_slice(&t_us.to_be_bytes());
    fill(&mut p[HEADER..], counter);
    p
}

fn fill(rest: &mut [u8], counter: u64) {
    for (i, b) in rest.iter_mut().enumerate() {
        *b = (counter as usize).wrapping_add(i) as u8;
    }
}

/// The (sender, counter, send time) of an intact payload, `None` otherwise.
fn check(p: &[u8]) -> Option<(u32, u64, u64)> {
    if p.len() < HEADER {
        return None;
    }
    let sender = u32::from_be_bytes(p[..4].try_into().ok()?);
    let counter = u64::from_be_bytes(p[4..12].try_into().ok()?);
    let t = u64::from_be_bytes(p[12..20].try_into().ok()?);
    let mut want = vec![0u8; p.len() - HEADER];
    fill(&mut want, counter);
    (want == p[HEADER..]).then_some((sender, counter, t))
}

/// How a sender paces itself.
#[derive(Clone, Copy)]
enum Pace {
    /// At most this many sends without their ack.
    Window(usize),
    /// One send every interval, acks or not.
    Every(Duration),
}

/// A sender's turn: send now, or wait for the next frame (or, paced, for
/// the next tick). Shared by the relay's and the echo server's senders.
struct Pacer {
    pace: Pace,
    tick: tokio::time::Interval,
}

impl Pacer {
    fn new(pace: Pace) -> Self {
        let mut tick = tokio::time::interval(match pace {
            Pace::Every(d) => d,
            Pace::Window(_) => Duration::from_secs(3600),
        });
        // Late ticks are sent at once: the rate is kept on average.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Self { pace, tick }
    }

    /// Whether the next of `m` messages may go, `outstanding` unacked.
    fn may_send(&self, next: u64, m: u64, outstanding: usize) -> bool {
        next < m
            && match self.pace {
                Pace::Window(w) => outstanding < w.max(1),
                Pace::Every(_) => true,
            }
    }

    /// `None`: send now. Otherwise the next frame read from `conn`.
    async fn turn<M: ward_proto::Message + Default + ward_proto::Bounded>(
        &mut self,
        conn: &mut Conn,
        may_send: bool,
    ) -> Option<Result<Option<M>, ward_net::NetError>> {
        let paced = matches!(self.pace, Pace::Every(_));
        if may_send && !paced {
            return None;
        }
        tokio::select! {
            _ = self.tick.tick(), if may_send => None,
            f = conn.recv_msg::<M>() => Some(f),
        }
    }
}

/// Sends `m` messages to `to`, paced; records send→ack latencies. An ack
/// for an id it did not send, or a refusal, is an error.
async fn sender(
    mut conn: Conn,
    index: u32,
    to: Recipient,
    m: u64,
    size: usize,
    pace: Pace,
    start: Instant,
) -> Stats {
    let mut st = Stats::default();
    let mut outstanding: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut next = 0u64;
    let mut pacer = Pacer::new(pace);
    while next < m || !outstanding.is_empty() {
        let may_send = pacer.may_send(next, m, outstanding.len());
        let frame = pacer.turn::<ServerFrame>(&mut conn, may_send).await;
        let Some(frame) = frame else {
            if send_one(&mut conn, index, &to, next, size, start, &mut outstanding)
                .await
                .is_err()
            {
                st.errors += 1;
                return st;
            }
            next += 1;
            continue;
        };
        match frame {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::SendAck(a)),
            })) => match outstanding.remove(&a.message_id) {
                Some(t) => st.ack_us.push(now_us(start).saturating_sub(t)),
                None => st.errors += 1,
            },
            _ => {
                st.errors += 1;
                return st;
            }
        }
    }
    conn.close(ward_net::close::NORMAL, "done").await;
    st
}

async fn send_one(
    conn: &mut Conn,
    index: u32,
    to: &Recipient,
    counter: u64,
    size: usize,
    start: Instant,
    outstanding: &mut HashMap<Vec<u8>, u64>,
) -> Result<(), ward_net::NetError> {
    let mut id = vec![0u8; 16];
    id[..4].copy_from_slice(&index.to_be_bytes());
    id[4..12].copy_from_slice(&counter.to_be_bytes());
    let t = now_us(start);
    outstanding.insert(id.clone(), t);
    let frame = ClientFrame {
        frame: Some(client_frame::Frame::Send(Send {
            message_id: id,
            recipients: vec![to.clone()],
            payload: payload(index, counter, t, size),
            blob_ids: Vec::new(),
            room_id: Vec::new(),
            room_log_len: 0,
        })),
    };
    conn.send_msg(&frame).await
}

/// Receives `m` messages from sender `from`: each intact, counters 0..m in
/// order (a duplicate, a gap or a corrupted payload is an error); acks
/// every 64. Returns its stats and when the last message arrived.
async fn receiver(mut conn: Conn, from: u32, m: u64, start: Instant) -> (Stats, Instant) {
    let mut st = Stats::default();
    let mut expect = 0u64;
    let mut last_seq = 0;
    while expect < m {
        match conn.recv_msg::<ServerFrame>().await {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Deliver(d)),
            })) => {
                match check(&d.payload) {
                    Some((s, c, t)) if s == from && c == expect && d.seq > last_seq => {
                        st.deliver_us.push(now_us(start).saturating_sub(t));
                    }
                    _ => st.errors += 1,
                }
                expect += 1;
                last_seq = d.seq;
                if expect.is_multiple_of(64) && conn.send_msg(&ack(last_seq)).await.is_err() {
                    st.errors += 1;
                    break;
                }
            }
            _ => {
                st.errors += 1;
                break;
            }
        }
    }
    let done = Instant::now();
    let _ = conn.send_msg(&ack(last_seq)).await;
    conn.close(ward_net::close::NORMAL, "done").await;
    (st, done)
}

/// Workload A, B or C, per `args` (`pairs` is set).
pub async fn run(
    args: &Args,
    org_root: String,
    users: &[Clinician],
    relay_bin: &std::path::Path,
) -> Result<(), Error> {
    let p = users.len() / 2;
    let m = args.per_pair;
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| format!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("ward-load-{}", hex::encode(r)));
    std::fs::create_dir_all(&dir)?;
    let (child, addr) = start_child(
        relay_bin,
        &relay_args(&dir.join("relay.db"), org_root, users.len()),
    )
    .await?;
    let url = format!("ws://{addr}");
    let pace = match args.rate {
        Some(rate) => Pace::Every(Duration::from_secs_f64(p as f64 / rate.max(1) as f64)),
        None => Pace::Window(args.window),
    };
    let senders = connect_all(&url, &users[..p], 0).await?;
    let to = |i: usize| Recipient {
        user_id: format!("load{}", p + i),
        device_id: users[p + i].device.public_key().as_bytes().to_vec(),
    };
    let start = Instant::now();
    let spawn_senders = |senders: Vec<Conn>| {
        senders
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(sender(c, i as u32, to(i), m, args.size, pace, start)))
            .collect::<Vec<_>>()
    };
    let (send_stats, recv_stats, stored_in, drained_in) = if args.backlog {
        let mut all = Vec::new();
        for s in spawn_senders(senders) {
            all.push(s.await?);
        }
        let stored_in = start.elapsed();
        let login = Instant::now();
        let receivers = connect_all(&url, &users[p..], p).await?;
        let tasks: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(receiver(c, i as u32, m, start)))
            .collect();
        let mut recv = Vec::new();
        let mut last = login;
        for t in tasks {
            let (st, done) = t.await?;
            last = last.max(done);
            recv.push(st);
        }
        (all, recv, stored_in, Some(last - login))
    } else {
        let receivers = connect_all(&url, &users[p..], p).await?;
        let rtasks: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(receiver(c, i as u32, m, start)))
            .collect();
        let stasks = spawn_senders(senders);
        let mut all = Vec::new();
        for s in stasks {
            all.push(s.await?);
        }
        let stored_in = start.elapsed();
        let mut recv = Vec::new();
        for t in rtasks {
            recv.push(t.await?.0);
        }
        (all, recv, stored_in, None)
    };
    let peak = peak_rss_kib(&child);
    stop_child(child).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut sends = merge(send_stats);
    let mut recvs = merge(recv_stats);
    sends.ack_us.sort_unstable();
    recvs.deliver_us.sort_unstable();
    let total = p as u64 * m;
    let name = if args.backlog {
        "B (backlog for offline receivers, then the drain)"
    } else if args.rate.is_some() {
        "C (paced)"
    } else {
        "A (pairs, windowed)"
    };
    println!(
        "== workload {name}: {p} pairs x {m} messages of {} bytes",
        args.size
    );
    match (args.rate, pace) {
        (Some(rate), _) => println!("paced at {rate} msg/s in all"),
        (None, Pace::Window(w)) => println!("window {w} sends per sender"),
        _ => {}
    }
    println!(
        "stored {total} in {:.3} s = {:.0} msg/s; errors: senders {}, receivers {} (every message checked intact, once, in order)",
        stored_in.as_secs_f64(),
        total as f64 / stored_in.as_secs_f64(),
        sends.errors,
        recvs.errors
    );
    if let Some(d) = drained_in {
        println!(
            "drained in {:.3} s (first login to last message) = {:.0} msg/s",
            d.as_secs_f64(),
            total as f64 / d.as_secs_f64()
        );
    }
    println!(
        "send->ack ms     p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(&sends.ack_us, 0.5),
        pct(&sends.ack_us, 0.99),
        pct(&sends.ack_us, 1.0)
    );
    if drained_in.is_none() {
        println!(
            "send->deliver ms p50 {:.2}  p99 {:.2}  max {:.2}",
            pct(&recvs.deliver_us, 0.5),
            pct(&recvs.deliver_us, 0.99),
            pct(&recvs.deliver_us, 1.0)
        );
    }
    match peak {
        Some(k) => println!("relay peak RSS   {:.1} MiB", k as f64 / 1024.0),
        None => println!("relay peak RSS   n/a"),
    }
    if !args.no_echo && !args.backlog {
        let (n, elapsed, mut acks) = echo(p, m, pace, args.size).await?;
        acks.sort_unstable();
        println!(
            "== baseline: the raw tokio-tungstenite echo server, {p} connections x {m}, same pacing: {:.0} msg/s, echo p50 {:.2} p99 {:.2} ms",
            n as f64 / elapsed.as_secs_f64(),
            pct(&acks, 0.5),
            pct(&acks, 0.99)
        );
        println!(
            "== ratio relay/echo throughput: {:.2}",
            (total as f64 / stored_in.as_secs_f64()) / (n as f64 / elapsed.as_secs_f64())
        );
    }
    Ok(())
}

/// The same senders against the echo server: the echoed frame stands for
/// the ack. Returns the messages echoed, the time, and the latencies.
async fn echo(
    p: usize,
    m: u64,
    pace: Pace,
    size: usize,
) -> Result<(u64, Duration, Vec<u64>), Error> {
    let me = std::env::current_exe()?;
    let (child, addr) = start_child(&me, &["echo-server".to_owned()]).await?;
    let url = format!("ws://{addr}");
    let conns = connect_plain(&url, p).await?;
    let start = Instant::now();
    let to = Recipient {
        user_id: "echo".into(),
        device_id: vec![2; 32],
    };
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(echo_sender(c, i as u32, to.clone(), m, size, pace, start)))
        .collect();
    let mut n = 0;
    let mut acks = Vec::new();
    for t in tasks {
        let (k, a) = t.await?;
        n += k;
        acks.extend(a);
    }
    let elapsed = start.elapsed();
    stop_child(child).await;
    Ok((n, elapsed, acks))
}

/// A sender against the echo server: at most a window of frames out, or
/// paced; each echoed frame is matched to its send by the id in it.
async fn echo_sender(
    mut conn: Conn,
    index: u32,
    to: Recipient,
    m: u64,
    size: usize,
    pace: Pace,
    start: Instant,
) -> (u64, Vec<u64>) {
    let mut outstanding: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut acks = Vec::new();
    let mut next = 0u64;
    let mut pacer = Pacer::new(pace);
    while next < m || !outstanding.is_empty() {
        let may_send = pacer.may_send(next, m, outstanding.len());
        let got = pacer.turn::<ClientFrame>(&mut conn, may_send).await;
        match got {
            None => {
                if send_one(&mut conn, index, &to, next, size, start, &mut outstanding)
                    .await
                    .is_err()
                {
                    break;
                }
                next += 1;
            }
            Some(Ok(Some(ClientFrame {
                frame: Some(client_frame::Frame::Send(s)),
            }))) => {
                if let Some(t) = outstanding.remove(&s.message_id) {
                    acks.push(now_us(start).saturating_sub(t));
                }
            }
            Some(_) => break,
        }
    }
    conn.close(ward_net::close::NORMAL, "done").await;
    (acks.len() as u64, acks)
}
