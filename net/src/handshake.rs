//! The device-authentication handshake (SECURITY.md §8), both sides.
//!
//! ```text
//! server -> device  AuthChallenge { version: 2, service, instance, nonce: 32 random bytes }
//! device -> server  AuthResponse  { user_id, device_id, signature, log, version: 2 }
//! server -> device  AuthResult    { ok, error }
//! ```
//! The signature check is `ward_core::auth`; whether the device is an active
//! device of the user is the service's `check`, from its own directory. A
//! response of another protocol version (a v1 device sends none) is refused
//! with `UNSUPPORTED_VERSION` and the close code [`crate::close::UNSUPPORTED_VERSION`].

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use ward_core::AuthError;
use ward_core::auth::MAX_CHALLENGE_BYTES;
pub use ward_core::auth::{Audience, KEYSERVER, RELAY};
use ward_core::keys::{DelegationKey, DeviceSigningKey, SigningPublicKey};
use ward_proto::decode_bounded;
use ward_proto::v1::{
    AuthChallenge, AuthResponse, AuthResult, ErrorCode, SignedInvite, SignedStatement,
};

use crate::{Conn, Limits, NetError};

/// Largest encoded `AuthResult` a device accepts.
const MAX_RESULT_BYTES: usize = 64;

/// An authenticated device.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The user the device belongs to.
    pub user_id: String,
    /// The device's signing key (its id).
    pub device: SigningPublicKey,
    /// The log the device presented (empty if it sent none).
    pub log: Vec<SignedStatement>,
    /// An enrolling device's invite and its delegation signature
    /// (SECURITY.md §8, E1–E5), unchecked: empty unless it sent them. The
    /// keyserver checks them with `ward_core::auth::verify_enrolment`.
    pub invite: Vec<u8>,
    /// See [`Peer::invite`].
    pub invite_signature: Vec<u8>,
}

/// The next message, decoded under its own limit (SECURITY.md §3.1).
async fn recv_small<S, M>(conn: &mut Conn<S>, max: usize) -> Result<M, NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: ward_proto::Message + Default + ward_proto::Bounded,
{
    let bytes = conn
        .recv()
        .await?
        .ok_or(NetError::Closed(None, String::new()))?;
    Ok(decode_bounded(&bytes, max)?)
}

/// The `AuthResult` error a server answers a refused response with.
pub fn refusal_code(e: &AuthError) -> ErrorCode {
    match e {
        AuthError::Malformed | AuthError::UnexpectedChallenge => ErrorCode::Malformed,
        AuthError::BadSignature
        | AuthError::NoInvite
        | AuthError::Invite(_)
        | AuthError::BadInviteSignature => ErrorCode::Unauthenticated,
        AuthError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
    }
}

/// Server side. Sends the challenge of `audience` (this server's service,
/// instance and root) with `nonce` (32 fresh random bytes from the caller),
/// verifies the response's signature, asks `check` whether the peer is an
/// active device, and answers with the result. The whole exchange must
/// finish within `limits.auth_timeout`. On failure the caller should close
/// the connection with [`Conn::close_for`].
pub async fn server<S, F, Fut>(
    conn: &mut Conn<S>,
    audience: &Audience,
    nonce: [u8; 32],
    limits: &Limits,
    check: F,
) -> Result<Peer, NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Peer) -> Fut,
    Fut: Future<Output = Result<Peer, ErrorCode>>,
{
    let exchange = async {
        let challenge = audience.challenge(nonce);
        conn.send_msg(&challenge).await?;
        let response: AuthResponse = conn
            .recv_msg()
            .await?
            .ok_or(NetError::Closed(None, String::new()))?;
        let (user_id, device) =
            match ward_core::auth::verify_response(audience, &challenge, &response) {
                Ok(ok) => ok,
                Err(e) => {
                    let code = refusal_code(&e);
                    let _ = conn
                        .send_msg(&AuthResult {
                            ok: false,
                            error: code as i32,
                        })
                        .await;
                    return Err(e.into());
                }
            };
        match check(Peer {
            user_id,
            device,
            log: response.log,
            invite: response.invite,
            invite_signature: response.invite_signature,
        })
        .await
        {
            Ok(peer) => {
                conn.send_msg(&AuthResult {
                    ok: true,
                    error: ErrorCode::Unspecified as i32,
                })
                .await?;
                Ok(peer)
            }
            Err(code) => {
                let _ = conn
                    .send_msg(&AuthResult {
                        ok: false,
                        error: code as i32,
                    })
                    .await;
                Err(NetError::Refused(code))
            }
        }
    };
    tokio::time::timeout(limits.auth_timeout, exchange)
        .await
        .map_err(|_| NetError::Timeout)?
}

