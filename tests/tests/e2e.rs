//! Issue 5's end-to-end scenarios: the real relay and the real keyserver on
//! 127.0.0.1:0, real SDK clients ([`ward_sdk::Client`]) with their own
//! encrypted stores in temporary directories.
// Helpers outside `#[test]` functions may fail the test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use ward_core::ResourceId;
use ward_sdk::store::{Message, Pin, StoreError};
use ward_sdk::{Client, ClientError, Event};
use ward_tests::relay::{TempDir, WAIT};
use ward_tests::world::{PIN, World, pin};

/// Every `tracing` line any test in this binary emits (servers and clients
/// alike), at every level: checked for plaintexts and keys.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_ansi(false)
            .without_time()
            .with_writer(move || Sink(b.clone()))
            .try_init();
        buf
    })
    .clone()
}

/// The shared world (`ward_tests::world`), with this binary's log capture
/// installed first.
async fn world() -> World {
    captured_logs();
    let mut w = World::new().await;
    w.request_timeout = Duration::from_secs(5);
    w
}

async fn world_with(tweak: impl FnOnce(&mut ward_keyserver::Config)) -> World {
    captured_logs();
    let mut w = World::new_with(tweak).await;
    w.request_timeout = Duration::from_secs(5);
    w
}

fn text(m: &Message) -> String {
    String::from_utf8(m.content.to_vec()).unwrap()
}

/// The next `n` messages from `events`; `Sent` events are skipped, anything
/// else fails the test.
async fn messages(events: &mut Receiver<Event>, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} messages", out.len()))
            .expect("event stream closed");
        match ev {
            Event::Message(m) => out.push(m),
            Event::Sent { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    out
}

/// Waits for the `Sent` event of `rid`; messages are returned on the side.
async fn sent(events: &mut Receiver<Event>, rid: ResourceId) -> Vec<Message> {
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("timed out waiting for a SendAck")
            .expect("event stream closed");
        match ev {
            Event::Sent { resource_id } if resource_id == rid => return seen,
            Event::Sent { .. } => {}
            Event::Message(m) => seen.push(m),
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// No further message arrives within `d` (only `Sent` events may).
async fn quiet(events: &mut Receiver<Event>, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return,
            Ok(Some(Event::Sent { .. })) => {}
            Ok(None) => return,
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
        }
    }
}

fn sorted_texts(ms: &[Message]) -> Vec<String> {
    let mut v: Vec<String> = ms.iter().map(text).collect();
    v.sort();
    v
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails if any of `files` contains any of `needles`.
fn assert_absent(files: &[PathBuf], needles: &[Vec<u8>], what: &str) {
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        for n in needles {
            assert!(
                !contains(&bytes, n),
                "{} holds a {what} ({} bytes file)",
                f.display(),
                bytes.len()
            );
        }
    }
}

fn store_files(path: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", ".header"]
        .iter()
        .map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
        })
        .filter(|p| p.exists())
        .collect()
}

