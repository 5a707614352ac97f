//! Keyserver quotas and retention (issue 9, item 4 and done-when 4), against
//! the real keyserver on 127.0.0.1:0: an insider cannot store more wrapped
//! keys or grants than its quota and gets the typed `QUOTA_EXCEEDED`;
//! wrapped keys older than the retention are deleted, which frees quota.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ward_core::ResourceId;
use ward_core::keys::ResourceKey;
use ward_core::testkit::{KIT_TIME, Org};
use ward_core::wrap::{grant_user_key, wrap_resource_key};
use ward_keyserver::{Clock, Quotas};
use ward_proto::v1::{ErrorCode, WrappedKeyFor};
use ward_tests::keyserver::*;

#[tokio::test]
async fn an_insider_cannot_store_more_than_its_quota_and_old_keys_expire() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let db = temp_db_path("quota");
    let now = Arc::new(AtomicU64::new(KIT_TIME));
    let mut config = test_config(&org, &db);
    let clock = now.clone();
    config.clock = Clock::from_fn(move || clock.load(Ordering::Relaxed));
    config.limits.quotas = Quotas {
        wrapped_keys_per_user: 4,
        grants_per_user: 0,
        retention: Duration::from_secs(10 * 86_400),
    };
    let ks = TestKeyserver::start(config).await;
    let a = org.enroll(&mut rng, "dr.a");
    let b = org.enroll(&mut rng, "dr.b");
    let c = org.enroll(&mut rng, "dr.c");
    let mut ca = enroll(&ks.url(), &a).await;
    let mut cb = enroll(&ks.url(), &b).await;
    let mut cc = enroll(&ks.url(), &c).await;

    let key = ResourceKey::generate(&mut rng);
    let to_b = |rid: &ResourceId| WrappedKeyFor {
        recipient_user_id: "dr.b".into(),
        key: Some(
            wrap_resource_key(&mut rand::rng(), &key, rid, &b.user_key.public_key()).unwrap(),
        ),
    };
    let rids: Vec<ResourceId> = (0..6).map(|_| ResourceId::random(&mut rng)).collect();
    let first: Vec<WrappedKeyFor> = rids[..4].iter().map(to_b).collect();
    assert_eq!(ca.put_keys(first.clone()).await.unwrap(), 4);
    // Idempotent retries are not counted again.
    assert_eq!(ca.put_keys(first[..1].to_vec()).await.unwrap(), 1);
    // One more: refused, typed, and nothing of the request stored.
    let e = ca.put_keys(vec![to_b(&rids[4])]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded));
    let got = cb.get_keys(&[rids[4].as_bytes()]).await.unwrap();
    assert!(got.keys.is_empty());
    // The quota is per user: another sender is unaffected.
    assert_eq!(cc.put_keys(vec![to_b(&rids[5])]).await.unwrap(), 1);

    // Grants have their own quota (0 here).
    let grant = grant_user_key(&mut rng, &a.user_key, &a.device_key.public_key()).unwrap();
    let e = ca.put_grants(vec![grant]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded));

    // Past the retention, A's keys are deleted and its quota is free again.
    now.fetch_add(11 * 86_400, Ordering::Relaxed);
    assert_eq!(ca.put_keys(vec![to_b(&rids[4])]).await.unwrap(), 1);
    let got = cb
        .get_keys(&[rids[0].as_bytes(), rids[4].as_bytes()])
        .await
        .unwrap();
    assert_eq!(got.keys.len(), 1, "the expired key is gone");
    assert_eq!(got.missing, vec![rids[0].as_bytes().to_vec()]);

    ks.stop().await.unwrap();
    remove_db(&db);
}
