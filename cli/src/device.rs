//! `ward enroll`, `ward send`, `ward listen`, `ward rotate-key`: a
//! clinician's device in a shell, on the SDK client ([`ward_sdk::Client`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use ward_core::invite::{MAX_INVITE_BYTES, verify_invite};
use ward_core::keys::SigningPublicKey;
use ward_proto::decode_bounded;
use ward_proto::v1::SignedInvite;
use ward_sdk::store::{Message, StoreError};
use ward_sdk::{Client, ClientConfig, ClientError, Event};

use crate::pin::PinSource;
use crate::{CliError, hex, load_org_public, unhex};

/// Where a device keeps its store and which servers it talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// The dev organisation's folder (`ward up`'s): its root public key and
    /// the default place of device stores (`<data>/clients/<user>.db`).
    #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
    pub data: PathBuf,
    /// The device store (encrypted; the header goes beside it).
    /// Default: `<data>/clients/<user>.db`.
    #[arg(long, env = "WARD_STORE")]
    pub store: Option<PathBuf>,
    /// The organisation root public key (64 hex digits), pinned: every
    /// clinician's keys are verified from it. Default: read from <data>.
    #[arg(long, env = "WARD_ORG_ROOT")]
    pub org_root: Option<String>,
    /// The relay's URL (wss://; plain ws:// to loopback only). Default: the
    /// one `ward up` is serving (it writes <data>/endpoints), else
    /// wss://127.0.0.1:7070.
    #[arg(long = "relay", env = "WARD_RELAY_URL")]
    pub relay_url: Option<String>,
    /// The keyserver's URL (wss://; plain ws:// to loopback only). Default:
    /// the one `ward up` is serving, else wss://127.0.0.1:7071.
    #[arg(long = "keyserver", env = "WARD_KEYSERVER_URL")]
    pub keyserver_url: Option<String>,
    /// The CA (PEM) that signs the servers' certificates, pinned in place of
    /// the public web roots. Default: `ward up`'s dev CA, <data>/tls/ca.pem,
    /// when it exists; else the public web roots.
    #[arg(long, env = "WARD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The relay's instance id, as its operator configured it (the handshake
    /// binds it, SECURITY.md §8).
    #[arg(long, env = "WARD_RELAY_INSTANCE", default_value = ward_core::auth::DEFAULT_INSTANCE)]
    pub relay_instance: String,
    /// The keyserver's instance id, likewise.
    #[arg(long, env = "WARD_KEYSERVER_INSTANCE", default_value = ward_core::auth::DEFAULT_INSTANCE)]
    pub keyserver_instance: String,
    /// Read the PIN from the first line of standard input (else WARD_PIN,
    /// else the terminal, without echo). Never pass a PIN as an argument.
    #[arg(long)]
    pub pin_stdin: bool,
}

impl DeviceArgs {
    /// The relay's URL: --relay, else `ward up`'s, else the default port.
    pub fn relay(&self) -> String {
        self.relay_url.clone().unwrap_or_else(|| {
            crate::endpoints::read(&self.data)
                .map(|e| e.relay)
                .unwrap_or_else(|| "wss://127.0.0.1:7070".into())
        })
    }

    /// The keyserver's URL: --keyserver, else `ward up`'s, else the default.
    pub fn keyserver(&self) -> String {
        self.keyserver_url.clone().unwrap_or_else(|| {
            crate::endpoints::read(&self.data)
                .map(|e| e.keyserver)
                .unwrap_or_else(|| "wss://127.0.0.1:7071".into())
        })
    }

    fn org_root(&self) -> Result<SigningPublicKey, CliError> {
        match &self.org_root {
            Some(h) => unhex(h)
                .and_then(|b| SigningPublicKey::from_bytes(&b).ok())
                .ok_or_else(|| {
                    CliError::Msg("--org-root: expected 64 hex digits (32 bytes)".into())
                }),
            None => load_org_public(&self.data),
        }
    }

    pub(crate) fn pin(&self) -> PinSource {
        PinSource {
            stdin: self.pin_stdin,
        }
    }

    /// Whom to trust for `wss://`: --ca-file, else `ward up`'s dev CA, else
    /// the public web roots.
    pub fn client_tls(&self) -> Result<ward_net::tls::ClientTls, CliError> {
        let dev = crate::dev_ca_path(&self.data);
        let file = match &self.ca_file {
            Some(f) => f.clone(),
            None if dev.exists() => dev,
            None => return Ok(ward_net::tls::ClientTls::web_roots()),
        };
        ward_net::tls::ClientTls::pinned_ca_file(&file)
            .map_err(|e| CliError::Msg(format!("--ca-file {}: {e}", file.display())))
    }

