//! Entry points of the fuzz targets in `fuzz/` (feature `fuzzing`).
//!
//! Each function takes the fuzzer's bytes, feeds them to one decoder or
//! open/unwrap/verify entry point of untrusted input, and asserts what must
//! hold whatever the bytes (a decoded message re-encodes to one that decodes
//! to itself; what seal makes, open gives back). The cargo-fuzz targets call
//! these, and `core/tests/fuzz_corpus.rs` replays every committed corpus file
//! through them on stable, so a fixed crash stays fixed without nightly.
//!
//! The first input byte picks a mode. Mode 0 is always the raw path (the
//! bytes as a server or a client receives them); the other modes let the
//! fuzzer past a signature or a binding it could not forge, by signing or
//! fixing up its input with the fixture's keys, so the checks behind them
//! are fuzzed too. The fixture is one deterministic organisation (seeded
//! RNG), so a corpus file means the same thing on every run.
//!
//! An assertion failure here is a finding: these functions panic on
//! purpose, which is what the fuzzer detects.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rand::SeedableRng;
use rand::rngs::StdRng;
use ward_proto::v1::{
    AuthChallenge, AuthResponse, AuthResult, ClientFrame, DeviceGrant, Envelope, EnvelopeHeader,
    Invite, KsRequest, KsResponse, RoomKeyWrap, RoomLogPage, ServerFrame, SignedInvite,
    SignedRoomStatement, SignedStatement, Statement, UserLog, WrappedKey,
};
use ward_proto::{Bounded, DecodeError, Message, bounded, decode_bounded, decode_canonical};

use crate::auth::{Audience, respond, verify_response};
use crate::chain::{VerifiedUser, decode_signed_statement, verify_log};
use crate::envelope::{ContentType, ReceivedEnvelope, SealRequest, seal};
use crate::ids::{ConversationId, ResourceId};
use crate::invite::{decode_signed_invite, verify_invite};
use crate::keys::{
    DelegationKey, DeviceEncryptionKey, DeviceSigningKey, EncryptionPublicKey, KeyId, OrgRootKey,
    ResourceKey, SigningPublicKey, UserEncryptionKey,
};
use crate::labels::{SIG_INVITE, SIG_STATEMENT, framed};
use crate::room::{
    HistoryPolicy, RoomAuthor, RoomKeyring, RoomMetadata, VerifiedRoom, create_room,
    verify_room_log,
};
use crate::testkit::{Clinician, KIT_TIME, Org};
use crate::wrap::{accept_grant, grant_user_key, unwrap_resource_key, wrap_resource_key};

/// The user the fuzzed logs, statements and grants are about.
pub const ALICE: &str = "alice@chu-fuzz";
/// The recipient of the fixture's envelope and wrapped key.
pub const BOB: &str = "bob@chu-fuzz";
/// The fixture's relay instance id.
pub const INSTANCE: &str = "fuzz";
/// Largest frame the frame decoders are fed (the relay's post-login limit
/// is larger, but the fuzzer's inputs are far smaller anyway).
pub const FRAME_MAX: usize = 1 << 20;

/// The fixed keys and objects every target works against.
pub struct Fixture {
    /// The organisation.
    pub org: Org,
    /// Alice: the sender, the subject of the fuzzed logs.
    pub alice: Clinician,
    /// Bob: a recipient.
    pub bob: Clinician,
    /// The relay's audience for the handshake.
    pub audience: Audience,
    /// The challenge the fuzzed responses answer.
    pub challenge: AuthChallenge,
    /// An envelope from Alice to Alice and Bob.
    pub envelope: Vec<u8>,
    /// Its resource id.
    pub resource_id: ResourceId,
    /// Its resource key.
    pub resource_key: ResourceKey,
    /// Its key wrapped to Bob.
    pub wrapped_for_bob: WrappedKey,
    /// Alice's user key granted to her device.
    pub grant: DeviceGrant,
}

