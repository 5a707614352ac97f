//! Issue 9's leftover: a long-lived user whose log no longer fits the
//! relay's pre-login frame limit still logs in (SECURITY.md §9). Real SDK
//! clients, the real keyserver and real relays on 127.0.0.1:0; the relays'
//! pre-login limit is lowered to 24 KiB so that a log of some twenty
//! entries outgrows it (256 KiB, the default, holds some 180).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use ward_proto::Message as _;
use ward_proto::v1::GetLogs;
use ward_sdk::store::{KdfParams, Pin};
use ward_sdk::{Client, ClientConfig, Event};
use ward_tests::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config};
use ward_tests::link::{link_to, service_key};
use ward_tests::relay::{Relay, TempDir, WAIT};

const PIN: &str = "ward-pin-493817";
/// The relays' pre-login frame limit in this test.
const PREAUTH: usize = 24 << 10;

fn config(
    dir: &TempDir,
    name: &str,
    relay: &str,
    keyserver: &str,
    root: ward_core::keys::SigningPublicKey,
) -> ClientConfig {
    let mut c = ClientConfig::new(
        dir.path().join(format!("{name}.db")),
        relay,
        keyserver,
        root,
    );
    c.store_options.kdf = KdfParams {
        m_cost_kib: 8 * 1024,
        t_cost: 1,
        p_cost: 1,
    };
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c.request_timeout = Duration::from_secs(5);
    c
}

