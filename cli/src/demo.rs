//! `ward demo`: two clinicians, one conversation, and what the servers kept.
//!
//! Everything runs in this process: the relay and the keyserver on
//! 127.0.0.1:0 with their databases in a temporary folder, a fresh
//! organisation, and two SDK clients with their own encrypted stores.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::net::TcpListener;
use tokio::sync::mpsc::Receiver;
use ward_core::invite::{InviteDetails, create_invite};
use ward_core::keys::OrgRootKey;
use ward_proto::Message as _;
use ward_sdk::store::{KdfParams, Message, Pin};
use ward_sdk::{Client, ClientConfig, Event};

use crate::device::{message_line, short};
use crate::{CliError, hex};

const MARTIN: &str = "dr.martin";
const DUBOIS: &str = "nurse.dubois";
/// Fictional patient, fictional values.
const TEXT_1: &str = "Bed 12, Mr Lefevre (fictional): K+ 6.1 mmol/L on the 14:00 draw. \
                      Please repeat the ECG and call me with the result.";
const TEXT_2: &str = "ECG repeated at 14:25 for bed 12: sinus rhythm 78/min, no peaked T waves. \
                      Repeat K+ sent to the lab.";
const WAIT: Duration = Duration::from_secs(20);

fn demo_err(what: &str) -> impl FnOnce(ward_sdk::ClientError) -> CliError + '_ {
    move |e| CliError::Msg(format!("demo: {what}: {e}"))
}

/// `ward demo`.
pub async fn run(keep: Option<PathBuf>) -> Result<(), CliError> {
    let started = Instant::now();
    let dir = match &keep {
        Some(d) => d.clone(),
        None => {
            let b: [u8; 6] = rand::random();
            std::env::temp_dir().join(format!("ward-demo-{}", hex(&b)))
        }
    };
    if dir.join("relay.db").exists() {
        return Err(CliError::Msg(format!(
            "{} already holds a demo: pass an empty folder to --keep",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(crate::io(dir.display().to_string()))?;
    let result = scenario(&dir).await;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("The demo's files are kept in {}.", dir.display());
    }
    result?;
    println!("Demo finished in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

async fn scenario(dir: &Path) -> Result<(), CliError> {
    // The organisation and its two services.
    let root = OrgRootKey::generate(&mut rand::rng());
    let org = root.public_key();
    let relay_db = dir.join("relay.db");
    let ks_db = dir.join("keyserver.db");
    let relay_l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(crate::io("demo: cannot listen on 127.0.0.1"))?;
    let ks_l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(crate::io("demo: cannot listen on 127.0.0.1"))?;
    // TLS as in production, with a CA that lives in this process only.
    let pki = ward_net::tls::dev_ca::DevPki::mint(
        "Ward demo CA (this process only)",
        ward_net::tls::dev_ca::LOOPBACK_NAMES,
    )
    .map_err(|e| CliError::Msg(format!("demo: {e}")))?;
    let server_tls = ward_net::tls::Acceptor::Tls(
        pki.server()
            .map_err(|e| CliError::Msg(format!("demo: {e}")))?,
    );
    let client_tls = pki
        .client()
        .map_err(|e| CliError::Msg(format!("demo: {e}")))?;
    let relay_url = format!(
        "wss://{}",
        relay_l.local_addr().map_err(crate::io("relay"))?
    );
    let ks_url = format!(
        "wss://{}",
        ks_l.local_addr().map_err(crate::io("keyserver"))?
    );
    let mut relay_config = ward_relay::Config::new(&relay_db, org);
    relay_config.tls = server_tls.clone();
    let mut ks_config = ward_keyserver::Config::new(&ks_db, org);
    ks_config.tls = server_tls;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let relay = tokio::spawn(ward_relay::run(
        relay_l,
        relay_config,
        stopped(stop_rx.clone()),
    ));
    let keyserver = tokio::spawn(ward_keyserver::run(ks_l, ks_config, stopped(stop_rx)));
    println!("Ward demo: one organisation, two clinicians, one conversation.");
    println!("  relay      {relay_url}   (stores {})", relay_db.display());
    println!("  keyserver  {ks_url}   (stores {})", ks_db.display());
    println!("  org root   {}", hex(org.as_bytes()));
    println!(
        "  demo stores use a fast KDF (Argon2id 8 MiB, 1 pass); real ones use 64 MiB, 3 passes"
    );
    println!();

    let urls = (relay_url.as_str(), ks_url.as_str(), &client_tls);
    let outcome = conversation(dir, &root, urls, &relay_db, &ks_db).await;
    // Scanned while both servers still run: their WAL files are there.
    let outcome = outcome.and_then(|sample| {
        println!();
        print!("{sample}");
        scan(&[&relay_db, &ks_db], &[TEXT_1, TEXT_2])
    });
    let _ = stop_tx.send(true);
    let _ = relay.await;
    let _ = keyserver.await;
    outcome
}

fn config(dir: &Path, name: &str, (relay, ks, tls): Urls<'_>, org: &OrgRootKey) -> ClientConfig {
    let mut c = ClientConfig::new(dir.join(format!("{name}.db")), relay, ks, org.public_key());
    c.tls = tls.clone();
    c.store_options.kdf = KdfParams {
        m_cost_kib: KdfParams::MIN_M_COST_KIB,
        t_cost: 1,
        p_cost: 1,
    };
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c.request_timeout = Duration::from_secs(5);
    c.key_wait = Duration::from_secs(5);
    c
}

fn pin(p: &str) -> Result<Pin, CliError> {
    Pin::new(p.to_owned()).map_err(|e| CliError::Msg(format!("demo PIN: {e}")))
}

async fn enroll(
    root: &OrgRootKey,
    config: ClientConfig,
    user_id: &str,
    name: &str,
    profession: &str,
    pin_text: &str,
) -> Result<Client, CliError> {
    let details = InviteDetails {
        user_id: user_id.into(),
        display_name: name.into(),
        profession: profession.into(),
        registry_number: String::new(),
        expires_at: crate::now_secs() + 3600,
    };
    let (invite, delegation) = create_invite(&mut rand::rng(), root, &details)?;
    let client = Client::enroll(
        config,
        &invite.encode_to_vec(),
        &*delegation.export_secret(),
        pin(pin_text)?,
    )
    .await
    .map_err(demo_err("enroll"))?;
    println!(
        "Invited and enrolled {name} as {user_id} (device {}).",
        short(client.device_id().as_bytes())
    );
    Ok(client)
}

/// The next message on `events` (send outcomes skipped; a rejection fails).
async fn next_message(events: &mut Receiver<Event>, who: &str) -> Result<Message, CliError> {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Err(_) => {
                return Err(CliError::Msg(format!(
                    "demo: {who} received nothing in time"
                )));
            }
            Ok(None) => return Err(CliError::Msg(format!("demo: {who}'s client stopped"))),
            Ok(Some(Event::Message(m))) => return Ok(m),
            Ok(Some(Event::Rejected { reason, .. })) => {
                return Err(CliError::Msg(format!(
                    "demo: {who} rejected a message: {reason}"
                )));
            }
            Ok(Some(_)) => {}
        }
    }
}

async fn wait_sent(
    events: &mut Receiver<Event>,
    mut rid: ward_core::ResourceId,
) -> Result<(), CliError> {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Err(_) | Ok(None) => {
                return Err(CliError::Msg(
                    "demo: the relay did not confirm a send".into(),
                ));
            }
            Ok(Some(Event::Sent { resource_id })) if resource_id == rid => return Ok(()),
            Ok(Some(Event::Resealed { old, new })) if old == rid => rid = new,
            Ok(Some(Event::SendFailed { reason, .. })) => {
                return Err(CliError::Msg(format!("demo: send refused: {reason}")));
            }
            Ok(Some(_)) => {}
        }
    }
}

/// The relay's and keyserver's URLs, and whom to trust for them.
type Urls<'a> = (&'a str, &'a str, &'a ward_net::tls::ClientTls);

