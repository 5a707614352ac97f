//! One protobuf message per binary WebSocket message.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, create_response, write_response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ward_proto::{Bounded, decode_bounded};

use crate::{Limits, NetError, close};

/// A WebSocket carrying Ward frames.
pub struct Conn<S> {
    ws: WebSocketStream<S>,
    max_frame_bytes: usize,
    /// The limit once authenticated (servers start at the pre-auth limit).
    full_frame_bytes: usize,
    last_seen: Instant,
}

/// The WebSocket limits of a client connection (the full frame limit).
pub(crate) fn ws_config(limits: &Limits) -> WebSocketConfig {
    config(limits.max_frame_bytes)
}

/// Bytes taken from the socket per read. tungstenite's default, 128 KiB,
/// is allocated and zero-filled for every connection: most of what an idle
/// phone cost the relay (167 KiB per connection, BENCHMARKS.md, issue 15).
/// A frame larger than this still arrives whole (the buffer grows for the
/// frame being read); only the bytes per read call shrink.
pub const READ_BUFFER_BYTES: usize = 4 << 10;

fn config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Largest HTTP upgrade request a server reads (request line and headers).
pub const MAX_UPGRADE_BYTES: usize = 8 << 10;
/// Most headers in an upgrade request.
const MAX_UPGRADE_HEADERS: usize = 64;

/// Server side: completes the WebSocket upgrade on an accepted stream. A
/// request that is not a valid WebSocket upgrade is answered with HTTP 400
/// (malformed, over [`MAX_UPGRADE_BYTES`], not a GET) or 426 (not an upgrade
/// to WebSocket version 13) before the stream is closed. Until
/// [`Conn::authenticated`], frames are limited to
/// `limits.max_preauth_frame_bytes`.
pub async fn accept<S>(stream: S, limits: &Limits) -> Result<Conn<S>, NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with_path(stream, limits).await.map(|(c, _)| c)
}

/// [`accept`], also returning the request's path (e.g. `/`, or the
/// keyserver's relay link `/v2/relay-link`), so that one listener can serve
/// two protocols that both start with the server's `AuthChallenge`.
pub async fn accept_with_path<S>(
    mut stream: S,
    limits: &Limits,
) -> Result<(Conn<S>, String), NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (request, tail) = match read_request(&mut stream).await {
        Ok(r) => r,
        Err(status) => return Err(refuse_upgrade(stream, status).await),
    };
    let response = match create_response(&request) {
        Ok(r) => r,
        Err(tungstenite::Error::Protocol(p)) => {
            use tungstenite::error::ProtocolError as P;
            let status = match p {
                P::MissingSecWebSocketVersionHeader
                | P::MissingUpgradeWebSocketHeader
                | P::MissingConnectionUpgradeHeader => 426,
                _ => 400,
            };
            return Err(refuse_upgrade(stream, status).await);
        }
        Err(_) => return Err(refuse_upgrade(stream, 400).await),
    };
    let mut head = Vec::with_capacity(256);
    write_response(&mut head, &response)?;
    stream
        .write_all(&head)
        .await
        .map_err(tungstenite::Error::Io)?;
    stream.flush().await.map_err(tungstenite::Error::Io)?;
    let pre = limits.max_preauth_frame_bytes.min(limits.max_frame_bytes);
    let path = request.uri().path().to_owned();
    let ws =
        WebSocketStream::from_partially_read(stream, tail, Role::Server, Some(config(pre))).await;
    Ok((
        Conn {
            ws,
            max_frame_bytes: pre,
            full_frame_bytes: limits.max_frame_bytes,
            last_seen: Instant::now(),
        },
        path,
    ))
}

/// Reads one HTTP request head (bounded); the bytes after it are returned
/// too (a client must not send any before the 101, but tungstenite keeps
/// them, and so do we). Err is the HTTP status to answer with.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Request, Vec<u8>), u16> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_UPGRADE_BYTES {
            return Err(400);
        }
        let room = MAX_UPGRADE_BYTES - buf.len();
        let mut chunk = [0u8; 1024];
        let want = room.min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await.map_err(|_| 0u16)?;
        if n == 0 {
            return Err(0); // gone: nobody to answer
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_UPGRADE_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                if req.method != Some("GET") {
                    return Err(400);
                }
                let version = match req.version {
                    Some(1) => http::Version::HTTP_11,
                    _ => http::Version::HTTP_10,
                };
                let mut builder = http::Request::builder()
                    .method("GET")
                    .uri(req.path.unwrap_or("/"))
                    .version(version);
                for h in req.headers.iter() {
                    builder = builder.header(h.name, h.value);
                }
                let request = builder.body(()).map_err(|_| 400u16)?;
                return Ok((request, buf[len..].to_vec()));
            }
            Err(_) => return Err(400),
        }
    }
}