    pub(crate) fn config(&self, store: PathBuf) -> Result<ClientConfig, CliError> {
        let mut c = ClientConfig::new(store, self.relay(), self.keyserver(), self.org_root()?);
        c.tls = self.client_tls()?;
        c.connection_events = true;
        c.reconnect_max = Duration::from_secs(5);
        c.request_timeout = Duration::from_secs(10);
        c.relay_instance.clone_from(&self.relay_instance);
        c.keyserver_instance.clone_from(&self.keyserver_instance);
        Ok(c)
    }

    /// The store of `user` (or `--store`); with neither, the only store
    /// under `<data>/clients/`.
    pub(crate) fn store_for(&self, user: Option<&str>) -> Result<PathBuf, CliError> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let dir = self.data.join("clients");
        if let Some(u) = user {
            return Ok(dir.join(format!("{u}.db")));
        }
        let mut found: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".db").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        match found.len() {
            1 => Ok(dir.join(format!("{}.db", found[0]))),
            0 => Err(CliError::Msg(format!(
                "no device store in {}: enroll first (`{} enroll --invite-file <file from admin \
                 invite --out>`), or pass --store",
                dir.display(),
                crate::ward_cmd()
            ))),
            _ => Err(CliError::Msg(format!(
                "several devices in {}: say which with --as ({})",
                dir.display(),
                found.join(", ")
            ))),
        }
    }

    /// Unlocks the device of `user`.
    pub(crate) async fn unlock(&self, user: Option<&str>) -> Result<Client, CliError> {
        let path = self.store_for(user)?;
        if !ward_sdk::store::Store::exists(&path) {
            return Err(CliError::Msg(format!(
                "no device store at {}: enroll this user first, or pass --store",
                path.display()
            )));
        }
        let config = self.config(path.clone())?;
        let pin = self.pin().read(
            &format!("PIN of the device store {}: ", path.display()),
            false,
        )?;
        Client::unlock(config, pin)
            .await
            .map_err(|e| explain(e, self))
    }
}

/// What `ward listen` says when its device is revoked: the SDK has wiped
/// the store by then (SECURITY.md §15.3b).
fn revoked_and_wiped() -> CliError {
    CliError::Msg(
        "this device was revoked by its organisation or by another device of its user; its \
         local data has been wiped (enroll again from a new invite, or pair it anew)"
            .into(),
    )
}

/// Turns a client error into a message a person can act on.
pub fn explain(e: ClientError, args: &DeviceArgs) -> CliError {
    if e.is_device_revoked() {
        return CliError::Msg(
            "this device has been revoked in its user's log: it can neither send nor receive \
             any more (enroll again from a new invite, or pair it anew)"
                .into(),
        );
    }
    let text = match &e {
        ClientError::Store(StoreError::WrongPin { attempts_left }) => {
            format!("wrong PIN: {attempts_left} attempts left before the store is wiped")
        }
        ClientError::ReenrollRequired => format!(
            "this device store was written by Ward protocol v1, whose keys this version cannot \
             use (its messages are still in it). To use this device again: ask your \
             administrator for a new invite (`ward admin invite`), move the store aside (the \
             store's .db file and its .db.header, under {}/clients/ unless --store names it), \
             then enroll again with `ward enroll --invite-file <the new invite>`",
            args.data.display()
        ),
        ClientError::Store(StoreError::Wiped) => {
            "too many wrong PINs: the device store has been wiped; enroll again with a new invite"
                .into()
        }
        ClientError::Net(ward_net::NetError::Refused(
            ward_proto::v1::ErrorCode::Unauthenticated,
        )) => {
            format!(
                "the servers do not know this device ({e}): were they reset, or is this store \
                 from another organisation? Check --relay / --keyserver / --data, or enroll \
                 again from a new invite"
            )
        }
        ClientError::Net(ward_net::NetError::Tls(t)) => tls_hint(t, args),
        ClientError::Net(_) | ClientError::Timeout => format!(
            "{e}. Is Ward running (`ward up`)? relay {}, keyserver {} (set --relay / --keyserver)",
            args.relay(),
            args.keyserver()
        ),
        ClientError::UnknownUser(u) => format!(
            "unknown user {u}: no such clinician at the keyserver (check the id, or invite them \
             with `ward admin invite`)"
        ),
        ClientError::InvalidInvite(c) => format!(
            "invalid invite: {c}. Check that both hex lines come from the same `ward admin \
             invite`, that it has not expired, and that --org-root / --data name the \
             organisation that signed it"
        ),
        ClientError::Keyserver { code, detail } => {
            format!("the keyserver refused: {code:?} ({detail})")
        }
        _ => e.to_string(),
    };
    CliError::Msg(text)
}

