//! The blob connection (SECURITY.md §16.9): a device that connected to
//! [`BLOB_PATH`] and authenticated with the ordinary handshake (§8) uploads
//! and downloads attachment blobs here, frame by frame, and nothing else.
//!
//! **Why a connection of its own.** The message session handles one inbound
//! frame at a time and writes deliveries between them; a 100 MiB upload is
//! 1,600 pieces of 64 KiB, each fsynced before its acknowledgement. On the
//! message connection every one of those would sit in front of the
//! deliveries and acks of the same device (head-of-line blocking), and a
//! slow disk would look like a slow consumer. Here the transfer has its own
//! TCP flow, its own frame loop and the blob store's blocking threads; the
//! message connection stays as it was. It costs one more handshake per
//! transfer, and a blob session is not registered for deliveries.
//!
//! Authorisation: an upload is written only by the device that opened it
//! (the relay records the owner at `BlobOpen`; pieces are accepted only for
//! blobs opened on this connection); a blob is read only by the devices the
//! relay recorded as its readers from the `Send` that named it. Every other
//! request gets `BLOB_REFUSED`, the same whether the blob exists or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{debug, warn};
use ward_net::tls::ServerStream;
use ward_net::{Conn, close};
use ward_proto::v1::{
    BlobData, BlobFetched, BlobOpen, BlobPiece, BlobRead, BlobState, BlobStatus, ClientFrame,
    ErrorCode, RelayError, ServerFrame, client_frame, server_frame,
};

use crate::blob_meta::{self, BlobOp, BlobOutcome};
use crate::blobs::{BlobError, BlobId, UploadState};
use crate::registry::CloseReason;
use crate::state::Shared;
use crate::storage::Mailbox;

/// The WebSocket path of blob connections.
pub const BLOB_PATH: &str = "/v2/blobs";

/// Most bytes one `BlobRead` may ask for: sixteen sealed chunks and the
/// header (a client reads whole chunks, §16.2).
pub const MAX_READ_BYTES: u64 =
    16 * ward_core::stream::SEALED_CHUNK_SIZE as u64 + ward_core::attachment::HEADER_SIZE as u64;

/// Blobs deleted per sweep step.
const SWEEP_STEP: usize = 256;

/// The owner string the file store keeps beside an upload: the device,
/// since only it may write.
fn owner_key(m: &Mailbox) -> String {
    let hex: String = m.device_id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{hex}", m.user_id)
}

