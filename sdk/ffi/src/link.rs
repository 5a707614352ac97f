//! Linking a new device by a scanned code (SECURITY.md §4.9), over
//! `ward-sdk`'s `link.rs`:
//!
//! ```text
//! existing: WardClient.link_device -> LinkOffer.code (show it, as a QR code)
//!           LinkOffer.wait_for_device -> LinkRequest.sas (compare)
//!           LinkRequest.approve(with_history) | refuse
//! new:      link_device_from_code(config, code, pin) -> LinkingDevice.sas (compare)
//!           LinkingDevice.finish -> WardClient
//!           (broken after the approval: finish_interrupted_link(config, pin))
//! ```
//!
//! Each SDK step consumes its value (a link runs once, forward only);
//! a UniFFI object is shared (`Arc`) and can be called again, so each
//! object holds its SDK value in an `Option` that the step takes: a second
//! call is [`WardError::LinkAlreadyUsed`], never a panic.

use std::sync::{Arc, Mutex, PoisonError};

use zeroize::Zeroizing;

use crate::client::{WardClient, pin};
use crate::types::WardConfig;
use crate::{WardError, run};

/// Takes the SDK value out of `cell`: the step that consumes it runs once.
fn take<T>(cell: &Mutex<Option<T>>) -> Result<T, WardError> {
    // A panic while the lock was held cannot leave the `Option` half
    // written (`take` is one move): the value inside is still sound.
    cell.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .ok_or(WardError::LinkAlreadyUsed)
}

/// A link opened by [`WardClient::link_device`] on the existing device:
/// show [`Self::code`] to the new device (as a QR code, or as text), then
/// [`Self::wait_for_device`].
#[derive(uniffi::Object)]
pub struct LinkOffer {
    /// The link's key: a copy kept for [`Self::code`], which stays callable
    /// while `wait_for_device` runs.
    code: Zeroizing<String>,
    expires_at: u64,
    /// `None` once `wait_for_device` took it.
    offer: Mutex<Option<ward_sdk::LinkOffer>>,
}

// Written by hand: the code is the link's key, never printed.
impl core::fmt::Debug for LinkOffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkOffer")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[uniffi::export]
impl WardClient {
    /// Starts linking a new device of this user: opens a link at the relay
    /// and returns its [`LinkOffer`]. Show [`LinkOffer::code`] to the new
    /// device, which calls [`link_device_from_code`] with it, then call
    /// [`LinkOffer::wait_for_device`]. The relay never learns the code.
    pub async fn link_device(&self) -> Result<Arc<LinkOffer>, WardError> {
        let cell = self.client.clone();
        run(async move {
            let guard = cell.read().await;
            let client = guard.as_ref().ok_or(WardError::Closed)?;
            let offer = client.link_device().await?;
            Ok(Arc::new(LinkOffer {
                code: Zeroizing::new(offer.code().to_owned()),
                expires_at: offer.expires_at(),
                offer: Mutex::new(Some(offer)),
            }))
        })
        .await
    }
}

#[uniffi::export]
impl LinkOffer {
    /// The code to show: `ward-link:1:<secret>:<user id>`. It is the key of
    /// the link: show it to the new device only, never log it.
    pub fn code(&self) -> String {
        self.code.to_string()
    }

    /// When the relay ends the link if no device joined (unix seconds).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Waits for the new device (until the link expires) and runs the SAS
    /// exchange with it: the [`LinkRequest`] to approve once the user saw
    /// the same six digits on both screens. A device that is not the one
    /// that scanned the code is [`WardError::LinkTampered`], and nothing is
    /// approved; the link expired unused is [`WardError::LinkClosed`].
    /// Once only: then [`WardError::LinkAlreadyUsed`].
    pub async fn wait_for_device(&self) -> Result<Arc<LinkRequest>, WardError> {
        let offer = take(&self.offer)?;
        run(async move {
            let request = offer.wait_for_device().await?;
            Ok(Arc::new(LinkRequest {
                sas: request.sas().to_owned(),
                device_id: hex::encode(request.device_id().as_bytes()),
                request: Mutex::new(Some(request)),
            }))
        })
        .await
    }
}

/// A new device waiting for the user's decision on the existing device:
/// show [`Self::sas`], ask whether the new device shows the same digits,
/// then [`Self::approve`] or [`Self::refuse`] (one of them, once).
#[derive(Debug, uniffi::Object)]
pub struct LinkRequest {
    /// Not a secret: both screens show it, and it is only worth anything
    /// while this link runs.
    sas: String,
    device_id: String,
    /// `None` once approved or refused.
    request: Mutex<Option<ward_sdk::LinkRequest>>,
}

