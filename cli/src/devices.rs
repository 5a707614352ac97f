//! `ward device ...`: this user's own devices, as its verified log has them
//! (SECURITY.md §4): list them, and revoke a lost one from another (a new
//! user key that the revoked device never learns, §4.5).

use clap::Subcommand;
use ward_sdk::Client;

use crate::device::{explain, short};
use crate::room::Who;
use crate::{CliError, hex};

/// `ward device <command>`.
#[derive(Subcommand)]
pub enum DeviceCommand {
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
        DeviceCommand::List { who } | DeviceCommand::Revoke { who, .. } => who,
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
    let devices = client.devices().await.map_err(err)?;
    match cmd {
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
