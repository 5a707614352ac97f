//! The key-transparency monitor (SECURITY.md §18.8): every
//! [`super::ClientConfig::kt_interval`] (and once at start) this device
//! follows the keyserver's directory and watches its own user's leaves.
//!
//! One round:
//! 1. asks for the latest epoch with a consistency proof from the one held,
//!    and advances a *copy* of its [`EpochView`] (signature, numbers,
//!    consistency);
//! 2. fetches every leaf it has not scanned (pages of [`LEAVES_PAGE`]) and
//!    recomputes the epoch's root from them, over a frontier of the leaves
//!    scanned before: a keyserver cannot hide a leaf of this user from its
//!    monitor and still show it to everyone else;
//! 3. checks each leaf of its own user against its verified own log: a head
//!    at a length it holds must be its own entry's hash there (else the
//!    directory shows others a fork of its log); a longer one makes it fetch
//!    and verify its log (the own-log code), which must then reach it;
//! 4. reports every device of its user that joined after this one and that
//!    it did not add itself ([`Event::DeviceAdded`], once per device).
//!
//! Only a round where everything checked is kept (its events emitted, then
//! its state persisted in the store, then held): a bad epoch is reported ([`Event::TransparencyAlert`], once
//! per distinct problem) and never moved to. An unreachable keyserver is
//! retried next round, silently.

use std::sync::Arc;

use ward_core::chain::entry_hash;
use ward_core::keys::SigningPublicKey;
use ward_core::transparency::{
    Advance, DirectoryCertificate, EpochView, Hash, KtError, SignedEpoch, empty_root, leaf_data,
    leaf_hash, node_hash, proof_nodes,
};
use ward_proto::Message as _;
use ward_proto::v1 as pb;

use super::error::{ClientError, Result};
use super::events::Event;
use super::{Inner, refresh_own, revoked};
use crate::store::KtState;

/// Leaves asked for per request (the keyserver's maximum).
pub(crate) const LEAVES_PAGE: u32 = 1024;

/// What the monitor found wrong with the directory
/// ([`Event::TransparencyAlert`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KtAlert {
    /// The latest epoch does not verify against the one this device holds:
    /// a fork, a rollback, an equivocation, a bad signature or certificate,
    /// a malformed answer.
    #[error("the directory's latest epoch does not verify: {0}")]
    Epoch(KtError),
    /// The leaves served do not recompute the epoch's signed root (a leaf
    /// hidden from, or rewritten for, this device).
    #[error("the directory's leaves do not match the root of epoch {epoch}")]
    LeavesMismatch {
        /// The epoch.
        epoch: u64,
    },
    /// The directory shows this user's log of `log_len` entries with a head
    /// this device's verified log does not have: others are shown a fork.
    #[error(
        "the directory shows this user's log of {log_len} entries with a head this device does not have"
    )]
    OwnLogFork {
        /// The log length in the leaf.
        log_len: u64,
    },
    /// The directory shows this user's log longer than the keyserver serves
    /// it to this device: others are shown entries hidden from it.
    #[error(
        "the directory shows this user's log at {log_len} entries, the keyserver serves this device {served}"
    )]
    OwnLogHidden {
        /// The log length in the leaf.
        log_len: u64,
        /// The length served to this device.
        served: u64,
    },
}

/// The roots of the perfect subtrees covering the first `size` leaves,
/// largest first: enough to append leaves and compute the RFC 9162 root
/// without keeping the leaves (at most 64 hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut size = self.size;
        // Each trailing one bit of the size is a subtree of the new leaf's
        // height: merge it in.
        while size & 1 == 1 {
            let Some(left) = self.nodes.pop() else { break };
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// MTH(D[0:size]): the subtrees folded from the right, as RFC 9162's
    /// split at the largest power of two gives.
    fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(last) => it.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    fn encode(&self) -> Vec<u8> {
        self.nodes.concat()
    }

    fn decode(size: u64, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size.count_ones() as usize * 32 {
            return None;
        }
        let nodes = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().ok())
            .collect::<Option<Vec<Hash>>>()?;
        Some(Self { size, nodes })
    }
}

/// What the monitor holds between rounds (and in the store).
#[derive(Clone)]
struct Monitor {
    certificate: DirectoryCertificate,
    view: EpochView,
    signed: SignedEpoch,
    frontier: Frontier,
    /// Devices of this user already known: reported, added by this device,
    /// or present when it joined.
    known: Vec<SigningPublicKey>,
}

impl Monitor {
    fn to_state(&self) -> KtState {
        KtState {
            certificate: self.certificate.to_proto().encode_to_vec(),
            epoch: self.signed.to_proto().encode_to_vec(),
            scanned: self.frontier.size,
            frontier: self.frontier.encode(),
            known_devices: self.known.iter().flat_map(|k| *k.as_bytes()).collect(),
        }
    }

