//! Issue 9, item 6: relay sequence numbers cannot wedge a client or make it
//! drop messages. Real relay and keyserver on 127.0.0.1:0, real SDK
//! clients; the relay's numbering is tampered with by the proxy
//! ([`ward_tests::proxy`]) or reset for real (a fresh relay database on the
//! same address).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use tokio::sync::oneshot;
use ward_core::ConversationId;
use ward_keyserver::Clock;
use ward_proto::Message as _;
use ward_proto::v1::{ClientFrame, ServerFrame, client_frame, server_frame};
use ward_relay::RelayError;
use ward_sdk::store::{KdfParams, Message, Pin};
use ward_sdk::{Client, ClientConfig, ClientError, Event};
use ward_tests::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config};
use ward_tests::proxy::{Dir, Proxy};
use ward_tests::relay::{TempDir, WAIT, test_config as relay_config};

const PIN: &str = "ward-pin-493817";

/// A relay on a fixed loopback address, which can be stopped and started
/// again there, on the same database or a fresh one.
struct Relay {
    addr: SocketAddr,
    dir: TempDir,
    root: ward_core::keys::SigningPublicKey,
    generation: u32,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), RelayError>>>,
}

impl Relay {
    async fn start(root: ward_core::keys::SigningPublicKey) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut r = Self {
            addr,
            dir: TempDir::new("recv-relay"),
            root,
            generation: 0,
            stop: None,
            task: None,
        };
        r.serve(l);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let db = self
            .dir
            .path()
            .join(format!("relay-{}.db", self.generation));
        let config = relay_config(&db, self.root);
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(ward_relay::run(
            listener,
            config,
            async move {
                let _ = stopped.await;
            },
        )));
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops the relay and starts it again on the same address with an
    /// empty database: what a restore from nothing looks like to clients.
    async fn reset(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self.generation += 1;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

struct World {
    org: ward_core::testkit::Org,
    relay: Relay,
    _keyserver: TestKeyserver,
    ks_db: PathBuf,
    dir: TempDir,
}

impl World {
    async fn new() -> Self {
        let org = ward_core::testkit::Org::new(&mut rand::rng());
        let relay = Relay::start(org.root_public()).await;
        let ks_db = temp_db_path("recv-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        let keyserver = TestKeyserver::start(config).await;
        Self {
            org,
            relay,
            _keyserver: keyserver,
            ks_db,
            dir: TempDir::new("recv-clients"),
        }
    }

    fn config(&self, name: &str, relay_url: String) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.dir.path().join(format!("{name}.db")),
            relay_url,
            self._keyserver.url(),
            self.org.root_public(),
        );
        c.store_options.kdf = KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
        };
        c.reconnect_min = Duration::from_millis(50);
        c.reconnect_max = Duration::from_millis(300);
        c.request_timeout = Duration::from_secs(5);
        c.key_wait = Duration::from_secs(2);
        c
    }

    async fn enroll(&self, user_id: &str, relay_url: String) -> (Client, Receiver<Event>) {
        let (invite, delegation) = ward_tests::invite(&self.org, user_id);
        let mut c = Client::enroll(
            self.config(user_id, relay_url),
            &invite,
            &delegation,
            Pin::new(PIN.into()).unwrap(),
        )
        .await
        .expect("enroll");
        let ev = c.events().unwrap();
        (c, ev)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        remove_db(&self.ks_db);
    }
}

fn text(m: &Message) -> String {
    String::from_utf8(m.content.to_vec()).unwrap()
}

/// The next event that is not a `Sent`.
async fn next(events: &mut Receiver<Event>) -> Event {
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("no event in time")
            .expect("event stream closed")
        {
            Event::Sent { .. } => continue,
            e => return e,
        }
    }
}

