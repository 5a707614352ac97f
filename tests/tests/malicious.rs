//! Issue 5, done-when 3: malicious servers. The real relay and the real
//! keyserver run on 127.0.0.1:0; each sits behind a tampering proxy
//! ([`ward_tests::proxy`]) that the test drives, and real SDK clients talk
//! to the proxies. Every attack must surface as a typed error (an
//! [`Event::Rejected`] with its reason, or a typed error from the call),
//! never as an [`Event::Message`], never in the history, and the mailbox
//! must keep flowing afterwards. (Malicious *senders* are in `e2e.rs`.)
// Helpers outside `#[test]` functions may fail the test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use ward_core::chain::verify_log;
use ward_core::keys::{DeviceSigningKey, ResourceKey, UserEncryptionKey};
use ward_core::testkit::{KIT_TIME, Org};
use ward_core::wrap::wrap_resource_key;
use ward_core::{ChainError, ConversationId, OpenError, ResourceId, WrapError};
use ward_keyserver::Clock;
use ward_proto::Message as _;
use ward_proto::v1::{
    Deliver, Envelope, EnvelopeHeader, KsResponse, ServerFrame, SignedStatement, Statement,
    WrappedKey, ks_request, ks_response, server_frame, statement,
};
use ward_sdk::store::{KdfParams, Message, Pin};
use ward_sdk::{Client, ClientConfig, ClientError, Event};
use ward_tests::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config};
use ward_tests::proxy::{Dir, Proxy, ks_hook, relay_hook};
use ward_tests::relay::{Relay, TempDir, WAIT};

const PIN: &str = "ward-pin-493817";

/// An organisation, its two real servers, a tampering proxy in front of
/// each, and a directory for device stores.
struct World {
    org: Org,
    relay: Relay,
    keyserver: TestKeyserver,
    relay_proxy: Proxy,
    ks_proxy: Proxy,
    ks_db: PathBuf,
    dir: TempDir,
}

