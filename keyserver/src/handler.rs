//! Request to response. [`check_request`] is pure (shape, limits, who may
//! ask what); [`handle`] runs the accepted request against storage.

use std::sync::Arc;

use ward_core::chain::MAX_STATEMENT_BYTES;
use ward_core::ids::valid_user_id;
use ward_core::keys::SigningPublicKey;
use ward_proto::Message;
use ward_proto::v1::{
    Appended, ErrorCode, KsRequest, KsResponse, Logs, Stored, ks_request, ks_response,
};

use crate::config::{Clock, KsLimits};
use crate::directory::{self, Change, Kind};
use crate::error::RequestError;
use crate::search;
use crate::storage::{self, Db};

/// Who is on the other end of a connection, after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user the device claimed (and signed for).
    pub user_id: String,
    /// The device's signing key, proven in the handshake.
    pub device: SigningPublicKey,
    /// Whether the device is in the directory. A device whose user does
    /// not exist yet may only append its own user creation.
    pub enrolled: bool,
}

/// What the server needs to know besides the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The reply.
    pub response: KsResponse,
    /// A device revoked by this request: its connections must close.
    pub revoked: Option<(String, SigningPublicKey)>,
    /// The session's device was just enrolled.
    pub enrolled: bool,
}

/// What [`handle`] needs.
pub struct Ctx {
    /// The database.
    pub db: Arc<Db>,
    /// The pinned organisation root.
    pub root: SigningPublicKey,
    /// The server clock.
    pub clock: Clock,
    /// Limits.
    pub limits: KsLimits,
    /// Per-device directory search budgets.
    pub search: search::Limiter,
    /// The key-transparency directory (SECURITY.md §18.4).
    pub kt: Arc<crate::transparency::Directory>,
}

const RESOURCE_ID_BYTES: usize = 16;
/// Wrapped keys and grants name keys by their 32-byte ids (SECURITY.md §5).
const KEY_BYTES: usize = ward_core::wrap::KEY_ID_BYTES;
const SIGNATURE_BYTES: usize = 64;
const ENC_BYTES: usize = ward_core::wrap::ENC_BYTES;
const WRAPPED_CIPHERTEXT_BYTES: usize = ward_core::wrap::CIPHERTEXT_BYTES;

fn count_ok(n: usize, max: usize, what: &str) -> Result<(), RequestError> {
    if n == 0 {
        return Err(RequestError::malformed(format!("no {what}")));
    }
    if n > max {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!("{n} {what}, at most {max} per request"),
        ));
    }
    Ok(())
}

fn len_ok(bytes: &[u8], len: usize, what: &str) -> Result<(), RequestError> {
    if bytes.len() == len {
        Ok(())
    } else {
        Err(RequestError::malformed(format!(
            "{what}: {} bytes, expected {len}",
            bytes.len()
        )))
    }
}

