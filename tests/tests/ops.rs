//! What an IT team relies on (issue 12): the admin listener's `/metrics`
//! scraped during a load run and parsed by a Prometheus parser, `/readyz`
//! false until the database is open and migrated, an online backup taken
//! under load that restores to a relay delivering every message acked
//! before it, and TLS refusals seen through the SDK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use ward_core::testkit::Org;
use ward_net::tls::dev_ca::{DevPki, LOOPBACK_NAMES};
use ward_net::{NetError, tls::TlsError};
use ward_ops::metrics::Registry;
use ward_proto::v1::server_frame;
use ward_sdk::{Client, ClientConfig, ClientError};
use ward_tests::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config};
use ward_tests::relay::{Client as RelayClient, Relay, TempDir, message_id, seal, to};

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let (status, body) = ward_ops::admin::get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.last().map(|b| b.count).unwrap_or(0.0),
            Value::Summary(_) => 0.0,
        })
        .next()
        .unwrap_or_else(|| panic!("{name} {label:?} not in the scrape"))
}

async fn wait_ready(addr: std::net::SocketAddr) {
    for _ in 0..200 {
        if ward_ops::admin::get(addr, "/readyz").await.unwrap().0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_during_a_load_run_parse_and_count_the_traffic() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let registry = Registry::new();
    let admin = ward_ops::admin::spawn("127.0.0.1:0", registry.clone(), std::future::pending())
        .await
        .unwrap();
    // Before the relay opened its database: alive, not ready.
    assert_eq!(
        ward_ops::admin::get(admin, "/healthz").await.unwrap().0,
        200
    );
    assert_eq!(ward_ops::admin::get(admin, "/readyz").await.unwrap().0, 503);

    let reg = registry.clone();
    let mut relay = Relay::start_with(org.root_public(), move |c| c.metrics = reg).await;
    wait_ready(admin).await;
    let url = relay.url();

    const SENDERS: usize = 4;
    const EACH: usize = 40;
    let bob = org.enroll(&mut rng, "bob");
    let mut bob_conn = RelayClient::of(&url, &bob, "bob").await;
    let mut load = Vec::new();
    for i in 0..SENDERS {
        let who = org.enroll(&mut rng, &format!("sender{i}"));
        let url = url.clone();
        let bob_chain = bob.chain.clone();
        let bob_to = to(&bob, "bob");
        load.push(tokio::spawn(async move {
            let mut c = RelayClient::of(&url, &who, &format!("sender{i}")).await;
            for n in 0..EACH {
                let payload = seal(&who, &[&bob_chain], &format!("load {i} {n}"));
                c.send_acked(message_id(), vec![bob_to.clone()], payload)
                    .await;
            }
            c
        }));
    }
    // Scraped mid-run, while the senders are connected.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = scrape(admin).await;
    assert!(value(&during, "ward_relay_connections", None) >= 1.0);
    let mut senders = Vec::new();
    for l in load {
        senders.push(l.await.unwrap());
    }
    // Bob reads everything.
    let mut seen = 0;
    while seen < SENDERS * EACH {
        let d = bob_conn.deliver().await;
        seen += 1;
        if seen % 32 == 0 || seen == SENDERS * EACH {
            bob_conn.ack(d.seq).await;
        }
    }
    // A text frame is a rejection with its close code (1003).
    let mut rogue = ward_tests::relay::raw(&url).await.into_inner();
    use futures_util::SinkExt;
    rogue
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "hello".into(),
        ))
        .await
        .unwrap();
    let _ = ward_tests::relay::closed(ward_net::Conn::from_ws(rogue, &Default::default())).await;

    // The rogue's server task ends just after its close frame reaches us,
    // and a delivery is counted once its write returned, which can be after
    // bob read it (seen under load in CI): wait for both (bounded) before
    // reading the rest.
    let total = (SENDERS * EACH) as f64;
    let mut after = scrape(admin).await;
    for _ in 0..100 {
        if value(&after, "ward_relay_connections", None) == (SENDERS + 1) as f64
            && value(&after, "ward_relay_messages_out_total", None) >= total
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(admin).await;
    }
    assert_eq!(value(&after, "ward_relay_messages_in_total", None), total);
    assert!(value(&after, "ward_relay_messages_out_total", None) >= total);
    assert_eq!(
        value(&after, "ward_relay_connections", None),
        (SENDERS + 1) as f64,
        "the senders and bob are still connected; the rogue is gone"
    );
    let commits = value(&after, "ward_relay_fsync_seconds", None);
    assert!(commits >= 1.0 && commits <= total + 64.0, "{commits}");
    assert!(value(&after, "ward_relay_commit_batch_size", None) >= 1.0);
    assert!(value(&after, "ward_relay_closes_total", Some(("code", "1003"))) >= 1.0);
    assert!(value(&after, "ward_relay_writer_queue_depth", None) >= 0.0);
    assert_eq!(
        value(&after, "ward_relay_outbound_bytes_queued", None),
        0.0,
        "bob has read everything"
    );
    drop(senders);
    drop(bob_conn);
    relay.stop().await.unwrap();
    assert_eq!(ward_ops::admin::get(admin, "/readyz").await.unwrap().0, 503);
}

