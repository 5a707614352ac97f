//! The relay connection task: connect with exponential backoff and jitter,
//! authenticate presenting the end of this user's own verified log (the
//! whole log if the relay answers that it lacks the rest), then forward
//! `Deliver`s to the receive worker and carry `Send`, `Ack` and
//! `PublishLog` frames for the rest of the client.
//!
//! Acks are cumulative and per mailbox, not per connection, so they travel
//! as one value, the highest sequence number handled (a `watch`): the
//! receive worker never waits on the connection to ack (it cannot deadlock
//! against a connection waiting for it to take more `Deliver`s) and acks
//! coalesce. A new connection does not start by acking the latest value:
//! the relay deletes only what that connection delivered (SECURITY.md §9),
//! and after a relay reset the value is from another numbering, above
//! entries this device has not seen. An entry whose ack was lost with a
//! connection is delivered again, recognised by the relay cursor and acked
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use ward_net::{Limits, NetError};
use ward_proto::v1::{
    Ack, ClientFrame, Deliver, ErrorCode, PublishLog, RegisterPush, Send, ServerFrame,
    client_frame, server_frame,
};

use super::Inner;
use super::error::{ClientError, Result};

/// What the rest of the client asks of the connection.
pub(crate) enum RelayCmd {
    /// Send a message; the reply comes with its `SendAck` or `RelayError`.
    Send(Send, oneshot::Sender<Result<()>>),
    /// Publish this user's log (after it changed).
    PublishLog(Vec<ward_proto::v1::SignedStatement>),
    /// Send the push token now held in `Inner::push_token` (SECURITY.md §9.2).
    RegisterPush,
}

/// Most bytes of log entries presented at login: the newest entries that fit
/// (all of a short log). The relay's pre-login frame limit (256 KiB by
/// default) caps the whole log at some 180 entries; its end, judged against
/// the log the relay already holds (SECURITY.md §9), keeps a long-lived
/// user able to log in.
pub(crate) const AUTH_LOG_BUDGET: usize = 16 << 10;

/// What this device presents in `AuthResponse.log`: the newest entries of
/// its verified log whose encoded sizes add up to at most
/// [`AUTH_LOG_BUDGET`], or the whole log when `whole` (the relay answered
/// `UNKNOWN_USER`: it does not hold the entries before them).
pub(crate) fn presented_log(
    entries: &[ward_proto::v1::SignedStatement],
    whole: bool,
) -> &[ward_proto::v1::SignedStatement] {
    if whole {
        return entries;
    }
    let mut bytes = 0usize;
    let mut from = entries.len();
    for (i, e) in entries.iter().enumerate().rev() {
        bytes = bytes.saturating_add(ward_proto::Message::encoded_len(e) + 4);
        if bytes > AUTH_LOG_BUDGET {
            break;
        }
        from = i;
    }
    &entries[from..]
}

/// Exponential backoff with full jitter: the n-th delay is drawn uniformly
/// from `[d/2, d]`, where `d = min(max, min * 2^n)`.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(2);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    mut cmds: mpsc::Receiver<RelayCmd>,
    mut acked: watch::Receiver<u64>,
    connected: watch::Sender<bool>,
    delivers: mpsc::Sender<Deliver>,
) {
    let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
    // Whether this outage was reported (`Event::RelayUnreachable`).
    let mut reported = false;
    // Whether the next login presents the whole log (the relay lacked it):
    // for one attempt, so that a whole log the relay cannot take (over its
    // pre-login limit) does not stop the next attempts, once the relay has
    // learnt the log elsewhere (the keyserver's link, another device).
    let mut whole = false;
    loop {
        let present_whole = std::mem::take(&mut whole);
        match session(
            &inner,
            &mut cmds,
            &mut acked,
            &connected,
            &delivers,
            &mut backoff,
            present_whole,
        )
        .await
        {
            Ok(Stop::Shutdown) => return,
            Ok(Stop::Disconnected) => reported = false,
            Err(ClientError::Net(NetError::Refused(ErrorCode::UnknownUser))) if !present_whole => {
                // The relay holds less of this user's log than was
                // presented: present all of it, at once.
                tracing::debug!(
                    "relay: it lacks the start of this user's log; presenting it whole"
                );
                whole = true;
                continue;
            }
            Err(e) if e.is_device_revoked() => {
                tracing::warn!("relay: this device is revoked; no more reconnecting");
                let _ = connected.send(false);
                super::revoked::revoked(&inner).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "relay connection failed");
                if *connected.borrow() {
                    reported = false;
                } else if !reported {
                    reported = true;
                    inner.emit_now(super::events::Event::RelayUnreachable { reason: e });
                }
            }
        }
        let _ = connected.send(false);
        let delay = backoff.next_delay();
        tracing::debug!(delay_ms = delay.as_millis() as u64, "relay: reconnecting");
        // While waiting, answer commands rather than leave them hanging.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(RelayCmd::Send(_, reply)) => {
                        let _ = reply.send(Err(ClientError::Net(NetError::Closed(None, String::new()))));
                    }
                    // The log is presented at the next handshake, and the
                    // push token sent right after it.
                    Some(RelayCmd::PublishLog(_) | RelayCmd::RegisterPush) => {}
                },
            }
        }
    }
}

/// The frame carrying this device's push token, if the app registered one.
fn push_frame(inner: &Inner) -> Option<ClientFrame> {
    let token = inner
        .push_token
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()?;
    Some(ClientFrame {
        frame: Some(client_frame::Frame::RegisterPush(RegisterPush { token })),
    })
}

