//! Linking a new device by a scanned code (SECURITY.md §4.9), over the
//! relay's rendezvous: the existing device opens it on `/v2/link` after the
//! device handshake, the new device joins on `/v2/link/join` without one
//! (it is in no log yet). ward-core's [`Approver`] and [`Joiner`] are the
//! protocol; this file carries their sealed messages and acts on them:
//! the approval (the device addition and the grants, as
//! [`Client::approve_device`]), and the history.
//!
//! ```text
//! existing: Client::link_device -> LinkOffer::code (show it)
//!           LinkOffer::wait_for_device -> LinkRequest::sas (compare)
//!           LinkRequest::approve | refuse
//! new:      PendingDevice::link(code) -> LinkingDevice::sas (compare)
//!           LinkingDevice::finish -> Client
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use ward_core::envelope::ContentType;
use ward_core::ids::valid_user_id;
use ward_core::keys::SigningPublicKey;
use ward_core::link::{Approver, DeviceOffer, Joiner, JoinerEvent, LinkCode, LinkSecret, Sas};
use ward_core::{ConversationId, ResourceId};
use ward_net::{Conn, Limits, NetError};
use ward_proto::v1::{
    LinkClientFrame, LinkConversation, LinkHistory, LinkJoin, LinkOpen, LinkServerFrame,
    LinkedMessage, link_client_frame, link_server_frame,
};
use zeroize::{Zeroize, Zeroizing};

use super::error::{ClientError, Result};
use super::{Client, ClientConfig, Inner, NewDeviceKeys, PendingDevice, blocking};
use crate::store::{Conversation, Message, Pin, Store};

/// The existing device's path on the relay.
pub(crate) const LINK_PATH: &str = "/v2/link";
/// The new device's path on the relay.
pub(crate) const JOIN_PATH: &str = "/v2/link/join";
/// A ping this often while one side waits for the other (a person scanning,
/// comparing, deciding), so that no middlebox drops a quiet connection.
const PING_EVERY: Duration = Duration::from_secs(20);
/// The longest either side waits for the other, whatever the relay does
/// (its `link_ttl`, 10 minutes by default, ends a link first).
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Content bytes per history batch (one larger message goes alone).
const BATCH_BYTES: usize = 256 << 10;
/// Messages per history batch.
const BATCH_MESSAGES: usize = 512;

type WsConn = Conn<MaybeTlsStream<TcpStream>>;

fn url(relay_url: &str, path: &str) -> String {
    format!("{}{path}", relay_url.trim_end_matches('/'))
}

/// One side of a link at the relay: sealed messages out and in.
struct Pipe {
    conn: WsConn,
}

impl Pipe {
    async fn send_frame(&mut self, frame: link_client_frame::Frame) -> Result<()> {
        Ok(self
            .conn
            .send_msg(&LinkClientFrame { frame: Some(frame) })
            .await?)
    }

    async fn send(&mut self, sealed: Vec<u8>) -> Result<()> {
        self.send_frame(link_client_frame::Frame::Data(sealed))
            .await
    }

