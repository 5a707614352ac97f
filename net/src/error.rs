use ward_proto::DecodeError;
use ward_proto::v1::ErrorCode;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The WebSocket layer failed (I/O, protocol, or a frame over the limit).
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The peer closed the connection, with its close code if it sent one.
    #[error("connection closed by peer (code {0:?}): {1}")]
    Closed(Option<u16>, String),
    /// The peer sent a text frame.
    #[error("text frame received; Ward speaks binary frames only")]
    TextFrame,
    /// The peer sent bytes that do not decode as the expected message.
    #[error("undecodable frame: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer sent a well-formed frame that is not expected now.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    /// The handshake's signature or fields did not verify.
    #[error("authentication failed: {0}")]
    Auth(#[from] ward_core::AuthError),
    /// The server refused the device.
    #[error("authentication refused: {0:?}")]
    Refused(ErrorCode),
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    Timeout,
    /// The peer's HTTP upgrade request was refused with this HTTP status
    /// (400 or 426; 0 when the peer left before a request was read).
    #[error("websocket upgrade refused (HTTP {0})")]
    BadUpgrade(u16),
    /// TLS could not be set up, or refused the peer (untrusted certificate,
    /// plain text where TLS is required): final for this URL and trust.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A service name other than the expected one: the client is talking to the wrong server.
    #[error("connected to service {0:?}, expected another")]
    WrongService(String),
}