async fn conversation(
    dir: &Path,
    root: &OrgRootKey,
    urls: Urls<'_>,
    relay_db: &Path,
    ks_db: &Path,
) -> Result<String, CliError> {
    let martin_cfg = config(dir, "martin", urls, root);
    let dubois_cfg = config(dir, "dubois", urls, root);
    let mut martin = enroll(
        root,
        martin_cfg,
        MARTIN,
        "Dr Claire Martin",
        "physician",
        "martin-493817",
    )
    .await?;
    let dubois = enroll(
        root,
        dubois_cfg.clone(),
        DUBOIS,
        "Luc Dubois",
        "nurse",
        "dubois-271828",
    )
    .await?;
    let mut martin_events = martin
        .events()
        .ok_or_else(|| CliError::Msg("demo: no event stream".into()))?;
    // The nurse's phone goes offline: the relay keeps the ciphertext for it.
    dubois.lock().await;
    println!("{DUBOIS}'s device is locked and offline.");
    println!();

    let conv = martin
        .create_conversation(&[DUBOIS])
        .await
        .map_err(demo_err("create conversation"))?;
    let rid = martin
        .send_text(conv, TEXT_1)
        .await
        .map_err(demo_err("send"))?;
    wait_sent(&mut martin_events, rid).await?;
    println!("{MARTIN} sent a message; the relay stored it for {DUBOIS}'s offline device.");
    let relay_sample = sample_relay(relay_db)?;

    let mut dubois = Client::unlock(dubois_cfg, pin("dubois-271828")?)
        .await
        .map_err(demo_err("unlock"))?;
    let mut dubois_events = dubois
        .events()
        .ok_or_else(|| CliError::Msg("demo: no event stream".into()))?;
    println!("{DUBOIS} unlocks the device with the PIN and comes online.");
    let m1 = next_message(&mut dubois_events, DUBOIS).await?;
    println!("  {DUBOIS} received and verified:");
    println!("    {}", message_line(&m1));
    let reply = dubois
        .send_text(m1.conversation_id, TEXT_2)
        .await
        .map_err(demo_err("reply"))?;
    let m2 = next_message(&mut martin_events, MARTIN).await?;
    println!("  {MARTIN} received and verified:");
    println!("    {}", message_line(&m2));
    wait_sent(&mut dubois_events, reply).await?;
    let both =
        m1.content.as_slice() == TEXT_1.as_bytes() && m2.content.as_slice() == TEXT_2.as_bytes();
    if !both {
        return Err(CliError::Msg("demo: a message arrived altered".into()));
    }
    println!("Both messages received, verified and decrypted.");
    martin.lock().await;
    dubois.lock().await;

    let mut out = relay_sample;
    out.push_str(&sample_keyserver(ks_db)?);
    Ok(out)
}

