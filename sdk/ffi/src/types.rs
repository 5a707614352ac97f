//! The records, enums and the foreign trait the bindings see, and their
//! conversions from the SDK's types. Ids are lowercase hex strings: the
//! same text as the CLI prints, easy to store and compare in any language.

use ward_sdk::core::envelope::ContentType;
use ward_sdk::core::{ConversationId, ResourceId, RoomId};
use ward_sdk::store::Message;
use ward_sdk::{Event, Phase, Progress, RoomInfo};

use crate::WardError;

/// Where the store is and which servers to talk to.
#[derive(uniffi::Record)]
pub struct WardConfig {
    /// The encrypted device store (a file path; its header goes beside it).
    pub store_path: String,
    /// The relay's URL (`wss://host:port`; `ws://` to loopback only).
    pub relay_url: String,
    /// The keyserver's URL.
    pub keyserver_url: String,
    /// The organisation root's public key, hex (64 digits): pinned, every
    /// log is verified from it (`ward up` prints it as `org root`).
    pub org_root: String,
    /// A CA certificate file (PEM) to trust instead of the web PKI's roots:
    /// a private deployment, or `ward up`'s dev CA (`<data>/tls/ca.pem`).
    #[uniffi(default = None)]
    pub ca_file: Option<String>,
    /// The relay's instance id, if its operator set one.
    #[uniffi(default = None)]
    pub relay_instance: Option<String>,
    /// The keyserver's instance id, likewise.
    #[uniffi(default = None)]
    pub keyserver_instance: Option<String>,
    /// Also report `RelayUnreachable` and `SendDelayed` events.
    #[uniffi(default = false)]
    pub connection_events: bool,
    /// Argon2id memory (KiB) for a store created by `enroll`; default 64 MiB.
    /// Lower only for tests or very small devices (at least 8 MiB).
    #[uniffi(default = None)]
    pub kdf_memory_kib: Option<u32>,
    /// Argon2id passes for a store created by `enroll`; default 3.
    #[uniffi(default = None)]
    pub kdf_passes: Option<u32>,
    /// Wrong PINs before the store wipes itself; default 10.
    #[uniffi(default = None)]
    pub max_pin_attempts: Option<u32>,
}

impl WardConfig {
    pub(crate) fn to_sdk(&self) -> Result<ward_sdk::ClientConfig, WardError> {
        let root = unhex(&self.org_root, "org_root")?;
        let root = ward_sdk::core::keys::SigningPublicKey::from_bytes(&root)
            .map_err(|e| invalid(format!("org_root: {e}")))?;
        let mut c = ward_sdk::ClientConfig::new(
            &self.store_path,
            &self.relay_url,
            &self.keyserver_url,
            root,
        );
        if let Some(ca) = &self.ca_file {
            c.tls = ward_net::tls::ClientTls::pinned_ca_file(std::path::Path::new(ca)).map_err(
                |e| WardError::Tls {
                    message: format!("{ca}: {e}"),
                },
            )?;
        }
        if let Some(i) = &self.relay_instance {
            c.relay_instance.clone_from(i);
        }
        if let Some(i) = &self.keyserver_instance {
            c.keyserver_instance.clone_from(i);
        }
        c.connection_events = self.connection_events;
        if let Some(m) = self.kdf_memory_kib {
            c.store_options.kdf.m_cost_kib = m;
        }
        if let Some(t) = self.kdf_passes {
            c.store_options.kdf.t_cost = t;
        }
        if let Some(n) = self.max_pin_attempts {
            c.store_options.max_attempts = n;
        }
        Ok(c)
    }
}

/// What a message holds.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Text: [`WardMessage::text`].
    Text,
    /// Raw bytes (older senders): not shown as text.
    File,
    /// An attachment: [`WardMessage::attachment`], then `download`.
    Attachment,
}

/// What an attachment message says about its file (never the key).
#[derive(uniffi::Record, Clone)]
pub struct AttachmentInfo {
    /// The sender's file name (checked: safe to save under in a folder the
    /// user chose).
    pub file_name: String,
    /// The sender's media type; sniff before trusting it.
    pub media_type: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The encrypted, padded size the transfer moves.
    pub blob_size: u64,
    /// The sender's inline preview image, if any.
    pub thumbnail: Option<Thumbnail>,
}

/// An attachment's inline preview: at most 64 KiB of an `image/...` type,
/// sealed with the descriptor. Its bytes are patient data (no `Debug`).
#[derive(uniffi::Record, Clone)]
pub struct Thumbnail {
    /// `image/...`, as the sender said.
    pub media_type: String,
    /// The image.
    pub bytes: Vec<u8>,
}