fn ack_frame(up_to_seq: u64) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Ack(Ack {
            up_to_seq,
            device_id: Vec::new(),
        })),
    }
}

enum Stop {
    Shutdown,
    Disconnected,
}

async fn session(
    inner: &Inner,
    cmds: &mut mpsc::Receiver<RelayCmd>,
    acked: &mut watch::Receiver<u64>,
    connected: &watch::Sender<bool>,
    delivers: &mpsc::Sender<Deliver>,
    backoff: &mut Backoff,
    whole: bool,
) -> Result<Stop> {
    let own = inner
        .directory
        .cached(&inner.store, &inner.user_id)
        .await?
        .ok_or(ClientError::NotEnrolled)?;
    let limits = Limits::default();
    let mut conn = tokio::time::timeout(inner.config.request_timeout, async {
        let mut conn =
            ward_net::tls::connect(&inner.config.relay_url, &limits, &inner.config.tls).await?;
        ward_net::handshake::client(
            &mut conn,
            &inner.device,
            &inner.user_id,
            &inner.config.relay_audience(),
            presented_log(&own.entries, whole),
        )
        .await?;
        Ok::<_, ClientError>(conn)
    })
    .await
    .map_err(|_| ClientError::Timeout)??;
    tracing::debug!("relay: connected");
    backoff.reset();
    // Marked seen: only acks of what this connection delivers are sent.
    acked.borrow_and_update();
    // Again on every connection: the relay may have been restored from a
    // backup older than the registration, or be another relay.
    if let Some(frame) = push_frame(inner) {
        conn.send_msg(&frame).await?;
    }
    let _ = connected.send(true);
    let mut pending: HashMap<Vec<u8>, oneshot::Sender<Result<()>>> = HashMap::new();
    loop {
        tokio::select! {
            // Acks and sends first: they free the relay's queues; reading
            // more `Deliver`s can wait.
            biased;
            changed = acked.changed() => {
                if changed.is_err() {
                    return Ok(Stop::Shutdown);
                }
                let seq = *acked.borrow_and_update();
                conn.send_msg(&ack_frame(seq)).await?;
            }
            cmd = cmds.recv() => {
                let frame = match cmd {
                    None => {
                        conn.close(ward_net::close::NORMAL, "bye").await;
                        return Ok(Stop::Shutdown);
                    }
                    Some(RelayCmd::Send(send, reply)) => {
                        pending.insert(send.message_id.clone(), reply);
                        client_frame::Frame::Send(send)
                    }
                    Some(RelayCmd::PublishLog(entries)) => client_frame::Frame::PublishLog(PublishLog { entries }),
                    Some(RelayCmd::RegisterPush) => {
                        if let Some(frame) = push_frame(inner) {
                            conn.send_msg(&frame).await?;
                        }
                        continue;
                    }
                };
                conn.send_msg(&ClientFrame { frame: Some(frame) }).await?;
            }
            frame = conn.recv_msg::<ServerFrame>() => {
                let Some(frame) = frame? else { return Ok(Stop::Disconnected) };
                match frame.frame {
                    Some(server_frame::Frame::Deliver(d)) => {
                        tracing::debug!(seq = d.seq, "relay: deliver");
                        if delivers.send(d).await.is_err() {
                            return Ok(Stop::Shutdown);
                        }
                    }
                    Some(server_frame::Frame::SendAck(a)) => {
                        if let Some(reply) = pending.remove(&a.message_id) {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    Some(server_frame::Frame::Error(e)) => {
                        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                        tracing::debug!(?code, "relay: error");
                        let err = ClientError::Relay { code, detail: e.detail };
                        match pending.remove(&e.message_id) {
                            Some(reply) => { let _ = reply.send(Err(err)); }
                            None => tracing::warn!(error = %err, "relay error outside a send"),
                        }
                    }
                    Some(server_frame::Frame::LogAccepted(l)) => {
                        tracing::debug!(len = l.len, "relay: log accepted");
                    }
                    Some(server_frame::Frame::PushRegistered(_)) => {
                        tracing::debug!("relay: push token registered");
                    }
                    Some(server_frame::Frame::BlobState(_) | server_frame::Frame::BlobData(_)) => {
                        return Err(ClientError::Protocol("blob frame on the message connection"));
                    }
                    None => return Err(ClientError::Protocol("empty relay frame")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_is_presented_by_its_end_and_a_short_one_whole() {
        let mut rng = rand::rng();
        let org = ward_core::testkit::Org::new(&mut rng);
        let root = org.root_public();
        let mut bob = org.enroll(&mut rng, "bob");
        let mut log = bob.log.clone();
        assert_eq!(presented_log(&log, false).len(), 1);
        for _ in 0..20 {
            let key = ward_core::keys::UserEncryptionKey::generate(&mut rng).public_key();
            let e = bob
                .chain
                .rotate_user_key(&bob.device, &key, ward_core::testkit::KIT_TIME);
            bob.chain.apply(&root, &e).unwrap();
            log.push(e);
        }
        let end = presented_log(&log, false);
        let bytes: usize = end
            .iter()
            .map(|e| ward_proto::Message::encoded_len(e) + 4)
            .sum();
        assert!(!end.is_empty() && end.len() < log.len());
        assert!(bytes <= AUTH_LOG_BUDGET);
        assert_eq!(end, &log[log.len() - end.len()..], "the newest entries");
        assert_eq!(presented_log(&log, true), &log[..]);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let bounds = [100u64, 200, 400, 800, 1000, 1000];
        for hi in bounds {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= hi / 2 && d <= hi, "{d} not in [{}, {hi}]", hi / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