/// Done-when 1 and 2: two clinicians, one with two devices, both ways,
/// with each side offline in turn; then neither server's files hold a
/// plaintext or a resource key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clinicians_three_devices_both_ways_and_offline() {
    let w = world().await;
    let mut resource_keys: Vec<[u8; 32]> = Vec::new();
    let mut plaintexts: Vec<String> = Vec::new();

    let mut a1 = w.enroll("alice@chu", "alice-phone").await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let pending = Client::pair_new_device(w.config("alice-tablet"), "alice@chu", pin())
        .await
        .unwrap();
    // Not approved yet: the keyserver does not know this device.
    assert!(pending.complete().await.is_err());
    // The app closes while waiting, and reopens the pending device.
    drop(pending);
    let pending = ward_sdk::PendingDevice::resume(w.config("alice-tablet"), pin())
        .await
        .unwrap();
    a1.approve_device(&pending.device_keys()).await.unwrap();
    let mut a2 = pending.complete().await.unwrap();
    assert_eq!(a2.user_id(), "alice@chu");

    let (mut a1_ev, mut a2_ev, mut bob_ev) = (
        a1.events().unwrap(),
        a2.events().unwrap(),
        bob.events().unwrap(),
    );
    let conv = a1.create_conversation(&["bob@chu"]).await.unwrap();

    // Alice's phone -> Bob; her tablet sees it too.
    let t1 = "WARD-PT-1: patient in bed 12, potassium 6.1 mmol/L".to_owned();
    let r1 = a1.send_text(conv, &t1).await.unwrap();
    plaintexts.push(t1.clone());
    sent(&mut a1_ev, r1).await;
    let got = messages(&mut bob_ev, 1).await;
    assert_eq!(text(&got[0]), t1);
    assert_eq!(got[0].sender_user_id, "alice@chu");
    assert_eq!(got[0].resource_id, r1);
    assert_eq!(got[0].conversation_id, conv);
    let got = messages(&mut a2_ev, 1).await;
    assert_eq!(text(&got[0]), t1);
    assert_eq!(got[0].sender_device, a1.device_id());

    // Bob -> Alice: both of her devices.
    let t2 = "WARD-PT-2: seen, starting insulin-glucose".to_owned();
    let r2 = bob.send_text(conv, &t2).await.unwrap();
    plaintexts.push(t2.clone());
    sent(&mut bob_ev, r2).await;
    assert_eq!(text(&messages(&mut a1_ev, 1).await[0]), t2);
    assert_eq!(text(&messages(&mut a2_ev, 1).await[0]), t2);

    // Bob goes offline; Alice writes from both devices.
    resource_keys.extend(bob.sent_resource_keys());
    drop(bob_ev);
    bob.lock().await;
    let t3 = "WARD-PT-3: repeat ECG at 14:00".to_owned();
    let t4 = "WARD-PT-4: family informed, from the tablet".to_owned();
    let r3 = a1.send_text(conv, &t3).await.unwrap();
    let r4 = a2.send_text(conv, &t4).await.unwrap();
    plaintexts.extend([t3.clone(), t4.clone()]);
    let seen_a1 = sent(&mut a1_ev, r3).await;
    let seen_a2 = sent(&mut a2_ev, r4).await;
    // Each of Alice's devices sees what the other sent.
    let mut rest_a1 = seen_a1;
    if rest_a1.is_empty() {
        rest_a1 = messages(&mut a1_ev, 1).await;
    }
    assert_eq!(sorted_texts(&rest_a1), vec![t4.clone()]);
    let mut rest_a2 = seen_a2;
    if rest_a2.is_empty() {
        rest_a2 = messages(&mut a2_ev, 1).await;
    }
    assert_eq!(sorted_texts(&rest_a2), vec![t3.clone()]);

    // Bob comes back and receives both, each once.
    let mut bob = Client::unlock(w.config("bob-phone"), pin()).await.unwrap();
    let mut bob_ev = bob.events().unwrap();
    let got = messages(&mut bob_ev, 2).await;
    assert_eq!(sorted_texts(&got), {
        let mut v = vec![t3.clone(), t4.clone()];
        v.sort();
        v
    });

    // Now Alice's tablet is offline; Bob writes; the tablet catches up later.
    resource_keys.extend(a2.sent_resource_keys());
    drop(a2_ev);
    a2.lock().await;
    let t5 = "WARD-PT-5: K+ down to 5.2, stopping the infusion".to_owned();
    let r5 = bob.send_text(conv, &t5).await.unwrap();
    plaintexts.push(t5.clone());
    sent(&mut bob_ev, r5).await;
    assert_eq!(text(&messages(&mut a1_ev, 1).await[0]), t5);
    let mut a2 = Client::unlock(w.config("alice-tablet"), pin())
        .await
        .unwrap();
    let mut a2_ev = a2.events().unwrap();
    assert_eq!(text(&messages(&mut a2_ev, 1).await[0]), t5);
    quiet(&mut a2_ev, Duration::from_millis(300)).await;
    quiet(&mut bob_ev, Duration::from_millis(300)).await;

    // Every device holds the whole conversation, once.
    let mut all = plaintexts.clone();
    all.sort();
    for c in [&a1, &a2, &bob] {
        let h = c.history(conv).await.unwrap();
        assert_eq!(sorted_texts(&h), all, "history of {}", c.user_id());
        let convs = c.conversations().await.unwrap();
        assert_eq!(convs.len(), 1);
        assert_eq!(
            convs[0].members,
            vec!["alice@chu".to_owned(), "bob@chu".to_owned()]
        );
    }
    // And nothing is left in any outbox.
    for c in [&a1, &a2, &bob] {
        assert_eq!(c.outbox_len().await.unwrap(), 0);
    }

    // Done-when 2: the servers' files hold no plaintext, no resource key.
    resource_keys.extend(a1.sent_resource_keys());
    resource_keys.extend(a2.sent_resource_keys());
    resource_keys.extend(bob.sent_resource_keys());
    assert_eq!(resource_keys.len(), 5);
    let files = w.server_files();
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with("-wal")));
    let pt: Vec<Vec<u8>> = plaintexts.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Distinctive fragments too, in case a text were stored split.
    let fragments: Vec<Vec<u8>> = plaintexts
        .iter()
        .map(|p| p.as_bytes()[..12].to_vec())
        .collect();
    assert_absent(&files, &pt, "plaintext");
    assert_absent(&files, &fragments, "plaintext fragment");
    let keys: Vec<Vec<u8>> = resource_keys.iter().map(|k| k.to_vec()).collect();
    assert_absent(&files, &keys, "resource key");
    // Nor does any log line, of the servers or the clients.
    let logs = captured_logs().lock().unwrap().clone();
    assert!(contains(&logs, b"relay: connected"), "logs are captured");
    assert!(
        contains(&logs, b"receive: message stored"),
        "debug lines too"
    );
    let logs_dump = std::env::temp_dir().join(format!("ward-e2e-logs-{}", std::process::id()));
    std::fs::write(&logs_dump, &logs).unwrap();
    let hex_keys: Vec<Vec<u8>> = resource_keys
        .iter()
        .map(|k| hex::encode(k).into_bytes())
        .collect();
    let log_file = vec![logs_dump.clone()];
    assert_absent(&log_file, &pt, "plaintext");
    assert_absent(&log_file, &fragments, "plaintext fragment");
    assert_absent(&log_file, &keys, "resource key");
    assert_absent(&log_file, &hex_keys, "hex resource key");
    assert_absent(&log_file, &[PIN.as_bytes().to_vec()], "PIN");
    let _ = std::fs::remove_file(&logs_dump);
    // Sanity: the checker does find what is there.
    let relay_bytes = std::fs::read(&w.relay.db).unwrap();
    assert!(relay_bytes.len() > 1000);

    // The same after the servers shut down (WAL checkpointed into the DBs).
    a1.lock().await;
    a2.lock().await;
    bob.lock().await;
    let mut w = w;
    w.relay.stop().await.unwrap();
    w.keyserver.take().unwrap().stop().await.unwrap();
    let files = w.server_files();
    assert_absent(&files, &pt, "plaintext");
    assert_absent(&files, &keys, "resource key");
}