/// The deterministic fixture (built once per process).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(0x5741_5244); // "WARD"
        let org = Org::new(&mut rng);
        let alice = org.enroll(&mut rng, ALICE);
        let bob = org.enroll(&mut rng, BOB);
        let audience = Audience::relay(org.root_public(), INSTANCE);
        let challenge = audience.challenge([7; 32]);
        let sealed = seal(
            &mut rng,
            &alice.device,
            &alice.chain,
            &SealRequest {
                conversation_id: ConversationId([3; 16]),
                recipients: &[&alice.chain, &bob.chain],
                content_type: ContentType::Text,
                content: b"Patient in bed 12: potassium 6.1, repeat at 14:00",
                timestamp_ms: KIT_TIME * 1000,
            },
        )
        .expect("fixture seal");
        let wrapped_for_bob = sealed
            .wrapped_keys
            .iter()
            .find(|(u, _)| u == BOB)
            .map(|(_, w)| w.clone())
            .expect("fixture wrap");
        let grant = grant_user_key(&mut rng, &alice.user_key, &alice.device_key.public_key())
            .expect("fixture grant");
        Fixture {
            org,
            alice,
            bob,
            audience,
            challenge,
            envelope: sealed.envelope,
            resource_id: sealed.resource_id,
            resource_key: sealed.resource_key,
            wrapped_for_bob,
            grant,
        }
    })
}

fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

// ---------------------------------------------------------------- frames

/// One message type through the wire walker and the bounded decoders.
fn frame_case<M: Message + Default + Bounded + PartialEq>(bytes: &[u8], has_map: bool) {
    let walked = bounded::check(bytes, M::schema());
    if let Ok(m) = decode_bounded::<M>(bytes, FRAME_MAX) {
        assert!(
            walked.is_ok(),
            "decode_bounded accepted what the walker refused"
        );
        // What we decoded re-encodes to bytes that decode to the same message.
        // (Not necessarily within the per-field caps: prost merges repeated
        // occurrences of a singular message field, whose entries the walker
        // counts per occurrence; MAX_TOTAL_ENTRIES bounds them, by design.)
        let again = m.encode_to_vec();
        let back = M::decode(&again[..]).expect("re-encoded message refused");
        assert!(back == m, "re-encoded message decodes differently");
        let rewalked = bounded::check(&again, M::schema());
        assert!(
            !matches!(rewalked, Err(DecodeError::Malformed | DecodeError::TooDeep)),
            "walker refuses prost's own encoding: {rewalked:?}"
        );
        // prost writes maps in HashMap order: only map-free messages have one encoding.
        if !has_map && rewalked.is_ok() {
            assert!(decode_canonical::<M>(&again, usize::MAX).is_ok());
        }
    }
    // The walker never calls malformed what prost reads canonically.
    if walked == Err(DecodeError::Malformed)
        && let Ok(m) = M::decode(bytes)
        && !has_map
    {
        assert!(
            m.encode_to_vec() != bytes,
            "walker refused canonical bytes as malformed"
        );
    }
    let _ = decode_canonical::<M>(bytes, FRAME_MAX);
}

/// Target `frames`: every wire message of the relay, the keyserver and the
/// handshake, and the signed structures, through `bounded::check`,
/// `decode_bounded` and `decode_canonical`. The first byte picks the type.
pub fn frames(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    match mode % 16 {
        0 => frame_case::<ClientFrame>(bytes, false),
        1 => frame_case::<ServerFrame>(bytes, false),
        2 => frame_case::<KsRequest>(bytes, false),
        3 => frame_case::<KsResponse>(bytes, true),
        4 => frame_case::<AuthChallenge>(bytes, false),
        5 => frame_case::<AuthResponse>(bytes, false),
        6 => frame_case::<AuthResult>(bytes, false),
        7 => frame_case::<UserLog>(bytes, false),
        8 => frame_case::<SignedStatement>(bytes, false),
        9 => frame_case::<Statement>(bytes, false),
        10 => frame_case::<Envelope>(bytes, false),
        11 => frame_case::<EnvelopeHeader>(bytes, false),
        12 => frame_case::<WrappedKey>(bytes, false),
        13 => frame_case::<DeviceGrant>(bytes, false),
        14 => frame_case::<Invite>(bytes, false),
        _ => frame_case::<SignedInvite>(bytes, false),
    }
}

// ---------------------------------------------------------------- chain

fn sign_with(bytes: Vec<u8>, sign: impl FnOnce(&[u8]) -> [u8; 64]) -> SignedStatement {
    let signature = sign(&framed(SIG_STATEMENT, &[&bytes])).to_vec();
    SignedStatement {
        statement: bytes,
        signature,
    }
}

