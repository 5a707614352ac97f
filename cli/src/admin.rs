//! `ward admin revoke` and `ward admin audit-export`.
//!
//! # Why `revoke` goes through an enrolled device
//!
//! A root-signed revocation is authorised by its signature, not by who
//! submits it: SECURITY.md §10.2 lets any *full* keyserver session append
//! any user's entry. The keyserver has no operator request path (§10.6),
//! an enrolling session may append only its own creation, and writing the
//! keyserver's database behind its back would bypass its checks and its
//! revocation fan-out. So the admin signs the revocation with the
//! organisation root here, and relays it over the authenticated session of
//! an enrolled device on this machine (`--via USER`, PIN-unlocked; it can
//! be any clinician's, a remaining device of the same user is the natural
//! one). The keyserver verifies it from the root like any entry, closes the
//! revoked device's connections at once, and the device used learns nothing
//! it did not know.

use std::path::PathBuf;

use ward_core::chain::verify_log;
use ward_core::keys::SigningPublicKey;
use ward_net::handshake::Audience;
use ward_net::{Limits, NetError};
use ward_proto::v1::{ErrorCode, GetLogs, KsRequest, KsResponse, ks_request, ks_response};

use crate::device::{DeviceArgs, unlock_identity};
use crate::{CliError, hex, load_root, unhex};

/// `ward admin revoke`.
pub async fn revoke(
    args: DeviceArgs,
    via: Option<String>,
    user_id: String,
    device_hex: String,
) -> Result<(), CliError> {
    let device = unhex(&device_hex)
        .and_then(|b| SigningPublicKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            CliError::Msg(
                "--device-id: expected the device's 64 hex digits (its signing key)".into(),
            )
        })?;
    let root = load_root(&args.data)?;
    let (identity, path) = unlock_identity(&args, via.as_deref())?;
    let audience = Audience::keyserver(root.public_key(), args.keyserver_instance.clone());
    let tls = args.client_tls()?;
    let mut ks = Session::open(&args.keyserver(), &audience, &tls, &identity).await?;

    let logs = match ks
        .call(ks_request::Body::GetLogs(GetLogs {
            user_ids: vec![user_id.clone()],
        }))
        .await?
    {
        ks_response::Body::Logs(l) => l.logs,
        _ => return Err(CliError::Msg("the keyserver answered out of step".into())),
    };
    let entries = logs
        .get(&user_id)
        .map(|l| l.entries.clone())
        .ok_or_else(|| CliError::Msg(format!("unknown user {user_id} at the keyserver")))?;
    let user = verify_log(&root.public_key(), &user_id, &entries).map_err(|e| {
        CliError::Msg(format!(
            "the keyserver's log of {user_id} does not verify from this organisation's root: {e}"
        ))
    })?;
    let record = user.device(&device).ok_or_else(|| {
        let known: Vec<String> = user
            .devices()
            .map(|d| hex(d.signing_key.as_bytes()))
            .collect();
        CliError::Msg(format!(
            "{user_id} has no device {}; its devices: {}",
            hex(device.as_bytes()),
            known.join(", ")
        ))
    })?;
    if !record.is_active() {
        println!(
            "Device {} of {user_id} is already revoked.",
            hex(device.as_bytes())
        );
        return Ok(());
    }
    let remaining = user
        .devices()
        .filter(|d| d.is_active() && d.signing_key != device)
        .count();
    let entry = user.revoke_device_as_root(&root, &device, crate::now_secs());
    let seq = match ks.call(ks_request::Body::Append(entry)).await? {
        ks_response::Body::Appended(a) => a.seq,
        _ => return Err(CliError::Msg("the keyserver answered out of step".into())),
    };
    println!(
        "Revoked device {} of {user_id} (log entry {seq}, signed by the organisation root,",
        hex(device.as_bytes())
    );
    println!(
        "relayed through the keyserver session of {}'s device in {}).",
        identity.user_id,
        path.display()
    );
    println!("The keyserver has closed that device's connections and refuses it from now on.");
    if remaining == 0 {
        println!(
            "warning: {user_id} has no active device left: the account is frozen (the root \
             cannot add devices); invite them again under a new user id."
        );
    } else {
        println!(
            "{user_id}'s user key is unchanged and the lost device may still hold it. The first \
             remaining device of {user_id} that is online rotates the key on its own within a \
             minute and hands the new log to the relay, which then refuses the revoked device \
             too. To do it now from this machine:"
        );
        println!("  ward rotate-key --as {user_id}");
    }
    Ok(())
}