async fn message(events: &mut Receiver<Event>) -> String {
    match next(events).await {
        Event::Message(m) => text(&m),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn send(from: &Client, conv: ConversationId, t: &str) {
    from.send_text(conv, t).await.unwrap();
}

/// Rewrites the sequence numbers of `Deliver`s to `victim` with `f(seq)`
/// and the victim's `Ack`s back with `back(up_to_seq)`.
fn renumber(
    proxy: &Proxy,
    victim: &str,
    f: impl Fn(u64) -> Vec<u64> + Send + 'static,
    back: impl Fn(u64) -> u64 + Send + 'static,
) {
    let victim = victim.to_owned();
    proxy.set_hook(move |frame, bytes| {
        if frame.peer.user_id != victim {
            return vec![bytes];
        }
        match frame.dir {
            Dir::ToClient => {
                let Ok(sf) = ServerFrame::decode(&bytes[..]) else {
                    return vec![bytes];
                };
                let Some(server_frame::Frame::Deliver(d)) = &sf.frame else {
                    return vec![bytes];
                };
                f(d.seq)
                    .into_iter()
                    .map(|seq| {
                        let mut d = d.clone();
                        d.seq = seq;
                        ServerFrame {
                            frame: Some(server_frame::Frame::Deliver(d)),
                        }
                        .encode_to_vec()
                    })
                    .collect()
            }
            Dir::ToServer => {
                let Ok(mut cf) = ClientFrame::decode(&bytes[..]) else {
                    return vec![bytes];
                };
                if let Some(client_frame::Frame::Ack(a)) = cf.frame.as_mut() {
                    a.up_to_seq = back(a.up_to_seq);
                }
                vec![cf.encode_to_vec()]
            }
        }
    });
}

/// A `seq` above `i64::MAX` is refused with a typed error and neither
/// stored nor acked; the worker is not wedged on it (on main it retried
/// the entry forever and nothing after it arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_above_i64_max_is_refused_and_does_not_wedge_the_client() {
    let w = World::new().await;
    let proxy = Proxy::start(w.relay.url()).await;
    let (alice, _a_ev) = w.enroll("alice@chu", w.relay.url()).await;
    let (bob, mut b_ev) = w.enroll("bob@chu", proxy.url()).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    // The first delivery also comes again numbered u64::MAX.
    renumber(
        &proxy,
        "bob@chu",
        |seq| {
            if seq == 1 {
                vec![1, u64::MAX]
            } else {
                vec![seq]
            }
        },
        |s| s,
    );
    send(&alice, conv, "one").await;
    assert_eq!(message(&mut b_ev).await, "one");
    match next(&mut b_ev).await {
        Event::Rejected {
            relay_seq: u64::MAX,
            reason: ClientError::RelaySeqOutOfRange(u64::MAX),
            ..
        } => {}
        other => panic!("expected the out-of-range refusal, got {other:?}"),
    }
    send(&alice, conv, "two").await;
    assert_eq!(message(&mut b_ev).await, "two");
    // The acks the client sent never named the bad number.
    let acks: Vec<u64> = proxy
        .client_frames(0, "bob@chu")
        .into_iter()
        .filter_map(|f| match f {
            client_frame::Frame::Ack(a) => Some(a.up_to_seq),
            _ => None,
        })
        .collect();
    assert!(acks.iter().all(|&a| a <= 2), "acks {acks:?}");
    drop(bob);
}

/// A relay that numbers one entry far ahead (2^62) cannot make the client
/// skip every later message: on main they were all "already handled" and
/// dropped silently. The later messages arrive, and the jump back is
/// reported as a cursor regression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_seq_cannot_make_the_client_skip_later_messages() {
    const FAR: u64 = 1 << 62;
    let w = World::new().await;
    let proxy = Proxy::start(w.relay.url()).await;
    let (alice, _a_ev) = w.enroll("alice@chu", w.relay.url()).await;
    let (bob, mut b_ev) = w.enroll("bob@chu", proxy.url()).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    renumber(
        &proxy,
        "bob@chu",
        |seq| vec![if seq == 1 { FAR } else { seq }],
        |s| if s == FAR { 1 } else { s },
    );
    send(&alice, conv, "one").await;
    assert_eq!(message(&mut b_ev).await, "one");
    send(&alice, conv, "two").await;
    match next(&mut b_ev).await {
        Event::RelayCursorRegressed {
            cursor: FAR,
            seq: 2,
        } => {}
        other => panic!("expected a cursor regression, got {other:?}"),
    }
    assert_eq!(message(&mut b_ev).await, "two");
    send(&alice, conv, "three").await;
    assert_eq!(message(&mut b_ev).await, "three");
    // Everything was acked at the relay: a reconnect redelivers nothing.
    let history: Vec<String> = bob.history(conv).await.unwrap().iter().map(text).collect();
    assert_eq!(history, ["one", "two", "three"]);
}

