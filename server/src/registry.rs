//! Connected devices: how the writer wakes a mailbox's delivery task, and how
//! a connection is told to close (revoked, replaced).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, watch};

use crate::storage::Mailbox;

/// Why a connection is told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code (`ward_net::close`).
    pub code: u16,
    /// Short human-readable reason.
    pub reason: &'static str,
}

struct Registered {
    id: u64,
    notify: Arc<Notify>,
    close: watch::Sender<Option<CloseReason>>,
}

/// What a connection gets when it registers.
pub struct Registration {
    /// Identifies this connection in [`Registry::unregister`].
    pub id: u64,
    /// Woken after each commit that adds entries to the mailbox.
    pub notify: Arc<Notify>,
    /// Becomes `Some` when the connection must close.
    pub close: watch::Receiver<Option<CloseReason>>,
}

/// The online devices. The lock is never held across an `.await`.
#[derive(Default)]
pub struct Registry {
    devices: Mutex<HashMap<Mailbox, Registered>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Registers the one connection of `mailbox`, closing any previous one.
    pub fn register(&self, mailbox: Mailbox) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let (close_tx, close_rx) = watch::channel(None);
        let previous = self
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                mailbox,
                Registered {
                    id,
                    notify: notify.clone(),
                    close: close_tx,
                },
            );
        if let Some(prev) = previous {
            let _ = prev.close.send(Some(CloseReason {
                code: ward_net::close::NORMAL,
                reason: "replaced by a newer connection of this device",
            }));
        }
        Registration {
            id,
            notify,
            close: close_rx,
        }
    }

    /// Removes `mailbox`'s registration if it is still connection `id`'s.
    pub fn unregister(&self, mailbox: &Mailbox, id: u64) {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if devices.get(mailbox).is_some_and(|r| r.id == id) {
            devices.remove(mailbox);
        }
    }

    /// Wakes the delivery task of each connected mailbox in `mailboxes`.
    pub fn notify(&self, mailboxes: &[Mailbox]) {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        for m in mailboxes {
            if let Some(r) = devices.get(m) {
                r.notify.notify_one();
            }
        }
    }

    /// Tells `mailbox`'s connection, if any, to close.
    pub fn close(&self, mailbox: &Mailbox, reason: CloseReason) {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = devices.get(mailbox) {
            let _ = r.close.send(Some(reason));
        }
    }

    /// Number of connected devices.
    pub fn len(&self) -> usize {
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no device is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
