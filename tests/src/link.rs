//! The keyserver's relay link (SECURITY.md §10.8) in tests: a relay service
//! key, the relay's link configuration to a test keyserver, and a fake
//! keyserver end that sends whatever notices a test wants (to check that the
//! relay verifies them itself).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use ward_core::auth::Audience;
use ward_core::keys::{RelayServiceKey, SigningPublicKey};
use ward_net::Conn;
use ward_proto::v1::{
    AuthChallenge, AuthResult, LinkFetch, LinkFrame, LinkNotice, LinkSubscribe, LinkSynced,
    SignedRoomStatement, SignedStatement, link_frame,
};
use ward_relay::keyserver_link::KeyserverLink;

use crate::relay::WAIT;

/// A fresh relay service key.
pub fn service_key() -> Arc<RelayServiceKey> {
    Arc::new(RelayServiceKey::generate(&mut rand::rng()))
}

/// The relay's link to the keyserver at `ks_url` (default instance, plain
/// `ws://` on loopback), with short reconnect delays.
pub fn link_to(ks_url: &str, key: Arc<RelayServiceKey>) -> KeyserverLink {
    let mut link = KeyserverLink::new(ks_url, key);
    link.reconnect_min = Duration::from_millis(50);
    link.reconnect_max = Duration::from_millis(500);
    link
}

/// A fake keyserver's relay-link listener.
pub struct FakeKeyserver {
    listener: TcpListener,
    audience: Audience,
}

/// One accepted, authenticated relay link of a [`FakeKeyserver`].
pub struct FakeLink {
    conn: Conn<TcpStream>,
    /// The service key the relay proved.
    pub relay_key: SigningPublicKey,
    /// The cursor it subscribed with.
    pub cursor: u64,
}

impl FakeKeyserver {
    /// Listens on `127.0.0.1:0` as the keyserver of `root` (default instance).
    pub async fn start(root: SigningPublicKey) -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            audience: Audience::keyserver(root, ward_core::auth::DEFAULT_INSTANCE),
        }
    }

    /// `ws://` URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.listener.local_addr().unwrap())
    }

    /// Accepts the relay's next link, checks its signature as the real
    /// keyserver does, accepts it and reads its subscription.
    pub async fn accept(&self) -> FakeLink {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the relay did not dial in time")
            .unwrap();
        let (mut conn, path) = ward_net::conn::accept_with_path(tcp, &ward_net::Limits::default())
            .await
            .unwrap();
        assert_eq!(path, ward_core::auth::RELAY_LINK_PATH);
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).unwrap();
        // Any relay key: the tests check what the relay does with notices.
        let relay_key =
            ward_net::handshake::link_server(&mut conn, &self.audience, nonce, |_| true)
                .await
                .unwrap();
        let sub: LinkSubscribe = conn.recv_msg().await.unwrap().unwrap();
        FakeLink {
            conn,
            relay_key,
            cursor: sub.cursor,
        }
    }
}

impl FakeLink {
    /// Sends a notice: `entries` as `user_id`'s log.
    pub async fn notice(&mut self, user_id: &str, entries: Vec<SignedStatement>) {
        self.conn
            .send_msg(&LinkFrame {
                frame: Some(link_frame::Frame::Notice(LinkNotice {
                    user_id: user_id.to_owned(),
                    entries,
                    ..LinkNotice::default()
                })),
            })
            .await
            .unwrap();
    }

    /// Sends a room notice: `entries` as the log of room `room_id`
    /// (SECURITY.md §17.10).
    pub async fn room_notice(&mut self, room_id: &[u8; 32], entries: Vec<SignedRoomStatement>) {
        self.conn
            .send_msg(&LinkFrame {
                frame: Some(link_frame::Frame::Notice(LinkNotice {
                    room_id: room_id.to_vec(),
                    room_entries: entries,
                    ..LinkNotice::default()
                })),
            })
            .await
            .unwrap();
    }

    /// Sends `LinkSynced { cursor }`.
    pub async fn synced(&mut self, cursor: u64) {
        self.conn
            .send_msg(&LinkFrame {
                frame: Some(link_frame::Frame::Synced(LinkSynced {
                    cursor,
                    room_cursor: 0,
                })),
            })
            .await
            .unwrap();
    }

    /// The relay's next `LinkFetch` (it asks for logs it lacks at a login).
    pub async fn next_fetch(&mut self) -> LinkFetch {
        tokio::time::timeout(WAIT, self.conn.recv_msg())
            .await
            .expect("the relay asked for no log in time")
            .unwrap()
            .expect("the link closed")
    }

    /// Closes the link (as a keyserver going away).
    pub async fn close(mut self) {
        self.conn.close(ward_net::close::GOING_AWAY, "bye").await;
    }
}

/// Dials the keyserver's relay link at `url` as a relay with `key`, and
/// returns the connection with the keyserver's `AuthResult`.
pub async fn dial(
    url: &str,
    audience: &Audience,
    key: &RelayServiceKey,
) -> (
    Conn<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    AuthResult,
) {
    let mut conn = ward_net::conn::connect(
        &format!("{url}{}", ward_core::auth::RELAY_LINK_PATH),
        &ward_net::Limits::default(),
    )
    .await
    .unwrap();
    let challenge: AuthChallenge = conn.recv_msg().await.unwrap().unwrap();
    let response = ward_core::auth::respond_link(key, audience, &challenge).unwrap();
    conn.send_msg(&response).await.unwrap();
    let result: AuthResult = conn.recv_msg().await.unwrap().unwrap();
    (conn, result)
}
