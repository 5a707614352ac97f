//! Issue 8, done-when 3, the chain and handshake findings: each attack
//! through the real relay and keyserver on 127.0.0.1:0, refused with its
//! typed error. Where a server must lie, a tampering proxy
//! ([`ward_tests::proxy`]) sits in front of the real keyserver and real SDK
//! clients talk to it; where an honest server refuses, the test talks to it
//! directly.
// Helpers outside `#[test]` functions may fail the test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use ward_core::auth::{Audience, DEFAULT_INSTANCE};
use ward_core::chain::{KEY_IS_ROOT, verify_log};
use ward_core::keys::{DeviceEncryptionKey, DeviceSigningKey, UserEncryptionKey};
use ward_core::testkit::{Clinician, KIT_TIME, Org};
use ward_core::{AuthError, ChainError, ConversationId};
use ward_keyserver::Clock;
use ward_net::{NetError, close};
use ward_proto::v1::{
    AuthChallenge, AuthResult, ErrorCode, KsResponse, SignedStatement, ks_response,
};
use ward_sdk::store::{KdfParams, Pin};
use ward_sdk::{Client, ClientConfig, ClientError, Event};
use ward_tests::keyserver::{
    CallError, KsClient, TestKeyserver, remove_db, temp_db_path, test_config,
};
use ward_tests::proxy::{Proxy, ks_hook};
use ward_tests::relay::{Relay, TempDir, WAIT};

const PIN: &str = "ward-pin-493817";

/// An organisation, its two real servers, a tampering proxy in front of the
/// keyserver, and a directory for device stores.
struct World {
    org: Org,
    relay: Relay,
    keyserver: TestKeyserver,
    ks_proxy: Proxy,
    ks_db: PathBuf,
    dir: TempDir,
}

impl World {
    async fn new() -> Self {
        let org = Org::new(&mut rand::rng());
        let relay = Relay::start(org.root_public()).await;
        let ks_db = temp_db_path("v2-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        let keyserver = TestKeyserver::start(config).await;
        let ks_proxy = Proxy::start(keyserver.url()).await;
        Self {
            org,
            relay,
            keyserver,
            ks_proxy,
            ks_db,
            dir: TempDir::new("v2-clients"),
        }
    }

    fn config(&self, name: &str) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.dir.path().join(format!("{name}.db")),
            self.relay.url(),
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

    /// A clinician whose device keys the test holds, enrolled at the real
    /// keyserver, with a second device added: entries 0 and 1.
    async fn carol(&self) -> (Clinician, DeviceSigningKey, Vec<SignedStatement>, KsClient) {
        let mut rng = rand::rng();
        let carol = self.org.enroll(&mut rng, "carol@chu");
        let mut ks = ward_tests::keyserver::enroll(&self.keyserver.url(), &carol).await;
        let tablet = DeviceSigningKey::generate(&mut rng);
        let tablet_enc = DeviceEncryptionKey::generate(&mut rng).public_key();
        let add = carol
            .chain
            .add_device(&carol.device, &tablet, &tablet_enc, KIT_TIME);
        assert_eq!(ks.append(&add).await.unwrap(), 1);
        let log = vec![carol.log[0].clone(), add];
        (carol, tablet, log, ks)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        remove_db(&self.ks_db);
    }
}

type LogEdit = Box<dyn FnMut(Vec<SignedStatement>) -> Vec<SignedStatement> + Send>;

/// The keyserver lies about one user's log when serving it to another.
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
                && let Some(log) = logs.logs.get_mut(target.as_str())
            {
                log.entries = edit(std::mem::take(&mut log.entries));
            }
            vec![resp]
        }));
        attack
    }

    fn set(
        &self,
        victim: &str,
        target: &str,
        edit: impl FnMut(Vec<SignedStatement>) -> Vec<SignedStatement> + Send + 'static,
    ) {
        *self.0.lock().unwrap() = Some((victim.into(), target.into(), Box::new(edit)));
    }

    fn clear(&self) {
        *self.0.lock().unwrap() = None;
    }
}

