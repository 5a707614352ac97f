//! Device linking (issue 13, SECURITY.md §4.9 and §9.3) through the real
//! relay and keyserver: a code shown on the existing device, the new device
//! joining by it, the same six digits on both, the approval with the
//! history; and a relay that swaps or alters the linking messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The WebSocket upgrade callback's error type is tungstenite's.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::Receiver;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use ward_core::ResourceId;
use ward_core::link::LinkError;
use ward_proto::Message as _;
use ward_proto::v1::{LinkClientFrame, LinkServerFrame, link_client_frame, link_server_frame};
use ward_sdk::store::Store;
use ward_sdk::{ClientError, Event, PendingDevice};
use ward_tests::relay::WAIT;
use ward_tests::world::{World, pin};

async fn sent(events: &mut Receiver<Event>, rid: ResourceId) {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(Event::Sent { resource_id }) if resource_id == rid => return,
            Some(_) => {}
            None => panic!("event stream closed"),
        }
    }
}

async fn next_text(events: &mut Receiver<Event>) -> String {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(Event::Message(m)) => return String::from_utf8(m.content.to_vec()).unwrap(),
            Some(_) => {}
            None => panic!("event stream closed"),
        }
    }
}

/// Done-when 3 at the SDK: the phone shows a code, the tablet scans it,
/// both show the same digits, the phone approves; the tablet holds the
/// phone's history and then receives and sends as any device does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanned_code_links_a_device_with_its_history() {
    let w = World::new().await;
    let mut phone = w.enroll("alice@chu", "alice-phone").await;
    let mut bob = w.enroll("bob@chu", "bob-phone").await;
    let (mut phone_ev, mut bob_ev) = (phone.events().unwrap(), bob.events().unwrap());
    let conv = phone.create_conversation(&["bob@chu"]).await.unwrap();
    let before = [
        "WARD-LINK-1: bed 4, troponin rising",
        "WARD-LINK-2: cardiology paged",
    ];
    for t in before {
        let r = phone.send_text(conv, t).await.unwrap();
        sent(&mut phone_ev, r).await;
        assert_eq!(next_text(&mut bob_ev).await, t);
    }
    let r = bob.send_text(conv, "WARD-LINK-3: on my way").await.unwrap();
    sent(&mut bob_ev, r).await;
    assert_eq!(next_text(&mut phone_ev).await, "WARD-LINK-3: on my way");

    let offer = phone.link_device().await.unwrap();
    let code = offer.code().to_owned();
    assert!(code.starts_with("ward-link:1:") && code.ends_with(":alice@chu"));
    let approving = tokio::spawn(async move {
        let request = offer.wait_for_device().await.unwrap();
        let digits = request.sas().to_owned();
        let device = request.device_id();
        (digits, device, request)
    });
    let linking = PendingDevice::link(w.config("alice-tablet"), &code, pin())
        .await
        .unwrap();
    let (digits, device, request) = approving.await.unwrap();
    assert_eq!(linking.sas(), digits, "both screens show the same digits");
    let approving = tokio::spawn(async move { request.approve(true).await });
    let mut tablet = linking.finish().await.unwrap();
    assert_eq!(approving.await.unwrap().unwrap(), 3);
    assert_eq!(tablet.device_id(), device);

    // The history, as the phone holds it.
    let history: Vec<String> = tablet
        .history(conv)
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.content.to_vec()).unwrap())
        .collect();
    assert_eq!(
        history,
        vec![before[0], before[1], "WARD-LINK-3: on my way"]
    );
    let members = &tablet.conversations().await.unwrap()[0].members;
    assert_eq!(members, &["alice@chu", "bob@chu"]);
    let devices = phone.devices().await.unwrap();
    assert_eq!(devices.iter().filter(|d| d.active).count(), 2);

    // A linked device like any other: Bob's next message reaches it, and
    // what it sends reaches Bob.
    let mut tablet_ev = tablet.events().unwrap();
    let r = bob.send_text(conv, "WARD-LINK-4: ECG done").await.unwrap();
    sent(&mut bob_ev, r).await;
    assert_eq!(next_text(&mut tablet_ev).await, "WARD-LINK-4: ECG done");
    let r = tablet
        .send_text(conv, "WARD-LINK-5: from the tablet")
        .await
        .unwrap();
    sent(&mut tablet_ev, r).await;
    assert_eq!(next_text(&mut bob_ev).await, "WARD-LINK-5: from the tablet");
}

