//! Keyserver test helpers: a real keyserver on `127.0.0.1:0` over a fresh
//! database, and a small client speaking `ward-net` frames.
// Test support: a failed setup step should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use ward_core::auth::DEFAULT_INSTANCE;
use ward_core::keys::SigningPublicKey;
use ward_core::keys::{DelegationKey, DeviceSigningKey};
use ward_core::testkit::{KIT_TIME, Org};
use ward_keyserver::{Clock, Config, KeyserverError};
use ward_net::handshake::Audience;
use ward_net::{Conn, Limits, NetError};
use ward_proto::v1::{
    DeviceGrant, ErrorCode, GetDeviceGrant, GetLogs, GetWrappedKeys, KsRequest, KsResponse,
    PutDeviceGrants, PutWrappedKeys, SignedInvite, SignedStatement, UserLog, WrappedKeyFor,
    WrappedKeys, ks_request, ks_response,
};

/// A fresh path in the system temp dir (the file does not exist yet).
pub fn temp_db_path(name: &str) -> PathBuf {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::env::temp_dir().join(format!("ward-test-{name}-{suffix}.db"))
}

/// Removes a test database and its WAL files.
pub fn remove_db(path: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A test configuration: the org's root, the clock pinned at the testkit's
/// time (so its invites are valid), default limits.
pub fn test_config(org: &Org, db_path: &Path) -> Config {
    let mut config = Config::new(db_path, org.root_public());
    config.clock = Clock::fixed(KIT_TIME);
    // A directory key fixed by the org (its root's public key as the seed:
    // test only), so that a keyserver restarted on the same database signs
    // with the same key; certified by the org's root as `ward up` does.
    if let Ok(key) = ward_core::keys::DirectoryKey::import_secret(org.root_public().as_bytes()) {
        config.kt.certificate = Some(ward_core::transparency::certify_directory_key(
            &org.root,
            &key.public_key(),
        ));
        config.kt.directory_key = Some(std::sync::Arc::new(key));
    }
    // Fast epochs: a test waits for one in a fraction of a second.
    config.kt.epoch_interval = std::time::Duration::from_millis(100);
    config
}

/// A keyserver running in this process.
pub struct TestKeyserver {
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Its database file.
    pub db_path: PathBuf,
    /// The organisation root it pins.
    pub root: SigningPublicKey,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), KeyserverError>>,
}

impl TestKeyserver {
    /// Starts a keyserver with `config` on `127.0.0.1:0`.
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let db_path = config.db_path.clone();
        let root = config.org_root;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ward_keyserver::run(listener, config, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            db_path,
            root,
            stop: Some(tx),
            task,
        }
    }

    /// `ws://` URL of the keyserver.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops the keyserver gracefully and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), KeyserverError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("keyserver task panicked")
    }

    /// Whether `run` has returned (it must not, while serving).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Why a keyserver call failed.
#[derive(Debug)]
pub enum CallError {
    /// The connection failed or was closed.
    Net(NetError),
    /// The keyserver answered with a typed error.
    Refused(ErrorCode, String),
    /// The reply did not match the request.
    Unexpected(String),
}

impl CallError {
    /// The typed error code, if the keyserver answered one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Refused(c, _) => Some(*c),
            _ => None,
        }
    }
}

impl From<NetError> for CallError {
    fn from(e: NetError) -> Self {
        CallError::Net(e)
    }
}

