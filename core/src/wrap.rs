//! Key wrapping with HPKE base mode and the X-Wing KEM (SECURITY.md §6).
//!
//! * A [`ResourceKey`] is wrapped to a *user* key, so a message costs one wrap
//!   per recipient user whatever their device count.
//! * A [`UserEncryptionKey`] (its 32-byte seed) is granted to each of the
//!   user's *devices*, whose encryption keys are X-Wing keys too: one suite.
//!
//! HPKE base mode does not authenticate the sender: anyone can wrap a key to
//! anyone. A wrapped resource key is only as good as the signed envelope it
//! opens, and a grant is accepted only if the key inside matches the user key
//! of the verified chain.

use rand_core::CryptoRng;
use ward_proto::v1::{DeviceGrant, WrappedKey};
use zeroize::Zeroizing;

use crate::error::WrapError;
use crate::hpke::{self, Context, ESEED_BYTES, XWING_SUITE};
use crate::ids::ResourceId;
use crate::keys::{
    DeviceEncryptionKey, EncryptionPublicKey, KeyId, ResourceKey, RoomEpochKey, UserEncryptionKey,
};
use crate::labels::{GRANT_INFO, WRAP_INFO};

/// Bytes of `WrappedKey.enc` and `DeviceGrant.enc`: one X-Wing ciphertext.
pub const ENC_BYTES: usize = hpke::ENC_BYTES;
/// Bytes of `WrappedKey.ciphertext` and `DeviceGrant.ciphertext`: a 32-byte
/// secret and ChaCha20-Poly1305's 16-byte tag.
pub const CIPHERTEXT_BYTES: usize = 48;
/// Bytes of a key id (`recipient_key`, `user_key`, `device_key`).
pub const KEY_ID_BYTES: usize = 32;

/// Largest standalone encoded `WrappedKey` or `DeviceGrant` accepted
/// (SECURITY.md §6.5): the encoded sizes are 1225 and 1241 bytes, and a
/// re-encoding (an unknown field, a field repeated) may add a little. Inside
/// a keyserver frame they are bounded by the frame limit instead.
pub const MAX_WRAPPED_KEY_BYTES: usize = 2048;

/// Decodes a standalone `WrappedKey` from untrusted bytes (a file, a cache):
/// over [`MAX_WRAPPED_KEY_BYTES`] or not protobuf is [`WrapError::Malformed`],
/// the error W1 and W4 give for bad field lengths. Unwrap it next with
/// [`unwrap_resource_key`].
pub fn decode_wrapped_key(bytes: &[u8]) -> Result<WrappedKey, WrapError> {
    ward_proto::decode_bounded(bytes, MAX_WRAPPED_KEY_BYTES).map_err(|_| WrapError::Malformed)
}

/// Decodes a standalone `DeviceGrant`, as [`decode_wrapped_key`] (same limit,
/// same error). Accept it next with [`accept_grant`].
pub fn decode_device_grant(bytes: &[u8]) -> Result<DeviceGrant, WrapError> {
    ward_proto::decode_bounded(bytes, MAX_WRAPPED_KEY_BYTES).map_err(|_| WrapError::Malformed)
}

/// Seals a 32-byte secret to `recipient` with HPKE base mode (§6.2), drawing
/// the 64-byte X-Wing `eseed` from `rng`. Rooms wrap their epoch keys with it.
pub(crate) fn seal_to<R: CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &EncryptionPublicKey,
    info: &[u8],
    aad: &[u8],
    secret: &[u8; 32],
) -> Result<(Vec<u8>, Vec<u8>), WrapError> {
    let mut eseed = Zeroizing::new([0u8; ESEED_BYTES]);
    rng.fill_bytes(&mut *eseed);
    let (shared, enc) = hpke::xwing_encap(recipient, &eseed)?;
    let ctx = Context::key_schedule(XWING_SUITE, &shared, info);
    Ok((enc, ctx.seal(0, aad, secret)))
}

