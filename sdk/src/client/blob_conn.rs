//! A blob connection to the relay (SECURITY.md §16.9): the relay's URL with
//! the path `/v2/blobs`, the same device handshake as the message
//! connection, then blob frames only. Opened per transfer, so that an
//! upload or download never sits in front of messages.
//!
//! Uploads and downloads are pipelined: up to [`UPLOAD_WINDOW`] pieces or
//! [`READ_WINDOW`] reads are in flight, so a transfer is not one round trip
//! (and, upstream, one fsync) per 64 KiB.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};

use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use ward_net::{Conn, Limits};
use ward_proto::v1::{
    BlobFetched, BlobOpen, BlobPiece, BlobRead, BlobState, ClientFrame, ErrorCode, ServerFrame,
    client_frame, server_frame,
};

use super::Inner;
use super::error::{ClientError, Result};

/// Pieces sent ahead of their acknowledgements.
pub(crate) const UPLOAD_WINDOW: usize = 16;
/// Reads requested ahead of their data.
pub(crate) const READ_WINDOW: usize = 4;
/// Bytes per read: sixteen sealed chunks (the relay's `MAX_READ_BYTES`
/// also allows the header with them).
pub(crate) const READ_BYTES: u64 = 16 * ward_core::stream::SEALED_CHUNK_SIZE as u64;

/// The blob path on the relay's URL.
pub(crate) fn blob_url(relay_url: &str) -> String {
    format!("{}/v2/blobs", relay_url.trim_end_matches('/'))
}

/// A connection to `url` on the relay, authenticated as this device with
/// the end of its log (the whole log if the relay lacks its start,
/// SECURITY.md §9): the blob path's and the link path's.
pub(crate) async fn device_conn(
    inner: &Inner,
    url: &str,
) -> Result<Conn<MaybeTlsStream<TcpStream>>> {
    let own = inner
        .directory
        .cached(&inner.store, &inner.user_id)
        .await?
        .ok_or(ClientError::NotEnrolled)?;
    let limits = Limits::default();
    for whole in [false, true] {
        let r = tokio::time::timeout(inner.config.request_timeout, async {
            let mut conn = ward_net::tls::connect(url, &limits, &inner.config.tls).await?;
            ward_net::handshake::client(
                &mut conn,
                &inner.device,
                &inner.user_id,
                &inner.config.relay_audience(),
                super::relay::presented_log(&own.entries, whole),
            )
            .await?;
            Ok::<_, ClientError>(conn)
        })
        .await
        .map_err(|_| ClientError::Timeout)?;
        match r {
            Err(ClientError::Net(ward_net::NetError::Refused(ErrorCode::UnknownUser)))
                if !whole => {}
            r => return r,
        }
    }
    Err(ClientError::Protocol("relay refused the whole log"))
}

pub(crate) struct BlobConn {
    conn: Conn<MaybeTlsStream<TcpStream>>,
}

fn relay_error(e: ward_proto::v1::RelayError) -> ClientError {
    ClientError::Relay {
        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        detail: e.detail,
    }
}

fn frame(f: client_frame::Frame) -> ClientFrame {
    ClientFrame { frame: Some(f) }
}

impl BlobConn {
    /// Connects and authenticates as this device.
    pub(crate) async fn connect(inner: &Inner) -> Result<Self> {
        let url = blob_url(&inner.config.relay_url);
        Ok(Self {
            conn: device_conn(inner, &url).await?,
        })
    }

    async fn send(&mut self, f: client_frame::Frame) -> Result<()> {
        Ok(self.conn.send_msg(&frame(f)).await?)
    }

    async fn recv(&mut self, timeout: std::time::Duration) -> Result<server_frame::Frame> {
        let f = tokio::time::timeout(timeout, self.conn.recv_msg::<ServerFrame>())
            .await
            .map_err(|_| ClientError::Timeout)??;
        let f = f.ok_or(ClientError::Net(ward_net::NetError::Closed(
            None,
            String::new(),
        )))?;
        match f.frame {
            Some(server_frame::Frame::Error(e)) => Err(relay_error(e)),
            Some(f) => Ok(f),
            None => Err(ClientError::Protocol("empty relay frame")),
        }
    }

    async fn state(&mut self, inner: &Inner, id: &[u8; 32]) -> Result<BlobState> {
        match self.recv(inner.config.request_timeout).await? {
            server_frame::Frame::BlobState(s) if s.blob_id == id[..] => Ok(s),
            _ => Err(ClientError::Protocol("expected a blob state")),
        }
    }

