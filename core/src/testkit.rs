//! A throwaway organisation for tests, benches, vectors and demos
//! (feature `testkit`). A real organisation root key stays offline.

use rand_core::CryptoRng;

use crate::chain::{VerifiedUser, create_user, verify_log};
use crate::invite::{InviteDetails, create_invite};
use crate::keys::{
    DelegationKey, DeviceEncryptionKey, DeviceSigningKey, OrgRootKey, SigningPublicKey,
    UserEncryptionKey,
};
use ward_proto::v1::{SignedInvite, SignedStatement};

/// Timestamp used by the kit's statements (2026-11-29, unix seconds).
pub const KIT_TIME: u64 = 1_795_910_400;

/// An organisation whose root key is held in memory.
pub struct Org {
    /// The root signing key.
    pub root: OrgRootKey,
}

/// An enrolled user with one device.
pub struct Clinician {
    /// The user's key.
    pub user_key: UserEncryptionKey,
    /// The first device's signing key.
    pub device: DeviceSigningKey,
    /// The first device's encryption key.
    pub device_key: DeviceEncryptionKey,
    /// The log as served by a keyserver.
    pub log: Vec<SignedStatement>,
    /// The log, verified.
    pub chain: VerifiedUser,
    /// The invite the user enrolled with, and its one-time key: what an
    /// enrolling handshake proves it holds (SECURITY.md §8, E1–E5).
    pub invite: SignedInvite,
    /// See [`Clinician::invite`].
    pub delegation: DelegationKey,
}

impl Clinician {
    /// This clinician's first device, as the author of a room entry.
    pub fn room_author(&self) -> crate::room::RoomAuthor<'_> {
        crate::room::RoomAuthor {
            device: &self.device,
            chain: &self.chain,
        }
    }
}

/// The metadata tests give a room.
pub fn room_metadata() -> crate::room::RoomMetadata {
    crate::room::RoomMetadata {
        name: "Bed 12".into(),
        case_reference: "case-881".into(),
        topic: "post-op".into(),
    }
}

impl Org {
    /// A new organisation.
    pub fn new<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self {
            root: OrgRootKey::generate(rng),
        }
    }

    /// The pinned root public key.
    pub fn root_public(&self) -> SigningPublicKey {
        self.root.public_key()
    }

    /// Invites and enrolls `user_id` with one device.
    pub fn enroll<R: CryptoRng + ?Sized>(&self, rng: &mut R, user_id: &str) -> Clinician {
        let details = InviteDetails {
            user_id: user_id.to_owned(),
            display_name: format!("Dr {user_id}"),
            profession: "physician".into(),
            registry_number: "10001234567".into(),
            // Far ahead: tests that run a server on the real clock (the
            // binaries' own tests) must not start failing as the calendar
            // passes the kit's time.
            expires_at: KIT_TIME + 20 * 365 * 86_400,
        };
        self.enroll_with(rng, &details)
    }

    /// Invites and enrolls `details.user_id` with one device, under these
    /// invite details (a directory test's names and registry numbers).
    pub fn enroll_with<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        details: &InviteDetails,
    ) -> Clinician {
        let user_id = details.user_id.as_str();
        let (invite, delegation) = match create_invite(rng, &self.root, details) {
            Ok(x) => x,
            Err(e) => unreachable_kit(e),
        };
        let user_key = UserEncryptionKey::generate(rng);
        let device = DeviceSigningKey::generate(rng);
        let device_key = DeviceEncryptionKey::generate(rng);
        let root = self.root_public();
        let entry = match create_user(
            &root,
            &invite,
            &delegation,
            &user_key.public_key(),
            &device.public_key(),
            &device_key.public_key(),
            KIT_TIME,
        ) {
            Ok(x) => x,
            Err(e) => unreachable_kit(e),
        };
        let log = vec![entry];
        let chain = match verify_log(&root, user_id, &log) {
            Ok(x) => x,
            Err(e) => unreachable_kit(e),
        };
        Clinician {
            user_key,
            device,
            device_key,
            log,
            chain,
            invite,
            delegation,
        }
    }
}

// The kit builds only valid statements; a failure is a bug in the core.
#[allow(clippy::panic)]
fn unreachable_kit(e: crate::error::ChainError) -> ! {
    panic!("testkit produced an invalid statement: {e}")
}
