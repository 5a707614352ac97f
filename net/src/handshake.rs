//! The device-authentication handshake (SECURITY.md §8), both sides.
//!
//! ```text
//! server -> device  AuthChallenge { version: 1, service, nonce: 32 random bytes }
//! device -> server  AuthResponse  { user_id, device_id, signature, log }
//! server -> device  AuthResult    { ok, error }
//! ```
//! The signature check is `ward_core::auth`; whether the device is an active
//! device of the user is the service's `check`, from its own directory.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use ward_core::keys::{DeviceSigningKey, SigningPublicKey};
use ward_proto::PROTOCOL_VERSION;
use ward_proto::v1::{AuthChallenge, AuthResponse, AuthResult, ErrorCode, SignedStatement};

use crate::{Conn, Limits, NetError};

/// The relay's service name, bound into every signature made for it.
pub const RELAY: &str = "ward-relay";
/// The keyserver's service name.
pub const KEYSERVER: &str = "ward-keyserver";

/// An authenticated device.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The user the device belongs to.
    pub user_id: String,
    /// The device's signing key (its id).
    pub device: SigningPublicKey,
    /// The log the device presented (empty if it sent none).
    pub log: Vec<SignedStatement>,
}

/// Server side. Sends a challenge with `nonce` (32 fresh random bytes from
/// the caller), verifies the response's signature, asks `check` whether the
/// peer is an active device, and answers with the result. The whole exchange
/// must finish within `limits.auth_timeout`. On failure the caller should
/// close the connection with [`Conn::close_for`].
pub async fn server<S, F, Fut>(
    conn: &mut Conn<S>,
    service: &str,
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
        let challenge = AuthChallenge {
            version: PROTOCOL_VERSION,
            service: service.to_owned(),
            nonce: nonce.to_vec(),
        };
        conn.send_msg(&challenge).await?;
        let response: AuthResponse = conn
            .recv_msg()
            .await?
            .ok_or(NetError::Closed(None, String::new()))?;
        let (user_id, device) = match ward_core::auth::verify_response(&challenge, &response) {
            Ok(ok) => ok,
            Err(e) => {
                let code = match e {
                    ward_core::AuthError::Malformed | ward_core::AuthError::UnexpectedChallenge => {
                        ErrorCode::Malformed
                    }
                    ward_core::AuthError::BadSignature => ErrorCode::Unauthenticated,
                };
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

/// Client side: answers the server's challenge as `device` of `user_id`,
/// presenting `log` (the user's own log, for the relay; may be empty), and
/// checks that the server is the `expected_service`.
pub async fn client<S>(
    conn: &mut Conn<S>,
    device: &DeviceSigningKey,
    user_id: &str,
    expected_service: &str,
    log: &[SignedStatement],
) -> Result<(), NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge: AuthChallenge = conn
        .recv_msg()
        .await?
        .ok_or(NetError::Closed(None, String::new()))?;
    if challenge.service != expected_service {
        return Err(NetError::WrongService(challenge.service));
    }
    let mut response = ward_core::auth::respond(device, user_id, expected_service, &challenge)?;
    response.log = log.to_vec();
    conn.send_msg(&response).await?;
    let result: AuthResult = conn
        .recv_msg()
        .await?
        .ok_or(NetError::Closed(None, String::new()))?;
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

        let (mut s, mut c) = pair(limits).await;
        let expected = alice.device.public_key();
        let (server_side, client_side) = tokio::join!(
            server(&mut s, RELAY, [5; 32], &limits, |p: Peer| async move {
                if p.device == expected {
                    Ok(p)
                } else {
                    Err(ErrorCode::Unauthenticated)
                }
            }),
            client(&mut c, &alice.device, "alice", RELAY, &alice.log),
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
            server(&mut s, RELAY, [6; 32], &limits, |_| async {
                Err(ErrorCode::DeviceRevoked)
            }),
            client(&mut c, &alice.device, "alice", RELAY, &[]),
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
            server(&mut s, RELAY, [7; 32], &short, |p| async { Ok(p) }),
            client(&mut c, &alice.device, "alice", KEYSERVER, &[]),
        );
        assert!(matches!(client_side, Err(NetError::WrongService(_))));
        assert!(server_side.is_err());
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_text_frames_are_refused() {
        let limits = Limits {
            auth_timeout: std::time::Duration::from_millis(200),
            ..Limits::default()
        };
        let (mut s, _c) = pair(limits).await;
        let r = server(&mut s, RELAY, [1; 32], &limits, |p| async { Ok(p) }).await;
        assert!(matches!(r, Err(NetError::Timeout)));

        let (mut s, c) = pair(limits).await;
        let mut raw = c.into_inner();
        use futures_util::SinkExt;
        raw.send(tokio_tungstenite::tungstenite::Message::Text(
            "hello".into(),
        ))
        .await
        .unwrap();
        let r = server(&mut s, RELAY, [1; 32], &Limits::default(), |p| async {
            Ok(p)
        })
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
