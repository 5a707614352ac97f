//! One protobuf message per binary WebSocket message.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ward_proto::decode_bounded;

use crate::{Limits, NetError, close};

/// A WebSocket carrying Ward frames.
pub struct Conn<S> {
    ws: WebSocketStream<S>,
    max_frame_bytes: usize,
}

/// The WebSocket limits every Ward connection runs with.
pub(crate) fn ws_config(limits: &Limits) -> WebSocketConfig {
    config(limits)
}

fn config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
}

/// Server side: completes the WebSocket upgrade on an accepted stream.
pub async fn accept<S>(stream: S, limits: &Limits) -> Result<Conn<S>, NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config(limits))).await?;
    Ok(Conn {
        ws,
        max_frame_bytes: limits.max_frame_bytes,
    })
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
        }
    }

    /// The next binary message; `Ok(None)` when the peer closed cleanly.
    /// Pings are answered by the WebSocket layer; text frames are an error.
    pub async fn recv(&mut self) -> Result<Option<tungstenite::Bytes>, NetError> {
        loop {
            match self.ws.next().await {
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
    pub async fn recv_msg<M: ward_proto::Message + Default>(
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
        NetError::Auth(_) | NetError::Refused(_) | NetError::WrongService(_) => {
            (close::AUTH_FAILED, "authentication failed")
        }
        NetError::Timeout => (close::AUTH_TIMEOUT, "authentication timed out"),
        NetError::Closed(..) => (close::NORMAL, ""),
        NetError::Tls(_) => (close::PROTOCOL_ERROR, "tls"),
    }
}