/// A verified, decrypted message (received, or sent from this user's
/// devices). No `Debug`: its text is patient data.
#[derive(uniffi::Record, Clone)]
pub struct WardMessage {
    /// Its id (hex), unique per sender.
    pub resource_id: String,
    /// Its conversation (hex); a room's messages carry the room's
    /// `conversation_id`.
    pub conversation_id: String,
    /// The verified sender.
    pub sender_user_id: String,
    /// The sender's device (hex).
    pub sender_device: String,
    /// The sender's timestamp, unix milliseconds.
    pub timestamp_ms: u64,
    /// What it holds.
    pub kind: MessageKind,
    /// The text, for a text message.
    pub text: Option<String>,
    /// The file, for an attachment.
    pub attachment: Option<AttachmentInfo>,
}

impl From<&Message> for WardMessage {
    fn from(m: &Message) -> Self {
        let kind = match m.content_type {
            ContentType::Text => MessageKind::Text,
            ContentType::Attachment => MessageKind::Attachment,
            _ => MessageKind::File,
        };
        Self {
            resource_id: hex::encode(m.resource_id.as_bytes()),
            conversation_id: hex::encode(m.conversation_id.as_bytes()),
            sender_user_id: m.sender_user_id.clone(),
            sender_device: hex::encode(m.sender_device.as_bytes()),
            timestamp_ms: m.timestamp_ms,
            kind,
            text: (kind == MessageKind::Text)
                .then(|| String::from_utf8(m.content.to_vec()).ok())
                .flatten(),
            attachment: m.attachment().map(|a| AttachmentInfo {
                file_name: a.file_name,
                media_type: a.media_type,
                size: a.size,
                blob_size: a.blob_size,
                thumbnail: a.thumbnail.map(|t| Thumbnail {
                    media_type: t.media_type,
                    bytes: t.bytes.to_vec(),
                }),
            }),
        }
    }
}

/// A conversation this device knows.
#[derive(uniffi::Record, Debug, Clone)]
pub struct WardConversation {
    /// Its id (hex).
    pub id: String,
    /// Its members' user ids (this user included).
    pub members: Vec<String>,
}

/// One event of [`crate::WardClient::next_event`]. Reasons are the SDK's
/// descriptions (ids and kinds only, never content).
#[derive(uniffi::Enum)]
pub enum WardEvent {
    /// A message that verified and decrypted, now in the history.
    Message {
        /// The message.
        message: WardMessage,
    },
    /// Something arrived that did not verify: not a message, not stored.
    Rejected {
        /// The relay's sequence number of the entry.
        relay_seq: u64,
        /// The sender the relay named (not verified).
        relay_sender: String,
        /// Why.
        reason: String,
    },
    /// The relay durably stored an outgoing message.
    Sent {
        /// The message (hex).
        resource_id: String,
    },
    /// An outgoing message was refused for good (still in the history).
    SendFailed {
        /// The message (hex).
        resource_id: String,
        /// Why.
        reason: String,
    },
    /// A queued message was sealed again under a new id.
    Resealed {
        /// The id the send returned (hex).
        old: String,
        /// The id it now has (hex).
        new: String,
    },
    /// This device was revoked: the store is wiped, the client closed.
    DeviceRevoked,
    /// A room's membership changed (verified).
    RoomChanged {
        /// The room (hex).
        room_id: String,
        /// Its log's length now.
        len: u64,
        /// Members added.
        added: Vec<String>,
        /// Members removed or gone.
        removed: Vec<String>,
    },
    /// A room's log was served rolled back, forked or invalid: refused.
    RoomRejected {
        /// The room (hex).
        room_id: String,
        /// Why.
        reason: String,
    },
    /// A resumed attachment upload was refused for good.
    AttachmentFailed {
        /// Its conversation (hex).
        conversation_id: String,
        /// Why.
        reason: String,
    },
    /// The relay could not be reached (only with `connection_events`).
    RelayUnreachable {
        /// Why.
        reason: String,
    },
    /// A message could not go out yet (only with `connection_events`).
    SendDelayed {
        /// The message (hex).
        resource_id: String,
        /// Why.
        reason: String,
    },
    /// The relay's numbering went back (reset or restored): tell an operator.
    RelayCursorRegressed {
        /// The cursor before.
        cursor: u64,
        /// The new cursor.
        seq: u64,
    },
    /// A device this device did not add joined this user (key
    /// transparency): "a new device was linked to your account". If the
    /// user did not link it, `revoke_device` it at once.
    DeviceAdded {
        /// The new device (hex): what `revoke_device` takes.
        device_id: String,
        /// The device (or organisation root) that added it (hex).
        added_by: String,
    },
    /// The keyserver's directory misbehaved (a fork, a rollback, a bad
    /// signature, this user's log shown to others differently): the device
    /// kept its last good view. Worth showing and telling an operator.
    TransparencyAlert {
        /// What was wrong.
        reason: String,
    },
    /// An event this version of the bindings does not know yet.
    Other,
}

