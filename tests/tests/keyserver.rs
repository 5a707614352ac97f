//! The keyserver's "done when" scenarios (issue 3), against the real
//! keyserver on 127.0.0.1:0.
// Helpers outside `#[test]` functions may fail the test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use ward_core::chain::{create_user, verify_log};
use ward_core::invite::{InviteDetails, create_invite};
use ward_core::keys::*;
use ward_core::testkit::{KIT_TIME, Org};
use ward_core::wrap::{accept_grant, grant_user_key, unwrap_resource_key, wrap_resource_key};
use ward_core::{ResourceId, chain::VerifiedUser};
use ward_keyserver::storage::{AccessKind, export_access_log};
use ward_net::{NetError, close};
use ward_proto::Message as _;
use ward_proto::v1::{ErrorCode, KsRequest, KsResponse, WrappedKeyFor, ks_request, ks_response};
use ward_tests::keyserver::*;

fn details(user_id: &str, expires_at: u64) -> InviteDetails {
    InviteDetails {
        user_id: user_id.into(),
        display_name: format!("Dr {user_id}"),
        profession: "physician".into(),
        registry_number: "10001234567".into(),
        expires_at,
    }
}

struct NewDevice {
    signing: DeviceSigningKey,
    encryption: DeviceEncryptionKey,
}

fn new_device() -> NewDevice {
    let mut rng = rand::rng();
    NewDevice {
        signing: DeviceSigningKey::generate(&mut rng),
        encryption: DeviceEncryptionKey::generate(&mut rng),
    }
}