impl World {
    async fn new() -> Self {
        let org = Org::new(&mut rand::rng());
        let relay = Relay::start(org.root_public()).await;
        let ks_db = temp_db_path("mal-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        let keyserver = TestKeyserver::start(config).await;
        let relay_proxy = Proxy::start(relay.url()).await;
        let ks_proxy = Proxy::start(keyserver.url()).await;
        Self {
            org,
            relay,
            keyserver,
            relay_proxy,
            ks_proxy,
            ks_db,
            dir: TempDir::new("mal-clients"),
        }
    }

    /// A client configuration pointing at the two proxies.
    fn config(&self, name: &str) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.dir.path().join(format!("{name}.db")),
            self.relay_proxy.url(),
            self.ks_proxy.url(),
            self.org.root_public(),
        );
        c.store_options.kdf = KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
        };
        c.reconnect_min = Duration::from_millis(50);
        c.reconnect_max = Duration::from_millis(500);
        c.request_timeout = Duration::from_secs(5);
        c.key_wait = Duration::from_secs(2);
        c
    }

    async fn enroll(&self, user_id: &str) -> Client {
        let (invite, delegation) = ward_tests::invite(&self.org, user_id);
        Client::enroll(
            self.config(user_id),
            &invite,
            &delegation,
            Pin::new(PIN.into()).unwrap(),
        )
        .await
        .expect("enroll")
    }

    /// Relay messages stored so far (one row per accepted `Send`).
    fn relay_sends(&self) -> i64 {
        self.relay.count("sends")
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

async fn next_event(events: &mut Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no event in time")
        .expect("event stream closed")
}

/// The next message; `Sent` events are skipped, anything else fails.
async fn message(events: &mut Receiver<Event>) -> Message {
    loop {
        match next_event(events).await {
            Event::Message(m) => return m,
            Event::Sent { .. } => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The next rejection (relay seq, relay-named sender, reason); `Sent`
/// events are skipped, a message fails the test.
async fn rejected(events: &mut Receiver<Event>) -> (u64, String, ClientError) {
    loop {
        match next_event(events).await {
            Event::Rejected {
                relay_seq,
                relay_sender,
                reason,
            } => return (relay_seq, relay_sender, reason),
            Event::Sent { .. } => {}
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

/// Waits for the `Sent` event of `rid`; nothing but `Sent` may come.
async fn sent(events: &mut Receiver<Event>, rid: ResourceId) {
    loop {
        match next_event(events).await {
            Event::Sent { resource_id } if resource_id == rid => return,
            Event::Sent { .. } => {}
            other => panic!("expected Sent, got {other:?}"),
        }
    }
}

/// Nothing but `Sent` events within `d`.
async fn quiet(events: &mut Receiver<Event>, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(Event::Sent { .. })) => {}
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
        }
    }
}

async fn history(c: &Client, conv: ConversationId) -> Vec<String> {
    c.history(conv).await.unwrap().iter().map(text).collect()
}

/// Sends `t` from `from` and checks `to` shows it: the mailbox still flows.
async fn flows(
    from: &Client,
    from_ev: &mut Receiver<Event>,
    to_ev: &mut Receiver<Event>,
    conv: ConversationId,
    t: &str,
) {
    let rid = from.send_text(conv, t).await.unwrap();
    sent(from_ev, rid).await;
    let m = message(to_ev).await;
    assert_eq!((text(&m).as_str(), m.resource_id), (t, rid));
    assert_eq!(m.sender_user_id, from.user_id());
}

// ---------------------------------------------------------------------------
// The malicious relay.
// ---------------------------------------------------------------------------

type Tamper = Box<dyn FnOnce(Deliver) -> Vec<Deliver> + Send>;

/// Whether a rejection carries the expected reason.
type Verdict = fn(&ClientError) -> bool;

#[derive(Default)]
struct RelayState {
    /// One-shot: (victim user, what to do with its next delivery).
    armed: Option<(String, Tamper)>,
    /// Every delivery the relay made, by recipient user (relay seqs).
    seen: Vec<(String, Deliver)>,
}

/// A relay that records every delivery and tampers with the next one to a
/// chosen user when armed.
#[derive(Clone, Default)]
struct RelayAttack(Arc<Mutex<RelayState>>);

impl RelayAttack {
    fn install(proxy: &Proxy) -> Self {
        let attack = Self::default();
        let state = attack.0.clone();
        proxy.set_hook(relay_hook(move |peer, frame| {
            let Some(server_frame::Frame::Deliver(d)) = &frame.frame else {
                return vec![frame];
            };
            let mut st = state.lock().unwrap();
            st.seen.push((peer.user_id.clone(), d.clone()));
            if st.armed.as_ref().is_some_and(|(u, _)| *u == peer.user_id) {
                let (_, tamper) = st.armed.take().unwrap();
                return tamper(d.clone())
                    .into_iter()
                    .map(|d| ServerFrame {
                        frame: Some(server_frame::Frame::Deliver(d)),
                    })
                    .collect();
            }
            vec![frame]
        }));
        attack
    }

    fn arm(&self, victim: &str, tamper: impl FnOnce(Deliver) -> Vec<Deliver> + Send + 'static) {
        self.0.lock().unwrap().armed = Some((victim.to_owned(), Box::new(tamper)));
    }

    fn fired(&self) -> bool {
        self.0.lock().unwrap().armed.is_none()
    }

    /// The last delivery made to `user_id`.
    fn last_to(&self, user_id: &str) -> Deliver {
        let st = self.0.lock().unwrap();
        st.seen
            .iter()
            .rev()
            .find(|(u, _)| u == user_id)
            .map(|(_, d)| d.clone())
            .expect("no delivery to that user")
    }
}

/// Forges a delivery into `device`'s live relay connection: it takes the
/// mailbox's next sequence number.
fn inject_deliver(proxy: &Proxy, device: &[u8], mut d: Deliver) {
    d.seq = 0; // forged: the proxy numbers it
    let frame = ServerFrame {
        frame: Some(server_frame::Frame::Deliver(d)),
    };
    assert_eq!(
        proxy.inject(device, Dir::ToClient, frame.encode_to_vec()),
        1,
        "the victim is not connected"
    );
}

fn edit_envelope(payload: &[u8], f: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let mut env = Envelope::decode(payload).unwrap();
    f(&mut env);
    env.encode_to_vec()
}

fn edit_header(env: &mut Envelope, f: impl FnOnce(&mut EnvelopeHeader)) {
    let mut h = EnvelopeHeader::decode(&env.header[..]).unwrap();
    f(&mut h);
    env.header = h.encode_to_vec();
}

async fn two_clinicians(w: &World) -> (Client, Receiver<Event>, Client, Receiver<Event>) {
    let mut alice = w.enroll("alice@chu").await;
    let mut bob = w.enroll("bob@chu").await;
    let a_ev = alice.events().unwrap();
    let b_ev = bob.events().unwrap();
    (alice, a_ev, bob, b_ev)
}

/// The relay flips one bit of the ciphertext inside `Deliver.payload`: the
/// envelope signature covers the ciphertext, so the receiver refuses it
/// with `Open(BadSignature)` before any decryption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_flips_a_ciphertext_bit() {
    let w = World::new().await;
    let attack = RelayAttack::install(&w.relay_proxy);
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();

    attack.arm("bob@chu", |mut d| {
        d.payload = edit_envelope(&d.payload, |e| e.ciphertext[40] ^= 0x01);
        vec![d]
    });
    let rid = alice.send_text(conv, "WARD-MAL-FLIP").await.unwrap();
    sent(&mut a_ev, rid).await;
    let (_, sender, reason) = rejected(&mut b_ev).await;
    assert!(attack.fired());
    assert_eq!(sender, "alice@chu");
    assert!(
        matches!(reason, ClientError::Open(OpenError::BadSignature)),
        "{reason:?}"
    );

    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-FLIP-AFTER").await;
    quiet(&mut b_ev, Duration::from_millis(200)).await;
    assert_eq!(history(&bob, conv).await, vec!["WARD-MAL-FLIP-AFTER"]);
    // The rejected entry was acked with the rest: nothing is stuck.
    w.relay.wait_count("queue", 0).await;
}

/// The relay re-sends an envelope already shown. Under the same sequence
/// number (what an honest relay does after a lost ack) it is dropped
/// silently; under a new sequence number it is a replay:
/// `Rejected { Replay }`, never a second message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_replays_an_old_envelope() {
    let w = World::new().await;
    let attack = RelayAttack::install(&w.relay_proxy);
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();

    // Duplicated under the same seq: one message, no event for the copy.
    attack.arm("bob@chu", |d| vec![d.clone(), d]);
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-REPLAY-1").await;
    assert!(attack.fired());
    quiet(&mut b_ev, Duration::from_millis(300)).await;

    // The same delivery again later, under the mailbox's next seq and a new
    // relay message id.
    let mut old = attack.last_to("bob@chu");
    let first_rid = ResourceId::from_slice(&message_rid(&old.payload)).unwrap();
    old.message_id = ward_tests::relay::message_id().to_vec();
    inject_deliver(&w.relay_proxy, bob.device_id().as_bytes(), old.clone());
    let (seq, sender, reason) = rejected(&mut b_ev).await;
    assert!(seq > 0);
    assert_eq!(sender, "alice@chu");
    match reason {
        ClientError::Replay {
            sender_user_id,
            resource_id,
        } => assert_eq!(
            (sender_user_id.as_str(), resource_id),
            ("alice@chu", first_rid)
        ),
        other => panic!("expected Replay, got {other:?}"),
    }

    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-REPLAY-2").await;
    // And once more, replayed after newer messages.
    inject_deliver(&w.relay_proxy, bob.device_id().as_bytes(), old);
    let (_, _, reason) = rejected(&mut b_ev).await;
    assert!(matches!(reason, ClientError::Replay { .. }), "{reason:?}");
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-REPLAY-3").await;
    quiet(&mut b_ev, Duration::from_millis(200)).await;
    assert_eq!(
        history(&bob, conv).await,
        vec![
            "WARD-MAL-REPLAY-1",
            "WARD-MAL-REPLAY-2",
            "WARD-MAL-REPLAY-3"
        ]
    );
    w.relay.wait_count("queue", 0).await;
}

/// The resource id of an encoded envelope (from its unverified header).
fn message_rid(payload: &[u8]) -> Vec<u8> {
    let env = Envelope::decode(payload).unwrap();
    EnvelopeHeader::decode(&env.header[..]).unwrap().resource_id
}

/// The relay hands Bob an envelope it delivered to Carol (addressed to
/// Alice and Carol only), under Bob's next sequence number:
/// `Open(NotARecipient)`; with Bob added to its header's recipients, the
/// signature no longer verifies: `Open(BadSignature)`, at once. And
/// it hands Alice's own sent envelope back to her device, which is not
/// among its relay recipients: she holds it already, so it is a `Replay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_an_envelope_meant_for_another_device() {
    let w = World::new().await;
    let attack = RelayAttack::install(&w.relay_proxy);
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let mut carol = w.enroll("carol@chu").await;
    let mut c_ev = carol.events().unwrap();
    let conv_ab = alice.create_conversation(&["bob@chu"]).await.unwrap();
    let conv_ac = alice.create_conversation(&["carol@chu"]).await.unwrap();

    flows(&alice, &mut a_ev, &mut c_ev, conv_ac, "WARD-MAL-CAROL-ONLY").await;
    let for_carol = attack.last_to("carol@chu");
    inject_deliver(
        &w.relay_proxy,
        bob.device_id().as_bytes(),
        for_carol.clone(),
    );
    let (_, sender, reason) = rejected(&mut b_ev).await;
    assert_eq!(sender, "alice@chu");
    assert!(
        matches!(reason, ClientError::Open(OpenError::NotARecipient)),
        "{reason:?}"
    );
    // The same, with Bob added to the header's recipients: the header is
    // signed, so the client refuses it before waiting for any wrapped key.
    let mut widened = for_carol.clone();
    widened.payload = edit_envelope(&widened.payload, |e| {
        edit_header(e, |h| h.recipient_user_ids.push("bob@chu".into()))
    });
    inject_deliver(&w.relay_proxy, bob.device_id().as_bytes(), widened);
    let (_, _, reason) = rejected(&mut b_ev).await;
    assert!(
        matches!(reason, ClientError::Open(OpenError::BadSignature)),
        "{reason:?}"
    );
    flows(&alice, &mut a_ev, &mut b_ev, conv_ab, "WARD-MAL-BOB-AFTER").await;
    quiet(&mut b_ev, Duration::from_millis(200)).await;
    assert!(history(&bob, conv_ac).await.is_empty());
    assert_eq!(bob.conversations().await.unwrap().len(), 1);
    assert_eq!(history(&bob, conv_ab).await, vec!["WARD-MAL-BOB-AFTER"]);

    // The sender's own envelope, echoed to the sending device.
    inject_deliver(&w.relay_proxy, alice.device_id().as_bytes(), for_carol);
    let (_, _, reason) = rejected(&mut a_ev).await;
    assert!(matches!(reason, ClientError::Replay { .. }), "{reason:?}");
    assert_eq!(history(&alice, conv_ac).await, vec!["WARD-MAL-CAROL-ONLY"]);
    flows(&carol, &mut c_ev, &mut a_ev, conv_ac, "WARD-MAL-TO-ALICE").await;
    quiet(&mut a_ev, Duration::from_millis(200)).await;
    w.relay.wait_count("queue", 0).await;
}

/// The relay swaps sender ids. In `Deliver` only (Carol named as the
/// sender of Alice's envelope): `SenderMismatch`. In the envelope header
/// too (user and device, consistent with `Deliver`): the signature no
/// longer verifies, `Open(BadSignature)`. The header's user id alone:
/// Alice's device is not in Carol's log, `Open(UnknownSenderDevice)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_swaps_sender_ids() {
    let w = World::new().await;
    let attack = RelayAttack::install(&w.relay_proxy);
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let carol = w.enroll("carol@chu").await;
    let carol_device = carol.device_id().as_bytes().to_vec();
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();

    let cases: Vec<(&str, Tamper, Verdict)> = vec![
        (
            "WARD-MAL-SWAP-RELAY",
            Box::new({
                let cd = carol_device.clone();
                move |mut d: Deliver| {
                    d.sender_user_id = "carol@chu".into();
                    d.sender_device_id = cd;
                    vec![d]
                }
            }),
            |e| matches!(e, ClientError::SenderMismatch),
        ),
        (
            "WARD-MAL-SWAP-HEADER",
            Box::new({
                let cd = carol_device.clone();
                move |mut d: Deliver| {
                    d.payload = edit_envelope(&d.payload, |e| {
                        edit_header(e, |h| {
                            h.sender_user_id = "carol@chu".into();
                            h.sender_device_id = cd.clone();
                        })
                    });
                    d.sender_user_id = "carol@chu".into();
                    d.sender_device_id = cd;
                    vec![d]
                }
            }),
            |e| matches!(e, ClientError::Open(OpenError::BadSignature)),
        ),
        (
            "WARD-MAL-SWAP-USER",
            Box::new(|mut d: Deliver| {
                d.payload = edit_envelope(&d.payload, |e| {
                    edit_header(e, |h| h.sender_user_id = "carol@chu".into())
                });
                d.sender_user_id = "carol@chu".into();
                vec![d]
            }),
            |e| matches!(e, ClientError::Open(OpenError::UnknownSenderDevice)),
        ),
    ];
    for (t, tamper, expected) in cases {
        attack.0.lock().unwrap().armed = Some(("bob@chu".into(), tamper));
        let rid = alice.send_text(conv, t).await.unwrap();
        sent(&mut a_ev, rid).await;
        let (_, sender, reason) = rejected(&mut b_ev).await;
        assert!(attack.fired());
        assert_eq!(sender, "carol@chu", "{t}");
        assert!(expected(&reason), "{t}: {reason:?}");
    }
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-SWAP-AFTER").await;
    quiet(&mut b_ev, Duration::from_millis(200)).await;
    assert_eq!(history(&bob, conv).await, vec!["WARD-MAL-SWAP-AFTER"]);
    w.relay.wait_count("queue", 0).await;
}