/// A TLS failure, said so that its fix is plain.
fn tls_hint(t: &ward_net::tls::TlsError, args: &DeviceArgs) -> String {
    use ward_net::tls::TlsError as T;
    let fix = match t {
        T::UntrustedCertificate(_) | T::WrongHost(_) => format!(
            "for `ward up`, its dev CA is {}; otherwise pass the deployment's CA with --ca-file",
            crate::dev_ca_path(&args.data).display()
        ),
        T::ServerRequiresTls(_) => "use wss:// in --relay / --keyserver".into(),
        T::NotTls(_) => {
            "the server speaks plain ws:// (`ward up --insecure-loopback`?): use ws:// for it"
                .into()
        }
        _ => "check --relay / --keyserver and --ca-file".into(),
    };
    format!(
        "TLS: {t}. {fix} (relay {}, keyserver {})",
        args.relay(),
        args.keyserver()
    )
}

/// `ward enroll`.
pub async fn enroll(
    args: DeviceArgs,
    invite_hex: &str,
    delegation_hex: &str,
) -> Result<(), CliError> {
    let invite = unhex(invite_hex)
        .ok_or_else(|| CliError::Msg("--invite: not hex (copy the `invite:` line)".into()))?;
    let delegation = zeroize::Zeroizing::new(unhex(delegation_hex).ok_or_else(|| {
        CliError::Msg("--delegation: not hex (copy the `delegation:` line)".into())
    })?);
    let org_root = args.org_root()?;
    let signed: SignedInvite = decode_bounded(&invite, MAX_INVITE_BYTES + 1024)
        .map_err(|e| CliError::Msg(format!("--invite: not an invite ({e})")))?;
    let details = verify_invite(&org_root, &signed)
        .map_err(|e| explain(ClientError::InvalidInvite(e), &args))?
        .details;
    let user = details.user_id.clone();
    let path = args.store_for(Some(&user))?;
    if ward_sdk::store::Store::exists(&path) {
        return Err(CliError::Msg(format!(
            "a device store already exists at {}: {user} is enrolled on this machine \
             (use --store for another device)",
            path.display()
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::io(dir.display().to_string()))?;
    }
    let config = args.config(path.clone())?;
    let pin = args.pin().read(
        &format!("Choose a PIN for {user} (at least 6 characters): "),
        true,
    )?;
    let client = Client::enroll(config, &invite, &delegation, pin)
        .await
        .map_err(|e| match e {
            // The user exists and this new device is not in its log: the
            // invite's one enrollment has been made.
            ClientError::Net(ward_net::NetError::Refused(
                ward_proto::v1::ErrorCode::Unauthenticated,
            ))
            | ClientError::Keyserver {
                code: ward_proto::v1::ErrorCode::Conflict,
                ..
            } => CliError::Msg(format!(
                "invite already used: {user} is enrolled already. Ask the administrator for a \
                 new invite, or add this device from an enrolled one"
            )),
            e => explain(e, &args),
        })?;
    println!(
        "Enrolled {} ({}, {}).",
        user, details.display_name, details.profession
    );
    println!("  device    {}", hex(client.device_id().as_bytes()));
    println!("  store     {} (encrypted, PIN-locked)", path.display());
    let ward = crate::ward_cmd();
    println!("Send with:  {ward} send --as {user} --to <user id> \"text\"");
    println!("Listen with: {ward} listen --as {user}");
    client.lock().await;
    Ok(())
}

/// `ward send`: reuses the conversation with exactly these members, or
/// creates it; waits until the relay stored the message.
pub async fn send(
    args: DeviceArgs,
    me: Option<String>,
    to: Vec<String>,
    text: String,
    wait: Duration,
) -> Result<(), CliError> {
    let mut client = args.unlock(me.as_deref()).await?;
    let result = send_inner(&args, &mut client, &to, &text, wait).await;
    client.lock().await;
    result
}

/// The conversation with exactly `to` and this user: an existing one, or
/// a new one. Returns it with its members.
pub(crate) async fn conversation_with(
    args: &DeviceArgs,
    client: &Client,
    to: &[String],
) -> Result<(ward_core::ConversationId, BTreeSet<String>), CliError> {
    let me = client.user_id().to_owned();
    let mut members: BTreeSet<String> = to
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if members.is_empty() {
        return Err(CliError::Msg("--to: name at least one user id".into()));
    }
    members.insert(me.clone());
    if members.len() < 2 {
        return Err(CliError::Msg(
            "--to: name at least one clinician other than yourself".into(),
        ));
    }
    // With more than one other member this is a room (SECURITY.md §17.12).
    let others: Vec<&str> = members
        .iter()
        .filter(|m| **m != me)
        .map(String::as_str)
        .collect();
    let conversation = client
        .conversation_with(&others)
        .await
        .map_err(|e| explain(e, args))?;
    Ok((conversation, members))
}

async fn send_inner(
    args: &DeviceArgs,
    client: &mut Client,
    to: &[String],
    text: &str,
    wait: Duration,
) -> Result<(), CliError> {
    let mut events = client
        .events()
        .ok_or_else(|| CliError::Msg("internal: no event stream".into()))?;
    let me = client.user_id().to_owned();
    let (conversation, members) = conversation_with(args, client, to).await?;
    let rid = client
        .send_text(conversation, text)
        .await
        .map_err(|e| explain(e, args))?;
    let to: Vec<String> = members.iter().filter(|m| **m != me).cloned().collect();
    await_sent(
        args,
        &mut events,
        rid,
        &to.join(", "),
        conversation,
        wait,
        &me,
    )
    .await
}

/// Waits for the relay to confirm message `rid` (sent to `to`), saying why
/// if it cannot go out; shared by `ward send --to` and `ward send --room`.
pub(crate) async fn await_sent(
    args: &DeviceArgs,
    events: &mut Receiver<Event>,
    mut rid: ward_core::ResourceId,
    to: &str,
    conversation: ward_core::ConversationId,
    wait: Duration,
    me: &str,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + wait;
    // Why the message has not gone out yet, if the client said.
    let mut delayed: Option<String> = None;
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Err(CliError::Msg("the client stopped".into())),
            Err(_) => {
                let why = match &delayed {
                    Some(w) => format!("it could not go out: {w}"),
                    None => format!(
                        "the relay has not confirmed it (is `ward up` running? relay {})",
                        args.relay()
                    ),
                };
                return Err(CliError::Msg(format!(
                    "message not sent within {}s: {why}. It stays queued in the encrypted store \
                     and goes out the next time `ward send` or `ward listen` runs for {me}",
                    wait.as_secs(),
                )));
            }
        };
        match ev {
            Event::Sent { resource_id } if resource_id == rid => {
                println!(
                    "Sent to {to} (conversation {}, message {}).",
                    short(conversation.as_bytes()),
                    short(rid.as_bytes())
                );
                return Ok(());
            }
            Event::Resealed { old, new } if old == rid => rid = new,
            // A TLS failure will not fix itself: say so now, not after the wait.
            // Any queued message's delay holds this one up too: the outbox
            // goes out in order.
            Event::SendDelayed {
                reason: ClientError::Net(ward_net::NetError::Tls(t)),
                ..
            } => {
                return Err(CliError::Msg(format!(
                    "the message could not go out: {}. It stays queued in the encrypted store \
                     and goes out once both servers are reachable.",
                    tls_hint(&t, args)
                )));
            }
            Event::SendDelayed { reason, .. } => {
                delayed = Some(match &reason {
                    ClientError::Keyserver { code, detail } => {
                        format!("the keyserver refused: {code:?} ({detail})")
                    }
                    ClientError::Relay { code, detail } => {
                        format!("the relay refused: {code:?} ({detail})")
                    }
                    other => format!(
                        "{other} (relay {}, keyserver {})",
                        args.relay(),
                        args.keyserver()
                    ),
                });
            }
            Event::RelayUnreachable {
                reason: ClientError::Net(ward_net::NetError::Tls(t)),
            } => {
                return Err(CliError::Msg(format!(
                    "the relay refused the connection: {}. The message stays queued in the \
                     encrypted store and goes out once the relay is reachable.",
                    tls_hint(&t, args)
                )));
            }
            Event::SendFailed {
                resource_id,
                reason,
            } if resource_id == rid => {
                return Err(CliError::Msg(format!("the message was refused: {reason}")));
            }
            other => print_event(&other),
        }
    }
}