/// The relay's database is reset (a fresh one on the same address): its
/// numbers start again at 1, below the client's cursor. On main the client
/// dropped every message below its cursor silently; now they arrive and the
/// regression is an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reset_is_surfaced_and_drops_nothing() {
    let mut w = World::new().await;
    let url = w.relay.url();
    let (alice, _a_ev) = w.enroll("alice@chu", url.clone()).await;
    let (bob, mut b_ev) = w.enroll("bob@chu", url).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    for t in ["one", "two", "three"] {
        send(&alice, conv, t).await;
        assert_eq!(message(&mut b_ev).await, t);
    }
    w.relay.reset().await;
    // Both clients reconnect to the empty relay (presenting their logs);
    // alice's send waits in her outbox until then.
    send(&alice, conv, "four").await;
    match next(&mut b_ev).await {
        Event::RelayCursorRegressed { cursor: 3, seq: 1 } => {}
        other => panic!("expected a cursor regression, got {other:?}"),
    }
    assert_eq!(message(&mut b_ev).await, "four");
    send(&alice, conv, "five").await;
    assert_eq!(message(&mut b_ev).await, "five");
    let history: Vec<String> = bob.history(conv).await.unwrap().iter().map(text).collect();
    assert_eq!(history, ["one", "two", "three", "four", "five"]);
}

/// The same reset with the receiver's phone offline: alice's message is
/// stored at the empty relay (seq 1) before bob reconnects with his cursor
/// from the old numbering (3). The client used to ack that cursor on
/// connecting, which deleted entry 1 unseen (a CI run caught it through the
/// test above, when alice's send won the race); now a relay deletes only
/// what a connection delivered, and the client no longer re-acks at login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reset_while_the_receiver_is_offline_drops_nothing() {
    let mut w = World::new().await;
    let url = w.relay.url();
    let (alice, mut a_ev) = w.enroll("alice@chu", url.clone()).await;
    let (bob, mut b_ev) = w.enroll("bob@chu", url.clone()).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    for t in ["one", "two", "three"] {
        send(&alice, conv, t).await;
        assert_eq!(message(&mut b_ev).await, t);
    }
    drop(b_ev);
    drop(bob);
    w.relay.reset().await;
    let four = alice.send_text(conv, "four").await.unwrap();
    // Stored at the new relay before bob's phone comes back.
    loop {
        match tokio::time::timeout(WAIT, a_ev.recv()).await {
            Ok(Some(Event::Sent { resource_id })) if resource_id == four => break,
            Ok(Some(_)) => continue,
            other => panic!("alice's message was not acked: {other:?}"),
        }
    }
    let mut bob = Client::unlock(w.config("bob@chu", url), Pin::new(PIN.into()).unwrap())
        .await
        .unwrap();
    let mut b_ev = bob.events().unwrap();
    match next(&mut b_ev).await {
        Event::RelayCursorRegressed { cursor: 3, seq: 1 } => {}
        other => panic!("expected a cursor regression, got {other:?}"),
    }
    assert_eq!(message(&mut b_ev).await, "four");
    let history: Vec<String> = bob.history(conv).await.unwrap().iter().map(text).collect();
    assert_eq!(history, ["one", "two", "three", "four"]);
}
