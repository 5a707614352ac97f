//! Issue 10, the professional directory (SECURITY.md §10.9): real SDK
//! clients search the real keyserver (beside the real relay) on 127.0.0.1:0
//! by name, accent-insensitively, by registry number and by profession, page
//! by page; only authenticated active devices may search, within a budget;
//! and a keyserver whose index forges a result is refused by the SDK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use ward_core::ChainError;
use ward_core::invite::{InviteDetails, create_invite};
use ward_core::keys::DeviceSigningKey;
use ward_core::testkit::Org;
use ward_keyserver::{Clock, Config};
use ward_proto::Message as _;
use ward_proto::v1::{ErrorCode, KsRequest, SearchDirectory, SignedInvite, ks_request};
use ward_sdk::store::{KdfParams, Pin};
use ward_sdk::{Client, ClientConfig, ClientError, DirectoryEntry, DirectoryQuery, Page};
use ward_tests::keyserver::{KsClient, TestKeyserver, remove_db, temp_db_path, test_config};
use ward_tests::relay::{Relay, TempDir};

const PIN: &str = "ward-pin-493817";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn details(user_id: &str, name: &str, profession: &str, registry: &str) -> InviteDetails {
    InviteDetails {
        user_id: user_id.into(),
        display_name: name.into(),
        profession: profession.into(),
        registry_number: registry.into(),
        expires_at: now() + 86_400,
    }
}

/// The clinicians every test enrolls (the searcher is "a.searcher").
fn staff() -> Vec<InviteDetails> {
    vec![
        details("a.searcher", "Anne Searcher", "physician", "99900000001"),
        details("h.legoff", "Dr Hélène Le Goff", "Physician", "10101234567"),
        details("h.lefevre", "Hervé LEFÈVRE", "nurse", "10109999999"),
        details("c.martin", "Claire Martin", "physician", "20200000001"),
        details("f.ozturk", "Fatma Öztürk", "physician", "30300000002"),
    ]
}

/// An organisation, the real relay and keyserver, and one SDK client per
/// clinician of [`staff`].
struct World {
    org: Org,
    keyserver: TestKeyserver,
    relay: Relay,
    ks_db: PathBuf,
    dir: TempDir,
    clients: Vec<Client>,
}

