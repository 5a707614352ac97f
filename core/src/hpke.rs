//! The subset of HPKE (RFC 9180) Ward uses: base mode with the X-Wing KEM
//! (draft-connolly-cfrg-xwing-kem-06 §5.6, `kem_id = 0x647a`), HKDF-SHA256
//! and ChaCha20Poly1305: suite `0x647a, 0x0001, 0x0003`, the only one at run
//! time (SECURITY.md §6).
//!
//! This is the RFC's key schedule composed from RustCrypto primitives (the
//! `x-wing` crate for the KEM); no primitive is implemented here. It is written
//! out rather than taken from the `hpke` crate so that every intermediate value
//! of the RFC's test vectors (shared_secret, key, base_nonce, exporter_secret)
//! can be checked, not only the final ciphertexts. Those vectors are for
//! DHKEM(X25519), which survives here only under `cfg(test)` to check the key
//! schedule: it is not a suite Ward speaks.

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use sha2::Sha256;
use x_wing::TryDecapsulate;
use zeroize::{Zeroize, Zeroizing};

use crate::error::WrapError;
use crate::keys::EncryptionPublicKey;

/// `"HPKE" || kem_id || kdf_id || aead_id` for X-Wing, HKDF-SHA256, ChaCha20Poly1305.
pub(crate) const XWING_SUITE: &[u8] = b"HPKE\x64\x7a\x00\x01\x00\x03";
const MODE_BASE: u8 = 0;
/// Bytes of an X-Wing ciphertext (HPKE's `enc`): ML-KEM-768's 1088, then X25519's 32.
pub(crate) const ENC_BYTES: usize = x_wing::CIPHERTEXT_SIZE;
/// Bytes of randomness one X-Wing encapsulation draws (`eseed`).
pub(crate) const ESEED_BYTES: usize = x_wing::ENCAPSULATION_RANDOMNESS_SIZE;

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut input = Zeroizing::new(Vec::with_capacity(
        7 + suite.len() + label.len() + ikm.len(),
    ));
    input.extend_from_slice(b"HPKE-v1");
    input.extend_from_slice(suite);
    input.extend_from_slice(label);
    input.extend_from_slice(ikm);
    let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), &input);
    Zeroizing::new(prk.into())
}

fn labeled_expand(suite: &[u8], prk: &[u8; 32], label: &[u8], info: &[u8], out: &mut [u8]) {
    // A 32-byte PRK is always valid for SHA-256, and every length Ward asks
    // for is far below 255 * 32, so neither error can occur.
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(prk) {
        let len = (out.len() as u16).to_be_bytes();
        let _ = hk.expand_multi_info(&[&len, b"HPKE-v1", suite, label, info], out);
    }
}

/// X-Wing `Encap(pkR)` with the 64-byte `eseed` drawn by the caller
/// (draft §5.4.1 `EncapsulateDerand`: ML-KEM's `m` is `eseed[0..32]`, the
/// X25519 ephemeral `eseed[32..64]`): returns `(shared_secret, enc)`.
pub(crate) fn xwing_encap(
    pk_r: &EncryptionPublicKey,
    eseed: &[u8; ESEED_BYTES],
) -> Result<(Zeroizing<[u8; 32]>, Vec<u8>), WrapError> {
    // A parsed key passed FIPS 203's modulus check and the X25519 low-order
    // check already (§3.5); re-parsing cannot fail but is not skipped.
    let ek = pk_r.xwing().map_err(|_| WrapError::Malformed)?;
    let (ct, mut ss) = ek.encapsulate_deterministic(&(*eseed).into());
    let mut shared = Zeroizing::new([0u8; 32]);
    shared.copy_from_slice(&ss);
    ss.as_mut_slice().zeroize();
    Ok((shared, ct.to_vec()))
}