    /// The next relay frame within `wait`, pinging while it waits. A clean
    /// close is [`ClientError::LinkClosed`]; the relay's refusal of a join
    /// (`FORBIDDEN`) is [`ClientError::NoSuchLink`].
    async fn frame(&mut self, wait: Duration) -> Result<link_server_frame::Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let slice =
                PING_EVERY.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if slice.is_zero() {
                return Err(ClientError::Timeout);
            }
            // Cancelling `recv_msg` is safe: the WebSocket keeps a partial
            // frame buffered for the next poll.
            match tokio::time::timeout(slice, self.conn.recv_msg::<LinkServerFrame>()).await {
                Err(_) => self.conn.ping().await?,
                Ok(Ok(Some(LinkServerFrame { frame: Some(f) }))) => return Ok(f),
                Ok(Ok(Some(LinkServerFrame { frame: None }))) => {
                    return Err(ClientError::Protocol("empty link frame"));
                }
                Ok(Ok(None)) => return Err(ClientError::LinkClosed),
                Ok(Err(NetError::Closed(Some(code), _))) if code == ward_net::close::FORBIDDEN => {
                    return Err(ClientError::NoSuchLink);
                }
                Ok(Err(NetError::Closed(..))) => return Err(ClientError::LinkClosed),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next sealed message from the other side.
    async fn data(&mut self, wait: Duration) -> Result<Vec<u8>> {
        match self.frame(wait).await? {
            link_server_frame::Frame::Data(d) => Ok(d),
            _ => Err(ClientError::Protocol("expected link data")),
        }
    }

    /// Waits (a little) for the other side to close after the last message,
    /// so that closing first never cuts what is still on its way to it.
    async fn finish(mut self, wait: Duration) {
        let _ = tokio::time::timeout(wait, async {
            while let Ok(Some(_)) = self.conn.recv().await {}
        })
        .await;
        self.conn.close(ward_net::close::NORMAL, "").await;
    }
}

/// A link opened by [`Client::link_device`]: show [`Self::code`] (as a QR
/// code, or as text) to the new device, then [`Self::wait_for_device`].
pub struct LinkOffer {
    inner: Arc<Inner>,
    pipe: Pipe,
    approver: Approver,
    code: Zeroizing<String>,
    expires_at: u64,
}

impl core::fmt::Debug for LinkOffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkOffer")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts linking a new device of this user (SECURITY.md §4.9): draws
    /// a link secret and opens its rendezvous at the relay. Show
    /// [`LinkOffer::code`] to the new device, which runs
    /// [`PendingDevice::link`] with it; then
    /// [`LinkOffer::wait_for_device`]. The relay never learns the code.
    pub async fn link_device(&self) -> Result<LinkOffer> {
        let code = LinkCode {
            user_id: self.inner.user_id.clone(),
            secret: LinkSecret::generate(&mut rand::rng()),
        };
        let approver = Approver::new(&code.secret);
        let conn = super::blob_conn::device_conn(
            &self.inner,
            &url(&self.inner.config.relay_url, LINK_PATH),
        )
        .await?;
        let mut pipe = Pipe { conn };
        pipe.send_frame(link_client_frame::Frame::Open(LinkOpen {
            rendezvous: approver.rendezvous().to_vec(),
        }))
        .await?;
        let expires_at = match pipe.frame(self.inner.config.request_timeout).await? {
            link_server_frame::Frame::Waiting(w) => w.expires_at,
            _ => return Err(ClientError::Protocol("expected the relay's waiting")),
        };
        Ok(LinkOffer {
            inner: self.inner.clone(),
            pipe,
            approver,
            code: code.encode(),
            expires_at,
        })
    }
}

impl LinkOffer {
    /// The code to show: `ward-link:1:<secret>:<user id>`. It is the key of
    /// the link: show it to the new device only, never log it.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// When the relay ends the link if no device joined (unix seconds).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Waits for the new device (until the link expires), checks its keys
    /// and proof of possession, and runs the SAS exchange: the request to
    /// approve once the user saw the same six digits on both screens.
    /// A device that is not the one that scanned the code (a relay swapping
    /// links, anyone without the code) is [`ClientError::Link`]
    /// (`Tampered`), and nothing is approved.
    pub async fn wait_for_device(mut self) -> Result<LinkRequest> {
        match self.pipe.frame(MAX_WAIT).await? {
            link_server_frame::Frame::PeerJoined(_) => {}
            _ => return Err(ClientError::Protocol("expected the new device to join")),
        }
        let timeout = self.inner.config.request_timeout;
        let hello = self.pipe.data(timeout).await?;
        let (offer, nonce) = self.approver.on_hello(
            &hello,
            &self.inner.config.org_root,
            &self.inner.user_id,
            &mut rand::rng(),
        )?;
        self.pipe.send(nonce).await?;
        let reveal = self.pipe.data(timeout).await?;
        let sas = self.approver.on_reveal(&reveal)?;
        Ok(LinkRequest {
            inner: self.inner,
            pipe: self.pipe,
            approver: self.approver,
            offer,
            sas,
        })
    }
}

