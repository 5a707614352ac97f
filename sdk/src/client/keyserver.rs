//! A typed keyserver client over `ward-net`: one connection, owned by one
//! task, requests answered in order and matched by request id.
//!
//! The task connects lazily, authenticates as this device (an unknown
//! user's device, proving it holds the user's invite, gets an *enrolling*
//! session, which may only append its own creation), and reconnects once per request if the connection broke:
//! every keyserver request is idempotent (SECURITY.md §10.2), so a retried
//! request that had in fact been applied is acknowledged again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::MaybeTlsStream;
use ward_core::keys::{DelegationKey, DeviceSigningKey};
use ward_net::handshake::Audience;
use ward_net::{Conn, Limits, NetError};
use ward_proto::v1::{
    AppendRoom, DeviceGrant, DirectoryPage, EpochProof, ErrorCode, GetDeviceGrant, GetEpoch,
    GetInclusion, GetLeaves, GetLogs, GetRoomKeys, GetRoomLog, GetRoomWraps, GetWrappedKeys,
    InclusionProof, KsRequest, KsResponse, Leaves, ListRooms, PutDeviceGrants, PutRoomKey,
    PutWrappedKeys, RoomAppended, RoomHead, RoomKeyWrap, RoomLogPage, SearchDirectory,
    SignedInvite, SignedStatement, UserLog, WrappedKey, WrappedKeyFor, WrappedKeys, ks_request,
    ks_response,
};

use super::error::{ClientError, Result};

type Reply = oneshot::Sender<Result<ks_response::Body>>;

/// A handle on the keyserver task. Cloning shares the connection.
#[derive(Clone)]
pub(crate) struct Keyserver {
    tx: mpsc::Sender<(ks_request::Body, Reply)>,
}

struct Task {
    url: String,
    audience: Audience,
    tls: ward_net::tls::ClientTls,
    device: Arc<DeviceSigningKey>,
    user_id: String,
    timeout: Duration,
    conn: Option<Conn<MaybeTlsStream<TcpStream>>>,
    next_id: u64,
    /// While enrolling: the invite and its one-time key, which prove to the
    /// keyserver that this device may open an enrolling session (SECURITY.md
    /// §8, E1–E5). Dropped (and zeroized) with the task.
    enrolment: Option<(DelegationKey, SignedInvite)>,
}

impl Keyserver {
    /// Starts the task; it ends when every handle is dropped.
    pub(crate) fn spawn(
        url: String,
        audience: Audience,
        tls: ward_net::tls::ClientTls,
        device: Arc<DeviceSigningKey>,
        user_id: String,
        timeout: Duration,
    ) -> Self {
        Self::start(Task {
            url,
            audience,
            tls,
            device,
            user_id,
            timeout,
            conn: None,
            next_id: 1,
            enrolment: None,
        })
    }

    /// Starts the task of a device that enrolls: every handshake carries
    /// the proof that it holds the invite and its delegation key.
    pub(crate) fn spawn_enrolling(
        url: String,
        audience: Audience,
        tls: ward_net::tls::ClientTls,
        device: Arc<DeviceSigningKey>,
        user_id: String,
        timeout: Duration,
        enrolment: (DelegationKey, SignedInvite),
    ) -> Self {
        Self::start(Task {
            url,
            audience,
            tls,
            device,
            user_id,
            timeout,
            conn: None,
            next_id: 1,
            enrolment: Some(enrolment),
        })
    }

