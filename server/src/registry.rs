//! Connected devices: how the writer hands fresh messages to a mailbox's
//! delivery task and wakes it, and how a connection is told to close
//! (revoked, replaced).
//!
//! After each commit the writer pushes each new entry of a connected mailbox
//! as a *hint* (the ready `Deliver`) into a small bounded queue, then wakes
//! the delivery task. Hints are an optimisation only: the store stays the
//! truth. A hint that does not fit (queue full, payload over
//! [`HINT_MAX_BYTES`]) raises the mailbox's overflow flag instead, and the
//! delivery task reads the store; so does a gap in the hints' seqs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, mpsc, watch};
use ward_proto::v1::Deliver;

use crate::storage::Mailbox;

/// Hints queued per connection.
pub const HINT_QUEUE: usize = 16;
/// Largest payload handed over as a hint; larger ones are read from the store.
pub const HINT_MAX_BYTES: usize = 16 << 10;

/// A message just committed, as the writer hands it to the registry.
pub struct Fresh {
    /// Client-chosen id.
    pub message_id: [u8; 16],
    /// The authenticated sender.
    pub sender: Mailbox,
    /// The encoded envelope.
    pub payload: Vec<u8>,
    /// When the relay stored it (unix ms).
    pub received_at_ms: u64,
    /// Its queue entries: (recipient mailbox, seq).
    pub entries: Vec<(Mailbox, u64)>,
}

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
    hints: mpsc::Sender<Box<Deliver>>,
    overflow: Arc<AtomicBool>,
}

/// What a connection gets when it registers.
pub struct Registration {
    /// Identifies this connection in [`Registry::unregister`].
    pub id: u64,
    /// Woken after each commit that adds entries to the mailbox.
    pub notify: Arc<Notify>,
    /// Becomes `Some` when the connection must close.
    pub close: watch::Receiver<Option<CloseReason>>,
    /// Fresh entries of the mailbox, in seq order (may have gaps: see
    /// `overflow`).
    /// Boxed: a channel allocates its first block of 32 slots up front,
    /// 3.6 KB of unboxed `Deliver`s per idle connection (issue 15).
    pub hints: mpsc::Receiver<Box<Deliver>>,
    /// Set when a hint was dropped: read the store.
    pub overflow: Arc<AtomicBool>,
}

/// The online devices. The lock is never held across an `.await`.
#[derive(Default)]
pub struct Registry {
    devices: Mutex<HashMap<Mailbox, Registered>>,
    next_id: AtomicU64,
    /// Wakes offline devices (SECURITY.md §9.2).
    push: crate::push::Pusher,
}

impl Registry {
    /// A registry that reports entries of offline mailboxes to `push`.
    pub fn with_pusher(push: crate::push::Pusher) -> Self {
        Self {
            push,
            ..Self::default()
        }
    }

    /// The push tokens and their coalescing state.
    pub fn pusher(&self) -> &crate::push::Pusher {
        &self.push
    }

    /// Registers the one connection of `mailbox`, closing any previous one.
    pub fn register(&self, mailbox: Mailbox) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let (close_tx, close_rx) = watch::channel(None);
        let (hints_tx, hints_rx) = mpsc::channel(HINT_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let previous = {
            let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
            // Under the registry's lock: an entry committed from now on is
            // handed to this connection, never also pushed.
            self.push.arm(&mailbox);
            devices.insert(
                mailbox,
                Registered {
                    id,
                    notify: notify.clone(),
                    close: close_tx,
                    hints: hints_tx,
                    overflow: overflow.clone(),
                },
            )
        };
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
            hints: hints_rx,
            overflow,
        }
    }

    /// Removes `mailbox`'s registration if it is still connection `id`'s.
    pub fn unregister(&self, mailbox: &Mailbox, id: u64) {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if devices.get(mailbox).is_some_and(|r| r.id == id) {
            devices.remove(mailbox);
        }
    }

    /// Hands each committed entry of a connected mailbox to its delivery
    /// task (in seq order) and wakes it; reports each entry of a mailbox
    /// that is not connected to the pusher. Called by the writer after
    /// COMMIT.
    pub fn deliver_fresh(&self, fresh: &[Fresh]) {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        for m in fresh {
            for (mailbox, seq) in &m.entries {
                let Some(r) = devices.get(mailbox) else {
                    self.push.offline_entry(mailbox);
                    continue;
                };
                let handed = m.payload.len() <= HINT_MAX_BYTES
                    && r.hints
                        .try_send(Box::new(Deliver {
                            seq: *seq,
                            message_id: m.message_id.to_vec(),
                            sender_user_id: m.sender.user_id.clone(),
                            sender_device_id: m.sender.device_id.to_vec(),
                            payload: m.payload.clone(),
                            received_at_ms: m.received_at_ms,
                        }))
                        .is_ok();
                if !handed {
                    r.overflow.store(true, Ordering::SeqCst);
                }
                r.notify.notify_one();
            }
        }
    }

    /// Reports an entry waiting in `mailbox` to the pusher, unless a
    /// connection of it is registered (a newer connection replaced the one
    /// that ended: it sees the mailbox itself).
    pub fn waiting_offline(&self, mailbox: &Mailbox) {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if !devices.contains_key(mailbox) {
            self.push.offline_entry(mailbox);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(d: u8) -> Mailbox {
        Mailbox {
            user_id: "u".into(),
            device_id: [d; 32],
        }
    }

    fn fresh(seq: u64, to: &Mailbox, size: usize) -> Fresh {
        Fresh {
            message_id: [seq as u8; 16],
            sender: mailbox(9),
            payload: vec![0; size],
            received_at_ms: 1,
            entries: vec![(to.clone(), seq)],
        }
    }

    #[test]
    fn hints_in_order_then_overflow() {
        let reg = Registry::default();
        let bob = mailbox(1);
        let mut r = reg.register(bob.clone());
        let batch: Vec<Fresh> = (1..=HINT_QUEUE as u64 + 3)
            .map(|s| fresh(s, &bob, 10))
            .collect();
        reg.deliver_fresh(&batch);
        for s in 1..=HINT_QUEUE as u64 {
            assert_eq!(r.hints.try_recv().unwrap().seq, s);
        }
        assert!(r.hints.try_recv().is_err());
        assert!(
            r.overflow.swap(false, Ordering::SeqCst),
            "dropped hints must be flagged"
        );

        // Too large to hand over: flagged, not queued.
        reg.deliver_fresh(&[fresh(40, &bob, HINT_MAX_BYTES + 1)]);
        assert!(r.hints.try_recv().is_err());
        assert!(r.overflow.load(Ordering::SeqCst));

        // Not connected: nothing happens; replaced: the old one is told to close.
        reg.deliver_fresh(&[fresh(1, &mailbox(2), 10)]);
        let _newer = reg.register(bob.clone());
        assert!(r.close.has_changed().unwrap_or(true));
        assert_eq!(reg.len(), 1);
        reg.unregister(&bob, r.id);
        assert_eq!(reg.len(), 1, "the newer registration stays");
    }
}