/// Opens what [`seal_to`] sealed; `Malformed` on wrong lengths.
pub(crate) fn open_from(
    sk: &x_wing::DecapsulationKeyRejectNonContrib,
    enc: &[u8],
    ct: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<[u8; 32]>, WrapError> {
    if enc.len() != ENC_BYTES || ct.len() != CIPHERTEXT_BYTES {
        return Err(WrapError::Malformed);
    }
    let shared = hpke::xwing_decap(enc, sk)?;
    let ctx = Context::key_schedule(XWING_SUITE, &shared, info);
    let pt = ctx.open(0, aad, ct)?;
    let out: [u8; 32] = pt
        .as_slice()
        .try_into()
        .map_err(|_| WrapError::Undecryptable)?;
    Ok(Zeroizing::new(out))
}

fn wrap_aad(resource_id: &ResourceId, recipient: &KeyId) -> [u8; 48] {
    let mut aad = [0u8; 48];
    aad[..16].copy_from_slice(resource_id.as_bytes());
    aad[16..].copy_from_slice(recipient.as_bytes());
    aad
}

fn grant_aad(user: &KeyId, device: &KeyId) -> [u8; 64] {
    let mut aad = [0u8; 64];
    aad[..32].copy_from_slice(user.as_bytes());
    aad[32..].copy_from_slice(device.as_bytes());
    aad
}

/// Wraps `key` (the key of `resource_id`) to a recipient user's key.
/// Draws 64 bytes from `rng` (X-Wing's `eseed`).
pub fn wrap_resource_key<R: CryptoRng + ?Sized>(
    rng: &mut R,
    key: &ResourceKey,
    resource_id: &ResourceId,
    recipient: &EncryptionPublicKey,
) -> Result<WrappedKey, WrapError> {
    let id = recipient.id();
    let aad = wrap_aad(resource_id, &id);
    let (enc, ciphertext) = seal_to(rng, recipient, WRAP_INFO, &aad, key.as_bytes())?;
    Ok(WrappedKey {
        resource_id: resource_id.as_bytes().to_vec(),
        recipient_key: id.as_bytes().to_vec(),
        enc,
        ciphertext,
    })
}

/// Unwraps the key of `resource_id` with the user's key. Refuses a wrapped
/// key that names another resource or another recipient, and one whose
/// binding was rewritten (it does not decrypt).
pub fn unwrap_resource_key(
    wrapped: &WrappedKey,
    resource_id: &ResourceId,
    user_key: &UserEncryptionKey,
) -> Result<ResourceKey, WrapError> {
    unwrap_with(
        wrapped,
        resource_id,
        &user_key.public_key(),
        user_key.secret(),
    )
}

/// Unwraps the key of a room message with the epoch's room key: the same
/// wrap as to a user key (W1-W5 of §6.5), its `recipient_key` the id of the
/// epoch public key (SECURITY.md §17.6).
pub fn unwrap_room_resource_key(
    wrapped: &WrappedKey,
    resource_id: &ResourceId,
    epoch_key: &RoomEpochKey,
) -> Result<ResourceKey, WrapError> {
    unwrap_with(
        wrapped,
        resource_id,
        &epoch_key.public_key(),
        epoch_key.secret(),
    )
}

fn unwrap_with(
    wrapped: &WrappedKey,
    resource_id: &ResourceId,
    public: &EncryptionPublicKey,
    secret: &x_wing::DecapsulationKeyRejectNonContrib,
) -> Result<ResourceKey, WrapError> {
    if wrapped.resource_id.len() != 16 || wrapped.recipient_key.len() != KEY_ID_BYTES {
        return Err(WrapError::Malformed);
    }
    if wrapped.resource_id != resource_id.as_bytes() {
        return Err(WrapError::WrongResource);
    }
    let me = public.id();
    if wrapped.recipient_key != me.as_bytes() {
        return Err(WrapError::WrongRecipient);
    }
    let aad = wrap_aad(resource_id, &me);
    let key = open_from(secret, &wrapped.enc, &wrapped.ciphertext, WRAP_INFO, &aad)?;
    ResourceKey::import_secret(&*key).map_err(|_| WrapError::Undecryptable)
}

/// Grants the user's private key (its 32-byte seed) to one of its devices.
/// Draws 64 bytes from `rng` (X-Wing's `eseed`).
pub fn grant_user_key<R: CryptoRng + ?Sized>(
    rng: &mut R,
    user_key: &UserEncryptionKey,
    device: &EncryptionPublicKey,
) -> Result<DeviceGrant, WrapError> {
    let (user, dev) = (user_key.public_key().id(), device.id());
    let aad = grant_aad(&user, &dev);
    let (enc, ciphertext) = seal_to(rng, device, GRANT_INFO, &aad, &user_key.export_secret())?;
    Ok(DeviceGrant {
        user_key: user.as_bytes().to_vec(),
        device_key: dev.as_bytes().to_vec(),
        enc,
        ciphertext,
    })
}

/// Opens a grant with the device's key. `expected_user_key` comes from the
/// user's verified chain: a grant of any other key is refused, so a keyserver
/// cannot plant a key of its choosing.
pub fn accept_grant(
    grant: &DeviceGrant,
    device_key: &DeviceEncryptionKey,
    expected_user_key: &EncryptionPublicKey,
) -> Result<UserEncryptionKey, WrapError> {
    if grant.user_key.len() != KEY_ID_BYTES || grant.device_key.len() != KEY_ID_BYTES {
        return Err(WrapError::Malformed);
    }
    let me = device_key.public_key().id();
    if grant.device_key != me.as_bytes() {
        return Err(WrapError::WrongRecipient);
    }
    let user = expected_user_key.id();
    if grant.user_key != user.as_bytes() {
        return Err(WrapError::WrongUserKey);
    }
    let aad = grant_aad(&user, &me);
    let secret = open_from(
        device_key.secret(),
        &grant.enc,
        &grant.ciphertext,
        GRANT_INFO,
        &aad,
    )?;
    let key = UserEncryptionKey::import_secret(&*secret).map_err(|_| WrapError::Undecryptable)?;
    if key.public_key() != *expected_user_key {
        return Err(WrapError::Undecryptable);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_binds_resource_and_recipient() {
        let mut rng = rand::rng();
        let alice = UserEncryptionKey::generate(&mut rng);
        let bob = UserEncryptionKey::generate(&mut rng);
        let key = ResourceKey::generate(&mut rng);
        let rid = ResourceId::random(&mut rng);
        let w = wrap_resource_key(&mut rng, &key, &rid, &alice.public_key()).unwrap();
        let back = unwrap_resource_key(&w, &rid, &alice).unwrap();
        assert_eq!(*back.export_secret(), *key.export_secret());
        // A standalone copy decodes back to the same record; one over the
        // limit (here padded with an unknown field) does not.
        let bytes = prost::Message::encode_to_vec(&w);
        assert_eq!(decode_wrapped_key(&bytes).unwrap(), w);
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0x7a, 0x80, 0x08]); // field 15, 1024 bytes
        padded.resize(padded.len() + 1024, 0);
        assert!(padded.len() > MAX_WRAPPED_KEY_BYTES);
        assert_eq!(decode_wrapped_key(&padded), Err(WrapError::Malformed));
        assert_eq!(decode_device_grant(&bytes[..10]), Err(WrapError::Malformed));

        assert_eq!(
            unwrap_resource_key(&w, &rid, &bob).err(),
            Some(WrapError::WrongRecipient)
        );
        let other = ResourceId::random(&mut rng);
        assert_eq!(
            unwrap_resource_key(&w, &other, &alice).err(),
            Some(WrapError::WrongResource)
        );
        // Rewriting the resource id in the record does not help: it is bound in the AAD.
        let mut swapped = w.clone();
        swapped.resource_id = other.as_bytes().to_vec();
        assert_eq!(
            unwrap_resource_key(&swapped, &other, &alice).err(),
            Some(WrapError::Undecryptable)
        );
        let mut flipped = w.clone();
        flipped.ciphertext[0] ^= 1;
        assert_eq!(
            unwrap_resource_key(&flipped, &rid, &alice).err(),
            Some(WrapError::Undecryptable)
        );
    }

    #[test]
    fn grant_round_trips_and_refuses_a_planted_key() {
        let mut rng = rand::rng();
        let user = UserEncryptionKey::generate(&mut rng);
        let device = DeviceEncryptionKey::generate(&mut rng);
        let g = grant_user_key(&mut rng, &user, &device.public_key()).unwrap();
        let back = accept_grant(&g, &device, &user.public_key()).unwrap();
        assert_eq!(back.public_key(), user.public_key());

        // A keyserver grants a key of its own, claiming it is the user's.
        // HPKE base mode lets anyone seal to the device key, with the right
        // binding; only the check of the key against the chain stops this.
        let planted = UserEncryptionKey::generate(&mut rng);
        let aad = grant_aad(&user.public_key().id(), &device.public_key().id());
        let (enc, ciphertext) = seal_to(
            &mut rng,
            &device.public_key(),
            GRANT_INFO,
            &aad,
            &planted.export_secret(),
        )
        .unwrap();
        let forged = DeviceGrant {
            enc: enc.to_vec(),
            ciphertext,
            ..g.clone()
        };
        assert_eq!(
            accept_grant(&forged, &device, &user.public_key()).err(),
            Some(WrapError::Undecryptable)
        );
        // Addressed to another user key version: refused before decrypting.
        let mut other = g.clone();
        other.user_key = planted.public_key().id().as_bytes().to_vec();
        assert_eq!(
            accept_grant(&other, &device, &user.public_key()).err(),
            Some(WrapError::WrongUserKey)
        );
    }

    #[test]
    fn wrong_lengths_and_a_low_order_ephemeral_are_refused() {
        let mut rng = rand::rng();
        let alice = UserEncryptionKey::generate(&mut rng);
        let key = ResourceKey::generate(&mut rng);
        let rid = ResourceId::random(&mut rng);
        let w = wrap_resource_key(&mut rng, &key, &rid, &alice.public_key()).unwrap();
        assert_eq!(w.enc.len(), ENC_BYTES);
        assert_eq!(w.ciphertext.len(), CIPHERTEXT_BYTES);
        let mut short = w.clone();
        short.enc.pop();
        assert_eq!(
            unwrap_resource_key(&short, &rid, &alice).err(),
            Some(WrapError::Malformed)
        );
        // The X25519 part of enc (its last 32 bytes) set to a low-order
        // point: X25519 gives zero, and the decapsulation refuses.
        let mut low = w.clone();
        let n = low.enc.len();
        low.enc[n - 32..].fill(0);
        assert_eq!(
            unwrap_resource_key(&low, &rid, &alice).err(),
            Some(WrapError::NonContributory)
        );
        // A tampered ML-KEM part decapsulates (implicit rejection) to another
        // secret: the AEAD refuses.
        let mut tampered = w.clone();
        tampered.enc[0] ^= 1;
        assert_eq!(
            unwrap_resource_key(&tampered, &rid, &alice).err(),
            Some(WrapError::Undecryptable)
        );
    }
}
