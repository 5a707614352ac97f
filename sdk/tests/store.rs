//! The device store from the outside: PIN, attempts and wipe, platform
//! secret, no plaintext on disk, KDF upgrade, and the committed fixture that
//! pins the format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use ward_core::envelope::ContentType;
use ward_core::keys::{DeviceEncryptionKey, DeviceSigningKey, UserEncryptionKey};
use ward_core::{ConversationId, ResourceId};
use ward_sdk::store::{
    CreateOptions, FORMAT_VERSION, Identity, KdfParams, Message, OutboxState, Pin, PlatformSecret,
    SCHEMA_VERSION, Store, StoreError,
};
use zeroize::Zeroizing;

/// Cheap parameters so the suite stays fast; the default is tested in the
/// vectors and timed by the `store_unlock_time` example.
const FAST: KdfParams = KdfParams {
    m_cost_kib: 8 * 1024,
    t_cost: 1,
    p_cost: 1,
};

fn opts(max_attempts: u32) -> CreateOptions {
    CreateOptions {
        kdf: FAST,
        max_attempts,
    }
}

fn pin(s: &str) -> Pin {
    Pin::new(s.to_owned()).unwrap()
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    (dir, path)
}

fn header_bytes(path: &Path) -> Vec<u8> {
    let mut h = path.as_os_str().to_owned();
    h.push(".header");
    std::fs::read(h).unwrap()
}

fn failed_attempts(path: &Path) -> u32 {
    let h = header_bytes(path);
    u32::from_be_bytes(h[44..48].try_into().unwrap())
}

fn text(conv: [u8; 16], rid: u8, ts: u64, body: &str, device: &DeviceSigningKey) -> Message {
    Message {
        resource_id: ResourceId([rid; 16]),
        conversation_id: ConversationId(conv),
        sender_user_id: "dr.martin@chu-example".into(),
        sender_device: device.public_key(),
        timestamp_ms: ts,
        content_type: ContentType::Text,
        content: Zeroizing::new(body.as_bytes().to_vec()),
    }
}

