//! Ward's client SDK.
//!
//! All cryptography happens here, on the device. The sans-IO protocol core
//! lives in its own crate, [`ward_core`] (`sdk/core/`), so that the servers can
//! link the verifiers without the client's store and network code; this crate
//! re-exports it and adds around it:
//!
//! | module | what |
//! |---|---|
//! | [`client`] | the async client: enroll, unlock, send, receive (tokio) |
//! | [`store`] | the PIN-locked, SQLCipher-encrypted device store (synchronous) |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod store;

pub use client::{Client, ClientConfig, ClientError, Event, NewDeviceKeys, PendingDevice};

pub use ward_core as core;
pub use ward_proto as proto;
