//! Issue 12, "revocation reaches everyone": the keyserver's relay link
//! (SECURITY.md §10.8) through the real relay and keyserver on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ward_core::auth::Audience;
use ward_core::keys::{DeviceEncryptionKey, DeviceSigningKey};
use ward_core::testkit::{KIT_TIME, Org};
use ward_net::{NetError, close};
use ward_proto::v1::ErrorCode;
use ward_tests::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config, wait_close};
use ward_tests::link::{FakeKeyserver, link_to, service_key};
use ward_tests::relay::{Client, Relay, closed, message_id, to};

/// Within "seconds": the link must bring a revocation well inside the
/// SDK's own-log interval (60 s), which it does not rely on here.
const SECONDS: Duration = Duration::from_secs(5);

async fn closed_within(c: Client, d: Duration) -> Option<u16> {
    tokio::time::timeout(d, closed(c.conn))
        .await
        .expect("the relay did not close the revoked device's connection in time")
}

/// A root revocation appended at the keyserver closes the revoked phone's
/// relay connection at once, with no other device of that user online (the
/// tablet it was revoked for never connects to the relay); the relay then
/// refuses the phone's login, even with its old log, and has deleted its
/// mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_revocation_at_the_keyserver_closes_the_device_at_the_relay_at_once() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let key = service_key();
    let ks_db = temp_db_path("revoke-ks");
    let mut ks_config = test_config(&org, &ks_db);
    ks_config.relay_keys = vec![key.public_key()];
    let ks = TestKeyserver::start(ks_config).await;
    let relay = Relay::start_with(org.root_public(), |c| {
        c.keyserver_link = Some(link_to(&ks.url(), key))
    })
    .await;

    // Bob enrolls, and adds a tablet (which stays offline).
    let bob = org.enroll(&mut rng, "bob");
    let mut bob_ks = ward_tests::keyserver::enroll(&ks.url(), &bob).await;
    let tablet = DeviceSigningKey::generate(&mut rng);
    let tablet_enc = DeviceEncryptionKey::generate(&mut rng);
    let add = bob
        .chain
        .add_device(&bob.device, &tablet, &tablet_enc.public_key(), KIT_TIME);
    bob_ks.append(&add).await.unwrap();
    let mut log2 = bob.log.clone();
    log2.push(add);
    let chain2 = bob.chain.update(&org.root_public(), &log2).unwrap();

    // The phone is online at the relay, presenting its creation-only log,
    // and has mail waiting.
    let phone = Client::connect(
        &relay.url(),
        &org.root_public(),
        &bob.device,
        "bob",
        &bob.log,
    )
    .await
    .unwrap();
    let alice = org.enroll(&mut rng, "alice");
    let mut a = Client::of(&relay.url(), &alice, "alice").await;
    a.send_acked(message_id(), vec![to(&bob, "bob")], vec![1; 64])
        .await;
    relay.wait_count("queue", 1).await;

    // The admin's root-signed revocation reaches the keyserver through a
    // courier's session (SECURITY.md §10.2: its signature authorises it).
    let courier = org.enroll(&mut rng, "courier");
    let mut c_ks = ward_tests::keyserver::enroll(&ks.url(), &courier).await;
    let revoke = chain2.revoke_device_as_root(&org.root, &bob.device.public_key(), KIT_TIME + 60);
    c_ks.append(&revoke).await.unwrap();

    assert_eq!(
        closed_within(phone, SECONDS).await,
        Some(close::DEVICE_REVOKED)
    );
    let err = Client::connect(
        &relay.url(),
        &org.root_public(),
        &bob.device,
        "bob",
        &bob.log,
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, NetError::Refused(ErrorCode::DeviceRevoked)),
        "{err:?}"
    );
    relay.wait_count("queue", 0).await;
    drop(ks);
    remove_db(&ks_db);
}