#[test]
fn a_wrong_pin_is_a_typed_error_and_the_right_one_resets_the_count() {
    let (_d, path) = tmp();
    Store::create(&path, &pin("111111"), None, opts(5))
        .unwrap()
        .lock();
    for left in [4, 3] {
        match Store::unlock(&path, &pin("222222"), None) {
            Err(StoreError::WrongPin { attempts_left }) => assert_eq!(attempts_left, left),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(failed_attempts(&path), 2);
    Store::unlock(&path, &pin("111111"), None).unwrap().lock();
    assert_eq!(failed_attempts(&path), 0);
    assert!(matches!(
        Store::unlock(&path, &pin("222222"), None),
        Err(StoreError::WrongPin { attempts_left: 4 })
    ));
}

#[test]
fn the_store_is_wiped_after_max_attempts() {
    let (dir, path) = tmp();
    let s = Store::create(&path, &pin("111111"), None, opts(3)).unwrap();
    s.set_relay_cursor(1).unwrap();
    s.lock();
    for left in [2, 1] {
        assert!(matches!(
            Store::unlock(&path, &pin("999999"), None),
            Err(StoreError::WrongPin { attempts_left }) if attempts_left == left
        ));
    }
    assert!(matches!(
        Store::unlock(&path, &pin("999999"), None),
        Err(StoreError::Wiped)
    ));
    assert!(!Store::exists(&path));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    // Even the right PIN finds nothing now.
    assert!(matches!(
        Store::unlock(&path, &pin("111111"), None),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn the_right_pin_restores_everything() {
    let (_d, path) = tmp();
    let mut rng = rand::rng();
    let device = DeviceSigningKey::generate(&mut rng);
    let device_enc = DeviceEncryptionKey::generate(&mut rng);
    let user_key = UserEncryptionKey::generate(&mut rng);
    let conv = [7; 16];
    let mut s = Store::create(&path, &pin("314159"), None, opts(10)).unwrap();
    s.set_identity(&Identity {
        user_id: "dr.martin@chu-example".into(),
        device_signing: DeviceSigningKey::import_secret(&*device.export_secret()).unwrap(),
        device_encryption: DeviceEncryptionKey::import_secret(&*device_enc.export_secret())
            .unwrap(),
    })
    .unwrap();
    s.add_user_key(&user_key).unwrap();
    s.put_conversation(
        &ConversationId(conv),
        &[
            "dr.martin@chu-example".into(),
            "nurse.dupont@chu-example".into(),
        ],
    )
    .unwrap();
    let m = text(conv, 1, 1_790_000_000_000, "BP 120/80, continue", &device);
    assert!(s.insert_message(&m).unwrap());
    s.outbox_enqueue(&ConversationId(conv), b"sealed bytes", 5)
        .unwrap();
    s.set_relay_cursor(99).unwrap();
    s.lock();

    let s = Store::unlock(&path, &pin("314159"), None).unwrap();
    let id = s.identity().unwrap().unwrap();
    assert_eq!(id.user_id, "dr.martin@chu-example");
    assert_eq!(id.device_signing.public_key(), device.public_key());
    assert_eq!(id.device_encryption.public_key(), device_enc.public_key());
    assert!(s.user_key(&user_key.public_key()).unwrap().is_some());
    assert_eq!(s.conversations().unwrap().len(), 1);
    assert_eq!(s.messages(&ConversationId(conv)).unwrap(), vec![m.clone()]);
    assert!(
        !s.insert_message(&m).unwrap(),
        "deduplicated after reopening"
    );
    let out = s.outbox_peek().unwrap().unwrap();
    assert_eq!(
        (&out.payload[..], out.state),
        (&b"sealed bytes"[..], OutboxState::Pending)
    );
    assert_eq!(s.relay_cursor().unwrap(), Some(99));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_plaintext_reaches_the_disk() {
    let (dir, path) = tmp();
    const SECRETS: [&str; 4] = [
        "PATIENT-ZEBRA-4417 glycaemia 3.1 mmol/l",
        "user-QUOKKA-9921@chu-example",
        "member-NARWHAL-5530@chu-example",
        "OUTBOX-PANGOLIN-7781",
    ];
    let mut rng = rand::rng();
    let device = DeviceSigningKey::generate(&mut rng);
    let device_enc = DeviceEncryptionKey::generate(&mut rng);
    let signing_secret = device.export_secret();
    let mut s = Store::create(&path, &pin("271828"), None, opts(10)).unwrap();
    s.set_identity(&Identity {
        user_id: SECRETS[1].into(),
        device_signing: device,
        device_encryption: device_enc,
    })
    .unwrap();
    s.put_conversation(&ConversationId([1; 16]), &[SECRETS[2].into()])
        .unwrap();
    let signer = DeviceSigningKey::generate(&mut rng);
    for i in 0..50u8 {
        let m = text([1; 16], i, u64::from(i), SECRETS[0], &signer);
        s.insert_message(&m).unwrap();
    }
    s.outbox_enqueue(&ConversationId([1; 16]), SECRETS[3].as_bytes(), 1)
        .unwrap();

    let wal = {
        let mut w = path.as_os_str().to_owned();
        w.push("-wal");
        PathBuf::from(w)
    };
    let check = |when: &str| {
        let mut checked = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let p = entry.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            for secret in SECRETS {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{when}: {secret} found in {}",
                    p.display()
                );
            }
            assert!(
                !contains(&bytes, &signing_secret[..]),
                "{when}: a device key in {}",
                p.display()
            );
            assert!(
                !bytes.starts_with(b"SQLite format 3"),
                "{when}: {}",
                p.display()
            );
            checked += 1;
        }
        checked
    };
    // While open: the WAL holds the recent writes.
    assert!(wal.exists());
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    assert!(check("open") >= 3, "database, WAL and header at least");
    s.lock();
    check("locked");
}

#[test]
fn the_platform_secret_is_mixed_in() {
    let (_d, path) = tmp();
    let secret = || PlatformSecret::new([0x42; 32]);
    let s = Store::create(&path, &pin("123456"), Some(&secret()), opts(10)).unwrap();
    s.set_relay_cursor(3).unwrap();
    s.lock();
    assert!(matches!(
        Store::unlock(&path, &pin("123456"), None),
        Err(StoreError::PlatformSecretRequired)
    ));
    assert_eq!(
        failed_attempts(&path),
        0,
        "a missing secret costs no attempt"
    );
    let wrong = PlatformSecret::new([0x43; 32]);
    assert!(matches!(
        Store::unlock(&path, &pin("123456"), Some(&wrong)),
        Err(StoreError::WrongPin { attempts_left: 9 })
    ));
    let s = Store::unlock(&path, &pin("123456"), Some(&secret())).unwrap();
    assert_eq!(s.relay_cursor().unwrap(), Some(3));
    s.lock();

    let (_d2, plain) = tmp();
    Store::create(&plain, &pin("123456"), None, opts(10))
        .unwrap()
        .lock();
    assert!(matches!(
        Store::unlock(&plain, &pin("123456"), Some(&secret())),
        Err(StoreError::PlatformSecretNotExpected)
    ));
    assert!(matches!(
        PlatformSecret::from_slice(&[0; 31]),
        Err(StoreError::InvalidPlatformSecret)
    ));
}

#[test]
fn debug_leaks_nothing() {
    let (_d, path) = tmp();
    let p = pin("864209");
    let secret = PlatformSecret::new([0x5c; 32]);
    let s = Store::create(&path, &p, Some(&secret), opts(10)).unwrap();
    let all = format!("{p:?} {secret:?} {s:?} {:#?}", s);
    assert!(!all.contains("864209"), "{all}");
    assert!(!all.contains("5c") && !all.contains("92"), "{all}");
    assert!(!all.contains("device.db"), "{all}");
    let err = Store::unlock(&path, &pin("000000"), Some(&secret)).unwrap_err();
    assert!(!format!("{err:?} {err}").contains("000000"));
}

#[test]
fn pins_are_mandatory_and_stores_are_not_overwritten() {
    assert!(matches!(
        Pin::new("12345".into()),
        Err(StoreError::PinTooShort { min: 6 })
    ));
    let (_d, path) = tmp();
    assert!(!Store::exists(&path));
    Store::create(&path, &pin("123456"), None, opts(10))
        .unwrap()
        .lock();
    assert!(Store::exists(&path));
    assert!(matches!(
        Store::create(&path, &pin("654321"), None, opts(10)),
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        Store::create(
            &tmp().1,
            &pin("123456"),
            None,
            CreateOptions {
                kdf: KdfParams {
                    m_cost_kib: 64,
                    ..FAST
                },
                max_attempts: 3
            }
        ),
        Err(StoreError::InvalidKdfParams(_))
    ));
}

#[test]
fn kdf_upgrade_and_pin_change_keep_the_data() {
    let (_d, path) = tmp();
    let mut s = Store::create(&path, &pin("123456"), None, opts(10)).unwrap();
    s.set_relay_cursor(17).unwrap();
    let salt_before = header_bytes(&path)[24..40].to_vec();
    let stronger = KdfParams {
        m_cost_kib: 16 * 1024,
        t_cost: 2,
        p_cost: 1,
    };
    assert!(matches!(
        s.upgrade_kdf(&pin("654321"), None, stronger),
        Err(StoreError::WrongPin { attempts_left: 9 })
    ));
    assert!(matches!(
        s.upgrade_kdf(
            &pin("123456"),
            None,
            KdfParams {
                t_cost: 1,
                m_cost_kib: 12 * 1024,
                p_cost: 1
            }
        ),
        Ok(())
    ));
    assert!(matches!(
        s.upgrade_kdf(&pin("123456"), None, FAST),
        Err(StoreError::KdfDowngrade)
    ));
    s.upgrade_kdf(&pin("123456"), None, stronger).unwrap();
    assert_eq!(s.kdf_params().unwrap(), stronger);
    assert_ne!(header_bytes(&path)[24..40], salt_before[..], "fresh salt");
    s.set_relay_cursor(18).unwrap();
    s.lock();

    let mut s = Store::unlock(&path, &pin("123456"), None).unwrap();
    assert_eq!(s.relay_cursor().unwrap(), Some(18));
    s.change_pin(&pin("123456"), &pin("a-longer-passphrase"), None)
        .unwrap();
    s.lock();
    assert!(matches!(
        Store::unlock(&path, &pin("123456"), None),
        Err(StoreError::WrongPin { .. })
    ));
    let s = Store::unlock(&path, &pin("a-longer-passphrase"), None).unwrap();
    assert_eq!(s.relay_cursor().unwrap(), Some(18));
    assert_eq!(s.kdf_params().unwrap(), stronger);
}

/// Issue 9, item 7: the current-PIN check of `change_pin` and
/// `upgrade_kdf` is an attempt like an unlock: counted, and the store is
/// wiped at the limit. (On main neither counted: an unlocked phone was a
/// PIN oracle without a wipe.)
#[test]
fn wrong_current_pins_in_change_pin_and_upgrade_kdf_count_and_wipe() {
    let (_d, path) = tmp();
    let mut s = Store::create(&path, &pin("123456"), None, opts(3)).unwrap();
    let stronger = KdfParams { t_cost: 2, ..FAST };
    assert!(matches!(
        s.change_pin(&pin("000000"), &pin("111111"), None),
        Err(StoreError::WrongPin { attempts_left: 2 })
    ));
    assert_eq!(failed_attempts(&path), 1);
    // A right PIN resets the count, as an unlock does.
    s.change_pin(&pin("123456"), &pin("222222"), None).unwrap();
    assert_eq!(failed_attempts(&path), 0);
    assert!(matches!(
        s.upgrade_kdf(&pin("000000"), None, stronger),
        Err(StoreError::WrongPin { attempts_left: 2 })
    ));
    assert!(matches!(
        s.change_pin(&pin("000001"), &pin("111111"), None),
        Err(StoreError::WrongPin { attempts_left: 1 })
    ));
    assert!(matches!(
        s.upgrade_kdf(&pin("000002"), None, stronger),
        Err(StoreError::Wiped)
    ));
    drop(s);
    assert!(!Store::exists(&path), "wiped at the limit");
    assert!(matches!(
        Store::unlock(&path, &pin("222222"), None),
        Err(StoreError::NotFound | StoreError::Wiped)
    ));
}

/// Issue 9, item 7: the database, its WAL and shared-memory files and the
/// header are created readable by their owner only, whatever the umask.
#[cfg(unix)]
#[test]
fn store_files_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = tmp();
    let mut s = Store::create(&path, &pin("123456"), None, opts(10)).unwrap();
    s.set_relay_cursor(1).unwrap();
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?} is {mode:o}", entry.file_name());
        files += 1;
    }
    assert!(files >= 4, "database, -wal, -shm and header: {files} files");
    s.change_pin(&pin("123456"), &pin("654321"), None).unwrap();
    let h = std::fs::metadata(format!("{}.header", path.display())).unwrap();
    assert_eq!(h.permissions().mode() & 0o777, 0o600);
}

// ---- the committed fixture ----------------------------------------------------

const FIXTURE_PIN: &str = "271828";
const FIXTURE_SALT: [u8; 16] = *b"ward-fixture-slt";
const FIXTURE_CONV: [u8; 16] = [0xc0; 16];

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn fixture_device() -> DeviceSigningKey {
    DeviceSigningKey::import_secret(&[1; 32]).unwrap()
}

fn fixture_messages() -> Vec<Message> {
    let d = fixture_device();
    vec![
        text(
            FIXTURE_CONV,
            1,
            1_790_000_000_000,
            "fixture message one",
            &d,
        ),
        Message {
            content_type: ContentType::File,
            content: Zeroizing::new(vec![0, 1, 2, 3, 255]),
            ..text(FIXTURE_CONV, 2, 1_790_000_000_001, "", &d)
        },
    ]
}

fn write_fixture(path: &Path) {
    let mut s =
        Store::create_with_fixed_salt(path, &pin(FIXTURE_PIN), None, opts(10), FIXTURE_SALT)
            .unwrap();
    s.set_identity(&Identity {
        user_id: "fixture@ward".into(),
        device_signing: fixture_device(),
        device_encryption: DeviceEncryptionKey::import_secret(&[2; 32]).unwrap(),
    })
    .unwrap();
    s.add_user_key(&UserEncryptionKey::import_secret(&[3; 32]).unwrap())
        .unwrap();
    s.set_verified_log(
        "peer@ward",
        &[b"statement 0".to_vec(), b"statement 1".to_vec()],
    )
    .unwrap();
    s.put_conversation(
        &ConversationId(FIXTURE_CONV),
        &["fixture@ward".into(), "peer@ward".into()],
    )
    .unwrap();
    for m in fixture_messages() {
        s.insert_message(&m).unwrap();
    }
    s.outbox_enqueue(
        &ConversationId(FIXTURE_CONV),
        b"queued payload",
        1_790_000_000_002,
    )
    .unwrap();
    s.set_relay_cursor(42).unwrap();
    s.lock();
}

/// A copy of a committed fixture in a temporary directory: unlocking writes
/// the header and the WAL.
fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let committed = fixture_dir().join(name);
    let (d, path) = tmp();
    std::fs::copy(&committed, &path).unwrap();
    let mut h = path.as_os_str().to_owned();
    h.push(".header");
    let mut ch = committed.as_os_str().to_owned();
    ch.push(".header");
    std::fs::copy(&ch, &h).unwrap();
    (d, path)
}

