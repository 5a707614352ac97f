//! Key transparency through the real keyserver on loopback (SECURITY.md
//! §18.4): epochs grow with enrolments and device additions, every leaf's
//! inclusion proof and every pair of epochs' consistency proof verify
//! against epochs signed by a key the organisation root certified, anyone
//! may ask on `/v2/kt`, a restart extends the same tree, bad requests get
//! typed errors, and an idle directory still publishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use ward_core::keys::{DeviceEncryptionKey, DeviceSigningKey, DirectoryKey, SigningPublicKey};
use ward_core::testkit::{Clinician, KIT_TIME, Org};
use ward_core::transparency::{
    Epoch, Hash, certify_directory_key, leaf_data, leaf_hash, verify_consistency,
    verify_directory_key, verify_inclusion,
};
use ward_keyserver::{Clock, Config, KeyserverError};
use ward_net::Conn;
use ward_net::handshake::Audience;
use ward_proto::Message as _;
use ward_proto::v1::{
    EpochProof, ErrorCode, GetEpoch, GetInclusion, GetLeaves, InclusionProof, KsRequest,
    KsResponse, KtRequest, KtResponse, Leaves, SignedEpoch, ks_request, ks_response, kt_request,
    kt_response,
};

type WsConn = Conn<MaybeTlsStream<TcpStream>>;

struct Server {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), KeyserverError>>,
}

