//! Issue 11's attachments through the real servers: the relay (with its blob
//! store on disk) and the keyserver on 127.0.0.1:0, real SDK clients with
//! their own stores. A malicious relay is simulated by editing the blob
//! files it stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Receiver;
use ward_core::AttachmentError;
use ward_core::envelope::ContentType;
use ward_proto::Message as _;
use ward_proto::v1::ErrorCode;
use ward_sdk::store::Message;
use ward_sdk::{Client, ClientError, Event, Phase};
use ward_tests::relay::WAIT;
use ward_tests::world::World;

const CHUNK: u64 = 65_536;

/// A file of `len` bytes: pseudo-random, with a recognisable marker every
/// 4 KiB (what a scan for plaintext looks for).
fn write_file(path: &Path, len: u64, seed: u8) -> [u8; 32] {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let mut state = [seed; 32];
    let mut left = len;
    while left > 0 {
        state = Sha256::digest(state).into();
        let mut block = [0u8; 4096];
        for (i, b) in block.iter_mut().enumerate() {
            *b = state[i % 32] ^ (i as u8);
        }
        block[..24].copy_from_slice(&marker(seed));
        let n = left.min(4096) as usize;
        f.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    h.finalize().into()
}

fn marker(seed: u8) -> [u8; 24] {
    let mut m = *b"PATIENT DUPONT 1956-03-0";
    m[23] = b'0' + seed % 10;
    m
}

fn file_hash(path: &Path) -> [u8; 32] {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize().into();
        }
        h.update(&buf[..n]);
    }
}

/// The next attachment message (other events skipped, rejections fail).
async fn attachment(events: &mut Receiver<Event>) -> Message {
    loop {
        let ev = tokio::time::timeout(WAIT * 6, events.recv())
            .await
            .expect("timed out waiting for an attachment")
            .expect("event stream closed");
        match ev {
            Event::Message(m) if m.content_type == ContentType::Attachment => return m,
            Event::Rejected { reason, .. } => panic!("rejected: {reason}"),
            Event::AttachmentFailed { reason, .. } => panic!("attachment failed: {reason}"),
            _ => {}
        }
    }
}

/// The relay's stored blob files (`.blob`), and all its files.
fn blob_files(w: &World) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut blobs = Vec::new();
    let mut all = Vec::new();
    if let Ok(rd) = std::fs::read_dir(w.blob_dir()) {
        for e in rd {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "blob") {
                blobs.push(p.clone());
            }
            all.push(p);
        }
    }
    (blobs, all)
}

fn blob_file(w: &World, m: &Message) -> PathBuf {
    let d = ward_core::attachment::Descriptor::parse(&m.content).unwrap();
    let name: String = d.blob_id().iter().map(|b| format!("{b:02x}")).collect();
    w.blob_dir().join(format!("{name}.blob"))
}

/// Alice and Bob, one device each, and a conversation between them.
async fn pair(w: &World) -> (Client, Client, ward_core::ConversationId) {
    let alice = w.enroll("alice@chu", "alice").await;
    let bob = w.enroll("bob@chu", "bob").await;
    let conv = alice.create_conversation(&["bob@chu"]).await.unwrap();
    (alice, bob, conv)
}

