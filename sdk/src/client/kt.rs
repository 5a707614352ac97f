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

use tokio::sync::mpsc;
use ward_core::chain::entry_hash;
use ward_core::keys::SigningPublicKey;
use ward_core::transparency::{
    Advance, DirectoryCertificate, EpochView, Frontier, Hash, KtError, ParsedInclusion,
    SignedEpoch, leaf_data, leaf_hash, proof_nodes,
};
use ward_proto::Message as _;
use ward_proto::v1 as pb;
use ward_proto::v1::ErrorCode;

use super::error::{ClientError, Result};
use super::events::Event;
use super::keyserver::Keyserver;
use super::{Inner, StoreCell, refresh_own, revoked};
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
    /// Another user's log head, served to this device and verified from
    /// the root, has an inclusion proof that fails in a verified epoch
    /// (SECURITY.md §18.9): this device is shown a log the directory does
    /// not hold. The log was refused.
    #[error("the log of {user_id} at {log_len} entries is not the one in the directory")]
    HeadNotInDirectory {
        /// Whose log.
        user_id: String,
        /// Its length as served.
        log_len: u64,
    },
    /// Another user's log head that this device accepted while no epoch
    /// held it yet never appeared in one: still absent after the pending
    /// rounds, or superseded by a log the keyserver does not serve this
    /// device. The log was accepted (messaging does not wait for an
    /// epoch); this alert is the evidence.
    #[error("the log of {user_id} at {log_len} entries was never published in the directory")]
    HeadNeverPublished {
        /// Whose log.
        user_id: String,
        /// Its length as accepted.
        log_len: u64,
    },
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
            scanned: self.frontier.len(),
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
        // The directory check of other users' heads (§18.9) may move the
        // view past the leaves the monitor scanned: the next round scans
        // the rest.
        if frontier.len() > signed.head.tree_size {
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

/// The held view, loaded from the store on first use.
#[derive(Default)]
struct Held {
    loaded: bool,
    monitor: Option<Monitor>,
}

impl Held {
    /// Loads the stored state once. Errors leave it unloaded (retried at
    /// the next use).
    async fn load(&mut self, store: &StoreCell, org_root: &SigningPublicKey) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        if let Some(state) = store.run(|s| s.kt_state()).await? {
            self.monitor = Monitor::from_state(org_root, &state);
            if self.monitor.is_none() {
                // The store is this device's own; a state that does not
                // parse is a bug, not an attack: start over from the next
                // epoch rather than stop monitoring.
                tracing::warn!("stored key-transparency state unreadable; starting over");
            }
        }
        self.loaded = true;
        Ok(())
    }
}

/// Another user's head accepted before any epoch held it (§18.9).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    user_id: String,
    log_len: u64,
    head: Hash,
    /// Monitor rounds it was re-checked at and still absent.
    rounds: u32,
}

/// Why a head could not be checked now (accepted, and pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// `UNAVAILABLE`: in no epoch yet.
    NoEpochYet,
    /// `NOT_FOUND`: superseded before an epoch published it (or unknown).
    Superseded,
    /// The keyserver unreachable, the view busy or not loadable.
    Unchecked,
}

/// What the directory does with a head it checked (and did not refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// Included, pending, or not checked: keep the log.
    Accepted,
    /// Superseded before an epoch published it (pending meanwhile): the
    /// log grew, fetch it again and check the newer head.
    Superseded,
}

/// How long a directory check waits for the view while a monitor round
/// holds it, before accepting the head as pending: messaging never waits
/// on key transparency alone.
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A keyserver publishes an epoch at least every minute (§18.4); a head
/// still absent after twice that is reported.
const MAX_EPOCH_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The key-transparency state one client shares between its monitor and
/// its directory (one view per client, SECURITY.md §18.9): the view behind
/// one mutex, which both hold for a whole check so that neither persists a
/// view the other moved past.
pub(crate) struct Shared {
    org_root: SigningPublicKey,
    own_user: String,
    /// Whether other users' heads are checked
    /// ([`super::ClientConfig::kt_check_heads`] and a monitor running).
    enabled: bool,
    /// Rounds a pending head may stay absent.
    max_rounds: u32,
    events: mpsc::Sender<Event>,
    held: tokio::sync::Mutex<Held>,
    pending: std::sync::Mutex<Vec<Pending>>,
    alerted: std::sync::Mutex<Vec<KtAlert>>,
}

