//! Ward's language-neutral test vectors (`vectors/ward-v*-*.json`): their
//! generator, and a replay that checks them the way an independent
//! implementation would.
//!
//! * `vectors_match_the_generator` rebuilds every vector in memory from fixed
//!   inputs and asserts that the committed files are byte-for-byte identical,
//!   so any change of format or output shows up in review. With
//!   `WARD_WRITE_VECTORS=1` it (re)writes them instead:
//!
//!   ```sh
//!   WARD_WRITE_VECTORS=1 cargo test -p ward-core --test vectors
//!   ```
//!
//! * `committed_vectors_replay` reads the committed JSON only, decodes the
//!   hex, and runs the core's public API (parse, open, unwrap, verify_log,
//!   update, verify_invite, verify_response) plus the framing rule and plain
//!   Ed25519/XChaCha20-Poly1305 where the core keeps a step private. It shares
//!   no state with the generator.
//!
//! # Where every input comes from
//!
//! Every secret and every "random" value is `SHA-256(ascii label)` (truncated
//! to the length needed); longer content is `SHA-256(label + " 0") ||
//! SHA-256(label + " 1") || ...`. Each file records the label beside the value.
//!
//! Functions that draw from an RNG are fed by [`ScriptRng`], which hands out
//! pre-set byte strings and fails the test unless each `fill_bytes` call asks
//! for exactly the next string's length. The draw orders it enforces:
//!
//! | operation | draws, in order |
//! |---|---|
//! | `invite::create_invite` | 32 (the delegation key's Ed25519 seed) |
//! | `wrap::wrap_resource_key`, `wrap::grant_user_key` | 64 (X-Wing `eseed`) |
//! | `envelope::seal` | 32 resource key, 16 resource id, 24 nonce, then 64 (X-Wing `eseed`) per recipient, in recipient order; nothing when a request is refused |
//!
//! Signing (Ed25519) and everything else is deterministic and draws nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::convert::Infallible;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::{TryCryptoRng, TryRng};
use serde_json::Value;
use sha2::{Digest, Sha256};
use ward_core::chain::{self, VerifiedUser};
use ward_core::envelope::{self, ContentType, ReceivedEnvelope, SealRequest};
use ward_core::invite::{self, InviteDetails};
use ward_core::keys::{
    DelegationKey, DeviceEncryptionKey, DeviceSigningKey, EncryptionPublicKey, OrgRootKey,
    RelayServiceKey, ResourceKey, SigningPublicKey, UserEncryptionKey,
};
use ward_core::proto::Message;
use ward_core::proto::v1::{
    AuthChallenge, AuthResponse, DeviceGrant, DeviceKeys, Envelope, EnvelopeHeader, Invite,
    SignedInvite, SignedStatement, Statement, UserCreation, WrappedKey, statement::Body,
};
use ward_core::{AuthError, ConversationId, ResourceId, auth, labels, padding, wrap};

#[path = "room_vectors/mod.rs"]
mod room_vectors;

const VECTOR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/");

// ---------------------------------------------------------------------------
// Deterministic inputs
// ---------------------------------------------------------------------------

/// `SHA-256(label)`.
fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// The first `n` (<= 32) bytes of `SHA-256(label)`.
fn short(label: &str, n: usize) -> Vec<u8> {
    seed(label)[..n].to_vec()
}

/// `SHA-256(label + " 0") || SHA-256(label + " 1") || ...`, truncated to `n`.
fn stream(label: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut i = 0u32;
    while out.len() < n {
        out.extend_from_slice(&seed(&format!("{label} {i}")));
        i += 1;
    }
    out.truncate(n);
    out
}

/// An RNG that returns pre-set byte strings, one per `fill_bytes` call, and
/// fails unless each call asks for exactly the next string's length.
struct ScriptRng {
    draws: VecDeque<Vec<u8>>,
}

impl ScriptRng {
    fn new(draws: &[&[u8]]) -> Self {
        Self {
            draws: draws.iter().map(|d| d.to_vec()).collect(),
        }
    }

    /// Asserts every pre-set draw was consumed.
    fn done(self) {
        assert!(self.draws.is_empty(), "{} draws unused", self.draws.len());
    }
}

impl TryRng for ScriptRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        panic!("Ward draws randomness only through fill_bytes")
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        panic!("Ward draws randomness only through fill_bytes")
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let next = self.draws.pop_front().expect("more draws than scripted");
        assert_eq!(next.len(), dst.len(), "draw of an unexpected length");
        dst.copy_from_slice(&next);
        Ok(())
    }
}

impl TryCryptoRng for ScriptRng {}