/// Answers a refused upgrade with `status` (0: nobody to answer) and closes.
async fn refuse_upgrade<S: AsyncWrite + Unpin>(mut stream: S, status: u16) -> NetError {
    let text = match status {
        426 => {
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                Connection: close\r\nContent-Length: 0\r\n\r\n"
        }
        400 => "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        _ => "",
    };
    if !text.is_empty() {
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
    NetError::BadUpgrade(status)
}

/// Client side: connects to `url`, `wss://host:port` verified against the
/// web PKI's roots, or `ws://` to loopback only. [`crate::tls::connect`]
/// takes a pinned CA.
pub async fn connect(
    url: &str,
    limits: &Limits,
) -> Result<Conn<MaybeTlsStream<TcpStream>>, NetError> {
    crate::tls::connect(url, limits, &crate::tls::ClientTls::default()).await
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps an already upgraded WebSocket.
    pub fn from_ws(ws: WebSocketStream<S>, limits: &Limits) -> Self {
        Self {
            ws,
            max_frame_bytes: limits.max_frame_bytes,
            full_frame_bytes: limits.max_frame_bytes,
            last_seen: Instant::now(),
        }
    }

    /// Raises the frame limit from the pre-auth one to the full one, once
    /// the peer has authenticated. The WebSocket is rebuilt on the same
    /// stream: the handshake is lock-step (the device sends nothing after its
    /// `AuthResponse` before it reads the `AuthResult`), so no buffered frame
    /// is lost.
    pub async fn authenticated(self) -> Self {
        if self.max_frame_bytes == self.full_frame_bytes {
            return self;
        }
        let full = self.full_frame_bytes;
        let stream = self.ws.into_inner();
        let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config(full))).await;
        Self {
            ws,
            max_frame_bytes: full,
            full_frame_bytes: full,
            last_seen: self.last_seen,
        }
    }

    /// The largest frame accepted now.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// When the peer last sent anything (a frame, a ping or a pong).
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// Sends a WebSocket ping (the peer's WebSocket layer answers it).
    pub async fn ping(&mut self) -> Result<(), NetError> {
        self.ws.send(Message::Ping(Default::default())).await?;
        Ok(())
    }

    /// The next binary message; `Ok(None)` when the peer closed cleanly.
    /// Pings are answered by the WebSocket layer; text frames are an error.
    pub async fn recv(&mut self) -> Result<Option<tungstenite::Bytes>, NetError> {
        loop {
            let next = self.ws.next().await;
            self.last_seen = Instant::now();
            match next {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                Some(Ok(Message::Text(_))) => return Err(NetError::TextFrame),
                Some(Ok(Message::Close(frame))) => {
                    return match frame {
                        Some(f)
                            if u16::from(f.code) != close::NORMAL
                                && u16::from(f.code) != close::GOING_AWAY =>
                        {
                            Err(NetError::Closed(Some(f.code.into()), f.reason.to_string()))
                        }
                        _ => Ok(None),
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            }
        }
    }

    /// The next message decoded as `M`; `Ok(None)` on a clean close.
    pub async fn recv_msg<M: ward_proto::Message + Default + Bounded>(
        &mut self,
    ) -> Result<Option<M>, NetError> {
        match self.recv().await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode_bounded(&bytes, self.max_frame_bytes)?)),
        }
    }

    /// Sends one message as one binary frame.
    pub async fn send_msg<M: ward_proto::Message>(&mut self, msg: &M) -> Result<(), NetError> {
        self.ws
            .send(Message::Binary(msg.encode_to_vec().into()))
            .await?;
        Ok(())
    }

    /// Sends a close frame with `code` and a short human-readable reason.
    /// Errors are ignored: the peer may already be gone.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }

    /// Closes with the code that matches `err`, for a server refusing a peer.
    pub async fn close_for(&mut self, err: &NetError) {
        let (code, reason) = close_code_for(err);
        self.close(code, reason).await;
    }

    /// The underlying WebSocket, e.g. to split it into reader and writer halves.
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }
}