#[tokio::test]
async fn keyserver_metrics_count_requests_by_kind_and_access_log_rows() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("ops-ks");
    let mut config = test_config(&org, &db);
    let registry = Registry::new();
    config.metrics = registry.clone();
    let admin = ward_ops::admin::spawn("127.0.0.1:0", registry.clone(), std::future::pending())
        .await
        .unwrap();
    let ks = TestKeyserver::start(config).await;
    wait_ready(admin).await;
    let alice = org.enroll(&mut rng, "alice");
    let mut c = ward_tests::keyserver::enroll(&ks.url(), &alice).await;
    c.get_logs(&["alice"]).await.unwrap();
    let missing = [9u8; 16];
    let keys = c.get_keys(&[&missing]).await.unwrap();
    assert!(keys.keys.is_empty());
    let s = scrape(admin).await;
    assert_eq!(
        value(
            &s,
            "ward_keyserver_requests_total",
            Some(("kind", "append"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "ward_keyserver_requests_total",
            Some(("kind", "get_logs"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "ward_keyserver_requests_total",
            Some(("kind", "get_keys"))
        ),
        1.0
    );
    assert_eq!(value(&s, "ward_keyserver_access_log_rows_total", None), 0.0);
    assert_eq!(value(&s, "ward_keyserver_connections", None), 1.0);
    drop(c);
    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_message_acked_before_it() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let mut relay = Relay::start(org.root_public()).await;
    let url = relay.url();
    let alice = Arc::new(org.enroll(&mut rng, "alice"));
    let bob = org.enroll(&mut rng, "bob");
    let acked: Arc<Mutex<Vec<[u8; 16]>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (acked, stop, url, alice) = (acked.clone(), stop.clone(), url.clone(), alice.clone());
        let (bob_chain, bob_to) = (bob.chain.clone(), to(&bob, "bob"));
        tokio::spawn(async move {
            let mut c = RelayClient::of(&url, &alice, "alice").await;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = message_id();
                let payload = seal(&alice, &[&bob_chain], &format!("before or after {n}"));
                c.send_acked(id, vec![bob_to.clone()], payload).await;
                acked.lock().unwrap().push(id);
                n += 1;
            }
            n
        })
    };
    while acked.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Everything acked so far must survive; the backup runs while sends go on.
    let before: HashSet<[u8; 16]> = acked.lock().unwrap().iter().copied().collect();
    let dir = TempDir::new("ops-backup");
    let backup = dir.path().join("relay-backup.db");
    let (src, dst) = (relay.db.clone(), backup.clone());
    let stats = tokio::task::spawn_blocking(move || ward_ops::backup::online(&src, &dst))
        .await
        .unwrap()
        .unwrap();
    assert!(stats.pages > 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.await.unwrap();
    assert!(sent > before.len(), "sends went on during the backup");
    relay.stop().await.unwrap();

    // The highest seq the original relay issued to bob.
    let issued: i64 = rusqlite::Connection::open(&relay.db)
        .unwrap()
        .query_row("SELECT max(next_seq) - 1 FROM mailboxes", [], |r| r.get(0))
        .unwrap();

    // Restore (what `ward-relay restore` runs): the backup becomes the
    // database of a new relay.
    let restored_db = dir.path().join("restored.db");
    ward_ops::backup::restore(&backup, &restored_db).unwrap();
    ward_relay::storage::after_restore(&mut ward_relay::storage::open(&restored_db).unwrap())
        .unwrap();
    assert!(matches!(
        ward_ops::backup::restore(&backup, &restored_db),
        Err(ward_ops::backup::BackupError::Exists(_))
    ));
    let db = restored_db.clone();
    let mut restored = Relay::start_with(org.root_public(), move |c| c.db_path = db).await;
    let mut bob_conn = RelayClient::of(&restored.url(), &bob, "bob").await;
    let mut delivered = HashSet::new();
    while let Some(f) = bob_conn.next_within(Duration::from_secs(2)).await {
        if let server_frame::Frame::Deliver(d) = f {
            delivered.insert(<[u8; 16]>::try_from(d.message_id.as_slice()).unwrap());
            bob_conn.ack(d.seq).await;
        }
    }
    let lost: Vec<_> = before.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} acked messages lost of {}",
        lost.len(),
        before.len()
    );
    // A message sent after the restore gets a seq above any issued before
    // it, so a device whose cursor went past the backup does not skip it.
    let mut alice_conn = RelayClient::of(&restored.url(), &alice, "alice").await;
    let payload = seal(&alice, &[&bob.chain], "after the restore");
    alice_conn
        .send_acked(message_id(), vec![to(&bob, "bob")], payload)
        .await;
    let d = bob_conn.deliver().await;
    assert!(
        d.seq as i64 > issued,
        "seq {} after the restore, {issued} issued before",
        d.seq
    );
    drop(alice_conn);
    drop(bob_conn);
    restored.stop().await.unwrap();
}