impl Shared {
    pub(crate) fn new(
        org_root: SigningPublicKey,
        own_user: String,
        interval: Option<std::time::Duration>,
        check_heads: bool,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let max_rounds = interval.map_or(0, |i| {
            let twice = MAX_EPOCH_AGE.as_millis() * 2;
            let per = i.as_millis().max(1);
            u32::try_from(twice / per + 1).unwrap_or(u32::MAX).max(3)
        });
        Self {
            org_root,
            own_user,
            enabled: check_heads && interval.is_some(),
            max_rounds,
            events,
            held: tokio::sync::Mutex::new(Held::default()),
            pending: std::sync::Mutex::new(Vec::new()),
            alerted: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Emits `alert` once per distinct problem while the client runs.
    async fn alert(&self, alert: KtAlert) {
        tracing::warn!(%alert, "key transparency");
        let first = self.alerted.lock().is_ok_and(|mut a| {
            if a.contains(&alert) {
                false
            } else {
                a.push(alert.clone());
                true
            }
        });
        if first {
            // No receiver (the app dropped it): nothing else to do.
            let _ = self.events.send(Event::TransparencyAlert { alert }).await;
        }
    }

    /// The heads accepted and not yet confirmed in an epoch.
    pub(crate) fn pending(&self) -> Vec<(String, u64)> {
        self.pending.lock().map_or_else(
            |_| Vec::new(),
            |p| p.iter().map(|p| (p.user_id.clone(), p.log_len)).collect(),
        )
    }

    fn pend(&self, p: Pending) {
        if let Ok(mut all) = self.pending.lock() {
            match all
                .iter_mut()
                .find(|q| q.user_id == p.user_id && q.log_len == p.log_len)
            {
                Some(q) => q.rounds = q.rounds.max(p.rounds),
                None => all.push(p),
            }
        }
    }

    /// A head of `user_id` at `log_len` is in a verified epoch: so is the
    /// prefix of it that every shorter pending head was (the log verified
    /// as an extension of those).
    fn confirm(&self, user_id: &str, log_len: u64) {
        if let Ok(mut all) = self.pending.lock() {
            all.retain(|p| !(p.user_id == user_id && p.log_len <= log_len));
        }
    }

    /// Checks another user's verified log head before the directory
    /// accepts it: `Ok` to accept (included, or pending; [`Head::Superseded`]
    /// asks for the log again), a [`ClientError::Transparency`] to refuse
    /// (after the alert).
    pub(crate) async fn check_head(
        &self,
        store: &StoreCell,
        keyserver: &Keyserver,
        user_id: &str,
        log_len: u64,
        head: Hash,
    ) -> Result<Head> {
        if !self.enabled || user_id == self.own_user {
            return Ok(Head::Accepted);
        }
        match self
            .verify_head(store, keyserver, user_id, log_len, &head)
            .await
        {
            Ok(None) => {
                self.confirm(user_id, log_len);
                Ok(Head::Accepted)
            }
            Ok(Some(why)) => {
                tracing::debug!(user = %user_id, log_len, ?why, "head pending in the directory");
                self.pend(Pending {
                    user_id: user_id.to_owned(),
                    log_len,
                    head,
                    rounds: 0,
                });
                Ok(if why == Absent::Superseded {
                    Head::Superseded
                } else {
                    Head::Accepted
                })
            }
            Err(alert) => {
                self.alert(alert.clone()).await;
                Err(ClientError::Transparency(alert))
            }
        }
    }

    /// `Ok(None)`: included in a verified epoch (the view moved to it);
    /// `Ok(Some(_))`: not checkable now; `Err`: refuted.
    async fn verify_head(
        &self,
        store: &StoreCell,
        keyserver: &Keyserver,
        user_id: &str,
        log_len: u64,
        head: &Hash,
    ) -> core::result::Result<Option<Absent>, KtAlert> {
        let absent = |e: &ClientError| match e {
            ClientError::Keyserver {
                code: ErrorCode::Unavailable,
                ..
            } => Absent::NoEpochYet,
            ClientError::Keyserver {
                code: ErrorCode::NotFound,
                ..
            } => Absent::Superseded,
            _ => Absent::Unchecked,
        };
        let proof = match keyserver.get_inclusion(user_id, log_len, 0).await {
            Ok(p) => p,
            Err(e) => return Ok(Some(absent(&e))),
        };
        let mut parsed = ParsedInclusion::from_proto(&proof).map_err(KtAlert::Epoch)?;
        let Ok(mut held) = tokio::time::timeout(VIEW_WAIT, self.held.lock()).await else {
            return Ok(Some(Absent::Unchecked));
        };
        if held.load(store, &self.org_root).await.is_err() {
            return Ok(Some(Absent::Unchecked));
        }
        let mut next = match &held.monitor {
            Some(m) => m.clone(),
            None => {
                let Ok(first) = keyserver.get_epoch_at(parsed.epoch.head.epoch, 0).await else {
                    return Ok(Some(Absent::Unchecked));
                };
                let certificate = first
                    .certificate
                    .as_ref()
                    .ok_or(KtError::Malformed("no directory key certificate"))
                    .and_then(DirectoryCertificate::from_proto)
                    .map_err(KtAlert::Epoch)?;
                Monitor {
                    view: EpochView::new(&self.org_root, &certificate).map_err(KtAlert::Epoch)?,
                    certificate,
                    signed: parsed.epoch.clone(),
                    frontier: Frontier::default(),
                    known: Vec::new(),
                }
            }
        };
        // A view ahead of the proof: the proof again, in the view's epoch
        // (a view only checks inclusion in the epoch it holds).
        if let Some(latest) = next.view.latest().copied()
            && latest.epoch > parsed.epoch.head.epoch
        {
            let again = match keyserver
                .get_inclusion(user_id, log_len, latest.epoch)
                .await
            {
                Ok(p) => p,
                Err(e) => return Ok(Some(absent(&e))),
            };
            parsed = ParsedInclusion::from_proto(&again).map_err(KtAlert::Epoch)?;
        }
        // A view behind the proof: the consistency proof from the size held
        // to the proof's epoch.
        let consistency = match next.view.latest().copied() {
            Some(latest) if latest.epoch < parsed.epoch.head.epoch => {
                let Ok(ep) = keyserver
                    .get_epoch_at(parsed.epoch.head.epoch, latest.tree_size)
                    .await
                else {
                    return Ok(Some(Absent::Unchecked));
                };
                let signed = ep
                    .epoch
                    .as_ref()
                    .ok_or(KtError::Malformed("no epoch"))
                    .and_then(SignedEpoch::from_proto)
                    .map_err(KtAlert::Epoch)?;
                // Two heads for one epoch number, one with the proof and
                // one with the consistency proof.
                if signed.head != parsed.epoch.head {
                    return Err(KtAlert::Epoch(KtError::Equivocation));
                }
                proof_nodes(&ep.consistency).map_err(KtAlert::Epoch)?
            }
            _ => Vec::new(),
        };
        let advanced = next
            .view
            .advance(&parsed.epoch, &consistency)
            .map_err(KtAlert::Epoch)?;
        next.view
            .check_inclusion(
                user_id,
                log_len,
                head,
                parsed.leaf_index,
                &parsed.path,
                &parsed.epoch.head,
            )
            .map_err(|e| match e {
                KtError::NotIncluded | KtError::BadProofLength | KtError::OutOfRange(_) => {
                    KtAlert::HeadNotInDirectory {
                        user_id: user_id.to_owned(),
                        log_len,
                    }
                }
                e => KtAlert::Epoch(e),
            })?;
        if advanced != Advance::Unchanged || held.monitor.is_none() {
            next.signed = parsed.epoch;
            let state = next.to_state();
            if let Err(e) = store.run(move |s| s.set_kt_state(&state)).await {
                // Kept in memory: the next round persists it.
                tracing::warn!(error = %e, "key-transparency state not stored");
            }
        }
        held.monitor = Some(next);
        Ok(None)
    }
}

pub(crate) async fn run(inner: Arc<Inner>, interval: std::time::Duration) {
    let shared = inner.directory.kt();
    loop {
        if revoked::is_revoked(&inner) {
            return;
        }
        let outcome = {
            let mut held = shared.held.lock().await;
            match held.load(&inner.store, &inner.config.org_root).await {
                Ok(()) => round(&inner, &mut held.monitor).await,
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok(Outcome::Good) => {}
            Ok(Outcome::Alert(alert)) => shared.alert(alert).await,
            Err(e) => tracing::debug!(error = %e, "key-transparency round failed; retrying later"),
        }
        recheck_pending(&inner, shared).await;
        tokio::time::sleep(interval).await;
    }
}

/// Re-checks the heads accepted while no epoch held them (§18.9).
async fn recheck_pending(inner: &Inner, shared: &Shared) {
    // A snapshot: the list itself keeps every head until its outcome (what
    // `Client::transparency_pending` shows during a re-check).
    let pending = shared.pending.lock().map(|p| p.clone()).unwrap_or_default();
    for mut p in pending {
        let never = || KtAlert::HeadNeverPublished {
            user_id: p.user_id.clone(),
            log_len: p.log_len,
        };
        let result = shared
            .verify_head(
                &inner.store,
                &inner.keyserver,
                &p.user_id,
                p.log_len,
                &p.head,
            )
            .await;
        match result {
            Ok(None) => {
                tracing::debug!(user = %p.user_id, log_len = p.log_len, "pending head confirmed");
                shared.confirm(&p.user_id, p.log_len);
            }
            Ok(Some(Absent::Superseded)) => {
                // Superseded before an epoch: the log grew. Its newer head
                // is checked as the log is fetched again; a log that did
                // not grow past this head hides what superseded it.
                let ids = [p.user_id.clone()];
                match inner
                    .directory
                    .refresh(&inner.store, &inner.keyserver, &ids)
                    .await
                {
                    Ok(k) if k.iter().any(|k| k.user.len() > p.log_len) => {
                        shared.unpend(&p);
                    }
                    Ok(_) => {
                        shared.unpend(&p);
                        shared.alert(never()).await;
                    }
                    // Already alerted by the check.
                    Err(ClientError::Transparency(_)) => shared.unpend(&p),
                    Err(_) => {
                        p.rounds += 1;
                        shared.retry_or_alert(p).await;
                    }
                }
            }
            Ok(Some(_)) => {
                p.rounds += 1;
                shared.retry_or_alert(p).await;
            }
            Err(alert) => {
                shared.unpend(&p);
                shared.alert(alert).await;
            }
        }
    }
}

impl Shared {
    /// One more round absent: counted, or alerted after the last. A head
    /// confirmed meanwhile (by another check) is left confirmed.
    async fn retry_or_alert(&self, p: Pending) {
        let still = self.pending.lock().is_ok_and(|mut all| {
            let Some(i) = all
                .iter()
                .position(|q| q.user_id == p.user_id && q.log_len == p.log_len)
            else {
                return false;
            };
            if p.rounds >= self.max_rounds {
                all.remove(i);
                true
            } else {
                if let Some(q) = all.get_mut(i) {
                    q.rounds = q.rounds.max(p.rounds);
                }
                false
            }
        });
        if still {
            self.alert(KtAlert::HeadNeverPublished {
                user_id: p.user_id,
                log_len: p.log_len,
            })
            .await;
        }
    }

    /// That one pending entry goes (settled: superseded by a longer
    /// verified log, or alerted).
    fn unpend(&self, p: &Pending) {
        if let Ok(mut all) = self.pending.lock() {
            all.retain(|q| !(q.user_id == p.user_id && q.log_len == p.log_len));
        }
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
    // The directory check (§18.9) may have moved the view without the
    // leaves: what this round scans is new state even at the same epoch.
    let scanned_before = next.frontier.len();
    let mut own_leaves: Vec<(u64, Vec<u8>)> = Vec::new();
    let size = next.signed.head.tree_size;
    while next.frontier.len() < size {
        let from = next.frontier.len();
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
    if held.is_none()
        || next.known.len() != known_before
        || advanced != Advance::Unchanged
        || next.frontier.len() != scanned_before
    {
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

    #[test]
    fn pending_heads_outlive_twice_the_longest_epoch_age() {
        let root = ward_core::keys::DeviceSigningKey::generate(&mut rand::rng()).public_key();
        let rounds = |interval: Option<std::time::Duration>| {
            let (tx, _rx) = mpsc::channel(1);
            let s = Shared::new(root, "me@chu".to_owned(), interval, true, tx);
            (s.max_rounds, s.enabled)
        };
        let secs = std::time::Duration::from_secs;
        // The default 30 s: 5 rounds, 150 s > 120 s.
        assert_eq!(rounds(Some(secs(30))), (5, true));
        // Never fewer than 3, and always N * interval > 2 * 60 s.
        assert_eq!(rounds(Some(secs(600))), (3, true));
        let (n, _) = rounds(Some(std::time::Duration::from_millis(200)));
        assert!(u128::from(n) * 200 > 120_000);
        // No monitor: nothing re-checks pending heads, so nothing is checked.
        assert_eq!(rounds(None), (0, false));
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