fn expect_chain<T: std::fmt::Debug>(r: Result<T, ClientError>, user: &str) -> ChainError {
    match r {
        Err(ClientError::Chain { user_id, error }) => {
            assert_eq!(user_id, user);
            error
        }
        other => panic!("expected a chain error, got {other:?}"),
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, CallError>) -> ErrorCode {
    match r {
        Err(CallError::Refused(code, _)) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn message_text(events: &mut Receiver<Event>) -> String {
    loop {
        let e = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("no event in time")
            .expect("event stream closed");
        match e {
            Event::Message(m) => return String::from_utf8(m.content.to_vec()).unwrap(),
            Event::Sent { .. } => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Alice has verified Carol's log (2 entries), so the keyserver's lies
/// about it are checked against that.
async fn alice_knows_carol(w: &World) -> (Client, ConversationId) {
    let alice = w.enroll("alice@chu").await;
    let conv = alice.create_conversation(&["carol@chu"]).await.unwrap();
    (alice, conv)
}

/// Item 1: a device revoking itself may not choose the next user key. The
/// real keyserver refuses the entry; a keyserver that serves it anyway is
/// refused by the client with the normative reason, and nothing is wrapped
/// to the key the revoked device chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_revocation_carrying_a_key_is_refused() {
    let w = World::new().await;
    let attack = LogAttack::install(&w.ks_proxy);
    let (carol, tablet, log, mut ks) = w.carol().await;
    let state = verify_log(&w.org.root_public(), "carol@chu", &log).unwrap();
    let thief_key = UserEncryptionKey::generate(&mut rand::rng()).public_key();
    let bad = state.revoke_device(&tablet, &tablet.public_key(), &thief_key, KIT_TIME);
    assert_eq!(refused(ks.append(&bad).await), ErrorCode::InvalidStatement);

    let (alice, conv) = alice_knows_carol(&w).await;
    attack.set("alice@chu", "carol@chu", move |mut l| {
        l.push(bad.clone());
        l
    });
    let r = alice.send_text(conv, "WARD-V2-SELF-REVOKE").await;
    assert_eq!(
        expect_chain(r, "carol@chu"),
        ChainError::InvalidTransition {
            seq: 2,
            reason: "a revoked device may not choose a user key"
        }
    );
    assert_eq!(alice.outbox_len().await.unwrap(), 0);

    // The keyless self-revocation is accepted and leaves rotation pending.
    attack.clear();
    let keyless = state.revoke_self(&tablet, KIT_TIME);
    assert_eq!(ks.append(&keyless).await.unwrap(), 2);
    let after = state
        .apply_suffix(&w.org.root_public(), &[keyless])
        .unwrap();
    assert!(after.rotation_pending());
    assert_eq!(after.encryption_key(), carol.chain.encryption_key());
    alice.send_text(conv, "WARD-V2-AFTER").await.unwrap();
}

/// Item 2: the organisation root's key added as a device (which would make
/// the root's own revocation of this user fail), and a device added without
/// its own signature. The keyserver refuses both; served anyway, the client
/// refuses them typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn additions_of_the_root_key_or_without_proof_are_refused() {
    let w = World::new().await;
    let attack = LogAttack::install(&w.ks_proxy);
    let (carol, _tablet, log, mut ks) = w.carol().await;
    let state = verify_log(&w.org.root_public(), "carol@chu", &log).unwrap();
    let enc = DeviceEncryptionKey::generate(&mut rand::rng()).public_key();
    // Even with the root's own possession signature (an insider admin).
    let root_as_device = DeviceSigningKey::import_secret(&*w.org.root.export_secret()).unwrap();
    let as_root = state.add_device(&carol.device, &root_as_device, &enc, KIT_TIME);
    assert_eq!(
        refused(ks.append(&as_root).await),
        ErrorCode::InvalidStatement
    );
    let phone = DeviceSigningKey::generate(&mut rand::rng());
    let unproven =
        state.add_device_with_proof(&carol.device, &phone.public_key(), &enc, &[], KIT_TIME);
    assert_eq!(
        refused(ks.append(&unproven).await),
        ErrorCode::InvalidStatement
    );

    let (alice, conv) = alice_knows_carol(&w).await;
    let served = as_root.clone();
    attack.set("alice@chu", "carol@chu", move |mut l| {
        l.push(served.clone());
        l
    });
    assert_eq!(
        expect_chain(alice.send_text(conv, "WARD-V2-ROOT").await, "carol@chu"),
        ChainError::KeyInUse {
            seq: 2,
            reason: KEY_IS_ROOT
        }
    );
    attack.set("alice@chu", "carol@chu", move |mut l| {
        l.push(unproven.clone());
        l
    });
    assert_eq!(
        expect_chain(alice.send_text(conv, "WARD-V2-NOPROOF").await, "carol@chu"),
        ChainError::MissingPossessionProof { seq: 2 }
    );
    assert_eq!(alice.outbox_len().await.unwrap(), 0);

    // The root's keyless revocation of Carol's tablet still works.
    attack.clear();
    let tablet_id = log_device(&state, 1);
    let revoke = state.revoke_device_as_root(&w.org.root, &tablet_id, KIT_TIME);
    assert_eq!(ks.append(&revoke).await.unwrap(), 2);
    alice.send_text(conv, "WARD-V2-OK").await.unwrap();
}

/// The device added at `seq`.
fn log_device(
    state: &ward_core::chain::VerifiedUser,
    seq: u64,
) -> ward_core::keys::SigningPublicKey {
    state
        .devices()
        .find(|d| d.added_at == seq)
        .map(|d| d.signing_key)
        .unwrap()
}

/// Item 5: the keyserver serves logs whose known prefix carries zeroed
/// signatures. The entry hash covers the signature, so the client refuses
/// them as a fork and stores nothing; the device still unlocks (its own
/// verified entries are intact) and works once the keyserver is honest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_log_with_zeroed_signatures_is_a_fork_and_the_device_still_works() {
    let w = World::new().await;
    let attack = LogAttack::install(&w.ks_proxy);
    let mut alice = w.enroll("alice@chu").await;
    let mut bob = w.enroll("bob@chu").await;
    let mut b_ev = bob.events().unwrap();
    let _a_ev = alice.events().unwrap();
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    let zero = |mut l: Vec<SignedStatement>| {
        for e in &mut l {
            e.signature = vec![0; 64];
        }
        l
    };

    // Bob's log, which Alice verified, served with zeroed signatures, as he
    // rotates his key (v1 would have accepted and stored those bytes).
    attack.set("alice@chu", "bob@chu", zero);
    bob.rotate_user_key().await.unwrap();
    assert_eq!(
        expect_chain(alice.send_text(conv, "WARD-V2-ZERO-1").await, "bob@chu"),
        ChainError::Fork { seq: 0 }
    );
    // Alice's own log, zeroed: refused before she appends anything.
    attack.set("alice@chu", "alice@chu", zero);
    assert_eq!(
        expect_chain(alice.rotate_user_key().await, "alice@chu"),
        ChainError::Fork { seq: 0 }
    );
    assert_eq!(alice.outbox_len().await.unwrap(), 0);

    // The device locks and unlocks from its own verified entries, while
    // the keyserver still lies.
    alice.lock().await;
    let alice = Client::unlock(w.config("alice@chu"), Pin::new(PIN.into()).unwrap())
        .await
        .expect("the device still unlocks");
    attack.clear();
    alice.send_text(conv, "WARD-V2-ZERO-OK").await.unwrap();
    assert_eq!(message_text(&mut b_ev).await, "WARD-V2-ZERO-OK");
    drop(bob);
}

/// Item 6: a handshake meant for another relay or service. A device that
/// dialled the staging relay refuses the production relay's challenge; a
/// production challenge relayed to it with the instance rewritten gets
/// signed, but production refuses that signature; a keyserver challenge is
/// refused by a device that dialled a relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_meant_for_another_relay_or_service_is_refused() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let alice = org.enroll(&mut rng, "alice");
    let prod = Relay::start_with(root, |c| c.instance = "prod".into()).await;
    let staging = Audience::relay(root, "staging");

    // Dialled staging, reached prod: the device refuses to sign.
    let err = ward_tests::relay::Client::connect_to(
        &prod.url(),
        &staging,
        &alice.device,
        "alice",
        &alice.log,
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, NetError::WrongService(ref s) if s == "ward-relay/prod"),
        "{err}"
    );

    // Staging (a malicious relay) forwards prod's challenge as its own.
    let mut conn = ward_tests::relay::raw(&prod.url()).await;
    let mut challenge: AuthChallenge = conn.recv_msg().await.unwrap().unwrap();
    assert_eq!(
        ward_core::auth::respond(&alice.device, "alice", &staging, &challenge).err(),
        Some(AuthError::UnexpectedChallenge)
    );
    challenge.instance = "staging".into();
    let mut response =
        ward_core::auth::respond(&alice.device, "alice", &staging, &challenge).unwrap();
    response.log = alice.log.clone();
    conn.send_msg(&response).await.unwrap();
    let result: AuthResult = conn.recv_msg().await.unwrap().unwrap();
    assert!(!result.ok);
    assert_eq!(result.error, ErrorCode::Unauthenticated as i32);
    match conn.recv().await {
        Err(NetError::Closed(Some(code), _)) => assert_eq!(code, close::AUTH_FAILED),
        other => panic!("expected AUTH_FAILED, got {other:?}"),
    }

    // Another organisation's relay with the same instance id.
    let other = Audience::relay(Org::new(&mut rng).root_public(), "prod");
    let mut conn = ward_tests::relay::raw(&prod.url()).await;
    let challenge: AuthChallenge = conn.recv_msg().await.unwrap().unwrap();
    let response = ward_core::auth::respond(&alice.device, "alice", &other, &challenge).unwrap();
    conn.send_msg(&response).await.unwrap();
    let result: AuthResult = conn.recv_msg().await.unwrap().unwrap();
    assert_eq!(result.error, ErrorCode::Unauthenticated as i32);

    // A keyserver challenge, to a device that dialled a relay.
    let db = temp_db_path("v2-ks-aud");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let err = ward_tests::relay::Client::connect_to(
        &ks.url(),
        &Audience::relay(root, DEFAULT_INSTANCE),
        &alice.device,
        "alice",
        &[],
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, NetError::WrongService(ref s) if s == "ward-keyserver/default"),
        "{err}"
    );

    // The right audience is accepted.
    ward_tests::relay::Client::connect_to(
        &prod.url(),
        &Audience::relay(root, "prod"),
        &alice.device,
        "alice",
        &alice.log,
    )
    .await
    .unwrap();
    remove_db(&db);
}