impl World {
    async fn new(tweak: impl FnOnce(&mut Config)) -> Self {
        let org = Org::new(&mut rand::rng());
        let relay = Relay::start(org.root_public()).await;
        let ks_db = temp_db_path("directory-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        tweak(&mut config);
        let keyserver = TestKeyserver::start(config).await;
        let mut world = Self {
            org,
            keyserver,
            ks_db,
            dir: TempDir::new("directory-clients"),
            clients: Vec::new(),
            relay,
        };
        for d in staff() {
            let (invite, delegation) = ward_tests::invite_as(&world.org, &d);
            let config = world.config(&d.user_id, world.relay.url());
            let client =
                Client::enroll(config, &invite, &delegation, Pin::new(PIN.into()).unwrap())
                    .await
                    .expect("enroll");
            world.clients.push(client);
        }
        world
    }

    fn config(&self, name: &str, relay_url: String) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.dir.path().join(format!("{name}.db")),
            relay_url,
            self.keyserver.url(),
            self.org.root_public(),
        );
        c.store_options.kdf = KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
        };
        c.request_timeout = Duration::from_secs(5);
        c
    }

    fn searcher(&self) -> &Client {
        &self.clients[0]
    }

    async fn search(&self, text: &str) -> Result<Page<DirectoryEntry>, ClientError> {
        self.searcher()
            .search_directory(&DirectoryQuery::new(text), None)
            .await
    }

    async fn ids(&self, text: &str) -> Vec<String> {
        ids(&self.search(text).await.unwrap())
    }

    /// Replaces `user_id`'s invite in the keyserver's search index, as a
    /// keyserver lying about who is who would.
    fn forge_index(&self, user_id: &str, invite: &SignedInvite) {
        let db = rusqlite::Connection::open(&self.ks_db).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let n = db
            .execute(
                "UPDATE directory_index SET invite = ?2 WHERE user_id = ?1",
                rusqlite::params![user_id, invite.encode_to_vec()],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    /// The invite the keyserver's index holds for `user_id`.
    fn indexed_invite(&self, user_id: &str) -> SignedInvite {
        let db = rusqlite::Connection::open(&self.ks_db).unwrap();
        let bytes: Vec<u8> = db
            .query_row(
                "SELECT invite FROM directory_index WHERE user_id = ?1",
                [user_id],
                |r| r.get(0),
            )
            .unwrap();
        SignedInvite::decode(bytes.as_slice()).unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        remove_db(&self.ks_db);
    }
}

fn ids(page: &Page<DirectoryEntry>) -> Vec<String> {
    page.items.iter().map(|e| e.user_id.clone()).collect()
}

/// Name words match by prefix, case- and accent-insensitively, in any
/// order; registry numbers by prefix; each result is what the root signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinicians_are_found_by_name_accent_insensitively_and_by_registry_number() {
    let w = World::new(|_| {}).await;
    let page = w.search("helene").await.unwrap();
    assert_eq!(
        page.items,
        [DirectoryEntry {
            user_id: "h.legoff".into(),
            display_name: "Dr Hélène Le Goff".into(),
            profession: "Physician".into(),
            registry_number: "10101234567".into(),
            log_len: 1,
        }]
    );
    assert!(page.next.is_none());
    for text in ["HÉLÈNE", "hél", "Helene", "goff le", "He\u{301}le\u{300}ne"] {
        assert_eq!(w.ids(text).await, ["h.legoff"], "{text}");
    }
    assert_eq!(w.ids("ozturk").await, ["f.ozturk"]);
    assert_eq!(w.ids("LEFEVRE herve").await, ["h.lefevre"]);
    // Sorted by normalised name: "dr helene le goff" before "herve lefevre".
    assert_eq!(w.ids("he").await, ["h.legoff", "h.lefevre"]);
    assert!(w.ids("elene").await.is_empty(), "inside a word is no match");
    assert!(
        w.ids("helene martin").await.is_empty(),
        "every word must match"
    );

    assert_eq!(w.ids("10101234567").await, ["h.legoff"]);
    assert_eq!(w.ids("1010").await, ["h.legoff", "h.lefevre"]);
    assert_eq!(w.ids("1010 99").await, ["h.lefevre"]);
    assert!(w.ids("10102").await.is_empty());
}

