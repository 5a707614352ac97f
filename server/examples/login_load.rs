//! Issue 9, done-when 3: what a login costs when one user's log has 4,095
//! entries, and whether forged login attempts naming that user slow other
//! users' logins. Two in-process relays in one run: the verified-log cache
//! on (the default) and off (`log_cache_bytes = 0`: every attempt verifies
//! the stored log again, as the relay did before the cache).
//!
//! ```sh
//! cargo run --release -p ward-relay --example login_load
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ward_core::keys::{DeviceSigningKey, UserEncryptionKey};
use ward_core::testkit::{KIT_TIME, Org};
use ward_net::handshake::{RELAY, client};
use ward_proto::v1::SignedStatement;
use ward_relay::Config;

const LOG_LEN: usize = 4095;
/// Logins measured per case (fewer of bob's without the cache: each
/// verifies the whole log).
const LOGINS: usize = 100;

async fn login(url: &str, device: &DeviceSigningKey, user: &str, log: &[SignedStatement]) -> bool {
    let limits = ward_net::Limits::default();
    let Ok(mut c) = ward_net::conn::connect(url, &limits).await else {
        return false;
    };
    client(&mut c, device, user, RELAY, log).await.is_ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Figures {
    bob_ms: f64,
    verified_per_bob_login: f64,
    alice_p50: Duration,
    alice_p99: Duration,
    forged: u64,
}

async fn run(org: &Org, cache_bytes: usize, bob_log: &[SignedStatement], bob: &DeviceSigningKey) -> Figures {
    let dir = std::env::temp_dir().join(format!("ward-login-load-{cache_bytes}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config::new(dir.join("relay.db"), org.root_public());
    config.log_cache_bytes = cache_bytes;
    config.limits.net.auth_timeout = Duration::from_secs(60);
    config.limits.max_connections = 100_000;
    let stats = config.log_stats.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(ward_relay::run(listener, config, async move {
        let _ = stopped.await;
    }));

    // The first login stores and verifies the long log.
    assert!(login(&url, bob, "bob", bob_log).await);
    let before = stats.entries_verified();
    let bob_logins = if cache_bytes == 0 { 10 } else { LOGINS };
    let started = Instant::now();
    for _ in 0..bob_logins {
        assert!(login(&url, bob, "bob", bob_log).await);
    }
    let bob_ms = started.elapsed().as_secs_f64() * 1000.0 / bob_logins as f64;
    let verified_per_bob_login = (stats.entries_verified() - before) as f64 / bob_logins as f64;

    // Forged attempts naming bob (a valid handshake signature by a key that
    // is no device of his, presenting his log), 4 attackers back to back,
    // while alice logs in.
    let mut rng = rand::rng();
    let alice = org.enroll(&mut rng, "alice");
    assert!(login(&url, &alice.device, "alice", &alice.log).await);
    let stop_attack = Arc::new(AtomicBool::new(false));
    let forged = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let (url, stop_attack, forged) = (url.clone(), stop_attack.clone(), forged.clone());
        let log = bob_log.to_vec();
        attackers.push(tokio::spawn(async move {
            let mallory = DeviceSigningKey::generate(&mut rand::rng());
            while !stop_attack.load(Ordering::Relaxed) {
                assert!(!login(&url, &mallory, "bob", &log).await);
                forged.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let forged_before = forged.load(Ordering::Relaxed);
    let mut lat = Vec::with_capacity(LOGINS);
    let attack_started = Instant::now();
    for _ in 0..LOGINS {
        let t = Instant::now();
        assert!(login(&url, &alice.device, "alice", &alice.log).await);
        lat.push(t.elapsed());
    }
    let attack_secs = attack_started.elapsed().as_secs_f64();
    stop_attack.store(true, Ordering::Relaxed);
    for a in attackers {
        a.await.unwrap();
    }
    lat.sort();
    let _ = stop.send(());
    relay.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Figures {
        bob_ms,
        verified_per_bob_login,
        alice_p50: percentile(&lat, 0.5),
        alice_p99: percentile(&lat, 0.99),
        forged: ((forged.load(Ordering::Relaxed) - forged_before) as f64 / attack_secs) as u64,
    }
}

#[tokio::main]
async fn main() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let mut bob = org.enroll(&mut rng, "bob");
    let root = org.root_public();
    let mut log = bob.log.clone();
    while log.len() < LOG_LEN {
        let key = UserEncryptionKey::generate(&mut rng).public_key();
        let e = bob.chain.rotate_user_key(&bob.device, &key, KIT_TIME);
        bob.chain.apply(&root, &e).unwrap();
        log.push(e);
    }
    let t = Instant::now();
    ward_core::chain::verify_log(&root, "bob", &log).unwrap();
    println!("verify_log of {LOG_LEN} entries: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    println!("| relay | bob's login (mean) | log entries verified per login | alice's login p50 / p99 under forged attempts | forged attempts/s |");
    println!("|---|---|---|---|---|");
    for (name, bytes) in [("cache off (before)", 0), ("cache on (after)", ward_relay::logs::DEFAULT_LOG_CACHE_BYTES)] {
        let f = run(&org, bytes, &log, &bob.device).await;
        println!(
            "| {name} | {:.2} ms | {:.0} | {:.2} / {:.2} ms | {} |",
            f.bob_ms,
            f.verified_per_bob_login,
            f.alice_p50.as_secs_f64() * 1000.0,
            f.alice_p99.as_secs_f64() * 1000.0,
            f.forged
        );
    }
}