/// Done-when 1: a 100 MiB file sent and received intact; the blob store
/// held no plaintext; once Bob's only device fetched it, the blob is gone
/// from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_file_arrives_intact_then_leaves_the_relay() {
    let w = World::new().await;
    let (alice, mut bob, conv) = pair(&w).await;
    let mut bob_events = bob.events().unwrap();
    let src = w.dir().join("imaging-export.bin");
    let len = 100 << 20;
    let hash = write_file(&src, len, 1);
    let mut phases = Vec::new();
    alice
        .send_file(
            conv,
            &src,
            "imaging-export.bin",
            "application/octet-stream",
            |p| {
                if phases.last() != Some(&p.phase) {
                    phases.push(p.phase);
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(phases, [Phase::Encrypting, Phase::Uploading]);

    let m = attachment(&mut bob_events).await;
    let info = m.attachment().unwrap();
    assert_eq!(
        (info.file_name.as_str(), info.media_type.as_str(), info.size),
        ("imaging-export.bin", "application/octet-stream", len)
    );
    // The history shows it as an attachment, and Debug never shows the key.
    let listed = bob.history(conv).await.unwrap();
    assert_eq!(listed[0].attachment(), Some(info.clone()));
    assert!(format!("{:?}", listed[0]).contains("imaging-export.bin"));

    // Stored: one complete blob of the padded size, holding no plaintext.
    let (blobs, _) = blob_files(&w);
    assert_eq!(blobs.len(), 1);
    assert_eq!(std::fs::metadata(&blobs[0]).unwrap().len(), info.blob_size);
    assert_eq!(w.metric("ward_relay_blobs"), 1.0);
    let stored = std::fs::read(&blobs[0]).unwrap();
    let mk = marker(1);
    assert!(
        !stored.windows(mk.len()).any(|x| x == mk),
        "the blob store holds plaintext"
    );
    drop(stored);

    let out = w.dir().join("received.bin");
    let mut last = 0;
    bob.download(&m, &out, |p| last = p.done).await.unwrap();
    assert_eq!(last, info.blob_size);
    assert_eq!(file_hash(&out), hash);
    // Bob's device was the only reader: the relay deleted the blob.
    let (blobs, all) = blob_files(&w);
    assert!(blobs.is_empty() && all.is_empty(), "left: {all:?}");
    assert_eq!(w.metric("ward_relay_blobs"), 0.0);
    assert_eq!(w.metric("ward_relay_blobs_deleted_total"), 1.0);
    // The destination is never overwritten.
    assert!(matches!(
        bob.download(&m, &out, |_| {}).await,
        Err(ClientError::FileExists(_))
    ));
}

/// Done-when 1: an upload killed at 60% resumes at the next start and
/// completes without resending any stored piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_killed_at_60_percent_resumes_without_resending() {
    let w = World::new().await;
    let (alice, mut bob, conv) = pair(&w).await;
    let mut bob_events = bob.events().unwrap();
    let src = w.dir().join("scan.pdf");
    let len = 10 << 20;
    let hash = write_file(&src, len, 2);
    let alice = Arc::new(alice);
    let a = alice.clone();
    let s = src.clone();
    // The app dies at 60%, right there (a panic in its progress callback).
    let upload = tokio::spawn(async move {
        a.send_file(conv, &s, "scan.pdf", "application/pdf", move |p| {
            if p.phase == Phase::Uploading && p.done * 10 >= p.total * 6 {
                panic!("the app dies at 60%");
            }
        })
        .await
    });
    assert!(upload.await.unwrap_err().is_panic());
    drop(alice);
    // Pieces the relay had already received are stored before it notices.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stored_before = w.metric("ward_relay_blob_pieces_in_total");
    let pieces = (ward_core::attachment::Layout::new(len).unwrap()).chunks as f64;
    assert!(stored_before >= pieces * 0.6 && stored_before < pieces);

    // It starts again: the upload resumes from the relay's next piece, then
    // the message goes out.
    let _alice = w.unlock("alice").await;
    let m = attachment(&mut bob_events).await;
    assert_eq!(w.metric("ward_relay_blob_pieces_in_total"), pieces);
    assert_eq!(w.metric("ward_relay_blob_pieces_refused_total"), 0.0);
    let out = w.dir().join("scan-received.pdf");
    bob.download(&m, &out, |_| {}).await.unwrap();
    assert_eq!(file_hash(&out), hash);
}

/// Done-when 1: a download killed halfway resumes from the last verified
/// chunk (less than half of the blob is fetched again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_halfway_resumes() {
    let w = World::new().await;
    let (alice, mut bob, conv) = pair(&w).await;
    let mut bob_events = bob.events().unwrap();
    let src = w.dir().join("ecg.bin");
    let len = 16 << 20;
    let hash = write_file(&src, len, 3);
    alice
        .send_file(conv, &src, "ecg.bin", "application/octet-stream", |_| {})
        .await
        .unwrap();
    let m = attachment(&mut bob_events).await;
    let size = m.attachment().unwrap().blob_size as f64;
    let bob = Arc::new(bob);
    let out = w.dir().join("ecg-received.bin");
    let (b, o, msg) = (bob.clone(), out.clone(), m.clone());
    // The app dies halfway (a panic in its progress callback).
    let dl = tokio::spawn(async move {
        b.download(&msg, &o, move |p| {
            if p.done * 2 >= p.total {
                panic!("the app dies halfway");
            }
        })
        .await
    });
    assert!(dl.await.unwrap_err().is_panic());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!out.exists());
    // What was released so far waits in a part file only this user reads.
    let mut part = out.clone().into_os_string();
    part.push(".ward-part");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&part).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let served_before = w.metric("ward_relay_blob_bytes_out_total");
    assert!(served_before >= size / 2.0 && served_before < size);

    let mut first = None;
    bob.download(&m, &out, |p| {
        first.get_or_insert(p.done);
    })
    .await
    .unwrap();
    assert_eq!(file_hash(&out), hash);
    // Resumed where the verified spool ended, not from zero.
    assert!(first.unwrap() as f64 >= size / 2.0);
    let served = w.metric("ward_relay_blob_bytes_out_total");
    assert!(
        served - size < size / 2.0,
        "{served} bytes served for {size}"
    );
}

