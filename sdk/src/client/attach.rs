//! Documents and photos (SECURITY.md §16): [`super::Client::send_file`] and
//! [`super::Client::download`], disk to disk in constant memory, resumable.
//!
//! **Sending.** 1. The file is encrypted into a spool file beside the store
//! (`<store>.spool/<blob id>.blob`, ciphertext only) and its descriptor is
//! recorded with the spool in the store's `uploads` (the file key stays in
//! the encrypted store). 2. The spool is uploaded over a blob connection,
//! piece by piece, each acknowledged once the relay fsynced it. 3. Once the
//! relay holds every piece, the descriptor is sealed as a message of
//! content type `ATTACHMENT` and moved to the outbox with the upload's row
//! dropped, in one transaction; the outbox worker sends it, naming the blob
//! id, like any message. If the app dies in 2, the next start resumes the
//! upload from the relay's next piece (nothing stored is sent again); if it
//! dies in 1, the spool is encrypted again from the source.
//!
//! **Downloading.** The blob's ciphertext is appended to
//! `<store>.spool/<blob id>.down` only after the decryptor accepted it, and
//! the file's bytes go to `<out>.ward-part`. A download that breaks keeps
//! the spool; the next attempt replays it locally (re-verifying every
//! chunk) and asks the relay only for the rest. The file is renamed to
//! `<out>` (never overwriting) only once B6 passed; then the relay is told
//! this device fetched the blob, and the spool is removed. A blob refused by
//! B1-B6 leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ward_core::attachment::{Descriptor, Layout};
use ward_core::envelope::ContentType;
use ward_core::{ConversationId, ResourceId};
use ward_proto::v1::ErrorCode;
use zeroize::Zeroizing;

use super::Inner;
use super::blob_conn::BlobConn;
use super::error::{ClientError, Result};
use super::events::Event;
use super::file_crypto::{self, BlobDecryptor};
use super::relay::Backoff;
use crate::store::{Message, Upload};

/// What a transfer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Encrypting the file into the spool.
    Encrypting,
    /// Uploading the blob to the relay.
    Uploading,
    /// Downloading (and verifying) the blob.
    Downloading,
}

/// A transfer's progress, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What it is doing.
    pub phase: Phase,
    /// Bytes done in this phase.
    pub done: u64,
    /// Bytes this phase has in all.
    pub total: u64,
}

/// What an attachment message says about its file (from the signed
/// descriptor; never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// The sender's file name (checked by D8: safe to save under in a
    /// folder the user chose).
    pub file_name: String,
    /// The sender's media type (D7); sniff before trusting it.
    pub media_type: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The blob's (padded, encrypted) size: what the transfer moves.
    pub blob_size: u64,
    /// The sender's inline preview, if it sent one (at most 64 KiB of an
    /// `image/...` type, inside the signed, encrypted descriptor).
    pub thumbnail: Option<Thumbnail>,
}

/// An attachment's inline preview image. Its bytes are patient data:
/// `Debug` shows only its type and size, and they are zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// `image/...`, as the sender said (sniff before trusting it).
    pub media_type: String,
    /// The image.
    pub bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thumbnail")
            .field("media_type", &self.media_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Message {
    /// For an attachment message, what it says about its file.
    pub fn attachment(&self) -> Option<AttachmentInfo> {
        if self.content_type != ContentType::Attachment {
            return None;
        }
        let d = Descriptor::parse(&self.content).ok()?;
        Some(AttachmentInfo {
            file_name: d.file_name().to_owned(),
            media_type: d.media_type().to_owned(),
            size: d.layout().plaintext,
            blob_size: d.layout().blob,
            thumbnail: d.thumbnail().map(|t| Thumbnail {
                media_type: t.media_type.clone(),
                bytes: t.bytes.clone(),
            }),
        })
    }
}

/// Attempts of one transfer before giving up (transient failures only);
/// an upload left in the store is resumed at the next start.
const ATTEMPTS: u32 = 5;

/// Worth trying again on a new connection.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Net(_) => !e.is_device_revoked(),
        ClientError::Timeout => true,
        ClientError::Relay { code, .. } => matches!(
            code,
            ErrorCode::Internal | ErrorCode::RateLimited | ErrorCode::BlobOutOfOrder
        ),
        ClientError::Protocol(_) => true,
        _ => false,
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory of spool files, beside the store.
fn spool_dir(inner: &Inner) -> PathBuf {
    let mut p = inner.config.store_path.as_os_str().to_owned();
    p.push(".spool");
    PathBuf::from(p)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ClientError::Closed)?
}

