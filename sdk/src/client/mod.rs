//! The async client: enroll, unlock and lock, pair a second device, send
//! and receive end-to-end encrypted messages. See the crate docs for an
//! example and the policies (acks, retries, duplicates).
//!
//! | call | what |
//! |---|---|
//! | [`Client::enroll`] | first device of a user, from an invite, with a PIN |
//! | [`Client::unlock`] / [`Client::lock`] | open the store with the PIN / close it and zeroize |
//! | [`Client::unlock_with_platform_secret`], [`Client::enable_platform_unlock`], [`Client::disable_platform_unlock`] | biometric unlock through the platform keystore, without the PIN while the slot is valid |
//! | [`Client::link_device`], [`PendingDevice::link`] | a second device, by a scanned code (`link.rs`) |
//! | [`Client::pair_new_device`], [`Client::approve_device`], [`PendingDevice::complete`] | a second device, keys carried by the app |
//! | [`Client::create_conversation`], [`Client::send_text`] | send (queued durably, delivered in the background) |
//! | [`Client::send_file`], [`Client::download`] | attachments: streamed, resumable (`attach.rs`) |
//! | [`Client::events`] | verified messages, typed rejections, send outcomes |
//! | [`Client::conversations`], [`Client::history`] | what the store holds |
//! | [`Client::rotate_user_key`], [`Client::revoke_device`] | key changes |
//! | [`Client::create_room`], [`Client::add_members`], [`Client::remove_member`], [`Client::leave`], [`Client::rooms`], [`Client::members`], [`Client::send_room_text`] | patient-case rooms |
//! | [`Client::search_directory`] | the professional directory, verified before it is shown |
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Client`], [`ClientConfig`], [`PendingDevice`] |
//! | `keyserver.rs` | typed keyserver requests over one connection |
//! | `relay.rs` | the relay connection task, backoff |
//! | `directory.rs` | fetch, verify and cache users' logs |
//! | `search.rs` | directory search: [`DirectoryQuery`], [`Page`], [`DirectoryEntry`] |
//! | `send.rs` | seal, outbox, keys before ciphertext |
//! | `attach.rs` | `send_file`, `download`, resumed uploads |
//! | `blob_conn.rs` | the relay's blob connection (`/v2/blobs`) |
//! | `link.rs` | device linking over the relay's rendezvous (`/v2/link`) |
//! | `file_crypto.rs` | the one use of ward-core's attachment encryptor and decryptor |
//! | `receive.rs` | verify, open, store, then ack |
//! | `rooms.rs` | rooms: verified membership logs, epoch keys, room messages |
//! | `events.rs` | [`Event`] |
//! | `error.rs` | [`ClientError`] |

mod attach;
mod blob_conn;
mod directory;
mod error;
mod events;
mod file_crypto;
mod invite_file;
mod keyserver;
mod kt;
mod link;
mod own_log;
mod receive;
mod relay;
mod revoked;
mod room_history;
mod rooms;
mod search;
mod send;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use ward_core::auth::Audience;
use ward_core::chain::{create_user, verify_log};
use ward_core::envelope::ContentType;
use ward_core::ids::valid_user_id;
use ward_core::invite::verify_invite;
use ward_core::keys::{
    DelegationKey, DeviceEncryptionKey, DeviceSigningKey, EncryptionPublicKey, SigningPublicKey,
    UserEncryptionKey,
};
use ward_core::wrap::{accept_grant, grant_user_key};
use ward_core::{ConversationId, ResourceId};
use ward_proto::Message as _;
use ward_proto::v1::SignedInvite;
use zeroize::Zeroizing;

pub use attach::{AttachmentInfo, Phase, Progress, Thumbnail};
pub use error::{ClientError, Result};
pub use events::Event;
pub use invite_file::InviteFile;
pub use kt::KtAlert;
pub use link::{LinkOffer, LinkRequest, LinkingDevice};
pub use rooms::{RoomInfo, RoomMemberInfo};
pub use search::{DirectoryEntry, DirectoryQuery, MAX_PAGE_SIZE, Page, PageCursor};

use crate::store::{
    Conversation, CreateOptions, Identity, Message, Pin, PlatformSecret, Store, StoreError,
};
use directory::Directory;
use keyserver::Keyserver;
use relay::RelayCmd;

/// Where the client keeps its store and which servers it talks to.
///
/// The URLs are `ws://` URLs: this build has no TLS yet, and `wss://` fails
/// to connect. Content and keys do not rest on the transport (they are
/// end-to-end encrypted and signed), but the metadata the servers see (who,
/// when, sizes) is then visible to the network too (SECURITY.md §12). A
/// test (or a debugging proxy) may sit in between; nothing the servers say
/// is trusted beyond what the client verifies.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The device store (SQLCipher database; the header goes beside it).
    pub store_path: PathBuf,
    /// The relay's URL.
    pub relay_url: String,
    /// The keyserver's URL.
    pub keyserver_url: String,
    /// The organisation root every log is verified from (pinned).
    pub org_root: SigningPublicKey,
    /// Argon2id cost and wipe threshold for a store created by `enroll` or
    /// `pair_new_device`.
    pub store_options: CreateOptions,
    /// First reconnection delay (then doubled, with jitter).
    pub reconnect_min: Duration,
    /// Largest reconnection delay.
    pub reconnect_max: Duration,
    /// How long one request (connect + handshake, a keyserver call, a
    /// relay `SendAck`) may take.
    pub request_timeout: Duration,
    /// How long a receiver waits for a wrapped key that has not reached the
    /// keyserver, before rejecting the message.
    pub key_wait: Duration,
    /// Capacity of the event channel; the receive worker waits when full.
    pub event_capacity: usize,
    /// How often the client re-reads its own user's log: to rotate the user
    /// key after a root-signed revocation and to hand the relay a newer log
    /// (so a lost phone revoked by the admin is cut off there too).
    pub own_log_interval: Duration,
    /// How often the client asks the keyserver which rooms this user is in
    /// and at what length, to refresh those that changed: a member learns of
    /// an addition, a removal (its own included) or a new room without
    /// sending or receiving in it (`Event::RoomChanged`). One small request
    /// per interval, plus a refresh per changed room.
    pub room_refresh_interval: Duration,
    /// The relay's instance id, as its operator configured it: the
    /// handshake binds it, so this device never signs for another relay
    /// (SECURITY.md §8).
    pub relay_instance: String,
    /// The keyserver's instance id, likewise.
    pub keyserver_instance: String,
    /// Whom to trust for `wss://` URLs: the web PKI's roots by default, or
    /// a pinned CA (`ClientTls::pinned_ca_file`) for a private deployment.
    /// Plain `ws://` URLs are accepted to loopback hosts only.
    pub tls: ward_net::tls::ClientTls,
    /// Also emit the advisory `Event::RelayUnreachable` and
    /// `Event::SendDelayed` (off by default: an app that only shows messages
    /// need not handle them; a CLI or a status bar wants them).
    pub connection_events: bool,
    /// How often the key-transparency monitor follows the keyserver's
    /// directory (SECURITY.md §18.8): verifies the latest epoch, scans the
    /// new leaves and checks this user's own, raising
    /// `Event::DeviceAdded` and `Event::TransparencyAlert`. `None` turns
    /// it off.
    pub kt_interval: Option<Duration>,
    /// Whether every other user's log head this device accepts is checked
    /// against the directory's inclusion proofs (SECURITY.md §18.9): a
    /// head a verified epoch refutes makes the log refused; a head no
    /// epoch holds yet is accepted and re-checked at the monitor's rounds.
    /// Needs the monitor (`kt_interval`); on by default.
    pub kt_check_heads: bool,
}