/// Checks a request's shape, its size against the limits, and that this
/// session may make it. Pure: no storage, no clock.
pub fn check_request(
    limits: &KsLimits,
    session: &Session,
    req: &KsRequest,
) -> Result<(), RequestError> {
    use ks_request::Body;
    let body = req
        .body
        .as_ref()
        .ok_or_else(|| RequestError::malformed("request without body"))?;
    if !session.enrolled && !matches!(body, Body::Append(_)) {
        return Err(RequestError::new(
            ErrorCode::Unauthenticated,
            "device not enrolled: only its own user creation is accepted",
        ));
    }
    let max = limits.max_items_per_request;
    match body {
        Body::Append(entry) => {
            if entry.statement.len() > MAX_STATEMENT_BYTES {
                return Err(RequestError::new(
                    ErrorCode::TooLarge,
                    "statement too large",
                ));
            }
            len_ok(&entry.signature, SIGNATURE_BYTES, "signature")?;
            let routing = directory::route(entry)?;
            if routing.kind == Kind::UserCreation {
                // A device enrolls itself, never another device.
                let own = routing.user_id == session.user_id
                    && routing.created_device.as_deref() == Some(session.device.as_bytes());
                if !own {
                    return Err(RequestError::forbidden(
                        "a user creation must name the authenticated device and user",
                    ));
                }
            } else if !session.enrolled {
                return Err(RequestError::new(
                    ErrorCode::Unauthenticated,
                    "device not enrolled: only its own user creation is accepted",
                ));
            }
        }
        Body::GetLogs(g) => {
            count_ok(g.user_ids.len(), max, "user ids")?;
            if !g.user_ids.iter().all(|u| valid_user_id(u)) {
                return Err(RequestError::malformed("invalid user id"));
            }
        }
        Body::PutKeys(p) => {
            count_ok(p.keys.len(), max, "wrapped keys")?;
            for (i, k) in p.keys.iter().enumerate() {
                if !valid_user_id(&k.recipient_user_id) {
                    return Err(RequestError::malformed(format!(
                        "entry {i}: invalid recipient user id"
                    )));
                }
                let w = k
                    .key
                    .as_ref()
                    .ok_or_else(|| RequestError::malformed(format!("entry {i}: missing key")))?;
                len_ok(&w.resource_id, RESOURCE_ID_BYTES, "resource id")?;
                len_ok(&w.recipient_key, KEY_BYTES, "recipient key")?;
                len_ok(&w.enc, ENC_BYTES, "enc")?;
                len_ok(&w.ciphertext, WRAPPED_CIPHERTEXT_BYTES, "ciphertext")?;
            }
        }
        Body::GetKeys(g) => {
            count_ok(g.resource_ids.len(), max, "resource ids")?;
            for rid in &g.resource_ids {
                len_ok(rid, RESOURCE_ID_BYTES, "resource id")?;
            }
        }
        Body::PutGrants(p) => {
            count_ok(p.grants.len(), max, "grants")?;
            for g in &p.grants {
                len_ok(&g.user_key, KEY_BYTES, "user key")?;
                len_ok(&g.device_key, KEY_BYTES, "device key")?;
                len_ok(&g.enc, ENC_BYTES, "enc")?;
                len_ok(&g.ciphertext, WRAPPED_CIPHERTEXT_BYTES, "ciphertext")?;
            }
        }
        Body::GetGrant(g) => {
            if !g.user_key.is_empty() {
                len_ok(&g.user_key, KEY_BYTES, "user key")?;
            }
        }
        Body::SearchDirectory(s) => {
            search::Query::parse(s)?;
        }
        Body::AdminSubmit(_) => return Err(admin_only()),
        // Checked by the directory (shared with the public path).
        Body::GetEpoch(_) | Body::GetInclusion(_) | Body::GetLeaves(_) => {}
        room if crate::rooms::is_room_request(room) => crate::rooms::check(limits, room)?,
        _ => return Err(RequestError::malformed("unknown request")),
    }
    Ok(())
}

/// An error reply.
pub fn error_response(request_id: u64, e: &RequestError) -> KsResponse {
    KsResponse {
        request_id,
        body: Some(ks_response::Body::Error(e.to_proto())),
    }
}

