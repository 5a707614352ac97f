//! Invites: the organisation root hands one user id to one clinician, once
//! (SECURITY.md §4.1).

use ward_proto::v1::{Invite, SignedInvite};
use ward_proto::{Message, PROTOCOL_VERSION, decode_canonical};

use crate::error::ChainError;
use crate::ids::valid_user_id;
use crate::keys::{DelegationKey, OrgRootKey, SigningPublicKey};
use crate::labels::{HASH_INVITE, SIG_INVITE, framed, framed_hash};

/// Largest encoded `Invite`.
pub const MAX_INVITE_BYTES: usize = 1024;
/// Largest encoded standalone `SignedInvite` (an invite file or QR code):
/// the invite, a 64-byte signature and their tags (SECURITY.md §3.1).
pub const MAX_SIGNED_INVITE_BYTES: usize = MAX_INVITE_BYTES + 128;

/// Decodes a standalone `SignedInvite` from untrusted bytes: over
/// [`MAX_SIGNED_INVITE_BYTES`] is `Decode(TooLarge)`, not protobuf is
/// `Decode(Malformed)`. Verify it next with [`verify_invite`].
pub fn decode_signed_invite(bytes: &[u8]) -> Result<SignedInvite, ChainError> {
    Ok(ward_proto::decode_bounded(bytes, MAX_SIGNED_INVITE_BYTES)?)
}

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
    let invite: Invite = decode_canonical(&signed.invite, MAX_INVITE_BYTES)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn details() -> InviteDetails {
        InviteDetails {
            user_id: "dr.martin@chu-example".into(),
            display_name: "Dr Claire Martin".into(),
            profession: "physician".into(),
            registry_number: "10101234567".into(),
            expires_at: 1_800_000_000,
        }
    }

    /// Signs arbitrary invite bytes with the root, as a buggy or hostile admin tool might.
    fn root_signed(root: &OrgRootKey, invite: Vec<u8>) -> SignedInvite {
        let signature = root.sign(&framed(SIG_INVITE, &[&invite])).to_vec();
        SignedInvite { invite, signature }
    }

    #[test]
    fn a_valid_invite_verifies_with_its_details_and_hash() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        let (signed, delegation) = create_invite(&mut rng, &root, &details()).unwrap();
        let v = verify_invite(&root.public_key(), &signed).unwrap();
        assert_eq!(v.details, details());
        assert_eq!(v.delegation_key, delegation.public_key());
        assert_eq!(v.hash, framed_hash(HASH_INVITE, &[&signed.invite]));
    }

    #[test]
    fn forged_invites_are_refused() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        let impostor = OrgRootKey::generate(&mut rng);
        // Signed by another key.
        let (forged, _) = create_invite(&mut rng, &impostor, &details()).unwrap();
        assert_eq!(
            verify_invite(&root.public_key(), &forged),
            Err(ChainError::ForgedInvite)
        );
        // Tampered bytes, tampered or missing signature.
        let (signed, _) = create_invite(&mut rng, &root, &details()).unwrap();
        let mut bytes = signed.clone();
        let last = bytes.invite.len() - 1;
        bytes.invite[last] ^= 1;
        assert_eq!(
            verify_invite(&root.public_key(), &bytes),
            Err(ChainError::ForgedInvite)
        );
        let mut sig = signed.clone();
        sig.signature[10] ^= 1;
        assert_eq!(
            verify_invite(&root.public_key(), &sig),
            Err(ChainError::ForgedInvite)
        );
        let mut none = signed.clone();
        none.signature.clear();
        assert_eq!(
            verify_invite(&root.public_key(), &none),
            Err(ChainError::ForgedInvite)
        );
        // A root signature made for another purpose (here, a statement) does
        // not pass as an invite signature: the labels differ.
        let statement_sig = root
            .sign(&framed(crate::labels::SIG_STATEMENT, &[&signed.invite]))
            .to_vec();
        let relabelled = SignedInvite {
            invite: signed.invite.clone(),
            signature: statement_sig,
        };
        assert_eq!(
            verify_invite(&root.public_key(), &relabelled),
            Err(ChainError::ForgedInvite)
        );
    }

    #[test]
    fn expiry_is_checked_against_the_callers_clock() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        let (signed, _) = create_invite(&mut rng, &root, &details()).unwrap();
        let v = verify_invite(&root.public_key(), &signed).unwrap();
        let exp = details().expires_at;
        assert_eq!(v.check_not_expired(0), Ok(()));
        assert_eq!(v.check_not_expired(exp), Ok(()), "valid up to expires_at");
        assert_eq!(v.check_not_expired(exp + 1), Err(ChainError::InviteExpired));
        assert_eq!(
            v.check_not_expired(u64::MAX),
            Err(ChainError::InviteExpired)
        );
    }

    #[test]
    fn field_limits_are_enforced_when_creating_and_verifying() {
        let mut rng = rand::rng();
        let root = OrgRootKey::generate(&mut rng);
        let too_long = [
            InviteDetails {
                display_name: "x".repeat(257),
                ..details()
            },
            InviteDetails {
                profession: "x".repeat(129),
                ..details()
            },
            InviteDetails {
                registry_number: "1".repeat(65),
                ..details()
            },
        ];
        for d in &too_long {
            assert_eq!(
                create_invite(&mut rng, &root, d).err(),
                Some(ChainError::Malformed("invite field too long"))
            );
        }
        for user_id in [
            String::new(),
            "u".repeat(129),
            "a\u{0}b".into(),
            "a\nb".into(),
        ] {
            let d = InviteDetails {
                user_id,
                ..details()
            };
            assert_eq!(
                create_invite(&mut rng, &root, &d).err(),
                Some(ChainError::Malformed("invite user id"))
            );
        }
        // Exactly at the limits is fine.
        let at_limits = InviteDetails {
            user_id: "u".repeat(128),
            display_name: "x".repeat(256),
            profession: "x".repeat(128),
            registry_number: "1".repeat(64),
            expires_at: u64::MAX,
        };
        let (signed, _) = create_invite(&mut rng, &root, &at_limits).unwrap();
        assert_eq!(
            verify_invite(&root.public_key(), &signed).unwrap().details,
            at_limits
        );

        // A root-signed invite that breaks a limit is refused when verified.
        let delegation = DelegationKey::generate(&mut rng).public_key();
        let invite = |d: &InviteDetails, version: u32, key: Vec<u8>| Invite {
            version,
            user_id: d.user_id.clone(),
            display_name: d.display_name.clone(),
            profession: d.profession.clone(),
            registry_number: d.registry_number.clone(),
            delegation_public_key: key,
            expires_at: d.expires_at,
        };
        let key = delegation.as_bytes().to_vec();
        for d in &too_long {
            let s = root_signed(
                &root,
                invite(d, PROTOCOL_VERSION, key.clone()).encode_to_vec(),
            );
            assert_eq!(
                verify_invite(&root.public_key(), &s),
                Err(ChainError::Malformed("invite field too long"))
            );
        }
        let s = root_signed(&root, invite(&details(), 1, key.clone()).encode_to_vec());
        assert_eq!(
            verify_invite(&root.public_key(), &s),
            Err(ChainError::UnsupportedVersion(1))
        );
        let s = root_signed(
            &root,
            invite(&details(), PROTOCOL_VERSION, key[..31].to_vec()).encode_to_vec(),
        );
        assert_eq!(
            verify_invite(&root.public_key(), &s),
            Err(ChainError::Malformed("invite delegation key"))
        );
        let big = InviteDetails {
            display_name: "x".repeat(MAX_INVITE_BYTES),
            ..details()
        };
        let s = root_signed(&root, invite(&big, PROTOCOL_VERSION, key).encode_to_vec());
        assert_eq!(
            verify_invite(&root.public_key(), &s),
            Err(ChainError::Malformed("invite too large"))
        );
        let s = root_signed(&root, vec![0xff; 4]);
        assert!(matches!(
            verify_invite(&root.public_key(), &s),
            Err(ChainError::Decode(_))
        ));
    }
}
