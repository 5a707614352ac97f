//! `ward`: Ward's command-line tool.
//!
//! * `ward up` runs the relay and the keyserver, as two services with two
//!   SQLite databases under `./ward-data`, for a local dev organisation.
//! * `ward admin invite` signs an invite with that dev organisation's root.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    },
    /// Administer the dev organisation.
    Admin {
        #[command(subcommand)]
        command: Admin,
    },
}

#[derive(Subcommand)]
enum Admin {
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
    },
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
}

const ROOT_KEY_FILE: &str = "dev-org-root.key";

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
) -> Result<(), CliError> {
    let (root, created) = load_or_create_root(&data)?;
    let org_root: SigningPublicKey = root.public_key();
    drop(root);
    let relay_listener = TcpListener::bind(relay_listen)
        .await
        .map_err(io(format!("cannot listen on {relay_listen} for the relay")))?;
    let ks_listener = TcpListener::bind(ks_listen).await.map_err(io(format!(
        "cannot listen on {ks_listen} for the keyserver"
    )))?;
    let relay_config = ward_relay::Config::new(data.join("relay.db"), org_root);
    let ks_config = ward_keyserver::Config::new(data.join("keyserver.db"), org_root);

    let org = hex(org_root.as_bytes());
    if created {
        println!(
            "Created a dev organisation in {}/ (its root key is on this disk: dev only;",
            data.display()
        );
        println!("a real organisation keeps its root key offline).");
    }
    println!("Ward is up.");
    println!(
        "  relay      ws://{}",
        relay_listener.local_addr().map_err(io("relay address"))?
    );
    println!(
        "  keyserver  ws://{}",
        ks_listener.local_addr().map_err(io("keyserver address"))?
    );
    println!("  org root   {org}");
    println!("Invite a clinician from another terminal:");
    println!(
        "  cargo run -q -p ward -- admin invite --user-id dr.martin --name \"Dr Claire Martin\""
    );
    println!("Stop with Ctrl-C.");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let relay = ward_relay::run(relay_listener, relay_config, stopped(stop_rx.clone()));
    let keyserver = ward_keyserver::run(ks_listener, ks_config, stopped(stop_rx));
    let ctrl_c = async {
        stop_signal().await;
        println!("Stopping: flushing and closing connections...");
        let _ = stop_tx.send(true);
    };
    let (r, k, ()) = tokio::join!(relay, keyserver, ctrl_c);
    r?;
    k?;
    Ok(())
}

/// Ctrl-C, or SIGTERM from a service manager.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn invite(data: &Path, details: InviteDetails) -> Result<(), CliError> {
    let root = load_root(data)?;
    let (signed, delegation) = create_invite(&mut rand::rng(), &root, &details)?;
    println!(
        "Invite for {} ({}), expires at unix time {}.",
        details.user_id, details.display_name, details.expires_at
    );
    println!("Hand both lines to the clinician, out of band (QR code, in person).");
    println!("The second is a one-time secret: whoever holds it can enroll as this user, once.");
    println!("invite:     {}", hex(&signed.encode_to_vec()));
    println!("delegation: {}", hex(&*delegation.export_secret()));
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            data,
            relay_listen,
            keyserver_listen,
        } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(up(data, relay_listen, keyserver_listen)),
            Err(e) => Err(CliError::Io("cannot start the async runtime".into(), e)),
        },
        Command::Admin {
            command:
                Admin::Invite {
                    data,
                    user_id,
                    name,
                    profession,
                    registry_number,
                    days,
                },
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            invite(
                &data,
                InviteDetails {
                    user_id,
                    display_name: name,
                    profession,
                    registry_number,
                    expires_at: now.saturating_add(days.saturating_mul(86_400)),
                },
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