enum Refusal {
    /// Answer with an error, keep the connection.
    Error(ErrorCode, &'static str),
    /// Answer with an error and close.
    Close(ErrorCode, &'static str, CloseReason),
}

fn malformed(detail: &'static str) -> Refusal {
    Refusal::Close(
        ErrorCode::Malformed,
        detail,
        CloseReason {
            code: close::PROTOCOL_ERROR,
            reason: "malformed frame",
        },
    )
}

const REFUSED: Refusal = Refusal::Error(ErrorCode::BlobRefused, "blob refused");
const INTERNAL: Refusal = Refusal::Error(ErrorCode::Internal, "blob store failed; retry");

struct BlobSession {
    shared: Arc<Shared>,
    mailbox: Mailbox,
    /// Uploads opened on this connection: the only ones it may write.
    uploads: HashMap<BlobId, u64>,
    /// Blobs this device was found to be a reader of: `id -> size`.
    readable: HashMap<BlobId, u64>,
    /// The global outbound budget the last `BlobRead` holds.
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    /// This device's blob byte budget (none: no limit), parked for its next
    /// blob connection when this one ends.
    bytes: Option<ward_net::rate::TokenBucket>,
}

impl BlobSession {
    /// Waits until this device's byte budget covers `n` more bytes.
    async fn throttle(&mut self, n: u64) {
        let Some(b) = &mut self.bytes else {
            return;
        };
        let wait = b.take_many(n as f64);
        if !wait.is_zero() {
            self.shared.metrics.blob_throttled.inc();
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for BlobSession {
    fn drop(&mut self) {
        if let Some(b) = self.bytes.take() {
            self.shared.blob_bytes.park(self.mailbox.clone(), b);
        }
    }
}

/// Most blobs one connection keeps authorisations for (a client transfers
/// one or a few at a time; the maps must not grow without bound).
const MAX_TRACKED: usize = 64;

fn blob_id(bytes: &[u8]) -> Result<BlobId, Refusal> {
    BlobId::try_from(bytes).map_err(|_| malformed("blob id must be 32 bytes"))
}

fn state_frame(id: &BlobId, size: u64, st: UploadState) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::BlobState(BlobState {
            blob_id: id.to_vec(),
            next_piece: st.next_piece,
            pieces: st.pieces,
            complete: st.complete,
            blob_size: size,
        })),
    }
}

/// Runs a blob store call on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))?
}

/// Serves an authenticated blob connection to the end; returns the close
/// reason to send.
pub(crate) async fn session(
    conn: &mut Conn<ServerStream>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    mut shutdown: watch::Receiver<bool>,
) -> Option<CloseReason> {
    let limits = shared.config.limits;
    let bytes = (limits.blob_bytes_per_sec > 0).then(|| shared.blob_bytes.take(&mailbox));
    let mut s = BlobSession {
        shared: shared.clone(),
        mailbox,
        uploads: HashMap::new(),
        readable: HashMap::new(),
        held: None,
        bytes,
    };
    let write_timeout = limits.slow_consumer_timeout;
    let mut ping = tokio::time::interval(limits.ping_interval.max(Duration::from_millis(10)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    loop {
        tokio::select! {
            biased;
            _ = ping.tick() => {
                if conn.last_seen().elapsed() >= limits.idle_timeout {
                    return Some(CloseReason { code: close::NORMAL, reason: "idle" });
                }
                if timeout(write_timeout, conn.ping()).await.map(|r| r.is_ok()) != Ok(true) {
                    return None;
                }
            }
            () = stopped(&mut shutdown) => {
                return Some(CloseReason { code: close::GOING_AWAY, reason: "relay shutting down" });
            }
            inbound = conn.recv_msg::<ClientFrame>() => {
                let frame = match inbound {
                    Ok(Some(f)) => f,
                    Ok(None) => return None,
                    Err(e) => {
                        let (code, reason) = ward_net::conn::close_code_for(&e);
                        debug!(error = %e, "blob connection failed");
                        return Some(CloseReason { code, reason });
                    }
                };
                let (id, answer) = s.handle(frame).await;
                // A read's share of the global outbound budget, held until
                // its data is written.
                let _budget = s.held.take();
                let (reply, close) = match answer {
                    Ok(f) => (f, None),
                    Err(Refusal::Error(code, detail)) => (error_frame(code, &id, detail), None),
                    Err(Refusal::Close(code, detail, reason)) => {
                        (error_frame(code, &id, detail), Some(reason))
                    }
                };
                match timeout(write_timeout, conn.send_msg(&reply)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => return Some(CloseReason { code: close::SLOW_CONSUMER, reason: "not reading" }),
                }
                if close.is_some() {
                    return close;
                }
            }
        }
    }
}

/// Resolves once the relay is shutting down (the `watch::Ref` is dropped
/// here, so the session future stays `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn error_frame(code: ErrorCode, id: &[u8], detail: &str) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::Error(RelayError {
            code: code as i32,
            message_id: id.to_vec(),
            detail: detail.to_owned(),
        })),
    }
}

impl BlobSession {
    /// Handles one frame: the blob id it names (for the error) and the
    /// answer.
    async fn handle(&mut self, frame: ClientFrame) -> (Vec<u8>, Result<ServerFrame, Refusal>) {
        use client_frame::Frame as F;
        match frame.frame {
            Some(F::BlobOpen(f)) => (f.blob_id.clone(), self.open(f).await),
            Some(F::BlobPiece(f)) => (f.blob_id.clone(), self.piece(f).await),
            Some(F::BlobStatus(f)) => (f.blob_id.clone(), self.status(f).await),
            Some(F::BlobRead(f)) => (f.blob_id.clone(), self.read(f).await),
            Some(F::BlobFetched(f)) => (f.blob_id.clone(), self.fetched(f).await),
            _ => (
                Vec::new(),
                Err(malformed("only blob frames on a blob connection")),
            ),
        }
    }