/// Checks one entry against Alice's verified one-entry state, every way a
/// verifier takes it: as entry 0 of a log, appended with `apply_suffix`,
/// and in a served log with `update`.
fn check_entry(entry: &SignedStatement) {
    let f = fixture();
    let root = f.org.root_public();
    let state = &f.alice.chain;
    let _ = verify_log(&root, ALICE, std::slice::from_ref(entry));
    let applied = state.apply_suffix(&root, std::slice::from_ref(entry));
    let mut log = f.alice.log.clone();
    log.push(entry.clone());
    let updated = state.update(&root, &log);
    let full = verify_log(&root, ALICE, &log);
    // Three ways of verifying the same log agree.
    assert_eq!(applied.is_ok(), updated.is_ok());
    assert_eq!(applied.is_ok(), full.is_ok());
    if let (Ok(a), Ok(u), Ok(v)) = (&applied, &updated, &full) {
        assert_eq!(a.head(), u.head());
        assert_eq!(a.head(), v.head());
        assert_eq!(a.len(), 2);
    }
}

/// Target `statement`: a chain entry. Mode 0: a `SignedStatement` as an
/// `append` request carries it. Otherwise the rest is a `Statement`,
/// signed by Alice's device (mode 1), the root (mode 2) or the bytes fixed
/// up first to follow Alice's head (mode 3, then signed by her device), so
/// the transition rules behind the signature check are reached.
pub fn statement(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    let f = fixture();
    match mode % 4 {
        0 => {
            if let Ok(entry) = decode_signed_statement(bytes) {
                check_entry(&entry);
            }
        }
        1 => check_entry(&sign_with(bytes.to_vec(), |m| f.alice.device.sign(m))),
        2 => check_entry(&sign_with(bytes.to_vec(), |m| f.org.root.sign(m))),
        _ => {
            let Ok(mut st) = decode_bounded::<Statement>(bytes, FRAME_MAX) else {
                return;
            };
            let state = &f.alice.chain;
            st.seq = state.len();
            st.user_id = ALICE.to_owned();
            st.prev_hash = state.head().to_vec();
            st.author = f.alice.device.public_key().as_bytes().to_vec();
            st.version = ward_proto::PROTOCOL_VERSION;
            check_entry(&sign_with(st.encode_to_vec(), |m| f.alice.device.sign(m)));
        }
    }
}

/// Target `log`: a whole served log (`UserLog`, as the keyserver's `Logs`
/// carry it). Mode 0: verified alone for Alice; mode 1: the entries follow
/// Alice's real entry 0, verified whole and as an update of her state.
pub fn log(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    let Ok(log) = decode_bounded::<UserLog>(bytes, FRAME_MAX) else {
        return;
    };
    let f = fixture();
    let root = f.org.root_public();
    if mode % 2 == 0 {
        let verified = verify_log(&root, ALICE, &log.entries);
        if let Ok(v) = &verified {
            assert_eq!(v.len(), log.entries.len() as u64);
        }
    } else {
        let mut entries = f.alice.log.clone();
        entries.extend(log.entries);
        let full = verify_log(&root, ALICE, &entries);
        let updated: Result<VerifiedUser, _> = f.alice.chain.update(&root, &entries);
        assert_eq!(full.is_ok(), updated.is_ok());
        if let (Ok(a), Ok(b)) = (&full, &updated) {
            assert_eq!(a.head(), b.head());
            assert_eq!(a.len(), entries.len() as u64);
        }
    }
}

// ---------------------------------------------------------------- invites