/// The version bump: a v1 device (its response carries no version) is
/// refused by both servers with a typed code and close 4008 and a reason
/// it can show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_servers_refuse_a_v1_device_with_a_version_error() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let alice = org.enroll(&mut rng, "alice");
    let relay = Relay::start(root).await;
    let db = temp_db_path("v2-ks-v1");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    for (url, audience) in [
        (relay.url(), Audience::relay(root, DEFAULT_INSTANCE)),
        (ks.url(), Audience::keyserver(root, DEFAULT_INSTANCE)),
    ] {
        let mut conn = ward_tests::relay::raw(&url).await;
        let challenge: AuthChallenge = conn.recv_msg().await.unwrap().unwrap();
        assert_eq!(challenge.version, 2);
        let mut response =
            ward_core::auth::respond(&alice.device, "alice", &audience, &challenge).unwrap();
        response.version = 0;
        response.log = alice.log.clone();
        conn.send_msg(&response).await.unwrap();
        let result: AuthResult = conn.recv_msg().await.unwrap().unwrap();
        assert!(!result.ok);
        assert_eq!(result.error, ErrorCode::UnsupportedVersion as i32, "{url}");
        match conn.recv().await {
            Err(NetError::Closed(Some(code), reason)) => {
                assert_eq!(code, close::UNSUPPORTED_VERSION, "{url}");
                assert!(reason.contains("v2"), "{reason}");
            }
            other => panic!("{url}: expected close 4008, got {other:?}"),
        }
    }
    remove_db(&db);
}

