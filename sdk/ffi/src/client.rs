//! [`WardClient`] and the calls that make one: [`enroll`],
//! [`enroll_with_invite_file`], [`unlock`], [`unlock_with_platform_secret`].

use std::sync::Arc;

use tokio::sync::{Mutex, RwLock, mpsc};
use ward_sdk::store::{Pin, PlatformSecret};
use ward_sdk::{Client, Event, InviteFile};
use zeroize::Zeroizing;

use crate::types::{
    DirectoryPage, ProgressListener, RoomHistory, RoomMember, Thumbnail, WardConfig,
    WardConversation, WardDevice, WardEvent, WardMessage, WardRoom, conversation_id, resource_id,
    room_id,
};
use crate::{WardError, run};

/// An enrolled, unlocked device: send, receive, rooms, attachments.
///
/// Calls may run concurrently from any thread. After [`Self::lock`] (or a
/// revocation) every call fails with [`WardError::Closed`].
#[derive(uniffi::Object)]
pub struct WardClient {
    /// `None` once locked. Calls hold it shared; `lock` takes it.
    pub(crate) client: Arc<RwLock<Option<Client>>>,
    /// The SDK's one event stream, read by `next_event`.
    events: Arc<Mutex<Option<mpsc::Receiver<Event>>>>,
    user_id: String,
    device_id: String,
}

impl WardClient {
    pub(crate) fn new(mut client: Client) -> Arc<Self> {
        let events = client.events();
        Arc::new(Self {
            user_id: client.user_id().to_owned(),
            device_id: hex::encode(client.device_id().as_bytes()),
            client: Arc::new(RwLock::new(Some(client))),
            events: Arc::new(Mutex::new(events)),
        })
    }
}

/// Takes the PIN into the SDK's zeroizing type (a bad one is
/// [`WardError::InvalidPin`]).
pub(crate) fn pin(pin: String) -> Result<Pin, WardError> {
    Ok(Pin::new(pin)?)
}

/// Enrolls this device as the first device of the invited clinician:
/// `invite` is the encoded invite and `delegation` its 32-byte one-time
/// secret (both from `ward admin invite`, handed over out of band), `pin`
/// the PIN the store is created under. An invite already used or expired is
/// [`WardError::Invalid`].
#[uniffi::export]
pub async fn enroll(
    config: WardConfig,
    invite: Vec<u8>,
    delegation: Vec<u8>,
    pin: String,
) -> Result<Arc<WardClient>, WardError> {
    enroll_as(config, invite, delegation, pin, false).await
}

/// [`enroll`] (`again`: [`reenroll`]).
async fn enroll_as(
    config: WardConfig,
    invite: Vec<u8>,
    delegation: Vec<u8>,
    pin: String,
    again: bool,
) -> Result<Arc<WardClient>, WardError> {
    let delegation = Zeroizing::new(delegation);
    let pin = self::pin(pin)?;
    let config = config.to_sdk()?;
    run(async move {
        Ok(if again {
            Client::reenroll(config, &invite, &delegation, pin).await?
        } else {
            Client::enroll(config, &invite, &delegation, pin).await?
        })
    })
    .await
    .map(WardClient::new)
}

/// [`enroll`] from the invite file `ward admin invite --out FILE` wrote.
#[uniffi::export]
pub async fn enroll_with_invite_file(
    config: WardConfig,
    invite_file: String,
    pin: String,
) -> Result<Arc<WardClient>, WardError> {
    let pin = self::pin(pin)?;
    let config = config.to_sdk()?;
    run(async move {
        let file = InviteFile::read(std::path::Path::new(&invite_file))?;
        Ok(Client::enroll(config, &file.invite, &file.delegation, pin).await?)
    })
    .await
    .map(WardClient::new)
}

/// Enrolls again, from a new invite, into the store that [`unlock`]
/// answered [`WardError::ReenrollRequired`] for (a store of the protocol v1
/// SDK): same store, same PIN, its history kept.
#[uniffi::export]
pub async fn reenroll(
    config: WardConfig,
    invite: Vec<u8>,
    delegation: Vec<u8>,
    pin: String,
) -> Result<Arc<WardClient>, WardError> {
    enroll_as(config, invite, delegation, pin, true).await
}

/// Opens the enrolled store at `config.store_path` with `pin` and starts
/// the client. A wrong PIN is [`WardError::WrongPin`] (with the attempts
/// left), the last allowed one [`WardError::TooManyAttempts`] (the store is
/// wiped).
#[uniffi::export]
pub async fn unlock(config: WardConfig, pin: String) -> Result<Arc<WardClient>, WardError> {
    let pin = self::pin(pin)?;
    let config = config.to_sdk()?;
    run(async move { Ok(Client::unlock(config, pin).await?) })
        .await
        .map(WardClient::new)
}