// ---------------------------------------------------------------------------
// The malicious keyserver.
// ---------------------------------------------------------------------------

type LogEdit = Box<dyn FnMut(Option<Vec<SignedStatement>>) -> Option<Vec<SignedStatement>> + Send>;

/// A keyserver that rewrites `target`'s log in what it serves to `victim`.
#[derive(Clone, Default)]
struct LogAttack(Arc<Mutex<Option<(String, String, LogEdit)>>>);

impl LogAttack {
    fn install(proxy: &Proxy) -> Self {
        let attack = Self::default();
        let state = attack.0.clone();
        proxy.set_hook(ks_hook(move |peer, mut resp: KsResponse| {
            let mut st = state.lock().unwrap();
            if let Some((victim, target, edit)) = st.as_mut()
                && *victim == peer.user_id
                && let Some(ks_response::Body::Logs(logs)) = resp.body.as_mut()
                && logs.logs.contains_key(target.as_str())
            {
                let served = logs.logs.remove(target.as_str()).map(|l| l.entries);
                if let Some(entries) = edit(served) {
                    logs.logs
                        .insert(target.clone(), ward_proto::v1::UserLog { entries });
                }
            }
            vec![resp]
        }));
        attack
    }

    fn set(
        &self,
        victim: &str,
        target: &str,
        edit: impl FnMut(Option<Vec<SignedStatement>>) -> Option<Vec<SignedStatement>> + Send + 'static,
    ) {
        *self.0.lock().unwrap() = Some((victim.into(), target.into(), Box::new(edit)));
    }