/// `ward listen`: prints verified messages as they arrive.
pub async fn listen(
    args: DeviceArgs,
    me: Option<String>,
    count: Option<usize>,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let mut client = args.unlock(me.as_deref()).await?;
    let events = client
        .events()
        .ok_or_else(|| CliError::Msg("internal: no event stream".into()))?;
    eprintln!(
        "Listening as {} (device {}). Ctrl-C to stop.",
        client.user_id(),
        short(client.device_id().as_bytes())
    );
    let result = listen_loop(events, count, timeout).await;
    client.lock().await;
    result
}

async fn listen_loop(
    mut events: Receiver<Event>,
    count: Option<usize>,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let stop = crate::stop_signal()?;
    tokio::pin!(stop);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0usize;
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return Ok(()),
            () = until => {
                return match count {
                    Some(c) => Err(CliError::Msg(format!(
                        "--timeout-secs: {seen} message(s) received of the {c} asked for"
                    ))),
                    None => Ok(()),
                };
            }
            ev = events.recv() => match ev {
                None => return Err(CliError::Msg("the client stopped".into())),
                Some(Event::DeviceRevoked) => return Err(revoked_and_wiped()),
                Some(ev) => {
                    if matches!(ev, Event::Message(_)) {
                        seen += 1;
                    }
                    print_event(&ev);
                }
            }
        }
    }
}