/// A refusal adds nothing and wipes the new device's store; a code the
/// relay does not know is `NoSuchLink`, with nothing left behind either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_unknown_link_leaves_nothing() {
    let w = World::new().await;
    let phone = w.enroll("alice@chu", "alice-phone").await;
    let offer = phone.link_device().await.unwrap();
    let code = offer.code().to_owned();
    let refusing = tokio::spawn(async move {
        let request = offer.wait_for_device().await.unwrap();
        request.refuse().await.unwrap();
    });
    let linking = PendingDevice::link(w.config("alice-tablet"), &code, pin())
        .await
        .unwrap();
    let (refused, finished) = tokio::join!(refusing, linking.finish());
    refused.unwrap();
    assert!(matches!(finished.unwrap_err(), ClientError::LinkRefused));
    assert!(!Store::exists(&w.store_path("alice-tablet")));
    assert_eq!(phone.devices().await.unwrap().len(), 1);

    // The same code again: single use, the relay forgot it.
    let err = PendingDevice::link(w.config("alice-tablet"), &code, pin())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoSuchLink), "{err:?}");
    assert!(!Store::exists(&w.store_path("alice-tablet")));
    // Not a code at all.
    let err = PendingDevice::link(w.config("alice-tablet"), "ward-link:1:zz", pin())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Link(LinkError::BadCode(_))),
        "{err:?}"
    );
}

/// What a malicious relay does to the link path, set per test.
#[derive(Clone, Copy)]
enum Attack {
    /// Pair each joiner with the other link's opener.
    SwapJoins,
    /// Flip a bit in the first sealed message towards the opener.
    AlterData,
}

/// A relay that tampers with links: the real relay behind a WebSocket
/// proxy that keeps each connection's path, and rewrites link frames.
struct EvilRelay {
    url: String,
}

impl EvilRelay {
    async fn start(upstream: String, attack: Attack) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        // Rendezvous ids the openers opened: a join is sent to another one.
        let opens: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (upstream, opens) = (upstream.clone(), opens.clone());
                tokio::spawn(async move {
                    let path = Arc::new(Mutex::new(String::new()));
                    let p = path.clone();
                    let Ok(client) = tokio_tungstenite::accept_hdr_async(
                        tcp,
                        move |req: &Request, resp: Response| {
                            *p.lock().unwrap() = req.uri().path().to_owned();
                            Ok(resp)
                        },
                    )
                    .await
                    else {
                        return;
                    };
                    let path = path.lock().unwrap().clone();
                    let Ok((server, _)) =
                        tokio_tungstenite::connect_async(format!("{upstream}{path}")).await
                    else {
                        return;
                    };
                    let (mut c_tx, mut c_rx) = client.split();
                    let (mut s_tx, mut s_rx) = server.split();
                    let join_path = path == "/v2/link/join";
                    let mut first_up = true;
                    let up = async {
                        while let Some(Ok(m)) = c_rx.next().await {
                            let m = match m {
                                WsMessage::Binary(b) if join_path && first_up => {
                                    first_up = false;
                                    WsMessage::Binary(rewrite_join(&b, &opens, attack).into())
                                }
                                WsMessage::Binary(b) if path == "/v2/link" => {
                                    if let Ok(LinkClientFrame {
                                        frame: Some(link_client_frame::Frame::Open(o)),
                                    }) = LinkClientFrame::decode(&b[..])
                                        && o.rendezvous.len() == 32
                                    {
                                        opens.lock().unwrap().push(o.rendezvous);
                                    }
                                    WsMessage::Binary(b)
                                }
                                WsMessage::Close(_) => break,
                                m => m,
                            };
                            if s_tx.send(m).await.is_err() {
                                break;
                            }
                        }
                        let _ = s_tx.close().await;
                    };
                    let mut altered = false;
                    let down = async {
                        while let Some(Ok(m)) = s_rx.next().await {
                            let m = match m {
                                // The opener's first data (the hello) altered.
                                WsMessage::Binary(b)
                                    if matches!(attack, Attack::AlterData)
                                        && path == "/v2/link"
                                        && !altered
                                        && is_hello_data(&b) =>
                                {
                                    altered = true;
                                    let mut v = b.to_vec();
                                    let at = v.len() - 20;
                                    v[at] ^= 1;
                                    WsMessage::Binary(v.into())
                                }
                                WsMessage::Close(_) => break,
                                m => m,
                            };
                            if c_tx.send(m).await.is_err() {
                                break;
                            }
                        }
                        let _ = c_tx.close().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { url }
    }
}

/// A relay frame carrying sealed data the size of a hello (it holds an
/// X-Wing key), not a handshake or control frame.
fn is_hello_data(frame: &[u8]) -> bool {
    matches!(
        LinkServerFrame::decode(frame),
        Ok(LinkServerFrame { frame: Some(link_server_frame::Frame::Data(d)) }) if d.len() > 1000
    )
}

/// The join frame, pointed at another user's link when swapping.
fn rewrite_join(frame: &[u8], opens: &Mutex<Vec<Vec<u8>>>, attack: Attack) -> Vec<u8> {
    let Ok(LinkClientFrame {
        frame: Some(link_client_frame::Frame::Join(mut join)),
    }) = LinkClientFrame::decode(frame)
    else {
        return frame.to_vec();
    };
    if matches!(attack, Attack::SwapJoins)
        && let Some(other) = opens
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| **r != join.rendezvous)
    {
        join.rendezvous = other.clone();
    }
    LinkClientFrame {
        frame: Some(link_client_frame::Frame::Join(join)),
    }
    .encode_to_vec()
}

/// Done-when 3's attack: a relay that pairs one user's new device with
/// another user's link is caught by the existing device (the hello does
/// not open under its code's key) and nothing is approved; a relay that
/// alters a linking message likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_swaps_or_alters_linking_messages_is_detected() {
    let w = World::new().await;