/// Done-when 4: a wrong PIN is a typed error, the right one restores the
/// history, and the store's files hold no plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_unlock() {
    let w = world().await;
    let alice = w.enroll("alice@chu", "alice-phone").await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let mut bob_ev = bob.events().unwrap();
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    let secret = "WARD-LOCK-PT: HIV status positive, disclose only to Dr Bob";
    alice.send_text(conv, secret).await.unwrap();
    assert_eq!(text(&messages(&mut bob_ev, 1).await[0]), secret);

    // While open (WAL populated), then locked: no plaintext on disk.
    let path = w.config("bob-phone").store_path;
    let needles = vec![secret.as_bytes().to_vec(), b"WARD-LOCK-PT".to_vec()];
    assert_absent(&store_files(&path), &needles, "plaintext");
    drop(bob_ev);
    bob.lock().await;
    assert_absent(&store_files(&path), &needles, "plaintext");

    let wrong = Client::unlock(w.config("bob-phone"), Pin::new("000000".into()).unwrap()).await;
    match wrong {
        Err(ClientError::Store(StoreError::WrongPin { attempts_left })) => {
            assert_eq!(attempts_left, 9)
        }
        other => panic!("expected WrongPin, got {other:?}"),
    }
    let bob = Client::unlock(w.config("bob-phone"), pin()).await.unwrap();
    let h = bob.history(conv).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(text(&h[0]), secret);
    assert_eq!(h[0].sender_user_id, "alice@chu");
    bob.lock().await;
    assert_absent(&store_files(&path), &needles, "plaintext");
}

/// Done-when 5, first way: the relay is unreachable when the message is
/// queued, the app dies, and the restarted client delivers it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_offline_then_restarted_delivers_once() {
    let w = world().await;
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}", l.local_addr().unwrap())
    };
    let mut offline = w.config("alice-phone");
    offline.relay_url = dead;
    let alice = w.enroll_with("alice@chu", offline).await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let mut bob_ev = bob.events().unwrap();
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    let t = "WARD-KILL-1: transfer to ICU approved";
    let rid = alice.send_text(conv, t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.outbox_len().await.unwrap(), 1);
    drop(alice); // killed: no lock, no goodbye

    let mut alice = Client::unlock(w.config("alice-phone"), pin())
        .await
        .unwrap();
    let mut alice_ev = alice.events().unwrap();
    sent(&mut alice_ev, rid).await;
    let got = messages(&mut bob_ev, 1).await;
    assert_eq!((text(&got[0]).as_str(), got[0].resource_id), (t, rid));
    quiet(&mut bob_ev, Duration::from_millis(500)).await;
    assert_eq!(bob.history(conv).await.unwrap().len(), 1);
    assert_eq!(alice.outbox_len().await.unwrap(), 0);
    // The sender's history holds it once too.
    assert_eq!(alice.history(conv).await.unwrap().len(), 1);
}

