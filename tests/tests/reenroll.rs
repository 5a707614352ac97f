//! A device store written by the protocol v1 SDK, re-enrolled through the
//! real servers from a new invite (`Client::reenroll`, SECURITY.md §14.9):
//! the clinician keeps the store, its PIN and its history.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ward_sdk::store::Pin;
use ward_sdk::{Client, ClientError, Event};
use ward_tests::relay::WAIT;
use ward_tests::world::World;

/// The v1 fixture's PIN and conversation (`sdk/tests/store.rs`).
const FIXTURE_PIN: &str = "271828";
const FIXTURE_CONV: [u8; 16] = [0xc0; 16];

fn fixture_pin() -> Pin {
    Pin::new(FIXTURE_PIN.into()).unwrap()
}

/// A copy of the committed v1 store as the device store `name` of `w`.
fn v1_store(w: &World, name: &str) {
    let fixtures = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sdk/tests/fixtures"
    ));
    let path = w.store_path(name);
    std::fs::copy(fixtures.join("store-v1.db"), &path).unwrap();
    let mut header = path.clone().into_os_string();
    header.push(".header");
    std::fs::copy(fixtures.join("store-v1.db.header"), header).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_store_reenrolls_from_a_new_invite_and_keeps_its_history() {
    let w = World::new().await;
    let mut bob = w.enroll("bob@chu", "bob").await;
    let mut eb = bob.events().unwrap();
    v1_store(&w, "old-phone");
    assert!(matches!(
        Client::unlock(w.config("old-phone"), fixture_pin()).await,
        Err(ClientError::ReenrollRequired)
    ));

    // An invite the keyserver refuses (its user id is taken): the store is
    // left reset, history kept, for another try.
    let (taken, taken_secret) = w.invite("bob@chu");
    assert!(
        Client::reenroll(w.config("old-phone"), &taken, &taken_secret, fixture_pin())
            .await
            .is_err()
    );

    let (invite, secret) = w.invite("fixture@ward");
    let mut client = Client::reenroll(w.config("old-phone"), &invite, &secret, fixture_pin())
        .await
        .expect("reenroll");
    assert_eq!(client.user_id(), "fixture@ward");
    let history = client
        .history(ward_sdk::core::ConversationId(FIXTURE_CONV))
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "the v1 history is kept");
    assert_eq!(&history[0].content[..], b"fixture message one");

    // A working v2 device: it messages a colleague.
    let mut events = client.events().unwrap();
    let conv = client.conversation_with(&["bob@chu"]).await.unwrap();
    let rid = client
        .send_text(conv, "back on the new protocol")
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Sent { resource_id } if resource_id == rid => break,
            _ => {}
        }
    }
    loop {
        let ev = tokio::time::timeout(WAIT, eb.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::Message(m) = ev {
            assert_eq!(&m.content[..], b"back on the new protocol");
            assert_eq!(m.sender_user_id, "fixture@ward");
            break;
        }
    }
    client.lock().await;

    // Enrolled now: a second reenroll is refused and changes nothing; the
    // store unlocks with the same PIN.
    let (again, again_secret) = w.invite("fixture2@ward");
    assert!(matches!(
        Client::reenroll(w.config("old-phone"), &again, &again_secret, fixture_pin()).await,
        Err(ClientError::AlreadyEnrolled)
    ));
    let client = Client::unlock(w.config("old-phone"), fixture_pin())
        .await
        .expect("unlock after reenroll");
    assert_eq!(client.user_id(), "fixture@ward");
    client.lock().await;
    bob.lock().await;
}
