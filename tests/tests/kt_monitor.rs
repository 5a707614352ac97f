//! Key transparency on the devices (SECURITY.md §18.8, issue 14 done-when
//! 2): each device follows the keyserver's directory and watches its own
//! user's leaves. What a user relies on: a device linked to their account
//! by anyone but this device shows up here at the next epoch, and a
//! directory that forks is reported, never followed. Through the real
//! servers on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use ward_core::keys::{DirectoryKey, SigningPublicKey};
use ward_core::transparency::{KtError, SignedEpoch};
use ward_proto::v1::ks_response;
use ward_sdk::{Client, ClientConfig, Event, KtAlert};
use ward_tests::proxy::ks_hook;
use ward_tests::world::{World, pin};

/// The monitor's interval in these tests (the keyserver publishes every
/// 100 ms).
const KT: Duration = Duration::from_millis(200);

fn config(w: &World, name: &str) -> ClientConfig {
    let mut c = w.config(name);
    c.kt_interval = Some(KT);
    c
}

/// What the monitor raised.
#[derive(Debug, PartialEq)]
enum Kt {
    Added {
        device: SigningPublicKey,
        by: SigningPublicKey,
    },
    Alert(KtAlert),
}

/// The monitor's events within `within` (others ignored).
async fn kt_events(rx: &mut Receiver<Event>, within: Duration) -> Vec<Kt> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        match e {
            Event::DeviceAdded {
                device_id,
                added_by,
            } => out.push(Kt::Added {
                device: device_id,
                by: added_by,
            }),
            Event::TransparencyAlert { alert } => out.push(Kt::Alert(alert)),
            _ => {}
        }
    }
    out
}

/// The first monitor event, waiting at most `within`; how long it took.
async fn first_kt_event(rx: &mut Receiver<Event>, within: Duration) -> (Kt, Duration) {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a key-transparency event in time")
            .expect("events open");
        match e {
            Event::DeviceAdded {
                device_id,
                added_by,
            } => {
                return (
                    Kt::Added {
                        device: device_id,
                        by: added_by,
                    },
                    start.elapsed(),
                );
            }
            Event::TransparencyAlert { alert } => return (Kt::Alert(alert), start.elapsed()),
            _ => {}
        }
    }
}

/// The next key-transparency event, within 5 s, must report `device` as
/// added by `by`; how long it took.
async fn reported_added(rx: &mut Receiver<Event>, device: &Client, by: &Client) -> Duration {
    let (e, took) = first_kt_event(rx, Duration::from_secs(5)).await;
    assert_eq!(
        e,
        Kt::Added {
            device: device.device_id(),
            by: by.device_id()
        }
    );
    took
}

/// `approver` approves a new device of `user_id` stored as `name`; the
/// new device's client.
async fn add_device(w: &World, approver: &Client, user_id: &str, name: &str) -> Client {
    let pending = Client::pair_new_device(config(w, name), user_id, pin())
        .await
        .unwrap();
    approver
        .approve_device(&pending.device_keys())
        .await
        .unwrap();
    pending.complete().await.unwrap()
}

/// Several monitor rounds and epochs.
const QUIET: Duration = Duration::from_millis(1500);

/// (a) The device that approves a new one is not alarmed by it; the new
/// device is not alarmed by the devices that were there before it joined
/// (the device that added it vouched for the log as it stood).
#[tokio::test]
async fn a_device_this_one_approved_and_the_devices_before_it_raise_nothing() {
    let w = World::new().await;
    let mut phone = w.enroll_with("alice@chu", config(&w, "phone")).await;
    let mut phone_ev = phone.events().unwrap();
    let mut tablet = add_device(&w, &phone, "alice@chu", "tablet").await;
    let mut tablet_ev = tablet.events().unwrap();
    assert_eq!(kt_events(&mut phone_ev, QUIET).await, vec![]);
    assert_eq!(kt_events(&mut tablet_ev, Duration::ZERO).await, vec![]);
    // The monitors ran: a device the tablet then approves is reported to
    // the phone (which did not add it), not to the tablet.
    let laptop = add_device(&w, &tablet, "alice@chu", "laptop").await;
    reported_added(&mut phone_ev, &laptop, &tablet).await;
    assert_eq!(kt_events(&mut tablet_ev, QUIET).await, vec![]);
}

/// (b) Done-when 2: a device added by another device of the user while
/// this one runs is reported at the next epoch, once.
#[tokio::test]
async fn a_device_added_by_another_device_is_reported_within_an_epoch() {
    let w = World::new().await;
    let mut phone1 = w.enroll_with("alice@chu", config(&w, "phone1")).await;
    let mut ev1 = phone1.events().unwrap();
    let phone2 = add_device(&w, &phone1, "alice@chu", "phone2").await;
    // Bob's devices are not Alice's business.
    let _bob = w.enroll_with("bob@chu", config(&w, "bob")).await;
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);

    let stranger = add_device(&w, &phone2, "alice@chu", "stranger").await;
    let took = reported_added(&mut ev1, &stranger, &phone2).await;
    // One epoch (100 ms) plus one monitor round (200 ms), with slack for
    // a loaded machine.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Reported once.
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);
    // The user can act on it at once.
    phone1.revoke_device(&stranger.device_id()).await.unwrap();
}

