//! The professional directory (SECURITY.md §10.9): search the
//! organisation's clinicians at the keyserver, and show only what verifies.
//!
//! The keyserver's index is not trusted. Every result's invite must carry
//! the pinned root's signature over the user id it is listed under, and be
//! the very invite of that user's log entry 0, as this device verified the
//! log (held, or fetched and verified from the root). One result that fails
//! refuses the whole page with a typed error: a keyserver that lies about
//! one clinician's name is not trusted for the others on the page.

use ward_core::invite::verify_invite;
use ward_proto::v1::SearchDirectory;

use super::Inner;
use super::error::{ClientError, Result};

/// Largest page the keyserver serves (SECURITY.md §10.9).
pub const MAX_PAGE_SIZE: u32 = 50;

/// What to search for. Matching is the keyserver's (SECURITY.md §10.9):
/// case- and accent-insensitive; every word of `text` must start a word of
/// the display name, or `text` must start the registry number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryQuery {
    /// Name words or a registry-number prefix (at most 256 bytes, 8 words);
    /// may be empty when `profession` is given.
    pub text: String,
    /// Only clinicians of this profession (compared normalised, whole).
    pub profession: Option<String>,
    /// Results per page, 1..=[`MAX_PAGE_SIZE`] (more is served as 50).
    pub page_size: u32,
}

impl DirectoryQuery {
    /// A search for `text`, any profession, 20 results a page.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            profession: None,
            page_size: 20,
        }
    }
}

/// Where the next page starts: opaque, valid for the same query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor(Vec<u8>);

impl PageCursor {
    /// Its bytes, to carry across a language boundary or a restart.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }

    /// A cursor from [`Self::to_bytes`]. The keyserver checks it (one it
    /// did not make, or for another query, is refused there).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The results, in the keyserver's order (normalised name, user id).
    pub items: Vec<T>,
    /// The next page, if there is one.
    pub next: Option<PageCursor>,
}

/// A clinician of the directory, as the root signed their invite and as
/// their verified log begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// Their user id (what `create_conversation` takes).
    pub user_id: String,
    /// The display name in their root-signed invite.
    pub display_name: String,
    /// Their profession, as the invite says.
    pub profession: String,
    /// Their registry number (RPPS-style), as the invite says.
    pub registry_number: String,
    /// Entries of their log this device verified.
    pub log_len: u64,
}

pub(crate) async fn search(
    inner: &Inner,
    query: &DirectoryQuery,
    cursor: Option<&PageCursor>,
) -> Result<Page<DirectoryEntry>> {
    let size = query.page_size.clamp(1, MAX_PAGE_SIZE);
    let page = inner
        .keyserver
        .search(SearchDirectory {
            query: query.text.clone(),
            profession: query.profession.clone().unwrap_or_default(),
            page_size: size,
            cursor: cursor.map(|c| c.0.clone()).unwrap_or_default(),
        })
        .await?;
    if page.entries.len() > size as usize {
        return Err(ClientError::Protocol(
            "the directory answered more results than asked",
        ));
    }
    let root = inner.config.org_root;
    let mut invites = Vec::with_capacity(page.entries.len());
    for e in &page.entries {
        let signed = e.invite.as_ref().ok_or(ClientError::Protocol(
            "a directory entry without its invite",
        ))?;
        let invite = verify_invite(&root, signed).map_err(|error| ClientError::Chain {
            user_id: e.user_id.clone(),
            error,
        })?;
        if invite.details.user_id != e.user_id {
            return Err(ClientError::DirectoryMismatch {
                user_id: e.user_id.clone(),
            });
        }
        invites.push(invite);
    }
    let user_ids: Vec<String> = page.entries.iter().map(|e| e.user_id.clone()).collect();
    let logs = inner
        .directory
        .verified_unpinned(&inner.store, &inner.keyserver, &user_ids)
        .await?;
    let mut items = Vec::with_capacity(invites.len());
    for invite in invites {
        let user_id = invite.details.user_id;
        let user = logs
            .get(&user_id)
            .ok_or_else(|| ClientError::UnknownUser(user_id.clone()))?;
        // The invite hash is entry 0's `prev_hash`: equal hashes, equal
        // signed invite bytes.
        if user.invite().hash != invite.hash {
            return Err(ClientError::DirectoryMismatch { user_id });
        }
        items.push(DirectoryEntry {
            log_len: user.len(),
            display_name: invite.details.display_name,
            profession: invite.details.profession,
            registry_number: invite.details.registry_number,
            user_id,
        });
    }
    let next = (!page.next_cursor.is_empty()).then_some(PageCursor(page.next_cursor));
    Ok(Page { items, next })
}