/// Prints one event: messages on standard output, everything else as a
/// warning on standard error.
pub fn print_event(ev: &Event) {
    match ev {
        Event::Message(m) => println!("{}", message_line(m)),
        Event::Rejected {
            relay_seq,
            relay_sender,
            reason,
        } => eprintln!(
            "warning: rejected an entry (relay seq {relay_seq}, relay says from {}): {reason} \
             [{}]; it was not shown and not stored",
            clean(relay_sender),
            reason_kind(reason)
        ),
        Event::SendFailed {
            resource_id,
            reason,
        } => eprintln!(
            "warning: message {} was refused for good: {reason}",
            short(resource_id.as_bytes())
        ),
        Event::DeviceRevoked => eprintln!(
            "warning: this device was revoked by its organisation or by another device of its \
             user; its local data has been wiped"
        ),
        Event::RelayUnreachable { reason } => eprintln!(
            "warning: the relay is not reachable ({reason}); still trying, messages stay queued"
        ),
        Event::AttachmentFailed {
            conversation_id,
            reason,
        } => eprintln!(
            "warning: a file being sent to conversation {} was refused for good and not sent: \
             {reason}",
            short(conversation_id.as_bytes())
        ),
        Event::RoomChanged {
            room_id,
            len,
            added,
            removed,
        } => {
            let names = |v: &[String]| v.iter().map(|u| clean(u)).collect::<Vec<_>>().join(",");
            let mut what = Vec::new();
            if !added.is_empty() {
                what.push(format!("added {}", names(added)));
            }
            if !removed.is_empty() {
                what.push(format!("left or removed {}", names(removed)));
            }
            if what.is_empty() {
                what.push("admins or keys changed".into());
            }
            eprintln!(
                "room {}: {} (log length {len})",
                short(room_id.as_bytes()),
                what.join("; ")
            );
        }
        Event::RoomRejected { room_id, reason } => eprintln!(
            "warning: room {}: the keyserver served a log this device refuses: {reason}",
            short(room_id.as_bytes())
        ),
        Event::Sent { .. } | Event::Resealed { .. } => {}
        _ => {}
    }
}

/// The typed reason's name, e.g. `Open`, `SenderMismatch`, `Replay`.
fn reason_kind(e: &ClientError) -> String {
    let dbg = format!("{e:?}");
    dbg.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_owned()
}

/// `time  sender  conversation  text`.
pub fn message_line(m: &Message) -> String {
    let body = match (m.content_type, m.attachment()) {
        (ward_core::envelope::ContentType::Text, _) => clean(&String::from_utf8_lossy(&m.content)),
        (_, Some(a)) => crate::files::attachment_line(m, &a),
        _ => format!("[file, {} bytes]", m.content.len()),
    };
    format!(
        "{}  {}  conv {}  {}",
        utc(m.timestamp_ms / 1000),
        clean(&m.sender_user_id),
        short(m.conversation_id.as_bytes()),
        body
    )
}

/// Control characters replaced: a message cannot drive the terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// The first 4 bytes, hex.
pub fn short(b: &[u8]) -> String {
    hex(&b[..b.len().min(4)])
}

/// RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SSZ`, from unix seconds.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `ward rotate-key`: rotates this user's key (after a root revocation).
pub async fn rotate_key(args: DeviceArgs, me: Option<String>) -> Result<(), CliError> {
    let client = args.unlock(me.as_deref()).await?;
    let result = client
        .rotate_user_key()
        .await
        .map_err(|e| explain(e, &args));
    let user = client.user_id().to_owned();
    client.lock().await;
    result?;
    println!(
        "Rotated the user key of {user}: new messages are wrapped to a key the revoked device \
         never held; the relay was given the new log."
    );
    Ok(())
}