async fn received(events: &mut Receiver<Event>) -> String {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("no message in time")
            .expect("event stream closed");
        match ev {
            Event::Message(m) => return String::from_utf8(m.content.to_vec()).unwrap(),
            // A fresh relay numbers from 1 again: said so, then delivered.
            Event::Sent { .. } | Event::RelayCursorRegressed { .. } => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The size of `user`'s whole log as a device would present it.
async fn log_bytes(ks_url: &str, org: &ward_core::testkit::Org, user: &str) -> usize {
    let courier = org.enroll(&mut rand::rng(), "courier");
    let mut ks = ward_tests::keyserver::enroll(ks_url, &courier).await;
    let logs = ks
        .call(ward_proto::v1::ks_request::Body::GetLogs(GetLogs {
            user_ids: vec![user.into()],
        }))
        .await
        .unwrap();
    let ward_proto::v1::ks_response::Body::Logs(logs) = logs else {
        panic!("get_logs answered {logs:?}");
    };
    logs.logs[user].encoded_len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_log_outgrows_the_pre_login_limit_still_logs_in() {
    let mut rng = rand::rng();
    let org = ward_core::testkit::Org::new(&mut rng);
    let root = org.root_public();
    let key = service_key();
    let ks_db: PathBuf = temp_db_path("long-log-ks");
    // The keyserver's clock stays at the testkit's time, so that the
    // courier's testkit invite is valid whatever the date.
    let mut ks_config = test_config(&org, &ks_db);
    ks_config.relay_keys = vec![key.public_key()];
    let ks = TestKeyserver::start(ks_config).await;
    let relay = Relay::start_with(root, |c| c.limits.net.max_preauth_frame_bytes = PREAUTH).await;
    let dir = TempDir::new("long-log-clients");

    let enroll = |name: &'static str, relay_url: String| {
        let (invite, delegation) = ward_tests::invite(&org, name);
        let c = config(&dir, name, &relay_url, &ks.url(), root);
        async move {
            Client::enroll(c, &invite, &delegation, Pin::new(PIN.into()).unwrap())
                .await
                .expect("enroll")
        }
    };
    let mut alice = enroll("alice", relay.url()).await;
    let bob = enroll("bob", relay.url()).await;

    // Years of key changes: each rotation is an entry of about 1.4 KB.
    for _ in 0..20 {
        alice.rotate_user_key().await.unwrap();
    }
    let whole = log_bytes(&ks.url(), &org, "alice").await;
    assert!(
        whole > PREAUTH,
        "the log ({whole} bytes) must not fit a pre-login frame ({PREAUTH})"
    );

    // A new connection to the relay that holds her log (she published it
    // after each rotation): she presents only its end, and logs in.
    drop(alice.events());
    alice.lock().await;
    let mut alice = Client::unlock(
        config(&dir, "alice", &relay.url(), &ks.url(), root),
        Pin::new(PIN.into()).unwrap(),
    )
    .await
    .unwrap();
    let mut inbox = alice.events().unwrap();
    let conv = bob.create_conversation(&["alice"]).await.unwrap();
    bob.send_text(conv, "after twenty rotations").await.unwrap();
    assert_eq!(received(&mut inbox).await, "after twenty rotations");

    // A relay that never saw her (a new deployment, a database reset) but
    // follows the keyserver's link: it learns her log from the keyserver,
    // and her login with the end of it succeeds too.
    let fresh = Relay::start_with(root, |c| {
        c.limits.net.max_preauth_frame_bytes = PREAUTH;
        c.keyserver_link = Some(link_to(&ks.url(), key));
    })
    .await;
    drop(inbox);
    alice.lock().await;
    bob.lock().await;
    let mut alice = Client::unlock(
        config(&dir, "alice", &fresh.url(), &ks.url(), root),
        Pin::new(PIN.into()).unwrap(),
    )
    .await
    .unwrap();
    let mut inbox = alice.events().unwrap();
    let bob = Client::unlock(
        config(&dir, "bob", &fresh.url(), &ks.url(), root),
        Pin::new(PIN.into()).unwrap(),
    )
    .await
    .unwrap();
    bob.send_text(conv, "through a relay that never saw her")
        .await
        .unwrap();
    assert_eq!(
        received(&mut inbox).await,
        "through a relay that never saw her"
    );
    drop(ks);
    remove_db(&ks_db);
}

/// A log that grew by `n` key rotations after its creation.
fn grown(org: &ward_core::testkit::Org, user: &str, n: usize) -> ward_core::testkit::Clinician {
    let mut rng = rand::rng();
    let mut c = org.enroll(&mut rng, user);
    for _ in 0..n {
        let key = ward_core::keys::UserEncryptionKey::generate(&mut rng).public_key();
        let e = c
            .chain
            .rotate_user_key(&c.device, &key, ward_core::testkit::KIT_TIME);
        c.chain.apply(&org.root_public(), &e).unwrap();
        c.log.push(e);
    }
    c
}

/// A relay that does not hold a user's log, shown only its end at a login,
/// asks the keyserver's link for the log (`LinkFetch`), verifies the notice
/// that answers, and lets the device in; with no answer, the login is
/// refused `UNKNOWN_USER` (the SDK then presents its whole log), and an
/// answer that does not verify lets nobody in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_lacking_a_log_fetches_it_over_the_keyserver_link() {
    use ward_tests::link::FakeKeyserver;
    use ward_tests::relay::Client as RawClient;
    let org = ward_core::testkit::Org::new(&mut rand::rng());
    let root = org.root_public();
    let fake = FakeKeyserver::start(root).await;
    let relay = Relay::start_with(root, |c| {
        c.keyserver_link = Some(link_to(&fake.url(), service_key()));
    })
    .await;
    let mut link = fake.accept().await;
    link.synced(0).await;

    let bob = grown(&org, "bob", 3);
    let bob_log = bob.log.clone();
    let url = relay.url();
    let login = tokio::spawn(async move {
        RawClient::connect(&url, &root, &bob.device, "bob", &bob.log[3..]).await
    });
    let fetch = link.next_fetch().await;
    assert_eq!(fetch.user_ids, ["bob"]);
    link.notice("bob", bob_log).await;
    assert!(login.await.unwrap().is_ok(), "the end of the log sufficed");

    // No answer: refused UNKNOWN_USER once the wait is over.
    let carol = grown(&org, "carol", 2);
    let err = RawClient::connect(&relay.url(), &root, &carol.device, "carol", &carol.log[2..])
        .await
        .err()
        .expect("carol's log is nowhere at the relay");
    assert!(
        matches!(
            err,
            ward_net::NetError::Refused(ward_proto::v1::ErrorCode::UnknownUser)
        ),
        "{err:?}"
    );
    assert_eq!(link.next_fetch().await.user_ids, ["carol"]);

    // An answer from a keyserver of another organisation does not verify.
    let other = ward_core::testkit::Org::new(&mut rand::rng());
    let dave_elsewhere = grown(&other, "dave", 2);
    let dave = grown(&org, "dave", 2);
    let url = relay.url();
    let login = tokio::spawn(async move {
        RawClient::connect(&url, &root, &dave.device, "dave", &dave.log[2..]).await
    });
    assert_eq!(link.next_fetch().await.user_ids, ["dave"]);
    link.notice("dave", dave_elsewhere.log.clone()).await;
    assert!(login.await.unwrap().is_err());
}

/// The real keyserver answers a relay's `LinkFetch` with the whole stored
/// log of each user it has, in a notice, whatever the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyserver_answers_a_link_fetch_with_the_stored_log() {
    use ward_proto::v1::{LinkFetch, LinkFrame, LinkSubscribe, link_frame};
    let org = ward_core::testkit::Org::new(&mut rand::rng());
    let key = service_key();
    let ks_db = temp_db_path("long-log-fetch");
    let mut ks_config = test_config(&org, &ks_db);
    ks_config.relay_keys = vec![key.public_key()];
    let ks = TestKeyserver::start(ks_config).await;
    let alice = grown(&org, "alice", 2);
    let mut a = ward_tests::keyserver::enroll(&ks.url(), &alice).await;
    for e in &alice.log[1..] {
        a.append(e).await.unwrap();
    }
    let audience =
        ward_core::auth::Audience::keyserver(org.root_public(), ward_core::auth::DEFAULT_INSTANCE);
    let (mut conn, result) = ward_tests::link::dial(&ks.url(), &audience, &key).await;
    assert!(result.ok);
    // Subscribed past every change: only the fetch's answer comes.
    conn.send_msg(&LinkSubscribe {
        cursor: i64::MAX as u64,
        room_cursor: i64::MAX as u64,
    })
    .await
    .unwrap();
    conn.send_msg(&LinkFetch {
        user_ids: vec!["nobody".into(), "alice".into()],
    })
    .await
    .unwrap();
    loop {
        let frame: LinkFrame = tokio::time::timeout(WAIT, conn.recv_msg())
            .await
            .expect("no answer in time")
            .unwrap()
            .unwrap();
        match frame.frame {
            Some(link_frame::Frame::Notice(n)) => {
                assert_eq!(n.user_id, "alice");
                assert_eq!(n.entries, alice.log);
                break;
            }
            Some(link_frame::Frame::Synced(_)) => {}
            None => panic!("empty frame"),
        }
    }
    drop(ks);
    remove_db(&ks_db);
}