    /// Opens (or resumes) the upload of `id`: where it stands.
    pub(crate) async fn open(
        &mut self,
        inner: &Inner,
        id: &[u8; 32],
        size: u64,
    ) -> Result<BlobState> {
        self.send(client_frame::Frame::BlobOpen(BlobOpen {
            blob_id: id.to_vec(),
            blob_size: size,
        }))
        .await?;
        self.state(inner, id).await
    }

    /// Uploads the pieces of `spool` from `from` on, pipelined; `acked` is
    /// called with each acknowledged piece count. Returns once the relay
    /// says the blob is complete.
    pub(crate) async fn upload(
        &mut self,
        inner: &Inner,
        id: &[u8; 32],
        layout: &ward_core::attachment::Layout,
        spool: &mut std::fs::File,
        from: u64,
        acked: &mut (dyn FnMut(u64) + Send),
    ) -> Result<()> {
        let pieces = layout.chunks;
        let mut next = from;
        let mut in_flight = 0usize;
        if let Some((off, _)) = super::file_crypto::piece_range(layout, next) {
            spool
                .seek(SeekFrom::Start(off))
                .map_err(ClientError::File)?;
        }
        loop {
            while in_flight < UPLOAD_WINDOW && next < pieces {
                let (_, len) = super::file_crypto::piece_range(layout, next)
                    .ok_or(ClientError::Protocol("piece past the end"))?;
                let mut data = vec![
                    0u8;
                    usize::try_from(len)
                        .map_err(|_| ClientError::Protocol("piece size"))?
                ];
                spool.read_exact(&mut data).map_err(ClientError::File)?;
                self.send(client_frame::Frame::BlobPiece(BlobPiece {
                    blob_id: id.to_vec(),
                    index: next,
                    data,
                }))
                .await?;
                next += 1;
                in_flight += 1;
            }
            let st = self.state(inner, id).await?;
            in_flight = in_flight.saturating_sub(1);
            acked(st.next_piece);
            if st.complete {
                return Ok(());
            }
            if in_flight == 0 && next >= pieces {
                return Err(ClientError::Protocol("relay did not complete the blob"));
            }
        }
    }

    /// Downloads bytes `from .. size` of blob `id` in reads of
    /// [`READ_BYTES`], pipelined; `sink` takes each range in order.
    pub(crate) async fn download(
        &mut self,
        inner: &Inner,
        id: &[u8; 32],
        from: u64,
        size: u64,
        sink: &mut (dyn FnMut(Vec<u8>) -> Result<()> + Send),
    ) -> Result<()> {
        let mut asked: VecDeque<(u64, u64)> = VecDeque::new();
        let mut next = from;
        while next < size || !asked.is_empty() {
            while asked.len() < READ_WINDOW && next < size {
                // The first read also takes the header, so that later
                // reads stay on chunk boundaries.
                let len = if next == 0 {
                    READ_BYTES + ward_core::attachment::HEADER_SIZE as u64
                } else {
                    READ_BYTES
                }
                .min(size - next);
                self.send(client_frame::Frame::BlobRead(BlobRead {
                    blob_id: id.to_vec(),
                    offset: next,
                    length: len,
                }))
                .await?;
                asked.push_back((next, len));
                next += len;
            }
            let Some((offset, len)) = asked.pop_front() else {
                break;
            };
            match self.recv(inner.config.request_timeout).await {
                Ok(server_frame::Frame::BlobData(d))
                    if d.blob_id == id[..] && d.offset == offset =>
                {
                    let got = d.data.len() as u64;
                    // What the relay serves goes to the decryptor whatever its
                    // length: too much is its TrailingData (B3), too little
                    // ends the blob, and the caller's finish says Truncated
                    // (B5). The relay's sizes are never trusted over the
                    // signed descriptor's.
                    sink(d.data)?;
                    if got < len {
                        return Ok(());
                    }
                    if got > len {
                        return Err(ClientError::Protocol("relay served more than asked"));
                    }
                }
                // The relay says the range is outside the blob: for it the
                // blob is shorter than the descriptor says. Truncated (B5).
                Err(ClientError::Relay {
                    code: ErrorCode::Malformed,
                    ..
                }) => return Ok(()),
                Ok(_) => return Err(ClientError::Protocol("expected the blob range asked for")),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Tells the relay this device verified the whole blob (it deletes the
    /// blob once every reader did).
    pub(crate) async fn fetched(&mut self, inner: &Inner, id: &[u8; 32]) -> Result<()> {
        self.send(client_frame::Frame::BlobFetched(BlobFetched {
            blob_id: id.to_vec(),
        }))
        .await?;
        self.state(inner, id).await.map(|_| ())
    }

    pub(crate) async fn close(mut self) {
        self.conn.close(ward_net::close::NORMAL, "done").await;
    }
}
