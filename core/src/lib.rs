//! Ward's protocol core: pure functions and state machines, no I/O.
//!
//! No sockets, no clock reads, no global randomness: callers pass a
//! [`rand_core::CryptoRng`] and the current time. One place uses threads,
//! scoped to the call, so that reading, writing and the blob hash run
//! beside the AEAD: [`attachment::seal_stream`] / [`attachment::open_stream`],
//! which take the caller's `Read` and `Write` (the sans-IO `Encryptor` and
//! `Decryptor` stay). Both servers link this
//! crate for its verifiers; the SDK wraps it with a store and a network
//! client. SECURITY.md specifies every byte produced here; `vectors/` holds
//! test vectors generated from it.
//!
//! | module | what |
//! |---|---|
//! | [`keys`] | the key types; secrets zeroize and never print |
//! | [`invite`], [`chain`] | the identity chain from the organisation root to every device |
//! | [`wrap`] | HPKE key wrap of resource keys and device grants |
//! | [`envelope`] | seal and open of messages and files |
//! | [`auth`] | the challenge-response both servers use |
//! | [`padding`] | length hiding |
//! | [`room`] | patient-case rooms: membership log, epoch keys, sealed metadata |
//! | [`stream`], [`attachment`] | chunked file encryption (STREAM), the attachment descriptor, the file pipeline |
//! | [`root_store`] | the organisation root sealed under a passphrase |
//! | [`link`] | linking a new device by a scanned code: rendezvous, sealed messages, SAS |
//! | [`transparency`], [`kt_audit`] | key transparency: the directory's Merkle log, signed epochs, proofs; the auditor |
//!
//! The smallest correct use: enroll from an invite, verify the log.
//!
//! ```
//! use ward_core::{chain, invite, keys::*};
//!
//! let mut rng = rand::rng();
//! let root = OrgRootKey::generate(&mut rng); // the organisation's, kept offline
//! let details = invite::InviteDetails {
//!     user_id: "dr.martin@chu-example".into(),
//!     display_name: "Dr Claire Martin".into(),
//!     profession: "physician".into(),
//!     registry_number: "10101234567".into(),
//!     expires_at: 1_800_000_000,
//! };
//! let (signed_invite, delegation) = invite::create_invite(&mut rng, &root, &details)?;
//!
//! // On the clinician's phone:
//! let user_key = UserEncryptionKey::generate(&mut rng);
//! let device = DeviceSigningKey::generate(&mut rng);
//! let device_key = DeviceEncryptionKey::generate(&mut rng);
//! let entry = chain::create_user(
//!     &root.public_key(), &signed_invite, &delegation,
//!     &user_key.public_key(), &device.public_key(), &device_key.public_key(),
//!     1_790_000_000,
//! )?;
//!
//! // Anyone holding the pinned root verifies the log the keyserver serves:
//! let user = chain::verify_log(&root.public_key(), "dr.martin@chu-example", &[entry])?;
//! assert_eq!(user.encryption_key(), &user_key.public_key());
//! # Ok::<(), ward_core::ChainError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attachment;
pub mod auth;
pub mod chain;
pub mod envelope;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hpke;
pub mod ids;
pub mod invite;
pub mod keys;
pub mod kt_audit;
pub mod labels;
pub mod link;
pub mod padding;
pub mod room;
pub mod root_store;
pub mod stream;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transparency;
pub mod wrap;

pub use error::{
    AttachmentError, AttachmentIoError, AuthError, ChainError, KeyError, OpenError, RoomError,
    SealError, WrapError,
};
pub use ids::{ConversationId, ResourceId};
pub use room::RoomId;
pub use ward_proto as proto;
