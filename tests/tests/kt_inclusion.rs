//! Key transparency for other users' logs (SECURITY.md §18.9, issue 14
//! "clients check proofs"): whenever a device accepts a colleague's log
//! head, that head must be in a published epoch of the directory. What a
//! user relies on: a message from a colleague whose log the directory
//! holds arrives as usual (also while no epoch holds the newest head yet),
//! and a keyserver that shows this device a log the directory does not
//! hold is reported and refused, never silently believed. Through the real
//! servers on loopback (100 ms epochs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use ward_proto::v1::{ErrorCode, KsError, ks_request, ks_response};
use ward_sdk::store::Message;
use ward_sdk::{Client, ClientConfig, ClientError, Event, KtAlert};
use ward_tests::proxy::ks_hook;
use ward_tests::world::{World, pin};

/// The monitor's interval (the keyserver publishes every 100 ms).
const KT: Duration = Duration::from_millis(200);

/// Several monitor rounds and epochs.
const QUIET: Duration = Duration::from_millis(1500);

fn config(w: &World, name: &str) -> ClientConfig {
    let mut c = w.config(name);
    c.kt_interval = Some(KT);
    c
}

/// What a test watches for.
#[derive(Debug)]
enum Seen {
    Message(Message),
    Rejected(ClientError),
    Alert(KtAlert),
}

/// Events within `within`, or until `stop` says enough.
async fn watch(
    rx: &mut Receiver<Event>,
    within: Duration,
    mut stop: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while !stop(&out) {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        match e {
            Event::Message(m) => out.push(Seen::Message(m)),
            Event::Rejected { reason, .. } => out.push(Seen::Rejected(reason)),
            Event::TransparencyAlert { alert } => out.push(Seen::Alert(alert)),
            _ => {}
        }
    }
    out
}

fn messages(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Message(m) => Some(String::from_utf8_lossy(&m.content).into_owned()),
            _ => None,
        })
        .collect()
}