/// X-Wing `Decap(enc, skR)`, refusing an X25519 part of `enc` whose DH output
/// is all zero (a low-order point, §6.2) with `NonContributory`.
pub(crate) fn xwing_decap(
    enc: &[u8],
    sk_r: &x_wing::DecapsulationKeyRejectNonContrib,
) -> Result<Zeroizing<[u8; 32]>, WrapError> {
    let ct = x_wing::Ciphertext::try_from(enc).map_err(|_| WrapError::Malformed)?;
    let mut ss = sk_r
        .try_decapsulate(&ct)
        .map_err(|_| WrapError::NonContributory)?;
    let mut shared = Zeroizing::new([0u8; 32]);
    shared.copy_from_slice(&ss);
    ss.as_mut_slice().zeroize();
    Ok(shared)
}

/// The base-mode encryption context (RFC 9180 §5.1).
pub(crate) struct Context {
    key: Zeroizing<[u8; 32]>,
    base_nonce: [u8; 12],
    // Ward exports nothing; the secret is kept so the RFC's export vectors
    // check the whole key schedule.
    #[cfg_attr(not(test), allow(dead_code))]
    exporter_secret: Zeroizing<[u8; 32]>,
    #[cfg(test)]
    suite: Vec<u8>,
}

impl Context {
    /// The base-mode key schedule for `suite` (`"HPKE" || ids`): only
    /// [`XWING_SUITE`] outside tests.
    pub(crate) fn key_schedule(suite: &[u8], shared_secret: &[u8; 32], info: &[u8]) -> Self {
        let psk_id_hash = labeled_extract(suite, b"", b"psk_id_hash", b"");
        let info_hash = labeled_extract(suite, b"", b"info_hash", info);
        let mut ctx = [0u8; 65];
        ctx[0] = MODE_BASE;
        ctx[1..33].copy_from_slice(&*psk_id_hash);
        ctx[33..].copy_from_slice(&*info_hash);
        let secret = labeled_extract(suite, shared_secret, b"secret", b"");
        let mut key = Zeroizing::new([0u8; 32]);
        labeled_expand(suite, &secret, b"key", &ctx, &mut *key);
        let mut base_nonce = [0u8; 12];
        labeled_expand(suite, &secret, b"base_nonce", &ctx, &mut base_nonce);
        let mut exporter_secret = Zeroizing::new([0u8; 32]);
        labeled_expand(suite, &secret, b"exp", &ctx, &mut *exporter_secret);
        Self {
            key,
            base_nonce,
            exporter_secret,
            #[cfg(test)]
            suite: suite.to_vec(),
        }
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut nonce = self.base_nonce;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    pub(crate) fn seal(&self, seq: u64, aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&(*self.key).into());
        let nonce = self.nonce(seq);
        // Encryption fails only for inputs over ~256 GiB.
        cipher
            .encrypt(&nonce.into(), Payload { msg: pt, aad })
            .unwrap_or_default()
    }

    pub(crate) fn open(
        &self,
        seq: u64,
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        let cipher = ChaCha20Poly1305::new(&(*self.key).into());
        let nonce = self.nonce(seq);
        cipher
            .decrypt(&nonce.into(), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| WrapError::Undecryptable)
    }

    #[cfg(test)]
    fn export(&self, exporter_context: &[u8], out: &mut [u8]) {
        labeled_expand(
            &self.suite,
            &self.exporter_secret,
            b"sec",
            exporter_context,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use subtle::ConstantTimeEq;
    use x25519_dalek::{PublicKey, StaticSecret};

    // DHKEM(X25519, HKDF-SHA256), test only: RFC 9180's A.2 vectors use it,
    // and they pin the key schedule that X-Wing's suite shares.
    const KEM_SUITE: &[u8] = b"KEM\x00\x20";
    const HPKE_SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";

    /// An X25519 key pair derived from input keying material (RFC 9180 §7.1.3).
    fn derive_key_pair(ikm: &[u8]) -> (StaticSecret, PublicKey) {
        let dkp_prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm);
        let mut sk = Zeroizing::new([0u8; 32]);
        labeled_expand(KEM_SUITE, &dkp_prk, b"sk", b"", &mut *sk);
        let sk = StaticSecret::from(*sk);
        let pk = PublicKey::from(&sk);
        (sk, pk)
    }

    fn extract_and_expand(dh: &[u8; 32], enc: &[u8; 32], pk_r: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        let eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh);
        let mut kem_context = [0u8; 64];
        kem_context[..32].copy_from_slice(enc);
        kem_context[32..].copy_from_slice(pk_r);
        let mut shared = Zeroizing::new([0u8; 32]);
        labeled_expand(
            KEM_SUITE,
            &eae_prk,
            b"shared_secret",
            &kem_context,
            &mut *shared,
        );
        shared
    }

