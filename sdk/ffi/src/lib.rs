//! Ward's SDK for apps in Kotlin (Android), Swift (iOS) and Python: UniFFI
//! bindings over [`ward_sdk::Client`].
//!
//! All the cryptography, the store and the policies stay in `ward-sdk`; this
//! crate only translates: ids become lowercase hex strings, the SDK's
//! [`ward_sdk::ClientError`] becomes one typed [`WardError`] (an exception
//! per case), events become [`WardEvent`] values, and every call runs on the
//! SDK's tokio runtime. The generated bindings are not committed:
//! `sdk/ffi/run-python-tests.sh` builds this cdylib, generates them with
//! `uniffi-bindgen` (`sdk/ffi/bindgen/`, outside the workspace) in library
//! mode, and runs the pytest suite through them against the real servers.
//!
//! | call | what |
//! |---|---|
//! | [`enroll`], [`enroll_with_invite_file`] | first device of a clinician: invite, delegation, PIN |
//! | [`unlock`] | open an enrolled store with the PIN (wrong: [`WardError::WrongPin`]) |
//! | [`unlock_with_platform_secret`], [`WardClient::enable_platform_unlock`], [`WardClient::disable_platform_unlock`] | biometric unlock: the platform keystore's secret instead of the PIN while the slot is valid (else [`WardError::PinRequired`]) |
//! | [`WardClient::next_event`] | the next verified message or outcome (`None`: closed) |
//! | [`WardClient::send_text_to_user`], [`WardClient::send_text`] | send text |
//! | [`WardClient::history`], [`WardClient::conversations`] | what the store holds |
//! | [`WardClient::create_room`] ... [`WardClient::send_room_text`] | patient-case rooms |
//! | [`WardClient::send_file`], [`WardClient::download`] | attachments, with a [`ProgressListener`] |
//! | [`WardClient::link_device`], [`link_device_from_code`] | a second device, by a scanned code (`link.rs`) |
//! | [`WardClient::lock`] | close the store and zeroize its key |
//!
//! # Events: an async `next_event()`, not a callback
//!
//! UniFFI 0.32 maps an async Rust method to a Kotlin `suspend fun`, a Swift
//! `async` method and a Python coroutine, with cancellation. A loop over
//! `next_event()` keeps the SDK's back-pressure (the SDK waits when the app
//! does not read, and nothing is acked before it is stored), runs the app's
//! code on the app's own executor (a coroutine scope, a Swift `Task`, an
//! asyncio loop) instead of on a Rust worker thread, and wraps in one line
//! into a `Flow` or an `AsyncStream`. A foreign callback would be called on
//! a Rust thread, could not push back, and would have to hop threads itself.
//! Progress of a transfer, which is frequent, short and needs no answer, is a
//! foreign trait ([`ProgressListener`]).
//!
//! # The runtime
//!
//! The SDK spawns long-lived tasks (relay connection, outbox, receive): they
//! need a tokio runtime that outlives each call. UniFFI's
//! `async_runtime = "tokio"` only enters async-compat's fallback runtime,
//! a single current-thread scheduler; instead every exported call is spawned
//! onto this crate's own multi-threaded runtime and its `JoinHandle` awaited,
//! which any foreign executor can poll. A call whose foreign future is
//! cancelled still finishes in the background (a queued message stays
//! queued: the SDK's operations are durable and idempotent).
//!
//! # Secrets
//!
//! The PIN and the delegation secret cross the boundary as a string and
//! bytes (the foreign side's copy is the app's to clear); here they go at
//! once into the SDK's zeroizing types, and no type of this crate prints
//! them.
// The workspace's `forbid(unsafe_code)` holds here too (checked with uniffi
// 0.32.2): the scaffolding UniFFI's macros expand to does use
// `#[unsafe(no_mangle)]` and raw pointers, but rustc does not report this
// lint inside another crate's macro expansion, and no code written here is
// unsafe.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
mod link;
mod types;

pub use client::{
    WardClient, enroll, enroll_with_invite_file, unlock, unlock_with_platform_secret,
};
pub use error::{PinRequiredReason, WardError};
pub use link::{
    LinkOffer, LinkRequest, LinkingDevice, finish_interrupted_link, link_device_from_code,
};
pub use types::*;

uniffi::setup_scaffolding!();

/// The runtime every call and the SDK's tasks run on (see the crate docs).
static RUNTIME: std::sync::LazyLock<std::io::Result<tokio::runtime::Runtime>> =
    std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            // A phone has few cores and the work is I/O and short crypto:
            // two workers; Argon2 and the store run on blocking threads.
            .worker_threads(2)
            .thread_name("ward-sdk")
            .enable_all()
            .build()
    });

/// Runs `fut` on [`RUNTIME`] and waits for it from any executor.
async fn run<T, F>(fut: F) -> Result<T, WardError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, WardError>> + Send + 'static,
{
    let rt = RUNTIME.as_ref().map_err(|e| WardError::Internal {
        message: format!("cannot start the SDK's runtime: {e}"),
    })?;
    rt.spawn(fut).await.map_err(|_| WardError::Internal {
        message: "the SDK's task ended abnormally".into(),
    })?
}