    // Swap: Carol's new device is paired with Alice's link.
    let evil = EvilRelay::start(w.relay.url(), Attack::SwapJoins).await;
    let mut alice_cfg = w.config("alice-phone");
    alice_cfg.relay_url = evil.url.clone();
    let alice = w.enroll_with("alice@chu", alice_cfg).await;
    let mut carol_cfg = w.config("carol-phone");
    carol_cfg.relay_url = evil.url.clone();
    let carol = w.enroll_with("carol@chu", carol_cfg).await;
    let alice_offer = alice.link_device().await.unwrap();
    let carol_offer = carol.link_device().await.unwrap();
    let (alice_code, carol_code) = (alice_offer.code().to_owned(), carol_offer.code().to_owned());
    let alice_waits = tokio::spawn(alice_offer.wait_for_device());
    let carol_waits = tokio::spawn(carol_offer.wait_for_device());
    // Each tablet is paired with the other user's link.
    let mut tablet_cfg = w.config("alice-tablet");
    tablet_cfg.relay_url = evil.url.clone();
    let mut carol_tablet_cfg = w.config("carol-tablet");
    carol_tablet_cfg.relay_url = evil.url.clone();
    let (alice_tablet, carol_tablet) = tokio::join!(
        PendingDevice::link(tablet_cfg, &alice_code, pin()),
        PendingDevice::link(carol_tablet_cfg, &carol_code, pin()),
    );
    for waits in [alice_waits, carol_waits] {
        let err = waits.await.unwrap().unwrap_err();
        assert!(
            matches!(err, ClientError::Link(LinkError::Tampered)),
            "{err:?}"
        );
    }
    assert!(alice_tablet.is_err() && carol_tablet.is_err());
    assert!(!Store::exists(&w.store_path("alice-tablet")));
    assert!(!Store::exists(&w.store_path("carol-tablet")));
    assert_eq!(alice.devices().await.unwrap().len(), 1);
    assert_eq!(carol.devices().await.unwrap().len(), 1);

    // Alter: a bit flipped in the hello on its way to Bob's phone.
    let evil = EvilRelay::start(w.relay.url(), Attack::AlterData).await;
    let mut bob_cfg = w.config("bob-phone");
    bob_cfg.relay_url = evil.url.clone();
    let bob = w.enroll_with("bob@chu", bob_cfg).await;
    let offer = bob.link_device().await.unwrap();
    let code = offer.code().to_owned();
    let waits = tokio::spawn(offer.wait_for_device());
    let mut cfg = w.config("bob-tablet");
    cfg.relay_url = evil.url.clone();
    let joined = PendingDevice::link(cfg, &code, pin()).await;
    let err = waits.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Link(LinkError::Tampered)),
        "{err:?}"
    );
    assert!(joined.is_err());
    assert!(!Store::exists(&w.store_path("bob-tablet")));
    assert_eq!(bob.devices().await.unwrap().len(), 1);
}

/// The new device's app dies right after the user approved: the device is
/// in the log, and `PendingDevice::resume` + `complete` finish it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_after_the_approval_is_finished_by_resume() {
    let w = World::new().await;
    let phone = w.enroll("alice@chu", "alice-phone").await;
    let offer = phone.link_device().await.unwrap();
    let code = offer.code().to_owned();
    let waiting = tokio::spawn(offer.wait_for_device());
    let linking = PendingDevice::link(w.config("alice-tablet"), &code, pin())
        .await
        .unwrap();
    let request = waiting.await.unwrap().unwrap();
    // The tablet's app is gone before it reads the approval.
    drop(linking);
    // The approval itself (log entry, grants) does not need the tablet; the
    // history cannot reach it.
    let _ = request.approve(true).await;
    assert_eq!(
        phone
            .devices()
            .await
            .unwrap()
            .iter()
            .filter(|d| d.active)
            .count(),
        2
    );
    let pending = PendingDevice::resume(w.config("alice-tablet"), pin())
        .await
        .unwrap();
    let tablet = pending.complete().await.unwrap();
    assert_eq!(tablet.user_id(), "alice@chu");
}
