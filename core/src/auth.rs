//! The device-authentication handshake shared by the relay and the keyserver
//! (SECURITY.md §8).
//!
//! ```text
//! server -> device: AuthChallenge { version, service, instance, nonce (32 random bytes) }
//! device -> server: AuthResponse  { user_id, device_id, signature, version }
//! signature = Ed25519(device, framed(SIG_AUTH, [u32_be(version), service, instance,
//!                                               org_root, nonce, user_id, device_id]))
//! ```
//!
//! The transcript binds the organisation root and the service's own
//! identity (its kind and its configured instance id), each side using its
//! own values: a device signs only for the [`Audience`] it dialled, and a
//! server checks against its own, so two relays (a staging one, another
//! hospital's) never accept each other's handshakes.
//!
//! This module only signs and checks the transcript. Whether `device_id` is
//! an active device of `user_id` is the server's question, answered from
//! the verified directory.

use ward_proto::PROTOCOL_VERSION;
use ward_proto::v1::{AuthChallenge, AuthResponse};

use crate::error::{AuthError, ChainError};
use crate::ids::valid_user_id;
use crate::invite::{VerifiedInvite, decode_signed_invite, verify_invite};
use crate::keys::{DelegationKey, DeviceSigningKey, RelayServiceKey, SigningPublicKey};
use crate::labels::{SIG_AUTH, SIG_ENROL_AUTH, SIG_RELAY_LINK, framed};
use ward_proto::Message as _;
use ward_proto::v1::SignedInvite;

/// Length of the server's challenge nonce.
pub const AUTH_NONCE_BYTES: usize = 32;
/// Largest encoded `AuthChallenge` a device accepts (SECURITY.md §3.1).
pub const MAX_CHALLENGE_BYTES: usize = 1024;
/// The relay's service name.
pub const RELAY: &str = "ward-relay";
/// The keyserver's service name.
pub const KEYSERVER: &str = "ward-keyserver";
/// The request path of the keyserver's relay link (SECURITY.md §10.8).
pub const RELAY_LINK_PATH: &str = "/v2/relay-link";
/// The instance id a server and a client use when none is configured.
/// Deployments that share an organisation root (staging and production, or
/// two sites) MUST configure distinct ones (SECURITY.md §8).
pub const DEFAULT_INSTANCE: &str = "default";

/// Whom a handshake is for: the service kind, the deployment's instance id
/// for it (from both sides' configuration), and the organisation root both
/// sides pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// [`RELAY`] or [`KEYSERVER`].
    pub service: String,
    /// The deployment's id for this service, e.g. `"chu-example-prod"`.
    pub instance: String,
    /// The pinned organisation root.
    pub org_root: SigningPublicKey,
}

impl Audience {
    /// A relay of the organisation `org_root`, configured as `instance`.
    pub fn relay(org_root: SigningPublicKey, instance: impl Into<String>) -> Self {
        Self {
            service: RELAY.to_owned(),
            instance: instance.into(),
            org_root,
        }
    }

    /// A keyserver of the organisation `org_root`, configured as `instance`.
    pub fn keyserver(org_root: SigningPublicKey, instance: impl Into<String>) -> Self {
        Self {
            service: KEYSERVER.to_owned(),
            instance: instance.into(),
            org_root,
        }
    }

    /// The challenge a server of this audience sends.
    pub fn challenge(&self, nonce: [u8; AUTH_NONCE_BYTES]) -> AuthChallenge {
        AuthChallenge {
            version: PROTOCOL_VERSION,
            service: self.service.clone(),
            nonce: nonce.to_vec(),
            instance: self.instance.clone(),
        }
    }
}

/// The transcript, with the audience's own root (never one from the wire).
fn transcript(
    audience: &Audience,
    challenge: &AuthChallenge,
    user_id: &str,
    device_id: &[u8],
) -> Vec<u8> {
    transcript_under(SIG_AUTH, audience, challenge, user_id, device_id)
}

