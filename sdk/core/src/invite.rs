//! Invites: the organisation root hands one user id to one clinician, once
//! (SECURITY.md §4.1).

use ward_proto::v1::{Invite, SignedInvite};
use ward_proto::{Message, PROTOCOL_VERSION, decode_bounded};

use crate::error::ChainError;
use crate::ids::valid_user_id;
use crate::keys::{DelegationKey, OrgRootKey, SigningPublicKey};
use crate::labels::{HASH_INVITE, SIG_INVITE, framed, framed_hash};

/// Largest encoded `Invite`.
pub const MAX_INVITE_BYTES: usize = 1024;

/// What the admin writes into an invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteDetails {
    /// The user id the invite reserves (1..=128 bytes).
    pub user_id: String,
    /// Shown to colleagues (<= 256 bytes).
    pub display_name: String,
    /// E.g. "physician", "nurse", "pharmacist" (<= 128 bytes).
    pub profession: String,
    /// A professional registry number such as an RPPS number (<= 64 bytes).
    pub registry_number: String,
    /// Unix seconds after which the invite may not be used.
    pub expires_at: u64,
}

impl InviteDetails {
    fn check(&self) -> Result<(), ChainError> {
        if !valid_user_id(&self.user_id) {
            return Err(ChainError::Malformed("invite user id"));
        }
        if self.display_name.len() > 256
            || self.profession.len() > 128
            || self.registry_number.len() > 64
        {
            return Err(ChainError::Malformed("invite field too long"));
        }
        Ok(())
    }
}

/// An invite whose root signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedInvite {
    /// The signed details.
    pub details: InviteDetails,
    /// The one-time key that must sign the user creation.
    pub delegation_key: SigningPublicKey,
    /// `H(HASH_INVITE, invite bytes)`: the invite's single-use id and the
    /// `prev_hash` of the user's first log entry.
    pub hash: [u8; 32],
}

impl VerifiedInvite {
    /// Refuses the invite if `now` (unix seconds) is past its expiry.
    pub fn check_not_expired(&self, now: u64) -> Result<(), ChainError> {
        if now > self.details.expires_at {
            return Err(ChainError::InviteExpired);
        }
        Ok(())
    }
}

/// Creates an invite signed by the organisation root. The returned
/// [`DelegationKey`] is secret: it goes to the clinician with the invite, out
/// of band, and lets whoever holds it enroll once.
pub fn create_invite<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    root: &OrgRootKey,
    details: &InviteDetails,
) -> Result<(SignedInvite, DelegationKey), ChainError> {
    details.check()?;
    let delegation = DelegationKey::generate(rng);
    let invite = Invite {
        version: PROTOCOL_VERSION,
        user_id: details.user_id.clone(),
        display_name: details.display_name.clone(),
        profession: details.profession.clone(),
        registry_number: details.registry_number.clone(),
        delegation_public_key: delegation.public_key().as_bytes().to_vec(),
        expires_at: details.expires_at,
    }
    .encode_to_vec();
    let signature = root.sign(&framed(SIG_INVITE, &[&invite])).to_vec();
    Ok((SignedInvite { invite, signature }, delegation))
}

/// Checks an invite's signature against the pinned root and its fields.
/// Expiry is the caller's to check, against its own clock
/// ([`VerifiedInvite::check_not_expired`]) or a statement's timestamp.
pub fn verify_invite(
    root: &SigningPublicKey,
    signed: &SignedInvite,
) -> Result<VerifiedInvite, ChainError> {
    if signed.invite.len() > MAX_INVITE_BYTES {
        return Err(ChainError::Malformed("invite too large"));
    }
    if !root.verify(&framed(SIG_INVITE, &[&signed.invite]), &signed.signature) {
        return Err(ChainError::ForgedInvite);
    }
    let invite: Invite = decode_bounded(&signed.invite, MAX_INVITE_BYTES)?;
    if invite.version != PROTOCOL_VERSION {
        return Err(ChainError::UnsupportedVersion(invite.version));
    }
    let delegation_key = SigningPublicKey::from_bytes(&invite.delegation_public_key)
        .map_err(|_| ChainError::Malformed("invite delegation key"))?;
    let details = InviteDetails {
        user_id: invite.user_id,
        display_name: invite.display_name,
        profession: invite.profession,
        registry_number: invite.registry_number,
        expires_at: invite.expires_at,
    };
    details.check()?;
    Ok(VerifiedInvite {
        details,
        delegation_key,
        hash: framed_hash(HASH_INVITE, &[&signed.invite]),
    })
}