#[uniffi::export]
impl LinkRequest {
    /// The six digits to compare with the new device's, `"123 456"`.
    pub fn sas(&self) -> String {
        self.sas.clone()
    }

    /// The new device's id (hex, as in [`WardClient::devices`]).
    pub fn device_id(&self) -> String {
        self.device_id.clone()
    }

    /// Approves the new device: adds it to this user's devices, grants it
    /// the user keys, then sends it this device's history when
    /// `with_history` (every conversation and message, sealed end to end).
    /// Returns the number of messages sent. Once only (with
    /// [`Self::refuse`]): then [`WardError::LinkAlreadyUsed`].
    pub async fn approve(&self, with_history: bool) -> Result<u64, WardError> {
        let request = take(&self.request)?;
        run(async move { Ok(request.approve(with_history).await?) }).await
    }

    /// Refuses the new device (the digits differed, or the user does not
    /// know it): nothing is added, and the new device gets
    /// [`WardError::LinkRefused`]. Once only (with [`Self::approve`]).
    pub async fn refuse(&self) -> Result<(), WardError> {
        let request = take(&self.request)?;
        run(async move { Ok(request.refuse().await?) }).await
    }
}

/// A new device that scanned a code: show [`Self::sas`], then
/// [`Self::finish`], which returns once the user decided on the existing
/// device.
#[derive(Debug, uniffi::Object)]
pub struct LinkingDevice {
    sas: String,
    /// `None` once `finish` took it.
    device: Mutex<Option<ward_sdk::LinkingDevice>>,
}

/// Links this new device from a code scanned on the existing device
/// ([`LinkOffer::code`]): creates its keys and its store at
/// `config.store_path` under `pin`, joins the link and runs the SAS
/// exchange. Show [`LinkingDevice::sas`] and call
/// [`LinkingDevice::finish`]. Text that is not a link code is
/// [`WardError::BadLinkCode`] (nothing is created); a code the relay does
/// not know (expired, already used) is [`WardError::NoSuchLink`]. On any
/// failure the store just created is wiped, so scanning a new code starts
/// afresh.
#[uniffi::export]
pub async fn link_device_from_code(
    config: WardConfig,
    code: String,
    pin: String,
) -> Result<Arc<LinkingDevice>, WardError> {
    let code = Zeroizing::new(code);
    let pin = self::pin(pin)?;
    let config = config.to_sdk()?;
    run(async move {
        let device = ward_sdk::PendingDevice::link(config, code.trim(), pin).await?;
        Ok(Arc::new(LinkingDevice {
            sas: device.sas().to_owned(),
            device: Mutex::new(Some(device)),
        }))
    })
    .await
}

/// Finishes a link that broke after the approval (the app died, or the
/// link closed while the history arrived): the device is in its user's log,
/// so this opens its store with `pin`, fetches and verifies the log and the
/// grants, and starts the client, with the history that had arrived. Before
/// the approval there is nothing to finish (the store was wiped, or the
/// device is in no log: [`WardError::NotFound`] or a refusal from the
/// keyserver): scan a new code.
#[uniffi::export]
pub async fn finish_interrupted_link(
    config: WardConfig,
    pin: String,
) -> Result<Arc<WardClient>, WardError> {
    let pin = self::pin(pin)?;
    let config = config.to_sdk()?;
    run(async move {
        let pending = ward_sdk::PendingDevice::resume(config, pin).await?;
        Ok(pending.complete().await?)
    })
    .await
    .map(WardClient::new)
}

#[uniffi::export]
impl LinkingDevice {
    /// The six digits to compare with the existing device's, `"123 456"`.
    pub fn sas(&self) -> String {
        self.sas.clone()
    }

    /// Waits for the user's decision on the existing device (until the link
    /// expires). Approved: stores the history as it arrives and returns the
    /// unlocked client, a device of the user like any other. Refused:
    /// [`WardError::LinkRefused`], and the store is wiped. A link altered
    /// on its way is [`WardError::LinkTampered`]. Once only: then
    /// [`WardError::LinkAlreadyUsed`].
    pub async fn finish(&self) -> Result<Arc<WardClient>, WardError> {
        let device = take(&self.device)?;
        run(async move { Ok(device.finish().await?) })
            .await
            .map(WardClient::new)
    }
}