/// The same fields under `label`: the device's transcript ([`SIG_AUTH`]) or
/// the one an enrolling device's invite signs ([`SIG_ENROL_AUTH`]).
fn transcript_under(
    label: &[u8],
    audience: &Audience,
    challenge: &AuthChallenge,
    user_id: &str,
    device_id: &[u8],
) -> Vec<u8> {
    framed(
        label,
        &[
            &challenge.version.to_be_bytes(),
            challenge.service.as_bytes(),
            challenge.instance.as_bytes(),
            audience.org_root.as_bytes(),
            &challenge.nonce,
            user_id.as_bytes(),
            device_id,
        ],
    )
}

/// The device's answer to a server's challenge. Refuses, before signing, a
/// challenge of another version ([`AuthError::UnsupportedVersion`]), or for
/// another service or instance than `expected`, or with a nonce of the
/// wrong length ([`AuthError::UnexpectedChallenge`]): a server must not be
/// able to relay another service's challenge and act as the device there.
pub fn respond(
    device: &DeviceSigningKey,
    user_id: &str,
    expected: &Audience,
    challenge: &AuthChallenge,
) -> Result<AuthResponse, AuthError> {
    if challenge.version != PROTOCOL_VERSION {
        return Err(AuthError::UnsupportedVersion(challenge.version));
    }
    if challenge.service != expected.service
        || challenge.instance != expected.instance
        || challenge.nonce.len() != AUTH_NONCE_BYTES
        || !valid_user_id(user_id)
    {
        return Err(AuthError::UnexpectedChallenge);
    }
    let device_id = device.public_key().as_bytes().to_vec();
    let signature = device
        .sign(&transcript(expected, challenge, user_id, &device_id))
        .to_vec();
    Ok(AuthResponse {
        user_id: user_id.to_owned(),
        device_id,
        signature,
        log: Vec::new(),
        version: PROTOCOL_VERSION,
        invite: Vec::new(),
        invite_signature: Vec::new(),
    })
}

/// The answer of a device that enrolls: [`respond`], plus the proof that it
/// holds an invite for `user_id` (SECURITY.md §8, E1–E5). `invite` is the
/// `SignedInvite` and `delegation` its one-time key, the pair the clinician
/// received; the delegation key signs the same fields as the device, under
/// [`SIG_ENROL_AUTH`]. A keyserver opens an enrolling session (a user that
/// does not exist yet) only with this proof.
pub fn respond_enrolling(
    device: &DeviceSigningKey,
    delegation: &DelegationKey,
    invite: &SignedInvite,
    user_id: &str,
    expected: &Audience,
    challenge: &AuthChallenge,
) -> Result<AuthResponse, AuthError> {
    let mut response = respond(device, user_id, expected, challenge)?;
    response.invite_signature = delegation
        .sign(&transcript_under(
            SIG_ENROL_AUTH,
            expected,
            challenge,
            user_id,
            &response.device_id,
        ))
        .to_vec();
    response.invite = invite.encode_to_vec();
    Ok(response)
}

/// Checks an enrolling device's invite proof, after [`verify_response`]
/// accepted the response of `user_id`'s `device` to `challenge` (E1–E5 of
/// SECURITY.md §8, in order). Returns the verified invite: its expiry
/// ([`VerifiedInvite::check_not_expired`]) and single use are the server's
/// to check, against its clock and its records.
pub fn verify_enrolment(
    audience: &Audience,
    challenge: &AuthChallenge,
    user_id: &str,
    device: &SigningPublicKey,
    invite: &[u8],
    invite_signature: &[u8],
) -> Result<VerifiedInvite, AuthError> {
    if invite.is_empty() {
        return Err(AuthError::NoInvite);
    }
    let signed = decode_signed_invite(invite).map_err(AuthError::Invite)?;
    let verified = verify_invite(&audience.org_root, &signed).map_err(AuthError::Invite)?;
    if verified.details.user_id != user_id {
        return Err(AuthError::Invite(ChainError::Malformed(
            "invite for another user",
        )));
    }
    let t = transcript_under(
        SIG_ENROL_AUTH,
        audience,
        challenge,
        user_id,
        device.as_bytes(),
    );
    if !verified.delegation_key.verify(&t, invite_signature) {
        return Err(AuthError::BadInviteSignature);
    }
    Ok(verified)
}