/// Done-when 5, second way: the app dies right after queueing, while the
/// keys or the envelope may be in flight; the restart re-sends (both
/// servers are idempotent on the ids) and the message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_send_then_restarted_delivers_once() {
    let w = world().await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let mut bob_ev = bob.events().unwrap();
    let alice = w.enroll("alice@chu", "alice-phone").await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    let mut rids = Vec::new();
    for i in 0..3 {
        rids.push(
            alice
                .send_text(conv, &format!("WARD-KILL-2.{i}: round notes"))
                .await
                .unwrap(),
        );
    }
    drop(alice); // killed mid-send
    let mut alice = Client::unlock(w.config("alice-phone"), pin())
        .await
        .unwrap();
    let mut alice_ev = alice.events().unwrap();
    // Whatever was left in the outbox drains.
    let deadline = tokio::time::Instant::now() + WAIT;
    while alice.outbox_len().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = messages(&mut bob_ev, 3).await;
    let mut got_ids: Vec<ResourceId> = got.iter().map(|m| m.resource_id).collect();
    got_ids.sort();
    rids.sort();
    assert_eq!(got_ids, rids);
    quiet(&mut bob_ev, Duration::from_millis(500)).await;
    assert_eq!(bob.history(conv).await.unwrap().len(), 3);
    quiet(&mut alice_ev, Duration::from_millis(100)).await;
}

/// The receive path's verdicts on what a device other than a real sender's
/// hands the relay: each one a typed [`Event::Rejected`], none stored or
/// shown, none blocking the mailbox. (Tampering *servers* are tested
/// through a proxy elsewhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_misaddressed_and_keyless_envelopes_are_rejected() {
    use ward_core::chain::verify_log;
    use ward_core::envelope::{ContentType, SealRequest, seal};
    use ward_core::{ConversationId, OpenError};
    use ward_proto::v1::{Recipient, WrappedKeyFor};
    use ward_tests::keyserver::{KsClient, enroll};
    use ward_tests::relay::{Client as RawRelay, message_id};

    let w = world().await;
    let mut cfg = w.config("bob-phone");
    cfg.key_wait = Duration::from_millis(1500);
    let mut bob = w.enroll_with("bob@chu", cfg).await;
    let mut bob_ev = bob.events().unwrap();
    let mut rng = rand::rng();
    let mallory = w.org.enroll(&mut rng, "mallory@chu");
    let carol = w.org.enroll(&mut rng, "carol@chu");
    let mut m_ks = enroll(&w.ks_url(), &mallory).await;
    enroll(&w.ks_url(), &carol).await;
    let mut m_relay = RawRelay::of(&w.relay.url(), &mallory, "mallory@chu").await;
    let bob_log = m_ks.get_logs(&["bob@chu"]).await.unwrap()["bob@chu"]
        .entries
        .clone();
    let bob_chain = verify_log(&w.org.root_public(), "bob@chu", &bob_log).unwrap();
    let to_bob = || {
        vec![Recipient {
            user_id: "bob@chu".into(),
            device_id: bob.device_id().as_bytes().to_vec(),
        }]
    };
    let conv = ConversationId([3; 16]);
    let seal_as = |from: &ward_core::testkit::Clinician,
                   to: &[&ward_core::chain::VerifiedUser],
                   text: &str| {
        seal(
            &mut rand::rng(),
            &from.device,
            &from.chain,
            &SealRequest {
                conversation_id: conv,
                recipients: to,
                content_type: ContentType::Text,
                content: text.as_bytes(),
                timestamp_ms: 1,
            },
        )
        .unwrap()
    };
    async fn put(ks: &mut KsClient, sealed: &ward_core::envelope::Sealed) {
        let keys = sealed
            .wrapped_keys
            .iter()
            .map(|(u, k)| WrappedKeyFor {
                recipient_user_id: u.clone(),
                key: Some(k.clone()),
            })
            .collect();
        ks.put_keys(keys).await.unwrap();
    }
    async fn rejected(events: &mut Receiver<Event>) -> ClientError {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Rejected { reason, .. } => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    // 1. Carol's envelope handed over by Mallory: the relay's sender is not
    //    the envelope's.
    let s = seal_as(&carol, &[&carol.chain, &bob_chain], "WARD-FORGED-1");
    m_relay.send_acked(message_id(), to_bob(), s.envelope).await;
    assert!(matches!(
        rejected(&mut bob_ev).await,
        ClientError::SenderMismatch
    ));

    // 2. Addressed to other users only.
    let s = seal_as(&mallory, &[&mallory.chain, &carol.chain], "WARD-FORGED-2");
    put(&mut m_ks, &s).await;
    m_relay.send_acked(message_id(), to_bob(), s.envelope).await;
    assert!(matches!(
        rejected(&mut bob_ev).await,
        ClientError::Open(OpenError::NotARecipient)
    ));

    // 3. A flipped ciphertext bit.
    let s = seal_as(&mallory, &[&mallory.chain, &bob_chain], "WARD-FORGED-3");
    put(&mut m_ks, &s).await;
    let mut env = s.envelope.clone();
    let n = env.len();
    env[n - 80] ^= 1; // inside the ciphertext (the signature is the last 64)
    m_relay.send_acked(message_id(), to_bob(), env).await;
    let r = rejected(&mut bob_ev).await;
    assert!(
        matches!(r, ClientError::Open(OpenError::BadSignature)),
        "{r:?}"
    );

    // 4. A key that never reaches the keyserver.
    let s = seal_as(&mallory, &[&mallory.chain, &bob_chain], "WARD-FORGED-4");
    m_relay.send_acked(message_id(), to_bob(), s.envelope).await;
    assert!(matches!(
        rejected(&mut bob_ev).await,
        ClientError::WrappedKeyMissing(_)
    ));

    // 5. A genuine message, then the same envelope again under a new relay
    //    message id: shown once, then a typed replay.
    let s = seal_as(&mallory, &[&mallory.chain, &bob_chain], "WARD-GENUINE-5");
    put(&mut m_ks, &s).await;
    m_relay
        .send_acked(message_id(), to_bob(), s.envelope.clone())
        .await;
    let got = messages(&mut bob_ev, 1).await;
    assert_eq!(text(&got[0]), "WARD-GENUINE-5");
    assert_eq!(got[0].sender_user_id, "mallory@chu");
    m_relay.send_acked(message_id(), to_bob(), s.envelope).await;
    assert!(matches!(
        rejected(&mut bob_ev).await,
        ClientError::Replay { .. }
    ));

    // 6. Keys that arrive after the envelope: the receiver waits for them.
    let s = seal_as(&mallory, &[&mallory.chain, &bob_chain], "WARD-GENUINE-6");
    m_relay
        .send_acked(message_id(), to_bob(), s.envelope.clone())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&mut m_ks, &s).await;
    assert_eq!(text(&messages(&mut bob_ev, 1).await[0]), "WARD-GENUINE-6");

    // Nothing but the genuine messages was stored, and every entry was acked.
    let h = bob.history(conv).await.unwrap();
    assert_eq!(
        sorted_texts(&h),
        vec!["WARD-GENUINE-5".to_owned(), "WARD-GENUINE-6".to_owned()]
    );
    w.relay.wait_count("queue", 0).await;
}

