//! Device authentication from presented user logs.
//!
//! The relay has no directory and shares no secret with the keyserver. A
//! device presents its own user log; the relay verifies it from the pinned
//! organisation root and keeps the longest verified log per user:
//!
//! * nothing stored: the presented log is verified and stored;
//! * presented longer than stored: its first entries must be the stored ones,
//!   statement and signature (else a fork: refused), and only the entries
//!   after them are verified. The relay stores its own verified entries
//!   followed by that verified suffix, never the presented bytes of a prefix
//!   it did not verify (a presenter that zeroed the prefix's signatures would
//!   otherwise leave a stored log that no longer verifies, which the relay
//!   would then ignore, letting an older log in which a revoked device is
//!   active replace it). Devices the suffix revokes are disconnected with
//!   `DEVICE_REVOKED`;
//! * presented no longer than stored: it must be a prefix of the stored log,
//!   entry for entry, signatures included (else a fork: refused); the relay
//!   keeps and judges by its longer log, so an older client log never rolls
//!   the relay's state back. An empty presented log means "use the stored
//!   one".
//!
//! A presented log may be only the end of the log (SECURITY.md §9): it is
//! placed at the `seq` its first entry claims and judged as above against
//! the relay's entries from there. If the relay holds fewer entries than
//! where it starts, it asks the keyserver's link for the log
//! ([`crate::keyserver_link::Fetcher`]) and waits briefly; failing that the
//! login is refused `UNKNOWN_USER`, and the device presents its whole log.
//!
//! # The verified cache
//!
//! Verifying a whole log costs one signature per entry (an insider may grow
//! theirs to 4,095 entries, about 0.7 s). The relay therefore keeps, per
//! user, the state it verified (`VerifiedUser`: length, head, devices) with
//! its own verified entries, and verifies a stored log from disk only once,
//! on a cache miss. A login attempt, a refresh or a `PublishLog` then costs
//! a comparison with the cached entries, plus one signature per new entry.
//! A login attempt whose device is not in the log costs no log signature.
//!
//! The cache is bounded by [`Config::log_cache_bytes`](crate::Config): the
//! encoded size of the entries plus a fixed overhead per entry, and the
//! parsed state (a record per device), over all users; the least recently used users are evicted past it (an evicted user
//! costs one full verification at its next use). One user's log is at most
//! 4,096 entries of at most 4 KiB, so one entry of the budget always fits.
//!
//! Stores are compare-and-swap on the stored length, retried on a race; the
//! cache follows the disk (a lost race drops the cached user).
//!
//! Gap: a revocation signed by the root reaches the relay only when some
//! device of that user presents the newer log (at connection or with
//! `PublishLog`); until then the revoked device can still connect.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{info, warn};
use ward_core::chain::{MAX_LOG_ENTRIES, VerifiedUser, verify_log};
use ward_core::keys::SigningPublicKey;
use ward_proto::v1::{ErrorCode, SignedStatement};

use crate::registry::CloseReason;
use crate::state::Shared;
use crate::storage::{self, Mailbox};

/// Bytes counted per cached entry besides its encoded size (vector headers,
/// the device record it may add, the map's share).
const ENTRY_OVERHEAD: usize = 256;

/// Default budget of the verified-log cache: 128 MiB, about 18,000 users of
/// one device (7 KiB each, parsed state included: X-Wing keys are 1.2 KB),
/// as many as the old 64 MiB held when only encoded bytes were counted.
pub const DEFAULT_LOG_CACHE_BYTES: usize = 128 << 20;