/// One authenticated keyserver connection.
struct Session {
    conn: ward_net::Conn<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
    url: String,
}

impl Session {
    async fn open(
        url: &str,
        audience: &Audience,
        tls: &ward_net::tls::ClientTls,
        identity: &ward_sdk::store::Identity,
    ) -> Result<Self, CliError> {
        let unreachable = |e: NetError| {
            CliError::Msg(format!(
                "cannot reach the keyserver at {url}: {e}. Is `ward up` running? (--keyserver)"
            ))
        };
        let mut conn = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ward_net::tls::connect(url, &Limits::default(), tls),
        )
        .await
        .map_err(|_| unreachable(NetError::Timeout))?
        .map_err(unreachable)?;
        ward_net::handshake::client(
            &mut conn,
            &identity.device_signing,
            &identity.user_id,
            audience,
            &[],
        )
        .await
        .map_err(|e| {
            CliError::Msg(format!(
                "the keyserver refused the device of {} ({e}): use an enrolled, active device \
                 (--via)",
                identity.user_id
            ))
        })?;
        Ok(Self {
            conn,
            next: 1,
            url: url.to_owned(),
        })
    }

    async fn call(&mut self, body: ks_request::Body) -> Result<ks_response::Body, CliError> {
        let request_id = self.next;
        self.next += 1;
        let url = self.url.clone();
        let lost = move |e: NetError| CliError::Msg(format!("keyserver {url}: {e}"));
        let fut = async {
            self.conn
                .send_msg(&KsRequest {
                    request_id,
                    body: Some(body),
                })
                .await
                .map_err(&lost)?;
            self.conn
                .recv_msg::<KsResponse>()
                .await
                .map_err(&lost)?
                .ok_or_else(|| lost(NetError::Closed(None, String::new())))
        };
        let resp = tokio::time::timeout(std::time::Duration::from_secs(15), fut)
            .await
            .map_err(|_| CliError::Msg("the keyserver did not answer in time".into()))??;
        if resp.request_id != request_id {
            return Err(CliError::Msg("the keyserver answered out of step".into()));
        }
        match resp.body {
            Some(ks_response::Body::Error(e)) => Err(CliError::Msg(format!(
                "the keyserver refused: {:?} ({})",
                ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                e.detail
            ))),
            Some(b) => Ok(b),
            None => Err(CliError::Msg("the keyserver sent an empty reply".into())),
        }
    }
}

/// Output format of `audit-export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// One header line, then one line per read.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// `ward admin audit-export`.
pub fn audit_export(data: PathBuf, since: u64, format: Format) -> Result<(), CliError> {
    let db = data.join("keyserver.db");
    if !db.exists() {
        return Err(CliError::Msg(format!(
            "no keyserver database at {}: run `ward up` first, or pass --data",
            db.display()
        )));
    }
    let records = ward_keyserver::storage::export_access_log(&db, since).map_err(|e| {
        CliError::Msg(format!(
            "cannot read the access log of {}: {e}",
            db.display()
        ))
    })?;
    let kind = |k: ward_keyserver::storage::AccessKind| match k {
        ward_keyserver::storage::AccessKind::WrappedKey => "wrapped_key",
        ward_keyserver::storage::AccessKind::DeviceGrant => "device_grant",
    };
    match format {
        Format::Csv => {
            println!("time_unix,time_utc,user_id,device_id,kind,resource_id");
            for r in &records {
                println!(
                    "{},{},{},{},{},{}",
                    r.at,
                    crate::device::utc(r.at),
                    csv_field(&r.user_id),
                    hex(&r.device_id),
                    kind(r.kind),
                    hex(&r.resource_id)
                );
            }
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id,
                        "time_unix": r.at,
                        "time_utc": crate::device::utc(r.at),
                        "user_id": r.user_id,
                        "device_id": hex(&r.device_id),
                        "kind": kind(r.kind),
                        "resource_id": hex(&r.resource_id),
                    })
                })
                .collect();
            let text = serde_json::to_string_pretty(&rows)
                .map_err(|e| CliError::Msg(format!("cannot encode JSON: {e}")))?;
            println!("{text}");
        }
    }
    eprintln!(
        "{} read(s) of wrapped keys and grants since unix time {since}.",
        records.len()
    );
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
