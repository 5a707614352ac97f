//! `ward room ...` and `ward send --room`: patient-case rooms (SECURITY.md
//! §17). Every command verifies the room's log on this device before it
//! shows or changes anything; a room is named by its id or the start of it
//! (as `ward room list` shows).

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use ward_core::RoomId;
use ward_core::room::HistoryPolicy;
use ward_sdk::{Client, RoomInfo};

use crate::device::{DeviceArgs, await_sent, clean, explain, short};
use crate::{CliError, hex};

/// What a member added later may read (fixed at creation).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum History {
    /// From its joining on.
    FromJoin,
    /// The room's whole history (a case handed to the next team).
    Whole,
}

/// `ward room <command>`.
#[derive(Subcommand)]
pub enum RoomCommand {
    /// Create a room: you are its admin; the name, case and topic are
    /// sealed to the members (the servers never see them).
    Create {
        /// The room's name.
        #[arg(long)]
        name: String,
        /// The patient-case reference.
        #[arg(long = "case", default_value = "")]
        case_reference: String,
        /// The topic.
        #[arg(long, default_value = "")]
        topic: String,
        /// The members' user ids, comma-separated (you are added).
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        /// What members added later may read.
        #[arg(long, value_enum, default_value = "from-join")]
        history: History,
        #[command(flatten)]
        who: Who,
    },
    /// Add members (admins only).
    Add {
        /// The room id, or the start of it.
        room: String,
        /// User ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Remove a member (admins only): a new room key it cannot read.
    Remove {
        /// The room id, or the start of it.
        room: String,
        /// The member's user id.
        #[arg(long)]
        member: String,
        #[command(flatten)]
        who: Who,
    },
    /// Leave a room (the last admin hands the role to another member).
    Leave {
        /// The room id, or the start of it.
        room: String,
        #[command(flatten)]
        who: Who,
    },
    /// List your rooms (id, name, case, members, your role).
    List {
        #[command(flatten)]
        who: Who,
    },
    /// A room's members and admins.
    Members {
        /// The room id, or the start of it.
        room: String,
        #[command(flatten)]
        who: Who,
    },
}

/// Which device store.
#[derive(clap::Args)]
pub struct Who {
    /// The user (picks `<data>/clients/<user>.db`).
    #[arg(long = "as", env = "WARD_USER")]
    pub as_user: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs a `ward room` command.
pub async fn run(cmd: RoomCommand) -> Result<(), CliError> {
    let who = match &cmd {
        RoomCommand::Create { who, .. }
        | RoomCommand::Add { who, .. }
        | RoomCommand::Remove { who, .. }
        | RoomCommand::Leave { who, .. }
        | RoomCommand::List { who }
        | RoomCommand::Members { who, .. } => who,
    };
    let client = who.device.unlock(who.as_user.as_deref()).await?;
    let result = run_with(&client, &who.device, &cmd).await;
    client.lock().await;
    result
}

async fn run_with(client: &Client, args: &DeviceArgs, cmd: &RoomCommand) -> Result<(), CliError> {
    let err = |e| explain(e, args);
    match cmd {
        RoomCommand::Create {
            name,
            case_reference,
            topic,
            members,
            history,
            ..
        } => {
            let members: Vec<&str> = members
                .iter()
                .map(|m| m.trim())
                .filter(|m| !m.is_empty())
                .collect();
            let policy = match history {
                History::FromJoin => HistoryPolicy::FromJoin,
                History::Whole => HistoryPolicy::WholeHistory,
            };
            let id = client
                .create_room(name, case_reference, topic, &members, policy)
                .await
                .map_err(err)?;
            println!(
                "Room {} created ({} members).",
                hex(id.as_bytes()),
                members.len() + 1
            );
            eprintln!(
                "Send to it with `{} send --room {} \"text\"`.",
                crate::ward_cmd(),
                short(id.as_bytes())
            );
        }
        RoomCommand::Add { room, members, .. } => {
            let id = find(client, room).await?;
            let members: Vec<&str> = members.iter().map(|m| m.trim()).collect();
            client.add_members(&id, &members).await.map_err(err)?;
            println!(
                "Added {} to room {}.",
                members.join(", "),
                short(id.as_bytes())
            );
            // Under `--history whole` the room's earlier messages were
            // queued for them (SECURITY.md §17.13): see them out before
            // exiting, as `ward send` does.
            if client.outbox_len().await.map_err(err)? > 0 {
                await_outbox(client, args, Duration::from_secs(30)).await?;
            }
        }
        RoomCommand::Remove { room, member, .. } => {
            let id = find(client, room).await?;
            client.remove_member(&id, member).await.map_err(err)?;
            println!(
                "Removed {} from room {}: the room has a new key it cannot read.",
                clean(member),
                short(id.as_bytes())
            );
        }
        RoomCommand::Leave { room, .. } => {
            let id = find(client, room).await?;
            client.leave(&id).await.map_err(err)?;
            println!("Left room {}.", short(id.as_bytes()));
        }
        RoomCommand::List { .. } => {
            let rooms = client.rooms().await.map_err(err)?;
            if rooms.is_empty() {
                eprintln!(
                    "No room yet: `{} room create --name ... --members a,b` makes one.",
                    crate::ward_cmd()
                );
            }
            for r in &rooms {
                println!("{}", line(client, r));
            }
        }
        RoomCommand::Members { room, .. } => {
            let id = find(client, room).await?;
            for m in client.members(&id).await.map_err(err)? {
                println!(
                    "{}{}",
                    clean(&m.user_id),
                    if m.admin { "  (admin)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

fn line(client: &Client, r: &RoomInfo) -> String {
    let (name, case) = r.metadata.as_ref().map_or_else(
        || ("(sealed)".to_owned(), String::new()),
        |m| (clean(&m.name), clean(&m.case_reference)),
    );
    let role = if !r.is_member {
        "former member"
    } else if r
        .members
        .iter()
        .any(|m| m.admin && m.user_id == client.user_id())
    {
        "admin"
    } else {
        "member"
    };
    let mut out = format!(
        "{}  {name}  case {}  {} members  {role}",
        short(r.id.as_bytes()),
        if case.is_empty() { "-" } else { &case },
        r.members.len()
    );
    if let Some(f) = &r.fault {
        out.push_str(&format!("  REFUSED: {}", clean(f)));
    }
    out
}

/// The room whose id starts with `prefix` (hex).
pub async fn find(client: &Client, prefix: &str) -> Result<RoomId, CliError> {
    let prefix = prefix.trim().to_ascii_lowercase();
    let rooms = client
        .rooms()
        .await
        .map_err(|e| CliError::Msg(e.to_string()))?;
    let found: Vec<RoomId> = rooms
        .iter()
        .filter(|r| hex(r.id.as_bytes()).starts_with(&prefix))
        .map(|r| r.id)
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(CliError::Msg(format!(
            "no room {prefix}: `{} room list` lists yours",
            crate::ward_cmd()
        ))),
        _ => Err(CliError::Msg(format!(
            "several rooms start with {prefix}: give more of the id"
        ))),
    }
}

/// `ward send --room <id> "text"`.
pub async fn send(
    args: DeviceArgs,
    me: Option<String>,
    room: String,
    text: String,
    wait: Duration,
) -> Result<(), CliError> {
    let mut client = args.unlock(me.as_deref()).await?;
    let result = async {
        let mut events = client
            .events()
            .ok_or_else(|| CliError::Msg("internal: no event stream".into()))?;
        let id = find(&client, &room).await?;
        let rid = client
            .send_room_text(&id, &text)
            .await
            .map_err(|e| explain(e, &args))?;
        let me = client.user_id().to_owned();
        let label = format!("room {}", short(id.as_bytes()));
        let conv = ward_core::envelope::room_conversation_id(&id);
        await_sent(&args, &mut events, rid, &label, conv, wait, &me).await
    }
    .await;
    client.lock().await;
    result
}

/// Waits until the outbox is empty (the relay acked everything queued), or
/// says what stays queued after `wait`.
async fn await_outbox(client: &Client, args: &DeviceArgs, wait: Duration) -> Result<(), CliError> {
    let err = |e| explain(e, args);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = client.outbox_len().await.map_err(err)?;
        if left == 0 {
            println!("Forwarded the room's history to the new members.");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "The room's history for the new members ({left} queued) goes out the next time \
                 `{} send` or `{} listen` runs for you.",
                crate::ward_cmd(),
                crate::ward_cmd()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