#[tokio::test]
async fn the_sdk_refuses_an_untrusted_server_and_a_plain_url_to_tls_at_once() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let pki = DevPki::mint("deployment CA", LOOPBACK_NAMES).unwrap();
    let db = temp_db_path("ops-tls-ks");
    let mut config = test_config(&org, &db);
    config.clock = ward_keyserver::Clock::system();
    config.tls = ward_net::tls::Acceptor::Tls(pki.server().unwrap());
    let ks = TestKeyserver::start(config).await;
    let dir = TempDir::new("ops-tls-clients");
    let (invite, delegation) = ward_tests::invite(&org, "alice");
    let port = ks.addr.port();
    let attempt = |url: String, tls: ward_net::tls::ClientTls, name: &str| {
        let mut c = ClientConfig::new(
            dir.path().join(format!("{name}.db")),
            "wss://127.0.0.1:1",
            url,
            org.root_public(),
        );
        c.tls = tls;
        c.store_options.kdf = ward_sdk::store::KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
        };
        let (invite, delegation) = (invite.clone(), delegation.clone());
        async move {
            let started = std::time::Instant::now();
            let r = Client::enroll(
                c,
                &invite,
                &delegation,
                ward_sdk::store::Pin::new("123456".into()).unwrap(),
            )
            .await;
            (r.err(), started.elapsed())
        }
    };
    // Another CA: refused, typed, at once (not after retries or a timeout).
    let other = DevPki::mint("someone else", LOOPBACK_NAMES).unwrap();
    let (err, took) = attempt(
        format!("wss://127.0.0.1:{port}"),
        other.client().unwrap(),
        "a",
    )
    .await;
    assert!(
        matches!(
            err,
            Some(ClientError::Net(NetError::Tls(
                TlsError::UntrustedCertificate(_)
            )))
        ),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // ws:// to the TLS listener: told to use wss://.
    let (err, _) = attempt(format!("ws://127.0.0.1:{port}"), pki.client().unwrap(), "b").await;
    assert!(
        matches!(
            err,
            Some(ClientError::Net(NetError::Tls(
                TlsError::ServerRequiresTls(_)
            )))
        ),
        "{err:?}"
    );
    // The deployment's CA pinned: enrolled over TLS.
    let (err, _) = attempt(
        format!("wss://localhost:{port}"),
        pki.client().unwrap(),
        "c",
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    ks.stop().await.unwrap();
    remove_db(&db);
}