/// `send_file`: encrypt, upload, queue the descriptor.
pub(crate) async fn send_file(
    inner: &Arc<Inner>,
    conversation: ConversationId,
    path: &Path,
    file_name: &str,
    media_type: &str,
    thumbnail: Option<(&str, &[u8])>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ResourceId> {
    // Refuse what receivers would refuse before any work (D7-D9).
    if !ward_core::attachment::valid_media_type(media_type) {
        return Err(ward_core::AttachmentError::Malformed("media type").into());
    }
    if !ward_core::attachment::valid_file_name(file_name) {
        return Err(ward_core::AttachmentError::Malformed("file name").into());
    }
    if let Some((tm, tb)) = thumbnail
        && (tb.is_empty() || !ward_core::attachment::valid_thumbnail(tb, tm))
    {
        return Err(ward_core::AttachmentError::Malformed("thumbnail").into());
    }
    super::send::check_sendable(inner, conversation).await?;
    let dir = spool_dir(inner);
    let (src, tmp) = (
        path.to_owned(),
        dir.join(format!("new-{}.blob", hex(&random16()))),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let encrypt = {
        let tmp = tmp.clone();
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(ClientError::File)?;
            file_crypto::encrypt_to_spool(&src, &tmp, &|done, total| {
                let _ = tx.send((done, total));
            })
        })
    };
    tokio::pin!(encrypt);
    let sealed = loop {
        tokio::select! {
            r = &mut encrypt => break r,
            Some((done, total)) = rx.recv() => progress(Progress { phase: Phase::Encrypting, done, total }),
        }
    };
    let sealed = match sealed {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let descriptor = sealed.describe(media_type, file_name, thumbnail)?;
    let spool = spool_dir(inner).join(format!("{}.blob", hex(&sealed.blob_id)));
    std::fs::rename(&tmp, &spool).map_err(ClientError::File)?;
    let upload = Upload {
        blob_id: sealed.blob_id,
        conversation_id: conversation,
        descriptor: descriptor.encode(),
        spool_path: spool,
        blob_size: sealed.layout.blob,
        next_piece: 0,
        created_at_ms: super::send::now_ms(),
    };
    let row = upload.clone();
    inner.store.run(move |s| s.upload_put(&row)).await?;
    if let Err(e) = upload_with_retries(inner, &upload, progress).await {
        if !retryable(&e) {
            // Refused for good (size cap, quota, ...): nothing to resume.
            let id = upload.blob_id;
            let _ = inner.store.run(move |s| s.upload_remove(&id)).await;
            let _ = std::fs::remove_file(&upload.spool_path);
        }
        return Err(e);
    }
    finish_upload(inner, upload).await
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut b);
    b
}

