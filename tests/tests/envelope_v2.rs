//! Issue 8, done-when 3, for the envelope (items 3 and 8): a malicious
//! *sender*. Mallory is a real enrolled device (its log at the real
//! keyserver, authenticated at the real relay) whose app is replaced by code
//! written from SECURITY.md §7 with the raw primitives. Bob and Carol are
//! real SDK clients. What Mallory's code tries, and what must happen:
//!
//! * one signed envelope for Bob and Carol whose header commits to key K1
//!   while its ciphertext is under K2; K2 is wrapped to Bob (without the
//!   commitment he would read a text Carol never sees), K1 to Carol: Bob
//!   refuses it with `Open(KeyCommitmentMismatch)`, Carol with
//!   `Open(Undecryptable)`, neither shows or stores anything, and both
//!   keep receiving;
//! * a genuine envelope re-sent with its *outer* bytes re-encoded (the
//!   signature still verifies): deduplication keys on the signed (sender,
//!   resource id), so it is a typed `Replay`, never a second message.
// Helpers outside `#[test]` functions may fail the test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Receiver;
use ward_core::chain::{VerifiedUser, verify_log};
use ward_core::envelope::{ContentType, SealRequest, seal};
use ward_core::keys::ResourceKey;
use ward_core::testkit::{Clinician, Org};
use ward_core::wrap::wrap_resource_key;
use ward_core::{ConversationId, OpenError, ResourceId, labels, padding};
use ward_keyserver::Clock;
use ward_proto::Message as _;
use ward_proto::v1::{Envelope, EnvelopeHeader, Recipient, WrappedKeyFor};
use ward_sdk::store::{KdfParams, Message, Pin};
use ward_sdk::{Client, ClientConfig, ClientError, Event};
use ward_tests::keyserver::{
    KsClient, TestKeyserver, enroll, remove_db, temp_db_path, test_config,
};
use ward_tests::relay::{Client as RawRelay, Relay, TempDir, WAIT, message_id};

const PIN: &str = "ward-pin-493817";

struct World {
    org: Org,
    relay: Relay,
    keyserver: TestKeyserver,
    ks_db: PathBuf,
    dir: TempDir,
}