/// The relay goes away and comes back on the same address: both clients
/// reconnect with backoff, the outbox filled meanwhile drains, nothing is
/// lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_reconnects_and_drains_the_outbox() {
    use tokio::sync::oneshot;

    async fn start_relay(
        addr: std::net::SocketAddr,
        db: &Path,
        root: ward_core::keys::SigningPublicKey,
    ) -> (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), ward_relay::RelayError>>,
    ) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ward_relay::run(
            listener,
            ward_tests::relay::test_config(db, root),
            async move {
                let _ = stopped.await;
            },
        ));
        (stop, task)
    }

    let w = world().await;
    let dir = TempDir::new("e2e-relay2");
    let db = dir.path().join("relay.db");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (stop, task) = start_relay(addr, &db, w.org.root_public()).await;
    let config = |name: &str| {
        let mut c = w.config(name);
        c.relay_url = format!("ws://{addr}");
        c
    };
    let mut alice = w.enroll_with("alice@chu", config("alice")).await;
    let mut bob = w.enroll_with("bob@chu", config("bob")).await;
    let (mut a_ev, mut b_ev) = (alice.events().unwrap(), bob.events().unwrap());
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    let r1 = alice.send_text(conv, "WARD-RESTART-1").await.unwrap();
    sent(&mut a_ev, r1).await;
    assert_eq!(text(&messages(&mut b_ev, 1).await[0]), "WARD-RESTART-1");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let r2 = alice.send_text(conv, "WARD-RESTART-2").await.unwrap();
    let r3 = bob.send_text(conv, "WARD-RESTART-3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await; // a few failed reconnects
    assert_eq!(alice.outbox_len().await.unwrap(), 1);
    assert_eq!(bob.outbox_len().await.unwrap(), 1);

    let (_stop, _task) = start_relay(addr, &db, w.org.root_public()).await;
    let got_a = sent(&mut a_ev, r2).await;
    let got_b = sent(&mut b_ev, r3).await;
    let a_msgs = if got_a.is_empty() {
        messages(&mut a_ev, 1).await
    } else {
        got_a
    };
    let b_msgs = if got_b.is_empty() {
        messages(&mut b_ev, 1).await
    } else {
        got_b
    };
    assert_eq!(sorted_texts(&a_msgs), vec!["WARD-RESTART-3".to_owned()]);
    assert_eq!(sorted_texts(&b_msgs), vec!["WARD-RESTART-2".to_owned()]);
    quiet(&mut a_ev, Duration::from_millis(300)).await;
    quiet(&mut b_ev, Duration::from_millis(300)).await;
    for c in [&alice, &bob] {
        assert_eq!(c.history(conv).await.unwrap().len(), 3);
        assert_eq!(c.outbox_len().await.unwrap(), 0);
    }
}