/// Takes 32 bytes into the SDK's zeroizing type (another length is
/// [`WardError::Invalid`]); the `Vec` is zeroized too.
fn platform_secret(secret: Vec<u8>) -> Result<PlatformSecret, WardError> {
    let secret = Zeroizing::new(secret);
    Ok(PlatformSecret::from_slice(&secret)?)
}

/// Opens the enrolled store at `config.store_path` with the 32-byte secret
/// the platform keystore released after a biometric check, without the
/// PIN, and starts the client. Only while the slot that
/// [`WardClient::enable_platform_unlock`] made is valid: otherwise
/// [`WardError::PinRequired`] with the reason, and the app asks for the PIN
/// ([`unlock`]).
#[uniffi::export]
pub async fn unlock_with_platform_secret(
    config: WardConfig,
    secret: Vec<u8>,
) -> Result<Arc<WardClient>, WardError> {
    let secret = platform_secret(secret)?;
    let config = config.to_sdk()?;
    run(async move { Ok(Client::unlock_with_platform_secret(config, secret).await?) })
        .await
        .map(WardClient::new)
}

/// Runs `$body` with `$c` bound to the unlocked [`Client`], on the SDK's
/// runtime; [`WardError::Closed`] once locked.
macro_rules! with_client {
    ($self:ident, |$c:ident| $body:expr) => {{
        let cell = $self.client.clone();
        run(async move {
            let guard = cell.read().await;
            let $c = guard.as_ref().ok_or(WardError::Closed)?;
            $body
        })
        .await
    }};
}

#[uniffi::export]
impl WardClient {
    /// This device's user id.
    pub fn user_id(&self) -> String {
        self.user_id.clone()
    }

    /// This device's id (hex).
    pub fn device_id(&self) -> String {
        self.device_id.clone()
    }

