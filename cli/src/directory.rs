//! `ward directory search`: the organisation's professional directory, as
//! the SDK verified it (every line is a root-signed invite that is the
//! user's log entry 0; SECURITY.md §10.9).

use ward_sdk::{DirectoryQuery, PageCursor};

use crate::CliError;
use crate::device::{DeviceArgs, clean, explain};

/// What to search for.
pub struct Search {
    /// Name words or a registry-number prefix.
    pub text: String,
    /// Only this profession.
    pub profession: Option<String>,
    /// Which page (1 is the first); each earlier page is fetched on the way.
    pub page: u32,
    /// Results per page.
    pub page_size: u32,
}

/// `ward directory search`: one line per clinician (user id, name,
/// profession, registry number), then a hint when more pages follow.
pub async fn search(args: DeviceArgs, me: Option<String>, s: Search) -> Result<(), CliError> {
    if s.page == 0 {
        return Err(CliError::Msg("--page starts at 1".into()));
    }
    let client = args.unlock(me.as_deref()).await?;
    let query = DirectoryQuery {
        text: s.text,
        profession: s.profession,
        page_size: s.page_size,
    };
    let mut cursor: Option<PageCursor> = None;
    let mut result = Ok(None);
    // The cursor is opaque: page N is reached through pages 1..N-1.
    for n in 1..=s.page {
        match client.search_directory(&query, cursor.as_ref()).await {
            Ok(page) if n == s.page => {
                result = Ok(Some(page));
            }
            Ok(page) => match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            },
            Err(e) => {
                result = Err(explain(e, &args));
                break;
            }
        }
    }
    client.lock().await;
    let Some(page) = result? else {
        println!("No page {}: fewer results than that.", s.page);
        return Ok(());
    };
    if page.items.is_empty() {
        println!("No clinician matches.");
    }
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            clean(s)
        }
    };
    for e in &page.items {
        println!(
            "{}  {}  {}  {}",
            clean(&e.user_id),
            or_dash(&e.display_name),
            or_dash(&e.profession),
            or_dash(&e.registry_number)
        );
    }
    if page.next.is_some() {
        eprintln!("More results: add --page {}.", s.page + 1);
    }
    Ok(())
}