/// Rewrites bytes of a stored blob file in place.
fn tamper(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Done-when 1: a malicious relay (here: its blob files edited) that
/// truncates, reorders chunks, swaps a chunk in from another file, or a
/// message pointing at another message's blob, each refused with a typed
/// error, leaving nothing behind. Also: a device that is not a reader is
/// refused, the same way as for a blob that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blobs_and_strangers_are_refused() {
    let w = World::new().await;
    let (alice, mut bob, conv) = pair(&w).await;
    let carol = w.enroll("carol@chu", "carol").await;
    let mut bob_events = bob.events().unwrap();
    let len = 5 * CHUNK + 1000;
    let mut msgs = Vec::new();
    for (i, name) in ["a.bin", "b.bin", "c.bin", "d.bin", "e.bin"]
        .iter()
        .enumerate()
    {
        let src = w.dir().join(name);
        write_file(&src, len, 4 + i as u8);
        alice
            .send_file(conv, &src, name, "application/octet-stream", |_| {})
            .await
            .unwrap();
        msgs.push(attachment(&mut bob_events).await);
    }
    let sealed = 65_552usize;
    let chunk = |i: usize| 64 + i * sealed..64 + (i + 1) * sealed;

    // Reordered: chunks 1 and 2 swapped.
    tamper(&blob_file(&w, &msgs[0]), |b| {
        let c1 = b[chunk(1)].to_vec();
        let c2 = b[chunk(2)].to_vec();
        b[chunk(1)].copy_from_slice(&c2);
        b[chunk(2)].copy_from_slice(&c1);
    });
    // Swapped between files: chunk 2 of b.bin's blob in a.bin's... into c.bin's.
    let other = std::fs::read(blob_file(&w, &msgs[3])).unwrap();
    tamper(&blob_file(&w, &msgs[1]), |b| {
        b[chunk(2)].copy_from_slice(&other[chunk(2)])
    });
    // Truncated: the relay's copy ends after chunk 3.
    tamper(&blob_file(&w, &msgs[2]), |b| b.truncate(64 + 4 * sealed));

    let expect = [
        (0, AttachmentError::ChunkAuthFailed { index: 1 }),
        (1, AttachmentError::ChunkAuthFailed { index: 2 }),
        (2, AttachmentError::Truncated),
    ];
    for (i, want) in expect {
        let out = w.dir().join(format!("out-{i}"));
        match bob.download(&msgs[i], &out, |_| {}).await {
            Err(ClientError::Attachment(e)) => assert_eq!(e, want, "message {i}"),
            other => panic!("message {i}: {other:?}"),
        }
        assert!(!out.exists());
        let mut part = out.clone().into_os_string();
        part.push(".ward-part");
        assert!(
            !PathBuf::from(part).exists(),
            "a refused download left bytes"
        );
    }

    // A message naming another message's blob (a sender pointing d.bin's
    // descriptor at e.bin's blob): the key commitment refuses it (B2).
    let mut forged = ward_proto::v1::AttachmentRef::decode(&msgs[3].content[..]).unwrap();
    let e_ref = ward_proto::v1::AttachmentRef::decode(&msgs[4].content[..]).unwrap();
    forged.blob_id = e_ref.blob_id.clone();
    let mut fake = msgs[3].clone();
    fake.content = zeroize::Zeroizing::new(forged.encode_to_vec());
    match bob.download(&fake, w.dir().join("forged"), |_| {}).await {
        Err(ClientError::Attachment(AttachmentError::KeyCommitmentMismatch)) => {}
        other => panic!("{other:?}"),
    }

    // Carol holds a copy of the message, but is not a reader; a blob id
    // that exists nowhere gets the very same refusal.
    let refused = |r: Result<PathBuf, ClientError>| match r {
        Err(ClientError::Relay { code, detail }) => (code, detail),
        other => panic!("{other:?}"),
    };
    let a = refused(
        carol
            .download(&msgs[4], w.dir().join("carol"), |_| {})
            .await,
    );
    let mut nowhere = e_ref.clone();
    nowhere.blob_id = vec![0x5a; 32];
    let mut ghost = msgs[4].clone();
    ghost.content = zeroize::Zeroizing::new(nowhere.encode_to_vec());
    let b = refused(carol.download(&ghost, w.dir().join("carol2"), |_| {}).await);
    assert_eq!(a.0, ErrorCode::BlobRefused);
    assert_eq!(a, b);
    // Bob can still fetch e.bin.
    bob.download(&msgs[4], w.dir().join("e-out"), |_| {})
        .await
        .unwrap();
}