/// Item 5, the relay side: a device presents its user's log with a zeroed
/// signature on the prefix the relay holds. The relay compares the known
/// prefix entry for entry, signatures included (§9), so the presentation is
/// a fork and refused (`INVALID_STATEMENT`); the zeroed bytes are never
/// stored, the honest log is then accepted, and a later login that relies
/// on the stored log alone (an empty presented log) still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_stores_a_presented_log_with_zeroed_signatures() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let bob = org.enroll(&mut rng, "bob");
    let relay = Relay::start(root).await;
    let url = relay.url();
    drop(ward_tests::relay::Client::of(&url, &bob, "bob").await); // the relay holds 1 entry
    let tablet = DeviceSigningKey::generate(&mut rng);
    let enc = DeviceEncryptionKey::generate(&mut rng).public_key();
    let log = vec![
        bob.log[0].clone(),
        bob.chain.add_device(&bob.device, &tablet, &enc, KIT_TIME),
    ];
    let mut zeroed = log.clone();
    zeroed[0].signature = vec![0; 64];
    match ward_tests::relay::Client::connect(&url, &root, &tablet, "bob", &zeroed).await {
        Err(NetError::Refused(ErrorCode::InvalidStatement)) => {}
        Err(e) => panic!("unexpected refusal {e}"),
        Ok(_) => panic!("a known prefix with a zeroed signature was accepted"),
    }
    ward_tests::relay::Client::connect(&url, &root, &tablet, "bob", &log)
        .await
        .unwrap();
    // The stored log verifies: both devices log in on it alone.
    for device in [&bob.device, &tablet] {
        ward_tests::relay::Client::connect(&url, &root, device, "bob", &[])
            .await
            .unwrap();
    }
}
