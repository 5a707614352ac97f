//! An organisation, its two real servers (the relay following the
//! keyserver's relay link, as under `ward up`) and a directory for SDK device
//! stores: the setup of the SDK end-to-end tests, optionally with the
//! clients' keyserver connections through a tampering [`Proxy`].
// Test support: a failed setup step should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use ward_core::testkit::Org;
use ward_keyserver::Clock;
use ward_sdk::store::{KdfParams, Pin};
use ward_sdk::{Client, ClientConfig};

use crate::keyserver::{TestKeyserver, remove_db, temp_db_path, test_config};
use crate::proxy::Proxy;
use crate::relay::{Relay, TempDir};

/// The PIN every test device uses.
pub const PIN: &str = "ward-pin-493817";

/// [`PIN`] as a `Pin`.
pub fn pin() -> Pin {
    Pin::new(PIN.into()).expect("a valid PIN")
}

/// The servers and the organisation.
pub struct World {
    /// The organisation (its root signs the invites).
    pub org: Org,
    /// The real relay.
    pub relay: Relay,
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
    /// The servers, clients talking to them directly.
    pub async fn new() -> Self {
        Self::start(false, |_| {}).await
    }

    /// [`World::new`], with the keyserver's configuration adjusted first.
    pub async fn new_with(tweak: impl FnOnce(&mut ward_keyserver::Config)) -> Self {
        Self::start(false, tweak).await
    }

    /// The servers, clients reaching the keyserver through [`World::ks_proxy`].
    pub async fn with_keyserver_proxy() -> Self {
        Self::start(true, |_| {}).await
    }

    async fn start(proxy: bool, tweak: impl FnOnce(&mut ward_keyserver::Config)) -> Self {
        let org = Org::new(&mut rand::rng());
        let ks_db = temp_db_path("world-ks");
        let mut config = test_config(&org, &ks_db);
        config.clock = Clock::system();
        // The relay follows the keyserver's relay link, as under `ward up`.
        let link_key = crate::link::service_key();
        config.relay_keys = vec![link_key.public_key()];
        tweak(&mut config);
        let keyserver = TestKeyserver::start(config).await;
        let link = crate::link::link_to(&keyserver.url(), link_key);
        let relay = Relay::start_with(org.root_public(), |c| c.keyserver_link = Some(link)).await;
        let ks_proxy = if proxy {
            Some(Proxy::start(keyserver.url()).await)
        } else {
            None
        };
        Self {
            org,
            relay,
            keyserver: Some(keyserver),
            ks_db,
            ks_proxy,
            dir: TempDir::new("world-clients"),
            request_timeout: Duration::from_secs(5),
        }
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

    /// A client configuration for the device store `name`: a cheap KDF and
    /// short delays.
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

    /// Enrolls `user_id`'s first device, its store named `device`.
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

    /// Reopens the device whose store is `device` (after [`Client::lock`]).
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