/// A backlog larger than every in-memory queue (the client's channels, the
/// relay's outbound queue, which closes slow readers after 500 ms here)
/// reaches an offline device in full, once each, in the sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_queues_arrives_once_in_order() {
    const N: usize = 300;
    let w = world_with(|c| {
        c.limits.requests_per_second = 100_000;
        c.limits.request_burst = 100_000;
    })
    .await;
    let mut alice = w.enroll("alice@chu", "alice-phone").await;
    let bob = w.enroll("bob@chu", "bob-phone").await;
    bob.lock().await;
    let mut a_ev = alice.events().unwrap();
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    let mut last = None;
    for i in 0..N {
        last = Some(
            alice
                .send_text(conv, &format!("WARD-BACKLOG-{i:04}"))
                .await
                .unwrap(),
        );
    }
    sent(&mut a_ev, last.unwrap()).await;
    assert_eq!(alice.outbox_len().await.unwrap(), 0);

    let mut bob = Client::unlock(w.config("bob-phone"), pin()).await.unwrap();
    let mut b_ev = bob.events().unwrap();
    let mut got = Vec::new();
    while got.len() < N {
        let ev = tokio::time::timeout(Duration::from_secs(60), b_ev.recv())
            .await
            .expect("backlog stalled")
            .unwrap();
        match ev {
            Event::Message(m) => got.push(text(&m)),
            other => panic!("unexpected event {other:?}"),
        }
    }
    let expected: Vec<String> = (0..N).map(|i| format!("WARD-BACKLOG-{i:04}")).collect();
    assert_eq!(got, expected);
    quiet(&mut b_ev, Duration::from_millis(500)).await;
    assert_eq!(bob.history(conv).await.unwrap().len(), N);
    w.relay.wait_count("queue", 0).await;
}

/// A message sealed offline to a key that rotates before it leaves the
/// device: the keyserver refuses the stale wrapped key (`CONFLICT`), the
/// client reseals from the freshly verified log, and the recipient opens it
/// with its new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_while_queued_is_resealed_to_the_new_key() {
    use ward_core::chain::verify_log;
    use ward_core::envelope::ReceivedEnvelope;
    use ward_core::keys::UserEncryptionKey;
    use ward_core::testkit::KIT_TIME;
    use ward_core::wrap::unwrap_resource_key;
    use ward_tests::keyserver::enroll;
    use ward_tests::relay::Client as RawRelay;

    let w = world().await;
    let mut rng = rand::rng();
    let carol = w.org.enroll(&mut rng, "carol@chu");
    let mut c_ks = enroll(&w.ks_url(), &carol).await;
    let alice = w.enroll("alice@chu", "alice-phone").await;
    let conv = alice.create_conversation(&["carol@chu"]).await.unwrap();
    drop(alice);

    // Offline from the keyserver: sealed to Carol's key as verified before.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}", l.local_addr().unwrap())
    };
    let mut offline = w.config("alice-phone");
    offline.keyserver_url = dead;
    let alice = Client::unlock(offline, pin()).await.unwrap();
    let old_rid = alice.send_text(conv, "WARD-RESEAL-1").await.unwrap();
    drop(alice);

    // Carol rotates her key meanwhile.
    let new_key = UserEncryptionKey::generate(&mut rng);
    let rotation = carol
        .chain
        .rotate_user_key(&carol.device, &new_key.public_key(), KIT_TIME + 1);
    c_ks.append(&rotation).await.unwrap();

    let mut alice = Client::unlock(w.config("alice-phone"), pin())
        .await
        .unwrap();
    let mut a_ev = alice.events().unwrap();
    let new_rid = match tokio::time::timeout(WAIT, a_ev.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Event::Resealed { old, new } => {
            assert_eq!(old, old_rid);
            new
        }
        other => panic!("expected a reseal, got {other:?}"),
    };
    assert_ne!(new_rid, old_rid);
    sent(&mut a_ev, new_rid).await;
    let h = alice.history(conv).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].resource_id, new_rid);

    // Carol opens it with the new key.
    let mut c_relay = RawRelay::of(&w.relay.url(), &carol, "carol@chu").await;
    let d = c_relay.deliver().await;
    let env = ReceivedEnvelope::parse(&d.payload).unwrap();
    assert_eq!(env.resource_id(), new_rid);
    let keys = c_ks.get_keys(&[&new_rid.as_bytes()[..]]).await.unwrap();
    let key = unwrap_resource_key(&keys.keys[0], &new_rid, &new_key).unwrap();
    let alice_log = c_ks.get_logs(&["alice@chu"]).await.unwrap()["alice@chu"]
        .entries
        .clone();
    let alice_chain = verify_log(&w.org.root_public(), "alice@chu", &alice_log).unwrap();
    let opened = env.open(&alice_chain, "carol@chu", &key).unwrap();
    assert_eq!(&opened.content[..], b"WARD-RESEAL-1");
}

