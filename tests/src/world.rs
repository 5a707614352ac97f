//! An organisation with both real servers on loopback (the relay following
//! the keyserver's relay link, as under `ward up`) and a directory for SDK
//! device stores: the setup SDK-level end-to-end tests share.
// Test helpers: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_core::testkit::Org;
use ward_keyserver::Clock;
use ward_sdk::store::{KdfParams, Pin};
use ward_sdk::{Client, ClientConfig};

use crate::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config};
use crate::relay::{Relay, TempDir};

/// The PIN of every test device.
pub const PIN: &str = "ward-pin-493817";

/// The PIN, as the SDK takes it.
pub fn pin() -> Pin {
    Pin::new(PIN.into()).unwrap()
}

/// An organisation, its two servers and a directory for device stores.
pub struct World {
    /// The organisation (its root signs the invites).
    pub org: Org,
    /// The relay.
    pub relay: Relay,
    /// The relay's metrics registry.
    pub relay_metrics: ward_ops::metrics::Registry,
    keyserver: TestKeyserver,
    ks_db: PathBuf,
    dir: TempDir,
}

impl World {
    /// Both servers with their test configurations.
    pub async fn new() -> Self {
        Self::with_relay(|_| {}).await
    }

    /// Both servers, the relay's configuration adjusted by `tweak`.
    pub async fn with_relay(tweak: impl FnOnce(&mut ward_relay::Config)) -> Self {
        let org = Org::new(&mut rand::rng());
        let ks_db = temp_db_path("world-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        let link_key = crate::link::service_key();
        config.relay_keys = vec![link_key.public_key()];
        let keyserver = TestKeyserver::start(config).await;
        let link = crate::link::link_to(&keyserver.url(), link_key);
        let metrics = ward_ops::metrics::Registry::new();
        let m = metrics.clone();
        let relay = Relay::start_with(org.root_public(), |c| {
            c.keyserver_link = Some(link);
            c.metrics = m;
            tweak(c);
        })
        .await;
        Self {
            org,
            relay,
            relay_metrics: metrics,
            keyserver,
            ks_db,
            dir: TempDir::new("world-clients"),
        }
    }

    /// The directory device stores (and any test files) go in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The relay's blob directory (its default, beside its database).
    pub fn blob_dir(&self) -> PathBuf {
        ward_relay::config::default_blob_dir(&self.relay.db)
    }

    /// A relay metric's value (a counter or gauge without labels); 0 if absent.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.relay_metrics.render();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .unwrap_or(0.0)
    }

    /// A client configuration for the device store `name`, with a cheap
    /// KDF and short delays.
    pub fn config(&self, name: &str) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.dir.path().join(format!("{name}.db")),
            self.relay.url(),
            self.keyserver.url(),
            self.org.root_public(),
        );
        c.store_options.kdf = KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
        };
        c.reconnect_min = Duration::from_millis(50);
        c.reconnect_max = Duration::from_millis(500);
        c.request_timeout = Duration::from_secs(10);
        c.key_wait = Duration::from_secs(3);
        c
    }

    /// Enrolls `user_id`'s first device, stored as `device`.
    pub async fn enroll(&self, user_id: &str, device: &str) -> Client {
        let (invite, delegation) = crate::invite(&self.org, user_id);
        Client::enroll(self.config(device), &invite, &delegation, pin())
            .await
            .expect("enroll")
    }

    /// Unlocks the device stored as `device` again (after a restart).
    pub async fn unlock(&self, device: &str) -> Client {
        Client::unlock(self.config(device), pin())
            .await
            .expect("unlock")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        remove_db(&self.ks_db);
    }
}