fn alerts(seen: &[Seen]) -> Vec<&KtAlert> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Alert(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// The GetInclusion requests `user_id`'s devices sent through the proxy
/// since `mark`, for `about`.
fn inclusions(w: &World, mark: usize, user_id: &str, about: &str) -> usize {
    w.ks_proxy
        .as_ref()
        .unwrap()
        .ks_requests(mark, user_id)
        .into_iter()
        .filter(
            |r| matches!(&r.body, Some(ks_request::Body::GetInclusion(g)) if g.user_id == about),
        )
        .count()
}

/// (a) Alice and Bob write to each other: each checks the other's head in
/// the directory (the requests go out), both messages arrive, no alert.
#[tokio::test]
async fn a_colleagues_head_in_the_directory_is_checked_and_accepted() {
    let w = World::with_keyserver_proxy().await;
    let mut alice = w.enroll_with("alice@chu", config(&w, "alice")).await;
    let mut bob = w.enroll_with("bob@chu", config(&w, "bob")).await;
    let (mut a_ev, mut b_ev) = (alice.events().unwrap(), bob.events().unwrap());
    // Both heads in an epoch before anyone looks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mark = w.ks_proxy.as_ref().unwrap().mark();

    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    alice
        .send_text(conv, "WARD-KTI-1: bed 4 ready")
        .await
        .unwrap();
    let seen = watch(&mut b_ev, Duration::from_secs(10), |s| {
        !messages(s).is_empty()
    })
    .await;
    assert_eq!(messages(&seen), vec!["WARD-KTI-1: bed 4 ready"]);
    bob.send_text(conv, "WARD-KTI-2: on my way").await.unwrap();
    let seen = watch(&mut a_ev, Duration::from_secs(10), |s| {
        !messages(s).is_empty()
    })
    .await;
    assert_eq!(messages(&seen), vec!["WARD-KTI-2: on my way"]);

    assert!(inclusions(&w, mark, "bob@chu", "alice@chu") >= 1);
    assert!(inclusions(&w, mark, "alice@chu", "bob@chu") >= 1);
    assert!(alerts(&watch(&mut b_ev, QUIET, |_| false).await).is_empty());
    assert!(alerts(&watch(&mut a_ev, QUIET, |_| false).await).is_empty());
    assert!(bob.transparency_pending().is_empty());
    assert!(alice.transparency_pending().is_empty());
}

/// (a') A head no epoch holds yet (the keyserver answers UNAVAILABLE, as
/// right after Alice's log changed) does not hold up the message: it is
/// accepted, pending, and confirmed at a later monitor round.
#[tokio::test]
async fn a_head_not_yet_in_an_epoch_is_accepted_then_confirmed() {
    let (w, mark) = accepted_then_confirmed(ErrorCode::Unavailable).await;
    assert_eq!(get_logs(&w, mark, "bob@chu", "alice@chu"), 1);
}

/// (a'') A head superseded before an epoch (NOT_FOUND: her log grew twice
/// between two epochs) makes Bob fetch Alice's log again; it did not grow,
/// so the head is pending, and confirmed at a later round.
#[tokio::test]
async fn a_superseded_head_is_fetched_again_then_confirmed() {
    let (w, mark) = accepted_then_confirmed(ErrorCode::NotFound).await;
    assert_eq!(get_logs(&w, mark, "bob@chu", "alice@chu"), 2);
}

/// The GetLogs requests of `user_id`'s devices naming `about` since `mark`.
fn get_logs(w: &World, mark: usize, user_id: &str, about: &str) -> usize {
    w.ks_proxy
        .as_ref()
        .unwrap()
        .ks_requests(mark, user_id)
        .into_iter()
        .filter(|r| {
            matches!(&r.body, Some(ks_request::Body::GetLogs(g)) if g.user_ids.iter().any(|u| u == about))
        })
        .count()
}

/// Bob's first inclusion proof answered with `code`: Alice's message
/// arrives, her head is pending, then confirmed without an alert.
async fn accepted_then_confirmed(code: ErrorCode) -> (World, usize) {
    let w = World::with_keyserver_proxy().await;
    let mark = w.ks_proxy.as_ref().unwrap().mark();
    let alice = w.enroll_with("alice@chu", config(&w, "alice")).await;
    let mut bob = w.enroll_with("bob@chu", config(&w, "bob")).await;
    let mut b_ev = bob.events().unwrap();
    let bob_id = bob.device_id().as_bytes().to_vec();
    // Bob's first inclusion proof is not there yet.
    let unavailable = Arc::new(AtomicBool::new(true));
    let flag = unavailable.clone();
    w.ks_proxy
        .as_ref()
        .unwrap()
        .set_hook(ks_hook(move |peer, mut resp| {
            if peer.device_id == bob_id
                && matches!(resp.body, Some(ks_response::Body::InclusionProof(_)))
                && flag.swap(false, Ordering::SeqCst)
            {
                resp.body = Some(ks_response::Body::Error(KsError {
                    code: code as i32,
                    detail: "not in an epoch".to_owned(),
                }));
            }
            vec![resp]
        }));

    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    alice
        .send_text(conv, "WARD-KTI-3: labs back")
        .await
        .unwrap();
    let seen = watch(&mut b_ev, Duration::from_secs(10), |s| {
        !messages(s).is_empty()
    })
    .await;
    assert_eq!(messages(&seen), vec!["WARD-KTI-3: labs back"]);
    assert!(!unavailable.load(Ordering::SeqCst), "the check was made");

    // Confirmed within a few rounds, without an alert.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !bob.transparency_pending().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Refused once, then asked again at a round and answered.
    assert!(inclusions(&w, mark, "bob@chu", "alice@chu") >= 2);
    assert!(alerts(&watch(&mut b_ev, QUIET, |_| false).await).is_empty());
    drop((alice, bob));
    (w, mark)
}

/// (b) A keyserver that serves Bob Alice's log with an inclusion proof that
/// does not hold (another path: the head is not in the signed tree) makes
/// Bob raise the alert and refuse the message, as for a log that does not
/// verify; served honestly again, Alice's next message arrives.
#[tokio::test]
async fn a_head_the_directory_refutes_is_reported_and_refused() {
    let w = World::with_keyserver_proxy().await;
    let alice = w.enroll_with("alice@chu", config(&w, "alice")).await;
    let mut bob = w.enroll_with("bob@chu", config(&w, "bob")).await;
    let mut b_ev = bob.events().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob_id = bob.device_id().as_bytes().to_vec();
    let tampered = Arc::new(AtomicUsize::new(0));
    let count = tampered.clone();
    let proxy = w.ks_proxy.as_ref().unwrap();
    proxy.set_hook(ks_hook(move |peer, mut resp| {
        if peer.device_id == bob_id
            && let Some(ks_response::Body::InclusionProof(p)) = resp.body.as_mut()
        {
            match p.path.first_mut() {
                Some(node) => node[0] ^= 1,
                None => p.leaf_index += 1,
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
        vec![resp]
    }));

    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    alice
        .send_text(conv, "WARD-KTI-4: do not show")
        .await
        .unwrap();
    let seen = watch(&mut b_ev, Duration::from_secs(10), |s| {
        s.iter().any(|x| matches!(x, Seen::Rejected(_))) && !alerts(s).is_empty()
    })
    .await;
    assert!(tampered.load(Ordering::SeqCst) >= 1);
    assert!(messages(&seen).is_empty(), "{seen:?}");
    let expected = KtAlert::HeadNotInDirectory {
        user_id: "alice@chu".to_owned(),
        log_len: 1,
    };
    assert_eq!(alerts(&seen), vec![&expected], "{seen:?}");
    assert!(
        seen.iter().any(|x| matches!(
            x,
            Seen::Rejected(ClientError::Transparency(a)) if *a == expected
        )),
        "{seen:?}"
    );
    assert!(bob.history(conv).await.unwrap_or_default().is_empty());

    // The log was not kept: served honestly, it is fetched, checked and
    // accepted, and the next message arrives.
    proxy.clear_hook();
    alice
        .send_text(conv, "WARD-KTI-5: honest again")
        .await
        .unwrap();
    let seen = watch(&mut b_ev, Duration::from_secs(10), |s| {
        !messages(s).is_empty()
    })
    .await;
    assert_eq!(messages(&seen), vec!["WARD-KTI-5: honest again"]);
}

/// (c) After a restart the view carries over: Alice's log grew meanwhile
/// (a second device), Bob checks the new head from the view he stored
/// (a consistency proof from it) and her message arrives, no alert.
#[tokio::test]
async fn checking_goes_on_after_a_restart() {
    let w = World::with_keyserver_proxy().await;
    let alice = w.enroll_with("alice@chu", config(&w, "alice")).await;
    let mut bob = w.enroll_with("bob@chu", config(&w, "bob")).await;
    let mut b_ev = bob.events().unwrap();
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    alice.send_text(conv, "WARD-KTI-6: first").await.unwrap();
    let seen = watch(&mut b_ev, Duration::from_secs(10), |s| {
        !messages(s).is_empty()
    })
    .await;
    assert_eq!(messages(&seen), vec!["WARD-KTI-6: first"]);
    tokio::time::sleep(QUIET).await;
    drop(b_ev);
    bob.lock().await;

    // Alice links a tablet while Bob is away.
    let pending = Client::pair_new_device(config(&w, "alice-tablet"), "alice@chu", pin())
        .await
        .unwrap();
    alice.approve_device(&pending.device_keys()).await.unwrap();
    let _tablet = pending.complete().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mark = w.ks_proxy.as_ref().unwrap().mark();
    let mut bob = Client::unlock(config(&w, "bob"), pin()).await.unwrap();
    let mut b_ev = bob.events().unwrap();
    alice.send_text(conv, "WARD-KTI-7: after").await.unwrap();
    let seen = watch(&mut b_ev, Duration::from_secs(10), |s| {
        !messages(s).is_empty()
    })
    .await;
    assert_eq!(messages(&seen), vec!["WARD-KTI-7: after"]);
    assert!(inclusions(&w, mark, "bob@chu", "alice@chu") >= 1);
    assert!(alerts(&watch(&mut b_ev, QUIET, |_| false).await).is_empty());
    assert!(bob.transparency_pending().is_empty());
}
