//! Room messages for `--rooms`: the relay fans a `Send { room_id }` out to
//! the members of the room log it verified (SECURITY.md §17.10). The logs
//! come over the relay's keyserver link; here this tool is that keyserver
//! end (it authenticates the relay's service key as the keyserver does and
//! sends every user's log, then every room's), so that only the relay is
//! measured. Connection i sends to room i, created by user i with users
//! i+1..=i+K as members: K deliveries per message, as with `--fanout K`.

use std::time::Duration;

use tokio::net::TcpListener;
use ward_core::auth::Audience;
use ward_core::room::{HistoryPolicy, VerifiedRoom, create_room};
use ward_core::testkit::{Clinician, room_metadata};
use ward_proto::Message as _;
use ward_proto::v1::{
    Envelope, EnvelopeHeader, LinkFrame, LinkNotice, LinkSubscribe, Recipient, RoomRecipient, Send,
    link_frame,
};

use crate::Error;

/// What one connection's messages are addressed to.
pub enum Target {
    /// A recipient list, as a 1:1 message or the list fan-out.
    Devices(Vec<Recipient>),
    /// A room: the relay finds the member devices.
    Room {
        id: Vec<u8>,
        log_len: u64,
        /// The envelope's clear header, encoded (the relay reads its room).
        header: Vec<u8>,
    },
}

impl Target {
    /// The `Send` of one message of `size` payload bytes whose first eight
    /// bytes are the send time `t` (µs since the run's start).
    pub fn send(&self, message_id: Vec<u8>, t: u64, size: usize) -> Send {
        let mut body = vec![0u8; size.max(8)];
        body[..8].copy_from_slice(&t.to_be_bytes());
        match self {
            Target::Devices(to) => Send {
                message_id,
                recipients: to.clone(),
                payload: body,
                blob_ids: Vec::new(),
                room_id: Vec::new(),
                room_log_len: 0,
            },
            Target::Room {
                id,
                log_len,
                header,
            } => Send {
                message_id,
                recipients: Vec::new(),
                payload: Envelope {
                    header: header.clone(),
                    ciphertext: body,
                    signature: vec![0; 64],
                }
                .encode_to_vec(),
                blob_ids: Vec::new(),
                room_id: id.clone(),
                room_log_len: *log_len,
            },
        }
    }
}

/// The send time a delivered payload carries (see [`Target::send`]).
pub fn sent_at(payload: &[u8], rooms: bool) -> Option<u64> {
    let body = if rooms {
        Envelope::decode(payload).ok()?.ciphertext
    } else {
        payload.to_vec()
    };
    Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?))
}

/// Room i for every user i: created by user i, with users i+1..=i+k
/// (modulo n) as members.
pub fn rooms(users: &[Clinician], k: usize) -> Result<Vec<Created>, Error> {
    let mut rng = rand::rng();
    let n = users.len();
    (0..n)
        .map(|i| {
            let members: Vec<_> = (1..=k).map(|j| &users[(i + j) % n].chain).collect();
            let c = create_room(
                &mut rng,
                users[i].room_author(),
                HistoryPolicy::FromJoin,
                &members,
                &room_metadata(),
                1,
            )
            .map_err(|e| format!("room {i}: {e}"))?;
            Ok(Created {
                target: target(&c.room, &format!("load{i}"))?,
                entries: vec![c.entry],
                id: c.room.id().as_bytes().to_vec(),
            })
        })
        .collect()
}

/// One room as the link sends it and its creator addresses it.
pub struct Created {
    pub id: Vec<u8>,
    pub entries: Vec<ward_proto::v1::SignedRoomStatement>,
    pub target: Target,
}

fn target(room: &VerifiedRoom, sender: &str) -> Result<Target, Error> {
    let key = room
        .current_epoch_key()
        .ok_or("room without an epoch key")?;
    let header = EnvelopeHeader {
        version: 2,
        sender_user_id: sender.into(),
        room: Some(RoomRecipient {
            room_id: room.id().as_bytes().to_vec(),
            epoch: room.current_epoch(),
            epoch_key: key.id().as_bytes().to_vec(),
        }),
        ..EnvelopeHeader::default()
    };
    Ok(Target::Room {
        id: room.id().as_bytes().to_vec(),
        log_len: room.len(),
        header: header.encode_to_vec(),
    })
}

/// A keyserver's relay-link listener on 127.0.0.1 (default instance).
pub struct FakeKeyserver {
    listener: TcpListener,
    audience: Audience,
}

impl FakeKeyserver {
    pub async fn start(root: ward_core::keys::SigningPublicKey) -> Result<Self, Error> {
        Ok(Self {
            listener: TcpListener::bind("127.0.0.1:0").await?,
            audience: Audience::keyserver(root, ward_core::auth::DEFAULT_INSTANCE),
        })
    }

    pub fn url(&self) -> Result<String, Error> {
        Ok(format!("ws://{}", self.listener.local_addr()?))
    }

    /// Accepts the relay's link, authenticates it, sends every user's log
    /// and then every room's, and keeps the link open (reading what the
    /// relay sends) until the returned task is aborted.
    pub async fn serve(
        self,
        users: &[Clinician],
        rooms: &[Created],
    ) -> Result<tokio::task::JoinHandle<()>, Error> {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(30), self.listener.accept())
            .await
            .map_err(|_| "the relay did not dial its keyserver link")??;
        let (mut conn, _path) =
            ward_net::conn::accept_with_path(tcp, &ward_net::Limits::default()).await?;
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| format!("{e}"))?;
        ward_net::handshake::link_server(&mut conn, &self.audience, nonce, |_| true).await?;
        let _sub: LinkSubscribe = conn.recv_msg().await?.ok_or("link closed")?;
        let notice = |n: LinkNotice| LinkFrame {
            frame: Some(link_frame::Frame::Notice(n)),
        };
        for u in users {
            conn.send_msg(&notice(LinkNotice {
                user_id: u.chain.user_id().to_owned(),
                entries: u.log.clone(),
                ..LinkNotice::default()
            }))
            .await?;
        }
        for r in rooms {
            conn.send_msg(&notice(LinkNotice {
                room_id: r.id.clone(),
                room_entries: r.entries.clone(),
                ..LinkNotice::default()
            }))
            .await?;
        }
        Ok(tokio::spawn(async move {
            while let Ok(Some(_)) = conn.recv().await {}
        }))
    }
}

/// A free loopback port for the relay's admin listener (bound, read, freed).
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until the relay at admin address `admin` has handled `expected`
/// link notices (its `/metrics`), so that the clock starts on a relay that
/// knows every room; an error if any was refused.
pub async fn wait_applied(admin: &str, expected: u64) -> Result<(), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        let metric = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let refused = metric("ward_relay_keyserver_link_notices_refused_total ");
        if refused > 0 {
            return Err(format!("the relay refused {refused} room or user logs").into());
        }
        if metric("ward_relay_keyserver_link_notices_total ") >= expected {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("the relay did not apply the link's logs in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
