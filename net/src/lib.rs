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
//! # async fn demo(device: ward_core::keys::DeviceSigningKey) -> Result<(), ward_net::NetError> {
//! let limits = ward_net::Limits::default();
//! let mut conn = ward_net::conn::connect("ws://127.0.0.1:7070", &limits).await?;
//! ward_net::handshake::client(&mut conn, &device, "dr.martin", ward_net::handshake::RELAY, &[]).await?;
//! // ... then the service's own frames:
//! // conn.send_msg(&frame).await?; let reply: Option<ServerFrame> = conn.recv_msg().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod conn;
mod error;
pub mod handshake;
pub mod rate;
pub mod signal;
pub mod tls;

pub use conn::Conn;
pub use error::NetError;

use std::time::Duration;

/// Limits every Ward connection enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Time an unauthenticated peer has to complete the handshake.
    pub auth_timeout: Duration,
}

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
    };
}
