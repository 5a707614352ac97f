//! The device-authentication handshake shared by the relay and the keyserver
//! (SECURITY.md §8).
//!
//! ```text
//! server -> device: AuthChallenge { version, service, nonce (32 random bytes) }
//! device -> server: AuthResponse  { user_id, device_id, signature }
//! signature = Ed25519(device, framed(SIG_AUTH, [u32_be(version), service, nonce, user_id, device_id]))
//! ```
//!
//! This module only signs and checks the transcript. Whether `device_id` is
//! an active device of `user_id` is the server's question, answered from
//! the verified directory.

use ward_proto::v1::{AuthChallenge, AuthResponse};

use crate::error::AuthError;
use crate::ids::valid_user_id;
use crate::keys::{DeviceSigningKey, SigningPublicKey};
use crate::labels::{SIG_AUTH, framed};

/// Length of the server's challenge nonce.
pub const AUTH_NONCE_BYTES: usize = 32;

fn transcript(challenge: &AuthChallenge, user_id: &str, device_id: &[u8]) -> Vec<u8> {
    framed(
        SIG_AUTH,
        &[
            &challenge.version.to_be_bytes(),
            challenge.service.as_bytes(),
            &challenge.nonce,
            user_id.as_bytes(),
            device_id,
        ],
    )
}

/// The device's answer to a server's challenge. Refuses to sign a challenge
/// of another version, for another service than `expected_service`, or with
/// a nonce of the wrong length: a server must not be able to relay another
/// service's challenge and act as the device there.
pub fn respond(
    device: &DeviceSigningKey,
    user_id: &str,
    expected_service: &str,
    challenge: &AuthChallenge,
) -> Result<AuthResponse, AuthError> {
    if challenge.version != ward_proto::PROTOCOL_VERSION
        || challenge.service != expected_service
        || challenge.nonce.len() != AUTH_NONCE_BYTES
        || !valid_user_id(user_id)
    {
        return Err(AuthError::UnexpectedChallenge);
    }
    let device_id = device.public_key().as_bytes().to_vec();
    let signature = device
        .sign(&transcript(challenge, user_id, &device_id))
        .to_vec();
    Ok(AuthResponse {
        user_id: user_id.to_owned(),
        device_id,
        signature,
        log: Vec::new(),
    })
}

/// Checks a response to the challenge this server sent; returns who signed.
pub fn verify_response(
    challenge: &AuthChallenge,
    response: &AuthResponse,
) -> Result<(String, SigningPublicKey), AuthError> {
    if challenge.nonce.len() != AUTH_NONCE_BYTES || !valid_user_id(&response.user_id) {
        return Err(AuthError::Malformed);
    }
    let device =
        SigningPublicKey::from_bytes(&response.device_id).map_err(|_| AuthError::Malformed)?;
    if !device.verify(
        &transcript(challenge, &response.user_id, &response.device_id),
        &response.signature,
    ) {
        return Err(AuthError::BadSignature);
    }
    Ok((response.user_id.clone(), device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(service: &str) -> AuthChallenge {
        AuthChallenge {
            version: 1,
            service: service.into(),
            nonce: vec![9; 32],
        }
    }

    #[test]
    fn response_verifies_only_for_its_own_challenge() {
        let mut rng = rand::rng();
        let dev = DeviceSigningKey::generate(&mut rng);
        let c = challenge("ward-relay");
        let r = respond(&dev, "alice", "ward-relay", &c).unwrap();
        assert_eq!(
            verify_response(&c, &r),
            Ok(("alice".to_owned(), dev.public_key()))
        );

        // Replayed to another service, or against another nonce.
        assert_eq!(
            verify_response(&challenge("ward-keyserver"), &r),
            Err(AuthError::BadSignature)
        );
        let mut other = c.clone();
        other.nonce = vec![8; 32];
        assert_eq!(verify_response(&other, &r), Err(AuthError::BadSignature));
        // Claimed for another user.
        let mut swapped = r.clone();
        swapped.user_id = "mallory".into();
        assert_eq!(verify_response(&c, &swapped), Err(AuthError::BadSignature));
        // A device will not sign a challenge meant for another service.
        assert_eq!(
            respond(&dev, "alice", "ward-keyserver", &c).err(),
            Some(AuthError::UnexpectedChallenge)
        );
        // Garbage.
        let mut junk = r;
        junk.device_id = vec![1, 2, 3];
        assert_eq!(verify_response(&c, &junk), Err(AuthError::Malformed));
    }
}