    /// A device revoked since it connected does no more transfers.
    async fn still_active(&self) -> Result<(), Refusal> {
        let user = crate::logs::refresh(&self.shared, &self.mailbox.user_id, Vec::new())
            .await
            .map_err(|_| INTERNAL)?;
        let device = ward_core::keys::SigningPublicKey::from_bytes(&self.mailbox.device_id)
            .map_err(|_| INTERNAL)?;
        match user.device(&device) {
            Some(d) if d.is_active() => Ok(()),
            _ => Err(Refusal::Close(
                ErrorCode::DeviceRevoked,
                "device revoked",
                CloseReason {
                    code: close::DEVICE_REVOKED,
                    reason: "device revoked",
                },
            )),
        }
    }

    async fn open(&mut self, f: BlobOpen) -> Result<ServerFrame, Refusal> {
        let id = blob_id(&f.blob_id)?;
        let limits = self.shared.config.limits;
        if f.blob_size > limits.max_blob_bytes {
            return Err(Refusal::Error(
                ErrorCode::TooLarge,
                "blob over the relay's size cap",
            ));
        }
        if crate::blobs::pieces(f.blob_size).is_none() {
            return Err(Refusal::Error(ErrorCode::Malformed, "not a blob size"));
        }
        self.still_active().await?;
        let op = BlobOp::Open {
            id,
            owner: self.mailbox.clone(),
            size: f.blob_size,
            quota: limits.max_user_blob_bytes,
        };
        match self.shared.writer.blob(op).await {
            Ok(BlobOutcome::Opened | BlobOutcome::Resumed) => {}
            Ok(BlobOutcome::OverQuota { .. }) => {
                return Err(Refusal::Error(
                    ErrorCode::QuotaExceeded,
                    "your attachments fill your blob quota",
                ));
            }
            Ok(_) => return Err(REFUSED),
            Err(e) => {
                warn!(error = %e, "recording a blob failed");
                return Err(INTERNAL);
            }
        }
        refresh_totals(&self.shared).await;
        let store = self.shared.blobs.clone();
        let owner = owner_key(&self.mailbox);
        let size = f.blob_size;
        let st = match blocking(move || store.begin(&id, &owner, size)).await {
            Ok(st) => st,
            Err(BlobError::Exists) => return Err(REFUSED),
            Err(e) => {
                warn!(error = %e, "opening a blob file failed");
                return Err(INTERNAL);
            }
        };
        if st.complete {
            // Stored, but the record may not say so (a crash in between).
            self.complete(id).await?;
        } else {
            if self.uploads.len() >= MAX_TRACKED {
                self.uploads.clear();
            }
            self.uploads.insert(id, size);
        }
        Ok(state_frame(&id, size, st))
    }