/// (c) A keyserver that serves a forked epoch (validly signed by its
/// directory key, another tree) is reported once, and the device keeps its
/// last good epoch: once the real directory is served again it goes on
/// monitoring from there.
#[tokio::test]
async fn a_forked_epoch_is_reported_once_and_never_followed() {
    let w = World::with_keyserver_proxy().await;
    let mut phone1 = w.enroll_with("alice@chu", config(&w, "phone1")).await;
    let mut ev1 = phone1.events().unwrap();
    let phone2 = add_device(&w, &phone1, "alice@chu", "phone2").await;
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);

    // The keyserver holds its directory key: it can sign anything.
    let directory = DirectoryKey::import_secret(w.org.root_public().as_bytes()).unwrap();
    let phone1_id = phone1.device_id().as_bytes().to_vec();
    let proxy = w.ks_proxy.as_ref().unwrap();
    proxy.set_hook(ks_hook(move |peer, mut resp| {
        if peer.device_id == phone1_id
            && let Some(ks_response::Body::EpochProof(p)) = resp.body.as_mut()
            && let Some(e) = p.epoch.as_ref()
        {
            let mut head = SignedEpoch::from_proto(e).unwrap().head;
            head.epoch += 1000;
            head.root[0] ^= 1;
            p.epoch = Some(SignedEpoch::sign(head, &directory).to_proto());
        }
        vec![resp]
    }));
    let (e, _) = first_kt_event(&mut ev1, Duration::from_secs(5)).await;
    assert_eq!(e, Kt::Alert(KtAlert::Epoch(KtError::Fork)));
    // Once per problem, not every round.
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);

    // Served honestly again: had the device moved to the forked epoch, the
    // real one would not extend it and nothing would be reported.
    proxy.clear_hook();
    let stranger = add_device(&w, &phone2, "alice@chu", "stranger").await;
    reported_added(&mut ev1, &stranger, &phone2).await;
}

/// (c') Leaves that do not recompute the epoch's root (one of them
/// rewritten for this device) are reported; the epoch is not kept.
#[tokio::test]
async fn leaves_that_do_not_match_the_root_are_reported() {
    let w = World::with_keyserver_proxy().await;
    let mut phone = w.enroll_with("alice@chu", config(&w, "phone")).await;
    let mut ev = phone.events().unwrap();
    assert_eq!(kt_events(&mut ev, QUIET).await, vec![]);
    let phone_id = phone.device_id().as_bytes().to_vec();
    w.ks_proxy
        .as_ref()
        .unwrap()
        .set_hook(ks_hook(move |peer, mut resp| {
            if peer.device_id == phone_id
                && let Some(ks_response::Body::Leaves(l)) = resp.body.as_mut()
            {
                for leaf in &mut l.leaves {
                    leaf.head_hash[0] ^= 1;
                }
            }
            vec![resp]
        }));
    // A new leaf to fetch.
    let _bob = w.enroll("bob@chu", "bob").await;
    let (e, _) = first_kt_event(&mut ev, Duration::from_secs(5)).await;
    assert!(
        matches!(e, Kt::Alert(KtAlert::LeavesMismatch { .. })),
        "{e:?}"
    );
    assert_eq!(kt_events(&mut ev, QUIET).await, vec![]);
}

/// (d) The view and the devices reported persist: after a restart, no
/// second report, and an epoch older than the one held before the restart
/// is refused at the first round (a fresh view would have taken it on its
/// signature); a later addition is reported as usual.
#[tokio::test]
async fn the_view_persists_across_a_restart() {
    let w = World::with_keyserver_proxy().await;
    let mut phone1 = w.enroll_with("alice@chu", config(&w, "phone1")).await;
    let mut ev1 = phone1.events().unwrap();
    let phone2 = add_device(&w, &phone1, "alice@chu", "phone2").await;
    let stranger = add_device(&w, &phone2, "alice@chu", "stranger").await;
    reported_added(&mut ev1, &stranger, &phone2).await;
    // Some epochs later, so that epoch 1 is behind the one held.
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);
    drop(ev1);
    let phone1_id = phone1.device_id().as_bytes().to_vec();
    phone1.lock().await;

    // While it is locked, the keyserver starts serving its latest tree as
    // epoch 1 (validly signed).
    let directory = DirectoryKey::import_secret(w.org.root_public().as_bytes()).unwrap();
    let proxy = w.ks_proxy.as_ref().unwrap();
    proxy.set_hook(ks_hook(move |peer, mut resp| {
        if peer.device_id == phone1_id
            && let Some(ks_response::Body::EpochProof(p)) = resp.body.as_mut()
            && let Some(e) = p.epoch.as_ref()
        {
            let mut head = SignedEpoch::from_proto(e).unwrap().head;
            head.epoch = 1;
            p.epoch = Some(SignedEpoch::sign(head, &directory).to_proto());
        }
        vec![resp]
    }));
    let mut phone1 = Client::unlock(config(&w, "phone1"), pin()).await.unwrap();
    let mut ev1 = phone1.events().unwrap();
    let (e, _) = first_kt_event(&mut ev1, Duration::from_secs(5)).await;
    assert_eq!(
        e,
        Kt::Alert(KtAlert::Epoch(KtError::Rollback("epoch number")))
    );
    proxy.clear_hook();
    // No second report of the stranger, no more alerts.
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);
    let another = add_device(&w, &phone2, "alice@chu", "another").await;
    reported_added(&mut ev1, &another, &phone2).await;
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);
}

/// `kt_interval: None` turns the monitor off: nothing is reported.
#[tokio::test]
async fn the_monitor_can_be_turned_off() {
    let w = World::new().await;
    let mut c = config(&w, "phone1");
    c.kt_interval = None;
    let mut phone1 = w.enroll_with("alice@chu", c).await;
    let mut ev1 = phone1.events().unwrap();
    let phone2 = add_device(&w, &phone1, "alice@chu", "phone2").await;
    let _stranger = add_device(&w, &phone2, "alice@chu", "stranger").await;
    assert_eq!(kt_events(&mut ev1, QUIET).await, vec![]);
}