impl ClientConfig {
    /// The relay this device signs handshakes for.
    pub(crate) fn relay_audience(&self) -> Audience {
        Audience::relay(self.org_root, self.relay_instance.clone())
    }

    /// The keyserver this device signs handshakes for.
    pub(crate) fn keyserver_audience(&self) -> Audience {
        Audience::keyserver(self.org_root, self.keyserver_instance.clone())
    }

    /// Defaults: backoff 200 ms to 30 s, requests 15 s, key wait 30 s, own
    /// log re-read every 60 s, rooms checked every 5 minutes, the directory
    /// monitored every 30 s, the store's default Argon2id cost.
    pub fn new(
        store_path: impl Into<PathBuf>,
        relay_url: impl Into<String>,
        keyserver_url: impl Into<String>,
        org_root: SigningPublicKey,
    ) -> Self {
        Self {
            store_path: store_path.into(),
            relay_url: relay_url.into(),
            keyserver_url: keyserver_url.into(),
            org_root,
            store_options: CreateOptions::default(),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
            key_wait: Duration::from_secs(30),
            event_capacity: 1024,
            own_log_interval: Duration::from_secs(60),
            room_refresh_interval: Duration::from_secs(300),
            relay_instance: ward_core::auth::DEFAULT_INSTANCE.to_owned(),
            keyserver_instance: ward_core::auth::DEFAULT_INSTANCE.to_owned(),
            tls: ward_net::tls::ClientTls::default(),
            connection_events: false,
            kt_interval: Some(Duration::from_secs(30)),
            kt_check_heads: true,
        }
    }
}

/// The store behind a mutex, used only from blocking threads.
#[derive(Clone)]
pub(crate) struct StoreCell(Arc<Mutex<Option<Store>>>);

impl StoreCell {
    fn new(store: Store) -> Self {
        Self(Arc::new(Mutex::new(Some(store))))
    }

    /// Runs `f` on the store on a blocking thread; the lock is never held
    /// across an `.await`.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> core::result::Result<T, StoreError> + Send + 'static,
    {
        let cell = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = cell.lock().map_err(|_| ClientError::Closed)?;
            let store = guard.as_mut().ok_or(ClientError::Closed)?;
            f(store).map_err(ClientError::from)
        })
        .await
        .map_err(|_| ClientError::Closed)?
    }

    async fn close(&self) {
        let cell = self.0.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut guard) = cell.lock()
                && let Some(store) = guard.take()
            {
                store.lock();
            }
        })
        .await;
    }
}

/// [`Client::approve_device`], also the approval of a link (`link.rs`).
async fn approve_keys(inner: &Inner, keys: &NewDeviceKeys) -> Result<()> {
    let own = refresh_own(inner).await?;
    let entry = own.user.add_device_with_proof(
        &inner.device,
        &keys.signing,
        &keys.encryption,
        &keys.proof,
        now_secs(),
    );
    inner.keyserver.append(entry).await?;
    let own = refresh_own(inner).await?;
    if !own
        .user
        .device(&keys.signing)
        .is_some_and(|d| d.is_active())
    {
        return Err(ClientError::DeviceNotInLog);
    }
    let held = inner.store.run(|s| s.user_keys()).await?;
    let mut grants = Vec::new();
    {
        let mut rng = rand::rng();
        for k in &held {
            let pk = k.public_key();
            if pk == *own.user.encryption_key() || own.user.past_encryption_keys().contains(&pk) {
                grants.push(grant_user_key(&mut rng, k, &keys.encryption)?);
            }
        }
    }
    inner.keyserver.put_grants(grants).await?;
    let _ = inner
        .relay_cmds
        .send(RelayCmd::PublishLog(own.entries))
        .await;
    tracing::info!(device = ?keys.signing, "device approved");
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ClientError::Closed)?
}

fn now_secs() -> u64 {
    send::now_ms() / 1000
}