/// Checks a response to the challenge this server (of `audience`) sent;
/// returns who signed. A well-formed response of another version (0 from a
/// v1 device, which does not send the field) is
/// [`AuthError::UnsupportedVersion`]; a frame that is no response at all
/// is [`AuthError::Malformed`] first.
pub fn verify_response(
    audience: &Audience,
    challenge: &AuthChallenge,
    response: &AuthResponse,
) -> Result<(String, SigningPublicKey), AuthError> {
    if challenge.nonce.len() != AUTH_NONCE_BYTES || !valid_user_id(&response.user_id) {
        return Err(AuthError::Malformed);
    }
    let device =
        SigningPublicKey::from_bytes(&response.device_id).map_err(|_| AuthError::Malformed)?;
    if response.version != PROTOCOL_VERSION {
        return Err(AuthError::UnsupportedVersion(response.version));
    }
    if !device.verify(
        &transcript(audience, challenge, &response.user_id, &response.device_id),
        &response.signature,
    ) {
        return Err(AuthError::BadSignature);
    }
    Ok((response.user_id.clone(), device))
}

/// The relay link's transcript (SECURITY.md §10.8): the keyserver's
/// challenge fields, the root of `audience` (the keyserver's, never read from
/// the wire) and the relay's service key.
fn link_transcript(audience: &Audience, challenge: &AuthChallenge, relay_key: &[u8]) -> Vec<u8> {
    framed(
        SIG_RELAY_LINK,
        &[
            &challenge.version.to_be_bytes(),
            challenge.service.as_bytes(),
            challenge.instance.as_bytes(),
            audience.org_root.as_bytes(),
            &challenge.nonce,
            relay_key,
        ],
    )
}

/// A relay's answer to the keyserver's challenge on the relay link, signed
/// with its service key: an `AuthResponse` with an empty `user_id` and log
/// and the service key as `device_id`. Refuses, before signing, a challenge
/// of another version, or not from the keyserver `expected` (service and
/// instance), or with a nonce of the wrong length.
pub fn respond_link(
    service_key: &RelayServiceKey,
    expected: &Audience,
    challenge: &AuthChallenge,
) -> Result<AuthResponse, AuthError> {
    if challenge.version != PROTOCOL_VERSION {
        return Err(AuthError::UnsupportedVersion(challenge.version));
    }
    if expected.service != KEYSERVER
        || challenge.service != expected.service
        || challenge.instance != expected.instance
        || challenge.nonce.len() != AUTH_NONCE_BYTES
    {
        return Err(AuthError::UnexpectedChallenge);
    }
    let relay_key = service_key.public_key().as_bytes().to_vec();
    let signature = service_key
        .sign(&link_transcript(expected, challenge, &relay_key))
        .to_vec();
    Ok(AuthResponse {
        user_id: String::new(),
        device_id: relay_key,
        signature,
        log: Vec::new(),
        version: PROTOCOL_VERSION,
        invite: Vec::new(),
        invite_signature: Vec::new(),
    })
}