async fn upload_with_retries(
    inner: &Arc<Inner>,
    upload: &Upload,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<()> {
    let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match upload_once(inner, upload, progress).await {
            Ok(()) => return Ok(()),
            Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                tracing::debug!(error = %e, "upload: will resume");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection's worth of uploading: open (the relay says where it
/// stands), then the missing pieces.
async fn upload_once(
    inner: &Arc<Inner>,
    upload: &Upload,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<()> {
    let descriptor = Descriptor::parse(&upload.descriptor)?;
    let layout = *descriptor.layout();
    let mut conn = BlobConn::connect(inner).await?;
    // The relay's answer says where the upload stands (the row's
    // `next_piece` is only what this device last recorded).
    let st = conn.open(inner, &upload.blob_id, upload.blob_size).await?;
    let total = layout.blob;
    let done_at = |n: u64| {
        if n >= layout.chunks {
            total
        } else {
            file_crypto::piece_range(&layout, n).map_or(0, |(o, _)| o)
        }
    };
    progress(Progress {
        phase: Phase::Uploading,
        done: done_at(st.next_piece),
        total,
    });
    if !st.complete {
        let path = upload.spool_path.clone();
        let mut spool = std::fs::File::open(&path).map_err(ClientError::File)?;
        let id = upload.blob_id;
        let store = inner.store.clone();
        let mut last_saved = st.next_piece;
        conn.upload(inner, &id, &layout, &mut spool, st.next_piece, &mut |n| {
            progress(Progress {
                phase: Phase::Uploading,
                done: done_at(n),
                total,
            });
            // The outbox remembers where the upload stands, every 64
            // pieces (4 MiB): a hint for the progress shown after a
            // restart; the relay's answer is the truth.
            if n >= last_saved + 64 {
                last_saved = n;
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = store.run(move |s| s.upload_progress(&id, n)).await;
                });
            }
        })
        .await?;
    }
    conn.close().await;
    Ok(())
}

/// Seals the descriptor of a complete upload and queues it, dropping the
/// upload and its spool.
async fn finish_upload(inner: &Arc<Inner>, upload: Upload) -> Result<ResourceId> {
    let conversation = upload.conversation_id;
    let timestamp_ms = super::send::now_ms();
    let blob_ids = vec![upload.blob_id.to_vec()];
    let (rid, payload) = if let Some(room) = super::send::room_of(inner, conversation).await? {
        // One wrap to the epoch key; the relay makes the member devices
        // the blob's readers (§17.10).
        super::rooms::seal_message(
            inner,
            &room,
            ContentType::Attachment,
            &upload.descriptor,
            timestamp_ms,
            blob_ids,
        )
        .await?
    } else {
        let members = super::send::members(inner, conversation).await?;
        let known = inner
            .directory
            .refresh_or_cached(&inner.store, &inner.keyserver, &members)
            .await?;
        super::send::seal_for(
            inner,
            &known,
            conversation,
            ContentType::Attachment,
            &upload.descriptor,
            timestamp_ms,
            blob_ids,
        )?
    };
    let message = Message {
        resource_id: rid,
        conversation_id: conversation,
        sender_user_id: inner.user_id.clone(),
        sender_device: inner.device.public_key(),
        timestamp_ms,
        content_type: ContentType::Attachment,
        content: Zeroizing::new(upload.descriptor.to_vec()),
    };
    let id = upload.blob_id;
    inner
        .store
        .run(move |s| s.upload_finish(&id, &payload, timestamp_ms, &message))
        .await?;
    let _ = std::fs::remove_file(&upload.spool_path);
    inner.outbox_notify.notify_one();
    tracing::debug!(resource = ?rid, "send_file: uploaded and queued");
    Ok(rid)
}

/// Resumes the uploads a previous run left (the app died mid-upload), then
/// queues their messages. Runs once at start; transient failures are
/// retried with backoff, permanent ones drop the upload
/// ([`Event::AttachmentFailed`]).
pub(crate) async fn resume_uploads(inner: Arc<Inner>) {
    let Ok(uploads) = inner.store.run(|s| s.uploads()).await else {
        return;
    };
    let keep: Vec<PathBuf> = uploads.iter().map(|u| u.spool_path.clone()).collect();
    let dir = spool_dir(&inner);
    let _ = blocking(move || {
        remove_stale_spools(&dir, &keep);
        Ok(())
    })
    .await;
    for upload in uploads {
        let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
        loop {
            let r = match upload_once(&inner, &upload, &mut |_| {}).await {
                Ok(()) => finish_upload(&inner, upload.clone()).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => break,
                Err(ClientError::Closed) => return,
                Err(e) if retryable(&e) || e.is_transient() => {
                    tracing::debug!(error = %e, "upload: will resume");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upload refused for good");
                    let id = upload.blob_id;
                    let _ = inner.store.run(move |s| s.upload_remove(&id)).await;
                    let _ = std::fs::remove_file(&upload.spool_path);
                    inner
                        .emit(Event::AttachmentFailed {
                            conversation_id: upload.conversation_id,
                            reason: e,
                        })
                        .await;
                    break;
                }
            }
        }
    }
}

/// Upload spools no upload refers to, an hour old: encryptions the app died
/// in (`new-*.blob`) and spools of finished uploads whose removal a crash
/// interrupted. (Download spools stay: a download resumes from them.)
fn remove_stale_spools(dir: &Path, keep: &[PathBuf]) {
    const STALE: std::time::Duration = std::time::Duration::from_secs(3600);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if old && path.extension().is_some_and(|e| e == "blob") && !keep.contains(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// `download`: the blob of `message` into a new file at `out`.
pub(crate) async fn download(
    inner: &Arc<Inner>,
    message: &Message,
    out: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<PathBuf> {
    if message.content_type != ContentType::Attachment {
        return Err(ClientError::NotAnAttachment);
    }
    let descriptor = Descriptor::parse(&message.content)?;
    if out.exists() {
        return Err(ClientError::FileExists(out.to_owned()));
    }
    let id = *descriptor.blob_id();
    let layout = *descriptor.layout();
    let dir = spool_dir(inner);
    let spool = dir.join(format!("{}.down", hex(&id)));
    let mut part_name = out.as_os_str().to_owned();
    part_name.push(".ward-part");
    let part = PathBuf::from(part_name);
    let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = download_once(inner, &descriptor, &layout, &dir, &spool, &part, progress).await;
        match r {
            Ok(()) => break,
            Err(e @ ClientError::Attachment(_)) => {
                // A refused blob: nothing of it is kept (B1-B6).
                let _ = std::fs::remove_file(&spool);
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
            Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                tracing::debug!(error = %e, "download: will resume");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
    // Complete (B6 passed): show it under its name, never over another file.
    std::fs::hard_link(&part, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ClientError::FileExists(out.to_owned()),
        _ => ClientError::File(e),
    })?;
    let _ = std::fs::remove_file(&part);
    // Tell the relay (it deletes the blob once every reader did); a failure
    // here loses nothing: retention deletes it later.
    match BlobConn::connect(inner).await {
        Ok(mut conn) => {
            if let Err(e) = conn.fetched(inner, &id).await {
                tracing::debug!(error = %e, "download: fetched not recorded");
            }
            conn.close().await;
        }
        Err(e) => tracing::debug!(error = %e, "download: fetched not recorded"),
    }
    let _ = std::fs::remove_file(&spool);
    Ok(out.to_owned())
}

/// One attempt: replay the spool, then fetch the rest. Leaves `part`
/// holding the whole file once the blob passed B1-B6.
async fn download_once(
    inner: &Arc<Inner>,
    descriptor: &Descriptor,
    layout: &Layout,
    dir: &Path,
    spool: &Path,
    part: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<()> {
    use std::io::{Read, Write};
    let total = layout.blob;
    let (dir, spool_p, part_p) = (dir.to_owned(), spool.to_owned(), part.to_owned());
    let d = Descriptor::parse(&descriptor.encode())?;
    let l = *layout;
    // Replay what an earlier attempt stored: whole pieces only.
    let (dec, spool_file, part_file, have) = blocking(move || {
        std::fs::create_dir_all(&dir).map_err(ClientError::File)?;
        let spool = {
            let mut o = std::fs::OpenOptions::new();
            o.read(true).append(true).create(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            o.open(&spool_p).map_err(ClientError::File)?
        };
        let len = spool.metadata().map_err(ClientError::File)?.len();
        let (end, _) = file_crypto::whole_pieces(&l, len.min(l.blob));
        if end != len {
            spool.set_len(end).map_err(ClientError::File)?;
        }
        // Plaintext once released: readable by this user only. Rewritten
        // from the spool on every attempt.
        match std::fs::remove_file(&part_p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ClientError::File(e)),
        }
        let mut part = file_crypto::create_private(&part_p)?;
        let mut dec = BlobDecryptor::new(&d);
        let mut buf = Zeroizing::new(vec![0u8; file_crypto::IO_BUFFER]);
        let mut plain = Zeroizing::new(Vec::with_capacity(file_crypto::IO_BUFFER));
        let mut left = end;
        let mut reader = std::fs::File::open(&spool_p).map_err(ClientError::File)?;
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            reader
                .read_exact(&mut buf[..want])
                .map_err(ClientError::File)?;
            dec.push(&buf[..want], &mut plain)?;
            part.write_all(&plain).map_err(ClientError::File)?;
            plain.clear();
            left -= want as u64;
        }
        Ok((dec, spool, part, end))
    })
    .await?;
    progress(Progress {
        phase: Phase::Downloading,
        done: have,
        total,
    });
    let mut conn = BlobConn::connect(inner).await?;
    let mut state = Some((dec, spool_file, part_file));
    let mut done = have;
    let id = *descriptor.blob_id();
    conn.download(inner, &id, have, total, &mut |data| {
        let (mut dec, mut spool, mut part) = state.take().ok_or(ClientError::Closed)?;
        let mut plain = Zeroizing::new(Vec::with_capacity(data.len()));
        // Verified before anything is kept: the spool holds only chunks
        // that authenticated.
        let r = dec.push(&data, &mut plain).and_then(|()| {
            part.write_all(&plain).map_err(ClientError::File)?;
            spool.write_all(&data).map_err(ClientError::File)
        });
        r?;
        done += data.len() as u64;
        progress(Progress {
            phase: Phase::Downloading,
            done,
            total,
        });
        state = Some((dec, spool, part));
        Ok(())
    })
    .await?;
    conn.close().await;
    let (dec, spool, part) = state.ok_or(ClientError::Closed)?;
    dec.finish()?;
    blocking(move || {
        part.sync_all().map_err(ClientError::File)?;
        drop(spool);
        Ok(())
    })
    .await
}
