//! Key wrapping with HPKE base mode (SECURITY.md §6).
//!
//! * A [`ResourceKey`] is wrapped to a *user* key, so a message costs one wrap
//!   per recipient user whatever their device count.
//! * A [`UserEncryptionKey`] is granted to each of the user's *devices*.
//!
//! HPKE base mode does not authenticate the sender: anyone can wrap a key to
//! anyone. A wrapped resource key is only as good as the signed envelope it
//! opens, and a grant is accepted only if the key inside matches the user key
//! of the verified chain.

use rand_core::CryptoRng;
use ward_proto::v1::{DeviceGrant, WrappedKey};
use zeroize::Zeroizing;

use crate::error::WrapError;
use crate::hpke::{self, Context};
use crate::ids::ResourceId;
use crate::keys::{DeviceEncryptionKey, EncryptionPublicKey, ResourceKey, UserEncryptionKey};
use crate::labels::{GRANT_INFO, WRAP_INFO};

fn seal_to<R: CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &EncryptionPublicKey,
    info: &[u8],
    aad: &[u8],
    secret: &[u8; 32],
) -> Result<([u8; 32], Vec<u8>), WrapError> {
    let mut ikm_e = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *ikm_e);
    let (shared, enc) = hpke::encap(&recipient.dalek(), &ikm_e)?;
    let ctx = Context::key_schedule(&shared, info);
    Ok((enc, ctx.seal(0, aad, secret)))
}

fn open_from(
    sk: &x25519_dalek::StaticSecret,
    pk: &EncryptionPublicKey,
    enc: &[u8],
    ct: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<[u8; 32]>, WrapError> {
    let enc: [u8; 32] = enc.try_into().map_err(|_| WrapError::Malformed)?;
    if ct.len() != 48 {
        return Err(WrapError::Malformed);
    }
    let shared = hpke::decap(&enc, sk, pk.as_bytes())?;
    let ctx = Context::key_schedule(&shared, info);
    let pt = ctx.open(0, aad, ct)?;
    let out: [u8; 32] = pt
        .as_slice()
        .try_into()
        .map_err(|_| WrapError::Undecryptable)?;
    Ok(Zeroizing::new(out))
}

fn wrap_aad(resource_id: &ResourceId, recipient: &EncryptionPublicKey) -> [u8; 48] {
    let mut aad = [0u8; 48];
    aad[..16].copy_from_slice(resource_id.as_bytes());
    aad[16..].copy_from_slice(recipient.as_bytes());
    aad
}

fn grant_aad(user: &EncryptionPublicKey, device: &EncryptionPublicKey) -> [u8; 64] {
    let mut aad = [0u8; 64];
    aad[..32].copy_from_slice(user.as_bytes());
    aad[32..].copy_from_slice(device.as_bytes());
    aad
}

/// Wraps `key` (the key of `resource_id`) to a recipient user's key.
/// Draws 32 bytes from `rng` (HPKE's ephemeral `ikmE`).
pub fn wrap_resource_key<R: CryptoRng + ?Sized>(
    rng: &mut R,
    key: &ResourceKey,
    resource_id: &ResourceId,
    recipient: &EncryptionPublicKey,
) -> Result<WrappedKey, WrapError> {
    let aad = wrap_aad(resource_id, recipient);
    let (enc, ciphertext) = seal_to(rng, recipient, WRAP_INFO, &aad, key.as_bytes())?;
    Ok(WrappedKey {
        resource_id: resource_id.as_bytes().to_vec(),
        recipient_key: recipient.as_bytes().to_vec(),
        enc: enc.to_vec(),
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
    if wrapped.resource_id.len() != 16 || wrapped.recipient_key.len() != 32 {
        return Err(WrapError::Malformed);
    }
    if wrapped.resource_id != resource_id.as_bytes() {
        return Err(WrapError::WrongResource);
    }
    let me = user_key.public_key();
    if wrapped.recipient_key != me.as_bytes() {
        return Err(WrapError::WrongRecipient);
    }
    let aad = wrap_aad(resource_id, &me);
    let key = open_from(
        user_key.secret(),
        &me,
        &wrapped.enc,
        &wrapped.ciphertext,
        WRAP_INFO,
        &aad,
    )?;
    ResourceKey::import_secret(&*key).map_err(|_| WrapError::Undecryptable)
}

/// Grants the user's private key to one of its devices.
/// Draws 32 bytes from `rng` (HPKE's ephemeral `ikmE`).
pub fn grant_user_key<R: CryptoRng + ?Sized>(
    rng: &mut R,
    user_key: &UserEncryptionKey,
    device: &EncryptionPublicKey,
) -> Result<DeviceGrant, WrapError> {
    let user = user_key.public_key();
    let aad = grant_aad(&user, device);
    let (enc, ciphertext) = seal_to(rng, device, GRANT_INFO, &aad, &user_key.export_secret())?;
    Ok(DeviceGrant {
        user_key: user.as_bytes().to_vec(),
        device_key: device.as_bytes().to_vec(),
        enc: enc.to_vec(),
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
    if grant.user_key.len() != 32 || grant.device_key.len() != 32 {
        return Err(WrapError::Malformed);
    }
    let me = device_key.public_key();
    if grant.device_key != me.as_bytes() {
        return Err(WrapError::WrongRecipient);
    }
    if grant.user_key != expected_user_key.as_bytes() {
        return Err(WrapError::WrongUserKey);
    }
    let aad = grant_aad(expected_user_key, &me);
    let secret = open_from(
        device_key.secret(),
        &me,
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
        let aad = grant_aad(&user.public_key(), &device.public_key());
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
        other.user_key = planted.public_key().as_bytes().to_vec();
        assert_eq!(
            accept_grant(&other, &device, &user.public_key()).err(),
            Some(WrapError::WrongUserKey)
        );
    }

    #[test]
    fn low_order_recipient_is_refused() {
        let mut rng = rand::rng();
        let key = ResourceKey::generate(&mut rng);
        let rid = ResourceId::random(&mut rng);
        let zero = EncryptionPublicKey::from_bytes(&[0u8; 32]).unwrap();
        assert_eq!(
            wrap_resource_key(&mut rng, &key, &rid, &zero).err(),
            Some(WrapError::NonContributory)
        );
    }
}