fn open_ro(path: &Path) -> Result<Connection, CliError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| CliError::Msg(format!("demo: cannot open {}: {e}", path.display())))?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    Ok(conn)
}

fn sql_err(e: rusqlite::Error) -> CliError {
    CliError::Msg(format!("demo: reading a server database: {e}"))
}

fn prefix(b: &[u8], n: usize) -> String {
    format!("{}...", hex(&b[..b.len().min(n)]))
}

/// What the relay holds for the offline device.
fn sample_relay(db: &Path) -> Result<String, CliError> {
    let conn = open_ro(db)?;
    let mut stmt = conn
        .prepare(
            "SELECT s.message_id, q.user_id, q.device_id, m.payload
             FROM queue q JOIN messages m ON m.id = q.msg JOIN sends s ON s.id = q.msg
             ORDER BY q.seq LIMIT 5",
        )
        .map_err(sql_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .map_err(sql_err)?;
    let mut out = String::from(
        "What the relay stored (relay.db, queue + messages, while the nurse was offline):\n",
    );
    for row in rows {
        let (mid, user, device, payload) = row.map_err(sql_err)?;
        out.push_str(&format!(
            "  message {}  for {} device {}  ciphertext {} bytes: {}\n",
            hex(&mid),
            user,
            short(&device),
            payload.len(),
            prefix(&payload, 24)
        ));
    }
    out.push_str("  (the relay deletes a ciphertext once every recipient device has acked it)\n");
    Ok(out)
}

/// Wrapped keys and the access log.
fn sample_keyserver(db: &Path) -> Result<String, CliError> {
    let conn = open_ro(db)?;
    let mut out = String::from("What the keyserver stored (keyserver.db):\n  wrapped_keys:\n");
    let mut stmt = conn
        .prepare(
            "SELECT resource_id, recipient_user, sender_user, ciphertext FROM wrapped_keys
             ORDER BY created_at, resource_id LIMIT 8",
        )
        .map_err(sql_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .map_err(sql_err)?;
    for row in rows {
        let (rid, to, from, ct) = row.map_err(sql_err)?;
        out.push_str(&format!(
            "    resource {}  for {:<13} (from {:<13})  {}-byte HPKE ciphertext: {}\n",
            hex(&rid),
            to,
            from,
            ct.len(),
            prefix(&ct, 16)
        ));
    }
    out.push_str("  access_log (who read which wrapped key, when):\n");
    let records = ward_keyserver::storage::export_access_log(db, 0)
        .map_err(|e| CliError::Msg(format!("demo: access log: {e}")))?;
    for r in records.iter().take(8) {
        out.push_str(&format!(
            "    {}  {:<13} device {}  {:?}  {}\n",
            crate::device::utc(r.at),
            r.user_id,
            short(&r.device_id),
            r.kind,
            hex(&r.resource_id)
        ));
    }
    Ok(out)
}

/// Scans the raw bytes of every server file (WAL included) for each plaintext.
fn scan(dbs: &[&Path], plaintexts: &[&str]) -> Result<(), CliError> {
    let mut files = Vec::new();
    let mut bytes_scanned = 0usize;
    for db in dbs {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            if let Ok(bytes) = std::fs::read(&p) {
                bytes_scanned += bytes.len();
                for text in plaintexts {
                    // Also a 24-byte fragment: a partial copy would show too.
                    let whole = text.as_bytes();
                    let fragment = &whole[..whole.len().min(24)];
                    if contains(&bytes, whole) || contains(&bytes, fragment) {
                        return Err(CliError::Msg(format!(
                            "demo: a plaintext appears in {}",
                            p.display()
                        )));
                    }
                }
                if let Some(name) = p.file_name() {
                    files.push(name.to_string_lossy().into_owned());
                }
            }
        }
    }
    println!(
        "No plaintext found: neither message (nor its first 24 bytes) appears in the raw bytes \
         of {} ({} bytes scanned).",
        files.join(", "),
        bytes_scanned
    );
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