/// Target `invite`: mode 0 a `SignedInvite` (an invite file or QR code);
/// otherwise the rest is an `Invite`, signed by the root so its fields are
/// checked. An invite that verifies starts a log that verifies.
pub fn invite(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    let f = fixture();
    let root = f.org.root_public();
    let signed = if mode % 2 == 0 {
        match decode_signed_invite(bytes) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        SignedInvite {
            invite: bytes.to_vec(),
            signature: f.org.root.sign(&framed(SIG_INVITE, &[bytes])).to_vec(),
        }
    };
    let Ok(verified) = verify_invite(&root, &signed) else {
        return;
    };
    let _ = verified.check_not_expired(KIT_TIME);
    // Enroll on it with a delegation key we hold: only possible when the
    // invite names that key, which the fuzzer finds from the seed.
    let delegation = fixed_delegation();
    if verified.delegation_key == delegation.public_key() {
        let entry = crate::chain::create_user(
            &root,
            &signed,
            delegation,
            &f.alice.user_key.public_key(),
            &f.alice.device.public_key(),
            &f.alice.device_key.public_key(),
            verified.details.expires_at,
        );
        if let Ok(entry) = entry {
            let user = verify_log(&root, &verified.details.user_id, &[entry]);
            assert!(user.is_ok(), "created user does not verify: {user:?}");
        }
    }
}

/// A delegation key the `invite` seeds name.
pub fn fixed_delegation() -> &'static DelegationKey {
    static KEY: OnceLock<DelegationKey> = OnceLock::new();
    KEY.get_or_init(|| DelegationKey::import_secret(&[0x44; 32]).expect("32-byte seed"))
}

// ---------------------------------------------------------------- envelopes

fn open_received(env: &ReceivedEnvelope, key: &ResourceKey) {
    let f = fixture();
    for me in [BOB, ALICE, "mallory@chu-fuzz"] {
        let verified = env.verify(&f.alice.chain, me);
        let opened = env.open(&f.alice.chain, me, key);
        if opened.is_ok() {
            assert!(verified.is_ok(), "opened what verify refused");
        }
    }
    let _ = env.clone().open_in_place(&f.alice.chain, BOB, key);
    let _ = env.verify(&f.bob.chain, BOB);
}

/// Target `envelope`: mode 0 the bytes the relay delivers, parsed, verified
/// against Alice's chain and opened with the fixture's resource key. Mode 1:
/// the rest is an `Envelope` whose header and ciphertext the harness signs
/// with Alice's device, so parsing and decryption behind the signature are
/// reached. Mode 2: the rest is content, sealed and opened again, which must
/// give it back. Mode 3: the rest is a padded plaintext for `unpad`.
pub fn envelope(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    let f = fixture();
    match mode % 4 {
        0 => {
            if let Ok(env) = ReceivedEnvelope::parse(bytes) {
                open_received(&env, &f.resource_key);
            }
        }
        1 => {
            let Ok(mut env) = decode_bounded::<Envelope>(bytes, FRAME_MAX) else {
                return;
            };
            let digest = crate::envelope::ciphertext_digest(&env.ciphertext);
            env.signature = f
                .alice
                .device
                .sign(&crate::envelope::signature_input(&env.header, &digest))
                .to_vec();
            if let Ok(env) = ReceivedEnvelope::parse(&env.encode_to_vec()) {
                // Signed by Alice's device, it verifies for each recipient.
                if env.claimed_sender() == (ALICE, &f.alice.device.public_key()) {
                    for r in env.recipients() {
                        assert_eq!(env.verify(&f.alice.chain, r), Ok(()));
                    }
                }
                open_received(&env, &f.resource_key);
            }
        }
        2 => {
            let content_type = if bytes.first().is_some_and(|b| b & 1 == 1) {
                ContentType::File
            } else {
                ContentType::Text
            };
            let mut rng = StdRng::seed_from_u64(bytes.len() as u64);
            let sealed = seal(
                &mut rng,
                &f.alice.device,
                &f.alice.chain,
                &SealRequest {
                    conversation_id: ConversationId([9; 16]),
                    recipients: &[&f.bob.chain],
                    content_type,
                    content: bytes,
                    timestamp_ms: 1,
                },
            );
            let Ok(sealed) = sealed else {
                // Only text that is not UTF-8 is refused here.
                assert!(content_type == ContentType::Text && std::str::from_utf8(bytes).is_err());
                return;
            };
            let env = ReceivedEnvelope::parse(&sealed.envelope).expect("sealed envelope parses");
            let (_, wrapped) = &sealed.wrapped_keys[0];
            let key = unwrap_resource_key(wrapped, &sealed.resource_id, &f.bob.user_key)
                .expect("wrapped key unwraps");
            let opened = env
                .open(&f.alice.chain, BOB, &key)
                .expect("sealed envelope opens");
            assert_eq!(&opened.content[..], bytes);
            let in_place = env
                .open_in_place(&f.alice.chain, BOB, &key)
                .expect("opens in place");
            assert_eq!(&in_place.content[..], bytes);
        }
        _ => {
            if let Some(len) = crate::padding::unpad(bytes) {
                assert!(len <= bytes.len());
                assert_eq!(crate::padding::padded_len(len), bytes.len());
            }
        }
    }
}

