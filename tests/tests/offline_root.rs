//! The organisation root stays offline (issue 12): an admin holding only the
//! passphrase-sealed root file invites and revokes through the keyserver's
//! root sessions (SECURITY.md §10.7), with no clinician's device involved,
//! against the real keyserver on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ward_core::chain::{create_user, verify_log};
use ward_core::invite::{InviteDetails, create_invite};
use ward_core::keys::*;
use ward_core::root_store::{self, KdfParams, Passphrase, RootStoreError};
use ward_core::testkit::{KIT_TIME, Org};
use ward_net::{NetError, close};
use ward_proto::v1::{ErrorCode, PutWrappedKeys, SignedStatement, ks_request};
use ward_tests::keyserver::*;
use zeroize::Zeroizing;

/// The smallest accepted Argon2id costs: the format is the same, tests stay fast.
const FAST: KdfParams = KdfParams {
    m_cost_kib: 8 * 1024,
    t_cost: 1,
    p_cost: 1,
};

fn pass(s: &str) -> Passphrase {
    Passphrase::unchecked(Zeroizing::new(s.to_owned()))
}

/// A clinician's phone: enrolls itself from an invite (the admin never
/// touches it). Returns its keys and its connected session.
async fn clinician_enrolls(
    url: &str,
    root: &SigningPublicKey,
    invite: &ward_proto::v1::SignedInvite,
    delegation: &DelegationKey,
    user_id: &str,
) -> (DeviceSigningKey, KsClient) {
    let mut rng = rand::rng();
    let device = DeviceSigningKey::generate(&mut rng);
    let device_key = DeviceEncryptionKey::generate(&mut rng);
    let user_key = UserEncryptionKey::generate(&mut rng);
    let entry = create_user(
        root,
        invite,
        delegation,
        &user_key.public_key(),
        &device.public_key(),
        &device_key.public_key(),
        KIT_TIME,
    )
    .unwrap();
    let mut client = KsClient::connect_enrolling(url, root, &device, user_id, delegation, invite)
        .await
        .unwrap();
    assert_eq!(client.append(&entry).await.unwrap(), 0);
    (device, client)
}

/// The admin's current view of a user's log, read over the root session.
async fn log_of(
    admin: &mut KsClient,
    root: &SigningPublicKey,
    user_id: &str,
) -> Vec<SignedStatement> {
    let logs = admin.get_logs(&[user_id]).await.unwrap();
    let entries = logs[user_id].entries.clone();
    verify_log(root, user_id, &entries).unwrap();
    entries
}

