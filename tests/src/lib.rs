//! Shared helpers for Ward's cross-service tests in `tests/tests/`.
#![forbid(unsafe_code)]

pub mod keyserver;
pub mod link;
pub mod proxy;
pub mod relay;
pub mod world;

use ward_core::invite::{InviteDetails, create_invite};
use ward_core::testkit::Org;
use ward_proto::Message as _;

/// An invite for `user_id` valid for a day from now, signed by `org`'s root:
/// the encoded `SignedInvite` and the delegation secret, as `ward admin
/// invite` hands them to a clinician.
#[allow(clippy::expect_used)] // test helper: a failure here is a broken test setup
pub fn invite(org: &Org, user_id: &str) -> (Vec<u8>, Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let details = InviteDetails {
        user_id: user_id.into(),
        display_name: format!("Dr {user_id}"),
        profession: "physician".into(),
        registry_number: "10001234567".into(),
        expires_at: now + 86_400,
    };
    invite_as(org, &details)
}

/// An invite with these details (name, profession, registry number, expiry),
/// signed by `org`'s root: the encoded `SignedInvite` and the delegation
/// secret.
#[allow(clippy::expect_used)] // test helper: a failure here is a broken test setup
pub fn invite_as(org: &Org, details: &InviteDetails) -> (Vec<u8>, Vec<u8>) {
    let (invite, delegation) =
        create_invite(&mut rand::rng(), &org.root, details).expect("a valid invite");
    (invite.encode_to_vec(), delegation.export_secret().to_vec())
}