/// Quotas: a blob over the relay's size cap, or over the user's blob quota,
/// is refused at once with a typed error, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_size_cap_and_quota_give_typed_errors() {
    let w = World::with_relay(|c| {
        c.limits.max_blob_bytes = 3 << 20;
        c.limits.max_user_blob_bytes = 4 << 20;
    })
    .await;
    let (alice, _bob, conv) = pair(&w).await;
    let big = w.dir().join("big.bin");
    write_file(&big, 3 << 20, 7);
    match alice
        .send_file(conv, &big, "big.bin", "application/octet-stream", |_| {})
        .await
    {
        Err(ClientError::Relay {
            code: ErrorCode::TooLarge,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let two = w.dir().join("two.bin");
    write_file(&two, 2 << 20, 8);
    alice
        .send_file(conv, &two, "two.bin", "application/octet-stream", |_| {})
        .await
        .unwrap();
    // 2 MiB stored (not yet fetched) + 2 MiB more is over 4 MiB.
    match alice
        .send_file(conv, &two, "two.bin", "application/octet-stream", |_| {})
        .await
    {
        Err(ClientError::Relay {
            code: ErrorCode::QuotaExceeded,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// A real blob of a `len`-byte file (header and sealed chunks) and its
/// descriptor, as a sender's device makes them.
fn real_blob(len: usize) -> (Vec<u8>, ward_core::attachment::Descriptor) {
    let content = vec![0x42u8; len];
    let mut enc = ward_core::attachment::Encryptor::new(&mut rand::rng(), len as u64).unwrap();
    let mut blob = Vec::new();
    enc.push(&content, &mut blob).unwrap();
    let d = enc
        .finish(&mut blob)
        .unwrap()
        .describe("image/jpeg", "wound.jpg", None)
        .unwrap();
    (blob, d)
}

fn state(f: ward_proto::v1::server_frame::Frame) -> ward_proto::v1::BlobState {
    match f {
        ward_proto::v1::server_frame::Frame::BlobState(s) => s,
        other => panic!("expected BlobState, got {other:?}"),
    }
}

/// The blob protocol on the wire (SECURITY.md §16.9), with raw frames:
/// only the uploading device writes (another device of the same user, or
/// another user, gets BLOB_REFUSED), pieces must come in order with their
/// lengths, a Send may name only complete blobs of its sender, readers are
/// its recipients, and blob frames have their own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_uploader_writes_and_only_recipients_read() {
    use ward_proto::v1::client_frame::Frame as F;
    use ward_proto::v1::server_frame::Frame as S;
    use ward_proto::v1::{BlobOpen, BlobPiece, BlobRead, BlobStatus};
    use ward_tests::relay::{Client as Raw, Relay, message_id, seal, to};
    let org = ward_core::testkit::Org::new(&mut rand::rng());
    let alice = org.enroll(&mut rand::rng(), "alice");
    let bob = org.enroll(&mut rand::rng(), "bob");
    let carol = org.enroll(&mut rand::rng(), "carol");
    let relay = Relay::start(org.root_public()).await;
    let blobs = format!("{}/v2/blobs", relay.url());
    let (blob, d) = real_blob(2 * CHUNK as usize + 10);
    let id = d.blob_id().to_vec();
    let size = blob.len() as u64;
    let piece = |i: u64| {
        let l = d.layout();
        let (o, n) = l.chunk_range(i).unwrap();
        let (o, n) = if i == 0 { (0, o + n) } else { (o, n) };
        blob[o as usize..(o + n) as usize].to_vec()
    };

    let mut a = Raw::of(&blobs, &alice, "alice").await;
    a.frame(F::BlobOpen(BlobOpen {
        blob_id: id.clone(),
        blob_size: size,
    }))
    .await;
    let st = state(a.next().await);
    assert_eq!((st.next_piece, st.pieces, st.complete), (0, 3, false));
    // Out of order, and the wrong length: refused, nothing stored.
    a.frame(F::BlobPiece(BlobPiece {
        blob_id: id.clone(),
        index: 1,
        data: piece(1),
    }))
    .await;
    assert_eq!(a.error().await.code, ErrorCode::BlobOutOfOrder as i32);
    a.frame(F::BlobPiece(BlobPiece {
        blob_id: id.clone(),
        index: 0,
        data: piece(0)[1..].to_vec(),
    }))
    .await;
    assert_eq!(a.error().await.code, ErrorCode::BlobOutOfOrder as i32);
    a.frame(F::BlobPiece(BlobPiece {
        blob_id: id.clone(),
        index: 0,
        data: piece(0),
    }))
    .await;
    assert_eq!(state(a.next().await).next_piece, 1);

    // Carol can neither take the id over, write to it, ask where it stands
    // nor read it; each answer is the one for a blob that does not exist.
    let mut c = Raw::of(&blobs, &carol, "carol").await;
    let mut refusals = Vec::new();
    for f in [
        F::BlobOpen(BlobOpen {
            blob_id: id.clone(),
            blob_size: size,
        }),
        F::BlobPiece(BlobPiece {
            blob_id: id.clone(),
            index: 1,
            data: piece(1),
        }),
        F::BlobStatus(BlobStatus {
            blob_id: id.clone(),
        }),
        F::BlobRead(BlobRead {
            blob_id: id.clone(),
            offset: 0,
            length: 64,
        }),
    ] {
        c.frame(f).await;
        let e = c.error().await;
        refusals.push((e.code, e.detail));
    }
    c.frame(F::BlobRead(BlobRead {
        blob_id: vec![7; 32],
        offset: 0,
        length: 64,
    }))
    .await;
    let ghost = c.error().await;
    for r in &refusals {
        assert_eq!(*r, (ErrorCode::BlobRefused as i32, ghost.detail.clone()));
    }

    // A Send may not name the blob before it is complete.
    let mut am = Raw::of(&relay.url(), &alice, "alice").await;
    let send = |blob_ids: Vec<Vec<u8>>| {
        F::Send(ward_proto::v1::Send {
            message_id: message_id().to_vec(),
            recipients: vec![to(&bob, "bob")],
            payload: seal(&alice, &[&bob.chain], "descriptor stand-in"),
            blob_ids,
            room_id: Vec::new(),
            room_log_len: 0,
        })
    };
    am.frame(send(vec![id.clone()])).await;
    assert_eq!(am.error().await.code, ErrorCode::BlobRefused as i32);
    // Nor can a blob frame travel on the message connection.
    am.frame(F::BlobStatus(BlobStatus {
        blob_id: id.clone(),
    }))
    .await;
    assert_eq!(am.error().await.code, ErrorCode::Malformed as i32);

    // The rest of the upload, then the Send: Bob becomes a reader.
    for i in 1..3 {
        a.frame(F::BlobPiece(BlobPiece {
            blob_id: id.clone(),
            index: i,
            data: piece(i),
        }))
        .await;
        assert_eq!(state(a.next().await).complete, i == 2);
    }
    let mut am = Raw::of(&relay.url(), &alice, "alice").await;
    am.frame(send(vec![id.clone()])).await;
    assert!(matches!(am.next().await, S::SendAck(_)));
    // Carol may not name Alice's blob in a Send of hers.
    let mut cm = Raw::of(&relay.url(), &carol, "carol").await;
    cm.frame(F::Send(ward_proto::v1::Send {
        message_id: message_id().to_vec(),
        recipients: vec![to(&carol, "carol")],
        payload: seal(&carol, &[&carol.chain], "x"),
        blob_ids: vec![id.clone()],
        room_id: Vec::new(),
        room_log_len: 0,
    }))
    .await;
    assert_eq!(cm.error().await.code, ErrorCode::BlobRefused as i32);
    let mut b = Raw::of(&blobs, &bob, "bob").await;
    b.frame(F::BlobRead(BlobRead {
        blob_id: id.clone(),
        offset: 0,
        length: size,
    }))
    .await;
    match b.next().await {
        S::BlobData(data) => assert_eq!(data.data, blob),
        other => panic!("{other:?}"),
    }
    // Still refused to Carol, now that it is complete.
    c.frame(F::BlobRead(BlobRead {
        blob_id: id.clone(),
        offset: 0,
        length: 64,
    }))
    .await;
    assert_eq!(c.error().await.code, ErrorCode::BlobRefused as i32);
}

/// A blob stays until every reader device said it fetched the blob to the
/// end: Bob's fetch leaves it for Carol, Carol's deletes it; a second
/// `BlobFetched`, or one from a non-reader, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_stays_until_every_reader_fetched_it() {
    use ward_proto::v1::client_frame::Frame as F;
    use ward_proto::v1::server_frame::Frame as S;
    use ward_proto::v1::{BlobOpen, BlobPiece};
    use ward_tests::relay::{Client as Raw, Relay, message_id, seal, to};
    let org = ward_core::testkit::Org::new(&mut rand::rng());
    let alice = org.enroll(&mut rand::rng(), "alice");
    let bob = org.enroll(&mut rand::rng(), "bob");
    let carol = org.enroll(&mut rand::rng(), "carol");
    let relay = Relay::start(org.root_public()).await;
    let blobs = format!("{}/v2/blobs", relay.url());
    let (blob, d) = real_blob(1000);
    let id = d.blob_id().to_vec();
    let mut a = Raw::of(&blobs, &alice, "alice").await;
    a.frame(F::BlobOpen(BlobOpen {
        blob_id: id.clone(),
        blob_size: blob.len() as u64,
    }))
    .await;
    state(a.next().await);
    a.frame(F::BlobPiece(BlobPiece {
        blob_id: id.clone(),
        index: 0,
        data: blob.clone(),
    }))
    .await;
    assert!(state(a.next().await).complete);
    let mut am = Raw::of(&relay.url(), &alice, "alice").await;
    am.frame(F::Send(ward_proto::v1::Send {
        message_id: message_id().to_vec(),
        recipients: vec![to(&bob, "bob"), to(&carol, "carol")],
        payload: seal(&alice, &[&bob.chain, &carol.chain], "descriptor stand-in"),
        blob_ids: vec![id.clone()],
        room_id: Vec::new(),
        room_log_len: 0,
    }))
    .await;
    assert!(matches!(am.next().await, S::SendAck(_)));
    let dir = ward_relay::config::default_blob_dir(&relay.db);
    let mut b = Raw::of(&blobs, &bob, "bob").await;
    assert!(matches!(fetched(&mut b, &id).await, S::BlobState(_)));
    assert_eq!(relay.count("blobs"), 1);
    assert!(std::fs::read_dir(&dir).unwrap().count() > 0);
    // Alice uploaded it but is no reader.
    assert!(
        matches!(fetched(&mut a, &id).await, S::Error(e) if e.code == ErrorCode::BlobRefused as i32)
    );
    let mut c = Raw::of(&blobs, &carol, "carol").await;
    assert!(matches!(fetched(&mut c, &id).await, S::BlobState(_)));
    relay.wait_count("blobs", 0).await;
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(relay.count("blob_readers"), 0);
    assert!(
        matches!(fetched(&mut c, &id).await, S::Error(e) if e.code == ErrorCode::BlobRefused as i32)
    );
}

/// Sends `BlobFetched` for `id` and returns the answer.
async fn fetched(
    c: &mut ward_tests::relay::Client,
    id: &[u8],
) -> ward_proto::v1::server_frame::Frame {
    c.frame(ward_proto::v1::client_frame::Frame::BlobFetched(
        ward_proto::v1::BlobFetched {
            blob_id: id.to_vec(),
        },
    ))
    .await;
    c.next().await
}

/// Retention and abandonment: a complete blob nobody fetched is deleted
/// after the retention period, an upload not resumed after the abandonment
/// delay too; the sweeper unlinks their files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_blobs_and_abandoned_uploads_are_deleted() {
    use ward_proto::v1::client_frame::Frame as F;
    use ward_proto::v1::{BlobOpen, BlobPiece};
    use ward_tests::relay::{Client as Raw, Relay};
    let org = ward_core::testkit::Org::new(&mut rand::rng());
    let alice = org.enroll(&mut rand::rng(), "alice");
    let metrics = ward_ops::metrics::Registry::new();
    let m = metrics.clone();
    let relay = Relay::start_with(org.root_public(), |c| {
        c.retention = std::time::Duration::from_millis(300);
        c.blob_abandon_after = std::time::Duration::from_millis(300);
        c.sweep_interval = std::time::Duration::from_millis(100);
        c.metrics = m;
    })
    .await;
    let dir = ward_relay::config::default_blob_dir(&relay.db);
    let mut a = Raw::of(&format!("{}/v2/blobs", relay.url()), &alice, "alice").await;
    // One complete blob (one piece), one upload left after its first piece.
    let (small, ds) = real_blob(100);
    let (big, db) = real_blob(3 * CHUNK as usize);
    for (blob, d, pieces) in [(&small, &ds, 1usize), (&big, &db, 1)] {
        a.frame(F::BlobOpen(BlobOpen {
            blob_id: d.blob_id().to_vec(),
            blob_size: blob.len() as u64,
        }))
        .await;
        state(a.next().await);
        let (o, n) = d.layout().chunk_range(0).unwrap();
        assert_eq!(pieces, 1);
        a.frame(F::BlobPiece(BlobPiece {
            blob_id: d.blob_id().to_vec(),
            index: 0,
            data: blob[..(o + n) as usize].to_vec(),
        }))
        .await;
        state(a.next().await);
    }
    // A file no record refers to (a database restored from an older
    // backup than the blob directory's): swept too.
    std::fs::write(dir.join(format!("{}.blob", "ab".repeat(32))), b"stale").unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5); // 2 .blob, .part, 2 .meta
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_dir(&dir).unwrap().count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "blobs not swept");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Files first, then the records (a crash in between is swept again).
    relay.wait_count("blobs", 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let text = metrics.render();
    assert!(text.contains("ward_relay_blobs_deleted_total 3"), "{text}");
}

/// Not a check: upload and download rates of a 256 MiB file over loopback
/// through the relay (BENCHMARKS.md). Run in a release build:
/// `cargo test --release -p ward-tests --test attachments rates -- --ignored --nocapture`
/// (`WARD_RATES_MIB=1024` for issue 11's 1 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rates_over_loopback() {
    // The relay's own rates, not its per-device budget (`--blob-rate`,
    // 64 MiB/s by default, is below what loopback reaches).
    let w = World::with_relay(|c| c.limits.blob_bytes_per_sec = 0).await;
    let (alice, mut bob, conv) = pair(&w).await;
    let mut bob_events = bob.events().unwrap();
    let src = w.dir().join("bench.bin");
    let len: u64 = std::env::var("WARD_RATES_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256)
        << 20;
    let hash = write_file(&src, len, 9);
    let mib = len as f64 / (1 << 20) as f64;
    // Peak RSS of this whole process (relay, keyserver, both clients, this
    // test): an upper bound of what the transfers add to the clients.
    let hwm = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024
    };
    let idle = hwm();
    let (mut enc_done, t0) = (None, std::time::Instant::now());
    alice
        .send_file(conv, &src, "bench.bin", "application/octet-stream", |p| {
            if p.phase == Phase::Uploading && enc_done.is_none() {
                enc_done = Some(t0.elapsed());
            }
        })
        .await
        .unwrap();
    let total = t0.elapsed();
    let after_send = hwm();
    let enc = enc_done.unwrap();
    let m = attachment(&mut bob_events).await;
    let out = w.dir().join("bench-out.bin");
    let t1 = std::time::Instant::now();
    bob.download(&m, &out, |_| {}).await.unwrap();
    let down = t1.elapsed();
    let after_download = hwm();
    assert_eq!(file_hash(&out), hash);
    eprintln!(
        "RATES {mib} MiB: encrypt to spool {:.0} MiB/s ({enc:?}), upload {:.0} MiB/s ({:?}), \
         download+verify {:.0} MiB/s ({down:?}); peak RSS of the process {idle} MiB idle, \
         {after_send} MiB after sending, {after_download} MiB after receiving",
        mib / enc.as_secs_f64(),
        mib / (total - enc).as_secs_f64(),
        total - enc,
        mib / down.as_secs_f64(),
    );
}

/// A file sent to a group (a room, §17.12): one upload, one room `Send`;
/// every member device is a reader and gets it intact, a non-member holding
/// the descriptor is refused like anyone who is not a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_to_a_room_reaches_its_members_only() {
    let w = World::new().await;
    let alice = w.enroll("alice@chu", "alice").await;
    let mut bob = w.enroll("bob@chu", "bob").await;
    let mut carol = w.enroll("carol@chu", "carol").await;
    let dave = w.enroll("dave@chu", "dave").await;
    let (mut eb, mut ec) = (bob.events().unwrap(), carol.events().unwrap());
    let conv = alice
        .conversation_with(&["bob@chu", "carol@chu"])
        .await
        .unwrap();
    assert!(
        alice
            .rooms()
            .await
            .unwrap()
            .iter()
            .any(|r| r.conversation_id == conv),
        "the group is a room"
    );
    let src = w.dir().join("wound.jpg");
    let hash = write_file(&src, 3 * CHUNK + 17, 7);
    let sends = w.relay.count("sends");
    alice
        .send_file(conv, &src, "wound.jpg", "image/jpeg", |_| {})
        .await
        .unwrap();
    let mut got = Vec::new();
    for (who, events) in [(&bob, &mut eb), (&carol, &mut ec)] {
        let m = attachment(events).await;
        assert_eq!(m.conversation_id, conv);
        let out = w.dir().join(format!("{}.jpg", who.user_id()));
        who.download(&m, &out, |_| {}).await.unwrap();
        assert_eq!(file_hash(&out), hash);
        got.push(m);
    }
    assert_eq!(w.relay.count("sends"), sends + 1, "one upload to the room");
    match dave
        .download(&got[0], w.dir().join("dave.jpg"), |_| {})
        .await
    {
        Err(ClientError::Relay { code, .. }) => assert_eq!(code, ErrorCode::BlobRefused),
        other => panic!("{other:?}"),
    }
    for c in [alice, bob, carol, dave] {
        c.lock().await;
    }
}