/// Serves one request. Never fails: a refusal is a typed error reply.
pub async fn handle(ctx: &Ctx, session: &Session, req: KsRequest) -> Outcome {
    let request_id = req.request_id;
    let mut outcome = Outcome {
        response: KsResponse {
            request_id,
            body: None,
        },
        revoked: None,
        enrolled: false,
    };
    let result = run(ctx, session, req, &mut outcome).await;
    outcome.response = match result {
        Ok(body) => KsResponse {
            request_id,
            body: Some(body),
        },
        Err(e) => {
            tracing::debug!(user = %session.user_id, code = ?e.code, detail = %e.detail, "request refused");
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
    session: &Session,
    req: KsRequest,
    outcome: &mut Outcome,
) -> Result<ks_response::Body, RequestError> {
    use ks_request::Body;
    // A device enrolled by another connection since this one authenticated.
    let upgraded;
    let session = if !session.enrolled {
        let (user, device) = (session.user_id.clone(), session.device);
        let status = ctx
            .db
            .call(move |c| storage::device_status(c, &user, &device).map_err(RequestError::from))
            .await?;
        if status == storage::DeviceStatus::Active {
            outcome.enrolled = true;
            upgraded = Session {
                enrolled: true,
                ..session.clone()
            };
            &upgraded
        } else {
            session
        }
    } else {
        session
    };
    check_request(&ctx.limits, session, &req)?;
    let Some(body) = req.body else {
        return Err(RequestError::malformed("request without body"));
    };
    let user = session.user_id.clone();
    let device = session.device;
    let now = ctx.clock.now();
    let quotas = ctx.limits.quotas;
    match body {
        Body::Append(entry) => {
            let root = ctx.root;
            let db = Arc::clone(&ctx.db);
            let appended = ctx
                .db
                .call(move |c| storage::append_with(c, &db.verified, &root, now, &entry))
                .await?;
            if !session.enrolled && appended.user_id == session.user_id {
                outcome.enrolled = true;
            }
            if let Some(Change::DeviceRevoked { device, .. }) = &appended.change {
                outcome.revoked = Some((appended.user_id.clone(), *device));
            }
            tracing::info!(
                user = %appended.user_id,
                seq = appended.seq,
                change = ?appended.change.as_ref().map(|c| match c {
                    Change::DeviceAdded(_) => "device added",
                    Change::DeviceRevoked { .. } => "device revoked",
                    Change::KeyRotated { .. } => "user key rotated",
                }),
                "log entry accepted"
            );
            Ok(ks_response::Body::Appended(Appended { seq: appended.seq }))
        }
        Body::GetLogs(g) => {
            let max_bytes = ctx.limits.net.max_frame_bytes;
            let logs = ctx
                .db
                .call(move |c| storage::get_logs(c, &user, &device, &g.user_ids, max_bytes))
                .await?;
            Ok(ks_response::Body::Logs(Logs {
                logs: logs.into_iter().collect(),
            }))
        }
        Body::PutKeys(p) => {
            let count = ctx
                .db
                .call(move |c| storage::put_wrapped_keys(c, &user, &device, now, &quotas, &p.keys))
                .await?;
            Ok(ks_response::Body::Stored(Stored { count }))
        }
        Body::GetKeys(g) => {
            let (keys, rows) = ctx
                .db
                .call(move |c| storage::get_wrapped_keys(c, &user, &device, now, &g.resource_ids))
                .await?;
            // Logged before served: the records are committed first.
            ctx.db.access.record(rows).await?;
            Ok(ks_response::Body::Keys(keys))
        }
        Body::PutGrants(p) => {
            let count = ctx
                .db
                .call(move |c| storage::put_grants(c, &user, &device, now, &quotas, &p.grants))
                .await?;
            Ok(ks_response::Body::Stored(Stored { count }))
        }
        Body::GetGrant(g) => {
            let (grant, row) = ctx
                .db
                .call(move |c| storage::get_grant(c, &user, &device, now, &g.user_key))
                .await?;
            ctx.db.access.record(vec![row]).await?;
            Ok(ks_response::Body::Grant(grant))
        }
        Body::SearchDirectory(s) => {
            // Its own budget, on top of the general one (SECURITY.md §10.9).
            if !ctx.search.allow(&device) {
                return Err(RequestError::new(
                    ErrorCode::RateLimited,
                    "too many directory searches: slow down",
                ));
            }
            let q = search::Query::parse(&s)?;
            let page = ctx
                .db
                .call(move |c| search::search(c, &user, &device, &q))
                .await?;
            Ok(ks_response::Body::DirectoryPage(page))
        }
        // Refused by `check_request` already.
        Body::AdminSubmit(_) => Err(admin_only()),
        Body::GetEpoch(g) => kt(ctx, crate::transparency::Query::Epoch(g)).await,
        Body::GetInclusion(g) => kt(ctx, crate::transparency::Query::Inclusion(g)).await,
        Body::GetLeaves(g) => kt(ctx, crate::transparency::Query::Leaves(g)).await,
        room => crate::rooms::run(ctx, user, device, now, room).await,
    }
}

/// A key-transparency request on a device session (SECURITY.md §18.4).
async fn kt(ctx: &Ctx, q: crate::transparency::Query) -> Result<ks_response::Body, RequestError> {
    use crate::transparency::Answer;
    Ok(match ctx.kt.answer(&ctx.db, q).await? {
        Answer::Epoch(p) => ks_response::Body::EpochProof(p),
        Answer::Inclusion(p) => ks_response::Body::InclusionProof(p),
        Answer::Leaves(l) => ks_response::Body::Leaves(l),
    })
}

/// A device session sent a root session's request (SECURITY.md §10.7).
fn admin_only() -> RequestError {
    RequestError::forbidden(
        "admin_submit is for root sessions only (a device relays a root-signed entry with append)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::keys::DeviceSigningKey;
    use ward_proto::v1::{GetWrappedKeys, PutWrappedKeys, WrappedKey, WrappedKeyFor};

    fn session(enrolled: bool) -> Session {
        Session {
            user_id: "a".into(),
            device: DeviceSigningKey::generate(&mut rand::rng()).public_key(),
            enrolled,
        }
    }

    fn req(body: ks_request::Body) -> KsRequest {
        KsRequest {
            request_id: 7,
            body: Some(body),
        }
    }

    #[test]
    fn shapes_and_limits_are_checked_before_storage() {
        let limits = KsLimits {
            max_items_per_request: 2,
            ..KsLimits::default()
        };
        let s = session(true);
        let code = |r: &KsRequest| check_request(&limits, &s, r).unwrap_err().code;
        assert_eq!(
            code(&KsRequest {
                request_id: 1,
                body: None
            }),
            ErrorCode::Malformed
        );
        let get = |n: usize, len: usize| {
            req(ks_request::Body::GetKeys(GetWrappedKeys {
                resource_ids: vec![vec![0; len]; n],
            }))
        };
        assert!(check_request(&limits, &s, &get(2, 16)).is_ok());
        assert_eq!(code(&get(3, 16)), ErrorCode::TooLarge);
        assert_eq!(code(&get(0, 16)), ErrorCode::Malformed);
        assert_eq!(code(&get(1, 15)), ErrorCode::Malformed);
        let put = |ct: usize| {
            req(ks_request::Body::PutKeys(PutWrappedKeys {
                keys: vec![WrappedKeyFor {
                    recipient_user_id: "b".into(),
                    key: Some(WrappedKey {
                        resource_id: vec![1; 16],
                        recipient_key: vec![2; 32],
                        enc: vec![3; ENC_BYTES],
                        ciphertext: vec![4; ct],
                    }),
                }],
            }))
        };
        assert!(check_request(&limits, &s, &put(48)).is_ok());
        assert_eq!(code(&put(47)), ErrorCode::Malformed);
    }

    #[test]
    fn an_unenrolled_device_may_only_enroll_itself() {
        let limits = KsLimits::default();
        let s = session(false);
        let get = req(ks_request::Body::GetKeys(GetWrappedKeys {
            resource_ids: vec![vec![0; 16]],
        }));
        assert_eq!(
            check_request(&limits, &s, &get).unwrap_err().code,
            ErrorCode::Unauthenticated
        );
        // Someone else's creation, even a valid one, is refused.
        let mut rng = rand::rng();
        let org = ward_core::testkit::Org::new(&mut rng);
        let a = org.enroll(&mut rng, "a");
        let append = req(ks_request::Body::Append(a.log[0].clone()));
        assert_eq!(
            check_request(&limits, &s, &append).unwrap_err().code,
            ErrorCode::Forbidden
        );
        let own = Session {
            user_id: "a".into(),
            device: a.device.public_key(),
            enrolled: false,
        };
        assert!(check_request(&limits, &own, &append).is_ok());
    }

    #[test]
    fn random_requests_never_panic() {
        use rand::{Rng, RngExt};
        use ward_proto::decode_bounded;
        let mut rng = rand::rng();
        let limits = KsLimits::default();
        for enrolled in [false, true] {
            let s = session(enrolled);
            for _ in 0..5000 {
                let len = rng.random_range(0..300);
                let mut bytes = vec![0u8; len];
                rng.fill_bytes(&mut bytes);
                if let Ok(r) = decode_bounded::<KsRequest>(&bytes, 1 << 20) {
                    let _ = check_request(&limits, &s, &r);
                }
                let entry = ward_proto::v1::SignedStatement {
                    statement: bytes,
                    signature: vec![0; 64],
                };
                let _ = directory::route(&entry);
            }
        }
    }
}
