//! The room requests (`KsRequest` fields 10..=15, SECURITY.md §17.11): their
//! shape and limits ([`check`], pure) and how each is served ([`run`]); the
//! queries are in [`crate::room_storage`].

use std::sync::Arc;

use ward_core::ids::valid_user_id;
use ward_core::keys::SigningPublicKey;
use ward_core::room::{MAX_ROOM_MEMBERS, MAX_SIGNED_ROOM_STATEMENT_BYTES};
use ward_core::wrap::{CIPHERTEXT_BYTES, ENC_BYTES, KEY_ID_BYTES};
use ward_proto::v1::{ErrorCode, RoomList, Stored, ks_request::Body, ks_response};

use crate::config::KsLimits;
use crate::error::RequestError;
use crate::handler::Ctx;
use crate::room_storage;

/// Most entries in one `AppendRoom` (also the decode cap, `proto/src/caps.rs`).
pub const MAX_ENTRIES_PER_APPEND: usize = 16;
/// Most wraps in one `AppendRoom`: one epoch for a full room.
pub const MAX_WRAPS_PER_APPEND: usize = MAX_ROOM_MEMBERS;

const ROOM_ID_BYTES: usize = 32;
const RESOURCE_ID_BYTES: usize = 16;
const SIGNATURE_BYTES: usize = 64;

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

fn too_many(n: usize, max: usize, what: &str) -> Result<(), RequestError> {
    if n > max {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!("{n} {what}, at most {max} per request"),
        ));
    }
    Ok(())
}

/// Whether `body` is a room request.
pub fn is_room_request(body: &Body) -> bool {
    matches!(
        body,
        Body::AppendRoom(_)
            | Body::GetRoomLog(_)
            | Body::GetRoomWraps(_)
            | Body::PutRoomKey(_)
            | Body::GetRoomKeys(_)
            | Body::ListRooms(_)
    )
}

/// Shape and limits of a room request (the session is enrolled already).
pub fn check(limits: &KsLimits, body: &Body) -> Result<(), RequestError> {
    match body {
        Body::AppendRoom(a) => {
            len_ok(&a.room_id, ROOM_ID_BYTES, "room id")?;
            if a.entries.is_empty() && a.wraps.is_empty() {
                return Err(RequestError::malformed("no entries and no wraps"));
            }
            too_many(a.entries.len(), MAX_ENTRIES_PER_APPEND, "room entries")?;
            too_many(a.wraps.len(), MAX_WRAPS_PER_APPEND, "room wraps")?;
            for e in &a.entries {
                if e.statement.len() + e.signature.len() > MAX_SIGNED_ROOM_STATEMENT_BYTES {
                    return Err(RequestError::new(
                        ErrorCode::TooLarge,
                        "room statement too large",
                    ));
                }
                len_ok(&e.signature, SIGNATURE_BYTES, "signature")?;
            }
            for (i, w) in a.wraps.iter().enumerate() {
                if !valid_user_id(&w.recipient_user_id) {
                    return Err(RequestError::malformed(format!(
                        "wrap {i}: recipient user id"
                    )));
                }
                let wrap = w
                    .wrap
                    .as_ref()
                    .ok_or_else(|| RequestError::malformed(format!("wrap {i}: missing")))?;
                len_ok(&wrap.room_id, ROOM_ID_BYTES, "wrap room id")?;
                len_ok(&wrap.epoch_key, KEY_ID_BYTES, "wrap epoch key")?;
                len_ok(&wrap.recipient_key, KEY_ID_BYTES, "wrap recipient key")?;
                len_ok(&wrap.enc, ENC_BYTES, "wrap enc")?;
                len_ok(&wrap.ciphertext, CIPHERTEXT_BYTES, "wrap ciphertext")?;
            }
        }
        Body::GetRoomLog(g) => len_ok(&g.room_id, ROOM_ID_BYTES, "room id")?,
        Body::GetRoomWraps(g) => len_ok(&g.room_id, ROOM_ID_BYTES, "room id")?,
        Body::PutRoomKey(p) => {
            len_ok(&p.room_id, ROOM_ID_BYTES, "room id")?;
            let k = p
                .key
                .as_ref()
                .ok_or_else(|| RequestError::malformed("missing key"))?;
            len_ok(&k.resource_id, RESOURCE_ID_BYTES, "resource id")?;
            len_ok(&k.recipient_key, KEY_ID_BYTES, "recipient key")?;
            len_ok(&k.enc, ENC_BYTES, "enc")?;
            len_ok(&k.ciphertext, CIPHERTEXT_BYTES, "ciphertext")?;
        }
        Body::GetRoomKeys(g) => {
            len_ok(&g.room_id, ROOM_ID_BYTES, "room id")?;
            if g.resource_ids.is_empty() {
                return Err(RequestError::malformed("no resource ids"));
            }
            too_many(
                g.resource_ids.len(),
                limits.max_items_per_request,
                "resource ids",
            )?;
            for rid in &g.resource_ids {
                len_ok(rid, RESOURCE_ID_BYTES, "resource id")?;
            }
        }
        Body::ListRooms(_) => {}
        _ => return Err(RequestError::malformed("not a room request")),
    }
    Ok(())
}

