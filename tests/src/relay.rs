//! Relay helpers: a relay on `127.0.0.1:0` over a temporary database, and a
//! small relay client built on `ward-net`.
// Test helpers: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use ward_core::envelope::{self, ContentType, SealRequest};
use ward_core::keys::{DeviceSigningKey, SigningPublicKey};
use ward_core::testkit::Clinician;
use ward_core::{ConversationId, chain::VerifiedUser};
use ward_net::{Conn, NetError};
use ward_proto::v1::{
    Ack, ClientFrame, Deliver, Recipient, RelayError, Send, ServerFrame, SignedStatement,
    client_frame, server_frame,
};
use ward_relay::{Config, RelayError as ServerError};

/// How long a test waits for any one expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh empty directory named `ward-<prefix>-<random>`.
    pub fn new(prefix: &str) -> Self {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("ward-{prefix}-{suffix}"));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A configuration for tests: short timeouts, default limits otherwise.
pub fn test_config(db: &Path, root: SigningPublicKey) -> Config {
    let mut c = Config::new(db, root);
    c.limits.net.auth_timeout = Duration::from_secs(2);
    c.limits.slow_consumer_timeout = Duration::from_millis(500);
    c.limits.close_grace = Duration::from_secs(2);
    c.shutdown_grace = Duration::from_secs(3);
    c
}

/// An in-process relay on a loopback port.
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database file.
    pub db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _dir: TempDir,
}

impl Relay {
    /// Starts a relay with [`test_config`].
    pub async fn start(root: SigningPublicKey) -> Self {
        Self::start_with(root, |_| {}).await
    }

    /// Starts a relay with [`test_config`] adjusted by `tweak`.
    pub async fn start_with(root: SigningPublicKey, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = TempDir::new("relay");
        let db = dir.path().join("relay.db");
        let mut config = test_config(&db, root);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ward_relay::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            db,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// `ws://` URL of the relay.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            None => Ok(()),
        }
    }

    /// Rows in `table` of the relay's database, read through a separate connection.
    pub fn count(&self, table: &str) -> i64 {
        count_rows(&self.db, table)
    }

    /// Waits until `table` holds `n` rows.
    pub async fn wait_count(&self, table: &str, n: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let c = self.count(table);
            if c == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{table} holds {c} rows, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Rows in `table` of the SQLite database at `db`.
pub fn count_rows(db: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// The WebSocket type a client holds.
pub type ClientConn = Conn<MaybeTlsStream<TcpStream>>;

/// A relay client: one authenticated device.
pub struct Client {
    /// The connection.
    pub conn: ClientConn,
}

/// The mailbox address of `who`'s first device.
pub fn to(who: &Clinician, user_id: &str) -> Recipient {
    Recipient {
        user_id: user_id.to_owned(),
        device_id: who.device.public_key().as_bytes().to_vec(),
    }
}

/// A real sealed envelope from `from` to `recipients`.
pub fn seal(from: &Clinician, recipients: &[&VerifiedUser], text: &str) -> Vec<u8> {
    let sealed = envelope::seal(
        &mut rand::rng(),
        &from.device,
        &from.chain,
        &SealRequest {
            conversation_id: ConversationId([7; 16]),
            recipients,
            content_type: ContentType::Text,
            content: text.as_bytes(),
            timestamp_ms: 1_795_910_400_000,
        },
    )
    .unwrap();
    sealed.envelope
}

/// A fresh random message id.
pub fn message_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).unwrap();
    id
}

/// A WebSocket to the relay that has not authenticated.
pub async fn raw(url: &str) -> ClientConn {
    ward_net::conn::connect(url, &ward_net::Limits::default())
        .await
        .unwrap()
}

impl Client {
    /// Connects and authenticates `device` of `user_id`, presenting `log`,
    /// to the relay of the organisation `root` (default instance).
    pub async fn connect(
        url: &str,
        root: &SigningPublicKey,
        device: &DeviceSigningKey,
        user_id: &str,
        log: &[SignedStatement],
    ) -> Result<Self, NetError> {
        let audience =
            ward_net::handshake::Audience::relay(*root, ward_core::auth::DEFAULT_INSTANCE);
        Self::connect_to(url, &audience, device, user_id, log).await
    }