/// A device's connection to the keyserver.
pub struct KsClient {
    /// The connection, for tests that need raw frames.
    pub conn: Conn<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl KsClient {
    /// Connects and authenticates as `device` of `user_id`, to the
    /// keyserver of the organisation `root` (default instance).
    pub async fn connect(
        url: &str,
        root: &SigningPublicKey,
        device: &DeviceSigningKey,
        user_id: &str,
    ) -> Result<Self, NetError> {
        Self::connect_to(
            url,
            &Audience::keyserver(*root, DEFAULT_INSTANCE),
            device,
            user_id,
        )
        .await
    }

    /// Connects and authenticates as `device` of `user_id`, signing for `audience`.
    pub async fn connect_to(
        url: &str,
        audience: &Audience,
        device: &DeviceSigningKey,
        user_id: &str,
    ) -> Result<Self, NetError> {
        let limits = Limits::default();
        let mut conn = ward_net::conn::connect(url, &limits).await?;
        ward_net::handshake::client(&mut conn, device, user_id, audience, &[]).await?;
        Ok(Self { conn, next_id: 1 })
    }

    /// Connects as `device`, the first device of `user_id`, a user that
    /// does not exist yet, proving it holds the user's `invite` and its
    /// `delegation` key (SECURITY.md §8, E1–E5): an enrolling session, which
    /// may append the user's creation.
    pub async fn connect_enrolling(
        url: &str,
        root: &SigningPublicKey,
        device: &DeviceSigningKey,
        user_id: &str,
        delegation: &DelegationKey,
        invite: &SignedInvite,
    ) -> Result<Self, NetError> {
        let limits = Limits::default();
        let mut conn = ward_net::conn::connect(url, &limits).await?;
        let audience = Audience::keyserver(*root, DEFAULT_INSTANCE);
        ward_net::handshake::client_enrolling(
            &mut conn, device, user_id, &audience, delegation, invite,
        )
        .await?;
        Ok(Self { conn, next_id: 1 })
    }

    /// Opens a root session (SECURITY.md §10.7): the handshake signed by the
    /// organisation root itself, as `ward admin revoke` does.
    pub async fn connect_root(
        url: &str,
        root: &ward_core::keys::OrgRootKey,
    ) -> Result<Self, NetError> {
        // The handshake signs with a device-key type: same Ed25519 seed.
        let signer = DeviceSigningKey::import_secret(&*root.export_secret())
            .expect("an Ed25519 seed loads as a signer");
        Self::connect(
            url,
            &root.public_key(),
            &signer,
            ward_keyserver::admin::ADMIN_USER_ID,
        )
        .await
    }

    /// Submits a root-signed entry over a root session; returns its seq.
    pub async fn admin_submit(&mut self, entry: &SignedStatement) -> Result<u64, CallError> {
        let body = ks_request::Body::AdminSubmit(ward_proto::v1::AdminSubmit {
            entry: Some(entry.clone()),
        });
        match self.call(body).await? {
            ks_response::Body::Appended(a) => Ok(a.seq),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends one request and returns the matching reply's body.
    pub async fn call(&mut self, body: ks_request::Body) -> Result<ks_response::Body, CallError> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.conn
            .send_msg(&KsRequest {
                request_id,
                body: Some(body),
            })
            .await?;
        let resp: KsResponse = self
            .conn
            .recv_msg()
            .await?
            .ok_or(CallError::Net(NetError::Closed(None, String::new())))?;
        if resp.request_id != request_id {
            return Err(CallError::Unexpected(format!(
                "reply to {} for request {request_id}",
                resp.request_id
            )));
        }
        match resp.body {
            Some(ks_response::Body::Error(e)) => Err(CallError::Refused(
                ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                e.detail,
            )),
            Some(b) => Ok(b),
            None => Err(CallError::Unexpected("empty reply".into())),
        }
    }

    /// Appends a statement; returns its seq.
    pub async fn append(&mut self, entry: &SignedStatement) -> Result<u64, CallError> {
        match self.call(ks_request::Body::Append(entry.clone())).await? {
            ks_response::Body::Appended(a) => Ok(a.seq),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The logs of `user_ids` that exist.
    pub async fn get_logs(
        &mut self,
        user_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, UserLog>, CallError> {
        let body = ks_request::Body::GetLogs(GetLogs {
            user_ids: user_ids.iter().map(|s| s.to_string()).collect(),
        });
        match self.call(body).await? {
            ks_response::Body::Logs(l) => Ok(l.logs),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Puts wrapped keys; returns the count accepted.
    pub async fn put_keys(&mut self, keys: Vec<WrappedKeyFor>) -> Result<u32, CallError> {
        match self
            .call(ks_request::Body::PutKeys(PutWrappedKeys { keys }))
            .await?
        {
            ks_response::Body::Stored(s) => Ok(s.count),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Gets the caller's wrapped keys of `resource_ids`.
    pub async fn get_keys(&mut self, resource_ids: &[&[u8]]) -> Result<WrappedKeys, CallError> {
        let body = ks_request::Body::GetKeys(GetWrappedKeys {
            resource_ids: resource_ids.iter().map(|r| r.to_vec()).collect(),
        });
        match self.call(body).await? {
            ks_response::Body::Keys(k) => Ok(k),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Puts device grants; returns the count accepted.
    pub async fn put_grants(&mut self, grants: Vec<DeviceGrant>) -> Result<u32, CallError> {
        match self
            .call(ks_request::Body::PutGrants(PutDeviceGrants { grants }))
            .await?
        {
            ks_response::Body::Stored(s) => Ok(s.count),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The grant addressed to this device (`user_key` empty: the newest).
    pub async fn get_grant(&mut self, user_key: &[u8]) -> Result<DeviceGrant, CallError> {
        let body = ks_request::Body::GetGrant(GetDeviceGrant {
            user_key: user_key.to_vec(),
        });
        match self.call(body).await? {
            ks_response::Body::Grant(g) => Ok(g),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Waits for the server to close the connection; returns its close code
    /// (`None` for a normal close or a dropped connection).
    pub async fn closed_with(mut self) -> Option<u16> {
        wait_close(&mut self.conn).await
    }
}

/// Reads until the peer closes; returns the close code if it was not a
/// normal one (`None` for normal, going away, or a dropped connection).
pub async fn wait_close<S>(conn: &mut Conn<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let wait = async {
        loop {
            match conn.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(NetError::Closed(code, _)) => return code,
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), wait)
        .await
        .expect("server did not close the connection")
}

/// Connects as the clinician's first device and appends its user creation
/// (entry 0 of its log): enrollment.
pub async fn enroll(url: &str, c: &ward_core::testkit::Clinician) -> KsClient {
    let user_id = c.chain.user_id().to_owned();
    let mut client = KsClient::connect_enrolling(
        url,
        c.chain.org_root(),
        &c.device,
        &user_id,
        &c.delegation,
        &c.invite,
    )
    .await
    .expect("connect to enroll");
    assert_eq!(client.append(&c.log[0]).await.expect("enroll"), 0);
    client
}