/// What the client's tasks share.
pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) user_id: String,
    pub(crate) device: Arc<DeviceSigningKey>,
    pub(crate) device_encryption: Arc<DeviceEncryptionKey>,
    pub(crate) store: StoreCell,
    pub(crate) directory: Directory,
    pub(crate) keyserver: Keyserver,
    pub(crate) relay_cmds: mpsc::Sender<RelayCmd>,
    acked: watch::Sender<u64>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) outbox_notify: Notify,
    /// The rooms this device verified (`rooms.rs`).
    pub(crate) rooms: rooms::RoomBook,
    /// Set once this device was found revoked and wiped (`revoked.rs`).
    pub(crate) revoked: std::sync::atomic::AtomicBool,
    /// The push token the app registered (SECURITY.md §9.2), sent on every
    /// relay connection; empty: unregister.
    pub(crate) push_token: std::sync::Mutex<Option<Vec<u8>>>,
    #[cfg(feature = "testkit")]
    resource_keys: Mutex<Vec<[u8; 32]>>,
}

impl Inner {
    /// Acks the relay mailbox up to `seq` (cumulative; never waits).
    pub(crate) async fn ack(&self, seq: u64) {
        // Always notifies, so that a redelivered entry's ack is sent again.
        self.acked.send_modify(|last| *last = (*last).max(seq));
    }

    /// Emits unless the channel is full: for advisory events that must not
    /// hold up the connection task when the app is not reading.
    pub(crate) fn emit_now(&self, event: Event) {
        if !self.config.connection_events {
            return;
        }
        let _ = self.events.try_send(event);
    }

    pub(crate) async fn emit(&self, event: Event) {
        // No receiver (the app dropped it): the history still has everything.
        let _ = self.events.send(event).await;
    }

    #[cfg(feature = "testkit")]
    pub(crate) fn record_resource_key(&self, key: [u8; 32]) {
        if let Ok(mut keys) = self.resource_keys.lock() {
            keys.push(key);
        }
    }
}

/// A message in the outbox ([`Client::outbox`]): sealed and durable, not
/// yet confirmed by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Its resource id, as in [`Client::history`] (`None` only for an entry
    /// the outbox worker will drop as undecodable).
    pub resource_id: Option<ResourceId>,
    /// The conversation it goes to.
    pub conversation_id: ConversationId,
    /// Not yet handed to the relay, or handed and awaiting confirmation.
    pub state: crate::store::OutboxState,
    /// When it was queued, unix milliseconds (the sender's clock).
    pub queued_at_ms: u64,
}

/// The public keys of a device waiting to be paired, to be carried to an
/// existing device of the same user over an authenticated channel (a QR
/// code shown on the new device and scanned by the existing one): whoever
/// substitutes them gets a device of this user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewDeviceKeys {
    /// The new device's signing key (its device id).
    pub signing: SigningPublicKey,
    /// The new device's encryption key (the user key is granted to it).
    pub encryption: EncryptionPublicKey,
    /// The new device's signature over its keys, for this user and
    /// organisation (proof of possession, SECURITY.md §4.4).
    pub proof: [u8; 64],
}

/// A device created by [`Client::pair_new_device`], waiting for an existing
/// device to approve it ([`Client::approve_device`]).
pub struct PendingDevice {
    config: ClientConfig,
    user_id: String,
    store: StoreCell,
    device: Arc<DeviceSigningKey>,
    device_encryption: Arc<DeviceEncryptionKey>,
}

impl core::fmt::Debug for PendingDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PendingDevice")
            .field("user_id", &self.user_id)
            .field("device", &self.device.public_key())
            .finish_non_exhaustive()
    }
}

impl PendingDevice {
    /// Reopens a device whose pairing was started by
    /// [`Client::pair_new_device`] and not completed (the app was closed
    /// while waiting for the approval).
    pub async fn resume(config: ClientConfig, pin: Pin) -> Result<Self> {
        let path = config.store_path.clone();
        let store = blocking(move || Ok(Store::unlock(&path, &pin, None)?)).await?;
        let store = StoreCell::new(store);
        let identity = store
            .run(|s| s.identity())
            .await?
            .ok_or(ClientError::NotEnrolled)?;
        Ok(Self {
            config,
            user_id: identity.user_id,
            store,
            device: Arc::new(identity.device_signing),
            device_encryption: Arc::new(identity.device_encryption),
        })
    }

    /// The keys to show to the approving device.
    pub fn device_keys(&self) -> NewDeviceKeys {
        let encryption = self.device_encryption.public_key();
        NewDeviceKeys {
            signing: self.device.public_key(),
            encryption,
            proof: ward_core::chain::possession_proof(
                &self.config.org_root,
                &self.user_id,
                &self.device,
                &encryption,
            ),
        }
    }

    /// Finishes pairing once an existing device approved this one: fetches
    /// and verifies the user's log, checks it holds this device as active,
    /// fetches the grant of the user key and accepts it against the
    /// verified log's key ([`accept_grant`]: a planted key is refused).
    /// Before the approval, fails with a refusal from the keyserver; call
    /// again after it.
    pub async fn complete(&self) -> Result<Client> {
        let ks = Keyserver::spawn(
            self.config.keyserver_url.clone(),
            self.config.keyserver_audience(),
            self.config.tls.clone(),
            self.device.clone(),
            self.user_id.clone(),
            self.config.request_timeout,
        );
        let mut logs = ks.get_logs(vec![self.user_id.clone()]).await?;
        let entries = logs
            .remove(&self.user_id)
            .ok_or_else(|| ClientError::UnknownUser(self.user_id.clone()))?
            .entries;
        let chain = verify_log(&self.config.org_root, &self.user_id, &entries).map_err(|e| {
            ClientError::Chain {
                user_id: self.user_id.clone(),
                error: e,
            }
        })?;
        if !chain
            .device(&self.device.public_key())
            .is_some_and(|d| d.is_active())
        {
            return Err(ClientError::DeviceNotInLog);
        }
        let grant = ks.get_grant(Vec::new()).await?;
        let user_key = accept_grant(&grant, &self.device_encryption, chain.encryption_key())?;
        let mut keys = vec![user_key];
        // Past user keys, if granted: older messages stay readable.
        for past in chain.past_encryption_keys() {
            if let Ok(g) = ks.get_grant(past.id().as_bytes().to_vec()).await
                && let Ok(k) = accept_grant(&g, &self.device_encryption, past)
            {
                keys.push(k);
            }
        }
        let raw: Vec<Vec<u8>> = entries.iter().map(|e| e.encode_to_vec()).collect();
        let uid = self.user_id.clone();
        self.store
            .run(move |s| {
                for k in &keys {
                    s.add_user_key(k)?;
                }
                s.set_verified_log(&uid, &raw)
            })
            .await?;
        tracing::info!(user = %self.user_id, "device paired");
        Client::start(self.config.clone(), self.store.clone()).await
    }
}