// ---------------------------------------------------------------- wrap

/// Target `wrap`: wrapped keys and device grants as the keyserver serves
/// them. Mode 0: a `WrappedKey` unwrapped with Bob's key for the fixture's
/// resource; mode 1: the same with its binding fields set to Bob's, so the
/// X-Wing decapsulation and the AEAD are reached; modes 2 and 3: a
/// `DeviceGrant` accepted by Alice's device, raw and with its binding set.
pub fn wrap(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    let f = fixture();
    match mode % 4 {
        0 | 1 => {
            let Ok(mut w) = decode_bounded::<WrappedKey>(bytes, FRAME_MAX) else {
                return;
            };
            if mode % 4 == 1 {
                w.resource_id = f.resource_id.as_bytes().to_vec();
                w.recipient_key = f.bob.user_key.public_key().id().as_bytes().to_vec();
            }
            if let Ok(key) = unwrap_resource_key(&w, &f.resource_id, &f.bob.user_key) {
                // Only the real wrap of the resource key can open (the AEAD
                // binds it): anything else opening is a forgery.
                assert_eq!(key.as_bytes(), f.resource_key.as_bytes());
            }
            let _ = unwrap_resource_key(&w, &f.resource_id, &f.alice.user_key);
        }
        _ => {
            let Ok(mut g) = decode_bounded::<DeviceGrant>(bytes, FRAME_MAX) else {
                return;
            };
            let user = f.alice.user_key.public_key();
            if mode % 4 == 3 {
                g.user_key = user.id().as_bytes().to_vec();
                g.device_key = f.alice.device_key.public_key().id().as_bytes().to_vec();
            }
            if let Ok(key) = accept_grant(&g, &f.alice.device_key, &user) {
                assert!(key.public_key() == user);
            }
            let _ = accept_grant(&g, &f.bob.device_key, &f.bob.user_key.public_key());
        }
    }
}

// ---------------------------------------------------------------- auth

/// Target `auth`: the handshake. Mode 0: an `AuthResponse` (the first frame
/// a relay or keyserver reads from an unauthenticated socket) checked
/// against the fixture's challenge. Mode 1: an `AuthChallenge` (what a
/// device reads from a server) answered by Alice's device; whatever it
/// signs must verify for the audience it expected, and nowhere else.
pub fn auth(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    let f = fixture();
    if mode % 2 == 0 {
        let Ok(resp) = decode_bounded::<AuthResponse>(bytes, crate::fuzzing::FRAME_MAX) else {
            return;
        };
        if let Ok((user, device)) = verify_response(&f.audience, &f.challenge, &resp) {
            // The fuzzer cannot sign for a fixture device from nothing.
            assert_eq!(user, resp.user_id);
            assert_eq!(device.as_bytes()[..], resp.device_id[..]);
        }
    } else {
        let Ok(challenge) =
            decode_bounded::<AuthChallenge>(bytes, crate::auth::MAX_CHALLENGE_BYTES)
        else {
            return;
        };
        if let Ok(resp) = respond(&f.alice.device, ALICE, &f.audience, &challenge) {
            assert_eq!(
                verify_response(&f.audience, &challenge, &resp),
                Ok((ALICE.to_owned(), f.alice.device.public_key()))
            );
            let other = Audience::keyserver(f.org.root_public(), INSTANCE);
            assert!(verify_response(&other, &other.challenge([7; 32]), &resp).is_err());
        }
    }
}

// ---------------------------------------------------------------- keys

