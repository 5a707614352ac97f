//! The own-log watcher: re-reads this user's log every
//! [`super::ClientConfig::own_log_interval`] (and once at start).
//!
//! * After a root-signed revocation (a lost phone revoked by the admin) the
//!   user is *rotation pending* (SECURITY.md §4.5): the revoked phone may
//!   still hold the current user key. The first remaining device to notice
//!   rotates it. Two devices racing append at the same position; the
//!   keyserver takes one and refuses the other, which sees no rotation
//!   pending on its next round.
//! * When the log grew (a revocation by the root or by another device), the
//!   relay is handed the new log, which closes the revoked device's
//!   connection and refuses it from then on (SECURITY.md §9).

use std::sync::Arc;

use super::relay::RelayCmd;
use super::revoked;
use super::{Inner, change_user_key, refresh_own};

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut published_len = 0u64;
    loop {
        if revoked::is_revoked(&inner) {
            return;
        }
        match round(&inner, &mut published_len).await {
            // The keyserver refuses this device as revoked (at the
            // handshake or in a request): it was told before, it is wiped
            // now (SECURITY.md §15.3b).
            Err(e) if e.is_device_revoked() => {
                revoked::revoked(&inner).await;
                return;
            }
            Err(e) => tracing::debug!(error = %e, "own log check failed; retrying later"),
            Ok(()) => {}
        }
        if revoked::is_revoked(&inner) {
            return;
        }
        tokio::time::sleep(inner.config.own_log_interval).await;
    }
}

async fn round(inner: &Inner, published_len: &mut u64) -> super::Result<()> {
    let own = refresh_own(inner).await?;
    let me = own.user.device(&inner.device.public_key());
    if me.is_some_and(|d| !d.is_active()) {
        // This device's own verified log revokes it (read before the
        // keyserver refused it).
        revoked::revoked(inner).await;
        return Ok(());
    }
    if me.is_none() {
        // Not in its own log: nothing this device can do.
        return Ok(());
    }
    if own.user.rotation_pending() {
        tracing::info!(
            "a device of this user was revoked by the organisation: rotating the user key"
        );
        // Publishes the new log itself.
        change_user_key(inner, None).await?;
        return Ok(());
    }
    if own.user.len() > *published_len {
        *published_len = own.user.len();
        let _ = inner
            .relay_cmds
            .send(RelayCmd::PublishLog(own.entries))
            .await;
    }
    Ok(())
}
