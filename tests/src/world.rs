//! An organisation with both real servers on loopback (the relay following
//! the keyserver's relay link, as under `ward up`) and a directory for SDK
//! device stores: the setup SDK-level end-to-end tests share, optionally
//! with the clients' keyserver connections through a tampering [`Proxy`].
// Test helpers: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_core::testkit::Org;
use ward_keyserver::Clock;
use ward_sdk::store::{KdfParams, Pin};
use ward_sdk::{Client, ClientConfig};

use crate::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config};
use crate::proxy::Proxy;
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
    /// The real keyserver (a test may take it to stop it).
    pub keyserver: Option<TestKeyserver>,
    /// The keyserver's database file.
    pub ks_db: PathBuf,
    /// A proxy in front of the keyserver, if the clients use one.
    pub ks_proxy: Option<Proxy>,
    /// Where the device stores live.
    pub dir: TempDir,
    /// The clients' request timeout ([`World::config`]).
    pub request_timeout: Duration,
}

impl World {
    /// Both servers with their test configurations.
    pub async fn new() -> Self {
        Self::start(false, |_| {}, |_| {}).await
    }

    /// Both servers, the relay's configuration adjusted by `tweak`.
    pub async fn with_relay(tweak: impl FnOnce(&mut ward_relay::Config)) -> Self {
        Self::start(false, |_| {}, tweak).await
    }

    /// Both servers, the keyserver's configuration adjusted by `tweak`.
    pub async fn new_with(tweak: impl FnOnce(&mut ward_keyserver::Config)) -> Self {
        Self::start(false, tweak, |_| {}).await
    }

    /// Both servers, clients reaching the keyserver through [`World::ks_proxy`].
    pub async fn with_keyserver_proxy() -> Self {
        Self::start(true, |_| {}, |_| {}).await
    }

    async fn start(
        proxy: bool,
        ks_tweak: impl FnOnce(&mut ward_keyserver::Config),
        relay_tweak: impl FnOnce(&mut ward_relay::Config),
    ) -> Self {
        let org = Org::new(&mut rand::rng());
        let ks_db = temp_db_path("world-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        let link_key = crate::link::service_key();
        config.relay_keys = vec![link_key.public_key()];
        ks_tweak(&mut config);
        let keyserver = TestKeyserver::start(config).await;
        let link = crate::link::link_to(&keyserver.url(), link_key);
        let metrics = ward_ops::metrics::Registry::new();
        let m = metrics.clone();
        let relay = Relay::start_with(org.root_public(), |c| {
            c.keyserver_link = Some(link);
            c.metrics = m;
            relay_tweak(c);
        })
        .await;
        let ks_proxy = if proxy {
            Some(Proxy::start(keyserver.url()).await)
        } else {
            None
        };
        Self {
            org,
            relay,
            relay_metrics: metrics,
            keyserver: Some(keyserver),
            ks_db,
            ks_proxy,
            dir: TempDir::new("world-clients"),
            request_timeout: Duration::from_secs(10),
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

    /// The real keyserver's URL (panics once a test took it).
    pub fn keyserver_url(&self) -> String {
        self.keyserver.as_ref().expect("the keyserver runs").url()
    }

    /// The keyserver URL clients use (the proxy's, if any).
    pub fn ks_url(&self) -> String {
        match &self.ks_proxy {
            Some(p) => p.url(),
            None => self.keyserver_url(),
        }
    }

    /// The store path of device `name`.
    pub fn store_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// A client configuration for the device store `name`, with a cheap
    /// KDF and short delays.
    pub fn config(&self, name: &str) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.store_path(name),
            self.relay.url(),
            self.ks_url(),
            self.org.root_public(),
        );
        c.store_options.kdf = KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
        };
        c.reconnect_min = Duration::from_millis(50);
        c.reconnect_max = Duration::from_millis(500);
        c.request_timeout = self.request_timeout;
        c.key_wait = Duration::from_secs(3);
        c
    }

    /// A signed invite for `user_id` (encoded) and its delegation secret.
    pub fn invite(&self, user_id: &str) -> (Vec<u8>, Vec<u8>) {
        crate::invite(&self.org, user_id)
    }

    /// Enrolls `user_id`'s first device, stored as `device`.
    pub async fn enroll(&self, user_id: &str, device: &str) -> Client {
        self.enroll_with(user_id, self.config(device)).await
    }

    /// Enrolls `user_id`'s first device with `config`.
    pub async fn enroll_with(&self, user_id: &str, config: ClientConfig) -> Client {
        let (invite, delegation) = self.invite(user_id);
        Client::enroll(config, &invite, &delegation, pin())
            .await
            .expect("enroll")
    }

    /// Unlocks the device stored as `device` again (after a restart).
    pub async fn unlock(&self, device: &str) -> Client {
        Client::unlock(self.config(device), pin())
            .await
            .expect("unlock")
    }

    /// Every file of both servers' databases, WAL included.
    pub fn server_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for db in [&self.relay.db, &self.ks_db] {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = db.as_os_str().to_owned();
                p.push(suffix);
                let p = PathBuf::from(p);
                if p.exists() {
                    out.push(p);
                }
            }
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        remove_db(&self.ks_db);
    }
}
