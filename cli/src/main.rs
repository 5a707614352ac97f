//! `ward`: Ward's command-line tool.
//!
//! * `ward up` runs the relay and the keyserver, as two services with two
//!   SQLite databases under `./ward-data`, for a local dev organisation.
//! * `ward admin init | encrypt-root | invite | revoke | audit-export`
//!   administer it (`admin.rs`; the encrypted root: `root_store.rs`).
//! * `ward enroll | send | listen | rotate-key`: a clinician's device on the
//!   SDK client (`device.rs`; the PIN is read by `pin.rs`).
//! * `ward directory search`: the professional directory (`directory.rs`).
//! * `ward demo`: everything in one process, in seconds (`demo.rs`).
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod demo;
mod device;
mod devices;
mod directory;
mod endpoints;
mod files;
mod history;
mod pin;
mod room;
mod root_store;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio::net::TcpListener;
use ward_core::invite::{InviteDetails, create_invite};
use ward_core::keys::{OrgRootKey, SigningPublicKey};
use ward_proto::Message as _;

/// Ward: end-to-end encrypted messaging for clinicians.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay and the keyserver on embedded SQLite, for a local dev organisation.
    Up {
        /// Where both services keep their databases and the dev organisation's keys.
        #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
        data: PathBuf,
        /// The relay's listen address.
        #[arg(long, env = "WARD_RELAY_LISTEN", default_value = "127.0.0.1:7070")]
        relay_listen: SocketAddr,
        /// The keyserver's listen address.
        #[arg(long, env = "WARD_KEYSERVER_LISTEN", default_value = "127.0.0.1:7071")]
        keyserver_listen: SocketAddr,
        #[command(flatten)]
        opts: UpOptions,
    },
    /// Patient-case rooms: create, add, remove, leave, list, members.
    Room {
        #[command(subcommand)]
        command: room::RoomCommand,
    },
    /// Audit the keyserver's key-transparency directory (no account needed):
    /// follow every epoch, check each extends the last and that the leaves
    /// served hash to its root; fails, saying why, if any does not.
    Audit {
        #[command(flatten)]
        args: audit::AuditArgs,
    },
    /// Your own devices: list them, link a new one by a code, revoke a lost one.
    Device {
        #[command(subcommand)]
        command: devices::DeviceCommand,
    },
    /// Administer the dev organisation.
    Admin {
        #[command(subcommand)]
        command: Admin,
    },
    /// Enroll this machine as a clinician's device, from an invite.
    Enroll {
        /// The file `ward admin invite` printed (its `invite:` and
        /// `delegation:` lines). Preferred: the one-time secret then never
        /// appears in the process list.
        #[arg(long, conflicts_with_all = ["invite", "delegation"])]
        invite_file: Option<std::path::PathBuf>,
        /// The `invite:` line of `ward admin invite` (hex).
        #[arg(long, requires = "delegation")]
        invite: Option<String>,
        /// The `delegation:` line (hex, one-time secret; visible to other
        /// local users in the process list: prefer --invite-file or the
        /// WARD_DELEGATION environment variable).
        #[arg(long, env = "WARD_DELEGATION", hide_env_values = true)]
        delegation: Option<String>,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// Send a text, or a file (--file), to one or more clinicians (reuses
    /// the conversation with exactly these members, or starts one), or to a
    /// room (--room).
    Send {
        /// The sending user (picks `<data>/clients/<user>.db`); optional when
        /// only one device store exists.
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        /// Recipients' user ids, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present_any = ["conversation", "room"]
        )]
        to: Vec<String>,
        /// A room id, or the start of it (`ward room list`), instead of --to.
        #[arg(long, conflicts_with_all = ["to", "conversation"])]
        room: Option<String>,
        /// An existing conversation (id or its start, as `ward conversations`
        /// shows) instead of --to; with --file only.
        #[arg(long, conflicts_with = "to", requires = "file")]
        conversation: Option<String>,
        /// Send this file as an attachment (encrypted, resumable upload).
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// The file's media type; default: from its extension.
        #[arg(long, requires = "file")]
        media_type: Option<String>,
        /// An image (at most 64 KiB) sent inline as the file's preview,
        /// encrypted with the message.
        #[arg(long, requires = "file")]
        thumbnail: Option<PathBuf>,
        /// The message.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Seconds to wait for the relay to confirm the message.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// Download the file of an attachment message into a folder (under the
    /// sender's file name, never overwriting), checking every chunk.
    Download {
        /// The user (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        /// The message id, or its start, as `ward history` shows it.
        message_id: String,
        /// The folder to save in.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// Print verified messages as they arrive (time, sender, conversation,
    /// text); anything that does not verify is a warning, never a message.
    Listen {
        /// The listening user (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Give up after this many seconds (an error if --count was not reached).
        #[arg(long)]
        timeout_secs: Option<u64>,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// List this device's conversations, most recent first (id, members,
    /// messages, last activity).
    Conversations {
        /// The user (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// Print stored messages, oldest first (all conversations, or one);
    /// those not yet confirmed by the relay are marked (queued).
    History {
        /// The user (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        /// A conversation id or room id, or the start of it (as `ward
        /// conversations` and `ward room list` show).
        #[arg(long, conflicts_with = "with")]
        conversation: Option<String>,
        /// The conversation with exactly these users (comma-separated).
        #[arg(long, value_delimiter = ',')]
        with: Vec<String>,
        /// Only the last N messages.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// List the messages this device sealed that the relay has not
    /// confirmed yet.
    Outbox {
        /// The user (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// Rotate this user's key (what a remaining device does after
    /// `ward admin revoke`).
    RotateKey {
        /// The user (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
    /// The organisation's professional directory.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Two clinicians, one conversation, and what each server stored:
    /// everything in this process, in seconds.
    Demo {
        /// Keep the demo's databases and stores in this (new or empty)
        /// folder instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Find clinicians by name (every word starts a word of the name, any
    /// case or accent) or registry number (a prefix); each result is the
    /// root-signed invite, verified on this device.
    Search {
        /// Name words or a registry number; may be empty with --profession.
        #[arg(default_value = "")]
        text: String,
        /// Only clinicians of this profession.
        #[arg(long)]
        profession: Option<String>,
        /// Which page of results (from 1).
        #[arg(long, default_value_t = 1)]
        page: u32,
        /// Results per page (at most 50).
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        /// The searching user (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER")]
        as_user: Option<String>,
        #[command(flatten)]
        device: device::DeviceArgs,
    },
}

#[derive(Subcommand)]
enum Admin {
    /// Create an organisation: a new root key, encrypted under a passphrase
    /// (<data>/org-root.enc, or --root-file), and its public key in
    /// <data>/org-root.pub. Does nothing if the root file exists.
    Init {
        /// Where the organisation's public key goes (and, by default, the
        /// encrypted root).
        #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
        data: PathBuf,
        #[command(flatten)]
        root: root_store::RootArgs,
    },
    /// Seal `ward up`'s plain dev root key (<data>/dev-org-root.key) under a
    /// passphrase, then delete the plain file.
    EncryptRoot {
        /// The folder of `ward up`.
        #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
        data: PathBuf,
        #[command(flatten)]
        root: root_store::RootArgs,
    },
    /// Revoke a clinician's lost device, signed by the organisation root.
    ///
    /// Signed here with the (encrypted) root and submitted over a keyserver
    /// session the root itself authenticates (SECURITY.md 10.7): no
    /// clinician's device is involved.
    Revoke {
        /// Whose device.
        #[arg(long)]
        user_id: String,
        /// The lost device's id (64 hex digits; `ward enroll` printed it).
        #[arg(long)]
        device_id: String,
        #[command(flatten)]
        root: root_store::RootArgs,
        #[command(flatten)]
        keyserver: admin::KeyserverArgs,
    },
    /// Export the keyserver's access log: which device read which wrapped
    /// key or grant, and when (read-only; safe while `ward up` runs).
    AuditExport {
        /// The folder of `ward up` (reads <data>/keyserver.db).
        #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
        data: PathBuf,
        /// Only reads at or after this unix time (seconds).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: admin::Format,
    },
    /// Sign an invite for one clinician with the dev organisation's root key.
    Invite {
        /// Where `ward up` keeps the dev organisation's keys.
        #[arg(long, env = "WARD_DATA", default_value = "ward-data")]
        data: PathBuf,
        /// The user id to reserve, e.g. dr.martin@chu-example.
        #[arg(long)]
        user_id: String,
        /// The name colleagues will see.
        #[arg(long)]
        name: String,
        /// Profession, e.g. physician, nurse, pharmacist.
        #[arg(long, default_value = "physician")]
        profession: String,
        /// Professional registry number (e.g. RPPS).
        #[arg(long, default_value = "")]
        registry_number: String,
        /// Days until the invite expires.
        #[arg(long, default_value_t = 7)]
        days: u64,
        /// Write the invite to this new file, readable by its owner only
        /// (0600), instead of standard output: it holds a one-time secret.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        root: root_store::RootArgs,
    },
}

/// `ward up`'s settings beyond the addresses (also from `--config`, a TOML
/// file, and `WARD_UP_*` variables).
#[derive(clap::Args, Debug, Clone)]
struct UpOptions {
    /// Serve plain ws:// instead of TLS (loopback addresses only); clients
    /// then need ws:// URLs.
    #[arg(long)]
    insecure_loopback: bool,
    /// The relay's admin listener (/metrics, /healthz, /readyz), e.g. 127.0.0.1:9070.
    #[arg(long, default_value = "off")]
    relay_admin_listen: String,
    /// The keyserver's admin listener, e.g. 127.0.0.1:9071.
    #[arg(long, default_value = "off")]
    keyserver_admin_listen: String,
    /// Print the effective settings of `ward up` as a TOML file and exit.
    #[arg(long)]
    print_config: bool,
}

/// How the hints name this program: `ward` for a release build (installed or
/// not), the cargo form for a debug build run from the source tree.
pub(crate) fn ward_cmd() -> &'static str {
    if cfg!(debug_assertions) {
        "cargo run -q -p ward --"
    } else {
        "ward"
    }
}

/// `ward up`'s dev CA certificate under `data` (what clients pin).
pub(crate) fn dev_ca_path(data: &Path) -> PathBuf {
    data.join("tls").join("ca.pem")
}

/// A failure the user can act on.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the dev organisation key in {0} is unreadable; delete the folder to start afresh")]
    BadRootKey(PathBuf),
    #[error("no dev organisation in {0}: run `ward up` first")]
    NoOrganisation(PathBuf),
    #[error("invalid invite: {0}")]
    Invite(#[from] ward_core::ChainError),
    #[error("relay failed: {0}")]
    Relay(#[from] ward_relay::RelayError),
    #[error("keyserver failed: {0}")]
    Keyserver(#[from] ward_keyserver::KeyserverError),
    #[error("{}", root_store::explain(.0, .1))]
    RootFile(PathBuf, ward_core::root_store::RootStoreError),
    #[error("{0}")]
    Msg(String),
}

const ROOT_KEY_FILE: &str = "dev-org-root.key";
/// The root's public key, for clients (no secret in it).
const ROOT_PUB_FILE: &str = "org-root.pub";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The organisation root public key for clients: `<data>/org-root.pub`,
/// else derived from the dev root key beside it.
fn load_org_public(data: &Path) -> Result<SigningPublicKey, CliError> {
    let path = data.join(ROOT_PUB_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return unhex(&text)
            .and_then(|b| SigningPublicKey::from_bytes(&b).ok())
            .ok_or_else(|| {
                CliError::Msg(format!(
                    "{} is not a public key (64 hex digits)",
                    path.display()
                ))
            });
    }
    if let Some(public) = root_store::public_key(data)? {
        return Ok(public);
    }
    match load_root(data) {
        Ok(root) => Ok(root.public_key()),
        Err(CliError::NoOrganisation(_)) => Err(CliError::Msg(format!(
            "no organisation root in {}: run `ward up` there, pass --data, or pass the root's \
             public key with --org-root",
            data.display()
        ))),
        Err(e) => Err(e),
    }
}

fn write_org_public(data: &Path, root: &SigningPublicKey) -> Result<(), CliError> {
    let path = data.join(ROOT_PUB_FILE);
    std::fs::write(&path, format!("{}\n", hex(root.as_bytes())))
        .map_err(io(path.display().to_string()))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |e| CliError::Io(what, e)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn load_root(data: &Path) -> Result<OrgRootKey, CliError> {
    let path = data.join(ROOT_KEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CliError::NoOrganisation(data.to_owned()),
        _ => CliError::Io(path.display().to_string(), e),
    })?;
    let seed = unhex(&text).ok_or_else(|| CliError::BadRootKey(path.clone()))?;
    OrgRootKey::import_secret(&seed).map_err(|_| CliError::BadRootKey(path))
}

/// Loads the dev organisation, creating it on first run.
fn load_or_create_root(data: &Path) -> Result<(OrgRootKey, bool), CliError> {
    match load_root(data) {
        Ok(root) => Ok((root, false)),
        Err(CliError::NoOrganisation(_)) => {
            std::fs::create_dir_all(data).map_err(io(data.display().to_string()))?;
            let root = OrgRootKey::generate(&mut rand::rng());
            let path = data.join(ROOT_KEY_FILE);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&path)
                .map_err(io(path.display().to_string()))?;
            file.write_all(hex(&*root.export_secret()).as_bytes())
                .map_err(io(path.display().to_string()))?;
            Ok((root, true))
        }
        Err(e) => Err(e),
    }
}

async fn up(
    data: PathBuf,
    relay_listen: SocketAddr,
    ks_listen: SocketAddr,
    opts: UpOptions,
) -> Result<(), CliError> {
    // An organisation of `ward admin init`: only its public key is needed here.
    let (org_root, created, dev_root) = match root_store::public_key(&data)? {
        Some(public) => (public, false, None),
        None => {
            let (root, created) = load_or_create_root(&data)?;
            (root.public_key(), created, Some(root))
        }
    };
    write_org_public(&data, &org_root)?;
    // The relay's link to the keyserver trusts what the CLI trusts.
    let mut link_tls = ward_net::tls::ClientTls::default();
    let (tls, scheme) = if opts.insecure_loopback {
        (ward_net::tls::Acceptor::InsecureLoopback, "ws")
    } else {
        let files = ward_net::tls::dev_ca::DevPkiFiles::in_dir(&data.join("tls"));
        let minted = files
            .load_or_create()
            .map_err(|e| CliError::Msg(format!("dev CA: {e}")))?;
        if minted {
            println!(
                "Created a dev CA for this machine in {}/ (clients here trust it).",
                data.join("tls").display()
            );
        }
        let identity = ward_net::tls::ServerTls::from_pem_files(&files.cert, &files.key)
            .map_err(|e| CliError::Msg(format!("dev certificate: {e}")))?;
        ward_net::tls::reload_on_sighup(identity.clone())
            .map_err(io("cannot listen for SIGHUP"))?;
        link_tls = ward_net::tls::ClientTls::pinned_ca_file(&files.ca)
            .map_err(|e| CliError::Msg(format!("dev CA: {e}")))?;
        (ward_net::tls::Acceptor::Tls(identity), "wss")
    };
    for addr in [relay_listen, ks_listen] {
        tls.check(addr).map_err(|e| CliError::Msg(e.to_string()))?;
    }
    let relay_listener = TcpListener::bind(relay_listen)
        .await
        .map_err(io(format!("cannot listen on {relay_listen} for the relay")))?;
    let ks_listener = TcpListener::bind(ks_listen).await.map_err(io(format!(
        "cannot listen on {ks_listen} for the keyserver"
    )))?;
    let mut relay_config = ward_relay::Config::new(data.join("relay.db"), org_root);
    relay_config.tls = tls.clone();
    let mut ks_config = ward_keyserver::Config::new(data.join("keyserver.db"), org_root);
    ks_config.tls = tls;
    // Key transparency (SECURITY.md §18.4): the keyserver's directory key,
    // certified by the dev root when this folder holds it (an offline root
    // of `ward admin init` certifies it with `ward admin`, not here).
    let (directory_key, _) =
        ward_keyserver::transparency::load_or_create_key(&data.join("keyserver-directory.key"))
            .map_err(|e| CliError::Msg(format!("directory key: {e}")))?;
    let cert_path = data.join("keyserver-directory.cert");
    if let Some(root) = &dev_root {
        let cert =
            ward_core::transparency::certify_directory_key(root, &directory_key.public_key());
        std::fs::write(&cert_path, hex(&cert)).map_err(io(cert_path.display().to_string()))?;
    }
    if cert_path.exists() {
        ks_config.kt.certificate = Some(
            ward_keyserver::transparency::read_certificate(&cert_path)
                .map_err(|e| CliError::Msg(format!("directory certificate: {e}")))?,
        );
    }
    ks_config.kt.directory_key = Some(std::sync::Arc::new(directory_key));
    for (what, addr, registry) in [
        (
            "relay",
            &opts.relay_admin_listen,
            relay_config.metrics.clone(),
        ),
        (
            "keyserver",
            &opts.keyserver_admin_listen,
            ks_config.metrics.clone(),
        ),
    ] {
        if addr != "off" {
            let bound = ward_ops::admin::spawn(addr, registry, std::future::pending())
                .await
                .map_err(io(format!(
                    "cannot listen on {addr} for the {what} admin listener"
                )))?;
            println!("  {what} admin  http://{bound}/metrics");
        }
    }

    let stop = stop_signal()?;
    let org = hex(org_root.as_bytes());
    if created {
        println!(
            "Created a dev organisation in {}/ (its root key is on this disk: dev only;",
            data.display()
        );
        println!("a real organisation keeps its root key offline).");
    }
    let urls = endpoints::Endpoints {
        relay: format!(
            "{scheme}://{}",
            relay_listener.local_addr().map_err(io("relay address"))?
        ),
        keyserver: format!(
            "{scheme}://{}",
            ks_listener.local_addr().map_err(io("keyserver address"))?
        ),
    };
    // The relay follows the keyserver's relay link (SECURITY.md §10.8), so
    // a revocation reaches it at once: its service key (0600, beside its
    // database) is the one relay key the keyserver allows.
    let service_key =
        ward_relay::keyserver_link::load_or_create_service_key(&data.join("relay.db.service-key"))
            .map_err(|e| CliError::Msg(e.to_string()))?;
    ks_config.relay_keys = vec![service_key.public_key()];
    let mut link = ward_relay::keyserver_link::KeyserverLink::new(
        urls.keyserver.clone(),
        std::sync::Arc::new(service_key),
    );
    link.tls = link_tls;
    relay_config.keyserver_link = Some(link);
    // The other commands read this instead of needing --relay / --keyserver.
    endpoints::write(&data, &urls).map_err(io(endpoints::path(&data).display().to_string()))?;
    let ward = ward_cmd();
    println!("Ward is up.");
    println!("  relay      {}", urls.relay);
    println!("  keyserver  {}", urls.keyserver);
    println!("  org root   {org}");
    println!("Invite a clinician from another terminal (same folder):");
    println!(
        "  {ward} admin invite --user-id dr.martin --name \"Dr Claire Martin\" --out martin.invite"
    );
    println!("and enroll them from the file it wrote:");
    println!("  {ward} enroll --invite-file martin.invite");
    println!("Or see it all at once: {ward} demo");
    println!("Stop with Ctrl-C.");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let relay = ward_relay::run(relay_listener, relay_config, stopped(stop_rx.clone()));
    let keyserver = ward_keyserver::run(ks_listener, ks_config, stopped(stop_rx));
    let ctrl_c = async {
        stop.await;
        println!("Stopping: flushing and closing connections...");
        let _ = stop_tx.send(true);
    };
    let (r, k, ()) = tokio::join!(relay, keyserver, ctrl_c);
    endpoints::remove(&data);
    r?;
    k?;
    Ok(())
}

/// Ctrl-C or SIGTERM, with the handlers installed now (see `ward_net::signal`).
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    ward_net::signal::stop().map_err(io("cannot listen for Ctrl-C / SIGTERM"))
}

/// The invite and its delegation secret, from `--invite-file` or the flags.
fn invite_lines(
    file: Option<std::path::PathBuf>,
    invite: Option<String>,
    delegation: Option<String>,
) -> Result<(String, zeroize::Zeroizing<String>), CliError> {
    if let Some(path) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path).map_err(io(path.display().to_string()))?,
        );
        let line = |tag: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(tag).map(|v| v.trim().to_owned()))
        };
        return match (line("invite:"), line("delegation:")) {
            (Some(i), Some(d)) => Ok((i, zeroize::Zeroizing::new(d))),
            _ => Err(CliError::Msg(format!(
                "{}: no `invite:` and `delegation:` lines (the output of `ward admin invite`)",
                path.display()
            ))),
        };
    }
    match (invite, delegation) {
        (Some(i), Some(d)) => Ok((i, zeroize::Zeroizing::new(d))),
        _ => Err(CliError::Msg(
            "give --invite-file FILE (the output of `ward admin invite`), or --invite with \
             --delegation / WARD_DELEGATION"
                .into(),
        )),
    }
}