/// A user rotates its key from one device: the other device fetches and
/// accepts the grant when the first message wrapped to the new key arrives.
/// Then it revokes that other device: the relay disconnects it, senders
/// stop addressing it, and it can no longer send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_reaches_the_other_device_and_revocation_cuts_it_off() {
    let w = world().await;
    let a1 = w.enroll("alice@chu", "alice-phone").await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let pending = Client::pair_new_device(w.config("alice-tablet"), "alice@chu", pin())
        .await
        .unwrap();
    a1.approve_device(&pending.device_keys()).await.unwrap();
    let mut a2 = pending.complete().await.unwrap();
    let mut a1 = a1;
    let (mut a1_ev, mut a2_ev, mut b_ev) = (
        a1.events().unwrap(),
        a2.events().unwrap(),
        bob.events().unwrap(),
    );
    let conv = bob.create_conversation(&["alice@chu"]).await.unwrap();

    a1.rotate_user_key().await.unwrap();
    let r = bob.send_text(conv, "WARD-ROT-1").await.unwrap();
    sent(&mut b_ev, r).await;
    assert_eq!(text(&messages(&mut a1_ev, 1).await[0]), "WARD-ROT-1");
    assert_eq!(text(&messages(&mut a2_ev, 1).await[0]), "WARD-ROT-1");

    a1.revoke_device(&a2.device_id()).await.unwrap();
    let r = bob.send_text(conv, "WARD-ROT-2").await.unwrap();
    sent(&mut b_ev, r).await;
    assert_eq!(text(&messages(&mut a1_ev, 1).await[0]), "WARD-ROT-2");
    match tokio::time::timeout(WAIT, a2_ev.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Event::DeviceRevoked => {}
        other => panic!("expected DeviceRevoked, got {other:?}"),
    }
    // Told, then wiped: the store is gone and the client refuses to work.
    assert!(store_files(&w.config("alice-tablet").store_path).is_empty());
    quiet(&mut a2_ev, Duration::from_millis(300)).await;
    match a2.send_text(conv, "WARD-ROT-3").await {
        Err(ClientError::Closed) => {}
        other => panic!("a revoked device sent: {other:?}"),
    }
    assert!(matches!(a2.history(conv).await, Err(ClientError::Closed)));
    assert_eq!(a1.history(conv).await.unwrap().len(), 2);
    quiet(&mut b_ev, Duration::from_millis(200)).await;
}

/// A lost phone revoked by the organisation (a root-signed revocation that
/// carries no key): the user's remaining device notices on its own, rotates
/// the user key, and hands the relay the new log, which cuts the lost phone
/// off there too. Bob's next message reaches the remaining device only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_revocation_is_followed_by_an_automatic_rotation() {
    use ward_core::chain::verify_log;
    let w = world().await;
    let mut config = w.config("alice-phone");
    config.own_log_interval = Duration::from_millis(200);
    let a1 = w.enroll_with("alice@chu", config).await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let pending = Client::pair_new_device(w.config("alice-lost"), "alice@chu", pin())
        .await
        .unwrap();
    a1.approve_device(&pending.device_keys()).await.unwrap();
    let mut lost = pending.complete().await.unwrap();
    let mut a1 = a1;
    let (mut a1_ev, mut lost_ev, mut b_ev) = (
        a1.events().unwrap(),
        lost.events().unwrap(),
        bob.events().unwrap(),
    );
    let conv = bob.create_conversation(&["alice@chu"]).await.unwrap();

    // The admin's revocation reaches the keyserver through any session
    // (its signatures authorise it, SECURITY.md §10).
    let courier = w.org.enroll(&mut rand::rng(), "courier@chu");
    let mut ks = ward_tests::keyserver::enroll(&w.ks_url(), &courier).await;
    let read = |logs: std::collections::HashMap<String, ward_proto::v1::UserLog>| {
        let entries = logs["alice@chu"].entries.clone();
        verify_log(&w.org.root_public(), "alice@chu", &entries).unwrap()
    };
    let before = read(ks.get_logs(&["alice@chu"]).await.unwrap());
    let key_before = *before.encryption_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let revocation = before.revoke_device_as_root(&w.org.root, &lost.device_id(), now);
    ks.append(&revocation).await.unwrap();

    // The remaining device rotates within a few rounds.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let user = read(ks.get_logs(&["alice@chu"]).await.unwrap());
        if !user.rotation_pending() && user.len() > before.len() + 1 {
            break user;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(after.encryption_key(), &key_before);
    assert!(!after.device(&lost.device_id()).unwrap().is_active());

    // The relay learnt of the revocation from the remaining device.
    match tokio::time::timeout(WAIT, lost_ev.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Event::DeviceRevoked => {}
        other => panic!("expected DeviceRevoked, got {other:?}"),
    }
    let r = bob.send_text(conv, "WARD-AFTER-LOSS").await.unwrap();
    sent(&mut b_ev, r).await;
    assert_eq!(text(&messages(&mut a1_ev, 1).await[0]), "WARD-AFTER-LOSS");
    quiet(&mut lost_ev, Duration::from_millis(300)).await;
    assert!(lost.history(conv).await.is_err());
    assert!(store_files(&w.config("alice-lost").store_path).is_empty());
}