    async fn complete(&self, id: BlobId) -> Result<(), Refusal> {
        match self.shared.writer.blob(BlobOp::Complete { id }).await {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(error = %e, "recording a complete blob failed");
                Err(INTERNAL)
            }
        }
    }

    async fn piece(&mut self, f: BlobPiece) -> Result<ServerFrame, Refusal> {
        let id = blob_id(&f.blob_id)?;
        let Some(&size) = self.uploads.get(&id) else {
            self.shared.metrics.blob_pieces_refused.inc();
            return Err(REFUSED);
        };
        let store = self.shared.blobs.clone();
        let owner = owner_key(&self.mailbox);
        let (index, data) = (f.index, f.data);
        let len = data.len() as u64;
        self.throttle(len).await;
        match blocking(move || store.put_piece(&id, &owner, index, &data)).await {
            Ok(st) => {
                self.shared.metrics.blob_pieces_in.inc();
                self.shared.metrics.blob_bytes_in.add(len);
                if st.complete {
                    self.uploads.remove(&id);
                    self.complete(id).await?;
                }
                Ok(state_frame(&id, size, st))
            }
            Err(BlobError::OutOfOrder { .. } | BlobError::PieceLength { .. }) => {
                self.shared.metrics.blob_pieces_refused.inc();
                Err(Refusal::Error(
                    ErrorCode::BlobOutOfOrder,
                    "not the next piece, or not its length; ask BlobStatus",
                ))
            }
            Err(BlobError::NotFound | BlobError::NotOwner) => {
                self.shared.metrics.blob_pieces_refused.inc();
                self.uploads.remove(&id);
                Err(REFUSED)
            }
            Err(e) => {
                warn!(error = %e, "storing a blob piece failed");
                Err(INTERNAL)
            }
        }
    }

    async fn status(&mut self, f: BlobStatus) -> Result<ServerFrame, Refusal> {
        let id = blob_id(&f.blob_id)?;
        let row = self
            .shared
            .read(move |c| blob_meta::row(c, &id))
            .await
            .map_err(|_| INTERNAL)?;
        let Some(row) = row.filter(|r| r.owner == self.mailbox) else {
            return Err(REFUSED);
        };
        let store = self.shared.blobs.clone();
        match blocking(move || store.state(&id)).await {
            Ok(st) => Ok(state_frame(&id, row.size, st)),
            Err(BlobError::NotFound) => Err(REFUSED),
            Err(e) => {
                warn!(error = %e, "reading a blob's state failed");
                Err(INTERNAL)
            }
        }
    }

    async fn read(&mut self, f: BlobRead) -> Result<ServerFrame, Refusal> {
        let id = blob_id(&f.blob_id)?;
        if f.length == 0 || f.length > MAX_READ_BYTES {
            return Err(Refusal::Error(
                ErrorCode::TooLarge,
                "read 1 to 1 MiB at once",
            ));
        }
        let size = match self.readable.get(&id) {
            Some(&s) => s,
            None => {
                self.still_active().await?;
                let mb = self.mailbox.clone();
                let size = self
                    .shared
                    .read(move |c| blob_meta::reader_may_read(c, &id, &mb))
                    .await
                    .map_err(|_| INTERNAL)?
                    .ok_or(REFUSED)?;
                if self.readable.len() >= MAX_TRACKED {
                    self.readable.clear();
                }
                self.readable.insert(id, size);
                size
            }
        };
        let end = f.offset.checked_add(f.length);
        if end.is_none_or(|e| e > size) {
            return Err(Refusal::Error(
                ErrorCode::Malformed,
                "range outside the blob",
            ));
        }
        self.throttle(f.length).await;
        // Data read for blob connections counts against the same global
        // budget as deliveries (`global_outbound_bytes`): the memory reads
        // hold is bounded whatever the number of downloads.
        let cost = u32::try_from(
            f.length
                .min(crate::state::global_permits(&self.shared.config) as u64),
        )
        .unwrap_or(u32::MAX)
        .max(1);
        let permit = timeout(
            self.shared.config.limits.slow_consumer_timeout,
            self.shared.outbound.clone().acquire_many_owned(cost),
        )
        .await;
        let Ok(Ok(permit)) = permit else {
            return Err(Refusal::Error(ErrorCode::RateLimited, "relay busy; retry"));
        };
        self.held = Some(permit);
        let store = self.shared.blobs.clone();
        let (offset, length) = (f.offset, f.length);
        match blocking(move || store.read_range(&id, offset, length)).await {
            Ok(data) => {
                self.shared.metrics.blob_bytes_out.add(data.len() as u64);
                Ok(ServerFrame {
                    frame: Some(server_frame::Frame::BlobData(BlobData {
                        blob_id: id.to_vec(),
                        offset,
                        data,
                    })),
                })
            }
            Err(BlobError::NotFound | BlobError::Incomplete) => {
                self.readable.remove(&id);
                Err(REFUSED)
            }
            Err(BlobError::Range) => Err(Refusal::Error(
                ErrorCode::Malformed,
                "range outside the blob",
            )),
            Err(e) => {
                warn!(error = %e, "reading a blob failed");
                Err(INTERNAL)
            }
        }
    }

    async fn fetched(&mut self, f: BlobFetched) -> Result<ServerFrame, Refusal> {
        let id = blob_id(&f.blob_id)?;
        let op = BlobOp::Fetched {
            id,
            reader: self.mailbox.clone(),
        };
        let all = match self.shared.writer.blob(op).await {
            Ok(BlobOutcome::FetchedBy { all }) => all,
            Ok(_) => return Err(REFUSED),
            Err(e) => {
                warn!(error = %e, "recording a fetch failed");
                return Err(INTERNAL);
            }
        };
        let size = self.readable.remove(&id).unwrap_or(0);
        if all {
            delete(&self.shared, id).await;
        }
        Ok(ServerFrame {
            frame: Some(server_frame::Frame::BlobState(BlobState {
                blob_id: id.to_vec(),
                next_piece: 0,
                pieces: 0,
                complete: true,
                blob_size: size,
            })),
        })
    }
}