    /// The next event: a verified message, a rejection, a send outcome, a
    /// room change. Waits until there is one; `None` once the client is
    /// locked or revoked. Read it in a loop: the SDK waits (and does not ack
    /// more) while the app does not.
    pub async fn next_event(&self) -> Option<WardEvent> {
        let events = self.events.clone();
        run(async move {
            let mut guard = events.lock().await;
            Ok(match guard.as_mut() {
                Some(rx) => rx.recv().await.map(WardEvent::from),
                None => None,
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Sends `text` to `user_id`, in the conversation with exactly that
    /// user (created the first time). Returns the message's id (hex) once
    /// it is queued durably; [`WardEvent::Sent`] follows.
    pub async fn send_text_to_user(
        &self,
        user_id: String,
        text: String,
    ) -> Result<String, WardError> {
        with_client!(self, |c| {
            let conversation = c.conversation_with(&[user_id.as_str()]).await?;
            Ok(hex::encode(
                c.send_text(conversation, &text).await?.as_bytes(),
            ))
        })
    }

    /// Creates a conversation with `members` (user ids; this user is
    /// added) and returns its id (hex).
    pub async fn create_conversation(&self, members: Vec<String>) -> Result<String, WardError> {
        with_client!(self, |c| {
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            Ok(hex::encode(
                c.create_conversation(&members).await?.as_bytes(),
            ))
        })
    }

    /// The conversation with exactly `members` and this user: an existing
    /// one, else a new one. Its id (hex).
    pub async fn conversation_with(&self, members: Vec<String>) -> Result<String, WardError> {
        with_client!(self, |c| {
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            Ok(hex::encode(c.conversation_with(&members).await?.as_bytes()))
        })
    }

    /// Registers this device's push token (the bytes APNs, FCM or the
    /// deployment's bridge gave the app; at most 1,024, empty to
    /// unregister): the relay then wakes the device through its push
    /// gateway when something arrives while it is offline, giving the
    /// gateway the token and nothing else. Call it at each start.
    pub async fn register_push(&self, token: Vec<u8>) -> Result<(), WardError> {
        with_client!(self, |c| {
            c.register_push(&token).await?;
            Ok(())
        })
    }

    /// Sends `text` to a conversation; its id (hex) once queued durably.
    pub async fn send_text(
        &self,
        conversation_id: String,
        text: String,
    ) -> Result<String, WardError> {
        with_client!(self, |c| {
            let conversation = self::conversation_id(&conversation_id)?;
            Ok(hex::encode(
                c.send_text(conversation, &text).await?.as_bytes(),
            ))
        })
    }

    /// Every conversation this device knows (rooms are in [`Self::rooms`]).
    pub async fn conversations(&self) -> Result<Vec<WardConversation>, WardError> {
        with_client!(self, |c| {
            Ok(c.conversations()
                .await?
                .into_iter()
                .map(|c| WardConversation {
                    id: hex::encode(c.id.as_bytes()),
                    members: c.members,
                })
                .collect())
        })
    }

    /// A conversation's (or a room's `conversation_id`'s) messages, oldest
    /// first.
    pub async fn history(&self, conversation_id: String) -> Result<Vec<WardMessage>, WardError> {
        with_client!(self, |c| {
            let conversation = self::conversation_id(&conversation_id)?;
            Ok(c.history(conversation)
                .await?
                .iter()
                .map(WardMessage::from)
                .collect())
        })
    }

    /// Creates a patient-case room with `members` (this user is its admin)
    /// and returns its id (hex). The name, case reference and topic are
    /// encrypted to the room: no server sees them.
    pub async fn create_room(
        &self,
        name: String,
        case_reference: String,
        topic: String,
        members: Vec<String>,
        history: RoomHistory,
    ) -> Result<String, WardError> {
        with_client!(self, |c| {
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            let id = c
                .create_room(&name, &case_reference, &topic, &members, history.into())
                .await?;
            Ok(hex::encode(id.as_bytes()))
        })
    }

    /// Adds members to a room (admins only).
    pub async fn add_room_members(
        &self,
        room_id: String,
        members: Vec<String>,
    ) -> Result<(), WardError> {
        with_client!(self, |c| {
            let room = self::room_id(&room_id)?;
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            Ok(c.add_members(&room, &members).await?)
        })
    }

    /// Removes a member from a room (admins only); a new epoch starts, the
    /// removed member reads nothing sent after.
    pub async fn remove_room_member(
        &self,
        room_id: String,
        user_id: String,
    ) -> Result<(), WardError> {
        with_client!(self, |c| {
            let room = self::room_id(&room_id)?;
            Ok(c.remove_member(&room, &user_id).await?)
        })
    }

    /// Leaves a room.
    pub async fn leave_room(&self, room_id: String) -> Result<(), WardError> {
        with_client!(self, |c| {
            let room = self::room_id(&room_id)?;
            Ok(c.leave(&room).await?)
        })
    }

    /// Every room this device knows, as verified.
    pub async fn rooms(&self) -> Result<Vec<WardRoom>, WardError> {
        with_client!(self, |c| {
            Ok(c.rooms().await?.into_iter().map(WardRoom::from).collect())
        })
    }

    /// A room's members, as verified.
    pub async fn room_members(&self, room_id: String) -> Result<Vec<RoomMember>, WardError> {
        with_client!(self, |c| {
            let room = self::room_id(&room_id)?;
            Ok(c.members(&room)
                .await?
                .into_iter()
                .map(|m| RoomMember {
                    user_id: m.user_id,
                    admin: m.admin,
                })
                .collect())
        })
    }

    /// Sends `text` to a room; its id (hex) once queued durably.
    pub async fn send_room_text(&self, room_id: String, text: String) -> Result<String, WardError> {
        with_client!(self, |c| {
            let room = self::room_id(&room_id)?;
            Ok(hex::encode(
                c.send_room_text(&room, &text).await?.as_bytes(),
            ))
        })
    }

    /// Sends the file at `path` to a conversation as an attachment
    /// (encrypted, uploaded resumably, then announced in a signed message),
    /// under `file_name` and `media_type`. `progress` sees the encryption,
    /// then the upload. Returns the message's id (hex) once the relay holds
    /// the whole blob and the message is queued.
    pub async fn send_file(
        &self,
        conversation_id: String,
        path: String,
        file_name: String,
        media_type: String,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<String, WardError> {
        with_client!(self, |c| {
            let conversation = self::conversation_id(&conversation_id)?;
            let id = c
                .send_file(conversation, &path, &file_name, &media_type, |p| {
                    if let Some(l) = &progress {
                        l.on_progress(p.into());
                    }
                })
                .await?;
            Ok(hex::encode(id.as_bytes()))
        })
    }

    /// [`Self::send_file`] with an inline preview the app made: at most
    /// 64 KiB of an `image/...` type, sealed with the file's descriptor;
    /// receivers see it in `AttachmentInfo.thumbnail` before downloading.
    /// One that does not fit is [`WardError::Invalid`] before any work.
    pub async fn send_file_with_thumbnail(
        &self,
        conversation_id: String,
        path: String,
        file_name: String,
        media_type: String,
        thumbnail: Thumbnail,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<String, WardError> {
        let Thumbnail {
            media_type: thumbnail_media_type,
            bytes,
        } = thumbnail;
        let thumbnail = Zeroizing::new(bytes);
        // The app's input, not a verification failure.
        if thumbnail.is_empty()
            || !ward_sdk::core::attachment::valid_thumbnail(&thumbnail, &thumbnail_media_type)
        {
            return Err(WardError::Invalid {
                message: "thumbnail: an image/... of 1 byte to 64 KiB".into(),
            });
        }
        with_client!(self, |c| {
            let conversation = self::conversation_id(&conversation_id)?;
            let id = c
                .send_file_with_thumbnail(
                    conversation,
                    &path,
                    &file_name,
                    &media_type,
                    (&thumbnail_media_type, &thumbnail),
                    |p| {
                        if let Some(l) = &progress {
                            l.on_progress(p.into());
                        }
                    },
                )
                .await?;
            Ok(hex::encode(id.as_bytes()))
        })
    }

    /// This user's devices, from its freshly verified log (the keyserver
    /// must be reachable), oldest first.
    pub async fn devices(&self) -> Result<Vec<WardDevice>, WardError> {
        with_client!(self, |c| {
            Ok(c.devices()
                .await?
                .into_iter()
                .map(|d| WardDevice {
                    device_id: hex::encode(d.device_id.as_bytes()),
                    active: d.active,
                    this_device: d.this_device,
                })
                .collect())
        })
    }

    /// Revokes another device of this user (a lost phone, by its id from
    /// `devices`): the user key is rotated so that it reads nothing sent
    /// from now on.
    pub async fn revoke_device(&self, device_id: String) -> Result<(), WardError> {
        with_client!(self, |c| {
            let id = hex::decode(device_id.trim())
                .ok()
                .and_then(|b| ward_sdk::core::keys::SigningPublicKey::from_bytes(&b).ok())
                .ok_or_else(|| WardError::Invalid {
                    message: "device_id: 64 hex digits of a device key".into(),
                })?;
            Ok(c.revoke_device(&id).await?)
        })
    }

    /// Searches the organisation's professional directory by name words or
    /// a registry-number prefix (`text`, may be empty with `profession`),
    /// `page_size` results a page (1 to 50); `cursor` from the previous
    /// page's `next_cursor`. Every result is the root-signed invite,
    /// verified on this device.
    pub async fn search_directory(
        &self,
        text: String,
        profession: Option<String>,
        page_size: u32,
        cursor: Option<Vec<u8>>,
    ) -> Result<DirectoryPage, WardError> {
        with_client!(self, |c| {
            let query = ward_sdk::DirectoryQuery {
                text,
                profession,
                page_size,
            };
            let cursor = cursor.map(ward_sdk::PageCursor::from_bytes);
            Ok(c.search_directory(&query, cursor.as_ref()).await?.into())
        })
    }

    /// Downloads an attachment message's file into a new file at
    /// `out_path` (never overwritten), verifying every chunk and the whole;
    /// a refused blob leaves nothing behind ([`WardError::Verification`]).
    /// Returns the path written.
    pub async fn download(
        &self,
        message: WardMessage,
        out_path: String,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<String, WardError> {
        with_client!(self, |c| {
            let id = self::resource_id(&message.resource_id)?;
            let stored = c
                .message(&message.sender_user_id, id)
                .await?
                .ok_or_else(|| WardError::NotFound {
                    message: "no such message in the store".into(),
                })?;
            let written = c
                .download(&stored, &out_path, |p| {
                    if let Some(l) = &progress {
                        l.on_progress(p.into());
                    }
                })
                .await?;
            Ok(written.display().to_string())
        })
    }

    /// Lets [`unlock_with_platform_secret`] open this store with `secret`
    /// (32 bytes kept by the platform keystore behind a biometric check)
    /// for `valid_for_secs` seconds from now (1 s to 30 days), allowing 3
    /// wrong secrets; replaces any earlier one. A PIN change or a KDF
    /// upgrade removes it.
    pub async fn enable_platform_unlock(
        &self,
        secret: Vec<u8>,
        valid_for_secs: u64,
    ) -> Result<(), WardError> {
        let secret = platform_secret(secret)?;
        with_client!(self, |c| {
            Ok(
                c.enable_platform_unlock(secret, std::time::Duration::from_secs(valid_for_secs))
                    .await?,
            )
        })
    }

    /// Removes the platform unlock: from then on only the PIN opens the
    /// store.
    pub async fn disable_platform_unlock(&self) -> Result<(), WardError> {
        with_client!(self, |c| Ok(c.disable_platform_unlock().await?))
    }

    /// Stops the client, closes the store and zeroizes its key. Queued
    /// messages stay queued for the next [`unlock`]; `next_event` then
    /// returns `None`, and every other call [`WardError::Closed`].
    pub async fn lock(&self) {
        let cell = self.client.clone();
        let _ = run(async move {
            if let Some(client) = cell.write().await.take() {
                client.lock().await;
            }
            Ok(())
        })
        .await;
    }
}
