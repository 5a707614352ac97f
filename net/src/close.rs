//! WebSocket close codes used by Ward services (RFC 6455 §7.4, plus 4000-4999
//! private codes). A client can tell from the code whether to retry.

/// Normal close (graceful shutdown included): reconnect later.
pub const NORMAL: u16 = 1000;
/// The server is going away (shutdown): reconnect with backoff.
pub const GOING_AWAY: u16 = 1001;
/// A frame that is not a valid Ward message.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame: Ward speaks binary frames only.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A frame over the size limit.
pub const TOO_BIG: u16 = 1009;
/// The server failed internally.
pub const INTERNAL_ERROR: u16 = 1011;
/// The handshake failed: bad signature, unknown or revoked device.
pub const AUTH_FAILED: u16 = 4001;
/// The handshake did not complete in time.
pub const AUTH_TIMEOUT: u16 = 4002;
/// Too many requests: slow down.
pub const RATE_LIMITED: u16 = 4003;
/// The peer did not read fast enough; nothing is lost, reconnect.
pub const SLOW_CONSUMER: u16 = 4004;
/// The device was revoked while connected (by its user's log, as the server
/// verified it: on the relay also when the keyserver's relay link brought
/// the revocation, SECURITY.md §10.8). Final: a client MUST NOT reconnect.
pub const DEVICE_REVOKED: u16 = 4005;
/// The server has too many connections: retry later.
pub const TOO_MANY_CONNECTIONS: u16 = 4006;
/// The request was forbidden (e.g. another device's mailbox).
pub const FORBIDDEN: u16 = 4007;
/// The peer speaks another protocol version (SECURITY.md §1.1): upgrade.
pub const UNSUPPORTED_VERSION: u16 = 4008;
