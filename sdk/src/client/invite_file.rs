//! The invite file `ward admin invite --out FILE` writes: a few lines of
//! text, of which `invite: <hex>` (the encoded `SignedInvite`) and
//! `delegation: <hex>` (the 32-byte one-time delegation secret) matter.
//! Here so that every app reads it the same way (the bindings take the file
//! as it was handed over).

use zeroize::Zeroizing;

use super::error::{ClientError, Result};

/// An invite and its delegation secret, as read from an invite file.
pub struct InviteFile {
    /// The encoded `SignedInvite` ([`super::Client::enroll`]'s `invite`).
    pub invite: Vec<u8>,
    /// The delegation secret (zeroized on drop; never printed).
    pub delegation: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for InviteFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InviteFile")
            .field("invite_len", &self.invite.len())
            .finish_non_exhaustive()
    }
}

impl InviteFile {
    /// Parses the file's text: the first `invite:` and `delegation:` lines,
    /// hex. Anything else is [`ClientError::InvalidInviteFile`].
    pub fn parse(text: &str) -> Result<Self> {
        let line = |tag: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(tag).map(str::trim))
        };
        let (Some(invite), Some(delegation)) = (line("invite:"), line("delegation:")) else {
            return Err(ClientError::InvalidInviteFile(
                "no `invite:` and `delegation:` lines (the output of `ward admin invite`)",
            ));
        };
        Ok(Self {
            invite: unhex(invite)
                .ok_or(ClientError::InvalidInviteFile("the invite line is not hex"))?,
            delegation: Zeroizing::new(unhex(delegation).ok_or(ClientError::InvalidInviteFile(
                "the delegation line is not hex",
            ))?),
        })
    }

    /// Reads and parses the file at `path` (its text is zeroized after).
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(ClientError::File)?);
        Self::parse(&text)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_lines_ward_admin_invite_writes() {
        let text = "Invite for dr.martin (Dr Claire Martin), expires 2026-12-10.\n\
                    Hand both lines to the clinician, out of band (QR code, in person).\n\
                    invite:     0a0bFF\n\
                    delegation: 00112233\n";
        let f = InviteFile::parse(text).unwrap();
        assert_eq!(f.invite, [0x0a, 0x0b, 0xff]);
        assert_eq!(&*f.delegation, &[0x00, 0x11, 0x22, 0x33]);
        assert!(!format!("{f:?}").contains("0011"));
    }

    #[test]
    fn refuses_missing_lines_and_bad_hex() {
        for text in [
            "invite: 00\n",
            "delegation: 00\n",
            "invite: 0g\ndelegation: 00\n",
            "invite: 000\ndelegation: 00\n",
            "invite: 00\ndelegation: é0\n",
        ] {
            assert!(
                matches!(
                    InviteFile::parse(text),
                    Err(ClientError::InvalidInviteFile(_))
                ),
                "{text}"
            );
        }
    }
}