    fn from_state(org_root: &SigningPublicKey, s: &KtState) -> Option<Self> {
        let cert = pb::DirectoryKeyCertificate::decode(s.certificate.as_slice()).ok()?;
        let certificate = DirectoryCertificate::from_proto(&cert).ok()?;
        let epoch = pb::SignedEpoch::decode(s.epoch.as_slice()).ok()?;
        let signed = SignedEpoch::from_proto(&epoch).ok()?;
        let view = EpochView::resume(org_root, &certificate, signed.head).ok()?;
        let frontier = Frontier::decode(s.scanned, &s.frontier)?;
        if frontier.size != signed.head.tree_size {
            return None;
        }
        let known = s
            .known_devices
            .chunks(32)
            .map(|c| SigningPublicKey::from_bytes(c).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            certificate,
            view,
            signed,
            frontier,
            known,
        })
    }
}

/// One round's result when the keyserver answered.
enum Outcome {
    /// Checked (and kept, if anything was new).
    Good,
    /// Something did not check: nothing was kept.
    Alert(KtAlert),
}

pub(crate) async fn run(inner: Arc<Inner>, interval: std::time::Duration) {
    let mut held = match inner.store.run(|s| s.kt_state()).await {
        Ok(Some(state)) => {
            let m = Monitor::from_state(&inner.config.org_root, &state);
            if m.is_none() {
                // The store is this device's own; a state that does not
                // parse is a bug, not an attack: start over from the next
                // epoch rather than stop monitoring.
                tracing::warn!("stored key-transparency state unreadable; starting over");
            }
            m
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "key-transparency state not readable; monitor stopped");
            return;
        }
    };
    let mut alerted: Vec<KtAlert> = Vec::new();
    loop {
        if revoked::is_revoked(&inner) {
            return;
        }
        match round(&inner, &mut held).await {
            Ok(Outcome::Good) => {}
            Ok(Outcome::Alert(alert)) => {
                tracing::warn!(%alert, "key transparency");
                if !alerted.contains(&alert) {
                    alerted.push(alert.clone());
                    inner.emit(Event::TransparencyAlert { alert }).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "key-transparency round failed; retrying later"),
        }
        tokio::time::sleep(interval).await;
    }
}

async fn round(inner: &Inner, held: &mut Option<Monitor>) -> Result<Outcome> {
    let known_size = held.as_ref().map_or(0, |m| m.signed.head.tree_size);
    let proof = inner.keyserver.get_epoch(known_size).await?;
    let parsed = proof
        .epoch
        .as_ref()
        .ok_or(KtError::Malformed("no epoch"))
        .and_then(SignedEpoch::from_proto)
        .and_then(|s| Ok((s, proof_nodes(&proof.consistency)?)));
    let (signed, consistency) = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(Outcome::Alert(KtAlert::Epoch(e))),
    };
    let mut next = match held {
        Some(m) => m.clone(),
        None => {
            let cert = proof
                .certificate
                .as_ref()
                .ok_or(KtError::Malformed("no directory key certificate"))
                .and_then(DirectoryCertificate::from_proto)
                .and_then(|c| Ok((EpochView::new(&inner.config.org_root, &c)?, c)));
            match cert {
                Ok((view, certificate)) => Monitor {
                    certificate,
                    view,
                    signed: signed.clone(),
                    frontier: Frontier::default(),
                    known: Vec::new(),
                },
                Err(e) => return Ok(Outcome::Alert(KtAlert::Epoch(e))),
            }
        }
    };
    let advanced = match next.view.advance(&signed, &consistency) {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::Alert(KtAlert::Epoch(e))),
    };
    next.signed = signed;
    let mut own_leaves: Vec<(u64, Vec<u8>)> = Vec::new();
    let size = next.signed.head.tree_size;
    while next.frontier.size < size {
        let from = next.frontier.size;
        let page = inner.keyserver.get_leaves(from, LEAVES_PAGE).await?;
        if page.from != from || page.leaves.is_empty() {
            return Ok(Outcome::Alert(KtAlert::LeavesMismatch {
                epoch: next.signed.head.epoch,
            }));
        }
        let room = usize::try_from(size - from).unwrap_or(usize::MAX);
        for leaf in page.leaves.iter().take(room) {
            let Ok(head) = <Hash>::try_from(leaf.head_hash.as_slice()) else {
                return Ok(Outcome::Alert(KtAlert::LeavesMismatch {
                    epoch: next.signed.head.epoch,
                }));
            };
            next.frontier
                .push(leaf_hash(&leaf_data(&leaf.user_id, leaf.log_len, &head)));
            if leaf.user_id == inner.user_id {
                own_leaves.push((leaf.log_len, leaf.head_hash.clone()));
            }
        }
    }
    if next.frontier.root() != next.signed.head.root {
        return Ok(Outcome::Alert(KtAlert::LeavesMismatch {
            epoch: next.signed.head.epoch,
        }));
    }
    // The own log as verified: refreshed when the directory shows it longer.
    let mut own = inner
        .directory
        .cached(&inner.store, &inner.user_id)
        .await?
        .ok_or(ClientError::NotEnrolled)?;
    let longest = own_leaves.iter().map(|(l, _)| *l).max().unwrap_or(0);
    if longest > own.user.len() {
        own = match refresh_own(inner).await {
            Ok(o) => o,
            // The keyserver serves this device a log that does not extend
            // the one it verified: others may be shown anything.
            Err(ClientError::Chain { .. }) => {
                return Ok(Outcome::Alert(KtAlert::OwnLogFork { log_len: longest }));
            }
            Err(e) => return Err(e),
        };
        if longest > own.user.len() {
            return Ok(Outcome::Alert(KtAlert::OwnLogHidden {
                log_len: longest,
                served: own.user.len(),
            }));
        }
    }
    if let Some(alert) = own_leaves
        .iter()
        .find_map(|(log_len, head)| own_leaf_alert(&own.entries, *log_len, head))
    {
        return Ok(Outcome::Alert(alert));
    }
    let known_before = next.known.len();
    let events = new_devices(inner, &own, &mut next.known)?;
    // Reported before the state that marks them known is stored: a crash or
    // a lock in between reports a device twice, never not at all.
    for e in events {
        inner.emit(e).await;
    }
    if held.is_none() || next.known.len() != known_before || advanced != Advance::Unchanged {
        let state = next.to_state();
        inner.store.run(move |s| s.set_kt_state(&state)).await?;
    }
    *held = Some(next);
    Ok(Outcome::Good)
}

