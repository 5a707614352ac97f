//! Ward's relay: durable store-and-forward of ciphertext between devices.
//!
//! * One authenticated WebSocket per device ([`ward_net`] framing and
//!   handshake). The relay learns devices from the user logs they present,
//!   verified from the configured organisation root ([`logs`]).
//! * `Send`: one stored ciphertext plus one queue entry per recipient device;
//!   `SendAck` only after a durable commit by the group-committing
//!   [`writer`]. Idempotent on the client-chosen message id.
//! * Delivery: pushed at once to connected devices, backlog in seq order on
//!   connect; acked entries deleted, orphaned ciphertext deleted, the rest
//!   expired by a retention sweeper.
//! * Attachment blobs (SECURITY.md §16.9): files behind [`blobs::BlobStore`],
//!   uploaded and downloaded on a connection of their own (`/v2/blobs`),
//!   records and readers in [`blob_meta`], deleted once every reader fetched
//!   them or after retention.
//! * Content-free push (SECURITY.md §9.2, [`push`]): an offline device's
//!   registered token goes to a push gateway, alone, once per wake-up.
//! * Device linking (SECURITY.md §9.3): a rendezvous an existing device
//!   opens on `/v2/link` and a new device joins on `/v2/link/join`; the
//!   relay forwards the sealed link messages between them, opaque to it.
//! * Bounded per-connection queues; limits on frame size, recipients, auth
//!   time, send rate and connections, each violation closing with a code.
//!
//! ```no_run
//! # async fn demo(root: ward_core::keys::SigningPublicKey) -> Result<(), ward_relay::RelayError> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = ward_relay::Config::new("relay.db", root);
//! ward_relay::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blob_meta;
mod blob_session;
pub mod blobs;
pub mod config;
mod connection;
mod error;
pub mod keyserver_link;
mod link;
pub mod logs;
pub mod metrics;
pub mod push;
pub mod registry;
pub mod rooms;
mod server;
mod state;
pub mod storage;
pub mod writer;

pub use config::{Config, DEFAULT_RETENTION, Limits, PushConfig};
pub use error::{RelayError, StorageError};
pub use link::{LINK_JOIN_PATH, LINK_PATH};
pub use server::run;