/// A new device waiting for the user's decision on the existing device:
/// show [`Self::sas`], ask whether the new device shows the same digits,
/// then [`Self::approve`] or [`Self::refuse`].
pub struct LinkRequest {
    inner: Arc<Inner>,
    pipe: Pipe,
    approver: Approver,
    offer: DeviceOffer,
    sas: Sas,
}

impl core::fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkRequest")
            .field("device", &self.offer.signing)
            .field("sas", &self.sas)
            .finish_non_exhaustive()
    }
}

impl LinkRequest {
    /// The six digits to compare, `"123 456"`.
    pub fn sas(&self) -> &str {
        self.sas.as_str()
    }

    /// The new device's id.
    pub fn device_id(&self) -> SigningPublicKey {
        self.offer.signing
    }

    /// Approves the new device: appends its addition to the user's log,
    /// grants it the user keys (as [`Client::approve_device`]), then sends
    /// it this device's history when `with_history` (every conversation
    /// and message this device holds, in batches, sealed end to end).
    /// Returns the number of messages sent.
    pub async fn approve(mut self, with_history: bool) -> Result<u64> {
        let keys = NewDeviceKeys {
            signing: self.offer.signing,
            encryption: self.offer.encryption,
            proof: self.offer.proof,
        };
        if let Err(e) = super::approve_keys(&self.inner, &keys).await {
            // Tell the new device, so that it stops waiting.
            if let Ok(m) = self.approver.refuse() {
                let _ = self.pipe.send(m).await;
            }
            return Err(e);
        }
        self.pipe.send(self.approver.approve()?).await?;
        let mut sent = 0u64;
        if with_history {
            for (conversation, messages) in export(&self.inner).await? {
                for batch in batches(conversation, messages) {
                    sent += batch.messages.len() as u64;
                    self.pipe.send(self.approver.history(batch)?).await?;
                }
            }
        }
        self.pipe.send(self.approver.done()?).await?;
        self.pipe.finish(self.inner.config.request_timeout).await;
        tracing::info!(device = ?self.offer.signing, messages = sent, "device linked");
        Ok(sent)
    }

    /// Refuses the new device (the digits differed, or the user does not
    /// know it): nothing is added, and the new device is told.
    pub async fn refuse(mut self) -> Result<()> {
        let m = self.approver.refuse()?;
        self.pipe.send(m).await?;
        self.pipe.finish(self.inner.config.request_timeout).await;
        Ok(())
    }
}

/// Every conversation this device holds (rooms' included) with its
/// messages, oldest first.
async fn export(inner: &Inner) -> Result<Vec<(Conversation, Vec<Message>)>> {
    inner
        .store
        .run(|s| {
            let mut convs = s.conversations()?;
            for c in s.room_conversation_ids()? {
                if !convs.iter().any(|k| k.id == c) {
                    convs.push(Conversation {
                        id: c,
                        members: Vec::new(),
                    });
                }
            }
            let mut out = Vec::with_capacity(convs.len());
            for c in convs {
                let messages = s.messages(&c.id)?;
                out.push((c, messages));
            }
            Ok(out)
        })
        .await
}