/// The keyserver's side of its relay link's handshake (SECURITY.md
/// §10.8): sends the challenge of `audience` with `nonce`, verifies the
/// relay's service-key signature, refuses (with the reason) a key that
/// `allowed` does not accept, and answers. Returns the relay's key.
pub async fn link_server<S>(
    conn: &mut Conn<S>,
    audience: &Audience,
    nonce: [u8; 32],
    allowed: impl FnOnce(&SigningPublicKey) -> bool,
) -> Result<SigningPublicKey, NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = audience.challenge(nonce);
    conn.send_msg(&challenge).await?;
    let response: AuthResponse = conn
        .recv_msg()
        .await?
        .ok_or(NetError::Closed(None, String::new()))?;
    let refuse = |code: ErrorCode| AuthResult {
        ok: false,
        error: code as i32,
    };
    let key = match ward_core::auth::verify_link_response(audience, &challenge, &response) {
        Ok(k) => k,
        Err(e) => {
            let _ = conn.send_msg(&refuse(refusal_code(&e))).await;
            return Err(e.into());
        }
    };
    // Public keys: nothing secret to compare in constant time.
    if !allowed(&key) {
        let _ = conn.send_msg(&refuse(ErrorCode::Unauthenticated)).await;
        return Err(NetError::Refused(ErrorCode::Unauthenticated));
    }
    conn.send_msg(&AuthResult {
        ok: true,
        error: ErrorCode::Unspecified as i32,
    })
    .await?;
    Ok(key)
}

/// Client side: answers the server's challenge as `device` of `user_id`,
/// presenting `log` (the user's own log, for the relay; may be empty), and
/// checks that the server is the `expected` audience (service and instance;
/// the organisation root is bound into the signature).
pub async fn client<S>(
    conn: &mut Conn<S>,
    device: &DeviceSigningKey,
    user_id: &str,
    expected: &Audience,
    log: &[SignedStatement],
) -> Result<(), NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    answer(conn, device, user_id, expected, log, None).await
}

/// Client side for a device that enrolls at the keyserver (its user does
/// not exist yet): [`client`], with the proof that it holds `invite` and
/// its one-time `delegation` key (SECURITY.md §8, E1–E5). Without it the
/// keyserver opens no enrolling session.
pub async fn client_enrolling<S>(
    conn: &mut Conn<S>,
    device: &DeviceSigningKey,
    user_id: &str,
    expected: &Audience,
    delegation: &DelegationKey,
    invite: &SignedInvite,
) -> Result<(), NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    answer(
        conn,
        device,
        user_id,
        expected,
        &[],
        Some((delegation, invite)),
    )
    .await
}