    fn start(mut task: Task) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ks_request::Body, Reply)>(64);
        tokio::spawn(async move {
            while let Some((body, reply)) = rx.recv().await {
                let result = task.call(body).await;
                let _ = reply.send(result);
            }
        });
        Self { tx }
    }

    async fn call(&self, body: ks_request::Body) -> Result<ks_response::Body> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((body, reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Appends a statement to its user's log; returns its seq.
    pub(crate) async fn append(&self, entry: SignedStatement) -> Result<u64> {
        match self.call(ks_request::Body::Append(entry)).await? {
            ks_response::Body::Appended(a) => Ok(a.seq),
            _ => Err(ClientError::Protocol("append answered with another body")),
        }
    }

    /// The logs of the users that exist.
    pub(crate) async fn get_logs(&self, user_ids: Vec<String>) -> Result<HashMap<String, UserLog>> {
        match self
            .call(ks_request::Body::GetLogs(GetLogs { user_ids }))
            .await?
        {
            ks_response::Body::Logs(l) => Ok(l.logs),
            _ => Err(ClientError::Protocol("get_logs answered with another body")),
        }
    }

    /// Stores wrapped keys (all or none); returns the count accepted.
    pub(crate) async fn put_keys(&self, keys: Vec<WrappedKeyFor>) -> Result<u32> {
        match self
            .call(ks_request::Body::PutKeys(PutWrappedKeys { keys }))
            .await?
        {
            ks_response::Body::Stored(s) => Ok(s.count),
            _ => Err(ClientError::Protocol("put_keys answered with another body")),
        }
    }

    /// This user's wrapped keys of `resource_ids`.
    pub(crate) async fn get_keys(&self, resource_ids: Vec<Vec<u8>>) -> Result<WrappedKeys> {
        match self
            .call(ks_request::Body::GetKeys(GetWrappedKeys { resource_ids }))
            .await?
        {
            ks_response::Body::Keys(k) => Ok(k),
            _ => Err(ClientError::Protocol("get_keys answered with another body")),
        }
    }

    /// Stores device grants (all or none).
    pub(crate) async fn put_grants(&self, grants: Vec<DeviceGrant>) -> Result<u32> {
        match self
            .call(ks_request::Body::PutGrants(PutDeviceGrants { grants }))
            .await?
        {
            ks_response::Body::Stored(s) => Ok(s.count),
            _ => Err(ClientError::Protocol(
                "put_grants answered with another body",
            )),
        }
    }

    /// One page of the professional directory (SECURITY.md §10.9): unverified.
    pub(crate) async fn search(&self, req: SearchDirectory) -> Result<DirectoryPage> {
        match self.call(ks_request::Body::SearchDirectory(req)).await? {
            ks_response::Body::DirectoryPage(p) => Ok(p),
            _ => Err(ClientError::Protocol(
                "search_directory answered with another body",
            )),
        }
    }

    /// The grant of `user_key` (empty: the newest) to this device.
    pub(crate) async fn get_grant(&self, user_key: Vec<u8>) -> Result<DeviceGrant> {
        match self
            .call(ks_request::Body::GetGrant(GetDeviceGrant { user_key }))
            .await?
        {
            ks_response::Body::Grant(g) => Ok(g),
            _ => Err(ClientError::Protocol(
                "get_grant answered with another body",
            )),
        }
    }
}

/// The key-transparency requests (SECURITY.md §18.4), for the monitor.
impl Keyserver {
    /// The latest epoch, with a consistency proof from the tree of
    /// `known_size` leaves (0: none).
    pub(crate) async fn get_epoch(&self, known_size: u64) -> Result<EpochProof> {
        match self
            .call(ks_request::Body::GetEpoch(GetEpoch {
                epoch: 0,
                known_size,
            }))
            .await?
        {
            ks_response::Body::EpochProof(p) => Ok(p),
            _ => Err(ClientError::Protocol(
                "get_epoch answered with another body",
            )),
        }
    }

    /// Epoch `epoch` (0: the latest), with a consistency proof from the
    /// tree of `known_size` leaves (0: none).
    pub(crate) async fn get_epoch_at(&self, epoch: u64, known_size: u64) -> Result<EpochProof> {
        match self
            .call(ks_request::Body::GetEpoch(GetEpoch { epoch, known_size }))
            .await?
        {
            ks_response::Body::EpochProof(p) => Ok(p),
            _ => Err(ClientError::Protocol(
                "get_epoch answered with another body",
            )),
        }
    }

    /// The inclusion proof of `user_id`'s log head at `log_len` entries in
    /// epoch `epoch` (0: the latest that holds it).
    pub(crate) async fn get_inclusion(
        &self,
        user_id: &str,
        log_len: u64,
        epoch: u64,
    ) -> Result<InclusionProof> {
        match self
            .call(ks_request::Body::GetInclusion(GetInclusion {
                user_id: user_id.to_owned(),
                log_len,
                epoch,
            }))
            .await?
        {
            ks_response::Body::InclusionProof(p) => Ok(p),
            _ => Err(ClientError::Protocol(
                "get_inclusion answered with another body",
            )),
        }
    }

    /// Up to `max` directory leaves from index `from`.
    pub(crate) async fn get_leaves(&self, from: u64, max: u32) -> Result<Leaves> {
        match self
            .call(ks_request::Body::GetLeaves(GetLeaves { from, max }))
            .await?
        {
            ks_response::Body::Leaves(l) => Ok(l),
            _ => Err(ClientError::Protocol(
                "get_leaves answered with another body",
            )),
        }
    }
}

/// The room requests (SECURITY.md §17.11).
impl Keyserver {
    /// Appends room entries and/or stores epoch-key wraps (all or none).
    pub(crate) async fn append_room(&self, req: AppendRoom) -> Result<RoomAppended> {
        match self.call(ks_request::Body::AppendRoom(req)).await? {
            ks_response::Body::RoomAppended(a) => Ok(a),
            _ => Err(ClientError::Protocol(
                "append_room answered with another body",
            )),
        }
    }

    /// One page of a room's log from `from_seq`.
    pub(crate) async fn get_room_log(
        &self,
        room_id: Vec<u8>,
        from_seq: u64,
    ) -> Result<RoomLogPage> {
        match self
            .call(ks_request::Body::GetRoomLog(GetRoomLog {
                room_id,
                from_seq,
            }))
            .await?
        {
            ks_response::Body::RoomLog(p) => Ok(p),
            _ => Err(ClientError::Protocol(
                "get_room_log answered with another body",
            )),
        }
    }

    /// This user's epoch-key wraps of a room, epochs `>= from_epoch`.
    pub(crate) async fn get_room_wraps(
        &self,
        room_id: Vec<u8>,
        from_epoch: u64,
    ) -> Result<Vec<RoomKeyWrap>> {
        match self
            .call(ks_request::Body::GetRoomWraps(GetRoomWraps {
                room_id,
                from_epoch,
            }))
            .await?
        {
            ks_response::Body::RoomWraps(w) => Ok(w.wraps),
            _ => Err(ClientError::Protocol(
                "get_room_wraps answered with another body",
            )),
        }
    }

    /// Stores a room message's resource key, wrapped to its epoch key.
    pub(crate) async fn put_room_key(
        &self,
        room_id: Vec<u8>,
        epoch: u64,
        key: WrappedKey,
    ) -> Result<u32> {
        match self
            .call(ks_request::Body::PutRoomKey(PutRoomKey {
                room_id,
                epoch,
                key: Some(key),
            }))
            .await?
        {
            ks_response::Body::Stored(s) => Ok(s.count),
            _ => Err(ClientError::Protocol(
                "put_room_key answered with another body",
            )),
        }
    }

    /// Room message keys of `resource_ids`.
    pub(crate) async fn get_room_keys(
        &self,
        room_id: Vec<u8>,
        resource_ids: Vec<Vec<u8>>,
    ) -> Result<WrappedKeys> {
        match self
            .call(ks_request::Body::GetRoomKeys(GetRoomKeys {
                room_id,
                resource_ids,
            }))
            .await?
        {
            ks_response::Body::Keys(k) => Ok(k),
            _ => Err(ClientError::Protocol(
                "get_room_keys answered with another body",
            )),
        }
    }

    /// The rooms this user is a current member of.
    pub(crate) async fn list_rooms(&self) -> Result<Vec<RoomHead>> {
        match self.call(ks_request::Body::ListRooms(ListRooms {})).await? {
            ks_response::Body::Rooms(r) => Ok(r.rooms),
            _ => Err(ClientError::Protocol(
                "list_rooms answered with another body",
            )),
        }
    }
}

impl Task {
    async fn call(&mut self, body: ks_request::Body) -> Result<ks_response::Body> {
        let mut last = ClientError::Closed;
        // A broken connection is re-established once; requests are idempotent.
        for _ in 0..2 {
            match self.round_trip(body.clone()).await {
                Err(e @ (ClientError::Net(_) | ClientError::Timeout)) => {
                    tracing::debug!(error = %e, "keyserver connection lost");
                    self.conn = None;
                    last = e;
                }
                Err(e @ ClientError::Protocol(_)) => {
                    // Out of step with the server: start afresh next time.
                    self.conn = None;
                    return Err(e);
                }
                other => return other,
            }
        }
        Err(last)
    }

    async fn round_trip(&mut self, body: ks_request::Body) -> Result<ks_response::Body> {
        let request_id = self.next_id;
        self.next_id += 1;
        let timeout = self.timeout;
        let fut = async {
            if self.conn.is_none() {
                let limits = Limits::default();
                let mut conn = ward_net::tls::connect(&self.url, &limits, &self.tls).await?;
                match &self.enrolment {
                    None => {
                        ward_net::handshake::client(
                            &mut conn,
                            &self.device,
                            &self.user_id,
                            &self.audience,
                            &[],
                        )
                        .await?
                    }
                    Some((delegation, invite)) => {
                        ward_net::handshake::client_enrolling(
                            &mut conn,
                            &self.device,
                            &self.user_id,
                            &self.audience,
                            delegation,
                            invite,
                        )
                        .await?
                    }
                }
                self.conn = Some(conn);
            }
            let conn = self.conn.as_mut().ok_or(ClientError::Closed)?;
            conn.send_msg(&KsRequest {
                request_id,
                body: Some(body),
            })
            .await?;
            let resp: KsResponse = conn
                .recv_msg()
                .await?
                .ok_or(ClientError::Net(NetError::Closed(None, String::new())))?;
            if resp.request_id != request_id {
                return Err(ClientError::Protocol("reply to another request id"));
            }
            match resp.body {
                Some(ks_response::Body::Error(e)) => Err(ClientError::Keyserver {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                    detail: e.detail,
                }),
                Some(b) => Ok(b),
                None => Err(ClientError::Protocol("empty reply")),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}
