use super::*;
use crate::chain::possession_proof;
use crate::ids::valid_user_id;
use crate::keys::{DeviceEncryptionKey, DeviceSigningKey, OrgRootKey};
use sha2::Digest;
use ward_proto::v1::{LinkConversation, LinkedMessage};

const USER: &str = "dr.martin@chu-example";

fn sha256(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

struct Fixture {
    root: SigningPublicKey,
    offer: DeviceOffer,
    secret_bytes: [u8; 32],
}

fn fixture(tag: &str) -> Fixture {
    let root = OrgRootKey::import_secret(&sha256("ward/v2/link vector root"))
        .unwrap()
        .public_key();
    let device =
        DeviceSigningKey::import_secret(&sha256(&format!("ward/v2/link vector {tag} device")))
            .unwrap();
    let enc = DeviceEncryptionKey::import_secret(&sha256(&format!(
        "ward/v2/link vector {tag} device encryption"
    )))
    .unwrap();
    let proof = possession_proof(&root, USER, &device, &enc.public_key());
    Fixture {
        root,
        offer: DeviceOffer {
            signing: device.public_key(),
            encryption: enc.public_key(),
            proof,
        },
        secret_bytes: sha256(&format!("ward/v2/link vector {tag} secret")),
    }
}

fn secret(f: &Fixture) -> LinkSecret {
    LinkSecret::from_bytes(f.secret_bytes)
}

fn history(n: usize, tag: u8) -> LinkHistory {
    LinkHistory {
        conversations: vec![LinkConversation {
            conversation_id: vec![tag; 16],
            members: vec![USER.into(), "nurse.okafor@chu-example".into()],
        }],
        messages: (0..n)
            .map(|i| LinkedMessage {
                resource_id: vec![i as u8; 16],
                conversation_id: vec![tag; 16],
                sender_user_id: "nurse.okafor@chu-example".into(),
                sender_device: vec![7; 32],
                timestamp_ms: 1_800_000_000_000 + i as u64,
                content_type: 1,
                content: format!("bed 12: BP 135/85 ({i})").into_bytes(),
            })
            .collect(),
    }
}

/// Runs hello, nonce and reveal: both sides, and both SASes.
fn compared(f: &Fixture) -> (Joiner, Approver, Sas, Sas) {
    let s = secret(f);
    let (mut joiner, hello) = Joiner::start_with(&s, &f.offer, sha256("n_new"));
    let mut approver = Approver::new(&s);
    assert_eq!(joiner.rendezvous(), approver.rendezvous());
    let (offer, nonce) = approver
        .on_hello_with(&hello, &f.root, USER, sha256("n_existing"))
        .unwrap();
    assert_eq!(offer, f.offer);
    let (reveal, sas_new) = joiner.on_nonce(&nonce).unwrap();
    let sas_existing = approver.on_reveal(&reveal).unwrap();
    (joiner, approver, sas_new, sas_existing)
}

#[test]
fn a_link_runs_to_the_end_with_equal_codes_and_all_history() {
    let f = fixture("a");
    let (mut joiner, mut approver, a, b) = compared(&f);
    assert_eq!(a, b);
    assert_eq!(a.as_str().len(), 7);
    assert!(matches!(
        joiner.next(&approver.approve().unwrap()).unwrap(),
        JoinerEvent::Approved
    ));
    for (n, tag) in [(3, 1u8), (2, 2)] {
        let JoinerEvent::History(got) = joiner
            .next(&approver.history(history(n, tag)).unwrap())
            .unwrap()
        else {
            panic!("history expected");
        };
        assert_eq!(got, history(n, tag));
    }
    assert!(matches!(
        joiner.next(&approver.done().unwrap()).unwrap(),
        JoinerEvent::Done { messages: 5 }
    ));
    assert!(matches!(
        joiner.next(&[0; 32]),
        Err(LinkError::Unexpected(_))
    ));
}

#[test]
fn a_refusal_ends_the_link() {
    let f = fixture("a");
    let (mut joiner, mut approver, ..) = compared(&f);
    assert!(matches!(
        joiner.next(&approver.refuse().unwrap()).unwrap(),
        JoinerEvent::Refused
    ));
    assert!(approver.history(history(1, 1)).is_err());
}

#[test]
fn codes_round_trip_and_bad_ones_are_refused() {
    let f = fixture("a");
    let code = LinkCode {
        user_id: USER.into(),
        secret: secret(&f),
    };
    let text = code.encode();
    assert!(text.starts_with(CODE_PREFIX));
    let back = LinkCode::parse(&format!(
        "  {}\n",
        text.to_uppercase()
            .replace("WARD-LINK", "ward-link")
            .replace(&USER.to_uppercase(), USER)
    ))
    .unwrap();
    assert_eq!(back.user_id, USER);
    assert_eq!(back.secret.rendezvous(), code.secret.rendezvous());
    // A user id may hold ':'.
    let odd = LinkCode {
        user_id: "a:b".into(),
        secret: secret(&f),
    };
    assert_eq!(LinkCode::parse(&odd.encode()).unwrap().user_id, "a:b");
    for bad in [
        "",
        "ward-link:2:00",
        &text[..CODE_PREFIX.len() + 63],
        &text[..CODE_PREFIX.len() + 64],
        &format!("{}:", &text[..CODE_PREFIX.len() + 64]),
        &text.replace(&text[CODE_PREFIX.len()..CODE_PREFIX.len() + 1], "g"),
    ] {
        assert!(
            matches!(LinkCode::parse(bad), Err(LinkError::BadCode(_))),
            "{bad:?}"
        );
    }
    // The secret never prints.
    let shown = format!("{code:?}");
    assert!(!shown.contains(&h(&f.secret_bytes)), "{shown}");
}

#[test]
fn messages_of_another_link_altered_replayed_or_reordered_are_tampering() {
    let f = fixture("a");
    let other = fixture("b");
    // The hello of another link (another secret): the relay swapped them.
    let (_, foreign) = Joiner::start_with(&secret(&other), &other.offer, [1; 32]);
    let mut approver = Approver::new(&secret(&f));
    assert_eq!(
        approver
            .on_hello_with(&foreign, &f.root, USER, [2; 32])
            .unwrap_err(),
        LinkError::Tampered
    );
    // Altered.
    let (_, mut hello) = Joiner::start_with(&secret(&f), &f.offer, [1; 32]);
    hello[3] ^= 1;
    assert_eq!(
        Approver::new(&secret(&f))
            .on_hello_with(&hello, &f.root, USER, [2; 32])
            .unwrap_err(),
        LinkError::Tampered
    );
    // Reordered and replayed history.
    let (mut joiner, mut approver, ..) = compared(&f);
    joiner.next(&approver.approve().unwrap()).unwrap();
    let first = approver.history(history(1, 1)).unwrap();
    let second = approver.history(history(1, 2)).unwrap();
    assert_eq!(joiner.next(&second).unwrap_err(), LinkError::Tampered);
    joiner.next(&first).unwrap();
    assert_eq!(joiner.next(&first).unwrap_err(), LinkError::Tampered);
    // A message sent the other way does not open as this side's either.
    let (_, mut approver, ..) = compared(&f);
    let approval = approver.approve().unwrap();
    let mut echo = Approver::new(&secret(&f));
    assert_eq!(
        echo.on_hello_with(&approval, &f.root, USER, [2; 32])
            .unwrap_err(),
        LinkError::Tampered
    );
}

#[test]
fn a_proof_for_another_user_or_root_is_refused() {
    let f = fixture("a");
    let (_, hello) = Joiner::start_with(&secret(&f), &f.offer, [1; 32]);
    assert!(matches!(
        Approver::new(&secret(&f)).on_hello_with(&hello, &f.root, "someone.else", [2; 32]),
        Err(LinkError::BadOffer(_))
    ));
    let other_root = OrgRootKey::import_secret(&[9; 32]).unwrap().public_key();
    assert!(matches!(
        Approver::new(&secret(&f)).on_hello_with(&hello, &other_root, USER, [2; 32]),
        Err(LinkError::BadOffer(_))
    ));
}

#[test]
fn a_reveal_that_is_not_the_committed_nonce_is_refused() {
    let f = fixture("a");
    let s = secret(&f);
    let (mut joiner, hello) = Joiner::start_with(&s, &f.offer, [1; 32]);
    let mut approver = Approver::new(&s);
    let (_, nonce) = approver
        .on_hello_with(&hello, &f.root, USER, [2; 32])
        .unwrap();
    // The new device (or someone holding the secret) changes its nonce
    // after seeing the existing device's: to steer the SAS.
    *joiner.nonce = [3; 32];
    let (reveal, _) = joiner.on_nonce(&nonce).unwrap();
    assert_eq!(
        approver.on_reveal(&reveal).unwrap_err(),
        LinkError::CommitmentMismatch
    );
    assert!(approver.approve().is_err(), "no approval after a mismatch");
}

#[test]
fn someone_holding_the_code_who_stands_in_for_the_new_device_shows_other_digits() {
    // The attacker photographed the code and answers the existing device
    // with its own keys; the real new device runs its own half with the
    // attacker, which plays the existing device to it.
    let f = fixture("a");
    let attacker = fixture("b");
    let s = secret(&f);
    let (mut evil_joiner, evil_hello) = Joiner::start_with(&s, &attacker.offer, [5; 32]);
    let mut approver = Approver::new(&s);
    let (offer, nonce) = approver
        .on_hello_with(&evil_hello, &f.root, USER, [6; 32])
        .unwrap_or_else(|_| {
            // The attacker's proof is for the same root and user: it verifies.
            unreachable!()
        });
    assert_eq!(offer, attacker.offer);
    let (reveal, _) = evil_joiner.on_nonce(&nonce).unwrap();
    let shown_by_existing = approver.on_reveal(&reveal).unwrap();
    let (mut real, real_hello) = Joiner::start_with(&s, &f.offer, [7; 32]);
    let mut evil_approver = Approver::new(&s);
    let (_, evil_nonce) = evil_approver
        .on_hello_with(&real_hello, &f.root, USER, [8; 32])
        .unwrap();
    let (_, shown_by_new) = real.on_nonce(&evil_nonce).unwrap();
    assert_ne!(shown_by_existing, shown_by_new);
}

#[test]
fn a_history_shorter_than_announced_is_truncated() {
    let f = fixture("a");
    let (mut joiner, mut approver, ..) = compared(&f);
    joiner.next(&approver.approve().unwrap()).unwrap();
    joiner
        .next(&approver.history(history(2, 1)).unwrap())
        .unwrap();
    approver.messages += 1;
    assert_eq!(
        joiner.next(&approver.done().unwrap()).unwrap_err(),
        LinkError::Truncated {
            got: 2,
            announced: 3
        }
    );
}

/// `vectors/ward-v2-link.json`: regenerate with
/// `WARD_WRITE_VECTORS=1 cargo test -p ward-core --lib link`.
#[test]
fn vectors() {
    let f = fixture("a");
    let s = secret(&f);
    let schedule = Schedule::derive(&s);
    let code = LinkCode {
        user_id: USER.into(),
        secret: secret(&f),
    };
    let nonce_new = sha256("ward/v2/link vector a nonce new");
    let nonce_existing = sha256("ward/v2/link vector a nonce existing");
    let mut transcript = Vec::new();
    let mut record = |from: &str, index: usize, sealed: &[u8], plain: &[u8]| {
        transcript.push(serde_json::json!({
            "from": from,
            "index": index,
            "plaintext": h(plain),
            "sealed": h(sealed),
        }));
    };
    let (mut joiner, hello) = Joiner::start_with(&s, &f.offer, nonce_new);
    let hello_plain = joiner.hello.clone();
    record("new", 0, &hello, &hello_plain);
    let mut approver = Approver::new(&s);
    let (_, nonce_msg) = approver
        .on_hello_with(&hello, &f.root, USER, nonce_existing)
        .unwrap();
    let open_as_new = |sealed: &[u8], index: u64| {
        let mut ch = Channel::new(&Schedule::derive(&s), false);
        ch.received = index;
        ch.open_bytes(sealed).unwrap().to_vec()
    };
    record("existing", 0, &nonce_msg, &open_as_new(&nonce_msg, 0));
    let (reveal, sas_new) = joiner.on_nonce(&nonce_msg).unwrap();
    let open_as_existing = |sealed: &[u8], index: u64| {
        let mut ch = Channel::new(&Schedule::derive(&s), true);
        ch.received = index;
        ch.open_bytes(sealed).unwrap().to_vec()
    };
    record("new", 1, &reveal, &open_as_existing(&reveal, 1));
    let sas_existing = approver.on_reveal(&reveal).unwrap();
    assert_eq!(sas_new, sas_existing);
    let approved = approver.approve().unwrap();
    record("existing", 1, &approved, &open_as_new(&approved, 1));
    let batch = approver.history(history(2, 1)).unwrap();
    record("existing", 2, &batch, &open_as_new(&batch, 2));
    let done = approver.done().unwrap();
    record("existing", 3, &done, &open_as_new(&done, 3));
    for m in [&approved, &batch, &done] {
        joiner.next(m).unwrap();
    }

    // Inputs that MUST be refused, with the error.
    let mut negative = Vec::new();
    let other = fixture("b");
    let (_, foreign) = Joiner::start_with(&secret(&other), &other.offer, nonce_new);
    let mut flipped = hello.clone();
    flipped[0] ^= 1;
    for (name, sealed, error) in [
        ("hello_of_another_link", &foreign, "LinkError::Tampered"),
        ("hello_altered", &flipped, "LinkError::Tampered"),
        (
            "existing_nonce_echoed_as_hello",
            &nonce_msg,
            "LinkError::Tampered",
        ),
    ] {
        assert_eq!(
            Approver::new(&s)
                .on_hello_with(sealed, &f.root, USER, nonce_existing)
                .unwrap_err(),
            LinkError::Tampered
        );
        negative.push(serde_json::json!({
            "name": name, "to": "existing", "index": 0, "sealed": h(sealed), "error": error,
        }));
    }
    // The history batch (index 2) received at index 1: reordered.
    let mut j = Joiner::start_with(&s, &f.offer, nonce_new).0;
    j.on_nonce(&nonce_msg).unwrap();
    assert_eq!(j.next(&batch).unwrap_err(), LinkError::Tampered);
    negative.push(serde_json::json!({
        "name": "history_before_approval_reordered", "to": "new", "index": 1, "sealed": h(&batch),
        "error": "LinkError::Tampered",
    }));
    // A reveal of another nonce than the committed one.
    let mut ch = Channel::new(&Schedule::derive(&s), false);
    ch.sent = 1;
    let bad_reveal = ch.seal(Body::Reveal(LinkReveal {
        nonce: sha256("ward/v2/link vector a other nonce").to_vec(),
    }));
    let mut a = Approver::new(&s);
    a.on_hello_with(&hello, &f.root, USER, nonce_existing)
        .unwrap();
    assert_eq!(
        a.on_reveal(&bad_reveal).unwrap_err(),
        LinkError::CommitmentMismatch
    );
    negative.push(serde_json::json!({
        "name": "reveal_not_committed", "to": "existing", "index": 1, "sealed": h(&bad_reveal),
        "error": "LinkError::CommitmentMismatch",
    }));

    let doc = serde_json::json!({
        "description": "Ward device linking (SECURITY.md §4.9). prk = HKDF-Extract(salt = \"ward/v2/link\", ikm = secret); rendezvous, key_to_existing, key_to_new = HKDF-Expand(prk, info = label, 32). A sealed message from the new device at index i = ChaCha20-Poly1305(key_to_existing, nonce = 00000000 || u64_be(i), aad = rendezvous, plaintext = encoded LinkMessage); from the existing device likewise under key_to_new, with its own counter. commitment = H(\"ward/v2/hash/link-nonce\", nonce_new); sas = u32_be(H(\"ward/v2/hash/link-sas\", rendezvous, hello plaintext, nonce_existing, nonce_new)[0..4]) mod 10^6 as \"ddd ddd\"; H is SHA-256 over the framing of §3.1. proof = Ed25519(device, frame(\"ward/v2/sig/device-possession\", root, user_id, signing key, encryption key)). Every secret and nonce is SHA-256 of its label.",
        "version": 1,
        "labels": {
            "salt": String::from_utf8_lossy(LINK_SALT),
            "rendezvous": String::from_utf8_lossy(LINK_RENDEZVOUS),
            "key_to_existing": String::from_utf8_lossy(LINK_KEY_TO_EXISTING),
            "key_to_new": String::from_utf8_lossy(LINK_KEY_TO_NEW),
            "hash_nonce": String::from_utf8_lossy(HASH_LINK_NONCE),
            "hash_sas": String::from_utf8_lossy(HASH_LINK_SAS),
        },
        "user_id": USER,
        "root_public_key": h(f.root.as_bytes()),
        "secret_label": "ward/v2/link vector a secret",
        "secret": h(&f.secret_bytes),
        "code": code.encode().as_str(),
        "rendezvous": h(&schedule.rendezvous),
        "key_to_existing": h(&schedule.to_existing[..]),
        "key_to_new": h(&schedule.to_new[..]),
        "device_signing_key": h(f.offer.signing.as_bytes()),
        "device_encryption_key": h(f.offer.encryption.as_bytes()),
        "possession_proof": h(&f.offer.proof),
        "nonce_new_label": "ward/v2/link vector a nonce new",
        "nonce_new": h(&nonce_new),
        "nonce_commitment": h(&nonce_commitment(&nonce_new)),
        "nonce_existing_label": "ward/v2/link vector a nonce existing",
        "nonce_existing": h(&nonce_existing),
        "hello_plaintext": h(&hello_plain),
        "sas": sas_new.as_str(),
        "transcript": transcript,
        "negative": negative,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/ward-v2-link.json");
    if std::env::var_os("WARD_WRITE_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        committed, text,
        "vectors/ward-v2-link.json differs from the format"
    );
}

proptest::proptest! {
    /// Any text: a code or a typed refusal, never a panic (the CLI and the
    /// bindings hand it whatever was pasted or scanned).
    #[test]
    fn any_text_parses_or_is_refused(text in ".{0,200}") {
        match LinkCode::parse(&text) {
            Ok(code) => proptest::prop_assert!(valid_user_id(&code.user_id)),
            Err(e) => proptest::prop_assert!(matches!(e, LinkError::BadCode(_))),
        }
    }

    /// Every code reads back as itself, whatever its user id holds.
    #[test]
    fn codes_round_trip(secret in proptest::array::uniform32(0u8..), user in "[^\\x00-\\x1f\\x7f]{1,64}") {
        proptest::prop_assume!(valid_user_id(&user) && user.trim() == user);
        let code = LinkCode { user_id: user.clone(), secret: LinkSecret::from_bytes(secret) };
        let back = LinkCode::parse(&code.encode()).unwrap();
        proptest::prop_assert_eq!(back.user_id, user);
        proptest::prop_assert_eq!(back.secret.rendezvous(), code.secret.rendezvous());
    }
}