async fn answer<S>(
    conn: &mut Conn<S>,
    device: &DeviceSigningKey,
    user_id: &str,
    expected: &Audience,
    log: &[SignedStatement],
    enrolment: Option<(&DelegationKey, &SignedInvite)>,
) -> Result<(), NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge: AuthChallenge = recv_small(conn, MAX_CHALLENGE_BYTES).await?;
    if challenge.version == ward_proto::PROTOCOL_VERSION
        && (challenge.service != expected.service || challenge.instance != expected.instance)
    {
        return Err(NetError::WrongService(format!(
            "{}/{}",
            challenge.service, challenge.instance
        )));
    }
    let mut response = match enrolment {
        None => ward_core::auth::respond(device, user_id, expected, &challenge)?,
        Some((delegation, invite)) => ward_core::auth::respond_enrolling(
            device, delegation, invite, user_id, expected, &challenge,
        )?,
    };
    response.log = log.to_vec();
    conn.send_msg(&response).await?;
    let result: AuthResult = recv_small(conn, MAX_RESULT_BYTES).await?;
    if result.ok {
        Ok(())
    } else {
        Err(NetError::Refused(
            ErrorCode::try_from(result.error).unwrap_or(ErrorCode::Unspecified),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::testkit::Org;

    async fn pair(
        limits: Limits,
    ) -> (
        Conn<tokio::net::TcpStream>,
        Conn<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async {
            let (s, _) = listener.accept().await.unwrap();
            crate::conn::accept(s, &limits).await.unwrap()
        };
        let client = async {
            crate::conn::connect(&format!("ws://{addr}"), &limits)
                .await
                .unwrap()
        };
        tokio::join!(server, client)
    }

    #[tokio::test]
    async fn handshake_authenticates_an_active_device_and_refuses_others() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let alice = org.enroll(&mut rng, "alice");
        let limits = Limits::default();
        let relay = Audience::relay(org.root_public(), "test");
        let keyserver = Audience::keyserver(org.root_public(), "test");

        let (mut s, mut c) = pair(limits).await;
        let expected = alice.device.public_key();
        let (server_side, client_side) = tokio::join!(
            server(&mut s, &relay, [5; 32], &limits, |p: Peer| async move {
                if p.device == expected {
                    Ok(p)
                } else {
                    Err(ErrorCode::Unauthenticated)
                }
            }),
            client(&mut c, &alice.device, "alice", &relay, &alice.log),
        );
        client_side.unwrap();
        let peer = server_side.unwrap();
        assert_eq!(
            (peer.user_id.as_str(), peer.device, peer.log.len()),
            ("alice", expected, 1)
        );

        // The service refuses the device (revoked, unknown): the client gets a typed refusal.
        let (mut s, mut c) = pair(limits).await;
        let (server_side, client_side) = tokio::join!(
            server(&mut s, &relay, [6; 32], &limits, |_| async {
                Err(ErrorCode::DeviceRevoked)
            }),
            client(&mut c, &alice.device, "alice", &relay, &[]),
        );
        assert!(matches!(
            server_side,
            Err(NetError::Refused(ErrorCode::DeviceRevoked))
        ));
        assert!(matches!(
            client_side,
            Err(NetError::Refused(ErrorCode::DeviceRevoked))
        ));

        // A client expecting the keyserver will not sign for the relay.
        let (mut s, mut c) = pair(limits).await;
        let short = Limits {
            auth_timeout: std::time::Duration::from_millis(300),
            ..limits
        };
        let (server_side, client_side) = tokio::join!(
            server(&mut s, &relay, [7; 32], &short, |p| async { Ok(p) }),
            client(&mut c, &alice.device, "alice", &keyserver, &[]),
        );
        assert!(matches!(client_side, Err(NetError::WrongService(_))));
        assert!(server_side.is_err());
    }

    fn test_relay() -> Audience {
        Audience::relay(Org::new(&mut rand::rng()).root_public(), "test")
    }

    #[tokio::test]
    async fn another_instance_or_a_v1_device_is_refused() {
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let alice = org.enroll(&mut rng, "alice");
        let limits = Limits {
            auth_timeout: std::time::Duration::from_millis(500),
            ..Limits::default()
        };
        // A device that dialled the staging relay refuses to sign for prod.
        let prod = Audience::relay(org.root_public(), "prod");
        let staging = Audience::relay(org.root_public(), "staging");
        let (mut s, mut c) = pair(limits).await;
        let (server_side, client_side) = tokio::join!(
            server(&mut s, &prod, [3; 32], &limits, |p| async { Ok(p) }),
            client(&mut c, &alice.device, "alice", &staging, &[]),
        );
        assert!(matches!(client_side, Err(NetError::WrongService(w)) if w == "ward-relay/prod"));
        assert!(server_side.is_err());

        // A v1 device: its response carries no version.
        let (mut s, mut c) = pair(limits).await;
        let v1 = async {
            let challenge: AuthChallenge = c.recv_msg().await.unwrap().unwrap();
            let mut r =
                ward_core::auth::respond(&alice.device, "alice", &prod, &challenge).unwrap();
            r.version = 0;
            c.send_msg(&r).await.unwrap();
            let result: AuthResult = c.recv_msg().await.unwrap().unwrap();
            result
        };
        let (server_side, result) = tokio::join!(
            server(&mut s, &prod, [4; 32], &limits, |p| async { Ok(p) }),
            v1,
        );
        let err = server_side.unwrap_err();
        assert!(matches!(
            err,
            NetError::Auth(AuthError::UnsupportedVersion(0))
        ));
        assert_eq!(
            crate::conn::close_code_for(&err).0,
            crate::close::UNSUPPORTED_VERSION
        );
        assert_eq!(result.error, ErrorCode::UnsupportedVersion as i32);
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_text_frames_are_refused() {
        let limits = Limits {
            auth_timeout: std::time::Duration::from_millis(200),
            ..Limits::default()
        };
        let (mut s, _c) = pair(limits).await;
        let r = server(&mut s, &test_relay(), [1; 32], &limits, |p| async { Ok(p) }).await;
        assert!(matches!(r, Err(NetError::Timeout)));

        let (mut s, c) = pair(limits).await;
        let mut raw = c.into_inner();
        use futures_util::SinkExt;
        raw.send(tokio_tungstenite::tungstenite::Message::Text(
            "hello".into(),
        ))
        .await
        .unwrap();
        let r = server(
            &mut s,
            &test_relay(),
            [1; 32],
            &Limits::default(),
            |p| async { Ok(p) },
        )
        .await;
        assert!(matches!(r, Err(NetError::TextFrame)));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_by_the_websocket_layer() {
        let limits = Limits {
            max_frame_bytes: 1024,
            ..Limits::default()
        };
        let (mut s, c) = pair(limits).await;
        let mut raw = c.into_inner();
        use futures_util::SinkExt;
        let _ = raw
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                vec![0u8; 4096].into(),
            ))
            .await;
        let err = s.recv().await.unwrap_err();
        assert_eq!(crate::conn::close_code_for(&err).0, crate::close::TOO_BIG);
    }
}