/// Counters of the log verifier, shared with whoever built the
/// configuration (tests and metrics read them).
#[derive(Debug, Default)]
pub struct LogStats {
    entries_verified: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl LogStats {
    /// Log entries whose signature the relay checked (whole logs and suffixes).
    pub fn entries_verified(&self) -> u64 {
        self.entries_verified.load(Ordering::Relaxed)
    }
    /// Lookups answered from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }
    /// Lookups that read (and verified) the stored log.
    pub fn cache_misses(&self) -> u64 {
        self.cache_misses.load(Ordering::Relaxed)
    }
    fn verified(&self, n: usize) {
        self.entries_verified.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A user's log as the relay verified it.
#[derive(Debug)]
pub struct Cached {
    user: VerifiedUser,
    /// The relay's own verified entries (what it stores).
    entries: Vec<SignedStatement>,
}

impl Cached {
    /// What it holds in memory: its encoded entries, and the parsed state
    /// (one boxed record per device, an X-Wing key each). Counting only the
    /// encoded bytes let the cache hold several times its budget.
    fn cost(&self) -> usize {
        let encoded: usize = self
            .entries
            .iter()
            .map(|e| e.statement.len() + e.signature.len() + ENTRY_OVERHEAD)
            .sum();
        let devices = self.user.devices().count()
            * (std::mem::size_of::<ward_core::chain::DeviceRecord>() + ENTRY_OVERHEAD);
        encoded + std::mem::size_of::<Self>() + devices
    }
}

struct Slot {
    log: Arc<Cached>,
    cost: usize,
    tick: u64,
}

#[derive(Default)]
struct Lru {
    slots: HashMap<String, Slot>,
    by_age: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
}

impl Lru {
    fn get(&mut self, user_id: &str) -> Option<Arc<Cached>> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.slots.get_mut(user_id)?;
        self.by_age.remove(&slot.tick);
        slot.tick = tick;
        self.by_age.insert(tick, user_id.to_owned());
        Some(slot.log.clone())
    }

    fn remove(&mut self, user_id: &str) {
        if let Some(slot) = self.slots.remove(user_id) {
            self.by_age.remove(&slot.tick);
            self.bytes -= slot.cost;
        }
    }

    /// Inserts `log` unless a longer one is cached (logs only grow; the disk
    /// decides between equal lengths), then evicts down to `budget`.
    fn offer(&mut self, user_id: &str, log: Arc<Cached>, budget: usize) {
        if self
            .slots
            .get(user_id)
            .is_some_and(|s| s.log.user.len() > log.user.len())
        {
            return;
        }
        self.remove(user_id);
        self.tick += 1;
        let cost = log.cost();
        self.by_age.insert(self.tick, user_id.to_owned());
        self.slots.insert(
            user_id.to_owned(),
            Slot {
                log,
                cost,
                tick: self.tick,
            },
        );
        self.bytes += cost;
        while self.bytes > budget {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.bytes -= slot.cost;
            }
        }
    }
}

/// Verified logs per user, least recently used evicted past a byte budget.
pub struct LogCache {
    lru: Mutex<Lru>,
    budget: usize,
    stats: Arc<LogStats>,
}

impl LogCache {
    /// An empty cache of `budget` bytes, counting into `stats`.
    pub fn new(budget: usize, stats: Arc<LogStats>) -> Self {
        Self {
            lru: Mutex::new(Lru::default()),
            budget,
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, user_id: &str) -> Option<Arc<Cached>> {
        let got = self.lock().get(user_id);
        let counter = match got {
            Some(_) => &self.stats.cache_hits,
            None => &self.stats.cache_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        got
    }

    fn offer(&self, user_id: &str, log: Arc<Cached>) {
        self.lock().offer(user_id, log, self.budget);
    }

    fn forget(&self, user_id: &str) {
        self.lock().remove(user_id);
    }

    /// Bytes held (as counted against the budget).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// What the relay knows of a user before deciding.
struct Known {
    /// The verified log, if a stored one verifies.
    log: Option<Arc<Cached>>,
    /// Entries on disk (the compare-and-swap's expected length).
    stored_len: u64,
}

enum Decision {
    Keep(Arc<Cached>),
    Replace {
        prev_len: u64,
        next: Arc<Cached>,
        newly_revoked: Vec<[u8; 32]>,
    },
}

/// Whether every presented entry is the known one at its position, whole
/// entry for whole entry: statement *and* signature (comparing the last hash
/// alone would let earlier entries be anything). The entry hash covers the
/// signature (SECURITY.md §4.2), so a known entry presented with another
/// signature (zeroed, or a second valid one) is a fork, as `update` calls it
/// (§4.7 U3), not the same entry: the relay never judges a presented log
/// "equal" to its own unless it is, byte for byte in both fields.
fn is_prefix(presented: &[SignedStatement], known: &[SignedStatement]) -> bool {
    presented.len() <= known.len() && presented.iter().zip(known).all(|(p, k)| p == k)
}

/// Verifies a whole log, counting its entries.
fn verify_whole(
    root: &SigningPublicKey,
    user_id: &str,
    entries: Vec<SignedStatement>,
    stats: &LogStats,
) -> Result<Cached, ward_core::ChainError> {
    stats.verified(entries.len().min(MAX_LOG_ENTRIES));
    let user = verify_log(root, user_id, &entries)?;
    Ok(Cached { user, entries })
}

/// Verifies and applies only the entries after the known ones. Each new
/// entry's sequence, chain link, author and signature are checked before
/// anything it says is applied (`VerifiedUser::apply`).
fn extend(
    root: &SigningPublicKey,
    known: &Cached,
    suffix: &[SignedStatement],
    stats: &LogStats,
) -> Result<Cached, ward_core::ChainError> {
    if known.entries.len() + suffix.len() > MAX_LOG_ENTRIES {
        return Err(ward_core::ChainError::Malformed("log too long"));
    }
    let mut user = known.user.clone();
    for entry in suffix {
        stats.verified(1);
        user.apply(root, entry)?;
    }
    let mut entries = Vec::with_capacity(known.entries.len() + suffix.len());
    entries.extend_from_slice(&known.entries);
    entries.extend_from_slice(suffix);
    Ok(Cached { user, entries })
}

/// Where a presented log starts: the `seq` its first entry claims (0 for an
/// empty log, or one whose first statement does not decode: it is then
/// judged, and refused, as a whole log). A device may present only the end
/// of its log (SECURITY.md §9); the claim is checked by comparison with the
/// relay's entries or by verification, never trusted.
fn presented_start(presented: &[SignedStatement]) -> u64 {
    presented
        .first()
        .and_then(|e| {
            ward_proto::decode_bounded::<ward_proto::v1::Statement>(
                &e.statement,
                ward_core::chain::MAX_STATEMENT_BYTES,
            )
            .ok()
        })
        .map_or(0, |st| st.seq)
}

fn decide(
    root: &SigningPublicKey,
    user_id: &str,
    known: Known,
    presented: &[SignedStatement],
    stats: &LogStats,
) -> Result<Decision, ErrorCode> {
    let start = presented_start(presented);
    match known.log {
        None if start == 0 => {
            if presented.is_empty() {
                return Err(ErrorCode::UnknownUser);
            }
            let next = verify_whole(root, user_id, presented.to_vec(), stats).map_err(|e| {
                info!(user = user_id, error = %e, "presented log refused");
                ErrorCode::InvalidStatement
            })?;
            let newly_revoked = revoked_since(&next.user, 0);
            Ok(Decision::Replace {
                prev_len: known.stored_len,
                next: Arc::new(next),
                newly_revoked,
            })
        }
        // The end of a log the relay does not hold, or holds less of than
        // where the presented part starts: it cannot be verified. The
        // device presents its whole log next (UNKNOWN_USER, §9).
        None => Err(ErrorCode::UnknownUser),
        Some(log) if start > log.user.len() => Err(ErrorCode::UnknownUser),
        Some(log) => {
            // `start <= len <= MAX_LOG_ENTRIES`: it fits a usize.
            let from = usize::try_from(start).unwrap_or(usize::MAX);
            let held = log.entries.get(from..).unwrap_or_default();
            if presented.len() > held.len() {
                let (overlap, suffix) = presented.split_at(held.len());
                if !is_prefix(overlap, held) {
                    warn!(user = user_id, "presented log forks from the stored one");
                    return Err(ErrorCode::InvalidStatement);
                }
                let next = extend(root, &log, suffix, stats).map_err(|e| {
                    warn!(user = user_id, error = %e, "presented log does not extend the stored one");
                    ErrorCode::InvalidStatement
                })?;
                let newly_revoked = revoked_since(&next.user, log.user.len());
                Ok(Decision::Replace {
                    prev_len: log.user.len(),
                    next: Arc::new(next),
                    newly_revoked,
                })
            } else {
                if !is_prefix(presented, held) {
                    warn!(user = user_id, "presented log forks from the stored one");
                    return Err(ErrorCode::InvalidStatement);
                }
                Ok(Decision::Keep(log))
            }
        }
    }
}

fn revoked_since(user: &VerifiedUser, since: u64) -> Vec<[u8; 32]> {
    user.devices()
        .filter(|d| d.revoked_at.is_some_and(|at| at >= since))
        .map(|d| *d.signing_key.as_bytes())
        .collect()
}

/// The relay's verified view of `user_id`: from the cache, else read from
/// disk and verified once (on a reader, off the async workers).
async fn known(shared: &Shared, user_id: &str) -> Result<Known, ErrorCode> {
    if let Some(log) = shared.logs.get(user_id) {
        return Ok(Known {
            stored_len: log.user.len(),
            log: Some(log),
        });
    }
    let root = shared.config.org_root;
    let user = user_id.to_owned();
    let stats = shared.config.log_stats.clone();
    let known = shared
        .read(move |conn| {
            let Some(entries) = storage::load_log(conn, &user)? else {
                return Ok(Known {
                    log: None,
                    stored_len: 0,
                });
            };
            let stored_len = entries.len() as u64;
            // Stored logs were verified before being stored; verifying once
            // per cache miss keeps the relay from trusting its disk blindly.
            // One that no longer verifies (tampered with, or the configured
            // root changed) is treated as absent: the presented log must
            // then verify on its own, and replaces it.
            let log = match verify_whole(&root, &user, entries, &stats) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    warn!(user = %user, error = %e, "stored log no longer verifies; ignoring it");
                    None
                }
            };
            Ok(Known { log, stored_len })
        })
        .await
        .map_err(|e| {
            warn!(error = %e, "reading a stored log failed");
            ErrorCode::Internal
        })?;
    if let Some(log) = &known.log {
        shared.logs.offer(user_id, log.clone());
    }
    Ok(known)
}

/// Asks the keyserver's link for `user_id`'s log and waits, at most half
/// the handshake timeout, until the relay holds `len` entries of it (a
/// notice verified and stored) or gives up; the caller decides again either
/// way.
async fn fetch_and_wait(shared: &Shared, user_id: &str, len: u64) {
    let mut applied = shared.link_fetch.subscribe();
    shared.link_fetch.request(user_id);
    let deadline = tokio::time::Instant::now() + shared.config.limits.net.auth_timeout / 2;
    while let Ok(Ok(())) = tokio::time::timeout_at(deadline, applied.changed()).await {
        if shared
            .logs
            .get(user_id)
            .is_some_and(|l| l.user.len() >= len)
        {
            return;
        }
    }
    info!(
        user = user_id,
        "the keyserver link did not bring the log in time"
    );
}

/// Verifies `presented` against the relay's log of `user_id`, stores the
/// verified result if longer, disconnects devices it revokes, and returns
/// the relay's current view of the user.
pub async fn refresh(
    shared: &Shared,
    user_id: &str,
    presented: Vec<SignedStatement>,
) -> Result<VerifiedUser, ErrorCode> {
    let presented = Arc::new(presented);
    let start = presented_start(&presented);
    let mut fetched = false;
    for _ in 0..4 {
        let known = known(shared, user_id).await?;
        let held = known.log.as_ref().map_or(0, |l| l.user.len());
        if start > held && !fetched && shared.link_fetch.enabled() {
            // The end of a log the relay lacks the start of: ask the
            // keyserver for it over the link, then judge again.
            fetched = true;
            fetch_and_wait(shared, user_id, start).await;
            continue;
        }
        let cheap = match &known.log {
            Some(log) => start.saturating_add(presented.len() as u64) <= log.user.len(),
            None => presented.is_empty() || start > 0,
        };
        let root = shared.config.org_root;
        let decision = if cheap {
            // A comparison at most: no signature to check.
            decide(&root, user_id, known, &presented, &shared.config.log_stats)?
        } else {
            let user = user_id.to_owned();
            let log = presented.clone();
            let stats = shared.config.log_stats.clone();
            tokio::task::spawn_blocking(move || decide(&root, &user, known, &log, &stats))
                .await
                .map_err(|e| {
                    warn!(error = %e, "log verification task failed");
                    ErrorCode::Internal
                })??
        };
        match decision {
            Decision::Keep(log) => return Ok(log.user.clone()),
            Decision::Replace {
                prev_len,
                next,
                newly_revoked,
            } => {
                let stored = shared
                    .writer
                    .store_log(user_id.to_owned(), prev_len, next.entries.clone())
                    .await
                    .map_err(|e| {
                        warn!(error = %e, "storing a log failed");
                        ErrorCode::Internal
                    })?;
                if !stored {
                    // Another connection stored a log first: decide again
                    // from the disk.
                    shared.logs.forget(user_id);
                    continue;
                }
                shared.logs.offer(user_id, next.clone());
                info!(user = user_id, len = next.user.len(), "user log updated");
                for device_id in newly_revoked {
                    shared.registry.close(
                        &Mailbox {
                            user_id: user_id.to_owned(),
                            device_id,
                        },
                        CloseReason {
                            code: ward_net::close::DEVICE_REVOKED,
                            reason: "device revoked",
                        },
                    );
                }
                return Ok(next.user.clone());
            }
        }
    }
    Err(ErrorCode::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::testkit::Org;

    fn known(root: &SigningPublicKey, user: &str, log: &[SignedStatement]) -> Known {
        let stats = LogStats::default();
        Known {
            log: verify_whole(root, user, log.to_vec(), &stats)
                .ok()
                .map(Arc::new),
            stored_len: log.len() as u64,
        }
    }

    /// `user`'s log: the creation, then `n` key rotations by its device.
    fn rotated_log(
        org: &Org,
        rng: &mut rand::rngs::ThreadRng,
        user: &str,
        n: usize,
    ) -> Vec<SignedStatement> {
        let mut c = org.enroll(rng, user);
        let mut log = c.log.clone();
        for _ in 0..n {
            let key = ward_core::keys::UserEncryptionKey::generate(rng).public_key();
            let e = c
                .chain
                .rotate_user_key(&c.device, &key, ward_core::testkit::KIT_TIME);
            c.chain.apply(&org.root_public(), &e).unwrap();
            log.push(e);
        }
        log
    }

    fn none() -> Known {
        Known {
            log: None,
            stored_len: 0,
        }
    }

    #[test]
    fn decisions() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let bob = org.enroll(&mut rng, "bob");
        let other = Org::new(&mut rng);
        let bob_elsewhere = other.enroll(&mut rng, "bob");
        let s = LogStats::default();

        // Nothing stored: the presented log is stored.
        assert!(matches!(
            decide(&root, "bob", none(), &bob.log, &s),
            Ok(Decision::Replace { prev_len: 0, .. })
        ));
        assert!(matches!(
            decide(&root, "bob", none(), &[], &s),
            Err(ErrorCode::UnknownUser)
        ));
        assert!(matches!(
            decide(&root, "bob", none(), &bob_elsewhere.log, &s),
            Err(ErrorCode::InvalidStatement)
        ));
        assert!(matches!(
            decide(&root, "alice", none(), &bob.log, &s),
            Err(ErrorCode::InvalidStatement)
        ));
        // Same log, or nothing presented: keep the stored one.
        assert!(matches!(
            decide(&root, "bob", known(&root, "bob", &bob.log), &bob.log, &s),
            Ok(Decision::Keep(_))
        ));
        assert!(matches!(
            decide(&root, "bob", known(&root, "bob", &bob.log), &[], &s),
            Ok(Decision::Keep(_))
        ));
        // Another log of the same length: a fork.
        let bob2 = org.enroll(&mut rng, "bob");
        assert!(matches!(
            decide(&root, "bob", known(&root, "bob", &bob.log), &bob2.log, &s),
            Err(ErrorCode::InvalidStatement)
        ));
        // A stored log that no longer verifies (another root) is replaced.
        assert!(matches!(
            decide(
                &root,
                "bob",
                known(&root, "bob", &bob_elsewhere.log),
                &bob.log,
                &s
            ),
            Ok(Decision::Replace { prev_len: 1, .. })
        ));
    }

    #[test]
    fn only_the_new_suffix_is_verified_and_own_entries_are_kept() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let log = rotated_log(&org, &mut rng, "bob", 3);
        let s = LogStats::default();
        let Ok(Decision::Replace { prev_len, next, .. }) =
            decide(&root, "bob", known(&root, "bob", &log[..2]), &log, &s)
        else {
            panic!("the new suffix should be accepted");
        };
        assert_eq!(prev_len, 2);
        assert_eq!(s.entries_verified(), 2, "only the two new entries");
        assert_eq!(next.entries, log, "own prefix, verified suffix");
        assert!(verify_log(&root, "bob", &next.entries).is_ok());
    }

