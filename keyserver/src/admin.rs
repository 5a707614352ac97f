//! Root sessions: the organisation's admin, holding the root key offline,
//! submits root-signed entries with no clinician's device (SECURITY.md §10.7).
//!
//! A root session is a normal handshake (§8) whose `device_id` is the pinned
//! organisation root and whose `user_id` is [`ADMIN_USER_ID`]: the root signs
//! the auth transcript, which its label (`ward/v2/sig/auth`) keeps apart from
//! everything else the root signs (invites, statements). The root can never
//! be a device of any user (§4.4, `KeyInUse`), so such a handshake can never
//! be mistaken for a device's. A root session may only read logs
//! ([`GetLogs`](ward_proto::v1::GetLogs), the public directory, which it needs
//! to build the next entry) and submit entries ([`AdminSubmit`]) whose
//! `author` is the root; each is still verified against the user's log like
//! any append (§10.2), so the session adds no authority of its own: a
//! revocation stays valid only because the root signed it.

use std::collections::BTreeMap;
use std::sync::Arc;

use ward_core::chain::MAX_STATEMENT_BYTES;
use ward_core::keys::SigningPublicKey;
use ward_proto::v1::{
    AdminSubmit, Appended, ErrorCode, KsRequest, KsResponse, Logs, Statement, ks_request,
    ks_response,
};
use ward_proto::{Message as _, decode_bounded};

use crate::directory::Change;
use crate::error::RequestError;
use crate::handler::{Ctx, Outcome, error_response};
use crate::storage;

/// The `user_id` a root session signs for (any other one with the root's
/// key is refused `UNAUTHENTICATED`).
pub const ADMIN_USER_ID: &str = "ward-admin";

/// What a handshake by `device` for `user_id` is, before the directory is
/// read: `Ok(true)` for a root session, `Ok(false)` for a device (looked up
/// as usual), `Err` for the root key under another user id.
pub fn is_root_session(
    root: &SigningPublicKey,
    user_id: &str,
    device: &SigningPublicKey,
) -> Result<bool, ErrorCode> {
    if device != root {
        return Ok(false);
    }
    if user_id == ADMIN_USER_ID {
        Ok(true)
    } else {
        Err(ErrorCode::Unauthenticated)
    }
}

/// Checks an `AdminSubmit`'s shape and that the root authored it. Pure.
pub fn check_submit(root: &SigningPublicKey, submit: &AdminSubmit) -> Result<(), RequestError> {
    let entry = submit
        .entry
        .as_ref()
        .ok_or_else(|| RequestError::malformed("admin submission without entry"))?;
    if entry.statement.len() > MAX_STATEMENT_BYTES {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            "statement too large",
        ));
    }
    if entry.signature.len() != 64 {
        return Err(RequestError::malformed(format!(
            "signature: {} bytes, expected 64",
            entry.signature.len()
        )));
    }
    let st: Statement = decode_bounded(&entry.statement, MAX_STATEMENT_BYTES)
        .map_err(|e| RequestError::new(ErrorCode::InvalidStatement, e.to_string()))?;
    if st.author.as_slice() != root.as_bytes().as_slice() {
        return Err(RequestError::forbidden(
            "an admin submission must be authored by this organisation's root",
        ));
    }
    Ok(())
}

/// Serves one request of a root session. Never fails: a refusal is a typed
/// error reply.
pub async fn handle(ctx: &Ctx, req: KsRequest) -> Outcome {
    let request_id = req.request_id;
    let mut outcome = Outcome {
        response: KsResponse {
            request_id,
            body: None,
        },
        revoked: None,
        enrolled: false,
    };
    outcome.response = match run(ctx, req, &mut outcome).await {
        Ok(body) => KsResponse {
            request_id,
            body: Some(body),
        },
        Err(e) => {
            tracing::info!(code = ?e.code, detail = %e.detail, "admin request refused");
            error_response(request_id, &e)
        }
    };
    if outcome.response.encoded_len() > ctx.limits.net.max_frame_bytes {
        outcome.response = error_response(
            request_id,
            &RequestError::new(ErrorCode::TooLarge, "reply too large: ask for fewer items"),
        );
    }
    outcome
}