/// A profession filter, and pages that follow each other with neither gap
/// nor repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_come_in_pages_and_filter_by_profession() {
    let w = World::new(|_| {}).await;
    let physicians = DirectoryQuery {
        text: String::new(),
        profession: Some("PHYSICIAN".into()),
        page_size: 2,
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = w
            .searcher()
            .search_directory(&physicians, cursor.as_ref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        pages += 1;
        seen.extend(ids(&page));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(seen, ["a.searcher", "c.martin", "h.legoff", "f.ozturk"]);

    let nurses = DirectoryQuery {
        text: "h".into(),
        profession: Some("Nurse".into()),
        page_size: 20,
    };
    let page = w.searcher().search_directory(&nurses, None).await.unwrap();
    assert_eq!(ids(&page), ["h.lefevre"]);
    // An empty query without a profession is refused, typed.
    let err = w.search(" ").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Keyserver {
                code: ErrorCode::Malformed,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A stranger is refused at the handshake, an invited clinician's enrolling
/// session is refused the search, and so is a connection that skips the
/// handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_members_may_search() {
    let w = World::new(|_| {}).await;
    let search = || {
        ks_request::Body::SearchDirectory(SearchDirectory {
            query: "helene".into(),
            ..SearchDirectory::default()
        })
    };
    // A stranger's key is refused at the handshake (no invite to prove).
    let stranger = DeviceSigningKey::generate(&mut rand::rng());
    let refused = KsClient::connect(
        &w.keyserver.url(),
        &w.org.root_public(),
        &stranger,
        "mallory",
    )
    .await
    .err()
    .expect("a stranger gets no session");
    assert!(
        matches!(
            refused,
            ward_net::NetError::Refused(ErrorCode::Unauthenticated)
        ),
        "{refused:?}"
    );
    // An invited clinician not enrolled yet holds an enrolling session:
    // it may enroll, not search.
    let (invite, delegation) = create_invite(
        &mut rand::rng(),
        &w.org.root,
        &details("newcomer", "New Comer", "nurse", ""),
    )
    .unwrap();
    let device = DeviceSigningKey::generate(&mut rand::rng());
    let mut ks = KsClient::connect_enrolling(
        &w.keyserver.url(),
        &w.org.root_public(),
        &device,
        "newcomer",
        &delegation,
        &invite,
    )
    .await
    .unwrap();
    let err = ks.call(search()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err:?}");

    let mut raw = ward_net::conn::connect(&w.keyserver.url(), &ward_net::Limits::default())
        .await
        .unwrap();
    let _challenge: Option<ward_proto::v1::AuthChallenge> = raw.recv_msg().await.unwrap();
    raw.send_msg(&KsRequest {
        request_id: 1,
        body: Some(search()),
    })
    .await
    .unwrap();
    let reply: Result<Option<ward_proto::v1::KsResponse>, _> = raw.recv_msg().await;
    assert!(
        !matches!(reply, Ok(Some(_))),
        "a request before the handshake got a reply"
    );

    // A member's device may.
    assert_eq!(w.ids("helene").await, ["h.legoff"]);
}

/// Past its search budget a device is answered `RATE_LIMITED`, and other
/// devices keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_past_the_budget_are_rate_limited() {
    let w = World::new(|c| {
        c.limits.searches_per_minute = 1;
        c.limits.search_burst = 3;
    })
    .await;
    for _ in 0..3 {
        w.search("martin").await.unwrap();
    }
    let err = w.search("martin").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Keyserver {
                code: ErrorCode::RateLimited,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    let other = &w.clients[1];
    let page = other
        .search_directory(&DirectoryQuery::new("martin"), None)
        .await
        .unwrap();
    assert_eq!(ids(&page), ["c.martin"]);
}

/// A keyserver whose index lies about a clinician is refused: an invite
/// whose bytes were changed under the root's signature, a real root-signed
/// invite for the same user id that is not the one the user enrolled with,
/// and another user's invite listed under this user id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_result_is_refused_by_the_sdk() {
    let w = World::new(|_| {}).await;
    assert_eq!(w.ids("claire").await, ["c.martin"]);
    let honest = w.indexed_invite("c.martin");

    // The display name changed, the signature kept.
    let mut invite: ward_proto::v1::Invite =
        ward_proto::v1::Invite::decode(honest.invite.as_slice()).unwrap();
    invite.display_name = "Claire Martin (head of oncology)".into();
    let tampered = SignedInvite {
        invite: invite.encode_to_vec(),
        signature: honest.signature.clone(),
    };
    w.forge_index("c.martin", &tampered);
    let err = w.search("claire").await.unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Chain { user_id, error: ChainError::ForgedInvite } if user_id == "c.martin"
        ),
        "{err:?}"
    );

    // A genuine root-signed invite for "c.martin", never enrolled with
    // (an admin's second invite): not entry 0's.
    let (second, _) = create_invite(
        &mut rand::rng(),
        &w.org.root,
        &details("c.martin", "Claire Martin", "surgeon", "20200000001"),
    )
    .unwrap();
    w.forge_index("c.martin", &second);
    let err = w.search("claire").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::DirectoryMismatch { user_id } if user_id == "c.martin"),
        "{err:?}"
    );

    // Another clinician's own invite, under this user id.
    w.forge_index("c.martin", &w.indexed_invite("h.legoff"));
    let err = w.search("claire").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::DirectoryMismatch { user_id } if user_id == "c.martin"),
        "{err:?}"
    );

    // Put back, the result verifies again.
    w.forge_index("c.martin", &honest);
    assert_eq!(w.ids("claire").await, ["c.martin"]);
}