    /// A device may present only the end of its log (SECURITY.md §9): it is
    /// placed at the `seq` its first entry claims, compared with the relay's
    /// entries where they overlap and verified after them. A part that
    /// starts past what the relay holds cannot be judged: `UNKNOWN_USER`,
    /// and the device presents its whole log next.
    #[test]
    fn the_end_of_a_log_is_judged_against_the_relays_entries() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let log = rotated_log(&org, &mut rng, "bob", 4);
        let held = |n: usize| known(&root, "bob", &log[..n]);
        // Overlapping the stored entries, then new ones: only those verified.
        let s = LogStats::default();
        let Ok(Decision::Replace { prev_len, next, .. }) =
            decide(&root, "bob", held(3), &log[2..], &s)
        else {
            panic!("a suffix overlapping the stored log should extend it");
        };
        assert_eq!((prev_len, s.entries_verified()), (3, 2));
        assert_eq!(next.entries, log);
        // Starting right after the stored log.
        assert!(matches!(
            decide(&root, "bob", held(3), &log[3..], &s),
            Ok(Decision::Replace { prev_len: 3, .. })
        ));
        // Inside the stored log: nothing new.
        assert!(matches!(
            decide(&root, "bob", held(5), &log[3..4], &s),
            Ok(Decision::Keep(_))
        ));
        assert!(matches!(
            decide(&root, "bob", held(5), &log[4..], &s),
            Ok(Decision::Keep(_))
        ));
        // A gap after the stored log, or no stored log: cannot be judged.
        assert!(matches!(
            decide(&root, "bob", held(2), &log[3..], &s),
            Err(ErrorCode::UnknownUser)
        ));
        assert!(matches!(
            decide(&root, "bob", none(), &log[1..], &s),
            Err(ErrorCode::UnknownUser)
        ));
        // An overlap that differs from the stored entries: a fork.
        let mut forked = log[2..].to_vec();
        forked[0].signature[0] ^= 1;
        assert!(matches!(
            decide(&root, "bob", held(4), &forked, &s),
            Err(ErrorCode::InvalidStatement)
        ));
        // Another user's entry placed at its seq: a fork too.
        let a1 = rotated_log(&org, &mut rng, "alice", 1).remove(1);
        assert!(matches!(
            decide(&root, "bob", held(1), &[a1], &s),
            Err(ErrorCode::InvalidStatement)
        ));
    }