/// The framing rule of SECURITY.md §3, written out independently of the core:
/// `label || 0x00 || (u32_be(len(part)) || part)*`.
fn framed(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = label.to_vec();
    out.push(0);
    for p in parts {
        out.extend_from_slice(&u32::try_from(p.len()).unwrap().to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

// ---------------------------------------------------------------------------
// A tiny JSON writer: insertion-ordered objects, two-space indent. Written
// here rather than through serde_json::Value so that key order does not
// depend on serde_json's features.
// ---------------------------------------------------------------------------

enum J {
    S(String),
    N(u64),
    B(bool),
    Null,
    A(Vec<J>),
    O(Vec<(String, J)>),
}

fn h(bytes: impl AsRef<[u8]>) -> J {
    J::S(hex::encode(bytes))
}

fn s(text: &str) -> J {
    J::S(text.to_owned())
}

fn o(pairs: Vec<(&str, J)>) -> J {
    J::O(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn render(j: &J, indent: usize, out: &mut String) {
    let pad = |n: usize, out: &mut String| out.extend(std::iter::repeat_n("  ", n));
    match j {
        J::S(text) => out.push_str(&serde_json::to_string(text).unwrap()),
        J::N(n) => out.push_str(&n.to_string()),
        J::Null => out.push_str("null"),
        J::B(b) => out.push_str(if *b { "true" } else { "false" }),
        J::A(items) if items.is_empty() => out.push_str("[]"),
        J::O(items) if items.is_empty() => out.push_str("{}"),
        J::A(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                pad(indent + 1, out);
                render(item, indent + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(indent, out);
            out.push(']');
        }
        J::O(items) => {
            out.push_str("{\n");
            for (i, (k, v)) in items.iter().enumerate() {
                pad(indent + 1, out);
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(": ");
                render(v, indent + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(indent, out);
            out.push('}');
        }
    }
}

fn to_text(j: &J) -> String {
    let mut out = String::new();
    render(j, 0, &mut out);
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------
// The fixture: one organisation, three clinicians, a stranger.
// ---------------------------------------------------------------------------

const ALICE: &str = "alice@chu-example";
const BOB: &str = "bob@chu-example";
const CAROL: &str = "carol@chu-example";
/// 2026-11-29T00:00:00Z, unix seconds (the testkit's `KIT_TIME`).
const T0: u64 = 1_795_910_400;
const WEEK: u64 = 7 * 86_400;

const L_ROOT: &str = "ward vector org root";
const L_STRANGER: &str = "ward vector stranger signing key";
const L_ALICE_DELEGATION: &str = "ward vector alice delegation";
const L_ALICE_USER_1: &str = "ward vector alice user key 1";
const L_ALICE_USER_2: &str = "ward vector alice user key 2";
const L_ALICE_DEV1_SIG: &str = "ward vector alice device 1 signing";
const L_ALICE_DEV1_ENC: &str = "ward vector alice device 1 encryption";
const L_ALICE_DEV2_SIG: &str = "ward vector alice device 2 signing";
const L_RELAY_SERVICE: &str = "ward vector relay service key";
const L_ALICE_DEV2_ENC: &str = "ward vector alice device 2 encryption";
const L_ALICE_DEV3_SIG: &str = "ward vector alice device 3 signing";
const L_ALICE_DEV3_ENC: &str = "ward vector alice device 3 encryption";
const L_BOB_DELEGATION: &str = "ward vector bob delegation";
const L_BOB_USER: &str = "ward vector bob user key";
const L_BOB_DEV_SIG: &str = "ward vector bob device signing";
const L_BOB_DEV_ENC: &str = "ward vector bob device encryption";
const L_CAROL_USER: &str = "ward vector carol user key";

fn sig_key<K>(label: &str, import: fn(&[u8]) -> Result<K, ward_core::KeyError>) -> K {
    import(&seed(label)).unwrap()
}

fn root() -> OrgRootKey {
    sig_key(L_ROOT, OrgRootKey::import_secret)
}

fn dev(label: &str) -> DeviceSigningKey {
    sig_key(label, DeviceSigningKey::import_secret)
}

fn denc(label: &str) -> DeviceEncryptionKey {
    sig_key(label, DeviceEncryptionKey::import_secret)
}

fn ukey(label: &str) -> UserEncryptionKey {
    sig_key(label, UserEncryptionKey::import_secret)
}

fn details(user_id: &str, name: &str, profession: &str, registry: &str) -> InviteDetails {
    InviteDetails {
        user_id: user_id.into(),
        display_name: name.into(),
        profession: profession.into(),
        registry_number: registry.into(),
        expires_at: T0 + WEEK,
    }
}

fn alice_details() -> InviteDetails {
    details(ALICE, "Dr Alice Martin", "physician", "10101234567")
}

fn bob_details() -> InviteDetails {
    details(BOB, "Bob Durand", "nurse", "20207654321")
}

/// The invite of `user`, signed by `signer`, delegating to `delegation_label`'s seed.
fn make_invite(
    signer: &OrgRootKey,
    d: &InviteDetails,
    delegation_label: &str,
) -> (SignedInvite, DelegationKey) {
    let mut rng = ScriptRng::new(&[&seed(delegation_label)]);
    let out = invite::create_invite(&mut rng, signer, d).unwrap();
    rng.done();
    out
}

/// Alice's log: creation by delegation (T0), device 1 adds device 2
/// (T0+60), the root revokes device 1 (T0+120), device 2 rotates the user
/// key (T0+180).
struct AliceLog {
    invite: SignedInvite,
    entries: Vec<SignedStatement>,
    /// `states[i]`: the verified state after entries `0..=i`.
    states: Vec<VerifiedUser>,
}

fn alice_log() -> AliceLog {
    let root = root();
    let (invite, delegation) = make_invite(&root, &alice_details(), L_ALICE_DELEGATION);
    let e0 = chain::create_user(
        &root.public_key(),
        &invite,
        &delegation,
        &ukey(L_ALICE_USER_1).public_key(),
        &dev(L_ALICE_DEV1_SIG).public_key(),
        &denc(L_ALICE_DEV1_ENC).public_key(),
        T0,
    )
    .unwrap();
    let s0 = chain::verify_log(&root.public_key(), ALICE, std::slice::from_ref(&e0)).unwrap();
    let e1 = s0.add_device(
        &dev(L_ALICE_DEV1_SIG),
        &dev(L_ALICE_DEV2_SIG),
        &denc(L_ALICE_DEV2_ENC).public_key(),
        T0 + 60,
    );
    let mut s1 = s0.clone();
    s1.apply(&root.public_key(), &e1).unwrap();
    let e2 = s1.revoke_device_as_root(&root, &dev(L_ALICE_DEV1_SIG).public_key(), T0 + 120);
    let mut s2 = s1.clone();
    s2.apply(&root.public_key(), &e2).unwrap();
    // The root chose no key; device 2 rotates the user key.
    let e3 = s2.rotate_user_key(
        &dev(L_ALICE_DEV2_SIG),
        &ukey(L_ALICE_USER_2).public_key(),
        T0 + 180,
    );
    let mut s3 = s2.clone();
    s3.apply(&root.public_key(), &e3).unwrap();
    let entries = vec![e0, e1, e2, e3];
    assert_eq!(
        chain::verify_log(&root.public_key(), ALICE, &entries).unwrap(),
        s3
    );
    AliceLog {
        invite,
        entries,
        states: vec![s0, s1, s2, s3],
    }
}

fn bob_log() -> (Vec<SignedStatement>, VerifiedUser) {
    let root = root();
    let (invite, delegation) = make_invite(&root, &bob_details(), L_BOB_DELEGATION);
    let e0 = chain::create_user(
        &root.public_key(),
        &invite,
        &delegation,
        &ukey(L_BOB_USER).public_key(),
        &dev(L_BOB_DEV_SIG).public_key(),
        &denc(L_BOB_DEV_ENC).public_key(),
        T0 + 30,
    )
    .unwrap();
    let log = vec![e0];
    let state = chain::verify_log(&root.public_key(), BOB, &log).unwrap();
    (log, state)
}

fn log_json(entries: &[SignedStatement]) -> J {
    J::A(
        entries
            .iter()
            .map(|e| {
                o(vec![
                    ("statement", h(&e.statement)),
                    ("signature", h(&e.signature)),
                ])
            })
            .collect(),
    )
}

/// A vector file: its description and format version, then its content.
fn file(description: &str, mut rest: Vec<(&str, J)>) -> J {
    let mut pairs = vec![("description", s(description)), ("version", J::N(1))];
    pairs.append(&mut rest);
    o(pairs)
}

fn nonce24(bytes: &[u8]) -> [u8; 24] {
    bytes.try_into().unwrap()
}

// ---------------------------------------------------------------------------
// ward-v2-keys.json
// ---------------------------------------------------------------------------

fn gen_keys() -> J {
    let signing: [(&str, &str); 7] = [
        ("OrgRootKey", L_ROOT),
        ("DelegationKey", L_ALICE_DELEGATION),
        ("DeviceSigningKey", L_ALICE_DEV1_SIG),
        ("DeviceSigningKey", L_ALICE_DEV2_SIG),
        ("DeviceSigningKey", L_ALICE_DEV3_SIG),
        ("DeviceSigningKey", L_BOB_DEV_SIG),
        ("DeviceSigningKey", L_STRANGER),
    ];
    let encryption: [(&str, &str); 8] = [
        ("UserEncryptionKey", L_ALICE_USER_1),
        ("UserEncryptionKey", L_ALICE_USER_2),
        ("UserEncryptionKey", L_BOB_USER),
        ("UserEncryptionKey", L_CAROL_USER),
        ("DeviceEncryptionKey", L_ALICE_DEV1_ENC),
        ("DeviceEncryptionKey", L_ALICE_DEV2_ENC),
        ("DeviceEncryptionKey", L_ALICE_DEV3_ENC),
        ("DeviceEncryptionKey", L_BOB_DEV_ENC),
    ];
    let mut keys = Vec::new();
    for (ty, label) in signing {
        // All Ed25519 key types share one derivation: check each type agrees.
        let public = match ty {
            "OrgRootKey" => sig_key(label, OrgRootKey::import_secret).public_key(),
            "DelegationKey" => sig_key(label, DelegationKey::import_secret).public_key(),
            _ => dev(label).public_key(),
        };
        assert_eq!(public, dev(label).public_key());
        keys.push(o(vec![
            ("type", s(ty)),
            ("algorithm", s("Ed25519")),
            ("label", s(label)),
            ("secret", h(seed(label))),
            ("public", h(public.as_bytes())),
        ]));
    }
    for (ty, label) in encryption {
        let public = match ty {
            "UserEncryptionKey" => ukey(label).public_key(),
            _ => denc(label).public_key(),
        };
        assert_eq!(public, ukey(label).public_key());
        assert_eq!(
            public.id().as_bytes(),
            &sha256(&framed(labels::HASH_KEY_ID, &[public.as_bytes()]))
        );
        keys.push(o(vec![
            ("type", s(ty)),
            ("algorithm", s("X-Wing")),
            ("label", s(label)),
            ("secret", h(seed(label))),
            ("public", h(public.as_bytes())),
            ("key_id", h(public.id().as_bytes())),
        ]));
    }

    let all_labels: [(&str, &[u8]); 15] = [
        ("SIG_INVITE", labels::SIG_INVITE),
        ("SIG_STATEMENT", labels::SIG_STATEMENT),
        ("SIG_DEVICE_POSSESSION", labels::SIG_DEVICE_POSSESSION),
        ("SIG_ENVELOPE", labels::SIG_ENVELOPE),
        ("HASH_CIPHERTEXT", labels::HASH_CIPHERTEXT),
        ("ENVELOPE_AEAD_KEY", labels::ENVELOPE_AEAD_KEY),
        ("ENVELOPE_KEY_COMMITMENT", labels::ENVELOPE_KEY_COMMITMENT),
        ("SIG_AUTH", labels::SIG_AUTH),
        ("SIG_RELAY_LINK", labels::SIG_RELAY_LINK),
        ("SIG_ENROL_AUTH", labels::SIG_ENROL_AUTH),
        ("HASH_INVITE", labels::HASH_INVITE),
        ("HASH_ENTRY", labels::HASH_ENTRY),
        ("WRAP_INFO", labels::WRAP_INFO),
        ("GRANT_INFO", labels::GRANT_INFO),
        ("HASH_KEY_ID", labels::HASH_KEY_ID),
    ];
    let labels_json = J::A(
        all_labels
            .iter()
            .map(|(name, l)| {
                o(vec![
                    ("name", s(name)),
                    ("ascii", s(std::str::from_utf8(l).unwrap())),
                    ("hex", h(l)),
                ])
            })
            .collect(),
    );

    let log = alice_log();
    let framing_cases: Vec<(&[u8], Vec<Vec<u8>>)> = vec![
        (labels::SIG_AUTH, vec![]),
        (labels::HASH_ENTRY, vec![vec![]]),
        (
            labels::SIG_ENVELOPE,
            vec![vec![0x01], vec![], vec![0xab, 0xcd, 0xef]],
        ),
        (labels::HASH_INVITE, vec![log.invite.invite.clone()]),
        (
            labels::HASH_ENTRY,
            vec![
                log.entries[0].statement.clone(),
                log.entries[0].signature.clone(),
            ],
        ),
    ];
    // The last two are the hashes the chain uses: check them against the core.
    let invite_hash = sha256(&framed(labels::HASH_INVITE, &[&log.invite.invite]));
    assert_eq!(&invite_hash, log.states[0].invite().hash.as_slice());
    let entry0 = sha256(&framed(
        labels::HASH_ENTRY,
        &[&log.entries[0].statement, &log.entries[0].signature],
    ));
    assert_eq!(entry0, chain::entry_hash(&log.entries[0]));
    let framing_json = J::A(
        framing_cases
            .iter()
            .map(|(label, parts)| {
                let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                let f = framed(label, &refs);
                o(vec![
                    ("label", s(std::str::from_utf8(label).unwrap())),
                    ("parts", J::A(parts.iter().map(h).collect())),
                    ("framed", h(&f)),
                    ("sha256", h(sha256(&f))),
                ])
            })
            .collect(),
    );

    let padding_json = J::A(
        [0usize, 1, 5, 252, 253, 1000, 20_000, 1_000_000, 16 << 20]
            .iter()
            .map(|&n| {
                o(vec![
                    ("content_len", J::N(n as u64)),
                    ("padded_len", J::N(padding::padded_len(n) as u64)),
                ])
            })
            .collect(),
    );

    file(
        "Ward v2 keys, labels, framing and padding lengths. Every secret is SHA-256 of its ASCII \
         label. Ed25519 secrets are RFC 8032 32-byte seeds; X-Wing secrets are 32-byte \
         decapsulation-key seeds (draft-connolly-cfrg-xwing-kem-06 §5.2), their public keys the \
         1216-byte encapsulation keys, key_id = SHA-256(framed(HASH_KEY_ID, [public])). Framing: label || 0x00 || (u32_be(len(part)) \
         || part)* (SECURITY.md §3); hashes are SHA-256 of the framed bytes. Padding: \
         padded_len = max(256, padme(4 + content_len)).",
        vec![
            ("keys", J::A(keys)),
            ("labels", labels_json),
            ("framing", framing_json),
            ("padding", padding_json),
        ],
    )
}

// ---------------------------------------------------------------------------
// ward-v2-wrap.json
// ---------------------------------------------------------------------------

const L_WRAP_RK: &str = "ward vector wrap resource key";
const L_WRAP_RID: &str = "ward vector wrap resource id";
const L_WRAP_ESEED: &str = "ward vector wrap eseed";
const L_GRANT_ESEED: &str = "ward vector grant eseed";
const L_WRONG_INFO_ESEED: &str = "ward vector wrong info eseed";

/// The X-Wing HPKE suite id, `"HPKE" || 0x647a || 0x0001 || 0x0003` (§6.2).
const XWING_SUITE: &[u8] = b"HPKE\x64\x7a\x00\x01\x00\x03";

/// HPKE base mode with X-Wing as SECURITY.md §6.2 writes it, independently of
/// the core: the `x-wing` crate for the KEM (its own vectors are checked in
/// the core), hkdf and chacha20poly1305 for the rest.
struct Sealed32 {
    shared_secret: Vec<u8>,
    key: Vec<u8>,
    base_nonce: Vec<u8>,
    enc: Vec<u8>,
    ct: Vec<u8>,
}

fn spec_seal(pk: &[u8], eseed: &[u8], info: &[u8], aad: &[u8], pt: &[u8]) -> Sealed32 {
    use chacha20poly1305::ChaCha20Poly1305;
    use hkdf::Hkdf;
    let ek = x_wing::EncapsulationKey::try_from(pk).unwrap();
    let eseed: [u8; 64] = eseed.try_into().unwrap();
    let (enc, ss) = ek.encapsulate_deterministic(&eseed.into());
    let extract = |salt: &[u8], label: &[u8], ikm: &[u8]| -> Vec<u8> {
        let input = [b"HPKE-v1".as_slice(), XWING_SUITE, label, ikm].concat();
        Hkdf::<Sha256>::extract(Some(salt), &input).0.to_vec()
    };
    let expand = |prk: &[u8], label: &[u8], info: &[u8], n: u16| -> Vec<u8> {
        let i = [&n.to_be_bytes()[..], b"HPKE-v1", XWING_SUITE, label, info].concat();
        let mut out = vec![0u8; usize::from(n)];
        Hkdf::<Sha256>::from_prk(prk)
            .unwrap()
            .expand(&i, &mut out)
            .unwrap();
        out
    };
    let ks_context = [
        &[0u8][..],
        &extract(b"", b"psk_id_hash", b""),
        &extract(b"", b"info_hash", info),
    ]
    .concat();
    let secret = extract(&ss, b"secret", b"");
    let key = expand(&secret, b"key", &ks_context, 32);
    let base_nonce = expand(&secret, b"base_nonce", &ks_context, 12);
    let k: [u8; 32] = key.clone().try_into().unwrap();
    let n: [u8; 12] = base_nonce.clone().try_into().unwrap();
    let ct = ChaCha20Poly1305::new(&k.into())
        .encrypt(&n.into(), Payload { msg: pt, aad })
        .unwrap();
    Sealed32 {
        shared_secret: ss.to_vec(),
        key,
        base_nonce,
        enc: enc.to_vec(),
        ct,
    }
}

fn key_id(public: &EncryptionPublicKey) -> Vec<u8> {
    public.id().as_bytes().to_vec()
}

/// Alice's resource key wrap, as in the wrap file.
fn wrap_vector() -> (ResourceKey, ResourceId, WrappedKey) {
    let rk = ResourceKey::import_secret(&seed(L_WRAP_RK)).unwrap();
    let rid = ResourceId::from_slice(&short(L_WRAP_RID, 16)).unwrap();
    let mut rng = ScriptRng::new(&[&stream(L_WRAP_ESEED, 64)]);
    let w =
        wrap::wrap_resource_key(&mut rng, &rk, &rid, &ukey(L_ALICE_USER_2).public_key()).unwrap();
    rng.done();
    (rk, rid, w)
}

/// Alice's user key 2 granted to her device 2, as in the wrap file.
fn grant_vector() -> DeviceGrant {
    let mut rng = ScriptRng::new(&[&stream(L_GRANT_ESEED, 64)]);
    let g = wrap::grant_user_key(
        &mut rng,
        &ukey(L_ALICE_USER_2),
        &denc(L_ALICE_DEV2_ENC).public_key(),
    )
    .unwrap();
    rng.done();
    g
}

fn grant_inputs(g: &DeviceGrant, device_label: &str, user_label: &str) -> Vec<(&'static str, J)> {
    vec![
        ("grant", h(g.encode_to_vec())),
        ("device_secret", h(seed(device_label))),
        (
            "expected_user_public",
            h(ukey(user_label).public_key().as_bytes()),
        ),
    ]
}

/// Wrap and grant cases that must fail, beyond the binding checks of the
/// negative file: wrong keys, tampered encapsulations, wrong info, bad keys.
#[allow(clippy::too_many_lines)]
fn wrap_negative_cases() -> Vec<Case> {
    let (rk, rid, w) = wrap_vector();
    let alice = ukey(L_ALICE_USER_2);
    let bob = ukey(L_BOB_USER);
    let mut cases = Vec::new();
    let mut to_bob = w.clone();
    to_bob.recipient_key = key_id(&bob.public_key());
    cases.push(case(
        "wrap_wrong_key",
        "alice's wrapped key with recipient_key rewritten to bob's key id, unwrapped by bob: \
         X-Wing decapsulates to another secret (ML-KEM's implicit rejection) and the AEAD refuses",
        "unwrap_resource_key",
        unwrap_inputs(&to_bob, rid.as_bytes(), L_BOB_USER),
        "WrapError::Undecryptable",
        vec![],
    ));
    for (name, description, at) in [
        (
            "wrap_tampered_enc_mlkem",
            "first byte of enc (the ML-KEM-768 ciphertext) flipped",
            0usize,
        ),
        (
            "wrap_tampered_enc_x25519",
            "first byte of enc's X25519 part (enc[1088]) flipped",
            1088,
        ),
    ] {
        let mut t = w.clone();
        t.enc[at] ^= 1;
        cases.push(case(
            name,
            description,
            "unwrap_resource_key",
            unwrap_inputs(&t, rid.as_bytes(), L_ALICE_USER_2),
            "WrapError::Undecryptable",
            vec![],
        ));
    }
    let mut short_enc = w.clone();
    short_enc.enc.pop();
    cases.push(case(
        "wrap_short_enc",
        "enc of 1119 bytes",
        "unwrap_resource_key",
        unwrap_inputs(&short_enc, rid.as_bytes(), L_ALICE_USER_2),
        "WrapError::Malformed",
        vec![],
    ));
    let mut aad = rid.as_bytes().to_vec();
    aad.extend_from_slice(&key_id(&alice.public_key()));
    let wrong = spec_seal(
        alice.public_key().as_bytes(),
        &stream(L_WRONG_INFO_ESEED, 64),
        labels::GRANT_INFO,
        &aad,
        &*rk.export_secret(),
    );
    let wrong_info = WrappedKey {
        enc: wrong.enc,
        ciphertext: wrong.ct,
        ..w.clone()
    };
    cases.push(case(
        "wrap_wrong_info",
        "a resource key sealed to alice with the right aad but info = GRANT_INFO",
        "unwrap_resource_key",
        unwrap_inputs(&wrong_info, rid.as_bytes(), L_ALICE_USER_2),
        "WrapError::Undecryptable",
        vec![],
    ));

    let g = grant_vector();
    cases.push(case(
        "grant_wrong_device",
        "alice's grant to device 2 opened by device 1",
        "accept_grant",
        grant_inputs(&g, L_ALICE_DEV1_ENC, L_ALICE_USER_2),
        "WrapError::WrongRecipient",
        vec![],
    ));
    cases.push(case(
        "grant_wrong_user_key",
        "the grant of user key 2 checked against user key 1 (another version)",
        "accept_grant",
        grant_inputs(&g, L_ALICE_DEV2_ENC, L_ALICE_USER_1),
        "WrapError::WrongUserKey",
        vec![],
    ));
    let mut t = g.clone();
    t.enc[0] ^= 1;
    cases.push(case(
        "grant_tampered_enc",
        "first byte of the grant's enc flipped",
        "accept_grant",
        grant_inputs(&t, L_ALICE_DEV2_ENC, L_ALICE_USER_2),
        "WrapError::Undecryptable",
        vec![],
    ));
    let device = denc(L_ALICE_DEV2_ENC).public_key();
    let mut gaad = key_id(&alice.public_key());
    gaad.extend_from_slice(&key_id(&device));
    let wrong = spec_seal(
        device.as_bytes(),
        &stream(L_WRONG_INFO_ESEED, 64),
        labels::WRAP_INFO,
        &gaad,
        &seed(L_ALICE_USER_2),
    );
    cases.push(case(
        "grant_wrong_info",
        "alice's user secret sealed to device 2 with the right aad but info = WRAP_INFO",
        "accept_grant",
        grant_inputs(
            &DeviceGrant {
                enc: wrong.enc,
                ciphertext: wrong.ct,
                ..g.clone()
            },
            L_ALICE_DEV2_ENC,
            L_ALICE_USER_2,
        ),
        "WrapError::Undecryptable",
        vec![],
    ));
    let planted = spec_seal(
        device.as_bytes(),
        &stream(L_WRONG_INFO_ESEED, 64),
        labels::GRANT_INFO,
        &gaad,
        &seed(L_CAROL_USER),
    );
    cases.push(case(
        "grant_planted_key",
        "a well-formed grant, right info and aad, whose secret is another key (carol's): its \
         public key is not the verified user key (G6)",
        "accept_grant",
        grant_inputs(
            &DeviceGrant {
                enc: planted.enc,
                ciphertext: planted.ct,
                ..g
            },
            L_ALICE_DEV2_ENC,
            L_ALICE_USER_2,
        ),
        "WrapError::Undecryptable",
        vec![],
    ));

    let good = *alice.public_key().as_bytes();
    let mut low0 = good;
    low0[1184..].fill(0);
    let mut low1 = low0;
    low1[1184] = 1;
    let mut modulus = good;
    modulus[0] = 0xff;
    modulus[1] |= 0x0f;
    for (name, description, bytes, error) in [
        (
            "key_v1_length",
            "a 32-byte (v1, X25519-only) key",
            good[1184..].to_vec(),
            "KeyError::InvalidLength",
        ),
        (
            "key_low_order_x25519_zero",
            "alice's key with its X25519 part u = 0 (low order)",
            low0.to_vec(),
            "KeyError::InvalidPublicKey",
        ),
        (
            "key_low_order_x25519_one",
            "alice's key with its X25519 part u = 1 (low order)",
            low1.to_vec(),
            "KeyError::InvalidPublicKey",
        ),
        (
            "key_mlkem_modulus",
            "alice's key with its first ML-KEM coefficient set to 4095 >= q (FIPS 203 §7.2)",
            modulus.to_vec(),
            "KeyError::InvalidPublicKey",
        ),
    ] {
        cases.push(case(
            name,
            description,
            "parse_encryption_key",
            vec![("public", h(bytes))],
            error,
            vec![],
        ));
    }
    cases
}

fn case_json(c: Case) -> J {
    o(vec![
        ("name", s(c.name)),
        ("description", s(c.description)),
        ("operation", s(c.operation)),
        ("inputs", o(c.inputs)),
        ("error", s(&c.error)),
    ])
}

fn gen_wrap() -> J {
    let (rk, rid, w) = wrap_vector();
    let alice = ukey(L_ALICE_USER_2);
    let back = wrap::unwrap_resource_key(&w, &rid, &alice).unwrap();
    assert_eq!(*back.export_secret(), *rk.export_secret());
    let mut aad = rid.as_bytes().to_vec();
    aad.extend_from_slice(&key_id(&alice.public_key()));
    let spec = spec_seal(
        alice.public_key().as_bytes(),
        &stream(L_WRAP_ESEED, 64),
        labels::WRAP_INFO,
        &aad,
        &*rk.export_secret(),
    );
    assert_eq!((&spec.enc, &spec.ct), (&w.enc, &w.ciphertext));

    let user = ukey(L_ALICE_USER_2);
    let device = denc(L_ALICE_DEV2_ENC);
    let g = grant_vector();
    let back = wrap::accept_grant(&g, &device, &user.public_key()).unwrap();
    assert_eq!(back.public_key(), user.public_key());
    let mut gaad = key_id(&user.public_key());
    gaad.extend_from_slice(&key_id(&device.public_key()));
    let gspec = spec_seal(
        device.public_key().as_bytes(),
        &stream(L_GRANT_ESEED, 64),
        labels::GRANT_INFO,
        &gaad,
        &seed(L_ALICE_USER_2),
    );
    assert_eq!((&gspec.enc, &gspec.ct), (&g.enc, &g.ciphertext));

    file(
        "Ward v2 key wrap (SECURITY.md §6): HPKE base mode (RFC 9180) with the X-Wing KEM \
         (draft-connolly-cfrg-xwing-kem-06, kem_id 0x647a), HKDF-SHA256, ChaCha20Poly1305, one \
         seal at sequence 0. suite_id = \"HPKE\" || 0x647a || 0x0001 || 0x0003; shared_secret is \
         X-Wing's; enc is the 1120-byte X-Wing ciphertext, from EncapsulateDerand(pk, eseed) \
         with eseed the single 64-byte draw. Key ids: SHA-256(framed(HASH_KEY_ID, [public])). A \
         resource key is wrapped to a user key with info = WRAP_INFO and aad = resource_id || \
         recipient_key_id; a user key's 32-byte seed is granted to a device with info = \
         GRANT_INFO and aad = user_key_id || device_key_id. negative: inputs that must fail \
         with the error given (unwrap_resource_key, accept_grant with the expected user key \
         from the verified log, parse_encryption_key).",
        vec![
            (
                "resource_key_wrap",
                o(vec![
                    ("resource_id_label", s(L_WRAP_RID)),
                    ("resource_id", h(rid.as_bytes())),
                    ("resource_key_label", s(L_WRAP_RK)),
                    ("resource_key", h(*rk.export_secret())),
                    ("recipient_secret_label", s(L_ALICE_USER_2)),
                    ("recipient_secret", h(seed(L_ALICE_USER_2))),
                    ("recipient_public", h(alice.public_key().as_bytes())),
                    ("recipient_key_id", h(key_id(&alice.public_key()))),
                    ("info", h(labels::WRAP_INFO)),
                    ("aad", h(&aad)),
                    ("eseed_label", s(L_WRAP_ESEED)),
                    ("eseed", h(stream(L_WRAP_ESEED, 64))),
                    ("shared_secret", h(&spec.shared_secret)),
                    ("key", h(&spec.key)),
                    ("base_nonce", h(&spec.base_nonce)),
                    (
                        "wrapped_key",
                        o(vec![
                            ("resource_id", h(&w.resource_id)),
                            ("recipient_key", h(&w.recipient_key)),
                            ("enc", h(&w.enc)),
                            ("ciphertext", h(&w.ciphertext)),
                        ]),
                    ),
                    ("encoded", h(w.encode_to_vec())),
                ]),
            ),
            (
                "device_grant",
                o(vec![
                    ("user_secret_label", s(L_ALICE_USER_2)),
                    ("user_secret", h(seed(L_ALICE_USER_2))),
                    ("user_public", h(user.public_key().as_bytes())),
                    ("user_key_id", h(key_id(&user.public_key()))),
                    ("device_secret_label", s(L_ALICE_DEV2_ENC)),
                    ("device_secret", h(seed(L_ALICE_DEV2_ENC))),
                    ("device_public", h(device.public_key().as_bytes())),
                    ("device_key_id", h(key_id(&device.public_key()))),
                    ("info", h(labels::GRANT_INFO)),
                    ("aad", h(&gaad)),
                    ("eseed_label", s(L_GRANT_ESEED)),
                    ("eseed", h(stream(L_GRANT_ESEED, 64))),
                    ("shared_secret", h(&gspec.shared_secret)),
                    ("key", h(&gspec.key)),
                    ("base_nonce", h(&gspec.base_nonce)),
                    (
                        "grant",
                        o(vec![
                            ("user_key", h(&g.user_key)),
                            ("device_key", h(&g.device_key)),
                            ("enc", h(&g.enc)),
                            ("ciphertext", h(&g.ciphertext)),
                        ]),
                    ),
                    ("encoded", h(g.encode_to_vec())),
                ]),
            ),
            (
                "negative",
                J::A(wrap_negative_cases().into_iter().map(case_json).collect()),
            ),
        ],
    )
}

// ---------------------------------------------------------------------------
// ward-v2-envelope.json
// ---------------------------------------------------------------------------

/// The envelope key schedule of SECURITY.md §7.3 S4, written out from the
/// spec: `(aead_key, key_commitment)` from the resource key and resource id.
fn envelope_keys(rk: &[u8], rid: &[u8]) -> ([u8; 32], [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(rid), rk);
    let (mut aead_key, mut commitment) = ([0u8; 32], [0u8; 32]);
    hk.expand(b"ward/v2/envelope/aead-key", &mut aead_key)
        .unwrap();
    hk.expand(b"ward/v2/envelope/key-commitment", &mut commitment)
        .unwrap();
    (aead_key, commitment)
}

/// `SHA-256(frame("ward/v2/hash/envelope-ciphertext", ct))` (§7.3 S7).
fn ciphertext_digest(ct: &[u8]) -> [u8; 32] {
    sha256(&framed(b"ward/v2/hash/envelope-ciphertext", &[ct]))
}

/// The signed transcript `frame("ward/v2/sig/envelope", header, digest)` (§7.3 S8).
fn envelope_sig_input(header: &[u8], ct: &[u8]) -> Vec<u8> {
    framed(b"ward/v2/sig/envelope", &[header, &ciphertext_digest(ct)])
}

struct SealInputs {
    name: &'static str,
    prefix: &'static str,
    content_type: ContentType,
    content: Vec<u8>,
    timestamp_ms: u64,
}

fn conversation_id() -> ConversationId {
    ConversationId::from_slice(&short("ward vector conversation id", 16)).unwrap()
}

fn text_inputs() -> SealInputs {
    SealInputs {
        name: "text",
        prefix: "ward vector text envelope",
        content_type: ContentType::Text,
        content: b"Patient in bed 12: potassium 6.1 mmol/L, please review before 14:00.".to_vec(),
        timestamp_ms: (T0 + 3600) * 1000,
    }
}

fn file_inputs() -> SealInputs {
    SealInputs {
        name: "file",
        prefix: "ward vector file envelope",
        content_type: ContentType::File,
        content: stream("ward vector file envelope content", 1000),
        timestamp_ms: (T0 + 3660) * 1000,
    }
}

struct Draws {
    rk: [u8; 32],
    rid: Vec<u8>,
    nonce: Vec<u8>,
    ikm: Vec<Vec<u8>>,
    labels: Vec<String>,
}

fn draws(prefix: &str, recipients: &[&str]) -> Draws {
    let l = |what: &str| format!("{prefix} {what}");
    let mut labels = vec![l("resource key"), l("resource id"), l("nonce")];
    let ikm = recipients
        .iter()
        .map(|r| {
            labels.push(l(&format!("eseed {r}")));
            stream(&l(&format!("eseed {r}")), 64)
        })
        .collect();
    Draws {
        rk: seed(&l("resource key")),
        rid: short(&l("resource id"), 16),
        nonce: short(&l("nonce"), 24),
        ikm,
        labels,
    }
}

fn seal_with(
    d: &Draws,
    device: &DeviceSigningKey,
    sender: &VerifiedUser,
    recipients: &[&VerifiedUser],
    inputs: &SealInputs,
) -> envelope::Sealed {
    let mut script: Vec<&[u8]> = vec![&d.rk, &d.rid, &d.nonce];
    script.extend(d.ikm.iter().map(|k| k.as_slice()));
    let mut rng = ScriptRng::new(&script);
    let sealed = envelope::seal(
        &mut rng,
        device,
        sender,
        &SealRequest {
            conversation_id: conversation_id(),
            recipients,
            content_type: inputs.content_type,
            content: &inputs.content,
            timestamp_ms: inputs.timestamp_ms,
        },
    )
    .unwrap();
    rng.done();
    sealed
}

/// `content || zeros || u32_be(len)`, `padded_len` bytes in all (SECURITY.md §7.2).
fn pad(content: &[u8]) -> Vec<u8> {
    let mut p = content.to_vec();
    p.resize(padding::padded_len(content.len()) - 4, 0);
    p.extend_from_slice(&u32::try_from(content.len()).unwrap().to_be_bytes());
    p
}

fn content_type_name(c: ContentType) -> &'static str {
    match c {
        ContentType::Text => "text",
        ContentType::File => "file",
        ContentType::Attachment => "attachment",
        ContentType::RoomHistory => "room_history",
    }
}

/// The happy-path envelope of `inputs`: alice's device 2 to alice and bob.
fn sealed_envelope(inputs: &SealInputs) -> (Draws, envelope::Sealed) {
    let alice = alice_log();
    let (_, bob) = bob_log();
    let d = draws(inputs.prefix, &[ALICE, BOB]);
    let sender = alice.states.last().unwrap();
    let sealed = seal_with(&d, &dev(L_ALICE_DEV2_SIG), sender, &[sender, &bob], inputs);
    (d, sealed)
}

fn envelope_case(inputs: &SealInputs) -> J {
    let (d, sealed) = sealed_envelope(inputs);
    let env = Envelope::decode(sealed.envelope.as_slice()).unwrap();
    let padded = pad(&inputs.content);
    let (aead_key, commitment) = envelope_keys(&d.rk, &d.rid);
    let plain = XChaCha20Poly1305::new(&aead_key.into())
        .decrypt(
            &nonce24(&d.nonce).into(),
            Payload {
                msg: &env.ciphertext,
                aad: &env.header,
            },
        )
        .unwrap();
    assert_eq!(plain, padded);
    let digest = ciphertext_digest(&env.ciphertext);
    let sig_input = envelope_sig_input(&env.header, &env.ciphertext);
    let device = dev(L_ALICE_DEV2_SIG);
    assert_eq!(
        SigningKey::from_bytes(&seed(L_ALICE_DEV2_SIG))
            .sign(&sig_input)
            .to_bytes()
            .to_vec(),
        env.signature
    );
    let hd = EnvelopeHeader::decode(env.header.as_slice()).unwrap();

    let recipients = [(ALICE, L_ALICE_USER_2), (BOB, L_BOB_USER)];
    let wrapped: Vec<J> = sealed
        .wrapped_keys
        .iter()
        .zip(recipients)
        .zip(&d.ikm)
        .map(|(((id, w), (rid_name, label)), ikm)| {
            assert_eq!(id, rid_name);
            o(vec![
                ("user_id", s(id)),
                ("user_secret_label", s(label)),
                ("user_secret", h(seed(label))),
                ("user_public", h(ukey(label).public_key().as_bytes())),
                ("eseed", h(ikm)),
                ("wrapped_key", h(w.encode_to_vec())),
            ])
        })
        .collect();

    o(vec![
        ("name", s(inputs.name)),
        (
            "seal_inputs",
            o(vec![
                ("draw_labels", J::A(d.labels.iter().map(|l| s(l)).collect())),
                ("resource_key", h(d.rk)),
                ("resource_id", h(&d.rid)),
                ("nonce", h(&d.nonce)),
                ("conversation_id", h(conversation_id().as_bytes())),
                ("sender_user_id", s(ALICE)),
                ("sender_device_secret_label", s(L_ALICE_DEV2_SIG)),
                ("sender_device_secret", h(seed(L_ALICE_DEV2_SIG))),
                ("sender_device_id", h(device.public_key().as_bytes())),
                ("recipient_user_ids", J::A(vec![s(ALICE), s(BOB)])),
                ("timestamp_ms", J::N(inputs.timestamp_ms)),
                ("content_type", s(content_type_name(inputs.content_type))),
                (
                    "content_type_wire",
                    J::N(u64::try_from(hd.content_type).unwrap()),
                ),
                ("content", h(&inputs.content)),
            ]),
        ),
        ("aead_key", h(aead_key)),
        ("key_commitment", h(commitment)),
        ("header", h(&env.header)),
        ("padded_plaintext", h(&padded)),
        ("ciphertext", h(&env.ciphertext)),
        ("ciphertext_digest", h(digest)),
        ("signature_input", h(&sig_input)),
        ("signature", h(&env.signature)),
        ("envelope", h(&sealed.envelope)),
        ("wrapped_keys", J::A(wrapped)),
    ])
}

fn gen_envelope() -> J {
    let alice = alice_log();
    let (bob_entries, _) = bob_log();
    file(
        "Ward v2 envelopes (SECURITY.md §7). seal draws, in order: resource_key (32), \
         resource_id (16), nonce (24), then eseed (64) per recipient in recipient order. prk = \
         HKDF-Extract(salt = resource_id, ikm = resource_key); aead_key = HKDF-Expand(prk, \
         ENVELOPE_AEAD_KEY, 32); key_commitment = HKDF-Expand(prk, ENVELOPE_KEY_COMMITMENT, \
         32). header is the encoded EnvelopeHeader (protobuf), key_commitment its field 10; \
         padded_plaintext = content || zeros || u32_be(len(content)); ciphertext = \
         XChaCha20-Poly1305(key = aead_key, nonce, aad = header, padded_plaintext); \
         ciphertext_digest = SHA-256(framed(HASH_CIPHERTEXT, [ciphertext])); signature = \
         Ed25519(sender device, signature_input) with signature_input = framed(SIG_ENVELOPE, \
         [header, ciphertext_digest]); envelope is the encoded Envelope. To open: verify \
         sender_log from org_root_public, unwrap the recipient's wrapped key with its user \
         secret, open. Negative envelope and seal cases are in the negative file.",
        vec![
            ("org_root_public", h(root().public_key().as_bytes())),
            (
                "logs",
                o(vec![
                    (ALICE, log_json(&alice.entries)),
                    (BOB, log_json(&bob_entries)),
                ]),
            ),
            (
                "envelopes",
                J::A(vec![
                    envelope_case(&text_inputs()),
                    envelope_case(&file_inputs()),
                ]),
            ),
        ],
    )
}

// ---------------------------------------------------------------------------
// ward-v1-signatures.json
// ---------------------------------------------------------------------------

const AUTH_INSTANCE: &str = "chu-example-prod";

fn auth_audience() -> auth::Audience {
    auth::Audience::relay(root().public_key(), AUTH_INSTANCE)
}

fn auth_challenge() -> AuthChallenge {
    let nonce: [u8; 32] = short("ward vector auth nonce", 32).try_into().unwrap();
    auth_audience().challenge(nonce)
}

fn gen_signatures() -> J {
    let device = dev(L_ALICE_DEV2_SIG);
    let audience = auth_audience();
    let challenge = auth_challenge();
    let response = auth::respond(&device, ALICE, &audience, &challenge).unwrap();
    assert_eq!(
        auth::verify_response(&audience, &challenge, &response).unwrap(),
        (ALICE.to_owned(), device.public_key())
    );
    let transcript = framed(
        labels::SIG_AUTH,
        &[
            &challenge.version.to_be_bytes(),
            challenge.service.as_bytes(),
            challenge.instance.as_bytes(),
            root().public_key().as_bytes(),
            &challenge.nonce,
            ALICE.as_bytes(),
            device.public_key().as_bytes(),
        ],
    );
    assert_eq!(
        SigningKey::from_bytes(&seed(L_ALICE_DEV2_SIG))
            .sign(&transcript)
            .to_bytes()
            .to_vec(),
        response.signature
    );

    // The relay link (SECURITY.md §10.8): the relay's service key signs the
    // keyserver's challenge under its own label.
    let service = RelayServiceKey::import_secret(&seed(L_RELAY_SERVICE)).unwrap();
    let ks_audience = auth::Audience::keyserver(root().public_key(), AUTH_INSTANCE);
    let ks_nonce: [u8; 32] = short("ward vector relay link nonce", 32)
        .try_into()
        .unwrap();
    let ks_challenge = ks_audience.challenge(ks_nonce);
    let link_response = auth::respond_link(&service, &ks_audience, &ks_challenge).unwrap();
    assert_eq!(
        auth::verify_link_response(&ks_audience, &ks_challenge, &link_response).unwrap(),
        service.public_key()
    );
    let link_transcript = framed(
        labels::SIG_RELAY_LINK,
        &[
            &ks_challenge.version.to_be_bytes(),
            ks_challenge.service.as_bytes(),
            ks_challenge.instance.as_bytes(),
            root().public_key().as_bytes(),
            &ks_challenge.nonce,
            service.public_key().as_bytes(),
        ],
    );
    assert_eq!(
        SigningKey::from_bytes(&seed(L_RELAY_SERVICE))
            .sign(&link_transcript)
            .to_bytes()
            .to_vec(),
        link_response.signature
    );

    let root = root();
    let d = alice_details();
    let (signed, delegation) = make_invite(&root, &d, L_ALICE_DELEGATION);
    let verified = invite::verify_invite(&root.public_key(), &signed).unwrap();
    let sig_input = framed(labels::SIG_INVITE, &[&signed.invite]);

    // Enrolment (SECURITY.md §8, E1–E5): alice's first device opens an
    // enrolling session at the keyserver with her invite; its delegation key
    // signs the handshake fields under SIG_ENROL_AUTH.
    let enrol_device = dev(L_ALICE_DEV1_SIG);
    let enrol_nonce: [u8; 32] = short("ward vector enrol auth nonce", 32)
        .try_into()
        .unwrap();
    let enrol_challenge = ks_audience.challenge(enrol_nonce);
    let enrol = auth::respond_enrolling(
        &enrol_device,
        &delegation,
        &signed,
        ALICE,
        &ks_audience,
        &enrol_challenge,
    )
    .unwrap();
    assert_eq!(
        auth::verify_response(&ks_audience, &enrol_challenge, &enrol).unwrap(),
        (ALICE.to_owned(), enrol_device.public_key())
    );
    assert_eq!(
        auth::verify_enrolment(
            &ks_audience,
            &enrol_challenge,
            ALICE,
            &enrol_device.public_key(),
            &enrol.invite,
            &enrol.invite_signature,
        )
        .unwrap(),
        verified
    );
    let (root_public, enrol_device_id) = (root.public_key(), enrol_device.public_key());
    let enrol_parts: [&[u8]; 7] = [
        &enrol_challenge.version.to_be_bytes(),
        enrol_challenge.service.as_bytes(),
        enrol_challenge.instance.as_bytes(),
        root_public.as_bytes(),
        &enrol_challenge.nonce,
        ALICE.as_bytes(),
        enrol_device_id.as_bytes(),
    ];
    let enrol_device_transcript = framed(labels::SIG_AUTH, &enrol_parts);
    let enrol_transcript = framed(labels::SIG_ENROL_AUTH, &enrol_parts);
    assert_eq!(
        SigningKey::from_bytes(&seed(L_ALICE_DELEGATION))
            .sign(&enrol_transcript)
            .to_bytes()
            .to_vec(),
        enrol.invite_signature
    );
    assert_eq!(enrol.invite, signed.encode_to_vec());
    file(
        "Ward v2 signatures. Auth (SECURITY.md §8): signature = Ed25519(device, \
         framed(SIG_AUTH, [u32_be(version), service, instance, org_root, nonce, user_id, \
         device_id])), org_root the 32-byte pinned root of both sides. Invite \
         (SECURITY.md §4.1): signature = Ed25519(org root, framed(SIG_INVITE, [invite])) over \
         the encoded Invite; create_invite draws one 32-byte delegation key seed; invite_hash = \
         SHA-256(framed(HASH_INVITE, [invite])). Relay link (SECURITY.md §10.8): signature = \
         Ed25519(relay service key, framed(SIG_RELAY_LINK, [u32_be(version), service, instance, \
         org_root, nonce, service_key])) over the keyserver's challenge; the AuthResponse has an \
         empty user_id and log and the service key as device_id. Enrolment (SECURITY.md §8, \
         E1-E5): a device of a user that does not exist yet adds to its AuthResponse the encoded \
         SignedInvite (field 6) and invite_signature = Ed25519(delegation key, \
         framed(SIG_ENROL_AUTH, [the same seven parts as the device's transcript])) (field 7).",
        vec![
            (
                "enrol_auth",
                o(vec![
                    ("device_secret_label", s(L_ALICE_DEV1_SIG)),
                    ("device_secret", h(seed(L_ALICE_DEV1_SIG))),
                    ("device_id", h(enrol_device.public_key().as_bytes())),
                    ("user_id", s(ALICE)),
                    ("org_root_public", h(root.public_key().as_bytes())),
                    ("delegation_seed_label", s(L_ALICE_DELEGATION)),
                    ("delegation_seed", h(seed(L_ALICE_DELEGATION))),
                    ("signed_invite", h(signed.encode_to_vec())),
                    (
                        "challenge",
                        o(vec![
                            ("version", J::N(u64::from(enrol_challenge.version))),
                            ("service", s(&enrol_challenge.service)),
                            ("instance", s(&enrol_challenge.instance)),
                            ("nonce", h(&enrol_challenge.nonce)),
                            ("encoded", h(enrol_challenge.encode_to_vec())),
                        ]),
                    ),
                    ("device_transcript", h(&enrol_device_transcript)),
                    ("device_signature", h(&enrol.signature)),
                    ("enrol_transcript", h(&enrol_transcript)),
                    ("invite_signature", h(&enrol.invite_signature)),
                    ("response", h(enrol.encode_to_vec())),
                ]),
            ),
            (
                "relay_link",
                o(vec![
                    ("service_secret_label", s(L_RELAY_SERVICE)),
                    ("service_secret", h(seed(L_RELAY_SERVICE))),
                    ("service_key", h(service.public_key().as_bytes())),
                    ("org_root_public", h(root.public_key().as_bytes())),
                    (
                        "challenge",
                        o(vec![
                            ("version", J::N(u64::from(ks_challenge.version))),
                            ("service", s(&ks_challenge.service)),
                            ("instance", s(&ks_challenge.instance)),
                            ("nonce", h(&ks_challenge.nonce)),
                            ("encoded", h(ks_challenge.encode_to_vec())),
                        ]),
                    ),
                    ("transcript", h(&link_transcript)),
                    ("signature", h(&link_response.signature)),
                    ("response", h(link_response.encode_to_vec())),
                ]),
            ),
            (
                "auth",
                o(vec![
                    ("device_secret_label", s(L_ALICE_DEV2_SIG)),
                    ("device_secret", h(seed(L_ALICE_DEV2_SIG))),
                    ("device_id", h(device.public_key().as_bytes())),
                    ("user_id", s(ALICE)),
                    ("org_root_public", h(root.public_key().as_bytes())),
                    (
                        "challenge",
                        o(vec![
                            ("version", J::N(u64::from(challenge.version))),
                            ("service", s(&challenge.service)),
                            ("instance", s(&challenge.instance)),
                            ("nonce", h(&challenge.nonce)),
                            ("encoded", h(challenge.encode_to_vec())),
                        ]),
                    ),
                    ("transcript", h(&transcript)),
                    ("signature", h(&response.signature)),
                    ("response", h(response.encode_to_vec())),
                ]),
            ),
            (
                "invite",
                o(vec![
                    ("org_root_secret_label", s(L_ROOT)),
                    ("org_root_secret", h(seed(L_ROOT))),
                    ("org_root_public", h(root.public_key().as_bytes())),
                    ("user_id", s(&d.user_id)),
                    ("display_name", s(&d.display_name)),
                    ("profession", s(&d.profession)),
                    ("registry_number", s(&d.registry_number)),
                    ("expires_at", J::N(d.expires_at)),
                    ("delegation_seed_label", s(L_ALICE_DELEGATION)),
                    ("delegation_seed", h(seed(L_ALICE_DELEGATION))),
                    ("delegation_public", h(delegation.public_key().as_bytes())),
                    ("invite", h(&signed.invite)),
                    ("signature_input", h(&sig_input)),
                    ("signature", h(&signed.signature)),
                    ("invite_hash", h(verified.hash)),
                    ("signed_invite", h(signed.encode_to_vec())),
                ]),
            ),
        ],
    )
}

// ---------------------------------------------------------------------------
// ward-v1-chain.json
// ---------------------------------------------------------------------------

fn gen_chain() -> J {
    let root = root();
    let log = alice_log();
    let kinds = [
        "user_creation",
        "device_addition",
        "device_revocation",
        "key_rotation",
    ];
    let signers = [
        L_ALICE_DELEGATION,
        L_ALICE_DEV1_SIG,
        L_ROOT,
        L_ALICE_DEV2_SIG,
    ];
    let entries: Vec<J> = log
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let st = Statement::decode(e.statement.as_slice()).unwrap();
            assert_eq!(st.seq, i as u64);
            let sig_input = framed(labels::SIG_STATEMENT, &[&e.statement]);
            assert_eq!(
                SigningKey::from_bytes(&seed(signers[i]))
                    .sign(&sig_input)
                    .to_bytes()
                    .to_vec(),
                e.signature
            );
            let hash = sha256(&framed(labels::HASH_ENTRY, &[&e.statement, &e.signature]));
            assert_eq!(hash, chain::entry_hash(e));
            let mut possession = vec![];
            if let Some(Body::DeviceAddition(a)) = &st.body {
                let keys = a.device.as_ref().unwrap();
                let input = framed(
                    labels::SIG_DEVICE_POSSESSION,
                    &[
                        root.public_key().as_bytes(),
                        ALICE.as_bytes(),
                        &keys.signing_public_key,
                        &keys.encryption_public_key,
                    ],
                );
                assert!(ed25519_verifies(
                    &keys.signing_public_key,
                    &input,
                    &a.device_signature
                ));
                possession = vec![
                    ("possession_signer_label", s(L_ALICE_DEV2_SIG)),
                    ("possession_input", h(&input)),
                    ("device_signature", h(&a.device_signature)),
                ];
            }
            let mut fields = vec![
                ("seq", J::N(st.seq)),
                ("kind", s(kinds[i])),
                ("signer_label", s(signers[i])),
                ("author", h(&st.author)),
                ("timestamp", J::N(st.timestamp)),
                ("prev_hash", h(&st.prev_hash)),
                ("statement", h(&e.statement)),
                ("signature_input", h(&sig_input)),
                ("signature", h(&e.signature)),
                ("signed_statement", h(e.encode_to_vec())),
                ("entry_hash", h(hash)),
            ];
            fields.append(&mut possession);
            o(fields)
        })
        .collect();
    let state = log.states.last().unwrap();
    let mut devices: Vec<_> = state.devices().collect();
    devices.sort_by_key(|d| d.added_at);
    let devices_json = J::A(
        devices
            .iter()
            .map(|d| {
                o(vec![
                    ("signing_key", h(d.signing_key.as_bytes())),
                    ("encryption_key", h(d.encryption_key.as_bytes())),
                    ("added_at", J::N(d.added_at)),
                    ("revoked_at", d.revoked_at.map_or(J::Null, J::N)),
                ])
            })
            .collect(),
    );
    let verified = state.invite();
    file(
        "Ward v2 identity chain (SECURITY.md §4): the log of alice. Entry 0 (user creation) is \
         signed by the invite's delegation key with prev_hash = invite_hash; entry 1 (device 1 \
         adds device 2) by device 1, and carries device 2's own device_signature = \
         Ed25519(device 2, possession_input), possession_input = framed(SIG_DEVICE_POSSESSION, \
         [org_root, user_id, signing_public_key, encryption_public_key]); entry 2 (the root \
         revokes device 1; a root revocation carries no key and leaves rotation pending) by \
         the org root; entry 3 (key rotation) by device 2. signature = Ed25519(author, \
         framed(SIG_STATEMENT, [statement])); entry_hash = SHA-256(framed(HASH_ENTRY, \
         [statement, signature])) is the next prev_hash. verify_log(org_root_public, user_id, \
         entries) must yield final_state.",
        vec![
            ("org_root_public", h(root.public_key().as_bytes())),
            ("user_id", s(ALICE)),
            ("signed_invite", h(log.invite.encode_to_vec())),
            ("invite_hash", h(verified.hash)),
            ("entries", J::A(entries)),
            (
                "final_state",
                o(vec![
                    ("len", J::N(state.len())),
                    ("head", h(state.head())),
                    ("last_timestamp", J::N(state.last_timestamp())),
                    ("rotation_pending", J::B(state.rotation_pending())),
                    ("encryption_key", h(state.encryption_key().as_bytes())),
                    (
                        "past_encryption_keys",
                        J::A(
                            state
                                .past_encryption_keys()
                                .iter()
                                .map(|k| h(k.as_bytes()))
                                .collect(),
                        ),
                    ),
                    ("devices", devices_json),
                    (
                        "active_devices",
                        J::A(
                            devices
                                .iter()
                                .filter(|d| d.is_active())
                                .map(|d| h(d.signing_key.as_bytes()))
                                .collect(),
                        ),
                    ),
                    (
                        "revoked_devices",
                        J::A(
                            devices
                                .iter()
                                .filter(|d| !d.is_active())
                                .map(|d| h(d.signing_key.as_bytes()))
                                .collect(),
                        ),
                    ),
                ]),
            ),
        ],
    )
}

// ---------------------------------------------------------------------------
// ward-v2-negative.json
// ---------------------------------------------------------------------------

/// Splits an error's `Debug` form into its variant name and `field: value` pairs.
fn error_parts(debug: &str) -> (String, String) {
    let end = debug
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(debug.len());
    (debug[..end].to_owned(), debug[end..].to_owned())
}

struct Case {
    name: &'static str,
    description: &'static str,
    operation: &'static str,
    inputs: Vec<(&'static str, J)>,
    error: String,
    fields: Vec<(&'static str, u64)>,
    /// The normative reason string (`Malformed`, `InvalidTransition`,
    /// `KeyInUse`), the `DecodeError` variant (`Decode`) or the version
    /// (`UnsupportedVersion`), where the variant carries one.
    reason: Option<&'static str>,
}

fn case(
    name: &'static str,
    description: &'static str,
    operation: &'static str,
    inputs: Vec<(&'static str, J)>,
    error: &str,
    fields: Vec<(&'static str, u64)>,
) -> Case {
    Case {
        name,
        description,
        operation,
        inputs,
        error: error.to_owned(),
        fields,
        reason: None,
    }
}

/// A [`case`] whose error carries a normative reason.
fn rcase(
    name: &'static str,
    description: &'static str,
    operation: &'static str,
    inputs: Vec<(&'static str, J)>,
    error: &str,
    fields: Vec<(&'static str, u64)>,
    reason: &'static str,
) -> Case {
    Case {
        reason: Some(reason),
        ..case(name, description, operation, inputs, error, fields)
    }
}

/// Asserts the core yields `expected` (`Enum::Variant`) with `fields`.
fn assert_error<T, E: std::fmt::Debug>(
    what: &str,
    result: Result<T, E>,
    expected: &str,
    fields: &[(String, u64)],
) {
    assert_error_reason(what, result, expected, fields, None);
}

/// [`assert_error`], and the error's reason (see [`Case::reason`]) is `reason`.
fn assert_error_reason<T, E: std::fmt::Debug>(
    what: &str,
    result: Result<T, E>,
    expected: &str,
    fields: &[(String, u64)],
    reason: Option<&str>,
) {
    let Err(e) = result else {
        panic!("{what}: succeeded, expected {expected}");
    };
    let debug = format!("{e:?}");
    let enum_name = std::any::type_name::<E>().rsplit("::").next().unwrap();
    let (variant, rest) = error_parts(&debug);
    assert_eq!(
        format!("{enum_name}::{variant}"),
        expected,
        "{what}: got {debug}"
    );
    for (k, v) in fields {
        assert!(
            rest.contains(&format!("{k}: {v}")),
            "{what}: expected {k} = {v}, got {debug}"
        );
    }
    if let Some(r) = reason {
        let quoted = format!("{r:?}");
        assert!(
            rest.contains(&quoted)
                || rest.contains(&format!("({r})"))
                || rest.contains(&format!("({r} ")),
            "{what}: expected reason {r}, got {debug}"
        );
    }
}

/// Re-signs an envelope as `signer` after `edit` changed its header or ciphertext.
fn resign(
    env: &Envelope,
    signer_label: &str,
    edit: impl FnOnce(&mut EnvelopeHeader, &mut Vec<u8>),
) -> Vec<u8> {
    let mut hd = EnvelopeHeader::decode(env.header.as_slice()).unwrap();
    let mut ct = env.ciphertext.clone();
    edit(&mut hd, &mut ct);
    let header = hd.encode_to_vec();
    let sig = SigningKey::from_bytes(&seed(signer_label))
        .sign(&envelope_sig_input(&header, &ct))
        .to_bytes()
        .to_vec();
    Envelope {
        header,
        ciphertext: ct,
        signature: sig,
    }
    .encode_to_vec()
}

fn sign_statement(st: &Statement, signer_label: &str) -> SignedStatement {
    let statement = st.encode_to_vec();
    let signature = SigningKey::from_bytes(&seed(signer_label))
        .sign(&framed(labels::SIG_STATEMENT, &[&statement]))
        .to_bytes()
        .to_vec();
    SignedStatement {
        statement,
        signature,
    }
}

fn open_inputs(
    sender: &str,
    log: &[SignedStatement],
    env: &[u8],
    me: &str,
    key: &[u8],
) -> Vec<(&'static str, J)> {
    vec![
        ("org_root_public", h(root().public_key().as_bytes())),
        ("sender_user_id", s(sender)),
        ("sender_log", log_json(log)),
        ("envelope", h(env)),
        ("me", s(me)),
        ("resource_key", h(key)),
    ]
}

fn log_inputs(user: &str, log: &[SignedStatement]) -> Vec<(&'static str, J)> {
    vec![
        ("org_root_public", h(root().public_key().as_bytes())),
        ("user_id", s(user)),
        ("log", log_json(log)),
    ]
}

fn unwrap_inputs(w: &WrappedKey, rid: &[u8], user_label: &str) -> Vec<(&'static str, J)> {
    vec![
        ("wrapped_key", h(w.encode_to_vec())),
        ("resource_id", h(rid)),
        ("user_secret", h(seed(user_label))),
    ]
}

#[allow(clippy::too_many_lines)]
fn negative_cases() -> Vec<Case> {
    let root_key = root();
    let alice = alice_log();
    let (bob_entries, bob) = bob_log();
    let mut cases = Vec::new();

    // --- key wrap ---
    let (_, rid, w) = wrap_vector();
    cases.push(case(
        "wrap_wrong_recipient",
        "alice's wrapped key unwrapped with bob's user key",
        "unwrap_resource_key",
        unwrap_inputs(&w, rid.as_bytes(), L_BOB_USER),
        "WrapError::WrongRecipient",
        vec![],
    ));
    let other_rid = short("ward vector other resource id", 16);
    cases.push(case(
        "wrap_wrong_resource",
        "alice's wrapped key asked for under another resource id",
        "unwrap_resource_key",
        unwrap_inputs(&w, &other_rid, L_ALICE_USER_2),
        "WrapError::WrongResource",
        vec![],
    ));
    let mut swapped = w.clone();
    swapped.resource_id.clone_from(&other_rid);
    cases.push(case(
        "wrap_rewritten_resource_id",
        "the resource id written in the record is swapped for another one and asked for: the \
         AAD binds the original id, so the seal does not open",
        "unwrap_resource_key",
        unwrap_inputs(&swapped, &other_rid, L_ALICE_USER_2),
        "WrapError::Undecryptable",
        vec![],
    ));
    let mut flipped = w.clone();
    flipped.ciphertext[0] ^= 1;
    cases.push(case(
        "wrap_tampered_ciphertext",
        "first byte of the wrapped key's ciphertext flipped",
        "unwrap_resource_key",
        unwrap_inputs(&flipped, rid.as_bytes(), L_ALICE_USER_2),
        "WrapError::Undecryptable",
        vec![],
    ));
    let mut low_enc = w.clone();
    low_enc.enc[1088..].fill(0);
    cases.push(case(
        "unwrap_low_order_enc",
        "the X25519 part of enc (its last 32 bytes) is the all-zero (low-order) point: the \
         X25519 output is zero",
        "unwrap_resource_key",
        unwrap_inputs(&low_enc, rid.as_bytes(), L_ALICE_USER_2),
        "WrapError::NonContributory",
        vec![],
    ));
    // Low-order recipient keys can no longer be named: they fail to parse
    // (ward-v2-wrap.json, parse_encryption_key).

    // --- envelopes ---
    let (d, sealed) = sealed_envelope(&text_inputs());
    let env = Envelope::decode(sealed.envelope.as_slice()).unwrap();
    // The negative cases use the first three entries (up to the root's
    // revocation, before the rotation): a valid log in its own right.
    let full_prefix = alice.entries[..3].to_vec();
    let full = &full_prefix;
    let mut tampered = env.clone();
    tampered.ciphertext[0] ^= 1;
    cases.push(case(
        "envelope_tampered_ciphertext",
        "first ciphertext byte flipped: the sender's signature no longer verifies",
        "open_envelope",
        open_inputs(ALICE, full, &tampered.encode_to_vec(), BOB, &d.rk),
        "OpenError::BadSignature",
        vec![],
    ));
    cases.push(case(
        "envelope_tampered_ciphertext_resigned",
        "first ciphertext byte flipped and the envelope signed again by the sender's device \
         (a faulty or malicious sender): AEAD authentication fails",
        "open_envelope",
        open_inputs(
            ALICE,
            full,
            &resign(&env, L_ALICE_DEV2_SIG, |_, ct| ct[0] ^= 1),
            BOB,
            &d.rk,
        ),
        "OpenError::Undecryptable",
        vec![],
    ));
    cases.push(case(
        "envelope_wrong_resource_key",
        "a valid envelope opened with another resource key: it fails the key commitment, \
         before any decryption",
        "open_envelope",
        open_inputs(ALICE, full, &sealed.envelope, BOB, &seed(L_WRAP_RK)),
        "OpenError::KeyCommitmentMismatch",
        vec![],
    ));
    // A malicious sender's envelope: the header commits to K1 (the resource
    // key it wraps to carol), the ciphertext is under K2's AEAD key (the
    // key it wraps to bob), and it is properly signed. Without the
    // commitment bob would read a plaintext carol never sees.
    let k1 = seed("ward vector committed resource key");
    let k2 = seed("ward vector uncommitted resource key");
    let two_keys = resign(&env, L_ALICE_DEV2_SIG, |hd, ct| {
        hd.key_commitment = envelope_keys(&k1, &hd.resource_id).1.to_vec();
        let (aead_key, _) = envelope_keys(&k2, &hd.resource_id);
        let header = hd.encode_to_vec();
        *ct = XChaCha20Poly1305::new(&aead_key.into())
            .encrypt(
                &nonce24(&hd.nonce).into(),
                Payload {
                    msg: &pad(b"potassium 3.9 mmol/L, no action needed"),
                    aad: &header,
                },
            )
            .unwrap();
    });
    cases.push(case(
        "envelope_key_commitment_mismatch",
        "a signed envelope whose header commits to key K1 but whose ciphertext is under K2, \
         opened with K2 (what the sender wrapped to bob): KeyCommitmentMismatch",
        "open_envelope",
        open_inputs(ALICE, full, &two_keys, BOB, &k2),
        "OpenError::KeyCommitmentMismatch",
        vec![],
    ));
    cases.push(case(
        "envelope_key_commitment_committed_key",
        "the same envelope opened with K1, the committed key (what the sender wrapped to \
         alice): the commitment matches, the AEAD fails",
        "open_envelope",
        open_inputs(ALICE, full, &two_keys, ALICE, &k1),
        "OpenError::Undecryptable",
        vec![],
    ));
    cases.push(rcase(
        "envelope_key_commitment_length",
        "a 31-byte key commitment",
        "parse_envelope",
        vec![(
            "envelope",
            h(resign(&env, L_ALICE_DEV2_SIG, |hd, _| {
                hd.key_commitment.truncate(31);
            })),
        )],
        "OpenError::Malformed",
        vec![],
        "key commitment",
    ));
    // Non-zero padding under a valid AEAD and signature.
    let bad_padding = {
        let mut padded = pad(&text_inputs().content);
        padded[text_inputs().content.len()] = 1;
        let (aead_key, _) = envelope_keys(&d.rk, &d.rid);
        resign(&env, L_ALICE_DEV2_SIG, |hd, ct| {
            *ct = XChaCha20Poly1305::new(&aead_key.into())
                .encrypt(
                    &nonce24(&hd.nonce).into(),
                    Payload {
                        msg: &padded,
                        aad: &env.header,
                    },
                )
                .unwrap();
        })
    };
    cases.push(case(
        "envelope_bad_padding",
        "a correctly encrypted and signed envelope whose padding is not all zero",
        "open_envelope",
        open_inputs(ALICE, full, &bad_padding, BOB, &d.rk),
        "OpenError::Undecryptable",
        vec![],
    ));
    cases.push(case(
        "envelope_not_a_recipient",
        "carol opens an envelope sealed for alice and bob only (even holding the key)",
        "open_envelope",
        open_inputs(ALICE, full, &sealed.envelope, CAROL, &d.rk),
        "OpenError::NotARecipient",
        vec![],
    ));
    let mut forged = env.clone();
    forged.signature[0] ^= 1;
    cases.push(case(
        "envelope_forged_signature",
        "first byte of the envelope signature flipped",
        "open_envelope",
        open_inputs(ALICE, full, &forged.encode_to_vec(), BOB, &d.rk),
        "OpenError::BadSignature",
        vec![],
    ));
    cases.push(case(
        "envelope_signed_by_another_key",
        "the header names alice's device 2 but the signature is by alice's revoked device 1",
        "open_envelope",
        open_inputs(
            ALICE,
            full,
            &{
                let mut e =
                    Envelope::decode(resign(&env, L_ALICE_DEV1_SIG, |_, _| {}).as_slice()).unwrap();
                e.header.clone_from(&env.header);
                e.encode_to_vec()
            },
            BOB,
            &d.rk,
        ),
        "OpenError::BadSignature",
        vec![],
    ));
    cases.push(case(
        "envelope_swapped_sender",
        "alice's envelope checked against bob's verified chain",
        "open_envelope",
        open_inputs(BOB, &bob_entries, &sealed.envelope, BOB, &d.rk),
        "OpenError::SenderMismatch",
        vec![],
    ));
    cases.push(case(
        "envelope_unknown_sender_device",
        "header claims sender alice with bob's device, signed by bob's device",
        "open_envelope",
        open_inputs(
            ALICE,
            full,
            &resign(&env, L_BOB_DEV_SIG, |hd, _| {
                hd.sender_device_id = dev(L_BOB_DEV_SIG).public_key().as_bytes().to_vec();
            }),
            BOB,
            &d.rk,
        ),
        "OpenError::UnknownSenderDevice",
        vec![],
    ));
    let revoked_inputs = SealInputs {
        name: "revoked",
        prefix: "ward vector revoked device envelope",
        ..text_inputs()
    };
    let rd = draws(revoked_inputs.prefix, &[ALICE, BOB]);
    let revoked = seal_with(
        &rd,
        &dev(L_ALICE_DEV1_SIG),
        &alice.states[1],
        &[&alice.states[1], &bob],
        &revoked_inputs,
    );
    cases.push(case(
        "envelope_revoked_sender_device",
        "sealed by alice's device 1, opened against alice's log in which the root revoked it",
        "open_envelope",
        open_inputs(ALICE, full, &revoked.envelope, BOB, &rd.rk),
        "OpenError::SenderDeviceRevoked",
        vec![],
    ));
    let next = resign(&env, L_ALICE_DEV2_SIG, |hd, _| {
        hd.version = ward_core::proto::PROTOCOL_VERSION + 1;
    });
    cases.push(rcase(
        "envelope_unsupported_version",
        "header version one above the current protocol version",
        "parse_envelope",
        vec![("envelope", h(&next))],
        "OpenError::UnsupportedVersion",
        vec![],
        "3",
    ));
    let unspecified = resign(&env, L_ALICE_DEV2_SIG, |hd, _| hd.content_type = 0);
    cases.push(rcase(
        "envelope_unspecified_content_type",
        "content type CONTENT_TYPE_UNSPECIFIED",
        "parse_envelope",
        vec![("envelope", h(&unspecified))],
        "OpenError::Malformed",
        vec![],
        "content type",
    ));
    envelope_parse_cases(&mut cases, &env);
    // R9: a text envelope, correctly encrypted and signed, whose content is
    // not UTF-8 (a faulty sender): refused after decryption, on signed bytes.
    let not_utf8 = {
        let (aead_key, _) = envelope_keys(&d.rk, &d.rid);
        resign(&env, L_ALICE_DEV2_SIG, |hd, ct| {
            *ct = XChaCha20Poly1305::new(&aead_key.into())
                .encrypt(
                    &nonce24(&hd.nonce).into(),
                    Payload {
                        msg: &pad(b"caf\xe9"),
                        aad: &env.header,
                    },
                )
                .unwrap();
        })
    };
    cases.push(rcase(
        "envelope_text_not_utf8",
        "a text envelope, correctly encrypted and signed, whose content is caf\\xe9 (not UTF-8): R9",
        "open_envelope",
        open_inputs(ALICE, full, &not_utf8, BOB, &d.rk),
        "OpenError::Malformed",
        vec![],
        "text content is not UTF-8",
    ));
    seal_cases(&mut cases, &alice, &bob_entries);

    // --- identity chain ---
    let mut bad_sig = full.clone();
    bad_sig[1].signature[0] ^= 1;
    cases.push(case(
        "statement_forged_signature",
        "first byte of entry 1's signature flipped",
        "verify_log",
        log_inputs(ALICE, &bad_sig),
        "ChainError::BadSignature",
        vec![("seq", 1)],
    ));
    let stranger = sig_key(L_STRANGER, OrgRootKey::import_secret);
    let (forged_invite, forged_delegation) =
        make_invite(&stranger, &alice_details(), L_ALICE_DELEGATION);
    cases.push(case(
        "invite_signed_by_non_root",
        "an invite for alice signed by a key other than the organisation root",
        "verify_invite",
        vec![
            ("org_root_public", h(root_key.public_key().as_bytes())),
            ("signed_invite", h(forged_invite.encode_to_vec())),
        ],
        "ChainError::ForgedInvite",
        vec![],
    ));
    let forged_creation = chain::create_user(
        &stranger.public_key(),
        &forged_invite,
        &forged_delegation,
        &ukey(L_ALICE_USER_1).public_key(),
        &dev(L_ALICE_DEV1_SIG).public_key(),
        &denc(L_ALICE_DEV1_ENC).public_key(),
        T0,
    )
    .unwrap();
    cases.push(case(
        "log_with_invite_signed_by_non_root",
        "a user creation carrying an invite signed by a key other than the organisation root",
        "verify_log",
        log_inputs(ALICE, std::slice::from_ref(&forged_creation)),
        "ChainError::ForgedInvite",
        vec![],
    ));
    cases.push(case(
        "log_rolled_back",
        "alice's log known with 3 entries, served with 2",
        "update_log",
        vec![
            ("org_root_public", h(root_key.public_key().as_bytes())),
            ("user_id", s(ALICE)),
            ("known_log", log_json(full)),
            ("served_log", log_json(&full[..2])),
        ],
        "ChainError::Rollback",
        vec![("known", 3), ("served", 2)],
    ));
    cases.push(case(
        "log_prefix_rewritten",
        "alice's log known with 3 entries, served with entries 1 and 2 unchanged but entry 0 \
         replaced by another user creation: the served log does not contain the known log as \
         its prefix",
        "update_log",
        vec![
            ("org_root_public", h(root_key.public_key().as_bytes())),
            ("user_id", s(ALICE)),
            ("known_log", log_json(full)),
            (
                "served_log",
                log_json(&[forged_creation.clone(), full[1].clone(), full[2].clone()]),
            ),
        ],
        "ChainError::Fork",
        vec![("seq", 2)],
    ));
    let fork_entry = alice.states[0].add_device(
        &dev(L_ALICE_DEV1_SIG),
        &dev(L_ALICE_DEV3_SIG),
        &denc(L_ALICE_DEV3_ENC).public_key(),
        T0 + 60,
    );
    cases.push(case(
        "log_forked",
        "alice's log known with 2 entries, served with a different, validly signed entry 1 \
         (device 1 adds device 3 instead of device 2)",
        "update_log",
        vec![
            ("org_root_public", h(root_key.public_key().as_bytes())),
            ("user_id", s(ALICE)),
            ("known_log", log_json(&full[..2])),
            ("served_log", log_json(&[full[0].clone(), fork_entry])),
        ],
        "ChainError::Fork",
        vec![("seq", 1)],
    ));
    let reuse = sign_statement(
        &Statement {
            version: ward_core::proto::PROTOCOL_VERSION,
            user_id: ALICE.into(),
            seq: 1,
            prev_hash: chain::entry_hash(&full[0]).to_vec(),
            timestamp: T0 + 60,
            author: dev(L_ALICE_DELEGATION).public_key().as_bytes().to_vec(),
            body: Some(Body::UserCreation(UserCreation {
                invite: Some(alice.invite.clone()),
                user_encryption_public_key: ukey(L_CAROL_USER).public_key().as_bytes().to_vec(),
                device: Some(DeviceKeys {
                    signing_public_key: dev(L_ALICE_DEV3_SIG).public_key().as_bytes().to_vec(),
                    encryption_public_key: denc(L_ALICE_DEV3_ENC).public_key().as_bytes().to_vec(),
                }),
            })),
        },
        L_ALICE_DELEGATION,
    );
    cases.push(case(
        "invite_reused",
        "entry 1 is a second user creation from alice's invite, signed by its delegation key",
        "verify_log",
        log_inputs(ALICE, &[full[0].clone(), reuse]),
        "ChainError::InviteReused",
        vec![],
    ));
    let (invite, delegation) = make_invite(&root_key, &alice_details(), L_ALICE_DELEGATION);
    let late = chain::create_user(
        &root_key.public_key(),
        &invite,
        &delegation,
        &ukey(L_ALICE_USER_1).public_key(),
        &dev(L_ALICE_DEV1_SIG).public_key(),
        &denc(L_ALICE_DEV1_ENC).public_key(),
        T0 + WEEK + 1,
    )
    .unwrap();
    cases.push(case(
        "invite_expired",
        "user creation dated one second after the invite's expires_at",
        "verify_log",
        log_inputs(ALICE, &[late]),
        "ChainError::InviteExpired",
        vec![],
    ));
    let by_stranger = alice.states[0].add_device(
        &dev(L_STRANGER),
        &dev(L_ALICE_DEV3_SIG),
        &denc(L_ALICE_DEV3_ENC).public_key(),
        T0 + 60,
    );
    cases.push(case(
        "statement_stranger_author",
        "entry 1 adds a device and is signed by a key that is no device of alice",
        "verify_log",
        log_inputs(ALICE, &[full[0].clone(), by_stranger]),
        "ChainError::UnauthorizedAuthor",
        vec![("seq", 1)],
    ));
    let by_revoked = alice.states[2].add_device(
        &dev(L_ALICE_DEV1_SIG),
        &dev(L_ALICE_DEV3_SIG),
        &denc(L_ALICE_DEV3_ENC).public_key(),
        T0 + 180,
    );
    let mut with_revoked = full.clone();
    with_revoked.push(by_revoked);
    cases.push(case(
        "statement_by_revoked_device",
        "entry 3 adds a device and is signed by device 1, revoked at entry 2",
        "verify_log",
        log_inputs(ALICE, &with_revoked),
        "ChainError::UnauthorizedAuthor",
        vec![("seq", 3)],
    ));
    let mut wrong_prev = Statement::decode(full[1].statement.as_slice()).unwrap();
    wrong_prev.prev_hash = vec![0; 32];
    cases.push(case(
        "statement_broken_chain",
        "entry 1's prev_hash is not the hash of entry 0 (validly signed by device 1)",
        "verify_log",
        log_inputs(
            ALICE,
            &[
                full[0].clone(),
                sign_statement(&wrong_prev, L_ALICE_DEV1_SIG),
            ],
        ),
        "ChainError::BrokenChain",
        vec![("seq", 1)],
    ));

    // Check each case against the core before writing it.
    for c in &cases {
        let fields: Vec<(String, u64)> = c
            .fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let inputs = o(c.inputs.iter().map(|(k, v)| (*k, clone_j(v))).collect());
        let value: Value = serde_json::from_str(&to_text(&inputs)).unwrap();
        run_negative(c.name, c.operation, &value, &c.error, &fields, c.reason);
    }
    cases
}

/// `seal_envelope` inputs: the sender's log and device, the recipients by
/// user id (their logs in `logs`), and the request. `content_zeros` stands
/// for content too long to write out.
#[allow(clippy::too_many_arguments)]
/// An envelope whose header is `header` (raw bytes), with `env`'s ciphertext
/// and signature unless `edit` changes them: parsing checks no signature.
fn with_header(env: &Envelope, header: Vec<u8>, edit: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let mut e = Envelope {
        header,
        ..env.clone()
    };
    edit(&mut e);
    e.encode_to_vec()
}

/// The parse rules P1-P14 of SECURITY.md §7.4, one case each with its
/// normative reason (`Malformed`) or `DecodeError` variant (`Decode`).
fn envelope_parse_cases(cases: &mut Vec<Case>, env: &Envelope) {
    let header = |edit: &dyn Fn(&mut EnvelopeHeader)| {
        let mut hd = EnvelopeHeader::decode(env.header.as_slice()).unwrap();
        edit(&mut hd);
        hd.encode_to_vec()
    };
    let mut unknown = env.header.clone();
    unknown.extend_from_slice(&[0x98, 0x06, 0x01]);
    let parse: Vec<(
        &'static str,
        &'static str,
        Vec<u8>,
        &'static str,
        &'static str,
    )> = vec![
        (
            "envelope_not_protobuf",
            "P1: bytes that are not protobuf (a truncated length-delimited field)",
            vec![0x0a, 0x05, 0x01],
            "OpenError::Decode",
            "Malformed",
        ),
        (
            "envelope_header_too_large",
            "P2: a header of MAX_HEADER_BYTES + 1 = 40961 bytes, refused before decoding",
            with_header(env, vec![0; envelope::MAX_HEADER_BYTES + 1], |_| {}),
            "OpenError::Malformed",
            "header too large",
        ),
        (
            "envelope_header_non_canonical",
            "P3: the header with an unknown field (99, varint 1) appended",
            with_header(env, unknown, |_| {}),
            "OpenError::Decode",
            "NonCanonical",
        ),
        (
            "envelope_short_resource_id",
            "P5: a 15-byte resource id",
            with_header(env, header(&|hd| hd.resource_id.truncate(15)), |_| {}),
            "OpenError::Malformed",
            "resource id",
        ),
        (
            "envelope_short_conversation_id",
            "P6: a 15-byte conversation id",
            with_header(env, header(&|hd| hd.conversation_id.truncate(15)), |_| {}),
            "OpenError::Malformed",
            "conversation id",
        ),
        (
            "envelope_empty_sender_user_id",
            "P7: an empty sender user id",
            with_header(env, header(&|hd| hd.sender_user_id.clear()), |_| {}),
            "OpenError::Malformed",
            "sender user id",
        ),
        (
            "envelope_short_sender_device",
            "P8: a 31-byte sender device id",
            with_header(env, header(&|hd| hd.sender_device_id.truncate(31)), |_| {}),
            "OpenError::Malformed",
            "sender device",
        ),
        (
            "envelope_short_nonce",
            "P10: a 23-byte nonce",
            with_header(env, header(&|hd| hd.nonce.truncate(23)), |_| {}),
            "OpenError::Malformed",
            "nonce",
        ),
        (
            "envelope_no_recipients",
            "P11: an empty recipient list",
            with_header(env, header(&|hd| hd.recipient_user_ids.clear()), |_| {}),
            "OpenError::Malformed",
            "recipients",
        ),
        (
            "envelope_duplicate_recipient",
            "P11: recipients alice, bob, alice",
            with_header(
                env,
                header(&|hd| hd.recipient_user_ids.push(ALICE.into())),
                |_| {},
            ),
            "OpenError::Malformed",
            "duplicate recipient",
        ),
        (
            "envelope_short_signature",
            "P13: a 63-byte signature",
            with_header(env, env.header.clone(), |e| {
                e.signature.truncate(63);
            }),
            "OpenError::Malformed",
            "signature length",
        ),
        (
            "envelope_short_ciphertext",
            "P14: a ciphertext of 271 bytes (below 256 + 16)",
            with_header(env, env.header.clone(), |e| {
                e.ciphertext.truncate(271);
            }),
            "OpenError::Malformed",
            "ciphertext too short",
        ),
    ];
    for (name, description, bytes, error, reason) in parse {
        cases.push(rcase(
            name,
            description,
            "parse_envelope",
            vec![("envelope", h(bytes))],
            error,
            vec![],
            reason,
        ));
    }
}

fn seal_inputs(
    alice: &AliceLog,
    bob_entries: &[SignedStatement],
    device_label: &str,
    recipients: &[&str],
    content_type: ContentType,
    content: Result<&[u8], usize>,
) -> Vec<(&'static str, J)> {
    let mut v = vec![
        ("org_root_public", h(root().public_key().as_bytes())),
        (
            "logs",
            o(vec![
                (ALICE, log_json(&alice.entries)),
                (BOB, log_json(bob_entries)),
            ]),
        ),
        ("sender_user_id", s(ALICE)),
        ("sender_device_secret", h(seed(device_label))),
        ("conversation_id", h(conversation_id().as_bytes())),
        (
            "recipient_user_ids",
            J::A(recipients.iter().map(|r| s(r)).collect()),
        ),
        ("content_type", s(content_type_name(content_type))),
        ("timestamp_ms", J::N((T0 + 3600) * 1000)),
    ];
    match content {
        Ok(c) => v.push(("content", h(c))),
        Err(n) => v.push(("content_zeros", J::N(n as u64))),
    }
    v
}

/// Seal refusals (§7.3 S1-S3): each draws nothing from the RNG.
fn seal_cases(cases: &mut Vec<Case>, alice: &AliceLog, bob_entries: &[SignedStatement]) {
    let inputs = |device: &str, recipients: &[&str], ct, content| {
        seal_inputs(alice, bob_entries, device, recipients, ct, content)
    };
    let text = ContentType::Text;
    cases.push(rcase(
        "seal_too_large",
        "content of MAX_CONTENT_BYTES + 1 zero bytes",
        "seal_envelope",
        inputs(
            L_ALICE_DEV2_SIG,
            &[ALICE, BOB],
            ContentType::File,
            Err(envelope::MAX_CONTENT_BYTES + 1),
        ),
        "SealError::TooLarge",
        vec![],
        "16777217",
    ));
    cases.push(case(
        "seal_invalid_text",
        "text content that is not UTF-8",
        "seal_envelope",
        inputs(L_ALICE_DEV2_SIG, &[ALICE, BOB], text, Ok(b"caf\xe9")),
        "SealError::InvalidText",
        vec![],
    ));
    cases.push(case(
        "seal_no_recipients",
        "an empty recipient list",
        "seal_envelope",
        inputs(L_ALICE_DEV2_SIG, &[], text, Ok(b"hello")),
        "SealError::NoRecipients",
        vec![],
    ));
    cases.push(rcase(
        "seal_too_many_recipients",
        "257 recipients (alice listed 257 times: the count is checked first)",
        "seal_envelope",
        inputs(
            L_ALICE_DEV2_SIG,
            &[ALICE; envelope::MAX_RECIPIENTS + 1],
            text,
            Ok(b"hello"),
        ),
        "SealError::TooManyRecipients",
        vec![],
        "257",
    ));
    cases.push(rcase(
        "seal_duplicate_recipient",
        "alice, bob, alice",
        "seal_envelope",
        inputs(L_ALICE_DEV2_SIG, &[ALICE, BOB, ALICE], text, Ok(b"hello")),
        "SealError::DuplicateRecipient",
        vec![],
        ALICE,
    ));
    cases.push(case(
        "seal_device_not_active",
        "sealing with alice's device 1, which the root revoked in her log",
        "seal_envelope",
        inputs(L_ALICE_DEV1_SIG, &[ALICE, BOB], text, Ok(b"hello")),
        "SealError::DeviceNotActive",
        vec![],
    ));
}

fn run_seal(inputs: &Value) -> Result<envelope::Sealed, ward_core::SealError> {
    let root = signing_public(&inputs["org_root_public"]);
    let chains: Vec<(String, VerifiedUser)> = inputs["logs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, log)| {
            (
                id.clone(),
                chain::verify_log(&root, id, &parse_log(log)).unwrap(),
            )
        })
        .collect();
    let sender = chain_of(&chains, st(&inputs["sender_user_id"]));
    let recipients: Vec<&VerifiedUser> = inputs["recipient_user_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| chain_of(&chains, st(r)))
        .collect();
    let device = DeviceSigningKey::import_secret(&hx(&inputs["sender_device_secret"])).unwrap();
    let content = match inputs.get("content") {
        Some(c) => hx(c),
        None => vec![0; usize::try_from(num(&inputs["content_zeros"])).unwrap()],
    };
    // A refused request draws nothing: the script is empty.
    let mut rng = ScriptRng::new(&[]);
    let r = envelope::seal(
        &mut rng,
        &device,
        sender,
        &SealRequest {
            conversation_id: ConversationId::from_slice(&hx(&inputs["conversation_id"])).unwrap(),
            recipients: &recipients,
            content_type: msg_type(st(&inputs["content_type"])),
            content: &content,
            timestamp_ms: num(&inputs["timestamp_ms"]),
        },
    );
    rng.done();
    r
}

fn clone_j(j: &J) -> J {
    match j {
        J::S(x) => J::S(x.clone()),
        J::N(n) => J::N(*n),
        J::Null => J::Null,
        J::B(b) => J::B(*b),
        J::A(v) => J::A(v.iter().map(clone_j).collect()),
        J::O(v) => J::O(v.iter().map(|(k, x)| (k.clone(), clone_j(x))).collect()),
    }
}

fn cases_json(cases: Vec<Case>) -> J {
    J::A(
        cases
            .into_iter()
            .map(|c| {
                let reason = c.reason;
                let mut pairs = vec![
                    ("name", s(c.name)),
                    ("description", s(c.description)),
                    ("operation", s(c.operation)),
                    (
                        "inputs",
                        J::O(
                            c.inputs
                                .into_iter()
                                .map(|(k, v)| (k.to_owned(), v))
                                .collect(),
                        ),
                    ),
                    ("error", J::S(c.error)),
                    (
                        "error_fields",
                        J::O(
                            c.fields
                                .into_iter()
                                .map(|(k, v)| (k.to_owned(), J::N(v)))
                                .collect(),
                        ),
                    ),
                ];
                if let Some(r) = reason {
                    pairs.push(("error_reason", s(r)));
                }
                o(pairs)
            })
            .collect(),
    )
}

fn gen_negative() -> J {
    let cases = cases_json(negative_cases());
    file(
        "Ward v2 negative cases (key wrap, envelope, seal, and the v1-era chain cases): each \
         must fail with exactly the named error (Rust: Enum::Variant, with error_fields where \
         the variant carries them, and error_reason for a variant with a payload: the \
         normative reason string of Malformed, the DecodeError variant of Decode, the version \
         of UnsupportedVersion, the length of TooLarge, the count of TooManyRecipients, the \
         user id of DuplicateRecipient). Operations: \
         unwrap_resource_key(wrapped_key, resource_id, user_secret) (more wrap, grant and \
         key cases in ward-v2-wrap.json); \
         parse_envelope(envelope); open_envelope: parse, verify_log(org_root_public, \
         sender_user_id, sender_log) (which succeeds), then open(sender chain, me, \
         resource_key); seal_envelope: verify every log in logs, then seal(sender device, \
         sender chain, conversation_id, the chains of recipient_user_ids in order, \
         content_type, content or content_zeros zero bytes, timestamp_ms) with an RNG that \
         must not be drawn from; verify_log(org_root_public, user_id, log); \
         update_log: verify_log(known_log) (succeeds), then update(served_log); \
         verify_invite(org_root_public, signed_invite). Logs are lists of SignedStatement \
         fields; envelope, wrapped_key and signed_invite are encoded protobuf.",
        vec![("cases", cases)],
    )
}

// ---------------------------------------------------------------------------
// ward-v2-chain-negative.json: the identity chain, decode limits and the
// handshake (SECURITY.md §3.1, §4, §8)
// ---------------------------------------------------------------------------

fn stmt_of(e: &SignedStatement) -> Statement {
    Statement::decode(e.statement.as_slice()).unwrap()
}

fn then(prefix: &[SignedStatement], next: SignedStatement) -> Vec<SignedStatement> {
    let mut v = prefix.to_vec();
    v.push(next);
    v
}

fn update_inputs(known: &[SignedStatement], served: &[SignedStatement]) -> Vec<(&'static str, J)> {
    vec![
        ("org_root_public", h(root().public_key().as_bytes())),
        ("user_id", s(ALICE)),
        ("known_log", log_json(known)),
        ("served_log", log_json(served)),
    ]
}

/// Carol's user key with its X25519 part (the last 32 bytes) set to u = 0:
/// of low order (SECURITY.md §3.5).
fn low_order() -> EncryptionPublicKey {
    let mut b = *ukey(L_CAROL_USER).public_key().as_bytes();
    b[1184..].fill(0);
    EncryptionPublicKey::from_bytes_unchecked(b)
}

fn auth_inputs(
    server: &auth::Audience,
    challenge: &AuthChallenge,
    response: &AuthResponse,
) -> Vec<(&'static str, J)> {
    vec![
        ("org_root_public", h(server.org_root.as_bytes())),
        ("service", s(&server.service)),
        ("instance", s(&server.instance)),
        ("challenge", h(challenge.encode_to_vec())),
        ("response", h(response.encode_to_vec())),
    ]
}

fn respond_inputs(expected: &auth::Audience, challenge: &AuthChallenge) -> Vec<(&'static str, J)> {
    vec![
        ("device_secret", h(seed(L_ALICE_DEV2_SIG))),
        ("user_id", s(ALICE)),
        ("org_root_public", h(expected.org_root.as_bytes())),
        ("service", s(&expected.service)),
        ("instance", s(&expected.instance)),
        ("challenge", h(challenge.encode_to_vec())),
    ]
}

#[allow(clippy::too_many_lines)]
fn chain_negative_cases() -> Vec<Case> {
    let root_key = root();
    let rootp = root_key.public_key();
    let alice = alice_log();
    // e0 (creation), e1 (device 1 adds device 2), e2 (the root revokes device 1).
    let full = alice.entries[..3].to_vec();
    let (s0, s1, s2) = (&alice.states[0], &alice.states[1], &alice.states[2]);
    let (d1, d2, d3) = (
        dev(L_ALICE_DEV1_SIG),
        dev(L_ALICE_DEV2_SIG),
        dev(L_ALICE_DEV3_SIG),
    );
    let enc3 = denc(L_ALICE_DEV3_ENC).public_key();
    let carol_key = ukey(L_CAROL_USER).public_key();
    let mut cases = Vec::new();
    let it = "InvalidTransition";

    // --- item 1: no device being revoked chooses the next user key ---
    cases.push(rcase(
        "self_revocation_carrying_key",
        "entry 2: device 2 revokes itself and carries a new user key of its own choosing (a \
         thief's attempt to hold the next key); a self-revocation is keyless",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full[..2],
                s1.revoke_device(&d2, &d2.public_key(), &carol_key, T0 + 120),
            ),
        ),
        &format!("ChainError::{it}"),
        vec![("seq", 2)],
        "a revoked device may not choose a user key",
    ));
    let mut st = stmt_of(&alice.entries[2]);
    if let Some(Body::DeviceRevocation(r)) = &mut st.body {
        r.new_user_encryption_public_key = carol_key.as_bytes().to_vec();
    }
    cases.push(rcase(
        "root_revocation_carrying_key",
        "entry 2: the root revokes device 1 and carries a user key",
        "verify_log",
        log_inputs(ALICE, &then(&full[..2], sign_statement(&st, L_ROOT))),
        &format!("ChainError::{it}"),
        vec![("seq", 2)],
        "the root may not choose a user key",
    ));
    cases.push(rcase(
        "revocation_not_rotating",
        "entry 2: device 2 revokes device 1 and carries the current user key",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full[..2],
                s1.revoke_device(
                    &d2,
                    &d1.public_key(),
                    &ukey(L_ALICE_USER_1).public_key(),
                    T0 + 120,
                ),
            ),
        ),
        &format!("ChainError::{it}"),
        vec![("seq", 2)],
        "user key not rotated",
    ));
    cases.push(rcase(
        "revocation_of_revoked_device",
        "entry 3: the root revokes device 1 again",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full,
                s2.revoke_device_as_root(&root_key, &d1.public_key(), T0 + 180),
            ),
        ),
        &format!("ChainError::{it}"),
        vec![("seq", 3)],
        "device already revoked",
    ));
    cases.push(rcase(
        "revocation_of_unknown_device_target_first",
        "entry 2: device 2 revokes a key that is no device of alice and carries a low-order \
         user key: the target is checked before the key (A7)",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full[..2],
                s1.revoke_device(&d2, &dev(L_STRANGER).public_key(), &low_order(), T0 + 120),
            ),
        ),
        &format!("ChainError::{it}"),
        vec![("seq", 2)],
        "unknown device",
    ));
    cases.push(case(
        "rotation_by_revoked_device",
        "entry 3: device 1, revoked at entry 2, rotates the user key",
        "verify_log",
        log_inputs(
            ALICE,
            &then(&full, s2.rotate_user_key(&d1, &carol_key, T0 + 180)),
        ),
        "ChainError::UnauthorizedAuthor",
        vec![("seq", 3)],
    ));
    let mut st = stmt_of(&alice.entries[3]);
    st.author = rootp.as_bytes().to_vec();
    cases.push(case(
        "rotation_by_root",
        "entry 3: the root signs a key rotation",
        "verify_log",
        log_inputs(ALICE, &then(&full, sign_statement(&st, L_ROOT))),
        "ChainError::UnauthorizedAuthor",
        vec![("seq", 3)],
    ));
    cases.push(rcase(
        "rotation_to_low_order_key",
        "entry 3: device 2 rotates the user key to a key whose X25519 part is u = 0 (low order)",
        "verify_log",
        log_inputs(
            ALICE,
            &then(&full, s2.rotate_user_key(&d2, &low_order(), T0 + 180)),
        ),
        "ChainError::Malformed",
        vec![],
        "user encryption key",
    ));

    // --- item 2: proof of possession, and keys already in use ---
    let as_device = |label: &str| DeviceSigningKey::import_secret(&seed(label)).unwrap();
    let root_dev = as_device(L_ROOT);
    cases.push(rcase(
        "addition_of_root_key",
        "entry 1: device 1 adds the organisation root's key as a device (with the root's own \
         possession signature)",
        "verify_log",
        log_inputs(
            ALICE,
            &then(&full[..1], s0.add_device(&d1, &root_dev, &enc3, T0 + 60)),
        ),
        "ChainError::KeyInUse",
        vec![("seq", 1)],
        chain::KEY_IS_ROOT,
    ));
    let deleg_dev = as_device(L_ALICE_DELEGATION);
    cases.push(rcase(
        "addition_of_delegation_key",
        "entry 1: device 1 adds the invite's delegation key as a device",
        "verify_log",
        log_inputs(
            ALICE,
            &then(&full[..1], s0.add_device(&d1, &deleg_dev, &enc3, T0 + 60)),
        ),
        "ChainError::KeyInUse",
        vec![("seq", 1)],
        chain::KEY_IS_DELEGATION,
    ));
    cases.push(rcase(
        "addition_of_active_device",
        "entry 1: device 1 adds itself again",
        "verify_log",
        log_inputs(
            ALICE,
            &then(&full[..1], s0.add_device(&d1, &d1, &enc3, T0 + 60)),
        ),
        "ChainError::KeyInUse",
        vec![("seq", 1)],
        "device already in the log",
    ));
    cases.push(rcase(
        "addition_of_revoked_device",
        "entry 3: device 2 adds device 1 back, revoked at entry 2",
        "verify_log",
        log_inputs(
            ALICE,
            &then(&full, s2.add_device(&d2, &d1, &enc3, T0 + 180)),
        ),
        "ChainError::KeyInUse",
        vec![("seq", 3)],
        "device already in the log",
    ));
    cases.push(rcase(
        "addition_reusing_encryption_key",
        "entry 1: device 3 is added with device 1's encryption key",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full[..1],
                s0.add_device(&d1, &d3, &denc(L_ALICE_DEV1_ENC).public_key(), T0 + 60),
            ),
        ),
        "ChainError::KeyInUse",
        vec![("seq", 1)],
        "device encryption key already in the log",
    ));
    cases.push(case(
        "addition_without_possession_proof",
        "entry 1: device 1 adds device 3 without device 3's signature (device_signature empty)",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full[..1],
                s0.add_device_with_proof(&d1, &d3.public_key(), &enc3, &[], T0 + 60),
            ),
        ),
        "ChainError::MissingPossessionProof",
        vec![("seq", 1)],
    ));
    let by_author = chain::possession_proof(&rootp, ALICE, &d1, &enc3);
    cases.push(case(
        "addition_with_proof_by_author",
        "entry 1: the possession signature is made by device 1 (the author), not device 3",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full[..1],
                s0.add_device_with_proof(&d1, &d3.public_key(), &enc3, &by_author, T0 + 60),
            ),
        ),
        "ChainError::MissingPossessionProof",
        vec![("seq", 1)],
    ));
    let for_bob = chain::possession_proof(&rootp, BOB, &d3, &enc3);
    cases.push(case(
        "addition_with_proof_for_another_user",
        "entry 1: device 3's possession signature names bob, not alice",
        "verify_log",
        log_inputs(
            ALICE,
            &then(
                &full[..1],
                s0.add_device_with_proof(&d1, &d3.public_key(), &enc3, &for_bob, T0 + 60),
            ),
        ),
        "ChainError::MissingPossessionProof",
        vec![("seq", 1)],
    ));
    let (invite, delegation) = make_invite(&root_key, &alice_details(), L_ALICE_DELEGATION);
    let creation_as_root = chain::create_user(
        &rootp,
        &invite,
        &delegation,
        &ukey(L_ALICE_USER_1).public_key(),
        &rootp,
        &denc(L_ALICE_DEV1_ENC).public_key(),
        T0,
    )
    .unwrap();
    cases.push(rcase(
        "creation_with_root_as_device",
        "entry 0 names the organisation root's key as the first device",
        "verify_log",
        log_inputs(ALICE, &[creation_as_root]),
        "ChainError::KeyInUse",
        vec![("seq", 0)],
        chain::KEY_IS_ROOT,
    ));

    // --- item 5: a served prefix is the verified one, signatures included ---
    let mut zeroed = alice.entries.clone();
    for e in &mut zeroed[..3] {
        e.signature = vec![0; 64];
    }
    cases.push(case(
        "served_log_zeroed_signatures",
        "alice's log known with 3 entries, served with the same statements but all-zero \
         signatures on the known prefix, plus the valid entry 3: the entry hash covers the \
         signature, so the served prefix does not link to the known head",
        "update_log",
        update_inputs(&full, &zeroed),
        "ChainError::Fork",
        vec![("seq", 2)],
    ));
    let mut first_zeroed = full.clone();
    first_zeroed[0].signature = vec![0; 64];
    cases.push(case(
        "served_log_zeroed_first_signature",
        "alice's log known with 3 entries, served with entry 0's signature zeroed only",
        "update_log",
        update_inputs(&full, &first_zeroed),
        "ChainError::Fork",
        vec![("seq", 2)],
    ));

    // --- opening entries (O1-O3), sequence, user, time ---
    let e0 = &alice.entries[0];
    let mut unknown_field = e0.statement.clone();
    unknown_field.extend_from_slice(&[0x98, 0x06, 0x01]);
    let resigned = |statement: Vec<u8>, label: &str| SignedStatement {
        signature: SigningKey::from_bytes(&seed(label))
            .sign(&framed(labels::SIG_STATEMENT, &[&statement]))
            .to_bytes()
            .to_vec(),
        statement,
    };
    cases.push(rcase(
        "statement_non_canonical_unknown_field",
        "entry 0 with an unknown field (99, varint 1) appended, signed again by the delegation key",
        "verify_log",
        log_inputs(ALICE, &[resigned(unknown_field, L_ALICE_DELEGATION)]),
        "ChainError::Decode",
        vec![],
        "NonCanonical",
    ));
    let mut default_written = vec![0x18, 0x00];
    default_written.extend_from_slice(&e0.statement);
    cases.push(rcase(
        "statement_non_canonical_default_written",
        "entry 0 with `seq = 0` written explicitly (18 00) before its fields, signed again",
        "verify_log",
        log_inputs(ALICE, &[resigned(default_written, L_ALICE_DELEGATION)]),
        "ChainError::Decode",
        vec![],
        "NonCanonical",
    ));
    let mut wrong_wire = vec![0x1a, 0x00];
    wrong_wire.extend_from_slice(&e0.statement);
    cases.push(rcase(
        "statement_wrong_wire_type",
        "entry 0 preceded by `1a 00`: its seq field (3, a varint) written length-delimited, \
         signed again; a known field with the wrong wire type is refused, not skipped (§3.1)",
        "verify_log",
        log_inputs(ALICE, &[resigned(wrong_wire, L_ALICE_DELEGATION)]),
        "ChainError::Decode",
        vec![],
        "Malformed",
    ));
    let e1_body = {
        // Entry 1 whose body is written as device_revocation, then its real
        // device_addition: decodes to the last member, but is not canonical.
        let st = stmt_of(&alice.entries[1]);
        let mut bytes = st.encode_to_vec();
        let pos = Statement {
            body: None,
            ..st.clone()
        }
        .encode_to_vec()
        .len();
        let mut rev = vec![0x62, 0x22, 0x0a, 0x20];
        rev.extend_from_slice(d2.public_key().as_bytes());
        bytes.splice(pos..pos, rev);
        bytes
    };
    cases.push(rcase(
        "statement_oneof_alternating",
        "entry 1 whose body carries a device_revocation member before its device_addition, \
         signed again: the last member is the value (§3.1), and the encoding is not canonical",
        "verify_log",
        log_inputs(ALICE, &[e0.clone(), resigned(e1_body, L_ALICE_DEV1_SIG)]),
        "ChainError::Decode",
        vec![],
        "NonCanonical",
    ));
    cases.push(rcase(
        "statement_too_large",
        "entry 1 is MAX_STATEMENT_BYTES + 1 = 8193 bytes: refused before decoding (O1)",
        "verify_log",
        log_inputs(
            ALICE,
            &[
                e0.clone(),
                resigned(vec![0; chain::MAX_STATEMENT_BYTES + 1], L_ALICE_DEV1_SIG),
            ],
        ),
        "ChainError::Malformed",
        vec![],
        "statement too large",
    ));
    let mut v1 = stmt_of(e0);
    v1.version = 1;
    cases.push(rcase(
        "statement_version_1",
        "entry 0 with version 1 (a v1 log), signed again",
        "verify_log",
        log_inputs(ALICE, &[sign_statement(&v1, L_ALICE_DELEGATION)]),
        "ChainError::UnsupportedVersion",
        vec![],
        "1",
    ));
    let e1 = &alice.entries[1];
    let mut st = stmt_of(e1);
    st.seq = 2;
    cases.push(case(
        "statement_bad_sequence",
        "entry 1 carries seq 2",
        "verify_log",
        log_inputs(ALICE, &[e0.clone(), sign_statement(&st, L_ALICE_DEV1_SIG)]),
        "ChainError::BadSequence",
        vec![("expected", 1), ("found", 2)],
    ));
    cases.push(case(
        "log_for_another_user",
        "alice's log served when bob's was asked for",
        "verify_log",
        log_inputs(BOB, &full),
        "ChainError::WrongUser",
        vec![("seq", 0)],
    ));
    let mut st = stmt_of(e1);
    st.user_id = BOB.into();
    cases.push(case(
        "statement_wrong_user",
        "entry 1 of alice's log names bob",
        "verify_log",
        log_inputs(ALICE, &[e0.clone(), sign_statement(&st, L_ALICE_DEV1_SIG)]),
        "ChainError::WrongUser",
        vec![("seq", 1)],
    ));
    let mut st = stmt_of(e1);
    st.timestamp = T0 - 1;
    cases.push(case(
        "statement_time_went_backwards",
        "entry 1 is dated one second before entry 0",
        "verify_log",
        log_inputs(ALICE, &[e0.clone(), sign_statement(&st, L_ALICE_DEV1_SIG)]),
        "ChainError::TimeWentBackwards",
        vec![("seq", 1)],
    ));
    cases.push(case(
        "empty_log",
        "a log with no entry",
        "verify_log",
        log_inputs(ALICE, &[]),
        "ChainError::EmptyLog",
        vec![],
    ));
    let mut st = stmt_of(e1);
    st.body = None;
    cases.push(rcase(
        "statement_without_body",
        "entry 1 has no body",
        "verify_log",
        log_inputs(ALICE, &[e0.clone(), sign_statement(&st, L_ALICE_DEV1_SIG)]),
        "ChainError::Malformed",
        vec![],
        "statement without body",
    ));
    // Low-order keys in entry 0 and in an addition.
    for (name, what, reason) in [
        (
            "creation_low_order_user_key",
            "entry 0's user encryption key has the X25519 part u = 0 (low order)",
            "user encryption key",
        ),
        (
            "creation_low_order_device_key",
            "entry 0's device encryption key has the X25519 part u = 0 (low order)",
            "device encryption key",
        ),
    ] {
        let mut st = stmt_of(e0);
        if let Some(Body::UserCreation(c)) = &mut st.body {
            if reason == "user encryption key" {
                c.user_encryption_public_key = low_order().as_bytes().to_vec();
            } else if let Some(d) = &mut c.device {
                d.encryption_public_key = low_order().as_bytes().to_vec();
            }
        }
        cases.push(rcase(
            name,
            what,
            "verify_log",
            log_inputs(ALICE, &[sign_statement(&st, L_ALICE_DELEGATION)]),
            "ChainError::Malformed",
            vec![],
            reason,
        ));
    }
    cases.push(rcase(
        "addition_low_order_device_key",
        "entry 1 adds device 3 with an encryption key whose X25519 part is u = 0 (low order)",
        "verify_log",
        log_inputs(
            ALICE,
            &then(&full[..1], s0.add_device(&d1, &d3, &low_order(), T0 + 60)),
        ),
        "ChainError::Malformed",
        vec![],
        "device encryption key",
    ));

    // --- standalone decode limits (§3.1) ---
    cases.push(rcase(
        "signed_invite_too_large",
        "a standalone SignedInvite of MAX_SIGNED_INVITE_BYTES + 1 = 1153 bytes",
        "decode_signed_invite",
        vec![("bytes", h(vec![0u8; invite::MAX_SIGNED_INVITE_BYTES + 1]))],
        "ChainError::Decode",
        vec![],
        "TooLarge",
    ));
    cases.push(rcase(
        "signed_invite_not_protobuf",
        "a standalone SignedInvite that is not protobuf (a truncated length-delimited field)",
        "decode_signed_invite",
        vec![("bytes", h([0x0a, 0x05, 0x01]))],
        "ChainError::Decode",
        vec![],
        "Malformed",
    ));
    cases.push(rcase(
        "signed_statement_too_large",
        "a standalone SignedStatement of MAX_SIGNED_STATEMENT_BYTES + 1 = 8321 bytes",
        "decode_signed_statement",
        vec![("bytes", h(vec![0u8; chain::MAX_SIGNED_STATEMENT_BYTES + 1]))],
        "ChainError::Decode",
        vec![],
        "TooLarge",
    ));
    // Standalone wrapped keys and grants (§6.5): one error, WrapError::Malformed.
    let (_, _, w) = wrap_vector();
    let g = grant_vector();
    let mut w_big = w.encode_to_vec();
    w_big.extend_from_slice(&[0x7a, 0x80, 0x08]); // unknown field 15, 1024 bytes
    w_big.resize(w_big.len() + 1024, 0);
    assert!(w_big.len() > wrap::MAX_WRAPPED_KEY_BYTES);
    let mut g_big = g.encode_to_vec();
    g_big.extend_from_slice(&[0x7a, 0x80, 0x08]);
    g_big.resize(g_big.len() + 1024, 0);
    for (name, description, operation, bytes) in [
        (
            "wrapped_key_too_large",
            "a standalone WrappedKey (the wrap vector's) padded with an unknown 1024-byte field to \
             2252 bytes, over MAX_WRAPPED_KEY_BYTES = 2048: refused before decoding",
            "decode_wrapped_key",
            w_big,
        ),
        (
            "wrapped_key_not_protobuf",
            "a standalone WrappedKey that is not protobuf (a truncated length-delimited field)",
            "decode_wrapped_key",
            vec![0x0a, 0x05, 0x01],
        ),
        (
            "device_grant_too_large",
            "a standalone DeviceGrant (the grant vector's) padded with an unknown 1024-byte field \
             to 2268 bytes, over MAX_WRAPPED_KEY_BYTES = 2048",
            "decode_device_grant",
            g_big,
        ),
        (
            "device_grant_not_protobuf",
            "a standalone DeviceGrant that is not protobuf (a truncated length-delimited field)",
            "decode_device_grant",
            vec![0x0a, 0x05, 0x01],
        ),
    ] {
        cases.push(case(
            name,
            description,
            operation,
            vec![("bytes", h(bytes))],
            "WrapError::Malformed",
            vec![],
        ));
    }

    // --- proto3 framing edge cases (§3.1), on a standalone SignedStatement ---
    let signed_e0 = alice.entries[0].encode_to_vec();
    let with = |tail: &[u8]| {
        let mut b = signed_e0.clone();
        b.extend_from_slice(tail);
        b
    };
    for (name, description, bytes) in [
        (
            "signed_statement_unknown_group",
            "entry 0 as a SignedStatement with an empty group appended in an unknown field \
             (15: start group 7b, end group 7c): groups are refused, even unknown ones",
            with(&[0x7b, 0x7c]),
        ),
        (
            "signed_statement_varint_too_long",
            "entry 0 with an unknown varint field 3 whose value takes 11 bytes",
            with(&[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
        ),
        (
            "signed_statement_varint_over_64_bits",
            "entry 0 with an unknown varint field 3 of 10 bytes whose last is 02 (2^64)",
            with(&[
                0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02,
            ]),
        ),
        (
            "signed_statement_field_zero",
            "entry 0 with a varint field numbered 0 appended (00 00)",
            with(&[0x00, 0x00]),
        ),
        (
            "signed_statement_wire_type_6",
            "entry 0 with a field of the reserved wire type 6 appended (1e)",
            with(&[0x1e]),
        ),
        (
            "signed_statement_wire_type_7",
            "entry 0 with a field of the reserved wire type 7 appended (1f)",
            with(&[0x1f]),
        ),
    ] {
        cases.push(rcase(
            name,
            description,
            "decode_signed_statement",
            vec![("bytes", h(bytes))],
            "ChainError::Decode",
            vec![],
            "Malformed",
        ));
    }
    // A uint32 whose varint is 2^32 + 2: decoded modulo 2^32 (to 2, as
    // protobuf does), so it is not refused as malformed, but its encoding is
    // not the canonical one.
    let mut over = vec![0x08, 0x82, 0x80, 0x80, 0x80, 0x10];
    over.extend_from_slice(&e0.statement[2..]);
    assert_eq!(&e0.statement[..2], &[0x08, 0x02]);
    cases.push(rcase(
        "statement_version_over_32_bits",
        "entry 0 with its version (uint32) written as the varint of 2^32 + 2 \
         (08 82 80 80 80 10), signed again: it decodes to 2 and is not canonical",
        "verify_log",
        log_inputs(ALICE, &[resigned(over, L_ALICE_DELEGATION)]),
        "ChainError::Decode",
        vec![],
        "NonCanonical",
    ));

    // --- the handshake (§8) ---
    let prod = auth_audience();
    let challenge = auth_challenge();
    let staging = auth::Audience::relay(rootp, "chu-example-staging");
    let nonce: [u8; 32] = challenge.nonce.clone().try_into().unwrap();
    let for_staging = auth::respond(&d2, ALICE, &staging, &staging.challenge(nonce)).unwrap();
    cases.push(case(
        "auth_response_for_another_instance",
        "a response signed for the staging relay's challenge (same nonce), checked by the \
         production relay",
        "verify_response",
        auth_inputs(&prod, &challenge, &for_staging),
        "AuthError::BadSignature",
        vec![],
    ));
    let other_org = auth::Audience::relay(dev(L_STRANGER).public_key(), AUTH_INSTANCE);
    let for_other_org = auth::respond(&d2, ALICE, &other_org, &other_org.challenge(nonce)).unwrap();
    cases.push(case(
        "auth_response_for_another_organisation",
        "a response signed for a relay of the same service and instance id under another \
         organisation root",
        "verify_response",
        auth_inputs(&prod, &challenge, &for_other_org),
        "AuthError::BadSignature",
        vec![],
    ));
    let mut v1_response = auth::respond(&d2, ALICE, &prod, &challenge).unwrap();
    v1_response.version = 0;
    cases.push(rcase(
        "auth_response_v1_device",
        "a response without a version (as a v1 device sends it)",
        "verify_response",
        auth_inputs(&prod, &challenge, &v1_response),
        "AuthError::UnsupportedVersion",
        vec![],
        "0",
    ));
    let mut short_id = auth::respond(&d2, ALICE, &prod, &challenge).unwrap();
    short_id.device_id = vec![1, 2, 3];
    cases.push(case(
        "auth_response_malformed_device_id",
        "a response whose device id is 3 bytes",
        "verify_response",
        auth_inputs(&prod, &challenge, &short_id),
        "AuthError::Malformed",
        vec![],
    ));
    cases.push(case(
        "auth_challenge_for_another_instance",
        "a device that dialled the production relay is sent the staging relay's challenge",
        "respond",
        respond_inputs(&prod, &staging.challenge(nonce)),
        "AuthError::UnexpectedChallenge",
        vec![],
    ));
    let ks = auth::Audience::keyserver(rootp, AUTH_INSTANCE);
    cases.push(case(
        "auth_challenge_for_another_service",
        "a device that dialled the relay is sent the keyserver's challenge",
        "respond",
        respond_inputs(&prod, &ks.challenge(nonce)),
        "AuthError::UnexpectedChallenge",
        vec![],
    ));
    let mut v1_challenge = challenge.clone();
    v1_challenge.version = 1;
    cases.push(rcase(
        "auth_challenge_version_1",
        "a challenge of version 1 (a v1 server)",
        "respond",
        respond_inputs(&prod, &v1_challenge),
        "AuthError::UnsupportedVersion",
        vec![],
        "1",
    ));
    let mut short_nonce = challenge.clone();
    short_nonce.nonce.truncate(16);
    cases.push(case(
        "auth_challenge_short_nonce",
        "a challenge whose nonce is 16 bytes",
        "respond",
        respond_inputs(&prod, &short_nonce),
        "AuthError::UnexpectedChallenge",
        vec![],
    ));

    for c in &cases {
        let fields: Vec<(String, u64)> = c
            .fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let inputs = o(c.inputs.iter().map(|(k, v)| (*k, clone_j(v))).collect());
        let value: Value = serde_json::from_str(&to_text(&inputs)).unwrap();
        run_negative(c.name, c.operation, &value, &c.error, &fields, c.reason);
    }
    cases
}

fn gen_chain_negative() -> J {
    file(
        "Ward v2 negative cases for the identity chain, standalone decode limits and the \
         handshake (SECURITY.md §3.1, §4, §8): each must fail with exactly the named error \
         (Rust: Enum::Variant, with error_fields where the variant carries them, and \
         error_reason: the normative reason string of Malformed, InvalidTransition or KeyInUse, \
         the DecodeError variant of Decode, or the version of UnsupportedVersion). Operations \
         as in ward-v2-negative.json, plus: decode_signed_invite(bytes) and \
         decode_signed_statement(bytes) (§3.1 limits and framing), decode_wrapped_key(bytes) \
         and decode_device_grant(bytes) (§6.5 limits); verify_response(org_root_public, \
         service, instance, challenge, response) on the server; respond(device_secret, \
         user_id, expected org_root_public/service/instance, challenge) on the device. Logs \
         reuse alice's log of ward-v2-chain.json.",
        vec![("cases", cases_json(chain_negative_cases()))],
    )
}

// ---------------------------------------------------------------------------
// Replay: JSON in, core out.
// ---------------------------------------------------------------------------

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))).unwrap()
}