/// The keyserver refuses a relay whose service key it was not configured
/// with (`UNAUTHENTICATED`, close 4001), and accepts the one it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_service_key_is_not_allowed_is_refused() {
    let org = Org::new(&mut rand::rng());
    let allowed = service_key();
    let ks_db = temp_db_path("revoke-ks-refuse");
    let mut ks_config = test_config(&org, &ks_db);
    ks_config.relay_keys = vec![allowed.public_key()];
    let metrics = ks_config.metrics.clone();
    let ks = TestKeyserver::start(ks_config).await;
    let audience = Audience::keyserver(org.root_public(), ward_core::auth::DEFAULT_INSTANCE);

    let stranger = service_key();
    let (mut conn, result) = ward_tests::link::dial(&ks.url(), &audience, &stranger).await;
    assert!(!result.ok);
    assert_eq!(result.error, ErrorCode::Unauthenticated as i32);
    assert_eq!(wait_close(&mut conn).await, Some(close::AUTH_FAILED));
    assert!(
        metrics
            .render()
            .contains("ward_keyserver_relay_link_refused_total 1")
    );

    let (_conn, result) = ward_tests::link::dial(&ks.url(), &audience, &allowed).await;
    assert!(result.ok, "{result:?}");

    // And a real relay with a stranger's key never gets its link up.
    let relay = Relay::start_with(org.root_public(), |c| {
        c.keyserver_link = Some(link_to(&ks.url(), stranger));
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        metrics.render().contains("ward_keyserver_relay_links 1"),
        "only the allowed test link is up"
    );
    drop(relay);
    drop(ks);
    remove_db(&ks_db);
}

/// The relay acts on nothing the link says without verifying it: from a
/// (fake, lying) keyserver, a revocation with a zeroed signature, one signed
/// by another organisation's root, and a log that forks from the relay's are
/// all ignored (the phone stays connected and can log in again); the real
/// root-signed revocation then closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_revocation_from_the_keyserver_link_is_not_acted_upon() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let other = Org::new(&mut rng);
    let fake = FakeKeyserver::start(org.root_public()).await;
    let key = service_key();
    let expected_key = key.public_key();
    let relay = Relay::start_with(org.root_public(), |c| {
        c.keyserver_link = Some(link_to(&fake.url(), key))
    })
    .await;
    let mut link = fake.accept().await;
    assert_eq!(link.relay_key, expected_key);
    assert_eq!(link.cursor, 0, "a fresh relay asks for every log");

    let bob = org.enroll(&mut rng, "bob");
    let mut phone = Client::of(&relay.url(), &bob, "bob").await;
    let revoke =
        bob.chain
            .revoke_device_as_root(&org.root, &bob.device.public_key(), KIT_TIME + 60);

    let mut unsigned = revoke.clone();
    unsigned.signature = vec![0; 64];
    let foreign =
        bob.chain
            .revoke_device_as_root(&other.root, &bob.device.public_key(), KIT_TIME + 60);
    let fork = org.enroll(&mut rng, "bob").log;
    for forged in [
        [bob.log.clone(), vec![unsigned]].concat(),
        [bob.log.clone(), vec![foreign]].concat(),
        fork,
    ] {
        link.notice("bob", forged).await;
    }
    assert!(
        phone
            .next_within(Duration::from_millis(800))
            .await
            .is_none(),
        "the phone stays connected"
    );
    drop(phone);
    let phone = Client::connect(
        &relay.url(),
        &org.root_public(),
        &bob.device,
        "bob",
        &bob.log,
    )
    .await
    .expect("the phone can still log in");

    // The genuine revocation: acted upon at once.
    link.notice("bob", [bob.log.clone(), vec![revoke]].concat())
        .await;
    assert_eq!(
        closed_within(phone, SECONDS).await,
        Some(close::DEVICE_REVOKED)
    );
}

/// After the link drops, the relay dials again with the cursor of the last
/// batch it handled, so the keyserver resends only what changed since; a
/// revocation sent on the new link is acted upon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_resubscribes_from_its_cursor_after_the_link_drops() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let fake = FakeKeyserver::start(org.root_public()).await;
    let relay = Relay::start_with(org.root_public(), |c| {
        c.keyserver_link = Some(link_to(&fake.url(), service_key()))
    })
    .await;
    let mut link = fake.accept().await;
    assert_eq!(link.cursor, 0);
    link.synced(42).await;
    link.close().await;
    let mut link = fake.accept().await;
    assert_eq!(link.cursor, 42, "resumes from the last LinkSynced");

    let bob = org.enroll(&mut rng, "bob");
    let phone = Client::of(&relay.url(), &bob, "bob").await;
    let revoke =
        bob.chain
            .revoke_device_as_root(&org.root, &bob.device.public_key(), KIT_TIME + 60);
    link.notice("bob", [bob.log.clone(), vec![revoke]].concat())
        .await;
    assert_eq!(
        closed_within(phone, SECONDS).await,
        Some(close::DEVICE_REVOKED)
    );
}