/// Serves a room request checked by [`check`].
pub async fn run(
    ctx: &Ctx,
    user: String,
    device: SigningPublicKey,
    now: u64,
    body: Body,
) -> Result<ks_response::Body, RequestError> {
    let quotas = ctx.limits.quotas;
    // Room logs and wrap lists are paged to fit a reply, with room to spare
    // for the framing around the entries.
    let max_bytes = ctx.limits.net.max_frame_bytes.saturating_sub(4096);
    match body {
        Body::AppendRoom(a) => {
            let root = ctx.root;
            let db = Arc::clone(&ctx.db);
            let appended = ctx
                .db
                .call(move |c| {
                    room_storage::append_room(
                        c,
                        &db.rooms,
                        &db.verified,
                        &root,
                        now,
                        &user,
                        &device,
                        &a,
                    )
                })
                .await?;
            tracing::info!(
                len = appended.len,
                wraps = appended.wraps,
                "room request accepted"
            );
            Ok(ks_response::Body::RoomAppended(appended))
        }
        Body::GetRoomLog(g) => {
            let page = ctx
                .db
                .call(move |c| {
                    room_storage::get_room_log(c, &user, &device, &g.room_id, g.from_seq, max_bytes)
                })
                .await?;
            Ok(ks_response::Body::RoomLog(page))
        }
        Body::GetRoomWraps(g) => {
            let (wraps, rows) = ctx
                .db
                .call(move |c| {
                    room_storage::get_room_wraps(c, &user, &device, now, &g.room_id, g.from_epoch)
                })
                .await?;
            // Logged before served, as every key read (§10.3).
            ctx.db.access.record(rows).await?;
            Ok(ks_response::Body::RoomWraps(wraps))
        }
        Body::PutRoomKey(p) => {
            let key = p
                .key
                .ok_or_else(|| RequestError::malformed("missing key"))?;
            let count = ctx
                .db
                .call(move |c| {
                    room_storage::put_room_key(
                        c, &user, &device, now, &quotas, &p.room_id, p.epoch, &key,
                    )
                })
                .await?;
            Ok(ks_response::Body::Stored(Stored { count }))
        }
        Body::GetRoomKeys(g) => {
            let (keys, rows) = ctx
                .db
                .call(move |c| {
                    room_storage::get_room_keys(c, &user, &device, now, &g.room_id, &g.resource_ids)
                })
                .await?;
            ctx.db.access.record(rows).await?;
            Ok(ks_response::Body::Keys(keys))
        }
        Body::ListRooms(_) => {
            let rooms = ctx
                .db
                .call(move |c| room_storage::list_rooms(c, &user, &device))
                .await?;
            Ok(ks_response::Body::Rooms(RoomList { rooms }))
        }
        _ => Err(RequestError::malformed("not a room request")),
    }
}

#[cfg(test)]
mod tests {
    use ward_proto::v1::{AppendRoom, GetRoomKeys, RoomKeyWrap, RoomWrapFor, SignedRoomStatement};

    use super::*;

    fn append(entries: usize, wraps: usize, enc: usize) -> Body {
        Body::AppendRoom(AppendRoom {
            room_id: vec![1; 32],
            entries: vec![
                SignedRoomStatement {
                    statement: vec![0; 10],
                    signature: vec![0; 64],
                };
                entries
            ],
            wraps: vec![
                RoomWrapFor {
                    recipient_user_id: "b".into(),
                    wrap: Some(RoomKeyWrap {
                        room_id: vec![1; 32],
                        epoch: 0,
                        epoch_key: vec![2; 32],
                        recipient_key: vec![3; 32],
                        enc: vec![4; enc],
                        ciphertext: vec![5; 48],
                    }),
                };
                wraps
            ],
        })
    }

    #[test]
    fn room_requests_are_shaped_and_bounded_before_storage() {
        let limits = KsLimits::default();
        let code = |b: &Body| check(&limits, b).unwrap_err().code;
        assert!(check(&limits, &append(1, 3, ENC_BYTES)).is_ok());
        assert!(check(&limits, &append(0, 1, ENC_BYTES)).is_ok());
        assert_eq!(code(&append(0, 0, ENC_BYTES)), ErrorCode::Malformed);
        assert_eq!(code(&append(17, 0, ENC_BYTES)), ErrorCode::TooLarge);
        assert_eq!(code(&append(0, 1025, ENC_BYTES)), ErrorCode::TooLarge);
        assert_eq!(code(&append(1, 1, ENC_BYTES - 1)), ErrorCode::Malformed);
        let keys = |n: usize, len: usize| {
            Body::GetRoomKeys(GetRoomKeys {
                room_id: vec![1; 32],
                resource_ids: vec![vec![0; len]; n],
            })
        };
        assert!(check(&limits, &keys(1, 16)).is_ok());
        assert_eq!(code(&keys(0, 16)), ErrorCode::Malformed);
        assert_eq!(code(&keys(1, 15)), ErrorCode::Malformed);
        assert_eq!(
            code(&keys(limits.max_items_per_request + 1, 16)),
            ErrorCode::TooLarge
        );
        assert!(is_room_request(&keys(1, 16)));
    }
}