    /// The known prefix is compared entry for entry, signature included: a
    /// presented log whose known entries differ from the stored ones only in
    /// a signature (zeroed, or one byte changed) is a fork and refused,
    /// whether it is longer than the stored log or not, and verifies nothing.
    #[test]
    fn a_known_prefix_that_differs_only_in_a_signature_is_refused() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let log = rotated_log(&org, &mut rng, "bob", 3);
        let mut zeroed = log.clone();
        for e in &mut zeroed[..2] {
            e.signature = vec![0; 64];
        }
        let mut flipped = log.clone();
        flipped[1].signature[63] ^= 1;
        for presented in [&zeroed, &flipped] {
            // Longer than the stored log: the suffix is never looked at.
            let s = LogStats::default();
            assert!(matches!(
                decide(&root, "bob", known(&root, "bob", &log[..2]), presented, &s),
                Err(ErrorCode::InvalidStatement)
            ));
            assert_eq!(s.entries_verified(), 0);
            // As long as the stored log, and shorter: not "the same log".
            for stored in [&log[..2], &log[..]] {
                assert!(matches!(
                    decide(
                        &root,
                        "bob",
                        known(&root, "bob", stored),
                        &presented[..2],
                        &s
                    ),
                    Err(ErrorCode::InvalidStatement)
                ));
            }
        }
        // The honest prefix is still accepted.
        let s = LogStats::default();
        assert!(matches!(
            decide(&root, "bob", known(&root, "bob", &log), &log[..2], &s),
            Ok(Decision::Keep(_))
        ));
    }

    #[test]
    fn the_cache_evicts_least_recently_used_past_its_budget() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let s = LogStats::default();
        let logs: Vec<_> = (0..3)
            .map(|i| {
                let id = format!("u{i}");
                let c = org.enroll(&mut rng, &id);
                (
                    id.clone(),
                    Arc::new(verify_whole(&root, &id, c.log, &s).unwrap()),
                )
            })
            .collect();
        let one = logs[0].1.cost();
        // A one-device user: its entry (about 3.3 KB encoded with its X-Wing
        // keys) and its parsed state (two X-Wing keys again) are both counted.
        assert!(
            (6_000..9_000).contains(&one),
            "a one-device user costs {one}"
        );
        let cache = LogCache::new(one * 2, Arc::new(LogStats::default()));
        cache.offer(&logs[0].0, logs[0].1.clone());
        cache.offer(&logs[1].0, logs[1].1.clone());
        assert!(cache.get("u0").is_some()); // u0 now most recent
        cache.offer(&logs[2].0, logs[2].1.clone());
        assert!(cache.get("u1").is_none(), "least recently used evicted");
        assert!(cache.get("u0").is_some() && cache.get("u2").is_some());
        assert!(cache.bytes() <= one * 2);
    }
}