impl From<Event> for WardEvent {
    fn from(e: Event) -> Self {
        match e {
            Event::Message(m) => Self::Message {
                message: (&m).into(),
            },
            Event::Rejected {
                relay_seq,
                relay_sender,
                reason,
            } => Self::Rejected {
                relay_seq,
                relay_sender,
                reason: reason.to_string(),
            },
            Event::Sent { resource_id } => Self::Sent {
                resource_id: hex::encode(resource_id.as_bytes()),
            },
            Event::SendFailed {
                resource_id,
                reason,
            } => Self::SendFailed {
                resource_id: hex::encode(resource_id.as_bytes()),
                reason: reason.to_string(),
            },
            Event::Resealed { old, new } => Self::Resealed {
                old: hex::encode(old.as_bytes()),
                new: hex::encode(new.as_bytes()),
            },
            Event::DeviceRevoked => Self::DeviceRevoked,
            Event::RoomChanged {
                room_id,
                len,
                added,
                removed,
            } => Self::RoomChanged {
                room_id: hex::encode(room_id.as_bytes()),
                len,
                added,
                removed,
            },
            Event::RoomRejected { room_id, reason } => Self::RoomRejected {
                room_id: hex::encode(room_id.as_bytes()),
                reason: reason.to_string(),
            },
            Event::AttachmentFailed {
                conversation_id,
                reason,
            } => Self::AttachmentFailed {
                conversation_id: hex::encode(conversation_id.as_bytes()),
                reason: reason.to_string(),
            },
            Event::RelayUnreachable { reason } => Self::RelayUnreachable {
                reason: reason.to_string(),
            },
            Event::SendDelayed {
                resource_id,
                reason,
            } => Self::SendDelayed {
                resource_id: hex::encode(resource_id.as_bytes()),
                reason: reason.to_string(),
            },
            Event::RelayCursorRegressed { cursor, seq } => {
                Self::RelayCursorRegressed { cursor, seq }
            }
            Event::DeviceAdded {
                device_id,
                added_by,
            } => Self::DeviceAdded {
                device_id: hex::encode(device_id.as_bytes()),
                added_by: hex::encode(added_by.as_bytes()),
            },
            Event::TransparencyAlert { alert } => Self::TransparencyAlert {
                reason: alert.to_string(),
            },
            _ => Self::Other,
        }
    }
}

/// Who may read a room's past.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomHistory {
    /// A new member reads from its joining on.
    FromJoin,
    /// A new member reads the whole history (a case handed over).
    WholeHistory,
}

impl From<RoomHistory> for ward_sdk::core::room::HistoryPolicy {
    fn from(h: RoomHistory) -> Self {
        match h {
            RoomHistory::FromJoin => Self::FromJoin,
            RoomHistory::WholeHistory => Self::WholeHistory,
        }
    }
}

/// A room member.
#[derive(uniffi::Record, Debug, Clone)]
pub struct RoomMember {
    /// The user id.
    pub user_id: String,
    /// Whether they may add and remove members.
    pub admin: bool,
}

/// A room as this device verified it. No `Debug`: its name and case
/// reference are patient data.
#[derive(uniffi::Record, Clone)]
pub struct WardRoom {
    /// Its id (hex).
    pub id: String,
    /// The conversation id its messages carry (hex).
    pub conversation_id: String,
    /// Its name (`None` if its metadata could not be read).
    pub name: Option<String>,
    /// Its patient-case reference.
    pub case_reference: Option<String>,
    /// Its topic.
    pub topic: Option<String>,
    /// Its members now.
    pub members: Vec<RoomMember>,
    /// Who may read its past.
    pub history: RoomHistory,
    /// Its current epoch.
    pub epoch: u64,
    /// Whether this user is a member now.
    pub is_member: bool,
    /// A recorded rollback or fork: the room is refused.
    pub fault: Option<String>,
}