    fn clear(&self) {
        *self.0.lock().unwrap() = None;
    }
}

/// `entry` with its statement edited and its signature kept (re-signing
/// needs the author's key, which the keyserver does not have).
fn edit_statement(entry: &SignedStatement, f: impl FnOnce(&mut Statement)) -> SignedStatement {
    let mut st = Statement::decode(&entry.statement[..]).unwrap();
    f(&mut st);
    SignedStatement {
        statement: st.encode_to_vec(),
        signature: entry.signature.clone(),
    }
}

/// Replaces the user encryption key an entry introduces.
fn substitute_key(entry: &SignedStatement, key: &[u8]) -> SignedStatement {
    edit_statement(entry, |st| match st.body.as_mut().unwrap() {
        statement::Body::UserCreation(c) => c.user_encryption_public_key = key.to_vec(),
        statement::Body::KeyRotation(r) => r.new_user_encryption_public_key = key.to_vec(),
        statement::Body::DeviceRevocation(r) => r.new_user_encryption_public_key = key.to_vec(),
        statement::Body::DeviceAddition(_) => panic!("no key in a device addition"),
    })
}

fn attacker_key() -> Vec<u8> {
    UserEncryptionKey::generate(&mut rand::rng())
        .public_key()
        .as_bytes()
        .to_vec()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts that a refused send left nothing behind: not queued, not in the
/// history, no wrapped key offered to the keyserver, nothing at the relay.
async fn nothing_left(
    w: &World,
    sender: &Client,
    conv: ConversationId,
    ks_mark: usize,
    sends: i64,
) {
    assert_eq!(sender.outbox_len().await.unwrap(), 0);
    assert!(
        history(sender, conv)
            .await
            .iter()
            .all(|t| !t.contains("-EVIL"))
    );
    let put_keys = w
        .ks_proxy
        .ks_requests(ks_mark, sender.user_id())
        .into_iter()
        .filter(|r| matches!(r.body, Some(ks_request::Body::PutKeys(_))))
        .count();
    assert_eq!(put_keys, 0, "a wrapped key left the device");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.relay_sends(), sends, "the relay received the message");
}

