//! One typed error for every binding: [`WardError`].

use ward_sdk::ClientError;
use ward_sdk::core::link::LinkError;
use ward_sdk::proto::v1::ErrorCode;
use ward_sdk::store::{PinRequiredReason as StoreReason, StoreError};

/// Why the platform secret did not open the store
/// ([`WardError::PinRequired`]): in every case, ask for the PIN.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinRequiredReason {
    /// No platform unlock is enabled (never, disabled, or removed by a PIN
    /// change, a KDF upgrade, an expiry or too many failures).
    NoSlot,
    /// The platform unlock has expired (and is removed).
    Expired,
    /// That was the last wrong secret allowed: the platform unlock is
    /// removed.
    TooManyFailures,
    /// A wrong secret, counted; `attempts_left` more are allowed.
    WrongSecret,
}

/// Everything a call can fail with, as Kotlin / Swift / Python exceptions
/// (`WardException.WrongPin`, `WardError.WrongPin`, `WardError.WrongPin`).
///
/// The cases are stable: an app matches on them, never on `message`, which
/// is the SDK's English description (ids and reasons only: never a
/// plaintext, a key or a PIN).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum WardError {
    /// The PIN is wrong; the attempt was counted.
    #[error("wrong PIN ({attempts_left} attempts left before the store is wiped)")]
    WrongPin {
        /// Failed attempts left before the store wipes itself.
        attempts_left: u32,
    },
    /// The platform secret cannot open the store (`unlock_with_platform_secret`):
    /// ask for the PIN and call `unlock`. `attempts_left` is the number of
    /// wrong secrets the slot still allows (non-zero only for
    /// [`PinRequiredReason::WrongSecret`]).
    #[error("the PIN is required ({reason:?})")]
    PinRequired {
        /// Why.
        reason: PinRequiredReason,
        /// Wrong platform secrets left before the slot is removed.
        attempts_left: u32,
    },
    /// Too many wrong PINs: the store wiped itself. Enroll again.
    #[error("too many wrong PINs: the store has been wiped")]
    TooManyAttempts,
    /// The PIN does not meet the rules (length): nothing was counted.
    #[error("{message}")]
    InvalidPin {
        /// Why.
        message: String,
    },
    /// The device store was written by a protocol v1 SDK: enroll again from
    /// a new invite.
    #[error("{message}")]
    ReenrollRequired {
        /// The SDK's explanation.
        message: String,
    },
    /// A server could not be reached, did not answer in time, or is busy:
    /// retrying later may succeed (queued messages stay queued).
    #[error("{message}")]
    Network {
        /// What failed.
        message: String,
    },
    /// The TLS connection failed (an untrusted certificate, a wrong CA
    /// file): this does not fix itself, say so at once.
    #[error("{message}")]
    Tls {
        /// What failed.
        message: String,
    },
    /// No such user, conversation, room or store.
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
    },
    /// Not allowed: not a member, not an admin, not an active device.
    #[error("{message}")]
    Forbidden {
        /// Why.
        message: String,
    },
    /// This device was revoked (and its store wiped): enroll again.
    #[error("this device was revoked")]
    DeviceRevoked,
    /// An argument was refused: a malformed id, invite or key, an invite
    /// already used or expired, a message too large, a file that exists.
    #[error("{message}")]
    Invalid {
        /// Why.
        message: String,
    },
    /// Something a server sent did not verify (a log, a signature, a
    /// downloaded blob): refused, nothing of it was kept.
    #[error("{message}")]
    Verification {
        /// What did not verify.
        message: String,
    },
    /// Reading or writing a local file failed.
    #[error("{message}")]
    File {
        /// What failed.
        message: String,
    },
    /// The client was locked (or found revoked): open it again.
    #[error("the client is closed")]
    Closed,
    /// The device store or a server failed in a way the app cannot act on
    /// (a corrupt store, a protocol error): report it.
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
    },
    /// The scanned text is not a Ward link code (`ward-link:1:...`):
    /// nothing was created. Scan the code again.
    #[error("{message}")]
    BadLinkCode {
        /// What is wrong with it.
        message: String,
    },
    /// A device link was tampered with: a message did not open under the
    /// code's key, or the other device's keys or commitment did not hold
    /// (the relay, or someone without the code, altered or swapped it).
    /// Nothing was approved; do not retry this code: show a new one.
    #[error("{message}")]
    LinkTampered {
        /// What did not hold.
        message: String,
    },
    /// The relay knows no link under this code: it expired, was used, or
    /// the existing device stopped waiting. Show a new code and scan again.
    #[error("no such link at the relay: it expired or was already used")]
    NoSuchLink,
    /// The other device (or the relay: the link expired) ended the link
    /// before it was done.
    #[error("the link was closed before it was done")]
    LinkClosed,
    /// The user refused this device on the existing device (the digits
    /// differed): this device's new store was wiped.
    #[error("the existing device refused the link")]
    LinkRefused,
    /// This step of the link already ran (each of `wait_for_device`,
    /// `approve` / `refuse` and `finish` runs once): start a new link.
    #[error("this link step was already used")]
    LinkAlreadyUsed,
}