/// Cuts one conversation's messages into batches of at most
/// [`BATCH_MESSAGES`] messages or [`BATCH_BYTES`] of content; the first
/// batch names the conversation.
fn batches(conversation: Conversation, messages: Vec<Message>) -> Vec<LinkHistory> {
    let mut out = vec![LinkHistory {
        conversations: vec![LinkConversation {
            conversation_id: conversation.id.as_bytes().to_vec(),
            members: conversation.members,
        }],
        messages: Vec::new(),
    }];
    let mut bytes = 0usize;
    for m in messages {
        let last = out.len() - 1;
        if !out[last].messages.is_empty()
            && (out[last].messages.len() >= BATCH_MESSAGES || bytes + m.content.len() > BATCH_BYTES)
        {
            out.push(LinkHistory::default());
            bytes = 0;
        }
        bytes += m.content.len();
        let n = out.len() - 1;
        out[n].messages.push(LinkedMessage {
            resource_id: m.resource_id.as_bytes().to_vec(),
            conversation_id: m.conversation_id.as_bytes().to_vec(),
            sender_user_id: m.sender_user_id.clone(),
            sender_device: m.sender_device.as_bytes().to_vec(),
            timestamp_ms: m.timestamp_ms,
            content_type: m.content_type.to_wire() as u32,
            content: m.content.to_vec(),
        });
    }
    out
}

/// A new device that scanned a code and ran the SAS exchange: show
/// [`Self::sas`], then [`Self::finish`] once the user approved on the
/// existing device.
pub struct LinkingDevice {
    pending: PendingDevice,
    pipe: Pipe,
    joiner: Joiner,
    sas: Sas,
}

impl core::fmt::Debug for LinkingDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkingDevice")
            .field("user_id", &self.pending.user_id)
            .field("sas", &self.sas)
            .finish_non_exhaustive()
    }
}

impl PendingDevice {
    /// Links this new device from a scanned code ([`LinkOffer::code`] on
    /// the existing device): creates its keys and its store under `pin`,
    /// joins the link at the relay, offers its keys and runs the SAS
    /// exchange. Show [`LinkingDevice::sas`] and call
    /// [`LinkingDevice::finish`]. A code the relay does not know (expired,
    /// used) is [`ClientError::NoSuchLink`]; on any failure before the
    /// approval the store just created is wiped, so scanning a new code
    /// starts afresh.
    pub async fn link(config: ClientConfig, code: &str, pin: Pin) -> Result<LinkingDevice> {
        let code = LinkCode::parse(code)?;
        let path = config.store_path.clone();
        let timeout = config.request_timeout;
        let join = url(&config.relay_url, JOIN_PATH);
        let tls = config.tls.clone();
        let pending = Client::pair_new_device(config, &code.user_id, pin).await?;
        let started = async {
            let conn = tokio::time::timeout(
                timeout,
                ward_net::tls::connect(&join, &Limits::default(), &tls),
            )
            .await
            .map_err(|_| ClientError::Timeout)??;
            let mut pipe = Pipe { conn };
            pipe.send_frame(link_client_frame::Frame::Join(LinkJoin {
                rendezvous: code.secret.rendezvous().to_vec(),
            }))
            .await?;
            match pipe.frame(timeout).await? {
                link_server_frame::Frame::PeerJoined(_) => {}
                _ => return Err(ClientError::Protocol("expected the relay to pair the link")),
            }
            let keys = pending.device_keys();
            let offer = DeviceOffer {
                signing: keys.signing,
                encryption: keys.encryption,
                proof: keys.proof,
            };
            let (mut joiner, hello) = Joiner::start(&code, &offer, &mut rand::rng());
            pipe.send(hello).await?;
            let nonce = pipe.data(timeout).await?;
            let (reveal, sas) = joiner.on_nonce(&nonce)?;
            pipe.send(reveal).await?;
            Ok((pipe, joiner, sas))
        }
        .await;
        match started {
            Ok((pipe, joiner, sas)) => Ok(LinkingDevice {
                pending,
                pipe,
                joiner,
                sas,
            }),
            Err(e) => {
                drop(pending);
                let _ = blocking(move || Ok(Store::wipe(&path)?)).await;
                Err(e)
            }
        }
    }
}

impl LinkingDevice {
    /// The six digits to compare with the existing device's, `"123 456"`.
    pub fn sas(&self) -> &str {
        self.sas.as_str()
    }