fn st(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn signing_public(v: &Value) -> SigningPublicKey {
    SigningPublicKey::from_bytes(&hx(v)).unwrap()
}

fn enc_public(v: &Value) -> EncryptionPublicKey {
    EncryptionPublicKey::from_bytes(&hx(v)).unwrap()
}

fn parse_log(v: &Value) -> Vec<SignedStatement> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| SignedStatement {
            statement: hx(&e["statement"]),
            signature: hx(&e["signature"]),
        })
        .collect()
}

fn ed25519_verifies(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let vk = VerifyingKey::from_bytes(public.try_into().unwrap()).unwrap();
    vk.verify_strict(msg, &Signature::from_slice(sig).unwrap())
        .is_ok()
}

fn run_negative(
    name: &str,
    op: &str,
    inputs: &Value,
    expected: &str,
    fields: &[(String, u64)],
    reason: Option<&str>,
) {
    let what = format!("negative case {name}");
    match op {
        "verify_response" => {
            let audience = auth::Audience {
                service: st(&inputs["service"]).into(),
                instance: st(&inputs["instance"]).into(),
                org_root: signing_public(&inputs["org_root_public"]),
            };
            let challenge = AuthChallenge::decode(hx(&inputs["challenge"]).as_slice()).unwrap();
            let response = AuthResponse::decode(hx(&inputs["response"]).as_slice()).unwrap();
            let r = auth::verify_response(&audience, &challenge, &response);
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "respond" => {
            let audience = auth::Audience {
                service: st(&inputs["service"]).into(),
                instance: st(&inputs["instance"]).into(),
                org_root: signing_public(&inputs["org_root_public"]),
            };
            let key = DeviceSigningKey::import_secret(&hx(&inputs["device_secret"])).unwrap();
            let challenge = AuthChallenge::decode(hx(&inputs["challenge"]).as_slice()).unwrap();
            let r = auth::respond(&key, st(&inputs["user_id"]), &audience, &challenge);
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "decode_signed_invite" => {
            let r = invite::decode_signed_invite(&hx(&inputs["bytes"]));
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "decode_signed_statement" => {
            let r = chain::decode_signed_statement(&hx(&inputs["bytes"]));
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "decode_wrapped_key" => {
            let r = wrap::decode_wrapped_key(&hx(&inputs["bytes"]));
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "decode_device_grant" => {
            let r = wrap::decode_device_grant(&hx(&inputs["bytes"]));
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "unwrap_resource_key" => {
            let w = WrappedKey::decode(hx(&inputs["wrapped_key"]).as_slice()).unwrap();
            let rid = ResourceId::from_slice(&hx(&inputs["resource_id"])).unwrap();
            let key = UserEncryptionKey::import_secret(&hx(&inputs["user_secret"])).unwrap();
            assert_error(
                &what,
                wrap::unwrap_resource_key(&w, &rid, &key),
                expected,
                fields,
            );
        }
        "accept_grant" => {
            let g = DeviceGrant::decode(hx(&inputs["grant"]).as_slice()).unwrap();
            let device = DeviceEncryptionKey::import_secret(&hx(&inputs["device_secret"])).unwrap();
            let expected_user = enc_public(&inputs["expected_user_public"]);
            assert_error(
                &what,
                wrap::accept_grant(&g, &device, &expected_user),
                expected,
                fields,
            );
        }
        "parse_encryption_key" => {
            assert_error(
                &what,
                EncryptionPublicKey::from_bytes(&hx(&inputs["public"])),
                expected,
                fields,
            );
        }
        "parse_envelope" => {
            assert_error_reason(
                &what,
                ReceivedEnvelope::parse(&hx(&inputs["envelope"])),
                expected,
                fields,
                reason,
            );
        }
        "open_envelope" => {
            let root = signing_public(&inputs["org_root_public"]);
            let sender = chain::verify_log(
                &root,
                st(&inputs["sender_user_id"]),
                &parse_log(&inputs["sender_log"]),
            )
            .unwrap();
            let key = ResourceKey::import_secret(&hx(&inputs["resource_key"])).unwrap();
            let r = ReceivedEnvelope::parse(&hx(&inputs["envelope"]))
                .and_then(|env| env.open(&sender, st(&inputs["me"]), &key));
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "seal_envelope" => assert_error_reason(&what, run_seal(inputs), expected, fields, reason),
        "verify_log" => {
            let root = signing_public(&inputs["org_root_public"]);
            let r = chain::verify_log(&root, st(&inputs["user_id"]), &parse_log(&inputs["log"]));
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "update_log" => {
            let root = signing_public(&inputs["org_root_public"]);
            let known = chain::verify_log(
                &root,
                st(&inputs["user_id"]),
                &parse_log(&inputs["known_log"]),
            )
            .unwrap();
            let r = known.update(&root, &parse_log(&inputs["served_log"]));
            assert_error_reason(&what, r, expected, fields, reason);
        }
        "verify_invite" => {
            let root = signing_public(&inputs["org_root_public"]);
            let signed = SignedInvite::decode(hx(&inputs["signed_invite"]).as_slice()).unwrap();
            assert_error(
                &what,
                invite::verify_invite(&root, &signed),
                expected,
                fields,
            );
        }
        other => panic!("{what}: unknown operation {other}"),
    }
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{VECTOR_DIR}{name}"))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1, "{name}");
    assert!(v["description"].is_string(), "{name}");
    v
}

fn replay_keys(v: &Value) {
    for k in v["keys"].as_array().unwrap() {
        let secret = hx(&k["secret"]);
        assert_eq!(secret, seed(st(&k["label"])));
        let public = match st(&k["type"]) {
            "OrgRootKey" => OrgRootKey::import_secret(&secret)
                .unwrap()
                .public_key()
                .as_bytes()
                .to_vec(),
            "DelegationKey" => DelegationKey::import_secret(&secret)
                .unwrap()
                .public_key()
                .as_bytes()
                .to_vec(),
            "DeviceSigningKey" => DeviceSigningKey::import_secret(&secret)
                .unwrap()
                .public_key()
                .as_bytes()
                .to_vec(),
            "UserEncryptionKey" => UserEncryptionKey::import_secret(&secret)
                .unwrap()
                .public_key()
                .as_bytes()
                .to_vec(),
            "DeviceEncryptionKey" => DeviceEncryptionKey::import_secret(&secret)
                .unwrap()
                .public_key()
                .as_bytes()
                .to_vec(),
            other => panic!("unknown key type {other}"),
        };
        assert_eq!(public, hx(&k["public"]), "{}", k["label"]);
        // Independently of the core's types.
        let direct: Vec<u8> = match st(&k["algorithm"]) {
            "Ed25519" => SigningKey::from_bytes(&secret.clone().try_into().unwrap())
                .verifying_key()
                .to_bytes()
                .to_vec(),
            "X-Wing" => {
                use x_wing::{Decapsulator, KeyExport};
                let dk = x_wing::DecapsulationKey::from(<[u8; 32]>::try_from(secret).unwrap());
                let pk = dk.encapsulation_key().to_bytes().to_vec();
                assert_eq!(
                    sha256(&framed(labels::HASH_KEY_ID, &[&pk])).to_vec(),
                    hx(&k["key_id"])
                );
                pk
            }
            other => panic!("unknown algorithm {other}"),
        };
        assert_eq!(direct.to_vec(), public);
    }
    let core_labels: [(&str, &[u8]); 15] = [
        ("SIG_INVITE", labels::SIG_INVITE),
        ("SIG_STATEMENT", labels::SIG_STATEMENT),
        ("SIG_DEVICE_POSSESSION", labels::SIG_DEVICE_POSSESSION),
        ("SIG_ENVELOPE", labels::SIG_ENVELOPE),
        ("HASH_CIPHERTEXT", labels::HASH_CIPHERTEXT),
        ("ENVELOPE_AEAD_KEY", labels::ENVELOPE_AEAD_KEY),
        ("ENVELOPE_KEY_COMMITMENT", labels::ENVELOPE_KEY_COMMITMENT),
        ("SIG_AUTH", labels::SIG_AUTH),
        ("SIG_RELAY_LINK", labels::SIG_RELAY_LINK),
        ("SIG_ENROL_AUTH", labels::SIG_ENROL_AUTH),
        ("HASH_INVITE", labels::HASH_INVITE),
        ("HASH_ENTRY", labels::HASH_ENTRY),
        ("WRAP_INFO", labels::WRAP_INFO),
        ("GRANT_INFO", labels::GRANT_INFO),
        ("HASH_KEY_ID", labels::HASH_KEY_ID),
    ];
    let listed = v["labels"].as_array().unwrap();
    assert_eq!(listed.len(), core_labels.len());
    for (l, (name, bytes)) in listed.iter().zip(core_labels) {
        assert_eq!(st(&l["name"]), name);
        assert_eq!(st(&l["ascii"]).as_bytes(), bytes);
        assert_eq!(hx(&l["hex"]), bytes);
    }
    for f in v["framing"].as_array().unwrap() {
        let parts: Vec<Vec<u8>> = f["parts"].as_array().unwrap().iter().map(hx).collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let framed_bytes = framed(st(&f["label"]).as_bytes(), &refs);
        assert_eq!(framed_bytes, hx(&f["framed"]));
        assert_eq!(sha256(&framed_bytes).to_vec(), hx(&f["sha256"]));
    }
    for p in v["padding"].as_array().unwrap() {
        let n = usize::try_from(num(&p["content_len"])).unwrap();
        assert_eq!(padding::padded_len(n) as u64, num(&p["padded_len"]), "{n}");
    }
}

fn replay_wrap(v: &Value) {
    let r = &v["resource_key_wrap"];
    let encoded = hx(&r["encoded"]);
    let w = WrappedKey::decode(encoded.as_slice()).unwrap();
    let f = &r["wrapped_key"];
    assert_eq!(w.resource_id, hx(&f["resource_id"]));
    assert_eq!(w.recipient_key, hx(&f["recipient_key"]));
    assert_eq!(w.enc, hx(&f["enc"]));
    assert_eq!(w.ciphertext, hx(&f["ciphertext"]));
    assert_eq!((w.enc.len(), w.ciphertext.len()), (1120, 48));
    assert_eq!(w.resource_id, hx(&r["resource_id"]));
    assert_eq!(w.recipient_key, hx(&r["recipient_key_id"]));
    assert_eq!(
        hx(&r["recipient_key_id"]),
        sha256(&framed(labels::HASH_KEY_ID, &[&hx(&r["recipient_public"])]))
    );
    assert_eq!(hx(&r["info"]), labels::WRAP_INFO);
    assert_eq!(
        hx(&r["aad"]),
        [hx(&r["resource_id"]), hx(&r["recipient_key_id"])].concat()
    );
    // The spec's construction, step by step, gives the same bytes.
    let spec = spec_seal(
        &hx(&r["recipient_public"]),
        &hx(&r["eseed"]),
        &hx(&r["info"]),
        &hx(&r["aad"]),
        &hx(&r["resource_key"]),
    );
    assert_eq!(spec.shared_secret, hx(&r["shared_secret"]));
    assert_eq!(spec.key, hx(&r["key"]));
    assert_eq!(spec.base_nonce, hx(&r["base_nonce"]));
    assert_eq!((spec.enc, spec.ct), (w.enc.clone(), w.ciphertext.clone()));
    let rid = ResourceId::from_slice(&hx(&r["resource_id"])).unwrap();
    let user = UserEncryptionKey::import_secret(&hx(&r["recipient_secret"])).unwrap();
    assert_eq!(
        user.public_key().as_bytes().to_vec(),
        hx(&r["recipient_public"])
    );
    let key = wrap::unwrap_resource_key(&w, &rid, &user).unwrap();
    assert_eq!(key.export_secret().to_vec(), hx(&r["resource_key"]));
    // Wrapping again with the same eseed gives the same bytes.
    let mut rng = ScriptRng::new(&[&hx(&r["eseed"])]);
    let again = wrap::wrap_resource_key(&mut rng, &key, &rid, &user.public_key()).unwrap();
    rng.done();
    assert_eq!(again.encode_to_vec(), encoded);

    let g = &v["device_grant"];
    let encoded = hx(&g["encoded"]);
    let grant = DeviceGrant::decode(encoded.as_slice()).unwrap();
    let f = &g["grant"];
    assert_eq!(grant.user_key, hx(&f["user_key"]));
    assert_eq!(grant.device_key, hx(&f["device_key"]));
    assert_eq!(grant.enc, hx(&f["enc"]));
    assert_eq!(grant.ciphertext, hx(&f["ciphertext"]));
    assert_eq!(grant.user_key, hx(&g["user_key_id"]));
    assert_eq!(grant.device_key, hx(&g["device_key_id"]));
    assert_eq!(hx(&g["info"]), labels::GRANT_INFO);
    assert_eq!(
        hx(&g["aad"]),
        [hx(&g["user_key_id"]), hx(&g["device_key_id"])].concat()
    );
    let spec = spec_seal(
        &hx(&g["device_public"]),
        &hx(&g["eseed"]),
        &hx(&g["info"]),
        &hx(&g["aad"]),
        &hx(&g["user_secret"]),
    );
    assert_eq!(spec.shared_secret, hx(&g["shared_secret"]));
    assert_eq!(
        (spec.enc, spec.ct),
        (grant.enc.clone(), grant.ciphertext.clone())
    );
    let device = DeviceEncryptionKey::import_secret(&hx(&g["device_secret"])).unwrap();
    assert_eq!(
        device.public_key().as_bytes().to_vec(),
        hx(&g["device_public"])
    );
    let user_public = enc_public(&g["user_public"]);
    let user = wrap::accept_grant(&grant, &device, &user_public).unwrap();
    assert_eq!(user.export_secret().to_vec(), hx(&g["user_secret"]));
    let mut rng = ScriptRng::new(&[&hx(&g["eseed"])]);
    let again = wrap::grant_user_key(&mut rng, &user, &device.public_key()).unwrap();
    rng.done();
    assert_eq!(again.encode_to_vec(), encoded);

    let cases = v["negative"].as_array().unwrap();
    let mut seen = Vec::new();
    for c in cases {
        let name = st(&c["name"]);
        run_negative(
            name,
            st(&c["operation"]),
            &c["inputs"],
            st(&c["error"]),
            &[],
            None,
        );
        seen.push(st(&c["operation"]));
    }
    for op in [
        "unwrap_resource_key",
        "accept_grant",
        "parse_encryption_key",
    ] {
        assert!(seen.contains(&op), "no wrap negative case for {op}");
    }
}

fn replay_envelope(v: &Value) {
    let root = signing_public(&v["org_root_public"]);
    let logs = v["logs"].as_object().unwrap();
    let chains: Vec<(String, VerifiedUser)> = logs
        .iter()
        .map(|(id, log)| {
            (
                id.clone(),
                chain::verify_log(&root, id, &parse_log(log)).unwrap(),
            )
        })
        .collect();
    let chain_of = |id: &str| chain_of(&chains, id);
    for e in v["envelopes"].as_array().unwrap() {
        let inp = &e["seal_inputs"];
        let name = st(&e["name"]);
        let bytes = hx(&e["envelope"]);
        let env = Envelope::decode(bytes.as_slice()).unwrap();
        assert_eq!(env.header, hx(&e["header"]), "{name}");
        assert_eq!(env.ciphertext, hx(&e["ciphertext"]), "{name}");
        assert_eq!(env.signature, hx(&e["signature"]), "{name}");

        // The header carries the seal inputs.
        let hd = EnvelopeHeader::decode(env.header.as_slice()).unwrap();
        assert_eq!(hd.version, ward_core::proto::PROTOCOL_VERSION);
        assert_eq!(hd.resource_id, hx(&inp["resource_id"]));
        assert_eq!(hd.conversation_id, hx(&inp["conversation_id"]));
        assert_eq!(hd.sender_user_id, st(&inp["sender_user_id"]));
        assert_eq!(hd.sender_device_id, hx(&inp["sender_device_id"]));
        assert_eq!(hd.timestamp_ms, num(&inp["timestamp_ms"]));
        assert_eq!(
            u64::try_from(hd.content_type).unwrap(),
            num(&inp["content_type_wire"])
        );
        assert_eq!(hd.nonce, hx(&inp["nonce"]));
        let recipients: Vec<&str> = inp["recipient_user_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(st)
            .collect();
        assert_eq!(hd.recipient_user_ids, recipients);

        // Key schedule, padding, AEAD, digest and signature, independently
        // of the core.
        let rk: [u8; 32] = hx(&inp["resource_key"]).try_into().unwrap();
        let (aead_key, commitment) = envelope_keys(&rk, &hd.resource_id);
        assert_eq!(aead_key.to_vec(), hx(&e["aead_key"]), "{name}");
        assert_eq!(commitment.to_vec(), hx(&e["key_commitment"]), "{name}");
        assert_eq!(hd.key_commitment, commitment.to_vec(), "{name}");
        let content = hx(&inp["content"]);
        let padded = hx(&e["padded_plaintext"]);
        assert_eq!(padded, pad(&content));
        let ct = XChaCha20Poly1305::new(&aead_key.into())
            .encrypt(
                &nonce24(&hd.nonce).into(),
                Payload {
                    msg: &padded,
                    aad: &env.header,
                },
            )
            .unwrap();
        assert_eq!(ct, env.ciphertext, "{name}");
        assert_eq!(
            ciphertext_digest(&env.ciphertext).to_vec(),
            hx(&e["ciphertext_digest"])
        );
        let sig_input = hx(&e["signature_input"]);
        assert_eq!(sig_input, envelope_sig_input(&env.header, &env.ciphertext));
        assert!(ed25519_verifies(
            &hd.sender_device_id,
            &sig_input,
            &env.signature
        ));
        let device = DeviceSigningKey::import_secret(&hx(&inp["sender_device_secret"])).unwrap();
        assert_eq!(device.public_key().as_bytes().to_vec(), hd.sender_device_id);

        // Every recipient unwraps its key and opens.
        let sender = chain_of(st(&inp["sender_user_id"]));
        let received = ReceivedEnvelope::parse(&bytes).unwrap();
        let wrapped = e["wrapped_keys"].as_array().unwrap();
        assert_eq!(wrapped.len(), recipients.len());
        for (wk, id) in wrapped.iter().zip(&recipients) {
            assert_eq!(st(&wk["user_id"]), *id);
            let user = UserEncryptionKey::import_secret(&hx(&wk["user_secret"])).unwrap();
            assert_eq!(
                user.public_key().as_bytes().to_vec(),
                hx(&wk["user_public"])
            );
            assert_eq!(&user.public_key(), chain_of(id).encryption_key());
            let w = WrappedKey::decode(hx(&wk["wrapped_key"]).as_slice()).unwrap();
            let key = wrap::unwrap_resource_key(&w, &received.resource_id(), &user).unwrap();
            assert_eq!(key.export_secret().to_vec(), rk.to_vec());
            let msg = received.open(sender, id, &key).unwrap();
            assert_eq!(&msg.content[..], &content[..], "{name}");
            assert_eq!(msg.sender_user_id, hd.sender_user_id);
            assert_eq!(msg.timestamp_ms, hd.timestamp_ms);
            assert_eq!(msg.recipients, hd.recipient_user_ids);
            assert_eq!(msg.resource_id.as_bytes().to_vec(), hd.resource_id);
            assert_eq!(msg.conversation_id.as_bytes().to_vec(), hd.conversation_id);
            let ct_name = content_type_name(msg.content_type);
            assert_eq!(ct_name, st(&inp["content_type"]));
        }

        // Sealing again from the same draws gives the same bytes.
        let ikms: Vec<Vec<u8>> = wrapped.iter().map(|w| hx(&w["eseed"])).collect();
        let (rid, nonce) = (hx(&inp["resource_id"]), hx(&inp["nonce"]));
        let mut script: Vec<&[u8]> = vec![&rk, &rid, &nonce];
        script.extend(ikms.iter().map(Vec::as_slice));
        let mut rng = ScriptRng::new(&script);
        let recipient_chains: Vec<&VerifiedUser> = recipients.iter().map(|r| chain_of(r)).collect();
        let again = envelope::seal(
            &mut rng,
            &device,
            sender,
            &SealRequest {
                conversation_id: ConversationId::from_slice(&hd.conversation_id).unwrap(),
                recipients: &recipient_chains,
                content_type: msg_type(st(&inp["content_type"])),
                content: &content,
                timestamp_ms: hd.timestamp_ms,
            },
        )
        .unwrap();
        rng.done();
        assert_eq!(again.envelope, bytes, "{name}");
        for ((_, w), wk) in again.wrapped_keys.iter().zip(wrapped) {
            assert_eq!(w.encode_to_vec(), hx(&wk["wrapped_key"]));
        }
    }
}

fn chain_of<'a>(chains: &'a [(String, VerifiedUser)], id: &str) -> &'a VerifiedUser {
    &chains.iter().find(|(c, _)| c == id).unwrap().1
}

fn msg_type(name: &str) -> ContentType {
    match name {
        "text" => ContentType::Text,
        "file" => ContentType::File,
        "attachment" => ContentType::Attachment,
        "room_history" => ContentType::RoomHistory,
        other => panic!("unknown content type {other}"),
    }
}

fn replay_signatures(v: &Value) {
    let a = &v["auth"];
    let c = &a["challenge"];
    let challenge = AuthChallenge::decode(hx(&c["encoded"]).as_slice()).unwrap();
    assert_eq!(u64::from(challenge.version), num(&c["version"]));
    assert_eq!(challenge.service, st(&c["service"]));
    assert_eq!(challenge.instance, st(&c["instance"]));
    assert_eq!(challenge.nonce, hx(&c["nonce"]));
    let auth_root = signing_public(&a["org_root_public"]);
    let audience = auth::Audience {
        service: challenge.service.clone(),
        instance: challenge.instance.clone(),
        org_root: auth_root,
    };
    let response = AuthResponse::decode(hx(&a["response"]).as_slice()).unwrap();
    assert_eq!(response.user_id, st(&a["user_id"]));
    assert_eq!(response.device_id, hx(&a["device_id"]));
    assert_eq!(response.signature, hx(&a["signature"]));
    let transcript = framed(
        labels::SIG_AUTH,
        &[
            &challenge.version.to_be_bytes(),
            challenge.service.as_bytes(),
            challenge.instance.as_bytes(),
            auth_root.as_bytes(),
            &challenge.nonce,
            response.user_id.as_bytes(),
            &response.device_id,
        ],
    );
    assert_eq!(transcript, hx(&a["transcript"]));
    assert!(ed25519_verifies(
        &response.device_id,
        &transcript,
        &response.signature
    ));
    let (user, device) = auth::verify_response(&audience, &challenge, &response).unwrap();
    assert_eq!(user, st(&a["user_id"]));
    assert_eq!(device.as_bytes().to_vec(), hx(&a["device_id"]));
    let key = DeviceSigningKey::import_secret(&hx(&a["device_secret"])).unwrap();
    assert_eq!(
        auth::respond(&key, &user, &audience, &challenge).unwrap(),
        response
    );

    let e = &v["enrol_auth"];
    let c = &e["challenge"];
    let challenge = AuthChallenge::decode(hx(&c["encoded"]).as_slice()).unwrap();
    let enrol_root = signing_public(&e["org_root_public"]);
    let audience = auth::Audience {
        service: challenge.service.clone(),
        instance: challenge.instance.clone(),
        org_root: enrol_root,
    };
    let response = AuthResponse::decode(hx(&e["response"]).as_slice()).unwrap();
    assert_eq!(response.invite, hx(&e["signed_invite"]));
    assert_eq!(response.invite_signature, hx(&e["invite_signature"]));
    let parts: [&[u8]; 7] = [
        &challenge.version.to_be_bytes(),
        challenge.service.as_bytes(),
        challenge.instance.as_bytes(),
        enrol_root.as_bytes(),
        &challenge.nonce,
        st(&e["user_id"]).as_bytes(),
        &hx(&e["device_id"]),
    ];
    assert_eq!(
        framed(labels::SIG_AUTH, &parts),
        hx(&e["device_transcript"])
    );
    assert_eq!(
        framed(labels::SIG_ENROL_AUTH, &parts),
        hx(&e["enrol_transcript"])
    );
    let (user, device) = auth::verify_response(&audience, &challenge, &response).unwrap();
    let invite = auth::verify_enrolment(
        &audience,
        &challenge,
        &user,
        &device,
        &response.invite,
        &response.invite_signature,
    )
    .unwrap();
    assert_eq!(
        invite.delegation_key.as_bytes().to_vec(),
        SigningKey::from_bytes(&hx(&e["delegation_seed"]).try_into().unwrap())
            .verifying_key()
            .to_bytes()
            .to_vec()
    );
    // The device's signature in the delegation's place, and no proof at all.
    assert_eq!(
        auth::verify_enrolment(
            &audience,
            &challenge,
            &user,
            &device,
            &response.invite,
            &response.signature
        ),
        Err(AuthError::BadInviteSignature)
    );
    assert_eq!(
        auth::verify_enrolment(&audience, &challenge, &user, &device, &[], &[]),
        Err(AuthError::NoInvite)
    );

    let l = &v["relay_link"];
    let c = &l["challenge"];
    let challenge = AuthChallenge::decode(hx(&c["encoded"]).as_slice()).unwrap();
    assert_eq!(challenge.service, st(&c["service"]));
    assert_eq!(challenge.instance, st(&c["instance"]));
    let link_root = signing_public(&l["org_root_public"]);
    let audience = auth::Audience {
        service: challenge.service.clone(),
        instance: challenge.instance.clone(),
        org_root: link_root,
    };
    let response = AuthResponse::decode(hx(&l["response"]).as_slice()).unwrap();
    assert!(response.user_id.is_empty() && response.log.is_empty());
    assert_eq!(response.device_id, hx(&l["service_key"]));
    let transcript = framed(
        labels::SIG_RELAY_LINK,
        &[
            &challenge.version.to_be_bytes(),
            challenge.service.as_bytes(),
            challenge.instance.as_bytes(),
            link_root.as_bytes(),
            &challenge.nonce,
            &response.device_id,
        ],
    );
    assert_eq!(transcript, hx(&l["transcript"]));
    assert!(ed25519_verifies(
        &response.device_id,
        &transcript,
        &response.signature
    ));
    assert_eq!(
        auth::verify_link_response(&audience, &challenge, &response)
            .unwrap()
            .as_bytes()
            .to_vec(),
        hx(&l["service_key"])
    );
    let key = RelayServiceKey::import_secret(&hx(&l["service_secret"])).unwrap();
    assert_eq!(
        auth::respond_link(&key, &audience, &challenge).unwrap(),
        response
    );

    let i = &v["invite"];
    let root_key = OrgRootKey::import_secret(&hx(&i["org_root_secret"])).unwrap();
    let root = signing_public(&i["org_root_public"]);
    assert_eq!(root_key.public_key(), root);
    let signed = SignedInvite::decode(hx(&i["signed_invite"]).as_slice()).unwrap();
    assert_eq!(signed.invite, hx(&i["invite"]));
    assert_eq!(signed.signature, hx(&i["signature"]));
    let sig_input = framed(labels::SIG_INVITE, &[&signed.invite]);
    assert_eq!(sig_input, hx(&i["signature_input"]));
    assert!(ed25519_verifies(
        root.as_bytes(),
        &sig_input,
        &signed.signature
    ));
    let decoded = Invite::decode(signed.invite.as_slice()).unwrap();
    assert_eq!(decoded.delegation_public_key, hx(&i["delegation_public"]));
    let verified = invite::verify_invite(&root, &signed).unwrap();
    let details = InviteDetails {
        user_id: st(&i["user_id"]).into(),
        display_name: st(&i["display_name"]).into(),
        profession: st(&i["profession"]).into(),
        registry_number: st(&i["registry_number"]).into(),
        expires_at: num(&i["expires_at"]),
    };
    assert_eq!(verified.details, details);
    assert_eq!(
        verified.delegation_key.as_bytes().to_vec(),
        hx(&i["delegation_public"])
    );
    assert_eq!(verified.hash.to_vec(), hx(&i["invite_hash"]));
    assert_eq!(
        verified.hash,
        sha256(&framed(labels::HASH_INVITE, &[&signed.invite]))
    );
    let mut rng = ScriptRng::new(&[&hx(&i["delegation_seed"])]);
    let (again, delegation) = invite::create_invite(&mut rng, &root_key, &details).unwrap();
    rng.done();
    assert_eq!(again, signed);
    assert_eq!(delegation.public_key(), verified.delegation_key);
}

fn replay_chain(v: &Value) {
    let root = signing_public(&v["org_root_public"]);
    let user_id = st(&v["user_id"]);
    let signed_invite = SignedInvite::decode(hx(&v["signed_invite"]).as_slice()).unwrap();
    let entries_json = v["entries"].as_array().unwrap();
    let mut entries = Vec::new();
    let mut prev = hx(&v["invite_hash"]);
    assert_eq!(
        prev,
        sha256(&framed(labels::HASH_INVITE, &[&signed_invite.invite]))
    );
    for (i, e) in entries_json.iter().enumerate() {
        let signed = SignedStatement::decode(hx(&e["signed_statement"]).as_slice()).unwrap();
        assert_eq!(signed.statement, hx(&e["statement"]));
        assert_eq!(signed.signature, hx(&e["signature"]));
        let stmt = Statement::decode(signed.statement.as_slice()).unwrap();
        assert_eq!(stmt.seq, i as u64);
        assert_eq!(stmt.seq, num(&e["seq"]));
        assert_eq!(stmt.user_id, user_id);
        assert_eq!(stmt.author, hx(&e["author"]));
        assert_eq!(stmt.timestamp, num(&e["timestamp"]));
        assert_eq!(stmt.prev_hash, hx(&e["prev_hash"]));
        assert_eq!(stmt.prev_hash, prev);
        let kind = match stmt.body {
            Some(Body::UserCreation(ref c)) => {
                assert_eq!(c.invite.as_ref(), Some(&signed_invite));
                "user_creation"
            }
            Some(Body::DeviceAddition(_)) => "device_addition",
            Some(Body::DeviceRevocation(_)) => "device_revocation",
            Some(Body::KeyRotation(_)) => "key_rotation",
            None => panic!("entry {i} without body"),
        };
        assert_eq!(kind, st(&e["kind"]));
        let sig_input = framed(labels::SIG_STATEMENT, &[&signed.statement]);
        assert_eq!(sig_input, hx(&e["signature_input"]));
        assert!(ed25519_verifies(
            &stmt.author,
            &sig_input,
            &signed.signature
        ));
        if let Some(Body::DeviceAddition(ref a)) = stmt.body {
            let keys = a.device.as_ref().unwrap();
            let input = framed(
                labels::SIG_DEVICE_POSSESSION,
                &[
                    root.as_bytes(),
                    user_id.as_bytes(),
                    &keys.signing_public_key,
                    &keys.encryption_public_key,
                ],
            );
            assert_eq!(input, hx(&e["possession_input"]));
            assert_eq!(a.device_signature, hx(&e["device_signature"]));
            assert!(ed25519_verifies(
                &keys.signing_public_key,
                &input,
                &a.device_signature
            ));
        }
        let hash = sha256(&framed(
            labels::HASH_ENTRY,
            &[&signed.statement, &signed.signature],
        ));
        assert_eq!(hash.to_vec(), hx(&e["entry_hash"]));
        assert_eq!(chain::entry_hash(&signed), hash);
        prev = hash.to_vec();
        entries.push(signed);
    }
    let user = chain::verify_log(&root, user_id, &entries).unwrap();
    let f = &v["final_state"];
    assert_eq!(user.len(), num(&f["len"]));
    assert_eq!(user.head().to_vec(), hx(&f["head"]));
    assert_eq!(user.head().to_vec(), prev);
    assert_eq!(user.last_timestamp(), num(&f["last_timestamp"]));
    assert_eq!(
        Some(user.rotation_pending()),
        f["rotation_pending"].as_bool()
    );
    assert_eq!(user.encryption_key(), &enc_public(&f["encryption_key"]));
    let past: Vec<EncryptionPublicKey> = f["past_encryption_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(enc_public)
        .collect();
    assert_eq!(user.past_encryption_keys(), past.as_slice());
    let devices = f["devices"].as_array().unwrap();
    assert_eq!(user.devices().count(), devices.len());
    for d in devices {
        let rec = user.device(&signing_public(&d["signing_key"])).unwrap();
        assert_eq!(rec.encryption_key, enc_public(&d["encryption_key"]));
        assert_eq!(rec.added_at, num(&d["added_at"]));
        assert_eq!(rec.revoked_at, d["revoked_at"].as_u64());
        assert_eq!(rec.is_active(), d["revoked_at"].is_null());
    }
    let ids = |key: &str| -> Vec<SigningPublicKey> {
        f[key]
            .as_array()
            .unwrap()
            .iter()
            .map(signing_public)
            .collect()
    };
    let active: Vec<SigningPublicKey> = user
        .devices()
        .filter(|d| d.is_active())
        .map(|d| d.signing_key)
        .collect();
    let revoked: Vec<SigningPublicKey> = user
        .devices()
        .filter(|d| !d.is_active())
        .map(|d| d.signing_key)
        .collect();
    let (mut want_active, mut want_revoked) = (ids("active_devices"), ids("revoked_devices"));
    want_active.sort();
    want_revoked.sort();
    assert_eq!(active, want_active);
    assert_eq!(revoked, want_revoked);
    // Each prefix is a valid log, and the full log extends every prefix.
    for n in 1..entries.len() {
        let prefix = chain::verify_log(&root, user_id, &entries[..n]).unwrap();
        assert_eq!(prefix.update(&root, &entries).unwrap(), user);
    }
}

fn replay_cases(v: &Value) {
    let cases = v["cases"].as_array().unwrap();
    let mut names = std::collections::BTreeSet::new();
    for c in cases {
        let name = st(&c["name"]);
        assert!(names.insert(name), "duplicate case {name}");
        let fields: Vec<(String, u64)> = c["error_fields"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), num(v)))
            .collect();
        run_negative(
            name,
            st(&c["operation"]),
            &c["inputs"],
            st(&c["error"]),
            &fields,
            c.get("error_reason").and_then(Value::as_str),
        );
    }
}

fn replay_negative(v: &Value) {
    replay_cases(v);
    let cases = v["cases"].as_array().unwrap();
    // The cases the specification promises.
    let errors: Vec<&str> = cases.iter().map(|c| st(&c["error"])).collect();
    for required in [
        "OpenError::Undecryptable",
        "WrapError::WrongRecipient",
        "OpenError::NotARecipient",
        "WrapError::WrongResource",
        "WrapError::Undecryptable",
        "OpenError::BadSignature",
        "ChainError::BadSignature",
        "ChainError::ForgedInvite",
        "ChainError::Rollback",
        "ChainError::Fork",
        "ChainError::InviteReused",
        "ChainError::InviteExpired",
        "OpenError::SenderMismatch",
        "OpenError::SenderDeviceRevoked",
        "WrapError::NonContributory",
        "OpenError::KeyCommitmentMismatch",
        "SealError::TooLarge",
        "SealError::InvalidText",
        "SealError::NoRecipients",
        "SealError::TooManyRecipients",
        "SealError::DuplicateRecipient",
        "SealError::DeviceNotActive",
    ] {
        assert!(errors.contains(&required), "no case for {required}");
    }
    // Every normative reason of the envelope's parse and open rules (§7.4
    // P2-P14, R9) has a case, and so does every payload of a seal refusal.
    let reasons: Vec<(&str, &str)> = cases
        .iter()
        .filter_map(|c| Some((st(&c["error"]), c.get("error_reason")?.as_str()?)))
        .collect();
    for required in [
        ("OpenError::Decode", "Malformed"),
        ("OpenError::Decode", "NonCanonical"),
        ("OpenError::UnsupportedVersion", "3"),
        ("OpenError::Malformed", "header too large"),
        ("OpenError::Malformed", "resource id"),
        ("OpenError::Malformed", "conversation id"),
        ("OpenError::Malformed", "sender user id"),
        ("OpenError::Malformed", "sender device"),
        ("OpenError::Malformed", "content type"),
        ("OpenError::Malformed", "nonce"),
        ("OpenError::Malformed", "recipients"),
        ("OpenError::Malformed", "duplicate recipient"),
        ("OpenError::Malformed", "key commitment"),
        ("OpenError::Malformed", "signature length"),
        ("OpenError::Malformed", "ciphertext too short"),
        ("OpenError::Malformed", "text content is not UTF-8"),
        ("SealError::TooLarge", "16777217"),
        ("SealError::TooManyRecipients", "257"),
        ("SealError::DuplicateRecipient", ALICE),
    ] {
        assert!(reasons.contains(&required), "no case for {required:?}");
    }
}

fn replay_chain_negative(v: &Value) {
    replay_cases(v);
    let cases = v["cases"].as_array().unwrap();
    let errors: Vec<&str> = cases.iter().map(|c| st(&c["error"])).collect();
    for required in [
        "ChainError::KeyInUse",
        "ChainError::MissingPossessionProof",
        "ChainError::InvalidTransition",
        "ChainError::Fork",
        "ChainError::Decode",
        "ChainError::Malformed",
        "ChainError::UnsupportedVersion",
        "ChainError::BadSequence",
        "ChainError::WrongUser",
        "ChainError::TimeWentBackwards",
        "ChainError::EmptyLog",
        "ChainError::UnauthorizedAuthor",
        "AuthError::BadSignature",
        "AuthError::UnexpectedChallenge",
        "AuthError::UnsupportedVersion",
        "AuthError::Malformed",
    ] {
        assert!(errors.contains(&required), "no case for {required}");
    }
    // Every normative InvalidTransition and KeyInUse reason has a case.
    let reasons: Vec<&str> = cases
        .iter()
        .filter_map(|c| c.get("error_reason").and_then(Value::as_str))
        .collect();
    for required in [
        "user key not rotated",
        "the root may not choose a user key",
        "a revoked device may not choose a user key",
        "device already revoked",
        "unknown device",
        "device already in the log",
        "device encryption key already in the log",
        chain::KEY_IS_ROOT,
        chain::KEY_IS_DELEGATION,
        "NonCanonical",
        "TooLarge",
        "Malformed",
    ] {
        assert!(reasons.contains(&required), "no case for reason {required}");
    }
    let ops: Vec<&str> = cases.iter().map(|c| st(&c["operation"])).collect();
    for required in ["decode_wrapped_key", "decode_device_grant"] {
        assert!(ops.contains(&required), "no case for {required}");
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

fn generate() -> Vec<(&'static str, String)> {
    vec![
        ("ward-v2-keys.json", to_text(&gen_keys())),
        ("ward-v2-wrap.json", to_text(&gen_wrap())),
        ("ward-v2-envelope.json", to_text(&gen_envelope())),
        ("ward-v2-signatures.json", to_text(&gen_signatures())),
        ("ward-v2-chain.json", to_text(&gen_chain())),
        (
            "ward-v2-chain-negative.json",
            to_text(&gen_chain_negative()),
        ),
        ("ward-v2-negative.json", to_text(&gen_negative())),
        ("ward-v2-room.json", to_text(&room_vectors::gen_room())),
        (
            "ward-v2-attachment.json",
            to_text(&attachment::gen_attachment()),
        ),
    ]
}

fn write_mode() -> bool {
    std::env::var("WARD_WRITE_VECTORS").is_ok_and(|v| v == "1")
}

#[test]
fn vectors_match_the_generator() {
    let files = generate();
    // Generating twice gives the same bytes: nothing random slipped in.
    assert_eq!(files, generate());
    let write = write_mode();
    for (name, text) in files {
        let path = format!("{VECTOR_DIR}{name}");
        if write {
            // Write then rename, so a concurrent reader sees old or new, never half.
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{path}: {e}; run WARD_WRITE_VECTORS=1 cargo test -p ward-core --test vectors")
        });
        if committed != text {
            let line = committed
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(text.lines().count()));
            panic!(
                "{name} differs from the generator's output (first at line {}). If the change is \
                 intended, run WARD_WRITE_VECTORS=1 cargo test -p ward-core --test vectors and \
                 review the diff.",
                line + 1
            );
        }
    }
    if write {
        // The replay test skips itself while files are being written: run it here, after.
        replay_all();
    }
}

#[test]
fn committed_vectors_replay() {
    if write_mode() {
        return;
    }
    replay_all();
}

fn replay_all() {
    replay_keys(&load("ward-v2-keys.json"));
    replay_wrap(&load("ward-v2-wrap.json"));
    replay_envelope(&load("ward-v2-envelope.json"));
    replay_signatures(&load("ward-v2-signatures.json"));
    replay_chain(&load("ward-v2-chain.json"));
    replay_chain_negative(&load("ward-v2-chain-negative.json"));
    replay_negative(&load("ward-v2-negative.json"));
    room_vectors::replay_room(&load("ward-v2-room.json"));
    attachment::replay_attachment(&load("ward-v2-attachment.json"));
}

// ward-v2-attachment.json (SECURITY.md §16) lives in its own file.
#[path = "vectors/attachment.rs"]
mod attachment;