/// A leaf of this user's log of `log_len` entries ending in `head`,
/// checked against the verified `entries` (at least `log_len` of them):
/// the head must be this device's own entry hash at `log_len - 1`.
fn own_leaf_alert(entries: &[pb::SignedStatement], log_len: u64, head: &[u8]) -> Option<KtAlert> {
    let ours = log_len
        .checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| entries.get(i))
        .map(entry_hash);
    (ours.as_ref().map(<[u8; 32]>::as_slice) != Some(head))
        .then_some(KtAlert::OwnLogFork { log_len })
}

/// The devices of this user that joined after this device, that it did
/// not add itself and has not reported yet: each becomes an event, and
/// `known`. A device present when this one joined is taken as known (it
/// was there before this device could watch; the device that added this
/// one vouched for the log as it stood).
fn new_devices(
    inner: &Inner,
    own: &super::directory::Known,
    known: &mut Vec<SigningPublicKey>,
) -> Result<Vec<Event>> {
    let me = inner.device.public_key();
    let Some(joined) = own.user.device(&me).map(|d| d.added_at) else {
        // Not in its own log (being revoked, or enrolling): nothing to
        // compare against.
        return Ok(Vec::new());
    };
    let mut events = Vec::new();
    let mut devices: Vec<_> = own.user.devices().collect();
    devices.sort_by_key(|d| d.added_at);
    for d in devices {
        if d.signing_key == me || known.contains(&d.signing_key) {
            continue;
        }
        known.push(d.signing_key);
        if d.added_at <= joined {
            continue;
        }
        let added_by = usize::try_from(d.added_at)
            .ok()
            .and_then(|i| own.entries.get(i))
            .and_then(|e| pb::Statement::decode(e.statement.as_slice()).ok())
            .and_then(|s| SigningPublicKey::from_bytes(&s.author).ok())
            .ok_or(ClientError::Protocol("own log entry does not decode"))?;
        if added_by == me {
            continue;
        }
        events.push(Event::DeviceAdded {
            device_id: d.signing_key,
            added_by,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::transparency::MerkleTree;

    #[test]
    fn the_frontier_computes_the_rfc9162_root_at_every_size() {
        let mut tree = MerkleTree::new();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for i in 0u8..70 {
            let leaf = leaf_hash(&[i]);
            tree.push(leaf);
            frontier.push(leaf);
            assert_eq!(frontier.root(), tree.root_at(tree.len()).unwrap());
            let again = Frontier::decode(frontier.size, &frontier.encode()).unwrap();
            assert_eq!(again, frontier);
        }
        assert!(Frontier::decode(3, &[0; 32]).is_none());
    }

    #[test]
    fn an_own_leaf_must_carry_this_devices_entry_hash_at_its_length() {
        let entries: Vec<pb::SignedStatement> = (0u8..3)
            .map(|i| pb::SignedStatement {
                statement: vec![i; 8],
                signature: vec![i; 64],
            })
            .collect();
        for (i, e) in entries.iter().enumerate() {
            let len = i as u64 + 1;
            assert_eq!(own_leaf_alert(&entries, len, &entry_hash(e)), None);
            // Another head at a length this device holds: a fork shown to
            // others.
            let mut forked = entry_hash(e);
            forked[0] ^= 1;
            assert_eq!(
                own_leaf_alert(&entries, len, &forked),
                Some(KtAlert::OwnLogFork { log_len: len })
            );
        }
        // The head of entry 1 claimed at length 3, length 0, a short hash.
        let h1 = entry_hash(&entries[1]);
        assert!(own_leaf_alert(&entries, 3, &h1).is_some());
        assert!(own_leaf_alert(&entries, 0, &h1).is_some());
        assert!(own_leaf_alert(&entries, 2, &h1[..31]).is_some());
    }
}
