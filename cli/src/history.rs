//! `ward conversations`, `ward history`, `ward outbox`: what a device holds,
//! read from its store (nothing here needs the servers).

use std::collections::HashSet;

use ward_core::ConversationId;
use ward_sdk::store::{Message, OutboxState};
use ward_sdk::{Client, QueuedMessage};

use crate::device::{DeviceArgs, clean, message_line, short, utc};
use crate::{CliError, hex};

/// `ward conversations`: one line per conversation, most recent first.
pub async fn conversations(args: DeviceArgs, me: Option<String>) -> Result<(), CliError> {
    let client = args.unlock(me.as_deref()).await?;
    let result = conversations_inner(&client).await;
    client.lock().await;
    result
}

async fn conversations_inner(client: &Client) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for c in client.conversations().await.map_err(sdk)? {
        let history = client.history(c.id).await.map_err(sdk)?;
        let last = history.iter().map(|m| m.timestamp_ms).max();
        rows.push((last, c.id, c.members, history.len()));
    }
    if rows.is_empty() {
        eprintln!(
            "No conversation yet: `{} send --to <user id> \"text\"` starts one.",
            crate::ward_cmd()
        );
        return Ok(());
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (last, id, members, n) in rows {
        let members: Vec<String> = members.iter().map(|m| clean(m)).collect();
        let last = last.map_or_else(|| "-".to_owned(), |t| utc(t / 1000));
        println!(
            "{}  {}  {n} message{}  last {last}",
            short(id.as_bytes()),
            members.join(","),
            if n == 1 { "" } else { "s" },
        );
    }
    Ok(())
}

/// Which messages `ward history` prints.
pub struct Selection {
    /// A conversation id or a prefix of its hex form.
    pub conversation: Option<String>,
    /// The conversation with exactly these members (besides this user).
    pub with: Vec<String>,
    /// Only the last this many.
    pub limit: Option<usize>,
}

/// `ward history`: stored messages, oldest first, as `ward listen` prints
/// them; those still in the outbox are marked `(queued)`.
pub async fn history(args: DeviceArgs, me: Option<String>, sel: Selection) -> Result<(), CliError> {
    let client = args.unlock(me.as_deref()).await?;
    let result = history_inner(&client, &sel).await;
    client.lock().await;
    result
}

async fn history_inner(client: &Client, sel: &Selection) -> Result<(), CliError> {
    let ids = select(client, sel).await?;
    let mut messages: Vec<Message> = Vec::new();
    for id in ids {
        messages.extend(client.history(id).await.map_err(sdk)?);
    }
    // Per conversation they are ordered already; across them, by time.
    messages.sort_by_key(|m| m.timestamp_ms);
    if let Some(n) = sel.limit {
        let skip = messages.len().saturating_sub(n);
        messages.drain(..skip);
    }
    let queued: HashSet<_> = client
        .outbox()
        .await
        .map_err(sdk)?
        .into_iter()
        .filter_map(|q| q.resource_id)
        .collect();
    if messages.is_empty() {
        eprintln!("No message.");
    }
    for m in &messages {
        let mine = m.sender_user_id == client.user_id();
        let mark = if mine && queued.contains(&m.resource_id) {
            "  (queued)"
        } else {
            ""
        };
        println!("{}{mark}", message_line(m));
    }
    Ok(())
}

pub(crate) async fn select(
    client: &Client,
    sel: &Selection,
) -> Result<Vec<ConversationId>, CliError> {
    let all = client.conversations().await.map_err(sdk)?;
    // Rooms' messages are filed under their conversation id (room_id[0..16]),
    // so a room id prefix selects them too.
    let rooms: Vec<ConversationId> = client
        .rooms()
        .await
        .map_err(sdk)?
        .into_iter()
        .map(|r| r.conversation_id)
        .collect();
    if let Some(prefix) = &sel.conversation {
        let prefix = prefix.to_ascii_lowercase();
        let found: Vec<_> = all
            .iter()
            .map(|c| c.id)
            .chain(rooms.iter().copied())
            .filter(|id| hex(id.as_bytes()).starts_with(&prefix))
            .collect();
        return match found.len() {
            1 => Ok(found),
            0 => Err(CliError::Msg(format!(
                "no conversation {prefix}: `{} conversations` lists them",
                crate::ward_cmd()
            ))),
            _ => Err(CliError::Msg(format!(
                "several conversations start with {prefix}: give more of the id"
            ))),
        };
    }
    if !sel.with.is_empty() {
        let me = client.user_id();
        let mut want: Vec<&str> = sel.with.iter().map(String::as_str).collect();
        want.push(me);
        want.sort_unstable();
        want.dedup();
        let found: Vec<_> = all
            .iter()
            .filter(|c| {
                c.members
                    .iter()
                    .map(String::as_str)
                    .eq(want.iter().copied())
            })
            .map(|c| c.id)
            .collect();
        if found.is_empty() {
            return Err(CliError::Msg(format!(
                "no conversation with exactly {}",
                sel.with.join(",")
            )));
        }
        return Ok(found);
    }
    Ok(all.into_iter().map(|c| c.id).chain(rooms).collect())
}

/// `ward outbox`: messages sealed on this device that the relay has not
/// confirmed yet, oldest first.
pub async fn outbox(args: DeviceArgs, me: Option<String>) -> Result<(), CliError> {
    let client = args.unlock(me.as_deref()).await?;
    let result = outbox_inner(&client).await;
    client.lock().await;
    result
}

async fn outbox_inner(client: &Client) -> Result<(), CliError> {
    let queued = client.outbox().await.map_err(sdk)?;
    if queued.is_empty() {
        println!(
            "The outbox is empty: every message sent from this device was confirmed by the relay."
        );
        return Ok(());
    }
    for q in &queued {
        println!("{}", outbox_line(client, q).await?);
    }
    eprintln!(
        "{} message{} waiting; they are sent when the relay is reachable (`{} listen` keeps the device connected).",
        queued.len(),
        if queued.len() == 1 { "" } else { "s" },
        crate::ward_cmd()
    );
    Ok(())
}

async fn outbox_line(client: &Client, q: &QueuedMessage) -> Result<String, CliError> {
    let state = match q.state {
        OutboxState::Pending => "not yet sent",
        OutboxState::Sent => "sent, awaiting the relay's confirmation",
    };
    let text = match q.resource_id {
        Some(rid) => client
            .history(q.conversation_id)
            .await
            .map_err(sdk)?
            .into_iter()
            .find(|m| m.resource_id == rid && m.sender_user_id == client.user_id())
            .map(|m| preview(&m))
            .unwrap_or_default(),
        None => String::new(),
    };
    Ok(format!(
        "{}  conv {}  {state}  {text}",
        utc(q.queued_at_ms / 1000),
        short(q.conversation_id.as_bytes()),
    ))
}

fn preview(m: &Message) -> String {
    match m.content_type {
        ward_core::envelope::ContentType::Text => {
            let text = clean(&String::from_utf8_lossy(&m.content));
            match text.char_indices().nth(60) {
                Some((i, _)) => format!("{}…", &text[..i]),
                None => text,
            }
        }
        _ => match m.attachment() {
            Some(a) => crate::files::attachment_line(m, &a),
            None => format!("[file, {} bytes]", m.content.len()),
        },
    }
}

fn sdk(e: ward_sdk::ClientError) -> CliError {
    CliError::Msg(e.to_string())
}