/// Checks a relay's answer on the relay link against the challenge this
/// keyserver (of `audience`) sent; returns the relay's service key. Whether
/// that key is allowed is the keyserver's question.
pub fn verify_link_response(
    audience: &Audience,
    challenge: &AuthChallenge,
    response: &AuthResponse,
) -> Result<SigningPublicKey, AuthError> {
    if challenge.nonce.len() != AUTH_NONCE_BYTES
        || !response.user_id.is_empty()
        || !response.log.is_empty()
        || !response.invite.is_empty()
        || !response.invite_signature.is_empty()
    {
        return Err(AuthError::Malformed);
    }
    let key =
        SigningPublicKey::from_bytes(&response.device_id).map_err(|_| AuthError::Malformed)?;
    if response.version != PROTOCOL_VERSION {
        return Err(AuthError::UnsupportedVersion(response.version));
    }
    if !key.verify(
        &link_transcript(audience, challenge, &response.device_id),
        &response.signature,
    ) {
        return Err(AuthError::BadSignature);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invite::{InviteDetails, create_invite};
    use crate::keys::OrgRootKey;

    fn invite_for(root: &OrgRootKey, user_id: &str) -> (SignedInvite, DelegationKey) {
        let details = InviteDetails {
            user_id: user_id.into(),
            display_name: "Dr A".into(),
            profession: "physician".into(),
            registry_number: "10001234567".into(),
            expires_at: 2_000_000_000,
        };
        create_invite(&mut rand::rng(), root, &details).unwrap()
    }

    #[test]
    fn only_the_holder_of_the_invite_proves_an_enrolment() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        let ks = Audience::keyserver(root.public_key(), "prod");
        let c = ks.challenge([9; 32]);
        let device = DeviceSigningKey::generate(&mut rng);
        let (invite, delegation) = invite_for(&root, "alice");
        let r = respond_enrolling(&device, &delegation, &invite, "alice", &ks, &c).unwrap();
        let (user, dev) = verify_response(&ks, &c, &r).unwrap();
        let check = |r: &AuthResponse, c: &AuthChallenge| {
            verify_enrolment(&ks, c, &user, &dev, &r.invite, &r.invite_signature)
        };
        let ok = check(&r, &c).unwrap();
        assert_eq!(ok.details.user_id, "alice");
        assert_eq!(ok.delegation_key, delegation.public_key());

        // E1: a plain response (what anyone can make with a key of its own).
        let plain = respond(&device, "alice", &ks, &c).unwrap();
        assert_eq!(check(&plain, &c), Err(AuthError::NoInvite));
        // E2: not an invite.
        let mut junk = r.clone();
        junk.invite = vec![0xff; 40];
        assert!(matches!(check(&junk, &c), Err(AuthError::Invite(_))));
        // E3: an invite some other root signed.
        let (foreign, foreign_del) = invite_for(&OrgRootKey::generate(&mut rng), "alice");
        let f = respond_enrolling(&device, &foreign_del, &foreign, "alice", &ks, &c).unwrap();
        assert_eq!(
            check(&f, &c),
            Err(AuthError::Invite(ChainError::ForgedInvite))
        );
        // E4: a genuine invite, for another user.
        let (bobs, bobs_del) = invite_for(&root, "bob");
        let b = respond_enrolling(&device, &bobs_del, &bobs, "alice", &ks, &c).unwrap();
        assert_eq!(
            check(&b, &c),
            Err(AuthError::Invite(ChainError::Malformed(
                "invite for another user"
            )))
        );
        // E5: the invite without its delegation key (seen over a shoulder,
        // or copied from another device's handshake), or a proof replayed
        // on another connection, for another device, at another keyserver.
        let stranger = DelegationKey::generate(&mut rng);
        let s = respond_enrolling(&device, &stranger, &invite, "alice", &ks, &c).unwrap();
        assert_eq!(check(&s, &c), Err(AuthError::BadInviteSignature));
        let c2 = ks.challenge([10; 32]);
        assert_eq!(check(&r, &c2), Err(AuthError::BadInviteSignature));
        let other_device = DeviceSigningKey::generate(&mut rng).public_key();
        assert_eq!(
            verify_enrolment(
                &ks,
                &c,
                "alice",
                &other_device,
                &r.invite,
                &r.invite_signature
            ),
            Err(AuthError::BadInviteSignature)
        );
        let staging = Audience::keyserver(root.public_key(), "staging");
        assert_eq!(
            verify_enrolment(
                &staging,
                &staging.challenge([9; 32]),
                "alice",
                &dev,
                &r.invite,
                &r.invite_signature
            ),
            Err(AuthError::BadInviteSignature)
        );
        // The delegation signature is no device signature, and the other
        // way round: distinct labels.
        let mut swapped = r.clone();
        swapped.invite_signature = r.signature.clone();
        assert_eq!(check(&swapped, &c), Err(AuthError::BadInviteSignature));
    }

    #[test]
    fn link_responses_verify_only_for_their_keyserver_and_never_as_device_ones() {
        let mut rng = rand::rng();
        let relay_key = RelayServiceKey::generate(&mut rng);
        let same_as_device = DeviceSigningKey::import_secret(&*relay_key.export_secret()).unwrap();
        let root = OrgRootKey::generate(&mut rng).public_key();
        let ks = Audience::keyserver(root, "prod");
        let c = ks.challenge([7; 32]);
        let r = respond_link(&relay_key, &ks, &c).unwrap();
        assert_eq!(
            verify_link_response(&ks, &c, &r),
            Ok(relay_key.public_key())
        );
        // Another keyserver instance, another organisation, another nonce.
        let staging = Audience::keyserver(root, "staging");
        assert_eq!(
            verify_link_response(&staging, &staging.challenge([7; 32]), &r),
            Err(AuthError::BadSignature)
        );
        let other = Audience::keyserver(OrgRootKey::generate(&mut rng).public_key(), "prod");
        assert_eq!(
            verify_link_response(&other, &other.challenge([7; 32]), &r),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_link_response(&ks, &ks.challenge([8; 32]), &r),
            Err(AuthError::BadSignature)
        );
        // A relay signs for a keyserver only, and only the one it dialled.
        let relay = Audience::relay(root, "prod");
        assert_eq!(
            respond_link(&relay_key, &relay, &relay.challenge([7; 32])).err(),
            Some(AuthError::UnexpectedChallenge)
        );
        assert_eq!(
            respond_link(&relay_key, &staging, &c).err(),
            Some(AuthError::UnexpectedChallenge)
        );
        // A device's handshake signature is not a link one (distinct labels).
        let dev = respond(&same_as_device, "alice", &ks, &c).unwrap();
        let mut as_link = dev.clone();
        as_link.user_id = String::new();
        assert_eq!(
            verify_link_response(&ks, &c, &as_link),
            Err(AuthError::BadSignature)
        );
        let mut as_device = r.clone();
        as_device.user_id = "alice".into();
        assert_eq!(
            verify_response(&ks, &c, &as_device),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_link_response(&ks, &c, &dev),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn response_verifies_only_for_its_own_challenge() {
        let mut rng = rand::rng();
        let dev = DeviceSigningKey::generate(&mut rng);
        let root = OrgRootKey::generate(&mut rng).public_key();
        let relay = Audience::relay(root, "prod");
        let c = relay.challenge([9; 32]);
        let r = respond(&dev, "alice", &relay, &c).unwrap();
        assert_eq!(
            verify_response(&relay, &c, &r),
            Ok(("alice".to_owned(), dev.public_key()))
        );

        // Replayed to another service, another instance, another
        // organisation, or against another nonce.
        let ks = Audience::keyserver(root, "prod");
        assert_eq!(
            verify_response(&ks, &ks.challenge([9; 32]), &r),
            Err(AuthError::BadSignature)
        );
        let staging = Audience::relay(root, "staging");
        assert_eq!(
            verify_response(&staging, &staging.challenge([9; 32]), &r),
            Err(AuthError::BadSignature)
        );
        let other_org = Audience::relay(OrgRootKey::generate(&mut rng).public_key(), "prod");
        assert_eq!(
            verify_response(&other_org, &other_org.challenge([9; 32]), &r),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_response(&relay, &relay.challenge([8; 32]), &r),
            Err(AuthError::BadSignature)
        );
        // Claimed for another user.
        let mut swapped = r.clone();
        swapped.user_id = "mallory".into();
        assert_eq!(
            verify_response(&relay, &c, &swapped),
            Err(AuthError::BadSignature)
        );
        // A device will not sign a challenge meant for another service or instance.
        assert_eq!(
            respond(&dev, "alice", &ks, &c).err(),
            Some(AuthError::UnexpectedChallenge)
        );
        assert_eq!(
            respond(&dev, "alice", &staging, &c).err(),
            Some(AuthError::UnexpectedChallenge)
        );
        // Nor one of another version; and a server refuses a v1 response.
        let mut v1 = c.clone();
        v1.version = 1;
        assert_eq!(
            respond(&dev, "alice", &relay, &v1).err(),
            Some(AuthError::UnsupportedVersion(1))
        );
        let mut old = r.clone();
        old.version = 0;
        assert_eq!(
            verify_response(&relay, &c, &old),
            Err(AuthError::UnsupportedVersion(0))
        );
        // Garbage.
        let mut junk = r;
        junk.device_id = vec![1, 2, 3];
        assert_eq!(
            verify_response(&relay, &c, &junk),
            Err(AuthError::Malformed)
        );
    }
}