impl World {
    async fn new() -> Self {
        let org = Org::new(&mut rand::rng());
        let relay = Relay::start(org.root_public()).await;
        let ks_db = temp_db_path("env2-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        let keyserver = TestKeyserver::start(config).await;
        Self {
            org,
            relay,
            keyserver,
            ks_db,
            dir: TempDir::new("env2-clients"),
        }
    }

    async fn enroll(&self, user_id: &str) -> Client {
        let mut c = ClientConfig::new(
            self.dir.path().join(format!("{user_id}.db")),
            self.relay.url(),
            self.keyserver.url(),
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
        let (invite, delegation) = ward_tests::invite(&self.org, user_id);
        Client::enroll(c, &invite, &delegation, Pin::new(PIN.into()).unwrap())
            .await
            .expect("enroll")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        remove_db(&self.ks_db);
    }
}

fn text(m: &Message) -> String {
    String::from_utf8(m.content.to_vec()).unwrap()
}

async fn next_event(events: &mut Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no event in time")
        .expect("event stream closed")
}

async fn message(events: &mut Receiver<Event>) -> Message {
    loop {
        match next_event(events).await {
            Event::Message(m) => return m,
            Event::Sent { .. } => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn rejected(events: &mut Receiver<Event>) -> ClientError {
    loop {
        match next_event(events).await {
            Event::Rejected { reason, .. } => return reason,
            Event::Sent { .. } => {}
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

/// No further event but `Sent` within `d`.
async fn quiet(events: &mut Receiver<Event>, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(Event::Sent { .. })) => {}
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
        }
    }
}

/// SECURITY.md §3.3 framing.
fn frame(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = label.to_vec();
    out.push(0);
    for p in parts {
        out.extend_from_slice(&u32::try_from(p.len()).unwrap().to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// HKDF-Expand of the §7.3 key schedule.
fn derive(rk: &[u8; 32], rid: &ResourceId, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(rid.as_bytes()), rk)
        .expand(info, &mut out)
        .unwrap();
    out
}

/// Mallory's envelope, written from §7.3 with the raw primitives: every
/// step as specified, except that the header commits to `committed` while
/// the content is encrypted under the AEAD key of `used`.
fn two_faced(
    mallory: &Clinician,
    recipients: &[&str],
    conv: ConversationId,
    rid: ResourceId,
    committed: &[u8; 32],
    used: &[u8; 32],
    content: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).unwrap();
    let header = EnvelopeHeader {
        version: ward_proto::PROTOCOL_VERSION,
        resource_id: rid.as_bytes().to_vec(),
        conversation_id: conv.as_bytes().to_vec(),
        sender_user_id: "mallory@chu".into(),
        sender_device_id: mallory.device.public_key().as_bytes().to_vec(),
        timestamp_ms: 1_795_910_400_000,
        content_type: ward_proto::v1::ContentType::Text as i32,
        nonce: nonce.to_vec(),
        recipient_user_ids: recipients.iter().map(|r| (*r).to_owned()).collect(),
        key_commitment: derive(committed, &rid, labels::ENVELOPE_KEY_COMMITMENT).to_vec(),
        room: None,
    }
    .encode_to_vec();
    let mut padded = content.to_vec();
    padded.resize(padding::padded_len(content.len()) - 4, 0);
    padded.extend_from_slice(&u32::try_from(content.len()).unwrap().to_be_bytes());
    let aead_key = derive(used, &rid, labels::ENVELOPE_AEAD_KEY);
    let ciphertext = XChaCha20Poly1305::new(&aead_key.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &padded,
                aad: &header,
            },
        )
        .unwrap();
    let digest: [u8; 32] = Sha256::digest(frame(labels::HASH_CIPHERTEXT, &[&ciphertext])).into();
    let signature = SigningKey::from_bytes(&mallory.device.export_secret())
        .sign(&frame(labels::SIG_ENVELOPE, &[&header, &digest]))
        .to_bytes()
        .to_vec();
    Envelope {
        header,
        ciphertext,
        signature,
    }
    .encode_to_vec()
}

/// A protobuf length-delimited field, written out.
fn bytes_field(field: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(field << 3 | 2);
    let mut n = bytes.len();
    while n >= 0x80 {
        out.push(u8::try_from(n & 0x7f).unwrap() | 0x80);
        n >>= 7;
    }
    out.push(u8::try_from(n).unwrap());
    out.extend_from_slice(bytes);
}

async fn put(ks: &mut KsClient, rid: &ResourceId, key: &[u8; 32], to: &VerifiedUser) {
    let k = ResourceKey::import_secret(key).unwrap();
    let w = wrap_resource_key(&mut rand::rng(), &k, rid, to.encryption_key()).unwrap();
    ks.put_keys(vec![WrappedKeyFor {
        recipient_user_id: to.user_id().to_owned(),
        key: Some(w),
    }])
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_cannot_make_one_envelope_open_differently_for_two_recipients() {
    let w = World::new().await;
    let mut bob = w.enroll("bob@chu").await;
    let mut carol = w.enroll("carol@chu").await;
    let mut b_ev = bob.events().unwrap();
    let mut c_ev = carol.events().unwrap();

    // Mallory: a real device of a real user, at both real servers.
    let mallory = w.org.enroll(&mut rand::rng(), "mallory@chu");
    let mut m_ks = enroll(&w.keyserver.url(), &mallory).await;
    let mut m_relay = RawRelay::of(&w.relay.url(), &mallory, "mallory@chu").await;
    let logs = m_ks.get_logs(&["bob@chu", "carol@chu"]).await.unwrap();
    let root = w.org.root_public();
    let bob_chain = verify_log(&root, "bob@chu", &logs["bob@chu"].entries).unwrap();
    let carol_chain = verify_log(&root, "carol@chu", &logs["carol@chu"].entries).unwrap();
    let relay_to = vec![
        Recipient {
            user_id: "bob@chu".into(),
            device_id: bob.device_id().as_bytes().to_vec(),
        },
        Recipient {
            user_id: "carol@chu".into(),
            device_id: carol.device_id().as_bytes().to_vec(),
        },
    ];
    let conv = ConversationId([0x4d; 16]);
    let members = ["bob@chu", "carol@chu", "mallory@chu"];

    // 1. The two-faced envelope: K2 (the ciphertext's key) to Bob, K1 (the
    //    committed key) to Carol.
    let rid = ResourceId::random(&mut rand::rng());
    let (k1, k2) = ([0x11; 32], [0x22; 32]);
    let evil = two_faced(
        &mallory,
        &members,
        conv,
        rid,
        &k1,
        &k2,
        b"WARD-KC-EVIL: potassium 3.9, no action needed",
    );
    put(&mut m_ks, &rid, &k2, &bob_chain).await;
    put(&mut m_ks, &rid, &k1, &carol_chain).await;
    m_relay
        .send_acked(message_id(), relay_to.clone(), evil)
        .await;
    let r = rejected(&mut b_ev).await;
    assert!(
        matches!(r, ClientError::Open(OpenError::KeyCommitmentMismatch)),
        "bob: {r:?}"
    );
    let r = rejected(&mut c_ev).await;
    assert!(
        matches!(r, ClientError::Open(OpenError::Undecryptable)),
        "carol: {r:?}"
    );

    // The control: the same construction with one key for everyone opens.
    // (So what refused the two-faced one is the commitment, not the code
    // written here.)
    let rid = ResourceId::random(&mut rand::rng());
    let honest = two_faced(&mallory, &members, conv, rid, &k1, &k1, b"WARD-KC-CONTROL");
    put(&mut m_ks, &rid, &k1, &bob_chain).await;
    put(&mut m_ks, &rid, &k1, &carol_chain).await;
    m_relay
        .send_acked(message_id(), relay_to.clone(), honest)
        .await;
    assert_eq!(text(&message(&mut b_ev).await), "WARD-KC-CONTROL");
    assert_eq!(text(&message(&mut c_ev).await), "WARD-KC-CONTROL");

    // 2. A genuine seal, then its outer bytes re-encoded (fields swapped
    //    and an unknown field added: the signature covers the header and
    //    the ciphertext, not these bytes) under a new relay message id.
    let sealed = seal(
        &mut rand::rng(),
        &mallory.device,
        &mallory.chain,
        &SealRequest {
            conversation_id: conv,
            recipients: &[&mallory.chain, &bob_chain, &carol_chain],
            content_type: ContentType::Text,
            content: b"WARD-KC-GOOD",
            timestamp_ms: 1_795_910_400_001,
        },
    )
    .unwrap();
    let keys = sealed
        .wrapped_keys
        .iter()
        .map(|(u, k)| WrappedKeyFor {
            recipient_user_id: u.clone(),
            key: Some(k.clone()),
        })
        .collect();
    m_ks.put_keys(keys).await.unwrap();
    m_relay
        .send_acked(message_id(), relay_to.clone(), sealed.envelope.clone())
        .await;
    let got = message(&mut b_ev).await;
    assert_eq!(text(&got), "WARD-KC-GOOD");
    assert_eq!(got.resource_id, sealed.resource_id);
    assert_eq!(text(&message(&mut c_ev).await), "WARD-KC-GOOD");

    let env = Envelope::decode(sealed.envelope.as_slice()).unwrap();
    let mut reencoded = Vec::new();
    for (field, bytes) in [
        (3u8, &env.signature),
        (2, &env.ciphertext),
        (1, &env.header),
    ] {
        bytes_field(field, bytes, &mut reencoded);
    }
    // Unknown field 15 (varint 1): skipped by every decoder.
    reencoded.extend_from_slice(&[15 << 3, 1]);
    assert_ne!(reencoded, sealed.envelope);
    m_relay.send_acked(message_id(), relay_to, reencoded).await;
    for ev in [&mut b_ev, &mut c_ev] {
        match rejected(ev).await {
            ClientError::Replay {
                sender_user_id,
                resource_id,
            } => assert_eq!(
                (sender_user_id.as_str(), resource_id),
                ("mallory@chu", sealed.resource_id)
            ),
            other => panic!("expected Replay, got {other:?}"),
        }
    }

    // Nothing of the two-faced envelope was shown or stored; everything
    // was acked.
    quiet(&mut b_ev, Duration::from_millis(200)).await;
    quiet(&mut c_ev, Duration::from_millis(200)).await;
    for client in [&bob, &carol] {
        let mut h: Vec<String> = client
            .history(conv)
            .await
            .unwrap()
            .iter()
            .map(text)
            .collect();
        h.sort();
        assert_eq!(h, ["WARD-KC-CONTROL", "WARD-KC-GOOD"]);
    }
    w.relay.wait_count("queue", 0).await;
}
