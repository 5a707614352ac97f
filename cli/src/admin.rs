//! `ward admin revoke` and `ward admin audit-export`.
//!
//! # How `revoke` reaches the keyserver
//!
//! The admin unlocks the organisation root here (`root_store.rs`), signs the
//! revocation, and submits it over a keyserver session that the root itself
//! authenticates: the handshake of SECURITY.md §8 with the root as `device_id`
//! and `ward_keyserver::admin::ADMIN_USER_ID` as `user_id` (§10.7). Such a
//! session may read logs and `admin_submit` root-authored entries, nothing
//! else; the keyserver verifies the entry against the user's log like any
//! append, closes the revoked device's connections at once, and no
//! clinician's device is involved.

use ward_core::chain::verify_log;
use ward_core::keys::{DeviceSigningKey, OrgRootKey, SigningPublicKey};
use ward_keyserver::admin::ADMIN_USER_ID;
use ward_net::handshake::Audience;
use ward_net::{Limits, NetError};
use ward_proto::v1::{
    AdminSubmit, ErrorCode, GetLogs, KsRequest, KsResponse, ks_request, ks_response,
};

use crate::device::DeviceArgs;
use crate::root_store::RootArgs;
use crate::{CliError, hex, unhex};

/// Where `ward admin revoke` finds the keyserver: the keyserver half of a
/// device's flags (no device store, PIN or relay is involved).
#[derive(clap::Args, Debug, Clone)]
pub struct KeyserverArgs {
    /// The organisation's folder: its root (public key, and by default the
    /// encrypted root) and, while `ward up` runs, its endpoints and dev CA.
    #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
    pub data: std::path::PathBuf,
    /// The keyserver's URL (wss://; plain ws:// to loopback only). Default:
    /// the one `ward up` is serving, else wss://127.0.0.1:7071.
    #[arg(long = "keyserver", env = "WARD_KEYSERVER_URL")]
    pub keyserver_url: Option<String>,
    /// The CA (PEM) that signs the keyserver's certificate, pinned in place
    /// of the public web roots. Default: <data>/tls/ca.pem when it exists.
    #[arg(long, env = "WARD_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The keyserver's instance id, as its operator configured it (the
    /// handshake binds it, SECURITY.md §8).
    #[arg(long, env = "WARD_KEYSERVER_INSTANCE", default_value = ward_core::auth::DEFAULT_INSTANCE)]
    pub keyserver_instance: String,
}

impl KeyserverArgs {
    /// The same settings as a device's, to share their defaults and TLS setup.
    fn device_args(self) -> DeviceArgs {
        DeviceArgs {
            data: self.data,
            store: None,
            org_root: None,
            relay_url: None,
            keyserver_url: self.keyserver_url,
            ca_file: self.ca_file,
            relay_instance: ward_core::auth::DEFAULT_INSTANCE.to_owned(),
            keyserver_instance: self.keyserver_instance,
            pin_stdin: false,
        }
    }
}

/// `ward admin revoke`.
pub async fn revoke(
    args: KeyserverArgs,
    root_args: RootArgs,
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
    let args = args.device_args();
    // Unlocked before any network traffic: a wrong passphrase costs nothing else.
    let root = crate::root_store::unlock(&args.data, &root_args)?;
    // The root the clients of this folder pin must be the one that signs.
    if let Ok(pinned) = crate::load_org_public(&args.data)
        && pinned != root.public_key()
    {
        return Err(CliError::Msg(format!(
            "the root unlocked ({}) is not the organisation root pinned in {} ({}): wrong \
             --root-file or --data",
            hex(root.public_key().as_bytes()),
            args.data.display(),
            hex(pinned.as_bytes())
        )));
    }
    let audience = Audience::keyserver(root.public_key(), args.keyserver_instance.clone());
    let tls = args.client_tls()?;
    let mut ks = Session::open_root(&args.keyserver(), &audience, &tls, &root).await?;

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
    drop(root);
    let seq = match ks
        .call(ks_request::Body::AdminSubmit(AdminSubmit {
            entry: Some(entry),
        }))
        .await
        .map_err(|e| match e {
            // SECURITY.md §10.7: another entry took the position meanwhile.
            CliError::Msg(m) if m.contains("Conflict") => CliError::Msg(format!(
                "the log of {user_id} changed while the revocation was signed ({m}): nothing \
                 was revoked; run the command again"
            )),
            e => e,
        })? {
        ks_response::Body::Appended(a) => a.seq,
        _ => return Err(CliError::Msg("the keyserver answered out of step".into())),
    };
    println!(
        "Revoked device {} of {user_id} (log entry {seq}, signed by the organisation root and \
         submitted over a root session: no clinician's device was used).",
        hex(device.as_bytes())
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
             too. To do it now from that user's machine:"
        );
        println!("  {} rotate-key --as {user_id}", crate::ward_cmd());
    }
    Ok(())
}

/// One keyserver connection authenticated by the organisation root.
struct Session {
    conn: ward_net::Conn<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
    url: String,
}

impl Session {
    async fn open_root(
        url: &str,
        audience: &Audience,
        tls: &ward_net::tls::ClientTls,
        root: &OrgRootKey,
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
        // The handshake signs with a device-key type: the same Ed25519 key,
        // for this one transcript (its label keeps it apart from every
        // other root signature, SECURITY.md §10.7).
        let signer = DeviceSigningKey::import_secret(&*root.export_secret())
            .map_err(|_| CliError::Msg("the root key does not load as a signer".into()))?;
        ward_net::handshake::client(&mut conn, &signer, ADMIN_USER_ID, audience, &[])
            .await
            .map_err(|e| {
                CliError::Msg(format!(
                    "the keyserver at {url} refused the organisation root's session ({e}): is it \
                     this organisation's keyserver (--keyserver, --keyserver-instance)?"
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
pub fn audit_export(data: std::path::PathBuf, since: u64, format: Format) -> Result<(), CliError> {
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
        ward_keyserver::storage::AccessKind::RoomWrap => "room_wrap",
        ward_keyserver::storage::AccessKind::RoomKey => "room_key",
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