impl From<StoreError> for WardError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::WrongPin { attempts_left } => Self::WrongPin { attempts_left },
            StoreError::Wiped => Self::TooManyAttempts,
            StoreError::PinRequired(r) => {
                let (reason, attempts_left) = match r {
                    StoreReason::WrongSecret { attempts_left } => {
                        (PinRequiredReason::WrongSecret, attempts_left)
                    }
                    StoreReason::Expired => (PinRequiredReason::Expired, 0),
                    StoreReason::TooManyFailures => (PinRequiredReason::TooManyFailures, 0),
                    // `NoSlot` and any reason a later SDK adds: the PIN it is.
                    _ => (PinRequiredReason::NoSlot, 0),
                };
                Self::PinRequired {
                    reason,
                    attempts_left,
                }
            }
            StoreError::PinTooShort { .. } | StoreError::PinTooLong { .. } => {
                Self::InvalidPin { message }
            }
            StoreError::ReenrollRequired => Self::ReenrollRequired { message },
            StoreError::NotFound => Self::NotFound { message },
            StoreError::AlreadyExists
            | StoreError::InvalidKdfParams(_)
            | StoreError::KdfDowngrade
            | StoreError::InvalidPlatformSecret
            | StoreError::PlatformSecretRequired
            | StoreError::PlatformSecretNotExpected
            | StoreError::InvalidPlatformUnlock(_) => Self::Invalid { message },
            StoreError::Io(_) => Self::File { message },
            _ => Self::Internal { message },
        }
    }
}

impl From<ClientError> for WardError {
    fn from(e: ClientError) -> Self {
        if e.is_device_revoked() {
            return Self::DeviceRevoked;
        }
        let transient = e.is_transient();
        let message = e.to_string();
        match e {
            ClientError::Store(s) => s.into(),
            ClientError::ReenrollRequired => Self::ReenrollRequired { message },
            ClientError::Net(ward_net::NetError::Tls(_)) => Self::Tls { message },
            ClientError::Net(_) | ClientError::Timeout => Self::Network { message },
            ClientError::Keyserver { code, .. } | ClientError::Relay { code, .. } => {
                refused(code, transient, message)
            }
            ClientError::UnknownUser(_)
            | ClientError::UnknownConversation
            | ClientError::UnknownRoom
            | ClientError::NotEnrolled => Self::NotFound { message },
            ClientError::NotAMember
            | ClientError::NotARoomMember
            | ClientError::DeviceNotInLog
            | ClientError::NoUserKey
            | ClientError::NoEpochKey(_) => Self::Forbidden { message },
            ClientError::InvalidInvite(_)
            | ClientError::InvalidInviteFile(_)
            | ClientError::Key(_)
            | ClientError::Seal(_)
            | ClientError::NotAnAttachment
            | ClientError::PushTokenTooLong(_)
            | ClientError::FileExists(_) => Self::Invalid { message },
            ClientError::Chain { .. }
            | ClientError::DirectoryMismatch { .. }
            | ClientError::Open(_)
            | ClientError::Wrap(_)
            | ClientError::SenderMismatch
            | ClientError::Replay { .. }
            | ClientError::WrappedKeyMissing(_)
            | ClientError::Room { .. }
            | ClientError::RoomCompromised { .. }
            | ClientError::Attachment(_)
            | ClientError::Transparency(_) => Self::Verification { message },
            ClientError::File(_) => Self::File { message },
            ClientError::Closed => Self::Closed,
            ClientError::Link(l) => link(l, message),
            ClientError::NoSuchLink => Self::NoSuchLink,
            ClientError::LinkClosed => Self::LinkClosed,
            ClientError::LinkRefused => Self::LinkRefused,
            _ => Self::Internal { message },
        }
    }
}