fn expect_chain(r: Result<ResourceId, ClientError>, user: &str) -> ChainError {
    match r {
        Err(ClientError::Chain { user_id, error }) => {
            assert_eq!(user_id, user);
            error
        }
        other => panic!("expected a chain error, got {other:?}"),
    }
}

/// The keyserver substitutes a user encryption key in the recipient's log.
/// It cannot re-sign, so every variant fails verification and the sender
/// refuses to wrap: `send_text` returns `Chain { .. }` and nothing leaves
/// the device. The key changed in a new entry (a rotation Bob made):
/// `BadSignature { seq: 1 }`; in an entry the sender verified before:
/// `Fork { seq: 0 }`; a rotation appended and signed by the keyserver's own
/// key: `UnauthorizedAuthor { seq: 2 }`; on first sight (a user the sender
/// never verified): `BadSignature { seq: 0 }`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyserver_substitutes_a_public_key_and_the_sender_refuses_to_wrap() {
    let w = World::new().await;
    let attack = LogAttack::install(&w.ks_proxy);
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let _dave = w.enroll("dave@chu").await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-KEY-0").await;
    bob.rotate_user_key().await.unwrap(); // Bob's log: 2 entries
    let sends = w.relay_sends();
    let root = w.org.root_public();

    // 1. Bob's new key swapped for the keyserver's in the rotation entry.
    let evil = attacker_key();
    attack.set("alice@chu", "bob@chu", move |l| {
        let mut l = l.unwrap();
        l[1] = substitute_key(&l[1], &evil);
        Some(l)
    });
    let mark = w.ks_proxy.mark();
    let r = alice.send_text(conv, "WARD-MAL-KEY-1-EVIL").await;
    assert_eq!(
        expect_chain(r, "bob@chu"),
        ChainError::BadSignature { seq: 1 }
    );
    nothing_left(&w, &alice, conv, mark, sends).await;

    // 2. Bob's first key swapped, in the entry Alice verified already.
    let evil = attacker_key();
    attack.set("alice@chu", "bob@chu", move |l| {
        let mut l = l.unwrap();
        l[0] = substitute_key(&l[0], &evil);
        Some(l)
    });
    let mark = w.ks_proxy.mark();
    let r = alice.send_text(conv, "WARD-MAL-KEY-2-EVIL").await;
    assert_eq!(expect_chain(r, "bob@chu"), ChainError::Fork { seq: 0 });
    nothing_left(&w, &alice, conv, mark, sends).await;

    // 3. A rotation to the keyserver's key, signed by the keyserver.
    let ks_device = DeviceSigningKey::generate(&mut rand::rng());
    let evil = UserEncryptionKey::generate(&mut rand::rng()).public_key();
    attack.set("alice@chu", "bob@chu", move |l| {
        let mut l = l.unwrap();
        let chain = verify_log(&root, "bob@chu", &l).unwrap();
        l.push(chain.rotate_user_key(&ks_device, &evil, now_secs() + 1));
        Some(l)
    });
    let mark = w.ks_proxy.mark();
    let r = alice.send_text(conv, "WARD-MAL-KEY-3-EVIL").await;
    assert_eq!(
        expect_chain(r, "bob@chu"),
        ChainError::UnauthorizedAuthor { seq: 2 }
    );
    nothing_left(&w, &alice, conv, mark, sends).await;

    // 4. First sight: Dave's key swapped in his creation entry.
    let evil = attacker_key();
    attack.set("alice@chu", "dave@chu", move |l| {
        let mut l = l.unwrap();
        l[0] = substitute_key(&l[0], &evil);
        Some(l)
    });
    let mark = w.ks_proxy.mark();
    match alice.create_conversation(&["dave@chu"]).await {
        Err(ClientError::Chain { user_id, error }) => {
            assert_eq!(user_id, "dave@chu");
            assert_eq!(error, ChainError::BadSignature { seq: 0 });
        }
        other => panic!("expected a chain error, got {other:?}"),
    }
    nothing_left(&w, &alice, conv, mark, sends).await;
    assert_eq!(alice.conversations().await.unwrap().len(), 1);

    quiet(&mut b_ev, Duration::from_millis(200)).await;
    // The keyserver turns honest: the send wraps to Bob's real new key.
    attack.clear();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-KEY-5").await;
    assert_eq!(
        history(&bob, conv).await,
        vec!["WARD-MAL-KEY-0", "WARD-MAL-KEY-5"]
    );
    assert_eq!(
        history(&alice, conv).await,
        vec!["WARD-MAL-KEY-0", "WARD-MAL-KEY-5"]
    );
}