/// Unlinks blob `id`'s files, then forgets its records (in that order: a
/// crash in between leaves a record the sweeper deletes again).
async fn delete(shared: &Shared, id: BlobId) {
    let store = shared.blobs.clone();
    match blocking(move || store.delete(&id)).await {
        Ok(()) | Err(BlobError::NotFound) => {}
        Err(e) => {
            warn!(error = %e, "deleting a blob failed; the sweeper retries");
            return;
        }
    }
    match shared.writer.blob(BlobOp::Forget { id }).await {
        Ok(_) => shared.metrics.blobs_deleted.inc(),
        Err(e) => warn!(error = %e, "forgetting a deleted blob failed"),
    }
    refresh_totals(shared).await;
}

/// Sets the blob gauges from the records.
pub(crate) async fn refresh_totals(shared: &Shared) {
    if let Ok((n, bytes)) = shared.read(blob_meta::totals).await {
        shared
            .metrics
            .blobs
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        shared
            .metrics
            .blob_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Deletes blob files no record refers to (a database restored from a
/// backup older than the blob directory). Safe against a concurrent
/// `BlobOpen`: its record is committed before its files are created.
async fn sweep_orphans(shared: &Shared) {
    let store = shared.blobs.clone();
    let Ok(ids) = blocking(move || store.ids()).await else {
        return;
    };
    if ids.is_empty() {
        return;
    }
    let Ok(orphans) = shared.read(move |c| blob_meta::unrecorded(c, &ids)).await else {
        return;
    };
    for id in orphans {
        let store = shared.blobs.clone();
        match blocking(move || store.delete(&id)).await {
            Ok(()) => {
                shared.metrics.blobs_deleted.inc();
                debug!("orphaned blob file deleted");
            }
            Err(BlobError::NotFound) => {}
            Err(e) => warn!(error = %e, "deleting an orphaned blob failed"),
        }
    }
}

/// Deletes blobs past retention, abandoned uploads, blobs every reader
/// fetched whose deletion was interrupted, and orphaned files.
pub(crate) async fn sweep(shared: &Shared) {
    sweep_orphans(shared).await;
    let now = crate::writer::now_ms();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let retention = now.saturating_sub(ms(shared.config.retention));
    let abandon = now.saturating_sub(ms(shared.config.blob_abandon_after));
    // Bounded: a file that cannot be deleted stays listed, so the loop must
    // not wait for the list to shrink.
    for _ in 0..64 {
        let ids = match shared
            .read(move |c| blob_meta::expired(c, retention, abandon, SWEEP_STEP))
            .await
        {
            Ok(ids) => ids,
            Err(e) => {
                warn!(error = %e, "blob sweep failed");
                return;
            }
        };
        let n = ids.len();
        for id in ids {
            delete(shared, id).await;
        }
        if n > 0 {
            debug!(blobs = n, "blob sweep deleted blobs");
        }
        if n < SWEEP_STEP {
            return;
        }
    }
}