/// The close code and reason a server sends for a failure.
pub fn close_code_for(err: &NetError) -> (u16, &'static str) {
    use tungstenite::error::CapacityError;
    match err {
        NetError::TextFrame => (close::UNSUPPORTED_DATA, "binary frames only"),
        NetError::Malformed(_) | NetError::Unexpected(_) => {
            (close::PROTOCOL_ERROR, "malformed frame")
        }
        NetError::WebSocket(tungstenite::Error::Capacity(CapacityError::MessageTooLong {
            ..
        })) => (close::TOO_BIG, "frame too large"),
        NetError::WebSocket(_) => (close::PROTOCOL_ERROR, "websocket error"),
        NetError::Auth(ward_core::AuthError::UnsupportedVersion(_))
        | NetError::Refused(ward_proto::v1::ErrorCode::UnsupportedVersion) => (
            close::UNSUPPORTED_VERSION,
            "unsupported protocol version: this server speaks Ward protocol v2",
        ),
        NetError::Auth(_) | NetError::Refused(_) | NetError::WrongService(_) => {
            (close::AUTH_FAILED, "authentication failed")
        }
        NetError::Timeout => (close::AUTH_TIMEOUT, "authentication timed out"),
        NetError::Closed(..) | NetError::BadUpgrade(_) => (close::NORMAL, ""),
        NetError::Tls(_) => (close::PROTOCOL_ERROR, "tls"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn raw_request(req: &[u8]) -> (String, NetError) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            accept(s, &Limits::default()).await.err().unwrap()
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(req).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        (out, server.await.unwrap())
    }

    #[tokio::test]
    async fn bad_upgrades_get_an_http_status() {
        let (out, e) = raw_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 426 "), "{out}");
        assert!(matches!(e, NetError::BadUpgrade(426)));
        let wrong_version =
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let (out, _) = raw_request(wrong_version).await;
        assert!(out.starts_with("HTTP/1.1 426 ") && out.contains("Sec-WebSocket-Version: 13"));
        let (out, _) = raw_request(b"POST / HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let (out, _) = raw_request(b"\x16\x03\x01garbage\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_UPGRADE_BYTES));
        let (out, _) = raw_request(&huge).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    }

    #[tokio::test]
    async fn pre_auth_frames_are_small_until_authenticated() {
        let limits = Limits {
            max_preauth_frame_bytes: 1024,
            ..Limits::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut conn = accept(s, &limits).await.unwrap();
            assert_eq!(conn.max_frame_bytes(), 1024);
            let small = conn.recv().await.unwrap().unwrap();
            let refused = conn.recv().await.unwrap_err();
            (small.len(), refused)
        });
        let mut c = connect(&format!("ws://{addr}"), &limits).await.unwrap();
        c.ws.send(Message::Binary(vec![1u8; 1000].into()))
            .await
            .unwrap();
        // A frame that declares 20 MiB: refused from its header.
        let _ =
            c.ws.send(Message::Binary(vec![0x22u8; 20 << 20].into()))
                .await;
        let (n, refused) = server.await.unwrap();
        assert_eq!(n, 1000);
        assert_eq!(close_code_for(&refused).0, close::TOO_BIG);

        // After authentication the full limit applies.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut conn = accept(s, &limits).await.unwrap().authenticated().await;
            conn.recv().await.unwrap().unwrap().len()
        });
        let mut c = connect(&format!("ws://{addr}"), &limits).await.unwrap();
        c.ws.send(Message::Binary(vec![1u8; 100_000].into()))
            .await
            .unwrap();
        assert_eq!(server.await.unwrap(), 100_000);
    }
}

#[cfg(test)]
mod ping_tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_reading_peer_answers_pings_and_is_seen() {
        let limits = Limits::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut conn = accept(s, &limits).await.unwrap();
            let before = conn.last_seen();
            conn.ping().await.unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(300), conn.recv()).await;
            conn.last_seen() > before
        });
        let mut c = connect(&format!("ws://{addr}"), &limits).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(500), c.recv()).await;
        assert!(server.await.unwrap(), "the pong was seen");
    }
}