/// The outbox path: a message already queued meets a keyserver that
/// answers its `PutWrappedKeys` with `CONFLICT` (claiming Bob rotated; the
/// request never reaches the real keyserver) and then serves Bob's log
/// with a rotation it signed itself. The client reseals from freshly
/// verified logs, the log does not verify, and the message fails for good:
/// `Event::SendFailed { Chain { UnauthorizedAuthor { seq: 1 } } }`, with
/// no wrapped key stored and nothing at the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyserver_claims_a_rotation_and_the_queued_message_fails_typed() {
    use ward_proto::v1::{ErrorCode, GetLogs, KsError, KsRequest};
    use ward_tests::proxy::Frame;

    let w = World::new().await;
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-QUEUED-0").await;
    let sends = w.relay_sends();
    let stored_keys = ward_tests::relay::count_rows(&w.ks_db, "wrapped_keys");

    let root = w.org.root_public();
    let ks_device = DeviceSigningKey::generate(&mut rand::rng());
    let evil = UserEncryptionKey::generate(&mut rand::rng()).public_key();
    let refused: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    w.ks_proxy.set_hook(move |f: &Frame<'_>, bytes: Vec<u8>| {
        if f.peer.user_id != "alice@chu" {
            return vec![bytes];
        }
        match f.dir {
            Dir::ToServer => {
                let mut req = KsRequest::decode(&bytes[..]).unwrap();
                if matches!(req.body, Some(ks_request::Body::PutKeys(_))) {
                    // Swallowed: a harmless read goes to the keyserver instead.
                    refused.lock().unwrap().push((f.peer.conn, req.request_id));
                    req.body = Some(ks_request::Body::GetLogs(GetLogs {
                        user_ids: vec!["alice@chu".into()],
                    }));
                }
                vec![req.encode_to_vec()]
            }
            Dir::ToClient => {
                let mut resp = KsResponse::decode(&bytes[..]).unwrap();
                if refused
                    .lock()
                    .unwrap()
                    .contains(&(f.peer.conn, resp.request_id))
                {
                    resp.body = Some(ks_response::Body::Error(KsError {
                        code: ErrorCode::Conflict as i32,
                        detail: "bob@chu rotated".into(),
                    }));
                } else if !refused.lock().unwrap().is_empty()
                    && let Some(ks_response::Body::Logs(logs)) = resp.body.as_mut()
                    && let Some(log) = logs.logs.get_mut("bob@chu")
                {
                    let chain = verify_log(&root, "bob@chu", &log.entries).unwrap();
                    log.entries
                        .push(chain.rotate_user_key(&ks_device, &evil, now_secs() + 1));
                }
                vec![resp.encode_to_vec()]
            }
        }
    });
    // `send_text` verifies the honest log and queues; the lie starts with
    // the outbox's `PutWrappedKeys`.
    let rid = alice.send_text(conv, "WARD-MAL-QUEUED-1").await.unwrap();
    match next_event(&mut a_ev).await {
        Event::Resealed { .. } => panic!("resealed to a forged log"),
        Event::SendFailed {
            resource_id,
            reason: ClientError::Chain { user_id, error },
        } => {
            assert_eq!(resource_id, rid);
            assert_eq!(user_id, "bob@chu");
            assert_eq!(error, ChainError::UnauthorizedAuthor { seq: 1 });
        }
        other => panic!("expected SendFailed, got {other:?}"),
    }
    assert_eq!(alice.outbox_len().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.relay_sends(), sends, "the relay received the message");
    assert_eq!(
        ward_tests::relay::count_rows(&w.ks_db, "wrapped_keys"),
        stored_keys,
        "a wrapped key reached the keyserver"
    );
    quiet(&mut b_ev, Duration::from_millis(200)).await;

    w.ks_proxy.clear_hook();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-QUEUED-2").await;
    assert_eq!(
        history(&bob, conv).await,
        vec!["WARD-MAL-QUEUED-0", "WARD-MAL-QUEUED-2"]
    );
}

