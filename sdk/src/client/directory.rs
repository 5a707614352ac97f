//! The directory as this device trusts it: users' logs fetched from the
//! keyserver, verified from the pinned organisation root on first sight
//! ([`verify_log`]) and checked against the state verified before on every
//! later fetch ([`VerifiedUser::update`]): a rollback or a fork is a typed
//! error ([`ClientError::Chain`]), never a silent replacement. The entries
//! this device verified are persisted in the store, so trust carries over
//! restarts: on an update only the verified new suffix is appended to them
//! ([`VerifiedUser::update_suffix`]); the served prefix is never stored in
//! their place (SECURITY.md §4.7).

use std::collections::HashMap;
use std::sync::Mutex;

use ward_core::ChainError;
use ward_core::chain::{VerifiedUser, decode_signed_statement, entry_hash, verify_log};
use ward_core::keys::SigningPublicKey;
use ward_proto::Message as _;
use ward_proto::v1::SignedStatement;

use super::StoreCell;
use super::error::{ClientError, Result};
use super::keyserver::Keyserver;
use super::kt::{Head, Shared};

/// A verified log: the state and the exact entries this device verified it
/// from (its own copies, not the bytes a later fetch served).
#[derive(Clone)]
pub(crate) struct Known {
    pub(crate) user: VerifiedUser,
    pub(crate) entries: Vec<SignedStatement>,
}

pub(crate) struct Directory {
    root: SigningPublicKey,
    cache: Mutex<HashMap<String, Known>>,
    /// The key-transparency view, shared with the monitor: every other
    /// user's head accepted is checked in it (SECURITY.md §18.9).
    kt: Shared,
}

fn chain_err(user_id: &str, error: ChainError) -> ClientError {
    ClientError::Chain {
        user_id: user_id.to_owned(),
        error,
    }
}

impl Directory {
    pub(crate) fn new(root: SigningPublicKey, kt: Shared) -> Self {
        Self {
            root,
            cache: Mutex::new(HashMap::new()),
            kt,
        }
    }

    /// The key-transparency state this directory checks heads in.
    pub(crate) fn kt(&self) -> &Shared {
        &self.kt
    }

    fn memory(&self, user_id: &str) -> Option<Known> {
        self.cache.lock().ok()?.get(user_id).cloned()
    }

    /// Keeps `known` unless a longer verified log is already held (two
    /// concurrent refreshes: both verified, the longer one wins).
    fn remember(&self, user_id: &str, known: &Known) {
        if let Ok(mut cache) = self.cache.lock() {
            let keep_old = cache
                .get(user_id)
                .is_some_and(|old| old.user.len() > known.user.len());
            if !keep_old {
                cache.insert(user_id.to_owned(), known.clone());
            }
        }
    }

    /// The verified state held for `user_id` (memory, else the store), without
    /// asking the keyserver.
    pub(crate) async fn cached(&self, store: &StoreCell, user_id: &str) -> Result<Option<Known>> {
        if let Some(k) = self.memory(user_id) {
            return Ok(Some(k));
        }
        let uid = user_id.to_owned();
        let Some(raw) = store.run(move |s| s.verified_log(&uid)).await? else {
            return Ok(None);
        };
        let entries = raw
            .iter()
            .map(|b| decode_signed_statement(b))
            .collect::<core::result::Result<Vec<_>, _>>()
            .map_err(|e| chain_err(user_id, e))?;
        // Our own store verified it before storing; verifying again costs
        // little and catches a changed organisation root.
        let user = verify_log(&self.root, user_id, &entries).map_err(|e| chain_err(user_id, e))?;
        let known = Known { user, entries };
        self.remember(user_id, &known);
        Ok(Some(known))
    }

