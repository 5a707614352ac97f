//! Every domain-separation label and the one framing rule that uses them.
//!
//! A signature or hash input is `label || 0x00 || part_1 || ... || part_n`,
//! each part written as `u32_be(len(part)) || part` (SECURITY.md §3). Labels
//! are distinct ASCII strings, so no input for one purpose can be replayed as
//! an input for another.

use sha2::{Digest, Sha256};

/// Organisation root signature over an encoded `Invite`.
pub const SIG_INVITE: &[u8] = b"ward/v2/sig/invite";
/// Signature over an encoded `Statement` of a user's log.
pub const SIG_STATEMENT: &[u8] = b"ward/v2/sig/statement";
/// Sender device signature over an envelope's header and ciphertext digest (§7.3).
pub const SIG_ENVELOPE: &[u8] = b"ward/v2/sig/envelope";
/// Hash of an envelope's ciphertext: the one pass over it that the signature
/// covers (§7.3).
pub const HASH_CIPHERTEXT: &[u8] = b"ward/v2/hash/envelope-ciphertext";
/// HKDF-Expand `info` of an envelope's AEAD key, derived from the resource key (§7.3).
pub const ENVELOPE_AEAD_KEY: &[u8] = b"ward/v2/envelope/aead-key";
/// HKDF-Expand `info` of an envelope's key commitment (§7.3).
pub const ENVELOPE_KEY_COMMITMENT: &[u8] = b"ward/v2/envelope/key-commitment";
/// A new device's own signature over its keys in a device addition
/// (proof of possession, SECURITY.md §4.4).
pub const SIG_DEVICE_POSSESSION: &[u8] = b"ward/v2/sig/device-possession";
/// Device signature in the authentication handshake.
pub const SIG_AUTH: &[u8] = b"ward/v2/sig/auth";
/// A relay's service-key signature when it authenticates to the keyserver's
/// relay link (SECURITY.md §10.8). Its own label: no device handshake
/// signature is ever a relay-link one, and the other way round.
pub const SIG_RELAY_LINK: &[u8] = b"ward/v2/sig/relay-link";
/// The invite's delegation key, signing the handshake of a device that
/// enrolls (SECURITY.md §8, E1–E5): only the invite's holder can open an
/// enrolling session at the keyserver.
pub const SIG_ENROL_AUTH: &[u8] = b"ward/v2/sig/enrol-auth";
/// Hash of an encoded `Invite` (the `prev_hash` of log entry 0, and its single-use id).
pub const HASH_INVITE: &[u8] = b"ward/v2/hash/invite";
/// Hash of a log entry, statement and signature (the next entry's `prev_hash`).
pub const HASH_ENTRY: &[u8] = b"ward/v2/hash/entry";
/// HPKE `info` when wrapping a resource key to a user key.
pub const WRAP_INFO: &[u8] = b"ward/v2/wrap/resource-key";
/// HPKE `info` when granting a user's private key to a device.
pub const GRANT_INFO: &[u8] = b"ward/v2/wrap/device-grant";
/// HKDF-Expand `info` of an attachment's payload (STREAM) key, derived from
/// the file key and the blob header's salt (SECURITY.md §16.3).
pub const ATTACHMENT_PAYLOAD_KEY: &[u8] = b"ward/v2/attachment/payload-key";
/// HKDF-Expand `info` of an attachment's key commitment (§16.3).
pub const ATTACHMENT_KEY_COMMITMENT: &[u8] = b"ward/v2/attachment/key-commitment";
/// Prefix of the hash over a whole attachment blob (§16.4), unframed: a
/// blob may exceed the 4 GiB that a framed part's u32 length can express.
pub const HASH_ATTACHMENT_BLOB: &[u8] = b"ward/v2/hash/attachment-blob";
/// Id of an X-Wing encryption public key (`WrappedKey.recipient_key`, grants).
pub const HASH_KEY_ID: &[u8] = b"ward/v2/hash/key-id";
/// HKDF-Expand `info` of the key that seals the organisation root at rest
/// (SECURITY.md §10.7.1).
pub const ROOT_STORE_AEAD_KEY: &[u8] = b"ward/v2/root-store/aead-key";

/// Signature over an encoded `RoomStatement` of a room's membership log (§17.2).
pub const SIG_ROOM_STATEMENT: &[u8] = b"ward/v2/sig/room-statement";
/// Hash of a room log entry, statement and signature (the next entry's `prev_hash`, §17.2).
pub const HASH_ROOM_ENTRY: &[u8] = b"ward/v2/hash/room-entry";
/// `prev_hash` of a room's entry 0: `H(HASH_ROOM_GENESIS, room_id)` (§17.2).
pub const HASH_ROOM_GENESIS: &[u8] = b"ward/v2/hash/room-genesis";
/// HPKE `info` when wrapping a room epoch's private key to a member's user key (§17.4).
pub const ROOM_EPOCH_WRAP_INFO: &[u8] = b"ward/v2/wrap/room-epoch-key";
/// HKDF-Expand `info` of a room epoch's metadata key (§17.5), unframed.
pub const ROOM_METADATA_KEY: &[u8] = b"ward/v2/room/metadata-key";
/// Associated data of sealed room metadata: `frame(ROOM_METADATA_AAD, room_id, u64_be(epoch))` (§17.5).
pub const ROOM_METADATA_AAD: &[u8] = b"ward/v2/room/metadata";

/// HKDF-Extract salt of a device link's key schedule (§4.9), unframed.
pub const LINK_SALT: &[u8] = b"ward/v2/link";
/// HKDF-Expand `info` of a device link's rendezvous id (§4.9).
pub const LINK_RENDEZVOUS: &[u8] = b"ward/v2/link/rendezvous";
/// HKDF-Expand `info` of the key sealing link messages from the new device (§4.9).
pub const LINK_KEY_TO_EXISTING: &[u8] = b"ward/v2/link/key-to-existing";
/// HKDF-Expand `info` of the key sealing link messages from the existing device (§4.9).
pub const LINK_KEY_TO_NEW: &[u8] = b"ward/v2/link/key-to-new";
/// Hash of the new device's SAS nonce: its commitment in the hello (§4.9).
pub const HASH_LINK_NONCE: &[u8] = b"ward/v2/hash/link-nonce";
/// Hash the short authentication string is taken from (§4.9).
pub const HASH_LINK_SAS: &[u8] = b"ward/v2/hash/link-sas";

/// The data of a key-transparency leaf: `frame(KT_LEAF, user_id, u64_be(log_len), head_hash)` (§18.2).
pub const KT_LEAF: &[u8] = b"ward/v2/kt/leaf";
/// The directory key's signature over an epoch head (§18.3).
pub const SIG_KT_EPOCH: &[u8] = b"ward/v2/sig/kt-epoch";
/// The organisation root's certificate of the directory key (§18.3).
pub const SIG_KT_KEY: &[u8] = b"ward/v2/sig/kt-key";
/// A witness's countersignature over an epoch head (§18.5).
pub const SIG_KT_WITNESS: &[u8] = b"ward/v2/sig/kt-witness";

/// `label || 0x00 || (u32_be(len) || part)*`: the input to every Ward signature.
pub(crate) fn framed(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = label.len() + 1 + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(label);
    out.push(0);
    for part in parts {
        // Parts are bounded by decode limits far below 4 GiB.
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// SHA-256 over the same framing as [`framed`].
pub(crate) fn framed_hash(label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update([0u8]);
    for part in parts {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}
