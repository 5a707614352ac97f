//! Ward's transport, written once for the relay, the keyserver and the SDK.
//!
//! * [`conn`]: one protobuf message per binary WebSocket message, with a size
//!   limit enforced by the WebSocket layer before a frame is buffered, and
//!   text frames refused.
//! * [`handshake`]: the device-authentication challenge-response of
//!   SECURITY.md §8, server and client sides.
//! * [`close`]: the close codes every Ward service uses.
//! * [`tls`]: TLS 1.3 (rustls, ring) for servers and clients.
//!
//! ```no_run
//! # async fn demo(device: ward_core::keys::DeviceSigningKey, root: ward_core::keys::SigningPublicKey) -> Result<(), ward_net::NetError> {
//! let limits = ward_net::Limits::default();
//! let mut conn = ward_net::conn::connect("ws://127.0.0.1:7070", &limits).await?;
//! let relay = ward_net::handshake::Audience::relay(root, "chu-example");
//! ward_net::handshake::client(&mut conn, &device, "dr.martin", &relay, &[]).await?;
//! // ... then the service's own frames:
//! // conn.send_msg(&frame).await?; let reply: Option<ServerFrame> = conn.recv_msg().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod conn;
mod error;
pub mod fdlimit;
pub mod handshake;
pub mod peers;
pub mod rate;
pub mod signal;
pub mod tls;

pub use conn::Conn;
pub use error::NetError;

use std::time::Duration;

/// Limits every Ward connection enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes, once authenticated.
    pub max_frame_bytes: usize,
    /// Time an unauthenticated peer has to complete the handshake.
    pub auth_timeout: Duration,
    /// Largest WebSocket message a server accepts before the peer has
    /// authenticated (the `AuthResponse` and the log it carries). The
    /// WebSocket layer refuses a larger frame from its header, before
    /// buffering any of it, so an unauthenticated socket holds at most this
    /// much.
    pub max_preauth_frame_bytes: usize,
}

/// Default [`Limits::max_preauth_frame_bytes`]: 256 KiB, room for a user log
/// of some 80 v2 entries (X-Wing keys make an entry about 3 KiB; a real log
/// has a handful).
pub const DEFAULT_MAX_PREAUTH_FRAME_BYTES: usize = 256 << 10;

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// The defaults, as a constant (so that `--help` can show them).
    pub const DEFAULT: Self = Self {
        // An envelope of the largest content, plus framing.
        max_frame_bytes: ward_core::envelope::MAX_ENVELOPE_BYTES + 4096,
        auth_timeout: Duration::from_secs(10),
        max_preauth_frame_bytes: DEFAULT_MAX_PREAUTH_FRAME_BYTES,
    };
}