/// A link's protocol failure. What an app shows differs: a bad code is the
/// user's to scan again; a message that did not open, a commitment or an
/// offer that did not hold, or a cut history is an attack (or a faulty
/// device) to warn about; an authentic message out of place or that does
/// not decode is a bug to report.
fn link(e: LinkError, message: String) -> WardError {
    match e {
        LinkError::BadCode(_) => WardError::BadLinkCode { message },
        LinkError::Tampered
        | LinkError::CommitmentMismatch
        | LinkError::BadOffer(_)
        | LinkError::Truncated { .. } => WardError::LinkTampered { message },
        _ => WardError::Internal { message },
    }
}

/// A server's typed refusal.
fn refused(code: ErrorCode, transient: bool, message: String) -> WardError {
    if transient {
        return WardError::Network { message };
    }
    match code {
        ErrorCode::NotFound | ErrorCode::UnknownUser => WardError::NotFound { message },
        ErrorCode::Forbidden | ErrorCode::Unauthenticated => WardError::Forbidden { message },
        ErrorCode::Internal => WardError::Internal { message },
        _ => WardError::Invalid { message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_their_cases() {
        assert!(matches!(
            WardError::from(ClientError::Store(StoreError::WrongPin {
                attempts_left: 3
            })),
            WardError::WrongPin { attempts_left: 3 }
        ));
        assert!(matches!(
            WardError::from(ClientError::Store(StoreError::Wiped)),
            WardError::TooManyAttempts
        ));
        assert!(matches!(
            WardError::from(ClientError::from(StoreError::ReenrollRequired)),
            WardError::ReenrollRequired { .. }
        ));
        for (store, reason, left) in [
            (
                StoreReason::WrongSecret { attempts_left: 2 },
                PinRequiredReason::WrongSecret,
                2,
            ),
            (StoreReason::NoSlot, PinRequiredReason::NoSlot, 0),
            (StoreReason::Expired, PinRequiredReason::Expired, 0),
            (
                StoreReason::TooManyFailures,
                PinRequiredReason::TooManyFailures,
                0,
            ),
        ] {
            match WardError::from(ClientError::Store(StoreError::PinRequired(store))) {
                WardError::PinRequired {
                    reason: r,
                    attempts_left,
                } => assert_eq!((r, attempts_left), (reason, left)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn link_errors_map_to_their_cases() {
        assert!(matches!(
            WardError::from(ClientError::Link(LinkError::BadCode("prefix"))),
            WardError::BadLinkCode { .. }
        ));
        for tampered in [
            LinkError::Tampered,
            LinkError::CommitmentMismatch,
            LinkError::BadOffer("proof"),
            LinkError::Truncated {
                got: 1,
                announced: 2,
            },
        ] {
            assert!(matches!(
                WardError::from(ClientError::Link(tampered)),
                WardError::LinkTampered { .. }
            ));
        }
        assert!(matches!(
            WardError::from(ClientError::Link(LinkError::Unexpected("step"))),
            WardError::Internal { .. }
        ));
        assert!(matches!(
            WardError::from(ClientError::NoSuchLink),
            WardError::NoSuchLink
        ));
        assert!(matches!(
            WardError::from(ClientError::LinkClosed),
            WardError::LinkClosed
        ));
        assert!(matches!(
            WardError::from(ClientError::LinkRefused),
            WardError::LinkRefused
        ));
        // The message an app may show says what happened.
        let e = WardError::from(ClientError::Link(LinkError::Tampered));
        assert!(e.to_string().contains("tampered"), "{e}");
    }

    #[test]
    fn refusals_map_by_code() {
        let ks = |code| ClientError::Keyserver {
            code,
            detail: "d".into(),
        };
        assert!(matches!(
            WardError::from(ks(ErrorCode::RateLimited)),
            WardError::Network { .. }
        ));
        assert!(matches!(
            WardError::from(ks(ErrorCode::DeviceRevoked)),
            WardError::DeviceRevoked
        ));
        assert!(matches!(
            WardError::from(ks(ErrorCode::InviteUsed)),
            WardError::Invalid { .. }
        ));
        assert!(matches!(
            WardError::from(ks(ErrorCode::Forbidden)),
            WardError::Forbidden { .. }
        ));
        assert!(matches!(
            WardError::from(ClientError::UnknownRoom),
            WardError::NotFound { .. }
        ));
        assert!(matches!(
            WardError::from(ClientError::Timeout),
            WardError::Network { .. }
        ));
    }
}