/// Target `keys`: public keys and key ids as logs and grants carry them,
/// and the secret imports a store reads back. An X-Wing public key that
/// parses can be wrapped to.
pub fn keys(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(pk) = EncryptionPublicKey::from_bytes(bytes) {
                assert_eq!(&pk.as_bytes()[..], bytes);
                assert!(!pk.is_low_order());
                let _ = pk.id();
                let mut rng = StdRng::seed_from_u64(1);
                let key = ResourceKey::generate(&mut rng);
                let w = wrap_resource_key(&mut rng, &key, &ResourceId([1; 16]), &pk);
                assert!(
                    w.is_ok(),
                    "a parsed key cannot be wrapped to: {:?}",
                    w.err()
                );
            }
        }
        1 => {
            if let Ok(pk) = SigningPublicKey::from_bytes(bytes) {
                assert_eq!(&pk.as_bytes()[..], bytes);
            }
            if let Ok(id) = KeyId::from_bytes(bytes) {
                assert_eq!(&id.as_bytes()[..], bytes);
            }
        }
        2 => {
            if let Ok(k) = UserEncryptionKey::import_secret(bytes) {
                assert_eq!(&k.export_secret()[..], bytes);
                let pk = k.public_key();
                assert!(EncryptionPublicKey::from_bytes(pk.as_bytes()).is_ok());
            }
            if let Ok(k) = DeviceEncryptionKey::import_secret(bytes) {
                assert_eq!(&k.export_secret()[..], bytes);
            }
            if let Ok(k) = ResourceKey::import_secret(bytes) {
                assert_eq!(&k.export_secret()[..], bytes);
            }
        }
        _ => {
            if let Ok(k) = DeviceSigningKey::import_secret(bytes) {
                assert_eq!(&k.export_secret()[..], bytes);
            }
            if let Ok(k) = OrgRootKey::import_secret(bytes) {
                let _ = k.public_key();
            }
        }
    }
}

// ---------------------------------------------------------------- rooms

/// A room of Alice (its admin) and Bob, created `FromJoin`, from which
/// Alice then removed Bob: two entries, two epochs.
pub struct RoomFixture {
    /// The two signed entries, in order.
    pub entries: Vec<SignedRoomStatement>,
    /// Its verified state after both entries.
    pub room: VerifiedRoom,
    /// Epoch 0's key wrapped to Bob.
    pub wrap_for_bob: RoomKeyWrap,
    /// Epoch 1's key wrapped to Alice.
    pub wrap_for_alice: RoomKeyWrap,
    /// The verified user logs of Alice and Bob.
    pub users: BTreeMap<String, VerifiedUser>,
}

/// The deterministic room fixture (built once per process; its own seed, so
/// that the other targets' fixture and corpora keep their meaning).
pub fn room_fixture() -> &'static RoomFixture {
    static FIXTURE: OnceLock<RoomFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let f = fixture();
        let mut rng = StdRng::seed_from_u64(0x524f_4f4d); // "ROOM"
        let author = RoomAuthor {
            device: &f.alice.device,
            chain: &f.alice.chain,
        };
        let users: BTreeMap<String, VerifiedUser> = [&f.alice, &f.bob]
            .iter()
            .map(|c| (c.chain.user_id().to_owned(), c.chain.clone()))
            .collect();
        let meta = RoomMetadata {
            name: "Tumour board".into(),
            case_reference: "CASE-FUZZ-1".into(),
            topic: "bed 12".into(),
        };
        let created = create_room(
            &mut rng,
            author,
            HistoryPolicy::FromJoin,
            &[&f.bob.chain],
            &meta,
            KIT_TIME,
        )
        .expect("fixture room");
        let mut ring = RoomKeyring::new();
        ring.insert(0, created.epoch_key.expect("epoch 0 key"));
        let removed = created
            .room
            .remove_member(&mut rng, author, BOB, &users, &ring, KIT_TIME + 1)
            .expect("fixture removal");
        let wrap_to = |wraps: &[(String, RoomKeyWrap)], user: &str| {
            wraps
                .iter()
                .find(|(u, _)| u == user)
                .map(|(_, w)| w.clone())
                .expect("fixture room wrap")
        };
        RoomFixture {
            entries: vec![created.entry, removed.entry],
            wrap_for_bob: wrap_to(&created.wraps, BOB),
            wrap_for_alice: wrap_to(&removed.wraps, ALICE),
            room: removed.room,
            users,
        }
    })
}