impl Server {
    async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ward_keyserver::run(listener, config, async {
            let _ = rx.await;
        }));
        Self { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    async fn public(&self) -> WsConn {
        let url = format!("ws://{}/v2/kt", self.addr);
        for _ in 0..100 {
            if let Ok(c) = ward_net::conn::connect(&url, &ward_net::Limits::default()).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("keyserver not listening")
    }
}

fn temp_db(name: &str) -> PathBuf {
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    std::env::temp_dir().join(format!("ward-ks-kt-{name}-{}.db", hex::encode(suffix)))
}

fn remove_db(db: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

/// A keyserver of `org` with a certified directory key and fast epochs.
fn config(org: &Org, db: &Path, key: &Arc<DirectoryKey>) -> Config {
    let mut c = Config::new(db, org.root_public());
    c.clock = Clock::fixed(KIT_TIME);
    c.kt.epoch_interval = Duration::from_millis(100);
    c.kt.max_epoch_age = Duration::from_secs(60);
    c.kt.certificate = Some(certify_directory_key(&org.root, &key.public_key()));
    c.kt.directory_key = Some(Arc::clone(key));
    c
}

async fn enroll(server: &Server, c: &Clinician, user: &str) -> WsConn {
    let url = format!("ws://{}", server.addr);
    let mut conn = ward_net::conn::connect(&url, &ward_net::Limits::default())
        .await
        .unwrap();
    ward_net::handshake::client_enrolling(
        &mut conn,
        &c.device,
        user,
        &Audience::keyserver(*c.chain.org_root(), ward_core::auth::DEFAULT_INSTANCE),
        &c.delegation,
        &c.invite,
    )
    .await
    .unwrap();
    match ks(&mut conn, ks_request::Body::Append(c.log[0].clone())).await {
        ks_response::Body::Appended(a) => assert_eq!(a.seq, 0),
        other => panic!("enrolment refused: {other:?}"),
    }
    conn
}

async fn ks(conn: &mut WsConn, body: ks_request::Body) -> ks_response::Body {
    conn.send_msg(&KsRequest {
        request_id: 7,
        body: Some(body),
    })
    .await
    .unwrap();
    let r: KsResponse = conn.recv_msg().await.unwrap().unwrap();
    assert_eq!(r.request_id, 7);
    r.body.unwrap()
}

async fn kt(conn: &mut WsConn, body: kt_request::Body) -> kt_response::Body {
    conn.send_msg(&KtRequest {
        request_id: 11,
        body: Some(body),
    })
    .await
    .unwrap();
    let r: KtResponse = conn.recv_msg().await.unwrap().unwrap();
    assert_eq!(r.request_id, 11);
    r.body.unwrap()
}

fn refused(body: kt_response::Body) -> (ErrorCode, String) {
    match body {
        kt_response::Body::Error(e) => (ErrorCode::try_from(e.code).unwrap(), e.detail),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn epoch(conn: &mut WsConn, epoch: u64, known_size: u64) -> EpochProof {
    match kt(
        conn,
        kt_request::Body::GetEpoch(GetEpoch { epoch, known_size }),
    )
    .await
    {
        kt_response::Body::EpochProof(p) => p,
        other => panic!("no epoch: {other:?}"),
    }
}

/// The head of a signed epoch, after checking its signature with `key`.
fn verified(e: &SignedEpoch, key: &SigningPublicKey) -> Epoch {
    let h = e.head.as_ref().unwrap();
    let head = Epoch {
        epoch: h.epoch,
        tree_size: h.tree_size,
        root: h.root.as_slice().try_into().unwrap(),
        timestamp: h.timestamp,
    };
    assert!(head.verify(key, &e.signature), "epoch signature");
    head
}

/// The directory key of an epoch proof, after checking that the root
/// certified it.
fn certified_key(p: &EpochProof, root: &SigningPublicKey) -> SigningPublicKey {
    let cert = p.certificate.as_ref().unwrap();
    let key = SigningPublicKey::from_bytes(&cert.directory_key).unwrap();
    assert!(verify_directory_key(root, &key, &cert.root_signature));
    key
}

fn hashes(v: &[Vec<u8>]) -> Vec<Hash> {
    v.iter().map(|h| h.as_slice().try_into().unwrap()).collect()
}

/// Polls the latest epoch until `done` holds (at most 10 s).
async fn wait_for(conn: &mut WsConn, done: impl Fn(&Epoch) -> bool) -> EpochProof {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = kt(
            conn,
            kt_request::Body::GetEpoch(GetEpoch {
                epoch: 0,
                known_size: 0,
            }),
        )
        .await;
        if let kt_response::Body::EpochProof(p) = body {
            let h = p.epoch.as_ref().unwrap().head.as_ref().unwrap();
            let e = Epoch {
                epoch: h.epoch,
                tree_size: h.tree_size,
                root: h.root.as_slice().try_into().unwrap(),
                timestamp: h.timestamp,
            };
            if done(&e) {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no such epoch in time");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn leaves(conn: &mut WsConn, from: u64, max: u32) -> Leaves {
    match kt(conn, kt_request::Body::GetLeaves(GetLeaves { from, max })).await {
        kt_response::Body::Leaves(l) => l,
        other => panic!("no leaves: {other:?}"),
    }
}

/// Checks every pair of epochs 1..=latest for consistency, and every
/// leaf's inclusion in the latest epoch; returns the latest epoch.
async fn audit(conn: &mut WsConn, root: &SigningPublicKey) -> Epoch {
    let latest_proof = epoch(conn, 0, 0).await;
    let key = certified_key(&latest_proof, root);
    let latest = verified(latest_proof.epoch.as_ref().unwrap(), &key);
    let mut heads = Vec::new();
    for n in 1..=latest.epoch {
        let p = epoch(conn, n, 0).await;
        let e = verified(p.epoch.as_ref().unwrap(), &key);
        assert_eq!(e.epoch, n);
        heads.push(e);
    }
    for (i, old) in heads.iter().enumerate() {
        for new in &heads[i..] {
            let p = epoch(conn, new.epoch, old.tree_size).await;
            let e = verified(p.epoch.as_ref().unwrap(), &key);
            assert_eq!(e, *new);
            verify_consistency(
                old.tree_size,
                new.tree_size,
                &old.root,
                &new.root,
                &hashes(&p.consistency),
            )
            .unwrap_or_else(|err| panic!("epochs {} -> {}: {err}", old.epoch, new.epoch));
            assert!(old.timestamp <= new.timestamp);
            assert!(old.tree_size <= new.tree_size);
        }
    }
    let all = leaves(conn, 0, 1024).await;
    assert_eq!(all.from, 0);
    assert_eq!(all.leaves.len() as u64, latest.tree_size);
    for (i, leaf) in all.leaves.iter().enumerate() {
        let proof: InclusionProof = match kt(
            conn,
            kt_request::Body::GetInclusion(GetInclusion {
                user_id: leaf.user_id.clone(),
                log_len: leaf.log_len,
                epoch: latest.epoch,
            }),
        )
        .await
        {
            kt_response::Body::InclusionProof(p) => p,
            other => panic!("no inclusion proof for leaf {i}: {other:?}"),
        };
        assert_eq!(proof.leaf_index, i as u64);
        assert_eq!(proof.head_hash, leaf.head_hash);
        let e = verified(proof.epoch.as_ref().unwrap(), &key);
        assert_eq!(e, latest);
        let head: Hash = proof.head_hash.as_slice().try_into().unwrap();
        verify_inclusion(
            &leaf_hash(&leaf_data(&leaf.user_id, leaf.log_len, &head)),
            proof.leaf_index,
            e.tree_size,
            &hashes(&proof.path),
            &e.root,
        )
        .unwrap_or_else(|err| panic!("leaf {i}: {err}"));
    }
    latest
}

#[tokio::test]
async fn every_head_is_proven_in_certified_epochs_that_extend_each_other() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let key = Arc::new(DirectoryKey::generate(&mut rng));
    let db = temp_db("proofs");
    let server = Server::start(config(&org, &db, &key)).await;
    let mut public = server.public().await;

    let a = org.enroll(&mut rng, "dr.a");
    let mut a_conn = enroll(&server, &a, "dr.a").await;
    wait_for(&mut public, |e| e.tree_size >= 1).await;
    let b = org.enroll(&mut rng, "dr.b");
    let c = org.enroll(&mut rng, "dr.c");
    let _b_conn = enroll(&server, &b, "dr.b").await;
    let _c_conn = enroll(&server, &c, "dr.c").await;
    // A device addition: dr.a's log grows to two entries.
    let phone = DeviceSigningKey::generate(&mut rng);
    let phone_enc = DeviceEncryptionKey::generate(&mut rng);
    let addition = a
        .chain
        .add_device(&a.device, &phone, &phone_enc.public_key(), KIT_TIME);
    match ks(&mut a_conn, ks_request::Body::Append(addition.clone())).await {
        ks_response::Body::Appended(x) => assert_eq!(x.seq, 1),
        other => panic!("device addition refused: {other:?}"),
    }
    let mut grown = a.chain.clone();
    grown.apply(&root, &addition).unwrap();

    // dr.a at 1 entry, then dr.b, dr.c and dr.a at 2 (maybe in two epochs).
    let proof = wait_for(&mut public, |e| e.tree_size >= 4).await;
    assert!(proof.epoch.unwrap().head.unwrap().epoch >= 2);
    let latest = audit(&mut public, &root).await;
    assert_eq!(latest.tree_size, 4);

    // The leaves say what each log's head is: the entry hashes the clients hold.
    let all = leaves(&mut public, 0, 1024).await;
    let names: Vec<_> = all
        .leaves
        .iter()
        .map(|l| (l.user_id.as_str(), l.log_len))
        .collect();
    assert_eq!(names[0], ("dr.a", 1));
    assert!(names.contains(&("dr.a", 2)) && names.contains(&("dr.b", 1)));
    for l in &all.leaves {
        let chain = match (l.user_id.as_str(), l.log_len) {
            ("dr.a", 1) => &a.chain,
            ("dr.a", 2) => &grown,
            ("dr.b", 1) => &b.chain,
            ("dr.c", 1) => &c.chain,
            other => panic!("unexpected leaf {other:?}"),
        };
        assert_eq!(l.head_hash, chain.head().to_vec());
    }
    // Paging: from 1, at most 2.
    let page = leaves(&mut public, 1, 2).await;
    assert_eq!(page.from, 1);
    assert_eq!(page.leaves, all.leaves[1..3].to_vec());
    // Past the tree: an empty page, not an error (an auditor polls there).
    assert!(leaves(&mut public, 4, 10).await.leaves.is_empty());

    // The same requests on a device session.
    match ks(
        &mut a_conn,
        ks_request::Body::GetInclusion(GetInclusion {
            user_id: "dr.a".into(),
            log_len: 2,
            epoch: 0,
        }),
    )
    .await
    {
        ks_response::Body::InclusionProof(p) => {
            let e = verified(p.epoch.as_ref().unwrap(), &key.public_key());
            let head: Hash = p.head_hash.as_slice().try_into().unwrap();
            assert_eq!(&head, grown.head());
            verify_inclusion(
                &leaf_hash(&leaf_data("dr.a", 2, &head)),
                p.leaf_index,
                e.tree_size,
                &hashes(&p.path),
                &e.root,
            )
            .unwrap();
        }
        other => panic!("no inclusion proof on a session: {other:?}"),
    }
    match ks(
        &mut a_conn,
        ks_request::Body::GetEpoch(GetEpoch {
            epoch: 1,
            known_size: 0,
        }),
    )
    .await
    {
        ks_response::Body::EpochProof(p) => {
            assert_eq!(certified_key(&p, &root), key.public_key());
            assert_eq!(
                verified(p.epoch.as_ref().unwrap(), &key.public_key()).epoch,
                1
            );
        }
        other => panic!("no epoch on a session: {other:?}"),
    }
    match ks(
        &mut a_conn,
        ks_request::Body::GetLeaves(GetLeaves { from: 0, max: 5000 }),
    )
    .await
    {
        ks_response::Body::Error(e) => assert_eq!(e.code, ErrorCode::TooLarge as i32),
        other => panic!("max 5000 served on a session: {other:?}"),
    }

    server.stop().await;
    remove_db(&db);
}

#[tokio::test]
async fn a_restart_keeps_the_tree_and_a_tampered_one_is_refused() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let root = org.root_public();
    let key = Arc::new(DirectoryKey::generate(&mut rng));
    let db = temp_db("restart");

    let server = Server::start(config(&org, &db, &key)).await;
    let mut public = server.public().await;
    for name in ["dr.a", "dr.b"] {
        let c = org.enroll(&mut rng, name);
        drop(enroll(&server, &c, name).await);
    }
    wait_for(&mut public, |e| e.tree_size >= 2).await;
    let before = audit(&mut public, &root).await;
    drop(public);
    server.stop().await;

    // The tables only grow: the database itself refuses edits.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for sql in [
            "UPDATE kt_leaves SET log_len = 9 WHERE idx = 0",
            "DELETE FROM kt_leaves",
            "UPDATE kt_epochs SET root = x'00' WHERE epoch = 1",
            "DELETE FROM kt_epochs",
        ] {
            let err = conn.execute(sql, []).unwrap_err();
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
    }

    let server = Server::start(config(&org, &db, &key)).await;
    let mut public = server.public().await;
    // The same epochs are served after the restart.
    let again = epoch(&mut public, before.epoch, 0).await;
    assert_eq!(
        verified(again.epoch.as_ref().unwrap(), &key.public_key()),
        before
    );
    let c = org.enroll(&mut rng, "dr.c");
    drop(enroll(&server, &c, "dr.c").await);
    let next = wait_for(&mut public, |e| e.tree_size >= 3).await;
    let next_head = verified(next.epoch.as_ref().unwrap(), &key.public_key());
    assert!(next_head.epoch > before.epoch);
    // Only dr.c's leaf is new: the restart republished nobody.
    assert_eq!(next_head.tree_size, 3);
    let p = epoch(&mut public, next_head.epoch, before.tree_size).await;
    verify_consistency(
        before.tree_size,
        next_head.tree_size,
        &before.root,
        &next_head.root,
        &hashes(&p.consistency),
    )
    .unwrap();
    audit(&mut public, &root).await;
    drop(public);
    server.stop().await;

    // A leaf rewritten behind the keyserver's back (guards dropped): it
    // refuses to start rather than sign a tree that does not extend epoch N.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "DROP TRIGGER kt_leaves_no_update;
             UPDATE kt_leaves SET head_hash = zeroblob(32) WHERE idx = 1;",
        )
        .unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = ward_keyserver::run(listener, config(&org, &db, &key), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("key transparency") && err.to_string().contains("root"),
        "{err}"
    );
    remove_db(&db);
}

#[tokio::test]
async fn bad_requests_get_typed_errors_and_pending_heads_say_retry() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let key = Arc::new(DirectoryKey::generate(&mut rng));
    let db = temp_db("bad");
    let mut cfg = config(&org, &db, &key);
    // One epoch at start, then none for the test's life: heads stay pending.
    cfg.kt.epoch_interval = Duration::from_secs(3600);
    cfg.kt.max_epoch_age = Duration::from_secs(3600);
    // No certificate: still published, with an empty root signature.
    cfg.kt.certificate = None;
    cfg.kt.public_burst = 60;
    cfg.kt.public_rate = 1;
    let server = Server::start(cfg).await;
    let mut public = server.public().await;
    let first = wait_for(&mut public, |e| e.epoch == 1).await;
    assert_eq!(
        first
            .epoch
            .as_ref()
            .unwrap()
            .head
            .as_ref()
            .unwrap()
            .tree_size,
        0
    );
    let cert = first.certificate.unwrap();
    assert_eq!(cert.directory_key, key.public_key().as_bytes().to_vec());
    assert!(cert.root_signature.is_empty());

    let a = org.enroll(&mut rng, "dr.a");
    drop(enroll(&server, &a, "dr.a").await);
    let inclusion = |user: &str, log_len: u64, epoch: u64| {
        kt_request::Body::GetInclusion(GetInclusion {
            user_id: user.into(),
            log_len,
            epoch,
        })
    };
    // In no epoch yet: retry after the next one.
    let (code, detail) = refused(kt(&mut public, inclusion("dr.a", 1, 0)).await);
    assert_eq!(code, ErrorCode::Unavailable, "{detail}");
    assert!(detail.contains("next epoch"));
    // Unknown user, a length past the log, an invalid id, a zero length.
    assert_eq!(
        refused(kt(&mut public, inclusion("dr.nobody", 1, 0)).await).0,
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(kt(&mut public, inclusion("dr.a", 2, 0)).await).0,
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(kt(&mut public, inclusion("dr.\u{7}bell", 1, 0)).await).0,
        ErrorCode::Malformed
    );
    assert_eq!(
        refused(kt(&mut public, inclusion("dr.a", 0, 0)).await).0,
        ErrorCode::Malformed
    );
    // An epoch that does not exist yet.
    assert_eq!(
        refused(
            kt(
                &mut public,
                kt_request::Body::GetEpoch(GetEpoch {
                    epoch: 99,
                    known_size: 0
                })
            )
            .await
        )
        .0,
        ErrorCode::NotFound
    );
    // A known size past the epoch's tree.
    assert_eq!(
        refused(
            kt(
                &mut public,
                kt_request::Body::GetEpoch(GetEpoch {
                    epoch: 1,
                    known_size: 5
                })
            )
            .await
        )
        .0,
        ErrorCode::Malformed
    );
    // Too many leaves, and none.
    for (max, want) in [(1025, ErrorCode::TooLarge), (0, ErrorCode::Malformed)] {
        assert_eq!(
            refused(
                kt(
                    &mut public,
                    kt_request::Body::GetLeaves(GetLeaves { from: 0, max })
                )
                .await
            )
            .0,
            want
        );
    }
    // Garbage and an empty request: typed errors, and the connection serves on.
    let mut raw = server.public().await.into_inner();
    let reply = async |raw: &mut tokio_tungstenite::WebSocketStream<MaybeTlsStream<TcpStream>>,
                       bytes: Vec<u8>| {
        raw.send(Message::Binary(bytes.into())).await.unwrap();
        match raw.next().await {
            Some(Ok(Message::Binary(b))) => KtResponse::decode(&b[..]).unwrap(),
            other => panic!("no reply: {other:?}"),
        }
    };
    let r = reply(&mut raw, vec![0xff, 0xff, 0xff, 0x0f, 0x00]).await;
    assert_eq!(refused(r.body.unwrap()).0, ErrorCode::Malformed);
    let empty = KtRequest {
        request_id: 3,
        body: None,
    };
    let r = reply(&mut raw, empty.encode_to_vec()).await;
    assert_eq!(r.request_id, 3);
    assert_eq!(refused(r.body.unwrap()).0, ErrorCode::Malformed);
    let ok = KtRequest {
        request_id: 4,
        body: Some(kt_request::Body::GetEpoch(GetEpoch {
            epoch: 1,
            known_size: 0,
        })),
    };
    let r = reply(&mut raw, ok.encode_to_vec()).await;
    assert!(matches!(r.body, Some(kt_response::Body::EpochProof(_))));
    // A frame over the pre-login limit (16 KiB) closes the connection.
    raw.send(Message::Binary(vec![0u8; 64 << 10].into()))
        .await
        .unwrap();
    assert!(!matches!(raw.next().await, Some(Ok(Message::Binary(_)))));
    // Over the per-address budget: RATE_LIMITED, never a panic.
    let mut limited = false;
    for _ in 0..200 {
        let body = kt(
            &mut public,
            kt_request::Body::GetLeaves(GetLeaves { from: 0, max: 1 }),
        )
        .await;
        if let kt_response::Body::Error(e) = body {
            assert_eq!(e.code, ErrorCode::RateLimited as i32);
            limited = true;
            break;
        }
    }
    assert!(limited, "the public path was not rate limited");
    server.stop().await;
    remove_db(&db);
}

#[tokio::test]
async fn an_idle_directory_still_publishes_within_the_max_epoch_age() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let key = Arc::new(DirectoryKey::generate(&mut rng));
    let db = temp_db("idle");
    let mut cfg = config(&org, &db, &key);
    cfg.kt.epoch_interval = Duration::from_millis(50);
    cfg.kt.max_epoch_age = Duration::from_millis(400);
    let server = Server::start(cfg).await;
    let mut public = server.public().await;
    let a = org.enroll(&mut rng, "dr.a");
    drop(enroll(&server, &a, "dr.a").await);
    let p = wait_for(&mut public, |e| e.tree_size == 1).await;
    let seen = verified(p.epoch.as_ref().unwrap(), &key.public_key());
    let started = Instant::now();
    let later = wait_for(&mut public, |e| e.epoch > seen.epoch).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let later = verified(later.epoch.as_ref().unwrap(), &key.public_key());
    // Same tree, a new epoch: the directory is alive and nothing changed.
    assert_eq!((later.tree_size, later.root), (seen.tree_size, seen.root));
    assert!(later.timestamp >= seen.timestamp);
    server.stop().await;
    remove_db(&db);
}