fn refused(r: Result<KsClient, NetError>) -> ErrorCode {
    match r {
        Err(NetError::Refused(code)) => code,
        Err(e) => panic!("expected a typed refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}

#[tokio::test]
async fn enroll_from_invite_and_refuse_reused_expired_and_forged_invites() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("enroll");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let root = org.root_public();

    // Two devices race to enroll with one invite (the invite leaked).
    let (invite, delegation) =
        create_invite(&mut rng, &org.root, &details("dr.a", KIT_TIME + 100)).unwrap();
    let user_key = UserEncryptionKey::generate(&mut rng);
    let d1 = new_device();
    let d2 = new_device();
    let creation = |d: &NewDevice| {
        create_user(
            &root,
            &invite,
            &delegation,
            &user_key.public_key(),
            &d.signing.public_key(),
            &d.encryption.public_key(),
            KIT_TIME,
        )
        .unwrap()
    };
    let (c1, c2) = (creation(&d1), creation(&d2));
    let mut a1 = KsClient::connect_enrolling(
        &ks.url(),
        &ks.root,
        &d1.signing,
        "dr.a",
        &delegation,
        &invite,
    )
    .await
    .unwrap();
    let mut a2 = KsClient::connect_enrolling(
        &ks.url(),
        &ks.root,
        &d2.signing,
        "dr.a",
        &delegation,
        &invite,
    )
    .await
    .unwrap();

    // Before enrolling, a device may do nothing else.
    let e = a1.get_logs(&["dr.a"]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated));
    // ...nor enroll another device.
    assert_eq!(
        a1.append(&c2).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );

    assert_eq!(a1.append(&c1).await.unwrap(), 0);
    // A retry of the same creation is acknowledged again.
    assert_eq!(a1.append(&c1).await.unwrap(), 0);
    // The second use of the invite is refused.
    assert_eq!(
        a2.append(&c2).await.unwrap_err().code(),
        Some(ErrorCode::InviteUsed)
    );
    // The same device re-using the invite with another user key: refused too.
    let other_key = UserEncryptionKey::generate(&mut rng);
    let c1b = create_user(
        &root,
        &invite,
        &delegation,
        &other_key.public_key(),
        &d1.signing.public_key(),
        &d1.encryption.public_key(),
        KIT_TIME,
    )
    .unwrap();
    assert_eq!(
        a1.append(&c1b).await.unwrap_err().code(),
        Some(ErrorCode::InviteUsed)
    );
    // A new device of the now existing user no longer gets a session at all.
    let d3 = new_device();
    assert_eq!(
        refused(KsClient::connect(&ks.url(), &ks.root, &d3.signing, "dr.a").await),
        ErrorCode::Unauthenticated
    );

    // The enrolled device is now a full session; its log verifies from the root.
    let logs = a1.get_logs(&["dr.a", "nobody"]).await.unwrap();
    assert_eq!(logs.len(), 1);
    let user = verify_log(&root, "dr.a", &logs["dr.a"].entries).unwrap();
    assert_eq!(user.encryption_key(), &user_key.public_key());

    // Expired: made in time, presented after expiry (server clock).
    let (old_invite, old_delegation) =
        create_invite(&mut rng, &org.root, &details("dr.late", KIT_TIME - 10)).unwrap();
    let d = new_device();
    // Refused at the handshake (§8): no session to append it from. (The
    // append's own expiry check is `accept_creation`'s unit test.)
    assert_eq!(
        refused(
            KsClient::connect_enrolling(
                &ks.url(),
                &ks.root,
                &d.signing,
                "dr.late",
                &old_delegation,
                &old_invite
            )
            .await
        ),
        ErrorCode::InviteExpired
    );

    // Forged: signed by another organisation's root.
    let mallory = Org::new(&mut rng);
    let (forged, forged_delegation) =
        create_invite(&mut rng, &mallory.root, &details("dr.fake", KIT_TIME + 100)).unwrap();
    let d = new_device();
    assert_eq!(
        refused(
            KsClient::connect_enrolling(
                &ks.url(),
                &ks.root,
                &d.signing,
                "dr.fake",
                &forged_delegation,
                &forged
            )
            .await
        ),
        ErrorCode::Unauthenticated
    );
    // The real invite of another user does not open a session either.
    let (bobs, bobs_delegation) =
        create_invite(&mut rng, &org.root, &details("dr.bob", KIT_TIME + 100)).unwrap();
    assert_eq!(
        refused(
            KsClient::connect_enrolling(
                &ks.url(),
                &ks.root,
                &d.signing,
                "dr.eve",
                &bobs_delegation,
                &bobs
            )
            .await
        ),
        ErrorCode::Unauthenticated
    );
    // Neither user exists.
    let logs = a1.get_logs(&["dr.late", "dr.fake"]).await.unwrap();
    assert!(logs.is_empty());

    ks.stop().await.unwrap();
    remove_db(&db);
}

/// Adds a device to `chain` through `client`; returns the new chain.
async fn add_device(
    client: &mut KsClient,
    chain: &VerifiedUser,
    author: &DeviceSigningKey,
    root: &SigningPublicKey,
    d: &NewDevice,
) -> VerifiedUser {
    let entry = chain.add_device(author, &d.signing, &d.encryption.public_key(), KIT_TIME);
    let seq = client.append(&entry).await.unwrap();
    assert_eq!(seq, chain.len());
    let mut next = chain.clone();
    next.apply(root, &entry).unwrap();
    next
}

#[tokio::test]
async fn added_device_authenticates_and_is_shut_out_once_revoked() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let db = temp_db_path("devices");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let a = org.enroll(&mut rng, "dr.a");
    let mut laptop = enroll(&ks.url(), &a).await;

    // A phone that is not in the log yet cannot connect.
    let phone = new_device();
    assert_eq!(
        refused(KsClient::connect(&ks.url(), &ks.root, &phone.signing, "dr.a").await),
        ErrorCode::Unauthenticated
    );
    // An addition signed by an outsider is refused.
    let outsider = DeviceSigningKey::generate(&mut rng);
    let bad = a.chain.add_device(
        &outsider,
        &phone.signing,
        &phone.encryption.public_key(),
        KIT_TIME,
    );
    assert_eq!(
        laptop.append(&bad).await.unwrap_err().code(),
        Some(ErrorCode::InvalidStatement)
    );

    let chain = add_device(&mut laptop, &a.chain, &a.device, &root, &phone).await;
    let mut p = KsClient::connect(&ks.url(), &ks.root, &phone.signing, "dr.a")
        .await
        .unwrap();
    let logs = p.get_logs(&["dr.a"]).await.unwrap();
    assert_eq!(logs["dr.a"].entries.len(), 2);

    // The laptop revokes the phone while the phone is connected.
    let new_key = UserEncryptionKey::generate(&mut rng);
    let revocation = chain.revoke_device(
        &a.device,
        &phone.signing.public_key(),
        &new_key.public_key(),
        KIT_TIME,
    );
    assert_eq!(laptop.append(&revocation).await.unwrap(), 2);
    // Its open connection is closed at once...
    assert_eq!(p.closed_with().await, Some(close::DEVICE_REVOKED));
    // ...and it cannot authenticate again.
    assert_eq!(
        refused(KsClient::connect(&ks.url(), &ks.root, &phone.signing, "dr.a").await),
        ErrorCode::DeviceRevoked
    );
    // A replayed revocation is just acknowledged; a conflicting entry at a
    // taken position is refused.
    assert_eq!(laptop.append(&revocation).await.unwrap(), 2);
    let other = chain.revoke_device_as_root(&org.root, &phone.signing.public_key(), KIT_TIME);
    assert_eq!(
        laptop.append(&other).await.unwrap_err().code(),
        Some(ErrorCode::Conflict)
    );

    // Clients verify the served log themselves.
    let logs = laptop.get_logs(&["dr.a"]).await.unwrap();
    let user = verify_log(&root, "dr.a", &logs["dr.a"].entries).unwrap();
    assert!(
        !user
            .device(&phone.signing.public_key())
            .unwrap()
            .is_active()
    );
    assert_eq!(user.encryption_key(), &new_key.public_key());

    // A device that revokes itself gets its reply, then its session ends.
    // Its revocation is keyless (v2): a device being revoked never chooses
    // the next user key, so one that carries a key is refused.
    let tablet = new_device();
    let chain = add_device(&mut laptop, &user, &a.device, &root, &tablet).await;
    let mut t = KsClient::connect(&ks.url(), &ks.root, &tablet.signing, "dr.a")
        .await
        .unwrap();
    let keyed = chain.revoke_device(
        &tablet.signing,
        &tablet.signing.public_key(),
        &UserEncryptionKey::generate(&mut rng).public_key(),
        KIT_TIME,
    );
    assert_eq!(
        t.append(&keyed).await.unwrap_err().code(),
        Some(ErrorCode::InvalidStatement)
    );
    let own = chain.revoke_self(&tablet.signing, KIT_TIME);
    assert_eq!(t.append(&own).await.unwrap(), 4);
    assert_eq!(t.closed_with().await, Some(close::DEVICE_REVOKED));

    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn wrapped_keys_are_served_only_to_the_recipients_devices_and_reads_are_logged() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let db = temp_db_path("keys");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let a = org.enroll(&mut rng, "dr.a");
    let b = org.enroll(&mut rng, "dr.b");
    let c = org.enroll(&mut rng, "dr.c");
    let mut ca = enroll(&ks.url(), &a).await;
    let mut cb1 = enroll(&ks.url(), &b).await;
    let mut cc = enroll(&ks.url(), &c).await;

    // B has a second and a third device; the third is revoked, rotating B's key.
    let (b2, b3) = (new_device(), new_device());
    let chain = add_device(&mut cb1, &b.chain, &b.device, &root, &b2).await;
    let chain = add_device(&mut cb1, &chain, &b.device, &root, &b3).await;
    let b_key2 = UserEncryptionKey::generate(&mut rng);
    let rev = chain.revoke_device(
        &b.device,
        &b3.signing.public_key(),
        &b_key2.public_key(),
        KIT_TIME,
    );
    cb1.append(&rev).await.unwrap();

    // A reads and verifies B's log, then wraps to B's current key.
    let logs = ca.get_logs(&["dr.b"]).await.unwrap();
    let b_seen = verify_log(&root, "dr.b", &logs["dr.b"].entries).unwrap();
    assert_eq!(b_seen.encryption_key(), &b_key2.public_key());
    let rid = ResourceId::random(&mut rng);
    let key = ResourceKey::generate(&mut rng);
    let wrapped = wrap_resource_key(&mut rng, &key, &rid, b_seen.encryption_key()).unwrap();
    let for_b = WrappedKeyFor {
        recipient_user_id: "dr.b".into(),
        key: Some(wrapped.clone()),
    };
    assert_eq!(ca.put_keys(vec![for_b.clone()]).await.unwrap(), 1);
    // Idempotent; a different key for the same pair never overwrites.
    assert_eq!(ca.put_keys(vec![for_b.clone()]).await.unwrap(), 1);
    let other = wrap_resource_key(&mut rng, &key, &rid, b_seen.encryption_key()).unwrap();
    let e = ca
        .put_keys(vec![WrappedKeyFor {
            recipient_user_id: "dr.b".into(),
            key: Some(other),
        }])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
    // Unknown users, stale keys, and another sender's resource are refused.
    let rid2 = ResourceId::random(&mut rng);
    let to = |user: &str, k: &EncryptionPublicKey, rid: &ResourceId| WrappedKeyFor {
        recipient_user_id: user.into(),
        key: Some(wrap_resource_key(&mut rand::rng(), &key, rid, k).unwrap()),
    };
    let e = ca
        .put_keys(vec![to("nobody", &b_key2.public_key(), &rid2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownUser));
    let e = ca
        .put_keys(vec![to("dr.b", &b.user_key.public_key(), &rid2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
    let e = cc
        .put_keys(vec![to("dr.c", &c.user_key.public_key(), &rid)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden));
    // All or nothing: the failed requests stored nothing.
    let none = cb1.get_keys(&[rid2.as_bytes()]).await.unwrap();
    assert!(none.keys.is_empty());

    // B's devices read it, and can unwrap it with B's current key.
    let got = cb1
        .get_keys(&[rid.as_bytes(), rid2.as_bytes()])
        .await
        .unwrap();
    assert_eq!(got.keys, vec![wrapped.clone()]);
    assert_eq!(got.missing, vec![rid2.as_bytes().to_vec()]);
    let k = unwrap_resource_key(&got.keys[0], &rid, &b_key2).unwrap();
    assert_eq!(*k.export_secret(), *key.export_secret());
    let mut cb2 = KsClient::connect(&ks.url(), &ks.root, &b2.signing, "dr.b")
        .await
        .unwrap();
    assert_eq!(
        cb2.get_keys(&[rid.as_bytes()]).await.unwrap().keys,
        vec![wrapped.clone()]
    );
    // Another device may not add recipients under A's resource id either.
    let e = cb2
        .put_keys(vec![to("dr.c", &c.user_key.public_key(), &rid)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden));

    // C gets nothing; B's revoked device and unauthenticated peers get no session.
    let got = cc.get_keys(&[rid.as_bytes()]).await.unwrap();
    assert!(got.keys.is_empty());
    assert_eq!(got.missing, vec![rid.as_bytes().to_vec()]);
    assert_eq!(
        refused(KsClient::connect(&ks.url(), &ks.root, &b3.signing, "dr.b").await),
        ErrorCode::DeviceRevoked
    );
    // A device claiming to be B's with a key that is not in B's log.
    let impostor = new_device();
    assert_eq!(
        refused(KsClient::connect(&ks.url(), &ks.root, &impostor.signing, "dr.b").await),
        ErrorCode::Unauthenticated
    );
    // A device of no user, without an invite, gets no session at all.
    let stranger = new_device();
    assert_eq!(
        refused(KsClient::connect(&ks.url(), &ks.root, &stranger.signing, "dr.nobody").await),
        ErrorCode::Unauthenticated
    );
    // A client that skips the handshake and sends a request right away.
    let mut raw = ward_net::conn::connect(&ks.url(), &ward_net::Limits::default())
        .await
        .unwrap();
    let _challenge = raw.recv().await.unwrap();
    raw.send_msg(&KsRequest {
        request_id: 1,
        body: Some(ks_request::Body::GetKeys(ward_proto::v1::GetWrappedKeys {
            resource_ids: vec![rid.as_bytes().to_vec()],
        })),
    })
    .await
    .unwrap();
    // The server answers with a refused AuthResult, then closes: no key.
    let mut keys_seen = false;
    while let Ok(Some(bytes)) = raw.recv().await {
        if let Ok(r) = KsResponse::decode(bytes.as_ref())
            && matches!(r.body, Some(ks_response::Body::Keys(_)))
        {
            keys_seen = true;
        }
    }
    assert!(!keys_seen);

    // The access log holds exactly the two successful reads, by B's devices.
    let log = export_access_log(&db, 0).unwrap();
    let reads: Vec<_> = log
        .iter()
        .map(|r| {
            (
                r.user_id.as_str(),
                r.device_id.clone(),
                r.resource_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        reads,
        vec![
            (
                "dr.b",
                b.device.public_key().as_bytes().to_vec(),
                rid.as_bytes().to_vec()
            ),
            (
                "dr.b",
                b2.signing.public_key().as_bytes().to_vec(),
                rid.as_bytes().to_vec()
            ),
        ]
    );
    assert!(log.iter().all(|r| r.at == KIT_TIME));

    // Device grants: B's first device grants the new user key to B's second.
    let grant = grant_user_key(&mut rng, &b_key2, &b2.encryption.public_key()).unwrap();
    assert_eq!(cb1.put_grants(vec![grant.clone()]).await.unwrap(), 1);
    assert_eq!(cb1.put_grants(vec![grant.clone()]).await.unwrap(), 1);
    // Not to the revoked device, not for a key that is not B's.
    let to_revoked = grant_user_key(&mut rng, &b_key2, &b3.encryption.public_key()).unwrap();
    assert_eq!(
        cb1.put_grants(vec![to_revoked]).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    let foreign = grant_user_key(&mut rng, &c.user_key, &b2.encryption.public_key()).unwrap();
    assert_eq!(
        cb1.put_grants(vec![foreign]).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    // Served only to the device it is addressed to.
    let got = cb2.get_grant(&[]).await.unwrap();
    assert_eq!(got, grant);
    let last = export_access_log(&db, 0).unwrap().pop().unwrap();
    assert_eq!(
        (
            last.kind,
            last.user_id.as_str(),
            last.device_id,
            last.resource_id
        ),
        (
            AccessKind::DeviceGrant,
            "dr.b",
            b2.signing.public_key().as_bytes().to_vec(),
            b_key2.public_key().id().as_bytes().to_vec()
        )
    );
    let opened = accept_grant(&got, &b2.encryption, b_seen.encryption_key()).unwrap();
    assert_eq!(opened.public_key(), b_key2.public_key());
    assert_eq!(
        cb1.get_grant(&[]).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        cc.get_grant(&[]).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );

    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn abuse_is_refused_while_a_well_behaved_client_keeps_working() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("abuse");
    let mut config = test_config(&org, &db);
    config.limits.net.max_frame_bytes = 64 * 1024;
    config.limits.net.auth_timeout = Duration::from_secs(2);
    config.limits.requests_per_second = 5;
    config.limits.request_burst = 10;
    let ks = TestKeyserver::start(config).await;
    let good = org.enroll(&mut rng, "dr.good");
    let bad = org.enroll(&mut rng, "dr.bad");
    let mut g = enroll(&ks.url(), &good).await;
    drop(enroll(&ks.url(), &bad).await);

    // The well-behaved client keeps asking throughout.
    let url = ks.url();
    let steady = tokio::spawn(async move {
        for _ in 0..8 {
            let logs = g.get_logs(&["dr.good"]).await.unwrap();
            assert_eq!(logs.len(), 1);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        g
    });

    let abuse = async {
        // Random bytes on the TCP socket: no WebSocket upgrade, dropped.
        let mut tcp = tokio::net::TcpStream::connect(ks.addr).await.unwrap();
        let mut junk = [0u8; 4096];
        rand::fill(&mut junk);
        let _ = tcp.write_all(&junk).await;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("server kept a garbage connection open");
        assert!(matches!(n, Ok(0) | Err(_)) || !buf.starts_with(b"HTTP/1.1 101"));

        // A text frame instead of the handshake.
        let c = ward_net::conn::connect(&url, &ward_net::Limits::default())
            .await
            .unwrap();
        let mut ws = c.into_inner();
        let _challenge = ws.next().await;
        ws.send(Message::Text("hello".into())).await.unwrap();
        assert_eq!(raw_close_code(&mut ws).await, Some(close::UNSUPPORTED_DATA));

        // Random bytes as the handshake answer.
        let c = ward_net::conn::connect(&url, &ward_net::Limits::default())
            .await
            .unwrap();
        let mut ws = c.into_inner();
        let _challenge = ws.next().await;
        ws.send(Message::Binary(junk.to_vec().into()))
            .await
            .unwrap();
        let code = raw_close_code(&mut ws).await;
        assert!(
            code == Some(close::PROTOCOL_ERROR) || code == Some(close::AUTH_FAILED),
            "{code:?}"
        );

        // After authenticating: a text frame.
        let b = KsClient::connect(&url, &org.root_public(), &bad.device, "dr.bad")
            .await
            .unwrap();
        let mut ws = b.conn.into_inner();
        ws.send(Message::Text("{\"get\":1}".into())).await.unwrap();
        assert_eq!(raw_close_code(&mut ws).await, Some(close::UNSUPPORTED_DATA));

        // Random bytes.
        let b = KsClient::connect(&url, &org.root_public(), &bad.device, "dr.bad")
            .await
            .unwrap();
        let mut ws = b.conn.into_inner();
        ws.send(Message::Binary(vec![0xff; 64].into()))
            .await
            .unwrap();
        assert_eq!(raw_close_code(&mut ws).await, Some(close::PROTOCOL_ERROR));

        // An oversized frame.
        let b = KsClient::connect(&url, &org.root_public(), &bad.device, "dr.bad")
            .await
            .unwrap();
        let mut ws = b.conn.into_inner();
        let _ = ws.send(Message::Binary(vec![0u8; 200 * 1024].into())).await;
        assert_eq!(raw_close_code(&mut ws).await, Some(close::TOO_BIG));

        // Well-formed protobuf, malformed request: a typed error with the
        // request id, and the connection stays usable.
        let mut b = KsClient::connect(&url, &org.root_public(), &bad.device, "dr.bad")
            .await
            .unwrap();
        b.conn
            .send_msg(&KsRequest {
                request_id: 42,
                body: None,
            })
            .await
            .unwrap();
        let r: KsResponse = b.conn.recv_msg().await.unwrap().unwrap();
        assert_eq!(r.request_id, 42);
        assert!(matches!(
            r.body,
            Some(ks_response::Body::Error(ref e)) if e.code == ErrorCode::Malformed as i32
        ));
        let e = b.get_keys(&[&[1u8; 3]]).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Malformed));
        let e = b.get_keys(&vec![&[1u8; 16][..]; 300]).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::TooLarge));
        let junk_statement = ward_proto::v1::SignedStatement {
            statement: vec![0xff; 100],
            signature: vec![0; 64],
        };
        assert_eq!(
            b.append(&junk_statement).await.unwrap_err().code(),
            Some(ErrorCode::InvalidStatement)
        );

        // Flooding: the device's budget runs out, it is told to slow down.
        let mut limited = 0;
        for _ in 0..30 {
            match b.get_logs(&["dr.bad"]).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(ErrorCode::RateLimited) => limited += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(limited > 0);
    };
    abuse.await;

    let mut g = steady
        .await
        .expect("well-behaved client failed during abuse");
    assert!(g.get_logs(&["dr.good"]).await.is_ok());
    assert!(!ks.is_finished());
    ks.stop().await.unwrap();
    remove_db(&db);
}

async fn raw_close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let wait = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("server did not close the connection")
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let db = temp_db_path("restart");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let a = org.enroll(&mut rng, "dr.a");
    let b = org.enroll(&mut rng, "dr.b");
    let mut ca = enroll(&ks.url(), &a).await;
    let mut cb = enroll(&ks.url(), &b).await;
    let (b2, b3) = (new_device(), new_device());
    let chain = add_device(&mut cb, &b.chain, &b.device, &root, &b2).await;
    let chain = add_device(&mut cb, &chain, &b.device, &root, &b3).await;
    let b_key2 = UserEncryptionKey::generate(&mut rng);
    cb.append(&chain.revoke_device(
        &b.device,
        &b3.signing.public_key(),
        &b_key2.public_key(),
        KIT_TIME,
    ))
    .await
    .unwrap();
    let rid = ResourceId::random(&mut rng);
    let key = ResourceKey::generate(&mut rng);
    let wrapped = wrap_resource_key(&mut rng, &key, &rid, &b_key2.public_key()).unwrap();
    ca.put_keys(vec![WrappedKeyFor {
        recipient_user_id: "dr.b".into(),
        key: Some(wrapped.clone()),
    }])
    .await
    .unwrap();
    assert_eq!(cb.get_keys(&[rid.as_bytes()]).await.unwrap().keys.len(), 1);
    let grant = grant_user_key(&mut rng, &b_key2, &b2.encryption.public_key()).unwrap();
    cb.put_grants(vec![grant.clone()]).await.unwrap();
    let logs_before = ca.get_logs(&["dr.a", "dr.b"]).await.unwrap();

    // Stop: open connections are closed as "going away".
    let stopping = tokio::spawn(async move { ca.closed_with().await });
    ks.stop().await.unwrap();
    assert_eq!(stopping.await.unwrap(), None);
    drop(cb);

    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let mut ca = KsClient::connect(&ks.url(), &ks.root, &a.device, "dr.a")
        .await
        .unwrap();
    assert_eq!(ca.get_logs(&["dr.a", "dr.b"]).await.unwrap(), logs_before);
    let mut cb2 = KsClient::connect(&ks.url(), &ks.root, &b2.signing, "dr.b")
        .await
        .unwrap();
    assert_eq!(
        cb2.get_keys(&[rid.as_bytes()]).await.unwrap().keys,
        vec![wrapped]
    );
    assert_eq!(cb2.get_grant(&[]).await.unwrap(), grant);
    // The revocation, the used invite and the access log persisted too.
    assert_eq!(
        refused(KsClient::connect(&ks.url(), &ks.root, &b3.signing, "dr.b").await),
        ErrorCode::DeviceRevoked
    );
    assert_eq!(ca.append(&a.log[0]).await.unwrap(), 0);
    // Reads before and after the restart: two key reads and one grant read.
    assert_eq!(export_access_log(&db, 0).unwrap().len(), 3);

    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn a_revocation_written_by_another_process_closes_sessions_within_the_recheck_period() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let db = temp_db_path("recheck");
    let mut config = test_config(&org, &db);
    config.limits.revocation_recheck = Duration::from_millis(200);
    config.limits.idle_timeout = Duration::from_secs(60);
    let ks = TestKeyserver::start(config).await;
    let a = org.enroll(&mut rng, "dr.a");
    let mut laptop = enroll(&ks.url(), &a).await;
    let phone = new_device();
    let chain = add_device(&mut laptop, &a.chain, &a.device, &root, &phone).await;
    let p = KsClient::connect(&ks.url(), &ks.root, &phone.signing, "dr.a")
        .await
        .unwrap();

    // An operator tool revokes the phone (root-signed) straight into the
    // database, bypassing this keyserver process.
    let revocation = chain.revoke_device_as_root(&org.root, &phone.signing.public_key(), KIT_TIME);
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = ward_keyserver::storage::open_connection(&db2).unwrap();
        ward_keyserver::storage::append(&mut conn, &root, KIT_TIME, &revocation).unwrap()
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(p.closed_with().await, Some(close::DEVICE_REVOKED));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The laptop, still active, keeps its session.
    assert!(laptop.get_logs(&["dr.a"]).await.is_ok());

    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("idle");
    let mut config = test_config(&org, &db);
    config.limits.idle_timeout = Duration::from_millis(300);
    let ks = TestKeyserver::start(config).await;
    let a = org.enroll(&mut rng, "dr.a");
    let client = enroll(&ks.url(), &a).await;
    // Closed normally (no error code): the client may reconnect at will.
    assert_eq!(client.closed_with().await, None);
    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn concurrent_clients_are_all_served_and_every_read_is_logged() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("concurrent");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    const USERS: usize = 12;
    const ROUNDS: usize = 5;
    let users: Vec<_> = (0..USERS)
        .map(|i| org.enroll(&mut rng, &format!("dr.{i}")))
        .collect();
    // Enroll everyone at once.
    let url = ks.url();
    let clients = futures_util::future::join_all(users.iter().map(|u| enroll(&url, u))).await;
    let keys: Vec<EncryptionPublicKey> = users.iter().map(|u| u.user_key.public_key()).collect();

    // Each user writes to the next one and reads what the previous one wrote.
    let tasks = clients.into_iter().enumerate().map(|(i, mut c)| {
        let next = (i + 1) % USERS;
        let next_key = keys[next];
        async move {
            let mut rng = rand::rng();
            let mut rids = Vec::new();
            for _ in 0..ROUNDS {
                let rid = ResourceId::random(&mut rng);
                let key = ResourceKey::generate(&mut rng);
                let w = wrap_resource_key(&mut rng, &key, &rid, &next_key).unwrap();
                let n = c
                    .put_keys(vec![WrappedKeyFor {
                        recipient_user_id: format!("dr.{next}"),
                        key: Some(w),
                    }])
                    .await
                    .unwrap();
                assert_eq!(n, 1);
                rids.push(rid);
            }
            (c, rids)
        }
    });
    let results = futures_util::future::join_all(tasks).await;
    let mut clients = Vec::new();
    let mut written = Vec::new();
    for (c, rids) in results {
        clients.push(c);
        written.push(rids);
    }
    let reads = clients.into_iter().enumerate().map(|(i, mut c)| {
        let prev = (i + USERS - 1) % USERS;
        let rids = written[prev].clone();
        async move {
            let ids: Vec<&[u8]> = rids.iter().map(|r| r.as_bytes().as_slice()).collect();
            let got = c.get_keys(&ids).await.unwrap();
            assert_eq!(got.keys.len(), ROUNDS);
            assert!(got.missing.is_empty());
        }
    });
    futures_util::future::join_all(reads).await;
    assert_eq!(export_access_log(&db, 0).unwrap().len(), USERS * ROUNDS);

    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn connection_cap_and_handshake_timeout_are_enforced() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("caps");
    let mut config = test_config(&org, &db);
    config.limits.max_connections = 1;
    // Long enough for a real handshake on a loaded 2-core CI machine.
    config.limits.net.auth_timeout = Duration::from_millis(2000);
    let ks = TestKeyserver::start(config).await;
    let limits = ward_net::Limits::default();

    // A silent peer holds the only slot until its handshake times out.
    let mut silent = ward_net::conn::connect(&ks.url(), &limits).await.unwrap();
    let mut second = ward_net::conn::connect(&ks.url(), &limits).await.unwrap();
    assert_eq!(
        wait_close(&mut second).await,
        Some(close::TOO_MANY_CONNECTIONS)
    );
    let _challenge = silent.recv().await.unwrap();
    assert_eq!(wait_close(&mut silent).await, Some(close::AUTH_TIMEOUT));

    // The slot is free again.
    let a = org.enroll(&mut rng, "dr.a");
    let mut c = enroll(&ks.url(), &a).await;
    assert!(c.get_logs(&["dr.a"]).await.is_ok());

    ks.stop().await.unwrap();
    remove_db(&db);
}

/// Random but well-formed requests: each gets exactly one reply with its id,
/// and the keyserver keeps serving.
#[tokio::test]
async fn random_requests_always_get_a_reply() {
    use rand::RngExt;
    use ward_proto::v1::*;
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("random");
    let mut config = test_config(&org, &db);
    config.limits.request_burst = 10_000;
    config.limits.requests_per_second = 10_000;
    let ks = TestKeyserver::start(config).await;
    let a = org.enroll(&mut rng, "dr.a");
    let b = org.enroll(&mut rng, "dr.b");
    let mut c = enroll(&ks.url(), &a).await;
    drop(enroll(&ks.url(), &b).await);

    fn bytes(rng: &mut rand::rngs::ThreadRng) -> Vec<u8> {
        let len = *[0usize, 1, 15, 16, 31, 32, 47, 48, 64, 100]
            .get(rng.random_range(0..10))
            .unwrap();
        let mut v = vec![0u8; len];
        rand::fill(&mut v[..]);
        v
    }
    fn user(rng: &mut rand::rngs::ThreadRng) -> String {
        ["dr.a", "dr.b", "nobody", "", "x\u{0}y"][rng.random_range(0..5)].to_string()
    }
    for id in 1..=400u64 {
        let body = match rng.random_range(0..6) {
            0 => ks_request::Body::Append(SignedStatement {
                statement: bytes(&mut rng),
                signature: bytes(&mut rng),
            }),
            1 => ks_request::Body::GetLogs(GetLogs {
                user_ids: (0..rng.random_range(0..4))
                    .map(|_| user(&mut rng))
                    .collect(),
            }),
            2 => ks_request::Body::PutKeys(PutWrappedKeys {
                keys: (0..rng.random_range(0..3))
                    .map(|_| WrappedKeyFor {
                        recipient_user_id: user(&mut rng),
                        key: Some(WrappedKey {
                            resource_id: bytes(&mut rng),
                            recipient_key: bytes(&mut rng),
                            enc: bytes(&mut rng),
                            ciphertext: bytes(&mut rng),
                        }),
                    })
                    .collect(),
            }),
            3 => ks_request::Body::GetKeys(GetWrappedKeys {
                resource_ids: (0..rng.random_range(0..3))
                    .map(|_| bytes(&mut rng))
                    .collect(),
            }),
            4 => ks_request::Body::PutGrants(PutDeviceGrants {
                grants: (0..rng.random_range(0..3))
                    .map(|_| DeviceGrant {
                        user_key: bytes(&mut rng),
                        device_key: bytes(&mut rng),
                        enc: bytes(&mut rng),
                        ciphertext: bytes(&mut rng),
                    })
                    .collect(),
            }),
            _ => ks_request::Body::GetGrant(GetDeviceGrant {
                user_key: bytes(&mut rng),
            }),
        };
        c.conn
            .send_msg(&KsRequest {
                request_id: id,
                body: Some(body),
            })
            .await
            .unwrap();
        let r: KsResponse = c.conn.recv_msg().await.unwrap().unwrap();
        assert_eq!(r.request_id, id);
        if let Some(ks_response::Body::Error(e)) = &r.body {
            assert_ne!(e.code, ErrorCode::Internal as i32, "{e:?}");
        }
    }
    assert!(!ks.is_finished());
    let mut fresh = KsClient::connect(&ks.url(), &ks.root, &a.device, "dr.a")
        .await
        .unwrap();
    assert!(fresh.get_logs(&["dr.a"]).await.is_ok());
    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn devices_that_are_not_enrolled_are_bounded_in_number_and_time() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("enrolling");
    let mut config = test_config(&org, &db);
    config.limits.max_enrolling = 1;
    config.limits.enroll_timeout = Duration::from_millis(400);
    let ks = TestKeyserver::start(config).await;
    let a = org.enroll(&mut rng, "dr.a");
    let mut ca = enroll(&ks.url(), &a).await;

    let (s1, s2) = (new_device(), new_device());
    let (x_invite, x_delegation) =
        create_invite(&mut rng, &org.root, &details("dr.x", KIT_TIME + 100)).unwrap();
    let (y_invite, y_delegation) =
        create_invite(&mut rng, &org.root, &details("dr.y", KIT_TIME + 100)).unwrap();
    let (url, root) = (ks.url(), ks.root);
    let first =
        KsClient::connect_enrolling(&url, &root, &s1.signing, "dr.x", &x_delegation, &x_invite)
            .await
            .unwrap();
    assert_eq!(
        refused(
            KsClient::connect_enrolling(&url, &root, &s2.signing, "dr.y", &y_delegation, &y_invite)
                .await
        ),
        ErrorCode::RateLimited
    );
    // Enrolled devices are not affected.
    assert!(ca.get_logs(&["dr.a"]).await.is_ok());
    // The first stranger did not enroll in time.
    assert_eq!(first.closed_with().await, Some(close::AUTH_TIMEOUT));
    // (The server releases the place just after sending the close.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Its place is free again, and enrolling releases it.
    let b = org.enroll(&mut rng, "dr.b");
    let mut cb = enroll(&ks.url(), &b).await;
    let again =
        KsClient::connect_enrolling(&url, &root, &s2.signing, "dr.y", &y_delegation, &y_invite)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Enrolled sessions outlive the enrollment deadline.
    assert!(cb.get_logs(&["dr.b"]).await.is_ok());
    drop(again);

    ks.stop().await.unwrap();
    remove_db(&db);
}

#[tokio::test]
async fn a_lost_phone_is_revoked_by_the_root_and_a_remaining_device_rotates_the_key() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let db = temp_db_path("lost-phone");
    let ks = TestKeyserver::start(test_config(&org, &db)).await;
    let a = org.enroll(&mut rng, "dr.a");
    let b = org.enroll(&mut rng, "dr.b");
    let mut ca = enroll(&ks.url(), &a).await;
    let mut laptop = enroll(&ks.url(), &b).await;
    let phone = new_device();
    let chain = add_device(&mut laptop, &b.chain, &b.device, &root, &phone).await;
    let p = KsClient::connect(&ks.url(), &ks.root, &phone.signing, "dr.b")
        .await
        .unwrap();

    // The admin's root-signed revocation is relayed by another user's device.
    let revocation = chain.revoke_device_as_root(&org.root, &phone.signing.public_key(), KIT_TIME);
    assert_eq!(ca.append(&revocation).await.unwrap(), 2);
    assert_eq!(p.closed_with().await, Some(close::DEVICE_REVOKED));
    let mut pending = chain.clone();
    pending.apply(&root, &revocation).unwrap();
    assert!(pending.rotation_pending());

    // Until the rotation, the current key is unchanged (senders are warned by
    // their own verifier; the keyserver does not block an urgent message).
    let key = ResourceKey::generate(&mut rng);
    let rid = ResourceId::random(&mut rng);
    let w = wrap_resource_key(&mut rng, &key, &rid, &b.user_key.public_key()).unwrap();
    assert_eq!(
        ca.put_keys(vec![WrappedKeyFor {
            recipient_user_id: "dr.b".into(),
            key: Some(w),
        }])
        .await
        .unwrap(),
        1
    );

    // The laptop rotates; the old key is no longer accepted for new wraps.
    let k2 = UserEncryptionKey::generate(&mut rng);
    let rotation = pending.rotate_user_key(&b.device, &k2.public_key(), KIT_TIME);
    assert_eq!(laptop.append(&rotation).await.unwrap(), 3);
    let logs = ca.get_logs(&["dr.b"]).await.unwrap();
    let seen = verify_log(&root, "dr.b", &logs["dr.b"].entries).unwrap();
    assert!(!seen.rotation_pending());
    assert_eq!(seen.encryption_key(), &k2.public_key());
    let rid2 = ResourceId::random(&mut rng);
    let stale = wrap_resource_key(&mut rng, &key, &rid2, &b.user_key.public_key()).unwrap();
    let e = ca
        .put_keys(vec![WrappedKeyFor {
            recipient_user_id: "dr.b".into(),
            key: Some(stale),
        }])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
    let fresh = wrap_resource_key(&mut rng, &key, &rid2, &k2.public_key()).unwrap();
    assert_eq!(
        ca.put_keys(vec![WrappedKeyFor {
            recipient_user_id: "dr.b".into(),
            key: Some(fresh),
        }])
        .await
        .unwrap(),
        1
    );
    // The laptop grants the new key to itself and reads it back.
    let grant = grant_user_key(&mut rng, &k2, &b.device_key.public_key()).unwrap();
    assert_eq!(laptop.put_grants(vec![grant.clone()]).await.unwrap(), 1);
    assert_eq!(laptop.get_grant(&[]).await.unwrap(), grant);

    ks.stop().await.unwrap();
    remove_db(&db);
}
