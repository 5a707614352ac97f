//! Device authentication from presented user logs.
//!
//! The relay has no directory and shares no secret with the keyserver. A
//! device presents its own user log; the relay verifies it from the pinned
//! organisation root and keeps the longest verified log per user:
//!
//! * nothing stored: the presented log is verified and stored;
//! * presented longer than stored: it must extend the stored one
//!   (`VerifiedUser::update` refuses forks) and replaces it; devices it newly
//!   revokes are disconnected with `DEVICE_REVOKED`;
//! * presented no longer than stored: it must be a prefix of the stored log
//!   (else a fork: refused); the relay keeps and judges by its longer log, so
//!   an older client log never rolls the relay's state back. An empty
//!   presented log means "use the stored one".
//!
//! Stores are compare-and-swap on the stored length, retried on a race.
//!
//! Gap: a revocation signed by the root reaches the relay only when some
//! device of that user presents the newer log (at connection or with
//! `PublishLog`); until then the revoked device can still connect.

use tracing::{info, warn};
use ward_core::chain::{VerifiedUser, verify_log};
use ward_proto::v1::{ErrorCode, SignedStatement};

use crate::registry::CloseReason;
use crate::state::Shared;
use crate::storage::{self, Mailbox};

enum Decision {
    Keep(VerifiedUser),
    Replace {
        prev_len: u64,
        next: VerifiedUser,
        newly_revoked: Vec<[u8; 32]>,
    },
}

fn decide(
    root: &ward_core::keys::SigningPublicKey,
    user_id: &str,
    stored: Option<Vec<SignedStatement>>,
    presented: &[SignedStatement],
) -> Result<Decision, ErrorCode> {
    // Stored logs were verified before being stored; re-verifying keeps the
    // relay from trusting its own disk blindly. One that no longer verifies
    // (tampered with, or the configured root changed) is treated as absent:
    // the presented log must then verify on its own, and replaces it.
    let mut stored_len = 0u64;
    let stored = match stored {
        None => None,
        Some(entries) => {
            stored_len = entries.len() as u64;
            match verify_log(root, user_id, &entries) {
                Ok(known) => Some((known, entries)),
                Err(e) => {
                    warn!(user = user_id, error = %e, "stored log no longer verifies; ignoring it");
                    None
                }
            }
        }
    };
    match stored {
        None => {
            if presented.is_empty() {
                return Err(ErrorCode::UnknownUser);
            }
            let next = verify_log(root, user_id, presented).map_err(|e| {
                info!(user = user_id, error = %e, "presented log refused");
                ErrorCode::InvalidStatement
            })?;
            let newly_revoked = revoked_since(&next, 0);
            Ok(Decision::Replace {
                prev_len: stored_len,
                next,
                newly_revoked,
            })
        }
        Some((known, _)) if presented.len() as u64 > known.len() => {
            let next = known.update(root, presented).map_err(|e| {
                warn!(user = user_id, error = %e, "presented log does not extend the stored one");
                ErrorCode::InvalidStatement
            })?;
            let newly_revoked = revoked_since(&next, known.len());
            Ok(Decision::Replace {
                prev_len: known.len(),
                next,
                newly_revoked,
            })
        }
        Some((known, entries)) => {
            // Every presented entry must be the stored one, statement for
            // statement (comparing the last hash alone would let earlier
            // entries be anything).
            let is_prefix = presented
                .iter()
                .zip(&entries)
                .all(|(p, s)| p.statement == s.statement);
            if !is_prefix {
                warn!(user = user_id, "presented log forks from the stored one");
                return Err(ErrorCode::InvalidStatement);
            }
            Ok(Decision::Keep(known))
        }
    }
}

fn revoked_since(user: &VerifiedUser, since: u64) -> Vec<[u8; 32]> {
    user.devices()
        .filter(|d| d.revoked_at.is_some_and(|at| at >= since))
        .map(|d| *d.signing_key.as_bytes())
        .collect()
}

/// Verifies `presented` against the stored log of `user_id`, stores it if
/// longer, disconnects devices it revokes, and returns the relay's current
/// view of the user.
pub async fn refresh(
    shared: &Shared,
    user_id: &str,
    presented: Vec<SignedStatement>,
) -> Result<VerifiedUser, ErrorCode> {
    let presented = std::sync::Arc::new(presented);
    for _ in 0..4 {
        let root = shared.config.org_root;
        let user = user_id.to_owned();
        let log = presented.clone();
        let decision = shared
            .read(move |conn| {
                let stored = storage::load_log(conn, &user)?;
                Ok(decide(&root, &user, stored, &log))
            })
            .await
            .map_err(|e| {
                warn!(error = %e, "reading a stored log failed");
                ErrorCode::Internal
            })??;
        match decision {
            Decision::Keep(user) => return Ok(user),
            Decision::Replace {
                prev_len,
                next,
                newly_revoked,
            } => {
                let stored = shared
                    .writer
                    .store_log(user_id.to_owned(), prev_len, presented.to_vec())
                    .await
                    .map_err(|e| {
                        warn!(error = %e, "storing a log failed");
                        ErrorCode::Internal
                    })?;
                if !stored {
                    continue; // another connection stored a log first: decide again
                }
                info!(user = user_id, len = next.len(), "user log updated");
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
                return Ok(next);
            }
        }
    }
    Err(ErrorCode::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::testkit::Org;

    #[test]
    fn decisions() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let bob = org.enroll(&mut rng, "bob");
        let other = Org::new(&mut rng);
        let bob_elsewhere = other.enroll(&mut rng, "bob");

        // Nothing stored: the presented log is stored.
        assert!(matches!(
            decide(&root, "bob", None, &bob.log),
            Ok(Decision::Replace { prev_len: 0, .. })
        ));
        assert!(matches!(
            decide(&root, "bob", None, &[]),
            Err(ErrorCode::UnknownUser)
        ));
        assert!(matches!(
            decide(&root, "bob", None, &bob_elsewhere.log),
            Err(ErrorCode::InvalidStatement)
        ));
        assert!(matches!(
            decide(&root, "alice", None, &bob.log),
            Err(ErrorCode::InvalidStatement)
        ));
        // Same log, or nothing presented: keep the stored one.
        assert!(matches!(
            decide(&root, "bob", Some(bob.log.clone()), &bob.log),
            Ok(Decision::Keep(_))
        ));
        assert!(matches!(
            decide(&root, "bob", Some(bob.log.clone()), &[]),
            Ok(Decision::Keep(_))
        ));
        // Another log of the same length: a fork.
        let bob2 = org.enroll(&mut rng, "bob");
        assert!(matches!(
            decide(&root, "bob", Some(bob.log.clone()), &bob2.log),
            Err(ErrorCode::InvalidStatement)
        ));
        // A stored log that no longer verifies (another root) is replaced.
        assert!(matches!(
            decide(&root, "bob", Some(bob_elsewhere.log.clone()), &bob.log),
            Ok(Decision::Replace { prev_len: 1, .. })
        ));
    }
}
