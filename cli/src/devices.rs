//! `ward device ...`: this user's own devices, as its verified log has them
//! (SECURITY.md §4): list them, revoke a lost one from another (a new
//! user key that the revoked device never learns, §4.5), and link a new one
//! by a code (§4.9): `ward device approve` on the device you have shows the
//! code, `ward device link` on the new one takes it, both show the same six
//! digits, and the first approves.

use clap::Subcommand;
use ward_sdk::Client;

use crate::device::{explain, short};
use crate::room::Who;
use crate::{CliError, hex};

/// `ward device <command>`.
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// On a device you have: show a link code for a new device, wait for it,
    /// compare the six digits both show, and approve it (it gets your keys
    /// and, unless --no-history, this device's history).
    Approve {
        /// Do not send this device's conversations and messages.
        #[arg(long)]
        no_history: bool,
        #[command(flatten)]
        who: Who,
    },
    /// On the new device: join with the code `ward device approve` shows
    /// (read from standard input when not given: a code on the command line
    /// is visible to other users of this machine), choose this device's
    /// PIN, compare the six digits, and wait for the approval.
    Link {
        /// The link code (`ward-link:1:...`).
        #[arg(conflicts_with = "resume")]
        code: Option<String>,
        /// Finish a link that was approved but cut before it was done (this
        /// device is in your log already): fetches its keys, without the
        /// rest of the history. Name the store with --store (or --as).
        #[arg(long)]
        resume: bool,
        /// The user, with --resume (picks `<data>/clients/<user>.db`).
        #[arg(long = "as", env = "WARD_USER", requires = "resume")]
        as_user: Option<String>,
        #[command(flatten)]
        device: crate::device::DeviceArgs,
    },
    /// Your devices: id, active or revoked, which one this is.
    List {
        #[command(flatten)]
        who: Who,
    },
    /// Revoke one of your devices (a lost phone): the user key is rotated
    /// so that it reads nothing sent from now on, and the relay and the
    /// keyserver refuse it.
    Revoke {
        /// The device id, or the start of it (as `ward device list` shows).
        device: String,
        #[command(flatten)]
        who: Who,
    },
}

/// Runs a `ward device` command.
pub async fn run(cmd: DeviceCommand) -> Result<(), CliError> {
    let who = match &cmd {
        DeviceCommand::Link {
            resume: true,
            as_user,
            device,
            ..
        } => return resume_link(as_user.as_deref(), device).await,
        DeviceCommand::Link { code, device, .. } => return link(code.as_deref(), device).await,
        DeviceCommand::List { who }
        | DeviceCommand::Revoke { who, .. }
        | DeviceCommand::Approve { who, .. } => who,
    };
    let client = who.device.unlock(who.as_user.as_deref()).await?;
    let result = run_with(&client, &who.device, &cmd).await;
    client.lock().await;
    result
}

async fn run_with(
    client: &Client,
    args: &crate::device::DeviceArgs,
    cmd: &DeviceCommand,
) -> Result<(), CliError> {
    let err = |e| explain(e, args);
    if let DeviceCommand::Approve { no_history, .. } = cmd {
        return approve(client, args, !no_history).await;
    }
    let devices = client.devices().await.map_err(err)?;
    match cmd {
        DeviceCommand::Approve { .. } | DeviceCommand::Link { .. } => {}
        DeviceCommand::List { .. } => {
            for d in &devices {
                println!(
                    "{}  {}{}",
                    hex(d.device_id.as_bytes()),
                    if d.active { "active" } else { "revoked" },
                    if d.this_device { "  (this device)" } else { "" }
                );
            }
        }
        DeviceCommand::Revoke { device, .. } => {
            let prefix = device.trim().to_ascii_lowercase();
            let found: Vec<_> = devices
                .iter()
                .filter(|d| !prefix.is_empty() && hex(d.device_id.as_bytes()).starts_with(&prefix))
                .collect();
            let target = match found.as_slice() {
                [one] => *one,
                [] => {
                    return Err(CliError::Msg(format!(
                        "no device {prefix} (see `ward device list`)"
                    )));
                }
                _ => {
                    return Err(CliError::Msg(format!(
                        "{prefix} names {} devices: give more of the id",
                        found.len()
                    )));
                }
            };
            if !target.active {
                return Err(CliError::Msg(format!(
                    "device {} is already revoked",
                    short(target.device_id.as_bytes())
                )));
            }
            if target.this_device {
                return Err(CliError::Msg(
                    "that is this device: revoke it from another of your devices, or ask the \
                     organisation's admin (`ward admin revoke`)"
                        .into(),
                ));
            }
            client.revoke_device(&target.device_id).await.map_err(err)?;
            println!(
                "Revoked device {}: your user key was rotated; it reads nothing sent from now on.",
                short(target.device_id.as_bytes())
            );
        }
    }
    Ok(())
}

