//! Issue 9, done-when 3: what a login costs when one user's log has 4,095
//! entries, and whether forged login attempts naming that user slow other
//! users' logins. Two in-process relays in one run: the verified-log cache
//! on (the default) and off (`log_cache_bytes = 0`: every attempt verifies
//! the stored log again, as the relay did before the cache).
//!
//! ```sh
//! cargo run --release -p ward-relay --example login_load [-- --stall]
//! ```
//! `--stall` also runs the forged attempts against the relay without the
//! cache: its logins then stall and it grows by gigabytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ward_core::keys::{DeviceSigningKey, UserEncryptionKey};
use ward_core::testkit::{KIT_TIME, Org};
use ward_net::handshake::{Audience, client};
use ward_proto::v1::SignedStatement;
use ward_relay::Config;

const LOG_LEN: usize = 4095;
/// Logins measured per case (fewer of bob's without the cache: each
/// verifies the whole log).
const LOGINS: usize = 100;

async fn login(
    url: &str,
    root: ward_core::keys::SigningPublicKey,
    device: &DeviceSigningKey,
    user: &str,
    log: &[SignedStatement],
) -> bool {
    let limits = ward_net::Limits::default();
    let Ok(mut c) = ward_net::conn::connect(url, &limits).await else {
        return false;
    };
    let relay = Audience::relay(root, ward_core::auth::DEFAULT_INSTANCE);
    client(&mut c, device, user, &relay, log).await.is_ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Figures {
    bob_ms: f64,
    verified_per_bob_login: f64,
    idle_p50: Duration,
    idle_p99: Duration,
    alice_p50: Duration,
    alice_p99: Duration,
    /// Forged attempts answered by the end of the measurement.
    forged: u64,
    /// Alice's logins that failed under the attack (counted in the latency).
    failed: usize,
    logins: usize,
}

/// The forged login attempts per second naming bob (the issue's figure).
const FORGED_PER_SEC: u32 = 20;

async fn run(
    org: &Org,
    cache_bytes: usize,
    bob_log: &[SignedStatement],
    bob: &DeviceSigningKey,
) -> Figures {
    let dir = std::env::temp_dir().join(format!(
        "ward-login-load-{cache_bytes}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config::new(dir.join("relay.db"), org.root_public());
    config.log_cache_bytes = cache_bytes;
    config.limits.net.auth_timeout = Duration::from_secs(60);
    config.limits.max_connections = 100_000;
    // A 4,095-entry log (~1 MiB) is over the default pre-auth frame limit
    // (256 KiB, SECURITY.md §9), and every attempt comes from 127.0.0.1.
    config.limits.net.max_preauth_frame_bytes = 4 << 20;
    config.limits.max_unauthenticated_per_address = 100_000;
    config.limits.accept_rate_per_address = 1e9;
    let stats = config.log_stats.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(ward_relay::run(listener, config, async move {
        let _ = stopped.await;
    }));

    // The first login stores and verifies the long log.
    assert!(login(&url, org.root_public(), bob, "bob", bob_log).await);
    let before = stats.entries_verified();
    let bob_logins = if cache_bytes == 0 { 10 } else { LOGINS };
    let started = Instant::now();
    for _ in 0..bob_logins {
        assert!(login(&url, org.root_public(), bob, "bob", bob_log).await);
    }
    let bob_ms = started.elapsed().as_secs_f64() * 1000.0 / bob_logins as f64;
    let verified_per_bob_login = (stats.entries_verified() - before) as f64 / bob_logins as f64;

    // Alice's logins, first alone, then while forged attempts naming bob (a
    // valid handshake signature by a key that is no device of his,
    // presenting his log) arrive at a fixed rate, each on its own
    // connection whether or not the previous ones were answered.
    let mut rng = rand::rng();
    let alice = org.enroll(&mut rng, "alice");
    assert!(login(&url, org.root_public(), &alice.device, "alice", &alice.log).await);
    let alice_logins = if cache_bytes == 0 { 20 } else { LOGINS };
    let mut idle = Vec::with_capacity(alice_logins);
    for _ in 0..alice_logins {
        let t = Instant::now();
        assert!(login(&url, org.root_public(), &alice.device, "alice", &alice.log).await);
        idle.push(t.elapsed());
    }
    idle.sort();
    if cache_bytes == 0 && std::env::args().all(|a| a != "--stall") {
        // Without the cache the attack stalls alice's logins for good and
        // grows the relay by gigabytes (attempts queue behind the reader
        // pool, each holding its decoded log and a copy of the stored one):
        // only with `--stall`, on a machine to spare.
        let _ = stop.send(());
        let _ = std::fs::remove_dir_all(&dir);
        return Figures {
            bob_ms,
            verified_per_bob_login,
            idle_p50: percentile(&idle, 0.5),
            idle_p99: percentile(&idle, 0.99),
            alice_p50: Duration::ZERO,
            alice_p99: Duration::ZERO,
            forged: 0,
            failed: 0,
            logins: 0,
        };
    }
    let stop_attack = Arc::new(AtomicBool::new(false));
    let forged = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (url, stop_attack, forged) = (url.clone(), stop_attack.clone(), forged.clone());
        let log = Arc::new(bob_log.to_vec());
        let root = org.root_public();
        tokio::spawn(async move {
            let mallory = Arc::new(DeviceSigningKey::generate(&mut rand::rng()));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / FORGED_PER_SEC);
            while !stop_attack.load(Ordering::Relaxed) {
                tick.tick().await;
                let (url, log, mallory, forged) =
                    (url.clone(), log.clone(), mallory.clone(), forged.clone());
                tokio::spawn(async move {
                    let _ = login(&url, root, &mallory, "bob", &log).await;
                    forged.fetch_add(1, Ordering::Relaxed);
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat = Vec::with_capacity(alice_logins);
    let mut failed = 0;
    for _ in 0..alice_logins {
        let t = Instant::now();
        if !login(&url, org.root_public(), &alice.device, "alice", &alice.log).await {
            failed += 1;
        }
        lat.push(t.elapsed());
    }
    stop_attack.store(true, Ordering::Relaxed);
    attacker.await.unwrap();
    lat.sort();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), relay).await;
    let _ = std::fs::remove_dir_all(&dir);
    Figures {
        bob_ms,
        verified_per_bob_login,
        idle_p50: percentile(&idle, 0.5),
        idle_p99: percentile(&idle, 0.99),
        alice_p50: percentile(&lat, 0.5),
        alice_p99: percentile(&lat, 0.99),
        forged: forged.load(Ordering::Relaxed),
        failed,
        logins: alice_logins,
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
    println!(
        "verify_log of {LOG_LEN} entries: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "| relay | bob's login (mean) | log entries verified per bob login | alice's login p50 / p99 alone | \
         alice's login p50 / p99 with {FORGED_PER_SEC} forged attempts/s naming bob (failed) | forged attempts answered |"
    );
    println!("|---|---|---|---|---|---|");
    // The cache on first: the run without it leaves verifications running
    // on the blocking pool, which would load the other.
    for (name, bytes) in [
        (
            "cache on (after)",
            ward_relay::logs::DEFAULT_LOG_CACHE_BYTES,
        ),
        ("cache off (before)", 0),
    ] {
        let f = run(&org, bytes, &log, &bob.device).await;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {name} | {:.1} ms | {:.0} | {:.1} / {:.1} ms | {:.1} / {:.1} ms ({} of {}) | {} |",
            f.bob_ms,
            f.verified_per_bob_login,
            ms(f.idle_p50),
            ms(f.idle_p99),
            ms(f.alice_p50),
            ms(f.alice_p99),
            f.failed,
            f.logins,
            f.forged
        );
    }
    // Leftover verifications of the run without the cache would hold the
    // runtime's shutdown.
    std::process::exit(0);
}