/// Target `room`: room logs and epoch-key wraps as a member receives them
/// from the keyserver. Mode 0: the bytes as a `RoomLogPage`, verified as a
/// whole log; it must verify the same way twice, and a verified log has as
/// many entries as it was given. Mode 1: the page's entries appended to the
/// fixture's log: the suffix path and the whole-log path agree. Mode 2: the
/// bytes as a `RoomKeyWrap` for Alice or Bob (the second byte picks); a wrap that opens yields the key pair the log commits to.
pub fn room(data: &[u8]) {
    let Some((mode, bytes)) = split(data) else {
        return;
    };
    let f = fixture();
    let r = room_fixture();
    match mode % 3 {
        0 | 1 => {
            let Ok(page) = decode_bounded::<RoomLogPage>(bytes, FRAME_MAX) else {
                return;
            };
            if mode % 3 == 0 {
                let first = verify_room_log(None, &page.entries, &r.users);
                let again = verify_room_log(None, &page.entries, &r.users);
                assert_eq!(first.is_ok(), again.is_ok());
                if let (Ok(a), Ok(b)) = (&first, &again) {
                    assert_eq!(a.head(), b.head());
                    assert_eq!(a.len(), page.entries.len() as u64);
                }
            } else {
                let mut entries = r.entries.clone();
                entries.extend(page.entries.iter().cloned());
                let full = verify_room_log(Some(r.room.id()), &entries, &r.users);
                let suffix = r.room.apply_suffix(&page.entries, &r.users);
                assert_eq!(full.is_ok(), suffix.is_ok());
                if let (Ok(a), Ok(b)) = (&full, &suffix) {
                    assert_eq!(a.head(), b.head());
                    assert_eq!(a.len(), entries.len() as u64);
                }
            }
        }
        _ => {
            let Some((who, rest)) = split(bytes) else {
                return;
            };
            let Ok(wrap) = decode_bounded::<RoomKeyWrap>(rest, FRAME_MAX) else {
                return;
            };
            let user_key = if who % 2 == 0 {
                &f.alice.user_key
            } else {
                &f.bob.user_key
            };
            if let Ok(key) = r.room.accept_epoch_wrap(&wrap, user_key) {
                let committed = usize::try_from(wrap.epoch)
                    .ok()
                    .and_then(|e| r.room.epochs().get(e))
                    .expect("a wrap opened for an epoch the log does not have")
                    .public_key;
                assert!(
                    key.public_key().id() == committed.id(),
                    "an accepted wrap yields a key the log does not commit to"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- seeds

/// Valid inputs for each target, made from the fixture: the fuzzer starts
/// from them, past the checks random bytes never pass.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let f = fixture();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut rng = StdRng::seed_from_u64(42);
    let with = |mode: u8, bytes: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(bytes);
        v
    };
    let root = f.org.root_public();
    // Chain: an addition, a rotation, revocations, as Alice's next entry.
    let new_dev = DeviceSigningKey::generate(&mut rng);
    let new_enc = DeviceEncryptionKey::generate(&mut rng);
    let new_user = UserEncryptionKey::generate(&mut rng);
    let state = &f.alice.chain;
    let next = [
        state.add_device(
            &f.alice.device,
            &new_dev,
            &new_enc.public_key(),
            KIT_TIME + 1,
        ),
        state.rotate_user_key(&f.alice.device, &new_user.public_key(), KIT_TIME + 1),
        state.revoke_self(&f.alice.device, KIT_TIME + 1),
        state.revoke_device_as_root(&f.org.root, &f.alice.device.public_key(), KIT_TIME + 1),
    ];
    for (i, e) in next.iter().enumerate() {
        out.push(("statement", with(0, &e.encode_to_vec())));
        out.push(("statement", with(if i == 3 { 2 } else { 1 }, &e.statement)));
        out.push(("statement", with(3, &e.statement)));
        out.push((
            "log",
            with(
                1,
                &UserLog {
                    entries: vec![e.clone()],
                }
                .encode_to_vec(),
            ),
        ));
    }
    out.push(("statement", with(0, &f.alice.log[0].encode_to_vec())));
    out.push((
        "log",
        with(
            0,
            &UserLog {
                entries: f.alice.log.clone(),
            }
            .encode_to_vec(),
        ),
    ));
    // A longer log: Alice adds a device, which then rotates the key.
    if let Ok(s1) = state.apply_suffix(&root, &next[..1]) {
        let e2 = s1.rotate_user_key(&new_dev, &new_user.public_key(), KIT_TIME + 2);
        let mut entries = f.alice.log.clone();
        entries.push(next[0].clone());
        entries.push(e2);
        out.push((
            "log",
            with(
                0,
                &UserLog {
                    entries: entries.clone(),
                }
                .encode_to_vec(),
            ),
        ));
        out.push((
            "log",
            with(
                1,
                &UserLog {
                    entries: entries[1..].to_vec(),
                }
                .encode_to_vec(),
            ),
        ));
    }
    // Invites: one naming the fixed delegation key.
    let invite = Invite {
        version: ward_proto::PROTOCOL_VERSION,
        user_id: "carol@chu-fuzz".into(),
        display_name: "Dr Carol".into(),
        profession: "nurse".into(),
        registry_number: "10009999999".into(),
        expires_at: KIT_TIME + 86_400,
        delegation_public_key: fixed_delegation().public_key().as_bytes().to_vec(),
    }
    .encode_to_vec();
    let signed = SignedInvite {
        signature: f.org.root.sign(&framed(SIG_INVITE, &[&invite])).to_vec(),
        invite: invite.clone(),
    };
    out.push(("invite", with(0, &signed.encode_to_vec())));
    out.push(("invite", with(1, &invite)));
    // Envelopes.
    out.push(("envelope", with(0, &f.envelope)));
    out.push(("envelope", with(1, &f.envelope)));
    out.push(("envelope", with(2, b"hello")));
    out.push(("envelope", with(2, &[1, 0, 0xff, 0x80])));
    let mut padded = Vec::new();
    crate::padding::pad_into(&mut padded, b"abc");
    out.push(("envelope", with(3, &padded)));
    // Wrap.
    let w = f.wrapped_for_bob.encode_to_vec();
    out.push(("wrap", with(0, &w)));
    out.push(("wrap", with(1, &w)));
    let g = f.grant.encode_to_vec();
    out.push(("wrap", with(2, &g)));
    out.push(("wrap", with(3, &g)));
    // Auth.
    if let Ok(r) = respond(&f.alice.device, ALICE, &f.audience, &f.challenge) {
        out.push(("auth", with(0, &r.encode_to_vec())));
    }
    out.push(("auth", with(1, &f.challenge.encode_to_vec())));
    // Keys.
    out.push(("keys", with(0, f.alice.user_key.public_key().as_bytes())));
    out.push(("keys", with(1, f.alice.device.public_key().as_bytes())));
    out.push(("keys", with(2, &f.alice.user_key.export_secret()[..])));
    out.push(("keys", with(3, &f.alice.device.export_secret()[..])));
    // Frames: one of each of the above in its message type.
    for (ty, bytes) in [
        (
            5u8,
            respond(&f.alice.device, ALICE, &f.audience, &f.challenge)
                .map(|r| r.encode_to_vec())
                .unwrap_or_default(),
        ),
        (4, f.challenge.encode_to_vec()),
        (
            7,
            UserLog {
                entries: f.alice.log.clone(),
            }
            .encode_to_vec(),
        ),
        (8, next[0].encode_to_vec()),
        (9, next[0].statement.clone()),
        (10, f.envelope.clone()),
        (12, w.clone()),
        (13, g.clone()),
        (14, invite.clone()),
        (15, signed.encode_to_vec()),
    ] {
        out.push(("frames", with(ty, &bytes)));
    }
    // Rooms: the whole log, its second entry as a suffix, both wraps.
    let r = room_fixture();
    let page = |entries: &[SignedRoomStatement]| {
        RoomLogPage {
            from_seq: 0,
            len: entries.len() as u64,
            entries: entries.to_vec(),
        }
        .encode_to_vec()
    };
    out.push(("room", with(0, &page(&r.entries))));
    out.push(("room", with(0, &page(&r.entries[..1]))));
    out.push(("room", with(1, &[])));
    let mut alice = vec![0];
    alice.extend(r.wrap_for_alice.encode_to_vec());
    out.push(("room", with(2, &alice)));
    let mut bob = vec![1];
    bob.extend(r.wrap_for_bob.encode_to_vec());
    out.push(("room", with(2, &bob)));
    out
}