/// The header, byte by byte (see SECURITY.md §14.3): the same in both fixtures.
fn check_fixture_header(path: &Path) {
    let header = header_bytes(path);
    assert_eq!(header.len(), 108);
    assert_eq!(&header[0..12], b"WARDSTOR\x00\x01\x00\x01");
    assert_eq!(&header[12..24], &[0, 0, 0x20, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(&header[24..40], &FIXTURE_SALT);
    assert_eq!(&header[40..48], &[0, 0, 0, 10, 0, 0, 0, 0]);
}

/// What both fixtures hold besides keys.
fn check_fixture_content(s: &Store) {
    let conv = s
        .conversation(&ConversationId(FIXTURE_CONV))
        .unwrap()
        .unwrap();
    assert_eq!(
        conv.members,
        vec!["fixture@ward".to_string(), "peer@ward".into()]
    );
    assert_eq!(
        s.messages(&ConversationId(FIXTURE_CONV)).unwrap(),
        fixture_messages()
    );
}

/// Opens `tests/fixtures/store-v1.db`, written by the v1 SDK (schema 1,
/// X25519 device and user keys; never regenerated). It migrates to schema 2
/// and opens: the messages are all there, but its keys cannot serve protocol
/// v2, so the identity reports `ReenrollRequired` until the app resets the
/// store and the device enrolls again (SECURITY.md §14.9).
#[test]
fn the_v1_fixture_opens_and_asks_to_reenroll() {
    assert_eq!(FORMAT_VERSION, 1, "new header format: add a fixture for it");
    assert_eq!(SCHEMA_VERSION, 6, "new schema: add a fixture for it");
    let (_d, path) = fixture_copy("store-v1.db");
    check_fixture_header(&path);
    assert!(matches!(
        Store::unlock(&path, &pin("000000"), None),
        Err(StoreError::WrongPin { attempts_left: 9 })
    ));
    let mut s = Store::unlock(&path, &pin(FIXTURE_PIN), None).unwrap();
    assert!(matches!(s.identity(), Err(StoreError::ReenrollRequired)));
    assert!(s.holds_v1_keys().unwrap());
    // The v1 user key ([3; 32] as an X25519 secret) is never handed out,
    // not even as the X-Wing key the same 32 bytes would make.
    assert!(s.user_keys().unwrap().is_empty());
    let same_bytes = UserEncryptionKey::import_secret(&[3; 32]).unwrap();
    assert!(s.user_key(&same_bytes.public_key()).unwrap().is_none());
    check_fixture_content(&s);
    assert_eq!(
        s.verified_log("peer@ward").unwrap().unwrap(),
        vec![b"statement 0".to_vec(), b"statement 1".to_vec()]
    );
    assert_eq!(s.relay_cursor().unwrap(), Some(42));

    // The app resets the store and enrolls again; the history stays.
    assert!(s.reset_for_reenrollment().unwrap());
    assert!(!s.reset_for_reenrollment().unwrap(), "once only");
    assert!(s.identity().unwrap().is_none());
    assert!(!s.holds_v1_keys().unwrap());
    assert!(s.verified_log("peer@ward").unwrap().is_none());
    assert!(s.outbox_peek().unwrap().is_none());
    assert_eq!(s.relay_cursor().unwrap(), None);
    check_fixture_content(&s);
    let mut rng = rand::rng();
    let device = DeviceSigningKey::generate(&mut rng);
    let device_enc = DeviceEncryptionKey::generate(&mut rng);
    let user_key = UserEncryptionKey::generate(&mut rng);
    s.set_identity(&Identity {
        user_id: "fixture@ward".into(),
        device_signing: DeviceSigningKey::import_secret(&*device.export_secret()).unwrap(),
        device_encryption: DeviceEncryptionKey::import_secret(&*device_enc.export_secret())
            .unwrap(),
    })
    .unwrap();
    s.add_user_key(&user_key).unwrap();
    s.lock();
    let s = Store::unlock(&path, &pin(FIXTURE_PIN), None).unwrap();
    let id = s.identity().unwrap().unwrap();
    assert_eq!(id.device_encryption.public_key(), device_enc.public_key());
    assert!(s.user_key(&user_key.public_key()).unwrap().is_some());
    check_fixture_content(&s);
}

/// Opens `tests/fixtures/store-v2.db` (committed, schema 2; no longer
/// regenerated) and reads back every row written by `write_fixture`: it
/// migrates to schema 3 (uploads, empty). A change of the header, the KDF,
/// the SQLCipher settings or the schema that breaks existing stores fails
/// here.
#[test]
fn the_committed_v2_fixture_still_opens() {
    let (_d, path) = fixture_copy("store-v2.db");
    check_v2_content(&path);
    let s = Store::unlock(&path, &pin(FIXTURE_PIN), None).unwrap();
    assert!(s.uploads().unwrap().is_empty());
}

/// The upload row of the schema-3 fixture.
fn fixture_upload() -> ward_sdk::store::Upload {
    ward_sdk::store::Upload {
        blob_id: [9; 32],
        conversation_id: ConversationId(FIXTURE_CONV),
        descriptor: Zeroizing::new(b"descriptor bytes".to_vec()),
        spool_path: PathBuf::from("/spool/0909.blob"),
        blob_size: 1104,
        next_piece: 1,
        created_at_ms: 1_790_000_000_003,
    }
}

/// Opens `tests/fixtures/store-v3.db` (committed): `write_fixture` and an
/// attachment upload in progress. To regenerate after an intended format
/// change (with a migration, and a new fixture beside this one):
/// `WARD_WRITE_FIXTURES=1 cargo test -p ward-sdk --test store fixture`.
#[test]
fn the_committed_v3_fixture_still_opens() {
    let committed = fixture_dir().join("store-v3.db");
    if std::env::var_os("WARD_WRITE_FIXTURES").is_some() {
        let _ = Store::wipe(&committed);
        write_fixture(&committed);
        let s = Store::unlock(&committed, &pin(FIXTURE_PIN), None).unwrap();
        s.upload_put(&fixture_upload()).unwrap();
        s.lock();
    }
    let (_d, path) = fixture_copy("store-v3.db");
    check_v2_content(&path);
    let mut s = Store::unlock(&path, &pin(FIXTURE_PIN), None).unwrap();
    let ups = s.uploads().unwrap();
    assert_eq!(ups.len(), 1);
    let (u, want) = (&ups[0], fixture_upload());
    assert_eq!(
        (
            u.blob_id,
            u.conversation_id,
            &u.descriptor[..],
            &u.spool_path
        ),
        (
            want.blob_id,
            want.conversation_id,
            &want.descriptor[..],
            &want.spool_path
        )
    );
    assert_eq!(
        (u.blob_size, u.next_piece, u.created_at_ms),
        (want.blob_size, want.next_piece, want.created_at_ms)
    );
    // Finishing it moves it to the outbox, with its history copy.
    let m = Message {
        content_type: ContentType::Attachment,
        content: Zeroizing::new(b"descriptor bytes".to_vec()),
        ..text(FIXTURE_CONV, 3, 1_790_000_000_004, "", &fixture_device())
    };
    s.upload_finish(&[9; 32], b"sealed", 1_790_000_000_004, &m)
        .unwrap();
    assert!(s.uploads().unwrap().is_empty());
    assert_eq!(s.outbox_len().unwrap(), 2);
}

/// The room and the kept room envelope of the schema-5 fixture.
const FIXTURE_ROOM: [u8; 32] = [5; 32];

/// Opens `tests/fixtures/store-v5.db` (committed; schema 4, rooms, has no
/// fixture of its own: this one covers it): `write_fixture`, a room, and a
/// room envelope kept for a history forward (SECURITY.md §17.13). To
/// regenerate after an intended format change (with a migration, and a new
/// fixture beside this one):
/// `WARD_WRITE_FIXTURES=1 cargo test -p ward-sdk --test store v5_fixture`.
#[test]
fn the_committed_v5_fixture_still_opens() {
    let committed = fixture_dir().join("store-v5.db");
    let room = ward_core::RoomId(FIXTURE_ROOM);
    if std::env::var_os("WARD_WRITE_FIXTURES").is_some() {
        let _ = Store::wipe(&committed);
        write_fixture(&committed);
        let s = Store::unlock(&committed, &pin(FIXTURE_PIN), None).unwrap();
        s.put_room(&room, &ConversationId([6; 16])).unwrap();
        s.put_room_envelope(
            &room,
            "peer@ward",
            &ward_core::ResourceId([7; 16]),
            1_790_000_000_005,
            b"room envelope",
        )
        .unwrap();
        s.lock();
    }
    let (_d, path) = fixture_copy("store-v5.db");
    check_v2_content(&path);
    let s = Store::unlock(&path, &pin(FIXTURE_PIN), None).unwrap();
    assert_eq!(s.room_ids().unwrap(), vec![room]);
    assert_eq!(
        s.room_by_conversation(&ConversationId([6; 16])).unwrap(),
        Some(room)
    );
    assert_eq!(
        s.room_envelopes(&room, 1 << 20).unwrap(),
        vec![b"room envelope".to_vec()]
    );
}

/// The key-transparency state of the schema-6 fixture.
fn fixture_kt_state() -> ward_sdk::store::KtState {
    ward_sdk::store::KtState {
        certificate: b"certificate".to_vec(),
        epoch: b"signed epoch".to_vec(),
        scanned: 3,
        frontier: vec![8; 64],
        known_devices: vec![9; 32],
    }
}

/// Opens `tests/fixtures/store-v6.db` (committed; schema 6, the
/// key-transparency monitor's state, SECURITY.md §18.8): `write_fixture`
/// and a `kt_state` row. To regenerate after an intended format change
/// (with a migration, and a new fixture beside this one):
/// `WARD_WRITE_FIXTURES=1 cargo test -p ward-sdk --test store v6_fixture`.
#[test]
fn the_committed_v6_fixture_still_opens() {
    let committed = fixture_dir().join("store-v6.db");
    if std::env::var_os("WARD_WRITE_FIXTURES").is_some() {
        let _ = Store::wipe(&committed);
        write_fixture(&committed);
        let s = Store::unlock(&committed, &pin(FIXTURE_PIN), None).unwrap();
        s.set_kt_state(&fixture_kt_state()).unwrap();
        s.lock();
    }
    let (_d, path) = fixture_copy("store-v6.db");
    check_v2_content(&path);
    let s = Store::unlock(&path, &pin(FIXTURE_PIN), None).unwrap();
    assert_eq!(s.kt_state().unwrap(), Some(fixture_kt_state()));
}

/// What `write_fixture` wrote, read back from a copy at `path`.
fn check_v2_content(path: &Path) {
    check_fixture_header(path);
    let s = Store::unlock(path, &pin(FIXTURE_PIN), None).unwrap();
    assert!(!s.holds_v1_keys().unwrap());
    let id = s.identity().unwrap().unwrap();
    assert_eq!(id.user_id, "fixture@ward");
    assert_eq!(
        id.device_signing.public_key(),
        fixture_device().public_key()
    );
    assert_eq!(
        id.device_encryption.public_key(),
        DeviceEncryptionKey::import_secret(&[2; 32])
            .unwrap()
            .public_key()
    );
    let uk = UserEncryptionKey::import_secret(&[3; 32]).unwrap();
    assert!(s.user_key(&uk.public_key()).unwrap().is_some());
    assert_eq!(s.user_keys().unwrap().len(), 1);
    assert_eq!(
        s.verified_log("peer@ward").unwrap().unwrap(),
        vec![b"statement 0".to_vec(), b"statement 1".to_vec()]
    );
    check_fixture_content(&s);
    let out = s.outbox_peek().unwrap().unwrap();
    assert_eq!(&out.payload[..], b"queued payload");
    assert_eq!(out.created_at_ms, 1_790_000_000_002);
    assert_eq!(s.relay_cursor().unwrap(), Some(42));
}

/// A store with a version 1 header (the committed v5 fixture) takes a
/// platform-unlock slot: the header becomes version 2 (212 bytes, the first
/// 76 unchanged but for the version and flag bit 2), the platform secret
/// opens it, and disabling the slot gives back the very same 108 bytes
/// (SECURITY.md §14.3, §14.10).
#[test]
fn a_v1_header_store_takes_a_platform_slot_and_gives_it_back() {
    let (_d, path) = fixture_copy("store-v5.db");
    let before = header_bytes(&path);
    assert_eq!(before.len(), 108);
    let secret = PlatformSecret::new([0x42; 32]);
    let s = Store::unlock(&path, &pin(FIXTURE_PIN), None).unwrap();
    s.enable_platform_unlock(&secret, std::time::Duration::from_secs(3600))
        .unwrap();
    s.lock();
    let v2 = header_bytes(&path);
    assert_eq!(v2.len(), 212);
    assert_eq!(&v2[8..11], &[0, 2, 0b100]);
    assert_eq!(&v2[11..76], &before[11..76]);
    let s = Store::unlock_with_platform_secret(&path, &secret).unwrap();
    assert_eq!(
        s.messages(&ConversationId(FIXTURE_CONV)).unwrap(),
        fixture_messages()
    );
    s.disable_platform_unlock().unwrap();
    s.lock();
    assert_eq!(header_bytes(&path), before);
    assert!(matches!(
        Store::unlock_with_platform_secret(&path, &secret),
        Err(StoreError::PinRequired(
            ward_sdk::store::PinRequiredReason::NoSlot
        ))
    ));
}
