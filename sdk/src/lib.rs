//! Ward's client SDK.
//!
//! All cryptography happens here, on the device. The sans-IO protocol core
//! lives in its own crate, [`ward_core`] (`core/`), so that the servers can
//! link the verifiers without the client's store and network code; this crate
//! re-exports it and adds around it:
//!
//! | module | what |
//! |---|---|
//! | [`client`] | the async client: enroll, unlock, send, receive (tokio) |
//! | [`store`] | the PIN-locked, SQLCipher-encrypted device store (synchronous) |
//!
//! # The client in one example
//!
//! ```no_run
//! use ward_sdk::store::Pin;
//! use ward_sdk::{Client, ClientConfig, Event};
//!
//! # async fn demo(
//! #     org_root: ward_sdk::core::keys::SigningPublicKey,
//! #     invite: Vec<u8>,
//! #     delegation_secret: Vec<u8>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::new(
//!     "ward-device.db",           // the encrypted device store
//!     "ws://127.0.0.1:7070",      // the relay: ciphertext only
//!     "ws://127.0.0.1:7071",      // the keyserver: directory and wrapped keys only
//!     org_root,                   // pinned: every log is verified from it
//! );
//! // First run: enroll from the invite received out of band.
//! let mut client = Client::enroll(config.clone(), &invite, &delegation_secret,
//!                                 Pin::new("493817".into())?).await?;
//! let mut events = client.events().expect("taken once");
//!
//! let conversation = client.create_conversation(&["dr.bernard@chu-example"]).await?;
//! client.send_text(conversation, "Bed 12: K+ 6.1, please review").await?;
//! // A document: encrypted to a spool, uploaded resumably, then sent.
//! client.send_file(conversation, "ecg.pdf", "ecg.pdf", "application/pdf", |_progress| {}).await?;
//!
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) if m.attachment().is_some() => {
//!             // Checked chunk by chunk and as a whole (SECURITY.md §16.6).
//!             client.download(&m, "/tmp/received.pdf", |_progress| {}).await?;
//!         }
//!         Event::Message(m) => println!("{}: {} bytes", m.sender_user_id, m.content.len()),
//!         Event::Rejected { reason, .. } => eprintln!("refused: {reason}"), // never a message
//!         _ => {}
//!     }
//! #   break;
//! }
//! client.lock().await;                         // closes the store, zeroizes its key
//!
//! // Later runs: unlock with the PIN (a wrong one is a typed error).
//! let client = Client::unlock(config, Pin::new("493817".into())?).await?;
//! let history = client.history(conversation).await?;
//! # let _ = history;
//! # Ok(()) }
//! ```
//!
//! # What the client guarantees, and its policies
//!
//! * **Nothing unverified is shown.** A message becomes an
//!   [`Event::Message`] only after the sender's log verified from the pinned
//!   root (and extends the log verified before: no rollback, no fork), the
//!   envelope's signature, recipient list and sender device checked out,
//!   and it decrypted. Everything else is an [`Event::Rejected`] with a
//!   typed [`ClientError`].
//! * **Keys before ciphertext.** The wrapped keys are stored at the keyserver
//!   before the envelope is handed to the relay.
//! * **Durable outbox.** `send_text` seals, then stores the outgoing message
//!   (and its copy in the local history) in one transaction before anything
//!   is sent; the outbox drains in order whenever the relay is connected and
//!   survives the app dying. Resending is idempotent at both servers (the
//!   relay message id is the resource id) and receivers deduplicate, so a
//!   message is delivered once.
//! * **Ack after store.** A received entry is acked to the relay only after
//!   its verdict is durable in the store (the message, or the rejection,
//!   with the relay cursor). Every verdict about the bytes themselves is
//!   acked (they can never become valid); failures of the network or of
//!   this device leave the entry unacked and are retried.
//! * **Duplicates.** A redelivery of an entry already handled (same relay
//!   sequence number) is acked again silently; the same envelope under a new
//!   sequence number is a replay: [`ClientError::Replay`].
//! * **Retries.** The relay connection reconnects with exponential backoff
//!   and jitter ([`ClientConfig::reconnect_min`] to
//!   [`ClientConfig::reconnect_max`]). A receiver waits up to
//!   [`ClientConfig::key_wait`] for a wrapped key that has not reached the
//!   keyserver yet, then rejects the message
//!   ([`ClientError::WrappedKeyMissing`]). Keyserver requests are retried once
//!   on a broken connection (they are idempotent).
//! * **Revoked means wiped.** When either server refuses this device as
//!   revoked (the relay's close code `DEVICE_REVOKED`, or a
//!   `DEVICE_REVOKED` refusal), or its own verified log revokes it, the
//!   client closes the store (zeroizing its key), destroys its files
//!   (database, WAL and header, as [`store::Store::wipe`]), stops
//!   reconnecting, and only then emits [`Event::DeviceRevoked`]; later calls
//!   fail with [`ClientError::Closed`]. Drop the [`Client`] to release the
//!   device keys it still holds (zeroized on drop). SECURITY.md §15.3b.
//! * **Logs** (`tracing`) carry ids and error kinds only: never a
//!   plaintext, a key or a PIN.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod store;

pub use client::{
    AttachmentInfo, Client, ClientConfig, ClientError, DeviceInfo, DirectoryEntry, DirectoryQuery,
    Event, InviteFile, KtAlert, LinkOffer, LinkRequest, LinkingDevice, NewDeviceKeys, Page,
    PageCursor, PendingDevice, Phase, Progress, QueuedMessage, RoomInfo, RoomMemberInfo, Thumbnail,
};

pub use ward_core as core;
pub use ward_proto as proto;