/// `ward device approve`: the existing device's half of a link.
async fn approve(
    client: &Client,
    args: &crate::device::DeviceArgs,
    with_history: bool,
) -> Result<(), CliError> {
    let err = |e| explain(e, args);
    let offer = client.link_device().await.map_err(err)?;
    println!("Link code for the new device (scan it, or paste it there):");
    println!();
    println!("  {}", offer.code());
    println!();
    println!(
        "On the new device: {} device link   (then paste the code)",
        crate::ward_cmd()
    );
    println!(
        "Waiting for it until {} ...",
        crate::device::utc(offer.expires_at())
    );
    let request = offer.wait_for_device().await.map_err(err)?;
    println!(
        "A device joined: {}. It shows a code; this one is:",
        short(request.device_id().as_bytes())
    );
    println!();
    println!("  {}", request.sas());
    println!();
    print!("Does the new device show exactly these digits? Approve it [y/N]: ");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut answer = String::new();
    // End of input is a no.
    let _ = std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut answer);
    println!();
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        request.refuse().await.map_err(err)?;
        println!("Refused: nothing was added to your devices.");
        return Ok(());
    }
    let device = request.device_id();
    let sent = request.approve(with_history).await.map_err(err)?;
    println!(
        "Approved: device {} is one of yours now; {sent} messages of history sent to it.",
        short(device.as_bytes())
    );
    Ok(())
}

/// `ward device link`: the new device's half.
async fn link(code: Option<&str>, args: &crate::device::DeviceArgs) -> Result<(), CliError> {
    let code = match code {
        Some(c) => zeroize::Zeroizing::new(c.to_owned()),
        None => {
            eprint!("Link code (from `ward device approve` on your other device): ");
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
                .map_err(crate::io("cannot read the link code from standard input"))?;
            line
        }
    };
    let parsed = ward_sdk::core::link::LinkCode::parse(&code).map_err(|e| {
        CliError::Msg(format!(
            "{e}: copy the whole line `ward device approve` shows (ward-link:1:...)"
        ))
    })?;
    let user = parsed.user_id.clone();
    drop(parsed);
    let path = args.store_for(Some(&user))?;
    if ward_sdk::store::Store::exists(&path) {
        return Err(CliError::Msg(format!(
            "a device store already exists at {}: {user} has a device on this machine (use \
             --store for another one)",
            path.display()
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::io(dir.display().to_string()))?;
    }
    let config = args.config(path.clone())?;
    let pin = args.pin().read(
        &format!("Choose a PIN for this device of {user} (at least 6 characters): "),
        true,
    )?;
    let linking = ward_sdk::PendingDevice::link(config, &code, pin)
        .await
        .map_err(|e| explain_link(e, args))?;
    println!("Joined. Check that your other device shows the same digits:");
    println!();
    println!("  {}", linking.sas());
    println!();
    println!("Waiting for the approval there ...");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let client = linking.finish().await.map_err(|e| explain_link(e, args))?;
    let mut messages = 0;
    for c in client.conversations().await.map_err(|e| explain(e, args))? {
        messages += client
            .history(c.id)
            .await
            .map_err(|e| explain(e, args))?
            .len();
    }
    println!(
        "Linked: this is now a device of {user} ({}), with {messages} messages of history.",
        short(client.device_id().as_bytes())
    );
    println!("  store     {} (encrypted, PIN-locked)", path.display());
    client.lock().await;
    Ok(())
}

/// `ward device link --resume`: a link approved but cut before its end.
async fn resume_link(user: Option<&str>, args: &crate::device::DeviceArgs) -> Result<(), CliError> {
    let path = args.store_for(user)?;
    if !ward_sdk::store::Store::exists(&path) {
        return Err(CliError::Msg(format!(
            "no device store at {}: nothing to resume (run `ward device link` with a new code)",
            path.display()
        )));
    }
    let config = args.config(path.clone())?;
    let pin = args.pin().read(
        &format!("PIN of the device store {}: ", path.display()),
        false,
    )?;
    let pending = ward_sdk::PendingDevice::resume(config, pin)
        .await
        .map_err(|e| explain(e, args))?;
    let client = pending.complete().await.map_err(|e| match e {
        ward_sdk::ClientError::DeviceNotInLog => CliError::Msg(
            "this device was never approved: move its store aside and run `ward device link` \
             with a new code"
                .into(),
        ),
        e => explain(e, args),
    })?;
    println!(
        "Linked: this is now a device of {} ({}).",
        client.user_id(),
        short(client.device_id().as_bytes())
    );
    client.lock().await;
    Ok(())
}

/// A link failure, said so that the next step is plain.
fn explain_link(e: ward_sdk::ClientError, args: &crate::device::DeviceArgs) -> CliError {
    use ward_sdk::ClientError as E;
    use ward_sdk::core::link::LinkError;
    match e {
        E::NoSuchLink => CliError::Msg(
            "the relay knows no link under this code: it expired, was already used, or the \
             other device stopped waiting. Run `ward device approve` there again"
                .into(),
        ),
        E::LinkRefused => CliError::Msg(
            "the other device refused this one; nothing was kept here. If the digits matched, \
             run both commands again"
                .into(),
        ),
        E::Link(LinkError::Tampered) => CliError::Msg(
            "the link was tampered with on its way (a message did not open under the code's \
             key): nothing was approved. Do not retry through this relay without telling your \
             IT"
            .into(),
        ),
        E::LinkClosed => CliError::Msg(
            "the other device ended the link before it was done. If it had approved this \
             device, `ward device link --resume --store <this store>` finishes it; else run \
             both commands again"
                .into(),
        ),
        e => explain(e, args),
    }
}