/// An inline thumbnail (§16.5 D9) travels inside the signed, encrypted
/// descriptor: the receiver has it before downloading anything, and it
/// never reaches the relay in clear. One that receivers would refuse (not
/// an image, over 64 KiB) is refused before any upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thumbnail_arrives_with_the_descriptor() {
    let w = World::new().await;
    let (alice, mut bob, conv) = pair(&w).await;
    let mut eb = bob.events().unwrap();
    let src = w.dir().join("wound.heic");
    write_file(&src, 2 * CHUNK, 3);
    let preview: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    for bad in [
        ("text/plain", &preview[..]),
        ("image/png", &vec![1u8; (64 << 10) + 1][..]),
        ("image/png", &[][..]),
    ] {
        match alice
            .send_file_with_thumbnail(conv, &src, "wound.heic", "image/heic", bad, |_| {})
            .await
        {
            Err(ClientError::Attachment(AttachmentError::Malformed("thumbnail"))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(blob_files(&w).0.is_empty(), "nothing was uploaded");
    alice
        .send_file_with_thumbnail(
            conv,
            &src,
            "wound.heic",
            "image/heic",
            ("image/jpeg", &preview),
            |_| {},
        )
        .await
        .unwrap();
    let m = attachment(&mut eb).await;
    let t = m.attachment().unwrap().thumbnail.expect("a thumbnail");
    assert_eq!(t.media_type, "image/jpeg");
    assert_eq!(&t.bytes[..], &preview[..]);
    let dbg = format!("{t:?}");
    assert!(
        dbg.contains("len: 20000") && !dbg.contains("0, 1, 2"),
        "Debug shows the size, not the bytes: {dbg}"
    );
    // The relay holds the descriptor only inside the encrypted envelope.
    for f in [w.relay.db.clone(), w.relay.db.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(&f) {
            assert!(
                !bytes.windows(64).any(|x| x == &preview[..64]),
                "{} holds the thumbnail in clear",
                f.display()
            );
        }
    }
    for c in [alice, bob] {
        c.lock().await;
    }
}

/// The relay's per-device blob byte budget (`--blob-rate`): a device over
/// it is slowed, not refused: the transfer completes intact, and the relay
/// counts the waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_blob_rate_is_slowed_not_refused() {
    let w = World::with_relay(|c| {
        c.limits.blob_bytes_per_sec = 2 << 20;
        c.limits.blob_burst_bytes = 256 << 10;
    })
    .await;
    let (alice, mut bob, conv) = pair(&w).await;
    let mut eb = bob.events().unwrap();
    let src = w.dir().join("scan.pdf");
    let hash = write_file(&src, 3 << 20, 5);
    alice
        .send_file(conv, &src, "scan.pdf", "application/pdf", |_| {})
        .await
        .unwrap();
    let uploads_waited = w.metric("ward_relay_blob_throttled_total");
    assert!(uploads_waited > 0.0, "3 MiB over a 256 KiB burst waited");
    let m = attachment(&mut eb).await;
    let out = w.dir().join("scan-out.pdf");
    bob.download(&m, &out, |_| {}).await.unwrap();
    assert_eq!(file_hash(&out), hash);
    assert!(w.metric("ward_relay_blob_throttled_total") > uploads_waited);
    for c in [alice, bob] {
        c.lock().await;
    }
}