    fn dh(sk: &StaticSecret, pk: &PublicKey) -> Result<Zeroizing<[u8; 32]>, WrapError> {
        let shared = sk.diffie_hellman(pk);
        let bytes = Zeroizing::new(shared.to_bytes());
        // RFC 9180 §7.1.4: abort on an all-zero DH output (a low-order point).
        if bool::from(bytes.ct_eq(&[0u8; 32])) {
            return Err(WrapError::NonContributory);
        }
        Ok(bytes)
    }

    /// `Encap(pkR)` with the ephemeral key derived from `ikm_e`:
    /// returns `(shared_secret, enc)`.
    fn encap(
        pk_r: &PublicKey,
        ikm_e: &[u8; 32],
    ) -> Result<(Zeroizing<[u8; 32]>, [u8; 32]), WrapError> {
        let (sk_e, pk_e) = derive_key_pair(ikm_e);
        let dh = dh(&sk_e, pk_r)?;
        let enc = pk_e.to_bytes();
        Ok((extract_and_expand(&dh, &enc, pk_r.as_bytes()), enc))
    }

    /// `Decap(enc, skR)`: returns the shared secret. `pk_r` is `skR`'s public
    /// key, passed in so it is not recomputed on every unwrap.
    fn decap(
        enc: &[u8; 32],
        sk_r: &StaticSecret,
        pk_r: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>, WrapError> {
        let pk_e = PublicKey::from(*enc);
        let dh = dh(sk_r, &pk_e)?;
        Ok(extract_and_expand(&dh, enc, pk_r))
    }

    const RFC_VECTORS: &str =
        include_str!("../../vectors/rfc9180-a2-x25519-sha256-chacha20poly1305-base.json");

    fn h(v: &Value) -> Vec<u8> {
        hex::decode(v.as_str().unwrap()).unwrap()
    }

    fn arr(v: &Value) -> [u8; 32] {
        h(v).try_into().unwrap()
    }

    #[test]
    fn rfc9180_a2_base_mode_vectors() {
        let v: Value = serde_json::from_str(RFC_VECTORS).unwrap();
        assert_eq!(
            (v["mode"].as_u64(), v["kem_id"].as_u64()),
            (Some(0), Some(32))
        );
        assert_eq!(
            (v["kdf_id"].as_u64(), v["aead_id"].as_u64()),
            (Some(1), Some(3))
        );

        // DeriveKeyPair from both ikm values.
        let (sk_e, pk_e) = derive_key_pair(&h(&v["ikmE"]));
        assert_eq!(sk_e.to_bytes().to_vec(), h(&v["skEm"]));
        assert_eq!(pk_e.as_bytes().to_vec(), h(&v["pkEm"]));
        let (sk_r, pk_r) = derive_key_pair(&h(&v["ikmR"]));
        assert_eq!(sk_r.to_bytes().to_vec(), h(&v["skRm"]));
        assert_eq!(pk_r.as_bytes().to_vec(), h(&v["pkRm"]));

        // Encap and Decap agree with the RFC.
        let (shared, enc) = encap(&pk_r, &arr(&v["ikmE"])).unwrap();
        assert_eq!(enc.to_vec(), h(&v["enc"]));
        assert_eq!(shared.to_vec(), h(&v["shared_secret"]));
        let shared_r = decap(&enc, &sk_r, pk_r.as_bytes()).unwrap();
        assert_eq!(shared_r.to_vec(), h(&v["shared_secret"]));

        // Key schedule.
        let ctx = Context::key_schedule(HPKE_SUITE, &shared, &h(&v["info"]));
        assert_eq!(ctx.key.to_vec(), h(&v["key"]));
        assert_eq!(ctx.base_nonce.to_vec(), h(&v["base_nonce"]));
        assert_eq!(ctx.exporter_secret.to_vec(), h(&v["exporter_secret"]));

        // All encryptions, at their sequence numbers, both ways.
        let encs = v["encryptions"].as_array().unwrap();
        assert_eq!(encs.len(), 6);
        for e in encs {
            let seq = e["sequence_number"].as_u64().unwrap();
            assert_eq!(ctx.nonce(seq).to_vec(), h(&e["nonce"]));
            let ct = ctx.seal(seq, &h(&e["aad"]), &h(&e["pt"]));
            assert_eq!(ct, h(&e["ct"]), "seq {seq}");
            let pt = ctx.open(seq, &h(&e["aad"]), &ct).unwrap();
            assert_eq!(pt.to_vec(), h(&e["pt"]));
        }

        // All exports.
        let exports = v["exports"].as_array().unwrap();
        assert_eq!(exports.len(), 3);
        for x in exports {
            let len = x["L"].as_u64().unwrap() as usize;
            let mut out = vec![0u8; len];
            ctx.export(&h(&x["exporter_context"]), &mut out);
            assert_eq!(out, h(&x["exported_value"]));
        }
    }

    const XWING_VECTORS: &str = include_str!("../../vectors/xwing-draft06-kem.json");

    /// draft-connolly-cfrg-xwing-kem-06 Appendix C: key generation from the
    /// seed, derandomised encapsulation from `eseed`, and decapsulation.
    #[test]
    fn xwing_draft06_vectors() {
        use crate::keys::UserEncryptionKey;
        let v: Value = serde_json::from_str(XWING_VECTORS).unwrap();
        let vs = v.as_array().unwrap();
        assert_eq!(vs.len(), 3);
        for t in vs {
            assert_eq!(h(&t["seed"]), h(&t["sk"]), "the seed is the key");
            let sk = UserEncryptionKey::import_secret(&h(&t["sk"])).unwrap();
            let pk = sk.public_key();
            assert_eq!(pk.as_bytes().to_vec(), h(&t["pk"]));
            // The public key parses back, with every check passing.
            assert_eq!(EncryptionPublicKey::from_bytes(&h(&t["pk"])), Ok(pk));
            let eseed: [u8; ESEED_BYTES] = h(&t["eseed"]).try_into().unwrap();
            let (ss, ct) = xwing_encap(&pk, &eseed).unwrap();
            assert_eq!(ct, h(&t["ct"]));
            assert_eq!(ss.to_vec(), h(&t["ss"]));
            let back = xwing_decap(&ct, sk.secret()).unwrap();
            assert_eq!(back.to_vec(), h(&t["ss"]));
        }
    }

    #[test]
    fn low_order_peer_key_is_rejected() {
        // The all-zero u-coordinate is a low-order point: DH gives all zeros.
        let zero = PublicKey::from([0u8; 32]);
        assert_eq!(
            encap(&zero, &[7u8; 32]).err(),
            Some(WrapError::NonContributory)
        );
        let (sk, _) = derive_key_pair(&[1u8; 32]);
        assert_eq!(
            decap(&[0u8; 32], &sk, &[9u8; 32]).err(),
            Some(WrapError::NonContributory)
        );
        // u = 1 is of order 1 as well.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(
            decap(&one, &sk, &[9u8; 32]).err(),
            Some(WrapError::NonContributory)
        );
    }
}