/// Done-when 5: the organisation revokes a lost phone (root-signed, through
/// the keyserver) while the user's only other device is offline: the relay
/// learns it over the keyserver's relay link, closes the phone's connection
/// within seconds, and the phone's app is told and wiped. The phone's own
/// log watcher is set to an hour, so nothing but the link can have told it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_revocation_reaches_a_lost_phone_with_no_other_device_online() {
    let w = world().await;
    let tablet = w.enroll("alice@chu", "alice-tablet").await;
    let mut config = w.config("alice-lost");
    config.own_log_interval = Duration::from_secs(3600);
    let store_path = config.store_path.clone();
    let pending = Client::pair_new_device(config, "alice@chu", pin())
        .await
        .unwrap();
    tablet.approve_device(&pending.device_keys()).await.unwrap();
    let mut lost = pending.complete().await.unwrap();
    let mut lost_ev = lost.events().unwrap();
    let lost_id = lost.device_id();
    // The tablet goes offline; the phone is online at the relay.
    tablet.lock().await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let mut b_ev = bob.events().unwrap();
    let conv = bob.create_conversation(&["alice@chu"]).await.unwrap();
    let r = bob.send_text(conv, "WARD-BEFORE-LOSS").await.unwrap();
    sent(&mut b_ev, r).await;
    assert_eq!(
        text(&messages(&mut lost_ev, 1).await[0]),
        "WARD-BEFORE-LOSS"
    );
    assert!(!store_files(&store_path).is_empty());

    let courier = w.org.enroll(&mut rand::rng(), "courier@chu");
    let mut ks = ward_tests::keyserver::enroll(&w.ks_url(), &courier).await;
    let entries = ks.get_logs(&["alice@chu"]).await.unwrap()["alice@chu"]
        .entries
        .clone();
    let alice = ward_core::chain::verify_log(&w.org.root_public(), "alice@chu", &entries).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ks.append(&alice.revoke_device_as_root(&w.org.root, &lost_id, now))
        .await
        .unwrap();
    let revoked_at = tokio::time::Instant::now();

    match tokio::time::timeout(Duration::from_secs(5), lost_ev.recv())
        .await
        .expect("the lost phone was not told within 5 s")
        .unwrap()
    {
        Event::DeviceRevoked => {}
        other => panic!("expected DeviceRevoked, got {other:?}"),
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    assert!(store_files(&store_path).is_empty(), "the store is wiped");
    assert!(lost.history(conv).await.is_err());
    // Nothing more from it; it does not reconnect.
    quiet(&mut lost_ev, Duration::from_millis(500)).await;
}

/// `Client::devices`: the user's devices from its freshly verified log, in
/// the order they were added, this one marked; a revocation from the other
/// device shows there at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_lists_this_users_devices_and_a_revocation() {
    let w = world().await;
    let a1 = w.enroll("alice@chu", "alice-phone").await;
    let pending = Client::pair_new_device(w.config("alice-tablet"), "alice@chu", pin())
        .await
        .unwrap();
    a1.approve_device(&pending.device_keys()).await.unwrap();
    let tablet = pending.complete().await.unwrap();
    let list = a1.devices().await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list[0].this_device && list[0].active);
    assert_eq!(list[1].device_id, tablet.device_id());
    assert!(!list[1].this_device && list[1].active);
    let from_tablet = tablet.devices().await.unwrap();
    assert!(from_tablet[1].this_device && !from_tablet[0].this_device);

    a1.revoke_device(&tablet.device_id()).await.unwrap();
    let list = a1.devices().await.unwrap();
    assert!(list[0].active && !list[1].active, "{list:?}");
    a1.lock().await;
    tablet.lock().await;
}
