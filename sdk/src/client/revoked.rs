//! What a device does once it learns that it is revoked (SECURITY.md
//! §15.3b): a server refused it as revoked (the relay's close code
//! `DEVICE_REVOKED` or `AuthResult { DEVICE_REVOKED }`, the keyserver's
//! `DEVICE_REVOKED`), or its own verified log says so.
//!
//! Once, in this order: the store is closed (its database key zeroized),
//! its files are destroyed (`Store::wipe`: database, WAL, header, each
//! overwritten and removed), the background tasks stop reconnecting, and
//! `Event::DeviceRevoked` is emitted, so that an application that sees the
//! event can rely on the data being gone. The device's signing and
//! encryption keys held in memory are zeroized when the last handle to them
//! is dropped: the stopped tasks drop theirs, the application drops the
//! `Client`.

use std::sync::atomic::Ordering;

use super::Inner;
use super::events::Event;
use crate::store::Store;

/// Wipes this device and reports it (idempotent: the first call acts).
pub(crate) async fn revoked(inner: &Inner) {
    if inner.revoked.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::warn!("this device was revoked: wiping its local store");
    inner.store.close().await;
    let path = inner.config.store_path.clone();
    let wiped = tokio::task::spawn_blocking(move || Store::wipe(&path)).await;
    match wiped {
        Ok(Ok(())) => {}
        // The files stay; the next unlock of this store still finds the
        // device refused by both servers.
        Ok(Err(e)) => tracing::error!(error = %e, "wiping the revoked device's store failed"),
        Err(e) => tracing::error!(error = %e, "wiping the revoked device's store failed"),
    }
    inner.emit(Event::DeviceRevoked).await;
}

/// Whether the device was found revoked (the tasks then stop).
pub(crate) fn is_revoked(inner: &Inner) -> bool {
    inner.revoked.load(Ordering::SeqCst)
}