impl From<RoomInfo> for WardRoom {
    fn from(r: RoomInfo) -> Self {
        let (name, case_reference, topic) = match r.metadata {
            Some(m) => (Some(m.name), Some(m.case_reference), Some(m.topic)),
            None => (None, None, None),
        };
        Self {
            id: hex::encode(r.id.as_bytes()),
            conversation_id: hex::encode(r.conversation_id.as_bytes()),
            name,
            case_reference,
            topic,
            members: r
                .members
                .into_iter()
                .map(|m| RoomMember {
                    user_id: m.user_id,
                    admin: m.admin,
                })
                .collect(),
            history: match r.policy {
                ward_sdk::core::room::HistoryPolicy::WholeHistory => RoomHistory::WholeHistory,
                _ => RoomHistory::FromJoin,
            },
            epoch: r.epoch,
            is_member: r.is_member,
            fault: r.fault,
        }
    }
}

/// What a transfer is doing.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferPhase {
    /// Encrypting the file (before an upload).
    Encrypting,
    /// Uploading the encrypted blob.
    Uploading,
    /// Downloading and verifying the blob.
    Downloading,
    /// A phase this version of the bindings does not know yet.
    Other,
}

/// A transfer's progress.
#[derive(uniffi::Record, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferProgress {
    /// What it is doing.
    pub phase: TransferPhase,
    /// Bytes done in this phase.
    pub done: u64,
    /// Bytes this phase has in all.
    pub total: u64,
}

impl From<Progress> for TransferProgress {
    fn from(p: Progress) -> Self {
        Self {
            phase: match p.phase {
                Phase::Encrypting => TransferPhase::Encrypting,
                Phase::Uploading => TransferPhase::Uploading,
                Phase::Downloading => TransferPhase::Downloading,
                _ => TransferPhase::Other,
            },
            done: p.done,
            total: p.total,
        }
    }
}

/// Implemented by the app to follow a transfer (a progress bar). Called on
/// an SDK thread, often: return quickly, hop to the UI thread yourself.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    /// The transfer moved on.
    fn on_progress(&self, progress: TransferProgress);
}

pub(crate) fn invalid(message: String) -> WardError {
    WardError::Invalid { message }
}

pub(crate) fn unhex(s: &str, what: &str) -> Result<Vec<u8>, WardError> {
    hex::decode(s.trim()).map_err(|_| invalid(format!("{what}: not hex")))
}

pub(crate) fn conversation_id(s: &str) -> Result<ConversationId, WardError> {
    ConversationId::from_slice(&unhex(s, "conversation id")?)
        .ok_or_else(|| invalid("conversation id: not 16 bytes".into()))
}

pub(crate) fn resource_id(s: &str) -> Result<ResourceId, WardError> {
    ResourceId::from_slice(&unhex(s, "resource id")?)
        .ok_or_else(|| invalid("resource id: not 16 bytes".into()))
}

pub(crate) fn room_id(s: &str) -> Result<RoomId, WardError> {
    RoomId::from_slice(&unhex(s, "room id")?).ok_or_else(|| invalid("room id: not 32 bytes".into()))
}

/// A clinician of the professional directory: the root-signed invite,
/// verified on this device before it is shown.
#[derive(uniffi::Record, Debug, Clone)]
pub struct DirectoryEntry {
    /// Their user id (what `conversation_with` takes).
    pub user_id: String,
    /// The display name their invite carries.
    pub display_name: String,
    /// Their profession.
    pub profession: String,
    /// Their registry number (RPPS-style).
    pub registry_number: String,
}

/// One page of directory results.
#[derive(uniffi::Record, Debug, Clone)]
pub struct DirectoryPage {
    /// The results, in the keyserver's order.
    pub entries: Vec<DirectoryEntry>,
    /// Pass to `search_directory` for the next page; none: the last page.
    pub next_cursor: Option<Vec<u8>>,
}

impl From<ward_sdk::Page<ward_sdk::DirectoryEntry>> for DirectoryPage {
    fn from(p: ward_sdk::Page<ward_sdk::DirectoryEntry>) -> Self {
        Self {
            entries: p
                .items
                .into_iter()
                .map(|e| DirectoryEntry {
                    user_id: e.user_id,
                    display_name: e.display_name,
                    profession: e.profession,
                    registry_number: e.registry_number,
                })
                .collect(),
            next_cursor: p.next.map(|c| c.to_bytes()),
        }
    }
}

/// One of this user's devices (`devices`).
#[derive(uniffi::Record, Debug, Clone)]
pub struct WardDevice {
    /// Its id (hex): what `revoke_device` takes.
    pub device_id: String,
    /// Not revoked.
    pub active: bool,
    /// The device this client runs on.
    pub this_device: bool,
}