    /// Waits for the user's decision on the existing device (until the
    /// link expires). Refused: the store is wiped and
    /// [`ClientError::LinkRefused`]. Approved: stores the history as it
    /// arrives, checks it is whole, then completes the pairing
    /// ([`PendingDevice::complete`]: the verified log and the grants) and
    /// returns the unlocked client. A link broken after the approval
    /// (closed, tampered, truncated) is an error, but the device is in the
    /// log: [`PendingDevice::resume`] and [`PendingDevice::complete`]
    /// finish it, with the history that had arrived (every batch stored was
    /// authenticated).
    pub async fn finish(mut self) -> Result<Client> {
        let path = self.pending.config.store_path.clone();
        let decision = match self.pipe.data(MAX_WAIT).await {
            Ok(m) => self.joiner.next(&m).map_err(ClientError::from),
            Err(e) => Err(e),
        };
        match decision {
            Ok(JoinerEvent::Approved) => {}
            other => {
                let e = match other {
                    Ok(_) => ClientError::LinkRefused,
                    Err(e) => e,
                };
                let Self { pending, pipe, .. } = self;
                pipe.finish(Duration::from_millis(100)).await;
                drop(pending);
                let _ = blocking(move || Ok(Store::wipe(&path)?)).await;
                return Err(e);
            }
        }
        let timeout = self.pending.config.request_timeout;
        let mut received = 0usize;
        loop {
            let m = self.pipe.data(timeout).await?;
            match self.joiner.next(&m)? {
                JoinerEvent::History(batch) => {
                    let (conversations, messages) = imported(batch)?;
                    received += self
                        .pending
                        .store
                        .run(move |s| s.import_history(&conversations, &messages))
                        .await?;
                }
                JoinerEvent::Done { .. } => break,
                JoinerEvent::Approved | JoinerEvent::Refused => {
                    return Err(ClientError::Protocol("a second decision"));
                }
            }
        }
        self.pipe.finish(Duration::from_millis(100)).await;
        tracing::info!(messages = received, "device linked; history stored");
        self.pending.complete().await
    }
}

/// A history batch as store records: every field checked (the batch is
/// authenticated, so a bad one is a faulty device, not an attacker; it is
/// refused all the same). The batch's plaintext is zeroized.
fn imported(mut batch: LinkHistory) -> Result<(Vec<Conversation>, Vec<Message>)> {
    let bad = |what| ClientError::Protocol(what);
    let result = (|| {
        let mut conversations = Vec::with_capacity(batch.conversations.len());
        for c in &batch.conversations {
            let id = ConversationId::from_slice(&c.conversation_id)
                .ok_or(bad("linked conversation id"))?;
            if !c.members.iter().all(|m| valid_user_id(m)) {
                return Err(bad("linked conversation member"));
            }
            let mut members = c.members.clone();
            members.sort();
            members.dedup();
            conversations.push(Conversation { id, members });
        }
        let mut messages = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            let content_type = i32::try_from(m.content_type)
                .ok()
                .and_then(ContentType::from_wire)
                .filter(|t| *t != ContentType::RoomHistory)
                .ok_or(bad("linked message content type"))?;
            if !valid_user_id(&m.sender_user_id) {
                return Err(bad("linked message sender"));
            }
            messages.push(Message {
                resource_id: ResourceId::from_slice(&m.resource_id)
                    .ok_or(bad("linked message resource id"))?,
                conversation_id: ConversationId::from_slice(&m.conversation_id)
                    .ok_or(bad("linked message conversation id"))?,
                sender_user_id: m.sender_user_id.clone(),
                sender_device: SigningPublicKey::from_bytes(&m.sender_device)
                    .map_err(|_| bad("linked message sender device"))?,
                timestamp_ms: m.timestamp_ms,
                content_type,
                content: Zeroizing::new(m.content.clone()),
            });
        }
        Ok((conversations, messages))
    })();
    for m in &mut batch.messages {
        m.content.zeroize();
    }
    result
}