async fn run(
    ctx: &Ctx,
    req: KsRequest,
    outcome: &mut Outcome,
) -> Result<ks_response::Body, RequestError> {
    use ks_request::Body;
    match req.body {
        None => Err(RequestError::malformed("request without body")),
        Some(Body::AdminSubmit(submit)) => {
            check_submit(&ctx.root, &submit)?;
            let Some(entry) = submit.entry else {
                return Err(RequestError::malformed("admin submission without entry"));
            };
            let (root, now) = (ctx.root, ctx.clock.now());
            let db = Arc::clone(&ctx.db);
            let appended = ctx
                .db
                .call(move |c| storage::append_with(c, &db.verified, &root, now, &entry))
                .await?;
            if let Some(Change::DeviceRevoked { device, .. }) = &appended.change {
                outcome.revoked = Some((appended.user_id.clone(), *device));
            }
            tracing::info!(
                user = %appended.user_id,
                seq = appended.seq,
                replay = appended.change.is_none(),
                "root-signed entry accepted from a root session"
            );
            Ok(ks_response::Body::Appended(Appended { seq: appended.seq }))
        }
        Some(Body::GetLogs(g)) => {
            let max = ctx.limits.max_items_per_request;
            if g.user_ids.is_empty() || g.user_ids.len() > max {
                return Err(RequestError::new(
                    ErrorCode::TooLarge,
                    format!("1..={max} user ids per request"),
                ));
            }
            if !g.user_ids.iter().all(|u| ward_core::ids::valid_user_id(u)) {
                return Err(RequestError::malformed("invalid user id"));
            }
            let max_bytes = ctx.limits.net.max_frame_bytes;
            let logs = ctx
                .db
                .call(move |c| {
                    let tx = c.transaction()?;
                    let mut out = BTreeMap::new();
                    let mut total = 0usize;
                    for id in &g.user_ids {
                        if out.contains_key(id) {
                            continue;
                        }
                        let entries = storage::load_log(&tx, id)?;
                        total = entries
                            .iter()
                            .fold(total, |t, e| t.saturating_add(e.encoded_len()));
                        if total > max_bytes {
                            return Err(RequestError::new(
                                ErrorCode::TooLarge,
                                "logs too large for one reply: ask for fewer users",
                            ));
                        }
                        if !entries.is_empty() {
                            out.insert(id.clone(), ward_proto::v1::UserLog { entries });
                        }
                    }
                    Ok(out)
                })
                .await?;
            Ok(ks_response::Body::Logs(Logs {
                logs: logs.into_iter().collect(),
            }))
        }
        Some(_) => Err(RequestError::forbidden(
            "a root session may only read logs and submit root-signed entries",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ward_core::keys::{DeviceSigningKey, OrgRootKey};
    use ward_core::testkit::Org;

    #[test]
    fn only_the_root_under_the_admin_id_opens_a_root_session() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng).public_key();
        let dev = DeviceSigningKey::generate(&mut rng).public_key();
        assert_eq!(is_root_session(&root, ADMIN_USER_ID, &root), Ok(true));
        assert_eq!(is_root_session(&root, ADMIN_USER_ID, &dev), Ok(false));
        assert_eq!(
            is_root_session(&root, "alice", &root),
            Err(ErrorCode::Unauthenticated)
        );
    }

    #[test]
    fn submissions_must_be_root_authored() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let a = org.enroll(&mut rng, "a");
        let by_root = a
            .chain
            .revoke_device_as_root(&org.root, &a.device.public_key(), 1);
        let ok = AdminSubmit {
            entry: Some(by_root.clone()),
        };
        assert!(check_submit(&org.root_public(), &ok).is_ok());
        // Another organisation's root, and a device's own entry.
        let other = Org::new(&mut rng);
        assert_eq!(
            check_submit(&other.root_public(), &ok).unwrap_err().code,
            ErrorCode::Forbidden
        );
        let creation = AdminSubmit {
            entry: Some(a.log[0].clone()),
        };
        assert_eq!(
            check_submit(&org.root_public(), &creation)
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            check_submit(&org.root_public(), &AdminSubmit { entry: None })
                .unwrap_err()
                .code,
            ErrorCode::Malformed
        );
        let mut short = by_root;
        short.signature.pop();
        assert_eq!(
            check_submit(&org.root_public(), &AdminSubmit { entry: Some(short) })
                .unwrap_err()
                .code,
            ErrorCode::Malformed
        );
    }
}