    /// Connects and authenticates `device` of `user_id`, signing for `audience`.
    pub async fn connect_to(
        url: &str,
        audience: &ward_net::handshake::Audience,
        device: &DeviceSigningKey,
        user_id: &str,
        log: &[SignedStatement],
    ) -> Result<Self, NetError> {
        let mut conn = ward_net::conn::connect(url, &ward_net::Limits::default()).await?;
        ward_net::handshake::client(&mut conn, device, user_id, audience, log).await?;
        Ok(Self { conn })
    }

    /// Connects as `who`'s first device, presenting its log.
    pub async fn of(url: &str, who: &Clinician, user_id: &str) -> Self {
        Self::connect(url, who.chain.org_root(), &who.device, user_id, &who.log)
            .await
            .unwrap()
    }

    /// Sends one frame.
    pub async fn frame(&mut self, frame: client_frame::Frame) {
        self.conn
            .send_msg(&ClientFrame { frame: Some(frame) })
            .await
            .unwrap();
    }

    /// Sends a message (without waiting for its acknowledgement).
    pub async fn send(&mut self, id: [u8; 16], recipients: Vec<Recipient>, payload: Vec<u8>) {
        self.frame(client_frame::Frame::Send(Send {
            message_id: id.to_vec(),
            recipients,
            payload,
            blob_ids: Vec::new(),
            room_id: Vec::new(),
            room_log_len: 0,
        }))
        .await;
    }

    /// Sends a message and waits for its `SendAck`, skipping deliveries.
    pub async fn send_acked(&mut self, id: [u8; 16], recipients: Vec<Recipient>, payload: Vec<u8>) {
        self.send(id, recipients, payload).await;
        loop {
            match self.next().await {
                server_frame::Frame::SendAck(a) => {
                    assert_eq!(a.message_id, id.to_vec());
                    return;
                }
                server_frame::Frame::Deliver(_) => continue,
                other => panic!("expected SendAck, got {other:?}"),
            }
        }
    }

    /// Acks the own mailbox up to `seq`.
    pub async fn ack(&mut self, seq: u64) {
        self.frame(client_frame::Frame::Ack(Ack {
            up_to_seq: seq,
            device_id: Vec::new(),
        }))
        .await;
    }

    /// The next frame from the relay; panics on close or after [`WAIT`].
    pub async fn next(&mut self) -> server_frame::Frame {
        self.next_within(WAIT)
            .await
            .expect("no frame from the relay in time")
    }

    /// The next frame, or `None` if nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<server_frame::Frame> {
        match tokio::time::timeout(wait, self.conn.recv_msg::<ServerFrame>()).await {
            Err(_) => None,
            Ok(Ok(Some(ServerFrame { frame: Some(f) }))) => Some(f),
            Ok(other) => panic!("connection ended: {other:?}"),
        }
    }

    /// The next frame, which must be a delivery.
    pub async fn deliver(&mut self) -> Deliver {
        match self.next().await {
            server_frame::Frame::Deliver(d) => d,
            other => panic!("expected Deliver, got {other:?}"),
        }
    }

    /// The next frame, which must be an error.
    pub async fn error(&mut self) -> RelayError {
        match self.next().await {
            server_frame::Frame::Error(e) => e,
            other => panic!("expected RelayError, got {other:?}"),
        }
    }

    /// Reads (and discards) everything until the relay closes; returns the
    /// close code, or `None` if the connection ended without a close frame.
    pub async fn closed(self) -> Option<u16> {
        closed(self.conn).await
    }
}

/// Reads a connection until it closes; the close code, if any.
pub async fn closed(conn: ClientConn) -> Option<u16> {
    let mut ws = conn.into_inner();
    let read = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(WsMessage::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("relay did not close the connection in time")
}