fn invite(
    data: &Path,
    root: &root_store::RootArgs,
    details: InviteDetails,
    out: Option<&Path>,
) -> Result<(), CliError> {
    let root = root_store::unlock(data, root)?;
    let (signed, delegation) = create_invite(&mut rand::rng(), &root, &details)?;
    let text = zeroize::Zeroizing::new(format!(
        "Invite for {} ({}), expires {}.\n\
         Hand both lines to the clinician, out of band (QR code, in person).\n\
         The second is a one-time secret: whoever holds it can enroll as this user, once.\n\
         invite:     {}\n\
         delegation: {}\n",
        details.user_id,
        details.display_name,
        device::utc(details.expires_at),
        hex(&signed.encode_to_vec()),
        hex(&*delegation.export_secret())
    ));
    match out {
        None => print!("{}", &*text),
        Some(path) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let write = |p: &Path| -> std::io::Result<()> {
                use std::io::Write;
                let mut f = opts.open(p)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()
            };
            write(path).map_err(io(format!("cannot write the invite to {}", path.display())))?;
            println!(
                "Invite for {} written to {} (owner-only: it holds a one-time secret).",
                details.user_id,
                path.display()
            );
            println!(
                "Enroll with: {} enroll --invite-file {}",
                ward_cmd(),
                path.display()
            );
        }
    }
    Ok(())
}

fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(f: F) -> Result<(), CliError> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f),
        Err(e) => Err(CliError::Io("cannot start the async runtime".into(), e)),
    }
}

fn main() -> ExitCode {
    // No colour codes unless standard error is a terminal.
    ward_ops::logging::init(ward_ops::logging::LogFormat::Text, "warn");
    let (matches, _) =
        match ward_ops::layered::parse_sub(Cli::command(), "up", "WARD_UP", std::env::args_os()) {
            Ok(m) => m,
            Err(ward_ops::layered::LayerError::Clap(e)) => e.exit(),
            Err(e) => {
                eprintln!("ward: {e}");
                return ExitCode::from(2);
            }
        };
    if let Some(("up", sub)) = matches.subcommand()
        && sub.get_flag("print_config")
    {
        if let Some(up) = Cli::command().find_subcommand("up") {
            print!("{}", ward_ops::layered::render(up, sub, "WARD_UP"));
        }
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Up {
            data,
            relay_listen,
            keyserver_listen,
            opts,
        } => block_on(up(data, relay_listen, keyserver_listen, opts)),
        Command::Enroll {
            invite_file,
            invite,
            delegation,
            device,
        } => match invite_lines(invite_file, invite, delegation) {
            Ok((invite, delegation)) => block_on(device::enroll(device, &invite, &delegation)),
            Err(e) => Err(e),
        },
        Command::Send {
            as_user,
            room: Some(room),
            file: None,
            text,
            wait_secs,
            device,
            ..
        } => block_on(room::send(
            device,
            as_user,
            room,
            text.unwrap_or_default(),
            std::time::Duration::from_secs(wait_secs),
        )),
        Command::Send {
            as_user,
            to,
            conversation,
            room,
            file: Some(path),
            media_type,
            thumbnail,
            wait_secs,
            device,
            ..
        } => block_on(files::send_file(
            device,
            as_user,
            files::SendFile {
                to,
                conversation,
                room,
                path,
                media_type,
                thumbnail,
                wait: std::time::Duration::from_secs(wait_secs),
            },
        )),
        Command::Send {
            as_user,
            to,
            text,
            wait_secs,
            device,
            ..
        } => block_on(device::send(
            device,
            as_user,
            to,
            text.unwrap_or_default(),
            std::time::Duration::from_secs(wait_secs),
        )),
        Command::Room { command } => block_on(room::run(command)),
        Command::Device { command } => block_on(devices::run(command)),
        Command::Audit { args } => block_on(audit::run(args)),
        Command::Download {
            as_user,
            message_id,
            out,
            device,
        } => block_on(files::download(device, as_user, message_id, out)),
        Command::Listen {
            as_user,
            count,
            timeout_secs,
            device,
        } => block_on(device::listen(
            device,
            as_user,
            count,
            timeout_secs.map(std::time::Duration::from_secs),
        )),
        Command::Conversations { as_user, device } => {
            block_on(history::conversations(device, as_user))
        }
        Command::History {
            as_user,
            conversation,
            with,
            limit,
            device,
        } => block_on(history::history(
            device,
            as_user,
            history::Selection {
                conversation,
                with,
                limit,
            },
        )),
        Command::Outbox { as_user, device } => block_on(history::outbox(device, as_user)),
        Command::RotateKey { as_user, device } => block_on(device::rotate_key(device, as_user)),
        Command::Demo { keep } => block_on(demo::run(keep)),
        Command::Directory {
            command:
                DirectoryCommand::Search {
                    text,
                    profession,
                    page,
                    page_size,
                    as_user,
                    device,
                },
        } => block_on(directory::search(
            device,
            as_user,
            directory::Search {
                text,
                profession,
                page,
                page_size,
            },
        )),
        Command::Admin {
            command: Admin::Init { data, root },
        } => root_store::init(&data, &root),
        Command::Admin {
            command: Admin::EncryptRoot { data, root },
        } => root_store::encrypt_root(&data, &root),
        Command::Admin {
            command:
                Admin::Revoke {
                    user_id,
                    device_id,
                    root,
                    keyserver,
                },
        } => block_on(admin::revoke(keyserver, root, user_id, device_id)),
        Command::Admin {
            command:
                Admin::AuditExport {
                    data,
                    since,
                    format,
                },
        } => admin::audit_export(data, since, format),
        Command::Admin {
            command:
                Admin::Invite {
                    data,
                    user_id,
                    name,
                    profession,
                    registry_number,
                    days,
                    out,
                    root,
                },
        } => {
            let now = now_secs();
            invite(
                &data,
                &root,
                InviteDetails {
                    user_id,
                    display_name: name,
                    profession,
                    registry_number,
                    expires_at: now.saturating_add(days.saturating_mul(86_400)),
                },
                out.as_deref(),
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward: {e}");
            ExitCode::FAILURE
        }
    }
}