/// The keyserver rolls back or forks a log the client verified before.
/// Sending: Bob's log truncated to its first entry is
/// `Rollback { known: 2, served: 1 }`, withheld entirely
/// `Rollback { known: 2, served: 0 }`; Carol's log served as another,
/// validly signed branch (a second rotation signed by her own device) is
/// `Fork { seq: 1 }`. Receiving: Alice's log rolled back or forked in what
/// Bob is served is a `Rejected { Chain { .. } }`, never a message. The
/// verified state survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyserver_rolls_back_or_forks_a_log() {
    let w = World::new().await;
    let attack = LogAttack::install(&w.ks_proxy);
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    bob.rotate_user_key().await.unwrap();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-LOG-0").await; // Alice verified 2 entries
    let sends = w.relay_sends();

    // Sending, rollback.
    attack.set("alice@chu", "bob@chu", |l| Some(l.unwrap()[..1].to_vec()));
    let mark = w.ks_proxy.mark();
    let r = alice.send_text(conv, "WARD-MAL-LOG-1-EVIL").await;
    assert_eq!(
        expect_chain(r, "bob@chu"),
        ChainError::Rollback {
            known: 2,
            served: 1
        }
    );
    nothing_left(&w, &alice, conv, mark, sends).await;
    attack.set("alice@chu", "bob@chu", |_| None);
    let r = alice.send_text(conv, "WARD-MAL-LOG-2-EVIL").await;
    assert_eq!(
        expect_chain(r, "bob@chu"),
        ChainError::Rollback {
            known: 2,
            served: 0
        }
    );
    nothing_left(&w, &alice, conv, mark, sends).await;

    // Sending, fork: Carol (a test user whose device key the test holds)
    // rotates; Alice verifies that; then the keyserver serves a different
    // rotation, validly signed by the same device.
    attack.clear();
    let mut rng = rand::rng();
    let carol = w.org.enroll(&mut rng, "carol@chu");
    let mut c_ks = ward_tests::keyserver::enroll(&w.keyserver.url(), &carol).await;
    let conv_ac = alice.create_conversation(&["carol@chu"]).await.unwrap();
    let k1 = UserEncryptionKey::generate(&mut rng).public_key();
    let branch_a = carol
        .chain
        .rotate_user_key(&carol.device, &k1, KIT_TIME + 1);
    c_ks.append(&branch_a).await.unwrap();
    let rid = alice.send_text(conv_ac, "WARD-MAL-LOG-3").await.unwrap();
    sent(&mut a_ev, rid).await;
    let k2 = UserEncryptionKey::generate(&mut rng).public_key();
    let branch_b = carol
        .chain
        .rotate_user_key(&carol.device, &k2, KIT_TIME + 1);
    verify_log(
        &w.org.root_public(),
        "carol@chu",
        &[carol.log[0].clone(), branch_b.clone()],
    )
    .expect("the other branch is valid on its own");
    let sends = w.relay_sends();
    attack.set("alice@chu", "carol@chu", move |l| {
        let mut l = l.unwrap();
        l[1] = branch_b.clone();
        Some(l)
    });
    let mark = w.ks_proxy.mark();
    let r = alice.send_text(conv_ac, "WARD-MAL-LOG-4-EVIL").await;
    assert_eq!(expect_chain(r, "carol@chu"), ChainError::Fork { seq: 1 });
    nothing_left(&w, &alice, conv_ac, mark, sends).await;
    attack.clear();

    // Receiving: Bob verified Alice's log of 2 entries (she rotated).
    alice.rotate_user_key().await.unwrap();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-LOG-5").await;
    attack.set("bob@chu", "alice@chu", |l| Some(l.unwrap()[..1].to_vec()));
    let rid = alice
        .send_text(conv, "WARD-MAL-LOG-6-UNVERIFIABLE")
        .await
        .unwrap();
    sent(&mut a_ev, rid).await;
    let (_, sender, reason) = rejected(&mut b_ev).await;
    assert_eq!(sender, "alice@chu");
    match reason {
        ClientError::Chain { user_id, error } => {
            assert_eq!(user_id, "alice@chu");
            assert_eq!(
                error,
                ChainError::Rollback {
                    known: 2,
                    served: 1
                }
            );
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    // A fork of Alice's log: her rotation entry replaced by another one.
    let evil = attacker_key();
    attack.set("bob@chu", "alice@chu", move |l| {
        let mut l = l.unwrap();
        l[1] = substitute_key(&l[1], &evil);
        Some(l)
    });
    let rid = alice
        .send_text(conv, "WARD-MAL-LOG-7-UNVERIFIABLE")
        .await
        .unwrap();
    sent(&mut a_ev, rid).await;
    let (_, _, reason) = rejected(&mut b_ev).await;
    assert!(
        matches!(
            reason,
            ClientError::Chain {
                error: ChainError::Fork { seq: 1 },
                ..
            }
        ),
        "{reason:?}"
    );

    attack.clear();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-LOG-8").await;
    quiet(&mut b_ev, Duration::from_millis(200)).await;
    assert_eq!(
        history(&bob, conv).await,
        vec!["WARD-MAL-LOG-0", "WARD-MAL-LOG-5", "WARD-MAL-LOG-8"]
    );
    w.relay.wait_count("queue", 1).await; // Carol's copy, never read

    // The verified state is in the store: after a restart, the same
    // rollback is still caught.
    drop(a_ev);
    alice.lock().await;
    let alice = Client::unlock(w.config("alice@chu"), Pin::new(PIN.into()).unwrap())
        .await
        .unwrap();
    attack.set("alice@chu", "bob@chu", |l| Some(l.unwrap()[..1].to_vec()));
    let sends = w.relay_sends();
    let mark = w.ks_proxy.mark();
    let r = alice.send_text(conv, "WARD-MAL-LOG-9-EVIL").await;
    assert_eq!(
        expect_chain(r, "bob@chu"),
        ChainError::Rollback {
            known: 2,
            served: 1
        }
    );
    nothing_left(&w, &alice, conv, mark, sends).await;
}

/// How the keyserver answers Bob's next `GetWrappedKeys`.
#[derive(Clone, Copy, Debug)]
enum KeyLie {
    /// Another resource's wrapped key, as stored.
    OtherResource,
    /// Another resource's wrapped key, its `resource_id` rewritten to the
    /// one asked for.
    OtherResourceRelabelled,
    /// A fresh key wrapped to Bob's real user key under the right resource
    /// id (HPKE base mode lets anyone do this).
    Planted,
}

#[derive(Default)]
struct KeyState {
    lie: Option<KeyLie>,
    /// The first wrapped key served to Bob (resource X).
    first: Option<WrappedKey>,
    /// Bob's user key, from his log as served: a wrapped key names it only
    /// by id (SECURITY.md §5).
    bob_key: Option<ward_core::keys::EncryptionPublicKey>,
}

/// The keyserver returns the wrapped key of another resource, or a planted
/// one: `Wrap(WrongResource)` when the record names the other resource,
/// `Wrap(Undecryptable)` when its resource id is rewritten (the HPKE aad
/// binds it), `Open(KeyCommitmentMismatch)` for a key planted under the
/// right binding (it unwraps, but it is not the key the signed header
/// commits to; refused before any decryption).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyserver_returns_the_wrapped_key_of_another_resource() {
    let w = World::new().await;
    let state = Arc::new(Mutex::new(KeyState::default()));
    let st = state.clone();
    let root = w.org.root_public();
    w.ks_proxy
        .set_hook(ks_hook(move |peer, mut resp: KsResponse| {
            let mut st = st.lock().unwrap();
            if let Some(ks_response::Body::Logs(logs)) = resp.body.as_ref()
                && let Some(log) = logs.logs.get("bob@chu")
                && let Ok(chain) = verify_log(&root, "bob@chu", &log.entries)
            {
                st.bob_key = Some(*chain.encryption_key());
            }
            if peer.user_id != "bob@chu" {
                return vec![resp];
            }
            if let Some(ks_response::Body::Keys(keys)) = resp.body.as_mut()
                && let Some(asked) = keys.keys.first().cloned()
            {
                if st.first.is_none() {
                    st.first = Some(asked.clone());
                }
                let x = st.first.clone().unwrap();
                match st.lie.take() {
                    None => {}
                    Some(KeyLie::OtherResource) => keys.keys = vec![x],
                    Some(KeyLie::OtherResourceRelabelled) => {
                        keys.keys = vec![WrappedKey {
                            resource_id: asked.resource_id.clone(),
                            ..x
                        }]
                    }
                    Some(KeyLie::Planted) => {
                        let rid = ResourceId::from_slice(&asked.resource_id).unwrap();
                        let pk = st.bob_key.unwrap();
                        assert_eq!(pk.id().as_bytes()[..], asked.recipient_key[..]);
                        let k = ResourceKey::generate(&mut rand::rng());
                        keys.keys =
                            vec![wrap_resource_key(&mut rand::rng(), &k, &rid, &pk).unwrap()];
                    }
                }
            }
            vec![resp]
        }));
    let (alice, mut a_ev, bob, mut b_ev) = two_clinicians(&w).await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-WRAP-X").await;
    assert!(state.lock().unwrap().first.is_some());

    let cases: [(KeyLie, Verdict); 3] = [
        (KeyLie::OtherResource, |e| {
            matches!(e, ClientError::Wrap(WrapError::WrongResource))
        }),
        (KeyLie::OtherResourceRelabelled, |e| {
            matches!(e, ClientError::Wrap(WrapError::Undecryptable))
        }),
        (KeyLie::Planted, |e| {
            matches!(e, ClientError::Open(OpenError::KeyCommitmentMismatch))
        }),
    ];
    for (lie, expected) in cases {
        state.lock().unwrap().lie = Some(lie);
        let rid = alice
            .send_text(conv, &format!("WARD-MAL-WRAP-{lie:?}-EVIL"))
            .await
            .unwrap();
        sent(&mut a_ev, rid).await;
        let (_, sender, reason) = rejected(&mut b_ev).await;
        assert!(state.lock().unwrap().lie.is_none(), "{lie:?} not served");
        assert_eq!(sender, "alice@chu");
        assert!(expected(&reason), "{lie:?}: {reason:?}");
    }
    flows(&alice, &mut a_ev, &mut b_ev, conv, "WARD-MAL-WRAP-Z").await;
    quiet(&mut b_ev, Duration::from_millis(200)).await;
    assert_eq!(
        history(&bob, conv).await,
        vec!["WARD-MAL-WRAP-X", "WARD-MAL-WRAP-Z"]
    );
    w.relay.wait_count("queue", 0).await;
}