/// An unlocked Ward device: the async client.
///
/// Background tasks (relay connection, receive worker, outbox worker, the
/// keyserver connection) run while it lives; dropping it stops them (what
/// was stored stays stored, what was queued stays queued). [`Client::lock`]
/// also closes the store and zeroizes its key.
pub struct Client {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    events: Option<mpsc::Receiver<Event>>,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("user_id", &self.inner.user_id)
            .field("device", &self.inner.device.public_key())
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Client {
    /// Enrolls this device from an invite: generates the user key and this
    /// device's keys, creates the store under `pin`, signs the user creation
    /// with the invite's delegation key, appends it at the keyserver (over
    /// an enrolling session) and grants the user key to this device.
    ///
    /// `invite` is the encoded `SignedInvite` and `delegation_secret` the
    /// 32-byte delegation key, both received out of band. If the keyserver
    /// refuses the creation (invite used or expired, user id taken), the
    /// store just created is wiped and the error returned.
    pub async fn enroll(
        config: ClientConfig,
        invite: &[u8],
        delegation_secret: &[u8],
        pin: Pin,
    ) -> Result<Self> {
        enroll_into(config, invite, delegation_secret, EnrollInto::Fresh(pin)).await
    }

    /// Enrolls again, from a new invite, into the store of a device that
    /// [`Self::unlock`] answered [`ClientError::ReenrollRequired`] (a store
    /// of the protocol v1 SDK, SECURITY.md §14.9): the store is opened with
    /// its PIN, its unusable v1 keys, verified logs, outbox and relay cursor
    /// are dropped ([`Store::reset_for_reenrollment`]), and the device
    /// enrolls as [`Self::enroll`] does, keeping the store, its PIN and its
    /// history. If the keyserver refuses the new enrolment, the store stays
    /// reset (history kept) and `reenroll` may be called again with another
    /// invite. A store that needs no re-enrolment is refused
    /// ([`ClientError::AlreadyEnrolled`]) untouched.
    pub async fn reenroll(
        config: ClientConfig,
        invite: &[u8],
        delegation_secret: &[u8],
        pin: Pin,
    ) -> Result<Self> {
        let path = config.store_path.clone();
        let store = blocking(move || {
            let mut s = Store::unlock(&path, &pin, None)?;
            match s.identity() {
                Ok(Some(_)) => return Err(ClientError::AlreadyEnrolled),
                Ok(None) | Err(StoreError::ReenrollRequired) => {}
                Err(e) => return Err(e.into()),
            }
            s.reset_for_reenrollment()?;
            Ok(s)
        })
        .await?;
        enroll_into(
            config,
            invite,
            delegation_secret,
            EnrollInto::Existing(store),
        )
        .await
    }

    /// Opens the store with `pin` and starts the client. A wrong PIN is
    /// [`ClientError::Store`] with [`StoreError::WrongPin`] (attempts left),
    /// the last one [`StoreError::Wiped`].
    pub async fn unlock(config: ClientConfig, pin: Pin) -> Result<Self> {
        let path = config.store_path.clone();
        let store = blocking(move || Ok(Store::unlock(&path, &pin, None)?)).await?;
        Self::start(config, StoreCell::new(store)).await
    }

    /// Opens the store with the 32-byte secret the platform keystore
    /// released (after a biometric check) instead of the PIN, and starts
    /// the client. Works while the slot that
    /// [`Self::enable_platform_unlock`] made is valid; otherwise
    /// [`ClientError::Store`] with [`StoreError::PinRequired`] and the
    /// reason: ask for the PIN and call [`Self::unlock`].
    pub async fn unlock_with_platform_secret(
        config: ClientConfig,
        secret: PlatformSecret,
    ) -> Result<Self> {
        let path = config.store_path.clone();
        let store =
            blocking(move || Ok(Store::unlock_with_platform_secret(&path, &secret)?)).await?;
        Self::start(config, StoreCell::new(store)).await
    }

    /// Lets [`Self::unlock_with_platform_secret`] open this store with
    /// `secret` for `valid_for` from now (SECURITY.md §14.10), replacing any
    /// earlier slot. A PIN change or a KDF upgrade removes it.
    pub async fn enable_platform_unlock(
        &self,
        secret: PlatformSecret,
        valid_for: std::time::Duration,
    ) -> Result<()> {
        self.inner
            .store
            .run(move |s| s.enable_platform_unlock(&secret, valid_for))
            .await
    }

    /// Removes the platform-unlock slot: only the PIN opens the store.
    pub async fn disable_platform_unlock(&self) -> Result<()> {
        self.inner.store.run(|s| s.disable_platform_unlock()).await
    }

    /// Creates a new device of `user_id` (its keys and its store under
    /// `pin`), to be approved by an existing device with
    /// [`Client::approve_device`] and then [`PendingDevice::complete`]d.
    pub async fn pair_new_device(
        config: ClientConfig,
        user_id: &str,
        pin: Pin,
    ) -> Result<PendingDevice> {
        if !valid_user_id(user_id) {
            return Err(ClientError::UnknownUser(user_id.to_owned()));
        }
        let (device, device_key) = {
            let mut rng = rand::rng();
            (
                DeviceSigningKey::generate(&mut rng),
                DeviceEncryptionKey::generate(&mut rng),
            )
        };
        let identity = Identity {
            user_id: user_id.to_owned(),
            device_signing: DeviceSigningKey::import_secret(&*device.export_secret())?,
            device_encryption: DeviceEncryptionKey::import_secret(&*device_key.export_secret())?,
        };
        let path = config.store_path.clone();
        let options = config.store_options;
        let store = blocking(move || {
            let s = Store::create(&path, &pin, None, options)?;
            s.set_identity(&identity)?;
            Ok(s)
        })
        .await?;
        Ok(PendingDevice {
            config,
            user_id: user_id.to_owned(),
            store: StoreCell::new(store),
            device: Arc::new(device),
            device_encryption: Arc::new(device_key),
        })
    }

    async fn start(config: ClientConfig, store: StoreCell) -> Result<Self> {
        let (identity, has_key) = store
            .run(|s| Ok((s.identity()?, !s.user_keys()?.is_empty())))
            .await?;
        let identity = identity.ok_or(ClientError::NotEnrolled)?;
        if !has_key {
            return Err(ClientError::NotEnrolled);
        }
        let Identity {
            user_id,
            device_signing,
            device_encryption,
        } = identity;
        let device = Arc::new(device_signing);
        let device_encryption = Arc::new(device_encryption);
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let kt = kt::Shared::new(
            config.org_root,
            user_id.clone(),
            config.kt_interval,
            config.kt_check_heads,
            events_tx.clone(),
        );
        let directory = Directory::new(config.org_root, kt);
        if directory.cached(&store, &user_id).await?.is_none() {
            return Err(ClientError::NotEnrolled);
        }
        let keyserver = Keyserver::spawn(
            config.keyserver_url.clone(),
            config.keyserver_audience(),
            config.tls.clone(),
            device.clone(),
            user_id.clone(),
            config.request_timeout,
        );
        let (relay_cmds, relay_rx) = mpsc::channel(256);
        let cursor = store.run(|s| s.relay_cursor()).await?.unwrap_or(0);
        let (acked, acked_rx) = watch::channel(cursor);
        let (connected_tx, connected_rx) = watch::channel(false);
        let (deliver_tx, deliver_rx) = mpsc::channel(256);
        let inner = Arc::new(Inner {
            config,
            user_id,
            device,
            device_encryption,
            store,
            directory,
            keyserver,
            relay_cmds,
            acked,
            events: events_tx,
            outbox_notify: Notify::new(),
            rooms: rooms::RoomBook::new(),
            revoked: std::sync::atomic::AtomicBool::new(false),
            push_token: std::sync::Mutex::new(None),
            #[cfg(feature = "testkit")]
            resource_keys: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![
            tokio::spawn(relay::run(
                inner.clone(),
                relay_rx,
                acked_rx,
                connected_tx,
                deliver_tx,
            )),
            tokio::spawn(receive::run(inner.clone(), deliver_rx)),
            tokio::spawn(send::run_outbox(inner.clone(), connected_rx)),
            tokio::spawn(own_log::run(inner.clone())),
            tokio::spawn(rooms::watch(inner.clone())),
            tokio::spawn(attach::resume_uploads(inner.clone())),
        ];
        if let Some(interval) = inner.config.kt_interval {
            tasks.push(tokio::spawn(kt::run(inner.clone(), interval)));
        }
        Ok(Self {
            inner,
            tasks,
            events: Some(events_rx),
        })
    }

    /// Stops the background tasks, closes the store and zeroizes its key.
    /// Queued messages stay queued; unlock again to resume.
    pub async fn lock(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.inner.store.close().await;
    }

    /// This device's user id.
    pub fn user_id(&self) -> &str {
        &self.inner.user_id
    }

    /// Other users' log heads this device accepted before any epoch of the
    /// directory held them, not confirmed yet (user id, log length;
    /// SECURITY.md §18.9): each is re-checked at the monitor's rounds.
    pub fn transparency_pending(&self) -> Vec<(String, u64)> {
        self.inner.directory.kt().pending()
    }

    /// This device's id (its signing public key).
    pub fn device_id(&self) -> SigningPublicKey {
        self.inner.device.public_key()
    }

    /// The event stream: verified messages, rejections, send outcomes.
    /// There is one stream per client: the first call takes it, later ones
    /// get `None`. Read it: when its buffer is full, receiving waits.
    pub fn events(&mut self) -> Option<mpsc::Receiver<Event>> {
        self.events.take()
    }

    /// Searches the organisation's professional directory at the keyserver
    /// (SECURITY.md §10.9): `page` is `None` for the first page, then the
    /// previous page's [`Page::next`]. Every result's invite is checked
    /// against the pinned root and against the user's verified log entry 0
    /// (fetched and verified when this device holds none) before it is
    /// returned; one that fails refuses the page
    /// ([`ClientError::Chain`], [`ClientError::DirectoryMismatch`]). Too
    /// many searches are `ClientError::Keyserver { code: RateLimited, .. }`.
    pub async fn search_directory(
        &self,
        query: &DirectoryQuery,
        page: Option<&PageCursor>,
    ) -> Result<Page<DirectoryEntry>> {
        search::search(&self.inner, query, page).await
    }

    /// Approves a new device of this user (keys from
    /// [`PendingDevice::device_keys`], carried over an authenticated
    /// channel): appends the device addition signed by this device, grants
    /// it the user keys this device holds, and publishes the new log to the
    /// relay.
    pub async fn approve_device(&self, keys: &NewDeviceKeys) -> Result<()> {
        approve_keys(&self.inner, keys).await
    }

    /// Registers this device's push token (from APNs, FCM or the
    /// deployment's bridge; 1 to 1,024 bytes, empty to unregister) at the
    /// relay, which then wakes the device through its push gateway when
    /// something arrives while it is offline, giving the gateway the token
    /// and nothing else (SECURITY.md §9.2). Sent now if connected and again
    /// on every connection; kept in memory only: call it at each start, as
    /// a platform hands out its token.
    pub async fn register_push(&self, token: &[u8]) -> Result<()> {
        if token.len() > ward_proto::MAX_PUSH_TOKEN_BYTES {
            return Err(ClientError::PushTokenTooLong(token.len()));
        }
        *self
            .inner
            .push_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token.to_vec());
        self.inner
            .relay_cmds
            .send(RelayCmd::RegisterPush)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Rotates the user key: appends a key rotation signed by this device,
    /// grants the new key to every active device of the user (this one
    /// included) and publishes the new log to the relay. Senders wrap to the
    /// new key once they have verified the new log.
    pub async fn rotate_user_key(&self) -> Result<()> {
        self.change_user_key(None).await
    }

    /// Revokes a device of this user (a lost or retired one, possibly this
    /// one): appends a revocation signed by this device, and publishes the
    /// new log to the relay, which then disconnects the revoked device.
    /// Revoking another device rotates the user key in the same entry and
    /// grants the new key to the devices that remain; revoking this device
    /// is keyless (a device being revoked never chooses the next key,
    /// SECURITY.md §4.5), so the user is rotation pending until a remaining
    /// device rotates it (§15.3a).
    pub async fn revoke_device(&self, device: &SigningPublicKey) -> Result<()> {
        self.change_user_key(Some(*device)).await
    }

    /// This user's devices, as its freshly verified log has them (the
    /// keyserver must be reachable: a stale list could hide a device
    /// someone added), in the order they were added. What a "your devices"
    /// screen shows, and where the device to revoke is picked.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let own = refresh_own(&self.inner).await?;
        let me = self.inner.device.public_key();
        let mut out: Vec<DeviceInfo> = own
            .user
            .devices()
            .map(|d| DeviceInfo {
                device_id: d.signing_key,
                active: d.is_active(),
                this_device: d.signing_key == me,
                added_at: d.added_at,
            })
            .collect();
        out.sort_by_key(|d| d.added_at);
        Ok(out)
    }

    async fn change_user_key(&self, revoke: Option<SigningPublicKey>) -> Result<()> {
        change_user_key(&self.inner, revoke).await
    }

    /// Creates a conversation with `members` (user ids; this user is added)
    /// and returns its id. With one other member, a conversation: the
    /// members' logs are fetched and verified now when the keyserver is
    /// reachable (an unknown user fails here). With more, a **room**
    /// (SECURITY.md §17.12) without name, case or topic, under `FromJoin`,
    /// this user its admin: its membership is a signed log every member
    /// verifies and a message costs one wrap, whatever the group's size.
    /// Creating one needs the keyserver. Its id is the room's conversation
    /// id: `send_text` and `history` take it as any conversation's.
    pub async fn create_conversation(&self, members: &[&str]) -> Result<ConversationId> {
        let mut all: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        all.push(self.inner.user_id.clone());
        all.sort();
        all.dedup();
        if let Some(bad) = all.iter().find(|m| !valid_user_id(m)) {
            return Err(ClientError::UnknownUser(bad.clone()));
        }
        if all.len() > 2 {
            let others: Vec<&str> = all
                .iter()
                .filter(|m| **m != self.inner.user_id)
                .map(String::as_str)
                .collect();
            let room = self
                .create_room(
                    "",
                    "",
                    "",
                    &others,
                    ward_core::room::HistoryPolicy::FromJoin,
                )
                .await?;
            return Ok(ward_core::envelope::room_conversation_id(&room));
        }
        let inner = &self.inner;
        match inner
            .directory
            .refresh(&inner.store, &inner.keyserver, &all)
            .await
        {
            Err(e) if !e.is_transient() => return Err(e),
            _ => {}
        }
        let id = ConversationId::random(&mut rand::rng());
        inner
            .store
            .run(move |s| s.put_conversation(&id, &all))
            .await?;
        Ok(id)
    }

    /// The conversation with exactly `members` and this user: the first one
    /// the store holds with that member set (with more than one other
    /// member, the unnamed room whose current members they are), else a new
    /// one ([`Self::create_conversation`]). What "send to Dr X" means in an
    /// app.
    pub async fn conversation_with(&self, members: &[&str]) -> Result<ConversationId> {
        let mut wanted: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        wanted.push(self.inner.user_id.clone());
        wanted.sort();
        wanted.dedup();
        if wanted.len() > 2 {
            let set: std::collections::BTreeSet<String> = wanted.iter().cloned().collect();
            return match rooms::unnamed_room_with(&self.inner, &set).await? {
                Some(room) => Ok(ward_core::envelope::room_conversation_id(&room)),
                None => self.create_conversation(members).await,
            };
        }
        let existing = self.conversations().await?.into_iter().find(|c| {
            let mut have = c.members.clone();
            have.sort();
            have.dedup();
            have == wanted
        });
        match existing {
            Some(c) => Ok(c.id),
            None => self.create_conversation(members).await,
        }
    }

    /// Sends `text` to a conversation: sealed for every member user, queued
    /// durably, then delivered in the background (see [`Event::Sent`]).
    /// Returns once queued; works offline when the members' logs were
    /// verified before.
    pub async fn send_text(&self, conversation: ConversationId, text: &str) -> Result<ResourceId> {
        send::send(
            &self.inner,
            conversation,
            ContentType::Text,
            Zeroizing::new(text.as_bytes().to_vec()),
        )
        .await
    }

    /// Sends the file at `path` to a conversation as an attachment
    /// (SECURITY.md §16): encrypted into a spool file beside the store,
    /// uploaded to the relay over a blob connection, then its descriptor
    /// (`file_name`, `media_type`, size, key, hash) sealed as a message and
    /// queued like [`Self::send_text`]. Constant memory, whatever the size.
    /// `progress` sees the encryption, then the upload. Returns once the
    /// relay holds the whole blob and the message is queued. If the app dies
    /// first, the next [`Self::unlock`] resumes the upload where the relay
    /// stopped and then sends the message.
    pub async fn send_file(
        &self,
        conversation: ConversationId,
        path: impl AsRef<std::path::Path>,
        file_name: &str,
        media_type: &str,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<ResourceId> {
        attach::send_file(
            &self.inner,
            conversation,
            path.as_ref(),
            file_name,
            media_type,
            None,
            &mut progress,
        )
        .await
    }

    /// [`Self::send_file`] with an inline preview: `thumbnail` is `(media
    /// type, bytes)`, an `image/...` of at most 64 KiB that the app made
    /// (the SDK decodes no images), sealed inside the descriptor with the
    /// file's key and name (SECURITY.md §16.5); receivers find it in
    /// [`AttachmentInfo::thumbnail`] before downloading anything. Refused
    /// (`Attachment(Malformed("thumbnail"))`) before any work when it does
    /// not fit.
    pub async fn send_file_with_thumbnail(
        &self,
        conversation: ConversationId,
        path: impl AsRef<std::path::Path>,
        file_name: &str,
        media_type: &str,
        thumbnail: (&str, &[u8]),
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<ResourceId> {
        attach::send_file(
            &self.inner,
            conversation,
            path.as_ref(),
            file_name,
            media_type,
            Some(thumbnail),
            &mut progress,
        )
        .await
    }

    /// Downloads the file of an attachment message into a new file at
    /// `out` (never overwritten: [`ClientError::FileExists`]), checking the
    /// blob as it arrives (SECURITY.md §16.6: any failure is
    /// [`ClientError::Attachment`] and leaves nothing behind). The bytes go
    /// to `<out>.ward-part` until the whole blob verified. A broken
    /// download resumes, at the next call, from the last verified chunk.
    pub async fn download(
        &self,
        message: &Message,
        out: impl AsRef<std::path::Path>,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<std::path::PathBuf> {
        attach::download(&self.inner, message, out.as_ref(), &mut progress).await
    }

    /// Every conversation this device knows.
    pub async fn conversations(&self) -> Result<Vec<Conversation>> {
        self.inner.store.run(|s| s.conversations()).await
    }

    /// A conversation's messages, oldest first (sender's timestamp, then
    /// arrival): received ones and those sent from this device.
    pub async fn history(&self, conversation: ConversationId) -> Result<Vec<Message>> {
        self.inner
            .store
            .run(move |s| s.messages(&conversation))
            .await
    }

    /// One message of the history, by its sender and resource id (as in an
    /// [`Event::Message`] or [`Self::history`]): `None` if the store holds
    /// none. For apps that keep ids, not messages (the bindings'
    /// `download`).
    pub async fn message(
        &self,
        sender_user_id: &str,
        resource_id: ResourceId,
    ) -> Result<Option<Message>> {
        let sender = sender_user_id.to_owned();
        self.inner
            .store
            .run(move |s| s.message(&sender, &resource_id))
            .await
    }

    /// The messages waiting in the outbox, oldest first: each one's resource
    /// id (its id in [`Client::history`]), conversation, state and when it
    /// was queued. They stay until the relay confirms them.
    pub async fn outbox(&self) -> Result<Vec<QueuedMessage>> {
        let items = self.inner.store.run(|s| s.outbox_items()).await?;
        Ok(items
            .into_iter()
            .map(|item| QueuedMessage {
                resource_id: send::OutboxPayload::decode(&item.payload[..])
                    .ok()
                    .and_then(|p| ResourceId::from_slice(&p.resource_id)),
                conversation_id: item.conversation_id,
                state: item.state,
                queued_at_ms: item.created_at_ms,
            })
            .collect())
    }

    /// How many messages wait in the outbox.
    pub async fn outbox_len(&self) -> Result<u64> {
        self.inner.store.run(|s| s.outbox_len()).await
    }

    /// Tests only: forwards `envelopes` as room `room`'s history to `to`,
    /// whatever they are and whoever this user is (SECURITY.md §17.13), as
    /// a dishonest forwarder would.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub async fn forward_room_history(
        &self,
        room: &ward_core::RoomId,
        to: &[&str],
        envelopes: Vec<Vec<u8>>,
    ) -> Result<usize> {
        let to: Vec<String> = to.iter().map(|u| (*u).to_owned()).collect();
        room_history::queue(&self.inner, *room, &to, envelopes).await
    }

    /// Test hook: the resource keys of the messages this client sealed.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub fn sent_resource_keys(&self) -> Vec<[u8; 32]> {
        self.inner
            .resource_keys
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }
}

/// Rotates the user key (and revokes `revoke`, if any) as this device:
/// appends the statement, grants the new key to every active device and
/// publishes the new log to the relay.
pub(crate) async fn change_user_key(inner: &Inner, revoke: Option<SigningPublicKey>) -> Result<()> {
    let own = refresh_own(inner).await?;
    if revoke == Some(inner.device.public_key()) {
        // A device being revoked never chooses the next user key
        // (SECURITY.md §4.5): a keyless self-revocation; a remaining device
        // rotates the key when it sees the user rotation pending (§15.3a).
        let entry = own.user.revoke_self(&inner.device, now_secs());
        inner.keyserver.append(entry).await?;
        let own = refresh_own(inner).await?;
        let _ = inner
            .relay_cmds
            .send(RelayCmd::PublishLog(own.entries))
            .await;
        tracing::info!("this device revoked itself; the user is rotation pending");
        return Ok(());
    }
    let new_key = UserEncryptionKey::generate(&mut rand::rng());
    let new_public = new_key.public_key();
    // Kept before the append: a crash after it must not lose the key.
    let stored = UserEncryptionKey::import_secret(&*new_key.export_secret())?;
    inner.store.run(move |s| s.add_user_key(&stored)).await?;
    let entry = match revoke {
        Some(d) => own
            .user
            .revoke_device(&inner.device, &d, &new_public, now_secs()),
        None => own
            .user
            .rotate_user_key(&inner.device, &new_public, now_secs()),
    };
    inner.keyserver.append(entry).await?;
    let own = refresh_own(inner).await?;
    if *own.user.encryption_key() != new_public {
        return Err(ClientError::Protocol(
            "the appended key change is not in the log",
        ));
    }
    let grants = {
        let mut rng = rand::rng();
        own.user
            .devices()
            .filter(|d| d.is_active())
            .map(|d| grant_user_key(&mut rng, &new_key, &d.encryption_key))
            .collect::<core::result::Result<Vec<_>, _>>()?
    };
    if !grants.is_empty() {
        inner.keyserver.put_grants(grants).await?;
    }
    let _ = inner
        .relay_cmds
        .send(RelayCmd::PublishLog(own.entries))
        .await;
    tracing::info!(revoked = ?revoke, "user key rotated");
    Ok(())
}

/// This user's own log, fetched from the keyserver and verified (§15.1).
pub(crate) async fn refresh_own(inner: &Inner) -> Result<directory::Known> {
    let me = [inner.user_id.clone()];
    first(
        inner
            .directory
            .refresh(&inner.store, &inner.keyserver, &me)
            .await?,
    )
}

fn first(mut v: Vec<directory::Known>) -> Result<directory::Known> {
    v.pop().ok_or(ClientError::Protocol("no log returned"))
}

/// One device of this user ([`Client::devices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its id: its signing key.
    pub device_id: SigningPublicKey,
    /// Not revoked.
    pub active: bool,
    /// The device this client runs on.
    pub this_device: bool,
    /// The position in the user's log of the entry that added it.
    pub added_at: u64,
}

/// Where [`enroll_into`] puts the new identity.
enum EnrollInto {
    /// A new store under this PIN (wiped if the keyserver refuses).
    Fresh(Pin),
    /// A store reset for re-enrolment (kept if the keyserver refuses).
    Existing(Store),
}

/// [`Client::enroll`] and [`Client::reenroll`]: the new identity, its log's
/// first entry appended at the keyserver, then the client started.
async fn enroll_into(
    config: ClientConfig,
    invite: &[u8],
    delegation_secret: &[u8],
    into: EnrollInto,
) -> Result<Client> {
    let signed: SignedInvite =
        ward_core::invite::decode_signed_invite(invite).map_err(ClientError::InvalidInvite)?;
    let verified = verify_invite(&config.org_root, &signed).map_err(ClientError::InvalidInvite)?;
    let delegation = DelegationKey::import_secret(delegation_secret)?;
    let user_id = verified.details.user_id.clone();
    let (user_key, device, device_key) = {
        let mut rng = rand::rng();
        (
            UserEncryptionKey::generate(&mut rng),
            DeviceSigningKey::generate(&mut rng),
            DeviceEncryptionKey::generate(&mut rng),
        )
    };
    let entry = create_user(
        &config.org_root,
        &signed,
        &delegation,
        &user_key.public_key(),
        &device.public_key(),
        &device_key.public_key(),
        now_secs(),
    )
    .map_err(ClientError::InvalidInvite)?;
    verify_log(&config.org_root, &user_id, std::slice::from_ref(&entry))
        .map_err(ClientError::InvalidInvite)?;
    let grant = grant_user_key(&mut rand::rng(), &user_key, &device_key.public_key())?;

    let identity = Identity {
        user_id: user_id.clone(),
        device_signing: DeviceSigningKey::import_secret(&*device.export_secret())?,
        device_encryption: DeviceEncryptionKey::import_secret(&*device_key.export_secret())?,
    };
    let path = config.store_path.clone();
    let options = config.store_options;
    let raw = entry.encode_to_vec();
    let uid = user_id.clone();
    let fresh = matches!(into, EnrollInto::Fresh(_));
    let store = blocking(move || {
        let mut s = match into {
            EnrollInto::Fresh(pin) => Store::create(&path, &pin, None, options)?,
            EnrollInto::Existing(s) => s,
        };
        s.set_identity(&identity)?;
        s.add_user_key(&user_key)?;
        s.set_verified_log(&uid, &[raw])?;
        Ok(s)
    })
    .await?;
    let store = StoreCell::new(store);

    let device = Arc::new(device);
    let ks = Keyserver::spawn_enrolling(
        config.keyserver_url.clone(),
        config.keyserver_audience(),
        config.tls.clone(),
        device.clone(),
        user_id.clone(),
        config.request_timeout,
        (delegation, signed),
    );
    if let Err(e) = ks.append(entry).await {
        if fresh {
            store.close().await;
            let path = config.store_path.clone();
            let _ = blocking(move || Ok(Store::wipe(&path)?)).await;
        } else {
            // Keep the history: back to the reset state, for another try.
            if let Err(e) = store.run(|s| s.clear_identity()).await {
                tracing::warn!(error = %e, "reenroll: could not reset the store again");
            }
            store.close().await;
        }
        return Err(e);
    }
    // The device already holds the user key; the grant serves recovery
    // and is not worth failing the enrollment for.
    if let Err(e) = ks.put_grants(vec![grant]).await {
        tracing::warn!(error = %e, "enroll: self-grant not stored");
    }
    tracing::info!(user = %user_id, "enrolled");
    Client::start(config, store).await
}