#[tokio::test]
async fn an_admin_with_only_the_sealed_root_invites_and_revokes_with_no_clinician_device() {
    let mut rng = rand::rng();
    // The organisation is made, sealed, and from here on exists only as the
    // 144-byte file and its passphrase.
    let (file, root_public) = {
        let org = Org::new(&mut rng);
        let file =
            root_store::seal(&mut rng, &org.root, &pass("ward offline root 2026"), FAST).unwrap();
        (file, org.root_public())
    };
    let db = temp_db_path("offline-root");
    let mut config = test_config(&Org::new(&mut rng), &db);
    config.org_root = root_public;
    // The harness certified its directory key with the throwaway org's root;
    // a certificate that this root did not sign would stop the keyserver.
    config.kt.certificate = None;
    let ks = TestKeyserver::start(config).await;

    // A wrong passphrase is a typed error, and nothing is signed.
    assert!(matches!(
        root_store::open(&file, &pass("ward offline root 2025")),
        Err(RootStoreError::WrongPassphrase)
    ));

    // Invite: signed on the admin's machine with the unlocked root.
    let root = root_store::open(&file, &pass("ward offline root 2026")).unwrap();
    assert_eq!(root.public_key(), root_public);
    let details = InviteDetails {
        user_id: "nurse.dubois".into(),
        display_name: "Luc Dubois".into(),
        profession: "nurse".into(),
        registry_number: String::new(),
        expires_at: KIT_TIME + 86_400,
    };
    let (invite, delegation) = create_invite(&mut rng, &root, &details).unwrap();
    drop(root);
    let (phone, phone_session) = clinician_enrolls(
        &ks.url(),
        &root_public,
        &invite,
        &delegation,
        "nurse.dubois",
    )
    .await;

    // The phone is lost: the admin unlocks the root again, reads the log over
    // a root session, signs the revocation and submits it.
    let root = root_store::open(&file, &pass("ward offline root 2026")).unwrap();
    let mut admin = KsClient::connect_root(&ks.url(), &root).await.unwrap();
    let entries = log_of(&mut admin, &root_public, "nurse.dubois").await;
    let state = verify_log(&root_public, "nurse.dubois", &entries).unwrap();
    let revocation = state.revoke_device_as_root(&root, &phone.public_key(), KIT_TIME + 60);
    assert_eq!(admin.admin_submit(&revocation).await.unwrap(), 1);

    // The revoked phone's open connection is closed at once, and it cannot
    // log in again.
    assert_eq!(
        phone_session.closed_with().await,
        Some(close::DEVICE_REVOKED)
    );
    match KsClient::connect(&ks.url(), &root_public, &phone, "nurse.dubois").await {
        Err(NetError::Refused(ErrorCode::DeviceRevoked)) => {}
        Err(e) => panic!("expected DEVICE_REVOKED, got {e}"),
        Ok(_) => panic!("a revoked device logged in"),
    }
    let after = log_of(&mut admin, &root_public, "nurse.dubois").await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[1], revocation);

    // Replay is idempotent: the same bytes are acknowledged at the same seq,
    // over this session or a new one, and the log does not grow.
    assert_eq!(admin.admin_submit(&revocation).await.unwrap(), 1);
    let mut again = KsClient::connect_root(&ks.url(), &root).await.unwrap();
    assert_eq!(again.admin_submit(&revocation).await.unwrap(), 1);
    assert_eq!(
        log_of(&mut admin, &root_public, "nurse.dubois").await.len(),
        2
    );

    // A stale entry (made from the log before the revocation: its position
    // is taken by another entry) is refused, typed, and changes nothing.
    let stale = state.revoke_device_as_root(&root, &phone.public_key(), KIT_TIME + 61);
    let err = admin.admin_submit(&stale).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err:?}");
    assert_eq!(
        log_of(&mut admin, &root_public, "nurse.dubois").await,
        after
    );

    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn admin_submissions_not_signed_by_this_root_are_refused_typed() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let other = Org::new(&mut rng);
    let db = temp_db_path("offline-root-refusals");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let a = org.enroll(&mut rng, "a");
    let mut a_session = enroll(&ks.url(), &a).await;
    let mut admin = KsClient::connect_root(&ks.url(), &org.root).await.unwrap();
    let code = |r: Result<u64, CallError>| r.unwrap_err().code();

    // Signed by another organisation's root: FORBIDDEN.
    let by_other_root =
        a.chain
            .revoke_device_as_root(&other.root, &a.device.public_key(), KIT_TIME + 1);
    assert_eq!(
        code(admin.admin_submit(&by_other_root).await),
        Some(ErrorCode::Forbidden)
    );
    // Signed by a device (the user's own self-revocation): FORBIDDEN.
    let by_device = a.chain.revoke_self(&a.device, KIT_TIME + 1);
    assert_eq!(
        code(admin.admin_submit(&by_device).await),
        Some(ErrorCode::Forbidden)
    );
    // Naming this root as author, with a signature it did not make.
    let mut forged = a
        .chain
        .revoke_device_as_root(&org.root, &a.device.public_key(), KIT_TIME + 1);
    forged.signature[0] ^= 0x01;
    assert_eq!(
        code(admin.admin_submit(&forged).await),
        Some(ErrorCode::InvalidStatement)
    );
    // None of them was stored; the device still works.
    assert_eq!(
        a_session.get_logs(&["a"]).await.unwrap()["a"].entries.len(),
        1
    );

    // A device session may not use admin_submit, even with a valid entry;
    // a root session may do nothing but read logs and submit.
    let valid = a
        .chain
        .revoke_device_as_root(&org.root, &a.device.public_key(), KIT_TIME + 1);
    let over_device = a_session
        .call(ks_request::Body::AdminSubmit(ward_proto::v1::AdminSubmit {
            entry: Some(valid.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(over_device.code(), Some(ErrorCode::Forbidden));
    let put = admin
        .call(ks_request::Body::PutKeys(PutWrappedKeys { keys: vec![] }))
        .await
        .unwrap_err();
    assert_eq!(put.code(), Some(ErrorCode::Forbidden));

    // Another root cannot open a root session here. Binding its own root
    // (what `ward admin revoke` would), the transcript does not verify;
    // binding this one, its key is just an unknown device of a user that
    // does not exist, with no invite: no session either (§8, E1).
    match KsClient::connect_root(&ks.url(), &other.root).await {
        Err(NetError::Refused(ErrorCode::Unauthenticated)) => {}
        Err(e) => panic!("expected UNAUTHENTICATED, got {e}"),
        Ok(_) => panic!("another organisation's root opened a root session"),
    }
    let other_signer = DeviceSigningKey::import_secret(&*other.root.export_secret()).unwrap();
    match KsClient::connect(
        &ks.url(),
        &org.root_public(),
        &other_signer,
        ward_keyserver::admin::ADMIN_USER_ID,
    )
    .await
    {
        Err(NetError::Refused(ErrorCode::Unauthenticated)) => {}
        Err(e) => panic!("expected UNAUTHENTICATED, got {e}"),
        Ok(mut impostor) => panic!(
            "another root's key got a session: {:?}",
            code(impostor.admin_submit(&by_other_root).await)
        ),
    }
    // The root under any user id but the admin one is refused at the handshake.
    let signer = DeviceSigningKey::import_secret(&*org.root.export_secret()).unwrap();
    match KsClient::connect(&ks.url(), &org.root_public(), &signer, "a").await {
        Err(NetError::Refused(ErrorCode::Unauthenticated)) => {}
        Err(e) => panic!("expected UNAUTHENTICATED, got {e}"),
        Ok(_) => panic!("the root logged in as a user"),
    }

    // The real one still goes through.
    assert_eq!(admin.admin_submit(&valid).await.unwrap(), 1);
    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn root_sessions_are_rate_limited() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("offline-root-rate");
    let mut config = test_config(&org, &db);
    config.limits.requests_per_second = 1;
    config.limits.request_burst = 3;
    let ks = TestKeyserver::start(config).await;
    let a = org.enroll(&mut rng, "a");
    drop(enroll(&ks.url(), &a).await);
    // The budget is the root key's, shared by all its sessions.
    let mut first = KsClient::connect_root(&ks.url(), &org.root).await.unwrap();
    let mut second = KsClient::connect_root(&ks.url(), &org.root).await.unwrap();
    let mut limited = 0;
    for i in 0..8 {
        let s = if i % 2 == 0 { &mut first } else { &mut second };
        if let Err(e) = s.get_logs(&["a"]).await {
            assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e:?}");
            limited += 1;
        }
    }
    assert!(limited >= 4, "only {limited} of 8 requests were limited");
    ks.stop().await.unwrap();
    remove_db(&db);
}