    /// The verified states of `user_ids`: held ones as they are, the others
    /// fetched and verified from the root but **not** persisted (a directory
    /// search shows many users this device may never write to; a log is
    /// pinned in the store once it is used, by [`Self::refresh`]).
    pub(crate) async fn verified_unpinned(
        &self,
        store: &StoreCell,
        keyserver: &Keyserver,
        user_ids: &[String],
    ) -> Result<HashMap<String, VerifiedUser>> {
        let mut out = HashMap::with_capacity(user_ids.len());
        let mut missing = Vec::new();
        for u in user_ids {
            if out.contains_key(u) || missing.contains(u) {
                continue;
            }
            match self.cached(store, u).await? {
                Some(k) => {
                    out.insert(u.clone(), k.user);
                }
                None => missing.push(u.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut served = keyserver.get_logs(missing.clone()).await?;
        for u in missing {
            let entries = served
                .remove(&u)
                .ok_or_else(|| ClientError::UnknownUser(u.clone()))?
                .entries;
            let user = verify_log(&self.root, &u, &entries).map_err(|e| chain_err(&u, e))?;
            out.insert(u, user);
        }
        Ok(out)
    }

    /// Fetches the logs of `user_ids` from the keyserver and verifies each
    /// one (from the root on first sight, as an extension of the cached
    /// state afterwards). Fails on the first user whose log does not verify.
    pub(crate) async fn refresh(
        &self,
        store: &StoreCell,
        keyserver: &Keyserver,
        user_ids: &[String],
    ) -> Result<Vec<Known>> {
        let mut cached = Vec::with_capacity(user_ids.len());
        for u in user_ids {
            cached.push(self.cached(store, u).await?);
        }
        let mut served = keyserver.get_logs(user_ids.to_vec()).await?;
        let mut out = Vec::with_capacity(user_ids.len());
        for (u, known) in user_ids.iter().zip(cached) {
            let entries = served.remove(u).map(|l| l.entries);
            let next = match (known, entries) {
                (Some(k), None) => {
                    return Err(chain_err(
                        u,
                        ChainError::Rollback {
                            known: k.user.len(),
                            served: 0,
                        },
                    ));
                }
                (None, None) => return Err(ClientError::UnknownUser(u.clone())),
                (Some(k), Some(served)) => {
                    let (user, suffix) = k
                        .user
                        .update_suffix(&self.root, &served)
                        .map_err(|e| chain_err(u, e))?;
                    let grew = !suffix.is_empty();
                    let mut entries = k.entries;
                    entries.extend_from_slice(suffix);
                    (Known { user, entries }, grew)
                }
                (None, Some(entries)) => {
                    let user = verify_log(&self.root, u, &entries).map_err(|e| chain_err(u, e))?;
                    (Known { user, entries }, true)
                }
            };
            let (mut known, changed) = next;
            // A new or longer head of another user must be in the
            // directory before it is kept (a refuted one fails the whole
            // operation, as a log that does not verify).
            if changed {
                known = self.in_directory(store, keyserver, u, known).await?;
            }
            if changed {
                let raw: Vec<Vec<u8>> = known.entries.iter().map(|e| e.encode_to_vec()).collect();
                let uid = u.clone();
                store.run(move |s| s.set_verified_log(&uid, &raw)).await?;
                tracing::debug!(user = %u, len = known.user.len(), "log verified");
            }
            if known.user.rotation_pending() {
                tracing::warn!(user = %u, "user is rotation pending: a revoked device may still read");
            }
            self.remember(u, &known);
            out.push(known);
        }
        Ok(out)
    }

    /// `known` (a new or longer verified log of `user_id`) checked in the
    /// key-transparency directory (SECURITY.md §18.9). A head superseded
    /// before any epoch published it is fetched again: the longer log,
    /// verified as an extension, is checked and returned instead. One that
    /// did not grow stays pending (the monitor's re-check decides).
    async fn in_directory(
        &self,
        store: &StoreCell,
        keyserver: &Keyserver,
        user_id: &str,
        mut known: Known,
    ) -> Result<Known> {
        // Fetched again once at most: a log that keeps growing between
        // checks is taken pending (as checked last) rather than chased.
        for attempt in 0..2 {
            let Some(last) = known.entries.last() else {
                return Ok(known);
            };
            let head = entry_hash(last);
            if self
                .kt
                .check_head(store, keyserver, user_id, known.user.len(), head)
                .await?
                == Head::Accepted
                || attempt == 1
            {
                return Ok(known);
            }
            let Ok(mut served) = keyserver.get_logs(vec![user_id.to_owned()]).await else {
                return Ok(known);
            };
            let Some(log) = served.remove(user_id) else {
                return Ok(known);
            };
            let (user, suffix) = known
                .user
                .update_suffix(&self.root, &log.entries)
                .map_err(|e| chain_err(user_id, e))?;
            if suffix.is_empty() {
                return Ok(known);
            }
            let mut entries = known.entries;
            entries.extend_from_slice(suffix);
            known = Known { user, entries };
        }
        Ok(known)
    }

    /// [`Self::refresh`], falling back to the verified states already held
    /// when the keyserver cannot be reached (offline sending). A log that
    /// fails verification never falls back.
    pub(crate) async fn refresh_or_cached(
        &self,
        store: &StoreCell,
        keyserver: &Keyserver,
        user_ids: &[String],
    ) -> Result<Vec<Known>> {
        match self.refresh(store, keyserver, user_ids).await {
            Err(e) if e.is_transient() => {
                let mut out = Vec::with_capacity(user_ids.len());
                for u in user_ids {
                    match self.cached(store, u).await? {
                        Some(k) => out.push(k),
                        None => return Err(e),
                    }
                }
                tracing::debug!("keyserver unreachable: using verified logs held");
                Ok(out)
            }
            other => other,
        }
    }
}
